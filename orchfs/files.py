"""The file objects that ``OrchFileSystem.open`` hands out on every backend.

:class:`OrchReader` is fsspec-style whatever the backend: ``path`` is the logical path
and ``fs`` the orch filesystem (so ``f.fs.open(f.path)`` opens the same file again),
``size`` is the file's size and ``mode`` is ``"rb"``. It wraps the backend's own reader
(a buffered file on local disk, fsspec's file on memory or object storage) and
delegates every read to it, so it reads as fast as that reader does.

It pickles as (filesystem, logical path, position) and unpickles by opening the path
through the filesystem again: the path gate decides afresh, and neither a physical path
nor any byte of content travels in the pickle (a secret's plaintext included).
It is closed by ``close()``, a ``with`` block, or as soon as the last reference to it
goes away (``io.IOBase`` closes on finalisation), never left for the backend's own
finaliser to report as a ``ResourceWarning``.

:class:`CopyUpFile` serves ``r+b`` and secrets opened for writing: it edits a private
copy in memory and publishes the whole file atomically at close; it never pickles.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from typing import Any

from .paths import PROTOCOL

__all__ = ["CopyUpFile", "OrchReader"]

# Stands in for the backend's reader once closed, so that every later call raises
# ``ValueError`` as on any closed file (fsspec's memory file never closes itself).
_CLOSED = io.BytesIO()
_CLOSED.close()
# The backend reader's methods a reader binds as its own (no Python frame per call).
_HOT = ("read", "readinto", "seek", "tell")


def _reopen(fs: Any, path: str, position: int) -> OrchReader:
    """Unpickle a reader: open ``path`` through ``fs`` (the gate again) and seek back."""
    reader = fs.open(path, "rb")
    reader.seek(position)
    return reader


class OrchReader(io.IOBase):
    """A binary file open for reading on an orch filesystem."""

    mode = "rb"

    def __init__(self, fs: Any, path: str, f: Any) -> None:
        self._use(f)  # first: the finaliser asks ``closed`` even if the rest failed
        self.fs = fs
        self.path = path
        self._size: int | None = None

    def _use(self, f: Any) -> None:
        """Read through ``f``; the hot calls are its own bound methods, so a loop of
        small reads costs what it costs on the backend's reader (no extra frame)."""
        self.f = f
        for name in _HOT:
            setattr(self, name, getattr(f, name))

    @property
    def size(self) -> int:
        """The size of the file as opened (asked of the backend's reader once)."""
        if self._size is None:
            own = getattr(self.f, "size", None)  # fsspec's files know it already
            if own is None:
                position = self.f.tell()
                own = self.f.seek(0, io.SEEK_END)
                self.f.seek(position)
            self._size = int(own)
        return self._size

    @property
    def closed(self) -> bool:
        return self.f.closed

    def close(self) -> None:
        f = self.f
        self._use(_CLOSED)
        f.close()

    def __del__(self) -> None:
        # ``fs.open(p).read()`` drops this reader before the read runs: the caller holds the
        # backend reader's own bound ``read`` (one of ours, see _use), and closing now would
        # fail that read. Then the backend reader closes itself when that method goes, as
        # ``open(p).read()`` does. A stored bound method has two references when unused:
        # our instance dict and getrefcount's argument.
        if not self.closed and all(sys.getrefcount(self.__dict__[name]) <= 2 for name in _HOT):
            self.close()

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        read1 = getattr(self.f, "read1", None)
        return read1(size) if read1 is not None else self.f.read(size)

    # fsspec's buffered files take no limit here: it is passed on only when given.
    def readline(self, size: int | None = -1) -> bytes:
        return self.f.readline() if size is None or size < 0 else self.f.readline(size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return self.f.readlines() if hint is None or hint < 0 else self.f.readlines(hint)

    def fileno(self) -> int:
        return self.f.fileno()  # local disk only; others raise io.UnsupportedOperation

    def __reduce__(self) -> tuple[Any, tuple[Any, str, int]]:
        if self.closed:
            raise ValueError(f"cannot pickle {PROTOCOL}://{self.path}: the file is closed")
        return _reopen, (self.fs, self.path, self.tell())

    def __repr__(self) -> str:
        return f"<OrchReader {PROTOCOL}://{self.path}>"


class CopyUpFile(io.BytesIO):
    """``r+b`` (and a secret opened for writing): a private copy of the visible bytes,
    handed to ``publish`` (an atomic write of the whole file) at close, or at the end
    of the transaction it was opened in."""

    def __init__(
        self,
        fs: Any,
        logical: str,
        data: bytes,
        autocommit: bool,
        publish: Callable[[bytes], None],
        mode: str = "r+b",
    ) -> None:
        super().__init__(data)
        self.fs = fs
        self.path = logical
        self.mode = mode
        self.autocommit = autocommit
        self._publish = publish
        self._done = False
        self._staged = b""

    @property
    def size(self) -> int:
        with self.getbuffer() as view:  # released at once: a held view would block writes
            return view.nbytes

    def __reduce__(self) -> Any:
        # BytesIO would pickle its bytes: a secret's plaintext among them.
        raise TypeError(f"a file open for writing cannot be pickled ({PROTOCOL}://{self.path})")

    def close(self) -> None:
        if not self.closed:
            if self.autocommit:
                self.commit()
            elif not self._done:  # in a transaction, which commits after the close
                self._staged = self.getvalue()
        super().close()

    def commit(self) -> None:
        if not self._done:
            self._done = True
            data = self._staged if self.closed else self.getvalue()
            self._staged = b""
            self._publish(data)

    def discard(self) -> None:
        self._done = True
        self._staged = b""

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:
            self.discard()
        self.close()
