"""Making a whole filesystem durable at once: ``syncfs(2)``.

A run that writes many files which need to be durable only together (the migration's
backup copies of one journal batch) writes them without an fsync each, then calls
:func:`sync_filesystem` once, on a descriptor of their filesystem, before it records
them as done: one flush of the filesystem's dirty data and metadata (the new files'
bytes and their directory entries) in place of two fsyncs per file.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

_bound: list[Callable[[int], int] | None] = []  # [syncfs] or [None] once looked up

# Answers that mean "no syncfs for this descriptor", not "the flush failed": a kernel
# that forbids the call (ENOSYS under a seccomp filter) or a descriptor the kernel does
# not know (EBADF: one made by an in-memory stand-in for the os module, such as
# pyfakefs). The caller's fallback, an fsync of each file, is as durable.
_NOT_HERE = frozenset({errno.ENOSYS, errno.EBADF})


def _syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs``, looked up (through ctypes) on the first call only."""
    if not _bound:
        try:
            import ctypes

            function = ctypes.CDLL(None, use_errno=True).syncfs
            function.argtypes = [ctypes.c_int]
            function.restype = ctypes.c_int
            _bound.append(function)
        except (OSError, AttributeError):  # no libc to load, or a libc without syncfs (macOS)
            _bound.append(None)
    return _bound[0]


def sync_filesystem(fd: int) -> bool:
    """Flush all dirty data and metadata of the filesystem that ``fd`` is on; False,
    with nothing done, where the system has no ``syncfs`` or the kernel refuses it for
    ``fd`` (see ``_NOT_HERE``): the caller then fsyncs each file it wrote, and their
    directories. A failed flush raises :class:`OSError` (Linux 5.8 and later report a
    writeback error of the filesystem here)."""
    function = _syncfs()
    if function is None:
        return False
    if function(fd) != 0:
        import ctypes

        number = ctypes.get_errno()
        if number in _NOT_HERE:
            return False
        raise OSError(number, f"syncfs: {os.strerror(number)}")
    return True


__all__ = ["sync_filesystem"]
