"""Stored state is untrusted input (DESIGN §3): hostile state through every entry point.

Each case builds a repository whose stored state was planted by someone else (a
journal, meta.json, FORMAT, the secrets manifest, a symlink, a snapshot, a YAML bomb),
with a canary directory *outside* the root, runs the public operation through the API
and the command line, and checks three things: the canary's bytes, modes and names are
as they were; the API raised a clear :class:`OrchFSError`; the command line exited 1 or
2 with one line on stderr and no traceback.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import stat
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

import orchfs
from orchfs import doctor, migrate, snapshot
from orchfs.cli import main
from orchfs.errors import (
    ConfigError,
    FormatError,
    JournalError,
    ManifestError,
    MetaError,
    OrchFSError,
    PathEscapeError,
    SnapshotError,
    StateError,
    UnsafeStateError,
)
from orchfs.testing import build_legacy_repo

KEY = "A" * 43 + "="
GOOD_REPO_ID = "0123456789abcdef0123456789abcdef"
# A generous bound that unbounded parsing (minutes) cannot meet; not a timing test: it is
# this process's CPU time (time.process_time), which a loaded machine does not stretch as it
# does wall time (8 s of wall for a 5 s bound at load 12 on 2 cores).
PARSE_BOUND_SECONDS = 5.0


# --- the canary and the world around it ---------------------------------------------------
@dataclass(frozen=True)
class World:
    root: Path
    canary: Path

    @property
    def state(self) -> Path:
        return self.root / ".orchestrator"


def _picture(directory: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every entry below ``directory`` (and itself): mode and bytes (None for a directory)."""
    out = {".": (os.lstat(directory).st_mode, None)}
    for top, dirs, files in os.walk(directory):
        for name in dirs + files:
            full = Path(top) / name
            st = os.lstat(full)
            data = full.read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[str(full.relative_to(directory))] = (st.st_mode, data)
    return out


@pytest.fixture
def hostile_environment(tmp_path, monkeypatch):
    """No key but ORCHFS_KEY, no user or org configuration, no session from outside."""
    for name in (
        "ORCHFS_KEY_FILE",
        "ORCHFS_PASSPHRASE",
        "ORCHFS_WEB_MODE",
        "ORCHFS_SESSION",
        "ORCHFS_STORAGE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ORCHFS_KEY", KEY)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("ORCHFS_ORG_CONFIG", str(tmp_path / "no-org.yaml"))


@pytest.fixture
def world(tmp_path, hostile_environment) -> World:
    canary = tmp_path / "canary"
    (canary / "sub").mkdir(parents=True)
    (canary / "a.txt").write_bytes(b"canary a")
    (canary / "sub" / "b.txt").write_bytes(b"canary b")
    (canary / ".orchfs-tmp.old").write_bytes(b"looks like a temp file")
    (canary / ".gitignore").write_bytes(b"canary ignore\n")
    os.chmod(canary / "a.txt", 0o644)
    os.chmod(canary / "sub" / "b.txt", 0o640)
    os.chmod(canary / "sub", 0o755)
    old = time.time() - 3600
    os.utime(canary / ".orchfs-tmp.old", (old, old))
    root = tmp_path / "repo"
    root.mkdir()
    (root / ".git").mkdir()
    before = _picture(canary)
    yield World(root, canary)
    assert _picture(canary) == before, "something outside the repository root changed"


def v1(world: World) -> Path:
    build_legacy_repo(world.root)
    return world.root


def v2(world: World) -> orchfs.OrchFileSystem:
    fs = orchfs.OrchFileSystem(root=str(world.root), skip_instance_cache=True)
    fs.pipe_file("state.json", b"{}")
    return fs


