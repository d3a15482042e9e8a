"""Stored state planted by an attacker, beyond the cases of ``test_hostile``: FIFOs and
devices where orchfs reads or writes a file (a read of a FIFO blocks forever, a device
never ends), hard links that are another name of a file outside the repository (a chmod
or an in-place write through one changes the outside file), lock holder records and
lease objects with values no orchfs wrote, and snapshot members that ask for loose modes.

Each case plants the state next to a canary directory outside the root (the ``world``
fixture of ``test_hostile`` checks its bytes and modes at the end) and expects a clear
:class:`OrchFSError` from the API, or from the command line rc 1 or 2 with one line and no
traceback. Cases that would hang without the fix run the command line in a subprocess
with a timeout, so that a regression fails instead of hanging the suite.
"""

# ruff: noqa: F811  (the fixtures imported below are parameters of the tests)
from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest

import orchfs
from orchfs import doctor, migrate, snapshot
from orchfs.errors import ConfigError, MetaError, PathEscapeError, SnapshotError, StateError, UnsafeStateError

from .conftest import make_fs

# The canary world of test_hostile (its fixtures, imported: pytest finds them here).
from .test_hostile import World, cli, hostile_environment, v1, v2, world  # noqa: F401

PROJECT = str(Path(__file__).resolve().parent.parent)
# A bound no working command comes near; a command that blocks on a FIFO never meets it.
HANG_BOUND_SECONDS = 120
JOURNAL_NAME = "20260101T000000-abcdef.jsonl"
# A process limited to this much address space cannot read a planted 4 GiB file whole.
MEMORY_BOUND_BYTES = 1536 << 20
HUGE_FILE_BYTES = 4 << 30


def _bounded_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BOUND_BYTES, MEMORY_BOUND_BYTES))


def cli_process(
    world: World, *args: str, rc: tuple[int, ...] = (1, 2), bounded_memory: bool = False
) -> subprocess.CompletedProcess[str]:
    """The command line in its own process: rc 1 or 2, one line on stderr, no traceback
    (``bounded_memory``: in an address space too small to hold a planted huge file)."""
    env = {**os.environ, "PYTHONPATH": PROJECT}
    result = subprocess.run(
        [sys.executable, "-m", "orchfs.cli", "--root", str(world.root), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_BOUND_SECONDS,
        preexec_fn=_bounded_memory if bounded_memory else None,
    )
    assert result.returncode in rc, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    if result.returncode and args[0] != "doctor":
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("orchfs: error: "), result.stderr
    return result


def canary_file(world: World) -> Path:
    """A file outside the root, on the same filesystem (so it can be hard-linked)."""
    path = world.canary / "a.txt"
    assert os.stat(path).st_dev == os.stat(world.root).st_dev
    return path


def secrets_dir(world: World) -> Path:
    (namespace,) = (world.state / "secrets").iterdir()
    return namespace


def with_secret(world: World) -> orchfs.OrchFileSystem:
    fs = v2(world)
    fs.secrets.set("token", "s3cr3t")
    return fs


def can_mknod() -> bool:
    return hasattr(os, "mknod") and os.geteuid() == 0


# --- FIFOs where orchfs opens a file: never a hang ------------------------------------------
@pytest.mark.parametrize(
    "command", [("migrate",), ("migrate", "--rollback"), ("doctor",), ("doctor", "--fix")]
)
def test_a_fifo_journal_is_refused_not_waited_on(world, command):
    v1(world)
    v2(world)
    (world.state / "migrations").mkdir()
    os.mkfifo(world.state / "migrations" / JOURNAL_NAME)
    result = cli_process(world, *command)
    assert "not a regular file" in result.stderr + result.stdout


def test_init_refuses_a_fifo_gitignore(world):
    os.mkfifo(world.root / ".gitignore")
    result = cli_process(world, "init")
    assert ".gitignore" in result.stderr


def test_migrate_of_a_fifo_at_a_secret_location_never_hangs(world):
    os.mkfifo(world.root / ".secrets.enc")
    env = {**os.environ, "PYTHONPATH": PROJECT}
    result = subprocess.run(
        [sys.executable, "-m", "orchfs.cli", "--root", str(world.root), "migrate"],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_BOUND_SECONDS,
    )
    assert "Traceback" not in result.stderr, result.stderr


def test_append_line_refuses_a_fifo(world):
    fs = v2(world)
    os.mkfifo(world.state / "log.jsonl")
    with pytest.raises(UnsafeStateError, match="not a plain file"):
        fs.append_line("log.jsonl", {"step": 1})


def test_a_fifo_holder_record_never_hangs_a_lock(world):
    v2(world)
    (world.state / "locks").mkdir(exist_ok=True)
    holder = world.state / "locks" / "repo.holder"
    holder.unlink(missing_ok=True)
    os.mkfifo(holder)
    code = (
        "import orchfs, sys\n"
        f"fs = orchfs.OrchFileSystem(root={str(world.root)!r}, skip_instance_cache=True)\n"
        "try:\n"
        "    with fs.lock('repo', timeout=5):\n"
        "        pass\n"
        "except orchfs.OrchFSError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    env = {**os.environ, "PYTHONPATH": PROJECT}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=HANG_BOUND_SECONDS
    )
    assert result.stdout.strip() == "UnsafeStateError", result.stderr


# --- devices where orchfs reads a file: refused, never read to the end ---------------------
@pytest.mark.skipif(not can_mknod(), reason="making a device node needs root")
@pytest.mark.parametrize(
    ("place", "command"),
    [
        ("meta.json", ("secrets", "list")),
        ("notes.md", ("cat", "notes.md")),
        ("state.json", ("cat", "state.json")),
    ],
)
def test_a_device_where_a_file_is_read_is_refused(world, place, command):
    with_secret(world)
    target = world.state / place
    target.unlink(missing_ok=True)
    os.mknod(target, stat.S_IFCHR | 0o644, os.makedev(1, 5))  # what /dev/zero is: endless
    result = cli_process(world, *command)
    # A state file read within its limit sees no bytes (damaged); a logical read refuses it.
    assert "not a regular file" in result.stderr or "damaged" in result.stderr


# --- hard links: another name of a file outside ---------------------------------------------
@pytest.mark.parametrize("sub", ["secrets", "locks"])
def test_doctor_fix_never_chmods_a_file_outside_through_a_hard_link(world, sub):
    with_secret(world)
    place = secrets_dir(world) if sub == "secrets" else world.state / "locks"
    place.mkdir(exist_ok=True)
    os.link(canary_file(world), place / "planted.enc")
    findings = doctor.run(world.root)
    assert "loose-permissions" in {f.id for f in findings}
    doctor.fix(world.root, findings)
    # The planted name is now a private file of its own; the outside file kept its mode.
    assert stat.S_IMODE(os.lstat(place / "planted.enc").st_mode) == 0o600
    assert os.lstat(place / "planted.enc").st_nlink == 1
    assert (place / "planted.enc").read_bytes() == b"canary a"


def test_migrate_never_chmods_a_hard_linked_v1_secret_outside(world):
    os.link(canary_file(world), world.root / ".secrets.enc")
    migrate.apply(world.root)
    moved = world.state / "secrets" / "legacy.enc"
    assert stat.S_IMODE(os.lstat(moved).st_mode) == 0o600
    assert moved.read_bytes() == b"canary a"


def test_init_never_appends_to_a_hard_linked_gitignore(world):
    os.link(world.canary / ".gitignore", world.root / ".gitignore")
    out = cli(world, "init")
    assert "hard link" in out


def test_append_line_never_writes_outside_through_a_hard_link(world):
    """The append goes to a copy of its own that replaces the planted name, never through
    it: the file outside keeps its bytes, mode and single name (the world checks it)."""
    fs = v2(world)
    os.link(canary_file(world), world.state / "log.jsonl")
    fs.append_line("log.jsonl", {"step": 1})
    fs.append_line("log.jsonl", {"step": 2})
    assert (world.state / "log.jsonl").read_bytes() == b'canary a{"step":1}\n{"step":2}\n'
    assert os.lstat(world.state / "log.jsonl").st_nlink == 1
    assert os.lstat(canary_file(world)).st_nlink == 1


def test_lock_holder_record_never_written_through_a_hard_link(world):
    fs = v2(world)
    (world.state / "locks").mkdir(exist_ok=True)
    holder = world.state / "locks" / "repo.holder"
    holder.unlink(missing_ok=True)
    os.link(canary_file(world), holder)
    with pytest.raises(UnsafeStateError, match="holder"), fs.lock("repo", timeout=5):
        pass
    with fs.lock("other", timeout=5):  # the refused lock left nothing held
        pass


# --- lock holder records with values no orchfs wrote ----------------------------------------
@pytest.mark.parametrize(
    "record",
    [
        b'{"generation": 1e999}',
        b'{"pid": 1e999, "host": "h", "since": 0}',
        b'{"pid": 100000000000000000000000000000, "host": "HOST", "since": 0}',
        b'{"pid": -1, "host": "HOST", "since": 0}',
        b'{"pid": 1, "host": "HOST", "since": 0, "session": {"a": 1}}',
        b"[" * 5000,
        b'{"pid": 1, "host": "HOST", "since": NaN}',
        b'{"pid": 1, "host": "HOST", "since": -Infinity}',
    ],
)
def test_a_planted_holder_record_is_no_holder(world, record):
    import platform

    fs = v2(world)
    (world.state / "locks").mkdir(exist_ok=True)
    for name in ("repo.lock", "repo.holder"):
        (world.state / "locks" / name).unlink(missing_ok=True)
    (world.state / "locks" / "repo.lock").write_bytes(b"")
    (world.state / "locks" / "repo.holder").write_bytes(record.replace(b"HOST", platform.node().encode()))
    doctor.run(world.root)  # no raw OverflowError from a pid or a generation
    with fs.lock("repo", timeout=5) as lock:
        assert lock.token.generation >= 1
    cli(world, "doctor", "--fix", rc=(0, 1))


# --- lease objects on object storage with values no orchfs wrote ---------------------------
PLANTED_LEASES = {
    "not-json": b"\x00not json",
    "array": b"[1, 2]",
    "nan-lease": b'{"pid": 1, "host": "h", "since": 0, "lease": NaN, "generation": 1}',
    "endless-lease": b'{"pid": 1, "host": "h", "since": 0, "lease": 1e308, "generation": 1}',
    "negative-lease": b'{"pid": 1, "host": "h", "since": 0, "lease": -5, "generation": 1}',
    "negative-generation": b'{"pid": 1, "host": "h", "since": 0, "lease": 30, "generation": -7}',
    "huge-generation": b'{"pid": 1, "host": "h", "since": 0, "lease": 30, "generation": 1e999}',
    "text-generation": b'{"pid": 1, "host": "h", "since": 0, "lease": 30, "generation": "9"}',
    "released-as-text": b'{"pid": 1, "host": "h", "since": 0, "lease": 30, "released": "no"}',
}


@pytest.mark.s3
@pytest.mark.parametrize("store", ["s3", "gcs"])
@pytest.mark.parametrize("kind", sorted(PLANTED_LEASES))
def test_a_planted_lease_object_is_refused_and_left_alone(kind, store, request, tmp_path):
    fs = make_fs(store, request, tmp_path)
    state = fs.state_storage
    lease = "locks/repo.lease"
    state.write(lease, PLANTED_LEASES[kind])
    with pytest.raises(StateError, match="not a lease orchfs wrote"), fs.lock("repo", timeout=5):
        pass
    assert state.read(lease) == PLANTED_LEASES[kind]


# --- snapshot members ---------------------------------------------------------------------
def _archive(path: Path, members: dict[str, tuple[bytes, int]], directories: dict[str, int]) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, mode in directories.items():
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        for name, (data, mode) in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return path


def test_snapshot_import_never_lands_a_secret_with_loose_modes(world, tmp_path):
    fs = v2(world)
    repo_id = uuid.uuid4().hex
    archive = _archive(
        tmp_path / "loose.tgz",
        {
            "meta.json": (json.dumps({"repo_id": repo_id}).encode(), 0o644),
            f"secrets/{repo_id}/planted.enc": (b"ciphertext", 0o666),
        },
        {"secrets": 0o777, f"secrets/{repo_id}": 0o777},
    )
    snapshot.import_snapshot(fs, archive, force=True)
    landed = world.state / "secrets" / repo_id
    assert stat.S_IMODE(os.lstat(landed / "planted.enc").st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(landed).st_mode) == 0o700


# --- configuration files at state and v1 places -------------------------------------------
@pytest.mark.parametrize("place", [".orchestrator/config.yaml", ".orchestra.yaml", ".orchestrator.yaml"])
def test_a_local_config_linked_outside_never_redirects_writes(world, tmp_path, place):
    v2(world)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "evil.yaml").write_text(f"state:\n  storage: {world.canary / 'store'}\n")
    os.symlink(elsewhere / "evil.yaml", world.root / place)
    with pytest.raises(ConfigError, match="outside"):
        orchfs.load_config(world.root)
    out = cli(world, "put", "notes.md", "-")
    assert "refused as configuration" in out
    assert not (world.canary / "store").exists()


