"""orchfs migrate: plan, apply, resume after kill -9, fault injection, rollback."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import itertools
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import orchfs
from orchfs import journal, migrate
from orchfs.errors import UnsafeStateError
from orchfs.paths import TEMP_PREFIX
from orchfs.testing import LEGACY_SAMPLE, build_legacy_repo

EVERY_ROW = {
    **LEGACY_SAMPLE,
    ".workflow_approvals.db-wal": b"wal",
    ".secrets.enc": b"Salted__" + b"\x07" * 32,
    "secrets.enc.yaml": b"sops: {}\n",
    "src/keep.py": b"print('user file')\n",
    ".workflow_mystery.json": b"{}\n",
}


def tree(root: str, *, inside: bool = False) -> dict[str, tuple]:
    """Every path under root with (mode, mtime_ns, bytes or link target)."""
    out = {}
    for top, dirs, files in os.walk(root):
        rel_top = os.path.relpath(top, root)
        if not inside and (rel_top == ".orchestrator" or rel_top.startswith(".orchestrator" + os.sep)):
            continue
        if rel_top.startswith(os.path.join(".orchestrator", "locks")):
            continue  # the repository lock is taken even when nothing moves
        for name in sorted(dirs + files):
            full = os.path.join(top, name)
            rel = os.path.relpath(full, root)
            if (not inside and rel == ".orchestrator") or rel == os.path.join(".orchestrator", "locks"):
                continue
            if rel == ".orchestrator" and inside:
                out[rel] = "dir"
                continue
            st = os.lstat(full)
            if os.path.islink(full):
                content = "link:" + os.readlink(full)
            elif os.path.isdir(full):
                content = "dir"
            else:
                with open(full, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
            out[rel] = (st.st_mode, st.st_mtime_ns, content)
    return out


def make_repo(tmp_path, files=EVERY_ROW, checkpoints=0, link=True, bulk=".workflow_checkpoints/bulk") -> str:
    """A v1 repository of ``files``, ``checkpoints`` more small files in ``bulk`` and (``link``)
    two symlinks among the checkpoints."""
    files = dict(files)
    files.update({f"{bulk}/cp_{i:05d}.json": f'{{"n": {i}}}'.encode() for i in range(checkpoints)})
    repo = build_legacy_repo(tmp_path / "repo", files)
    os.makedirs(repo / ".git")
    if link:
        os.symlink("cp_1.json", repo / ".workflow_checkpoints" / "latest.json")
        os.symlink("../src/keep.py", repo / ".workflow_checkpoints" / "code_link")
    sqlite3.connect(repo / ".workflow_approvals.db").close()
    return str(repo)


def allowed_inside_after_rollback(root: str, killed: bool = False) -> None:
    """Only the bookkeeping is left; after a kill also the temp files of copies it cut short
    (orphans that `orchfs doctor --fix` sweeps)."""
    state = os.path.join(root, ".orchestrator")
    for top, _dirs, files in os.walk(state):
        rel = os.path.relpath(top, state)
        first = rel.split(os.sep)[0]
        if first in ("locks", "migrations", "tmp"):
            continue
        if first == "migration_backup":
            assert files == [], f"backup not emptied: {top}"
            continue
        files = [f for f in files if not (killed and f.startswith(TEMP_PREFIX))]
        if rel != ".":  # a directory stays only to hold such temp files
            assert killed and not files, f"left behind: {rel}"
        assert set(files) <= {"meta.json", "FORMAT", "audit.jsonl"}, files


def test_dry_run_changes_nothing(tmp_path):
    root = make_repo(tmp_path)
    before = tree(root, inside=True)
    plan = migrate.plan(root)
    assert tree(root, inside=True) == before
    sources = {m.source for m in plan.moves}
    assert ".workflow_state.json" in sources and ".workflow_checkpoints/latest.json" in sources
    assert ".secrets.enc" in sources and ".workflow_approvals.db-wal" in sources
    assert plan.unknown == (".workflow_mystery.json",)
    assert plan.total_bytes == sum(m.bytes for m in plan.moves)
    assert all(m.action == "rename" for m in plan.moves)
    result = subprocess.run(
        [sys.executable, "-m", "orchfs.cli", "--root", root, "migrate", "--dry-run", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    document = json.loads(result.stdout)
    assert document["applied"] is False and document["unknown"] == [".workflow_mystery.json"]
    assert {"source", "target", "bytes", "action"} == set(document["moves"][0])
    assert tree(root, inside=True) == before


def test_apply_then_second_run_then_rollback_carrying_changes(tmp_path):
    root = make_repo(tmp_path)
    before = tree(root)
    originals = {rel: data for rel, data in EVERY_ROW.items()}
    result = migrate.apply(root)
    assert result.applied
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    assert fs.cat_file("state.json") == originals[".workflow_state.json"]
    assert fs.cat_file("checkpoints/latest.json") == originals[".workflow_checkpoints/cp_1.json"]
    assert os.readlink(os.path.join(root, ".orchestrator/checkpoints/code_link")) == "../../src/keep.py"
    assert fs.resolve("state.json").layer == "contained"
    assert not os.path.exists(os.path.join(root, ".workflow_state.json"))
    assert os.path.exists(os.path.join(root, ".workflow_mystery.json"))
    assert os.path.exists(os.path.join(root, ".orchestrator/secrets/legacy.enc"))
    second = migrate.apply(root)
    assert not second.applied and "nothing to migrate" in second.message
    fs.pipe_file("state.json", b"changed after the migration")
    undone = migrate.rollback(root)
    assert undone.applied
    after = tree(root)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed == {".workflow_state.json"}
    with open(os.path.join(root, ".workflow_state.json"), "rb") as f:
        assert f.read() == b"changed after the migration"
    allowed_inside_after_rollback(root)
    assert migrate.rollback(root).message == "nothing to roll back"


def test_writes_in_place_after_migration_never_reach_the_backup(tmp_path):
    """append_line (in place on local disk), update_json and an `ab` open of migrated
    files, whatever their extension: the backup keeps the migrated bytes, the writes
    succeed, and a rollback carries the changes back (DESIGN §8)."""
    root = make_repo(tmp_path, link=False)
    result = migrate.apply(root)
    backup = os.path.join(root, ".orchestrator", "migration_backup", result.plan.migration_id)
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    fs.append_line("state.json", {"appended": 1})
    fs.append_line("log.jsonl", {"event": "after"})
    fs.update_json("prd/state.json", lambda s: {**s, "prd": "final"})
    with fs.open("checkpoints/cp_1.json", "ab") as f:
        f.write(b"tail\n")
    fs.append_line("approvals.db", {"not": "sqlite"})  # a `.db` that is no database
    written = {
        ".workflow_state.json": EVERY_ROW[".workflow_state.json"] + b'{"appended":1}\n',
        ".workflow_log.jsonl": EVERY_ROW[".workflow_log.jsonl"] + b'{"event":"after"}\n',
        ".claude/prd_state.json": b'{\n  "prd": "final"\n}\n',
        ".workflow_checkpoints/cp_1.json": EVERY_ROW[".workflow_checkpoints/cp_1.json"] + b"tail\n",
    }
    for rel in written:
        with open(os.path.join(backup, rel), "rb") as f:
            assert f.read() == EVERY_ROW[rel], rel
        assert os.stat(os.path.join(backup, rel)).st_nlink == 1
    assert fs.cat_file("state.json") == written[".workflow_state.json"]
    assert migrate.rollback(root).applied
    for rel, data in written.items():
        with open(os.path.join(root, rel), "rb") as f:
            assert f.read() == data, rel
    allowed_inside_after_rollback(root)


def test_the_plan_counts_the_backup_copies_towards_the_room(tmp_path):
    """Backups are copies, but for the checkpoints that a rename moves (hard links, which
    take no room): a same-disk migration needs room for the copies."""
    root = make_repo(tmp_path)
    with_backup = migrate.plan(root)
    linked = sum(
        m.bytes
        for m in with_backup.moves
        if m.source.startswith(".workflow_checkpoints/") and not os.path.islink(os.path.join(root, m.source))
    )
    assert with_backup.copy_bytes == 0 and linked > 0
    assert with_backup.backup_bytes == with_backup.total_bytes - linked > 0
    assert migrate.plan(root, copy=True).backup_bytes == with_backup.total_bytes  # no links across devices
    assert with_backup.free_bytes is not None and with_backup.room
    assert not dataclasses.replace(with_backup, free_bytes=with_backup.backup_bytes - 1).room
    assert migrate.plan(root, backup=False).backup_bytes == 0

    def dry_run(*flags: str) -> dict:
        argv = [sys.executable, "-m", "orchfs.cli", "--root", root, "migrate", "--dry-run", "--json", *flags]
        return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)

    assert dry_run()["backup_bytes"] == with_backup.backup_bytes
    assert dry_run("--no-backup")["backup_bytes"] == 0


def test_rollback_without_changes_is_byte_for_byte(tmp_path):
    root = make_repo(tmp_path)
    before = tree(root)
    migrate.apply(root)
    migrate.rollback(root)
    assert tree(root) == before
    allowed_inside_after_rollback(root)


def test_conflicts_stop_the_run_unless_prefer(tmp_path):
    root = make_repo(tmp_path)
    os.makedirs(os.path.join(root, ".orchestrator"))
    with open(os.path.join(root, ".orchestrator", "state.json"), "wb") as f:
        f.write(b"newer")
    with open(os.path.join(root, ".orchestrator", "log.jsonl"), "wb") as f:
        f.write(EVERY_ROW[".workflow_log.jsonl"])  # moved by hand: same bytes
    before = tree(root, inside=True)
    with pytest.raises(orchfs.MigrationConflictError, match="workflow_state.json") as info:
        migrate.apply(root)
    assert [c.source for c in info.value.plan.conflicts] == [".workflow_state.json"]
    assert tree(root, inside=True) == before
    cli = subprocess.run(
        [sys.executable, "-m", "orchfs.cli", "--root", root, "migrate", "--json"],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 1 and json.loads(cli.stdout)["conflicts"]
    assert migrate.apply(root, prefer="new").applied
    with open(os.path.join(root, ".orchestrator", "state.json"), "rb") as f:
        assert f.read() == b"newer"
    assert not os.path.exists(os.path.join(root, ".workflow_state.json"))
    migrate.rollback(root)
    with open(os.path.join(root, ".workflow_state.json"), "rb") as f:
        assert f.read() == EVERY_ROW[".workflow_state.json"]


def test_prefer_legacy_replaces_the_new_copy(tmp_path):
    root = make_repo(tmp_path)
    os.makedirs(os.path.join(root, ".orchestrator"))
    with open(os.path.join(root, ".orchestrator", "state.json"), "wb") as f:
        f.write(b"newer")
    assert migrate.apply(root, prefer="legacy").applied
    with open(os.path.join(root, ".orchestrator", "state.json"), "rb") as f:
        assert f.read() == EVERY_ROW[".workflow_state.json"]
    migrate.rollback(root)
    with open(os.path.join(root, ".orchestrator", "state.json"), "rb") as f:
        assert f.read() == b"newer"


def test_sqlite_in_use_stops_the_migration(tmp_path):
    root = make_repo(tmp_path)
    db = os.path.join(root, ".workflow_approvals.db")
    connection = sqlite3.connect(db)
    connection.execute("create table t (x)")
    connection.commit()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); c.execute('begin exclusive');"
                "print('locked', flush=True); time.sleep(60)"
            ),
            db,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = tree(root)
        with pytest.raises(migrate.SQLiteInUseError, match="workflow_approvals.db"):
            migrate.apply(root)
        assert tree(root) == before
    finally:
        holder.kill()
        holder.wait()
        connection.close()
    with open(db + "-journal", "wb") as f:
        f.write(b"hot")
    with pytest.raises(migrate.SQLiteInUseError, match="hot journal"):
        migrate.apply(root)


def test_no_backup_and_jobs(tmp_path, monkeypatch):
    root = make_repo(tmp_path, checkpoints=50)
    monkeypatch.setattr(migrate, "_same_device", lambda *a: False)  # force verified copies
    plan = migrate.plan(root)
    assert {m.action for m in plan.moves} == {"copy"} and plan.copy_bytes == plan.total_bytes
    before = tree(root)
    assert migrate.apply(root, backup=False, jobs=8).applied
    assert (
        not os.listdir(os.path.join(root, ".orchestrator", "migration_backup"))
        if os.path.isdir(os.path.join(root, ".orchestrator", "migration_backup"))
        else True
    )
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    assert fs.cat_file("checkpoints/bulk/cp_00049.json") == b'{"n": 49}'
    migrate.rollback(root)
    assert tree(root) == before


class FaultyOS(types.SimpleNamespace):
    """os, except that the Nth call of one operation fails (SQLite's crash-test method)."""

    def __init__(self, operation: str, failing_call: int) -> None:
        super().__init__()
        self._operation = operation
        self._failing = failing_call
        self.calls = 0

    def __getattr__(self, name):
        real = getattr(os, name)
        if name != self._operation:
            return real

        def faulty(*args, **kwargs):
            self.calls += 1
            if self.calls == self._failing:
                raise OSError(5, f"injected failure of {name} #{self.calls}")
            return real(*args, **kwargs)

        return faulty


@pytest.mark.parametrize("operation", ["rename", "replace", "write", "fsync", "link", "unlink", "symlink"])
def test_failing_the_nth_operation_then_rerun_or_rollback(operation, tmp_path, monkeypatch):
    for failing_call in range(1, 40):
        base = tmp_path / f"{operation}-{failing_call}"
        base.mkdir()
        root = make_repo(base)
        before = tree(root)
        faulty = FaultyOS(operation, failing_call)
        monkeypatch.setattr(migrate, "os", faulty)
        monkeypatch.setattr(journal, "os", faulty)  # the journal's own writes fail too
        try:
            migrate.apply(root)
            completed = True
        except OSError as exc:
            assert "injected" in str(exc)
            completed = False
        finally:
            monkeypatch.setattr(migrate, "os", os)
            monkeypatch.setattr(journal, "os", os)
        if failing_call % 2:
            migrate.apply(root)  # rerun finishes
            fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
            assert fs.cat_file("state.json") == EVERY_ROW[".workflow_state.json"]
            assert fs.cat_file("checkpoints/latest.json") == EVERY_ROW[".workflow_checkpoints/cp_1.json"]
            assert not os.path.exists(os.path.join(root, ".workflow_checkpoints"))
            migrate.rollback(root)
        else:
            migrate.rollback(root)  # or rollback undoes it
        assert tree(root) == before, (operation, failing_call)
        if completed and faulty.calls < failing_call:
            break  # N is past the last call of this operation: every N was covered


MIGRATOR = """
import sys
from orchfs import migrate
root, what, copy = sys.argv[1:]
if what == "rollback":
    migrate.rollback(root)
else:
    migrate.apply(root, copy=copy == "copy", jobs=4 if copy == "copy" else 1, backup=copy != "no-backup")
"""


def _killed_at(root: str, fault: str, what: str = "apply", copy: str = "rename") -> bool:
    """Run a migration (or rollback) in a child that SIGKILLs itself at ``fault``; True if it did."""
    env = {**os.environ, "ORCHFS_FAULT": fault}
    rc = subprocess.run([sys.executable, "-c", MIGRATOR, root, what, copy], env=env).returncode
    assert rc in (0, -signal.SIGKILL), f"{fault}: the child failed with exit code {rc}"
    return rc == -signal.SIGKILL


def _assert_migrated(root: str, originals: dict[str, str], link: bool = True) -> None:
    """Every legacy file is at its v2 name with its bytes; files orchfs does not know stay
    put (``link``: the repository has the checkpoint symlinks of :func:`make_repo`)."""
    assert not migrate.unfinished(root)
    assert migrate.plan(root).moves == ()
    moved = {}
    for top, _dirs, files in os.walk(os.path.join(root, ".orchestrator")):
        if "migration_backup" in top or "migrations" in top or "locks" in top:
            continue
        for name in files:
            full = os.path.join(top, name)
            if not os.path.islink(full):
                with open(full, "rb") as f:
                    moved[os.path.relpath(full, root)] = hashlib.sha256(f.read()).hexdigest()
    layout = orchfs.default_layout()
    for legacy_rel, digest in originals.items():
        if legacy_rel in (".workflow_mystery.json", "src/keep.py", "workflow.yaml"):
            with open(os.path.join(root, legacy_rel), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == digest
            continue
        assert moved.get(_target_of(layout, legacy_rel)) == digest, legacy_rel
        assert not os.path.lexists(os.path.join(root, legacy_rel)), legacy_rel
    if link:
        fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
        assert fs.cat_file("checkpoints/latest.json") == EVERY_ROW[".workflow_checkpoints/cp_1.json"]


def _originals(before: dict[str, tuple]) -> dict[str, str]:
    return {
        rel: content
        for rel, (_mode, _mtime, content) in before.items()
        if content != "dir" and not content.startswith("link:")
    }


def _kill_at_every_hit(tmp_path, fault: str, copy: str = "rename", checkpoints: int = 0) -> int:
    """Kill a migration at hit 1, 2, ... of ``fault`` until a run gets past the last hit.

    After a kill at an odd hit the rerun must finish the migration; after an even one the
    rollback must restore the tree byte for byte (modes and mtimes too). Returns the
    number of kills.
    """
    root = make_repo(tmp_path, checkpoints=checkpoints)
    before = tree(root)
    originals = _originals(before)
    for hit in itertools.count(1):
        if not _killed_at(root, f"{fault}:{hit}", copy=copy):
            assert hit > 1, f"{fault} was never reached"
            _assert_migrated(root, originals)
            return hit - 1
        assert migrate.journals(root), f"killed at {fault}:{hit} before the journal existed"
        if hit % 2:
            assert migrate.apply(root).applied  # the rerun finishes the interrupted migration
            _assert_migrated(root, originals)
        migrate.rollback(root)
        assert tree(root) == before, f"{fault}:{hit}"
        allowed_inside_after_rollback(root, killed=True)
    raise AssertionError("unreachable")


def test_kill_9_at_every_migration_step_then_rerun_or_rollback(tmp_path):
    moves = migrate.plan(make_repo(tmp_path / "n")).moves
    # .workflow_sessions/ moves whole once its backups are durable: one rename, no step of its own.
    whole = [m for m in moves if m.source.startswith(".workflow_sessions/")]
    assert _kill_at_every_hit(tmp_path, "migrate.step") == len(moves) - len(whole)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "copy"),
    [
        ("migrate.move", "rename"),
        ("migrate.finish", "rename"),
        ("migrate.step", "copy"),
        ("migrate.copy", "copy"),
        ("migrate.move", "copy"),
    ],
)
def test_kill_9_at_every_hit_then_rerun_or_rollback(fault, copy, tmp_path):
    assert _kill_at_every_hit(tmp_path, fault, copy) >= 1


