"""Realistic repositories (tests/corpus.py) through every phase: overlay reads, dry run,
migration, doctor, rollback, and every flag combination, with no file ever lost."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import orchfs
from orchfs import doctor, migrate
from orchfs.errors import MigrationConflictError, PathEscapeError
from orchfs.layout import default_layout
from tests.corpus import BUILDERS, SESSION_ID, SOPS_A, SOPS_B

# Inside .orchestrator/, what a migration and its rollback may leave that was not there.
ALLOWED_NEW = {"meta.json", "FORMAT", "audit.jsonl", "locks", "migrations", "tmp", "migration_backup"}
FLAGS = [
    {},
    {"backup": False},
    {"prefer": "new"},
    {"prefer": "legacy"},
    {"prefer": "new", "backup": False},
    {"prefer": "legacy", "backup": False},
    {"prefer": "new", "backup": False, "retire_leftovers": True},
    {"prefer": "legacy", "retire_leftovers": True},
]


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", orchfs.LegacyPathWarning)
        warnings.simplefilter("ignore", orchfs.LegacyConflictWarning)
        yield


def build(tmp_path: Path, name: str) -> str:
    return str(BUILDERS[name](tmp_path / "repo"))


def tree(root: str) -> dict[str, tuple]:
    """Every entry but .git/: kind, mode, mtime and content (directories inside
    .orchestrator/ without their mtimes, which any write there changes)."""
    out: dict[str, tuple] = {}
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in dirs + files:
            full = os.path.join(top, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", st.st_mtime_ns, os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                inside = rel.split(os.sep)[0] == ".orchestrator"
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), None if inside else st.st_mtime_ns)
            else:
                with open(full, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, digest)
    return out


def contents(root: str) -> set[str]:
    """The hash of every regular file under ``root`` (.git/ aside), wherever it lives;
    .gitignore aside, which a migration extends on purpose (and its rollback restores)."""
    return {entry[3] for rel, entry in tree(root).items() if entry[0] == "file" and rel != ".gitignore"}


def assert_rolled_back(root: str, before: dict[str, tuple]) -> None:
    after = tree(root)
    for rel, entry in before.items():
        assert after.get(rel) == entry, rel
    for rel in set(after) - set(before):
        parts = rel.split(os.sep)
        assert parts[0] == ".orchestrator" and (len(parts) == 1 or parts[1] in ALLOWED_NEW), rel
        if parts[1:2] == ["migration_backup"]:
            assert after[rel][0] == "dir", f"backup not emptied: {rel}"


def v1_reads(root: str) -> dict[str, bytes]:
    """logical path -> the v1 bytes that should serve it (first legacy location of each
    entry, where no upper copy exists)."""
    expected: dict[str, bytes] = {}
    for entry in default_layout().entries:
        for legacy in entry.legacy:
            full = os.path.join(root, legacy)
            if not os.path.lexists(full):
                continue
            if os.path.isdir(full):
                for top, _dirs, files in os.walk(full):
                    for name in files:
                        rel = os.path.relpath(os.path.join(top, name), full)
                        expected[f"{entry.logical}/{rel}"] = Path(top, name).read_bytes()
            else:
                expected[entry.logical] = Path(full).read_bytes()
            break
    return {
        logical: data
        for logical, data in expected.items()
        if not os.path.exists(os.path.join(root, ".orchestrator", logical))
    }


def migrate_fully(root: str, **flags) -> migrate.Result:
    """Migrate, settling conflicts with --prefer new when the flags give no preference."""
    try:
        return migrate.apply(root, **flags)
    except MigrationConflictError:
        assert "prefer" not in flags
        return migrate.apply(root, prefer="new", **flags)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_overlay_reads_are_byte_equal(tmp_path, name):
    root = build(tmp_path, name)
    before = tree(root)
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    expected = v1_reads(root)
    if name == "wo-sessions":
        session = Path(root, ".orchestrator", "sessions", SESSION_ID)
        expected = {"state.json": (session / "state.json").read_bytes()}
        expected["log.jsonl"] = (session / "log.jsonl").read_bytes()
        expected["feedback/tool.jsonl"] = Path(root, ".workflow_tool_feedback.jsonl").read_bytes()
        assert fs.session_id == SESSION_ID
    assert expected
    for logical, data in expected.items():
        assert fs.cat_file(logical) == data, logical
    assert tree(root) == before


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_dry_run_changes_nothing(tmp_path, name):
    root = build(tmp_path, name)
    before = tree(root)
    the_plan = migrate.plan(root)
    assert the_plan.total_bytes == sum(m.bytes for m in the_plan.moves)
    result = subprocess.run(
        [sys.executable, "-m", "orchfs.cli", "--root", root, "migrate", "--dry-run", "--json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["applied"] is False
    assert tree(root) == before


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_migrate_then_doctor_is_clean(tmp_path, name):
    root = build(tmp_path, name)
    migrate_fully(root)
    findings = doctor.run(root)
    assert doctor.exit_code(findings) == 0, [(f.id, f.message) for f in findings]
    secrets = os.path.join(root, ".orchestrator", "secrets")
    for top, _dirs, files in os.walk(secrets):
        assert stat.S_IMODE(os.lstat(top).st_mode) == 0o700, top
        for file in files:
            assert stat.S_IMODE(os.lstat(os.path.join(top, file)).st_mode) == 0o600, file
    ignore = Path(root, ".gitignore").read_text()
    assert ".orchestrator/" in ignore.splitlines() or name == "wo-sessions"
    second = migrate.apply(root)
    assert not second.applied


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_rollback_is_byte_exact(tmp_path, name):
    root = build(tmp_path, name)
    before = tree(root)
    root_mtime = os.stat(root).st_mtime_ns
    migrate_fully(root, retire_leftovers=True)
    migrate.rollback(root)
    assert_rolled_back(root, before)
    if ".orchestrator" in before:  # else creating it changed the root's mtime, and it stays
        assert os.stat(root).st_mtime_ns == root_mtime


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()) or "none")
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_no_flag_combination_loses_a_file(tmp_path, name, flags):
    root = build(tmp_path, name)
    before = tree(root)
    every = contents(root)
    try:
        migrate.apply(root, **flags)
    except MigrationConflictError:
        assert "prefer" not in flags
        assert_rolled_back(root, before)  # stopped before anything moved
        return
    assert every <= contents(root), "a file's bytes exist nowhere any more"
    migrate.rollback(root)
    assert_rolled_back(root, before)


def test_two_sops_files_are_a_conflict_everywhere(tmp_path):
    root = build(tmp_path, "two-sops")
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    (pair,) = [c for c in fs.conflicts() if c.logical == "secrets/sops.yaml"]
    assert pair.kind == "legacy-pair" and pair.upper_url.endswith("/secrets.enc.yaml")
    found = [f for f in doctor.run(root) if f.id == "conflict"]
    assert len(found) == 1
    for data in (SOPS_A, SOPS_B):
        assert hashlib.sha256(data).hexdigest()[:12] in found[0].message
    with pytest.raises(MigrationConflictError):
        migrate.apply(root)
    migrate.apply(root, prefer="legacy", backup=False)
    state = Path(root, ".orchestrator")
    assert (state / "secrets" / "sops.yaml").read_bytes() == SOPS_A  # the first in order
    kept = list(state.glob("migration_backup/*/.manus/secrets.enc.yaml"))
    assert [p.read_bytes() for p in kept] == [SOPS_B]  # kept even with --no-backup


def test_orchfs_own_writes_are_not_conflicts(tmp_path):
    root = build(tmp_path, "feedback")
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    with fs.open("log.jsonl", "ab") as f:  # the documented copy-up
        f.write(b'{"event": "resumed"}\n')
    fs.pipe_file("state.json", b'{"phase": "VERIFY"}\n')
    fs.update_json("prd/state.json", lambda doc: doc.update(prd="final"))
    fs.append_line("feedback/tool.jsonl", {"tool": "ruff", "ok": True})
    findings = doctor.run(root)
    assert "conflict" not in {f.id for f in findings}
    stale = [f for f in findings if f.id == "stale-legacy"]
    assert len(stale) == 3 and all(f.severity == "info" for f in stale)
    legacy_log = Path(root, ".workflow_log.jsonl").read_bytes()
    result = migrate.apply(root, backup=False)  # no --prefer needed
    assert result.applied
    kept = list(Path(root, ".orchestrator").glob("migration_backup/*/.workflow_log.jsonl"))
    assert [p.read_bytes() for p in kept] == [legacy_log]
    assert doctor.exit_code(doctor.run(root)) == 0


def test_a_legacy_file_changed_after_the_write_is_a_conflict(tmp_path):
    root = build(tmp_path, "feedback")
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    fs.pipe_file("state.json", b'{"phase": "VERIFY"}\n')
    Path(root, ".workflow_state.json").write_bytes(b'{"phase": "an old orchestrator ran"}\n')
    ids = {f.id for f in doctor.run(root)}
    assert {"conflict", "legacy-changed"} <= ids
    with pytest.raises(MigrationConflictError):
        migrate.apply(root)


def test_a_sqlite_write_after_migration_leaves_the_backup_alone(tmp_path):
    root = build(tmp_path, "wal-approvals")
    migrate.apply(root)
    (backup,) = Path(root, ".orchestrator", "migration_backup").iterdir()
    kept = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in backup.glob(".workflow_approvals.db*")
    }
    assert set(kept) == {".workflow_approvals.db", ".workflow_approvals.db-wal", ".workflow_approvals.db-shm"}
    conn = sqlite3.connect(Path(root, ".orchestrator", "approvals.db"))
    assert conn.execute("SELECT COUNT(*) FROM approvals").fetchone() == (20,)
    conn.execute("INSERT INTO approvals (gate, decision) VALUES ('late', 'approved')")
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the database file itself is written
    conn.close()
    after = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in backup.glob(".workflow_approvals.db*")
    }
    assert after == kept
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    fs.append_line("audit.jsonl", {"action": "late"})  # appended in place on local disk
    migrate.rollback(root)
    conn = sqlite3.connect(Path(root, ".workflow_approvals.db"))
    assert conn.execute("SELECT COUNT(*) FROM approvals").fetchone() == (21,)  # carried back
    conn.close()


def test_an_append_after_migration_leaves_the_backup_alone(tmp_path):
    root = build(tmp_path, "feedback")
    migrate.apply(root)
    (backup,) = Path(root, ".orchestrator", "migration_backup").iterdir()
    kept = (backup / ".workflow_log.jsonl").read_bytes()
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    fs.append_line("log.jsonl", {"event": "after"})
    fs.append_line("feedback/tool.jsonl", {"tool": "after"})
    assert (backup / ".workflow_log.jsonl").read_bytes() == kept
    assert os.lstat(backup / ".workflow_state.json").st_nlink == 1  # a copy, never a hard link
    assert os.lstat(backup / ".workflow_log.jsonl").st_nlink == 1
    # Checkpoints (write-once) are kept as hard links of the migrated files.
    for name in ("cp_1.json", "cp_2.json"):
        kept_checkpoint = os.lstat(backup / ".workflow_checkpoints" / name)
        moved = os.lstat(Path(root, ".orchestrator", "checkpoints", name))
        assert (kept_checkpoint.st_ino, kept_checkpoint.st_nlink) == (moved.st_ino, 2)


def test_workflow_orchestrator_session_layout(tmp_path):
    root = build(tmp_path, "wo-sessions")
    session = Path(root, ".orchestrator", "sessions", SESSION_ID)
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    assert fs.resolve("state.json").layer == "session"
    assert fs.cat_file("state.json") == (session / "state.json").read_bytes()

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "orchfs.cli", "--root", root, *args], capture_output=True, text=True
        )

    # The script's bookkeeping is internal: never listed, refused by name like meta.json.
    internal = ["current", "migration.log", ".migration_complete"]
    assert all((Path(root, ".orchestrator") / name).exists() for name in internal)
    shown = json.loads(cli("ls", "--json").stdout)["entries"]
    assert not set(internal) & {Path(entry["name"]).name for entry in shown}
    assert not set(internal) & (set(fs.ls("", detail=False)) | set(fs.find("", withdirs=True)))
    assert not any(set(internal) & set(dirs + files) for _top, dirs, files in fs.walk(""))
    for name in internal:
        for probe in (fs.info, fs.exists, fs.cat_file):
            with pytest.raises(PathEscapeError, match="internal to .orchestrator"):
                probe(name)
        refused = cli("cat", name)
        assert refused.returncode == 1 and "internal to .orchestrator" in refused.stderr

    listed = json.loads(cli("sessions", "list", "--json").stdout)["sessions"]
    assert [(s["id"], s["current"]) for s in listed] == [(SESSION_ID, True)]
    pruned = cli("sessions", "prune", "--max-age", "1s", "--min-age", "0s", "--json")
    assert pruned.returncode == 0 and json.loads(pruned.stdout)["pruned"] == []
    assert session.is_dir()
    leftovers = [".workflow_checkpoints.bak", ".workflow_log.jsonl.bak", ".workflow_state.json.bak"]
    assert json.loads(cli("migrate", "--dry-run", "--json").stdout)["leftovers"] == leftovers
    found = {f.id: f for f in doctor.run(root)}
    assert list(found["leftover-legacy"].paths) == leftovers
    before = tree(root)
    moved = cli("migrate", "--retire-leftovers", "--no-backup", "--json")
    assert moved.returncode == 0, moved.stderr
    assert not any(Path(root, name).exists() for name in leftovers)
    (backup,) = Path(root, ".orchestrator", "migration_backup").iterdir()
    assert (backup / ".workflow_state.json.bak").is_file()
    assert cli("migrate", "--rollback").returncode == 0
    assert_rolled_back(root, before)


def test_flat_transcripts_are_listed_as_transcripts(tmp_path):
    root = build(tmp_path, "transcripts")
    from orchfs.sessions import Retention, choose, list_sessions

    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    found = {s.id: s.kind for s in list_sessions(fs)}
    assert found == {
        "2026-01-09_14-32-15_auth-feature.log": "transcript",
        "2026-01-09_16-45-22_bugfix-api.log": "transcript",
        "s1": "session",
    }
    chosen = choose(list_sessions(fs), Retention(max_age=1.0, min_age=0.0), now=4e9)
    assert [p.session.id for p in chosen] == ["s1"]


def test_manus_secrets_enc_is_reported(tmp_path):
    root = build(tmp_path, "manus-secrets")
    assert migrate.plan(root).unknown == (".manus/secrets.enc",)
    found = {f.id: f for f in doctor.run(root)}
    assert found["unknown-legacy"].paths == (".manus/secrets.enc",)


def test_rollback_never_reports_success_after_a_loss(tmp_path):
    root = build(tmp_path, "feedback")
    migrate.apply(root, backup=False)
    os.unlink(os.path.join(root, ".orchestrator", "state.json"))  # gone, and no backup of it
    with pytest.raises(orchfs.errors.RollbackIncompleteError, match=r"\.workflow_state\.json"):
        migrate.rollback(root)
    assert Path(root, ".workflow_log.jsonl").is_file()  # everything else came back


def test_a_hand_moved_copy_retired_without_backup_comes_back_on_rollback(tmp_path):
    root = build(tmp_path, "feedback")
    before = tree(root)
    state = Path(root, ".orchestrator")
    state.mkdir()
    (state / "state.json").write_bytes(Path(root, ".workflow_state.json").read_bytes())
    before_hand = tree(root)
    result = migrate.apply(root, backup=False)
    assert ("retire", ".workflow_state.json") in {(m.action, m.source) for m in result.plan.moves}
    migrate.rollback(root)
    assert_rolled_back(root, {**before, **{k: v for k, v in before_hand.items() if k.startswith(".orch")}})


def test_a_portable_repository_keeps_its_gitignore(tmp_path):
    root = build(tmp_path, "feedback")
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    fs.initialize()
    meta = Path(root, ".orchestrator", "meta.json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "portable": True}))
    ignore = Path(root, ".gitignore").read_bytes()
    migrate.apply(root)
    assert Path(root, ".gitignore").read_bytes() == ignore
    assert doctor.exit_code(doctor.run(root)) == 0
