"""pytest plugin (entry point ``pytest11``) for people who test orchestrators.

Fixtures:

* ``orch_memory_fs`` - an :class:`~orchfs.OrchFileSystem` on a fresh in-memory
  repository, forgotten after the test;
* ``legacy_repo_factory`` - a function that builds a v1 (legacy) repository in a
  temporary directory from a mapping of legacy path -> bytes (default: one file for
  every v1 location) and returns its root.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from .sample import LEGACY_SAMPLE, build_legacy_repo

__all__ = ["LEGACY_SAMPLE", "build_legacy_repo", "legacy_repo_factory", "orch_memory_fs"]


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
