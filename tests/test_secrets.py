"""Encrypted secret namespaces: format vectors, keys, rotation under kill -9, legacy import."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys

import pytest
from click.testing import CliRunner

import orchfs
from orchfs import secrets as sec
from orchfs.errors import SecretIntegrityError, SecretsLockedError

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "PLAINTEXT-MARKER-7f3a9c"


def key_text() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


@pytest.fixture(autouse=True)
def no_ambient_keys(monkeypatch, tmp_path):
    for name in ("ORCHFS_KEY", "ORCHFS_KEY_FILE", "ORCHFS_PASSPHRASE", "SECRETS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    return root


def store(root, key):
    return orchfs.OrchFileSystem(root=str(root), key=key, skip_instance_cache=True)


def test_set_get_list_delete_and_the_logical_view(repo):
    fs = store(repo, key_text())
    fs.secrets.set("API_KEY", MARKER)
    fs.secrets.set("EMPTY", "")
    assert fs.secrets.get("API_KEY") == MARKER and fs.secrets.get("EMPTY") == ""
    assert fs.secrets.list() == ["API_KEY", "EMPTY"]
    assert fs.cat_file("secrets/API_KEY") == MARKER.encode()
    assert fs.ls("secrets", detail=False) == ["secrets/API_KEY", "secrets/EMPTY"]
    with fs.open("secrets/VIA_OPEN", "wb") as f:
        f.write(b"opened")
    assert fs.secrets.get("VIA_OPEN") == "opened"
    fs.rm_file("secrets/EMPTY")
    assert fs.secrets.list() == ["API_KEY", "VIA_OPEN"]
    with pytest.raises(KeyError):
        fs.secrets.get("EMPTY")
    with pytest.raises(FileNotFoundError):
        fs.cat_file("secrets/EMPTY")
    with pytest.raises(orchfs.PathEscapeError):
        fs.secrets.set("../x", "v")


def test_one_mebibyte_and_binary_values(repo):
    fs = store(repo, key_text())
    big = os.urandom(2**20)
    fs.secrets.set("BIG", big)
    assert fs.secrets.get_bytes("BIG") == big


def _vectors_base():
    key = sec.parse_key(key_text(), "test")
    table = {key.id: (key, key.namespace_key("repo-a"))}
    return key, table


@pytest.mark.parametrize("size", [0, 1, 2**20], ids=["empty", "one-byte", "one-mebibyte"])
def test_format_vectors(size):
    plaintext = os.urandom(size)
    key, table = _vectors_base()
    blob = sec.encrypt(key, "repo-a", "NAME", plaintext)
    assert sec.decrypt(table, "repo-a", "NAME", blob, "v") == plaintext
    header = sec.HEADER.size
    # every header byte flipped
    for offset in range(header):
        bad = bytearray(blob)
        bad[offset] ^= 0x01
        with pytest.raises((SecretIntegrityError, SecretsLockedError)) as info:
            sec.decrypt(table, "repo-a", "NAME", bytes(bad), "v")
        if 6 <= offset < 14:  # the key id: a key that is not available, named
            assert info.type is SecretsLockedError and bytes(bad[6:14]).hex() in str(info.value)
    # ciphertext and tag bytes flipped (a sample for the big one)
    for offset in range(header, len(blob), max(1, (len(blob) - header) // 64)):
        bad = bytearray(blob)
        bad[offset] ^= 0x80
        with pytest.raises(SecretIntegrityError):
            sec.decrypt(table, "repo-a", "NAME", bytes(bad), "v")
    # truncation at every byte offset (the big one: every offset of the first 4 KiB and a sample)
    cuts = range(len(blob)) if len(blob) < 8192 else [*range(4096), *range(4096, len(blob), 4099)]
    for cut in cuts:
        with pytest.raises(SecretIntegrityError):
            sec.decrypt(table, "repo-a", "NAME", blob[:cut], "v")
    with pytest.raises(SecretIntegrityError):
        sec.decrypt(table, "repo-a", "NAME", blob + b"\x00", "v")
    with pytest.raises(SecretIntegrityError):  # another namespace
        other = {key.id: (key, key.namespace_key("repo-b"))}
        sec.decrypt(other, "repo-b", "NAME", blob, "v")
    with pytest.raises(SecretIntegrityError):  # renamed
        sec.decrypt(table, "repo-a", "OTHER", blob, "v")


def test_unknown_version_and_algorithm():
    key, table = _vectors_base()
    blob = bytearray(sec.encrypt(key, "repo-a", "N", b"v"))
    for offset, value, word in ((4, 2, "version"), (5, 9, "algorithm")):
        bad = bytearray(blob)
        bad[offset] = value
        with pytest.raises(SecretIntegrityError, match=word):
            sec.decrypt(table, "repo-a", "N", bytes(bad), "v")


def test_file_moved_renamed_or_replaced_in_the_store(repo, tmp_path):
    key = key_text()
    fs = store(repo, key)
    fs.secrets.set("A", "one")
    fs.secrets.set("B", "two")
    directory = repo / ".orchestrator" / "secrets" / fs.secrets.repo_id
    old_a = (directory / "A.enc").read_bytes()
    fs.secrets.set("A", "one, again")
    (directory / "A.enc").write_bytes(old_a)  # an older valid file put back
    with pytest.raises(SecretIntegrityError, match="not the version"):
        fs.secrets.get("A")
    shutil.copy(directory / "B.enc", directory / "A.enc")  # renamed
    with pytest.raises(SecretIntegrityError):
        fs.secrets.get("A")
    (directory / "B.enc").unlink()  # deleted behind orchfs's back
    with pytest.raises(SecretIntegrityError, match="gone"):
        fs.secrets.get("B")
    manifest = json.loads((directory / "MANIFEST").read_text())
    manifest["entries"]["B"]["version"] = 99
    (directory / "MANIFEST").write_text(json.dumps(manifest))
    with pytest.raises(SecretIntegrityError, match="manifest"):
        fs.secrets.list()


def test_key_id_without_a_key_is_locked_and_named(repo):
    fs = store(repo, key_text())
    fs.secrets.set("A", "one")
    stranger = store(repo, key_text())
    with pytest.raises(SecretsLockedError, match=fs.secrets.keys()[0].id.hex()):
        stranger.secrets.get("A")
    nobody = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    with pytest.raises(SecretsLockedError, match="ORCHFS_KEY"):
        nobody.secrets.get("A")


def test_key_sources_in_order_and_loose_key_files_refused(repo, tmp_path, monkeypatch):
    env_key, file_key, user_key = key_text(), key_text(), key_text()
    key_file = tmp_path / "keyfile"
    key_file.write_text(file_key)
    os.chmod(key_file, 0o644)
    monkeypatch.setenv("ORCHFS_KEY_FILE", str(key_file))
    with pytest.raises(SecretsLockedError, match="chmod 600"):
        orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True).secrets.keys()
    os.chmod(key_file, 0o600)
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    assert fs.secrets.where().startswith("ORCHFS_KEY_FILE")
    monkeypatch.setenv("ORCHFS_KEY", env_key)
    assert (
        orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
        .secrets.where()
        .startswith("ORCHFS_KEY ")
    )
    explicit = orchfs.OrchFileSystem(root=str(repo), key=user_key, skip_instance_cache=True)
    assert explicit.secrets.where().startswith("key= argument")
    monkeypatch.delenv("ORCHFS_KEY")
    monkeypatch.delenv("ORCHFS_KEY_FILE")
    path = sec.init_user_key()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(FileExistsError):
        sec.init_user_key()
    assert (
        orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
        .secrets.where()
        .startswith("user key file")
    )
    os.unlink(path)
    monkeypatch.setenv("ORCHFS_PASSPHRASE", "correct horse battery staple")
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    fs.secrets.set("P", "via passphrase")
    assert (
        orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True).secrets.get("P") == "via passphrase"
    )


def test_no_plaintext_anywhere(repo, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    key = key_text()
    fs = store(repo, key)
    fs.secrets.set("TOKEN", MARKER)
    fs.secrets.set("OTHER", MARKER + "-2")
    fs.secrets.rotate(key_text())
    messages = [repr(fs), repr(fs.secrets), repr(fs.secrets.keys()[0])]
    for attempt in (
        lambda: store(repo, key_text()).secrets.get("TOKEN"),
        lambda: sec.parse_key(MARKER, "arg"),
        lambda: fs.secrets.set("../" + MARKER, "x"),
    ):
        try:
            attempt()
        except Exception as exc:
            messages.append(str(exc))
            messages.append(repr(exc))
    for top, _dirs, files in os.walk(repo):
        for name in files:
            with open(os.path.join(top, name), "rb") as f:
                assert MARKER.encode() not in f.read(), name
    assert not any(MARKER in m and not m.startswith("refused") for m in messages[:3])
    assert all(MARKER not in m for m in messages if "refused" not in m and "url-safe" not in m)
    assert MARKER not in caplog.text
    assert key not in caplog.text and all(key not in m for m in messages)


def test_modes_with_umask_000(tmp_path):
    script = (
        "import os, sys, orchfs; os.umask(0); "
        "fs = orchfs.OrchFileSystem(root=sys.argv[1], key=sys.argv[2]); fs.secrets.set('A', 'v')"
    )
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([sys.executable, "-c", script, str(repo), key_text()], check=True)
    secrets_dir = repo / ".orchestrator" / "secrets"
    for top, _dirs, files in os.walk(secrets_dir):
        assert stat.S_IMODE(os.stat(top).st_mode) == 0o700, top
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(top, name)).st_mode) == 0o600, name


def test_one_hundred_thousand_writes_never_repeat_key_and_nonce():
    key, _ = _vectors_base()
    namespace = key.namespace_key("repo-a")
    seen = set()
    for _ in range(100_000):
        blob = sec.encrypt(key, "repo-a", "N", b"v", namespace)
        header = sec.HEADER.unpack_from(blob)
        pair = (header[4], header[5])  # the salt picks the file key; the nonce
        assert pair not in seen
        seen.add(pair)


def test_sops_484_failed_reencrypt_leaves_every_file_readable(repo, monkeypatch):
    """SOPS #484: a failed re-encrypt must not leave an empty or unreadable file."""
    old, new = key_text(), key_text()
    fs = store(repo, old)
    for i in range(6):
        fs.secrets.set(f"S{i}", f"value {i}")
    real = sec.encrypt
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full while re-encrypting")
        return real(*args, **kwargs)

    monkeypatch.setattr(sec, "encrypt", failing)
    with pytest.raises(OSError, match="disk full"):
        fs.secrets.rotate(new)
    monkeypatch.setattr(sec, "encrypt", real)
    directory = repo / ".orchestrator" / "secrets" / fs.secrets.repo_id
    assert all(p.stat().st_size > 0 for p in directory.iterdir())
    both = store(repo, [old, new])
    assert [both.secrets.get(f"S{i}") for i in range(6)] == [f"value {i}" for i in range(6)]
    report = both.secrets.rotate(new)
    assert report["retired"] and not report["pending"]
    assert [store(repo, new).secrets.get(f"S{i}") for i in range(6)] == [f"value {i}" for i in range(6)]


