"""The beneath-root disk layer: every operation stays beneath its root, on openat2 and on
the component walk, whatever symlinks are planted on the way; a canary directory outside
the root keeps its bytes, modes and times."""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import stat
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import orchfs
from orchfs.atomic import DIR_FLAGS
from orchfs.beneath import OPENAT2_AVAILABLE, PROBE_FLAGS, Beneath, check_rel, copy_fresh, read_all
from orchfs.errors import LegacyPathWarning, PathEscapeError, UnsafeStateError
from orchfs.storage import LocalStorage

WAYS = [
    pytest.param(True, id="openat2", marks=pytest.mark.skipif(not OPENAT2_AVAILABLE, reason="no openat2")),
    pytest.param(False, id="walk"),
]


def snapshot(top: str) -> dict[str, tuple]:
    """Every entry below ``top``: mode, mtime and bytes (or link text)."""
    out: dict[str, tuple] = {".": (os.lstat(top).st_mode, os.lstat(top).st_mtime_ns)}
    for here, dirs, files in os.walk(top):
        for name in dirs + files:
            full = os.path.join(here, name)
            st_ = os.lstat(full)
            if stat.S_ISLNK(st_.st_mode):
                body = os.readlink(full)
            elif stat.S_ISREG(st_.st_mode):
                with open(full, "rb") as f:
                    body = f.read()
            else:
                body = None
            out[os.path.relpath(full, top)] = (st_.st_mode, st_.st_mtime_ns, body)
    return out


@pytest.fixture
def canary(tmp_path):
    """A directory outside every root: a file, a subdirectory, a private file."""
    top = tmp_path / "canary"
    (top / "sub").mkdir(parents=True)
    (top / "f").write_bytes(b"canary bytes")
    (top / "sub" / "g").write_bytes(b"more canary")
    (top / "private").write_bytes(b"p")
    os.chmod(top / "private", 0o600)
    return str(top)


@pytest.fixture(params=WAYS)
def way(request) -> bool:
    return request.param


def make_tree(root) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"inside")
    (root / "ok").write_bytes(b"ok file")


# Every operation, applied to a path (``p``) that may run through a planted link.
OPERATIONS: dict[str, Callable[[Beneath, str], object]] = {
    "open": lambda b, p: os.close(b.open(p)),
    "open_dir": lambda b, p: os.close(b.open_dir(p)),
    "open_read": lambda b, p: b.open_read(p).close(),
    "read_bytes": lambda b, p: b.read_bytes(p),
    "lstat": lambda b, p: b.lstat(p),
    "listdir": lambda b, p: b.listdir(p),
    "scandir": lambda b, p: b.scandir(p).__enter__(),
    "mkdir": lambda b, p: b.mkdir(p + "/new"),
    "makedirs": lambda b, p: b.makedirs(p + "/new/deeper"),
    "makedirs_private": lambda b, p: b.makedirs(p + "/new", 0o700, exact_mode=True),
    "write_bytes": lambda b, p: b.write_bytes(p, b"overwritten"),
    "write_below": lambda b, p: b.write_bytes(p + "/x", b"planted"),
    "writer": lambda b, p: b.writer(p + "/y").discard(),
    "rename_from": lambda b, p: b.rename(p, "moved"),
    "rename_to": lambda b, p: b.rename("ok", p + "/ok"),
    "unlink": lambda b, p: b.unlink(p + "/f"),
    "rmdir": lambda b, p: b.rmdir(p + "/sub"),
    "remove_tree": lambda b, p: b.remove_tree(p + "/sub"),
    "chmod": lambda b, p: b.chmod(p, 0o777),
    "chmod_below": lambda b, p: b.chmod(p + "/f", 0o777),
    "readlink": lambda b, p: b.readlink(p + "/f"),
    "symlink": lambda b, p: b.symlink("/etc/passwd", p + "/link"),
    "utime": lambda b, p: b.utime(p + "/f", (0, 0)),
    "copy_from": lambda b, p: b.copy(p + "/f", "copied"),
    "copy_to": lambda b, p: b.copy("ok", p + "/f"),
    "resolve": lambda b, p: b.resolve(p + "/f"),
}

