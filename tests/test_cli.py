"""The orchfs command line: every command, --json, exit codes, root discovery."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from orchfs.cli import main
from orchfs.testing import build_legacy_repo

COMMANDS = ["init", "ls", "cat", "put", "rm", "resolve", "migrate", "doctor", "demo", "sessions", "snapshot"]


@pytest.fixture
def repo(tmp_path):
    root = build_legacy_repo(tmp_path / "repo")
    (root / ".git").mkdir()
    return root


def run(*args, cwd=None, input=None):
    runner = CliRunner()
    old = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        return runner.invoke(main, list(args), input=input, catch_exceptions=False)
    finally:
        os.chdir(old)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output
    assert "orchfs " + command in result.output


def test_root_discovery_walks_up(repo):
    nested = repo / "src" / "deep"
    nested.mkdir(parents=True)
    result = run("--json", "resolve", "state.json", cwd=nested)
    assert json.loads(result.stdout)[0]["url"] == str(repo / ".workflow_state.json")


def test_no_repository_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.delenv("ORCHFS_ROOT", raising=False)
    result = CliRunner().invoke(main, ["--root", str(tmp_path / "missing"), "ls"])
    assert result.exit_code == 2  # a usage error, like a missing repository
    outside = tmp_path / "nowhere"
    outside.mkdir()
    old = os.getcwd()
    os.chdir(outside)
    try:
        result = CliRunner().invoke(main, ["ls"])
    finally:
        os.chdir(old)
    assert result.exit_code == 2
    assert "no repository found" in result.output


def test_ls_cat_put_rm_resolve_with_legacy_marker(repo):
    root = str(repo)
    result = subprocess.run(
        [sys.executable, "-m", "orchfs.cli", "--root", root, "cat", "state.json"], capture_output=True
    )
    assert result.stdout == (repo / ".workflow_state.json").read_bytes()
    assert b"using legacy paths - run `orchfs migrate`" in result.stderr
    listing = json.loads(run("--root", root, "ls", "--json").stdout)
    names = {e["name"]: e["layer"] for e in listing["entries"]}
    assert names["state.json"] == "legacy" and names["checkpoints"] == "legacy"
    assert run("--root", root, "put", "notes/todo.md", input="hello").exit_code == 0
    assert (repo / ".orchestrator" / "notes" / "todo.md").read_text() == "hello"
    resolved = json.loads(run("--root", root, "--json", "resolve", "notes/todo.md", "state.json").stdout)
    assert [r["layer"] for r in resolved] == ["contained", "legacy"]
    assert run("--root", root, "rm", "state.json").exit_code == 0
    assert (repo / ".workflow_state.json").exists()
    assert run("--root", root, "cat", "state.json").exit_code == 1
    bad = run("--root", root, "cat", "../etc/passwd")
    assert bad.exit_code == 1


def test_commands_follow_the_configuration(repo, tmp_path, monkeypatch):
    """workflow.yaml's state: section decides where the commands read and write."""
    monkeypatch.setenv("ORCHFS_ORG_CONFIG", str(tmp_path / "no-org.yaml"))
    elsewhere = tmp_path / "elsewhere"
    (repo / "workflow.yaml").write_text(f"state:\n  storage: {elsewhere}\n")
    (repo / ".orchestra.yaml").write_text("state:\n  legacy: 'off'\n")  # the local layer
    root = str(repo)
    assert run("--root", root, "cat", "state.json").exit_code == 1  # legacy: off hides v1
    assert run("--root", root, "put", "state.json", input='{"v": 2}').exit_code == 0
    assert (elsewhere / "state.json").read_bytes() == b'{"v": 2}'
    assert not (repo / ".orchestrator" / "state.json").exists()
    assert run("--root", root, "cat", "state.json").stdout == '{"v": 2}'
    resolved = json.loads(run("--root", root, "--json", "resolve", "state.json").stdout)
    assert resolved[0]["url"] == str(elsewhere / "state.json")
    monkeypatch.setenv("ORCHFS_LEGACY", "read")  # the environment layer sits above the files
    (elsewhere / "state.json").unlink()
    legacy = run("--root", root, "cat", "state.json")
    assert legacy.stdout.encode() == (repo / ".workflow_state.json").read_bytes()
    (repo / "workflow.yaml").write_text("state:\n  legacy: sometimes\n")
    broken = run("--root", root, "cat", "state.json")
    assert broken.exit_code == 1
    assert "workflow.yaml" in broken.output and "legacy" in broken.output


def test_init_adds_gitignore_unless_portable(repo, tmp_path):
    result = run("--root", str(repo), "init", "--json")
    document = json.loads(result.stdout)
    assert document["gitignore_updated"] is True
    assert ".orchestrator/" in (repo / ".gitignore").read_text()
    assert (repo / ".orchestrator" / "FORMAT").read_text() == "2\n"
    assert json.loads((repo / ".orchestrator" / "meta.json").read_text())["repo_id"] == document["repo_id"]
    again = json.loads(run("--root", str(repo), "init", "--json").stdout)
    assert again["gitignore_updated"] is False and again["repo_id"] == document["repo_id"]
    other = tmp_path / "portable"
    other.mkdir()
    run("--root", str(other), "init", "--portable")
    assert not (other / ".gitignore").exists()


def test_migrate_and_doctor_exit_codes(repo):
    root = str(repo)
    run("--root", root, "init")
    dry = json.loads(run("--root", root, "migrate", "--dry-run", "--json").stdout)
    assert dry["applied"] is False and dry["moves"]
    assert run("--root", root, "doctor").exit_code == 1  # mixed layout: v1 files beside .orchestrator/
    done = run("--root", root, "migrate", "--json")
    assert done.exit_code == 0 and json.loads(done.stdout)["applied"] is True
    again = run("--root", root, "migrate")
    assert again.exit_code == 0 and "nothing to migrate" in again.output
    clean = run("--root", root, "doctor", "--json")
    assert clean.exit_code == 0, clean.output
    assert json.loads(clean.stdout)["findings"] == []
    assert run("--root", root, "doctor", "--bogus").exit_code == 2
    back = run("--root", root, "migrate", "--rollback", "--json")
    assert json.loads(back.stdout)["applied"] is True
    assert (repo / ".workflow_state.json").exists()


def test_demo_runs_end_to_end():
    result = subprocess.run(
        [sys.executable, "-m", "orchfs.cli", "demo", "--json"], capture_output=True, text=True, check=True
    )
    steps = json.loads(result.stdout)["steps"]
    assert steps[-1]["detail"] == {"identical to step 1": True}
    assert any("migrate" in s["step"] for s in steps) and any("doctor" in s["step"] for s in steps)


def test_groups_are_importable_for_embedding():
    import click

    @click.group()
    def orchestrator():
        pass

    orchestrator.add_command(main, name="state")
    result = CliRunner().invoke(orchestrator, ["state", "migrate", "--help"])
    assert result.exit_code == 0 and "rollback" in result.output
