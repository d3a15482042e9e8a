"""Atomic, durable file replacement: the writers that every backend hands out.

A write never touches the target until it is complete. :class:`StagedWriter` is the
file object returned for ``wb``/``xb``: bytes go to a stage, and :meth:`commit`
publishes them in one step. Closing commits; leaving a ``with`` block through an
exception discards; so does an abandoned writer that is garbage collected. Inside
``fs.transaction`` closing only stages, and the transaction commits or discards.

On local disk (:class:`LocalAtomicWriter`) the stage is a randomly named temp file in
the target's own directory, created ``O_CREAT|O_EXCL|O_NOFOLLOW`` with mode 0600;
commit is ``fsync`` the file, ``os.replace`` it over the target (``link`` for
exclusive create, so an existing file is never clobbered), widen its mode to the
final one, then ``fsync`` the directory. A crash at any point leaves the old bytes
or the new ones, and any temp file left behind is 0600. Every step goes through an
open directory descriptor reached without following symlinks, so no write lands
outside the tree. :func:`write_whole` takes the same steps for a caller that has every
byte at hand, without making a file object.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
from collections.abc import Callable
from typing import Any, NamedTuple

from .faults import checkpoint
from .paths import TEMP_PREFIX

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
DIR_FLAGS = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC
PRIVATE_FILE_MODE = 0o600  # secrets, locks, journals, temp files
PRIVATE_DIR_MODE = 0o700


def _current_umask() -> int:
    # The only portable way to read the umask is to set it; done once, at import.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _current_umask()
DEFAULT_FILE_MODE = 0o666 & ~UMASK
DEFAULT_DIR_MODE = 0o777 & ~UMASK


class WriteKind(NamedTuple):
    """What kind of write an adapter's ``write``/``open_write`` makes: one named value
    handed down from the face to the adapter, instead of a flag per layer.

    ``create``: exclusive create (``xb``, ``pipe_file(mode="create")``): refused where
    any entry is, published with ``link`` on local disk and a conditional PUT on object
    storage. Otherwise the bytes replace a file there (a directory is refused).
    ``deferred``: closing only stages; the caller's transaction commits or discards
    (``open_write`` only: ``write`` has every byte at hand and publishes at once).
    ``looked``: the caller has just looked at the target (a lookup that asked the write
    target first), so the adapter asks nothing more before it writes.
    """

    create: bool = False
    deferred: bool = False
    looked: bool = False


REPLACE = WriteKind()
CREATE = WriteKind(create=True)
REPLACE_LOOKED = WriteKind(looked=True)


# The random bits of temp-file names: a generator of orchfs's own, seeded from the system's
# randomness (a program that seeds the ``random`` module for its own reproducibility must
# not make two processes pick the same names), and seeded afresh in every forked child.
_TEMP_BITS = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_TEMP_BITS.seed)


def temp_name(name: str, _bits: Callable[[int], int] = _TEMP_BITS.getrandbits) -> str:
    """A fresh temp-file name beside ``name`` (never shown in listings).

    64 random bits, without a system call per write; they keep concurrent writers of one
    name apart. Nothing relies on their being unguessable: the temp file is created
    ``O_EXCL|O_NOFOLLOW``, so an entry planted at a guessed name makes the write fail,
    never lands it elsewhere.
    """
    return f"{TEMP_PREFIX}{name[:64]}.{_bits(64):016x}"


def fsync_directory(dir_fd: int) -> None:
    """Make a rename or create in the directory durable (ignored where unsupported)."""
    try:  # noqa: SIM105 (contextlib.suppress: three calls more on every write)
        os.fsync(dir_fd)
    except OSError:
        pass


class StagedWriter(io.RawIOBase):
    """A write-only file whose bytes only become visible at :meth:`commit`."""

    def __init__(self, path: str, autocommit: bool = True) -> None:
        super().__init__()
        self.path = path
        self.autocommit = autocommit
        self._finished = False
        self._written = 0
        self.after_publish: Callable[[], None] | None = None
        self.fs: Any = None  # the filesystem that handed it out, which also sets ``path``
        self.mode = "wb"

    # --- to be provided by each backend -------------------------------------------
    def _stage(self, data: memoryview) -> None:
        raise NotImplementedError

    def _publish(self) -> None:
        raise NotImplementedError

    def _drop(self) -> None:
        raise NotImplementedError

    # --- file protocol -------------------------------------------------------------
    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError(f"write to closed file {self.path!r}")
        view = memoryview(data).cast("B")
        self._stage(view)
        self._written += len(view)
        return len(view)

    def tell(self) -> int:
        return self._written

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._written

    def __reduce__(self) -> Any:
        # The default would pickle an open descriptor or the staged bytes.
        raise TypeError(f"a file open for writing cannot be pickled ({self.path})")

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        if self.autocommit:
            self.commit()

    def commit(self) -> None:
        """Publish the staged bytes at the target (once)."""
        if self._finished:
            return
        self._finished = True
        try:
            self._publish()
        except BaseException:
            self._drop()
            raise
        if self.after_publish is not None:
            self.after_publish()

    def discard(self) -> None:
        """Throw the staged bytes away; the target keeps its old content."""
        if not self.closed:
            super().close()
        if not self._finished:
            self._finished = True
            self._drop()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.discard()
        else:
            self.close()

    def __del__(self) -> None:
        # An abandoned writer is never half-published.
        if not getattr(self, "_finished", True):
            self.discard()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r}>"


class LocalAtomicWriter(StagedWriter):
    """Temp file beside the target, fsync, replace, fsync the directory."""

    def __init__(
        self,
        dir_fd: int,
        name: str,
        path: str,
        *,
        exclusive: bool = False,
        autocommit: bool = True,
        final_mode: int = DEFAULT_FILE_MODE,
    ) -> None:
        super().__init__(path, autocommit)
        self._dir_fd = dir_fd
        self._name = name
        self._exclusive = exclusive
        self._final_mode = final_mode
        self._temp = temp_name(name)
        self._fd = -1
        try:
            self._fd = os.open(self._temp, TEMP_FLAGS, PRIVATE_FILE_MODE, dir_fd=dir_fd)
        except BaseException:
            self._finished = True
            os.close(dir_fd)
            raise

    def staged_fd(self) -> int:
        """The temp file's descriptor, for copies that fill it in the kernel (reflink)."""
        return self._fd

    def _stage(self, data: memoryview) -> None:
        _write_all(self._fd, data)

    def _publish(self) -> None:
        fd, self._fd = self._fd, -1
        _publish(self._dir_fd, self._temp, self._name, fd, self._exclusive, self._final_mode)
        dir_fd, self._dir_fd = self._dir_fd, -1
        os.close(dir_fd)

    def _drop(self) -> None:
        if self._dir_fd >= 0:
            _drop(self._dir_fd, self._temp, self._fd)
        elif self._fd >= 0:
            os.close(self._fd)
        self._fd = self._dir_fd = -1


