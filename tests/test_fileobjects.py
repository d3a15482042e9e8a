"""File objects from ``fs.open``: fsspec-style on every backend (``path``, ``fs``, ``size``),
picklable for reads through the filesystem (never a physical path), closed deterministically."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import warnings
from typing import Any

import fsspec
import pytest

import orchfs
from orchfs.errors import PathEscapeError
from orchfs.files import OrchReader
from orchfs.secrets import new_key_text

DATA = b'{"phase": "build", "step": 3}\n' * 50


def test_reader_is_fsspec_style(orch):
    orch.pipe_file("checkpoints/cp_1.json", DATA)
    with orch.open("checkpoints/cp_1.json", "rb") as f:
        assert isinstance(f, OrchReader)
        assert f.path == "checkpoints/cp_1.json"
        assert f.fs is orch
        assert f.size == len(DATA)
        assert f.mode == "rb" and f.readable() and not f.writable() and f.seekable()
        assert f.read(10) == DATA[:10]
        assert f.tell() == 10
        assert f.readline() == DATA[10:30]
        f.seek(-5, os.SEEK_END)
        assert f.read() == DATA[-5:]
        assert f.fs.cat_file(f.path) == DATA
    assert f.closed
    with orch.open("checkpoints/cp_1.json", "r") as text:
        assert text.readline() == DATA.decode().splitlines(keepends=True)[0]


def test_pickled_reader_reopens_at_its_position(orch):
    orch.pipe_file("state.json", DATA)
    with orch.open("state.json", "rb") as f:
        f.read(7)
        blob = pickle.dumps(f)
        again = pickle.loads(blob)
    with again:
        assert isinstance(again, OrchReader) and again.path == "state.json"
        assert again.tell() == 7
        assert again.read() == DATA[7:]
    assert DATA[7:40] not in blob  # the content never travels, only where to find it
    with pytest.raises(ValueError, match="closed"):
        pickle.dumps(f)


def test_pickled_local_reader_carries_no_physical_path_and_passes_the_gate_again(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "outside.json").write_bytes(b"outside bytes")
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    fs.pipe_file("state.json", DATA)
    with fs.open("state.json", "rb") as f:
        blob = pickle.dumps(f)
    assert str(repo / ".orchestrator").encode() not in blob
    # Someone swaps the file for a symlink that leaves the repository: the unpickled
    # reader opens through the filesystem, whose gate refuses it.
    physical = repo / ".orchestrator" / "state.json"
    physical.unlink()
    physical.symlink_to(canary / "outside.json")
    with pytest.raises(PathEscapeError):
        pickle.loads(blob)
    assert (canary / "outside.json").read_bytes() == b"outside bytes"


def test_pickled_reader_reads_in_another_process(local_repo):
    fs = orchfs.OrchFileSystem(root=local_repo, skip_instance_cache=True)
    fs.pipe_file("log.jsonl", DATA)
    with fs.open("log.jsonl", "rb") as f:
        f.seek(100)
        blob = pickle.dumps(f)
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pickle, sys; f = pickle.load(sys.stdin.buffer); "
            "sys.stdout.buffer.write(f.read()); f.close()",
        ],
        input=blob,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        check=True,
        timeout=60,
    )
    assert child.stdout == DATA[100:]


def test_secret_reader_pickles_without_plaintext(local_repo, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    fs = orchfs.OrchFileSystem(root=local_repo, key=new_key_text(), skip_instance_cache=True)
    fs.secrets.set("API_KEY", "s3cr3t-plaintext")
    with fs.open("secrets/API_KEY", "rb") as f:
        assert f.size == len(b"s3cr3t-plaintext") and f.path == "secrets/API_KEY"
        blob = pickle.dumps(f)
    assert b"s3cr3t" not in blob
    with pickle.loads(blob) as again:
        assert again.read() == b"s3cr3t-plaintext"


@pytest.mark.parametrize("mode", ["wb", "xb", "ab", "r+b"])
def test_writers_are_fsspec_style_and_refuse_pickling(orch, mode):
    if mode in ("ab", "r+b"):
        orch.pipe_file("notes/a.txt", b"old")
    with orch.open("notes/a.txt", mode) as f:
        assert f.path == "notes/a.txt" and f.fs is orch and f.mode == mode
        f.write(b"new")
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(f)
        assert f.size == (6 if mode == "ab" else 3)
    assert orch.cat_file("notes/a.txt") == (b"oldnew" if mode == "ab" else b"new")


def test_secret_writer_refuses_pickling(local_repo, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    fs = orchfs.OrchFileSystem(root=local_repo, key=new_key_text(), skip_instance_cache=True)
    with fs.open("secrets/TOKEN", "wb") as f:
        f.write(b"s3cr3t-plaintext")
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(f)
    assert fs.secrets.get("TOKEN") == "s3cr3t-plaintext"


def _descriptors_on(path: str) -> list[str]:
    """This process's open descriptors on ``path`` (other descriptors, such as a
    connection pool's sockets, come and go on their own)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == path:
                out.append(fd)
        except OSError:
            continue  # closed while listed
    return out


def test_abandoned_readers_close_without_resource_warning(orch):
    """As ``python -W error::ResourceWarning`` would see it: an unclosed reader that is
    dropped (a reader library that never closes) is closed quietly, its descriptor freed."""
    orch.pipe_file("state.json", DATA)

    def through_fsspec() -> Any:
        return fsspec.open(
            "orch://state.json", "rb", root=orch.root, storage_options=orch.storage_options_ or None
        )

    with through_fsspec() as warm:  # the cached filesystem (and its root descriptor) made first
        warm.read()
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        binary = orch.open("state.json", "rb")
        assert binary.read(5) == DATA[:5]
        text = orch.open("state.json", "r")
        assert text.read(5) == DATA[:5].decode()
        with through_fsspec() as via_fsspec:
            assert via_fsspec.read() == DATA
        del binary, text
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    physical = os.path.realpath(orch.resolve("state.json").url)
    assert _descriptors_on(physical) == []


def test_pyarrow_reads_through_orchfs_leave_no_unclosed_file(orch):
    """A real reader library: pyarrow opens files through fsspec and leaves some of
    them to the garbage collector."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    table = pa.table({"step": list(range(100)), "name": [f"s{i}" for i in range(100)]})
    for i in range(3):
        with orch.open(f"runs/part-{i}.parquet", "wb") as f:
            pq.write_table(table, f)
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        assert pq.read_table("runs/part-0.parquet", filesystem=orch).equals(table)
        assert ds.dataset("runs", filesystem=orch, format="parquet").to_table().num_rows == 300
        assert pq.ParquetFile(orch.open("runs/part-1.parquet", "rb")).read().equals(table)
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
