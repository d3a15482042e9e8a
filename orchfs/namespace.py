"""The logical tree as fsspec sees it: files and directories over the overlay.

The overlay says where a logical path lives; this module turns that into fsspec's
answers and errors, on logical names that already passed the path gate: a directory
is one found in a layer, or one the layout implies (``is_virtual_dir``); orchfs's own
names at the top level never show; ``FileNotFoundError``, ``IsADirectoryError`` and
``FileExistsError`` carry the ``orch://`` URL. ``secrets/NAME`` is not handled here
(see :mod:`orchfs.secretsview`).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from .atomic import WriteKind
from .errors import is_a_directory, not_found
from .files import CopyUpFile, OrchReader
from .overlay import Found, Location, Times
from .paths import PROTOCOL, SECRETS_VIEW, join, unlisted

if TYPE_CHECKING:
    from collections.abc import Callable

    from .overlay import Overlay
    from .storage import Storage

__all__ = ["Namespace", "directory_info"]


def directory_info(logical: str) -> dict[str, Any]:
    """The info of a directory no layer describes (the root, a layout directory)."""
    return {"name": logical, "type": "directory", "size": 0, "mtime": None, "created": None}


def _exists_error(logical: str, why: str = "already exists") -> FileExistsError:
    return FileExistsError(errno.EEXIST, why, f"{PROTOCOL}://{logical}")


class Namespace:
    """fsspec's file and directory semantics for one overlay; ``state`` is the state
    directory's storage, whose capabilities say whether empty directories exist."""

    def __init__(self, overlay: Overlay, state: Storage) -> None:
        self.overlay = overlay
        self.state = state

    def lookup(self, logical: str) -> Found | None:
        return self.overlay.lookup(logical) if logical else None

    def is_dir(self, logical: str) -> bool:
        return self.shows_directory(logical, self.lookup(logical))

    def shows_directory(self, logical: str, found: Found | None) -> bool:
        """Whether ``logical`` is a directory, given what :meth:`lookup` found for it."""
        if found is not None:
            return found.is_dir
        return not logical or self.overlay.is_virtual_dir(logical)

    def serving(self, logical: str, found: Found | None) -> tuple[Location, int | None]:
        """The location a content read uses (warnings and legacy="migrate" applied) and
        the size the lookup saw there (None once legacy="migrate" has moved the file)."""
        if found is None or found.is_dir:
            if self.shows_directory(logical, found):
                raise is_a_directory(logical)
            raise not_found(logical)
        location, info = found
        served = self.overlay.served(logical, location)
        return served, (info.get("size") if served is location else None)

    def info(self, logical: str, secret_times: Callable[[], Times]) -> dict[str, Any]:
        """``info`` of any path but ``secrets/NAME``; ``secret_times`` dates ``secrets/``."""
        out = directory_info(logical)
        if logical and logical != SECRETS_VIEW:
            found = self.overlay.lookup(logical)
            if found is not None:
                out = dict(found.info)
                out["name"] = logical
                if not found.is_dir:
                    return out
            elif not self.overlay.is_virtual_dir(logical):
                raise not_found(logical)
        times = self.overlay.directory_times(logical, secret_times)
        out["mtime"], out["created"] = times.mtime, times.created
        return out

    def isfile(self, logical: str) -> bool:
        found = self.lookup(logical)
        return found is not None and not found.is_dir

    def listing(self, logical: str, detail: bool) -> list[Any]:
        """``ls`` of any path but ``secrets/``: a file lists itself, as in fsspec."""
        children = self.overlay.listdir(logical, detail)
        if not children:
            found = self.lookup(logical)
            if found is not None and not found.is_dir:
                out = dict(found.info)
                out["name"] = logical
                return [out] if detail else [logical]
            if not self.is_dir(logical):
                raise not_found(logical)
            return []
        for name in unlisted(logical, children):
            del children[name]  # internal entries, and names the gate would refuse
        if not logical and SECRETS_VIEW in children:
            children[SECRETS_VIEW] = (directory_info(SECRETS_VIEW), None)
        prefix = f"{logical}/" if logical else ""
        if not detail:
            return [prefix + name for name in children]
        out = []
        for name, (found, _location) in children.items():
            found["name"] = prefix + name  # every scan builds fresh dictionaries
            out.append(found)
        return out

    def open_file(
        self,
        fs: Any,
        logical: str,
        mode: str,
        block_size: Any,
        autocommit: bool,
        publish: Callable[[bytes], None],
        enlist: Callable[[Any], None] | None,
    ) -> Any:
        """The file object ``fs.open(logical, mode)`` hands out (``fs`` is the face it
        names): a reader, a staged writer, or for ``r+b`` a :class:`CopyUpFile` that
        ``publish``-es its bytes at close (``enlist`` adds it to an open transaction)."""
        if mode == "rb":
            location, size = self.serving(logical, self.lookup(logical))
            buffer = block_size if isinstance(block_size, int) else None
            return OrchReader(fs, logical, location.store.open_read(location.rel, buffer, size))
        if mode not in ("wb", "xb", "ab", "r+b"):
            raise ValueError(
                f"unsupported mode {mode!r} for {PROTOCOL}://{logical}: use rb, wb, xb, ab or "
                "r+b (text variants too)"
            )
        # A plain write where no layer lies below needs no lookup: the store itself refuses
        # a directory in the way (and on S3 asks nothing: the write is one PUT).
        looked = mode != "wb" or self.overlay.has_lower(logical)
        found = self.lookup(logical) if looked else None
        if self.shows_directory(logical, found):
            raise is_a_directory(logical)
        if mode == "xb" and found is not None:
            raise _exists_error(logical)
        if mode == "r+b":
            if found is None:
                raise not_found(logical)
            data = found.location.store.read(found.location.rel)
            copy = CopyUpFile(fs, logical, data, autocommit, publish)
            if not autocommit and enlist is not None:  # fsspec enlists only modes without "r"
                enlist(copy)
            return copy
        kind = WriteKind(create=mode == "xb", deferred=not autocommit, looked=looked)
        # The lookup above asked the write target first.
        writer = self.overlay.open_writer(logical, kind, found=found if mode == "ab" else None)
        writer.fs, writer.path, writer.mode = fs, logical, mode  # as fsspec's files name them
        return writer

    def move_file(self, logical1: str, logical2: str) -> bool:
        """Move one file (into ``logical2`` if that is a directory); False when
        ``logical1`` is a directory, which fsspec's walk moves file by file."""
        found = self.lookup(logical1)
        if found is None and not self.is_dir(logical1):
            raise not_found(logical1)
        if found is None or found.is_dir:
            return False
        if self.is_dir(logical2):
            logical2 = join(logical2, logical1.rpartition("/")[2])
        self.overlay.move_file(logical1, logical2, found.location)
        return True

    def remove_file(self, logical: str) -> None:
        found = self.lookup(logical)
        if found is None:
            raise not_found(logical)
        if found.is_dir:
            raise IsADirectoryError(
                errno.EISDIR, "is a directory (use rm(recursive=True))", f"{PROTOCOL}://{logical}"
            )
        self.overlay.remove_file(logical, found.location)

    def remove(self, logical: str) -> None:
        """Remove a file, or a directory whose entries are gone (``rm`` walks deepest first)."""
        found = self.lookup(logical)
        if found is not None and not found.is_dir:
            self.overlay.remove_file(logical, found.location)
            return
        if found is None and not self.shows_directory(logical, found):
            if self.state.capabilities.empty_directories:
                raise not_found(logical)
            return  # an implicit directory vanished with its last key
        if not logical:
            return
        self.overlay.remove_dir(logical)

    def make_directory(self, logical: str, create_parents: bool) -> None:
        """``mkdir`` of a path known not to exist."""
        if not create_parents and not self.is_dir(logical.rpartition("/")[0]):
            raise not_found(logical.rpartition("/")[0])
        self.overlay.make_directory(logical)

    def makedirs(self, logical: str, exist_ok: bool) -> None:
        found = self.lookup(logical)
        if found is not None or self.overlay.is_virtual_dir(logical):
            if found is not None and not found.is_dir:
                raise _exists_error(logical, "a file is in the way")
            if not exist_ok:
                raise _exists_error(logical)
            return
        self.overlay.make_directory(logical)

    def check_rmdir(self, logical: str) -> None:
        """Refuse ``rmdir`` of the root, of a path that is no directory, of a full one."""
        if not logical:
            raise PermissionError(errno.EPERM, "the root is never removed", f"{PROTOCOL}://")
        if not self.is_dir(logical):
            raise not_found(logical)
        if self.overlay.listdir(logical):
            raise OSError(errno.ENOTEMPTY, "directory not empty", f"{PROTOCOL}://{logical}")
