"""The layering holds: no module reaches into another's private names, and the face
leaves every write of the logical namespace to the overlay."""

from __future__ import annotations

import ast
from pathlib import Path

import orchfs

PACKAGE = Path(orchfs.__file__).parent
WRITE_METHODS = frozenset(
    {
        "write",
        "open_write",
        "append",
        "append_existing",
        "makedirs",
        "makedirs_private",
        "remove",
        "rmdir",
        "remove_tree",
        "rename",
        "copy",
    }
)

# Public despite the underscore: the documented API of collections.namedtuple.
NAMEDTUPLE_API = frozenset({"_fields", "_field_defaults", "_make", "_replace", "_asdict"})


def _tree(name: str) -> ast.Module:
    return ast.parse((PACKAGE / name).read_text(encoding="utf-8"))


def _own_private_names(tree: ast.Module) -> set[str]:
    """Underscore names a module defines itself: methods, and attributes it assigns."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("_"):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return names


def test_no_module_reads_another_modules_private_names():
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        tree = _tree(path.name)
        own = _own_private_names(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            name = node.attr
            if not name.startswith("_") or name.startswith("__") or name in own or name in NAMEDTUPLE_API:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls", "os", "sys"):
                continue
            offenders.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []


def test_the_face_calls_no_adapter_write_method():
    calls = []
    for node in ast.walk(_tree("filesystem.py")):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if (
                node.func.attr in WRITE_METHODS
                and isinstance(owner, ast.Attribute)
                and owner.attr in ("store", "_state", "_repo", "state_storage", "repo_storage")
            ):
                calls.append(f"filesystem.py:{node.lineno}: {ast.unparse(node.func)}")
    assert calls == []


def test_the_checks_above_can_fail():
    # A private name read from another object is found; a module's own is not.
    tree = ast.parse(
        "class A:\n    def f(self, other):\n        self._x = 1\n        return other._y, other._x\n"
    )
    own = _own_private_names(tree)
    read = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load)]
    assert [name for name in read if name not in own] == ["_y"]


BACKEND_KINDS = frozenset({"local", "memory", "object"})


def test_choices_between_backends_are_made_on_capabilities():
    # A storage's kind names the backend in messages; ``storage.py`` alone maps it to
    # Capabilities, and every other module chooses on those.
    compared = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "storage.py":
            continue
        for node in ast.walk(_tree(path.name)):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            reads_kind = any(isinstance(s, ast.Attribute) and s.attr == "kind" for s in sides)
            constants = [c for s in sides for c in ast.walk(s) if isinstance(c, ast.Constant)]
            if reads_kind and any(c.value in BACKEND_KINDS for c in constants):
                compared.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert compared == []