# --- huge planted state files: refused after a bounded read, never read whole ---------------
def _plant_huge(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(HUGE_FILE_BYTES)  # sparse: nothing on disk, 4 GiB to a reader


@pytest.mark.parametrize(
    ("place", "command", "said"),
    [
        ("meta.json", ("secrets", "list"), "over the"),
        ("FORMAT", ("put", "notes.md", "-"), "damaged"),
        ("MANIFEST", ("secrets", "list"), "over the"),
        ("current", ("cat", "state.json"), None),  # not a session id: ignored, as any bad one
        ("superseded", ("doctor",), "unsafe-state"),
    ],
)
def test_a_huge_state_file_is_never_read_whole(world, place, command, said):
    if place == "superseded":
        v1(world)
    with_secret(world)  # over v1's state file: a supersede record
    if place == "MANIFEST":
        target = secrets_dir(world) / "MANIFEST"
    elif place == "superseded":
        (target,) = (world.state / "superseded").iterdir()
    else:
        target = world.state / place
    _plant_huge(target)
    result = cli_process(world, *command, rc=(0,) if said is None else (1,), bounded_memory=True)
    assert said is None or said in result.stdout + result.stderr


@pytest.mark.parametrize(
    "config",
    [
        "state:\n  storage: {outside}\n",
        "state:\n  persist: {{url: {outside}, interval: 1s}}\n",
        "include:\n  - {outside}/evil.yaml\n",
    ],
)
def test_snapshot_config_never_points_state_outside(world, tmp_path, config):
    fs = v2(world)
    text = config.format(outside=world.canary / "store")
    archive = _archive(tmp_path / "config.tgz", {"config.yaml": (text.encode(), 0o644)}, {})
    with pytest.raises(SnapshotError, match="never a new place"):
        snapshot.import_snapshot(fs, archive, force=True)
    assert not (world.state / "config.yaml").exists()
    cli(world, "snapshot", "import", "--force", str(archive))
    cli(world, "put", "notes.md", "-", rc=(0, 1))
    assert not (world.canary / "store").exists()


@pytest.mark.skipif(not can_mknod(), reason="making a device node needs root")
def test_no_reader_of_a_device_is_handed_out(world):
    fs = v2(world)
    os.mknod(world.state / "notes.md", stat.S_IFCHR | 0o644, os.makedev(1, 5))
    with pytest.raises(UnsafeStateError, match="not a plain file"):
        fs.open("notes.md", "rb")


def test_a_fifo_where_yaml_is_read_is_refused(tmp_path):
    fifo = tmp_path / "layout.yaml"
    os.mkfifo(fifo)
    code = (
        "from orchfs.safeyaml import read_text\n"
        "from orchfs.errors import ConfigError\n"
        "try:\n"
        f"    read_text({str(fifo)!r})\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": PROJECT}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=HANG_BOUND_SECONDS
    )
    assert "not a regular file" in result.stdout, result.stderr


# --- a storage client's own errors ----------------------------------------------------------
def test_an_unreachable_store_is_one_line_not_a_traceback(world, monkeypatch):
    import socket

    with socket.socket() as probe:  # a port nothing listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "planted")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted")
    monkeypatch.setenv("ORCHFS_STORAGE", f"s3://bucket-{uuid.uuid4().hex[:8]}/repo")
    out = cli(world, "cat", "state.json")
    assert "EndpointConnectionError" in out


# --- rollback's .gitignore: taken back only from a plain file of its own --------------------
def _migrated_with_gitignore(world: World) -> bytes:
    v1(world)
    (world.root / ".gitignore").write_bytes(b"build/\n")
    migrate.apply(world.root)
    after = (world.root / ".gitignore").read_bytes()
    assert after == b"build/\n.orchestrator/\n"
    return after


