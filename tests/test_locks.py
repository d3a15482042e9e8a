"""Locks, update_json and append_line across threads, processes and backends."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import orchfs
from orchfs import locks
from orchfs.errors import LockTimeout, PathEscapeError

from .conftest import make_fs

PROJECT = Path(__file__).resolve().parent.parent


def spec_of(fs: orchfs.OrchFileSystem, request: pytest.FixtureRequest) -> str:
    options = None
    if fs._state.kind == "object":
        options = request.getfixturevalue("moto_server").storage_options
    return json.dumps({"root": fs.root, "storage_options": options})


def worker(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.workers", *args],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def shared_fs(request, tmp_path):
    return make_fs(request.param, request, tmp_path)


def test_eight_processes_increment_exactly(shared_fs, request):
    spec = spec_of(shared_fs, request)
    procs = [worker("increment", spec, "200") for _ in range(8)]
    for proc in procs:
        assert proc.wait(timeout=600) == 0
    assert json.loads(shared_fs.cat_file("counter.json")) == {"n": 1600}


def test_four_processes_append_every_line(shared_fs, request):
    spec = spec_of(shared_fs, request)
    per_writer = 500 if shared_fs._state.kind == "local" else 50  # S3: moto answers in ~10 ms
    procs = [worker("append", spec, str(per_writer), f"w{i}") for i in range(4)]
    for proc in procs:
        assert proc.wait(timeout=600) == 0
    lines = shared_fs.cat_file("log.jsonl").decode().splitlines()
    assert len(lines) == 4 * per_writer
    records = [json.loads(line) for line in lines]
    for tag in ("w0", "w1", "w2", "w3"):
        assert [r["i"] for r in records if r["writer"] == tag] == list(range(per_writer))


def test_threads_in_one_process_increment_exactly(orch):
    threads_count, each = (8, 25) if orch._state.kind != "object" else (4, 10)

    def run():
        for _ in range(each):
            orch.update_json("counter.json", lambda v: {"n": v.get("n", 0) + 1})

    threads = [threading.Thread(target=run) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert json.loads(orch.cat_file("counter.json")) == {"n": threads_count * each}


def test_lock_is_reentrant_in_one_thread(orch):
    with orch.lock("repo", timeout=1), orch.lock("repo", timeout=1):
        orch.update_json("state.json", lambda v: {"ok": True})
    assert json.loads(orch.cat_file("state.json")) == {"ok": True}


def test_other_thread_times_out_naming_the_holder(orch):
    errors = []
    with orch.lock("repo", timeout=1):

        def contender():
            try:
                with orch.lock("repo", timeout=0.3):
                    pass
            except LockTimeout as exc:
                errors.append(str(exc))

        thread = threading.Thread(target=contender)
        thread.start()
        thread.join()
    assert len(errors) == 1
    assert f"pid {os.getpid()}" in errors[0]
    assert "held for" in errors[0]


def test_kill_9_holder_does_not_block_the_next_acquirer(shared_fs, request):
    spec = spec_of(shared_fs, request)
    lease = 2.0
    holder = worker("hold", spec, "repo", str(lease))
    assert holder.stdout.readline().strip() == "holding"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    with shared_fs.lock("repo", timeout=20, lease=lease):
        waited = time.monotonic() - started
    bound = 0.5 if shared_fs._state.kind == "local" else lease + 3.5  # 1 s Date resolution, probe
    assert waited < bound


def test_paused_live_holder_is_never_taken_over(shared_fs, request):
    spec = spec_of(shared_fs, request)
    holder = worker("hold", spec, "repo", "30")
    try:
        assert holder.stdout.readline().strip() == "holding"
        holder.send_signal(signal.SIGSTOP)
        with pytest.raises(LockTimeout) as info, shared_fs.lock("repo", timeout=1.5, lease=30):
            pass
        assert f"pid {holder.pid}" in str(info.value)
        statuses = {s.name: s for s in locks.inspect(shared_fs)}
        assert statuses["repo"].held and not statuses["repo"].stale
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_dead_holder_record_is_reported_stale(local_repo):
    fs = orchfs.OrchFileSystem(root=local_repo)
    holder = worker("hold", json.dumps({"root": local_repo}), "repo", "30")
    assert holder.stdout.readline().strip() == "holding"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    (status,) = locks.inspect(fs)
    assert status.stale and not status.held and status.holder.pid == holder.pid
    assert [s.name for s in locks.clear_stale(fs)] == ["repo"]
    (status,) = locks.inspect(fs)
    assert not status.stale and status.holder is None


def test_lock_modes_and_symlink_attack(tmp_path):
    """CVE-2025-68146: a symlink planted at the lock path must not touch its target."""
    repo = tmp_path / "repo"
    locks_dir = repo / ".orchestrator" / "locks"
    locks_dir.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"do not truncate me")
    os.symlink(victim, locks_dir / "repo.lock")
    fs = orchfs.OrchFileSystem(root=str(repo))
    with pytest.raises(PathEscapeError, match="symlink"), fs.lock("repo", timeout=0.2):
        pass
    assert victim.read_bytes() == b"do not truncate me"
    os.unlink(locks_dir / "repo.lock")
    with fs.lock("repo", timeout=1):
        assert stat.S_IMODE(locks_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((locks_dir / "repo.lock").stat().st_mode) == 0o600
        assert stat.S_IMODE((locks_dir / "repo.holder").stat().st_mode) == 0o600


def test_symlinked_locks_directory_is_refused(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".orchestrator").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, repo / ".orchestrator" / "locks")
    fs = orchfs.OrchFileSystem(root=str(repo))
    with pytest.raises(PathEscapeError), fs.lock("repo", timeout=0.2):
        pass
    assert os.listdir(elsewhere) == []


def test_bad_lock_names_and_timeouts(orch):
    for bad in ("a/b", "..", ""):
        with pytest.raises(PathEscapeError):
            orch.lock(bad)
    with pytest.raises(ValueError, match="timeout"):
        orch.lock("repo", timeout=-1)


@pytest.mark.slow
def test_sixteen_threads_race_for_one_s3_lease(moto_server, s3_bucket, request, tmp_path):
    fs = make_fs("s3", request, tmp_path)
    for trial in range(50):
        name = f"race{trial}"
        barrier = threading.Barrier(16)
        release = threading.Event()
        winners = []

        def contender(name=name, barrier=barrier, release=release, winners=winners):
            lock = fs.lock(name, timeout=0, lease=30)
            barrier.wait()
            try:
                lock.acquire()
            except LockTimeout:
                return
            winners.append(1)
            release.wait()
            lock.release()

        threads = [threading.Thread(target=contender) for _ in range(16)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while (
            any(t.is_alive() for t in threads)
            and len(winners) + sum(not t.is_alive() for t in threads) < 16
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        time.sleep(0.05)
        release.set()
        for thread in threads:
            thread.join()
        assert len(winners) == 1, f"trial {trial}: {len(winners)} winners"


@pytest.mark.slow
def test_four_processes_race_for_one_s3_lease(moto_server, s3_bucket, request, tmp_path):
    fs = make_fs("s3", request, tmp_path)
    spec = spec_of(fs, request)
    trials = 50
    first_at = time.time() + 3.0  # every worker imported and connected by then
    procs = [worker("race", spec, "prace", str(first_at), str(trials), "0.3") for _ in range(4)]
    outcomes: dict[int, list[str]] = {t: [] for t in range(trials)}
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        for line in out.splitlines():
            trial, outcome = line.split()
            outcomes[int(trial)].append(outcome)
    for trial, seen in outcomes.items():
        assert sorted(seen) == ["lost", "lost", "lost", "won"], f"trial {trial}: {seen}"
