"""The backends/ launchers: endpoint on stdout, readiness, capability record, nothing left behind."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc: no extra package needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to see child processes")
@pytest.mark.parametrize(
    "name",
    [
        "moto_s3",
        pytest.param("seaweedfs", marks=pytest.mark.s3),
        pytest.param("azurite", marks=pytest.mark.s3),
        pytest.param("fake_gcs", marks=pytest.mark.s3),
        pytest.param("gcp_storage_emulator", marks=pytest.mark.s3),
    ],
)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_launcher_prints_endpoint_and_leaves_nothing_behind(name, sig):
    launcher = subprocess.Popen(
        [sys.executable, "-m", f"backends.{name}", "--port", "0"],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        endpoint = launcher.stdout.readline().strip()
        if not endpoint:
            reason = launcher.stderr.read().strip().splitlines()[-1:]
            if any("not installable" in r or "BackendUnavailable" in r for r in reason):
                pytest.skip(f"{name} cannot be installed here: {reason}")
            pytest.fail(f"{name} printed no endpoint: {reason}")
        record = json.loads(launcher.stdout.readline())
        assert endpoint.startswith("http://127.0.0.1:")
        assert record["endpoint"] == endpoint
        module = importlib.import_module(f"backends.{name}")
        assert record["capability"] == dataclasses.asdict(module.CAPABILITY)
        children = descendants(launcher.pid)
        assert children, "the launcher runs the service in a child process"
        launcher.send_signal(sig)
        launcher.wait(timeout=30)
        # SIGTERM: the launcher stops its process group; SIGKILL: the children get SIGTERM
        # from the kernel when their parent dies (PR_SET_PDEATHSIG) and exit on their own.
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in children if alive(pid)], f"{name} left processes behind"
        if sig == signal.SIGTERM:  # a clean stop removes the data too
            assert not [path for path in record["data"] if os.path.exists(path)]
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for path in record.get("data", []) if "record" in locals() else []:
            shutil.rmtree(path, ignore_errors=True)  # a killed launcher cannot remove it
