"""Atomic writes on local disk: kill -9 mid-write, and failing the Nth syscall."""

from __future__ import annotations

import ast
import contextlib
import os
import pathlib
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

import orchfs
from orchfs.paths import TEMP_PREFIX

SIZE = 4 * 2**20
OLD = b"A" * SIZE
NEW = b"B" * (SIZE - 7) + b"the end"

WRITER = textwrap.dedent(
    """
    import sys, orchfs
    root, how, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fs = orchfs.OrchFileSystem(root=root)
    new = b"B" * (size - 7) + b"the end"
    if how == "pipe":
        fs.pipe_file("big.bin", new)
    else:
        with fs.open("big.bin", "wb") as f:
            for start in range(0, len(new), 65536):
                f.write(new[start:start + 65536])
    """
)


def temp_files(state_dir: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in state_dir.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def open_directories(directory: pathlib.Path) -> int:
    """How many descriptors of this process are open on ``directory``."""
    opened = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone
            opened.append(os.readlink(f"/proc/self/fd/{fd}"))
    return opened.count(str(directory))


@pytest.mark.parametrize(
    ("how", "fault", "survivor"),
    [
        ("open", "atomic.stage:1", "old"),  # the temp file holds the first 64 KiB
        ("open", "atomic.stage:32", "old"),
        ("open", f"atomic.stage:{SIZE // 65536}", "old"),  # every byte staged, nothing synced
        ("open", "atomic.publish:1", "old"),  # fsynced, not yet renamed
        ("open", "atomic.publish:2", "new"),  # renamed, directory not yet fsynced
        ("pipe", "atomic.stage:1", "old"),
        ("pipe", "atomic.publish:1", "old"),
        ("pipe", "atomic.publish:2", "new"),
    ],
)
def test_kill_9_mid_write_leaves_old_or_new_bytes(how, fault, survivor, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    fs.pipe_file("big.bin", OLD)
    state_dir = repo / ".orchestrator"
    env = {**os.environ, "ORCHFS_FAULT": fault}
    proc = subprocess.run([sys.executable, "-c", WRITER, str(repo), how, str(SIZE)], env=env)
    assert proc.returncode == -signal.SIGKILL, f"{fault} was never reached"
    assert (state_dir / "big.bin").read_bytes() == {"old": OLD, "new": NEW}[survivor]
    for temp in temp_files(state_dir):
        assert stat.S_IMODE(temp.lstat().st_mode) == 0o600
    fs.pipe_file("big.bin", NEW)  # a torn temp file never blocks the next write
    assert fs.cat_file("big.bin") == NEW


# state.json: a layout entry's own name, written the full way; checkpoints/cp.json: an
# ordinary name in a directory, written the quick way once the instance has written.
@pytest.mark.parametrize("path", ["state.json", "checkpoints/cp.json"])
@pytest.mark.parametrize("how", ["open", "pipe"])  # a file object, or every byte at once
@pytest.mark.parametrize("syscall", ["write", "fsync", "replace", "fchmod"])
def test_failing_the_nth_syscall_keeps_old_bytes(syscall, how, path, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    fs = orchfs.OrchFileSystem(root=str(repo))
    fs.pipe_file(path, b"old")
    real = getattr(os, syscall)
    for failing_call in range(1, 6):
        calls = {"n": 0}

        def flaky(*args, _real=real, _n=failing_call, _calls=calls, **kwargs):
            _calls["n"] += 1
            if _calls["n"] == _n:
                raise OSError(5, f"injected failure of {syscall} #{_n}")
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, syscall, flaky)
        try:
            if how == "pipe":
                fs.pipe_file(path, b"new bytes")
            else:
                with fs.open(path, "wb") as f:
                    f.write(b"new ")
                    f.write(b"bytes")
            failed = False
        except OSError as exc:
            assert "injected" in str(exc)
            failed = True
        finally:
            monkeypatch.setattr(os, syscall, real)
        target = repo / ".orchestrator" / path
        data = target.read_bytes()
        if syscall == "fchmod" and failed:
            # The mode is widened only after publishing: the new bytes are in place,
            # still private (0600), and the caller is told.
            assert data == b"new bytes"
            assert stat.S_IMODE(target.stat().st_mode) == 0o600
        else:
            assert data == (b"old" if failed else b"new bytes")
        assert temp_files(repo / ".orchestrator") == []
        assert open_directories(target.parent) == 0  # the directory's closed too
        fs.pipe_file(path, b"old")


def test_temp_names_stay_apart_whatever_the_program_seeds():
    """A program that seeds ``random`` for its own reproducibility, and a forked child,
    still pick temp names of their own: two writers of one file never pick the same."""
    import random

    from orchfs.atomic import temp_name

    random.seed(7)
    first = temp_name("state.json")
    random.seed(7)
    assert temp_name("state.json") != first
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next name, then out at once
        os.write(write_end, temp_name("state.json").encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    child = os.read(read_end, 256).decode()
    os.close(read_end)
    assert child.startswith(f"{TEMP_PREFIX}state.json.") and len(child) == len(first)
    assert child != temp_name("state.json")


def test_final_modes(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    fs = orchfs.OrchFileSystem(root=str(repo))
    fs.pipe_file("state.json", b"{}")
    mode = stat.S_IMODE((repo / ".orchestrator" / "state.json").stat().st_mode)
    assert mode == 0o666 & ~orchfs.atomic.UMASK


def test_abandoned_writer_is_discarded(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    fs = orchfs.OrchFileSystem(root=str(repo))
    fs.pipe_file("state.json", b"old")
    f = fs.open("state.json", "wb")
    f.write(b"never closed")
    del f
    import gc

    gc.collect()
    assert fs.cat_file("state.json") == b"old"
    assert temp_files(repo / ".orchestrator") == []


def test_library_has_no_assert_statements():
    package = pathlib.Path(orchfs.__file__).parent
    offenders = []
    for source in package.rglob("*.py"):
        tree = ast.parse(source.read_text())
        offenders += [f"{source.name}:{n.lineno}" for n in ast.walk(tree) if isinstance(n, ast.Assert)]
    assert offenders == []


@pytest.mark.slow
def test_suite_core_passes_under_python_O():
    tests = pathlib.Path(__file__).parent
    result = subprocess.run(
        [
            sys.executable,
            "-O",
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(tests / "test_conformance.py"),
            str(tests / "test_paths.py"),
            "-k",
            "not s3",
            "-x",
        ],
        capture_output=True,
        text=True,
        cwd=tests.parent,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_append_racing_a_replacement_opens_the_new_file(tmp_path):
    """An append whose file is replaced or removed after its open (nlink 0) opens the path
    again: it is neither refused as a hard link nor written into the orphaned file."""
    import threading

    repo = tmp_path / "repo"
    repo.mkdir()
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    fs.pipe_file("log.jsonl", b"")
    stop = threading.Event()
    errors: list[BaseException] = []

    def replacer() -> None:
        while not stop.is_set():
            fs.pipe_file("log.jsonl", b"")
            fs.rm("log.jsonl")

    thread = threading.Thread(target=replacer)
    thread.start()
    try:
        for i in range(400):
            try:
                fs.append_line("log.jsonl", {"i": i})
            except BaseException as exc:
                errors.append(exc)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    fs.append_line("log.jsonl", {"last": True})
    assert fs.cat_file("log.jsonl").splitlines()[-1] == b'{"last":true}'


@pytest.mark.parametrize("how", ["open", "pipe"])
@pytest.mark.parametrize(
    "failing",
    [
        ("close-dir",),  # the directory's close once published
        ("write", "close-temp"),  # the temp file's close while dropping it
        ("write", "unlink"),  # the temp file's removal
        ("fsync", "close-temp"),
    ],
    ids="+".join,
)
def test_a_failing_cleanup_still_closes_the_directory_once(failing, how, tmp_path, monkeypatch):
    """A close that fails (after releasing the descriptor, as Linux does on EIO) or a
    removal that fails while a write is dropped: the directory is still closed, exactly
    once (a second close could close a descriptor reused meanwhile), and a temp file
    that could be removed is."""
    repo = tmp_path / "repo"
    repo.mkdir()
    fs = orchfs.OrchFileSystem(root=str(repo))
    fs.pipe_file("state.json", b"old")
    state_dir = str(repo / ".orchestrator")
    published = []

    def target(fd: int) -> str:
        with contextlib.suppress(OSError):
            return os.readlink(f"/proc/self/fd/{fd}")
        return ""

    def fails(name: str, args: tuple) -> bool:
        if name == "close-temp":
            return os.path.basename(target(args[0])).startswith(TEMP_PREFIX)
        if name == "close-dir":
            return bool(published) and target(args[0]) == state_dir
        return True

    injected: set[str] = set()  # each failure happens once
    for failure in failing:
        syscall = failure.partition("-")[0]
        real = getattr(os, syscall)

        def flaky(*args, _real=real, _name=failure, **kwargs):
            if _name in injected or not fails(_name, args):
                return _real(*args, **kwargs)
            injected.add(_name)
            if _name.startswith("close"):
                _real(*args, **kwargs)  # a close that fails has freed the number all the same
            raise OSError(5, f"injected failure of {_name}")

        monkeypatch.setattr(os, syscall, flaky)
    real_replace = os.replace

    def replace(*args, **kwargs):
        real_replace(*args, **kwargs)
        published.append(True)

    monkeypatch.setattr(os, "replace", replace)
    try:
        if how == "pipe":
            fs.pipe_file("state.json", b"new bytes")
        else:
            with fs.open("state.json", "wb") as f:
                f.write(b"new bytes")
    except OSError as exc:
        caught = exc
    else:
        pytest.fail("no failure injected")
    monkeypatch.undo()
    assert "injected" in str(caught)  # not EBADF from closing a descriptor twice
    assert open_directories(repo / ".orchestrator") == 0
    assert temp_files(repo / ".orchestrator") == [] or "unlink" in failing
    assert (repo / ".orchestrator" / "state.json").read_bytes() in (b"old", b"new bytes")