# Operations that act on the entry at ``p`` itself, where a final link is the entry.
ON_THE_LINK = {"lstat", "rename_from", "write_bytes"}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("where", ["a", "a/b"])
def test_a_link_on_the_way_is_refused(tmp_path, canary, way, operation, where):
    root = tmp_path / "root"
    make_tree(root)
    target = root / where
    os.rename(target, tmp_path / "moved-away")
    os.symlink(canary, target)
    before = snapshot(canary)
    b = Beneath(str(root), use_openat2=way)
    # These act on a final link itself: one level deeper, the link is on the way.
    path = f"{where}/sub" if operation in ON_THE_LINK else where
    with pytest.raises(PathEscapeError, match="symlink"):
        OPERATIONS[operation](b, path)
    assert snapshot(canary) == before


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_a_final_link_is_never_followed(tmp_path, canary, way, operation):
    """A link at the name itself: refused where the operation would follow it, acted on
    (removed, moved, described, replaced) where it concerns the link; the target never changes."""
    root = tmp_path / "root"
    make_tree(root)
    os.unlink(root / "a" / "b" / "f")
    os.symlink(os.path.join(canary, "f"), root / "a" / "b" / "f")
    os.symlink(canary, root / "dirlink")
    os.symlink(os.path.join(tmp_path, "nowhere", "dangling"), root / "a" / "dangling")
    before = snapshot(canary)
    b = Beneath(str(root), use_openat2=way)
    for path in ("dirlink", "a/dangling"):
        with contextlib.suppress(PathEscapeError, OSError):
            OPERATIONS[operation](b, path)
    # The file-level link below a real directory.
    with contextlib.suppress(PathEscapeError, OSError):
        OPERATIONS[operation](b, "a/b")
    assert snapshot(canary) == before
    assert not os.path.exists(os.path.join(tmp_path, "nowhere"))


@pytest.mark.parametrize(
    "operation", ["open", "read_bytes", "open_read", "chmod", "copy_from", "listdir", "open_dir"]
)
def test_following_operations_refuse_a_final_link(tmp_path, canary, way, operation):
    root = tmp_path / "root"
    make_tree(root)
    os.symlink(canary, root / "dirlink")
    os.symlink(os.path.join(canary, "f"), root / "filelink")
    b = Beneath(str(root), use_openat2=way)
    path = {"copy_from": "", "listdir": "dirlink", "open_dir": "dirlink"}.get(operation, "filelink")
    with pytest.raises(PathEscapeError, match="symlink"):
        if operation == "copy_from":
            b.copy("filelink", "copied")
        else:
            OPERATIONS[operation](b, path)


def test_dangling_link_is_not_created_through(tmp_path, way):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    os.symlink(outside, root / "d")
    b = Beneath(str(root), use_openat2=way)
    for op in (
        lambda: b.write_bytes("d/x", b"x"),
        lambda: b.makedirs("d/x"),
        lambda: b.mkdir("d/x"),
        lambda: b.read_bytes("d"),
        lambda: b.open("d", os.O_WRONLY | os.O_CREAT),
    ):
        with pytest.raises(PathEscapeError):
            op()
    assert not os.path.lexists(outside)


BAD_PATHS = ["..", "../x", "a/../../x", "a/./b", "/etc/passwd", "a//b", "a/\x00b", "a/", "./a", "a/.."]


@pytest.mark.parametrize("bad", BAD_PATHS)
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_bad_paths_are_refused_before_any_io(tmp_path, way, bad, operation):
    root = tmp_path / "root"
    make_tree(root)
    before = snapshot(str(tmp_path))
    b = Beneath(str(root), use_openat2=way)
    with pytest.raises(PathEscapeError):
        OPERATIONS[operation](b, bad)
    assert snapshot(str(tmp_path)) == before


def test_check_rel():
    assert check_rel("") == ""
    assert check_rel("a/b.json") == "a/b.json"
    with pytest.raises(PathEscapeError):
        check_rel(b"a")  # type: ignore[arg-type]