@pytest.mark.slow
def test_kill_9_deep_in_a_large_migration_then_finish(tmp_path):
    """20,000 steps with batched journal syncs: kills between batches and inside one."""
    root = make_repo(tmp_path, checkpoints=20000)
    originals = _originals(tree(root))
    for hit in (1, 1023, 1025, 4097, 3000):
        assert _killed_at(root, f"migrate.step:{hit}")
        assert migrate.unfinished(root)
    assert not _killed_at(root, "migrate.step:1000000")
    _assert_migrated(root, originals)


def test_kill_9_at_every_rollback_step_then_rollback_again(tmp_path):
    root = make_repo(tmp_path)
    before = tree(root)
    kills = 0
    for fault in ("rollback.step", "rollback.finish"):
        for hit in itertools.count(1):
            migrate.apply(root)
            if not _killed_at(root, f"{fault}:{hit}", what="rollback"):
                break
            kills += 1
            assert migrate.unfinished(root)
            with pytest.raises(orchfs.OrchFSError, match="rollback was interrupted"):
                migrate.apply(root)
            assert migrate.rollback(root).applied  # rolling back again finishes the job
            assert tree(root) == before, f"{fault}:{hit}"
            allowed_inside_after_rollback(root)
        assert tree(root) == before
    assert kills == len(migrate.plan(root).moves) + 1


