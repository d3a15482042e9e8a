"""fsspec semantics beyond the abstract suite: directory times, bulk copies, transactions."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest

import orchfs

from .conftest import digest_tree


def _stamp(when: datetime) -> float:
    return when.timestamp()


def test_directories_and_the_root_have_times(orch):
    orch.pipe_file("checkpoints/cp_1.json", b"{}")
    orch.pipe_file("feedback/tool.jsonl", b"{}\n")  # feedback/ is a layout directory
    orch.pipe_file("notes/deep/todo.md", b"x")
    for path in ("", "checkpoints", "feedback", "notes", "notes/deep", "checkpoints/cp_1.json"):
        info = orch.info(path)
        assert isinstance(info["mtime"], float) and isinstance(info["created"], float), (path, info)
        assert orch.modified(path).tzinfo is orch.created(path).tzinfo is timezone.utc
    # A directory is no older than the files placed in it (on local disk its own time,
    # which only its direct entries move; elsewhere the newest of everything it holds).
    assert _stamp(orch.modified("checkpoints")) >= _stamp(orch.modified("checkpoints/cp_1.json"))
    if orch.root.startswith(("memory://", "s3://")):
        newest_file = max(_stamp(orch.modified(p)) for p in orch.find(""))
        assert _stamp(orch.modified("")) == newest_file


def test_a_root_with_nothing_stored_still_has_a_time(orch):
    assert isinstance(orch.modified(""), datetime)
    assert orch.info("")["mtime"] is not None


def test_times_of_a_directory_without_its_own_are_those_it_holds(backend, request, tmp_path):
    if backend == "local":
        return  # local disk keeps directory times: the next test covers it
    from .conftest import make_fs

    fs = make_fs(backend, request, tmp_path)
    fs.pipe_file("checkpoints/cp_1.json", b"1")
    fs.pipe_file("checkpoints/sub/cp_2.json", b"2")
    held = [fs.info(p) for p in ("checkpoints/cp_1.json", "checkpoints/sub/cp_2.json")]
    info = fs.info("checkpoints")
    assert info["mtime"] == max(i["mtime"] for i in held)
    assert info["created"] == min(i["created"] for i in held)
    if fs.storage_capabilities.empty_directories:  # an empty directory takes the root's
        fs.mkdir("empty")
        assert fs.info("empty")["mtime"] == fs.info("")["mtime"]


def test_local_directory_times_are_the_newest_of_its_layers(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".workflow_checkpoints").mkdir(parents=True)
    (repo / ".workflow_checkpoints" / "cp_0.json").write_bytes(b"{}")
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    # Only the v1 layout so far: no state directory; the root is the repository's time.
    os.utime(repo / ".workflow_checkpoints", (1_000_000, 1_000_000))
    os.utime(repo, (1_500_000, 1_500_000))
    assert fs.info("checkpoints")["mtime"] == 1_000_000
    assert fs.info("")["mtime"] == 1_500_000
    fs.pipe_file("checkpoints/cp_1.json", b"{}")
    state = repo / ".orchestrator"
    os.utime(state / "checkpoints", (900_000, 900_000))
    assert fs.info("checkpoints")["mtime"] == 1_000_000  # the legacy layer is newer
    os.utime(state / "checkpoints", (2_000_000, 2_000_000))
    assert fs.info("checkpoints")["mtime"] == 2_000_000
    os.utime(state, (3_000_000, 3_000_000))
    os.utime(repo, (1_500_000, 1_500_000))
    assert fs.info("")["mtime"] == 3_000_000
    assert fs.modified("") == datetime.fromtimestamp(3_000_000, tz=timezone.utc)


def test_listed_directories_are_dated_as_the_backend_keeps_them(orch):
    """ls(detail=True) gives every directory entry `mtime` and `created`: on local disk
    the numbers info() gives; on memory and object storage None, as fsspec's memory and
    s3fs listings carry no time for a directory (a prefix), while info() computes one."""
    orch.pipe_file("checkpoints/cp_1.json", b"1")
    orch.pipe_file("notes/deep/x.md", b"x")
    entries = {entry["name"]: entry for entry in orch.ls("", detail=True)}
    for name in ("checkpoints", "notes"):
        entry, info = entries[name], orch.info(name)
        assert entry["type"] == "directory" and isinstance(info["mtime"], float)
        if orch.state_storage.kind == "local":
            assert (entry["mtime"], entry["created"]) == (info["mtime"], info["created"])
        else:
            assert entry["mtime"] is None and entry["created"] is None


def test_local_listing_dates_a_directory_as_info_does(tmp_path):
    """A directory shown by several layers, or only by the layout (v1 files behind it)."""
    repo = tmp_path / "repo"
    (repo / ".workflow_checkpoints").mkdir(parents=True)
    (repo / ".workflow_checkpoints" / "cp_0.json").write_bytes(b"{}")
    (repo / ".workflow_tool_feedback.jsonl").write_bytes(b"{}\n")
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    fs.pipe_file("checkpoints/cp_1.json", b"{}")
    os.utime(repo / ".workflow_checkpoints", (1_000_000, 1_000_000))
    os.utime(repo / ".orchestrator" / "checkpoints", (900_000, 900_000))
    entries = {entry["name"]: entry for entry in fs.ls("", detail=True)}
    assert entries["checkpoints"]["mtime"] == fs.info("checkpoints")["mtime"] == 1_000_000
    assert entries["feedback"]["mtime"] == fs.info("feedback")["mtime"] is not None


# --- get / copy / put of directories, against fsspec's memory filesystem ------------
TREE = {
    "checkpoints/cp_1.json": b"1",
    "checkpoints/sub/cp_2.json": b"2",
    "state.json": b"{}",
    "nested/dir/x.json": b"x",
}
SOURCES = ["checkpoints", "checkpoints/", "checkpoints/*", "checkpoints/cp_1.json", "nested/dir", "c*"]
DESTS = ["existing", "existing/", "fresh", "fresh/"]


@pytest.fixture(params=("memory", "local"))
def backend_no_s3(request):
    """The backends with empty directories (the whole matrix runs there)."""
    return request.param


@dataclass(frozen=True)
class Reference:
    """fsspec's memory filesystem under a fresh directory: what orchfs is held to."""

    fs: Any
    base: str

    def at(self, path: str) -> str:
        return f"{self.base}/{path}"

    def contents(self) -> dict[str, bytes]:
        return {name[len(self.base) + 1 :]: self.fs.cat_file(name) for name in self.fs.find(self.base)}