# --- what the operations do -----------------------------------------------------------
def test_atomic_write_modes_and_bytes(tmp_path, way):
    b = Beneath(str(tmp_path / "root"), use_openat2=way)
    b.write_bytes("x/y/z.json", b"one", mode=0o600)
    assert (tmp_path / "root" / "x" / "y" / "z.json").read_bytes() == b"one"
    assert stat.S_IMODE(b.lstat("x/y/z.json").st_mode) == 0o600
    b.write_bytes("x/y/z.json", b"two", mode=0o644)
    assert b.read_bytes("x/y/z.json") == b"two"
    assert stat.S_IMODE(os.stat(tmp_path / "root" / "x" / "y" / "z.json").st_mode) == 0o644
    with pytest.raises(FileExistsError):
        b.write_bytes("x/y/z.json", b"three", exclusive=True)
    assert sorted(b.listdir("x/y")) == ["z.json"]  # no temp file left behind
    with b.writer("x/y/z.json") as w:
        w.write(b"partial")
        w.discard()
    assert b.read_bytes("x/y/z.json") == b"two"


def test_reads(tmp_path, way):
    root = tmp_path / "root"
    make_tree(root)
    big = os.urandom(300_000)
    (root / "big").write_bytes(big)
    b = Beneath(str(root), use_openat2=way)
    assert b.read_bytes("big") == big
    assert b.read_bytes("a/b/f") == b"inside"
    with b.open_read("a/b/f") as f:
        assert f.read() == b"inside"
    with pytest.raises(IsADirectoryError):
        b.open_read("a/b")
    with pytest.raises(FileNotFoundError):
        b.read_bytes("a/missing")
    with pytest.raises(FileNotFoundError):
        b.read_bytes("missing/f")
    with pytest.raises(NotADirectoryError):
        b.read_bytes("ok/f")
    with b.scandir("a") as entries:
        assert [(e.name, e.is_dir(follow_symlinks=False)) for e in entries] == [("b", True)]
    assert stat.S_ISDIR(b.lstat("").st_mode)


@pytest.mark.parametrize("size", [65_535, 65_536, 65_537, 131_072, 3 * 2**20 + 7])
def test_a_file_around_and_past_the_first_read_is_read_whole(tmp_path, way, size):
    """One read of 64 KiB serves a small file; a larger one is read on (after one fstat)
    to its last byte, by every reader: read_bytes, a kept reader, and fs.cat_file."""
    root = tmp_path / "root"
    (root / ".orchestrator").mkdir(parents=True)
    body = os.urandom(size)
    (root / ".orchestrator" / "state.json").write_bytes(body)
    b = Beneath(str(root), use_openat2=way)
    assert b.read_bytes(".orchestrator/state.json") == body
    b.fileno()
    assert b.reader(".orchestrator/state.json")() == body
    fs = orchfs.OrchFileSystem(root=str(root), skip_instance_cache=True)
    assert [fs.cat_file("state.json") for _ in range(3)] == [body] * 3  # the last two: kept


@pytest.mark.parametrize("change", [b"grown" * 30_000, None], ids=["grows", "shrinks"])
def test_a_file_that_changes_size_after_its_fstat_is_read_to_its_end(tmp_path, way, monkeypatch, change):
    """The rest of a large file is read in the size its fstat gave; a file that grows
    just after that fstat is still read to its new end, one that shrinks to its new
    end (no error, nothing made up)."""
    root = tmp_path / "root"
    root.mkdir()
    body = os.urandom(200_000)
    (root / "f").write_bytes(body)
    real_fstat = os.fstat
    changed = []

    def fstat_then_change(fd):
        st_ = real_fstat(fd)
        if not changed and stat.S_ISREG(st_.st_mode) and st_.st_size == len(body):
            changed.append(fd)
            with open(root / "f", "r+b") as f:
                if change is None:
                    f.truncate(100_000)
                else:
                    f.seek(0, os.SEEK_END)
                    f.write(change)
        return st_

    monkeypatch.setattr(os, "fstat", fstat_then_change)
    got = Beneath(str(root), use_openat2=way).read_bytes("f")
    assert changed  # the fstat of the read was the one that changed the file
    assert got == (body[:100_000] if change is None else body + change)


def test_read_all_reads_from_the_descriptors_position(tmp_path):
    body = os.urandom(200_000)
    (tmp_path / "f").write_bytes(body)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        os.lseek(fd, 1000, os.SEEK_SET)
        assert read_all(fd) == body[1000:]
    finally:
        os.close(fd)


def test_fifo_does_not_hang_a_read(tmp_path, way):
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "fifo")
    assert Beneath(str(root), use_openat2=way).read_bytes("fifo") == b""