def cli(world: World, *args: str, rc: tuple[int, ...] = (1, 2), input: str | None = None) -> str:
    """Run the command line; it must fail cleanly: one line on stderr, no traceback."""
    result = CliRunner().invoke(main, ["--root", str(world.root), *args], input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in rc, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if result.exit_code != 0 and args[0] != "doctor":
        assert len(lines) == 1 and lines[0].startswith("orchfs: error: "), result.stderr
    return result.stderr + result.stdout


# --- journals ----------------------------------------------------------------------------
def plant_journal(world: World, records: list, name: str = "20260101T000000-abcdef") -> Path:
    directory = world.state / "migrations"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.jsonl"
    lines = [r if isinstance(r, (bytes, str)) else json.dumps(r) for r in records]
    path.write_bytes(b"".join((x.encode() if isinstance(x, str) else x) + b"\n" for x in lines))
    return path


def begin(mid: str = "20260101T000000-abcdef", **extra) -> dict:
    record = {"t": "begin", "id": mid, "backup": True, "dirs": {}, "root_mtime_ns": 0, "root": "/r"}
    record.update(extra)
    return record


def row(i, source, target, action="rename", mode=0o644, link=None):
    return [i, source, target, 1, action, mode, 0, link, None]


def hostile_world_with_fs(world: World) -> None:
    v1(world)
    v2(world)


HOSTILE_JOURNALS: dict[str, Callable[[World], list]] = {
    "source-outside": lambda w: [
        begin(),
        {"t": "intents", "steps": [row(0, "../canary/a.txt", ".orchestrator/a")]},
    ],
    "source-absolute": lambda w: [
        begin(),
        {"t": "intents", "steps": [row(0, str(w.canary / "a.txt"), ".orchestrator/a")]},
    ],
    "source-not-legacy": lambda w: [
        begin(),
        {"t": "intents", "steps": [row(0, ".git/config", ".orchestrator/c")]},
    ],
    "target-outside": lambda w: [
        begin(),
        {"t": "intents", "steps": [row(0, ".workflow_state.json", ".orchestrator/../../canary/x")]},
    ],
    "target-absolute": lambda w: [
        begin(),
        {"t": "intents", "steps": [row(0, ".workflow_state.json", str(w.canary / "x"))]},
    ],
    "id-escape": lambda w: [begin(mid="../../.."), {"t": "intents", "steps": []}],
    "dirs-absolute": lambda w: [
        begin(dirs={str(w.canary): [0o777, 0]}),
        {
            "t": "intents",
            "steps": [row(0, ".workflow_checkpoints/cp_1.json", ".orchestrator/checkpoints/cp_1.json")],
        },
    ],
    "dirs-not-above": lambda w: [
        begin(dirs={".git": [0o777, 0]}),
        {
            "t": "intents",
            "steps": [row(0, ".workflow_checkpoints/cp_1.json", ".orchestrator/checkpoints/cp_1.json")],
        },
    ],
    "unknown-version": lambda w: [begin(v=99), {"t": "intents", "steps": []}],
    "empty": lambda w: [],
    "garbage": lambda w: [b"\x00\xffnot json at all", begin()],
    "truncated": lambda w: [b'{"t":"begin","id":"20260101T000000-ab'],
    "wrong-types": lambda w: [
        begin(),
        {
            "t": "intents",
            "steps": [
                [0, ".workflow_state.json", ".orchestrator/state.json", 1, "rename", "777", 0, None, None]
            ],
        },
    ],
    "array-line": lambda w: [begin(), [1, 2, 3]],
    "unknown-action": lambda w: [
        begin(),
        {
            "t": "intents",
            "steps": [row(0, ".workflow_state.json", ".orchestrator/state.json", action="rmtree")],
        },
    ],
    "done-out-of-range": lambda w: [begin(), {"t": "intents", "steps": []}, {"t": "done", "i": 7}],
    "unhashable-type": lambda w: [begin(), {"t": "intents", "steps": []}, {"t": ["end"]}],
}


# Journals that are damaged (JournalError); the others hold values that lead elsewhere.
DAMAGED_JOURNALS = frozenset(
    {
        "unknown-version",
        "empty",
        "garbage",
        "truncated",
        "wrong-types",
        "array-line",
        "unknown-action",
        "done-out-of-range",
        "unhashable-type",
    }
)


def _plant(world: World, kind: str) -> Path:
    hostile_world_with_fs(world)
    records = HOSTILE_JOURNALS[kind](world)
    path = plant_journal(world, records)
    if kind == "truncated":
        path.write_bytes(path.read_bytes().rstrip(b"\n"))
    return path


@pytest.mark.parametrize("kind", sorted(HOSTILE_JOURNALS))
def test_migrate_resume_refuses_a_hostile_journal(world, kind):
    path = _plant(world, kind)
    planted = path.read_bytes()
    with pytest.raises(JournalError if kind in DAMAGED_JOURNALS else UnsafeStateError) as caught:
        migrate.apply(world.root)
    assert "migrations/" in str(caught.value)
    assert path.read_bytes() == planted  # nothing appended: it was refused before use
    cli(world, "migrate")


@pytest.mark.parametrize(
    "kind", ["source-outside", "id-escape", "dirs-absolute", "target-absolute", "garbage"]
)
def test_rollback_refuses_a_hostile_journal(world, kind):
    _plant(world, kind)
    with pytest.raises(StateError):
        migrate.rollback(world.root)
    cli(world, "migrate", "--rollback")


@pytest.mark.parametrize(
    "kind", ["source-outside", "dirs-absolute", "empty", "array-line", "unknown-version"]
)
def test_doctor_reports_a_hostile_journal_and_fix_leaves_it(world, kind):
    path = _plant(world, kind)
    planted = path.read_bytes()
    findings = doctor.run(world.root)
    unsafe = [f for f in findings if f.id == "unsafe-state"]
    assert unsafe and all(f.severity == "error" for f in unsafe)
    assert "unfinished-migration" not in {f.id for f in findings}
    doctor.fix(world.root)
    assert path.read_bytes() == planted
    out = cli(world, "doctor", "--fix")
    assert "unsafe-state" in out and "no problems found" not in out


def test_rollback_of_a_named_id_that_escapes(world):
    hostile_world_with_fs(world)
    with pytest.raises(UnsafeStateError):
        migrate.rollback(world.root, "../../canary")
    cli(world, "migrate", "--rollback", "--id", "../../canary")


def test_a_journal_that_is_a_symlink_is_refused(world):
    hostile_world_with_fs(world)
    (world.canary / "j.jsonl").write_bytes(b"")  # the fixture's picture predates it: remove after
    (world.state / "migrations").mkdir(parents=True)
    os.symlink(world.canary / "j.jsonl", world.state / "migrations" / "20260101T000000-abcdef.jsonl")
    try:
        with pytest.raises(OrchFSError):
            migrate.apply(world.root)
        cli(world, "migrate")
    finally:
        (world.canary / "j.jsonl").unlink()


# --- symlinks where migrate, rollback and --fix write --------------------------------------
@pytest.mark.parametrize("place", ["checkpoints", "migrations", "migration_backup", "sessions"])
def test_migrate_refuses_a_planted_state_directory_link(world, place):
    v1(world)
    world.state.mkdir()
    os.symlink(world.canary, world.state / place)
    with pytest.raises((UnsafeStateError, PathEscapeError)):
        migrate.apply(world.root)
    assert (world.root / ".workflow_state.json").exists()  # nothing moved
    cli(world, "migrate")


def test_dry_run_never_reads_through_a_planted_link(world):
    v1(world)
    (world.canary / "cp_1.json").write_bytes(b"outside bytes")  # the fixture's picture predates it
    world.state.mkdir()
    os.symlink(world.canary, world.state / "checkpoints")
    try:
        with pytest.raises(UnsafeStateError):
            migrate.plan(world.root)
        cli(world, "migrate", "--dry-run")
    finally:
        (world.canary / "cp_1.json").unlink()


def test_migrate_prefer_legacy_refuses_a_linked_checkpoints(world):
    v1(world)
    (world.state / "checkpoints").mkdir(parents=True)
    (world.state / "checkpoints" / "cp_1.json").write_bytes(b"different")
    os.rename(world.state / "checkpoints", world.root / "moved-aside")
    os.symlink(world.canary, world.state / "checkpoints")
    with pytest.raises((UnsafeStateError, PathEscapeError)):
        migrate.apply(world.root, prefer="legacy")
    cli(world, "migrate", "--prefer", "legacy")


def test_rollback_does_not_drain_a_linked_directory(world):
    v1(world)
    migrate.apply(world.root)
    checkpoints = world.state / "checkpoints"
    os.rename(checkpoints, world.root / "aside")
    os.symlink(world.canary, checkpoints)
    with pytest.raises((UnsafeStateError, PathEscapeError)):
        migrate.rollback(world.root)
    cli(world, "migrate", "--rollback")


def test_rollback_does_not_write_into_a_linked_v1_directory(world):
    v1(world)
    migrate.apply(world.root)
    os.symlink(world.canary, world.root / ".workflow_checkpoints")
    with pytest.raises((UnsafeStateError, PathEscapeError)):
        migrate.rollback(world.root)
    cli(world, "migrate", "--rollback")


def test_state_directory_itself_a_link(world):
    os.symlink(world.canary, world.state)
    findings = doctor.run(world.root)
    assert any(f.id == "unsafe-state" for f in findings)
    doctor.fix(world.root)  # the old temp file in the canary must survive
    out = cli(world, "doctor", "--fix")
    assert "unsafe-state" in out
    with pytest.raises((UnsafeStateError, PathEscapeError)):
        migrate.apply(world.root)


@pytest.mark.parametrize("sub", ["secrets", "locks"])
def test_doctor_fix_never_chmods_through_a_link(world, sub):
    v2(world)
    (world.state / sub).mkdir(exist_ok=True, mode=0o700)
    os.symlink(world.canary / "a.txt", world.state / sub / "planted")
    os.symlink(world.canary / "sub", world.state / sub / "planted-dir")
    findings = doctor.run(world.root)
    assert any(f.id == "unsafe-state" for f in findings)
    doctor.fix(world.root)
    out = cli(world, "doctor", "--fix")
    assert "unsafe-state" in out


def test_doctor_fix_never_chmods_through_a_linked_tree(world):
    v2(world)
    os.symlink(world.canary, world.state / "secrets")
    assert any(f.id == "unsafe-state" for f in doctor.run(world.root))
    doctor.fix(world.root)
    cli(world, "doctor", "--fix")


def test_init_never_appends_to_a_linked_gitignore(world):
    os.symlink(world.canary / ".gitignore", world.root / ".gitignore")
    from orchfs.meta import ensure_gitignored

    with pytest.raises(UnsafeStateError, match="symlink"):
        ensure_gitignored(str(world.root))
    assert "symlink" in cli(world, "init")
    assert any(f.id == "unsafe-state" and ".gitignore" in f.message for f in doctor.run(world.root))
    doctor.fix(world.root)


# --- meta.json and FORMAT -------------------------------------------------------------------
def plant_meta(world: World, content: bytes) -> None:
    v2(world)
    (world.state / "meta.json").write_bytes(content)


def test_repo_id_that_escapes_never_writes_outside(world):
    plant_meta(world, json.dumps({"repo_id": "../../../canary/sub"}).encode())
    modes = (os.lstat(world.root).st_mode, os.lstat(world.root.parent).st_mode)
    fs = orchfs.OrchFileSystem(root=str(world.root), skip_instance_cache=True)
    with pytest.raises(UnsafeStateError, match="repo_id"):
        fs.secrets.set("TOKEN", "t")
    assert (os.lstat(world.root).st_mode, os.lstat(world.root.parent).st_mode) == modes
    assert "repo_id" in cli(world, "secrets", "set", "TOKEN", input="t")


@pytest.mark.parametrize("content", [b"{not json", b"[]", b"null", b'{"root": "/x"}', b'{"repo_id": 7}'])
def test_damaged_meta_is_not_an_absent_secret(world, content):
    fs = v2(world)
    fs.secrets.set("TOKEN", "t")
    (world.state / "meta.json").write_bytes(content)
    fresh = orchfs.OrchFileSystem(root=str(world.root), skip_instance_cache=True)
    with pytest.raises((MetaError, UnsafeStateError)):
        fresh.secrets.get("TOKEN")
    with pytest.raises((MetaError, UnsafeStateError)):
        fresh.secrets.list()
    assert "meta.json" in cli(world, "secrets", "get", "TOKEN")
    out = cli(world, "doctor")
    assert "unsafe-state" in out and "no problems found" not in out


def test_damaged_meta_does_not_block_migrate_with_a_traceback(world):
    v1(world)
    world.state.mkdir()
    (world.state / "meta.json").write_bytes(b"[]")
    with pytest.raises(MetaError):
        migrate.apply(world.root)
    assert "meta.json" in cli(world, "migrate")


def test_garbage_format_is_damaged_not_newer(world):
    fs = v2(world)
    (world.state / "FORMAT").write_bytes(b"\x00garbage\n")
    fresh = orchfs.OrchFileSystem(root=str(world.root), skip_instance_cache=True)
    with pytest.raises(FormatError, match="damaged") as caught:
        fresh.pipe_file("state.json", b"x")
    assert "upgrade" not in str(caught.value).lower()
    assert fs.cat_file("state.json") == b"{}"
    assert "damaged" in cli(world, "put", "state.json", "-", rc=(1, 2))
    assert "unsafe-state" in cli(world, "doctor")


# --- the secrets manifest -------------------------------------------------------------------
def secrets_world(world: World) -> tuple[orchfs.OrchFileSystem, Path]:
    fs = v2(world)
    fs.secrets.set("TOKEN", "t0ken")
    fs.secrets.set("OTHER", "x")
    return fs, world.state / "secrets" / fs.secrets.repo_id / "MANIFEST"


def fresh(world: World) -> orchfs.OrchFileSystem:
    return orchfs.OrchFileSystem(root=str(world.root), skip_instance_cache=True)


MANIFESTS: dict[str, Callable[[bytes], bytes | None]] = {
    "deleted": lambda old: None,
    "unsealed": lambda old: json.dumps({**json.loads(old), "macs": {}}).encode(),
    "stripped": lambda old: json.dumps({"entries": {}, "macs": {}}).encode(),
    "garbage": lambda old: b"\xff{{{",
    "escaping-name": lambda old: json.dumps(
        {**json.loads(old), "entries": {"../../../canary/a": {"version": 1, "sha256": "0" * 64, "also": []}}}
    ).encode(),
    "array": lambda old: b"[]",
}


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
@pytest.mark.parametrize("operation", ["get", "list", "set", "rotate"])
def test_hostile_manifest(world, tmp_path, kind, operation):
    _fs, manifest = secrets_world(world)
    replacement = MANIFESTS[kind](manifest.read_bytes())
    if replacement is None:
        manifest.unlink()
    else:
        manifest.write_bytes(replacement)
    store = fresh(world).secrets
    action = {
        "get": lambda: store.get("TOKEN"),
        "list": store.list,
        "set": lambda: store.set("NEW", "v"),
        "rotate": lambda: store.rotate(b"B" * 32),
    }[operation]
    with pytest.raises(ManifestError) as caught:
        action()
    assert "reseal" in str(caught.value)
    args = {
        "get": ["secrets", "get", "TOKEN"],
        "list": ["secrets", "list"],
        "set": ["secrets", "set", "NEW"],
        "rotate": ["secrets", "rotate", "--new-key-file", str(new_key_file(tmp_path))],
    }[operation]
    assert "reseal" in cli(world, *args, input="v")  # `set` reads the value first


def new_key_file(directory: Path) -> Path:
    path = directory / "new.key"
    path.write_text("B" * 43 + "=\n")
    os.chmod(path, 0o600)
    return path


def test_reseal_repairs_a_deleted_manifest(world):
    _fs, manifest = secrets_world(world)
    manifest.unlink()
    assert fresh(world).secrets.reseal() == ["OTHER", "TOKEN"]
    assert fresh(world).secrets.get("TOKEN") == "t0ken"


# --- sessions ------------------------------------------------------------------------------
def test_prune_never_follows_a_linked_session(world):
    fs = v2(world)
    fs.session("s1").pipe_file("state.json", b"{}")
    os.symlink(world.canary, world.state / "sessions" / "planted")
    (world.root / "workflow.yaml").write_text("state:\n  retention: {max_sessions: 0, min_age: 0s}\n")
    from orchfs.sessions import Retention, prune

    prune(fresh(world), Retention(max_sessions=0, min_age=0.0))
    fs.session("s2").pipe_file("state.json", b"{}")
    cli(world, "sessions", "prune", rc=(0, 1))


def test_prune_refuses_a_session_id_outside_the_pattern(world):
    v2(world)
    (world.state / "sessions" / "bad name").mkdir(parents=True)
    (world.state / "sessions" / "bad name" / "state.json").write_bytes(b"{}")
    from orchfs.sessions import Retention, prune

    with pytest.raises(UnsafeStateError, match="session id"):
        prune(fresh(world), Retention(max_sessions=0, min_age=0.0))
    assert any(f.id == "unsafe-state" and "bad name" in f.message for f in doctor.run(world.root))
    (world.root / "workflow.yaml").write_text("state:\n  retention: {max_sessions: 0, min_age: 0s}\n")
    cli(world, "sessions", "prune")


def test_session_argument_outside_the_pattern(world):
    with pytest.raises(PathEscapeError):
        orchfs.OrchFileSystem(root=str(world.root), session="../canary", skip_instance_cache=True)
    with pytest.raises(PathEscapeError):
        orchfs.OrchFileSystem(root=str(world.root), session="a b", skip_instance_cache=True)


# --- snapshots -----------------------------------------------------------------------------
def archive(path: Path, members: list[tuple[str, bytes | None, bytes]]) -> Path:
    """(name, type, data) members; type None is a regular file."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == tarfile.SYMTYPE:
                info.type, info.linkname = tarfile.SYMTYPE, data.decode()
                tar.addfile(info)
            elif kind == tarfile.DIRTYPE:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return path


def bomb(path: Path, claimed: int = 2 << 30) -> Path:
    """A gzip of a tar whose one member claims ``claimed`` bytes of zeros (16 MiB given)."""
    header = tarfile.TarInfo("state.json")
    header.size = claimed
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(header.tobuf(tarfile.PAX_FORMAT))
        zeros = bytes(1 << 20)
        for _ in range(16):
            out.write(zeros)
    return path


def _journal_bytes(world: World) -> bytes:
    records = HOSTILE_JOURNALS["source-outside"](world)
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


SNAPSHOTS: dict[str, Callable[[World, Path], Path]] = {
    "dotdot-member": lambda w, p: archive(p, [("../canary/a.txt", None, b"x")]),
    "absolute-member": lambda w, p: archive(p, [(str(w.canary / "a.txt"), None, b"x")]),
    "symlink-member": lambda w, p: archive(p, [("checkpoints", tarfile.SYMTYPE, str(w.canary).encode())]),
    "file-dir-clash": lambda w, p: archive(
        p, [("a.json", None, b"1"), ("d", None, b"f"), ("d/x", None, b"2")]
    ),
    "dir-then-file": lambda w, p: archive(p, [("d", tarfile.DIRTYPE, b""), ("d", None, b"f")]),
    "duplicate": lambda w, p: archive(p, [("a.json", None, b"1"), ("a.json", None, b"2")]),
    "gzip-bomb": lambda w, p: bomb(p),
    "escaping-repo-id": lambda w, p: archive(p, [("meta.json", None, b'{"repo_id": "../../canary"}')]),
    "damaged-meta": lambda w, p: archive(p, [("meta.json", None, b"[]")]),
    "garbage-format": lambda w, p: archive(p, [("FORMAT", None, b"garbage"), ("a.json", None, b"1")]),
    "hostile-journal": lambda w, p: archive(
        p, [("migrations/20260101T000000-abcdef.jsonl", None, _journal_bytes(w))]
    ),
    "unsealed-manifest": lambda w, p: archive(
        p, [(f"secrets/{GOOD_REPO_ID}/MANIFEST", None, b'{"entries": {}, "macs": {}}')]
    ),
    "bad-namespace": lambda w, p: archive(p, [("secrets/..x/A.enc", None, b"x")]),
    "bad-session": lambda w, p: archive(p, [("sessions/a b/state.json", None, b"{}")]),
    "lock-member": lambda w, p: archive(p, [("locks/repo.lock", None, b"x")]),
    "not-a-snapshot": lambda w, p: (p.write_bytes(b"\x1f\x8b garbage"), p)[1],
}


def _state_picture(world: World) -> dict[str, tuple[int, bytes | None]]:
    """The state directory but its lock records (which any locked operation leaves)."""
    return {k: v for k, v in _picture(world.state).items() if k.partition("/")[0] != "locks"}


@pytest.mark.parametrize("kind", sorted(SNAPSHOTS))
def test_snapshot_import_is_all_or_nothing(world, tmp_path, kind):
    fs = v2(world)
    fs.pipe_file("kept.json", b"old")
    before = _state_picture(world)
    path = SNAPSHOTS[kind](world, tmp_path / f"{kind}.tgz")
    started = time.process_time()
    with pytest.raises(OrchFSError):
        snapshot.import_snapshot(fresh(world), path, force=True, max_bytes=1 << 20)
    assert time.process_time() - started < PARSE_BOUND_SECONDS
    assert _state_picture(world) == before  # the old state untouched, no staging left
    cli(world, "snapshot", "import", str(path), "--force", "--max-bytes", "1MiB")
    assert _state_picture(world) == before


def test_snapshot_over_max_bytes_in_total(world, tmp_path):
    v2(world)
    path = archive(tmp_path / "big.tgz", [(f"f{i}.json", None, bytes(400 << 10)) for i in range(3)])
    with pytest.raises(SnapshotError, match="max-bytes"):
        snapshot.import_snapshot(fresh(world), path, force=True, max_bytes=1 << 20)
    assert not (world.state / "f0.json").exists()


# --- bounded parsers -----------------------------------------------------------------------
def alias_bomb() -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


YAML_BOMBS: dict[str, Callable[[Path], None]] = {
    "alias-bomb": lambda p: p.write_text(alias_bomb()),
    "deep-flow": lambda p: p.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n"),
    "deep-mapping": lambda p: p.write_text("a: " + "{b: " * 5000 + "c" + "}" * 5000 + "\n"),
    "huge-value": lambda p: (p.write_text("a: "), os.truncate(p, 1 << 30)),
}


@pytest.mark.parametrize("kind", sorted(YAML_BOMBS))
def test_yaml_bombs_are_config_errors_quickly(world, kind):
    workflow = world.root / "workflow.yaml"
    YAML_BOMBS[kind](workflow)
    started = time.process_time()
    with pytest.raises(ConfigError, match="workflow.yaml"):
        orchfs.load_config(world.root)
    assert time.process_time() - started < PARSE_BOUND_SECONDS
    started = time.process_time()
    assert "workflow.yaml" in cli(world, "config", "show")
    assert time.process_time() - started < PARSE_BOUND_SECONDS


def test_layout_bomb_is_a_config_error(world):
    started = time.process_time()
    with pytest.raises(ConfigError, match="layout.yaml"):
        orchfs.Layout.from_yaml("entries:\n" + alias_bomb().replace("\n", "\n"), "layout.yaml")
    with pytest.raises(ConfigError, match="layout.yaml"):
        orchfs.Layout.from_yaml("entries: " + "[" * 5000, "layout.yaml")
    assert time.process_time() - started < PARSE_BOUND_SECONDS


def test_oversized_state_json_is_refused(world):
    plant_meta(world, b'{"repo_id": "' + b"a" * (17 << 20) + b'"}')
    with pytest.raises(MetaError, match="limit"):
        fresh(world).secrets.list()


def test_migration_id_argument_outside_the_pattern(world):
    v1(world)
    with pytest.raises(UnsafeStateError):
        migrate.plan(world.root, migration_id="../x")


# --- random hostile state between random operations ------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule  # noqa: E402

LINK_PLACES = (
    ".orchestrator",
    ".orchestrator/checkpoints",
    ".orchestrator/migrations",
    ".orchestrator/migration_backup",
    ".orchestrator/secrets",
    ".orchestrator/locks",
    ".orchestrator/tmp",
    ".orchestrator/sessions",
    ".orchestrator/sessions/s9",
    ".orchestrator/state.json",
    ".orchestrator/meta.json",
    ".orchestrator/checkpoints/cp_1.json",
    ".workflow_checkpoints",
    ".workflow_state.json",
    ".workflow_sessions",
    ".claude",
    ".gitignore",
)
LINK_TARGETS = ("", "a.txt", "sub", "sub/b.txt", "missing")
STORED_PATHS = (
    "../canary/a.txt",
    "../canary/sub",
    "CANARY/a.txt",
    ".git/config",
    ".workflow_checkpoints/../../canary",
    ".workflow_state.json",
    ".workflow_checkpoints/cp_1.json",
    ".orchestrator/state.json",
    ".orchestrator/../../canary/x",
    "",
    None,
    5,
)
REPO_IDS = (GOOD_REPO_ID, "../../canary", "../../../canary/sub", "CANARY", "", None, 7, [], "a/b")
IDS = ("20260101T000000-abcdef", "../../..", "../canary", "..", "x/y", "", 3)
SESSIONS = ("s1", "bad name", "..x", ".hidden", "a" * 200)


class HostileStateMachine(RuleBasedStateMachine):
    """Plants random hostile stored values between random public operations; the canary
    outside the root is never touched, and nothing fails with a raw programming error."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.base = Path(tempfile.mkdtemp(prefix="orchfs-hostile-"))
        self.canary = self.base / "canary"
        (self.canary / "sub").mkdir(parents=True)
        (self.canary / "a.txt").write_bytes(b"canary a")
        (self.canary / "sub" / "b.txt").write_bytes(b"canary b")
        (self.canary / ".orchfs-tmp.old").write_bytes(b"old temp")
        os.utime(self.canary / ".orchfs-tmp.old", (0, 0))
        os.chmod(self.canary / "sub", 0o755)
        self.root = build_legacy_repo(self.base / "repo")
        (self.root / ".git").mkdir()
        self.before = _picture(self.canary)

    def teardown(self) -> None:
        import shutil

        shutil.rmtree(self.base, ignore_errors=True)

    def _value(self, value):
        return (
            str(self.canary / value[len("CANARY/") :])
            if isinstance(value, str) and value.startswith("CANARY")
            else value
        )

    def _clear(self, rel: str) -> Path:
        import shutil

        place = self.root / rel
        if place.is_symlink() or place.is_file():
            place.unlink()
        elif place.is_dir():
            shutil.rmtree(place)
        return place

    def _plant(self, rel: str, data: bytes) -> None:
        """Write a planted file, unless a planted link on the way would carry it outside."""
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            place = self.root.joinpath(*parts[:depth])
            if place.is_symlink() or (place.exists() and not place.is_dir()):
                return
            place.mkdir(exist_ok=True)
        target = self.root / rel
        if not target.is_symlink() and not target.is_dir():
            target.write_bytes(data)

    def _run(self, operation: Callable[[], object]) -> None:
        # Refused cleanly, or plainly missing: what a caller can handle.
        with contextlib.suppress(
            OrchFSError, KeyError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError
        ):
            operation()

    # --- planting ---
    @rule(place=st.sampled_from(LINK_PLACES), pointee=st.sampled_from(LINK_TARGETS))
    def plant_link(self, place, pointee):
        parent = (self.root / place).parent
        if any(p.is_symlink() for p in [parent, *parent.parents] if self.root in p.parents):
            return  # its parent is itself a planted link: planting would reach outside
        with contextlib.suppress(OSError):  # a file where its parent should be: nothing planted
            link = self._clear(place)
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(self.canary / pointee if pointee else self.canary, link)

    @rule(
        mid=st.sampled_from(IDS),
        source=st.sampled_from(STORED_PATHS),
        destination=st.sampled_from(STORED_PATHS),
        action=st.sampled_from(["rename", "copy", "retire", "replace", "rmtree"]),
        mode=st.sampled_from([0o644, 0o777, -1, "644", None]),
        dirs=st.sampled_from(
            [{}, {"CANARY": [0o777, 0]}, {".workflow_checkpoints": [0o777, 0]}, {"..": [0, 0]}]
        ),
        tail=st.sampled_from([[], [{"t": "done", "i": 0}], [{"t": "rollback-begin"}], [{"t": "end"}]]),
    )
    def plant_journal(self, mid, source, destination, action, mode, dirs, tail):
        dirs = {self._value(k): v for k, v in dirs.items()}
        steps = [[0, self._value(source), self._value(destination), 1, action, mode, 0, None, None]]
        records = [begin(mid=mid, dirs=dirs), {"t": "intents", "steps": steps}, *tail]
        name = mid if isinstance(mid, str) and mid and "/" not in mid and mid != ".." else "j"
        data = "".join(json.dumps(r) + "\n" for r in records).encode()
        self._plant(f".orchestrator/migrations/{name}.jsonl", data)

    @rule(repo_id=st.sampled_from(REPO_IDS))
    def plant_meta(self, repo_id):
        self._plant(".orchestrator/meta.json", json.dumps({"repo_id": self._value(repo_id)}).encode())

    @rule(session=st.sampled_from(SESSIONS))
    def plant_session(self, session):
        self._plant(f".orchestrator/sessions/{session}/state.json", b"{}")

    # --- operations ---
    def fs(self) -> orchfs.OrchFileSystem:
        return orchfs.OrchFileSystem(root=str(self.root), skip_instance_cache=True)

    @rule()
    def run_migrate(self):
        self._run(lambda: migrate.apply(self.root))

    @rule()
    def run_rollback(self):
        self._run(lambda: migrate.rollback(self.root))

    @rule()
    def run_doctor_fix(self):
        self._run(lambda: doctor.fix(self.root))

    @rule()
    def run_init(self):
        from orchfs.meta import ensure_gitignored

        self._run(lambda: ensure_gitignored(str(self.root)))

    @rule(operation=st.sampled_from(["set", "get", "list", "rotate"]))
    def run_secrets(self, operation):
        def act():
            store = self.fs().secrets
            {"set": lambda: store.set("T", "v"), "get": lambda: store.get("T"), "list": store.list}.get(
                operation, lambda: store.rotate(b"B" * 32)
            )()

        self._run(act)

    @rule()
    def run_prune(self):
        from orchfs.sessions import Retention, prune

        self._run(lambda: prune(self.fs(), Retention(max_sessions=0, min_age=0.0)))

    @rule(kind=st.sampled_from(sorted(SNAPSHOTS)))
    def run_snapshot_import(self, kind):
        path = SNAPSHOTS[kind](World(self.root, self.canary), self.base / "s.tgz")
        self._run(lambda: snapshot.import_snapshot(self.fs(), path, force=True, max_bytes=1 << 20))

    @rule(data=st.binary(max_size=64))
    def run_write_and_read(self, data):
        def act():
            fs = self.fs()
            fs.pipe_file("state.json", data)
            fs.pipe_file("checkpoints/cp_9.json", data)
            fs.cat_file("checkpoints/cp_1.json")

        self._run(act)

    @invariant()
    def canary_untouched(self):
        assert _picture(self.canary) == self.before


@pytest.mark.filterwarnings("ignore::orchfs.errors.LegacyPathWarning")
def test_random_hostile_state_never_reaches_outside(hostile_environment):
    machine = settings(
        max_examples=40,
        stateful_step_count=12,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )(HostileStateMachine)
    machine.TestCase().runTest()


# --- what an instance carries ----------------------------------------------------------------
def test_pickle_and_to_json_never_carry_the_key(world):
    import pickle

    fs = orchfs.OrchFileSystem(root=str(world.root), key=KEY, skip_instance_cache=True)
    fs.secrets.set("TOKEN", "t")
    assert KEY[:20] not in fs.to_json()
    assert KEY[:20].encode() not in pickle.dumps(fs)
    copy = pickle.loads(pickle.dumps(fs))  # finds its key in the key sources (ORCHFS_KEY here)
    assert copy.secrets.get("TOKEN") == "t"


@pytest.mark.parametrize("path", ["a\udcff", "checkpoints/\ud800.json", "\udc80"])
def test_lone_surrogates_are_refused_by_the_gate(world, path):
    fs = v2(world)
    with pytest.raises(PathEscapeError, match="UTF-8"):
        fs.pipe_file(path, b"x")
    with pytest.raises(PathEscapeError, match="UTF-8"):
        fs.cat_file(path)


def test_migrate_never_takes_files_from_a_linked_v1_parent(world):
    v1(world)
    import shutil

    shutil.rmtree(world.root / ".claude")
    (world.canary / "prd_state.json").write_bytes(b"outside")  # the fixture's picture predates it
    os.symlink(world.canary, world.root / ".claude")
    try:
        with pytest.raises(UnsafeStateError, match=".claude"):
            migrate.apply(world.root)
        cli(world, "migrate")
        assert (world.canary / "prd_state.json").read_bytes() == b"outside"
    finally:
        (world.canary / "prd_state.json").unlink()


def test_a_v1_database_that_is_a_link_is_never_opened(world, tmp_path):
    v1(world)
    outside_db = world.canary / "approvals.db"
    outside_db.write_bytes(b"SQLite format 3\x00" + bytes(100))
    os.symlink(outside_db, world.root / ".workflow_approvals.db")
    try:
        migrate.apply(world.root)  # the link moves as a link; the database is never opened
        assert os.path.islink(world.state / "approvals.db")
        assert outside_db.read_bytes() == b"SQLite format 3\x00" + bytes(100)
        migrate.rollback(world.root)
        assert os.path.islink(world.root / ".workflow_approvals.db")
    finally:
        outside_db.unlink()


def test_snapshot_import_failing_mid_swap_puts_everything_back(world, tmp_path, monkeypatch):
    fs = v2(world)
    for name in ("a.json", "b.json", "c.json"):
        fs.pipe_file(name, b"old " + name.encode())
    before = _state_picture(world)
    path = archive(
        tmp_path / "s.tgz", [(n, None, b"new " + n.encode()) for n in ("a.json", "b.json", "c.json")]
    )
    target = fresh(world)
    state = target.state_storage
    real_rename, calls = state.rename, []

    def failing_rename(src: str, dst: str) -> None:
        calls.append((src, dst))
        if len(calls) == 4:  # a.json aside and in, b.json aside, then b.json's move in fails
            raise OSError(5, "injected failure")
        real_rename(src, dst)

    monkeypatch.setattr(state, "rename", failing_rename)
    with pytest.raises(OSError, match="injected"):
        snapshot.import_snapshot(target, path, force=True)
    assert _state_picture(world) == before


def test_a_replaced_repo_id_is_not_an_absent_secret(world):
    fs = v2(world)
    fs.secrets.set("TOKEN", "t")
    (world.state / "meta.json").write_text(json.dumps({"repo_id": GOOD_REPO_ID}))
    with pytest.raises(MetaError, match="another repo_id"):
        fresh(world).secrets.get("TOKEN")
    with pytest.raises(MetaError, match="another repo_id"):
        fresh(world).secrets.list()
    assert "another repo_id" in cli(world, "secrets", "get", "TOKEN")


@pytest.mark.parametrize("recorded", ["CANARY", "file://CANARY", "memory://elsewhere/state"])
def test_a_journal_never_chooses_where_a_rollback_reads(world, recorded):
    import uuid

    v1(world)
    storage = f"memory://hostile-{uuid.uuid4().hex}/state"
    migrate.apply(world.root, storage=storage)
    path = next((world.state / "migrations").glob("*.jsonl"))
    lines = path.read_text().splitlines()
    begin_record = json.loads(lines[0])
    begin_record["storage"] = recorded.replace("CANARY", str(world.canary))
    path.write_text("\n".join([json.dumps(begin_record), *lines[1:]]) + "\n")
    given = storage if recorded.startswith("memory") else None
    with pytest.raises(UnsafeStateError, match="went to"):
        migrate.rollback(world.root, storage=given)
    args = ["--storage", given] if given else []
    assert "went to" in cli(world, "migrate", "--rollback", *args)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    begin_field=st.sampled_from(["v", "id", "backup", "dirs", "root_mtime_ns", "storage", "steps"]),
    begin_value=JSON_VALUES,
    row_field=st.integers(0, 10),
    row_value=JSON_VALUES,
    tail=st.lists(JSON_VALUES | st.fixed_dictionaries({"t": JSON_VALUES, "i": JSON_VALUES}), max_size=3),
)
def test_any_json_in_a_journal_is_checked_or_refused(begin_field, begin_value, row_field, row_value, tail):
    """One field of a valid journal at a time (begin, a row, the tail) holds any JSON."""
    from orchfs import journal
    from orchfs.layout import default_layout

    good = [*row(0, ".workflow_checkpoints/cp_1.json", ".orchestrator/checkpoints/cp_1.json"), None]
    bad = [*good[:row_field], row_value, *good[row_field + 1 :]][:11]
    for records in (
        [{**begin(), begin_field: begin_value}, {"t": "intents", "steps": [good]}],
        [begin(dirs={".workflow_checkpoints": [0o755, 0]}), {"t": "intents", "steps": [bad]}],
        [begin(), {"t": "intents", "steps": [good]}, *tail],
    ):
        with contextlib.suppress(StateError):  # refused cleanly; anything else fails the test
            journal.check(records, "migrations/x.jsonl", default_layout())