def test_ansible_18247_rotation_never_uses_a_key_that_cannot_be_found(repo):
    """Ansible #18247: rotation must never re-encrypt under a key that cannot then be found."""
    old = key_text()
    fs = store(repo, old)
    fs.secrets.set("A", "alpha")
    before = {p.name: p.read_bytes() for p in (repo / ".orchestrator" / "secrets").rglob("*") if p.is_file()}
    with pytest.raises(SecretsLockedError):
        fs.secrets.rotate("not-a-key")
    with pytest.raises(SecretsLockedError):
        fs.secrets.rotate(os.urandom(16))
    after = {p.name: p.read_bytes() for p in (repo / ".orchestrator" / "secrets").rglob("*") if p.is_file()}
    assert after == before
    new = key_text()
    report = fs.secrets.rotate(new)
    assert report["rewritten"] == 1
    assert store(repo, new).secrets.get("A") == "alpha"  # the new key alone finds everything
    with pytest.raises(SecretsLockedError):
        store(repo, old).secrets.get("A")


ROTATOR = """
import sys, orchfs
old, new, root = sys.argv[1], sys.argv[2], sys.argv[3]
orchfs.OrchFileSystem(root=root, key=[old, new]).secrets.rotate(new)
"""


@pytest.mark.parametrize("count", [4, pytest.param(12, marks=pytest.mark.slow)])
def test_kill_9_at_every_write_of_a_rotation(repo, count):
    """A rotation killed before any of its writes leaves every secret readable, and a rerun retires."""
    a, b = key_text(), key_text()
    fs = store(repo, a)
    values = {f"S{i:02d}": f"value {i}" for i in range(count)}
    for name, value in values.items():
        fs.secrets.set(name, value)
    key_ids = {sec.parse_key(a, "a").id, sec.parse_key(b, "b").id}
    for hit in itertools.count(1):
        env = {**os.environ, "ORCHFS_FAULT": f"secrets.write:{hit}"}
        rc = subprocess.run([sys.executable, "-c", ROTATOR, a, b, str(repo)], env=env).returncode
        if rc == 0:
            break
        assert rc == -signal.SIGKILL
        either = store(repo, [a, b])
        assert {n: either.secrets.get(n) for n in values} == values
        for name in values:
            blob = (repo / ".orchestrator" / "secrets" / either.secrets.repo_id / f"{name}.enc").read_bytes()
            assert sec.parse_header(blob, name).key_id in key_ids
        final = either.secrets.rotate(b)  # the rerun finishes and retires the old key
        assert final["retired"] and not final["pending"]
        assert {n: store(repo, b).secrets.get(n) for n in values} == values
        with pytest.raises(SecretsLockedError):
            store(repo, a).secrets.get("S00")
        store(repo, [a, b]).secrets.rotate(a)  # back to the start for the next hit
    # the manifest sealed under both keys, three writes per secret, the manifest under the new key alone
    assert hit == 3 * count + 3
    assert {n: store(repo, b).secrets.get(n) for n in values} == values