def _kept_read(disk: Beneath, rel: str) -> object:
    disk.fileno()  # the root open, as it is once anything was read: the kept read's own path
    return disk.reader(rel)()


# Every way a whole file is read: the plain read, the read that answers -errno, a kept reader.
WHOLE_READS: dict[str, Callable[[Beneath, str], object]] = {
    "read_bytes": lambda disk, rel: disk.read_bytes(rel),
    "read_file": lambda disk, rel: disk.read_file(rel),
    "kept": _kept_read,
}


@pytest.mark.parametrize("read", WHOLE_READS.values(), ids=WHOLE_READS.keys())
def test_a_fed_fifo_is_refused_not_read(tmp_path, way, read):
    """A FIFO that another process holds open and has written into: its bytes are never
    handed out as a file's (nor does the read raise a raw BlockingIOError when nothing
    waits in it)."""
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "fifo")
    writer = os.open(root / "fifo", os.O_RDWR | os.O_NONBLOCK)  # another process's end
    disk = Beneath(str(root), use_openat2=way)
    try:
        with pytest.raises(UnsafeStateError, match="not a regular file"):
            read(disk, "fifo")  # nothing in it
        os.write(writer, b"fed by another process")
        with pytest.raises(UnsafeStateError, match="not a regular file"):
            read(disk, "fifo")
    finally:
        os.close(writer)


@pytest.mark.skipif(not hasattr(os, "mknod") or os.geteuid() != 0, reason="a device node needs root")
@pytest.mark.parametrize("read", WHOLE_READS.values(), ids=WHOLE_READS.keys())
def test_a_device_that_reads_short_is_refused_not_read(tmp_path, way, read):
    """A character device whose reads are short (the kernel log, /dev/kmsg, one record a
    read) where a file was: refused, its bytes never handed out as the file's."""
    if not os.access("/dev/kmsg", os.R_OK):
        pytest.skip("no readable /dev/kmsg here")
    root = tmp_path / "root"
    root.mkdir()
    os.mknod(root / "state.json", stat.S_IFCHR | 0o644, os.makedev(1, 11))
    with pytest.raises(UnsafeStateError, match="not a regular file"):
        read(Beneath(str(root), use_openat2=way), "state.json")


def test_directories_and_modes(tmp_path, way):
    root = tmp_path / "root"
    b = Beneath(str(root), use_openat2=way)
    b.makedirs("p/q/r", 0o700, exact_mode=True)
    for rel in ("p", "p/q", "p/q/r"):
        assert stat.S_IMODE(b.lstat(rel).st_mode) == 0o700
    b.mkdir("p/s", 0o755)
    b.chmod("p/s", 0o711)
    assert stat.S_IMODE(b.lstat("p/s").st_mode) == 0o711
    b.rmdir("p/s")
    with pytest.raises(FileNotFoundError):
        b.lstat("p/s")
    with pytest.raises(FileNotFoundError):
        b.mkdir("nope/x")


def test_rename_unlink_symlink_utime(tmp_path, way):
    root = tmp_path / "root"
    make_tree(root)
    b = Beneath(str(root), use_openat2=way)
    b.rename("ok", "moved/here", make_parents=True)
    assert b.read_bytes("moved/here") == b"ok file"
    b.symlink("../a/b/f", "moved/link")
    assert b.readlink("moved/link") == "../a/b/f"
    b.utime("moved/link", (1_000_000_000, 2_000_000_000))
    assert b.lstat("moved/link").st_mtime_ns == 2_000_000_000
    assert b.lstat("a/b/f").st_mtime_ns != 2_000_000_000
    b.rename("moved/link", "link2")
    assert os.path.islink(root / "link2")
    b.unlink("link2")
    assert (root / "a" / "b" / "f").read_bytes() == b"inside"


def test_remove_tree_removes_links_not_their_targets(tmp_path, canary, way):
    root = tmp_path / "root"
    make_tree(root)
    os.symlink(canary, root / "a" / "b" / "to-canary")
    os.symlink(os.path.join(canary, "f"), root / "a" / "file-link")
    (root / "a" / "b" / "deep" / "er").mkdir(parents=True)
    before = snapshot(canary)
    b = Beneath(str(root), use_openat2=way)
    b.remove_tree("a")
    assert sorted(os.listdir(root)) == ["ok"]
    os.symlink(canary, root / "top-link")
    b.remove_tree("top-link")
    assert not os.path.lexists(root / "top-link")
    assert snapshot(canary) == before


