"""Sample v1 (legacy) repositories, for the demo, the tests and orchestrator authors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

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


__all__ = [
    "LEGACY_SAMPLE",
    "build_legacy_repo",
]
