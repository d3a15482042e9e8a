"""What an orchestrator really asks, on local disk: 5,000 distinct paths in one logical
directory, half still in the v1 location and half in ``.orchestrator/``.

Each call takes the next path of the 5,000 (so no one path's memo answers for all of
them). Peers do the same work on the physical paths, which they are told: raw ``os``
and fsspec's ``DirFileSystem`` rooted at the repository. Every row's ratios come from
the same run, the operations taking turns in every round. Reads, lookups and listings
are timed in CPU time (see ``harness.ops_per_second``); durable writes, which wait on
the disk, by the wall clock.
"""

from __future__ import annotations

import itertools
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

import orchfs

from .bench_core import raw_durable_write
from .harness import Table, compare, raw_read

HALF = 2500
PAYLOAD = b"x" * 1024
LEGACY_DIR = ".workflow_checkpoints"
CONTAINED_DIR = ".orchestrator/checkpoints"


def cycling(values: list[str], call: Callable[[str], object]) -> Callable[[], object]:
    """One call per invocation, each on the next of ``values``."""
    following = itertools.cycle(values).__next__
    return lambda: call(following())


def _build(repo: str) -> tuple[list[str], list[str]]:
    """The files; returns (logical names, physical paths relative to the root), interleaved."""
    os.makedirs(os.path.join(repo, LEGACY_DIR))
    os.makedirs(os.path.join(repo, CONTAINED_DIR))
    logical, physical = [], []
    for i in range(HALF):
        for directory, name in ((LEGACY_DIR, f"old_{i:05d}.json"), (CONTAINED_DIR, f"new_{i:05d}.json")):
            with open(os.path.join(repo, directory, name), "wb") as f:
                f.write(PAYLOAD)
            logical.append(f"checkpoints/{name}")
            physical.append(f"{directory}/{name}")
    return logical, physical


def run() -> Table:
    table = Table(
        "Realistic, local disk: 5,000 distinct paths, half v1 and half contained (ops/s; ratios: orchfs / peer)"
    )
    with tempfile.TemporaryDirectory(prefix="orchfs-bench-") as repo:
        logical, physical = _build(repo)
        absolute = [os.path.join(repo, p) for p in physical]
        fs = orchfs.OrchFileSystem(root=repo, skip_instance_cache=True)
        dirfs = DirFileSystem(path=repo, fs=LocalFileSystem())
        n = len(logical)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one LegacyPathWarning per v1 file, first round only
            compare(
                table,
                "read 1 KiB (cat_file)",
                "ops/s",
                cycling(logical, fs.cat_file),
                {"raw os": cycling(absolute, raw_read), "DirFileSystem": cycling(physical, dirfs.cat_file)},
                n,
                ("raw os", 0.9),
                clock=time.process_time,
            )
        compare(
            table,
            "exists (present)",
            "ops/s",
            cycling(logical, fs.exists),
            {"raw os": cycling(absolute, os.path.exists), "DirFileSystem": cycling(physical, dirfs.exists)},
            n,
            ("raw os", 0.7),
            clock=time.process_time,
        )
        absent = [f"checkpoints/absent_{i:05d}.json" for i in range(n)]
        absent_physical = [f"{CONTAINED_DIR}/absent_{i:05d}.json" for i in range(n)]
        absent_absolute = [os.path.join(repo, p) for p in absent_physical]
        compare(
            table,
            "exists (absent)",
            "ops/s",
            cycling(absent, fs.exists),
            {
                "raw os": cycling(absent_absolute, os.path.exists),
                "DirFileSystem": cycling(absent_physical, dirfs.exists),
            },
            n,
            ("raw os", 0.45),
            clock=time.process_time,
        )
        directories = [os.path.join(repo, CONTAINED_DIR), os.path.join(repo, LEGACY_DIR)]

        def raw_names() -> list[str]:
            return list(dict.fromkeys(itertools.chain.from_iterable(map(os.listdir, directories))))

        def dirfs_names() -> list[str]:
            return dirfs.ls(CONTAINED_DIR, detail=False) + dirfs.ls(LEGACY_DIR, detail=False)

        compare(
            table,
            "merged ls, 5,000 names (vs os.listdir)",
            "ls/s",
            lambda: fs.ls("checkpoints", detail=False),
            {"raw os": raw_names, "DirFileSystem": dirfs_names},
            10,
            ("raw os", 0.4),
            clock=time.process_time,
        )

        def raw_detail() -> list:
            out = {}
            for directory in directories:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        out.setdefault(entry.name, entry.stat(follow_symlinks=False))
            return list(out.items())

        def dirfs_detail() -> list:
            return dirfs.ls(CONTAINED_DIR, detail=True) + dirfs.ls(LEGACY_DIR, detail=True)

        compare(
            table,
            "merged ls, 5,000 entries (detail)",
            "ls/s",
            lambda: fs.ls("checkpoints", detail=True),
            {"raw os": raw_detail, "DirFileSystem": dirfs_detail},
            10,
            ("raw os", 0.6),
            clock=time.process_time,
        )
        written = [f"checkpoints/w_{i:05d}.json" for i in range(500)]
        # The peers write into a twin of the repository on the same disk, not into the one
        # orchfs watches: in real use nothing else writes there, and orchfs's layer index
        # would otherwise be charged for reading the peers' change events.
        twin = tempfile.mkdtemp(prefix="orchfs-bench-twin-", dir=os.path.dirname(repo))
        _build(twin)
        contained = os.path.join(twin, CONTAINED_DIR)
        twin_dirfs = DirFileSystem(path=twin, fs=LocalFileSystem())
        compare(
            table,
            "durable atomic write, distinct paths",
            "ops/s",
            cycling(written, lambda p: fs.pipe_file(p, PAYLOAD)),
            {
                "raw os": cycling(
                    [p.rpartition("/")[2] for p in written],
                    lambda name: raw_durable_write(contained, f"raw_{name}", PAYLOAD),
                ),
                "DirFileSystem": cycling(
                    [f"{CONTAINED_DIR}/d_{p.rpartition('/')[2]}" for p in written],
                    lambda p: twin_dirfs.pipe_file(p, PAYLOAD),
                ),
            },
            1,
            ("raw os", 0.9),
            repeat=500,
            statistic=statistics.median,
        )
        shutil.rmtree(twin)
    return table
