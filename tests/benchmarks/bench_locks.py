"""Locks and append logs: uncontended acquire+release, append_line against raw O_APPEND."""

from __future__ import annotations

import json
import os
import tempfile
import uuid

import orchfs

from .harness import Row, Table, compare, throughput

RECORD = {"event": "step", "n": 3, "detail": "x" * 80}


def run() -> Table:
    table = Table("Locks and append logs (ops/s; ratios: orchfs / peer)")
    with tempfile.TemporaryDirectory(prefix="orchfs-bench-") as repo:
        local = orchfs.OrchFileSystem(root=repo, skip_instance_cache=True)
        memory = orchfs.OrchFileSystem(root=f"memory://bench-{uuid.uuid4().hex}")

        def cycle(fs: orchfs.OrchFileSystem) -> None:
            with fs.lock("repo", timeout=1):
                pass

        table.add(
            Row(
                "lock acquire+release, local",
                "ops/s",
                throughput(lambda: cycle(local), 5000),
                {"target 20,000/s": 20000.0},
                ("target 20,000/s", 1.0),
            )
        )
        table.add(
            Row(
                "lock acquire+release, memory",
                "ops/s",
                throughput(lambda: cycle(memory), 20000),
            )
        )

        raw_path = os.path.join(repo, "raw.jsonl")

        def raw_append() -> None:
            line = json.dumps(RECORD, separators=(",", ":")).encode() + b"\n"
            fd = os.open(raw_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

        compare(
            table,
            "append_line, local",
            "lines/s",
            lambda: local.append_line("log.jsonl", RECORD),
            {"raw O_APPEND": raw_append},
            10000,
            ("raw O_APPEND", 0.5),
        )
    return table
