"""The worked example (docs/examples/orchestrator.py) run end to end, as its page shows."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import orchfs
from orchfs.secrets import new_key_text
from orchfs.testing import LEGACY_SAMPLE, build_legacy_repo

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "orchestrator.py"
TOKEN = "tok-PLAINTEXT-MARKER-5b1e"
STEPS = ["plan", "fetch", "build", "test", "report"]


@pytest.fixture
def key(tmp_path, monkeypatch) -> str:
    for name in ("ORCHFS_KEY", "ORCHFS_KEY_FILE", "ORCHFS_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return new_key_text()


def orchestrate(key: str, *args: str) -> dict:
    env = {**os.environ, "ORCHFS_KEY": key}
    out = subprocess.run([sys.executable, str(EXAMPLE), *args], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert TOKEN not in out.stdout + out.stderr
    return json.loads(out.stdout)


def with_token(root: Path, key: str) -> None:
    orchfs.OrchFileSystem(root=str(root), key=key, skip_instance_cache=True).secrets.set("API_TOKEN", TOKEN)


def every_byte(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink())


def test_resumes_a_v1_repository_and_leaves_it_in_place(tmp_path, key):
    repo = build_legacy_repo(tmp_path / "repo")  # v1: step 3 of 5, read where it is
    with_token(repo, key)
    report = orchestrate(key, "--root", str(repo))
    assert report == {"ran": ["test", "report"], "done": STEPS, "session": None}
    for rel, data in LEGACY_SAMPLE.items():  # every v1 file untouched
        assert (repo / rel).read_bytes() == data
    state = repo / ".orchestrator"
    assert json.loads((state / "state.json").read_bytes()) == {"phase": "build", "step": 5, "done": STEPS}
    log = [json.loads(line) for line in (state / "log.jsonl").read_text().splitlines()]
    assert log[:2] == [{"event": "start"}, {"event": "step"}]  # the v1 log, carried over
    assert log[2:] == [{"event": "step", "name": "test"}, {"event": "step", "name": "report"}]
    signed = json.loads((state / "checkpoints" / "report.json").read_bytes())
    body = json.dumps({k: v for k, v in signed.items() if k != "signature"}, sort_keys=True).encode()
    assert signed["signature"] == hmac.new(TOKEN.encode(), body, hashlib.sha256).hexdigest()
    assert signed["inputs"] == ["cp_1.json", "cp_2.json", "test.json"]  # v1 checkpoints seen too
    assert TOKEN.encode() not in every_byte(repo)
    assert orchestrate(key, "--root", str(repo))["ran"] == []  # a rerun has nothing left to do


def test_web_mode_persists_the_session_and_another_machine_finishes_it(tmp_path, key):
    first, second, persist = tmp_path / "machine-1", tmp_path / "machine-2", tmp_path / "persist"
    for root in (first, second):
        root.mkdir()
        with_token(root, key)
    web = ["--web", "--session", "run-7", "--persist", str(persist)]
    assert orchestrate(key, "--root", str(first), *web, "--stop-after", "2")["ran"] == ["plan", "fetch"]
    copied = persist / "run-7"
    assert sorted(p.name for p in (copied / "checkpoints").iterdir()) == ["fetch.json", "plan.json"]
    assert json.loads((copied / "state.json").read_bytes())["done"] == ["plan", "fetch"]
    # machine 1 is gone; machine 2 brings the session back and carries on
    report = orchestrate(key, "--root", str(second), *web)
    assert report == {"ran": ["build", "test", "report"], "done": STEPS, "session": "run-7"}
    session = second / ".orchestrator" / "sessions" / "run-7"
    events = [json.loads(line)["name"] for line in (session / "log.jsonl").read_text().splitlines()]
    assert events == STEPS  # each step once, across both machines
    assert (copied / "state.json").read_bytes() == (session / "state.json").read_bytes()
    assert not (second / ".orchestrator" / "state.json").exists()  # web mode kept it in the session
    assert TOKEN.encode() not in every_byte(persist) + every_byte(second)
