"""Run every benchmark and print one markdown table per area."""

from __future__ import annotations

import sys

from . import (
    bench_core,
    bench_locks,
    bench_migrate,
    bench_objects,
    bench_overlay,
    bench_realistic,
    bench_secrets,
    bench_startup,
)

BENCHMARKS = {
    "core": bench_core.run,
    "overlay": bench_overlay.run,
    "realistic": bench_realistic.run,
    "startup": bench_startup.run,
    "locks": bench_locks.run,
    "objects": bench_objects.run,
    "migrate": bench_migrate.run,
    "secrets": bench_secrets.run,
}


def main(argv: list[str]) -> int:
    chosen = argv or list(BENCHMARKS)
    tables = []
    for name in chosen:
        print(f"running benchmark {name} ...", flush=True)
        tables.append(BENCHMARKS[name]())
    print()
    for table in tables:
        print(table.render())
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
