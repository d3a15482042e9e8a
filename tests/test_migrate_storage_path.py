"""A migration to a local state directory outside ``.orchestrator/`` named by a relative
path, killed part way and then finished or rolled back with the path given the other way:
``migrate --storage`` on the command line (relative to the working directory) against
``state.storage`` in ``workflow.yaml`` (relative to the file's directory). Both name the
same directory, so the resume or rollback is not refused as a journal naming another
place. Kills are ``ORCHFS_FAULT`` checkpoints in a child process (no timing)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchfs import default_layout, migrate
from orchfs.cli import main
from orchfs.journal import Journal, read_journal
from orchfs.sample import LEGACY_SAMPLE, build_legacy_repo

from .conftest import digest_tree

PROJECT = Path(__file__).resolve().parent.parent
STORE = "../state-elsewhere"  # relative to the repository root (the working directory, or workflow.yaml's)
PLAIN_CONFIG = "name: demo\n"
STORE_CONFIG = f"name: demo\nstate:\n  storage: {STORE}\n"


def _killed(root: Path, fault: str, *args: str) -> None:
    """``orchfs --root ROOT migrate ARGS`` run in ``root`` by a child that SIGKILLs itself at ``fault``."""
    env = dict(os.environ, ORCHFS_FAULT=fault, PYTHONPATH=str(PROJECT))
    command = [sys.executable, "-m", "orchfs.cli", "--root", str(root), "migrate", *args]
    rc = subprocess.run(command, cwd=root, env=env, capture_output=True).returncode
    assert rc == -signal.SIGKILL, f"the child was not killed at {fault} (exit code {rc})"


def _outside_workflow(root: Path) -> dict:
    return {
        k: v
        for k, v in digest_tree(str(root)).items()
        if "workflow.yaml" not in k and ".orchestrator" not in k
    }


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    build_legacy_repo(root)
    (root / "workflow.yaml").write_text(PLAIN_CONFIG)
    return root


@pytest.mark.parametrize("first", ["--storage", "config"])
@pytest.mark.parametrize("then", ["resume", "rollback"])
def test_a_relative_storage_killed_then_finished_the_other_way(repo, tmp_path, monkeypatch, first, then):
    store = (tmp_path / "state-elsewhere").resolve()
    before = _outside_workflow(repo)
    if first == "--storage":  # relative to the working directory of the command
        _killed(repo, "migrate.step:2", "--storage", STORE)
        (repo / "workflow.yaml").write_text(STORE_CONFIG)
        again: list[str] = []
    else:  # relative to workflow.yaml's directory
        (repo / "workflow.yaml").write_text(STORE_CONFIG)
        _killed(repo, "migrate.step:2")
        (repo / "workflow.yaml").write_text(PLAIN_CONFIG)
        again = ["--storage", STORE]
    (journal,) = migrate.unfinished(repo)
    assert read_journal(journal, default_layout())[0]["storage"] == str(store)  # recorded absolute
    monkeypatch.chdir(repo)  # the working directory a --storage path is relative to
    if then == "rollback":
        again.append("--rollback")
    result = CliRunner().invoke(main, ["--root", str(repo), "--json", "migrate", *again])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["applied"] is True
    assert Journal.status(journal) == ("done" if then == "resume" else "rolled-back")
    if then == "resume":
        assert (store / "state.json").read_bytes() == LEGACY_SAMPLE[".workflow_state.json"]
        assert not (repo / ".workflow_state.json").exists()
        assert not migrate.unfinished(repo)
    else:
        assert _outside_workflow(repo) == before
        assert not (store / "state.json").exists()


def test_another_place_is_still_refused(repo, tmp_path, monkeypatch):
    """Normalising both sides keeps the check: a resume naming another directory is refused."""
    _killed(repo, "migrate.step:2", "--storage", STORE)
    monkeypatch.chdir(repo)
    result = CliRunner().invoke(main, ["--root", str(repo), "migrate", "--storage", "../another"])
    assert result.exit_code == 1
    assert "refused" in result.stderr and str((tmp_path / "another").resolve()) in result.stderr
