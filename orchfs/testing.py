"""pytest plugin (entry point ``pytest11``) for people who test orchestrators.

Fixtures:

* ``orch_memory_fs`` - an :class:`~orchfs.OrchFileSystem` on a fresh in-memory
  repository, forgotten after the test;
* ``legacy_repo_factory`` - a function that builds a v1 (legacy) repository in a
  temporary directory from a mapping of legacy path -> bytes (default: one file for
  every v1 location) and returns its root.
* ``orch_fake_disk`` - a :class:`FakeDisk` on pyfakefs's fake disk (it starts
  pyfakefs's ``fs`` fixture): ``.repo()`` gives an :class:`~orchfs.OrchFileSystem` on a
  fresh v2 repository, ``.legacy_repo(files)`` builds a v1 one and returns its root.

On the fake disk everything orchfs does through Python's ``os`` and ``open`` runs as on
a real one: reads, atomic writes, the overlay over a v1 layout, ``update_json`` and
``append_line`` in one process, secrets, migration and rollback, doctor. What needs a
real disk (use ``tmp_path``):

* locking between processes or threads: pyfakefs's ``flock``/``lockf`` do nothing, so
  locks are taken but exclude no one; and no other process sees the fake disk at all
  (the ``orchfs`` command in a subprocess, multiprocessing, git);
* the kernel's own path checks: ``openat2(RESOLVE_BENEATH)`` is a raw system call that
  pyfakefs cannot see, so the fixture makes orchfs use its ``O_NOFOLLOW`` component walk
  (the same rule, checked in Python);
* copy offloads (reflink, ``copy_file_range``) and ``pread``/``pwrite``, which pyfakefs
  lacks: the fixture routes them to plain reads and writes on the fake descriptors (a
  fake descriptor must never reach the real kernel, where it names another file);
* file modes from the process umask and real ownership (pyfakefs keeps its own).
"""

from __future__ import annotations

import errno
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .sample import LEGACY_SAMPLE, build_legacy_repo

__all__ = [
    "LEGACY_SAMPLE",
    "FakeDisk",
    "build_legacy_repo",
    "legacy_repo_factory",
    "orch_fake_disk",
    "orch_memory_fs",
]


@pytest.fixture
def orch_memory_fs() -> Iterator[object]:
    import fsspec

    from .filesystem import OrchFileSystem

    name = f"orchfs-test-{uuid.uuid4().hex}"
    yield OrchFileSystem(root=f"memory://{name}")
    memory = fsspec.filesystem("memory")
    if memory.exists(f"/{name}"):
        memory.rm(f"/{name}", recursive=True)


@pytest.fixture
def legacy_repo_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    def factory(files: Mapping[str, bytes] | None = None) -> Path:
        return build_legacy_repo(tmp_path_factory.mktemp("legacy-repo"), files)

    return factory


@dataclass(frozen=True)
class FakeDisk:
    """Repositories on pyfakefs's fake disk; ``fake`` is pyfakefs's ``FakeFilesystem``."""

    fake: Any

    def repo(self, root: str = "/repo", **options: Any) -> Any:
        """An :class:`~orchfs.OrchFileSystem` on a fresh v2 repository at ``root``."""
        from .filesystem import OrchFileSystem

        self.fake.create_dir(root)
        fs = OrchFileSystem(root=root, skip_instance_cache=True, **options)
        fs.initialize()
        return fs

    def legacy_repo(self, files: Mapping[str, bytes] | None = None, root: str = "/legacy-repo") -> Path:
        """Build a v1 repository at ``root`` (default: every v1 location) and return it."""
        return build_legacy_repo(Path(root), files)


def _pread(fake_os: Any) -> Callable[[int, int, int], bytes]:
    def pread(fd: int, length: int, offset: int) -> bytes:
        fake_os.lseek(fd, offset, 0)
        return fake_os.read(fd, length)

    return pread


def _pwrite(fake_os: Any) -> Callable[[int, bytes, int], int]:
    def pwrite(fd: int, data: bytes, offset: int) -> int:
        fake_os.lseek(fd, offset, 0)
        return fake_os.write(fd, data)

    return pwrite


def _unsupported(name: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EOPNOTSUPP, f"{name} is not available on the fake disk")

    return call


@pytest.fixture
def orch_fake_disk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> FakeDisk:
    import fcntl
    import os

    # Imported before pyfakefs patches modules. It unloads those first imported under
    # its patch, and a second copy of cryptography's classes would break every later
    # use of secrets in the process.
    import cryptography.exceptions
    import cryptography.hazmat.primitives.ciphers.aead
    import cryptography.hazmat.primitives.kdf.hkdf
    import cryptography.hazmat.primitives.kdf.scrypt
    import cryptography.hazmat.primitives.padding

    from . import beneath, filesystem, locks, migrate

    del filesystem, locks, migrate, cryptography
    monkeypatch.setattr(beneath, "_OPENAT2", None)  # the O_NOFOLLOW walk: plain os calls
    fake = request.getfixturevalue("fs")
    # Inside the patch, `os` and `fcntl` are pyfakefs's modules; give them what they lack
    # so that no fake descriptor reaches a real system call.
    import fcntl as fake_fcntl
    import os as fake_os

    if fake_os is os or fake_fcntl is fcntl:  # never give the real modules these stand-ins
        raise RuntimeError("pyfakefs did not patch os and fcntl; orch_fake_disk needs its `fs` fixture")
    fake_os.pread = _pread(fake_os)
    fake_os.pwrite = _pwrite(fake_os)
    fake_os.copy_file_range = _unsupported("copy_file_range")
    fake_fcntl.ioctl = _unsupported("ioctl")  # FICLONE (reflink): a fake no-op would copy nothing
    return FakeDisk(fake)
