"""Repository locks: one implementation per storage kind, one context manager in front.

* **Local disk** - an OS lock (``flock``) on ``.orchestrator/locks/<name>.lock``. The
  ``locks/`` directory is 0700 and reached without following symlinks; the lock
  file is opened ``O_NOFOLLOW`` and never truncated (a symlink planted at its path is
  refused and its target left alone, the attack of CVE-2025-68146). Who holds it
  is recorded beside it in ``<name>.holder``. The kernel drops the lock when its
  holder dies, so a dead holder never blocks the next acquirer.
* **Memory** - a process-wide lock per repository and name.
* **Object storage** - a lease object ``locks/<name>.lease`` taken with a conditional
  write (:mod:`orchfs.conditional`: a create where there is none, else a replace on the
  version of a released or expired lease), renewed by a heartbeat thread while held
  (conditional on its own version; transient errors retried with backoff until the
  lease's deadline), released by a conditional replace with a *released* record (the
  generation lives on), and taken over only after it has expired by the *server's*
  clock (``Date`` minus ``Last-Modified``, with a second of slack for their resolution).

**Fencing.** Every acquisition has a generation one above the previous one
(:attr:`RepositoryLock.token`). While a thread holds a lease, every write orchfs makes
from that thread on object storage - ``update_json``, ``append_line``, secrets, migration
steps, and the caller's own ``pipe_file``/``open(..., "wb")``/``rm`` inside ``with
fs.lock()`` - goes through its :class:`Fence`: the lease's deadline is checked, then the
object is replaced only if it is still at the version read under the lock (``If-Match``;
``If-None-Match: *`` for one that was absent). A holder whose lease ended (paused past it,
cut off from the store) gets :class:`LockLostError` and writes nothing. What is *not*
fenced: writes to other stores (local files, databases, services) - call
``lock.check()`` (or ``lock.token.check()``) right before each, and make them idempotent.
Local disk and memory locks cannot be lost while their process lives; there the token only
counts acquisitions.

Locks are re-entrant within one thread (an ``update_json`` inside ``with
fs.lock("repo")`` does not deadlock) and exclusive across threads and processes.
:func:`inspect` reports every lock of a repository for ``orchfs doctor``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import platform
import random
import stat
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .atomic import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE
from .beneath import READ_FLAGS
from .config import MAX_DURATION_SECONDS, MAX_LEASE_SECONDS
from .errors import (
    ConfigError,
    LockLostError,
    LockTimeout,
    PathEscapeError,
    PreconditionFailed,
    StateError,
    UnsafeStateError,
    library_logger,
    shown,
)
from .paths import validate_name

if TYPE_CHECKING:  # conditional requests are imported with the first lease, not a local lock
    from .conditional import Versioned

LOCKS_DIR = "locks"
HOLDER_RECORD_BYTES = 512
DEFAULT_TIMEOUT = 10.0
DEFAULT_LEASE = 30.0
_MAX_POLL = 0.05
_MAX_LEASE_POLL = 0.03  # each lease probe is a request: waiters must not crowd out the holder
_HOST = platform.node()  # socket.gethostname() where there is uname; no socket import

logger = library_logger(__name__)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _command() -> str:
    argv = sys.argv or ["python"]
    return " ".join([os.path.basename(argv[0]), *argv[1:]])[:200]


class Holder(NamedTuple):
    """Who holds a lock: recorded when it is taken, shown when someone waits."""

    pid: int
    host: str
    session: str | None
    command: str
    since: float

    @classmethod
    def current(cls, session: str | None) -> Holder:
        return cls(os.getpid(), _HOST, session, _command(), time.time())

    @classmethod
    def from_json(cls, data: bytes) -> Holder | None:
        try:
            record = json.loads(data)
            pid, session = int(record["pid"]), record.get("session")
            # A planted record: pid 0 or -1 would ask os.kill about a group, a huge one overflows.
            if not 0 < pid < 1 << 31 or not isinstance(session, (str, type(None))):
                return None
            host, command, since = str(record["host"]), str(record.get("command", "")), float(record["since"])
            return cls(pid, host, session, command, since) if math.isfinite(since) else None
        except (ValueError, KeyError, TypeError, RecursionError, OverflowError):  # planted nesting too
            return None

    def to_json(self, **extra: Any) -> bytes:
        record = {
            "pid": self.pid,
            "host": self.host,
            "session": self.session,
            "command": self.command,
            "since": self.since,
            **extra,
        }
        return json.dumps(record).encode()

    def alive(self) -> bool | None:
        """Whether the holder process still runs (None: it runs on another host)."""
        if self.host != _HOST:
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def describe(self, now: float | None = None) -> str:
        held = (now if now is not None else time.time()) - self.since
        session = f", session {shown(self.session)}" if self.session else ""
        return f"pid {self.pid} on {shown(self.host)}{session} ({self.command!r}), held for {held:.1f}s"


class LockStatus(NamedTuple):
    """One lock of a repository as :func:`inspect` sees it."""

    name: str
    url: str
    held: bool
    holder: Holder | None
    age: float | None
    stale: bool


def _timeout_error(
    name: str, where: str, waited: float, holder: Holder | None, now: float | None = None
) -> LockTimeout:
    who = holder.describe(now) if holder else "an unknown holder (no holder record)"
    return LockTimeout(
        f"lock {name!r} of {where} is held by {who}; gave up after {waited:.1f}s. "
        "Wait for it to finish, or raise the timeout (state.lock_timeout or "
        "ORCHFS_LOCK_TIMEOUT; `orchfs migrate --lock-timeout 30s`; timeout= in Python)."
    )


class LockBackend:
    """What every kind of lock shares, in the shape of filelock's ``BaseFileLock``: the
    wait until a deadline (polling with a doubling delay), the timeout error that names
    the holder, logging, and the ``lost`` flag. Re-entrancy is :class:`RepositoryLock`'s.

    A backend supplies :meth:`_try` (one attempt, without waiting unless ``_try`` is
    handed time to wait, as a thread lock can), :meth:`_holder` (who has it) and, where
    it needs them, :meth:`_start` (before the first attempt), :meth:`_give_up` (after a
    timeout) and :meth:`_won` (after a successful attempt).
    """

    name: str
    url: str
    where: str  # the repository the lock belongs to, for messages
    generation = 0
    first_poll = 0.001
    poll_ceiling = _MAX_POLL
    can_wait = False  # whether _try can itself wait (a thread lock) instead of polling

    @property
    def held(self) -> bool:
        raise NotImplementedError

    @property
    def lost(self) -> bool:
        """Whether the lock ended while held: only a lease can."""
        return False

    def check(self) -> None:
        """Raise :class:`LockLostError` if the lock was lost (a kernel or process lock is
        held until released, so there is nothing to check)."""

    def _try(self, wait: float) -> bool:
        raise NotImplementedError

    def _holder(self) -> Holder | None:
        raise NotImplementedError

    def _start(self) -> None:
        """Before the first attempt."""

    def _give_up(self) -> None:
        """After the last attempt failed."""

    def _won(self, waited: bool) -> None:
        """After an attempt took the lock."""

    def _pause(self, delay: float) -> float:
        """How long to sleep before the next attempt."""
        return delay

    def clear_stale(self) -> None:
        """Clear what a dead holder left behind (:func:`inspect` found the lock stale)."""
        raise NotImplementedError

    def acquire(self, timeout: float) -> None:
        started = time.monotonic()
        deadline = started + timeout
        delay = self.first_poll
        waited = False
        self._start()
        while True:
            try:
                if self._try(max(0.0, deadline - time.monotonic()) if self.can_wait else 0.0):
                    break
                timed_out = time.monotonic() >= deadline
                if timed_out or not waited:
                    holder = self._holder()
            except BaseException:
                self._give_up()
                raise
            if timed_out:
                self._give_up()
                logger.info("gave up on lock %r of %s after %.1fs", self.name, self.where, timeout)
                raise _timeout_error(self.name, self.where, timeout, holder)
            if not waited:
                waited = True
                who = holder.describe() if holder else "an unknown holder"
                logger.info(
                    "waiting up to %.1fs for lock %r of %s, held by %s", timeout, self.name, self.where, who
                )
            slept = self._pause(delay)
            time.sleep(max(0.0, min(slept, deadline - time.monotonic())))
            delay = min(slept * 2, self.poll_ceiling)
        if waited:
            logger.info("took lock %r of %s after %.2fs", self.name, self.where, time.monotonic() - started)
        self._won(waited)


class LocalFileLock(LockBackend):
    """``flock`` on ``locks/<name>.lock`` under the state directory."""

    def __init__(self, storage: Any, name: str, session: str | None) -> None:
        self.storage = storage
        self.name = name
        self.session = session
        self.url = storage.url(f"{LOCKS_DIR}/{name}.lock")
        self.where = storage.url("")
        self._fd = -1
        self._dir_fd = -1
        self._holder_fd = -1
        self.generation = 0

    def _open(self) -> None:
        dir_fd = self.storage.open_dir(LOCKS_DIR, create=True)
        try:
            if stat.S_IMODE(os.fstat(dir_fd).st_mode) != PRIVATE_DIR_MODE:
                os.fchmod(dir_fd, PRIVATE_DIR_MODE)
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(f"{self.name}.lock", flags, PRIVATE_FILE_MODE, dir_fd=dir_fd)
        except OSError as exc:
            os.close(dir_fd)
            if exc.errno == errno.ELOOP:
                raise PathEscapeError(
                    f"{self.url} is a symlink; orchfs refuses to open a lock through it (remove the link)"
                ) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            os.close(dir_fd)
            raise PathEscapeError(f"{self.url} is not a regular file; remove it")
        self._fd, self._dir_fd = fd, dir_fd

    def _record(self) -> bytes:
        try:
            # O_NONBLOCK: a FIFO planted there reads as nothing instead of hanging.
            fd = os.open(f"{self.name}.holder", READ_FLAGS, dir_fd=self._dir_fd)
        except OSError:
            return b""
        try:
            return os.read(fd, HOLDER_RECORD_BYTES).rstrip(b" \n\0")
        except IsADirectoryError:  # planted: no record (and _record_holder refuses it)
            return b""
        finally:
            os.close(fd)

    def _holder(self) -> Holder | None:
        return Holder.from_json(self._record())

    def _write_record(self, record: bytes) -> None:
        # A fixed-size record rewritten in place: no truncation, no rename, one write.
        os.pwrite(
            self._holder_fd,
            record[: HOLDER_RECORD_BYTES - 1].ljust(HOLDER_RECORD_BYTES - 1) + b"\n",
            0,
        )

    def _record_holder(self) -> None:
        self.generation = _generation_of(self._record()) + 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(f"{self.name}.holder", flags, PRIVATE_FILE_MODE, dir_fd=self._dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENXIO, errno.EISDIR):  # a link; a FIFO; a directory
                raise
            fd = -1
        if fd < 0 or not _own_file(fd):
            if fd >= 0:
                os.close(fd)
            raise UnsafeStateError(
                f"{self.storage.url(LOCKS_DIR)}/{self.name}.holder is not a plain file (a link, "
                "a FIFO, a device or a hard link, which may be another name of a file outside "
                "the repository); orchfs never writes a holder record there: remove it",
                f"{LOCKS_DIR}/{self.name}.holder",
            )
        self._holder_fd = fd
        self._write_record(Holder.current(self.session).to_json(generation=self.generation))

    def _start(self) -> None:
        self._open()

    def _try(self, wait: float) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _give_up(self) -> None:
        self._close()

    def _won(self, waited: bool) -> None:
        try:
            self._record_holder()
        except BaseException:
            self._close()
            raise

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        if self._holder_fd >= 0:  # free again; the generation stays for the next holder
            self._write_record(json.dumps({"generation": self.generation}).encode())
        self._close()

    def clear_stale(self) -> None:
        """Remove the holder record a dead holder left (its ``flock`` died with it)."""
        with contextlib.suppress(FileNotFoundError):
            dir_fd = self.storage.open_dir(LOCKS_DIR)
            try:
                os.unlink(f"{self.name}.holder", dir_fd=dir_fd)
            finally:
                os.close(dir_fd)

    def _close(self) -> None:
        if self._holder_fd >= 0:
            os.close(self._holder_fd)
            self._holder_fd = -1
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1


def _generation_of(record: bytes) -> int:
    try:
        value = json.loads(record).get("generation", 0) if record else 0
        return int(value)
    except (ValueError, AttributeError, TypeError, RecursionError, OverflowError):  # 1e999 too
        return 0


def _own_file(fd: int) -> bool:
    """A regular file with no other name (a hard link may lead outside the root)."""
    st = os.fstat(fd)
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


_memory_locks: dict[str, threading.Lock] = {}
_memory_holders: dict[str, Holder] = {}
_memory_generations: dict[str, int] = {}
_memory_registry = threading.Lock()


class MemoryLock(LockBackend):
    """A process-wide lock per repository URL and name."""

    can_wait = True  # a thread lock waits without polling

    def __init__(self, storage: Any, name: str, session: str | None) -> None:
        self.name = name
        self.session = session
        self.url = self.where = storage.url(f"{LOCKS_DIR}/{name}.lock")
        self.generation = 0
        with _memory_registry:
            self._lock = _memory_locks.setdefault(self.url, threading.Lock())

    def _try(self, wait: float) -> bool:
        return self._lock.acquire(timeout=wait) if wait > 0 else self._lock.acquire(False)

    def _holder(self) -> Holder | None:
        return _memory_holders.get(self.url)

    def _won(self, waited: bool) -> None:
        _memory_holders[self.url] = Holder.current(self.session)
        self.generation = _memory_generations[self.url] = _memory_generations.get(self.url, 0) + 1

    @property
    def held(self) -> bool:
        return self.generation > 0

    def release(self) -> None:
        self.generation = 0
        _memory_holders.pop(self.url, None)
        self._lock.release()

    def clear_stale(self) -> None:
        """Nothing to clear: a lock of this process ends with its holder."""


@dataclass(frozen=True)
class FencingToken:
    """What one acquisition of a lock is: ``generation`` only grows from one acquisition of
    the lock to the next, whoever takes it. Pass it to ``pipe_file(..., if_match=token)``
    to fence a write made from another thread (writes from the holding thread are fenced
    without it)."""

    name: str
    generation: int
    backend: Any = field(repr=False, compare=False)

    def check(self) -> None:
        """Raise :class:`LockLostError` unless this acquisition still holds the lock."""
        if not self.backend.held or self.backend.generation != self.generation:
            raise LockLostError(
                f"lock {self.name!r} was released since this token (generation "
                f"{self.generation}) was taken; take the lock again"
            )
        self.backend.check()

    @contextlib.contextmanager
    def fenced(self) -> Iterator[None]:
        """Writes orchfs makes in the block, from any thread, are fenced by this token."""
        self.check()
        lease = self.backend if isinstance(self.backend, LeaseLock) else None
        if lease is not None:
            _enter_fence(lease)
        try:
            yield
        finally:
            if lease is not None:
                _leave_fence(lease)


class Fence:
    """The leases one thread holds and the versions it read under them.

    While a thread holds a lease, every write orchfs makes on object storage from that
    thread goes through :meth:`write`: the deadline of each lease is checked first, then
    the object is replaced only if it is still at the version read under the lock
    (``If-Match``), or created only if it is still absent (``If-None-Match: *``).
    """

    def __init__(self) -> None:
        self.leases: list[LeaseLock] = []
        self._versions: dict[str, str | None] = {}

    def check(self) -> None:
        for lease in self.leases:
            lease.check()

    def remember(self, path: str, version: str | None) -> None:
        self._versions[path] = version

    def forget(self, path: str) -> None:
        self._versions.pop(path, None)

    def read(self, store: Any, path: str) -> bytes | None:
        """One GET that also notes the version the fenced write will name."""
        found = store.get(path)
        self.remember(path, found.version if found else None)
        return found.data if found else None

    def write(self, store: Any, path: str, data: bytes, *, exclusive: bool = False) -> None:
        if exclusive:
            self.check()
            self.remember(path, store.create(path, data))  # FileExistsError stays itself
            return
        if path in self._versions:
            version = self._versions[path]
        else:  # written without being read under the lock: its version now, then the check
            found = store.get(path, 0)  # a version needs no bytes (a ranged read of one)
            version = found.version if found else None
        self.check()
        try:
            self.remember(path, store.put(path, data, version))
        except (PreconditionFailed, FileExistsError):
            self.forget(path)
            raise self._changed(store.url(path)) from None

    def delete(self, store: Any, path: str) -> None:
        version = self._versions.get(path)
        if version is None:
            found = store.get(path, 0)
            if found is None:
                raise FileNotFoundError(errno.ENOENT, "no such file", store.url(path))
            version = found.version
        self.check()
        try:
            store.delete(path, version)
        except PreconditionFailed:
            raise self._changed(store.url(path)) from None
        finally:
            self.forget(path)

    def _changed(self, url: str) -> LockLostError:
        names = ", ".join(repr(lease.name) for lease in self.leases)
        return LockLostError(
            f"{url} changed since it was read under lock {names}: this holder's lease ended "
            "(paused or cut off past it) or someone wrote without the lock; nothing was written. "
            "Take the lock again and redo the update."
        )


_fences = threading.local()


def active_fence() -> Fence | None:
    """The fence of the calling thread while it holds a lease, else None."""
    fence = getattr(_fences, "fence", None)
    return fence if fence is not None and fence.leases else None


def _enter_fence(lease: LeaseLock) -> None:
    fence = getattr(_fences, "fence", None)
    if fence is None or not fence.leases:
        fence = _fences.fence = Fence()
    fence.leases.append(lease)


def _leave_fence(lease: LeaseLock) -> None:
    fence = getattr(_fences, "fence", None)
    if fence is not None and lease in fence.leases:
        fence.leases.remove(lease)


class _LeaseState(NamedTuple):
    """A lease object as one GET saw it."""

    version: str
    holder: Holder | None
    generation: int
    ttl: float
    released: bool
    age: float | None  # seconds since its last write, by the server's clock

    def expired(self) -> bool:
        # The server's clock has a 1 s resolution (Date and Last-Modified): one second of
        # slack so that a takeover never happens before the holder's own deadline.
        return self.age is not None and self.age > self.ttl + 1.0

    def free(self) -> bool:
        return self.released or self.expired()


# Bounds of a lease record orchfs writes: a lease no setting exceeds, a generation that
# counts acquisitions, and its size (a holder record with a 200-character command, a
# hostname and a session id, even with every character escaped, stays well under it):
# a lease or waiting object is read with a ranged request of at most this many bytes
# and one, so that a planted multi-megabyte object is never read into memory.
_MAX_GENERATION = 1 << 63
LEASE_MAX_BYTES = 8192


def _lease_state(found: Versioned, url: str) -> _LeaseState:
    """The lease object's record, checked: a planted one (not JSON, a NaN, negative or
    endless lease, a generation that is no count, more bytes than a lease has) is
    :class:`StateError`, never a lock held forever or taken over by a guess."""
    if len(found.data) > LEASE_MAX_BYTES:  # read as far as one byte past the bound
        raise _damaged_lease(url, f"over {LEASE_MAX_BYTES} bytes")
    try:
        record = json.loads(found.data) if found.data else {}
    except (ValueError, RecursionError):
        record = None
    if not isinstance(record, dict):
        raise _damaged_lease(url, "not a JSON object")
    generation, ttl = record.get("generation", 0), record.get("lease", 0)
    released = record.get("released", False)
    if type(generation) is not int or not 0 <= generation < _MAX_GENERATION:
        raise _damaged_lease(url, "its generation is not a count")
    if type(ttl) not in (int, float) or not 0 <= ttl <= MAX_LEASE_SECONDS:  # NaN fails too
        raise _damaged_lease(url, f"its lease is not a duration of at most {MAX_LEASE_SECONDS:g}s")
    if type(released) is not bool:
        raise _damaged_lease(url, "its released flag is not true or false")
    holder = Holder.from_json(found.data)
    return _LeaseState(found.version, holder, generation, float(ttl), released, found.age)


def _damaged_lease(url: str, why: str) -> StateError:
    return StateError(
        f"{url} is not a lease orchfs wrote ({why}: damaged or planted); if no orchfs process "
        "holds this lock, remove the object",
        url,
    )


# Whether each (store class, server, bucket) refused a create over an existing object.
_honours_preconditions: dict[tuple[str, str, str], bool] = {}
# The last version of each lease object this process wrote or saw free: the next
# acquisition tries that version first (one request) instead of create + GET + replace.
_known_free: dict[str, tuple[str, int]] = {}
# When this process last had to wait for each lock: it then gives way after releasing.
_contended_at: dict[str, float] = {}
_yield_until: dict[str, float] = {}
_CONTENTION_MEMORY = 10.0
# Waiters announce themselves in ``<name>.waiting`` (a plain write, at most once a second
# each); a holder that releases looks at it at most every few seconds, so that a tight
# loop of one process that never waits still lets a waiting process in within seconds.
_ANNOUNCE_EVERY = 1.0
_LOOK_FOR_WAITERS_EVERY = 3.0
_looked_for_waiters: dict[str, float] = {}


class LeaseLock(LockBackend):
    """A lease object ``locks/<name>.lease`` on object storage (see the module docstring)."""

    first_poll = 0.004
    poll_ceiling = _MAX_LEASE_POLL

    def __init__(
        self,
        storage: Any,
        name: str,
        session: str | None,
        lease: float = DEFAULT_LEASE,
        renew: float | None = None,
    ) -> None:
        self.storage = storage
        self.name = name
        self.session = session
        self.lease = lease
        self.renew_every = renew if renew is not None else lease / 3
        self.url = storage.url(f"{LOCKS_DIR}/{name}.lease")
        self.where = storage.url("")
        self.store = storage.conditional
        if self.store is None:
            raise ConfigError(
                f"{self.url}: orchfs has no conditional requests for this store, so it cannot "
                "hold a lease there; keep the state on S3 (or an S3-compatible store), Azure Blob, "
                "Google Cloud Storage, local disk or memory"
            )
        self._path = storage.backend_path(f"{LOCKS_DIR}/{name}.lease")
        self._waiting_path = storage.backend_path(f"{LOCKS_DIR}/{name}.waiting")
        self._announced = -_ANNOUNCE_EVERY
        self._version: str | None = None
        self.generation = 0
        self.deadline = 0.0  # time.monotonic() by which the lease must be renewed
        self._lost = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._seen: _LeaseState | None = None  # the lease object as the last probe saw it
        self._known: tuple[str, int] | None = None
        self._attempt = False

    @property
    def held(self) -> bool:
        return self._version is not None

    @property
    def lost(self) -> bool:
        """Whether the lease ended while held (renewal failed past the deadline, or taken over)."""
        return self._version is not None and (self._lost or time.monotonic() >= self.deadline)

    def check(self) -> None:
        if self._version is None:
            raise LockLostError(f"lock {self.name!r} of {self.storage.url('')} is not held")
        if self.lost:
            raise LockLostError(
                f"the lease on lock {self.name!r} of {self.storage.url('')} ended while this "
                f"holder had it (generation {self.generation}): it was not renewed within "
                f"{self.lease:g}s (paused, or cut off from the store). Nothing more is written "
                "under it; take the lock again."
            )

    def _body(self, generation: int, released: bool = False) -> bytes:
        holder = Holder.current(self.session)
        return holder.to_json(lease=self.lease, generation=generation, released=released)

    def current(self) -> _LeaseState | None:
        found = self.store.get(self._path, LEASE_MAX_BYTES)
        return None if found is None else _lease_state(found, self.url)

    def _take(self, known: tuple[str, int] | None) -> bool:
        """One conditional write that takes the lease if ``known`` (version, generation)
        is still what the store has (or, with None, if there is no lease object)."""
        generation = (known[1] if known else 0) + 1
        sent = time.monotonic()
        try:
            if known is None:
                version = self.store.create(self._path, self._body(generation))
            else:
                version = self.store.replace(self._path, self._body(generation), known[0])
        except (FileExistsError, PreconditionFailed):
            _known_free.pop(self._path, None)
            return False
        self._version, self.generation = version, generation
        self.deadline = sent + self.lease
        self._lost = False
        return True

    def _require_preconditions(self) -> None:
        """Refuse a store that accepts a create over an existing object: a lease there would
        exclude nobody. Asked once per server and bucket in a process (one request once the
        probe object exists, :meth:`ConditionalStore.honours_preconditions`)."""
        from .conditional import PROBE_NAME  # object storage only: not with a local lock

        probe = self.storage.backend_path(f"{LOCKS_DIR}/{PROBE_NAME}")
        key = (type(self.store).__name__, self.store.endpoint, probe.partition("/")[0])
        if key not in _honours_preconditions:
            _honours_preconditions[key] = self.store.honours_preconditions(probe)
        if not _honours_preconditions[key]:
            raise ConfigError(
                f"{self.where} is on a store that ignores preconditions (a create over an existing "
                f"object succeeded at {self.store.url(probe)}), so a lease there would exclude "
                "nobody; keep the state on a store that honours conditional writes (S3, Azure Blob, "
                "Google Cloud Storage, fake-gcs-server), on local disk or in memory"
            )

    def _start(self) -> None:
        self._require_preconditions()
        known = _known_free.get(self._path)
        # Right after a contended release, this process lets the waiters go first.
        courtesy = _yield_until.pop(self._path, 0.0) - time.monotonic()
        if courtesy > 0:
            time.sleep(courtesy)
            known = None
        self._known = known
        self._attempt = known is not None  # nothing known: ask the store before writing
        self._seen = None

    def _try(self, wait: float) -> bool:
        while True:
            if self._attempt and self._take(self._known):
                return True
            state = self._seen = self.current()
            self._attempt = state is None or state.free()
            self._known = None if state is None else (state.version, state.generation)
            if not self._attempt:
                return False
            if state is not None and not state.released:
                who = state.holder.describe() if state.holder else "an unknown holder"
                logger.warning(
                    "lease on lock %r of %s expired (held by %s); taking it over", self.name, self.where, who
                )

    def _holder(self) -> Holder | None:
        return self._seen.holder if self._seen is not None else None

    def _pause(self, delay: float) -> float:
        now = time.monotonic()
        if now - self._announced >= _ANNOUNCE_EVERY:
            self._announced = now
            with contextlib.suppress(Exception):  # a hint for the holder, never required
                self.storage.fs.pipe_file(self._waiting_path, Holder.current(self.session).to_json())
        # Jittered backoff: waiters spread out and never crowd out the holder's requests.
        return delay * (0.5 + random.random())

    def _waiters_lately(self) -> bool:
        """Whether a waiter announced itself in the last few seconds (one GET, now and then)."""
        now = time.monotonic()
        if now - _looked_for_waiters.get(self._path, -_LOOK_FOR_WAITERS_EVERY) < _LOOK_FOR_WAITERS_EVERY:
            return False
        _looked_for_waiters[self._path] = now
        try:
            found = self.store.get(self._waiting_path, LEASE_MAX_BYTES)
        except Exception:
            return False
        return found is not None and found.age is not None and found.age <= 2 * _ANNOUNCE_EVERY + 1.0

    def _won(self, waited: bool) -> None:
        if waited:
            _contended_at[self._path] = time.monotonic()
        self._start_heartbeat()
        _enter_fence(self)

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._heartbeat = threading.Thread(
            target=self._renew_loop, daemon=True, name=f"orchfs-lease-{self.name}"
        )
        self._heartbeat.start()

    def _renew_once(self) -> None:
        """Renew, retrying transient errors with backoff until the lease's own deadline."""
        backoff = 0.05
        while not self._stop.is_set():
            if time.monotonic() >= self.deadline:
                self._lost = True
                logger.warning("lease on lock %r of %s was not renewed in time: lost", self.name, self.where)
                return
            sent = time.monotonic()
            try:
                self._version = self.store.replace(self._path, self._body(self.generation), self._version)
            except PreconditionFailed:
                self._lost = True  # someone took it over: the lease had expired
                logger.warning("lease on lock %r of %s was taken over: lost", self.name, self.where)
                return
            except Exception:  # transient (network, 5xx, throttling): try again before the deadline
                self._stop.wait(min(backoff, max(0.0, self.deadline - time.monotonic())))
                backoff = min(backoff * 2, 1.0)
                continue
            self.deadline = sent + self.lease
            return

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_every):
            self._renew_once()
            if self._lost:
                return

    def clear_stale(self) -> None:
        """Mark an expired lease released: replaced by a released record, not deleted,
        so that the generation lives on."""
        current = self.current()
        if current is not None and current.expired():
            with contextlib.suppress(OSError):
                self.store.replace(self._path, self._body(current.generation, True), current.version)

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        _leave_fence(self)
        if not self.lost and self._version is not None:
            # A released record, not a delete: the next acquisition continues the generation.
            with contextlib.suppress(Exception):
                version = self.store.replace(self._path, self._body(self.generation, True), self._version)
                _known_free[self._path] = (version, self.generation)
        self._version = None
        if self._waiters_lately():
            _contended_at[self._path] = time.monotonic()
        contended = _contended_at.get(self._path)
        if contended is not None and time.monotonic() - contended < _CONTENTION_MEMORY:
            # Others were waiting lately: this process's next acquisition waits about one
            # of their polling intervals, so that a loop here cannot starve them.
            _yield_until[self._path] = time.monotonic() + random.uniform(0.5, 1.5) * _MAX_LEASE_POLL