def test_copy_keeps_bytes_mode_and_times(tmp_path, way):
    root = tmp_path / "root"
    make_tree(root)
    payload = os.urandom(3 << 20)
    (root / "src").write_bytes(payload)
    os.chmod(root / "src", 0o640)
    os.utime(root / "src", ns=(1_500_000_000_000_000_000, 1_600_000_000_000_000_000))
    b = Beneath(str(root), use_openat2=way)
    b.copy("src", "backup/src")
    assert (root / "backup" / "src").read_bytes() == payload
    st_ = os.stat(root / "backup" / "src")
    assert stat.S_IMODE(st_.st_mode) == 0o640
    assert st_.st_mtime_ns == 1_600_000_000_000_000_000
    b.copy("src", "backup/private", mode=0o600)
    assert stat.S_IMODE(os.stat(root / "backup" / "private").st_mode) == 0o600
    with pytest.raises(FileExistsError):
        b.copy("src", "backup/src", exclusive=True)


def test_copy_fresh_writes_a_new_file_and_follows_no_link(tmp_path, canary):
    """The migration backup's copy: bytes, mode and times of the source into a new file,
    never over one, never through a link at either end; no part-copy left on failure."""
    (tmp_path / "out").mkdir()
    payload = os.urandom(3 << 20)
    (tmp_path / "src").write_bytes(payload)
    os.chmod(tmp_path / "src", 0o640)
    os.utime(tmp_path / "src", ns=(1_500_000_000_000_000_000, 1_600_000_000_000_000_000))
    os.symlink(os.path.join(canary, "f"), tmp_path / "link")
    os.symlink(os.path.join(canary, "new"), tmp_path / "out" / "planted")
    before = snapshot(canary)
    here, out = os.open(tmp_path, DIR_FLAGS), os.open(tmp_path / "out", DIR_FLAGS)
    try:
        copy_fresh(here, "src", out, "src")
        assert (tmp_path / "out" / "src").read_bytes() == payload
        st_ = os.stat(tmp_path / "out" / "src")
        assert (stat.S_IMODE(st_.st_mode), st_.st_mtime_ns) == (0o640, 1_600_000_000_000_000_000)
        with pytest.raises(FileExistsError):
            copy_fresh(here, "src", out, "src")
        with pytest.raises(FileExistsError):  # O_EXCL: a link in the way is not written through
            copy_fresh(here, "src", out, "planted")
        with pytest.raises(OSError) as caught:
            copy_fresh(here, "link", out, "from-link")
        assert caught.value.errno == errno.ELOOP
        with pytest.raises(IsADirectoryError):
            copy_fresh(here, "out", out, "dir")
        assert sorted(os.listdir(tmp_path / "out")) == ["planted", "src"]
    finally:
        os.close(here)
        os.close(out)
    assert snapshot(canary) == before


def test_resolve_judges_links(tmp_path, canary, way):
    root = tmp_path / "root"
    make_tree(root)
    os.symlink("b/f", root / "a" / "rel")
    os.symlink(str(root / "a" / "b"), root / "abs-dir")
    os.symlink("../rel", root / "a" / "b" / "chain")
    os.symlink("../../..", root / "a" / "b" / "up")
    os.symlink(canary, root / "out")
    os.symlink("loop", root / "loop")
    b = Beneath(str(root), use_openat2=way)
    assert b.resolve("a/rel") == "a/b/f"
    assert b.resolve("abs-dir/f") == "a/b/f"
    assert b.resolve("a/b/chain") == "a/b/f"
    assert b.resolve("a/b/missing/x") == "a/b/missing/x"
    assert b.read_bytes(b.resolve("a/b/chain")) == b"inside"
    for bad in ("a/b/up", "out/f", "loop"):
        with pytest.raises(PathEscapeError):
            b.resolve(bad)