def _pair(backend, request, tmp_path):
    """An orchfs repository and a reference, both holding TREE and an empty directory
    ``existing``."""
    from fsspec.implementations.memory import MemoryFileSystem

    from .conftest import make_fs

    fs = make_fs(backend, request, tmp_path)
    reference = Reference(MemoryFileSystem(), f"/ref-{uuid.uuid4().hex}")
    for name, data in TREE.items():
        fs.pipe_file(name, data)
        reference.fs.pipe_file(reference.at(name), data)
    fs.makedirs("existing")
    reference.fs.makedirs(reference.at("existing"))
    return fs, reference


def _contents(fs):
    return {name: fs.cat_file(name) for name in fs.find("")}


def _outcome(call):
    try:
        call()
    except OSError as exc:
        return type(exc)
    return None


@pytest.mark.parametrize("recursive", [True, False])
@pytest.mark.parametrize("dest", DESTS)
@pytest.mark.parametrize("source", SOURCES)
def test_get_places_files_as_memory_does(backend_no_s3, request, tmp_path, source, dest, recursive):
    fs, ref = _pair(backend_no_s3, request, tmp_path)
    outs = [tmp_path / "out-orch", tmp_path / "out-ref"]
    for out in outs:
        (out / "existing").mkdir(parents=True)
    errors = [
        _outcome(lambda: fs.get(source, str(outs[0] / dest), recursive=recursive)),
        _outcome(lambda: ref.fs.get(ref.at(source), str(outs[1] / dest), recursive=recursive)),
    ]
    assert errors[0] == errors[1]
    assert digest_tree(outs[0]) == digest_tree(outs[1])


@pytest.mark.parametrize("recursive", [True, False])
@pytest.mark.parametrize("dest", DESTS)
@pytest.mark.parametrize("source", SOURCES)
def test_copy_places_files_as_memory_does(backend_no_s3, request, tmp_path, source, dest, recursive):
    fs, ref = _pair(backend_no_s3, request, tmp_path)
    errors = [
        _outcome(lambda: fs.copy(source, dest, recursive=recursive)),
        _outcome(lambda: ref.fs.copy(ref.at(source), ref.at(dest), recursive=recursive)),
    ]
    assert errors[0] == errors[1]
    assert _contents(fs) == ref.contents()


@pytest.mark.parametrize("dest", [*DESTS, ""])
@pytest.mark.parametrize("source", ["checkpoints", "checkpoints/", "checkpoints/*", "state.json"])
def test_put_places_files_as_memory_does(backend_no_s3, request, tmp_path, source, dest):
    fs, ref = _pair(backend_no_s3, request, tmp_path)
    local = tmp_path / "local"
    for name, data in TREE.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(b"local " + data)
    errors = [
        _outcome(lambda: fs.put(f"{local}/{source}", dest, recursive=True)),
        _outcome(lambda: ref.fs.put(f"{local}/{source}", ref.at(dest), recursive=True)),
    ]
    assert errors[0] == errors[1]
    assert _contents(fs) == ref.contents()


def test_get_of_a_top_level_directory_into_an_existing_one_keeps_its_name(orch, tmp_path):
    orch.pipe_file("checkpoints/cp_1.json", b"1")
    existing = tmp_path / "existing"
    existing.mkdir()
    orch.get("checkpoints", str(existing), recursive=True)
    assert (existing / "checkpoints" / "cp_1.json").read_bytes() == b"1"
    orch.makedirs("into", exist_ok=True)
    orch.pipe_file("into/keep", b"")  # object storage has no empty directories
    orch.copy("checkpoints", "into", recursive=True)
    assert orch.cat_file("into/checkpoints/cp_1.json") == b"1"


