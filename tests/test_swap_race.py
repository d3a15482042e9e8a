"""The swap race: directories swapped for symlinks to outside, over and over, while
readers and writers run. Not one byte may come from outside, not one may land there.

A separate process swaps ``.orchestrator/data`` and the legacy ``.workflow_checkpoints``
for links to a canary directory and back; threads read (on a warm instance and on a
fresh instance per read), write and append meanwhile. Bounded by an iteration count and
a 10 s deadline: a stress test, not a timing assertion.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import threading
import time
import warnings

import pytest

import orchfs
from orchfs import beneath
from orchfs.errors import PathEscapeError
from tests.test_beneath import WAYS, snapshot

CANARY = b"CANARY: outside bytes"
DEADLINE = 10.0
READS = 3000
WRITES = 300


def _swap(places: list[str], canary: str, stop, swapped, rounds: int) -> None:
    """Swap every place for a link to ``canary`` and back, ``rounds`` times or until stopped."""
    for done in range(rounds):
        if stop.is_set():
            return
        for place in places:
            aside = place + ".aside"
            with contextlib.suppress(OSError):
                os.rename(place, aside)
            with contextlib.suppress(OSError):
                os.symlink(canary, place)
        if done == 0:
            swapped.set()
        for place in places:
            aside = place + ".aside"
            if os.path.islink(place):
                os.unlink(place)
            elif os.path.isdir(place):  # a writer made it again meanwhile
                shutil.rmtree(place, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.rename(aside, place)


@pytest.fixture
def arena(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".orchestrator" / "data").mkdir(parents=True)
    (repo / ".orchestrator" / "data" / "cp.json").write_bytes(b"inside")
    (repo / ".workflow_checkpoints").mkdir()
    (repo / ".workflow_checkpoints" / "old.json").write_bytes(b"legacy inside")
    canary = tmp_path / "canary"
    canary.mkdir()
    for name in ("cp.json", "old.json", "log.jsonl"):
        (canary / name).write_bytes(CANARY)
    os.chmod(canary / "cp.json", 0o600)
    orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True).pipe_file("seed.json", b"{}")
    return repo, canary


@pytest.mark.parametrize("use_openat2", WAYS)
@pytest.mark.parametrize("warm", [True, False], ids=["warm", "fresh"])
def test_swapped_directories_never_lead_outside(arena, warm, use_openat2, monkeypatch):
    if not use_openat2:  # every instance made below walks component by component
        monkeypatch.setattr(beneath, "_OPENAT2", None)
    repo, canary = arena
    before = snapshot(str(canary))
    places = [str(repo / ".orchestrator" / "data"), str(repo / ".workflow_checkpoints")]
    context = multiprocessing.get_context("fork")
    stop, swapped = context.Event(), context.Event()
    swapper = context.Process(target=_swap, args=(places, str(canary), stop, swapped, 1_000_000))
    warm_fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    for logical in ("data/cp.json", "checkpoints/old.json"):  # warm: every memo filled first
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert warm_fs.cat_file(logical) in (b"inside", b"legacy inside")
            warm_fs.exists(logical)
            warm_fs.ls(logical.rpartition("/")[0])
    deadline = time.monotonic() + DEADLINE
    leaks: list[bytes] = []
    outcomes: dict[str, int] = {}
    lock = threading.Lock()

    def fs_now() -> orchfs.OrchFileSystem:
        return warm_fs if warm else orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)

    def note(what: str) -> None:
        with lock:
            outcomes[what] = outcomes.get(what, 0) + 1

    def reader(logical: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(READS):
                if time.monotonic() > deadline:
                    return
                fs = fs_now()
                try:
                    data = fs.cat_file(logical)
                    with fs.open(logical, "rb") as f:
                        data += f.read()
                    for entry in fs.ls(logical.rpartition("/")[0], detail=True):
                        if entry["type"] == "file" and entry["size"] == len(CANARY):
                            leaks.append(b"listing shows " + entry["name"].encode())
                except (FileNotFoundError, PathEscapeError, IsADirectoryError, NotADirectoryError) as exc:
                    note(type(exc).__name__)
                    continue
                if CANARY[:6] in data:
                    leaks.append(data)
                note("read")

    def writer(prefix: str) -> None:
        for i in range(WRITES):
            if time.monotonic() > deadline:
                return
            fs = fs_now()
            try:
                fs.pipe_file(f"{prefix}/w{i}.json", b"written inside")
                fs.append_line(f"{prefix}/log.jsonl", {"i": i})
                note("write")
            except (FileNotFoundError, PathEscapeError, NotADirectoryError, FileExistsError) as exc:
                note(type(exc).__name__)

    unexpected: list[BaseException] = []

    def guarded(target, *args) -> None:
        try:
            target(*args)
        except BaseException as exc:  # reported below: a thread's exception fails the test
            unexpected.append(exc)

    swapper.start()
    try:
        assert swapped.wait(30), "the swapper never swapped"
        threads = [
            threading.Thread(target=guarded, args=(reader, "data/cp.json")),
            threading.Thread(target=guarded, args=(reader, "checkpoints/old.json")),
            threading.Thread(target=guarded, args=(writer, "data")),
            threading.Thread(target=guarded, args=(writer, "checkpoints")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stop.set()
        swapper.join(30)
        if swapper.is_alive():
            swapper.kill()
    assert unexpected == []
    assert leaks == []
    assert snapshot(str(canary)) == before
    assert outcomes.get("read", 0) > 0, outcomes
