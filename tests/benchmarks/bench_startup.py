"""Whole processes: start-up of ``import orchfs`` and ``orchfs --help`` against a bare
interpreter, and ``orchfs migrate`` of a small realistic v1 repository against the
yardstick script (``yardstick_migrate.py``) on the same input, and against the
third-party floor (:data:`FLOOR`) that any orchfs command pays first.

Two rows break the migrate row down: ``import orchfs.cli`` (the interpreter, click and
orchfs's command table, against ``import click`` alone) and ``orchfs migrate --dry-run``
(all of the command but the moves: configuration, plan, output).

Each run is a fresh ``python`` process; the contenders take turns and each row is
the median of its runs (whole processes on a shared machine: the best run is luck).
orchfs is byte-compiled first, as an installed package is: with
``PYTHONDONTWRITEBYTECODE`` set, every run would otherwise compile it from source.
"""

from __future__ import annotations

import compileall
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import orchfs

from .harness import Row, Table, compare, ops_per_second

RUNS = 15
# What the ``orchfs`` console script runs (without a shell shim in front of it).
CLI = "import sys; from orchfs.cli import main; sys.exit(main())"
YARDSTICK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "yardstick_migrate.py")
# What any orchfs command pays before its own code runs in a repository with a
# workflow.yaml: click and PyYAML loaded (with hashlib, json and ctypes) and the file
# parsed. Its ratio to the yardstick is the closest the migrate row can come.
FLOOR = (
    "import sys, hashlib, json, ctypes, click, yaml; "
    "yaml.compose(open(sys.argv[1] + '/workflow.yaml').read(), Loader=yaml.CSafeLoader)"
)
# The CLI framework alone: what ``import orchfs.cli`` pays before orchfs's own modules.
CLICK = "import click"


def realistic_repository() -> dict[str, bytes]:
    """Twelve files shaped like a real v1 repository (sizes as in workflow-orchestrator's own)."""
    state = {
        "phase": "review",
        "items": [{"id": i, "status": "done", "notes": "n" * 300} for i in range(120)],
    }
    log = b"".join(
        json.dumps({"event": "step", "n": i, "detail": "d" * 180}).encode() + b"\n" for i in range(600)
    )
    checkpoint = {"state": state, "files": [f"src/module_{i}.py" for i in range(400)]}
    return {
        ".workflow_state.json": json.dumps(state, indent=2).encode(),
        ".workflow_log.jsonl": log,
        ".workflow_checkpoints/cp_20260106_053301_bddea0.json": json.dumps(checkpoint).encode(),
        ".workflow_checkpoints/cp_20260106_053904_bddea0.json": json.dumps([checkpoint, 1]).encode(),
        "workflow.yaml": _workflow_yaml(),
        "README.md": b"# project\n" + b"Some documentation.\n" * 400,
        "AGENTS.md": b"# agents\n" + b"Be careful.\n" * 90,
        ".gitignore": b"__pycache__/\n.env\n" * 20,
        ".claude/settings.json": b'{"permissions": {"allow": []}}\n' * 14,
        "docs/SETUP_GUIDE.md": b"## Setup\n" + b"Step.\n" * 2000,
        ".secrets.enc": b"Salted__" + os.urandom(344),
        ".manus/secrets.enc.yaml": b"sops:\n  version: 3.8.1\n" + b"  key: ENC[AES256_GCM,data:abc]\n" * 55,
    }


def _workflow_yaml() -> bytes:
    """About 17 KB and 500 nodes, comments and prose included, like a real workflow.yaml."""
    lines = ['name: "General Development Workflow"', 'version: "2.1"', "settings:"]
    lines += [
        f"  # setting {i}: what it does and how to override it per project\n  key_{i}: value {i}"
        for i in range(20)
    ]
    lines.append("phases:")
    for phase in range(5):
        lines.append(f"  # {'=' * 70}\n  - id: phase_{phase}\n    name: Phase {phase}\n    items:")
        for item in range(12):
            prose = "Check the work against the plan and record what was found. " * 2
            lines.append(
                f"      - id: item_{phase}_{item}\n        name: Item {item}\n"
                f'        description: "{prose.strip()}"\n        required: true'
            )
    return ("\n".join(lines) + "\n").encode()


