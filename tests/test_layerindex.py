"""The layer index against plain probing: equal answers at every step, whoever changed the disk.

Changes are made by another process (a helper that takes one change at a time) so that
the index learns of them only from the kernel; right after each change, the indexed
instance and an instance without an index (today's probing) must answer alike, and the
index's own answers must match a probe beneath the root. Then the fallbacks: a queue
overflow, no inotify, the watch limit; and what is left behind: descriptors and
watches after close, and a forked child that must not take its parent's events.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import gc
import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import orchfs
from orchfs import layerindex
from orchfs.beneath import PROBE_FLAGS, Beneath
from orchfs.errors import UnsafeStateError
from orchfs.layerindex import ABSENT, PRESENT, UNKNOWN, LayerIndex
from orchfs.overlay import forget_warnings

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd") or not hasattr(os, "O_PATH"), reason="inotify index: Linux only"
)

CANARY = b"CANARY: outside bytes"
CONTAINED = ".orchestrator/checkpoints"
LEGACY = ".workflow_checkpoints"
# The physical places the helper changes, and the logical paths asked about.
DIRS = [CONTAINED, LEGACY, f"{CONTAINED}/sub", f"{LEGACY}/sub", ".orchestrator/notes"]
FILES = [f"{d}/{n}" for d in DIRS for n in ("a.json", "b.json")]
LOGICAL = [
    "checkpoints/a.json",
    "checkpoints/b.json",
    "checkpoints/sub/a.json",
    "checkpoints/sub/b.json",
    "checkpoints/sub",
    "checkpoints/nothing.json",
    "notes/a.json",
    "notes/b.json",
]
PHYSICAL = sorted({*FILES, *DIRS, f"{CONTAINED}/x/y", f"{LEGACY}/a.json/z"})


def _apply(root: str, outside: str, change: tuple) -> None:
    """One change, made the way another program would make it (plain os calls)."""
    kind, *args = change
    path = os.path.join(root, args[0])
    with contextlib.suppress(OSError):
        if kind == "write":
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(args[1])
        elif kind == "remove":
            if os.path.islink(path) or not os.path.isdir(path):
                os.unlink(path)
            else:
                shutil.rmtree(path)
        elif kind == "mkdir":
            os.makedirs(path)
        elif kind == "rename":
            os.replace(path, os.path.join(root, args[1]))
        elif kind == "link":  # a directory swapped for a symlink (inside or outside the root)
            aside = path + ".aside"
            if os.path.lexists(aside):
                shutil.rmtree(aside, ignore_errors=True)
            if os.path.lexists(path):
                os.rename(path, aside)
            os.symlink(outside if args[1] == "outside" else os.path.join(root, LEGACY), path)
        elif kind == "exchange":  # the two names swap what they name, in one step
            _exchange(path, os.path.join(root, args[1]))
        elif kind == "unlink" and os.path.islink(path):  # and back
            os.unlink(path)
            if os.path.lexists(path + ".aside"):
                os.rename(path + ".aside", path)


def _exchange(a: str, b: str) -> None:
    """``renameat2(RENAME_EXCHANGE)`` (``mv --exchange``): ``a`` and ``b`` swap, atomically.
    Their directories hear a move from ``a`` to ``b``, then one from ``b`` to ``a``: the
    very events of two renames in a row, after which ``b`` would be gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), a)


def _helper(conn) -> None:
    while True:
        message = conn.recv()
        if message is None:
            return
        root, outside, change = message
        _apply(root, outside, change)
        conn.send("done")


