"""Which names exist in a local directory tree, kept exact by inotify: one look instead of a probe per layer.

A logical path has several locations (the write target, then the lower layers), and
asking the disk about each costs a system call per layer. A :class:`LayerIndex` knows
the names in the directories it was asked about, so that the overlay can tell which
layer holds a path, or that none does, without touching the disk; the one location
that holds it is then opened (reads) beneath the root as always.

Exact, never stale. Each indexed directory is watched with inotify *before* it is
listed, and before every answer one non-blocking ``epoll_wait`` asks whether the
kernel queued anything: inotify events are queued by the change itself, so an answer
given after an empty poll describes the disk as it is. Pending events update the
names they concern (a created, moved-in or moved-away name is "there, kind unknown"
until looked at, since a move away may be half of a swap of two names; a deleted one is
gone; a directory changed in any other way is forgotten with its subdirectories). The
same poll watches the mount table (``/proc/self/mountinfo``), since a mount changes
what a path shows without an event in the directory. A queue overflow, a mount, a read
error or a ``fork`` forget everything.

What is trusted. The index only says which layer to try and whether a path is absent;
opening still goes through :class:`~orchfs.beneath.Beneath` (``openat2``, no link
followed). A name that is a symlink, of unknown kind, or below a directory that is not
indexed gives :data:`UNKNOWN`, and the caller asks the disk as it would without an
index. A directory is indexed only on a local filesystem whose changes inotify sees
(ext4, XFS, btrfs, tmpfs, ...; not NFS or FUSE), on the root's device, searchable.

Where there is no inotify (another system, a fake ``os``, no ``/proc``, the watch or
instance limits reached) every answer is :data:`UNKNOWN`: the callers probe as before.
One inotify instance serves the whole process (instances are a per-user resource);
it is closed when no directory is watched any more.
"""

from __future__ import annotations

import os
import stat
import struct
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .beneath import FileReader
from .errors import PathEscapeError
from .paths import TEMP_PREFIX

if TYPE_CHECKING:
    from .beneath import Beneath

PRESENT = 1  # there, reached without a symlink
ABSENT = -1  # certainly not there (a component missing or not a directory)
UNKNOWN = -2  # ask the disk

# Below these, asking the disk is cheaper than listing a directory or keeping it.
INDEX_AFTER = 4  # questions about one directory before it is listed and watched
RETRY_AFTER = 64  # questions before a directory that could not be indexed is tried again
MAX_DIRS = 1024  # directories watched per index
MAX_NAMES = 65536  # a larger directory is not indexed

# Kinds of a name in a directory's listing (up to _FILE: there, no symlink).
_DIR = 1
_FILE = 2  # anything that is neither a directory nor a symlink
_LINK = 3
_UNSURE = 4  # created or moved in since the listing: looked at when asked about

# inotify(7)
_IN_ATTRIB = 0x4
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_UNMOUNT = 0x2000
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ONLYDIR = 0x1000000
_IN_ISDIR = 0x40000000
_MASK = (
    _IN_ATTRIB
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_ONLYDIR
)
_NAME_GONE = _IN_DELETE | _IN_MOVED_FROM
_NAME_NEW = _IN_CREATE | _IN_MOVED_TO
_NAME_CHANGED = _NAME_GONE | _NAME_NEW
_SELF_CHANGED = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_UNMOUNT | _IN_IGNORED | _IN_ATTRIB
_HEADER = struct.Struct("=iIII")  # struct inotify_event: int wd; uint32 mask, cookie, len; then the name
_EVENT_HEADER = _HEADER.size
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
_READ_SIZE = 65536
_EVENT_MAX = _EVENT_HEADER + 256  # the largest event: a name of NAME_MAX bytes and its NUL
# The temp files of orchfs's own writes: no logical path, marker or legacy location has a
# segment of this name (the gate and the layout refuse one), so none is ever asked about,
# and their events (two of the four of every write) are passed over undecoded.
_TEMP_NAME = os.fsencode(TEMP_PREFIX)

