"""The overlay on local disk: 2,500 legacy + 2,500 contained files in one logical directory.

Compared with raw ``os`` doing the same work by hand (scandir of both directories,
exists on both locations, reading the legacy file) and, where it imports,
PyFilesystem2's ``MultiFS`` over the same two directories.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import orchfs

from .harness import Table, compare, raw_read

HALF = 2500


def _multifs(legacy_dir: str, contained_dir: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from fs.multifs import MultiFS
            from fs.osfs import OSFS
    except Exception:  # not installed, or broken on this Python: leave the column out
        return None
    multi = MultiFS()
    multi.add_fs("legacy", OSFS(legacy_dir), priority=0)
    multi.add_fs("contained", OSFS(contained_dir), write=True, priority=1)
    return multi


def run() -> Table:
    table = Table("Overlay, local disk, 2,500 legacy + 2,500 contained files (ops/s)")
    with tempfile.TemporaryDirectory(prefix="orchfs-bench-") as repo:
        legacy_dir = os.path.join(repo, ".workflow_checkpoints")
        contained_dir = os.path.join(repo, ".orchestrator", "checkpoints")
        os.makedirs(legacy_dir)
        os.makedirs(contained_dir)
        for i in range(HALF):
            with open(os.path.join(legacy_dir, f"old_{i:05d}.json"), "wb") as f:
                f.write(b'{"legacy": true}')
            with open(os.path.join(contained_dir, f"new_{i:05d}.json"), "wb") as f:
                f.write(b'{"legacy": false}')
        fs = orchfs.OrchFileSystem(root=repo, skip_instance_cache=True)
        multi = _multifs(legacy_dir, contained_dir)

        def raw_ls() -> list:
            out = {}
            for directory in (contained_dir, legacy_dir):
                with os.scandir(directory) as entries:
                    for entry in entries:
                        out.setdefault(entry.name, entry.stat(follow_symlinks=False))
            return list(out.items())

        def with_multifs(peers: dict, multifs_op) -> dict:
            return {**peers, "MultiFS": multifs_op} if multi is not None else peers

        compare(
            table,
            "merged ls (detail)",
            "ls/s",
            lambda: fs.ls("checkpoints"),
            with_multifs({"raw os": raw_ls}, lambda: list(multi.scandir("/", namespaces=["details"]))),
            10,
            ("raw os", 0.6),
        )

        absent_contained = os.path.join(contained_dir, "absent.json")
        absent_legacy = os.path.join(legacy_dir, "absent.json")

        def raw_exists() -> bool:
            return os.path.exists(absent_contained) or os.path.exists(absent_legacy)

        compare(
            table,
            "exists (absent)",
            "ops/s",
            lambda: fs.exists("checkpoints/absent.json"),
            with_multifs({"raw os": raw_exists}, lambda: multi.exists("/absent.json")),
            20000,
            ("raw os", 0.4),
        )

        legacy_file = os.path.join(legacy_dir, "old_00007.json")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compare(
                table,
                "legacy read",
                "ops/s",
                lambda: fs.cat_file("checkpoints/old_00007.json"),
                with_multifs(
                    {"raw os": lambda: raw_read(legacy_file)}, lambda: multi.readbytes("/old_00007.json")
                ),
                10000,
                ("raw os", 0.5),
            )
    return table