class Helper:
    """Another process that makes each change and says when it is done."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("fork")
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=_helper, args=(theirs,), daemon=True)
        self.process.start()

    def change(self, root: str, outside: str, change: tuple) -> None:
        self.conn.send((root, outside, change))
        assert self.conn.recv() == "done"

    def stop(self) -> None:
        self.conn.send(None)
        self.process.join(10)


@pytest.fixture(scope="module")
def helper():
    running = Helper()
    yield running
    running.stop()


def outcome(fs: orchfs.OrchFileSystem, logical: str) -> tuple:
    """What a caller sees of ``logical``: exists, the bytes (or the error), the type.
    The once-per-process conflict check is forgotten first, so that both instances make it."""
    forget_warnings()
    seen = []
    for ask in (fs.exists, fs.cat_file, fs.isfile):
        try:
            seen.append(ask(logical))
        except Exception as exc:  # the kind of refusal is part of the answer
            seen.append(type(exc).__name__)
    return tuple(seen)


def probed(disk: Beneath, path: str) -> int:
    """What a probe beneath the root says (UNKNOWN: a link on the way, judged elsewhere)."""
    err = disk.probe(path, PROBE_FLAGS)
    if err == 0:
        return PRESENT
    return ABSENT if err in (-errno.ENOENT, -errno.ENOTDIR) else UNKNOWN


def state(index: LayerIndex, path: str) -> int:
    """The index's answer about one path, in :func:`probed`'s terms."""
    said = index.first((index.key(path),))
    return PRESENT if said == 0 else said


def make_repo(base: str) -> tuple[str, str]:
    root = os.path.join(base, "repo")
    outside = os.path.join(base, "outside")
    os.makedirs(outside)
    for name in ("a.json", "b.json"):
        Path(outside, name).write_bytes(CANARY)
    for d in DIRS:
        os.makedirs(os.path.join(root, d))
    Path(root, CONTAINED, "a.json").write_bytes(b"contained a")
    Path(root, LEGACY, "b.json").write_bytes(b"legacy b")
    return root, outside


def pair(root: str) -> tuple[orchfs.OrchFileSystem, orchfs.OrchFileSystem]:
    indexed = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    plain = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    assert indexed.overlay.index is not None
    plain.overlay.index = None  # today's probing, for comparison
    return indexed, plain


def assert_alike(root: str, indexed, plain, disk: Beneath, index: LayerIndex) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logical in LOGICAL:
            assert outcome(indexed, logical) == outcome(plain, logical), logical
    for path in PHYSICAL:
        said = state(index, path)
        if said != UNKNOWN:
            assert said == probed(disk, path), path


names = st.sampled_from(FILES)
places = st.sampled_from(DIRS)


class ChangedByAnother(RuleBasedStateMachine):
    """Random changes by another process; after each, indexed == probed."""

    helper: Helper

    @initialize()
    def setup(self) -> None:
        self.base = tempfile.mkdtemp(prefix="orchfs-index-")
        self.root, self.outside = make_repo(self.base)
        self.indexed, self.plain = pair(self.root)
        self.disk = Beneath(self.root)
        self.index = LayerIndex(self.disk)
        for _ in range(layerindex.INDEX_AFTER):  # warm: every directory indexed from here on
            assert_alike(self.root, self.indexed, self.plain, self.disk, self.index)

    def teardown(self) -> None:
        if hasattr(self, "index"):
            self.index.close()
            self.indexed.overlay.index.close()
            self.disk.close()
            shutil.rmtree(self.base, ignore_errors=True)

    def change(self, *change) -> None:
        self.helper.change(self.root, self.outside, change)

    @rule(path=names, data=st.binary(min_size=1, max_size=8))
    def write(self, path, data):
        self.change("write", path, data)

    @rule(path=st.one_of(names, places))
    def remove(self, path):
        self.change("remove", path)

    @rule(path=st.one_of(names, places))
    def mkdir(self, path):
        self.change("mkdir", path)

    @rule(source=st.one_of(names, places), to=st.one_of(names, places))
    def rename(self, source, to):
        self.change("rename", source, to)

    @rule(source=st.one_of(names, places), to=st.one_of(names, places))
    def exchange(self, source, to):
        self.change("exchange", source, to)

    @rule(path=places, where=st.sampled_from(["outside", "inside"]))
    def link(self, path, where):
        self.change("link", path, where)

    @rule(path=places)
    def unlink(self, path):
        self.change("unlink", path)

    @invariant()
    def alike(self):
        if hasattr(self, "index"):
            assert_alike(self.root, self.indexed, self.plain, self.disk, self.index)


def test_changes_by_another_process_show_at_once(helper):
    ChangedByAnother.helper = helper
    run = ChangedByAnother.TestCase
    run.settings = settings(
        max_examples=40, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck)
    )
    run().runTest()


def test_the_index_answers_without_the_disk(tmp_path, helper):
    """Not vacuous: once warm, the index itself answers (no UNKNOWN) for link-free paths,
    and an absent path in an indexed directory costs no probe."""
    root, outside = make_repo(str(tmp_path))
    index = LayerIndex(Beneath(root))
    paths = (f"{CONTAINED}/a.json", f"{LEGACY}/b.json", f"{CONTAINED}/none", f"{LEGACY}/x/y")
    for _ in range(layerindex.INDEX_AFTER):
        state(index, paths[0])
        state(index, paths[1])
    assert [state(index, p) for p in paths] == [PRESENT, PRESENT, ABSENT, ABSENT]
    assert index.first((index.key(f"{CONTAINED}/none"), index.key(f"{LEGACY}/b.json"))) == 1
    helper.change(root, outside, ("write", f"{CONTAINED}/none", b"now"))
    assert state(index, f"{CONTAINED}/none") == PRESENT  # no waiting: seen at once
    helper.change(root, outside, ("link", CONTAINED, "outside"))
    assert state(index, f"{CONTAINED}/a.json") == UNKNOWN  # a link on the way: the disk judges
    index.close()


def test_a_path_below_a_missing_directory_is_absent_at_once(tmp_path, helper):
    """A path several levels below a directory that is not there (a v1 tree never made)
    is absent by the listing of the nearest indexed directory above it, from the first
    question on; once another process makes the tree, the disk is asked again."""
    root, outside = make_repo(str(tmp_path))
    index = LayerIndex(Beneath(root))
    for _ in range(layerindex.INDEX_AFTER):
        state(index, f"{LEGACY}/b.json")  # the root and the legacy directory indexed
    deep = "v1/never/made/a.json"
    assert [state(index, deep) for _ in range(3 * layerindex.INDEX_AFTER)] == [ABSENT] * 12
    assert state(index, f"{LEGACY}/b.json/below") == ABSENT  # a file on the way
    helper.change(root, outside, ("write", deep, b"now"))
    assert state(index, deep) != ABSENT
    assert probed(index._disk, deep) == PRESENT
    index.close()


@pytest.mark.parametrize(
    "first, second",
    [
        (f"{LEGACY}/b.json", f"{LEGACY}/a.json"),  # a file and a name about to be one
        (f"{LEGACY}/b.json", f"{LEGACY}/sub"),  # a file and a directory
        (f"{CONTAINED}/a.json", f"{LEGACY}/b.json"),  # across directories
    ],
    ids=["two-files", "file-and-directory", "across-directories"],
)
def test_names_swapped_in_one_step_both_stay_there(tmp_path, helper, first, second):
    """Another program swaps two names with RENAME_EXCHANGE (an atomic directory swap,
    ``mv --exchange``): both names are still there, and every answer says so at once
    (the events alone read as two renames in a row, after which one name is gone)."""
    try:
        (tmp_path / "x").touch()
        (tmp_path / "y").mkdir()
        _exchange(str(tmp_path / "x"), str(tmp_path / "y"))
    except OSError as exc:
        pytest.skip(f"no RENAME_EXCHANGE here: {exc}")
    root, outside = make_repo(str(tmp_path))
    Path(root, LEGACY, "a.json").write_bytes(b"legacy a")
    indexed, plain = pair(root)
    disk = Beneath(root)
    index = LayerIndex(disk)
    for _ in range(layerindex.INDEX_AFTER):  # warm: every directory indexed
        assert_alike(root, indexed, plain, disk, index)
    helper.change(root, outside, ("exchange", first, second))
    assert probed(disk, first) == probed(disk, second) == PRESENT
    assert state(index, first) in (PRESENT, UNKNOWN) and state(index, second) in (PRESENT, UNKNOWN)
    assert_alike(root, indexed, plain, disk, index)
    index.close()
    indexed.overlay.index.close()
    disk.close()


def test_a_directory_moved_away_leaves_the_paths_below_it_absent_at_once(tmp_path, helper):
    """Another program moves an indexed legacy directory out of the root (a name moved
    away is looked at when asked about), and puts a file where a directory is asked
    about: the paths below either are absent from the index itself, as a probe says,
    not handed to the disk at every question."""
    root, outside = make_repo(str(tmp_path))
    disk = Beneath(root)
    index = LayerIndex(disk)
    for _ in range(layerindex.INDEX_AFTER):  # the root, the legacy directory and sub indexed
        state(index, f"{LEGACY}/b.json")
        state(index, f"{LEGACY}/sub/a.json")
    helper.change(root, outside, ("rename", LEGACY, "moved-away"))
    helper.change(root, outside, ("write", "plain-file", b"a file"))
    for path in (f"{LEGACY}/b.json", f"{LEGACY}/sub/a.json", "plain-file/below.json"):
        assert probed(disk, path) == ABSENT
        asked = [state(index, path) for _ in range(layerindex.INDEX_AFTER + 1)]
        assert asked == [ABSENT] * len(asked), path
    index.close()
    disk.close()


def _warm_legacy_read(fs: orchfs.OrchFileSystem, logical: str) -> Callable[[], Any]:
    """Read ``logical`` (served by its legacy location) until its layers are indexed, and
    return the shortcut the overlay gives for reading it again (what the face keeps after
    such a read), checked to be the index's (else the tests below would prove nothing)."""
    for _ in range(2 * layerindex.INDEX_AFTER):  # the contained directory, then the legacy one
        assert fs.cat_file(logical) == b"legacy b"
    location, _data = fs.overlay.read(logical)
    shortcut = fs.overlay.fast_reader(logical, location)
    assert isinstance(shortcut, layerindex._ReadIfAbsent)
    assert shortcut() == b"legacy b"
    return shortcut


