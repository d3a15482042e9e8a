"""Realistic repositories for the tests, built by code (never downloaded).

Each builder writes one repository shaped like those found in workflow-orchestrator's
public history: files 0664 and directories 0775 with commit-time mtimes (what
``git archive`` gives), JSON state and logs of a plausible size, ciphertext-looking
secret files. :data:`BUILDERS` names them all.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

COMMIT_TIME = 1767744000  # 2026-01-07, like the snapshots of that history
FILE_MODE = 0o664
DIR_MODE = 0o775
SESSION_ID = "faa4c3ec"


def _write(root: Path, rel: str, data: bytes, mtime: int = COMMIT_TIME) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, FILE_MODE)
    os.utime(path, (mtime, mtime))


def _settle(root: Path) -> None:
    """Directory modes and mtimes as a checkout gives them (deepest first)."""
    for top, dirs, _files in sorted(os.walk(root), key=lambda t: -t[0].count(os.sep)):
        for name in dirs:
            full = os.path.join(top, name)
            if name == ".git" or os.path.islink(full):
                continue
            os.chmod(full, DIR_MODE)
            os.utime(full, (COMMIT_TIME, COMMIT_TIME))
    os.utime(root, (COMMIT_TIME, COMMIT_TIME))


def _state(phase: str, items: int) -> bytes:
    document = {
        "workflow_id": "wf_bddea0",
        "phase": phase,
        "items": [{"id": f"item_{i}", "status": "completed", "notes": "x" * 40} for i in range(items)],
        "metadata": {"task": "Add OAuth login", "version": "2.1"},
    }
    return json.dumps(document, indent=2).encode() + b"\n"


def _log(events: int) -> bytes:
    return b"".join(
        json.dumps(
            {"timestamp": f"2026-01-06T05:{i % 60:02d}:00", "event": "item_completed", "n": i}
        ).encode()
        + b"\n"
        for i in range(events)
    )


def _checkpoint(n: int) -> bytes:
    return json.dumps({"checkpoint_id": f"cp_2026010605330{n}_bddea0", "phase": "EXECUTE"}).encode() + b"\n"


SOPS_A = b"api_key: ENC[AES256_GCM,data:Zm9vYmFy,iv:aXY=,tag:dGFn,type:str]\nsops:\n  version: 3.8.1\n"
SOPS_B = b"api_key: ENC[AES256_GCM,data:YmF6cXV4,iv:aXYy,tag:dGFnMg==,type:str]\nsops:\n  version: 3.9.0\n"
OPENSSL_BLOB = b"Salted__" + bytes(range(8)) + bytes(range(64, 128))


def _base(root: Path) -> None:
    """What every snapshot holds beside its state: the user's own files."""
    _write(root, "workflow.yaml", b"name: development\nphases:\n  - id: PLAN\n  - id: EXECUTE\n")
    _write(root, "README.md", b"# workflow-orchestrator\n")
    _write(root, ".gitignore", b"__pycache__/\n.env\n")
    _write(root, ".sops.yaml", b"creation_rules:\n  - path_regex: secrets\\.enc\\.yaml$\n")
    _write(root, "docs/SETUP_GUIDE.md", b"# Setup\n")
    _write(root, "test_project/workflow.yaml", b"name: nested\n")
    _write(root, "test_project/.workflow_state.json", _state("PLAN", 1))
    _write(root, "test_project/.workflow_log.jsonl", _log(3))
    (root / ".git").mkdir(parents=True, exist_ok=True)


def v1_with_feedback(root: Path) -> Path:
    """State, log, checkpoints, both feedback logs, .secrets.enc, .manus/secrets.enc.yaml."""
    _base(root)
    _write(root, ".workflow_state.json", _state("EXECUTE", 40))
    _write(root, ".workflow_log.jsonl", _log(200))
    for n in (1, 2):
        _write(root, f".workflow_checkpoints/cp_{n}.json", _checkpoint(n))
    latest = root / ".workflow_checkpoints" / "latest.json"
    os.symlink("cp_2.json", latest)  # a relative link: it must still point at cp_2 after a move
    os.utime(latest, (COMMIT_TIME, COMMIT_TIME), follow_symlinks=False)
    _write(root, ".workflow_tool_feedback.jsonl", b'{"tool": "pytest", "ok": true}\n' * 5)
    _write(root, ".workflow_process_feedback.jsonl", b'{"process": "review", "score": 4}\n' * 3)
    _write(root, ".secrets.enc", OPENSSL_BLOB)
    _write(root, ".manus/secrets.enc.yaml", SOPS_A)
    _write(root, ".manus/README.md", b"# manus\n")
    _settle(root)
    return root


def two_sops(root: Path) -> Path:
    """Both SOPS locations, with different contents; PRD state, checkpoints, .secrets.enc."""
    _base(root)
    _write(root, ".claude/prd_state.json", b'{"prd": "draft", "tasks": 12}\n')
    _write(root, ".claude/settings.json", b"{}\n")
    for n in (1, 2):
        _write(root, f".workflow_checkpoints/cp_{n}.json", _checkpoint(n))
    _write(root, ".secrets.enc", OPENSSL_BLOB)
    _write(root, "secrets.enc.yaml", SOPS_A)
    _write(root, ".manus/secrets.enc.yaml", SOPS_B)
    _settle(root)
    return root


