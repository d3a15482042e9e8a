"""Timing helpers: best-of-N throughput and a table of ratios against peers."""

from __future__ import annotations

import gc
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def ops_per_second(
    operations: list[Callable[[], object]],
    number: int,
    repeat: int = 5,
    statistic: Callable[[list[float]], float] = min,
    clock: Callable[[], float] = time.perf_counter,
    settle: Callable[[], object] | None = None,
) -> list[float]:
    """Throughput of each operation from ``repeat`` rounds of ``number`` calls.

    The operations take turns within every round (GC off while timing), so a slow
    spell of the machine or the disk falls on all of them rather than on one; the
    order of the turns is shuffled every round (with a fixed seed), so that no
    operation always follows the same one: a write that leaves dirty metadata behind
    (DirFileSystem's, which does not fsync) makes the next fsync commit it. The
    round times are summed up by ``statistic``: the best round for CPU-bound calls,
    the median of many single calls for fsync-bound ones, whose best is luck.
    ``clock=time.process_time`` times CPU-bound calls by the CPU they use (user and
    system): on a shared, loaded machine the wall clock mostly measures waiting for a
    core, which no ratio survives. ``settle``, when given, runs before every turn,
    off the clock (``os.sync``: what one process left unwritten is not flushed by the
    next one's ``syncfs`` on its time).
    """
    rounds: list[list[float]] = [[] for _ in operations]
    turns = list(enumerate(operations))
    shuffle = random.Random(len(operations) * repeat).shuffle
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            shuffle(turns)
            for index, operation in turns:
                if settle is not None:
                    settle()
                start = clock()
                for _ in range(number):
                    operation()
                rounds[index].append(clock() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return [number / statistic(times) for times in rounds]


def throughput(operation: Callable[[], object], number: int, repeat: int = 5) -> float:
    """Best throughput of one operation on its own (for rows measured against a fixed target)."""
    return ops_per_second([operation], number, repeat)[0]


@dataclass
class Row:
    name: str
    unit: str
    orch: float
    peers: dict[str, float] = field(default_factory=dict)
    target: tuple[str, float] | None = None

    def ratio(self, peer: str) -> float:
        return self.orch / self.peers[peer]

    def verdict(self) -> str:
        if self.target is None:
            return ""
        peer, wanted = self.target
        return "ok" if self.ratio(peer) >= wanted else "BELOW TARGET"


@dataclass
class Table:
    title: str
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  measured {row.name}", flush=True)

    def render(self) -> str:
        peers = sorted({p for row in self.rows for p in row.peers})
        header = ["operation", "orchfs"] + [f"{p}" for p in peers] + [f"x {p}" for p in peers]
        header += ["target", "verdict"]
        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for row in self.rows:
            cells = [row.name, f"{_figure(row.orch)} {row.unit}"]
            cells += [_figure(row.peers[p]) if p in row.peers else "-" for p in peers]
            cells += [f"{row.ratio(p):.2f}x" if p in row.peers else "-" for p in peers]
            cells.append(f">= {row.target[1]:.2f}x {row.target[0]}" if row.target else "")
            cells.append(row.verdict())
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _figure(value: float) -> str:
    """A rate as a table shows it: whole numbers from 100 up, else three significant
    digits (a whole process runs 5 to 25 times a second; 5 and 6 are 20% apart)."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def compare(
    table: Table,
    name: str,
    unit: str,
    orch: Callable[[], object],
    peers: dict[str, Callable[[], object]],
    number: int,
    target: tuple[str, float] | None = None,
    repeat: int = 5,
    statistic: Callable[[list[float]], float] = min,
    clock: Callable[[], float] = time.perf_counter,
) -> None:
    """Time orchfs and each peer doing the same operation, in the same run; add the row."""
    ours, *theirs = ops_per_second([orch, *peers.values()], number, repeat, statistic, clock)
    table.add(Row(name, unit, ours, dict(zip(peers, theirs, strict=True)), target))


def raw_read(path: str) -> bytes:
    """What a careful program does by hand to read a whole small file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, os.fstat(fd).st_size + 1)
    finally:
        os.close(fd)