# statfs f_type of filesystems whose every change inotify reports (local ones).
_LOCAL_FILESYSTEMS = frozenset(
    {
        0xEF53,  # ext2/3/4
        0x58465342,  # XFS
        0x9123683E,  # btrfs
        0x01021994,  # tmpfs
        0xF2F52010,  # F2FS
        0x2FC12FC1,  # ZFS
        0xCA451A4E,  # bcachefs
        0x794C7630,  # overlayfs
    }
)


class _Dir:
    """One indexed directory: its names and kinds, its indexed subdirectories."""

    __slots__ = ("children", "name", "names", "parent", "rel", "tree", "wd")

    def __init__(self, tree: _Tree, rel: str, parent: _Dir | None, names: dict[str, int], wd: int) -> None:
        self.tree = tree
        self.rel = rel
        self.name = rel.rpartition("/")[2]
        self.parent = parent
        self.names = names
        self.wd = wd
        self.children: dict[str, _Dir] = {}


class _Tree:
    """The indexed directories of one root (what the watcher's events update)."""

    def __init__(self) -> None:
        self.dirs: dict[str, _Dir] = {}
        # Grows whenever a directory is forgotten: a holder of some nodes' names (see
        # _ReadIfAbsent) knows they are still the live ones while it has not moved.
        self.generation = 0
        # Grows after a name is added to an indexed directory (its dictionary first): a
        # holder that saw its names absent at some value knows they still are while it
        # has not moved, with no look-up (see _ReadIfAbsent).
        self.added = 0

    def drop(self, node: _Dir) -> None:
        """Forget ``node`` and every indexed directory below it."""
        self.generation += 1
        for child in list(node.children.values()):
            self.drop(child)
        if self.dirs.get(node.rel) is node:
            del self.dirs[node.rel]
        if node.parent is not None and node.parent.children.get(node.name) is node:
            del node.parent.children[node.name]
        _WATCHER.unwatch(node)

    def clear(self) -> None:
        root = self.dirs.get("")
        if root is not None:
            self.drop(root)
        for node in list(self.dirs.values()):  # none, unless a drop was interrupted
            self.drop(node)


