"""Repository locks: one implementation per storage kind, one context manager in front.

* **Local disk** - an OS lock (``flock``) on ``.orchestrator/locks/<name>.lock``. The
  ``locks/`` directory is 0700 and reached without following symlinks; the lock
  file is opened ``O_NOFOLLOW`` and never truncated (a symlink planted at its path is
  refused and its target left alone, the attack of CVE-2025-68146). Who holds it
  is recorded beside it in ``<name>.holder``. The kernel drops the lock when its
  holder dies, so a dead holder never blocks the next acquirer.
* **Memory** - a process-wide lock per repository and name.
* **Object storage** - a lease object ``locks/<name>.lease`` created with a
  conditional PUT (``If-None-Match: *``), renewed by a heartbeat thread while held
  (``If-Match`` on its ETag), released with a conditional delete, and taken over
  only after it has expired by the *server's* clock (its ``LastModified`` against
  the ``Date`` of the server's answer).

Locks are re-entrant within one thread (an ``update_json`` inside ``with
fs.lock("repo")`` does not deadlock) and exclusive across threads and processes.
:func:`inspect` reports every lock of a repository for ``orchfs doctor``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from .atomic import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE
from .errors import LockTimeout, PathEscapeError
from .paths import validate_name

LOCKS_DIR = "locks"
HOLDER_RECORD_BYTES = 512
_FREE_RECORD = b" " * (HOLDER_RECORD_BYTES - 1) + b"\n"
DEFAULT_TIMEOUT = 10.0
DEFAULT_LEASE = 30.0
_MAX_POLL = 0.05
_MAX_LEASE_POLL = 0.15  # each lease probe is a request: waiters must not crowd out the holder
_HOST = socket.gethostname()

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _command() -> str:
    argv = sys.argv or ["python"]
    return " ".join([os.path.basename(argv[0]), *argv[1:]])[:200]


@dataclass(frozen=True)
class Holder:
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
            return cls(
                int(record["pid"]),
                str(record["host"]),
                record.get("session"),
                str(record.get("command", "")),
                float(record["since"]),
            )
        except (ValueError, KeyError, TypeError):
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
        session = f", session {self.session}" if self.session else ""
        return f"pid {self.pid} on {self.host}{session} ({self.command!r}), held for {held:.1f}s"


@dataclass(frozen=True)
class LockStatus:
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
        "Wait for it to finish, or raise the timeout (fs.lock(..., timeout=N), "
        "ORCHFS_LOCK_TIMEOUT)."
    )


def _sleep_step(delay: float, deadline: float, ceiling: float = _MAX_POLL) -> float:
    time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
    return min(delay * 2, ceiling)


class LocalFileLock:
    """``flock`` on ``locks/<name>.lock`` under the state directory."""

    def __init__(self, storage: Any, name: str, session: str | None) -> None:
        self.storage = storage
        self.name = name
        self.session = session
        self.url = storage.url(f"{LOCKS_DIR}/{name}.lock")
        self._fd = -1
        self._dir_fd = -1
        self._holder_fd = -1

    def _open(self) -> None:
        dir_fd = self.storage._open_dir(LOCKS_DIR, create=True)
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

    def _holder(self) -> Holder | None:
        try:
            fd = os.open(f"{self.name}.holder", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self._dir_fd)
        except OSError:
            return None
        try:
            return Holder.from_json(os.read(fd, HOLDER_RECORD_BYTES).rstrip(b" \n\0"))
        finally:
            os.close(fd)

    def _record_holder(self) -> None:
        # A fixed-size record rewritten in place: no truncation, no rename, one write.
        record = Holder.current(self.session).to_json()
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        self._holder_fd = os.open(f"{self.name}.holder", flags, PRIVATE_FILE_MODE, dir_fd=self._dir_fd)
        os.pwrite(
            self._holder_fd,
            record[: HOLDER_RECORD_BYTES - 1].ljust(HOLDER_RECORD_BYTES - 1) + b"\n",
            0,
        )

    def acquire(self, timeout: float) -> None:
        self._open()
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._holder()
                    self._close()
                    raise _timeout_error(self.name, self.storage.url(""), timeout, holder) from None
                delay = _sleep_step(delay, deadline)
        try:
            self._record_holder()
        except BaseException:
            self._close()
            raise

    def release(self) -> None:
        if self._holder_fd >= 0:
            os.pwrite(self._holder_fd, _FREE_RECORD, 0)
        self._close()

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


_memory_locks: dict[str, threading.Lock] = {}
_memory_holders: dict[str, Holder] = {}
_memory_registry = threading.Lock()


class MemoryLock:
    """A process-wide lock per repository URL and name."""

    def __init__(self, storage: Any, name: str, session: str | None) -> None:
        self.name = name
        self.session = session
        self.url = storage.url(f"{LOCKS_DIR}/{name}.lock")
        with _memory_registry:
            self._lock = _memory_locks.setdefault(self.url, threading.Lock())

    def acquire(self, timeout: float) -> None:
        got = self._lock.acquire(timeout=timeout) if timeout > 0 else self._lock.acquire(False)
        if not got:
            raise _timeout_error(self.name, self.url, timeout, _memory_holders.get(self.url))
        _memory_holders[self.url] = Holder.current(self.session)

    def release(self) -> None:
        _memory_holders.pop(self.url, None)
        self._lock.release()


@dataclass(frozen=True)
class _Lease:
    etag: str
    holder: Holder | None
    ttl: float
    age: float  # seconds since last renewal, by the server's clock


def _server_age(response: dict[str, Any]) -> float:
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    modified = response.get("LastModified")
    date = headers.get("date")
    if modified is None or date is None:
        return 0.0
    from email.utils import parsedate_to_datetime  # leases only: local locks never load email

    return (parsedate_to_datetime(date) - modified).total_seconds()


class LeaseLock:
    """A lease object on object storage, created and released conditionally."""

    def __init__(self, storage: Any, name: str, session: str | None, lease: float = DEFAULT_LEASE) -> None:
        self.storage = storage
        self.name = name
        self.session = session
        self.lease = lease
        self.url = storage.url(f"{LOCKS_DIR}/{name}.lease")
        self._bucket, self._key = self._split(storage._full(f"{LOCKS_DIR}/{name}.lease"))
        self._etag: str | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.lost = False

    def _split(self, full: str) -> tuple[str, str]:
        bucket, _, key = full.partition("/")
        return bucket, key

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        return self.storage.fs.call_s3(method, Bucket=self._bucket, Key=self._key, **kwargs)

    def _body(self) -> bytes:
        return Holder.current(self.session).to_json(lease=self.lease)

    def _current(self) -> _Lease | None:
        try:
            response = self._call("get_object")
        except FileNotFoundError:
            return None
        data = _read_body(self.storage.fs, response["Body"])
        record = json.loads(data) if data else {}
        return _Lease(
            response["ETag"],
            Holder.from_json(data),
            float(record.get("lease", 0)),
            _server_age(response),
        )

    def acquire(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.005
        next_probe = time.monotonic()
        while True:
            try:
                response = self._call("put_object", Body=self._body(), IfNoneMatch="*")
                self._etag = response["ETag"]
                self._start_heartbeat()
                return
            except FileExistsError:
                pass
            now = time.monotonic()
            if now >= next_probe or now >= deadline:
                # Reading the lease costs a request: probe for expiry now and then, not
                # on every retry, so that waiters do not crowd out the holder.
                next_probe = now + min(1.0, self.lease / 4)
                current = self._current()
                if current is None:
                    continue
                if current.age > current.ttl:
                    # Expired by the server's clock: remove exactly that lease, then race
                    # for a fresh one; a conditional delete never removes a renewed lease.
                    with contextlib.suppress(OSError):
                        self._call("delete_object", IfMatch=current.etag)
                    continue
                if now >= deadline:
                    raise _timeout_error(self.name, self.storage.url(""), timeout, current.holder)
            delay = _sleep_step(delay * (0.5 + random.random()), deadline, _MAX_LEASE_POLL)

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._heartbeat = threading.Thread(
            target=self._renew_loop, daemon=True, name=f"orchfs-lease-{self.name}"
        )
        self._heartbeat.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                response = self._call("put_object", Body=self._body(), IfMatch=self._etag)
                self._etag = response["ETag"]
            except OSError:
                self.lost = True
                return

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if not self.lost and self._etag is not None:
            with contextlib.suppress(OSError):
                self._call("delete_object", IfMatch=self._etag)
        self._etag = None


def _read_body(fs: Any, body: Any) -> bytes:
    from fsspec.asyn import sync

    async def read() -> bytes:
        async with body as stream:
            return await stream.read()

    return sync(fs.loop, read)


_held = threading.local()


class RepositoryLock:
    """``with fs.lock("repo", timeout=5): ...`` - re-entrant within one thread."""

    def __init__(self, backend: Any, timeout: float) -> None:
        self.backend = backend
        self.timeout = timeout
        self._outer = False

    @property
    def name(self) -> str:
        return self.backend.name

    def _depths(self) -> dict[str, int]:
        if not hasattr(_held, "depths"):
            _held.depths = {}
        return _held.depths

    def acquire(self) -> RepositoryLock:
        depths = self._depths()
        url = self.backend.url
        if depths.get(url):
            depths[url] += 1
            return self
        self.backend.acquire(self.timeout)
        depths[url] = 1
        return self

    def release(self) -> None:
        depths = self._depths()
        url = self.backend.url
        depths[url] -= 1
        if depths[url] == 0:
            del depths[url]
            self.backend.release()

    def __enter__(self) -> RepositoryLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<RepositoryLock {self.backend.url!r}>"


def make_lock(
    storage: Any, name: str, *, timeout: float, session: str | None, lease: float | None = None
) -> RepositoryLock:
    """The right lock for the storage kind, named ``name`` (one path segment)."""
    validate_name(name, "lock name")
    if timeout < 0:
        raise ValueError(f"lock timeout must be >= 0 seconds, not {timeout}")
    if storage.kind == "local" and fcntl is not None:
        backend: Any = LocalFileLock(storage, name, session)
    elif storage.kind in ("memory", "local"):
        backend = MemoryLock(storage, name, session)
    else:
        backend = LeaseLock(storage, name, session, lease or DEFAULT_LEASE)
    return RepositoryLock(backend, timeout)


def inspect(fs: Any) -> list[LockStatus]:
    """Every lock of the repository: held or not, by whom, for how long, stale or not."""
    storage = fs.state_storage
    now = time.time()
    out = []
    if storage.kind == "memory":
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
        if storage.kind == "local" and entry.endswith(".lock"):
            out.append(_inspect_local(storage, entry[: -len(".lock")], now))
        elif entry.endswith(".lease"):
            lease = LeaseLock(storage, entry[: -len(".lease")], None)
            current = lease._current()
            if current is not None:
                out.append(
                    LockStatus(
                        lease.name,
                        lease.url,
                        current.age <= current.ttl,
                        current.holder,
                        current.age,
                        current.age > current.ttl,
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
    for status in inspect(fs):
        if not status.stale:
            continue
        storage = fs.state_storage
        if storage.kind == "local":
            with contextlib.suppress(FileNotFoundError):
                storage.remove(f"{LOCKS_DIR}/{status.name}.holder")
        else:
            lease = LeaseLock(storage, status.name, None)
            current = lease._current()
            if current is not None and current.age > current.ttl:
                with contextlib.suppress(OSError):
                    lease._call("delete_object", IfMatch=current.etag)
        cleared.append(status)
    return cleared


__all__ = [
    "Holder",
    "LockStatus",
    "RepositoryLock",
    "clear_stale",
    "inspect",
    "make_lock",
]