def _target_of(layout, legacy_rel: str) -> str:
    for entry in layout.entries:
        for loc in entry.legacy:
            for suffix in ("", *entry.companions):
                if legacy_rel == loc + suffix:
                    return f".orchestrator/{entry.logical}{suffix}"
                if entry.is_dir and legacy_rel.startswith(loc + "/"):
                    return f".orchestrator/{entry.logical}/{legacy_rel[len(loc) + 1 :]}"
    for source, contained in layout.import_sources:
        if legacy_rel == source:
            return f".orchestrator/{contained}"
    raise AssertionError(legacy_rel)


@pytest.mark.parametrize("kind", ["memory", pytest.param("s3", marks=pytest.mark.slow)])
def test_migration_to_memory_and_s3_storage_with_eight_jobs(kind, tmp_path, request):
    import uuid

    root = make_repo(tmp_path, checkpoints=200, link=False)
    before = tree(root)
    if kind == "memory":
        storage, options = f"memory://migrated-{uuid.uuid4().hex}/state", None
    else:
        server = request.getfixturevalue("moto_server")
        bucket = request.getfixturevalue("s3_bucket")
        storage, options = f"s3://{bucket}/migrated-{uuid.uuid4().hex}", server.storage_options
    the_plan = migrate.plan(root, storage=storage, storage_options=options)
    assert {m.action for m in the_plan.moves} == {"upload"}
    assert the_plan.moves[0].target.startswith(("memory://", "s3://"))
    result = migrate.apply(root, storage=storage, storage_options=options, jobs=8)
    assert result.applied
    fs = orchfs.OrchFileSystem(root=root, storage=storage, storage_options=options, skip_instance_cache=True)
    assert fs.cat_file("state.json") == EVERY_ROW[".workflow_state.json"]
    assert fs.cat_file("checkpoints/bulk/cp_00199.json") == b'{"n": 199}'
    assert fs.resolve("checkpoints/bulk/cp_00007.json").layer == "contained"
    assert not os.path.exists(os.path.join(root, ".workflow_state.json"))
    assert not migrate.apply(root, storage=storage, storage_options=options).applied
    fs.pipe_file("log.jsonl", b"changed remotely")
    assert migrate.rollback(root, storage=storage, storage_options=options).applied
    after = tree(root)
    assert {k for k in set(before) | set(after) if before.get(k) != after.get(k)} == {".workflow_log.jsonl"}
    left = {p for p in fs.state_storage.find_files("") if not p.startswith("locks/")}
    assert left <= {"FORMAT", "meta.json"}
    assert fs.resolve("state.json").layer == "legacy"


