"""The command line tried as a new user would: each case here once went wrong."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import orchfs
from orchfs import doctor, migrate
from orchfs.cli import main
from orchfs.testing import build_legacy_repo
from tests.workers import hold_repo_lock

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo(tmp_path):
    root = build_legacy_repo(tmp_path / "repo")
    (root / ".git").mkdir()
    return root


@pytest.fixture
def key_home(tmp_path, monkeypatch):
    """A private XDG config home for the user key file; no key in the environment."""
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    for name in ("ORCHFS_KEY", "ORCHFS_KEY_FILE", "ORCHFS_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)
    return home


def run(*args, input=None, env=None):
    result = CliRunner().invoke(main, [str(a) for a in args], input=input, env=env)
    assert "Traceback" not in result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def cli(*args, stdin=None, env=None, shell_suffix=""):
    """The installed-style entry point in a child process (real stdin/stdout)."""
    command = [sys.executable, "-m", "orchfs.cli", *map(str, args)]
    environment = dict(os.environ, PYTHONPATH=PROJECT, **(env or {}))
    if shell_suffix:
        line = " ".join(f"'{c}'" for c in command) + shell_suffix
        result = subprocess.run(line, shell=True, capture_output=True, text=True, env=environment)
    else:
        result = subprocess.run(command, capture_output=True, text=True, env=environment, stdin=stdin)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def new_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def test_copied_state_fix_names_commands_that_exist(repo):
    assert run("--root", repo, "init").exit_code == 0
    meta = repo / ".orchestrator" / "meta.json"
    document = json.loads(meta.read_text())
    meta.write_text(json.dumps({**document, "root": "/somewhere/else"}))
    (finding,) = [f for f in doctor.run(repo) if f.id == "copied-state"]
    assert "--force" not in finding.fix and "orchfs init --adopt" in finding.fix
    assert run("--root", repo, "init", "--adopt").exit_code == 0
    assert "copied-state" not in {f.id for f in doctor.run(repo)}
    assert json.loads(meta.read_text())["repo_id"] == document["repo_id"]  # same identity


def test_init_twice_says_so(repo):
    first = run("--root", repo, "init")
    assert first.output.startswith("initialised") and "added to .gitignore" in first.output
    second = run("--root", repo, "init")
    assert second.exit_code == 0 and second.output.startswith("already initialised")
    assert json.loads(run("--root", repo, "init", "--json").output)["created"] is False
    assert (repo / ".gitignore").read_text().count(".orchestrator/") == 1


@pytest.mark.parametrize("how", ["option", "environment", "workflow.yaml"])
def test_migrate_honours_the_lock_timeout(repo, how):
    holder = hold_repo_lock(repo)
    try:
        args, env = ["--root", repo, "migrate"], {}
        if how == "option":
            args += ["--lock-timeout", "0.3s"]
        elif how == "environment":
            env["ORCHFS_LOCK_TIMEOUT"] = "0.3"
        else:
            (repo / "workflow.yaml").write_text("name: demo\nstate:\n  lock_timeout: 0.3s\n")
        result = cli(*args, env=env)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1 and "lock" in result.stderr and "--lock-timeout" in result.stderr
    # The wait the command itself measured (start-up excluded): the 10 s default would show >= 10.
    waited = float(re.search(r"gave up after ([0-9.]+)s", result.stderr).group(1))
    assert waited < 10, f"waited {waited:.1f}s: the 10 s default was used"
    assert (repo / ".workflow_state.json").exists()  # nothing moved
    bad = cli("--root", repo, "migrate", "--lock-timeout", "banana")
    assert bad.returncode == 2


def test_rotate_with_a_new_key_file_installs_it(repo, key_home, tmp_path):
    assert run("--root", repo, "secrets", "init").exit_code == 0
    assert run("--root", repo, "secrets", "set", "API_TOKEN", input="s3cret").exit_code == 0
    key_file = tmp_path / "new.key"
    key_file.write_text(new_key() + "\n")
    key_file.chmod(0o644)
    loose = run("--root", repo, "secrets", "rotate", "--new-key-file", key_file)
    assert loose.exit_code == 1 and "chmod 600" in loose.output
    key_file.chmod(0o600)
    rotated = run("--root", repo, "secrets", "rotate", "--new-key-file", key_file)
    assert rotated.exit_code == 0, rotated.output
    assert "now holds the new key" in rotated.output
    user_file = key_home / "orchfs" / "key"
    assert user_file.read_text().strip() == key_file.read_text().strip()
    assert oct(user_file.stat().st_mode & 0o777) == "0o600"
    got = run("--root", repo, "secrets", "get", "API_TOKEN")
    assert got.exit_code == 0 and got.output == "s3cret\n"


def test_put_without_anything_to_write_is_a_usage_error(repo):
    root = str(repo)
    empty = cli("--root", root, "put", "notes/a.md", stdin=subprocess.DEVNULL)
    assert empty.returncode == 2 and "stdin was empty" in empty.stderr
    closed = cli("--root", root, "put", "notes/b.md", shell_suffix=" <&-")
    assert closed.returncode == 2 and "stdin" in closed.stderr
    assert not (repo / ".orchestrator" / "notes").exists()
    explicit = cli("--root", root, "put", "notes/c.md", "-", stdin=subprocess.DEVNULL)
    assert explicit.returncode == 0 and (repo / ".orchestrator" / "notes" / "c.md").read_bytes() == b""
    piped = run("--root", root, "put", "notes/d.md", input="hello")
    assert piped.exit_code == 0 and (repo / ".orchestrator" / "notes" / "d.md").read_text() == "hello"


def test_cat_json(repo):
    document = json.loads(run("--root", repo, "cat", "state.json", "--json").stdout)
    assert document["text"] == (repo / ".workflow_state.json").read_text()
    assert document["layer"] == "legacy" and document["base64"] is None
    (repo / ".orchestrator").mkdir()
    (repo / ".orchestrator" / "blob.bin").write_bytes(b"\xff\x00")
    binary = json.loads(run("--root", repo, "--json", "cat", "blob.bin").stdout)
    assert binary["text"] is None and base64.b64decode(binary["base64"]) == b"\xff\x00"


def test_usage_errors_exit_2(repo, tmp_path):
    missing = cli("--root", tmp_path / "nonexistent", "ls")
    assert missing.returncode == 2 and "no such directory" in missing.stderr
    assert "root=" not in missing.stderr
    banana = cli("--root", repo, "sessions", "prune", "--max-age", "banana")
    assert banana.returncode == 2 and "--max-age" in banana.stderr


def test_empty_secrets_list_prints_nothing(repo, key_home):
    run("--root", repo, "secrets", "init")
    result = cli("--root", repo, "secrets", "list", env={"XDG_CONFIG_HOME": str(key_home)})
    assert result.returncode == 0 and result.stdout == ""
    assert json.loads(run("--root", repo, "secrets", "list", "--json").stdout) == {"secrets": []}


def test_ls_long_labels_layout_directories_by_what_serves_them(repo):
    rows = json.loads(run("--root", repo, "ls", "--json").stdout)["entries"]
    layers = {r["name"]: r["layer"] for r in rows}
    assert layers["feedback"] == "legacy" and layers["prd"] == "legacy"
    text = run("--root", repo, "ls", "-l").stdout
    assert re.search(r"^d\s+0 legacy\s+feedback$", text, re.M)


def test_resolve_secret_names_its_encrypted_file(repo, key_home):
    run("--root", repo, "secrets", "init")
    run("--root", repo, "secrets", "set", "API_TOKEN", input="v")
    rows = json.loads(run("--root", repo, "resolve", "secrets/API_TOKEN", "secrets/NOPE", "--json").stdout)
    assert rows[0]["url"].endswith("/API_TOKEN.enc") and rows[0]["exists"] is True
    assert Path(rows[0]["url"]).is_file()
    assert rows[1]["exists"] is False


def test_resolve_reports_every_path_even_after_an_internal_name(repo):
    result = run("--root", repo, "resolve", "state.json", "meta.json", "log.jsonl", "FORMAT")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["state.json", "meta.json", "log.jsonl", "FORMAT"]
    assert "error" in lines[1] and "internal" in lines[1]
    rows = json.loads(run("--root", repo, "--json", "resolve", "meta.json", "state.json").stdout)
    assert "error" in rows[0] and rows[1]["layer"] == "legacy"


def test_hot_journal_only_for_a_journal_nobody_holds(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    (root / ".git").mkdir()
    db = root / ".workflow_approvals.db"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.close()
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE'); c.execute('INSERT INTO t VALUES (1)')\n"
            "print('open', flush=True); sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "open"
        assert (root / ".workflow_approvals.db-journal").stat().st_size > 0
        blocked = migrate.plan(root).blocked
        crashed = tmp_path / "crashed"
        crashed.mkdir()
        for suffix in ("", "-journal"):  # what a writer that died mid-transaction leaves
            shutil.copyfile(f"{db}{suffix}", crashed / f".workflow_approvals.db{suffix}")
    finally:
        writer.stdin.close()
        writer.wait()
    assert "hot journal" not in blocked and "write transaction" in blocked
    hot = migrate.plan(crashed).blocked
    assert "hot journal" in hot and "stopped" in hot


def test_migration_to_other_storage_names_it(repo):
    name = f"orchfs-test-{os.getpid()}-{time.monotonic_ns()}"
    result = migrate.apply(repo, storage=f"memory://{name}")
    assert f"into memory:///{name}" in result.message and ".orchestrator/" not in result.message


def test_doctor_fix_after_an_interrupted_migration_reads_well(repo):
    killed = cli("--root", repo, "migrate", env={"ORCHFS_FAULT": "migrate.move:3"})
    assert killed.returncode != 0 and migrate.unfinished(repo)
    fixed = cli("--root", repo, "doctor", "--fix")
    line = next(x for x in fixed.stdout.splitlines() if "interrupted migration" in x)
    assert re.fullmatch(
        r"fixed: finished the interrupted migration of \d+ file\(s\) into \.orchestrator/ \(id [\w.-]+\)",
        line,
    )
    assert not migrate.unfinished(repo)


def test_secret_unreadable_names_the_secrets(repo, key_home, monkeypatch):
    monkeypatch.setenv("ORCHFS_KEY", new_key())
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    fs.secrets.set("API_TOKEN", "a")
    fs.secrets.set("DB_PASSWORD", "b")
    monkeypatch.setenv("ORCHFS_KEY", new_key())  # another key: neither opens
    (finding,) = [f for f in doctor.run(repo) if f.id == "secret-unreadable"]
    assert "API_TOKEN" in finding.message and "DB_PASSWORD" in finding.message
    assert set(finding.paths) == {"secrets/API_TOKEN", "secrets/DB_PASSWORD"}


def test_legacy_secret_files_stay_out_of_the_logical_view(repo):
    (repo / ".secrets.enc").write_bytes(b"Salted__" + bytes(range(48)))
    (repo / "secrets.enc.yaml").write_bytes(b"sops: {}\n")
    migrate.apply(repo)
    assert (repo / ".orchestrator" / "secrets" / "legacy.enc").is_file()
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    for name in ("secrets/legacy.enc", "secrets/sops.yaml"):
        assert not fs.exists(name) and not fs.isfile(name), name
    assert [p for p in fs.find("") if p.startswith("secrets")] == []


def test_not_gitignored_asks_git(tmp_path):
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run([git, "init", "-q", str(root)], check=True)
    fs = orchfs.OrchFileSystem(root=str(root), skip_instance_cache=True)
    fs.pipe_file("state.json", b"{}")
    assert "not-gitignored" in {f.id for f in doctor.run(root)}
    (root / ".orchestrator" / ".gitignore").write_text("*\n")  # workflow-orchestrator's own way
    assert "not-gitignored" not in {f.id for f in doctor.run(root)}
    assert run("--root", root, "init").stdout.startswith("already initialised")
    assert not (root / ".gitignore").exists()  # git already ignores it: nothing added


ODD_INPUTS = [
    ["cat", ""],
    ["cat", "../etc/passwd"],
    ["cat", "checkpoints"],
    ["cat", "nope.json", "--json"],
    ["ls", "state.json"],
    ["ls", "nope"],
    ["rm", "nope"],
    ["rm", "checkpoints"],
    ["resolve", "a\x01b"],
    ["resolve", "%2e%2e/x"],
    ["put", "meta.json", "-"],
    ["put", "dir/", "-"],
    ["migrate", "--id", "../x", "--rollback"],
    ["migrate", "--rollback"],
    ["migrate", "--jobs", "0"],
    ["migrate", "--lock-timeout", "-5"],
    ["sessions", "prune", "--max-bytes", "lots"],
    ["sessions", "prune"],
    ["secrets", "get", "NOPE"],
    ["secrets", "set", "../x"],
    ["secrets", "rotate", "--new-key-file", "/nonexistent"],
    ["config", "show", "--orchestrator-version", "not-a-version"],
    ["snapshot", "import", "/nonexistent"],
    ["doctor", "--fix", "--json"],
]


@pytest.mark.parametrize("args", ODD_INPUTS, ids=lambda a: " ".join(a))
def test_no_traceback_for_odd_inputs(repo, key_home, args):
    result = cli("--root", repo, *args, stdin=subprocess.DEVNULL)
    assert result.returncode in (0, 1, 2), result.stderr
