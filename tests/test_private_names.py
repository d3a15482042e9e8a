"""Tests check behaviour through public names: a test of module X (``tests/test_X*.py``)
may reach X's own private names (a white-box test of that module's internals), never
another module's. A test that needs to see more than the public API offers asks for
a public inspection API instead (such as ``OrchFileSystem.overlay``)."""

from __future__ import annotations

import ast
from pathlib import Path

from fsspec.spec import AbstractFileSystem

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "orchfs"
# fsspec's own hooks (``_strip_protocol``, ``_open``...) are its API, not orchfs's privates.
FSSPEC_NAMES = frozenset(dir(AbstractFileSystem))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def defined_private_names(tree: ast.Module) -> set[str]:
    """The private names a module defines: functions, classes, module and class
    variables, and attributes it assigns on ``self`` or ``cls``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {name for name in names if _private(name)}


def _module_of(test_file: str, modules: set[str]) -> str | None:
    """The module ``test_file`` (``test_X.py`` or ``test_X_more.py``) is the test of."""
    stem = test_file.removeprefix("test_").removesuffix(".py")
    matches = [m for m in modules if stem == m or stem.startswith(m + "_")]
    return max(matches, key=len) if matches else None


def reached_elsewhere(test_file: str, tree: ast.Module, owners: dict[str, set[str]]) -> list[str]:
    """``line: name (module)`` for each private name of another orchfs module that the
    test reaches (an attribute, or a name imported from orchfs)."""
    own = owners.get(_module_of(test_file, set(owners)) or "", set()) | defined_private_names(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            reached = [node.attr]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("orchfs"):
            reached = [alias.name for alias in node.names]
        else:
            continue
        for name in reached:
            if not _private(name) or name in own or name in FSSPEC_NAMES:
                continue
            elsewhere = sorted(module for module, names in owners.items() if name in names)
            if elsewhere:
                found.append((node.lineno, f"{test_file}:{node.lineno}: {name} ({', '.join(elsewhere)})"))
    return [text for _line, text in sorted(found)]


def _owners() -> dict[str, set[str]]:
    return {
        path.stem: defined_private_names(ast.parse(path.read_text())) for path in sorted(PACKAGE.glob("*.py"))
    }


def test_tests_reach_no_other_modules_private_names():
    owners = _owners()
    found = []
    for path in sorted(TESTS.glob("test_*.py")):
        found += reached_elsewhere(path.name, ast.parse(path.read_text()), owners)
    assert found == []


def test_the_check_above_can_fail():
    owners = {
        "filesystem": {"_fast_reads", "_overlay"},
        "layerindex": {"_ReadIfAbsent", "_dirs"},
        "migrate": {"_holding"},
    }
    source = (
        "from orchfs.layerindex import _ReadIfAbsent\n"
        "def test_x(fs, index):\n"
        "    fs._fast_reads['a']\n"  # the face's memo, from a test of layerindex
        "    index._dirs\n"  # layerindex's own: a white-box test of it
        "    fs._strip_protocol('a')\n"  # fsspec's hook
        "    _helper(fs)\n"
        "def _helper(fs):\n"
        "    return fs._helper_state\n"
    )
    tree = ast.parse(source)
    assert reached_elsewhere("test_layerindex.py", tree, owners) == [
        "test_layerindex.py:3: _fast_reads (filesystem)"
    ]
    assert reached_elsewhere("test_attack.py", tree, owners) == [
        "test_attack.py:1: _ReadIfAbsent (layerindex)",
        "test_attack.py:3: _fast_reads (filesystem)",
        "test_attack.py:4: _dirs (layerindex)",
    ]
