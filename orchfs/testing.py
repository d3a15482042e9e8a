"""pytest plugin (entry point ``pytest11``) for people who test orchestrators.

Fixtures:

* ``orch_memory_fs`` - an :class:`~orchfs.OrchFileSystem` on a fresh in-memory
  repository, forgotten after the test;
* ``legacy_repo_factory`` - a function that builds a v1 (legacy) repository in a
  temporary directory from a mapping of legacy path -> bytes (default: one file for
  every v1 location) and returns its root.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

LEGACY_SAMPLE: dict[str, bytes] = {
    ".workflow_state.json": b'{"phase": "build", "step": 3}\n',
    ".workflow_log.jsonl": b'{"event": "start"}\n{"event": "step"}\n',
    ".workflow_checkpoints/cp_1.json": b'{"checkpoint": 1}\n',
    ".workflow_checkpoints/cp_2.json": b'{"checkpoint": 2}\n',
    ".workflow_tool_feedback.jsonl": b'{"tool": "pytest", "ok": true}\n',
    ".workflow_process_feedback.jsonl": b'{"process": "review"}\n',
    ".workflow_sessions/s1/state.json": b'{"session": "s1"}\n',
    ".orchestra.yaml": b"state:\n  legacy: read\n",
    ".claude/prd_state.json": b'{"prd": "draft"}\n',
    "workflow.yaml": b"name: demo\n",
}


def build_legacy_repo(root: str | os.PathLike[str], files: Mapping[str, bytes] | None = None) -> Path:
    """Write a v1 repository (legacy paths -> bytes) under ``root``; return it."""
    base = Path(root)
    for rel, data in (LEGACY_SAMPLE if files is None else files).items():
        target = base / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return base


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
