"""Stored state is untrusted input: the checks every value read back from disk passes.

A repository may be cloned from someone else, its state directory restored from a
snapshot or edited by an older tool, so nothing orchfs reads from ``.orchestrator/``
is taken on faith (DESIGN §3). Before a stored value becomes a path or an action it
passes one of these checks, which raise an :class:`~orchfs.errors.StateError`
subclass naming the file and what is wrong:

* :func:`load_json` parses a JSON state file within a size limit (the caller checks its shape);
* :func:`check_id` holds migration and session ids to one strict pattern;
* :func:`check_repo_id` holds ``repo_id`` (the secret namespace) to its fixed format;
* :func:`check_relative` holds a stored relative path (a journal's ``source``) to the
  rules of :func:`orchfs.paths.validate_stored`: no ``..``, nothing absolute, no
  control characters.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import PathEscapeError, StateError, UnsafeStateError
from .paths import ID_PATTERN

# Large enough for any state file orchfs writes, small enough that a planted one cannot
# exhaust memory: meta.json and the manifest are a few KiB even with thousands of secrets.
MAX_STATE_JSON_BYTES = 16 << 20

REPO_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")


def read_state(storage: Any, rel: str, limit: int = MAX_STATE_JSON_BYTES) -> bytes | None:
    """The bytes of state file ``rel`` (None when absent), at most ``limit + 1`` of them
    on local disk: a planted file of any size (a sparse one costs nothing to make) is
    never read whole, only far enough for the size check to refuse it. Object stores are
    read whole: under a lease the fenced write that follows names the version a whole
    read notes. A directory planted there is a :class:`StateError` naming it."""
    try:
        if storage.capabilities.local_path:
            return storage.read_optional(rel, 0, limit + 1)
        return storage.read_optional(rel)
    except IsADirectoryError:
        where = storage.url(rel)
        raise StateError(
            f"{where} is a directory where orchfs keeps a file; move it aside by hand", where
        ) from None


def load_json(
    data: bytes,
    where: str,
    *,
    error: type[StateError] = StateError,
    fix: str = "",
    limit: int = MAX_STATE_JSON_BYTES,
) -> Any:
    """Parse one JSON document read from ``where``; damaged or oversized -> ``error``."""
    suffix = f"; {fix}" if fix else ""
    if len(data) > limit:
        raise error(f"{where} is over the {limit}-byte limit for a state file{suffix}", where)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # deep nesting ends in RecursionError
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "not JSON"
        raise error(f"{where} is damaged ({detail}){suffix}", where) from None


def check_id(value: Any, what: str, where: str) -> str:
    """A migration or session id: letters, digits, ``_``, ``.`` and ``-``, starting with a
    letter or digit, at most 128 characters (so never ``..``, ``/`` or empty)."""
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise UnsafeStateError(
            f"{where}: {what} {_shown(value)} is not a valid id (letters, digits, '_', '.', '-'; "
            "starting with a letter or digit); refused",
            where,
        )
    return value


def check_repo_id(value: Any, where: str) -> str:
    """``repo_id`` as orchfs writes it: 32 lowercase hex digits."""
    if not isinstance(value, str) or not REPO_ID_PATTERN.match(value):
        raise UnsafeStateError(
            f"{where}: repo_id {_shown(value)} is not 32 lowercase hex digits; refused. "
            "Restore meta.json from a backup; or remove it and run `orchfs init` (a new "
            "repo_id: secrets stored under the old one become unreadable)",
            where,
        )
    return value


def check_relative(value: Any, what: str, where: str) -> str:
    """A physical path relative to the root or the state directory (no ``..``, nothing
    absolute, no control characters: :func:`orchfs.paths.validate_stored`)."""
    from .paths import validate_stored

    if not isinstance(value, str):
        raise UnsafeStateError(f"{where}: {what} {_shown(value)} is not a path; refused", where)
    try:
        return validate_stored(value)
    except PathEscapeError as exc:
        raise UnsafeStateError(f"{where}: {what} is refused ({exc})", where) from None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = [
    "MAX_STATE_JSON_BYTES",
    "REPO_ID_PATTERN",
    "check_id",
    "check_relative",
    "check_repo_id",
    "load_json",
    "read_state",
]