_held = threading.local()


class _Holding:
    """One lock held by one thread: the backend that acquired it and how deep it is."""

    __slots__ = ("backend", "depth")

    def __init__(self, backend: Any, depth: int) -> None:
        self.backend = backend
        self.depth = depth


class RepositoryLock:
    """``with fs.lock("repo", timeout=5) as lock: ...`` - re-entrant within one thread.

    ``lock.token`` is this acquisition's :class:`FencingToken`; ``lock.lost`` tells whether
    a lease ended while held, and leaving the ``with`` block raises :class:`LockLostError`
    if it did (the block's own exception, if any, wins).
    """

    def __init__(self, backend: Any, timeout: float) -> None:
        self.backend = backend
        self.timeout = timeout
        self._active: Any = None  # the backend holding it: this one, or an outer ``with``'s

    @property
    def name(self) -> str:
        return self.backend.name

    def _holdings(self) -> dict[str, _Holding]:
        if not hasattr(_held, "locks"):
            _held.locks = {}
        return _held.locks

    def _acquired(self) -> Any:
        """The backend that holds this lock (an outer ``with`` of this thread's, maybe)."""
        return self._active if self._active is not None else self.backend

    @property
    def lost(self) -> bool:
        return bool(getattr(self._acquired(), "lost", False))

    @property
    def deadline(self) -> float | None:
        """``time.monotonic()`` by which a lease must be renewed (None: not a lease)."""
        backend = self._acquired()
        return backend.deadline if isinstance(backend, LeaseLock) and backend.held else None

    @property
    def token(self) -> FencingToken:
        backend = self._acquired()
        if not backend.held:
            raise LockLostError(f"lock {self.name!r} is not held: no token")
        return FencingToken(self.name, backend.generation, backend)

    def check(self) -> None:
        """Raise :class:`LockLostError` if this lock is not (or no longer) held."""
        backend = self._acquired()
        if not backend.held:
            raise LockLostError(f"lock {self.name!r} is not held")
        backend.check()

    def acquire(self) -> RepositoryLock:
        holdings = self._holdings()
        url = self.backend.url
        if url in holdings:
            holdings[url].depth += 1
        else:
            self.backend.acquire(self.timeout)
            holdings[url] = _Holding(self.backend, 1)
        self._active = holdings[url].backend
        return self

    def release(self) -> None:
        holdings = self._holdings()
        holding = holdings[self.backend.url]
        holding.depth -= 1
        if holding.depth == 0:
            del holdings[self.backend.url]
            holding.backend.release()

    def __enter__(self) -> RepositoryLock:
        return self.acquire()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        holding = self._holdings().get(self.backend.url)
        lost = holding is not None and holding.depth == 1 and self.lost
        generation = self._acquired().generation
        self.release()
        if lost and exc_type is None:
            raise LockLostError(
                f"the lease on lock {self.name!r} (generation {generation}) ended inside the "
                "`with` block: writes orchfs made after that were refused; redo the work under "
                "a new lock"
            )

    def __repr__(self) -> str:
        return f"<RepositoryLock {self.backend.url!r}>"