# --- fs.transaction -------------------------------------------------------------------
def _leftover_temps(fs):
    if fs.root.startswith(("memory://", "s3://")):
        return []
    return [
        name for _top, _dirs, files in os.walk(fs.root) for name in files if name.startswith(".orchfs-tmp.")
    ]


def test_a_failed_transaction_keeps_nothing_that_pipe_file_or_put_wrote(orch, tmp_path):
    orch.pipe_file("state.json", b"old")
    local = tmp_path / "upload.json"
    local.write_bytes(b"uploaded")
    with pytest.raises(RuntimeError, match="step failed"), orch.transaction:
        orch.pipe_file("state.json", b"new")
        orch.pipe_file("checkpoints/cp_1.json", b"cp")
        orch.pipe({"log.jsonl": b"a\n", "notes/n.md": b"n"})
        orch.put(str(local), "uploaded.json")
        with orch.open("opened.json", "wb") as f:
            f.write(b"opened")
        # Deferred: nothing is visible before the transaction ends.
        assert orch.cat_file("state.json") == b"old"
        assert not orch.exists("checkpoints/cp_1.json")
        raise RuntimeError("step failed")
    assert orch.cat_file("state.json") == b"old"
    for name in ("checkpoints/cp_1.json", "log.jsonl", "notes/n.md", "uploaded.json", "opened.json"):
        assert not orch.exists(name), name
    assert _leftover_temps(orch) == []


def test_a_transaction_publishes_everything_at_its_end(orch, tmp_path):
    local = tmp_path / "upload.json"
    local.write_bytes(b"uploaded")
    orch.pipe_file("log.jsonl", b"a\n")
    with orch.transaction:
        orch.pipe_file("state.json", b"new")
        orch.put(str(local), "uploaded.json")
        with orch.open("log.jsonl", "r+b") as f:
            f.seek(0, os.SEEK_END)
            f.write(b"b\n")
        assert not orch.exists("state.json")
        assert orch.cat_file("log.jsonl") == b"a\n"
    assert orch.cat_file("state.json") == b"new"
    assert orch.cat_file("log.jsonl") == b"a\nb\n"
    assert orch.cat_file("uploaded.json") == b"uploaded"
    assert _leftover_temps(orch) == []
    with pytest.raises(FileExistsError), orch.transaction:
        orch.pipe_file("state.json", b"again", mode="create")
    assert orch.cat_file("state.json") == b"new"


def test_secrets_written_in_a_failed_transaction_are_not_kept(local_repo, monkeypatch, tmp_path):
    from orchfs.secrets import new_key_text

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    fs = orchfs.OrchFileSystem(root=local_repo, key=new_key_text(), skip_instance_cache=True)
    with pytest.raises(RuntimeError), fs.transaction:
        fs.pipe_file("secrets/TOKEN", b"s3cr3t")
        raise RuntimeError("step failed")
    assert fs.secrets.list() == []
    with fs.transaction:
        fs.pipe_file("secrets/TOKEN", b"s3cr3t")
    assert fs.secrets.get("TOKEN") == "s3cr3t"


# --- warnings name the caller's own line ------------------------------------------------
READS = """\
import fsspec, orchfs
root = {root!r}
with fsspec.open("orch://state.json", "rb", root=root) as f:  # line 3
    f.read()
fs = orchfs.OrchFileSystem(root=root)
with fs.open("log.jsonl", "r") as f:  # line 6
    f.read()
fs.cat_file("prd/state.json")  # line 8
fs.cat_file("checkpoints/cp_1.json")  # line 9
fs.cat_file("checkpoints/cp_1.json")  # line 10: once per path, nothing more
"""


def test_warnings_name_the_callers_line_under_the_default_filters(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".workflow_state.json").write_bytes(b"{}")
    (repo / ".workflow_log.jsonl").write_bytes(b"{}\n")
    (repo / ".claude").mkdir()
    (repo / ".claude" / "prd_state.json").write_bytes(b"{}")
    (repo / ".workflow_checkpoints").mkdir()
    (repo / ".workflow_checkpoints" / "cp_1.json").write_bytes(b"old")
    (repo / ".orchestrator" / "checkpoints").mkdir(parents=True)
    (repo / ".orchestrator" / "checkpoints" / "cp_1.json").write_bytes(b"new")  # differs: a conflict
    script = tmp_path / "reader.py"
    script.write_text(READS.format(root=str(repo)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    shown = [line for line in done.stderr.splitlines() if "Warning:" in line]
    assert [line.split(": ")[0:2] for line in shown] == [
        [f"{script}:3", "LegacyPathWarning"],
        [f"{script}:6", "LegacyPathWarning"],
        [f"{script}:8", "LegacyPathWarning"],
        [f"{script}:9", "LegacyConflictWarning"],
    ], done.stderr
