"""Storage adapters: how bytes are read and written on one kind of backend.

An adapter is rooted at a base directory (the repository root, or the directory that
plays ``.orchestrator/``) and takes *physical relative paths* that the path gate has
already validated. It owns what "atomic" and "durable" mean on its backend:

* :class:`LocalStorage` talks to ``os`` directly (no fsspec on the hot path), every
  operation through the beneath-root layer (:mod:`orchfs.beneath`): one ``openat2``
  beneath the repository root per read, no symlink followed; a link met on a read is
  judged and allowed only while it stays inside the root. Writes are published by
  :class:`LocalAtomicWriter`.
* :class:`FsspecStorage` wraps any fsspec filesystem (memory, S3, GCS, ...). There is
  no rename on object storage, so a write is staged and published as one PUT
  (multipart for large files); exclusive create is a conditional PUT
  (``If-None-Match: *``). In memory the publish is a swap at close.

Info dictionaries use fsspec's keys: ``type`` (``"file"``/``"directory"``), ``size``,
``mtime``, ``created`` (POSIX seconds) and ``mode`` where the backend has one.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
from collections.abc import Callable
from typing import IO, Any, NamedTuple, Protocol

from .atomic import (
    DEFAULT_FILE_MODE,
    DIR_FLAGS,
    PRIVATE_DIR_MODE,
    REPLACE,
    REPLACE_LOOKED,
    BufferedUploadWriter,
    LocalAtomicWriter,
    StagedWriter,
    WriteKind,
    write_whole,
)
from .beneath import PROBE_FLAGS, READ_FLAGS, Beneath, read_all
from .errors import BucketNotFoundError, PathEscapeError, UnsafeStateError
from .paths import MARKER_PREFIXES, MEMO_LIMIT, TEMP_PREFIX

_O_PATH = getattr(os, "O_PATH", 0)
# The entry itself, a link included (for markers): nothing read, nothing followed.
_ENTRY_FLAGS = (_O_PATH if _O_PATH else os.O_RDONLY | os.O_NONBLOCK) | os.O_NOFOLLOW
# O_NONBLOCK: a FIFO planted where a log is fails at once (ENXIO) instead of hanging.
# An append that finds its file replaced after the open opens the path again, this often.
_APPEND_TRIES = 100
_APPEND_EXISTING_FLAGS = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NONBLOCK", 0)
_APPEND_FLAGS = _APPEND_EXISTING_FLAGS | os.O_CREAT
try:
    from fcntl import LOCK_EX as _LOCK_EX
    from fcntl import flock as _flock
except ImportError:  # pragma: no cover - Windows
    _flock = None  # type: ignore[assignment]
    _LOCK_EX = 0


class Capabilities(NamedTuple):
    """What a backend can do natively; the layers above adapt to it, and every choice
    between backends is made on these, never on :attr:`Storage.kind`.

    ``local_path``: the base is a directory on this machine's disk (git sees it, reads
    can be bounded, a planted sparse file costs its maker nothing). ``os_locks``: an OS
    lock (``flock``) on a file there holds between processes. ``leases``: other machines
    share the store, so a lock is a lease object and writes under it are fenced.
    ``parents_required``: directories are entries of the filesystem itself, made before a
    file goes in and removed with ``rmdir`` (fsspec's memory filesystem); on object
    storage they are key prefixes (``empty_directories`` where a filer keeps them)."""

    atomic_rename: bool
    conditional_put: bool
    native_append: bool
    empty_directories: bool
    local_path: bool = False
    os_locks: bool = False
    leases: bool = False
    parents_required: bool = False


class Listing(NamedTuple):
    """One directory as an adapter sees it: ``(name, info)`` per child, and apart from
    them the names of orchfs's markers and temp files found there. A listing asked for
    without ``detail`` may give ``None`` for an info it would need a stat for."""

    children: list[tuple[str, dict[str, Any] | None]]
    markers: list[str]


class Storage(Protocol):
    """What the overlay, the locks and the operations ask of a backend.

    Paths are physical, relative to the adapter's base, and have passed the gate.
    Choices between backends are made on :attr:`capabilities`; ``kind`` (``local``,
    ``memory`` or ``object``) names the backend in messages.
    """

    kind: str
    base: str
    capabilities: Capabilities

    def url(self, rel: str) -> str: ...
    def info(self, rel: str) -> dict[str, Any] | None: ...
    def exists(self, rel: str) -> bool: ...
    def maybe_exists(self, rel: str) -> bool: ...
    def has_entry(self, rel: str) -> bool: ...
    def scan(self, rel: str, detail: bool = True) -> Listing: ...
    def listdir(self, rel: str) -> list[tuple[str, dict[str, Any]]]: ...
    def find_files(self, rel: str, include_markers: bool = False) -> list[str]: ...
    def read_optional(self, rel: str, start: int | None = None, end: int | None = None) -> bytes | None: ...
    def read(self, rel: str, start: int | None = None, end: int | None = None) -> bytes: ...
    def whole_reader(self, rel: str) -> Callable[[], bytes | int | None]: ...
    def open_read(self, rel: str, block_size: int | None = None, size: int | None = None) -> IO[bytes]: ...
    def open_write(
        self, rel: str, kind: WriteKind = REPLACE, *, mode: int = DEFAULT_FILE_MODE
    ) -> StagedWriter: ...
    def write(self, rel: str, data: bytes, kind: WriteKind = REPLACE, *, mode: int | None = None) -> None: ...
    def append(self, rel: str, data: bytes) -> None: ...
    def append_existing(self, rel: str, data: bytes) -> bool: ...
    def makedirs(self, rel: str) -> None: ...
    def makedirs_private(self, rel: str) -> None: ...
    def remove(self, rel: str) -> None: ...
    def rmdir(self, rel: str) -> None: ...
    def remove_tree(self, rel: str) -> None: ...
    def rename(self, src: str, dst: str) -> None: ...
    def copy(self, src: str, dst: str) -> None: ...


def _local_info(st: os.stat_result) -> dict[str, Any]:
    return {
        "type": "directory" if stat.S_ISDIR(st.st_mode) else "file",
        "size": 0 if stat.S_ISDIR(st.st_mode) else st.st_size,
        "mtime": st.st_mtime,
        "created": st.st_ctime,
        "mode": st.st_mode,
    }


class LocalStorage:
    """Local disk rooted at ``base``, every operation beneath ``boundary`` (see
    :mod:`orchfs.beneath`): no read, write, move or delete follows a symlink, and a
    link met on a read is judged (allowed only when it stays inside ``boundary``)."""

    kind = "local"
    capabilities = Capabilities(
        atomic_rename=True,
        conditional_put=True,
        native_append=True,
        empty_directories=True,
        local_path=True,
        os_locks=True,
    )

    def __init__(self, base: str, boundary: str | None = None, *, use_openat2: bool | None = None) -> None:
        self.base = os.path.abspath(base)
        disk = Beneath(boundary or self.base, use_openat2=use_openat2)
        try:
            prefix = disk.relpath(self.base)
        except PathEscapeError:  # state kept elsewhere on local disk: its own root
            disk = Beneath(self.base, use_openat2=use_openat2)
            prefix = ""
        if prefix:
            # A base that is a link leaving the boundary is refused at once; one that stays
            # inside is judged on every read as any link is, and refused for writes.
            with contextlib.suppress(FileNotFoundError):
                disk.resolve(prefix)
        self._disk = disk
        self.boundary = disk.root
        self._prefix = prefix
        self._under = f"{prefix}/" if prefix else ""
        # rel -> its path beneath the boundary: the same string object on every call,
        # so the layer's own look-ups hash it once. Strings only; nothing about the disk.
        self._paths: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"LocalStorage({self.base!r})"

    def url(self, rel: str) -> str:
        return self._full(rel)

    def _full(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def _p(self, rel: str) -> str:
        """``rel`` (relative to the base) as a path beneath the boundary."""
        path = self._paths.get(rel)
        if path is None:
            path = self._under + rel if rel else self._prefix
            if len(self._paths) < MEMO_LIMIT:
                self._paths[rel] = path
        return path

    @property
    def disk(self) -> Beneath:
        """The beneath-root layer this adapter works through (rooted at ``boundary``)."""
        return self._disk

    def path_beneath(self, rel: str) -> str:
        """``rel`` as a path beneath ``boundary`` (what :attr:`disk` takes)."""
        return self._p(rel)

    def _open_dir(self, rel_dir: str, create: bool) -> int:
        """A descriptor of directory ``base/rel_dir``, no link followed on the way."""
        return self._disk.open_dir(self._p(rel_dir), create=create)

    def open_dir(self, rel: str, *, create: bool = False) -> int:
        """A descriptor of the directory ``rel`` (made where ``create``), no link followed
        on the way; the caller closes it. Local disk only: the locks use it."""
        return self._open_dir(rel, create)

    def _judged(self, rel: str) -> str:
        """The link-free path beneath the boundary that ``rel`` stands for: each link on
        the way read and allowed only when it stays inside (else PathEscapeError)."""
        return self._disk.resolve(self._p(rel))

    # --- reading -------------------------------------------------------------------
    def lstat(self, rel: str) -> os.stat_result | None:
        """The entry's stat (following only links that stay inside), or None."""
        disk = self._disk
        path = self._p(rel)
        try:
            st = disk.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PathEscapeError:
            st = None  # a link on the way: judged below
        if st is None or stat.S_ISLNK(st.st_mode):
            try:
                st = disk.lstat(self._judged(rel))
            except (FileNotFoundError, NotADirectoryError):
                return None
        return st

    def info(self, rel: str) -> dict[str, Any] | None:
        st = self.lstat(rel)
        return None if st is None else _local_info(st)

    def maybe_exists(self, rel: str) -> bool:
        """A cheap check without an exception on a miss (False means absent)."""
        err = self._disk.probe(self._p(rel), _ENTRY_FLAGS)
        return err == 0 or err == -errno.ELOOP  # a link on the way: the lookup proper judges it

    def has_entry(self, rel: str) -> bool:
        """Whether an entry (a link counts) is at exactly ``rel``, reached without a link:
        for the marker files orchfs writes itself."""
        return self._disk.probe(self._p(rel), _ENTRY_FLAGS) == 0

    def exists(self, rel: str) -> bool:
        fd = self._disk.try_open(self._paths.get(rel) or self._p(rel), PROBE_FLAGS)
        if fd >= 0:  # there, and no link anywhere: the common case in one call
            os.close(fd)
            return True
        if fd != -errno.ELOOP:
            return False
        return self.lstat(rel) is not None

    def _open_judged(self, rel: str, flags: int = READ_FLAGS) -> int:
        """A descriptor of ``rel``, a link on the way judged; -ENOENT when absent."""
        fd = self._disk.try_open(self._p(rel), flags)
        if fd == -errno.ELOOP:
            fd = self._disk.try_open(self._judged(rel), flags)
            if fd == -errno.ELOOP:  # swapped for a link since: refused, never followed
                raise PathEscapeError(f"{self._full(rel)} changed into a symlink while read; refused")
        if fd < 0 and fd not in (-errno.ENOENT, -errno.ENOTDIR):
            raise OSError(-fd, os.strerror(-fd), self._full(rel))
        return fd

    def scan(self, rel: str, detail: bool = True) -> Listing:
        """``(name, info)`` of each child and, apart from them, the marker names; without
        ``detail`` no child but a symlink (judged as always) is stat'ed, its info None."""
        fd = self._open_judged(rel, DIR_FLAGS)
        if fd < 0:
            raise OSError(-fd, os.strerror(-fd), self._full(rel))
        out: list[tuple[str, dict[str, Any] | None]] = []
        markers = []
        links = []
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    name = entry.name
                    if name.startswith(MARKER_PREFIXES):
                        markers.append(name)
                        continue
                    if not detail and not entry.is_symlink():  # the directory entry's type says so
                        out.append((name, None))
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        links.append(name)
                        continue
                    out.append((name, _local_info(st)))
        finally:
            os.close(fd)
        for name in links:  # judged one by one; one that leaves the boundary is left out
            with contextlib.suppress(PathEscapeError, OSError):
                st = self.lstat(f"{rel}/{name}" if rel else name)
                if st is not None:
                    out.append((name, _local_info(st)))
        return Listing(out, markers)

    def listdir(self, rel: str) -> list[tuple[str, dict[str, Any]]]:
        """(name, info) of each child, markers and temp files left out."""
        return self.scan(rel).children  # type: ignore[return-value]

    def read_optional(self, rel: str, start: int | None = None, end: int | None = None) -> bytes | None:
        """The file's bytes (or a range of them), or None when it is absent: every read's path.

        One ``openat2`` beneath the boundary (no link followed, kernel-enforced) on every
        call: nothing is remembered between reads that could skip the check.
        """
        if start is None and end is None:
            data = self._disk.read_file(self._paths.get(rel) or self._p(rel))
            if data.__class__ is bytes:
                return data  # type: ignore[return-value]
        fd = self._open_judged(rel)
        if fd < 0:
            return None
        try:
            if start is None and end is None:
                return read_all(fd, self._full(rel))
            begin, stop = _clip_range(start, end, os.fstat(fd).st_size)
            return os.pread(fd, stop - begin, begin) if stop > begin else b""
        finally:
            os.close(fd)

    def read(self, rel: str, start: int | None = None, end: int | None = None) -> bytes:
        data = self.read_optional(rel, start, end)
        if data is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", self._full(rel))
        return data

    def whole_reader(self, rel: str) -> Callable[[], bytes | int | None]:
        """A call that reads the whole file ``rel`` for a caller that reads it often: its
        bytes, or anything else when :meth:`read_optional` must say what is there (absent,
        a link to judge, a directory). Each call is the same ``openat2`` beneath the
        boundary as every read; only the encoded path is kept."""
        return self._disk.reader(self._p(rel))

    def open_read(self, rel: str, block_size: int | None = None, size: int | None = None) -> IO[bytes]:
        fd = self._open_judged(rel)
        if fd < 0:
            raise OSError(-fd, os.strerror(-fd), self._full(rel))
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", self._full(rel))
            # A device or a pipe never ends (or blocks): no reader of it is handed out.
            raise self._not_own_file(rel)
        return os.fdopen(fd, "rb", buffering=block_size or -1)

    # --- writing -------------------------------------------------------------------
    def open_write(
        self, rel: str, kind: WriteKind = REPLACE, *, mode: int = DEFAULT_FILE_MODE
    ) -> StagedWriter:
        """A writer that refuses a directory (or, creating, any entry) at ``rel`` before
        the caller stages a single byte (unless the caller has just looked itself)."""
        return self._writer(rel, kind, mode, check=not kind.looked)

    def _writer(self, rel: str, kind: WriteKind, mode: int, *, check: bool) -> LocalAtomicWriter:
        head, _, name = rel.rpartition("/")
        dir_fd = self._open_dir(head, create=True)
        if check:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and (kind.create or stat.S_ISDIR(st.st_mode)):
                os.close(dir_fd)
                if stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(errno.EISDIR, "is a directory", self._full(rel))
                raise FileExistsError(errno.EEXIST, "file exists", self._full(rel))
        return LocalAtomicWriter(
            dir_fd,
            name,
            self._full(rel),
            exclusive=kind.create,
            autocommit=not kind.deferred,
            final_mode=mode,
        )

    def write(self, rel: str, data: bytes, kind: WriteKind = REPLACE, *, mode: int | None = None) -> None:
        # All bytes are at hand: the publishing rename or link itself refuses a
        # directory or an existing entry, so the early check's extra stat is not needed,
        # and no file object is made.
        head, _, name = rel.rpartition("/")
        dir_fd = self._disk.open_dir(self._p(head), create=True)
        write_whole(dir_fd, name, data, exclusive=kind.create, final_mode=mode or DEFAULT_FILE_MODE)

    def append(self, rel: str, data: bytes) -> None:
        """One ``O_APPEND`` write of the whole of ``data`` under an ``flock`` of the file.

        A single ``O_APPEND`` write never interleaves with another on a local
        filesystem; the ``flock`` keeps that true where the kernel would split a large
        write, and serialises with anyone else who locks the file. A file with another
        name (a hard link) first gets a copy of its own (:meth:`_unshare`): an append
        never writes through a shared inode.
        """
        head = rel.rpartition("/")[0]
        if head:
            os.close(self._open_dir(head, create=True))
        for _ in range(_APPEND_TRIES):
            fd = self._disk.try_open(self._p(rel), _APPEND_FLAGS, DEFAULT_FILE_MODE, create_root=True)
            if fd < 0:
                self._refuse_append(rel, fd)
            if self._append_fd(fd, rel, data):
                return
        raise self._kept_replacing(rel)

    def append_existing(self, rel: str, data: bytes) -> bool:
        """Append to a file that already exists (False, and nothing done, if it does not).

        The fast path of ``append_line``: one open without ``O_CREAT``, beneath the
        boundary with no link followed.
        """
        for _ in range(_APPEND_TRIES):
            fd = self._disk.try_open(self._p(rel), _APPEND_EXISTING_FLAGS)
            if fd == -errno.ENOENT:
                return False
            if fd < 0:
                self._refuse_append(rel, fd)
            if self._append_fd(fd, rel, data):
                return True
        raise self._kept_replacing(rel)

    def _refuse_append(self, rel: str, err: int) -> None:
        if err == -errno.ELOOP:
            raise PathEscapeError(f"{self._full(rel)} is or runs through a symlink; not appended")
        if err == -errno.ENXIO:
            raise self._not_own_file(rel)
        raise OSError(-err, os.strerror(-err), self._full(rel))

    def _not_own_file(self, rel: str) -> UnsafeStateError:
        return UnsafeStateError(
            f"{self._full(rel)} is not a plain file (a FIFO or a device); refused: remove it",
            self._full(rel),
        )

    def _kept_replacing(self, rel: str) -> OSError:
        return OSError(
            errno.EAGAIN, "the file was replaced while appending, again and again; try again", self._full(rel)
        )

    def _append_fd(self, fd: int, rel: str, data: bytes) -> bool:
        """Append to the open ``fd``; False if the file was replaced or removed since it was
        opened (a concurrent atomic write or rm, another appender's copy of its own: the
        caller opens the path again)."""
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise self._not_own_file(rel)
            if _flock is not None:
                _flock(fd, _LOCK_EX)
                st = os.fstat(fd)  # what the lock now covers
            # Asked of the path under the lock, not told by the link count: a file replaced
            # after the open may live on under another name (a migration backup is a hard
            # link of a checkpoint), with one name left, and must not be written.
            if not self._still_names(rel, st):
                return False
            if st.st_nlink > 1:
                self._unshare(rel, st)
                return False  # the path names a file of its own now: open it again
            written = os.write(fd, data)
            if written != len(data):  # only on a full disk: never leave half a line
                os.ftruncate(fd, os.fstat(fd).st_size - written)
                raise OSError(errno.ENOSPC, "short append", self._full(rel))
            return True
        finally:
            os.close(fd)

    def _still_names(self, rel: str, st: os.stat_result) -> bool:
        """Whether ``rel`` (reached beneath the base, no link followed) names the file that
        ``st`` describes: False when it is gone, a link, or another file now."""
        probe = self._disk.try_open(self._p(rel), PROBE_FLAGS)
        if probe < 0:
            return False  # the next open settles it (a link there is refused then)
        try:
            now = os.fstat(probe)
        finally:
            os.close(probe)
        return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)

    def _unshare(self, rel: str, st: os.stat_result) -> None:
        """Under the lock of the file that ``st`` describes, which has (or had when it was
        opened) another name: the migration's backup of a checkpoint, or a file outside
        the repository that a planted hard link names. An append never writes through
        a shared inode: while the path still names it, the path gets a copy of its own
        (:meth:`~orchfs.beneath.Beneath.unshare`), which the caller opens again. An
        appender that opened the old file before that copy finds the path naming another
        file under the lock (:meth:`_still_names`) and opens the path again too."""
        reader = self._disk.try_open(self._p(rel))
        if reader == -errno.ENOENT:
            return  # gone: the next open settles it
        if reader < 0:
            self._refuse_append(rel, reader)  # a link now, or not readable: raised
        try:
            now = os.fstat(reader)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) and now.st_nlink > 1:
                self._disk.unshare(self._p(rel), reader)
        finally:
            os.close(reader)

    def makedirs(self, rel: str) -> None:
        os.close(self._open_dir(rel, create=True))

    def makedirs_private(self, rel: str) -> None:
        """``rel`` and every directory on the way to it (below the base) made 0700, each
        reached without following a symlink."""
        parts = rel.split("/")
        for depth in range(1, len(parts) + 1):
            fd = self._open_dir("/".join(parts[:depth]), create=True)
            try:
                os.fchmod(fd, PRIVATE_DIR_MODE)
            finally:
                os.close(fd)

    def remove(self, rel: str) -> None:
        self._disk.unlink(self._p(rel))

    def rmdir(self, rel: str) -> None:
        self._disk.rmdir(self._p(rel))

    def remove_tree(self, rel: str) -> None:
        """Remove a directory and everything in it, markers included, never via a link
        (a link at ``rel`` is removed itself)."""
        self._disk.remove_tree(self._p(rel))

    def find_files(self, rel: str, include_markers: bool = False) -> list[str]:
        """Paths of every file below ``rel`` (relative to it); temp files left out, and
        whiteout markers too unless ``include_markers``. Links are listed, never entered."""
        skipped = TEMP_PREFIX if include_markers else MARKER_PREFIXES
        out = []
        try:
            for top, dirs, files in self._disk.walk(self._p(rel)):
                dirs[:] = [d for d in dirs if not d.startswith(skipped)]
                for name in files:
                    if not name.startswith(skipped):
                        out.append(f"{top}/{name}" if top else name)
        except (FileNotFoundError, NotADirectoryError, PathEscapeError):
            return []
        return out

    def rename(self, src: str, dst: str) -> None:
        self._disk.rename(self._p(src), self._p(dst), make_parents=True)

    def copy(self, src: str, dst: str) -> None:
        # A link at the source is judged like any read; the copy gets the usual mode.
        self._disk.copy(self._judged(src), self._p(dst), mode=DEFAULT_FILE_MODE, keep_times=False)