def test_import_legacy_from_real_openssl(repo, monkeypatch):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl binary is not installed")
    plaintext = f"API_KEY: {MARKER}\nDB_PASSWORD: 'p@ss: word'\n".encode()
    out = subprocess.run(
        ["openssl", "enc", "-aes-256-cbc", "-pbkdf2", "-salt", "-pass", "env:SECRETS_PASSWORD"],
        input=plaintext,
        capture_output=True,
        check=True,
        env={**os.environ, "SECRETS_PASSWORD": "hunter2"},
    ).stdout
    (repo / ".secrets.enc").write_bytes(out)
    monkeypatch.setenv("SECRETS_PASSWORD", "hunter2")
    key = key_text()
    fs = store(repo, key)
    assert fs.secrets.import_legacy() == ["API_KEY", "DB_PASSWORD"]
    assert fs.secrets.get("API_KEY") == MARKER and fs.secrets.get("DB_PASSWORD") == "p@ss: word"
    monkeypatch.setenv("SECRETS_PASSWORD", "wrong")
    with pytest.raises(SecretIntegrityError, match="SECRETS_PASSWORD"):
        store(repo, key).secrets.import_legacy()
    from orchfs import migrate

    monkeypatch.setenv("SECRETS_PASSWORD", "hunter2")
    migrate.apply(repo)  # now it sits in .orchestrator/secrets/legacy.enc
    assert not (repo / ".secrets.enc").exists()
    assert store(repo, key).secrets.import_legacy() == ["API_KEY", "DB_PASSWORD"]


