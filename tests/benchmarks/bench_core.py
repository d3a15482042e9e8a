"""Core filesystem on local disk: orchfs against raw ``os`` and fsspec's DirFileSystem."""

from __future__ import annotations

import os
import statistics
import tempfile

from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

import orchfs
from orchfs.atomic import fsync_directory

from .harness import Table, compare, raw_read

PAYLOAD = b'{"phase": "build", "step": 3, "notes": "' + b"x" * 400 + b'"}\n'


def raw_durable_write(directory: str, name: str, data: bytes) -> None:
    """What a careful program does by hand: temp file, fsync, rename, fsync dir."""
    temp = os.path.join(directory, f".tmp.{name}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    os.replace(temp, os.path.join(directory, name))
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync_directory(dir_fd)
    finally:
        os.close(dir_fd)


def run() -> Table:
    table = Table("Core filesystem, local disk (ops/s; ratios: orchfs / peer)")
    with tempfile.TemporaryDirectory(prefix="orchfs-bench-") as repo:
        fs = orchfs.OrchFileSystem(root=repo, skip_instance_cache=True)
        state = os.path.join(repo, ".orchestrator")
        dirfs = DirFileSystem(path=state, fs=LocalFileSystem())
        fs.pipe_file("state.json", PAYLOAD)
        path = os.path.join(state, "state.json")

        compare(
            table,
            "read (cat_file)",
            "ops/s",
            lambda: fs.cat_file("state.json"),
            {"raw os": lambda: raw_read(path), "DirFileSystem": lambda: dirfs.cat_file("state.json")},
            5000,
            ("raw os", 0.8),
            repeat=20,
        )
        for label, name in (("present", "state.json"), ("absent", "absent.json")):
            physical = os.path.join(state, name)
            compare(
                table,
                f"exists ({label})",
                "ops/s",
                lambda n=name: fs.exists(n),
                {
                    "raw os": lambda p=physical: os.path.exists(p),
                    "DirFileSystem": lambda n=name: dirfs.exists(n),
                },
                10000,
                ("raw os", 0.7),
                repeat=20,
            )

        big = os.path.join(state, "checkpoints")
        os.makedirs(big)
        for i in range(5000):
            with open(os.path.join(big, f"cp_{i:05d}.json"), "wb") as f:
                f.write(b"{}")

        def raw_ls() -> list:
            with os.scandir(big) as entries:
                return [(e.name, e.stat(follow_symlinks=False)) for e in entries]

        compare(
            table,
            "ls 5,000 entries (detail)",
            "ls/s",
            lambda: fs.ls("checkpoints"),
            {"raw os": raw_ls, "DirFileSystem": lambda: dirfs.ls("checkpoints")},
            10,
            ("raw os", 0.6),
            repeat=10,
        )

        def raw_plain_write() -> None:
            with open(os.path.join(state, "plain.json"), "wb") as f:
                f.write(PAYLOAD)

        compare(
            table,
            "write (pipe_file, durable)",
            "ops/s",
            lambda: fs.pipe_file("written.json", PAYLOAD),
            {"raw os": raw_plain_write, "DirFileSystem": lambda: dirfs.pipe_file("d.json", PAYLOAD)},
            1,
            repeat=1000,
            statistic=statistics.median,
        )
        compare(
            table,
            "durable atomic write",
            "ops/s",
            lambda: fs.pipe_file("durable.json", PAYLOAD),
            {"raw os": lambda: raw_durable_write(state, "raw.json", PAYLOAD)},
            1,
            ("raw os", 0.9),
            repeat=1000,
            statistic=statistics.median,
        )
    return table