@pytest.mark.parametrize(
    "changes, seen",
    [
        ([("write", f"{CONTAINED}/b.json", b"contained b")], b"contained b"),  # the upper copy wins
        ([("remove", f"{LEGACY}/b.json")], "FileNotFoundError"),
        ([("link", LEGACY, "outside")], "PathEscapeError"),  # the directory swapped for a link
        (
            [("remove", f"{LEGACY}/b.json"), ("rename", f"{LEGACY}/sub", f"{LEGACY}/b.json")],
            "IsADirectoryError",
        ),
    ],
    ids=["upper-written", "legacy-removed", "legacy-dir-swapped", "directory-in-its-place"],
)
def test_a_remembered_legacy_read_follows_every_change(tmp_path, helper, changes, seen):
    """A legacy file read before is read again through the index's shortcut; a change by
    another process shows at the next read, and no read returns outside bytes."""
    root, outside = make_repo(str(tmp_path))
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _warm_legacy_read(fs, "checkpoints/b.json")
        for change in changes:
            helper.change(root, outside, change)
        try:
            got = fs.cat_file("checkpoints/b.json")
        except Exception as exc:  # the kind of refusal is the answer
            got = type(exc).__name__
    assert got == seen


def test_a_remembered_legacy_read_looks_again_after_any_name_is_added(tmp_path, helper):
    """The shortcut skips its look-ups while no name was added to the tree since it last
    saw its paths absent; a name added elsewhere makes it look (and still read), and the
    upper copy written after that is still what the next read returns."""
    root, outside = make_repo(str(tmp_path))
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shortcut = _warm_legacy_read(fs, "checkpoints/b.json")
        for name in ("other.json", "b.json.tmp"):  # names added next to the upper copy's
            helper.change(root, outside, ("write", f"{CONTAINED}/{name}", b"other"))
            assert shortcut() == b"legacy b"
            assert fs.cat_file("checkpoints/b.json") == b"legacy b"
        helper.change(root, outside, ("write", f"{CONTAINED}/b.json", b"contained b"))
        assert shortcut() is None
        assert fs.cat_file("checkpoints/b.json") == b"contained b"