def test_relpath(tmp_path, way):
    b = Beneath(str(tmp_path / "root"), use_openat2=way)
    assert b.relpath(str(tmp_path / "root" / "x" / "y")) == "x/y"
    assert b.relpath(str(tmp_path / "root")) == ""
    for bad in (str(tmp_path), str(tmp_path / "rootx" / "y"), "/etc"):
        with pytest.raises(PathEscapeError):
            b.relpath(bad)


def test_root_opened_on_first_use_and_kept(tmp_path, way):
    b = Beneath(str(tmp_path / "later"), use_openat2=way)
    with pytest.raises(FileNotFoundError):
        b.read_bytes("x")
    b.write_bytes("x", b"1")
    os.rename(tmp_path / "later", tmp_path / "renamed")
    assert b.read_bytes("x") == b"1"  # the descriptor moved with the directory


def test_pickle_reopens(tmp_path, way):
    root = tmp_path / "root"
    make_tree(root)
    b = Beneath(str(root), use_openat2=way)
    b.read_bytes("ok")
    copy = pickle.loads(pickle.dumps(b))
    assert copy.read_bytes("ok") == b"ok file"
    assert copy.uses_openat2 == b.uses_openat2


def test_forcing_openat2_where_missing_fails_clearly(tmp_path):
    if OPENAT2_AVAILABLE:
        assert Beneath(str(tmp_path), use_openat2=True).uses_openat2
    else:
        with pytest.raises(OSError):
            Beneath(str(tmp_path), use_openat2=True)
    assert not Beneath(str(tmp_path), use_openat2=False).uses_openat2


# --- random trees with planted links ---------------------------------------------------
NAMES = st.sampled_from(["a", "b", "c", "d"])
PATHS = st.lists(NAMES, min_size=1, max_size=4).map("/".join)
PLANTS = st.lists(
    st.tuples(PATHS, st.sampled_from(["canary", "canary/f", "canary/sub", "nowhere", "inside"])), max_size=6
)
STEPS = st.lists(st.tuples(st.sampled_from(sorted(OPERATIONS)), PATHS), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dirs=st.lists(PATHS, max_size=6), plants=PLANTS, steps=STEPS, use_openat2=st.booleans())
def test_random_trees_with_planted_links_never_touch_the_canary(
    tmp_path_factory, dirs, plants, steps, use_openat2
):
    if use_openat2 and not OPENAT2_AVAILABLE:
        use_openat2 = False
    base = tmp_path_factory.mktemp("tree")
    canary = base / "canary"
    (canary / "sub").mkdir(parents=True)
    (canary / "f").write_bytes(b"canary")
    (canary / "sub" / "f").write_bytes(b"canary too")
    root = base / "root"
    root.mkdir()
    (root / "ok").write_bytes(b"ok")
    for rel in dirs:
        os.makedirs(root / rel, exist_ok=True)
    for rel, kind in plants:
        where = root / rel
        if not where.parent.is_dir() or os.path.lexists(where):
            continue
        target = {"nowhere": base / "nowhere", "inside": root / "ok"}.get(kind, base / kind)
        os.symlink(target, where)
    before = snapshot(str(canary))
    b = Beneath(str(root), use_openat2=use_openat2)
    for operation, rel in steps:
        with contextlib.suppress(PathEscapeError, OSError):
            OPERATIONS[operation](b, rel)
    assert snapshot(str(canary)) == before
    assert not os.path.lexists(base / "nowhere")
    assert sorted(os.listdir(base)) == ["canary", "root"]


def test_try_open_tells_a_link_from_a_miss(tmp_path, canary, way):
    root = tmp_path / "root"
    make_tree(root)
    os.symlink(canary, root / "dirlink")
    os.symlink("a", root / "inside-link")
    b = Beneath(str(root), use_openat2=way)
    for flags in (PROBE_FLAGS, DIR_FLAGS, os.O_RDONLY):
        assert b.try_open("dirlink", flags) == -errno.ELOOP
        assert b.try_open("inside-link", flags) == -errno.ELOOP
        assert b.try_open("dirlink/f", flags) == -errno.ELOOP
        assert b.try_open("missing", flags) == -errno.ENOENT
        assert b.try_open("ok/x", flags) == -errno.ENOTDIR
        assert b.probe("dirlink", flags) == -errno.ELOOP
    assert b.probe("a/b/f") == 0
    assert b.read_file("a/b/f") == b"inside"
    assert b.read_file("dirlink/f") == -errno.ELOOP
    assert b.read_file("missing") == -errno.ENOENT