def test_kill_9_inside_journal_batches_then_rerun_or_rollback(tmp_path):
    """The renames of a batch run in directories held open for it, their done records
    made durable once per batch: a kill before, at and after a batch boundary and deep
    inside one is finished by a rerun (even hits) or undone by a rollback (odd hits),
    byte for byte, modes and mtimes too."""
    root = make_repo(tmp_path, checkpoints=1200)
    _kill_each_then_rerun_or_rollback(root, [f"migrate.move:{hit}" for hit in (1, 511, 512, 513, 900, 1100)])


def _kill_each_then_rerun_or_rollback(root: str, faults: list[str]) -> None:
    """Kill a migration at each of ``faults`` in turn: after the first, third, ... kill a
    rerun finishes it; after every kill a rollback restores the tree byte for byte."""
    before = tree(root)
    originals = _originals(before)
    for number, fault in enumerate(faults):
        assert _killed_at(root, fault), fault
        assert migrate.unfinished(root)
        if number % 2 == 0:
            assert migrate.apply(root).resumed
            _assert_migrated(root, originals)
        migrate.rollback(root)
        assert tree(root) == before, fault
        allowed_inside_after_rollback(root, killed=True)


class SwappingOS(types.SimpleNamespace):
    """os, except that the Nth call of ``operation`` first moves a directory away and puts
    a link to it in its place (another process changing the repository mid-batch)."""

    def __init__(self, operation: str, at: int, directory: str, away: str) -> None:
        super().__init__()
        self._operation, self._at, self._directory, self._away = operation, at, directory, away
        self.calls = 0

    def __getattr__(self, name):
        real = getattr(os, name)
        if name != self._operation:
            return real

        def rename(*args, **kwargs):
            self.calls += 1
            if self.calls == self._at:
                os.rename(self._directory, self._away)
                os.symlink(self._away, self._directory)
            return real(*args, **kwargs)

        return rename


def test_a_held_directory_swapped_during_a_batch_is_reported(tmp_path, monkeypatch):
    root = make_repo(tmp_path, checkpoints=1200, link=False)
    # A v2 file already in the target directory: the files move one by one (not whole).
    os.makedirs(os.path.join(root, ".orchestrator", "checkpoints"))
    with open(os.path.join(root, ".orchestrator", "checkpoints", "newer.json"), "wb") as f:
        f.write(b"{}")
    outside = tmp_path / "outside"
    outside.mkdir()
    target = os.path.join(root, ".orchestrator", "checkpoints", "bulk")
    swapping = SwappingOS("rename", 600, target, str(outside / "bulk"))  # inside the second batch
    monkeypatch.setattr(migrate, "os", swapping)
    with pytest.raises(UnsafeStateError, match="moved or replaced while the migration"):
        migrate.apply(root, backup=False)
    monkeypatch.setattr(migrate, "os", os)
    assert swapping.calls < 1100  # the run stopped at the end of that batch
    assert os.path.exists(os.path.join(root, ".workflow_checkpoints", "bulk", "cp_01199.json"))
    assert migrate.unfinished(root)
    with pytest.raises(orchfs.OrchFSError):  # the link there is refused, never followed
        migrate.apply(root, backup=False)
    assert os.path.exists(os.path.join(root, ".workflow_checkpoints", "bulk", "cp_01199.json"))


def test_more_directories_than_are_held_at_once(tmp_path):
    """A tree of more directories than a run holds open at once migrates and rolls back
    exactly, and the run leaves no descriptor behind."""
    files = {
        f".workflow_checkpoints/d{i:03d}/cp.json": b'{"d": %d}' % i for i in range(migrate.HELD_LIMIT + 40)
    }
    root = make_repo(tmp_path, files={**EVERY_ROW, **files})
    before = tree(root)
    open_before = len(os.listdir("/proc/self/fd"))
    assert migrate.apply(root).applied
    assert len(os.listdir("/proc/self/fd")) == open_before
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    assert fs.cat_file("checkpoints/d103/cp.json") == b'{"d": 103}'
    migrate.rollback(root)
    assert tree(root) == before


def test_a_held_directory_swapped_during_a_rollback_batch_is_reported(tmp_path, monkeypatch):
    root = make_repo(tmp_path, checkpoints=1200, link=False)
    migrate.apply(root, backup=False)
    outside = tmp_path / "outside"
    outside.mkdir()
    legacy = os.path.join(root, ".workflow_checkpoints", "bulk")
    swapping = SwappingOS("replace", 100, legacy, str(outside / "bulk"))  # files go back in reverse
    monkeypatch.setattr(migrate, "os", swapping)
    with pytest.raises(orchfs.OrchFSError, match="symlink|moved or replaced"):
        migrate.rollback(root)  # the link is refused by the next step's own check, or at release
    monkeypatch.setattr(migrate, "os", os)
    assert swapping.calls < 1100  # the rollback stopped within that batch
    assert os.path.exists(os.path.join(root, ".orchestrator", "checkpoints", "bulk", "cp_00000.json"))


def test_a_v1_directory_moves_whole_without_a_backup(tmp_path):
    """With no backup to make, a v1 directory whose files all move to one new directory
    is renamed in one call (the same inode lands in .orchestrator/); the journal still
    holds a step per file, and the rollback is byte for byte."""
    root = make_repo(tmp_path, checkpoints=300, link=False)
    before = tree(root)
    inode = os.lstat(os.path.join(root, ".workflow_checkpoints")).st_ino
    result = migrate.apply(root, backup=False)
    assert result.applied and not migrate.unfinished(root)
    moved = os.path.join(root, ".orchestrator", "checkpoints")
    assert os.lstat(moved).st_ino == inode
    assert not os.path.lexists(os.path.join(root, ".workflow_checkpoints"))
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    assert fs.cat_file("checkpoints/bulk/cp_00299.json") == b'{"n": 299}'
    assert fs.cat_file("checkpoints/cp_1.json") == EVERY_ROW[".workflow_checkpoints/cp_1.json"]
    (journal_path,) = migrate.journals(root)
    steps = journal.steps_of(journal.read_journal(journal_path, orchfs.default_layout()))
    assert sum(s.source.startswith(".workflow_checkpoints/") for s in steps) == 300 + 2
    migrate.rollback(root)
    assert tree(root) == before


