"""Subprocess workers for the concurrency and crash tests (``python -m tests.workers``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import orchfs


def open_fs(spec: str) -> orchfs.OrchFileSystem:
    options = json.loads(spec)
    return orchfs.OrchFileSystem(
        root=options["root"],
        storage_options=options.get("storage_options"),
        key=options.get("key"),
        lease=options.get("lease"),
        skip_instance_cache=True,
    )


def hold_repo_lock(root: object) -> subprocess.Popen:
    """Start a process that takes ``root``'s repository lock and holds it until killed;
    return once it holds it (for tests: the caller kills and waits for it)."""
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.workers", "hold", json.dumps({"root": str(root)}), "repo", "30"],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        stdout=subprocess.PIPE,
        text=True,
    )
    if holder.stdout is None or holder.stdout.readline().strip() != "holding":
        holder.kill()
        holder.wait()
        raise RuntimeError("the lock holder never said it holds the lock")
    return holder


def _wait_for_go(said: str) -> None:
    """Say where this process stands, then block until the test writes a line to stdin."""
    print(said, flush=True)
    sys.stdin.readline()


def fenced(spec: str, operation: str, where: str) -> None:
    """One fenced write that stops at a fault point for the test to pause (SIGSTOP) it.

    ``operation``: ``update`` (update_json of counter.json), ``append`` (append_line to
    log.jsonl) or ``secret`` (secrets.set). ``where``: ``read`` stops before the read made
    under the lock (the deadline check then finds the lease gone); ``put`` stops right
    before the write's own request, after the deadline check (the store then refuses
    the stale version). Prints ``refused: <error>`` or ``written``.
    """
    from orchfs.conditional import inject

    fs = open_fs(spec)
    target = {"update": "counter.json", "append": "log.jsonl", "secret": "/MANIFEST"}[operation]
    stops = {"read": ("get",), "put": ("create", "replace")}[where]
    stopped = []

    def hook(request) -> None:
        if request.op in stops and target in request.url and not stopped:
            stopped.append(request)
            _wait_for_go(f"stopped {request.op}")

    with inject(hook):
        try:
            if operation == "update":
                fs.update_json("counter.json", lambda value: {"n": value.get("n", 0) + 1}, timeout=60)
            elif operation == "append":
                fs.append_line("log.jsonl", {"writer": "paused"}, timeout=60)
            else:
                fs.secrets.set("PAUSED", "from the paused holder")
        except orchfs.LockLostError as exc:
            print(f"refused: {exc}", flush=True)
            return
    print("written", flush=True)


def increment(spec: str, count: str) -> None:
    fs = open_fs(spec)
    for _ in range(int(count)):
        fs.update_json("counter.json", lambda value: {"n": value.get("n", 0) + 1}, timeout=120)


def append(spec: str, count: str, tag: str) -> None:
    fs = open_fs(spec)
    for i in range(int(count)):
        fs.append_line("log.jsonl", {"writer": tag, "i": i, "pad": "x" * 100})


def hold_then_update(spec: str) -> None:
    """Hold the repository lock, say so, and try one increment when told to go (the
    simulated-hosts test cuts this host's link in between). Prints ``refused <deadline>``
    (the last lease deadline, ``time.monotonic()``) or ``written``."""
    fs = open_fs(spec)
    lock = fs.lock("repo", timeout=60, renew=0.5)
    lock.acquire()
    _wait_for_go("holding")
    deadline = lock.deadline
    try:
        with lock:  # the outer acquisition above is this block's too (re-entrant)
            fs.update_json("counter.json", lambda value: {"n": value.get("n", 0) + 1})
        lock.release()
    except orchfs.LockLostError:
        print(f"refused {deadline}", flush=True)
        return
    print("written", flush=True)


def timed_increment(spec: str) -> None:
    """One increment; prints ``acquired <time.monotonic()>`` from inside the lock."""
    fs = open_fs(spec)

    def bump(value):
        print(f"acquired {time.monotonic()}", flush=True)
        return {"n": value.get("n", 0) + 1}

    fs.update_json("counter.json", bump, timeout=120)


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
