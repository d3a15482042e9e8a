"""Bad input gets the expected exception type and a message that names the path."""

from __future__ import annotations

import pytest

import orchfs
from orchfs import errors


def test_hierarchy():
    for name in errors.__all__:
        cls = getattr(errors, name)
        if issubclass(cls, Warning):
            continue
        assert issubclass(cls, errors.OrchFSError)
    assert issubclass(errors.PathEscapeError, ValueError)
    assert issubclass(errors.LegacyPathWarning, DeprecationWarning)


def test_root_that_does_not_exist(tmp_path):
    missing = tmp_path / "no-such-repo"
    with pytest.raises(FileNotFoundError, match="no-such-repo"):
        orchfs.OrchFileSystem(root=str(missing))
    assert not missing.exists()


def test_root_that_is_a_file(tmp_path):
    file = tmp_path / "a-file"
    file.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="a-file"):
        orchfs.OrchFileSystem(root=str(file))


def test_unknown_protocol():
    with pytest.raises(ValueError, match=r"unknown protocol 'nosuchproto'.*nosuchproto://x"):
        orchfs.OrchFileSystem(root="nosuchproto://x")


def test_missing_root_argument(monkeypatch):
    monkeypatch.delenv("ORCHFS_ROOT", raising=False)
    with pytest.raises(TypeError, match="root="):
        orchfs.OrchFileSystem()


def test_directory_opened_as_file_names_it(local_repo):
    fs = orchfs.OrchFileSystem(root=local_repo)
    fs.makedirs("checkpoints")
    with pytest.raises(IsADirectoryError, match="orch://checkpoints"):
        fs.open("checkpoints", "rb")
    with pytest.raises(IsADirectoryError, match="orch://checkpoints"):
        fs.open("checkpoints", "wb")
    with pytest.raises(IsADirectoryError):
        fs.open("", "rb")


def test_missing_file_names_it(local_repo):
    fs = orchfs.OrchFileSystem(root=local_repo)
    with pytest.raises(FileNotFoundError, match="orch://state.json"):
        fs.cat_file("state.json")
    with pytest.raises(FileNotFoundError, match="orch://state.json"):
        fs.open("state.json", "rb")


def test_unsupported_mode(local_repo):
    fs = orchfs.OrchFileSystem(root=local_repo)
    fs.pipe_file("state.json", b"{}")
    with pytest.raises(ValueError, match="unsupported mode"):
        fs.open("state.json", "zb")


def test_orchfs_logs_reach_no_terminal_unless_the_application_asks():
    import subprocess
    import sys

    code = (
        "import orchfs.locks, orchfs.migrate, orchfs.doctor, logging;"
        "orchfs.locks.logger.warning('lease lost');"
        "orchfs.migrate.logger.warning('step');"
        "logging.basicConfig(level=logging.INFO);"
        "orchfs.doctor.logger.info('configured')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == ["INFO:orchfs.doctor:configured"]