def test_a_v1_directory_with_more_in_it_moves_file_by_file(tmp_path):
    """An empty directory, a link or a file the plan did not name below a v1 directory
    would move along with it: then its files move one by one, and the rest stays."""
    root = make_repo(tmp_path, checkpoints=20, link=False)
    os.makedirs(os.path.join(root, ".workflow_checkpoints", "empty"))
    before = tree(root)
    inode = os.lstat(os.path.join(root, ".workflow_checkpoints")).st_ino
    assert migrate.apply(root, backup=False).applied
    assert os.lstat(os.path.join(root, ".orchestrator", "checkpoints")).st_ino != inode
    assert os.path.isdir(os.path.join(root, ".workflow_checkpoints", "empty"))
    migrate.rollback(root)
    assert tree(root) == before


def test_kill_9_around_a_whole_directory_move_then_rerun_or_rollback(tmp_path):
    """Killed before any step, at the whole-directory rename, before and after the files
    beside it: the rerun finishes (odd hits), the rollback restores (even hits)."""
    root = make_repo(tmp_path, checkpoints=100, link=False)
    before = tree(root)
    kills = 0
    for fault in ("migrate.move", "migrate.step", "migrate.finish"):
        for hit in itertools.count(1):
            if not _killed_at(root, f"{fault}:{hit}", copy="no-backup"):
                migrate.rollback(root)
                assert tree(root) == before, f"{fault}:{hit}"
                break
            kills += 1
            assert migrate.unfinished(root)
            if hit % 2:
                assert migrate.apply(root).applied
                fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
                assert fs.cat_file("checkpoints/bulk/cp_00099.json") == b'{"n": 99}'
                assert not os.path.lexists(os.path.join(root, ".workflow_checkpoints"))
            migrate.rollback(root)
            assert tree(root) == before, f"{fault}:{hit}"
            allowed_inside_after_rollback(root, killed=True)
    assert kills >= 3


def test_a_directory_that_cannot_move_whole_is_looked_at_once(tmp_path, monkeypatch):
    """Its files then move one by one, without asking again at each of them (which would
    make a large directory quadratic)."""
    root = make_repo(tmp_path, checkpoints=300, link=False)
    os.symlink("cp_1.json", os.path.join(root, ".workflow_checkpoints", "latest.json"))
    before = tree(root)
    asked = []
    whole_directory = migrate._whole_directory
    monkeypatch.setattr(
        migrate, "_whole_directory", lambda *args: asked.append(args[1]) or whole_directory(*args)
    )
    assert migrate.apply(root, backup=False).applied
    assert 0 < len(asked) < 20
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    assert fs.cat_file("checkpoints/latest.json") == EVERY_ROW[".workflow_checkpoints/cp_1.json"]
    migrate.rollback(root)
    assert tree(root) == before


@pytest.mark.parametrize(
    ("fault", "copy"),
    [("migrate.backup", "rename"), ("migrate.synced", "rename"), ("migrate.backup", "copy")],
)
def test_kill_9_inside_a_batch_of_backups_then_rerun_or_rollback(fault, copy, tmp_path):
    """The backups of a batch are copied without an fsync each, then made durable at once
    before its steps run (also before the copies of ``--jobs 4``): a kill after some
    copies (before that flush) or after it (before any done record of the batch) is
    finished by a rerun or undone by a rollback, byte for byte."""
    assert _kill_at_every_hit(tmp_path, fault, copy) >= 1


def test_kill_9_inside_later_batches_of_backups_then_rerun_or_rollback(tmp_path):
    """Kills in the first batch of 512 backups, at its flush, and in the second batch (the
    first one's steps done): each finished by a rerun (even turns) or undone by a
    rollback, byte for byte, modes and mtimes too."""
    root = make_repo(tmp_path, checkpoints=700)
    faults = ["migrate.backup:300", "migrate.synced:1", "migrate.backup:600", "migrate.synced:2"]
    _kill_each_then_rerun_or_rollback(root, faults)


@pytest.mark.parametrize("where", [".workflow_sessions/bulk", ".workflow_checkpoints/bulk"])
def test_a_backup_torn_by_a_crash_before_its_batch_was_flushed_is_made_again(tmp_path, where):
    """A power cut can tear a backup copied but not yet made durable (its step not recorded
    done), or lose the name of one linked (checkpoints: a hard link has no bytes of its
    own to tear). A rerun never trusts such a backup: it makes it again from the v1 file,
    and a rollback that has only the backups to restore from brings back every byte, mode
    and mtime."""
    root = make_repo(tmp_path, checkpoints=700, bulk=where)
    before = tree(root)
    assert _killed_at(root, "migrate.backup:600")  # a first batch done, the next half made
    (path,) = migrate.journals(root)
    records = journal.read_journal(path, orchfs.default_layout())
    done = {r["i"] for r in records if r.get("t") == "done"}
    steps = journal.steps_of(records)
    assert len(done) < len(steps)
    backup_root = os.path.join(root, ".orchestrator", "migration_backup", records[0]["id"])
    torn = lost = 0
    for step in steps:
        kept = os.path.join(backup_root, step.source)
        if step.i not in done and os.path.isfile(kept) and not os.path.islink(kept):
            if os.stat(kept).st_nlink > 1:  # a link of the v1 file: only its name can be lost
                os.unlink(kept)
                lost += 1
                continue
            with open(kept, "r+b") as f:  # what a lost page cache leaves: the name, not the bytes
                f.truncate(0)
            torn += 1
    assert (lost if "checkpoints" in where else torn) >= 80
    assert migrate.apply(root).resumed
    kept_tree = tree(backup_root)
    bulk = [s for s in steps if s.source.startswith(where + "/")]
    for step in bulk:
        assert kept_tree[step.source] == before[step.source], step.source
    for step in bulk:  # the migrated files are gone: only the backups can bring them back
        os.unlink(os.path.join(root, step.target))
    migrate.rollback(root)
    assert tree(root) == before
    allowed_inside_after_rollback(root)


def test_a_rerun_finishes_when_the_last_directory_of_a_batch_was_removed(tmp_path):
    """Killed at its first backup, then the v1 directory holding the end of the batch is
    deleted: the rerun skips its files and makes the batch's other backups durable on
    their own directory, never on that one's (which was never made), and a rollback
    brings back what was left (and names the deleted files it cannot)."""
    root = make_repo(tmp_path, checkpoints=700)
    assert _killed_at(root, "migrate.backup:1")
    shutil.rmtree(os.path.join(root, ".workflow_checkpoints", "bulk"))  # steps 2..513 of 715
    before = tree(root)
    result = migrate.apply(root)
    assert result.resumed and result.applied
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    assert fs.cat_file("checkpoints/cp_2.json") == EVERY_ROW[".workflow_checkpoints/cp_2.json"]
    assert not fs.exists("checkpoints/bulk/cp_00000.json")
    with pytest.raises(orchfs.errors.RollbackIncompleteError, match="700 file"):  # the deleted ones
        migrate.rollback(root)
    after = tree(root)
    for rel, entry in before.items():
        if entry[2] != "dir":  # (the journal's directories are made again, bulk/ too)
            assert after[rel] == entry, rel