def test_rollback_never_waits_on_a_fifo_gitignore(world):
    _migrated_with_gitignore(world)
    (world.root / ".gitignore").unlink()
    os.mkfifo(world.root / ".gitignore")
    env = {**os.environ, "PYTHONPATH": PROJECT}
    result = subprocess.run(
        [sys.executable, "-m", "orchfs.cli", "--root", str(world.root), "migrate", "--rollback"],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_BOUND_SECONDS,
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(os.lstat(world.root / ".gitignore").st_mode)


def test_rollback_never_truncates_a_file_outside_through_a_hard_link(world, tmp_path):
    after = _migrated_with_gitignore(world)
    outside = tmp_path / "elsewhere" / ".gitignore"  # another repository's, say
    outside.parent.mkdir()
    outside.write_bytes(after)
    os.chmod(outside, 0o640)
    before = os.lstat(outside)
    (world.root / ".gitignore").unlink()
    os.link(outside, world.root / ".gitignore")
    migrate.rollback(world.root)
    now = os.lstat(outside)
    assert outside.read_bytes() == after
    assert (now.st_mode, now.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)


@pytest.mark.skipif(not can_mknod(), reason="making a device node needs root")
def test_migrate_never_hashes_a_device_at_a_v1_location(world):
    fs = v2(world)
    fs.pipe_file("state.json", b"")  # the same size a device reports: the bytes are compared
    os.mknod(world.root / ".workflow_state.json", stat.S_IFCHR | 0o644, os.makedev(1, 5))
    result = cli_process(world, "migrate", "--dry-run", rc=(0, 1))
    assert "CONFLICT" in result.stdout


def test_upper_read_is_served_when_a_legacy_location_leads_outside(tmp_path):
    """The once-per-path conflict check compares with the legacy copy; a legacy location
    that is a symlink to outside is refused for that comparison (doctor reports it), and
    the read served by .orchestrator/ still succeeds, on every instance."""
    import orchfs
    from orchfs.overlay import forget_warnings

    repo, canary = tmp_path / "repo", tmp_path / "canary"
    repo.mkdir()
    canary.mkdir()
    (canary / "secret.json").write_bytes(b"outside")
    (repo / ".workflow_state.json").symlink_to(canary / "secret.json")
    (repo / ".orchestrator").mkdir()
    (repo / ".orchestrator" / "state.json").write_bytes(b"inside")
    forget_warnings()
    for _ in range(2):
        fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
        assert fs.cat_file("state.json") == b"inside"
    assert (canary / "secret.json").read_bytes() == b"outside"


@pytest.mark.parametrize("value", [".nan", ".inf", "-5", "-.inf"])
@pytest.mark.parametrize("key", ["lease", "lock_timeout"])
def test_a_duration_that_is_no_duration_is_a_config_error(world, key, value):
    v2(world)
    (world.root / "workflow.yaml").write_text(f"state:\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match="not a duration"):
        orchfs.load_config(world.root)
    out = cli(world, "cat", "state.json")
    assert "workflow.yaml" in out


# --- a directory or a stray object where orchfs keeps a file: reported, never a crash ------
SWAP_JOURNAL = "tmp/import-0123456789ab.swap"


@pytest.mark.parametrize("place", ["meta.json", "FORMAT", SWAP_JOURNAL])
def test_a_directory_where_a_state_file_is_kept_is_unsafe_state(world, tmp_path, place):
    """A directory planted where orchfs keeps one of its files (meta.json, FORMAT, a
    snapshot import's swap journal) is an unsafe-state finding naming it: doctor's other
    checks still run, --fix and an import leave it (and everything else) as it was."""
    fs = v2(world)
    planted = world.state / place
    planted.unlink(missing_ok=True)
    (planted / "inside").mkdir(parents=True)
    loose = world.state / "locks" / "loose"
    loose.parent.mkdir(exist_ok=True)
    loose.write_bytes(b"")
    loose.chmod(0o644)
    found = doctor.run(world.root)
    assert any(f.id == "unsafe-state" and place in f.message for f in found), found
    assert "loose-permissions" in {f.id for f in found}  # the other checks ran too
    doctor.fix(world.root, found)
    out = json.loads(cli(world, "doctor", "--json", rc=(1,)))
    assert "unsafe-state" in {f["id"] for f in out["findings"]}
    archive = _archive(tmp_path / "s.tgz", {"notes.md": (b"imported", 0o644)}, {})
    if place == SWAP_JOURNAL:  # an import finishes interrupted swaps first: refused
        with pytest.raises(StateError, match="is a directory"):
            snapshot.import_snapshot(fs, archive, force=True)
        assert "is a directory" in cli(world, "snapshot", "import", "--force", str(archive))
        assert not (world.state / "notes.md").exists()
    assert (planted / "inside").is_dir()
    assert fs.cat_file("state.json") == b"{}"


@pytest.mark.parametrize("kind", ["file", "directory", "fifo"])
def test_a_lease_object_on_local_disk_is_no_lock(world, kind):
    """``locks/<name>.lease`` means nothing on local disk (its locks are OS locks): a
    planted one is neither read as a lease nor a reason for doctor to stop."""
    v2(world)
    lease = world.state / "locks" / "repo.lease"
    lease.parent.mkdir(exist_ok=True)
    {"file": lambda: lease.write_bytes(b'{"holder": {"pid": 1}}'), "directory": lease.mkdir}.get(
        kind, lambda: os.mkfifo(lease)
    )()
    found = doctor.run(world.root)
    assert "stale-lock" not in {f.id for f in found}
    doctor.fix(world.root, found)
    out = cli_process(world, "doctor", rc=(0, 1))
    assert "internal error" not in out.stderr, out.stderr
    assert os.path.lexists(lease)


@pytest.mark.parametrize("force", [True, False])
def test_a_planted_swap_journal_never_stands_in_for_the_import_it_names(world, tmp_path, force):
    """A swap journal (and staging directory) planted with the digest of the snapshot
    about to be imported: finishing it must not pass for that import. The snapshot's
    own bytes are in place afterwards, not the planted ones, which were never checked;
    without --force, state of the repository's own still refuses the import."""
    import hashlib

    fs = v2(world)
    if not force:
        fs.pipe_file("mine.md", b"mine")
    archive = _archive(
        tmp_path / "good.tgz", {"state.json": (b'{"good": 1}', 0o644), "notes.md": (b"good", 0o644)}, {}
    )
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    staging = world.state / "tmp" / "import-0123456789ab"
    staging.mkdir(parents=True)
    (staging / "state.json").write_bytes(b'{"planted": 1}')
    journal = {"source": str(archive), "sha256": digest, "files": 2, "bytes": 15, "members": ["state.json"]}
    (world.state / "tmp" / "import-0123456789ab.swap").write_text(json.dumps(journal))
    if not force:
        with pytest.raises(SnapshotError, match="already holds state"):
            snapshot.import_snapshot(fs, archive)
        assert fs.cat_file("mine.md") == b"mine"
        assert not (world.state / "notes.md").exists()
        return
    info = snapshot.import_snapshot(fs, archive, force=True)
    assert (info.files, info.sha256) == (2, digest)
    assert (world.state / "state.json").read_bytes() == b'{"good": 1}'
    assert (world.state / "notes.md").read_bytes() == b"good"
    assert not (world.state / "tmp").exists()


@pytest.mark.parametrize(
    "planted", ["directory over a directory", "file over a directory", "fifo", "symlink"]
)
def test_a_planted_swap_only_ever_moves_files_over_files(world, planted):
    """An import's swap moves staged regular files over files (its checks made sure), so a
    planted journal whose member is staged as, or lands on, a directory (which the swap
    would put aside and drop, a whole tree of state), a FIFO or a link is unsafe-state:
    doctor --fix and an import leave everything as it was."""
    fs = v2(world)
    fs.pipe_file("sessions/s1/state.json", b"session state")
    staging = world.state / "tmp" / "import-0123456789ab"
    staging.mkdir(parents=True)
    member = "sessions"
    if planted == "directory over a directory":
        (staging / "sessions").mkdir()
    elif planted == "file over a directory":
        (staging / "sessions").write_bytes(b"")
    elif planted == "fifo":
        member = "state.json"
        os.mkfifo(staging / member)
    else:
        member = "state.json"
        os.symlink(canary_file(world), staging / member)
    journal = {"source": "s.tgz", "sha256": "0" * 64, "files": 1, "bytes": 0, "members": [member]}
    (world.state / "tmp" / "import-0123456789ab.swap").write_text(json.dumps(journal))
    found = doctor.run(world.root)
    assert any(f.id == "unsafe-state" and "import-0123456789ab.swap" in f.message for f in found), found
    doctor.fix(world.root, found)
    cli(world, "doctor", "--fix", rc=(1,))
    with pytest.raises(StateError, match="import-0123456789ab.swap"):
        snapshot.import_snapshot(fs, _archive(world.root.parent / "s.tgz", {"n.md": (b"n", 0o644)}, {}))
    assert fs.cat_file("sessions/s1/state.json") == b"session state"
    assert fs.cat_file("state.json") == b"{}"
    assert os.path.lexists(staging / member)


def test_a_directory_holder_record_is_refused_by_name(world):
    """A directory planted at ``locks/repo.holder``: every command that takes the lock says
    which file is wrong (not a bare 'Is a directory'), and doctor still runs."""
    fs = v2(world)
    holder = world.state / "locks" / "repo.holder"
    holder.parent.mkdir(exist_ok=True)
    holder.unlink(missing_ok=True)
    (holder / "inside").mkdir(parents=True)
    with pytest.raises(UnsafeStateError, match=r"repo\.holder is not a plain file"), fs.lock("repo"):
        pass
    assert "repo.holder is not a plain file" in cli(world, "migrate")
    assert "stale-lock" not in {f.id for f in doctor.run(world.root)}
    assert (holder / "inside").is_dir()


@pytest.mark.parametrize("target", ["nowhere", "../../canary/a.txt"])
def test_a_meta_json_link_to_nothing_is_a_meta_error(world, target):
    """meta.json planted as a link that no read reaches (dangling, or leading outside):
    init says so in one line instead of failing inside, and leaves the link alone."""
    world.state.mkdir()
    (world.state / "meta.json").symlink_to(target)
    fs = orchfs.OrchFileSystem(root=str(world.root), skip_instance_cache=True)
    with pytest.raises((MetaError, PathEscapeError), match="meta.json"):
        fs.initialize()
    assert "meta.json" in cli(world, "init")
    assert os.readlink(world.state / "meta.json") == target


@pytest.mark.parametrize("name", [".orchestra.yaml", ".orchestrator.yaml"])
def test_a_snapshot_never_brings_a_placing_config_back_through_a_rollback(world, tmp_path, name):
    """A snapshot whose migration backup holds a v1 config (which ``migrate --rollback``
    puts back at the root, where it is read) that says where the state lives is refused
    as its config.yaml would be: otherwise import, rollback, write lands outside."""
    outside = tmp_path / "outside-store"
    source = tmp_path / "source"
    (source / ".git").mkdir(parents=True)
    (source / name).write_text(f"state:\n  storage: {outside}\n")
    (source / ".workflow_state.json").write_text("{}")
    migrate.apply(source)
    (source / ".orchestrator" / "config.yaml").unlink()  # the snapshot's own config is checked
    archive = tmp_path / "evil.tgz"
    snapshot.export(orchfs.OrchFileSystem(root=str(source), skip_instance_cache=True), archive)
    with tarfile.open(archive) as tar:
        assert any(member.endswith(f"/{name}") for member in tar.getnames())
    fs = orchfs.OrchFileSystem(root=str(world.root), skip_instance_cache=True)
    with pytest.raises(SnapshotError, match="never a new place"):
        snapshot.import_snapshot(fs, archive)
    cli(world, "snapshot", "import", str(archive))
    cli(world, "migrate", "--rollback", rc=(0, 1))
    cli(world, "put", "notes.md", "-", rc=(0, 1), input="written")
    assert not (world.root / name).exists()
    assert not outside.exists()
    assert not (world.state / "migrations").exists()


# --- swap journals of snapshot imports, planted ----------------------------------------------
def _journal_text(members: list) -> str:
    return json.dumps({"source": "s.tgz", "sha256": "0" * 64, "files": 1, "bytes": 1, "members": members})


def _plant_swap(world: World, outside: Path, how: str) -> None:
    """Plant a swap journal ``how`` says; what links lead to is in ``outside``."""
    tmp = world.state / "tmp"
    journal = tmp / "import-0123456789ab.swap"
    staging = tmp / "import-0123456789ab"
    tmp.mkdir(exist_ok=True)
    outside.mkdir()
    (outside / "import-0123456789ab.swap").write_text(_journal_text(["state.json"]))
    (outside / "state.json").write_bytes(b"outside")
    if how == "fifo":
        os.mkfifo(journal)
    elif how == "huge":
        with open(journal, "wb") as f:
            f.truncate(HUGE_FILE_BYTES)
    elif how == "journal linked outside":
        journal.symlink_to(outside / "import-0123456789ab.swap")
    elif how == "tmp linked outside":
        tmp.rmdir()
        (outside / "import-0123456789ab").mkdir()
        (outside / "import-0123456789ab" / "state.json").write_bytes(b"outside")
        tmp.symlink_to(outside)
    elif how in ("staging linked outside", "aside linked outside"):
        journal.write_text(_journal_text(["state.json"]))
        if how == "staging linked outside":
            staging.symlink_to(outside)
        else:
            staging.mkdir()
            (staging / "state.json").write_bytes(b"staged")
            (tmp / "import-0123456789ab.replaced").symlink_to(outside)
    elif how == "not an id":
        (tmp / "import-0123456789AB.swap").write_text(_journal_text(["state.json"]))
    else:  # a member that is no plain name inside the state directory
        member = {"absolute member": "/etc/passwd", "lock member": "locks/repo.lock"}[how]
        journal.write_text(_journal_text([member]))


@pytest.mark.parametrize(
    "how",
    [
        "fifo",
        "huge",
        "journal linked outside",
        "tmp linked outside",
        "staging linked outside",
        "aside linked outside",
        "not an id",
        "absolute member",
        "lock member",
    ],
)
def test_a_planted_swap_journal_is_unsafe_state_and_never_finished(world, tmp_path, how):
    """Swap journals that orchfs did not write, or whose staging and aside directories are
    links leading outside: doctor names them (unsafe-state) without hanging on a FIFO or
    reading a huge file whole; --fix and an import finish nothing and change nothing."""
    from .test_hostile import _picture

    fs = v2(world)
    outside = tmp_path / "outside"
    _plant_swap(world, outside, how)
    before = _picture(outside)
    found = doctor.run(world.root)
    assert "unsafe-state" in {f.id for f in found}, found
    doctor.fix(world.root, found)
    # In a process of its own where a regression would hang (a FIFO) or fill memory.
    isolated = how in ("fifo", "huge")
    run = functools.partial(cli_process, bounded_memory=how == "huge") if isolated else cli
    run(world, "doctor", "--fix", rc=(1,))
    assert fs.cat_file("state.json") == b"{}"
    # An import refuses to go on, or (a link it does not list) never reads the journal.
    archive = _archive(tmp_path / "s.tgz", {"notes.md": (b"imported", 0o644)}, {})
    with contextlib.suppress(StateError, PathEscapeError):
        snapshot.import_snapshot(fs, archive, force=True)
    run(world, "snapshot", "import", "--force", str(archive), rc=(0, 1))
    assert fs.cat_file("state.json") == b"{}"
    assert _picture(outside) == before


@pytest.mark.parametrize("linked", ["staging", "aside", "parent"])
def test_a_swap_journal_through_a_link_inside_moves_nothing(world, linked):
    """A planted swap whose staging or aside directory, or the directory a member goes
    to, is a link to a directory inside the root: finishing it is refused before the
    first move (a rename refused half way left state.json put aside, gone from view)."""
    fs = v2(world)
    fs.pipe_file("sessions/s1/state.json", b"session")
    elsewhere = world.state / "elsewhere"
    (elsewhere / "s1").mkdir(parents=True)
    (elsewhere / "state.json").write_bytes(b"planted")
    (elsewhere / "s1" / "state.json").write_bytes(b"planted")
    tmp = world.state / "tmp"
    staging = tmp / "import-0123456789ab"
    (staging / "sessions" / "s1").mkdir(parents=True)
    (staging / "state.json").write_bytes(b"staged")
    (staging / "sessions" / "s1" / "state.json").write_bytes(b"staged")
    members = ["state.json", "sessions/s1/state.json"]
    if linked == "staging":
        shutil.rmtree(staging)
        staging.symlink_to("../elsewhere")
    elif linked == "aside":
        (tmp / "import-0123456789ab.replaced").symlink_to("../elsewhere")
    else:
        shutil.rmtree(world.state / "sessions")
        (world.state / "sessions").symlink_to("elsewhere")
    (tmp / "import-0123456789ab.swap").write_text(_journal_text(members))
    with pytest.raises((StateError, PathEscapeError)), fs.lock("repo"):
        snapshot.finish_interrupted(fs)
    assert fs.cat_file("state.json") == b"{}"
    assert (world.state / "state.json").read_bytes() == b"{}"
    assert not (tmp / "import-0123456789ab.replaced").is_dir() or linked == "aside"


@pytest.mark.parametrize("planted", ["huge", "directory"])
def test_a_planted_v1_secrets_file_is_refused_unread(world, planted):
    """``secrets import-legacy`` of a v1 ``.secrets.enc`` planted as a huge sparse file
    (read whole, it would fill memory) or a directory: one line naming it, nothing read."""
    v2(world)
    legacy = world.root / ".secrets.enc"
    if planted == "huge":
        _plant_huge(legacy)
    else:
        legacy.mkdir()
    env = {**os.environ, "PYTHONPATH": PROJECT, "SECRETS_PASSWORD": "pw"}
    result = subprocess.run(
        [sys.executable, "-m", "orchfs.cli", "--root", str(world.root), "secrets", "import-legacy"],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_BOUND_SECONDS,
        preexec_fn=_bounded_memory,
    )
    assert result.returncode == 1, result.stderr
    assert ".secrets.enc" in result.stderr and "internal error" not in result.stderr, result.stderr
    assert not (world.state / "secrets").exists()


# --- rollback: links planted where it takes files back to the v1 locations ------------------
@pytest.mark.parametrize("where", ["backup", "migrated copy", "carried back", "fifo backup"])
def test_rollback_never_puts_a_planted_link_at_a_v1_location(world, where):
    """A link planted in the state directory where a rollback takes a file back to the
    root (the backup of a file, the migrated copy, a file made in a migrated directory):
    put at a v1 location, the v1 tool would read and write through it to the outside.
    The rollback refuses before it puts anything back, or leaves the link where it is."""
    v1(world)
    migrate.apply(world.root)
    outside = canary_file(world)
    if where == "backup":
        (backup,) = world.state.glob("migration_backup/*/.workflow_state.json")
        backup.unlink()
        backup.symlink_to(outside)
        (world.state / "state.json").unlink()
    elif where == "migrated copy":
        (world.state / "state.json").unlink()
        (world.state / "state.json").symlink_to(outside)
    elif where == "fifo backup":
        (backup,) = world.state.glob("migration_backup/*/.workflow_state.json")
        backup.unlink()
        os.mkfifo(backup)
        (world.state / "state.json").unlink()
    else:
        (world.state / "checkpoints" / "planted.json").symlink_to(outside)
    if where == "carried back":
        migrate.rollback(world.root)
        assert not os.path.lexists(world.root / ".workflow_checkpoints" / "planted.json")
        assert (world.state / "checkpoints" / "planted.json").is_symlink()
    else:
        said = "not a regular file" if where == "fifo backup" else "symlink"
        with pytest.raises(UnsafeStateError, match=said):
            migrate.rollback(world.root)
        assert said in cli(world, "migrate", "--rollback")
        assert not os.path.lexists(world.root / ".workflow_state.json")
        assert (world.root / ".workflow_checkpoints").is_dir() is False  # nothing put back
    assert not any(p.is_symlink() for p in world.root.glob(".workflow*"))


def test_rollback_of_a_snapshot_journal_never_sets_setuid(world, tmp_path):
    """A snapshot's migration journal may record any mode up to 0o7777 for a v1 file, and
    its backup bytes are the snapshot's: a rollback that restored the set-user-ID and
    set-group-ID bits would make a program of the snapshot's run as whoever rolled back,
    and world write would let anyone edit a v1 config (the import itself keeps neither).
    Only permission bits come back, less write by everyone."""
    source = tmp_path / "source"
    (source / ".git").mkdir(parents=True)
    (source / ".workflow_checkpoints").mkdir()
    (source / ".workflow_state.json").write_bytes(b"#!/bin/sh\nid\n")
    os.chmod(source / ".workflow_state.json", 0o6755)
    os.chmod(source / ".workflow_checkpoints", 0o1777)
    (source / ".orchestra.yaml").write_text("web_mode: false\n")
    os.chmod(source / ".orchestra.yaml", 0o666)
    (source / ".workflow_checkpoints" / "cp_1.json").write_bytes(b"{}")
    migrate.apply(source)
    archive = tmp_path / "evil.tgz"
    snapshot.export(orchfs.OrchFileSystem(root=str(source), skip_instance_cache=True), archive)
    fs = orchfs.OrchFileSystem(root=str(world.root), skip_instance_cache=True)
    snapshot.import_snapshot(fs, archive)
    migrate.rollback(world.root)
    restored = os.lstat(world.root / ".workflow_state.json").st_mode
    assert restored & (stat.S_ISUID | stat.S_ISGID) == 0, oct(restored)
    assert stat.S_IMODE(restored) == 0o755
    assert os.lstat(world.root / ".workflow_checkpoints").st_mode & (stat.S_ISVTX | 0o002) == 0
    assert stat.S_IMODE(os.lstat(world.root / ".orchestra.yaml").st_mode) == 0o664  # no world write


def test_a_journal_alone_never_sends_a_rollback_to_an_object_store(world, tmp_path):
    """A snapshot (or a state directory) bringing the journal of a migration to an object
    store: a rollback with no storage given went there with the caller's credentials,
    downloaded what it found into this repository and deleted it from that store (a
    replaced file would have been uploaded over it). The store must be named."""
    import fsspec

    store = f"memory://victim-{uuid.uuid4().hex}/state"
    source = tmp_path / "source"
    (source / ".git").mkdir(parents=True)
    (source / ".workflow_state.json").write_bytes(b'{"from": "the snapshot"}')
    migrate.apply(source, storage=store)
    archive = tmp_path / "evil.tgz"
    snapshot.export(orchfs.OrchFileSystem(root=str(source), skip_instance_cache=True), archive)
    memory = fsspec.filesystem("memory")
    victims = store.removeprefix("memory://") + "/state.json"
    memory.pipe(victims, b'{"victim": "precious"}')
    fs = orchfs.OrchFileSystem(root=str(world.root), skip_instance_cache=True)
    snapshot.import_snapshot(fs, archive)
    with pytest.raises(UnsafeStateError, match="went to"):
        migrate.rollback(world.root)
    assert "went to" in cli(world, "migrate", "--rollback")
    assert memory.cat(victims) == b'{"victim": "precious"}'
    assert not (world.root / ".workflow_state.json").exists()


def test_a_snapshot_never_makes_this_repository_portable(world, tmp_path):
    """``portable`` in meta.json is this repository's choice to commit its state (and
    its encrypted secrets) to git: migrate then leaves .gitignore alone and doctor stops
    warning. A snapshot's meta.json does not make that choice here."""
    source = tmp_path / "source"
    (source / ".git").mkdir(parents=True)
    cli_process(World(source, world.canary), "init", "--portable", rc=(0,))
    archive = tmp_path / "portable.tgz"
    snapshot.export(orchfs.OrchFileSystem(root=str(source), skip_instance_cache=True), archive)
    fs = orchfs.OrchFileSystem(root=str(world.root), skip_instance_cache=True)
    snapshot.import_snapshot(fs, archive)
    assert "portable" not in json.loads((world.state / "meta.json").read_text())
    assert "not-gitignored" in {f.id for f in doctor.run(world.root)}
    cli(world, "init", "--portable", rc=(0,))  # this repository's own choice stays
    snapshot.import_snapshot(fs, archive, force=True)
    assert json.loads((world.state / "meta.json").read_text())["portable"] is True


def test_doctor_fix_finishes_a_migration_to_the_configured_store_only(world, monkeypatch):
    """doctor --fix resumes an interrupted migration to an object store when that store
    is the configured ``state.storage`` (as ``orchfs migrate`` does), and never one the
    journal alone names."""
    import fsspec

    store = f"memory://fix-{uuid.uuid4().hex}/state"
    v1(world)
    real = migrate.checkpoint

    def stop_at_second_step(name: str, hits: list = []) -> None:  # noqa: B006 (a counter)
        if name == "migrate.step":
            hits.append(name)
            if len(hits) == 2:
                raise KeyboardInterrupt  # as a kill would: the journal stays unfinished
        real(name)

    monkeypatch.setattr(migrate, "checkpoint", stop_at_second_step)
    with pytest.raises(KeyboardInterrupt):
        migrate.apply(world.root, storage=store)
    monkeypatch.setattr(migrate, "checkpoint", real)
    found = doctor.run(world.root)
    assert "unfinished-migration" in {f.id for f in found}
    with pytest.raises(UnsafeStateError, match="went to"):
        doctor.fix(world.root, found)
    (world.state / "config.yaml").write_text(f"state:\n  storage: {store}\n")
    doctor.fix(world.root, doctor.run(world.root))
    assert "unfinished-migration" not in {f.id for f in doctor.run(world.root)}
    assert fsspec.filesystem("memory").exists(store.removeprefix("memory://") + "/state.json")


@pytest.mark.parametrize("planted", ["file link", "directory link"])
def test_snapshot_export_never_carries_what_a_link_in_the_state_leads_to(world, tmp_path, planted):
    """A link planted in the state directory to a file of the worktree (a .env with
    credentials, say; inside the root, so reads may follow it): an export would carry its
    bytes in the snapshot, which is made to be moved and shared. It is refused, named."""
    fs = v2(world)
    (world.root / ".env").write_text("AWS_SECRET=hunter2\n")
    if planted == "file link":
        (world.state / "notes.txt").symlink_to("../.env")
    else:
        (world.root / "private").mkdir()
        (world.root / "private" / "key.txt").write_text("AWS_SECRET=hunter2\n")
        (world.state / "data").symlink_to("../private")
    target = tmp_path / "out.tgz"
    with pytest.raises(SnapshotError, match="symlink"):
        snapshot.export(fs, target)
    assert "symlink" in cli(world, "snapshot", "export", str(target))
    assert not target.exists()


class _SwapAfterStat:
    """os, except that the first stat that describes the file ``path`` (by inode) moves
    it away (to ``away``) and puts a link to ``to`` in its place: another process
    swapping a link in between a check of the file and the read of it."""

    def __init__(self, path: Path, away: Path, to: Path) -> None:
        self._path, self._away, self._to = path, away, to
        st = os.stat(path)
        self._inode = (st.st_dev, st.st_ino)
        self.swapped = False

    def __getattr__(self, attr):
        real = getattr(os, attr)
        if attr not in ("stat", "fstat", "lstat"):
            return real

        def stat_then_swap(*args, **kwargs):
            got = real(*args, **kwargs)
            if not self.swapped and (got.st_dev, got.st_ino) == self._inode:
                self.swapped = True
                os.rename(self._path, self._away)
                os.symlink(self._to, self._path)
            return got

        return stat_then_swap


@pytest.mark.parametrize("leads_to", ["worktree file", "canary"])
def test_snapshot_export_never_reads_a_link_swapped_in_after_the_check(
    world, tmp_path, monkeypatch, leads_to
):
    """The state's notes.txt is swapped for a link (to a worktree file with credentials,
    or to the canary outside) right after orchfs stats it: the export carries the bytes
    of the file it opened and stat'ed, never what the link leads to."""
    from orchfs import beneath

    fs = v2(world)
    (world.root / ".env").write_bytes(b"AWS_SECRET=hunter2\n")
    notes = world.state / "notes.txt"
    notes.write_bytes(b"the state's own notes\n")
    to = world.root / ".env" if leads_to == "worktree file" else world.canary / "a.txt"
    swap = _SwapAfterStat(notes, tmp_path / "away.txt", to)
    monkeypatch.setattr(beneath, "os", swap)
    monkeypatch.setattr(snapshot, "os", swap)
    info = snapshot.export(fs, tmp_path / "out.tgz")
    monkeypatch.setattr(beneath, "os", os)
    monkeypatch.setattr(snapshot, "os", os)
    assert swap.swapped and notes.is_symlink()
    with tarfile.open(info.path) as tar:
        carried = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert carried["notes.txt"] == b"the state's own notes\n"
    for data in carried.values():
        assert b"hunter2" not in data and b"canary" not in data


def test_snapshot_import_never_lands_files_anyone_may_write(world, tmp_path):
    """A snapshot asking for world-writable files: config.yaml (which says where the state
    lives) or a file orchfs reads. Landed so, any local user could edit them afterwards.
    Imported files get the archive's bits less the umask and never world write."""
    from orchfs.atomic import UMASK

    fs = v2(world)
    archive = _archive(
        tmp_path / "loose.tgz",
        {"config.yaml": (b"web_mode: false\n", 0o666), "state.json": (b"{}", 0o777)},
        {},
    )
    snapshot.import_snapshot(fs, archive, force=True)
    for name in ("config.yaml", "state.json"):
        mode = stat.S_IMODE(os.lstat(world.state / name).st_mode)
        assert mode & (UMASK | 0o002) == 0, (name, oct(mode))


@pytest.mark.parametrize("limit", [2, 3, 4, 5])
@pytest.mark.parametrize("backup", [True, False])
def test_more_directories_than_are_held_in_one_batch_at_every_boundary(world, monkeypatch, limit, backup):
    """One batch of steps over more directories than are held at once, with the limit
    at each small value so that the steps needing two held directories (a backup copy,
    a rename into a new directory) meet the boundary: the migration and its rollback
    are exact, and nothing is left open."""
    from .test_migrate import tree

    monkeypatch.setattr(migrate, "HELD_LIMIT", limit)
    root = str(v1(world))
    for i in range(7):
        sub = world.root / ".workflow_checkpoints" / f"d{i}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / "cp.json").write_bytes(b'{"d": %d}' % i)
    before = tree(root)
    gc.collect()  # descriptors of earlier tests' garbage are closed now, not mid-count
    open_before = len(os.listdir("/proc/self/fd"))
    assert migrate.apply(root, backup=backup).applied
    assert len(os.listdir("/proc/self/fd")) == open_before
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    assert fs.cat_file("checkpoints/d6/cp.json") == b'{"d": 6}'
    migrate.rollback(root)
    assert tree(root) == before


class _SwapAt:
    """os, except that the first call of ``os.<call>`` whose first argument's last
    component is ``name`` first moves ``directory`` away (to ``away``) and puts a link
    to ``to`` in its place: another process swapping a directory for a link at that one
    deterministic point (opening a directory while it is listed, or a rename between
    the checks and the move)."""

    def __init__(self, call: str, name: str, directory: Path, away: Path, to: Path) -> None:
        self._call, self._name = call, name
        self._directory, self._away, self._to = directory, away, to
        self.swapped = False

    def __getattr__(self, attr):
        real = getattr(os, attr)
        if attr != self._call:
            return real

        def swapping(path, *args, **kwargs):
            if not self.swapped and os.fspath(path).rsplit("/", 1)[-1] == self._name:
                self.swapped = True
                os.rename(self._directory, self._away)
                os.symlink(self._to, self._directory)
            return real(path, *args, **kwargs)

        return swapping


@pytest.mark.parametrize("how", ["plan", "migrate"])
def test_a_v1_directory_swapped_while_listed_never_lists_names_outside(world, tmp_path, monkeypatch, how):
    """The v1 checkpoints directory is renamed away and a link to the canary (which has
    a ``sub/``) put in its place after its names are read and before its ``sub/`` is
    opened: the listing never names the canary's files; the run stops with one clear
    error and nothing moves."""
    root = v1(world)
    (root / ".workflow_checkpoints" / "sub").mkdir(parents=True, exist_ok=True)
    (root / ".workflow_checkpoints" / "sub" / "mine.json").write_bytes(b"{}")
    swap = _SwapAt("open", "sub", root / ".workflow_checkpoints", tmp_path / "away", world.canary)
    monkeypatch.setattr(migrate, "os", swap)
    with pytest.raises(UnsafeStateError, match="moved or replaced while orchfs listed"):
        if how == "plan":
            migrate.plan(str(root))
        else:
            migrate.apply(str(root))
    monkeypatch.setattr(migrate, "os", os)
    assert swap.swapped
    assert not (world.state / "checkpoints").exists()


def test_a_supersede_record_from_a_snapshot_never_retires_a_differing_legacy_file(world, tmp_path):
    """A snapshot (from another machine, or crafted) carries a supersede record for this
    repository's v1 state file, made to match it (its hash is no secret: the file is in
    the repository), beside a state.json that differs. Import drops the record: the pair
    stays a conflict, and migrate moves nothing and retires nothing. Export never
    carries one."""
    from orchfs.supersede import RECORD_DIR, record_key

    root = v1(world)
    legacy = (root / ".workflow_state.json").read_bytes()
    record = {
        "legacy": ".workflow_state.json",
        "sha256": hashlib.sha256(legacy).hexdigest(),
        "size": len(legacy),
        "at": 1.0,
    }
    archive = _archive(
        tmp_path / "crafted.tgz",
        {
            "state.json": (b'{"phase": "theirs"}', 0o644),
            f"{RECORD_DIR}/{record_key('.workflow_state.json')}": (json.dumps(record).encode(), 0o644),
        },
        {RECORD_DIR: 0o755},
    )
    fs = orchfs.OrchFileSystem(root=str(root), skip_instance_cache=True)
    snapshot.import_snapshot(fs, archive)
    with pytest.raises(orchfs.OrchFSError, match="conflict"):
        migrate.apply(str(root))
    assert (root / ".workflow_state.json").read_bytes() == legacy
    assert (world.state / "state.json").read_bytes() == b'{"phase": "theirs"}'
    assert "state.json" in {c.logical for c in fs.conflicts()}
    assert not (world.state / RECORD_DIR).exists()
    fs.pipe_file("log.jsonl", b"{}")  # supersedes the v1 log: a record here
    assert (world.state / RECORD_DIR).is_dir()
    with tarfile.open(snapshot.export(fs, tmp_path / "out.tgz").path) as tar:
        assert not [n for n in tar.getnames() if n.startswith(RECORD_DIR)]


def test_backups_of_v1_secrets_are_private_and_rollback_gives_the_modes_back(world):
    """v1 secret files at 0644 in a 0755 directory: after migrate, their backups are 0600
    in 0700 directories (as the moved secrets); the rollback puts back the v1 modes."""
    root = v1(world)
    (root / ".secrets.enc").write_bytes(b"sealed one")
    (root / ".manus").mkdir()
    (root / ".manus" / "secrets.enc.yaml").write_bytes(b"sops: sealed\n")
    os.chmod(root / ".secrets.enc", 0o644)
    os.chmod(root / ".manus" / "secrets.enc.yaml", 0o644)
    os.chmod(root / ".manus", 0o755)
    assert migrate.apply(str(root)).applied
    (backup,) = (world.state / migrate.BACKUP_DIR).iterdir()

    def mode(path: Path) -> int:
        return stat.S_IMODE(os.lstat(path).st_mode)

    assert mode(backup / ".secrets.enc") == 0o600
    assert mode(backup / ".manus" / "secrets.enc.yaml") == 0o600
    assert mode(backup) == 0o700
    assert mode(backup / ".manus") == 0o700
    assert mode(world.state / "secrets" / "legacy.enc") == 0o600
    assert (backup / ".secrets.enc").read_bytes() == b"sealed one"
    migrate.rollback(str(root))
    assert mode(root / ".secrets.enc") == 0o644
    assert mode(root / ".manus" / "secrets.enc.yaml") == 0o644
    assert mode(root / ".manus") == 0o755
    assert (root / ".manus" / "secrets.enc.yaml").read_bytes() == b"sops: sealed\n"


@pytest.mark.parametrize("kind", ["file", "link", "fifo"])
def test_a_tmp_that_is_no_directory_is_named_with_its_fix(world, tmp_path, kind):
    """``.orchestrator/tmp`` (where imports stage) is a file, a link or a FIFO: an import
    stops with one line naming it and what to do, changes nothing, and doctor reports it
    as unsafe-state."""
    fs = v2(world)
    tmp = world.state / "tmp"
    if kind == "file":
        tmp.write_bytes(b"not a directory")
    elif kind == "link":
        tmp.symlink_to(world.canary)
    else:
        os.mkfifo(tmp)
    archive = _archive(tmp_path / "s.tgz", {"notes.md": (b"imported", 0o644)}, {})
    with pytest.raises(UnsafeStateError, match=r"\.orchestrator/tmp is .*not a directory.*move it"):
        snapshot.import_snapshot(fs, archive, force=True)
    said = cli(world, "snapshot", "import", "--force", str(archive))
    assert ".orchestrator/tmp is" in said and "move it" in said and len(said.strip().splitlines()) == 1
    assert not (world.state / "notes.md").exists()
    assert (
        stat.S_IFMT(os.lstat(tmp).st_mode)
        == {"file": stat.S_IFREG, "link": stat.S_IFLNK, "fifo": stat.S_IFIFO}[kind]
    )
    found = [f for f in doctor.run(world.root) if f.id == "unsafe-state"]
    assert any(".orchestrator/tmp" in f.message for f in found), found


@pytest.mark.parametrize("planted", ["file link", "directory link"])
def test_persist_never_carries_what_a_link_in_the_session_leads_to(world, tmp_path, planted):
    """A link planted in the bound session's directory, to the worktree's ``.env`` or a
    private directory (inside the root, so reads through the filesystem may follow it):
    ``state.persist`` copies the session's own files and never the link's target; the
    sync names the link; the repository is left as it was."""
    from orchfs.sessions import Persister

    (world.root / ".env").write_text("AWS_SECRET=hunter2\n")
    fs = orchfs.OrchFileSystem(root=str(world.root), session="s1", skip_instance_cache=True)
    fs.pipe_file("state.json", b"{}")
    session = world.state / "sessions" / "s1"
    if planted == "file link":
        (session / "notes.txt").symlink_to("../../../.env")
    else:
        (world.root / "private").mkdir()
        (world.root / "private" / "key.txt").write_text("AWS_SECRET=hunter2\n")
        (session / "data").symlink_to("../../../private")
    remote = tmp_path / "remote"
    with pytest.raises(UnsafeStateError, match="symlink.*never what a link leads to"):
        Persister(fs, remote.as_uri()).sync()
    sent = {p.relative_to(remote).as_posix(): p.read_bytes() for p in remote.rglob("*") if p.is_file()}
    assert sent == {"s1/state.json": b"{}"}
    assert (world.root / ".env").read_text() == "AWS_SECRET=hunter2\n"
    assert os.path.islink(session / ("notes.txt" if planted == "file link" else "data"))


def test_restore_never_writes_through_a_link_in_the_session(world, tmp_path):
    """A persisted copy restored over a session directory where a link to the canary
    was planted: the canary is untouched (the world fixture checks it) whatever the
    restore makes of the link."""
    from orchfs.sessions import restore

    fs = orchfs.OrchFileSystem(root=str(world.root), session="s1", skip_instance_cache=True)
    fs.pipe_file("state.json", b"{}")
    (world.state / "sessions" / "s1" / "notes.txt").symlink_to(world.canary / "a.txt")
    remote = tmp_path / "remote"
    (remote / "s1").mkdir(parents=True)
    (remote / "s1" / "notes.txt").write_bytes(b"restored")
    with contextlib.suppress(orchfs.OrchFSError):
        restore(fs, remote.as_uri())
    assert (world.canary / "a.txt").read_bytes() == b"canary a"


def test_a_link_swapped_in_at_a_whole_directory_move_is_not_left_in_the_state(world, tmp_path, monkeypatch):
    """Without a backup the v1 checkpoints directory moves in one rename; a link to the
    canary is swapped in for it just before. The rename moves the link into
    ``.orchestrator/``; the run refuses, and moves the link back out where it was (orchfs
    moved it in; it never deletes what it did not make)."""
    root = v1(world)
    checkpoints = root / ".workflow_checkpoints"
    swap = _SwapAt("rename", ".workflow_checkpoints", checkpoints, tmp_path / "away", world.canary)
    monkeypatch.setattr(migrate, "os", swap)
    with pytest.raises(UnsafeStateError, match="replaced while the migration moved it.*back in its place"):
        migrate.apply(str(root), backup=False)
    monkeypatch.setattr(migrate, "os", os)
    assert swap.swapped
    assert not os.path.lexists(world.state / "checkpoints")
    assert os.readlink(checkpoints) == str(world.canary)
    assert sorted(os.listdir(tmp_path / "away")) == ["cp_1.json", "cp_2.json"]
    links = [p for p in world.state.rglob("*") if p.is_symlink()]
    assert links == []


def test_persist_never_carries_what_a_link_in_the_v1_session_leads_to(world, tmp_path):
    """The same link planted in the v1 session directory (``.workflow_sessions/s1/``,
    still read through the session's logical files before a migration): it is left
    out of the persisted copy too, and the sync names it where it is."""
    from orchfs.sessions import Persister

    (world.root / ".env").write_text("AWS_SECRET=hunter2\n")
    legacy = world.root / ".workflow_sessions" / "s1"
    legacy.mkdir(parents=True)
    (legacy / "state.json").write_bytes(b"{}")
    (legacy / "notes.txt").symlink_to("../../.env")
    fs = orchfs.OrchFileSystem(root=str(world.root), session="s1", skip_instance_cache=True)
    assert (
        fs.cat_file("sessions/s1/notes.txt") == b"AWS_SECRET=hunter2\n"
    )  # a read inside the root follows it
    remote = tmp_path / "remote"
    with pytest.raises(UnsafeStateError, match=r"\.workflow_sessions/s1/notes\.txt is a symlink"):
        Persister(fs, remote.as_uri()).sync()
    sent = {p.relative_to(remote).as_posix(): p.read_bytes() for p in remote.rglob("*") if p.is_file()}
    assert sent == {"s1/state.json": b"{}"}
    assert (world.root / ".env").read_text() == "AWS_SECRET=hunter2\n"
    assert os.path.islink(legacy / "notes.txt")


# --- modes of the files migrate moves into .orchestrator/ -------------------------------------
LOOSE_V1_MODES = {
    ".orchestra.yaml": 0o666,  # world-writable: anyone could say where the state goes
    ".workflow_state.json": 0o2775,  # set-group-ID
    ".workflow_checkpoints": 0o1777,  # a world-writable sticky directory
    ".workflow_checkpoints/cp_1.json": 0o4757,
}
MOVED_TO = {
    ".orchestra.yaml": "config.yaml",
    ".workflow_state.json": "state.json",
    ".workflow_checkpoints": "checkpoints",
    ".workflow_checkpoints/cp_1.json": "checkpoints/cp_1.json",
}


@pytest.mark.parametrize("backup", [True, False], ids=["backup", "no-backup"])
def test_migrate_never_keeps_set_id_or_world_write_inside_the_state(world, backup):
    """A v1 file or directory that anyone may write, or with set-ID or sticky bits, loses
    those bits when it moves into .orchestrator/ (file by file, or with --no-backup as
    one directory rename); the journal keeps the v1 mode, and a rollback gives back what
    a rollback ever restores: the v1 permission bits less write by everyone."""
    from orchfs import journal as migration_journal

    root = v1(world)
    for name, mode in LOOSE_V1_MODES.items():
        os.chmod(root / name, mode)
    migrate.apply(root, backup=backup)
    for name, mode in LOOSE_V1_MODES.items():
        moved = stat.S_IMODE(os.lstat(world.state / MOVED_TO[name]).st_mode)
        if name == ".workflow_checkpoints" and backup:  # made afresh, file by file
            assert moved & ~0o775 == 0, oct(moved)
        else:
            assert moved == mode & 0o775, (name, oct(moved))
    (journal_path,) = (world.state / "migrations").glob("*.jsonl")
    records = migration_journal.read_journal(str(journal_path), orchfs.default_layout())
    recorded = {step.source: step.mode for step in migration_journal.steps_of(records)}
    assert recorded[".orchestra.yaml"] == 0o666 and recorded[".workflow_state.json"] == 0o2775
    migrate.rollback(root)
    for name, mode in LOOSE_V1_MODES.items():
        back = stat.S_IMODE(os.lstat(root / name).st_mode)
        assert back == mode & 0o775, (name, oct(back))


# --- the v1 secrets file ------------------------------------------------------------------
def _v1_secrets_file(plaintext: str, password: str) -> bytes:
    """What the v1 tool wrote: ``openssl enc -aes-256-cbc -pbkdf2 -salt`` of a YAML mapping."""
    return subprocess.run(
        ["openssl", "enc", "-aes-256-cbc", "-pbkdf2", "-salt", "-pass", "env:SECRETS_PASSWORD"],
        input=plaintext.encode(),
        capture_output=True,
        check=True,
        env={**os.environ, "SECRETS_PASSWORD": password},
    ).stdout


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl binary is not installed")
@pytest.mark.parametrize(
    "entry, said",
    [
        ("'../../canary/a.txt': x", "cannot be a secret name"),
        ("'a/b': x", "cannot be a secret name"),
        ("'.wh.token': x", "cannot be a secret name"),
        ("MANIFEST: x", "cannot be a secret name"),
        ("token.enc: x", "cannot be a secret name"),
        ("NESTED: {inner: x}", "holds a dict, not a value"),
        ("LISTED: [x, y]", "holds a list, not a value"),
        ("EMPTY:", "holds a NoneType, not a value"),
    ],
)
def test_a_v1_secrets_file_with_one_bad_entry_imports_nothing(world, monkeypatch, entry, said):
    """``secrets import-legacy`` checks every entry of the decrypted v1 file before it
    stores the first: a name that is no secret name (a path, a marker, a reserved name)
    or a value that is no value refuses the whole file with one line naming the file and
    the entry; no secret was stored, the good entries before it included."""
    (world.root / ".secrets.enc").write_bytes(_v1_secrets_file(f"FIRST: one\n{entry}\nLAST: two\n", "pw"))
    monkeypatch.setenv("SECRETS_PASSWORD", "pw")
    fs = v2(world)
    with pytest.raises(StateError, match=rf"\.secrets\.enc: the entry .*{said}.*nothing was imported"):
        fs.secrets.import_legacy()
    assert fs.secrets.list() == []
    assert "nothing was imported" in cli(world, "secrets", "import-legacy")
    assert orchfs.OrchFileSystem(root=str(world.root), skip_instance_cache=True).secrets.list() == []


# --- state.persist ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "persist, said",
    [
        ("{url: 5}", "state.persist.url must be a URL"),
        ("{url: [s3://b/x]}", "state.persist.url must be a URL"),
        ("{url: ''}", "state.persist.url must be a URL"),
        ("{url: s3://b/x, interval: 0}", "state.persist.interval must be above 0"),
        ("{url: s3://b/x, interval: 0s}", "state.persist.interval must be above 0"),
    ],
)
def test_a_planted_persist_setting_is_refused_where_it_is_written(world, persist, said):
    """A cloned ``workflow.yaml`` whose ``state.persist`` has no URL string (a raw
    ``AttributeError`` once a session was persisted) or an interval of 0 (a sync loop
    without a pause, against the store): ``ConfigError`` naming the file and line."""
    (world.root / "workflow.yaml").write_text(f"name: x\nstate:\n  persist: {persist}\n")
    with pytest.raises(ConfigError, match=rf"workflow\.yaml:3:\d+: {said}"):
        orchfs.load_config(world.root)
    assert said in cli(world, "config", "show")
    if "interval" in said:
        from orchfs.sessions import Persister

        session = orchfs.OrchFileSystem(root=str(world.root), session="s1", skip_instance_cache=True)
        with pytest.raises(ConfigError, match="must be above 0"):
            Persister(session, str(world.canary), interval=0)


# --- a persisted session copy -----------------------------------------------------------------
@pytest.mark.parametrize(
    "planted", ["../../../canary/a.txt", "checkpoints/.wh.cp.json", "a\\b.json", "x\x01.json"]
)
def test_a_persisted_copy_with_a_planted_name_restores_nothing(world, moto_server, s3_bucket, planted):
    """``state.persist`` holds a session's copy that another machine restores: a name
    there that no session file can have (``..``, a marker, a backslash, a control
    character) refuses the whole copy before the first file is written."""
    from orchfs.sessions import restore
    from orchfs.storage import open_storage

    url = f"s3://{s3_bucket}/persist-{uuid.uuid4().hex[:8]}"
    remote = open_storage(url, {**moto_server.storage_options, "skip_instance_cache": True})
    remote.fs.pipe_file(f"{remote.backend_path('s1')}/a-good.json", b"{}")  # type: ignore[attr-defined]
    remote.fs.pipe_file(f"{remote.backend_path('s1')}/{planted}", b"planted")  # type: ignore[attr-defined]
    session = orchfs.OrchFileSystem(root=str(world.root), session="s1", skip_instance_cache=True)
    with pytest.raises(UnsafeStateError, match="nothing was restored"):
        restore(session, url, storage_options=moto_server.storage_options)
    assert not (world.state / "sessions").exists()


# --- stored strings shown to a terminal --------------------------------------------------------
# A newline (a second, forged line), a terminal escape (OSC 52 writes the clipboard of many
# terminals) and a right-to-left override, as a holder record or meta.json may carry them.
ESCAPES = "evil\norchfs: error: forged line\x1b]52;c;aGk=\x07\x1b[2J\u202etxt.exe"


def _on_one_line_without_escapes(text: str) -> None:
    assert not any(c in text for c in "\x1b\x07\u202e"), repr(text)
    assert "\norchfs: error: forged line" not in text


def test_a_planted_holder_record_shows_as_one_printable_line(world):
    """The lock is held (by another process), and its holder record was replaced by one
    whose host and session carry a newline and terminal escapes: the ``LockTimeout`` that
    names the holder, and the command line's error, show them escaped, on one line."""
    from .workers import hold_repo_lock

    fs = v2(world)
    holder = hold_repo_lock(world.root)
    try:
        record = {"pid": holder.pid, "host": ESCAPES, "session": ESCAPES, "since": 0}
        (world.state / "locks" / "repo.holder").write_text(json.dumps(record))
        with pytest.raises(orchfs.errors.LockTimeout) as caught, fs.lock("repo", timeout=0.2):
            pass
        message = str(caught.value)
        _on_one_line_without_escapes(message)
        assert "\\n" in message and "\\x1b" in message  # shown, escaped
        _on_one_line_without_escapes(cli(world, "migrate", "--lock-timeout", "0.2"))
    finally:
        holder.kill()
        holder.wait()


def test_a_planted_meta_root_shows_as_printable_text_in_doctor(world):
    """``meta.json`` names another root (copied state), planted with a forged line and
    terminal escapes: doctor's ``copied-state`` finding, in Python and on the terminal,
    shows it escaped, on the finding's one line."""
    v2(world)
    meta = json.loads((world.state / "meta.json").read_text())
    (world.state / "meta.json").write_text(json.dumps({**meta, "root": ESCAPES, "git_remote": ESCAPES}))
    (finding,) = [f for f in doctor.run(world.root) if f.id == "copied-state"]
    _on_one_line_without_escapes(finding.message)
    shown = cli(world, "doctor", rc=(1,))
    _on_one_line_without_escapes(shown)
    assert sum(line.startswith("[warning] copied-state") for line in shown.splitlines()) == 1


def test_v1_file_names_with_escapes_show_as_text_in_the_migration_plan(world):
    """A cloned v1 repository whose file names carry a terminal escape (OSC 52 writes the
    clipboard of many terminals), a right-to-left override and a newline: the plan that
    ``migrate --dry-run`` prints shows each name escaped, one move on each line."""
    legacy = world.root / ".workflow_checkpoints"
    legacy.mkdir()
    names = ["clip\x1b]52;c;aGk=\x07.json", "forged\n  rename  x -> y (1 B).json", "rtl\u202enosj.exe"]
    for name in names:
        (legacy / name).write_bytes(b"{}")
    (world.root / ".workflow_unknown\x1b]52;c;aGk=\x07").write_bytes(b"x")
    shown = cli(world, "migrate", "--dry-run", rc=(0,))
    _on_one_line_without_escapes(shown)
    moves = [line for line in shown.splitlines() if line.startswith("  rename")]
    assert len(moves) == len(names), shown
    assert sum(line.startswith("  unknown") for line in shown.splitlines()) == 1
    assert sorted(os.listdir(legacy)) == sorted(names)  # a dry run: nothing moved


@pytest.mark.parametrize(
    "setting, said",
    [
        ("lease: 400d", "state.lease is '400d'; give more than 0s and at most 366d"),
        ("lease: 0s", "state.lease is '0s'; give more than 0s and at most 366d"),
        ("lock_timeout: 10000000000000s", "longer than any wait needs"),
        ("retention: {max_age: 99999999999d}", "'99999999999d' is not a duration"),
    ],
)
def test_a_planted_duration_beyond_its_bounds_is_refused_where_it_is_written(
    world, monkeypatch, setting, said
):
    """A cloned ``workflow.yaml`` with a lease over a year (every lease object orchfs
    then wrote was refused as damaged when read back, by every process) or a wait that
    overflows a thread's timed wait: ``ConfigError`` naming the file and line; the same
    lease from the environment or an argument is refused too."""
    (world.root / "workflow.yaml").write_text(f"name: x\nstate:\n  {setting}\n")
    from orchfs.sessions import policy_of

    with pytest.raises(ConfigError, match=rf"workflow\.yaml:3:\d+: .*{re.escape(said)}"):
        policy_of(orchfs.load_config(world.root))  # the retention policy is read when used
    command = ("sessions", "prune", "--dry-run") if "retention" in setting else ("config", "show")
    assert said in cli(world, *command)
    if setting.startswith("lease"):
        (world.root / "workflow.yaml").unlink()
        monkeypatch.setenv("ORCHFS_LEASE", setting.split()[1])
        with pytest.raises(ValueError, match="at most 366 days"):
            orchfs.OrchFileSystem(root=str(world.root), skip_instance_cache=True)


@pytest.mark.parametrize("arguments", [{"lease": 400 * 86400.0}, {"lease": -1.0}, {"timeout": 1e13}])
def test_a_lock_with_a_lease_or_wait_beyond_its_bounds_is_refused(world, arguments):
    """``fs.lock(lease=)`` over a year would write a lease object that every process then
    refuses as damaged; a wait of 10^13 s overflows a thread's timed wait."""
    fs = v2(world)
    with pytest.raises(ValueError, match="must be"), fs.lock("repo", **arguments):
        pass


# --- the passphrase parameters of a namespace -------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        b'{"n": 1e999, "r": 8, "p": 1, "salt": "00"}',
        b'{"n": 32768, "r": -1e999, "p": 1, "salt": "00"}',
        b'{"n": 32768, "r": 8, "p": 1, "salt": 7}',
        b'{"n": "many", "r": 8, "p": 1, "salt": "00"}',
        b"[32768, 8, 1]",
        b'{"n": 1048577, "r": 8, "p": 1, "salt": "00"}',
    ],
)
def test_planted_passphrase_parameters_are_refused_as_damaged(world, monkeypatch, params):
    """``PASSPHRASE.json`` with an infinite cost (JSON's ``1e999``: a raw
    ``OverflowError``), values of the wrong type or a cost over the maximum: with
    ``ORCHFS_PASSPHRASE`` set, every key look-up says ``SecretIntegrityError``, in one
    line on the command line."""
    fs = with_secret(world)
    (secrets_dir(world) / "PASSPHRASE.json").write_bytes(params)
    monkeypatch.setenv("ORCHFS_PASSPHRASE", "correct horse battery staple")
    again = orchfs.OrchFileSystem(root=str(world.root), skip_instance_cache=True)
    with pytest.raises(orchfs.errors.SecretIntegrityError, match="passphrase|scrypt"):
        again.secrets.get("token")
    assert "orchfs: error:" in cli(world, "secrets", "get", "token")
    assert fs.secrets.get("token") == "s3cr3t"  # the key given before still opens it


