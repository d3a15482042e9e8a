"""The beneath-root disk layer: every local-disk operation of orchfs, confined to one root.

A :class:`Beneath` holds a directory descriptor of a root directory (the repository
root) and resolves every path it is given *beneath* that descriptor without following
a single symlink, so that "check, then use" is one step and nothing on disk (a planted
link, a directory swapped for a link by another process) can lead an operation
outside the root.

Contract (what a caller may rely on):

* Paths are root-relative, ``/``-separated strings: no empty, ``.`` or ``..``
  segment, no leading ``/``, no NUL. ``""`` is the root itself. A bad path raises
  :class:`~orchfs.errors.PathEscapeError` before any I/O.
* No operation follows a symlink, at any component. A symlink met on the way (an
  intermediate directory, or the final name of anything but :meth:`lstat`,
  :meth:`readlink`, :meth:`unlink`, :meth:`rename` and :meth:`remove_tree`, which act
  on the link itself) raises :class:`PathEscapeError` naming the path. A missing
  component stays :class:`FileNotFoundError`; a file where a directory is needed,
  :class:`NotADirectoryError`.
* Symlinks orchfs must handle on purpose (v1 files that are links) are judged, never
  followed: :meth:`resolve` reads each link with ``readlink`` and returns the link-free
  path it stands for, or raises :class:`PathEscapeError` when it would leave the root;
  the caller then opens that path beneath the root like any other (if a link appears
  there in between, that open refuses it).
* Writes are atomic and durable: :meth:`writer` / :meth:`write_bytes` stage a temp file
  created ``O_CREAT|O_EXCL|O_NOFOLLOW`` 0600 in the target's directory, fsync it,
  rename it over the target through the directory descriptor and fsync the directory.
* Descriptors returned (:meth:`open`, :meth:`open_dir`) belong to the caller, who
  closes them; file objects (:meth:`open_read`) close theirs.

On Linux (x86_64, aarch64, riscv64) a path is resolved in one ``openat2(2)`` call
(through ``ctypes``) with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
RESOLVE_NO_MAGICLINKS``: the kernel enforces the rule. Where ``openat2`` is missing
(an older kernel, a seccomp filter, another system) each component is opened in turn
with ``O_NOFOLLOW`` relative to its parent's descriptor; ``use_openat2=False`` forces
that path (the tests run every operation both ways).

The root itself is opened when first needed (it may not exist yet) and then kept:
renaming the root directory away carries the descriptor with it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

from .atomic import DEFAULT_FILE_MODE, DIR_FLAGS, LocalAtomicWriter, fsync_directory, write_whole
from .errors import PathEscapeError, UnsafeStateError
from .paths import MEMO_LIMIT

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a planted FIFO must not hang a read
_O_CREAT = os.O_CREAT
_ENOENT = errno.ENOENT  # the common miss, answered without another call
READ_FLAGS = os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK
_O_PATH = getattr(os, "O_PATH", 0)
# Is there an entry here, and no link (also not at the end)? A probe that reads nothing.
PROBE_FLAGS = _O_PATH | _O_CLOEXEC if _O_PATH else os.O_RDONLY | _O_CLOEXEC | _O_NONBLOCK
# errnos that mean "this component is a symlink" under O_NOFOLLOW (EMLINK: FreeBSD).
_LINK_ERRNOS = (errno.ELOOP, errno.EMLINK)
_MAX_LINKS = 40  # as the kernel's own limit on links followed in one resolution
_COPY_CHUNK = 1 << 20
_FIRST_READ = 1 << 16
_MAX_READ = 0x7FFFF000  # the most one read(2) returns on Linux (macOS refuses more than 2 GiB)
_WRITE_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC
_FICLONE = 0x40049409  # _IOW(0x94, 9, int): share the source's extents (btrfs, XFS)

# openat2(2): struct open_how and the RESOLVE_* flags (linux/openat2.h).
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
_SYS_OPENAT2 = 437  # the same number on every architecture with the generic syscall table
_OPENAT2_MACHINES = frozenset({"x86_64", "amd64", "aarch64", "arm64", "riscv64"})


def _no_follow(flags: int) -> int:
    """``flags`` as every open beneath the root uses them (see :meth:`Beneath.open`)."""
    return flags | _O_CLOEXEC if flags & _O_PATH else flags | _O_NOFOLLOW | _O_CLOEXEC


class _Openat2:
    """``openat2(2)`` through ``ctypes``: the raw call and prebuilt ``open_how`` arguments."""

    def __init__(self) -> None:
        import ctypes

        class OpenHow(ctypes.Structure):
            _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

        self._ctypes = ctypes
        self._how_type = OpenHow
        # The caller's flags (with the mode, for O_CREAT) -> byref(open_how); the kernel
        # copies the structure, so one prebuilt argument serves every call and thread.
        self.hows: dict[Any, Any] = {}
        self._keep: list[Any] = []  # the structures those references point into
        self.syscall = ctypes.CDLL(None, use_errno=True).syscall  # called with ints, bytes, byref
        self.syscall.restype = ctypes.c_long
        # The same call keeping no errno: ctypes' copy of errno around a call (a look-up in
        # the thread's dictionary) costs a few percent of a whole read. For reads that
        # succeed almost always and ask again with ``syscall`` to learn why one failed.
        self.syscall_quiet = ctypes.CDLL(None).syscall
        self.syscall_quiet.restype = ctypes.c_long
        self.get_errno = ctypes.get_errno

    def how(self, flags: int, mode: int) -> Any:
        """The argument for opening with ``flags`` (links refused as :meth:`Beneath.open`
        says). openat2 refuses a mode without ``O_CREAT`` (EINVAL), unlike open(2)."""
        create = flags & os.O_CREAT
        key = (flags, mode) if create else flags
        ref = self.hows.get(key)
        if ref is None:
            how = self._how_type(_no_follow(flags), mode if create else 0, _RESOLVE)
            ref = self.hows[key] = self._ctypes.byref(how)
            self._keep.append(how)
        return ref

    def __call__(self, dir_fd: int, path: bytes, how: Any) -> int:
        """The descriptor, or ``-errno``."""
        fd = self.syscall(_SYS_OPENAT2, dir_fd, path, how, 24)
        return fd if fd >= 0 else -self.get_errno()


def _probe_openat2() -> _Openat2 | None:
    if not sys.platform.startswith("linux") or platform.machine().lower() not in _OPENAT2_MACHINES:
        return None
    try:
        call = _Openat2()
    except (OSError, AttributeError):
        return None
    root = os.open("/", DIR_FLAGS)
    try:
        fd = call(root, b".", call.how(DIR_FLAGS, 0))
    finally:
        os.close(root)
    if fd < 0:  # ENOSYS (old kernel), EPERM (a seccomp filter), EINVAL/E2BIG (old ABI)
        return None
    os.close(fd)
    return call


_OPENAT2 = _probe_openat2()
OPENAT2_AVAILABLE = _OPENAT2 is not None


def check_rel(rel: str) -> str:
    """``rel`` if it is a valid root-relative path, else :class:`PathEscapeError`."""
    if not isinstance(rel, str):
        raise PathEscapeError(f"a path beneath the root must be a str, not {type(rel).__name__}")
    if not rel:
        return rel
    if rel.startswith("/") or "\x00" in rel:
        raise PathEscapeError(f"{rel!r} is not a relative path beneath the root")
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            raise PathEscapeError(f"{rel!r} has an empty, '.' or '..' segment; refused beneath the root")
    return rel


def _split(rel: str) -> tuple[str, str]:
    head, _, name = rel.rpartition("/")
    return head, name


def _file_name(rel: str) -> tuple[str, str]:
    """``(directory, file name)`` of ``rel``, a file to write beneath the root."""
    head, name = _split(check_rel(rel))
    if not name:
        raise PathEscapeError("a write needs a file name beneath the root")
    return head, name


class Beneath:
    """A directory descriptor of ``root`` and the operations resolved beneath it."""

    def __init__(self, root: str, *, use_openat2: bool | None = None) -> None:
        self.root = os.path.abspath(root)
        if use_openat2 and _OPENAT2 is None:
            raise OSError(errno.ENOSYS, "openat2(2) is not available here")
        self._openat2 = _OPENAT2 if use_openat2 is not False else None
        # The call and its prebuilt arguments, one attribute away on every open.
        self._syscall = self._openat2.syscall if self._openat2 is not None else None
        self._syscall_quiet = self._openat2.syscall_quiet if self._openat2 is not None else None
        self._hows = self._openat2.hows if self._openat2 is not None else {}
        self._read_how = self._openat2.how(READ_FLAGS, 0) if self._openat2 is not None else None
        self._fd = -1
        self._close: Callable[[int], None] = os.close
        self._opening = threading.Lock()
        self._encoded: dict[str, bytes] = {}

    def __repr__(self) -> str:
        how = "openat2" if self._openat2 is not None else "O_NOFOLLOW walk"
        return f"Beneath({self.root!r}, {how})"

    @property
    def uses_openat2(self) -> bool:
        return self._openat2 is not None

    # --- the root descriptor ---------------------------------------------------------
    def fileno(self, create: bool = False) -> int:
        """The root's descriptor, opened on first use (``create``: make the root first)."""
        fd = self._fd
        if fd >= 0:
            return fd
        with self._opening:
            if self._fd < 0:
                try:
                    fd = os.open(self.root, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.makedirs(self.root, exist_ok=True)
                    fd = os.open(self.root, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
                # Closed later by the same module that opened it: under a fake `os`
                # (pyfakefs) a number from the fake must never reach the real close.
                self._close = os.close
                self._fd = fd
            return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            self._close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self) -> dict[str, Any]:
        # A descriptor does not travel: the copy opens the root again when first used.
        return {"root": self.root, "use_openat2": self.uses_openat2}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # openat2 where the new process has it, unless the walk was chosen.
        self.__init__(state["root"], use_openat2=None if state["use_openat2"] else False)  # type: ignore[misc]

    def show(self, rel: str) -> str:
        """The physical path of ``rel``, for messages."""
        return f"{self.root}/{rel}" if rel else self.root

    def relpath(self, path: str) -> str:
        """``path`` (absolute, or relative to the current directory) as a path beneath the
        root, judged lexically; :class:`PathEscapeError` if it is not beneath it."""
        full = os.path.abspath(path)
        for root in (self.root, os.path.realpath(self.root)):
            if full == root:
                return ""
            if full.startswith(root.rstrip("/") + "/"):
                return check_rel(full[len(root.rstrip("/")) + 1 :])
        raise PathEscapeError(f"{path} is outside {self.root}; refused")

    # --- resolution ------------------------------------------------------------------
    def _refuse_link(self, rel: str) -> PathEscapeError:
        return PathEscapeError(
            f"{self.show(rel)} is a symlink; orchfs never follows symlinks beneath {self.root} "
            "(remove the link)"
        )

    def open(self, rel: str, flags: int = READ_FLAGS, mode: int = 0o666, *, create_root: bool = False) -> int:
        """A descriptor for ``rel`` opened with ``flags``; a final link is refused
        (``O_NOFOLLOW`` is added), except that ``O_PATH|O_NOFOLLOW`` opens the link itself
        and ``O_PATH`` alone (:data:`PROBE_FLAGS`) refuses it too."""
        fd = self.try_open(rel, flags, mode, create_root=create_root)
        if fd >= 0:
            return fd
        return self._walk_open(check_rel(rel), _no_follow(flags), mode, self.fileno(create_root))

    def try_open(
        self, rel: str, flags: int = READ_FLAGS, mode: int = 0o666, *, create_root: bool = False
    ) -> int:
        """:meth:`open` for fast probes: the descriptor, or ``-errno`` instead of raising
        (``-ELOOP``: a link on the way or at the end; ``-ENOENT``: nothing there). A bad
        path still raises :class:`PathEscapeError`. Every read of orchfs starts here, so
        the openat2 case is one dictionary look-up away from the system call."""
        fd = self._fd
        if fd < 0:
            try:
                fd = self.fileno(create_root)
            except FileNotFoundError:
                return -errno.ENOENT
        syscall = self._syscall
        if syscall is None or not rel:
            return self._try_walk(rel, _no_follow(flags), mode, fd)
        path = self._encoded.get(rel) or self._encode(rel)
        how = self._hows.get(flags) if not flags & _O_CREAT else None
        got = syscall(_SYS_OPENAT2, fd, path, how or self._openat2.how(flags, mode), 24)
        if got >= 0:
            return got
        err = self._openat2.get_errno()
        return -err if err == _ENOENT else self._settle(rel, flags, mode, fd, err)

    def _settle(self, rel: str, flags: int, mode: int, root: int, err: int) -> int:
        """``-err`` for a failed openat2, unless the walk must look: EAGAIN/EXDEV (a rename
        raced the lookup) or ENOTDIR with O_DIRECTORY (a file in the way, or a final link:
        openat2 says ENOTDIR for both)."""
        if err in (errno.EAGAIN, errno.EXDEV) or (err == errno.ENOTDIR and flags & _O_DIRECTORY):
            return self._try_walk(rel, _no_follow(flags), mode, root)
        return -err

    def probe(self, rel: str, flags: int = PROBE_FLAGS) -> int:
        """0 when ``rel`` opens with ``flags`` (by default: an entry is there and no link,
        not even at the end), else ``-errno`` as :meth:`try_open`; nothing is read."""
        fd = self.try_open(rel, flags)
        if fd < 0:
            return fd
        os.close(fd)
        return 0

    def read_file(self, rel: str) -> bytes | int:
        """The whole file, or ``-errno`` instead of raising (as :meth:`try_open`): the
        path of every read orchfs makes, so it is one call frame around the system calls."""
        root = self._fd
        openat2 = self._openat2
        if root < 0 or openat2 is None or not rel:
            fd = self.try_open(rel)
        else:
            how = openat2.hows.get(READ_FLAGS) or openat2.how(READ_FLAGS, 0)
            fd = openat2.syscall(_SYS_OPENAT2, root, self._encoded.get(rel) or self._encode(rel), how, 24)
            if fd < 0:
                fd = self._settle(rel, READ_FLAGS, 0, root, openat2.get_errno())
        if fd < 0:
            return fd
        try:
            return read_all(fd, rel)
        finally:
            os.close(fd)

    def reader(self, rel: str) -> FileReader:
        """A call that reads the whole file ``rel`` (:class:`PathEscapeError` now for a
        bad path), for a caller that reads it often: see :class:`FileReader`."""
        return FileReader(self, self._encoded.get(rel) or self._encode(rel))

    def read_encoded(self, path: bytes) -> bytes | int:
        """The whole file at ``path`` (a path beneath the root that passed
        :func:`check_rel`, encoded), or ``-errno`` for anything but a plain read (no root
        descriptor yet, a link on the way or at the end, a rename racing the lookup, a
        directory): the caller then asks :meth:`read_file`, which settles it.

        The same ``openat2`` beneath the root as every open, in one call frame (one that
        fails is made again to learn its errno, see ``_Openat2.syscall_quiet``). Every
        kept reader (:class:`FileReader` and its subclasses) calls this one method, so
        that its attribute look-ups always meet a :class:`Beneath` (a body shared by
        several classes reading their own fields is slower when they alternate)."""
        syscall = self._syscall_quiet
        if syscall is None:  # no openat2 here: the walk beneath the root
            fd = self.try_open(os.fsdecode(path))
            if fd < 0:
                return fd
        else:
            fd = syscall(_SYS_OPENAT2, self._fd, path, self._read_how, 24)
            if fd < 0:  # asked again, keeping errno this time, to say why
                fd = self._syscall(_SYS_OPENAT2, self._fd, path, self._read_how, 24)  # type: ignore[misc]
                if fd < 0:
                    return -self._openat2.get_errno()  # type: ignore[union-attr]
        try:
            return read_all(fd, path)
        except IsADirectoryError:
            return -errno.EISDIR
        finally:
            os.close(fd)

    def _try_walk(self, rel: str, flags: int, mode: int, root: int) -> int:
        try:
            if not rel:
                return os.open(".", flags & ~_O_NOFOLLOW, mode, dir_fd=root)
            return self._walk_open(check_rel(rel), flags, mode, root)
        except PathEscapeError:
            return -errno.ELOOP
        except OSError as exc:
            return -(exc.errno or errno.EIO)

    def _encode(self, rel: str) -> bytes:
        path = os.fsencode(check_rel(rel))
        if len(self._encoded) < MEMO_LIMIT:
            self._encoded[rel] = path
        return path

    def _walk_open(self, rel: str, flags: int, mode: int, root: int) -> int:
        head, name = _split(rel)
        parent = self._walk_dir(head, root, create=False) if head else root
        try:
            if flags & _O_PATH and not flags & _O_NOFOLLOW:
                return self._open_no_link(name, flags, parent, rel)
            return os.open(name, flags, mode, dir_fd=parent)
        except OSError as exc:
            maybe_link = exc.errno in _LINK_ERRNOS or (exc.errno == errno.ENOTDIR and flags & _O_DIRECTORY)
            if maybe_link and self._is_link(name, parent):
                raise self._refuse_link(rel) from None
            raise OSError(exc.errno, exc.strerror, self.show(rel)) from None
        finally:
            if parent != root:
                os.close(parent)

    def _open_no_link(self, name: str, flags: int, parent: int, rel: str) -> int:
        """``O_PATH`` without ``O_NOFOLLOW`` as openat2 treats it: a final link refused."""
        fd = os.open(name, flags | _O_NOFOLLOW, dir_fd=parent)
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            os.close(fd)
            raise self._refuse_link(rel)
        return fd

    def _walk_dir(self, rel: str, root: int, create: bool, mode: int = 0o777) -> int:
        """A descriptor of directory ``rel``, one ``O_NOFOLLOW`` component at a time."""
        fd = root
        done: list[str] = []
        try:
            for part in rel.split("/"):
                done.append(part)
                child = self._child_dir(fd, part, "/".join(done), create, mode)
                if fd != root:
                    os.close(fd)
                fd = child
        except BaseException:
            if fd != root:
                os.close(fd)
            raise
        return fd if fd != root else os.dup(root)

    def _child_dir(self, fd: int, part: str, rel: str, create: bool, mode: int) -> int:
        try:
            return os.open(part, DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise FileNotFoundError(errno.ENOENT, "no such directory", self.show(rel)) from None
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, mode, dir_fd=fd)
                fsync_directory(fd)
            return self._child_dir(fd, part, rel, False, mode)
        except OSError as exc:
            if exc.errno not in (*_LINK_ERRNOS, errno.ENOTDIR):
                raise
            if self._is_link(part, fd):
                raise self._refuse_link(rel) from None
            raise NotADirectoryError(errno.ENOTDIR, "a file is in the way", self.show(rel)) from None

    @staticmethod
    def _is_link(name: str, dir_fd: int) -> bool:
        try:
            return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def open_dir(self, rel: str, *, create: bool = False, mode: int = 0o777) -> int:
        """A descriptor of directory ``rel`` (``create``: make it and its parents, each
        new one with ``mode`` less the umask, as ``os.makedirs``)."""
        fd = self.try_open(rel, DIR_FLAGS, create_root=create)  # every write's: one call
        if fd >= 0:
            return fd
        try:
            return self.open(rel, DIR_FLAGS, create_root=create)  # says why (or makes it)
        except FileNotFoundError:
            if not create:
                raise
        return self._walk_dir(check_rel(rel), self.fileno(True), True, mode) if rel else os.dup(self.fileno())

    @contextlib.contextmanager
    def _parent(self, rel: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """``(descriptor of rel's directory, rel's last name)`` for the ``*at`` calls."""
        check_rel(rel)
        if not rel:
            raise PathEscapeError("this operation needs a path beneath the root, not the root itself")
        head, name = _split(rel)
        fd = self.open_dir(head, create=create)
        try:
            yield fd, name
        finally:
            os.close(fd)

    def resolve(self, rel: str) -> str:
        """The link-free path ``rel`` stands for, each link on the way read and judged.

        A link whose target (absolute, or relative with ``..``) leaves the root raises
        :class:`PathEscapeError`; so does a loop. The part after a missing component is
        returned as it is (opening it then fails with ``FileNotFoundError``).
        """
        pending = check_rel(rel).split("/") if rel else []
        pending.reverse()
        done: list[str] = []
        links = 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not done:
                    raise PathEscapeError(f"{self.show(rel)} resolves outside {self.root}; refused")
                done.pop()
                continue
            here = "/".join([*done, part])
            try:
                st = self.lstat(here)
            except (FileNotFoundError, NotADirectoryError):
                return "/".join([here, *reversed(pending)])
            if not stat.S_ISLNK(st.st_mode):
                done.append(part)
                continue
            links += 1
            if links > _MAX_LINKS:
                raise PathEscapeError(f"{self.show(rel)}: too many levels of symlinks")
            try:
                target = self.readlink(here)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                pending.append(part)  # no longer a link (swapped meanwhile): look again
                continue
            if target.startswith("/"):
                try:
                    target = self.relpath(target)
                except PathEscapeError:
                    raise PathEscapeError(
                        f"{self.show(here)} is a symlink to {target}, outside {self.root}; refused"
                    ) from None
                done = []
            pending.extend(reversed(target.split("/")))
        return "/".join(done)

    # --- reading ---------------------------------------------------------------------
    def lstat(self, rel: str) -> os.stat_result:
        """The entry's own stat (a link is described, not followed)."""
        if not rel:
            return os.fstat(self.fileno())
        if self._openat2 is not None and _O_PATH:
            fd = self.open(rel, _O_PATH | _O_NOFOLLOW)  # the entry itself, link or not
            try:
                return os.fstat(fd)
            finally:
                os.close(fd)
        with self._parent(rel) as (fd, name):
            return os.stat(name, dir_fd=fd, follow_symlinks=False)

    def open_read(self, rel: str, buffering: int = -1) -> IO[bytes]:
        """A binary reader of the file ``rel``."""
        fd = self.open(rel)
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", self.show(rel))
            return os.fdopen(fd, "rb", buffering=buffering)
        except BaseException:
            os.close(fd)
            raise

    def read_bytes(self, rel: str) -> bytes:
        fd = self.open(rel)
        try:
            return read_all(fd, rel)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def scandir(self, rel: str = "") -> Iterator[Iterator[os.DirEntry[str]]]:
        """The entries of directory ``rel``; ``entry.stat(follow_symlinks=False)`` and
        ``entry.is_dir(follow_symlinks=False)`` answer without following links."""
        fd = self.open_dir(rel)
        try:
            with os.scandir(fd) as entries:
                yield entries
        finally:
            os.close(fd)

    def listdir(self, rel: str = "") -> list[str]:
        fd = self.open_dir(rel)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def walk(self, rel: str = "") -> Iterator[tuple[str, list[str], list[str]]]:
        """``(directory, subdirectories, other names)`` for ``rel`` and every directory
        below it, top down, as ``os.walk``; a link is listed among the other names and
        never entered. ``directory`` is relative to ``rel`` (``""`` for ``rel``); prune
        by editing ``subdirectories`` in place."""
        fd = self.open_dir(rel)
        try:
            yield from _walk_fd(fd, "")
        finally:
            os.close(fd)

    def readlink(self, rel: str) -> str:
        with self._parent(rel) as (fd, name):
            return os.readlink(name, dir_fd=fd)

    # --- writing ---------------------------------------------------------------------
    def mkdir(self, rel: str, mode: int = 0o777) -> None:
        """One directory (its parent must exist); ``mode`` less the umask, as ``os.mkdir``."""
        with self._parent(rel) as (fd, name):
            os.mkdir(name, mode, dir_fd=fd)
            fsync_directory(fd)

    def makedirs(self, rel: str, mode: int = 0o777, *, exact_mode: bool = False) -> None:
        """``rel`` and its missing parents (existing ones are left as they are).

        ``exact_mode``: every directory on the way (existing ones too) gets exactly
        ``mode`` by ``fchmod`` on its descriptor, e.g. 0700 for private state.
        """
        if not exact_mode:
            os.close(self.open_dir(rel, create=True, mode=mode))
            return
        parts = check_rel(rel).split("/") if rel else []
        for depth in range(1, len(parts) + 1):
            fd = self.open_dir("/".join(parts[:depth]), create=True, mode=mode)
            try:
                os.fchmod(fd, mode)
            finally:
                os.close(fd)

    def writer(
        self,
        rel: str,
        *,
        mode: int = DEFAULT_FILE_MODE,
        exclusive: bool = False,
        autocommit: bool = True,
        make_parents: bool = True,
    ) -> LocalAtomicWriter:
        """An atomic writer of ``rel`` (see :mod:`orchfs.atomic`); its final mode is ``mode``."""
        head, name = _file_name(rel)
        dir_fd = self.open_dir(head, create=make_parents)
        return LocalAtomicWriter(
            dir_fd, name, self.show(rel), exclusive=exclusive, autocommit=autocommit, final_mode=mode
        )

    def write_bytes(
        self, rel: str, data: bytes, *, mode: int = DEFAULT_FILE_MODE, exclusive: bool = False
    ) -> None:
        """Replace (``exclusive``: create) ``rel`` with ``data``, atomically and durably."""
        head, name = _file_name(rel)
        write_whole(self.open_dir(head, create=True), name, data, exclusive=exclusive, final_mode=mode)

    def rename(self, src: str, dst: str, *, make_parents: bool = False) -> None:
        """Move ``src`` over ``dst`` (``os.replace``); a link is moved, never followed."""
        with (
            self._parent(src) as (src_fd, src_name),
            self._parent(dst, create=make_parents) as (dst_fd, dst_name),
        ):
            os.replace(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            fsync_directory(dst_fd)
            fsync_directory(src_fd)

    def unlink(self, rel: str) -> None:
        """Remove a file or a link (the link itself)."""
        with self._parent(rel) as (fd, name):
            os.unlink(name, dir_fd=fd)
            fsync_directory(fd)

    def rmdir(self, rel: str) -> None:
        with self._parent(rel) as (fd, name):
            os.rmdir(name, dir_fd=fd)
            fsync_directory(fd)

    def remove_tree(self, rel: str) -> None:
        """Remove ``rel`` and everything below it, walking by descriptors; a link (at
        ``rel`` or anywhere below) is removed itself, never followed."""
        with self._parent(rel) as (fd, name):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                _remove_below(fd, name, self.show(rel))
                os.rmdir(name, dir_fd=fd)
            else:
                os.unlink(name, dir_fd=fd)
            fsync_directory(fd)

    def chmod(self, rel: str, mode: int) -> None:
        """Set ``rel``'s permission bits; a symlink there is refused, never followed.

        A file with more than one hard link gets ``mode`` on a copy of its own that
        replaces it: another link may sit outside the root, and a chmod would change it.
        """
        if not rel:
            os.fchmod(self.fileno(), mode)
            return
        with self._parent(rel) as (fd, name):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise self._refuse_link(rel)
            if stat.S_IMODE(st.st_mode) == mode:
                return  # nothing to change (and no copy of a linked file to make)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                self.copy(rel, rel, mode=mode)
                return
            try:
                os.chmod(name, mode, dir_fd=fd, follow_symlinks=False)
                return
            except (NotImplementedError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
            # No lchmod here: change it through a descriptor opened without following.
            try:
                target = os.open(name, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK, dir_fd=fd)
            except OSError as exc:
                if exc.errno in _LINK_ERRNOS:
                    raise self._refuse_link(rel) from None
                raise
            try:
                os.fchmod(target, mode)
            finally:
                os.close(target)

    def symlink(self, target: str, rel: str) -> None:
        """Create link ``rel`` with the text ``target`` (not resolved, not judged here)."""
        with self._parent(rel) as (fd, name):
            os.symlink(target, name, dir_fd=fd)
            fsync_directory(fd)

    def utime(self, rel: str, ns: tuple[int, int]) -> None:
        """Set access and modification times of ``rel`` itself (a link's own times)."""
        with self._parent(rel) as (fd, name):
            os.utime(name, ns=ns, dir_fd=fd, follow_symlinks=False)

    def copy(
        self, src: str, dst: str, *, mode: int | None = None, exclusive: bool = False, keep_times: bool = True
    ) -> None:
        """Copy file ``src`` to ``dst`` atomically (reflink where the filesystem offers
        it, ``copy_file_range`` otherwise, plain reads and writes last); ``dst`` gets
        ``mode``, or ``src``'s permission bits (see :func:`copied_mode`), and
        (``keep_times``) ``src``'s times."""
        source = self.open(src)
        try:
            self._copy_from(source, src, dst, mode=mode, exclusive=exclusive, keep_times=keep_times)
        finally:
            os.close(source)

    def unshare(self, rel: str, source: int) -> None:
        """Replace ``rel`` with a copy of its own of the file open for reading as
        ``source`` (the caller's descriptor of what ``rel`` names; its bytes, permission
        bits as :func:`copied_mode` says, and times), atomically: afterwards ``rel`` names
        an inode with no other name, so a write in place there never reaches another name
        of the old one (a migration backup that is a hard link, or a file outside the
        root that a planted hard link names). The old inode is read, never written."""
        self._copy_from(source, rel, rel)

    def _copy_from(
        self,
        source: int,
        src: str,
        dst: str,
        *,
        mode: int | None = None,
        exclusive: bool = False,
        keep_times: bool = True,
    ) -> None:
        st = os.fstat(source)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file", self.show(src))
        final = copied_mode(st.st_mode) if mode is None else mode
        with self.writer(dst, mode=final, exclusive=exclusive) as out:
            _copy_fd(source, out.staged_fd(), st.st_size)
            if keep_times:
                os.utime(out.staged_fd(), ns=(st.st_atime_ns, st.st_mtime_ns))


class FileReader:
    """:meth:`Beneath.read_file` of one path, kept: a call returns the whole file, or
    ``-errno`` for anything but a plain read (see :meth:`Beneath.read_encoded`), which
    the caller then hands to :meth:`Beneath.read_file` to settle. Only the encoded path
    is kept; every call opens it beneath the root. Made by :meth:`Beneath.reader`; a
    subclass may check something first and then call ``disk.read_encoded(path)``."""

    __slots__ = ("_disk", "_path")

    def __init__(self, disk: Beneath, path: bytes) -> None:
        self._disk = disk
        self._path = path

    @property
    def disk(self) -> Beneath:
        return self._disk

    @property
    def path(self) -> bytes:
        """The path beneath the disk's root, encoded."""
        return self._path

    def __call__(self) -> bytes | int:
        return self._disk.read_encoded(self._path)


def read_all(fd: int, where: str | bytes | None = None) -> bytes:
    """Every byte from ``fd``'s position to its end (``where`` names it in errors).

    No ``fstat`` first (it costs more in Python than a read): one read of 64 KiB, and
    after a shorter one a read that must find the end (nothing, at once) as at the end
    of any regular file. Anything else, a read that filled its buffer, bytes after the
    end or a read that would block, is either a file that grew or no regular file (a
    device such as the kernel log, read a record at a time; a FIFO that someone feeds),
    which :func:`_read_rest` tells apart by an ``fstat``: a device's or a pipe's bytes are
    never handed out as a file's. An unfed FIFO reads as empty.
    """
    try:
        data = os.read(fd, _FIRST_READ)
    except BlockingIOError:  # never a regular file: refused below
        return _read_rest(fd, b"", where)
    if len(data) < _FIRST_READ:
        try:
            more = os.read(fd, 1)  # one byte is enough to tell
        except OSError:  # a device's own answer (the kernel log's EINVAL), or would block
            return _read_rest(fd, data, where)
        if not more:
            return data
        data += more
    return _read_rest(fd, data, where)


def _read_rest(fd: int, data: bytes, where: str | bytes | None) -> bytes:
    """``data`` (a first read that filled its buffer) and every byte after it.

    One more read returns all of it, from where ``data`` began, in the size the file's
    fstat gives: one buffer, no chunks to join (their copies and page faults cost ten
    times the read for a file of a few MiB). A read that fills its buffer (the file grew
    after the fstat) goes on to the end by chunks."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        # A device (/dev/zero, /dev/kmsg) or a pipe fed by someone: refused, not read.
        shown = os.fsdecode(where) if where else "a file orchfs reads"
        raise UnsafeStateError(
            f"{shown} is not a regular file (a device or a pipe); refused: remove it", shown
        )
    start = os.lseek(fd, 0, os.SEEK_CUR) - len(data)
    size = min(max(st.st_size - start, 0) + 1, _MAX_READ)
    whole = os.pread(fd, size, start)
    if len(whole) < size:  # a shorter read is the end, as for the first read
        return whole
    chunks = [whole]
    offset = start + len(whole)
    while more := os.pread(fd, _COPY_CHUNK, offset):
        chunks.append(more)
        offset += len(more)
    return b"".join(chunks)


def _walk_fd(fd: int, here: str) -> Iterator[tuple[str, list[str], list[str]]]:
    dirs: list[str] = []
    others: list[str] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            (dirs if entry.is_dir(follow_symlinks=False) else others).append(entry.name)
    yield here, dirs, others
    for name in dirs:
        try:
            child = os.open(name, DIR_FLAGS, dir_fd=fd)
        except OSError:  # gone, or swapped for a link, since the listing
            continue
        try:
            yield from _walk_fd(child, f"{here}/{name}" if here else name)
        finally:
            os.close(child)


def _remove_below(parent: int, name: str, shown: str) -> None:
    fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    try:
        with os.scandir(fd) as entries:
            children = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for child, is_dir in children:
            if is_dir:
                _remove_below(fd, child, f"{shown}/{child}")
                os.rmdir(child, dir_fd=fd)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)


def copied_mode(st_mode: int) -> int:
    """The permission bits a copy of a file with ``st_mode`` gets: its own, less set-user-ID
    and set-group-ID. A copy belongs to whoever makes it, so those bits would make a
    program planted by another user run as that maker (root, for a migration run as root);
    ``cp`` drops them for the same reason."""
    return stat.S_IMODE(st_mode) & ~(stat.S_ISUID | stat.S_ISGID)


def copy_fresh(src_dir_fd: int, src_name: str, dst_dir_fd: int, dst_name: str) -> None:
    """Copy the regular file ``src_name`` to a new file ``dst_name`` (each relative to a
    directory descriptor; neither name followed if it is a link) with ``src``'s permission
    bits (see :func:`copied_mode`) and times: a reflink where the filesystem offers one,
    ``copy_file_range`` otherwise. Not atomic and not durable: the bytes are written in place with no fsync,
    for a directory that nothing reads until its writer has made the whole filesystem
    durable (the migration backup; see :func:`orchfs.syncfs.sync_filesystem`). A file
    already at ``dst_name`` raises :class:`FileExistsError`; a copy that fails leaves no
    file at ``dst_name``."""
    source = os.open(src_name, READ_FLAGS, dir_fd=src_dir_fd)
    try:
        st = os.fstat(source)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file", src_name)
        target = os.open(dst_name, _WRITE_NEW_FLAGS, 0o600, dir_fd=dst_dir_fd)
        try:
            _copy_fd(source, target, st.st_size)
            os.fchmod(target, copied_mode(st.st_mode))
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        except BaseException:  # no part-copy is left under the name
            os.unlink(dst_name, dir_fd=dst_dir_fd)
            raise
        finally:
            os.close(target)
    finally:
        os.close(source)


# linkat(2) errnos that mean "no hard link here", not a failure: another filesystem
# (EXDEV), one without links or a file the kernel will not let this user link (EPERM:
# fs.protected_hardlinks), a file with as many links as it may have (EMLINK).
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})


def link_fresh(
    src_dir_fd: int, src_name: str, dst_dir_fd: int, dst_name: str, seen: os.stat_result | None = None
) -> bool:
    """Give the regular file ``src_name`` a second name ``dst_name`` (a hard link; each
    name relative to a directory descriptor, neither followed if it is a link), but only
    while ``src_name`` has no other name, belongs to whoever runs this and has no set-ID
    bit: True when made. False, with nothing left at ``dst_name``, otherwise (a symlink;
    a file that already has another name, perhaps outside the root, which a write there
    could change; a file another user owns and may write in place; a set-ID program,
    which a copy would not keep as one, see :func:`copied_mode`) and where the filesystem
    makes no link (:data:`_NO_LINK`): the caller copies instead. ``seen``: the caller's
    own earlier ``lstat`` of ``src_name`` (a migration's plan): a file it shows unfit is
    not linked at all. What is linked is judged after the link all the same: an orchfs
    lock binds no other program, which may have swapped the file since (for a hard link
    of a file outside the root). Not durable, as :func:`copy_fresh`. A file already at
    ``dst_name`` raises :class:`FileExistsError`; a missing source,
    :class:`FileNotFoundError`."""
    euid = os.geteuid()
    if seen is not None and not _sole_own_file(seen, 1, euid):
        return False
    try:
        os.link(src_name, dst_name, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NO_LINK:
            return False
        raise
    # Judged after the link, on what it links: one stat, and no window in which the
    # source could be swapped between a look and the link.
    if not _sole_own_file(os.stat(dst_name, dir_fd=dst_dir_fd, follow_symlinks=False), 2, euid):
        os.unlink(dst_name, dir_fd=dst_dir_fd)
        return False
    return True


def _sole_own_file(st: os.stat_result, names: int, euid: int) -> bool:
    """A regular file with ``names`` names, of user ``euid``, without set-ID bits."""
    return (
        st.st_nlink == names
        and st.st_uid == euid
        and stat.S_ISREG(st.st_mode)
        and not st.st_mode & (stat.S_ISUID | stat.S_ISGID)
    )


def _copy_fd(source: int, target: int, size: int) -> None:
    with contextlib.suppress(OSError):
        import fcntl

        fcntl.ioctl(target, _FICLONE, source)
        return
    copy_range: Callable[..., int] | None = getattr(os, "copy_file_range", None)
    offset = 0
    if copy_range is not None:
        try:
            while offset < size:
                done = copy_range(source, target, size - offset, offset, offset)
                if done == 0:
                    break
                offset += done
        except OSError as exc:  # EXDEV before Linux 5.3, or a filesystem without it
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP) or offset:
                raise
    _copy_plain(source, target, offset)  # the rest: all of it, or what grew meanwhile


def _copy_plain(source: int, target: int, offset: int) -> None:
    os.lseek(target, offset, os.SEEK_SET)
    while chunk := os.pread(source, _COPY_CHUNK, offset):
        view = memoryview(chunk)
        while view:
            view = view[os.write(target, view) :]
        offset += len(chunk)


__all__ = [
    "OPENAT2_AVAILABLE",
    "PROBE_FLAGS",
    "READ_FLAGS",
    "Beneath",
    "FileReader",
    "check_rel",
    "copied_mode",
    "copy_fresh",
    "link_fresh",
    "read_all",
]