def test_backups_without_syncfs_are_made_durable_file_by_file(tmp_path, monkeypatch):
    """Where the system has no syncfs, each backup file of a batch and the directories
    above them are fsynced before the batch's steps run (the backups still hold every
    byte, mode and mtime)."""
    root = make_repo(tmp_path, checkpoints=20)
    before = tree(root)
    monkeypatch.setattr(migrate, "sync_filesystem", lambda fd: False)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        migrate,
        "os",
        types.SimpleNamespace(**{**vars(os), "fsync": lambda fd: synced.append(fd) or real_fsync(fd)}),
    )
    result = migrate.apply(root)
    backup_root = os.path.join(root, ".orchestrator", "migration_backup", result.plan.migration_id)
    kept_tree = tree(backup_root)
    copied = [
        rel for rel, entry in kept_tree.items() if entry[2] != "dir" and not entry[2].startswith("link:")
    ]
    assert len(copied) >= 20
    # Copies are fsynced each; checkpoints are hard links (their directories are fsynced).
    copies = [rel for rel in copied if os.lstat(os.path.join(backup_root, rel)).st_nlink == 1]
    assert 5 <= len(copies) < len(copied)
    assert len(synced) >= len(copies)
    layout = orchfs.default_layout()
    secrets = {source for source, contained in layout.import_sources if contained.startswith("secrets/")}
    for rel in copied:
        mode, *rest = before[rel]
        if rel in secrets:  # secret material is kept private, whatever its v1 mode
            mode = stat.S_IFREG | 0o600
        assert kept_tree[rel] == (mode, *rest), rel


def test_sync_filesystem_flushes_or_hands_back_to_fsync(tmp_path):
    from orchfs.syncfs import sync_filesystem

    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert sync_filesystem(fd) is (sys.platform == "linux")
    finally:
        os.close(fd)
    # A descriptor the kernel does not know (closed here; pyfakefs makes such ones) is
    # never a success: False, so that the caller fsyncs each file itself.
    assert sync_filesystem(fd) is False


def test_a_step_at_the_held_limit_never_works_in_a_released_descriptor(tmp_path):
    """White-box, on migrate's own held directories: a rename whose source directory is
    held when the held directories are full and whose target directory is not: the
    release the target needs comes before either is handed out, never between (else the
    source's descriptor is closed and its number reused for the target, and the rename
    moves the target directory's file of the same name). Planted: a decoy of the
    source's name in the target directory."""
    from orchfs.beneath import Beneath

    repo = tmp_path / "repo"
    repo.mkdir()
    root = str(repo)
    for i in range(migrate.HELD_LIMIT):
        (repo / f"d{i:03d}").mkdir()
    (repo / "d000" / "a.json").write_bytes(b"moved")
    (repo / "target").mkdir()
    (repo / "target" / "a.json").write_bytes(b"decoy")
    migrate._GUARDS[root] = guard = Beneath(root)
    try:
        with migrate._holding(root):
            held = migrate._HELD[root]
            for i in range(migrate.HELD_LIMIT):  # d000 first: its number is the lowest
                held.fd(f"d{i:03d}")
            migrate._rename(f"{root}/d000/a.json", f"{root}/target/b.json")
    finally:
        del migrate._GUARDS[root]
        guard.close()
    assert (repo / "target" / "b.json").read_bytes() == b"moved"
    assert (repo / "target" / "a.json").read_bytes() == b"decoy"
    assert not (repo / "d000" / "a.json").exists()


# --- backups as hard links: checkpoints only, never written through ---------------------------
CHECKPOINTS = (".workflow_checkpoints/cp_1.json", ".workflow_checkpoints/cp_2.json")
# Legacy files that some program may write in place, and where they move: kept as copies.
COPIED = {
    ".workflow_state.json": "state.json",
    ".workflow_log.jsonl": "log.jsonl",
    ".workflow_tool_feedback.jsonl": "feedback/tool.jsonl",
    ".workflow_approvals.db": "approvals.db",
    ".workflow_approvals.db-wal": "approvals.db-wal",
    ".workflow_sessions/s1/state.json": "sessions/s1/state.json",
    ".orchestra.yaml": "config.yaml",
    ".secrets.enc": "secrets/legacy.enc",
}


def _backup_of(root: str, result: migrate.Result) -> str:
    return os.path.join(root, ".orchestrator", "migration_backup", result.plan.migration_id)


def _logical(legacy_rel: str) -> str:
    return _target_of(orchfs.default_layout(), legacy_rel).removeprefix(".orchestrator/")


def _moved(root: str, legacy_rel: str) -> str:
    return os.path.join(root, _target_of(orchfs.default_layout(), legacy_rel))


def _one_inode(a: str, b: str) -> bool:
    sa, sb = os.lstat(a), os.lstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_a_migrated_checkpoint_and_its_backup_are_one_inode_nothing_else_is(tmp_path):
    root = make_repo(tmp_path)
    result = migrate.apply(root)
    backup = _backup_of(root, result)
    for rel in CHECKPOINTS:
        assert _one_inode(os.path.join(backup, rel), _moved(root, rel)), rel
        assert os.lstat(_moved(root, rel)).st_nlink == 2
    for rel, target in COPIED.items():
        kept, moved = os.path.join(backup, rel), os.path.join(root, ".orchestrator", target)
        assert not _one_inode(kept, moved), rel
        assert os.lstat(kept).st_nlink == os.lstat(moved).st_nlink == 1, rel
        assert _sha256(kept) == _sha256(moved), rel
    # A symlink among the checkpoints is kept as a symlink of its own.
    assert os.readlink(os.path.join(backup, ".workflow_checkpoints", "latest.json")) == "cp_1.json"


def test_a_copy_migration_keeps_copies_of_checkpoints(tmp_path):
    """Across devices (``copy=True`` moves as if there) a backup is a copy of its own."""
    root = make_repo(tmp_path, link=False)
    before = tree(root)
    result = migrate.apply(root, copy=True)
    backup = _backup_of(root, result)
    for rel in CHECKPOINTS:
        assert not _one_inode(os.path.join(backup, rel), _moved(root, rel))
        assert os.lstat(os.path.join(backup, rel)).st_nlink == 1
    migrate.rollback(root)
    assert tree(root) == before


def test_writes_to_a_migrated_checkpoint_never_reach_its_linked_backup(tmp_path):
    """An atomic rewrite, appends on local disk (in place: the file first gets a copy of
    its own), an `ab` and an `r+b` open: the linked backup keeps its bytes and hash, and
    a rollback carries the changes back byte for byte."""
    root = make_repo(tmp_path, link=False)
    before = tree(root)
    result = migrate.apply(root)
    backup = _backup_of(root, result)
    kept = {rel: _sha256(os.path.join(backup, rel)) for rel in CHECKPOINTS}
    assert all(_one_inode(os.path.join(backup, rel), _moved(root, rel)) for rel in CHECKPOINTS)
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    fs.pipe_file("checkpoints/cp_1.json", b'{"rewritten": true}\n')
    with fs.open("checkpoints/cp_1.json", "r+b") as f:
        f.seek(2)
        f.write(b"R")
    fs.append_line("checkpoints/cp_2.json", {"late": 1})
    fs.append_line("checkpoints/cp_2.json", {"late": 2})
    with fs.open("checkpoints/cp_2.json", "ab") as f:
        f.write(b"tail\n")
    written = {
        CHECKPOINTS[0]: b'{"Rewritten": true}\n',
        CHECKPOINTS[1]: EVERY_ROW[CHECKPOINTS[1]] + b'{"late":1}\n{"late":2}\ntail\n',
    }
    for rel, data in written.items():
        assert fs.cat_file(_logical(rel)) == data
        kept_path = os.path.join(backup, rel)
        assert _sha256(kept_path) == kept[rel], rel
        with open(kept_path, "rb") as f:
            assert f.read() == EVERY_ROW[rel], rel
        assert os.lstat(kept_path).st_nlink == 1 and os.lstat(_moved(root, rel)).st_nlink == 1
    migrate.rollback(root)
    after = tree(root)
    assert {k for k in set(before) | set(after) if before.get(k) != after.get(k)} == set(written)
    for rel, data in written.items():
        with open(os.path.join(root, rel), "rb") as f:
            assert f.read() == data, rel
    allowed_inside_after_rollback(root)