def write_whole(
    dir_fd: int, name: str, data: bytes, *, exclusive: bool = False, final_mode: int = DEFAULT_FILE_MODE
) -> None:
    """What a :class:`LocalAtomicWriter` of ``name`` in ``dir_fd`` given ``data`` in one
    write does (the same steps, fault points and guarantees), for a caller that has every
    byte at hand: no file object is made. ``dir_fd`` is closed, whatever happens."""
    temp = temp_name(name)
    try:
        fd = os.open(temp, TEMP_FLAGS, PRIVATE_FILE_MODE, dir_fd=dir_fd)
    except BaseException:
        os.close(dir_fd)
        raise
    try:
        _write_all(fd, memoryview(data).cast("B"))
    except BaseException:
        _drop(dir_fd, temp, fd)
        raise
    try:
        _publish(dir_fd, temp, name, fd, exclusive, final_mode)
    except BaseException:
        _drop(dir_fd, temp, -1)  # _publish closed the file, whatever happened
        raise
    os.close(dir_fd)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]
        checkpoint("atomic.stage")


def _publish(dir_fd: int, temp: str, name: str, fd: int, exclusive: bool, final_mode: int) -> None:
    """fsync the temp file ``fd``, put it in place, widen its mode; closes ``fd`` always,
    never ``dir_fd`` (the caller closes it once, or drops the temp file on failure)."""
    try:
        os.fsync(fd)
        checkpoint("atomic.publish")
        if exclusive:
            # link() fails if the target exists: exclusive create without a window.
            os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.unlink(temp, dir_fd=dir_fd)
        else:
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        checkpoint("atomic.publish")
        # Widened only once published, so that a temp file left by a crash is 0600.
        if final_mode != PRIVATE_FILE_MODE:
            os.fchmod(fd, final_mode)
    finally:
        os.close(fd)
    fsync_directory(dir_fd)


def _drop(dir_fd: int, temp: str, fd: int) -> None:
    """Close the temp file ``fd`` (unless -1), remove it, close ``dir_fd``: each step
    taken even if the one before failed (a close that fails has still freed its number)."""
    try:
        if fd >= 0:
            os.close(fd)
    finally:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)


class BufferedUploadWriter(StagedWriter):
    """Bytes kept in memory (spilling to a temp file), handed over in one call (one PUT)."""

    SPILL_BYTES = 16 * 2**20

    def __init__(
        self,
        path: str,
        upload: Callable[[bytes], None],
        autocommit: bool = True,
    ) -> None:
        super().__init__(path, autocommit)
        import tempfile

        self._buffer = tempfile.SpooledTemporaryFile(max_size=self.SPILL_BYTES)  # noqa: SIM115
        self._upload = upload

    def _stage(self, data: memoryview) -> None:
        self._buffer.write(data)

    def _publish(self) -> None:
        self._buffer.seek(0)
        try:
            self._upload(self._buffer.read())
        finally:
            self._buffer.close()

    def _drop(self) -> None:
        self._buffer.close()


__all__ = [
    "CREATE",
    "DEFAULT_FILE_MODE",
    "DIR_FLAGS",
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "REPLACE",
    "REPLACE_LOOKED",
    "UMASK",
    "BufferedUploadWriter",
    "LocalAtomicWriter",
    "StagedWriter",
    "WriteKind",
    "fsync_directory",
    "temp_name",
    "write_whole",
]