@pytest.mark.parametrize("planted", ["state.json", "checkpoints"])
def test_persisting_into_a_local_copy_never_writes_through_a_planted_link(world, tmp_path, planted):
    """``state.persist`` on local disk (a shared mount, say), where someone planted a
    link in the session's copy: at a file (replaced by the session's file, its target
    untouched) or at a directory (refused); nothing outside the copy changes."""
    from orchfs.sessions import Persister

    copy = tmp_path / "persisted"
    (copy / "s1").mkdir(parents=True)
    target = world.canary / ("a.txt" if planted == "state.json" else "sub")
    (copy / "s1" / planted).symlink_to(target)
    session = orchfs.OrchFileSystem(root=str(world.root), session="s1", skip_instance_cache=True)
    session.pipe_file("state.json", b'{"step": 1}')
    session.pipe_file("checkpoints/cp.json", b'{"cp": 1}')
    if planted == "state.json":
        Persister(session, str(copy)).stop()
        assert (copy / "s1" / "state.json").read_bytes() == b'{"step": 1}'
        assert not (copy / "s1" / "state.json").is_symlink()
    else:
        with pytest.raises(PathEscapeError, match="symlink"):
            Persister(session, str(copy)).stop()
        assert os.readlink(copy / "s1" / "checkpoints") == str(target)