def test_a_remembered_legacy_read_yields_after_an_overflow(tmp_path):
    """The event queue overflows, and only then is the upper copy written (its event
    lost with the overflow): the shortcut no longer reads the legacy file, and the next
    read returns the upper copy (the upper layer always wins); then a new index works."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 200_000:
        pytest.skip(f"max_queued_events is {limit}: too many events to make here")
    root, _outside = make_repo(str(tmp_path))
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shortcut = _warm_legacy_read(fs, "checkpoints/b.json")
        folder = os.path.join(root, CONTAINED)
        for i in range(limit // 2 + 10):  # two events each: more than the queue holds
            name = os.path.join(folder, f"f{i}")
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY))
            os.unlink(name)
        Path(folder, "b.json").write_bytes(b"contained b")
        assert shortcut() is None
        assert fs.cat_file("checkpoints/b.json") == b"contained b"
    # Once everything was forgotten, indexing works again (and stays): no stale "the
    # mounts changed" left by the poll of a closed instance forgets it at the next look.
    index = LayerIndex(Beneath(root))
    said = [state(index, f"{CONTAINED}/a.json") for _ in range(layerindex.INDEX_AFTER + 2)]
    assert said[-3:] == [PRESENT] * 3 and index.watched >= 3
    index.close()


def test_a_remembered_legacy_read_yields_to_a_whiteout(tmp_path):
    """Another instance deletes the path (a whiteout, and the markers sentinel): the
    shortcut of the first instance no longer reads the legacy file."""
    root, _outside = make_repo(str(tmp_path))
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _warm_legacy_read(fs, "checkpoints/b.json")
    orchfs.OrchFileSystem(root=root, skip_instance_cache=True).rm("checkpoints/b.json")
    assert Path(root, LEGACY, "b.json").read_bytes() == b"legacy b"  # the legacy file stays
    with pytest.raises(FileNotFoundError):
        fs.cat_file("checkpoints/b.json")
    assert not fs.exists("checkpoints/b.json")


def test_a_directory_whose_mode_changes_is_forgotten(tmp_path, helper):
    """A chmod of an indexed directory (heard on its own watch; its parent's event for
    the name is not needed) makes the index forget it and what is below it."""
    root, outside = make_repo(str(tmp_path))
    index = LayerIndex(Beneath(root))
    inner = f"{CONTAINED}/sub/a.json"
    for _ in range(2 * layerindex.INDEX_AFTER):
        state(index, inner)
    assert f"{CONTAINED}/sub" in index._dirs and state(index, inner) == ABSENT
    os.chmod(os.path.join(root, CONTAINED, "sub"), 0o700)  # from this process: heard all the same
    assert state(index, f"{CONTAINED}/a.json") == PRESENT  # a poll, which applies the change
    assert f"{CONTAINED}/sub" not in index._dirs and CONTAINED in index._dirs
    helper.change(root, outside, ("write", inner, b"now"))
    assert state(index, inner) != ABSENT  # not the forgotten listing: asked of the disk again
    index.close()


def test_the_events_of_orchfs_temp_files_are_passed_over(tmp_path):
    """Every write makes a temp file and renames it: the index passes over the temp
    file's events (no temp name is ever asked about) and still learns the written name."""
    root, _outside = make_repo(str(tmp_path))
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    index = fs.overlay.index
    physical = f"{CONTAINED}/new.json"
    for step in range(2 * layerindex.INDEX_AFTER):  # every directory a write asks about indexed
        fs.pipe_file(f"checkpoints/warm_{step}.json", b"warm")
        assert state(index, physical) == ABSENT or CONTAINED not in index._dirs
    names = index._dirs[CONTAINED].names
    added = index._tree.added
    fs.pipe_file("checkpoints/new.json", b"new")
    with fs.open("checkpoints/other.json", "wb") as f:
        f.write(b"other")
    assert state(index, physical) == PRESENT
    assert state(index, f"{CONTAINED}/other.json") == PRESENT
    assert not [name for name in names if name.startswith(".orchfs-tmp.")]
    assert index._tree.added == added + 2  # the two names, not their temp files
    assert {"new.json", "other.json"} <= set(names)


