"""orchfs doctor: every finding id it can detect, and the safe fixes."""

from __future__ import annotations

import ast
import json
import os
import signal
import time
from pathlib import Path

import pytest

import orchfs
from orchfs import doctor, migrate
from orchfs.testing import build_legacy_repo
from tests.workers import hold_repo_lock

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ids(root) -> set[str]:
    return {f.id for f in doctor.run(root)}


def fresh_v2(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    (root / ".git").mkdir()
    (root / ".gitignore").write_text(".orchestrator/\n")
    fs = orchfs.OrchFileSystem(root=str(root), skip_instance_cache=True)
    fs.pipe_file("state.json", b"{}")
    return root, fs


def test_clean_v2_repository_has_no_findings(tmp_path):
    root, _ = fresh_v2(tmp_path)
    assert doctor.run(root) == []
    assert doctor.exit_code([]) == 0


def test_v1_repository_is_info_only(tmp_path):
    root = build_legacy_repo(tmp_path / "repo")
    findings = doctor.run(root)
    assert [(f.id, f.severity) for f in findings] == [("mixed-layout", "info")]
    assert doctor.exit_code(findings) == 0
    assert not (root / ".orchestrator").exists()


def test_mixed_layout_conflict_and_legacy_changed(tmp_path):
    root = build_legacy_repo(tmp_path / "repo")
    fs = orchfs.OrchFileSystem(root=str(root), skip_instance_cache=True)
    fs.pipe_file("state.json", b"new")
    fs.rm_file("log.jsonl")
    # Only touched: orchfs superseded them and their bytes still match the records.
    later = time.time() + 5
    os.utime(root / ".workflow_state.json", (later, later))
    os.utime(root / ".workflow_log.jsonl", (later, later))
    found = doctor.run(root)
    assert [(f.id, f.severity) for f in found] == [("mixed-layout", "warning"), ("stale-legacy", "info")]
    # An old orchestrator writes both again (the log after its whiteout, keeping its mtime).
    (root / ".workflow_state.json").write_bytes(b'{"phase": "old orchestrator"}\n')
    with open(root / ".workflow_log.jsonl", "ab") as f:
        f.write(b'{"event": "old orchestrator"}\n')
    os.utime(root / ".workflow_log.jsonl", (0, 0))
    found = doctor.run(root)
    assert {"mixed-layout", "conflict", "legacy-changed"} <= {f.id for f in found}
    conflict = next(f for f in found if f.id == "conflict")
    assert "sha256" in conflict.message and len(conflict.paths) == 2
    changed = [f for f in found if f.id == "legacy-changed"]
    assert {f.paths[0] for f in changed} == {".workflow_state.json", ".workflow_log.jsonl"}


def test_orphan_temp_and_fix(tmp_path):
    root, _ = fresh_v2(tmp_path)
    temp = root / ".orchestrator" / ".orchfs-tmp.state.json.deadbeef"
    temp.write_bytes(b"half")
    old = time.time() - 3600
    os.utime(temp, (old, old))
    recent = root / ".orchestrator" / ".orchfs-tmp.other.cafe"
    recent.write_bytes(b"in flight")
    assert "orphan-temp" in ids(root)
    doctor.fix(root)
    assert not temp.exists() and recent.exists()
    assert "orphan-temp" not in ids(root)


def test_stale_lock_and_fix(tmp_path):
    root, _ = fresh_v2(tmp_path)
    holder = hold_repo_lock(root)
    assert "stale-lock" not in ids(root)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    finding = next(f for f in doctor.run(root) if f.id == "stale-lock")
    assert str(holder.pid) in finding.message
    doctor.fix(root)
    assert "stale-lock" not in ids(root)


def test_loose_permissions_and_fix(tmp_path):
    root, fs = fresh_v2(tmp_path)
    with fs.lock("repo"):
        pass
    os.chmod(root / ".orchestrator" / "locks", 0o755)
    secrets = root / ".orchestrator" / "secrets" / "abc"
    secrets.mkdir(parents=True)
    (secrets / "TOKEN.enc").write_bytes(b"x")
    os.chmod(secrets / "TOKEN.enc", 0o644)
    assert "loose-permissions" in ids(root)
    doctor.fix(root)
    assert "loose-permissions" not in ids(root)
    assert (secrets / "TOKEN.enc").stat().st_mode & 0o777 == 0o600


def test_not_gitignored_and_copied_state_and_newer_layout(tmp_path):
    root, _ = fresh_v2(tmp_path)
    (root / ".gitignore").write_text("build/\n")
    assert "not-gitignored" in ids(root)
    meta_path = root / ".orchestrator" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["root"] = "/somewhere/else"
    meta_path.write_text(json.dumps(meta))
    assert "copied-state" in ids(root)
    (root / ".orchestrator" / "FORMAT").write_text("3\n")
    finding = next(f for f in doctor.run(root) if f.id == "newer-layout")
    assert finding.severity == "error"


def test_unfinished_migration_and_fix(tmp_path):
    root = build_legacy_repo(tmp_path / "repo")
    migrate.apply(root)
    migrate.rollback(root)
    result = migrate.plan(root)
    path = root / ".orchestrator" / "migrations" / "cut.jsonl"
    records = [
        {"t": "begin", "id": "cut", "backup": True, "dirs": {}, "root_mtime_ns": 0, "root": str(root)},
        {
            "t": "intents",
            "steps": [
                [
                    i,
                    m.source,
                    m.target,
                    m.bytes,
                    m.action,
                    0o644,
                    os.lstat(root / m.source).st_mtime_ns,
                    None,
                    None,
                ]
                for i, m in enumerate(result.plan.moves if hasattr(result, "plan") else result.moves)
            ],
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    found = next(f for f in doctor.run(root) if f.id == "unfinished-migration")
    assert found.severity == "error"
    done = doctor.fix(root)
    assert any("finished the interrupted migration" in line for line in done)
    assert "unfinished-migration" not in ids(root)
    assert (root / ".orchestrator" / "state.json").exists()


def test_json_document_shape(tmp_path):
    root = build_legacy_repo(tmp_path / "repo")
    document = json.loads(doctor.to_json(doctor.run(root)))
    (finding,) = document["findings"]
    assert set(finding) == {"id", "severity", "message", "fix", "paths"}


def test_web_incompatible_settings(tmp_path, monkeypatch):
    for name in ("ORCHFS_KEY", "ORCHFS_KEY_FILE", "ORCHFS_PASSPHRASE", "ORCHFS_WEB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-user-key"))
    monkeypatch.setenv("ORCHFS_ORG_CONFIG", str(tmp_path / "no-org.yaml"))
    root, _fs = fresh_v2(tmp_path)
    key = "A" * 43 + "="
    orchfs.OrchFileSystem(root=str(root), key=key, skip_instance_cache=True).secrets.set("TOKEN", "t")
    assert "web-incompatible" not in ids(root)
    (root / "workflow.yaml").write_text("web_mode: true\n")

    def web_messages() -> list[str]:
        found = [f for f in doctor.run(root) if f.id == "web-incompatible"]
        assert all(f.severity == "warning" and "workflow.yaml" in f.paths[0] for f in found)
        return sorted(f.message for f in found)

    messages = web_messages()
    assert len(messages) == 2
    assert "keyring" in messages[0] and "disk" in messages[1]
    monkeypatch.setenv("ORCHFS_KEY", key)
    assert len(web_messages()) == 1
    # State off the machine's disk (doctor looks at the store it names: one that answers).
    (root / "workflow.yaml").write_text(
        f"web_mode: true\nstate:\n  storage: memory://{tmp_path.name}/prefix\n"
    )
    assert web_messages() == []


def test_state_moved_to_a_store_the_configuration_does_not_name_is_a_warning(tmp_path, monkeypatch):
    """`migrate --storage URL` is not remembered: without state.storage every command works
    on the empty local state, which doctor says, naming the journal's store only as text."""
    import uuid

    from orchfs.journal import journals

    root = tmp_path / "repo"
    build_legacy_repo(root, {".workflow_state.json": b'{"step": 3}'})
    storage = f"memory://moved-{uuid.uuid4().hex}/state"
    assert migrate.apply(root, storage=storage).applied
    (found,) = [f for f in doctor.run(root) if f.id == "state-elsewhere"]
    assert found.severity == "warning" and storage in found.message
    assert storage not in found.fix  # a journal is untrusted: never the value offered to configure
    assert doctor.exit_code([found]) == 1

    monkeypatch.setenv("ORCHFS_STORAGE", storage)
    assert not [f for f in doctor.run(root) if f.id == "state-elsewhere"]
    monkeypatch.delenv("ORCHFS_STORAGE")

    # A planted journal naming a store with a terminal escape in it: shown escaped.
    (path,) = journals(root)
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    begin = json.loads(lines[0])
    begin["storage"] = "s3://evil\x1b]0;owned\x07/state"
    with open(path, "wb") as f:
        f.write(json.dumps(begin).encode() + b"\n" + b"".join(lines[1:]))
    (found,) = [f for f in doctor.run(root) if f.id == "state-elsewhere"]
    assert "\x1b" not in found.message and "\x07" not in found.message and "\\x1b" in found.message


def _finding_ids_in_source() -> set[str]:
    """The id of every ``Finding(...)`` that doctor.py makes (its first argument)."""
    tree = ast.parse(Path(doctor.__file__).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Finding":
            first = node.args[0] if node.args else None
            assert isinstance(first, ast.Constant), f"line {node.lineno}: a finding id must be a literal"
            found.add(first.value)
    return found


def test_every_finding_id_doctor_can_emit_is_registered_and_documented():
    """FINDING_IDS is exactly the ids doctor.py uses; each one is in the command line
    reference (docs/cli.md), and the operator guide points there; an unregistered id is
    refused when a finding is made."""
    assert _finding_ids_in_source() == doctor.FINDING_IDS
    reference = (Path(PROJECT) / "docs" / "cli.md").read_text()
    listed = reference[reference.index("Doctor finding ids:") :]
    listed = listed[: listed.index("\n\n")]
    missing = sorted(i for i in doctor.FINDING_IDS if f"`{i}`" not in listed)
    assert not missing, f"docs/cli.md does not list the doctor finding ids {missing}"
    assert "cli.md" in (Path(PROJECT) / "docs" / "operators" / "doctor.md").read_text()
    with pytest.raises(ValueError, match="not a finding id"):
        doctor.Finding("made-up", "error", "message", "fix")