def _write_tree(root: str, files: dict[str, bytes]) -> str:
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return root


def _process(argv: list[str]) -> None:
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)


def children_cpu() -> float:
    """CPU time (user and system) used so far by the child processes that have ended."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# Wall clock: what a user waits (the targets). CPU time: what the processes themselves
# cost, apart from a loaded machine's queue for a core and apart from waits on the disk
# (orchfs fsyncs its journal and state; the yardstick syncs nothing).
CLOCKS = (("", time.perf_counter), (", CPU time", children_cpu))


def run() -> Table:
    table = Table("Start-up and whole processes (runs/s; ratios: orchfs / peer)")
    python = sys.executable
    compileall.compile_dir(os.path.dirname(orchfs.__file__), quiet=1)
    bare = {"bare python": lambda: _process([python, "-c", "pass"])}
    files = realistic_repository()
    for label, clock in CLOCKS:
        compare(
            table,
            f"import orchfs{label}",
            "runs/s",
            lambda: _process([python, "-c", "import orchfs"]),
            bare,
            1,
            repeat=RUNS,
            statistic=statistics.median,
            clock=clock,
        )
        compare(
            table,
            f"orchfs --help (<= 3x bare){label}",
            "runs/s",
            lambda: _process([python, "-c", CLI, "--help"]),
            bare,
            1,
            ("bare python", 1 / 3) if not label else None,
            repeat=RUNS,
            statistic=statistics.median,
            clock=clock,
        )
        compare(
            table,
            f"  import orchfs.cli{label}",
            "runs/s",
            lambda: _process([python, "-c", "import orchfs.cli"]),
            {**bare, "import click": lambda: _process([python, "-c", CLICK])},
            1,
            repeat=RUNS,
            statistic=statistics.median,
            clock=clock,
        )
        with tempfile.TemporaryDirectory(prefix="orchfs-bench-") as base:
            ours = [_write_tree(os.path.join(base, f"o{i}"), files) for i in range(RUNS)]
            theirs = [_write_tree(os.path.join(base, f"y{i}"), files) for i in range(RUNS)]
            floor_root = _write_tree(os.path.join(base, "floor"), files)  # read, never changed
            # Every run starts with everything on disk, as a real repository is: a run's
            # syncfs must flush neither the set-up's writes nor the yardstick's copies
            # (which it leaves unsynced) on orchfs's time.
            ours_rate, yardstick, floor, dry_run = ops_per_second(
                [
                    lambda ours=ours: _process([python, "-c", CLI, "--root", ours.pop(), "migrate"]),
                    lambda theirs=theirs: _process([python, YARDSTICK, theirs.pop()]),
                    lambda floor_root=floor_root: _process([python, "-c", FLOOR, floor_root]),
                    lambda floor_root=floor_root: _process(
                        [python, "-c", CLI, "--root", floor_root, "migrate", "--dry-run"]
                    ),
                ],
                1,
                RUNS,
                statistics.median,
                clock,
                settle=os.sync,
            )
            table.add(
                Row(
                    f"orchfs migrate, 12-file repository (<= 1.5x yardstick){label}",
                    "runs/s",
                    ours_rate,
                    {"yardstick script": yardstick, "third-party floor": floor},
                    ("yardstick script", 1 / 1.5) if not label else None,
                )
            )
            table.add(
                Row(f"  third-party floor alone{label}", "runs/s", floor, {"yardstick script": yardstick})
            )
            table.add(
                Row(
                    f"  orchfs migrate --dry-run{label}",
                    "runs/s",
                    dry_run,
                    {"yardstick script": yardstick, "third-party floor": floor},
                )
            )
    return table