def test_concurrent_changes_never_lead_outside_and_settle(tmp_path):
    """A thread swaps directories for links to outside and writes files meanwhile: no
    read returns outside bytes; once it stops, indexed and probed answers agree."""
    root, outside = make_repo(str(tmp_path))
    indexed, plain = pair(root)
    disk = Beneath(root)
    index = LayerIndex(disk)
    stop = threading.Event()
    changes = [
        ("link", CONTAINED, "outside"),
        ("write", f"{LEGACY}/a.json", b"legacy a"),
        ("unlink", CONTAINED),
        ("link", LEGACY, "outside"),
        ("rename", f"{CONTAINED}/a.json", f"{CONTAINED}/b.json"),
        ("unlink", LEGACY),
        ("write", f"{CONTAINED}/a.json", b"contained a"),
        ("remove", f"{LEGACY}/sub"),
        ("mkdir", f"{LEGACY}/sub"),
    ]

    def churn() -> None:
        for _round in range(300):
            for change in changes:
                _apply(root, outside, change)
        stop.set()

    worker = threading.Thread(target=churn)
    worker.start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while not stop.is_set():
            for logical in LOGICAL:
                seen = outcome(indexed, logical)
                assert CANARY not in seen, logical
    worker.join()
    assert_alike(root, indexed, plain, disk, index)
    index.close()