# --- through the storage adapter and the filesystem -------------------------------------
@pytest.fixture
def repo_with_links(tmp_path, canary):
    repo = tmp_path / "repo"
    (repo / ".orchestrator").mkdir(parents=True)
    (repo / "data").mkdir()
    (repo / "data" / "state.json").write_bytes(b"v1 inside")
    return repo


@pytest.mark.parametrize("target", ["data/state.json", "ABS"], ids=["relative", "absolute"])
def test_a_v1_file_that_links_inside_is_read(repo_with_links, target):
    repo = repo_with_links
    os.symlink(
        str(repo / "data" / "state.json") if target == "ABS" else target, repo / ".workflow_state.json"
    )
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    with pytest.warns(LegacyPathWarning):
        assert fs.cat_file("state.json") == b"v1 inside"
    assert fs.exists("state.json")
    assert fs.info("state.json")["size"] == len(b"v1 inside")


def test_a_v1_file_that_links_outside_is_refused(repo_with_links, canary):
    repo = repo_with_links
    before = snapshot(canary)
    os.symlink(os.path.join(canary, "f"), repo / ".workflow_state.json")
    os.symlink(os.path.join(canary, "sub"), repo / ".workflow_checkpoints")
    os.symlink("../" * 6 + canary.lstrip("/"), repo / ".workflow_log.jsonl")
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    for logical in ("state.json", "checkpoints/g", "log.jsonl"):
        with pytest.raises(PathEscapeError):
            fs.cat_file(logical)
        with pytest.raises(PathEscapeError):
            fs.open(logical, "rb")
    assert "g" not in str(fs.ls("", detail=False))
    assert snapshot(canary) == before


@pytest.mark.parametrize("use_openat2", WAYS)
def test_storage_on_both_ways_refuses_a_swap_on_a_warm_instance(repo_with_links, canary, use_openat2):
    repo = repo_with_links
    state = repo / ".orchestrator"
    (state / "cp").mkdir()
    (state / "cp" / "one.json").write_bytes(b"inside")
    (state / "log.jsonl").write_bytes(b"")
    store = LocalStorage(str(state), str(repo), use_openat2=use_openat2)
    assert store.read("cp/one.json") == b"inside"
    assert store.exists("cp/one.json")
    assert [n for n, _ in store.listdir("cp")] == ["one.json"]
    store.append("cp/log.jsonl", b"x")
    os.rename(state / "cp", repo / "cp-aside")
    os.symlink(canary, state / "cp")  # the same instance, every memo warm
    with open(os.path.join(canary, "one.json"), "wb") as f:
        f.write(b"CANARY")
    before = snapshot(canary)
    for call in (
        lambda: store.read("cp/one.json"),
        lambda: store.read_optional("cp/one.json", 0, 3),
        lambda: store.open_read("cp/one.json"),
        lambda: store.info("cp/one.json"),
        lambda: store.exists("cp/one.json"),
        lambda: store.listdir("cp"),
        lambda: store.write("cp/new.json", b"x"),
        lambda: store.append("cp/log.jsonl", b"x"),
        lambda: store.append_existing("cp/log.jsonl", b"x"),
        lambda: store.makedirs("cp/d"),
        lambda: store.remove("cp/one.json"),
        lambda: store.remove_tree("cp/sub"),
        lambda: store.rename("cp/one.json", "moved.json"),
        lambda: store.copy("cp/one.json", "copied.json"),
    ):
        with pytest.raises(PathEscapeError):
            call()
    assert snapshot(canary) == before
    assert store.has_entry("cp")  # the link itself is an entry; nothing below it is
    assert not store.has_entry("cp/one.json")


@pytest.mark.parametrize("use_openat2", WAYS)
def test_storage_follows_links_that_stay_inside(repo_with_links, use_openat2):
    repo = repo_with_links
    state = repo / ".orchestrator"
    os.symlink("../data", state / "alias")
    os.symlink(str(repo / "data" / "state.json"), state / "file-alias.json")
    store = LocalStorage(str(state), str(repo), use_openat2=use_openat2)
    assert store.read("alias/state.json") == b"v1 inside"
    assert store.read("file-alias.json") == b"v1 inside"
    assert store.info("alias")["type"] == "directory"
    assert dict(store.listdir(""))["alias"]["type"] == "directory"
    assert [n for n, _ in store.listdir("alias")] == ["state.json"]
    with pytest.raises(PathEscapeError):  # writes never go through a link
        store.write("alias/new.json", b"x")


