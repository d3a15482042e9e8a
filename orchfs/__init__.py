"""orchfs: a virtual filesystem for workflow-orchestrator state.

``import orchfs`` stays light: the command line, secrets, S3 and the testing plugin
are imported where they are used.
"""

from __future__ import annotations

from . import errors
from .errors import (
    ConfigError,
    LayoutVersionError,
    LegacyConflictWarning,
    LegacyPathWarning,
    LockTimeout,
    MigrationConflictError,
    OrchFSError,
    PathEscapeError,
    SecretIntegrityError,
    SecretsLockedError,
    VersionPinError,
)
from .filesystem import Conflict, OrchFileSystem, Resolution
from .layout import Layout, default_layout

__version__ = "0.1.0"

_LAZY_MODULES = ("cli", "config", "doctor", "locks", "migrate", "secrets", "sessions", "snapshot", "testing")


def __getattr__(name: str) -> object:
    # orchfs.migrate.plan(...) works without importing the heavier modules up front.
    import importlib

    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name == "load_config":
        return importlib.import_module(".config", __name__).load_config
    raise AttributeError(f"module 'orchfs' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "Conflict",
    "Layout",
    "LayoutVersionError",
    "LegacyConflictWarning",
    "LegacyPathWarning",
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
