"""The ``secrets/`` logical view: the secret store seen as files.

``secrets/NAME`` reads, writes and removes the secret NAME through the
:class:`~orchfs.secrets.SecretStore`, never the files below
``.orchestrator/secrets/``; ``secrets/`` lists the names, with no sizes (a size would
tell something about the plaintext). The face routes every logical path under
``secrets/`` here after the path gate.
"""

from __future__ import annotations

import errno
import functools
import io
from typing import Any

from .errors import not_found
from .files import CopyUpFile, OrchReader
from .overlay import Resolution, Times
from .paths import PROTOCOL, SECRETS_VIEW

__all__ = ["SecretsView", "secret_name"]


def secret_name(logical: str) -> str | None:
    """``secrets/NAME`` -> NAME (None outside ``secrets/``): that subtree is the secret
    store seen as files, so a deeper path is refused."""
    head, _, name = logical.partition("/")
    if head != SECRETS_VIEW:
        return None
    if not name or "/" in name:
        raise IsADirectoryError(errno.EISDIR, "secrets/ holds names, not directories", logical)
    return name


def _exists_error(logical: str) -> FileExistsError:
    return FileExistsError(errno.EEXIST, "already exists", f"{PROTOCOL}://{logical}")


class SecretsView:
    """``secrets/NAME`` operations of one filesystem, on its public ``secrets`` and
    ``state_storage`` (the store is made on first use)."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    def resolve(self, logical: str) -> Resolution:
        """``secrets/NAME`` is served by its encrypted file ``secrets/<repo_id>/NAME.enc``."""
        from .meta import read_meta

        name = secret_name(logical)
        state = self.fs.state_storage
        if read_meta(state) is None:  # no namespace yet (resolving never creates one)
            return Resolution(logical, "contained", state.url(SECRETS_VIEW), False)
        secrets = self.fs.secrets
        return Resolution(logical, "contained", secrets.url(name), secrets.stored_info(name) is not None)

    def info(self, logical: str) -> dict[str, Any]:
        name = secret_name(logical)
        secrets = self.fs.secrets
        if name not in secrets.list():
            raise not_found(logical)
        found = secrets.stored_info(name) or {}
        return {
            "name": logical,
            "type": "file",
            "size": None,
            "mtime": found.get("mtime"),
            "created": found.get("created"),
        }

    def listing(self) -> list[dict[str, Any]]:
        """The info of every secret, as ``ls("secrets", detail=True)`` shows it."""
        return [self.info(f"{SECRETS_VIEW}/{n}") for n in self.fs.secrets.list()]

    def times(self) -> Times:
        """The times ``secrets/`` shows: those of its newest and oldest secret."""
        return Times.of(self.listing())

    def read(self, logical: str, name: str) -> bytes:
        try:
            return self.fs.secrets.get_bytes(name)
        except KeyError:
            raise not_found(logical) from None

    def open(self, logical: str, name: str, mode: str, autocommit: bool) -> Any:
        if mode == "rb":
            return OrchReader(self.fs, logical, io.BytesIO(self.read(logical, name)))
        if mode in ("wb", "xb"):
            if mode == "xb" and name in self.fs.secrets.list():
                raise _exists_error(logical)
            publish = functools.partial(self.fs.secrets.set, name)
            return CopyUpFile(self.fs, logical, b"", autocommit, publish, mode)
        raise ValueError(f"secrets open as rb, wb or xb, not {mode!r}")

    def write(self, logical: str, name: str, value: bytes, mode: str) -> None:
        if mode == "create" and name in self.fs.secrets.list():
            raise _exists_error(logical)
        self.fs.secrets.set(name, bytes(value))

    def remove(self, logical: str, name: str) -> None:
        try:
            self.fs.secrets.delete(name)
        except KeyError:
            raise not_found(logical) from None
