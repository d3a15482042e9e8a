"""The exception and warning hierarchy of orchfs.

Every orchfs error derives from :class:`OrchFSError`. Errors that callers already
catch by a built-in type keep it as a second base (a path escape is a
``ValueError``, a lock timeout a ``TimeoutError``), and plain filesystem errors stay
``FileNotFoundError`` / ``FileExistsError`` / ``IsADirectoryError`` as fsspec users
expect.
"""

from __future__ import annotations

import errno
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging


class OrchFSError(Exception):
    """Base class of every error raised by orchfs itself."""


class PathEscapeError(OrchFSError, ValueError):
    """A logical path was refused by the path gate, or resolves outside the root."""


class LockTimeout(OrchFSError, TimeoutError):
    """A lock could not be acquired in time; the message names the holder."""


class LockLostError(OrchFSError):
    """This holder's lease on a lock ended (expired while it was paused or cut off, or
    taken over) before a write it would have made under that lock: nothing was written."""


class SecretsLockedError(OrchFSError, PermissionError):
    """No key is available that can open the secret namespace."""


class KeyFileError(SecretsLockedError):
    """The user key file, or its directory, is not this user's own private file: a
    symlink, another user's, or open to group or others. orchfs neither reads nor writes
    it; the message names the path and the fix."""


class SecretIntegrityError(OrchFSError):
    """A secret file or manifest failed its authenticity check."""


class ConfigError(OrchFSError, ValueError):
    """A configuration or layout file is malformed; the message names file and line."""


class VersionPinError(OrchFSError):
    """The running orchestrator does not satisfy a configured version pin."""


class LayoutVersionError(OrchFSError, PermissionError):
    """The repository uses a newer layout than this orchfs can write."""


class MigrationConflictError(OrchFSError):
    """A legacy file and its new location both exist and differ; ``plan`` says which."""

    def __init__(self, message: str, plan: object = None) -> None:
        super().__init__(message)
        self.plan = plan


class SQLiteInUseError(OrchFSError):
    """A SQLite database has a hot journal or a lock held on it; migration waits for it."""


class RollbackIncompleteError(OrchFSError):
    """A rollback finished but could not bring every file back; the message names them."""


class SnapshotError(OrchFSError, ValueError):
    """A snapshot file that cannot be imported (the message says why; nothing was written)."""


class PreconditionFailed(OrchFSError, OSError):
    """A conditional request on object storage found the object at another version than
    it named (HTTP 412): a lease or a fenced write lost its race."""

    def __init__(self, url: str) -> None:
        super().__init__(errno.ESTALE, "precondition failed: the object changed", url)


class BucketNotFoundError(OrchFSError, FileNotFoundError):
    """The bucket (or container) that object storage keeps the state in does not exist:
    a bucket's region, access policy and lifecycle are the operator's to choose, so the
    fix is to create it. ``store`` is the storage URL, ``bucket`` the missing bucket."""

    def __init__(self, store: str, bucket: str) -> None:
        super().__init__(f"{store}: the bucket {bucket!r} does not exist; create the bucket first")
        self.store = store
        self.bucket = bucket

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Rebuilt from its fields (its args hold the message), so it crosses processes.
        return type(self), (self.store, self.bucket)


