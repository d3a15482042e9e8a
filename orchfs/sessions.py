"""Working sessions of a repository: what ``sessions/`` holds, pruning by the retention
policy, and persisting a session to remote storage (DESIGN §7).

A session is the logical directory ``sessions/<id>/`` (v2, or v1's
``.workflow_sessions/<id>/`` seen through the overlay). Pruning removes a session's
directory as a whole and never touches the current session, a session that holds a
lock, or one younger than ``min_age``; a session's age is the time since its newest
file was modified.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .config import parse_duration
from .errors import ConfigError, PathEscapeError, UnsafeStateError
from .stored import check_id

SESSIONS = "sessions"
CURRENT_FILE = "current"  # workflow-orchestrator's pointer to its active session
_CURRENT_MAX_BYTES = 256

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"B": 1}
for _power, _letter in enumerate("KMGT", start=1):
    _SIZE_UNITS[f"{_letter}B"] = 1000**_power
    _SIZE_UNITS[f"{_letter}IB"] = 1024**_power


def parse_size(value: Any, where: str = "configuration") -> int:
    """``500MB`` -> 500,000,000; ``1GiB`` -> 1,073,741,824; a bare number is bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ConfigError(f"{where}: {value!r} is not a size (use 500MB, 2GiB or a number of bytes)")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "B").upper()])


@dataclass(frozen=True)
class Retention:
    """How many sessions, how old and how large; ``None`` means no limit."""

    max_age: float | None = None
    max_sessions: int | None = None
    max_bytes: int | None = None
    min_age: float = 3600.0

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.max_age, self.max_sessions, self.max_bytes))

    @classmethod
    def from_config(
        cls, values: Mapping[str, Any] | None, where: Callable[[str], str] = "state.retention.{}".format
    ) -> Retention:
        """The policy of a ``state.retention`` mapping; ``where(key)`` names a key in errors."""
        values = values or {}
        max_sessions = values.get("max_sessions")
        if max_sessions is not None and (
            not isinstance(max_sessions, int) or isinstance(max_sessions, bool) or max_sessions < 0
        ):
            raise ConfigError(f"{where('max_sessions')}: {max_sessions!r} is not a whole number >= 0")
        return cls(
            max_age=_optional(values.get("max_age"), lambda v: _duration(v, where("max_age"))),
            max_sessions=max_sessions,
            max_bytes=_optional(values.get("max_bytes"), lambda v: parse_size(v, where("max_bytes"))),
            min_age=_duration(values.get("min_age", cls.min_age), where("min_age")),
        )


def _duration(value: Any, where: str) -> float:
    try:
        return parse_duration(value)
    except ConfigError:
        raise ConfigError(f"{where}: {value!r} is not a duration (use 30s, 12h, 7d)") from None


def _optional(value: Any, parse: Any) -> Any:
    return None if value is None else parse(value)


def current_session(state: Any) -> str | None:
    """The session that ``.orchestrator/current`` names (workflow-orchestrator's own
    session layout, DESIGN §8), or None. The file is untrusted input: anything but a
    valid session id whose ``sessions/<id>/`` exists is ignored."""
    from .errors import PathEscapeError
    from .paths import validate_id, validate_name
    from .stored import read_state

    try:
        raw = read_state(state, CURRENT_FILE, _CURRENT_MAX_BYTES)
    except (OSError, ValueError):
        return None
    if raw is None or len(raw) > _CURRENT_MAX_BYTES:
        return None
    try:
        name = validate_id(validate_name(raw.decode("utf-8").strip(), "session id"), "session id")
    except (UnicodeDecodeError, PathEscapeError):
        return None
    found = state.info(f"{SESSIONS}/{name}")
    return name if found is not None and found["type"] == "directory" else None


class Session(NamedTuple):
    """One entry of ``sessions/`` as :func:`list_sessions` found it: a session directory,
    or (``kind="transcript"``) a flat file such as v1's ``.workflow_sessions/<when>.log``
    transcripts, which is listed but never pruned."""

    id: str
    files: int
    bytes: int
    newest: float | None  # mtime of its newest file (the directory's own when empty)
    locked: bool
    current: bool
    kind: str = "session"

    def age(self, now: float) -> float:
        return 0.0 if self.newest is None else max(0.0, now - self.newest)

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "files": self.files,
            "bytes": self.bytes,
            "age_seconds": round(self.age(now), 3),
            "locked": self.locked,
            "current": self.current,
            "kind": self.kind,
        }


class Pruning(NamedTuple):
    """A session the policy removes, and which limit removes it."""

    session: Session
    reason: str


