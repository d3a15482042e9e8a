"""JSON records in logical files, written through the overlay.

``update_json`` reads a JSON document, applies the caller's change and writes it back
atomically, all under the repository lock; ``append_line`` adds one JSON line
atomically with respect to every other writer (the overlay decides how: an append in
place on local disk, a locked rewrite where the backend cannot append).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from .atomic import REPLACE_LOOKED

if TYPE_CHECKING:
    from .overlay import Overlay

__all__ = ["append_line", "update_json"]


def update_json(
    overlay: Overlay,
    logical: str,
    update: Callable[[Any], Any],
    default: Any,
    lock: AbstractContextManager[Any],
) -> Any:
    """The value ``update`` made of ``logical``'s JSON (``default``, or ``{}``, when
    it does not exist; ``None`` from ``update`` keeps the mutated value), written back
    while ``lock`` is held."""
    with lock:
        try:  # one read through the layers, no separate lookup: a request less on S3
            _location, data = overlay.read(logical)
            current = json.loads(data)
        except FileNotFoundError:
            current = {} if default is None else default
        result = update(current)
        value = current if result is None else result
        data = json.dumps(value, indent=2, sort_keys=True).encode() + b"\n"
        # The read asked the write target first, so what is there is known.
        overlay.write(logical, data, REPLACE_LOOKED)
    return value


def append_line(overlay: Overlay, logical: str, record: Any, lock_for: Callable[[str], Any]) -> None:
    """Append ``record`` as one compact JSON line; ``lock_for(name)`` makes the lock the
    overlay takes where the backend cannot append atomically."""
    line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
    overlay.append(logical, line, lock_for)