def test_appends_racing_on_a_linked_checkpoint_lose_no_line(tmp_path):
    """Two appenders meet the file while it still has its backup's name: one gives it a
    copy of its own, the other finds the old file lost its name and opens the path again;
    every line lands once in the migrated file, none in the backup."""
    import threading

    root = make_repo(tmp_path, link=False)
    result = migrate.apply(root)
    kept = os.path.join(_backup_of(root, result), CHECKPOINTS[1])
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def appender(name: str) -> None:
        fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
        start.wait()
        try:
            for n in range(200):
                fs.append_line("checkpoints/cp_2.json", {"by": name, "n": n})
        except BaseException as exc:  # reported below, with the thread's name
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with open(_moved(root, CHECKPOINTS[1]), "rb") as f:
        data = f.read()
    assert data.startswith(EVERY_ROW[CHECKPOINTS[1]])
    lines = [json.loads(line) for line in data[len(EVERY_ROW[CHECKPOINTS[1]]) :].splitlines()]
    assert sorted((line["by"], line["n"]) for line in lines) == [(b, n) for b in "ab" for n in range(200)]
    with open(kept, "rb") as f:
        assert f.read() == EVERY_ROW[CHECKPOINTS[1]]


def test_a_checkpoint_with_another_name_outside_is_copied_never_linked(tmp_path):
    """A v1 checkpoint that is also a file outside the repository (a hard link planted
    there): its backup is a copy of its own, and after the migration, an append to it and
    a rollback, the file outside has its bytes, mode and mtime as before."""
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = outside / "canary.json"
    canary.write_bytes(b'{"canary": 1}\n')
    os.chmod(canary, 0o644)
    root = make_repo(tmp_path, link=False)
    planted = ".workflow_checkpoints/planted.json"
    os.link(canary, os.path.join(root, planted))
    canary_before = (canary.read_bytes(), os.lstat(canary).st_mode, os.lstat(canary).st_mtime_ns)
    before = tree(root)
    result = migrate.apply(root)
    kept = os.path.join(_backup_of(root, result), planted)
    assert os.lstat(kept).st_nlink == 1 and not _one_inode(kept, canary)
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    fs.append_line("checkpoints/planted.json", {"late": 1})
    assert fs.cat_file("checkpoints/planted.json") == b'{"canary": 1}\n{"late":1}\n'
    assert not _one_inode(_moved(root, planted), canary)
    with open(kept, "rb") as f:
        assert f.read() == b'{"canary": 1}\n'
    migrate.rollback(root)
    assert (canary.read_bytes(), os.lstat(canary).st_mode, os.lstat(canary).st_mtime_ns) == canary_before
    after = tree(root)
    assert {k for k in set(before) | set(after) if before.get(k) != after.get(k)} == {planted}
    with open(os.path.join(root, planted), "rb") as f:
        assert f.read() == b'{"canary": 1}\n{"late":1}\n'
    allowed_inside_after_rollback(root)


def test_a_sqlite_database_or_an_appended_file_among_checkpoints_is_copied_never_linked(tmp_path):
    """A SQLite database with its -wal, and a .jsonl file, placed in the checkpoints
    directory are written in place though the entry is write-once: their backups are
    copies (one name each), the checkpoint beside them is a link, and a SQLite write to
    the migrated database leaves its backup's bytes alone."""
    made = tmp_path / "made"
    made.mkdir()
    db = sqlite3.connect(made / "cp.db")
    try:
        db.execute("PRAGMA journal_mode=wal")
        db.execute("CREATE TABLE t (v TEXT)")
        db.execute("INSERT INTO t VALUES ('before')")
        db.commit()
        root = make_repo(tmp_path, link=False)
        checkpoints = os.path.join(root, ".workflow_checkpoints")
        # The pair as a stopped process leaves it: committed rows still in the -wal.
        shutil.copyfile(made / "cp.db", os.path.join(checkpoints, "cp.db"))
        shutil.copyfile(made / "cp.db-wal", os.path.join(checkpoints, "cp.db-wal"))
    finally:
        db.close()
    with open(os.path.join(checkpoints, "events.jsonl"), "wb") as f:
        f.write(b'{"event": 1}\n')
    copied = [f".workflow_checkpoints/{name}" for name in ("cp.db", "cp.db-wal", "events.jsonl")]
    result = migrate.apply(root)
    backup = _backup_of(root, result)
    kept = {rel: _sha256(os.path.join(backup, rel)) for rel in copied}
    for rel in copied:
        assert not _one_inode(os.path.join(backup, rel), _moved(root, rel)), rel
        assert os.lstat(os.path.join(backup, rel)).st_nlink == os.lstat(_moved(root, rel)).st_nlink == 1, rel
    assert _one_inode(os.path.join(backup, CHECKPOINTS[0]), _moved(root, CHECKPOINTS[0]))
    db = sqlite3.connect(_moved(root, copied[0]))
    try:
        assert db.execute("SELECT v FROM t").fetchall() == [("before",)]
        db.execute("INSERT INTO t VALUES ('after')")
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the rows into the database's own pages
    finally:
        db.close()
    assert {rel: _sha256(os.path.join(backup, rel)) for rel in copied} == kept


@pytest.mark.parametrize("killed", [False, True], ids=["one-run", "killed-then-resumed"])
def test_rollback_gives_the_root_its_mtime_from_before_the_migration(tmp_path, killed):
    """The root directory is part of the tree outside .orchestrator/: a rollback gives it
    back the mtime it had before the migration made .orchestrator/ in it (its lock is
    taken there first), also after a run killed and finished by another."""
    root = make_repo(tmp_path)
    assert not os.path.lexists(os.path.join(root, ".orchestrator"))
    then = 1_600_000_000_123_456_789
    os.utime(root, ns=(then, then))
    if killed:
        assert _killed_at(root, "migrate.backup:1")
    migrate.apply(root)
    migrate.rollback(root)
    assert os.stat(root).st_mtime_ns == then


def test_a_checkpoint_swapped_for_a_file_outside_after_the_plan_is_copied_never_linked(tmp_path):
    """Another program swaps a v1 checkpoint for a hard link of a file outside the
    repository after the plan looked at it (here: while the first batch of steps runs,
    before the backups of the next batch are made): its backup is still a copy of its
    own, never a third name of the file outside, which keeps its bytes and names."""
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = outside / "canary.json"
    canary.write_bytes(b'{"canary": 1}\n')
    root = make_repo(tmp_path, checkpoints=journal.DONE_BATCH + 40)
    late = f".workflow_checkpoints/bulk/cp_{journal.DONE_BATCH + 39:05d}.json"

    def swap_once(done: int, _total: int) -> None:
        if done == 1:  # the first step is done: the plan is made, the last batch not staged
            os.unlink(os.path.join(root, late))
            os.link(canary, os.path.join(root, late))

    result = migrate.apply(root, progress=swap_once)
    kept = os.path.join(_backup_of(root, result), late)
    assert not _one_inode(kept, canary)
    assert os.lstat(kept).st_nlink == 1
    assert os.lstat(canary).st_nlink == 2  # itself, and the migrated name it was given
    assert canary.read_bytes() == b'{"canary": 1}\n'


