"""universal_pathlib: ``UPath("orch://...")`` is an OrchPath, and upath's own BaseTests pass on it."""

from __future__ import annotations

import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import fsspec
import pytest
from upath import UnsupportedOperation, UPath

import orchfs
from orchfs.upath import OrchPath

from .upath_suite import load_cases

try:
    cases = load_cases()
    from upath.tests.utils import OverrideMeta, overrides_base
except (subprocess.CalledProcessError, OSError) as exc:  # offline with nothing fetched
    pytest.skip(
        f"universal_pathlib's test cases are not available ({exc}): "
        "run `python -m tests.upath_suite` where PyPI is reachable",
        allow_module_level=True,
    )


# The fixtures BaseTests asks for, as upath's own conftest defines them (that conftest also
# imports the optional backends of every other filesystem, so it is not loaded here).
@pytest.fixture
def local_testdir(tmp_path: Path) -> str:
    """A local directory holding the tree that BaseTests writes under ``self.path``."""
    base = tmp_path / "expected"
    (base / "folder1").mkdir(parents=True)
    for name in ("file1.txt", "file2.txt"):
        (base / "folder1" / name).write_text(name)
    (base / "file1.txt").write_text("hello world")
    (base / "file2.txt").write_bytes(b"hello world")
    return str(base)


@pytest.fixture
def pathlib_base(local_testdir: str) -> Path:
    return Path(local_testdir)


@pytest.fixture
def clear_fsspec_memory_cache():
    memory = fsspec.get_filesystem_class("memory")
    pseudo_dirs, store = memory.pseudo_dirs.copy(), memory.store.copy()
    try:
        yield
    finally:
        memory.pseudo_dirs, memory.store = pseudo_dirs, store


def _root(kind: str, tmp_path: Path) -> str:
    if kind == "memory":
        return f"memory://upath-{uuid.uuid4().hex}"
    repo = tmp_path / "repo"
    repo.mkdir()
    return str(repo)


@pytest.fixture(params=["memory", "local"])
def orch_root(request, tmp_path: Path) -> str:
    return _root(request.param, tmp_path)


class TestOrchPath(cases.BaseTests, metaclass=OverrideMeta):
    """upath's full read/write suite on the logical root of a fresh repository.

    Overridden, as upath's own implementations do where they differ from the default:
    the class check, and ``cwd()``, which a repository has (its logical root).
    """

    @pytest.fixture(autouse=True)
    def path(self, orch_root: str, local_testdir: str) -> None:
        self.path = UPath("orch://", root=orch_root)
        self.prepare_file_system()

    @overrides_base
    def test_is_correct_class(self):
        assert isinstance(self.path, OrchPath)

    @overrides_base
    def test_cwd(self):
        cwd = self.path.joinpath("folder1", "file1.txt").cwd()
        assert isinstance(cwd, OrchPath) and cwd == self.path and cwd.path == ""
        with pytest.raises(UnsupportedOperation):  # the class alone names no repository
            OrchPath.cwd()


def test_entry_point_makes_upath_build_an_orchpath_without_warnings(tmp_path: Path):
    """In a fresh interpreter, as a user would: no fallback or flavour warning, no import."""
    code = (
        "import sys, warnings\n"
        "warnings.simplefilter('error')\n"
        "from upath import UPath\n"
        "p = UPath('orch://state.json', root=sys.argv[1])\n"
        "p.write_bytes(b'{}')\n"
        "print(type(p).__module__, type(p).__name__, p.read_bytes().decode())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["orchfs.upath", "OrchPath", "{}"]
    assert out.stderr == ""
    assert (tmp_path / ".orchestrator" / "state.json").read_bytes() == b"{}"


def test_relative_rename_targets_start_at_the_repository_root(orch_root: str):
    base = UPath("orch://", root=orch_root)
    source = base / "checkpoints" / "cp_1.json"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(b'{"step": 1}')
    moved = source.rename("checkpoints/cp_2.json")  # not checkpoints/checkpoints/cp_2.json
    assert moved.absolute() == base / "checkpoints" / "cp_2.json"
    assert not source.exists()
    fs = orchfs.OrchFileSystem(root=orch_root, skip_instance_cache=True)
    assert fs.cat_file("checkpoints/cp_2.json") == b'{"step": 1}'
    assert fs.ls("checkpoints", detail=False) == ["checkpoints/cp_2.json"]
    back = moved.absolute().rename(UPath("checkpoints/cp_1.json"))
    assert back.read_bytes() == b'{"step": 1}'


def test_reads_a_v1_repository_through_the_overlay(legacy_repo_factory):
    root = legacy_repo_factory({".workflow_state.json": b'{"v": 1}'})
    path = UPath("orch://state.json", root=str(root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy-path notice is covered elsewhere
        assert path.read_bytes() == b'{"v": 1}'
    assert path.exists() and path.is_file()
    assert (root / ".workflow_state.json").read_bytes() == b'{"v": 1}'  # read in place, not moved