class StateError(OrchFSError, ValueError):
    """A file orchfs keeps (meta.json, FORMAT, a journal, the secrets manifest) is damaged
    or holds a value orchfs refuses. The message names the file, what is wrong and the fix;
    nothing was changed. ``path`` is the file."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class UnsafeStateError(StateError):
    """A stored value or a symlink would lead orchfs outside the repository root."""


class MetaError(StateError):
    """``.orchestrator/meta.json`` is damaged (not a JSON object, or no valid ``repo_id``)."""


class FormatError(StateError):
    """``.orchestrator/FORMAT`` is damaged (not a layout version): damaged is not newer."""


class JournalError(StateError):
    """A migration journal is damaged or does not match its schema (file and line named)."""


class ManifestError(SecretIntegrityError, StateError):
    """The secrets manifest is missing, damaged or unsealed while secret files exist."""


class LegacyPathWarning(DeprecationWarning):
    """A logical path was served from its v1 (legacy) location."""


class LegacyConflictWarning(UserWarning):
    """A path exists in both layouts with different contents; the upper copy wins."""


_OWN_DIRECTORY = os.path.dirname(os.path.abspath(__file__)) + os.sep
# A code file's name -> whether its frames are orchfs's or fsspec's own (see warn_outside).
_OWN_FILES: dict[str, bool] = {}
_OWN_FILES_LIMIT = 4096


def _own_file(filename: str) -> bool:
    """Whether frames of ``filename`` are orchfs's or fsspec's own: judged once per name,
    as every v1 file read warns once and each warning walks several frames."""
    own = _OWN_FILES.get(filename)
    if own is None:
        fsspec = sys.modules.get("fsspec")  # not imported: none of its frames can be here
        prefixes = (_OWN_DIRECTORY,)
        if fsspec is not None and fsspec.__file__:
            prefixes += (os.path.dirname(os.path.abspath(fsspec.__file__)) + os.sep,)
        own = os.path.abspath(filename).startswith(prefixes)
        if fsspec is not None and len(_OWN_FILES) < _OWN_FILES_LIMIT:  # else: judged again
            _OWN_FILES[filename] = own
    return own


def warn_outside(message: str, category: type[Warning]) -> None:
    """Issue a warning attributed to the first frame outside orchfs and fsspec.

    A read reaches orchfs through any number of fsspec frames (``fsspec.open``, text
    mode, ``get``), so no fixed ``stacklevel`` names the caller's own line; and
    Python's default filters show a ``DeprecationWarning`` only when that line is in
    ``__main__``.
    """
    level = 2  # 1 is this function; 2 its caller
    frame = sys._getframe(1)
    while frame is not None and _own_file(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


def shown(value: Any, limit: int | None = 200) -> str:
    """A value read back from disk as a message shows it: as it is when it is printable
    text of at most ``limit`` characters, else (the first ``limit`` characters) as an
    :func:`ascii` literal. A planted value (a holder's host, a ``meta.json`` root) can then
    neither break the one line of an error nor send a terminal an escape sequence."""
    text = str(value)
    if text.isprintable() and (limit is None or len(text) <= limit):
        return text
    return ascii(text if limit is None else text[:limit])


# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional controls:
# what a terminal would act on (or reorder) rather than show.
_TERMINAL_ESCAPES = {
    code: ascii(chr(code))[1:-1]
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x61C, 0x200E, 0x200F, *range(0x202A, 0x202F))
    if code not in (0x09, 0x0A)
} | {code: ascii(chr(code))[1:-1] for code in range(0x2066, 0x206A)}


def terminal_text(text: str) -> str:
    """Human output as a terminal may print it: its lines and tabs kept, every other
    control character escaped, so that a name read from disk (a v1 file named with an
    escape sequence, say) is shown, never acted on."""
    return text.translate(_TERMINAL_ESCAPES)


def not_found(logical: str) -> FileNotFoundError:
    """The ``FileNotFoundError`` of a logical path, named as its ``orch://`` URL."""
    from .paths import PROTOCOL

    return FileNotFoundError(
        errno.ENOENT, "no such file or directory in the orchestrator state", f"{PROTOCOL}://{logical}"
    )


def is_a_directory(logical: str) -> IsADirectoryError:
    """The ``IsADirectoryError`` of a logical path opened or read as a file."""
    from .paths import PROTOCOL

    return IsADirectoryError(errno.EISDIR, "is a directory, not a file", f"{PROTOCOL}://{logical}")


class LibraryLogger:
    """The logger of an orchfs module, made on its first record after someone imported
    :mod:`logging`: before that nothing can be configured to receive a record (and the
    ``orchfs`` logger's ``NullHandler`` would drop it), so a record costs one look-up and
    a command that logs nowhere never imports :mod:`logging`."""

    __slots__ = ("_logger", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: logging.Logger | None = None

    def _log(self, level: str, message: str, args: tuple[Any, ...]) -> None:
        logger = self._logger
        if logger is None:
            if "logging" not in sys.modules:
                return
            logger = self._logger = _package_logger(self.name)
        getattr(logger, level)(message, *args, stacklevel=3)  # the caller's line, not this one

    def debug(self, message: str, *args: Any) -> None:
        self._log("debug", message, args)

    def info(self, message: str, *args: Any) -> None:
        self._log("info", message, args)

    def warning(self, message: str, *args: Any) -> None:
        self._log("warning", message, args)


def _package_logger(name: str) -> logging.Logger:
    import logging

    package = logging.getLogger(__name__.partition(".")[0])
    if not any(isinstance(handler, logging.NullHandler) for handler in package.handlers):
        package.addHandler(logging.NullHandler())
    return logging.getLogger(name)


def library_logger(name: str) -> LibraryLogger:
    """The logger of an orchfs module (``orchfs.locks``, ...). The ``orchfs`` logger
    carries a ``NullHandler``, so that nothing reaches stderr unless the application
    configures logging: the library itself never prints."""
    return LibraryLogger(name)


__all__ = [
    "BucketNotFoundError",
    "ConfigError",
    "FormatError",
    "JournalError",
    "KeyFileError",
    "LayoutVersionError",
    "LegacyConflictWarning",
    "LegacyPathWarning",
    "LockLostError",
    "LockTimeout",
    "ManifestError",
    "MetaError",
    "MigrationConflictError",
    "OrchFSError",
    "PathEscapeError",
    "PreconditionFailed",
    "RollbackIncompleteError",
    "SQLiteInUseError",
    "SecretIntegrityError",
    "SecretsLockedError",
    "SnapshotError",
    "StateError",
    "UnsafeStateError",
    "VersionPinError",
]
