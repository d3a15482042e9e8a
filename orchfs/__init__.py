"""orchfs: a virtual filesystem for workflow-orchestrator state.

``import orchfs`` stays light: the filesystem (and with it fsspec, which pulls in
asyncio and scans installed entry points), the command line, secrets, S3, the
testing plugin and the layout (with ``dataclasses``, which pulls in ``inspect``) are
imported on first use, so that a command on a local repository loads only what it
needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import errors
from .errors import (
    ConfigError,
    LayoutVersionError,
    LegacyConflictWarning,
    LegacyPathWarning,
    LockLostError,
    LockTimeout,
    MigrationConflictError,
    OrchFSError,
    PathEscapeError,
    SecretIntegrityError,
    SecretsLockedError,
    VersionPinError,
)
from .version import __version__

if TYPE_CHECKING:
    from .filesystem import Conflict, OrchFileSystem, Resolution
    from .layout import Layout, default_layout

_LAZY_MODULES = (
    "cli",
    "config",
    "doctor",
    "filesystem",
    "layout",
    "locks",
    "migrate",
    "secrets",
    "sessions",
    "snapshot",
    "testing",
)
# Public names imported from their module on first use: (module, attribute).
_LAZY_NAMES = {
    "Conflict": ("filesystem", "Conflict"),
    "OrchFileSystem": ("filesystem", "OrchFileSystem"),
    "Layout": ("layout", "Layout"),
    "Resolution": ("filesystem", "Resolution"),
    "default_layout": ("layout", "default_layout"),
    "load_config": ("config", "load_config"),
}


def __getattr__(name: str) -> object:
    # orchfs.migrate.plan(...) works without importing the heavier modules up front.
    import importlib

    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        module, attribute = _LAZY_NAMES[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attribute)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    raise AttributeError(f"module 'orchfs' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "Conflict",
    "Layout",
    "LayoutVersionError",
    "LegacyConflictWarning",
    "LegacyPathWarning",
    "LockLostError",
    "LockTimeout",
    "MigrationConflictError",
    "OrchFSError",
    "OrchFileSystem",
    "PathEscapeError",
    "Resolution",
    "SecretIntegrityError",
    "SecretsLockedError",
    "VersionPinError",
    "__version__",
    "default_layout",
    "errors",
]