def _backend_class(storage: Any) -> type[LocalFileLock | MemoryLock | LeaseLock]:
    """The kind of lock the storage's capabilities call for: an OS lock where processes
    share the disk, a lease where machines share the store, else a lock of this process
    (fsspec's memory filesystem lives in it)."""
    capabilities = storage.capabilities
    if capabilities.os_locks and fcntl is not None:
        return LocalFileLock
    if capabilities.leases:
        return LeaseLock
    return MemoryLock


def make_lock(
    storage: Any,
    name: str,
    *,
    timeout: float,
    session: str | None,
    lease: float | None = None,
    renew: float | None = None,
) -> RepositoryLock:
    """The right lock for the storage's capabilities, named ``name`` (one path segment); ``lease`` and
    ``renew`` (seconds) set an object-storage lease's length and renewal interval."""
    validate_name(name, "lock name")
    if not 0 <= timeout <= MAX_DURATION_SECONDS:  # past it a thread's timed wait overflows
        raise ValueError(f"lock timeout must be 0 to {MAX_DURATION_SECONDS:g} seconds, not {timeout}")
    if lease is not None and not 0 < lease <= MAX_LEASE_SECONDS:  # read back as damaged past it
        raise ValueError(f"lease must be more than 0 seconds and at most 366 days, not {lease}")
    kind = _backend_class(storage)
    if kind is LeaseLock:
        backend: LockBackend = LeaseLock(storage, name, session, lease or DEFAULT_LEASE, renew)
    else:
        backend = kind(storage, name, session)
    return RepositoryLock(backend, timeout)