def wal_approvals(root: Path) -> Path:
    """Mixed v1 + v2: the repository's own .orchestrator/ (no FORMAT) beside v1 files, a
    WAL-mode SQLite approvals database with its -wal and -shm (as a stopped process leaves
    them), .orchestrator.yaml, checkpoints, PRD state, secrets.enc.yaml."""
    _base(root)
    _write(root, ".orchestrator/state.json", _state("REVIEW", 10))
    _write(root, ".orchestrator/audit.jsonl", b'{"action": "approve"}\n' * 4)
    _write(root, ".orchestrator/review_gpt4.md", b"# review\nlooks fine\n")
    _write(root, ".orchestrator.yaml", b"state:\n  legacy: read\n")
    _write(root, ".claude/prd_state.json", b'{"prd": "final"}\n')
    for n in (1, 2):
        _write(root, f".workflow_checkpoints/cp_{n}.json", _checkpoint(n))
    _write(root, "secrets.enc.yaml", SOPS_A)
    build_wal_database(root / ".workflow_approvals.db")
    _settle(root)
    return root


def build_wal_database(path: Path, rows: int = 20) -> None:
    """A WAL-mode database whose last transactions are still in ``-wal`` (a copy taken
    while its writer ran): the three files, none of them locked."""
    scratch = path.parent / ".scratch-approvals"
    scratch.mkdir()
    db = scratch / "approvals.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE approvals (id INTEGER PRIMARY KEY, gate TEXT, decision TEXT)")
    for i in range(rows):
        conn.execute("INSERT INTO approvals (gate, decision) VALUES (?, ?)", (f"gate_{i}", "approved"))
        conn.commit()
    for suffix in ("", "-wal", "-shm"):
        shutil.copyfile(f"{db}{suffix}", f"{path}{suffix}")
        os.chmod(f"{path}{suffix}", FILE_MODE)
        os.utime(f"{path}{suffix}", (COMMIT_TIME, COMMIT_TIME))
    conn.close()
    shutil.rmtree(scratch)


def manus_secrets(root: Path) -> Path:
    """``.manus/secrets.enc`` (a name no layout entry has) beside the SOPS file and state."""
    _base(root)
    _write(root, ".workflow_state.json", _state("PLAN", 5))
    _write(root, ".workflow_log.jsonl", _log(20))
    _write(root, ".workflow_checkpoints/cp_1.json", _checkpoint(1))
    _write(root, ".manus/secrets.enc", OPENSSL_BLOB[::-1])
    _write(root, ".manus/secrets.enc.yaml", SOPS_A)
    _settle(root)
    return root


def wo_sessions(root: Path, marker: bool = True) -> Path:
    """What workflow-orchestrator's ``scripts/migrate_to_sessions.py`` leaves: the v1
    state copied (``shutil.copy2``/``copytree``) into ``.orchestrator/sessions/<id>/``,
    ``current`` naming it (no newline), ``.orchestrator/.gitignore`` holding ``*``, its
    ``migration.log``, the originals renamed to ``.bak``; ``.migration_complete`` too
    when ``marker``."""
    v1_with_feedback(root)
    state = root / ".orchestrator"
    session = state / "sessions" / SESSION_ID
    session.mkdir(parents=True)
    shutil.copy2(root / ".workflow_state.json", session / "state.json")
    shutil.copy2(root / ".workflow_log.jsonl", session / "log.jsonl")
    shutil.copytree(root / ".workflow_checkpoints", session / "checkpoints")
    (state / "current").write_text(SESSION_ID)
    (state / ".gitignore").write_text("*\n")
    for name in (".workflow_state.json", ".workflow_log.jsonl", ".workflow_checkpoints"):
        os.rename(root / name, root / f"{name}.bak")
    actions = ["CREATE_DIR", "COPY", "COPY", "COPY_TREE", "CREATE", "CREATE", "BACKUP", "BACKUP", "BACKUP"]
    (state / "migration.log").write_text(
        "".join(json.dumps({"action": a, "message": a.lower()}) + "\n" for a in actions)
    )
    if marker:
        (state / ".migration_complete").write_text("")
    return root


def transcripts(root: Path) -> Path:
    """v1 ``.workflow_sessions/`` holding flat transcript files and one session directory."""
    _base(root)
    _write(root, ".workflow_state.json", _state("EXECUTE", 3))
    _write(
        root, ".workflow_sessions/2026-01-09_14-32-15_auth-feature.log", b"user: hi\nassistant: [REDACTED]\n"
    )
    _write(root, ".workflow_sessions/2026-01-09_16-45-22_bugfix-api.log", b"user: fix\n")
    _write(root, ".workflow_sessions/s1/state.json", b'{"session": "s1"}\n')
    _settle(root)
    return root


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "feedback": v1_with_feedback,
    "two-sops": two_sops,
    "wal-approvals": wal_approvals,
    "manus-secrets": manus_secrets,
    "wo-sessions": wo_sessions,
    "transcripts": transcripts,
}