def test_overflow_forgets_everything_and_answers_right(tmp_path):
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 200_000:
        pytest.skip(f"max_queued_events is {limit}: too many events to make here")
    root, _outside = make_repo(str(tmp_path))
    index = LayerIndex(Beneath(root))
    target = f"{CONTAINED}/a.json"
    for _ in range(layerindex.INDEX_AFTER):
        state(index, target)
    assert state(index, target) == PRESENT and index.watched >= 3
    folder = os.path.join(root, CONTAINED)
    for i in range(limit // 2 + 10):  # two events each: more than the queue holds
        name = os.path.join(folder, f"f{i}")
        os.close(os.open(name, os.O_CREAT | os.O_WRONLY))
        os.unlink(name)
    os.unlink(os.path.join(root, target))
    said = state(index, target)
    assert index.watched == 0  # everything forgotten
    assert said in (UNKNOWN, ABSENT)
    for _ in range(layerindex.INDEX_AFTER + 1):
        said = state(index, target)
    assert said == ABSENT and index.watched >= 3
    index.close()


def test_without_inotify_every_answer_is_the_disks(tmp_path):
    root, _outside = make_repo(str(tmp_path))
    index = LayerIndex(Beneath(root), use_inotify=False)
    for _ in range(layerindex.INDEX_AFTER * 2):
        assert state(index, f"{CONTAINED}/a.json") == UNKNOWN
    assert index.watched == 0


def test_watch_limit_leaves_the_rest_to_the_disk(tmp_path, helper):
    root, outside = make_repo(str(tmp_path))
    index = LayerIndex(Beneath(root), max_dirs=2)  # the root and .orchestrator, no more
    target = f"{CONTAINED}/a.json"
    for _ in range(layerindex.INDEX_AFTER * 2):
        assert state(index, target) == UNKNOWN
    assert index.watched == 2
    assert state(index, ".orchestrator/none") == ABSENT
    helper.change(root, outside, ("write", ".orchestrator/none", b"x"))
    assert state(index, ".orchestrator/none") == PRESENT
    index.close()


def _fds() -> dict[str, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return out


def test_descriptors_and_watches_go_with_the_last_index(tmp_path):
    root, _outside = make_repo(str(tmp_path))
    gc.collect()
    before = _fds()
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    other = LayerIndex(Beneath(root))
    for _ in range(layerindex.INDEX_AFTER):
        fs.exists("checkpoints/a.json")
        fs.exists("notes/a.json")
        state(other, f"{LEGACY}/b.json")
    during = _fds()
    inotify = [fd for fd, target in during.items() if "inotify" in target and fd not in before]
    assert len(inotify) == 1  # one instance for the whole process
    watches = Path(f"/proc/self/fdinfo/{inotify[0]}").read_text().count("inotify wd:")
    assert watches == fs.overlay.index.watched + other.watched - 1  # the root is watched once
    other.close()
    watches = Path(f"/proc/self/fdinfo/{inotify[0]}").read_text().count("inotify wd:")
    assert watches == fs.overlay.index.watched  # the other's watches are gone, the root's kept
    del fs, other
    gc.collect()
    assert set(_fds()) <= set(before)


def test_a_forked_child_does_not_take_its_parents_events(tmp_path):
    root, _outside = make_repo(str(tmp_path))
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    for _ in range(layerindex.INDEX_AFTER):
        assert not fs.exists("checkpoints/new.json")
    context = multiprocessing.get_context("fork")

    def child() -> None:  # changes the directory, then asks through its copy of fs
        Path(root, CONTAINED, "new.json").write_bytes(b"from the child")
        os._exit(0 if fs.exists("checkpoints/new.json") else 3)

    process = context.Process(target=child)
    process.start()
    process.join(30)
    assert process.exitcode == 0
    assert fs.cat_file("checkpoints/new.json") == b"from the child"
    assert fs.exists("checkpoints/new.json")


def test_a_mount_over_an_indexed_directory_shows_at_once(tmp_path):
    """A mount changes what a path shows without an event in the directory: the poll
    of the mount table makes the index start afresh."""
    root, _outside = make_repo(str(tmp_path))
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.json").write_bytes(b"mounted")
    index = LayerIndex(Beneath(root))
    target = f"{CONTAINED}/a.json"
    for _ in range(layerindex.INDEX_AFTER):
        index.first((index.key(f"{CONTAINED}/b.json"),))
        index.first((index.key(f"{LEGACY}/a.json"),))
    assert state(index, f"{LEGACY}/a.json") == ABSENT and state(index, f"{LEGACY}/b.json") == PRESENT
    place = os.path.join(root, LEGACY)
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "--bind", str(other), place], capture_output=True).returncode
    ):
        index.close()
        pytest.skip("bind mounts need privileges this run does not have")
    try:
        assert state(index, f"{LEGACY}/a.json") in (PRESENT, UNKNOWN)
        assert state(index, f"{LEGACY}/b.json") in (ABSENT, UNKNOWN)
        assert state(index, target) in (PRESENT, UNKNOWN)
    finally:
        subprocess.run(["umount", place], check=True)
    assert state(index, f"{LEGACY}/a.json") in (ABSENT, UNKNOWN)
    assert state(index, f"{LEGACY}/b.json") in (PRESENT, UNKNOWN)
    index.close()