class _Watcher:
    """The process's one inotify instance, and an epoll that also watches the mounts."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.fd = -1
        self.mounts = -1
        self.epoll: Any = None
        self.poll: Any = None  # epoll.poll while something is watched
        self.busy = False  # events read and not yet applied
        self.remounted = False  # the mount table changed: everything is forgotten
        self.watched: dict[int, list[_Dir]] = {}
        self.failed = False  # inotify cannot be used in this process
        self._add_watch: Any = None
        self._close_fd = os.close

    def _start(self) -> bool:
        if self.fd >= 0:
            return True
        if self.failed:
            return False
        try:
            import ctypes
            import select

            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                return False  # EMFILE (the per-user instance limit): try again later
            self._add_watch = libc.inotify_add_watch
            self._rm_watch = libc.inotify_rm_watch
            # The real calls, kept: the descriptors must never meet a fake os (pyfakefs)
            # that a test may put in place while they are open.
            self._read = os.read
            self._close_fd = os.close
            self.fd = fd
            self.mounts = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
            self.epoll = select.epoll()
            self.epoll.register(fd, select.EPOLLIN)
            self.epoll.register(self.mounts, select.EPOLLPRI | select.EPOLLERR)
            self.epoll.poll(0)  # the mount table's first poll reports it as changed
        except (OSError, AttributeError):
            self.failed = True
            self._close()
            return False
        return True

    def _close(self) -> None:
        self.poll = None
        if self.epoll is not None:
            self.epoll.close()
            self.epoll = None
        for fd in (self.fd, self.mounts):
            if fd >= 0:
                self._close_fd(fd)
        self.fd = self.mounts = -1

    def watch(
        self, tree: _Tree, rel: str, parent: _Dir | None, dir_fd: int, names: dict[str, int]
    ) -> _Dir | None:
        """Watch the directory open as ``dir_fd`` for ``tree`` (the caller lists it after)."""
        if not self._start():
            return None
        wd = self._add_watch(self.fd, f"/proc/self/fd/{dir_fd}".encode(), _MASK)
        if wd < 0:  # ENOSPC: the watch limit; the caller asks the disk instead
            return None
        node = _Dir(tree, rel, parent, names, wd)
        self.watched.setdefault(wd, []).append(node)
        self.poll = self.epoll.poll
        return node

    def unwatch(self, node: _Dir) -> None:
        nodes = self.watched.get(node.wd)
        if nodes is None or node not in nodes:
            return
        nodes.remove(node)
        if not nodes:
            del self.watched[node.wd]
            if self.fd >= 0:
                self._rm_watch(self.fd, node.wd)  # its IN_IGNORED is read and dropped later
        if not self.watched:
            self._close()  # nothing watched: no descriptor kept

    def sync(self, ready: list[tuple[int, int]]) -> None:
        """Apply every queued event; ``ready`` is what the caller's poll reported (a
        mount change is reported to one poll only)."""
        # (-1 stands for "no poll": never the mounts' descriptor, even once it is closed,
        # else the flag would outlive the descriptor and reset the next instance at once.)
        mounts = self.mounts
        if mounts >= 0:
            for fd, _events in ready:  # a loop, not any(): this runs after every write
                if fd == mounts:
                    self.remounted = True
        with self.lock:
            if self.fd < 0:
                return
            self.busy = True
            try:
                if self.remounted:  # a mount or unmount anywhere: start afresh
                    self.reset()
                    return
                while True:
                    try:
                        data = self._read(self.fd, _READ_SIZE)
                    except BlockingIOError:
                        return
                    if not self._apply(data):
                        self.reset()
                        return
                    if len(data) <= _READ_SIZE - _EVENT_MAX:
                        return  # room for another event was left: the queue was empty
            except OSError:
                self.reset()
            finally:
                self.busy = self.remounted = False

    def _apply(self, data: bytes) -> bool:
        """Apply the events in ``data``; False when they overflowed."""
        at = 0
        header = _HEADER.unpack_from
        watched = self.watched
        while at + _EVENT_HEADER <= len(data):
            wd, mask, _cookie, size = header(data, at)
            start = at + _EVENT_HEADER
            at = start + size
            if mask & _IN_Q_OVERFLOW:
                return False
            if size and (not mask & _NAME_CHANGED or data.startswith(_TEMP_NAME, start)):
                # A name's attributes (IN_ATTRIB): its kind is the same, and an indexed
                # directory of that name hears it on its own watch (IN_ATTRIB, no name).
                # Or a temp file, never asked about.
                continue
            nodes = watched.get(wd)
            if not nodes:
                continue
            name = data[start:at].rstrip(b"\0").decode(_FS_ENCODING, _FS_ERRORS)  # os.fsdecode
            for node in list(nodes):  # each event applied here, inline: every write makes four
                if not name:
                    if mask & _SELF_CHANGED:  # the directory itself moved, went or changed modes
                        node.tree.drop(node)
                    continue
                child = node.children.get(name)
                if child is not None:  # replaced, removed or changed: looked at again when asked
                    node.tree.drop(child)
                if mask & _IN_MOVED_FROM:
                    # Not "gone": renameat2(RENAME_EXCHANGE) swaps two names with a move
                    # each way, the very events of two renames in a row, and both names
                    # stay. A name that was there is "there, kind unknown" until looked at.
                    if name in node.names:
                        node.names[name] = _UNSURE
                elif mask & _IN_DELETE:
                    node.names.pop(name, None)
                elif mask & _NAME_NEW:
                    node.names[name] = _DIR if mask & _IN_ISDIR else _UNSURE
                    node.tree.added += 1
        return True

    def reset(self) -> None:
        """Forget every index of this process (an overflow, a mount, a fork)."""
        trees = {id(node.tree): node.tree for nodes in self.watched.values() for node in nodes}
        self.watched.clear()
        self._close()
        for tree in trees.values():
            tree.dirs.clear()  # their watches went with the descriptor
            tree.generation += 1

    def after_fork(self) -> None:
        # The child shares the parent's inotify queue: reading it would take the parent's
        # events. It lets go of the descriptors (the parent keeps its own) and starts over.
        self.lock = threading.RLock()
        self.busy = self.remounted = False
        self.reset()


_WATCHER = _Watcher()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WATCHER.after_fork)


class _ReadIfAbsent(FileReader):
    """A read made only while the index shows some paths absent (see
    :meth:`LayerIndex.read_if_absent`): the names of their directories are held, so
    that a call is one poll and a comparison, and a look-up per path only after a name
    was added somewhere in the tree (then the paths were absent at that count again).
    The reader's own fields are copied in: one object, and the read one call away."""

    __slots__ = ("_absent", "_generation", "_seen", "_tree")

    def __init__(
        self, tree: _Tree, absent: tuple[tuple[dict[str, int], str], ...], reader: FileReader
    ) -> None:
        super().__init__(reader.disk, reader.path)
        self._tree = tree
        self._generation = tree.generation
        self._seen = -1  # no count yet: the first call looks the names up
        self._absent = absent

    def __call__(self) -> Any:
        watcher = _WATCHER  # what first() does first, inline: a call frame is a tenth of the check
        try:
            # Loaded, then called: a method call of an instance attribute is never specialised.
            poll = watcher.poll
            ready = poll(0, 2)
        except (TypeError, ValueError):
            ready = [(-1, 0)]
        if ready or watcher.busy or watcher.remounted:
            watcher.sync(ready)
        tree = self._tree
        if tree.generation != self._generation:
            return None  # a directory was forgotten since: its names may be another's now
        added = tree.added  # read before the names: a name added after it moves it on
        if added != self._seen:
            for names, name in self._absent:
                if name in names:
                    return None
            self._seen = added
        return self._disk.read_encoded(self._path)