def list_sessions(fs: Any) -> list[Session]:
    """Every session of the repository, oldest first."""
    from . import locks

    if not fs.isdir(SESSIONS):
        return []
    holders = {
        status.holder.session
        for status in locks.inspect(fs)
        if status.held and not status.stale and status.holder is not None
    }
    current = {fs.session_id, current_session(fs.state_storage)} - {None}
    out = []
    for entry in fs.ls(SESSIONS, detail=True):
        session_id = entry["name"].rpartition("/")[2]
        if entry["type"] != "directory":
            out.append(
                Session(session_id, 1, entry.get("size") or 0, entry.get("mtime"), False, False, "transcript")
            )
            continue
        session_id = check_id(session_id, "session id", f"{SESSIONS}/")
        files = fs.find(entry["name"], detail=True)
        stamps = [f.get("mtime") for f in files.values() if f.get("mtime") is not None]
        newest = max(stamps) if stamps else entry.get("mtime")
        out.append(
            Session(
                id=session_id,
                files=len(files),
                bytes=sum(f.get("size") or 0 for f in files.values()),
                newest=newest,
                locked=session_id in holders,
                current=session_id in current,
            )
        )
    return _oldest_first(out)


def _oldest_first(sessions: list[Session]) -> list[Session]:
    return sorted(sessions, key=lambda s: (s.newest or 0.0, s.id))


def choose(sessions: list[Session], policy: Retention, now: float) -> list[Pruning]:
    """The sessions ``policy`` removes, oldest first (a pure function of its inputs).

    First every candidate older than ``max_age``; then the oldest remaining candidates
    while more than ``max_sessions`` are kept or the kept ones exceed ``max_bytes``. The
    current session, locked ones and those younger than ``min_age`` are never
    candidates, but they count towards the limits.
    """
    oldest_first = _oldest_first([s for s in sessions if s.kind == "session"])  # never transcripts
    candidates = [s for s in oldest_first if not s.current and not s.locked and s.age(now) >= policy.min_age]
    chosen = {
        s.id: "older than max_age"
        for s in candidates
        if policy.max_age is not None and s.age(now) > policy.max_age
    }
    kept = len(oldest_first) - len(chosen)
    kept_bytes = sum(s.bytes for s in oldest_first if s.id not in chosen)
    for session in candidates:
        if session.id in chosen:
            continue
        if policy.max_sessions is not None and kept > policy.max_sessions:
            chosen[session.id] = "more than max_sessions"
        elif policy.max_bytes is not None and kept_bytes > policy.max_bytes:
            chosen[session.id] = "over max_bytes"
        else:
            break
        kept -= 1
        kept_bytes -= session.bytes
    return [Pruning(s, chosen[s.id]) for s in oldest_first if s.id in chosen]


def prune(fs: Any, policy: Retention, *, dry_run: bool = False, now: float | None = None) -> list[Pruning]:
    """Remove the sessions ``policy`` chooses (under the ``sessions`` lock); with
    ``dry_run``, only say which."""
    now = time.time() if now is None else now
    with contextlib.nullcontext() if dry_run else fs.lock("sessions"):
        chosen = choose(list_sessions(fs), policy, now)
        if not dry_run:
            for pruning in chosen:
                fs.rm(f"{SESSIONS}/{pruning.session.id}", recursive=True)
    return chosen


def policy_of(config: Any) -> Retention:
    """The retention policy (``state.retention``) of a loaded configuration
    (:func:`orchfs.load_config`)."""

    def where(key: str) -> str:
        origin = config.origin(f"state.retention.{key}")
        return f"{origin}: state.retention.{key}" if origin else f"state.retention.{key}"

    return Retention.from_config(config.get("state.retention"), where)


def _remote_copy(fs: Any, url: str, storage_options: Mapping[str, Any] | None, what: str) -> tuple[Any, str]:
    """The store at ``url`` that holds session copies, and the bound session's directory
    in it. The store is opened as the state is (:func:`~orchfs.storage.open_storage`):
    on local disk every write and read stays beneath ``url`` and follows no link (a link
    planted in the copy would otherwise receive a session file, or hand one in); on
    object storage listings are not cached and a missing bucket is said, never made nor
    read as empty."""
    if not fs.session_id:
        raise ValueError(f"{what} needs a bound session (session= or web_mode=True)")
    from .storage import open_storage

    store = open_storage(url, dict(storage_options or {}))
    conditional = getattr(store, "conditional", None)
    if conditional is not None:
        conditional.require_bucket(store.backend_path(""))  # type: ignore[attr-defined]
    return store, fs.session_id