@pytest.mark.parametrize("number", [errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EIO])
def test_where_no_link_can_be_made_checkpoints_are_copied(number, tmp_path, monkeypatch):
    """Another filesystem, one without links, a link count at its limit, an I/O error:
    each backup is a copy of its own, and the rollback is byte for byte."""
    from orchfs import beneath

    root = make_repo(tmp_path, checkpoints=30)
    before = tree(root)

    def no_link(*args, **kwargs):
        raise OSError(number, os.strerror(number))

    monkeypatch.setattr(beneath, "os", types.SimpleNamespace(**{**vars(os), "link": no_link}))
    result = migrate.apply(root)
    monkeypatch.setattr(beneath, "os", os)
    backup = _backup_of(root, result)
    for rel in (*CHECKPOINTS, ".workflow_checkpoints/bulk/cp_00029.json"):
        assert os.lstat(os.path.join(backup, rel)).st_nlink == 1, rel
        assert _sha256(os.path.join(backup, rel)) == before[rel][2]
    migrate.rollback(root)
    assert tree(root) == before


@pytest.mark.parametrize("link", [False, True], ids=["moves-whole", "file-by-file"])
@pytest.mark.parametrize(
    "fault", ["migrate.backup:3", "migrate.backup:40", "migrate.synced:1", "migrate.move:1", "migrate.move:4"]
)
def test_kill_9_at_a_link_then_resume_and_rollback_are_exact(fault, link, tmp_path):
    """Killed after some links were made (not yet durable), after they were made durable,
    and at the first moves (a v1 checkpoint directory with no symlink in it moves whole
    once its links are durable, else file by file): the rerun links every checkpoint
    again or keeps the link it made, and the rollback restores the tree byte for byte,
    modes and mtimes too."""
    root = make_repo(tmp_path, checkpoints=100, link=link)
    before = tree(root)
    originals = _originals(before)
    assert _killed_at(root, fault)
    assert migrate.unfinished(root)
    result = migrate.apply(root)
    assert result.resumed
    _assert_migrated(root, originals, link)
    backup = _backup_of(root, result)
    checkpoints = [rel for rel in originals if rel.startswith(".workflow_checkpoints/")]
    assert len(checkpoints) == 102
    for rel in checkpoints:
        assert _one_inode(os.path.join(backup, rel), _moved(root, rel)), rel
        assert os.lstat(_moved(root, rel)).st_nlink == 2, rel
    migrate.rollback(root)
    assert tree(root) == before
    allowed_inside_after_rollback(root, killed=True)


CHECKPOINT_WRITES = ("append_line", "pipe_file", "ab", "r+b", "rm")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    writes=st.lists(
        st.tuples(st.sampled_from(CHECKPOINT_WRITES), st.sampled_from(CHECKPOINTS), st.binary(max_size=24)),
        max_size=8,
    )
)
def test_no_write_to_migrated_checkpoints_reaches_their_backups(tmp_path_factory, writes):
    """Any sequence of orchfs writes to migrated checkpoints (atomic rewrites, appends in
    place, `ab`, `r+b`, removals): every backup keeps its v1 bytes after each write, and a
    rollback puts back what orchfs showed last (a removed file: the backup's bytes)."""
    root = make_repo(tmp_path_factory.mktemp("prop"), link=False)
    before = tree(root)
    result = migrate.apply(root)
    backup = _backup_of(root, result)
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    for write, rel, data in writes:
        logical = _logical(rel)
        if write == "append_line":
            fs.append_line(logical, {"data": data.hex()})
        elif write == "pipe_file":
            fs.pipe_file(logical, data)
        elif write == "ab":
            with fs.open(logical, "ab") as f:
                f.write(data)
        elif write == "r+b" and fs.exists(logical):
            with fs.open(logical, "r+b") as f:
                f.write(data)
        elif write == "rm" and fs.exists(logical):
            fs.rm(logical)
        for kept in CHECKPOINTS:
            with open(os.path.join(backup, kept), "rb") as f:
                assert f.read() == EVERY_ROW[kept], (write, rel)
    shown = {rel: fs.cat_file(_logical(rel)) if fs.exists(_logical(rel)) else None for rel in CHECKPOINTS}
    migrate.rollback(root)
    after = tree(root)
    for rel in CHECKPOINTS:
        with open(os.path.join(root, rel), "rb") as f:
            assert f.read() == (EVERY_ROW[rel] if shown[rel] is None else shown[rel]), rel
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed <= set(CHECKPOINTS)
    allowed_inside_after_rollback(root)


@pytest.mark.parametrize("judged", ["after the link", "before, from the caller's lstat"])
def test_link_fresh_links_only_a_sole_own_plain_file(judged, tmp_path):
    """A regular file with one name, of this user, without set-ID bits gets its second
    name; a symlink, a file with another name already (outside, say) and a set-ID program
    get none (the caller copies them), and nothing is left at the new name."""
    from orchfs.beneath import link_fresh

    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    outside = tmp_path / "outside.json"
    outside.write_bytes(b"outside")
    (tmp_path / "src" / "plain.json").write_bytes(b"{}")
    os.link(outside, tmp_path / "src" / "linked.json")
    os.symlink("plain.json", tmp_path / "src" / "symlink.json")
    (tmp_path / "src" / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chmod(tmp_path / "src" / "setuid", 0o4755)
    src = os.open(tmp_path / "src", os.O_RDONLY | os.O_DIRECTORY)
    dst = os.open(tmp_path / "dst", os.O_RDONLY | os.O_DIRECTORY)
    try:
        made = {}
        for name in ("plain.json", "linked.json", "symlink.json", "setuid"):
            seen = os.lstat(tmp_path / "src" / name) if judged.startswith("before") else None
            made[name] = link_fresh(src, name, dst, name, seen)
    finally:
        os.close(src)
        os.close(dst)
    assert made == {"plain.json": True, "linked.json": False, "symlink.json": False, "setuid": False}
    assert sorted(os.listdir(tmp_path / "dst")) == ["plain.json"]
    assert _one_inode(str(tmp_path / "dst" / "plain.json"), str(tmp_path / "src" / "plain.json"))
    assert os.lstat(outside).st_nlink == 2 and outside.read_bytes() == b"outside"


def test_a_batch_of_links_alone_is_made_durable_without_a_syncfs(tmp_path, monkeypatch):
    """A batch whose backups are all hard links has no bytes of its own to flush: its
    directories are fsynced, and no syncfs flushes every other program's writes on the
    filesystem; batches with copies still take one. The result is exact either way."""
    root = make_repo(tmp_path, checkpoints=1200)  # the middle batch of 512: checkpoints alone
    before = tree(root)
    calls: list[int] = []
    real = migrate.sync_filesystem
    monkeypatch.setattr(migrate, "sync_filesystem", lambda fd: calls.append(fd) or real(fd))
    result = migrate.apply(root)
    assert 1 <= len(calls) < 3  # three batches
    backup = _backup_of(root, result)
    assert _one_inode(
        os.path.join(backup, ".workflow_checkpoints/bulk/cp_00700.json"),
        _moved(root, ".workflow_checkpoints/bulk/cp_00700.json"),
    )
    migrate.rollback(root)
    assert tree(root) == before