def _linux() -> bool:
    return sys.platform.startswith("linux")


def _local_filesystem(fd: int) -> bool:
    """Whether the filesystem of ``fd`` reports every change to inotify."""
    import ctypes

    buffer = ctypes.create_string_buffer(256)  # struct statfs: f_type first
    if ctypes.CDLL(None, use_errno=True).fstatfs(fd, buffer) != 0:
        return False
    kind = int.from_bytes(buffer.raw[: ctypes.sizeof(ctypes.c_long)], sys.byteorder, signed=False)
    return kind in _LOCAL_FILESYSTEMS


class LayerIndex:
    """The names in directories beneath one root (a :class:`Beneath`), kept exact.

    :meth:`first` is the one question: the first of some root-relative paths that is
    there (one poll of the event queue, then look-ups in memory), :data:`ABSENT` or
    :data:`UNKNOWN`. :meth:`known_absent` asks about one more path of the same
    operation without polling again. ``use_inotify=False`` answers :data:`UNKNOWN`
    always (what happens where inotify is missing).
    """

    def __init__(self, disk: Beneath, *, use_inotify: bool | None = None, max_dirs: int = MAX_DIRS) -> None:
        self._disk = disk
        self._tree = _Tree()
        self._dirs = self._tree.dirs
        self._asked: dict[str, int] = {}
        self._max_dirs = max_dirs
        self._usable = use_inotify is not False and _linux() and hasattr(os, "O_PATH")
        self._checked_root = False
        weakref.finalize(self, _release, self._tree)

    def __repr__(self) -> str:
        return f"LayerIndex({self._disk.root!r}, {len(self._dirs)} directories)"

    @property
    def watched(self) -> int:
        """How many directories are indexed now."""
        return len(self._dirs)

    def close(self) -> None:
        """Stop watching (the process's inotify descriptor closes with its last watch)."""
        _release(self._tree)
        self._usable = False

    @staticmethod
    def key(path: str) -> tuple[str, str]:
        """A root-relative path as :meth:`first` takes it: ``(directory, name)``."""
        head, _, name = path.rpartition("/")
        return head, sys.intern(name)  # the listing's own string: compared by identity

    def first(self, keys: Iterable[tuple[str, str]]) -> int:
        """The position of the first of ``keys`` (see :meth:`key`) that is there,
        :data:`ABSENT` when none is, :data:`UNKNOWN` when one before the answer cannot
        be told here."""
        dirs = self._dirs
        if dirs:  # something indexed: what changed is applied first
            watcher = _WATCHER
            try:
                ready = watcher.poll(0, 2)  # type: ignore[misc]  # 2: the inotify and mounts descriptors
            except (TypeError, ValueError):  # closed meanwhile (nothing watched any more)
                ready = [(-1, 0)]
            if ready or watcher.busy or watcher.remounted:
                watcher.sync(ready)
        elif not self._usable:
            return UNKNOWN
        for at, (head, name) in enumerate(keys):
            node = dirs.get(head)
            if node is not None:  # the common case, inline: a look-up in one dictionary
                kind = node.names.get(name)
                if kind is None:
                    continue
                if kind <= _FILE:
                    return at
            state = self._state(head, name)
            if state == PRESENT:
                return at
            if state != ABSENT:
                return UNKNOWN
        return ABSENT

    def read_if_absent(
        self, keys: tuple[tuple[str, str], ...], reader: FileReader
    ) -> Callable[[], Any] | None:
        """``reader`` made conditional: the call returns what ``reader`` returns while
        none of ``keys`` is there by the index (certainly absent, as :meth:`first` would
        say, as of a poll in that same call); else None. None instead of a call when a
        directory of ``keys`` is not indexed now."""
        held = []
        for head, name in keys:
            node = self._dirs.get(head)
            if node is None:
                return None
            held.append((node.names, name))
        return _ReadIfAbsent(self._tree, tuple(held), reader)

    def known_absent(self, key: tuple[str, str]) -> bool:
        """Whether ``key`` is certainly absent, as of the last :meth:`first` (no poll:
        for a second question of the same operation)."""
        node = self._dirs.get(key[0])
        if node is not None:
            return key[1] not in node.names
        return self._state(*key) == ABSENT

    def _state(self, head: str, name: str) -> int:
        node = self._dirs.get(head)
        if node is None:
            found = self._directory(head, True)
            if not isinstance(found, _Dir):
                return UNKNOWN if found is None else ABSENT
            node = found
        kind = node.names.get(name)
        if kind is None:
            return ABSENT
        if kind <= _FILE:
            return PRESENT
        if kind == _UNSURE:
            return self._look(node, name)
        return UNKNOWN

    def _look(self, node: _Dir, name: str) -> int:
        """Settle the kind of a name created since the listing (one lstat)."""
        with _WATCHER.lock:
            if node.names.get(name) != _UNSURE or self._dirs.get(node.rel) is not node:
                return UNKNOWN
            try:
                st = self._disk.lstat(f"{node.rel}/{name}" if node.rel else name)
            except FileNotFoundError:
                # Moved away: gone (one made again after the lstat is queued, applied next).
                del node.names[name]
                return ABSENT
            except (OSError, PathEscapeError):
                return UNKNOWN
            # A change after the lstat is queued and applied after this: never lost.
            kind = _LINK if stat.S_ISLNK(st.st_mode) else _DIR if stat.S_ISDIR(st.st_mode) else _FILE
            node.names[name] = kind
        return UNKNOWN if kind == _LINK else PRESENT

    def _directory(self, rel: str, asked: bool) -> _Dir | int | None:
        """The node of directory ``rel`` (indexed now if worth it), :data:`ABSENT` when a
        component is certainly missing or not a directory, or None (ask the disk)."""
        if not self._usable:
            return None
        head, _, name = rel.rpartition("/")
        above = self._dirs.get(head) if rel else None
        if above is not None and self._kind(above, name) == _FILE:
            return ABSENT  # missing, or a file in the way: known without indexing
        if above is None and head and self._missing_on_the_way(head):
            return ABSENT  # below a directory that is not there (a v1 tree never made)
        if asked:
            count = self._asked.get(rel, 0) + 1
            if len(self._asked) < MAX_NAMES:
                # Indexed from the INDEX_AFTER-th question on; one that cannot be indexed
                # is tried again only after many more questions (they are cheap probes).
                self._asked[rel] = count if count < INDEX_AFTER else -RETRY_AFTER
            if count < INDEX_AFTER:
                return None
        if not rel:
            return self._index(rel, None)
        if above is None:
            found = self._directory(head, False)
            if not isinstance(found, _Dir):
                return found
            above = found
            if self._kind(above, name) == _FILE:
                return ABSENT
        if above.names.get(name) == _LINK:
            return None
        return self._index(rel, above)

    def _missing_on_the_way(self, rel: str) -> bool:
        """Whether the nearest indexed directory above ``rel`` shows the next component
        on the way to it missing, or a file: then nothing below it is there."""
        while rel:
            rel, _, name = rel.rpartition("/")
            node = self._dirs.get(rel)
            if node is not None:
                return self._kind(node, name) == _FILE
        return False

    def _kind(self, node: _Dir, name: str) -> int:
        """The kind of ``name`` in ``node``'s listing (:data:`_FILE` when it is not
        there), one created or moved since looked at first (a directory moved away
        would otherwise leave every path below it to the disk)."""
        kind = node.names.get(name, _FILE)
        if kind == _UNSURE:
            self._look(node, name)
            kind = node.names.get(name, _FILE)
        return kind

    def _index(self, rel: str, parent: _Dir | None) -> _Dir | None:
        """Watch, then list, directory ``rel`` (so that no change falls in between)."""
        with _WATCHER.lock:
            known = self._dirs.get(rel)
            if known is not None:
                return known
            if len(self._dirs) >= self._max_dirs or not isinstance(os, ModuleType):
                return None  # enough watched, or a fake os (pyfakefs): ask the disk
            if not self._checked_root:
                try:
                    self._usable = self._root_fits()
                except OSError:
                    return None
                self._checked_root = True
                if not self._usable:
                    return None
            try:
                fd = self._disk.open_dir(rel)
            except (OSError, PathEscapeError):
                return None  # gone, a link or a file since: the disk judges it
            try:
                st = os.fstat(fd)
                if st.st_dev != self._device or not _searchable(fd):
                    return None
                names: dict[str, int] = {}
                node = _WATCHER.watch(self._tree, rel, parent, fd, names)
                if node is None:
                    self._usable = not _WATCHER.failed  # no inotify here: stop trying
                    return None
                try:
                    with os.scandir(fd) as entries:
                        for entry in entries:
                            if len(names) >= MAX_NAMES:
                                raise OverflowError
                            names[sys.intern(entry.name)] = (
                                _LINK
                                if entry.is_symlink()
                                else _DIR
                                if entry.is_dir(follow_symlinks=False)
                                else _FILE
                            )
                except (OSError, OverflowError):
                    _WATCHER.unwatch(node)
                    return None
            finally:
                os.close(fd)
            self._dirs[rel] = node
            if parent is not None:
                parent.children[node.name] = node
                parent.names[node.name] = _DIR  # opened as one, beneath the root, just now
                self._tree.added += 1
            self._asked.pop(rel, None)
            return node

    def _root_fits(self) -> bool:
        fd = self._disk.open_dir("")  # OSError: no root yet, looked at again next time
        try:
            self._device = os.fstat(fd).st_dev
            return os.path.isdir("/proc/self/fd") and _local_filesystem(fd)
        finally:
            os.close(fd)


def _searchable(fd: int) -> bool:
    """Whether names can be looked up in the directory ``fd`` (execute permission)."""
    try:
        os.stat(".", dir_fd=fd, follow_symlinks=False)
    except OSError:
        return False
    return True


def _release(tree: _Tree) -> None:
    with _WATCHER.lock:
        tree.clear()


def index_for(*stores: Any) -> LayerIndex | None:
    """One index for ``stores`` where they are all local adapters beneath one boundary
    (paths through :meth:`LocalStorage.path_beneath`), else None."""
    if not _linux() or not stores or any(getattr(s, "kind", None) != "local" for s in stores):
        return None
    if len({s.boundary for s in stores}) != 1:
        return None
    return LayerIndex(stores[0].disk)


__all__ = [
    "ABSENT",
    "PRESENT",
    "UNKNOWN",
    "LayerIndex",
    "index_for",
]