def test_cli_secrets(repo, monkeypatch):
    from orchfs.cli import main

    (repo / ".git").mkdir()
    monkeypatch.setenv("ORCHFS_KEY", key_text())
    runner = CliRunner()
    assert runner.invoke(main, ["--root", str(repo), "secrets", "set", "TOKEN"], input=MARKER).exit_code == 0
    got = runner.invoke(main, ["--root", str(repo), "secrets", "get", "TOKEN"])
    assert got.stdout == MARKER + "\n"
    listed = runner.invoke(main, ["--root", str(repo), "--json", "secrets", "list"])
    assert json.loads(listed.stdout) == {"secrets": ["TOKEN"]}
    where = runner.invoke(main, ["--root", str(repo), "secrets", "where"])
    assert where.stdout.startswith("ORCHFS_KEY")
    monkeypatch.setenv("ORCHFS_KEY", key_text())
    locked = runner.invoke(main, ["--root", str(repo), "secrets", "get", "TOKEN"])
    assert locked.exit_code == 1 and MARKER not in locked.output
    from orchfs import doctor

    assert "secret-unreadable" in {f.id for f in doctor.run(repo)}
    for command in ("init", "set", "get", "list", "rm", "rotate", "import-legacy", "where"):
        help_text = runner.invoke(main, ["secrets", command, "--help"]).output
        assert "Example" in help_text, command


def test_passphrase_cost_bounds(repo, monkeypatch):
    monkeypatch.setenv("ORCHFS_PASSPHRASE", "a long passphrase")
    monkeypatch.setenv("ORCHFS_SCRYPT_N", "1024")  # below the minimum: raised to it
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    fs.secrets.set("P", "v")
    params_path = repo / ".orchestrator" / "secrets" / fs.secrets.repo_id / "PASSPHRASE.json"
    params = json.loads(params_path.read_text())
    assert params["n"] == sec.SCRYPT_MIN_N
    assert stat.S_IMODE(params_path.stat().st_mode) == 0o600
    params["n"] = 2**24  # a planted cost above the maximum is refused, not computed
    params_path.write_text(json.dumps(params))
    with pytest.raises(SecretIntegrityError, match="outside"):
        orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True).secrets.get("P")


def test_reading_secrets_of_a_new_repository_writes_nothing(repo):
    fs = store(repo, key_text())
    assert fs.secrets.list() == [] and fs.ls("secrets") == []
    with pytest.raises(KeyError):
        fs.secrets.get("NOPE")
    assert not fs.exists("secrets/NOPE")
    assert list(repo.iterdir()) == []
