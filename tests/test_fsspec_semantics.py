"""fsspec semantics beyond the abstract suite: directory times, bulk copies, transactions."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import orchfs


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