# --- the kept reads' look at what kind of file they read -----------------------------
FED = b"fed by another process"


def _kmsg_allowed() -> bool:
    return hasattr(os, "mknod") and os.geteuid() == 0 and os.access("/dev/kmsg", os.R_OK)


def _plant(kind: str, aside: str) -> int | None:
    """What another program puts where a file was, made at ``aside`` (outside the root);
    a FIFO is fed and held open (the descriptor returned: the writer's end)."""
    if kind == "fifo":
        os.mkfifo(aside)
        writer = os.open(aside, os.O_RDWR | os.O_NONBLOCK)
        os.write(writer, FED)
        return writer
    if not _kmsg_allowed():
        pytest.skip("a device node needs root and a readable /dev/kmsg")
    # The kernel log: a read returns one record, shorter than the buffer, as a small file's.
    os.mknod(aside, stat.S_IFCHR | 0o644, os.makedev(1, 11))
    return None


def _move_by_another_process(source: str, target: str) -> None:
    """``rename(source, target)`` made by another process: orchfs hears of it only from
    the kernel."""
    subprocess.run(
        [sys.executable, "-c", "import os, sys; os.replace(sys.argv[1], sys.argv[2])", source, target],
        check=True,
    )


@dataclasses.dataclass(frozen=True)
class KeptRead:
    """A file read through the shortcut the face keeps for it, and where to plant."""

    fs: orchfs.OrchFileSystem
    root: str
    logical: str
    target: str  # the file's physical path
    aside: str  # a free name outside the root, for what another program plants
    shortcut: Any