def inspect(fs: Any) -> list[LockStatus]:
    """Every lock of the repository: held or not, by whom, for how long, stale or not."""
    storage = fs.state_storage
    now = time.time()
    out = []
    kind = _backend_class(storage)
    if kind is MemoryLock:
        prefix = storage.url(f"{LOCKS_DIR}/")
        for url, lock in list(_memory_locks.items()):
            if url.startswith(prefix):
                holder = _memory_holders.get(url)
                name = url[len(prefix) :].removesuffix(".lock")
                out.append(
                    LockStatus(
                        name,
                        url,
                        lock.locked(),
                        holder,
                        now - holder.since if holder else None,
                        False,
                    )
                )
        return out
    try:
        names = [n for n, _ in storage.listdir(LOCKS_DIR)]
    except (FileNotFoundError, NotADirectoryError):
        return out
    for entry in sorted(names):
        if kind is LocalFileLock and entry.endswith(".lock"):
            out.append(_inspect_local(storage, entry[: -len(".lock")], now))
        elif kind is LeaseLock and entry.endswith(".lease"):  # one on local disk is no lock
            lease = LeaseLock(storage, entry[: -len(".lease")], None)
            current = lease.current()
            if current is not None and current.holder is not None and not current.released:
                out.append(
                    LockStatus(
                        lease.name,
                        lease.url,
                        not current.expired(),
                        current.holder,
                        current.age,
                        current.expired(),
                    )
                )
    return out


def _inspect_local(storage: Any, name: str, now: float) -> LockStatus:
    lock = LocalFileLock(storage, name, None)
    lock._open()
    try:
        holder = lock._holder()
        try:
            fcntl.flock(lock._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = False
            fcntl.flock(lock._fd, fcntl.LOCK_UN)
        except BlockingIOError:
            held = True
    finally:
        lock._close()
    age = now - holder.since if holder else None
    # A holder record without a held lock means its holder died without releasing.
    stale = holder is not None and not held
    return LockStatus(name, lock.url, held, holder, age, stale)


def clear_stale(fs: Any) -> list[LockStatus]:
    """Remove holder records and leases left by dead holders; return what was cleared."""
    cleared = []
    storage = fs.state_storage
    kind = _backend_class(storage)
    for status in inspect(fs):
        if status.stale:
            kind(storage, status.name, None).clear_stale()
            cleared.append(status)
    return cleared


__all__ = [
    "LEASE_MAX_BYTES",
    "Fence",
    "FencingToken",
    "Holder",
    "LeaseLock",
    "LockStatus",
    "RepositoryLock",
    "active_fence",
    "clear_stale",
    "inspect",
    "make_lock",
]
