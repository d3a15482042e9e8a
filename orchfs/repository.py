"""One repository's parts, opened once: the root's store, the state directory's store,
the bound session and the overlay over them (DESIGN §2).

:class:`~orchfs.filesystem.OrchFileSystem` is the fsspec face over these parts; a
reader that needs no face (``doctor``: the overlay's pairs, the locks and journals of
the state directory) opens them alone, so that a check of a local repository never
loads fsspec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .paths import STATE_DIR, validate_id, validate_name

if TYPE_CHECKING:
    from .config import FaceSettings
    from .layout import Layout
    from .overlay import Overlay
    from .storage import Storage

__all__ = ["Repository", "open_repository"]


@dataclass(frozen=True)
class Repository:
    """The parts of an open repository (see the module docstring).

    ``root`` is the normalised root (a plain path on local disk), ``repo`` its store;
    ``storage`` names the state directory and ``state_storage`` is its store;
    ``session_id`` is the bound session (given, or the one ``.orchestrator/current``
    names).
    """

    root: str
    repo: Storage
    storage: str
    state_storage: Storage
    options: dict[str, Any]
    session_id: str | None
    layout: Layout
    overlay: Overlay

    @property
    def local_root(self) -> bool:
        return self.repo.capabilities.local_path


def open_repository(
    root: Any,
    given: FaceSettings,
    *,
    layout: Any = None,
    storage_options: dict[str, Any] | None = None,
    fo: str | None = None,
    target_protocol: str | None = None,
    target_options: dict[str, Any] | None = None,
) -> Repository:
    """Open the parts of a repository; ``given`` are ``OrchFileSystem``'s arguments as
    :func:`~orchfs.config.face_settings` resolves them, the rest are its own."""
    from .config import root_url
    from .layout import coerce_layout
    from .overlay import Overlay
    from .storage import open_root, open_storage

    storage, session = given.storage, given.session
    if session is not None:
        validate_id(validate_name(session, "session id"), "session id")
    options = dict(storage_options or target_options or {})
    root_path, repo = open_root(root_url(root, fo, target_protocol), options)
    local_root = repo.capabilities.local_path
    if storage is None:
        storage = f"{root_path}/{STATE_DIR}"
    state = open_storage(storage, options, boundary=root_path if local_root else None)
    if session is None:  # workflow-orchestrator's own layout names its active session
        from .sessions import current_session

        session = current_session(state)
    chosen = coerce_layout(layout)
    overlay = Overlay(state, repo, chosen, session, given.legacy, root=root_path, local_root=local_root)
    return Repository(root_path, repo, storage, state, options, session, chosen, overlay)
