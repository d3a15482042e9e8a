"""orchfs's own files at the top of the state directory (``FORMAT``, ``meta.json``,
supersede records, the secret store), written beside the overlay but never into the
logical namespace.

A module of its own so that what writes them (``orchfs migrate``, the secret store)
does not import the overlay and its layer index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .atomic import REPLACE, WriteKind
from .errors import PathEscapeError
from .paths import INTERNAL_NAMES, SECRETS_VIEW

if TYPE_CHECKING:
    from .storage import Storage

# The top-level names of the state directory that hold orchfs's own files, never a
# logical path: the only places StateFiles writes.
OWN_STATE_NAMES = INTERNAL_NAMES | {SECRETS_VIEW}


class StateFiles:
    """orchfs's own files in the state directory (``FORMAT``, ``meta.json``, supersede
    records, the secret store): the one seam through which code beside the overlay
    writes there. It takes only paths under :data:`OWN_STATE_NAMES`, so nothing written
    through it lands on, or hides, a file of the logical namespace: every write of that
    is the overlay's, with its rules. Reads go to the adapter itself."""

    __slots__ = ("storage",)

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def _own(self, rel: str) -> str:
        if rel.partition("/")[0] not in OWN_STATE_NAMES:
            raise PathEscapeError(
                f"{self.storage.url(rel)} is not one of orchfs's own state files; the logical "
                "namespace is written through the overlay only"
            )
        return rel

    def write(self, rel: str, data: bytes, kind: WriteKind = REPLACE, *, mode: int | None = None) -> None:
        self.storage.write(self._own(rel), data, kind, mode=mode)

    def makedirs_private(self, rel: str) -> None:
        self.storage.makedirs_private(self._own(rel))

    def remove(self, rel: str) -> None:
        self.storage.remove(self._own(rel))


__all__ = ["OWN_STATE_NAMES", "StateFiles"]
