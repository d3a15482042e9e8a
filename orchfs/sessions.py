"""Working sessions of a repository: what ``sessions/`` holds, and pruning by the
retention policy (DESIGN §7).

A session is the logical directory ``sessions/<id>/`` (v2, or v1's
``.workflow_sessions/<id>/`` seen through the overlay). Pruning removes a session's
directory as a whole and never touches the current session, a session that holds a
lock, or one younger than ``min_age``; a session's age is the time since its newest
file was modified.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import parse_duration
from .errors import ConfigError

SESSIONS = "sessions"

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


@dataclass(frozen=True)
class Session:
    """One session directory as :func:`list_sessions` found it."""

    id: str
    files: int
    bytes: int
    newest: float | None  # mtime of its newest file (the directory's own when empty)
    locked: bool
    current: bool

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
        }


@dataclass(frozen=True)
class Pruning:
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
    out = []
    for entry in fs.ls(SESSIONS, detail=True):
        if entry["type"] != "directory":
            continue
        session_id = entry["name"].rpartition("/")[2]
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
                current=session_id == fs.session_id,
            )
        )
    return sorted(out, key=lambda s: (s.newest or 0.0, s.id))


def choose(sessions: list[Session], policy: Retention, now: float) -> list[Pruning]:
    """The sessions ``policy`` removes, oldest first (a pure function of its inputs).

    First every candidate older than ``max_age``; then the oldest candidates until no
    more than ``max_sessions`` remain, then until the rest fit in ``max_bytes``. The
    current session, locked ones and those younger than ``min_age`` are never
    candidates, but they count towards the limits.
    """
    oldest_first = sorted(sessions, key=lambda s: (s.newest or 0.0, s.id))
    candidates = [s for s in oldest_first if not s.current and not s.locked and s.age(now) >= policy.min_age]
    chosen: dict[str, str] = {}
    if policy.max_age is not None:
        for session in candidates:
            if session.age(now) > policy.max_age:
                chosen[session.id] = "older than max_age"

    def kept() -> list[Session]:
        return [s for s in oldest_first if s.id not in chosen]

    def too_many() -> bool:
        return policy.max_sessions is not None and len(kept()) > policy.max_sessions

    def too_large() -> bool:
        return policy.max_bytes is not None and sum(s.bytes for s in kept()) > policy.max_bytes

    for reason, over in (("more than max_sessions", too_many), ("over max_bytes", too_large)):
        for session in candidates:
            if not over():
                break
            if session.id not in chosen:
                chosen[session.id] = reason
    return [Pruning(s, chosen[s.id]) for s in oldest_first if s.id in chosen]


def prune(fs: Any, policy: Retention, *, dry_run: bool = False, now: float | None = None) -> list[Pruning]:
    """Remove the sessions ``policy`` chooses (under the ``sessions`` lock); with
    ``dry_run``, only say which."""
    now = time.time() if now is None else now
    if dry_run:
        return choose(list_sessions(fs), policy, now)
    with fs.lock("sessions"):
        chosen = choose(list_sessions(fs), policy, now)
        for pruning in chosen:
            fs.rm(f"{SESSIONS}/{pruning.session.id}", recursive=True)
    return chosen


def policy_of(root: Any) -> Retention:
    """The repository's configured retention policy (``state.retention``)."""
    from .config import load_config

    config = load_config(root)

    def where(key: str) -> str:
        origin = config.origin(f"state.retention.{key}")
        return f"{origin}: state.retention.{key}" if origin else f"state.retention.{key}"

    return Retention.from_config(config.get("state.retention"), where)