class Persister:
    """Keeps a copy of the bound session's directory at ``url`` (``state.persist``).

    :meth:`sync` uploads what changed since the last sync and deletes what was removed;
    :meth:`start` runs it every ``interval`` seconds on a daemon thread, and :meth:`stop`
    (or leaving the ``with`` block) runs it once more, so an ephemeral machine loses at
    most one interval. A failed background sync is kept in :attr:`error` and retried
    at the next interval; the final sync raises.
    """

    def __init__(
        self, fs: Any, url: str, interval: float = 30.0, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        self.fs = fs
        self.prefix = f"{SESSIONS}/{fs.session_id}"
        self.remote, self.base = _remote_copy(fs, url, storage_options, "persisting")
        self.interval = parse_duration(interval)
        if self.interval <= 0:  # a sync loop without a pause
            raise ConfigError(f"persist interval {interval!r} must be above 0 (such as 30s)")
        self.error: BaseException | None = None
        self._sent: dict[str, tuple[Any, Any]] = {}
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync(self) -> int:
        """Upload changed files, delete removed ones; returns how many files changed."""
        with self._guard:
            files = self.fs.find(self.prefix, detail=True) if self.fs.isdir(self.prefix) else {}
            now = {name[len(self.prefix) + 1 :]: (f.get("size"), f.get("mtime")) for name, f in files.items()}
            changed = [rel for rel, stamp in now.items() if self._sent.get(rel) != stamp]
            linked = []
            for rel in changed:
                try:
                    data = self._own_bytes(f"{self.prefix}/{rel}")
                except PathEscapeError:
                    linked.append(rel)
                    del now[rel]
                    continue
                self.remote.write(f"{self.base}/{rel}", data)
            gone = [rel for rel in self._sent if rel not in now]
            for rel in gone:
                with contextlib.suppress(FileNotFoundError):
                    self.remote.remove(f"{self.base}/{rel}")
            self._sent = now
            if linked:
                store, rel = self._held_by(f"{self.prefix}/{linked[0]}")
                where = store.url(rel)
                raise UnsafeStateError(
                    f"{where} is a symlink (or reached through one): persisting copies the "
                    f"session's own files, never what a link leads to ({len(linked)} left out); "
                    "remove it",
                    where,
                )
            return len(changed) + len(gone)

    def _own_bytes(self, name: str) -> bytes:
        """The bytes of the session's file ``name``; on local disk read beneath the layer
        that holds it (the state directory, or the v1 session directory still read through
        it) with no link followed (:class:`PathEscapeError` for a link), as a snapshot
        export does: a link planted there must not send the worktree's ``.env`` (or
        anything else it leads to) to the persisted copy."""
        store, rel = self._held_by(name)
        if store.capabilities.local_path:
            return store.disk.read_bytes(store.path_beneath(rel))
        return self.fs.cat_file(name)

    def _held_by(self, name: str) -> tuple[Any, str]:
        """The store of the layer that serves the session's file ``name`` (a link there
        counts), and its path there; the state directory's when none does."""
        found = self.fs.overlay.lookup(name)
        if found is None:
            return self.fs.state_storage, name
        return found.location.store, found.location.rel

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync()
                self.error = None
            except Exception as exc:  # kept for the caller; the next interval retries
                self.error = exc

    def start(self) -> Persister:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="orchfs-persist")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sync()

    def __enter__(self) -> Persister:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def restore(fs: Any, url: str, storage_options: Mapping[str, Any] | None = None) -> int:
    """Bring the bound session's persisted copy back into the repository (on a new
    machine); returns how many files were written."""
    remote, base = _remote_copy(fs, url, storage_options, "restoring")
    # Every name is checked, and every file read, before the first file is written: all
    # of the copy, or none (a link in a local copy is refused as any read refuses it).
    names = remote.find_files(base, include_markers=True)
    logical = {rel: _restored_path(fs, url, rel) for rel in names}
    files = {path: remote.read(f"{base}/{rel}") for rel, path in logical.items()}
    for path, data in files.items():
        fs.pipe_file(path, data)
    return len(files)


def _restored_path(fs: Any, url: str, rel: str) -> str:
    """The logical path a file of the persisted copy is restored to: what the copy holds
    is stored state like any other, so a name the path gate refuses (``..``, a marker,
    a backslash) refuses the whole copy."""
    from .paths import validate

    try:
        return validate(f"{SESSIONS}/{fs.session_id}/{rel}")
    except PathEscapeError as exc:
        raise UnsafeStateError(
            f"{url}: the persisted copy of session {fs.session_id} holds {rel!r}, which no session "
            f"file is named ({exc}); nothing was restored: remove it from the copy",
            url,
        ) from None


def persister_of(fs: Any, root: Any, storage_options: Mapping[str, Any] | None = None) -> Persister | None:
    """A :class:`Persister` for the repository's ``state.persist`` (``None`` when unset)."""
    from .config import load_config

    settings = load_config(root).get("state.persist") or {}
    if not settings.get("url"):
        return None
    return Persister(fs, settings["url"], settings.get("interval", 30.0), storage_options)


__all__ = [
    "Persister",
    "Pruning",
    "Retention",
    "Session",
    "choose",
    "current_session",
    "list_sessions",
    "parse_size",
    "persister_of",
    "policy_of",
    "prune",
    "restore",
]