def test_a_linked_state_directory_is_read_inside_and_never_written_through(tmp_path, canary):
    repo = tmp_path / "repo"
    (repo / "real-state").mkdir(parents=True)
    (repo / "real-state" / "state.json").write_bytes(b"through an inside link")
    os.symlink("real-state", repo / ".orchestrator")
    store = LocalStorage(str(repo / ".orchestrator"), str(repo))
    assert store.read("state.json") == b"through an inside link"
    with pytest.raises(PathEscapeError):
        store.write("state.json", b"x")
    assert (repo / "real-state" / "state.json").read_bytes() == b"through an inside link"
    os.unlink(repo / ".orchestrator")
    os.symlink(canary, repo / ".orchestrator")
    with pytest.raises(PathEscapeError):
        LocalStorage(str(repo / ".orchestrator"), str(repo))


def test_a_file_reader_reads_only_a_plain_file_beneath_the_root(tmp_path, canary, way):
    """Beneath.reader, kept and called again as the tree changes (with openat2 and
    without): the file's bytes while it is a plain file, else a negative errno, never
    a byte from outside, whatever was planted on the way or at the name."""
    root = tmp_path / "root"
    make_tree(root)
    os.mkdir(os.path.join(canary, "b"))
    with open(os.path.join(canary, "b", "f"), "wb") as f:
        f.write(b"outside")  # what a link planted at "a" would show at a/b/f
    before = snapshot(canary)
    b = Beneath(str(root), use_openat2=way)
    b.fileno()  # the root opened, as by any read before (else a reader answers -EBADF)
    read = b.reader("a/b/f")
    assert read() == b"inside"
    (root / "a" / "b" / "f").write_bytes(b"changed")
    assert read() == b"changed"
    os.unlink(root / "a" / "b" / "f")
    assert read() == -errno.ENOENT
    os.symlink(os.path.join(canary, "f"), root / "a" / "b" / "f")
    assert read() == -errno.ELOOP
    os.unlink(root / "a" / "b" / "f")
    (root / "a" / "b" / "f").mkdir()
    assert read() == -errno.EISDIR
    os.rename(root / "a", tmp_path / "moved-away")
    os.symlink(canary, root / "a")
    got = read()
    assert isinstance(got, int)
    assert got < 0
    assert snapshot(canary) == before


def test_a_copy_never_keeps_set_id_bits(tmp_path):
    """A copy belongs to whoever makes it (root, for a migration run as root): a planted
    set-user-ID or set-group-ID program must not become one that runs as that maker."""
    from orchfs import migrate
    from orchfs.beneath import Beneath, copy_fresh
    from orchfs.testing import build_legacy_repo

    (tmp_path / "a").mkdir()
    program = tmp_path / "a" / "tool"
    program.write_bytes(b"#!/bin/sh\n")
    os.chmod(program, 0o6755)
    disk = Beneath(str(tmp_path))
    disk.copy("a/tool", "a/copy")
    fd = os.open(tmp_path / "a", os.O_RDONLY | os.O_DIRECTORY)
    try:
        copy_fresh(fd, "tool", fd, "fresh")
    finally:
        os.close(fd)
    for name in ("copy", "fresh"):
        assert stat.S_IMODE(os.lstat(tmp_path / "a" / name).st_mode) == 0o755, name
        assert (tmp_path / "a" / name).read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE(os.lstat(program).st_mode) == 0o6755  # the source is left as it was

    root = tmp_path / "repo"
    build_legacy_repo(root, {".workflow_checkpoints/cp_1.json": b"{}"})
    os.chmod(root / ".workflow_checkpoints" / "cp_1.json", 0o4755)
    result = migrate.apply(root)
    (backup,) = (root / ".orchestrator" / "migration_backup").rglob("cp_1.json")
    assert stat.S_IMODE(os.lstat(backup).st_mode) & (stat.S_ISUID | stat.S_ISGID) == 0
    assert result.applied
