"""The yardstick for a whole-process ``orchfs migrate``: a minimal script doing what
workflow-orchestrator's ``scripts/migrate_to_sessions.py`` does to a v1 repository.

It copies the state file, the log and the checkpoints into
``.orchestrator/sessions/<id>/``, checks the SHA-256 of every copy, logs each action
as a JSON line in ``.orchestrator/migration.log``, writes ``current`` and
``.gitignore``, and renames the originals to ``.bak``. Like that script, it does not
fsync, journal, lock or keep modes other than through ``shutil.copy2``.

Usage: ``python yardstick_migrate.py ROOT`` (standard library only, so the timing is
the interpreter's start-up plus the work).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from datetime import datetime

__all__ = ["migrate"]

MOVED = {".workflow_state.json": "state.json", ".workflow_log.jsonl": "log.jsonl"}
CHECKPOINTS = ".workflow_checkpoints"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _log(log_path: str, action: str, **details: str) -> None:
    with open(log_path, "a") as f:
        f.write(json.dumps({"timestamp": datetime.now().isoformat(), "action": action, **details}) + "\n")


def _copy_checked(source: str, target: str) -> None:
    shutil.copy2(source, target)
    if os.path.getsize(source) != os.path.getsize(target) or _sha256(source) != _sha256(target):
        raise OSError(f"copy of {source} did not verify")


def migrate(root: str) -> str:
    """Migrate ``root``; return the new session id."""
    state_dir = os.path.join(root, ".orchestrator")
    session = uuid.uuid4().hex[:8]
    session_dir = os.path.join(state_dir, "sessions", session)
    os.makedirs(session_dir)
    log_path = os.path.join(state_dir, "migration.log")
    _log(log_path, "CREATE_DIR", path=session_dir)
    present = [name for name in (*MOVED, CHECKPOINTS) if os.path.exists(os.path.join(root, name))]
    for name in present:
        source = os.path.join(root, name)
        if name == CHECKPOINTS:
            target = os.path.join(session_dir, "checkpoints")
            shutil.copytree(source, target)
            for entry in os.listdir(source):
                if _sha256(os.path.join(source, entry)) != _sha256(os.path.join(target, entry)):
                    raise OSError(f"copy of {source}/{entry} did not verify")
            _log(log_path, "COPY_TREE", source=source, dest=target)
        else:
            target = os.path.join(session_dir, MOVED[name])
            _copy_checked(source, target)
            _log(log_path, "COPY", source=source, dest=target)
    with open(os.path.join(state_dir, "current"), "w") as f:
        f.write(session)
    _log(log_path, "CREATE", path="current")
    with open(os.path.join(state_dir, ".gitignore"), "w") as f:
        f.write("*\n")
    _log(log_path, "CREATE", path=".gitignore")
    for name in present:
        source = os.path.join(root, name)
        os.rename(source, source + ".bak")
        _log(log_path, "BACKUP", path=source, backup=source + ".bak")
    return session


if __name__ == "__main__":
    print(f"migrated to session {migrate(sys.argv[1])}")