@settings(max_examples=300, deadline=None)
@given(document=JSON_VALUES, entry=JSON_VALUES, name=st.text(max_size=12), mac=JSON_VALUES)
def test_any_json_in_meta_or_a_manifest_is_checked_or_refused(document, entry, name, mac):
    from orchfs.meta import check_meta
    from orchfs.secrets import check_manifest

    for meta in (document, {"repo_id": document}, {"repo_id": GOOD_REPO_ID, "root": document}):
        with contextlib.suppress(StateError):
            check_meta(meta, "meta.json")
    for manifest in (
        document,
        {"entries": document, "macs": {"00" * 8: "0" * 64}},
        {"entries": {name: entry}, "macs": {"00" * 8: "0" * 64}},
        {"entries": {}, "macs": {name: mac}},
        {"entries": {"A": {"version": 1, "sha256": "0" * 64, "also": entry}}, "macs": {"00" * 8: mac}},
    ):
        with contextlib.suppress(StateError):
            check_manifest(manifest, "MANIFEST")


@pytest.mark.parametrize("operation", ["migrate", "rollback"])
def test_a_directory_swapped_for_a_link_during_a_run_never_leads_outside(world, operation):
    """Another process swaps the v1 directory and .orchestrator/checkpoints for links to
    the canary and back, over and over, while a migration or rollback runs: whatever the
    interleaving, nothing outside changes (the run may fail with a clear error). The run
    starts only once a swap has happened, so the race is on however loaded the machine."""
    import shutil
    import sys
    import threading

    files = {f".workflow_checkpoints/cp_{i:04d}.json": b"{}" for i in range(600)}
    build_legacy_repo(world.root, files)
    if operation == "rollback":
        migrate.apply(world.root)
    targets = [world.root / ".workflow_checkpoints", world.state / "checkpoints"]
    done = threading.Event()
    swapping = threading.Event()
    swaps = []

    def swap(target: Path) -> None:
        aside = target.with_name(target.name + "-aside")
        with contextlib.suppress(OSError):
            os.rename(target, aside)
            os.symlink(world.canary, target)
            swaps.append(target)
            swapping.set()
            for _ in range(20):  # the link stays a while: as long as the directory does
                os.sched_yield()
            os.unlink(target)
            os.rename(aside, target)

    def swapper():
        while not done.is_set():
            for target in targets:  # whichever exists: the source before the run, both during it
                swap(target)
            for _ in range(20):
                os.sched_yield()

    thread = threading.Thread(target=swapper, daemon=True)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: more interleavings per run
    thread.start()
    try:
        assert swapping.wait(60), "the swapper found no directory to swap"
        with contextlib.suppress(OrchFSError, FileNotFoundError, FileExistsError, NotADirectoryError):
            (migrate.apply if operation == "migrate" else migrate.rollback)(world.root)
    finally:
        done.set()
        thread.join(10)
        sys.setswitchinterval(interval)
    assert not thread.is_alive() and swaps  # the race ran
    for target in targets:  # leave the repository as the swapper found it
        aside = target.with_name(target.name + "-aside")
        if target.is_symlink():
            target.unlink()
        if aside.exists() and not target.exists():
            os.rename(aside, target)
        shutil.rmtree(aside, ignore_errors=True)