def test_restoring_from_a_local_copy_never_reads_through_a_planted_link(world, tmp_path):
    """The session's copy on local disk holds a link to a file outside it: restore is
    refused before it writes anything, and the outside bytes reach no session file."""
    from orchfs.sessions import restore

    copy = tmp_path / "persisted"
    (copy / "s1").mkdir(parents=True)
    (copy / "s1" / "a-state.json").write_bytes(b"{}")
    (copy / "s1" / "notes.txt").symlink_to(world.canary / "a.txt")
    session = orchfs.OrchFileSystem(root=str(world.root), session="s1", skip_instance_cache=True)
    with pytest.raises(PathEscapeError):
        restore(session, str(copy))
    assert not (world.state / "sessions").exists()


@pytest.mark.parametrize("config", ["workflow.yaml", ".orchestra.yaml"])
def test_a_relative_storage_is_relative_to_its_file_not_to_where_a_command_runs(world, monkeypatch, config):
    """``state.storage: kept-state`` in a configuration file: the state goes beside that
    file, whatever the working directory of the command (it went into the working
    directory: the canary here); an empty one is refused with file and line."""
    (world.root / config).write_text("state:\n  storage: kept-state\n")
    monkeypatch.chdir(world.canary)
    cli(world, "put", "state.json", "-", input="{}", rc=(0,))
    assert (world.root / "kept-state" / "state.json").read_bytes() == b"{}"
    assert orchfs.load_config(world.root).get("state.storage") == str(world.root / "kept-state")
    (world.root / config).write_text("state:\n  storage: ''\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(config)}:2:\d+: state.storage is empty"):
        orchfs.load_config(world.root)
    assert "state.storage is empty" in cli(world, "put", "state.json", "-", input="{}")
