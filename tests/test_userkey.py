"""The user key file (``~/.config/orchfs/key``) is read and written only as this user's
own private file: a link at ``orchfs/`` or at the key, a directory of another user or one
that group or others can write is refused in one line, and a canary directory that a link
points at keeps its bytes and modes whatever orchfs was asked to do."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import orchfs
from orchfs.cli import main
from orchfs.errors import KeyFileError
from orchfs.secrets import init_user_key, install_user_key, user_key_path

NEW_KEY = bytes(range(32))
PLANTED = base64.urlsafe_b64encode(bytes(range(100, 132))).decode()


@pytest.fixture(autouse=True)
def config_home(monkeypatch, tmp_path) -> Path:
    for name in ("ORCHFS_KEY", "ORCHFS_KEY_FILE", "ORCHFS_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "config"
    home.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


@pytest.fixture
def canary(tmp_path) -> Path:
    """A directory outside the key's place holding a key of someone else's."""
    place = tmp_path / "canary"
    place.mkdir(mode=0o755)
    os.chmod(place, 0o755)
    (place / "key").write_text(PLANTED + "\n")
    os.chmod(place / "key", 0o600)
    (place / "notes").write_text("untouched")
    os.chmod(place / "notes", 0o644)
    return place


def snapshot(place: Path) -> dict[str, tuple[bytes | None, int]]:
    """Bytes and modes of everything below ``place`` (and of ``place`` itself)."""
    out: dict[str, tuple[bytes | None, int]] = {".": (None, os.lstat(place).st_mode)}
    for top, dirs, files in os.walk(place):
        for name in dirs + files:
            full = Path(top, name)
            data = full.read_bytes() if full.is_file() else None
            out[str(full.relative_to(place))] = (data, os.lstat(full).st_mode)
    return out


def read_keys(repo: Path) -> object:
    return orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True).secrets.where()


def cli_init(repo: Path) -> object:
    result = CliRunner().invoke(main, ["--root", str(repo), "secrets", "init"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("orchfs: error: "), result.stderr
    raise KeyFileError(lines[0])


OPERATIONS: dict[str, Callable[[Path], object]] = {
    "read (find the keys)": read_keys,
    "secrets init": lambda repo: init_user_key(),
    "install after rotate": lambda repo: install_user_key(NEW_KEY, user_key_path()),
    "orchfs secrets init": cli_init,
}


@pytest.fixture
def repo(tmp_path) -> Path:
    place = tmp_path / "repo"
    (place / ".git").mkdir(parents=True)
    return place


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_linked_orchfs_directory_is_neither_read_nor_written(config_home, canary, repo, operation):
    (config_home / "orchfs").symlink_to(canary)
    before = snapshot(canary)
    with pytest.raises(KeyFileError, match=r"orchfs is a symlink; .*remove the link"):
        OPERATIONS[operation](repo)
    assert snapshot(canary) == before
    assert os.readlink(config_home / "orchfs") == str(canary)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_linked_key_file_is_neither_read_nor_replaced(config_home, canary, repo, operation):
    folder = config_home / "orchfs"
    folder.mkdir(mode=0o700)
    (folder / "key").symlink_to(canary / "key")
    before = snapshot(canary)
    with pytest.raises(KeyFileError, match=r"key is a symlink"):
        OPERATIONS[operation](repo)
    assert snapshot(canary) == before
    assert os.readlink(folder / "key") == str(canary / "key")
    assert sorted(os.listdir(folder)) == ["key"]  # no temp file left beside it


@pytest.mark.parametrize("mode", [0o777, 0o720, 0o702])
@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_directory_others_can_write_is_refused_and_left_as_it_is(config_home, repo, operation, mode):
    folder = config_home / "orchfs"
    folder.mkdir()
    init_user_key()
    os.chmod(folder, mode)
    key_before = (folder / "key").read_bytes()
    with pytest.raises(KeyFileError, match=rf"mode {mode:o}.*chmod 700"):
        OPERATIONS[operation](repo)
    assert stat.S_IMODE(folder.stat().st_mode) == mode  # refused, not chmodded
    assert (folder / "key").read_bytes() == key_before


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
@pytest.mark.parametrize("what", ["directory", "key file"])
@pytest.mark.parametrize("operation", ["read (find the keys)", "install after rotate"])
def test_another_users_directory_or_key_is_refused(config_home, repo, what, operation):
    folder = config_home / "orchfs"
    init_user_key()
    key_before = (folder / "key").read_bytes()
    os.chown(folder if what == "directory" else folder / "key", 65534, 65534)
    if what == "key file" and operation == "install after rotate":
        install_user_key(NEW_KEY, user_key_path())  # the directory is ours: the key is replaced
        assert os.stat(folder / "key").st_uid == os.geteuid()
        return
    with pytest.raises(KeyFileError, match=r"belongs to another user \(uid 65534\).*chown"):
        OPERATIONS[operation](repo)
    assert (folder / "key").read_bytes() == key_before


def test_a_fifo_at_the_key_is_refused_without_waiting(config_home, repo):
    folder = config_home / "orchfs"
    folder.mkdir(mode=0o700)
    os.mkfifo(folder / "key", 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        read_keys(repo)


def test_the_key_place_is_made_private_and_the_configuration_directory_may_be_a_link(
    tmp_path, monkeypatch, repo
):
    """The configuration directory itself is the user's choice (dotfiles often link it):
    followed; ``orchfs/`` is made 0700 and the key 0600, and a write tightens an existing
    ``orchfs/`` that group or others could read."""
    real = tmp_path / "dotfiles"
    real.mkdir()
    (tmp_path / "linked-config").symlink_to(real)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "linked-config"))
    path = Path(init_user_key())
    assert stat.S_IMODE((real / "orchfs").stat().st_mode) == 0o700
    assert stat.S_IMODE((real / "orchfs" / "key").stat().st_mode) == 0o600
    assert read_keys(repo).startswith("user key file")  # type: ignore[attr-defined]
    os.chmod(real / "orchfs", 0o755)
    assert read_keys(repo).startswith("user key file")  # type: ignore[attr-defined]
    install_user_key(NEW_KEY, str(path))
    assert stat.S_IMODE((real / "orchfs").stat().st_mode) == 0o700
    assert path.read_text().strip() == base64.urlsafe_b64encode(NEW_KEY).decode()


def test_no_key_place_is_no_key_and_a_file_in_its_way_is_named(config_home, tmp_path, monkeypatch, repo):
    """A configuration directory that is a file, or a file named ``orchfs``: reading finds
    no user key (as before); writing one says what is in the way."""
    (config_home / "orchfs").write_text("not a directory")
    assert not read_keys(repo).startswith("user key file")  # type: ignore[attr-defined]
    with pytest.raises(KeyFileError, match="orchfs is not a directory; move it aside"):
        init_user_key()
    assert (config_home / "orchfs").read_text() == "not a directory"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home / "orchfs"))
    assert not read_keys(repo).startswith("user key file")  # type: ignore[attr-defined]
