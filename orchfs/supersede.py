"""Supersede records (DESIGN §2 rule 7): what a legacy file held when orchfs replaced it.

When a write, a copy-up or a whiteout of orchfs takes over a logical path that a
legacy location served, the legacy file's SHA-256 and size are recorded under
``.orchestrator/superseded/``, one small JSON file per legacy location. While the
legacy file still matches its record it is *stale* (reads warn nothing, ``doctor``
says ``stale-legacy``, ``migrate`` retires it into the backup); once it differs, an
old orchestrator wrote it again and it is a conflict (``legacy-changed``).

Records are read back as untrusted input: a record whose name, shape or legacy path
does not check out is ignored, which leaves the pair a conflict (the safe reading).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any, NamedTuple

from .statefiles import StateFiles

__all__ = ["RECORD_DIR", "Record", "damaged_records", "is_stale", "read_record", "record_key", "write_record"]

RECORD_DIR = "superseded"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_RECORD_BYTES = 4096


class Record(NamedTuple):
    """The legacy file at ``legacy`` (root-relative) held ``size`` bytes hashing to ``sha256``."""

    legacy: str
    sha256: str
    size: int


def record_key(legacy: str) -> str:
    """The record's file name under ``superseded/``: a hash of the legacy path."""
    return hashlib.sha256(legacy.encode()).hexdigest()[:32] + ".json"


def write_record(state: Any, legacy: str, data: bytes) -> Record:
    """Record that ``data`` is what the legacy location ``legacy`` held (atomic write)."""
    found = Record(legacy, hashlib.sha256(data).hexdigest(), len(data))
    body = {"legacy": legacy, "sha256": found.sha256, "size": found.size, "at": round(time.time(), 3)}
    document = json.dumps(body, sort_keys=True).encode() + b"\n"
    StateFiles(state).write(f"{RECORD_DIR}/{record_key(legacy)}", document)
    return found


def read_record(state: Any, legacy: str) -> Record | None:
    """The record of ``legacy``, or None when there is none or it does not check out
    (the checks of :mod:`orchfs.stored`: size limit, JSON, a plain relative path)."""
    from .errors import StateError
    from .stored import check_relative, load_json, read_state

    where = f"{RECORD_DIR}/{record_key(legacy)}"
    try:
        raw = read_state(state, where, _MAX_RECORD_BYTES)
        if raw is None:
            return None
        body = load_json(raw, where, limit=_MAX_RECORD_BYTES)
        if not isinstance(body, dict) or check_relative(body.get("legacy"), "legacy", where) != legacy:
            return None  # a record copied to another name must not vouch for another file
    except (OSError, ValueError, StateError):
        return None
    sha, size = body.get("sha256"), body.get("size")
    if not isinstance(sha, str) or not _HEX64.match(sha):
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return None
    return Record(legacy, sha, size)


def is_stale(record: Record | None, size: int | None, sha256: Any) -> bool:
    """Whether a legacy file of ``size`` bytes still matches ``record``; ``sha256`` is a
    callable giving the file's hash, asked only when the sizes agree."""
    return record is not None and size == record.size and sha256() == record.sha256


def damaged_records(state: Any) -> list[str]:
    """Record files (``superseded/<name>``) that do not check out: damaged, planted, or
    copied under another file's name. They vouch for nothing; doctor names them."""
    from .errors import StateError
    from .stored import load_json, read_state

    try:
        names = state.find_files(RECORD_DIR)
    except (OSError, ValueError):
        return []
    bad = []
    for name in names:
        rel = name if name.startswith(RECORD_DIR + "/") else f"{RECORD_DIR}/{name}"
        try:
            body = load_json(read_state(state, rel, _MAX_RECORD_BYTES) or b"", rel, limit=_MAX_RECORD_BYTES)
            legacy = body.get("legacy") if isinstance(body, dict) else None
            valid = isinstance(legacy, str) and read_record(state, legacy) is not None
            valid = valid and rel == f"{RECORD_DIR}/{record_key(legacy)}"
        except (OSError, ValueError, StateError):
            valid = False
        if not valid:
            bad.append(rel)
    return bad