@contextlib.contextmanager
def kept_read(tmp_path: Path, which: str) -> Iterator[KeptRead]:
    """Read KEPT_READS[which] many times (its directories indexed, the face keeping a
    shortcut for it); after the test, nothing outside the repository has changed."""
    logical, physical, data, indexed = KEPT_READS[which]
    root, outside = make_repo(str(tmp_path))
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(2 * layerindex.INDEX_AFTER + 3):
            assert fs.cat_file(logical) == data
        location, _data = fs.overlay.read(logical)
        shortcut = fs.overlay.fast_reader(logical, location)  # what the face keeps
        assert isinstance(shortcut, layerindex._ReadIfAbsent) == indexed
        yield KeptRead(fs, root, logical, os.path.join(root, physical), str(tmp_path / "aside"), shortcut)
    assert sorted(os.listdir(outside)) == ["a.json", "b.json"]
    assert all(Path(outside, name).read_bytes() == CANARY for name in ("a.json", "b.json"))


KEPT_READS = {  # logical path, where it is, its bytes, whether the index's shortcut is kept
    "contained": ("checkpoints/a.json", f"{CONTAINED}/a.json", b"contained a", False),
    "legacy": ("checkpoints/b.json", f"{LEGACY}/b.json", b"legacy b", True),
}


@pytest.mark.parametrize("kind", ["fifo", "kmsg"])
@pytest.mark.parametrize("which", KEPT_READS)
def test_a_file_replaced_by_a_device_or_a_fed_fifo_after_kept_reads_is_refused(tmp_path, which, kind):
    """After many reads of a regular file through the shortcut the face keeps for it,
    another process renames a fed FIFO or a character device that reads short
    (/dev/kmsg) over its name: the next read, and every one after, is refused, and
    nothing outside the repository changes. (The kept reads look at what they read on
    every read: docs/architecture.md says why no event is trusted instead.)"""
    with kept_read(tmp_path, which) as kept:
        writer = _plant(kind, kept.aside)
        try:
            _move_by_another_process(kept.aside, kept.target)
            for _ in range(3):
                with pytest.raises(UnsafeStateError, match="not a regular file"):
                    kept.fs.cat_file(kept.logical)
        finally:
            if writer is not None:
                os.close(writer)


@pytest.mark.parametrize("kind", ["fifo", "kmsg"])
def test_a_kept_legacy_read_looks_again_after_an_overflow(tmp_path, kind):
    """The event queue overflows, and only then is the legacy file replaced (its event
    lost with the overflow): the shortcut no longer answers, and the next read is
    refused."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 200_000:
        pytest.skip(f"max_queued_events is {limit}: too many events to make here")
    with kept_read(tmp_path, "legacy") as kept:
        writer = _plant(kind, kept.aside)
        try:
            folder = os.path.join(kept.root, CONTAINED)  # indexed, not the file's
            for i in range(limit // 2 + 10):  # two events each: more than the queue holds
                name = os.path.join(folder, f"f{i}")
                os.close(os.open(name, os.O_CREAT | os.O_WRONLY))
                os.unlink(name)
            _move_by_another_process(kept.aside, kept.target)
            assert kept.shortcut() is None  # everything forgotten: no answer, nothing read handed out
            with pytest.raises(UnsafeStateError, match="not a regular file"):
                kept.fs.cat_file(kept.logical)
        finally:
            if writer is not None:
                os.close(writer)


def test_a_kept_legacy_read_still_reads_a_file_renamed_over_it(tmp_path):
    """A regular file renamed over the legacy file by another process: read, with its
    new bytes, by the same shortcut."""
    with kept_read(tmp_path, "legacy") as kept:
        Path(kept.aside).write_bytes(b"legacy b, again")
        _move_by_another_process(kept.aside, kept.target)
        for _ in range(3):
            assert kept.fs.cat_file(kept.logical) == b"legacy b, again"
        assert kept.shortcut() == b"legacy b, again"  # the kept shortcut still serves it