def _clip_range(start: int | None, end: int | None, size: int) -> tuple[int, int]:
    begin = 0 if start is None else (max(size + start, 0) if start < 0 else min(start, size))
    stop = size if end is None else (max(size + end, 0) if end < 0 else min(end, size))
    return begin, stop


class FsspecStorage:
    """Any fsspec filesystem (memory, object storage), rooted at ``base``."""

    def __init__(self, fs: Any, base: str, kind: str, read_options: dict[str, Any] | None = None) -> None:
        self.fs = fs
        self.base = base.rstrip("/")
        self.kind = kind
        self._read_options = read_options or {}
        self._bucket_ready = False
        # Conditional create/replace/delete with versions: exclusive create, leases, fencing.
        # Imported here: a local repository's commands never load object-storage requests.
        from .conditional import for_filesystem

        self.conditional = for_filesystem(fs, self.url(""))
        self._capabilities: Capabilities | None = None
        # Objects this adapter has just read or written: a write to one of them needs no
        # lookup first (a directory cannot appear under a file's own key unseen here).
        self._files: set[str] = set()
        self._dirs: set[str] = set()  # prefixes seen holding objects (ancestors of those files)

    @property
    def capabilities(self) -> Capabilities:
        if self._capabilities is None:
            # The one place the kind is read: fsspec's memory filesystem lives in this
            # process (thread locks serve it), every other one is shared object storage.
            memory = self.kind == "memory"
            self._capabilities = Capabilities(
                atomic_rename=False,
                conditional_put=True,
                native_append=False,
                empty_directories=memory or self._filer_backed(),
                leases=not memory,
                parents_required=memory,
            )
        return self._capabilities

    def _filer_backed(self) -> bool:
        """Whether this S3 store keeps directories as entries of their own (SeaweedFS's
        filer: a prefix emptied of its last object stays listed). The store says so in its
        ``Server`` header, asked once per bucket and process."""
        if "s3" not in _protocols(self.fs):
            return False
        bucket = self.base.partition("/")[0]
        key = (str(getattr(self.fs, "client_kwargs", {}).get("endpoint_url")), bucket)
        if key not in _filer_stores:
            try:
                answer = self.fs.call_s3("head_bucket", Bucket=bucket)
                server = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("server", "")
            except OSError:
                return False  # no bucket yet: asked again once it exists
            _filer_stores[key] = "seaweedfs" in server.lower()
        return _filer_stores[key]

    def _directory_key(self, rel: str) -> tuple[str, str]:
        bucket, _, key = self._full(rel).partition("/")
        return bucket, key.rstrip("/") + "/"

    def __repr__(self) -> str:
        return f"FsspecStorage({self.url('')!r})"

    def _full(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def url(self, rel: str) -> str:
        return self.fs.unstrip_protocol(self._full(rel))

    def backend_path(self, rel: str) -> str:
        """The path the backend's own filesystem (and its conditional requests) knows."""
        return self._full(rel)

    def _convert(self, info: dict[str, Any]) -> dict[str, Any]:
        kind = "directory" if info.get("type") == "directory" else "file"
        out = {"type": kind, "size": 0 if kind == "directory" else info.get("size") or 0}
        stamp = _timestamp(
            info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
        )
        created = _timestamp(info.get("created") or info.get("creation_time")) or stamp
        out["mtime"] = stamp
        out["created"] = created
        if "ETag" in info:
            out["ETag"] = info["ETag"]
        return out

    def _require_bucket(self) -> None:
        """Raise :class:`BucketNotFoundError` when the bucket is missing: asked (one
        request) only after a lookup or listing found nothing, and once per adapter,
        since a missing bucket reads as "nothing there" to every client."""
        if not self._bucket_ready and self.conditional is not None:
            self.conditional.require_bucket(self.base)
            self._bucket_ready = True

    def info(self, rel: str) -> dict[str, Any] | None:
        try:
            return self._convert(self.fs.info(self._full(rel)))
        except (FileNotFoundError, NotADirectoryError):
            self._require_bucket()
            return None

    def exists(self, rel: str) -> bool:
        return self.info(rel) is not None

    def scan(self, rel: str, detail: bool = True) -> Listing:
        """``(name, info)`` of each child and, apart from them, the marker names (one
        listing request either way: ``detail`` costs nothing more here)."""
        full = self._full(rel)
        try:
            entries = self.fs.ls(full, detail=True)
        except FileNotFoundError:
            self._require_bucket()
            raise
        if not entries:
            self._require_bucket()
        out = []
        markers = []
        for entry in entries:
            name = entry["name"].rstrip("/").rpartition("/")[2]
            if entry["name"] == full.rstrip("/") + "/":
                continue  # the directory's own entry ("key/") on a store that keeps directories
            if entry["name"].rstrip("/") == full.rstrip("/") and entry.get("type") != "directory":
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", self.url(rel))
            if not name:
                continue
            if name.startswith(MARKER_PREFIXES):
                markers.append(name)
                continue
            converted = self._convert(entry)
            if converted["type"] == "directory" and len(self._dirs) < MEMO_LIMIT:
                self._dirs.add(f"{rel}/{name}" if rel else name)
            out.append((name, converted))
        return Listing(out, markers)

    def listdir(self, rel: str) -> list[tuple[str, dict[str, Any]]]:
        return self.scan(rel).children

    def _fence(self) -> Any:
        """The lease this thread holds on the store (see :mod:`orchfs.locks`), or None;
        without conditional requests there is none."""
        if self.conditional is None:
            return None
        from .locks import active_fence  # with the first request, not with a local command

        return active_fence()

    def read_optional(self, rel: str, start: int | None = None, end: int | None = None) -> bytes | None:
        """The object's bytes (or a range of them) in one request, or None when it is absent.

        Under a lease (see :mod:`orchfs.locks`) a whole read also notes the object's
        version, which the fenced write that follows names."""
        full = self._full(rel)
        fence = self._fence() if start is None and end is None else None
        if (start is not None and start < 0) or (end is not None and end < 0):
            # Not every backend takes offsets from the end (adlfs does not): make them absolute.
            found = self.info(rel)
            if found is None:
                return None
            if found["type"] == "directory":
                raise IsADirectoryError(errno.EISDIR, "is a directory", self.url(rel))
            start, end = _clip_range(start, end, found["size"])
        try:
            if fence is not None:
                data = fence.read(self.conditional, full)
                if data is None:
                    raise FileNotFoundError(full)
            else:
                data = self.fs.cat_file(full, start=start, end=end, **self._read_options)
            self._known_file(rel)
            return data
        except (IsADirectoryError, FileNotFoundError):
            self._require_bucket()
            if self.fs.isdir(full):
                raise IsADirectoryError(errno.EISDIR, "is a directory", self.url(rel)) from None
            return None

    def read(self, rel: str, start: int | None = None, end: int | None = None) -> bytes:
        data = self.read_optional(rel, start, end)
        if data is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", self.url(rel))
        return data

    def whole_reader(self, rel: str) -> Callable[[], bytes | int | None]:
        """A call that reads the whole file ``rel`` (see :meth:`LocalStorage.whole_reader`)."""
        return functools.partial(self.read_optional, rel)

    def maybe_exists(self, rel: str) -> bool:
        return True  # no cheaper question than the read itself

    def has_entry(self, rel: str) -> bool:
        """Whether an object is stored under exactly ``rel``: one request, no directory
        probe. Meant for the empty marker objects orchfs writes itself."""
        try:
            self.fs.cat_file(self._full(rel), **self._read_options)
        except (FileNotFoundError, IsADirectoryError):
            self._require_bucket()
            return False
        return True

    def append_existing(self, rel: str, data: bytes) -> bool:
        return False  # no append on object storage: the locked read-modify-write does it

    def open_read(self, rel: str, block_size: int | None = None, size: int | None = None) -> IO[bytes]:
        """A reader; ``size`` is what the caller's own lookup just saw (saves two requests)."""
        if size is None:
            found = self.info(rel)
            if found is None:
                raise FileNotFoundError(errno.ENOENT, "no such file", self.url(rel))
            if found["type"] == "directory":
                raise IsADirectoryError(errno.EISDIR, "is a directory", self.url(rel))
            size = found["size"]
        return self.fs.open(self._full(rel), "rb", block_size=block_size, size=size)

    def _known_file(self, rel: str) -> None:
        if len(self._files) < MEMO_LIMIT:
            self._files.add(rel)
            cut = rel.rfind("/")
            while cut > 0 and rel[:cut] not in self._dirs:
                self._dirs.add(rel[:cut])
                cut = rel.rfind("/", 0, cut)

    def _check_writable_target(self, rel: str, kind: WriteKind) -> None:
        if kind.looked:  # saves a request when the caller has just looked
            return
        if not kind.create:
            if rel in self._files:
                return  # a file a moment ago: overwriting it needs no request first
            if rel in self._dirs:
                raise IsADirectoryError(errno.EISDIR, "is a directory", self.url(rel))
            if not self.capabilities.empty_directories:
                # Directories here are only prefixes of keys; a key may sit beside one (as
                # with s3fs). orchfs refuses the prefixes it knows of, and asks nothing:
                # a write is one PUT.
                return
        found = self.info(rel)
        if found is not None:
            if found["type"] == "directory":
                raise IsADirectoryError(errno.EISDIR, "is a directory", self.url(rel))
            if kind.create:
                raise FileExistsError(errno.EEXIST, "file exists", self.url(rel))

    def _upload(self, rel: str, exclusive: bool) -> Any:
        full = self._full(rel)
        url = self.url(rel)
        mode = "create" if exclusive else "overwrite"

        def upload(data: bytes) -> None:
            if self.capabilities.parents_required:  # a filer makes them itself
                self.fs.makedirs(full.rpartition("/")[0], exist_ok=True)
            fence = self._fence()
            try:
                if fence is not None:  # under a lease: deadline checked, version named
                    fence.write(self.conditional, full, data, exclusive=exclusive)
                elif exclusive and self.conditional is not None:  # judged by the status
                    self.conditional.create(full, data)
                else:
                    self.fs.pipe_file(full, data, mode=mode)
            except FileExistsError:
                raise FileExistsError(errno.EEXIST, "file exists", url) from None
            except BucketNotFoundError:
                raise
            except FileNotFoundError:
                if self.capabilities.parents_required or self.conditional is None:
                    raise  # a filesystem with directories: a parent is missing
                # A PUT needs no object to be there: only its bucket can be missing.
                raise self.conditional.missing_bucket(full) from None
            self._known_file(rel)

        return upload

    def open_write(
        self, rel: str, kind: WriteKind = REPLACE, *, mode: int = DEFAULT_FILE_MODE
    ) -> StagedWriter:
        self._check_writable_target(rel, kind)
        return BufferedUploadWriter(self.url(rel), self._upload(rel, kind.create), not kind.deferred)

    def write(self, rel: str, data: bytes, kind: WriteKind = REPLACE, *, mode: int | None = None) -> None:
        self._check_writable_target(rel, kind)
        self._upload(rel, kind.create)(data)

    def append(self, rel: str, data: bytes) -> None:
        """Read-modify-write; callers hold the repository lock."""
        try:
            old = self.read(rel)
        except FileNotFoundError:
            self.write(rel, data)
            return
        self.write(rel, old + data, REPLACE_LOOKED)

    def makedirs(self, rel: str) -> None:
        if self.capabilities.parents_required:
            self.fs.makedirs(self._full(rel), exist_ok=True)
            return
        if self.conditional is not None:  # object storage has no directories, only a bucket,
            self._require_bucket()  # which orchfs never creates (makedirs would)
        elif not self._bucket_ready:  # a store orchfs knows no buckets of: its base is a directory
            self.fs.makedirs(self.base, exist_ok=True)
            self._bucket_ready = True
        if self.capabilities.empty_directories and rel:  # a filer: "key/" is a directory
            bucket, key = self._directory_key(rel)
            self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"")
            self.fs.invalidate_cache(self._full(rel))

    makedirs_private = makedirs  # modes are the bucket's access policy, not orchfs's

    def remove(self, rel: str) -> None:
        self._files.discard(rel)
        self._dirs.clear()  # a prefix may have lost its last key
        fence = self._fence()
        if fence is not None:
            fence.delete(self.conditional, self._full(rel))
        else:
            self.fs.rm_file(self._full(rel))

    def rmdir(self, rel: str) -> None:
        if self.capabilities.parents_required:
            self.fs.rmdir(self._full(rel))
        elif self.capabilities.empty_directories:
            if self.fs.ls(self._full(rel)):
                raise OSError(errno.ENOTEMPTY, "directory not empty", self.url(rel))
            self._remove_directory_entry(rel)

    def _remove_directory_entry(self, rel: str) -> None:
        bucket, key = self._directory_key(rel)
        self.fs.call_s3("delete_object", Bucket=bucket, Key=key)
        self.fs.invalidate_cache(self._full(rel))

    def remove_tree(self, rel: str) -> None:
        self._files.clear()
        self._dirs.clear()
        full = self._full(rel)
        if not self.fs.exists(full):
            return
        kept = self.capabilities.empty_directories and not self.capabilities.parents_required
        directories = [
            p
            for p, i in self.fs.find(full, withdirs=True, detail=True).items()
            if kept and i["type"] == "directory"
        ]
        self.fs.rm(full, recursive=True)
        # A filer keeps the emptied directories: remove them too, deepest first.
        for path in sorted(directories, key=len, reverse=True):
            self._remove_directory_entry(path[len(self.base) + 1 :])
        if kept:
            self._remove_directory_entry(rel)

    def find_files(self, rel: str, include_markers: bool = False) -> list[str]:
        full = self._full(rel)
        try:
            found = self.fs.find(full)
        except FileNotFoundError:
            found = []
        if not found:
            self._require_bucket()
        skipped = TEMP_PREFIX if include_markers else MARKER_PREFIXES
        out = []
        for name in found:
            relative = name[len(full) + 1 :] if name.startswith(full + "/") else None
            if relative and not any(p.startswith(skipped) for p in relative.split("/")):
                out.append(relative)
        return out

    def rename(self, src: str, dst: str) -> None:
        self.copy(src, dst)
        self.remove(src)

    def copy(self, src: str, dst: str) -> None:
        if self.capabilities.parents_required:  # a filer makes them itself
            self.fs.makedirs(self._full(dst).rpartition("/")[0], exist_ok=True)
        self.fs.cp_file(self._full(src), self._full(dst))


