"""Subprocess workers for the concurrency and crash tests (``python -m tests.workers``)."""

from __future__ import annotations

import json
import sys
import time

import orchfs


def open_fs(spec: str) -> orchfs.OrchFileSystem:
    options = json.loads(spec)
    return orchfs.OrchFileSystem(
        root=options["root"],
        storage_options=options.get("storage_options"),
        skip_instance_cache=True,
    )


def increment(spec: str, count: str) -> None:
    fs = open_fs(spec)
    for _ in range(int(count)):
        fs.update_json("counter.json", lambda value: {"n": value.get("n", 0) + 1}, timeout=120)


def append(spec: str, count: str, tag: str) -> None:
    fs = open_fs(spec)
    for i in range(int(count)):
        fs.append_line("log.jsonl", {"writer": tag, "i": i, "pad": "x" * 100})


def hold(spec: str, name: str, lease: str) -> None:
    """Take the lock, say so, then hold it until killed."""
    fs = open_fs(spec)
    lock = fs.lock(name, timeout=30, lease=float(lease))
    lock.acquire()
    print("holding", flush=True)
    while True:
        time.sleep(0.05)


def race(spec: str, prefix: str, first_at: str, trials: str, period: str) -> None:
    """For each trial, try lock ``prefix<trial>`` once at a shared moment; print outcomes."""
    fs = open_fs(spec)
    held = []  # winners keep every lease to the end, so a late contender still loses
    for trial in range(int(trials)):
        lock = fs.lock(f"{prefix}{trial}", timeout=0, lease=30)
        delay = float(first_at) + trial * float(period) - time.time()
        if delay > 0:
            time.sleep(delay)
        try:
            lock.acquire()
        except orchfs.LockTimeout:
            print(trial, "lost", flush=True)
            continue
        print(trial, "won", flush=True)
        held.append(lock)
    time.sleep(float(period))
    for lock in held:
        lock.release()


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
