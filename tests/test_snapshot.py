"""Snapshots: export and import a whole state directory, sealed or not; hostile and
damaged archives are refused with nothing written."""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import orchfs
from orchfs.cli import main
from orchfs.errors import LayoutVersionError, SecretIntegrityError, SecretsLockedError
from orchfs.snapshot import SnapshotError, export, import_snapshot

KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.urlsafe_b64encode(bytes(range(1, 33))).decode()
PLAINTEXT = "snapshot-marker-3f1c"


def tree(root) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: relative path -> (sha256, mode)."""
    out = {}
    for top, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(top, name)
            with open(full, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(full, root)] = (digest, stat.S_IMODE(os.lstat(full).st_mode))
    return out


def new_repo(path):
    path.mkdir()
    (path / ".git").mkdir()
    return path


@pytest.fixture
def source(tmp_path):
    repo = orchfs.testing.build_legacy_repo(tmp_path / "source")
    (repo / ".git").mkdir()
    fs = orchfs.OrchFileSystem(root=str(repo), key=KEY, skip_instance_cache=True)
    fs.pipe_file("state.json", b'{"step": 9}')
    fs.pipe_file("checkpoints/cp_9.json", b"{}")
    fs.session("s7").pipe_file("state.json", b'{"session": 7}')
    fs.rm_file("log.jsonl")  # a whiteout over the v1 log travels too
    fs.secrets.set("API_TOKEN", PLAINTEXT)
    with fs.lock("repo"):
        pass  # leaves locks/ behind, which a snapshot leaves out
    return repo, fs


def test_roundtrip_keeps_bytes_modes_identity_and_secrets(source, tmp_path):
    repo, fs = source
    archive = tmp_path / "state.tgz"
    info = export(fs, archive)
    assert stat.S_IMODE(os.stat(archive).st_mode) == 0o600
    # Supersede records vouch for this repository's v1 files: never in a snapshot.
    assert info.files == len(
        [r for r in tree(repo / ".orchestrator") if not r.startswith(("locks", "superseded"))]
    )
    target = new_repo(tmp_path / "target")
    (target / ".workflow_log.jsonl").write_bytes(b"v1 log\n")
    restored = orchfs.OrchFileSystem(root=str(target), key=KEY, skip_instance_cache=True)
    import_snapshot(restored, archive)
    before = {
        r: v for r, v in tree(repo / ".orchestrator").items() if not r.startswith(("locks", "superseded"))
    }
    after = {r: v for r, v in tree(target / ".orchestrator").items() if not r.startswith("locks")}
    assert set(after) == set(before)
    assert {r: v for r, v in after.items() if r != "meta.json"} == {
        r: v for r, v in before.items() if r != "meta.json"
    }
    meta = json.loads((target / ".orchestrator" / "meta.json").read_text())
    assert meta["repo_id"] == json.loads((repo / ".orchestrator" / "meta.json").read_text())["repo_id"]
    assert meta["root"] == str(target)
    assert restored.secrets.get("API_TOKEN") == PLAINTEXT
    assert restored.cat_file("state.json") == b'{"step": 9}'
    assert restored.session("s7").cat_file("state.json") == b'{"session": 7}'
    assert not restored.exists("log.jsonl")  # the whiteout hides this repository's v1 log
    secrets_dir = target / ".orchestrator" / "secrets"
    for top, dirs, _files in os.walk(secrets_dir):
        for name in dirs:
            assert stat.S_IMODE(os.lstat(os.path.join(top, name)).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(secrets_dir).st_mode) == 0o700
    assert "copied-state" not in {f.id for f in orchfs.doctor.run(str(target))}


def test_import_refuses_a_repository_with_state_unless_forced(source, tmp_path):
    _repo, fs = source
    archive = tmp_path / "state.tgz"
    export(fs, archive)
    target = new_repo(tmp_path / "target")
    other = orchfs.OrchFileSystem(root=str(target), skip_instance_cache=True)
    other.pipe_file("state.json", b"mine")
    with pytest.raises(SnapshotError, match="already holds state"):
        import_snapshot(other, archive)
    assert other.cat_file("state.json") == b"mine"
    import_snapshot(other, archive, force=True)
    assert other.cat_file("state.json") == b'{"step": 9}'


def test_sealed_snapshot_needs_the_key_and_detects_tampering(source, tmp_path, monkeypatch):
    for name in ("ORCHFS_KEY", "ORCHFS_KEY_FILE", "ORCHFS_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-user-key"))
    _repo, fs = source
    archive = tmp_path / "sealed.bin"
    info = export(fs, archive, encrypt=True, key=KEY)
    assert info.encrypted
    blob = archive.read_bytes()
    assert not blob.startswith(b"\x1f\x8b") and PLAINTEXT.encode() not in blob
    target = new_repo(tmp_path / "target")
    for bad_key, error in ((OTHER_KEY, SecretsLockedError), (None, SecretsLockedError)):
        fresh = orchfs.OrchFileSystem(root=str(target), key=bad_key, skip_instance_cache=True)
        with pytest.raises(error, match="key id"):
            import_snapshot(fresh, archive)
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x01
    damaged = tmp_path / "damaged.bin"
    damaged.write_bytes(bytes(flipped))
    keyed = orchfs.OrchFileSystem(root=str(target), key=KEY, skip_instance_cache=True)
    with pytest.raises(SecretIntegrityError):
        import_snapshot(keyed, damaged)
    assert not (target / ".orchestrator").exists() or tree(target / ".orchestrator") == {}
    import_snapshot(keyed, archive)
    assert keyed.secrets.get("API_TOKEN") == PLAINTEXT


def _archive(path, members) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, data in members:
            member = tarfile.TarInfo(name)
            member.type = kind
            member.size = len(data) if kind == tarfile.REGTYPE else 0
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                member.linkname = "../../outside"
            tar.addfile(member, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize(
    "name, kind",
    [
        ("../escape.json", tarfile.REGTYPE),
        ("/etc/escape.json", tarfile.REGTYPE),
        ("a/../../escape.json", tarfile.REGTYPE),
        ("a\\..\\escape.json", tarfile.REGTYPE),
        ("./state.json", tarfile.REGTYPE),
        ("a//b.json", tarfile.REGTYPE),
        ("bad\x01name", tarfile.REGTYPE),
        ("cafe\u0301.json", tarfile.REGTYPE),
        ("link.json", tarfile.SYMTYPE),
        ("hard.json", tarfile.LNKTYPE),
        ("fifo", tarfile.FIFOTYPE),
        ("locks/repo.lock", tarfile.REGTYPE),
        ("x" * 300, tarfile.REGTYPE),
    ],
)
def test_hostile_archives_write_nothing(tmp_path, name, kind):
    archive = tmp_path / "hostile.tgz"
    _archive(archive, [("state.json", tarfile.REGTYPE, b"ok"), (name, kind, b"evil")])
    target = new_repo(tmp_path / "target")
    fs = orchfs.OrchFileSystem(root=str(target), skip_instance_cache=True)
    before = tree(tmp_path)
    with pytest.raises(SnapshotError):
        import_snapshot(fs, archive)
    after = {r: v for r, v in tree(tmp_path).items() if "/locks/" not in r}
    assert after == before


def test_damaged_and_newer_archives_write_nothing(tmp_path):
    target = new_repo(tmp_path / "target")
    fs = orchfs.OrchFileSystem(root=str(target), skip_instance_cache=True)
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"not a snapshot at all")
    with pytest.raises(SnapshotError, match="not an orchfs snapshot"):
        import_snapshot(fs, junk)
    newer = tmp_path / "newer.tgz"
    _archive(newer, [("FORMAT", tarfile.REGTYPE, b"9\norchfs>=9\n"), ("state.json", tarfile.REGTYPE, b"x")])
    with pytest.raises(LayoutVersionError, match="orchfs>=9"):
        import_snapshot(fs, newer)
    assert not fs.exists("state.json")


def test_memory_state_exports_to_a_local_repository(tmp_path):
    memory = orchfs.OrchFileSystem(root=f"memory://snap-{time.time_ns()}")
    memory.pipe_file("state.json", b"from memory")
    memory.pipe_file("notes/a.md", b"note")
    archive = tmp_path / "memory.tgz"
    assert export(memory, archive).files == 4  # FORMAT, meta.json and the two files
    target = new_repo(tmp_path / "target")
    fs = orchfs.OrchFileSystem(root=str(target), skip_instance_cache=True)
    import_snapshot(fs, archive)
    assert fs.cat_file("notes/a.md") == b"note"


def test_command_line(source, tmp_path, monkeypatch):
    repo, _fs = source
    monkeypatch.setenv("ORCHFS_KEY", KEY)
    monkeypatch.setenv("ORCHFS_ORG_CONFIG", str(tmp_path / "none.yaml"))
    archive = tmp_path / "cli.bin"
    runner = CliRunner()
    out = runner.invoke(
        main, ["--root", str(repo), "snapshot", "export", str(archive), "--encrypt", "--json"]
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["encrypted"] is True
    target = new_repo(tmp_path / "target")
    back = runner.invoke(main, ["--root", str(target), "snapshot", "import", str(archive), "--json"])
    assert back.exit_code == 0, back.output
    assert json.loads(back.stdout)["files"] == json.loads(out.stdout)["files"]
    again = runner.invoke(main, ["--root", str(target), "snapshot", "import", str(archive)])
    assert again.exit_code == 1 and "--force" in again.output


def entries(root) -> dict[str, object]:
    """Every entry under ``root``, directories too: relative path -> "dir" or (sha256, mode)."""
    out: dict[str, object] = {}
    for top, dirs, _files in os.walk(root):
        out.update({os.path.relpath(os.path.join(top, d), root): "dir" for d in dirs})
    return out | tree(root)


@pytest.mark.parametrize("where", [".orchestrator/state.tgz", ".orchestrator/sessions/s7/state.tgz"])
def test_export_into_the_state_it_exports_is_refused(source, tmp_path, where):
    repo, fs = source
    before = entries(repo)
    with pytest.raises(
        SnapshotError, match=r"inside the state directory .*orchfs snapshot export \.\./state\.tgz"
    ):
        export(fs, repo / where)
    result = CliRunner().invoke(main, ["--root", str(repo), "snapshot", "export", str(repo / where)])
    assert result.exit_code == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("orchfs: error: ") and "inside the state directory" in line
    assert entries(repo) == before  # nothing written, not even a temp file


@pytest.mark.parametrize("bad", ["hostile", "damaged", "newer"])
def test_a_refused_import_into_an_empty_repository_leaves_nothing(tmp_path, bad):
    archive = tmp_path / "bad.tgz"
    if bad == "hostile":
        _archive(archive, [("state.json", tarfile.REGTYPE, b"ok"), ("link.json", tarfile.SYMTYPE, b"")])
    elif bad == "damaged":
        archive.write_bytes(b"not a snapshot")
    else:
        _archive(archive, [("FORMAT", tarfile.REGTYPE, b"9\norchfs>=9\n")])
    target = new_repo(tmp_path / "target")
    before = entries(tmp_path)
    fs = orchfs.OrchFileSystem(root=str(target), skip_instance_cache=True)
    with pytest.raises((SnapshotError, LayoutVersionError)):
        import_snapshot(fs, archive)
    assert entries(tmp_path) == before  # no .orchestrator/, no locks/, no tmp/


def test_a_refused_import_over_state_adds_nothing(source, tmp_path):
    _repo, fs = source
    archive = tmp_path / "state.tgz"
    export(fs, archive)
    target = new_repo(tmp_path / "target")
    orchfs.OrchFileSystem(root=str(target), skip_instance_cache=True).pipe_file("state.json", b"mine")
    before = entries(target)
    with pytest.raises(SnapshotError, match="already holds state"):
        import_snapshot(orchfs.OrchFileSystem(root=str(target), skip_instance_cache=True), archive)
    assert entries(target) == before


CHILD_IMPORT = """
import sys, orchfs
from orchfs.snapshot import import_snapshot
fs = orchfs.OrchFileSystem(root=sys.argv[1], skip_instance_cache=True)
import_snapshot(fs, sys.argv[2], force=sys.argv[3] == "force")
"""


def _import_in_child(target, archive, force: bool, fault: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "ORCHFS_FAULT"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    if fault:
        env["ORCHFS_FAULT"] = fault
    argv = [sys.executable, "-c", CHILD_IMPORT, str(target), str(archive), "force" if force else "-"]
    return subprocess.run(argv, env=env, capture_output=True, check=False).returncode


def _state_entries(target) -> dict[str, object]:
    return {r: v for r, v in entries(target / ".orchestrator").items() if not r.startswith("locks")}


@pytest.mark.parametrize("force", [False, True], ids=["empty", "force"])
def test_import_killed_at_every_point_of_the_swap_is_finished(source, tmp_path, force):
    """kill -9 at each step of the swap (ORCHFS_FAULT=snapshot.swap:n): doctor reports
    the unfinished import, and a rerun of the import (odd n) or `doctor --fix` (even n)
    finishes it to exactly what an uninterrupted import gives."""
    _repo, fs = source
    archive = tmp_path / "state.tgz"
    export(fs, archive)
    target = tmp_path / "target"

    def fresh() -> None:
        if target.exists():
            shutil.rmtree(target)
        new_repo(target)
        if force:  # state of its own: replaced files are put aside during the swap
            mine = orchfs.OrchFileSystem(root=str(target), skip_instance_cache=True)
            mine.pipe_file("state.json", b"mine")
            mine.pipe_file("notes/mine.md", b"kept: the snapshot has no such file")

    fresh()
    assert _import_in_child(target, archive, force, None) == 0
    expected = _state_entries(target)
    assert "tmp" not in expected
    hits = 0
    for n in itertools.count(1):
        fresh()
        code = _import_in_child(target, archive, force, f"snapshot.swap:{n}")
        if code == 0:
            break
        assert code == -signal.SIGKILL
        hits += 1
        found = {f.id: f for f in orchfs.doctor.run(str(target))}
        assert found["unfinished-import"].severity == "error"
        if n % 2:
            assert _import_in_child(target, archive, force, None) == 0
        else:
            assert "finished 1 interrupted snapshot import(s)" in orchfs.doctor.fix(str(target))
        assert _state_entries(target) == expected, n
        for top, _dirs, _files in os.walk(target / ".orchestrator" / "secrets"):
            assert stat.S_IMODE(os.lstat(top).st_mode) == 0o700, (n, top)
        assert "unfinished-import" not in {f.id for f in orchfs.doctor.run(str(target))}
    assert hits >= 4


def test_a_planted_swap_journal_is_refused_with_nothing_changed(tmp_path):
    target = new_repo(tmp_path / "target")
    fs = orchfs.OrchFileSystem(root=str(target), skip_instance_cache=True)
    fs.pipe_file("state.json", b"mine")
    journal = target / ".orchestrator" / "tmp" / "import-0123456789ab.swap"
    journal.parent.mkdir()
    journal.write_text(
        json.dumps({"source": "x", "sha256": "y", "files": 1, "bytes": 1, "members": ["../../outside"]})
    )
    before = entries(tmp_path)
    (finding,) = [f for f in orchfs.doctor.run(str(target)) if f.id == "unsafe-state"]
    assert "import-0123456789ab.swap" in finding.message
    orchfs.doctor.fix(str(target))
    assert {r: v for r, v in entries(tmp_path).items() if "/locks" not in r} == {
        r: v for r, v in before.items() if "/locks" not in r
    }


def test_doctor_sweeps_the_staging_of_an_import_killed_before_its_swap(tmp_path):
    """A staging directory with no swap journal beside it put nothing in place: it is an
    orphan-temp once old; one with a journal, and a `.replaced` one, are never swept."""
    target = new_repo(tmp_path / "target")
    fs = orchfs.OrchFileSystem(root=str(target), skip_instance_cache=True)
    fs.pipe_file("state.json", b"mine")
    tmp = target / ".orchestrator" / "tmp"
    for name in ("import-0123456789ab", "import-0123456789ab.replaced", "import-ba9876543210"):
        (tmp / name).mkdir(parents=True)
        (tmp / name / "state.json").write_bytes(b"staged")
    journal = {"source": "s.tgz", "sha256": "0" * 64, "files": 1, "bytes": 6, "members": ["state.json"]}
    (tmp / "import-ba9876543210.swap").write_text(json.dumps(journal))
    later = time.time() + 3600
    found = {f.id: f for f in orchfs.doctor.run(str(target), now=later)}
    assert found["orphan-temp"].paths == (str(tmp / "import-0123456789ab"),)
    orchfs.doctor.fix(str(target), [found["orphan-temp"]])
    assert sorted(os.listdir(tmp)) == [
        "import-0123456789ab.replaced",
        "import-ba9876543210",
        "import-ba9876543210.swap",
    ]
    assert fs.cat_file("state.json") == b"mine"