_filer_stores: dict[tuple[str, str], bool] = {}


def _protocols(fs: Any) -> tuple[str, ...]:
    return tuple(fs.protocol) if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)


def _timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return None


# The pyproject extra that installs each object store's fsspec backend.
_EXTRAS = {
    "s3": "s3",
    "s3a": "s3",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "gs": "gcs",
    "gcs": "gcs",
}


def _gcs_class_for_endpoint(cls: type) -> type:
    """gcsfs's plain filesystem for a GCS-API server of its own (``endpoint_url``, or
    ``STORAGE_EMULATOR_HOST`` as gcsfs reads it).

    gcsfs's default class asks Google's storage-control gRPC API for each bucket's layout
    (zonal, hierarchical) before its first request; a server elsewhere has no such API,
    and every unanswered lookup costs a minute of retries. The JSON API is all orchfs uses.
    """
    from gcsfs.core import GCSFileSystem

    return GCSFileSystem if issubclass(cls, GCSFileSystem) else cls


def open_storage(url: str, options: dict[str, Any] | None, boundary: str | None = None) -> Storage:
    """The adapter for a directory URL: a local path, ``file://``, ``memory://``, ``s3://``..."""
    if "://" not in url and "::" not in url:  # a plain path: no need to load fsspec
        return LocalStorage(os.path.abspath(os.path.expanduser(url)), boundary)
    import fsspec
    from fsspec.core import split_protocol

    protocol, path = split_protocol(url)
    if protocol in (None, "file", "local"):
        return LocalStorage(os.path.abspath(os.path.expanduser(path)), boundary)
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as exc:
        extra = _EXTRAS.get(protocol or "")
        hint = f" (pip install 'orchfs[{extra}]')" if extra and isinstance(exc, ImportError) else ""
        raise ValueError(f"cannot open storage {url!r}: {exc}{hint}") from exc
    options = dict(options or {})
    if protocol in ("s3", "s3a", "gs", "gcs"):  # other processes write here too
        options.setdefault("use_listings_cache", False)
    if protocol in ("gs", "gcs") and (options.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST")):
        cls = _gcs_class_for_endpoint(cls)
    fs = cls(**options)
    kind = "memory" if protocol == "memory" else "object"
    # s3fs asks for an object's size before reading it whole (to split large downloads);
    # state files are small, so one GET per read is the better trade.
    read_options = {"max_concurrency": 1} if protocol in ("s3", "s3a") else None
    return FsspecStorage(fs, cls._strip_protocol(url), kind, read_options)


class Root(NamedTuple):
    """A repository root: its normalised URL (a plain path on local disk) and adapter."""

    url: str
    storage: Storage


def open_root(root: str, options: dict[str, Any]) -> Root:
    """The repository root, normalised and checked (it must exist), and its adapter."""
    if "://" not in root and "::" not in root:  # a plain path: no need to load fsspec
        protocol, path = None, root
    else:
        from fsspec.core import split_protocol

        protocol, path = split_protocol(root)
    if protocol in (None, "file", "local"):
        local = os.path.abspath(os.path.expanduser(path))
        if not os.path.exists(local):
            raise FileNotFoundError(
                errno.ENOENT,
                "repository root does not exist (create it or pass another root=)",
                local,
            )
        if not os.path.isdir(local):
            raise NotADirectoryError(errno.ENOTDIR, "repository root is not a directory", local)
        return Root(local, open_storage(local, None))
    import fsspec

    if protocol not in fsspec.available_protocols():
        raise ValueError(
            f"unknown protocol {protocol!r} in root {root!r}; known protocols include "
            "file, memory, s3 and gs (install orchfs[s3] for S3, orchfs[gcs] for GCS)"
        )
    return Root(root.rstrip("/"), open_storage(root, options))


__all__ = [
    "Capabilities",
    "FsspecStorage",
    "Listing",
    "LocalStorage",
    "Root",
    "Storage",
    "open_root",
    "open_storage",
]
