"""Key material never travels: ``pickle(fs)`` and ``fs.to_json()`` carry no ``key=``
material in any spelling (docs/api.md, "Pickling and JSON"): JSON leaves it out, a
pickle carries a handle that only this process resolves; elsewhere the copy uses the key
sources, or is given ``key=`` again."""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys

import pytest
from fsspec.spec import AbstractFileSystem

import orchfs
from orchfs.errors import SecretsLockedError
from orchfs.secrets import parse_key

RAW = bytes(range(7, 39))
TEXT = base64.urlsafe_b64encode(RAW).decode()


def spellings() -> list[bytes]:
    """Every way the key could show up in serialised bytes."""
    return [
        RAW,
        TEXT.encode(),
        TEXT.rstrip("=").encode(),
        base64.b64encode(RAW),
        RAW.hex().encode(),
        repr(RAW).encode(),
        json.dumps(TEXT).encode(),
    ]


def assert_no_key(blob: bytes) -> None:
    for spelling in spellings():
        assert spelling not in blob


@pytest.fixture(params=["text", "raw", "MasterKey", "list"])
def key(request):
    return {"text": TEXT, "raw": RAW, "MasterKey": parse_key(RAW, "test"), "list": [TEXT]}[request.param]


@pytest.fixture(autouse=True)
def no_ambient_key(monkeypatch, tmp_path):
    for name in ("ORCHFS_KEY", "ORCHFS_KEY_FILE", "ORCHFS_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def test_pickle_and_json_carry_no_key(tmp_path, key):
    repo = tmp_path / "repo"
    repo.mkdir()
    fs = orchfs.OrchFileSystem(root=str(repo), key=key, skip_instance_cache=True)
    fs.secrets.set("token", "hunter2")
    assert fs.secrets.get("token") == "hunter2"
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        assert_no_key(pickle.dumps(fs, protocol=protocol))
    text = fs.to_json()
    assert_no_key(text.encode())
    assert "key" not in json.loads(text)
    assert_no_key(json.dumps(fs.to_dict()).encode())
    assert_no_key(repr(fs).encode() + repr(fs.secrets).encode())
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(fs.secrets)
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(parse_key(RAW, "test"))


def test_a_copy_finds_its_key_here_and_nowhere_else(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    fs = orchfs.OrchFileSystem(root=str(repo), key=TEXT, skip_instance_cache=True)
    fs.secrets.set("token", "hunter2")
    blob = pickle.dumps(fs)
    assert pickle.loads(blob).secrets.get("token") == "hunter2"  # this process holds the key
    script = (
        "import pickle, sys\n"
        "from orchfs.errors import SecretsLockedError\n"
        "fs = pickle.loads(sys.stdin.buffer.read())\n"
        "try:\n"
        "    print(fs.secrets.get('token'))\n"
        "except SecretsLockedError:\n"
        "    print('locked')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHFS_KEY")}
    elsewhere = subprocess.run([sys.executable, "-c", script], input=blob, capture_output=True, env=env)
    assert elsewhere.stdout.strip() == b"locked", elsewhere.stderr
    env["ORCHFS_KEY"] = TEXT  # where the other process has a key source, the copy uses it
    elsewhere = subprocess.run([sys.executable, "-c", script], input=blob, capture_output=True, env=env)
    assert elsewhere.stdout.strip() == b"hunter2", elsewhere.stderr
    from_json = AbstractFileSystem.from_json(fs.to_json())
    with pytest.raises(SecretsLockedError):
        from_json.secrets.get("token")
    options = {k: v for k, v in json.loads(fs.to_json()).items() if k not in ("cls", "protocol", "args")}
    again = orchfs.OrchFileSystem(**options, key=TEXT, skip_instance_cache=True)  # given again
    assert again.secrets.get("token") == "hunter2"


def test_the_installed_key_file_is_private_and_a_failed_install_leaves_no_copy(tmp_path, monkeypatch):
    """``secrets rotate`` puts the new key in the user key file: 0600; an install that
    fails (the fsync here) leaves no temp file holding the key beside it, and the old file
    as it was. (A link there is refused: tests/test_userkey.py.)"""
    from orchfs.secrets import install_user_key

    folder = tmp_path / "config" / "orchfs"
    folder.mkdir(parents=True)
    path = folder / "key"
    install_user_key(RAW, str(path))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert path.read_text().strip() == TEXT

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "injected failure of fsync")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="injected"):
        install_user_key(bytes(32), str(path))
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == ["key"]
    assert path.read_text().strip() == TEXT
