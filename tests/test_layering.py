"""The layering holds: no module reaches into another's private names, the face leaves
every write of the logical namespace to the overlay, and only the overlay (with its
StateFiles seam), the adapters themselves, the lock backends and the operations' movers
call an adapter's write methods."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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


# The names an adapter goes by (parameters, attributes, locals): `state`, `repo`, `store`,
# `storage` and the face's `state_storage`/`repo_storage`, private or not. The test below
# holds every parameter annotated with a storage type to them.
ADAPTER_NAMES = frozenset(
    {"state", "repo", "store", "storage", "root_store", "state_storage", "repo_storage"}
    | {"_state", "_repo", "_store", "_storage", "_root_store"}
)
ADAPTER_FACTORIES = frozenset({"open_storage", "LocalStorage", "FsspecStorage"})
# Modules where every call may write: the adapters themselves, the overlay and the
# StateFiles seam for orchfs's own files.
WRITING_MODULES = frozenset({"storage.py", "overlay.py", "statefiles.py"})
LOCK_BASE = "LockBackend"


def _adapter_write(node: ast.AST) -> bool:
    """A call of a write method on something that is an adapter by its name."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    if node.func.attr not in WRITE_METHODS:
        return False
    owner = node.func.value
    if isinstance(owner, ast.Name):
        return owner.id in ADAPTER_NAMES
    if isinstance(owner, ast.Attribute):
        return owner.attr in ADAPTER_NAMES
    if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name):
        return owner.func.id in ADAPTER_FACTORIES
    return False


def _writer_scopes(tree: ast.Module, imported_elsewhere: set[str]) -> set[str]:
    """Top-level scopes allowed to write: lock backends (subclasses of LockBackend), the
    operations' movers (classes named ``*Mover``), and the module's private functions
    that only such scopes use (and no other module imports)."""
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}

    def is_lock_backend(name: str) -> bool:
        bases = [b.id for b in classes[name].bases if isinstance(b, ast.Name)] if name in classes else []
        return LOCK_BASE in bases or any(is_lock_backend(b) for b in bases)

    allowed = {name for name in classes if name.endswith("Mover") or is_lock_backend(name)}
    users: dict[str, set[str]] = {name: set() for name in functions}
    for scope in tree.body:
        for node in ast.walk(scope):
            if isinstance(node, ast.Name) and node.id in users:
                users[node.id].add(getattr(scope, "name", "<module>"))
    changed = True
    while changed:
        changed = False
        for name, used_by in users.items():
            if name in allowed or name in imported_elsewhere or not name.startswith("_"):
                continue
            if used_by and used_by <= allowed:
                allowed.add(name)
                changed = True
    return allowed


def _adapter_writes_outside_their_places(package: dict[str, ast.Module]) -> list[str]:
    imported = {
        ((node.module or "").rpartition(".")[2] + ".py", alias.name)
        for tree in package.values()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    calls = []
    for name, tree in sorted(package.items()):
        if name in WRITING_MODULES:
            continue
        elsewhere = {imported_name for module, imported_name in imported if module == name}
        allowed = _writer_scopes(tree, elsewhere)
        for scope in tree.body:
            if getattr(scope, "name", None) in allowed:
                continue
            calls += [
                f"{name}:{node.lineno}: {ast.unparse(node.func)}"
                for node in ast.walk(scope)
                if _adapter_write(node)
            ]
    return calls


def test_only_the_overlay_the_lock_backends_and_the_movers_write_through_an_adapter():
    package = {path.name: _tree(path.name) for path in sorted(PACKAGE.glob("*.py"))}
    assert _adapter_writes_outside_their_places(package) == []


def test_adapters_go_by_the_names_the_check_above_knows():
    misnamed = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(_tree(path.name)):
            if isinstance(node, ast.arg) and node.annotation is not None:
                annotation = ast.unparse(node.annotation)
                if "Storage" in annotation and node.arg not in ADAPTER_NAMES | {"self"}:
                    misnamed.append(f"{path.name}:{node.lineno}: {node.arg}: {annotation}")
    assert misnamed == []


def test_the_write_check_can_fail():
    tree = ast.parse(
        "class LocalMover:\n    def execute(self):\n        _upload(self.store)\n"
        "def _upload(store):\n    store.write('a', b'')\n"
        "def step(state):\n    state.remove('a')\n"
        "def _shared(store):\n    store.rename('a', 'b')\n"
        "def operation(store):\n    _shared(store)\n    LocalMover().execute()\n"
        "def _listing(out):\n    out.append(1)\n"
    )
    found = _adapter_writes_outside_their_places({"op.py": tree})
    assert found == ["op.py:7: state.remove", "op.py:9: store.rename"]


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


def test_state_files_write_orchfs_own_files_only(tmp_path):
    from orchfs.errors import PathEscapeError
    from orchfs.statefiles import StateFiles
    from orchfs.storage import open_storage

    files = StateFiles(open_storage(str(tmp_path), None))
    files.write("meta.json", b"{}")
    files.makedirs_private("secrets/0123")
    files.write("secrets/0123/A.enc", b"sealed")
    files.remove("secrets/0123/A.enc")
    for logical in ("state.json", "checkpoints/meta.json", "sessions/s1/FORMAT"):
        with pytest.raises(PathEscapeError, match="overlay"):
            files.write(logical, b"x")
        with pytest.raises(PathEscapeError):
            files.remove(logical)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "meta.json",
        "secrets",
        "secrets/0123",
    ]
    assert (tmp_path / "meta.json").read_bytes() == b"{}"
    assert oct((tmp_path / "secrets/0123").stat().st_mode & 0o777) == oct(0o700)
