"""orchfs never creates a bucket. With the state (``storage=``), a migration target or
``state.persist`` on a bucket that does not exist, every operation that would write
there, or make a "directory" there (which the ``makedirs`` of s3fs, gcsfs and adlfs do
by creating the bucket or container), says :class:`BucketNotFoundError` in one line
naming the store, the bucket and the fix; afterwards the bucket still does not exist,
and the repository on disk is as it was. Reads and listings say so too (a missing
bucket lists as empty to every client: the state would look merely empty), and
``orchfs doctor`` reports it as the ``bucket-missing`` finding. Real S3-API (moto),
GCS-API (fake-gcs-server) and Azure Blob (Azurite) servers, through the launchers in
``backends/``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import orchfs
from orchfs import doctor, migrate, sessions, snapshot
from orchfs.cli import main
from orchfs.errors import BucketNotFoundError
from orchfs.storage import open_storage
from orchfs.testing import build_legacy_repo

from .conftest import digest_tree

KEY = bytes(range(32))


SERVERS = {"s3": "moto_server", "gcs": "gcs_server", "azure": "azurite_server"}


@pytest.fixture(params=sorted(SERVERS))
def server(request) -> Any:
    return request.getfixturevalue(SERVERS[request.param])


@pytest.fixture
def bucket() -> str:
    return f"orchfs-missing-{uuid.uuid4().hex[:8]}"


def bucket_exists(server: Any, bucket: str) -> bool:
    options = {**server.storage_options, "skip_instance_cache": True}
    return open_storage(f"{server.protocol}://{bucket}", options).fs.exists(bucket)  # type: ignore[attr-defined]


@pytest.fixture
def repo(tmp_path) -> Path:
    place = tmp_path / "repo"
    (place / ".git").mkdir(parents=True)
    return place


@pytest.fixture
def archive(tmp_path) -> str:
    source = tmp_path / "source"
    (source / ".git").mkdir(parents=True)
    fs = orchfs.OrchFileSystem(root=str(source), skip_instance_cache=True)
    fs.pipe_file("state.json", b"{}")
    path = str(tmp_path / "snapshot.tgz")
    snapshot.export(fs, path)
    return path


class World:
    """A repository on disk whose state (or persisted copy) is on a missing bucket."""

    def __init__(self, server: Any, bucket: str, repo: Path, archive: str) -> None:
        self.server = server
        self.store = f"{server.protocol}://{bucket}/orchestrator/repo"
        self.options = server.storage_options
        self.repo = repo
        self.archive = archive

    def fs(self, **kwargs: Any) -> orchfs.OrchFileSystem:
        return orchfs.OrchFileSystem(
            root=str(self.repo),
            storage=self.store,
            storage_options=self.options,
            skip_instance_cache=True,
            key=KEY,
            **kwargs,
        )

    def storage(self) -> Any:
        return open_storage(self.store, {**self.options, "skip_instance_cache": True})

    def local_session(self) -> orchfs.OrchFileSystem:
        fs = orchfs.OrchFileSystem(root=str(self.repo), session="s1", skip_instance_cache=True)
        fs.pipe_file("state.json", b'{"step": 1}')
        return fs


def _persist(world: World) -> None:
    with sessions.Persister(world.local_session(), world.store, storage_options=world.options):
        pass


def _locked(world: World) -> None:
    with world.fs().lock("repo", timeout=5):
        pass


OPERATIONS: dict[str, Callable[[World], object]] = {
    "Storage.makedirs": lambda w: w.storage().makedirs("checkpoints"),
    "Storage.makedirs_private": lambda w: w.storage().makedirs_private("secrets"),
    "Storage.makedirs of the base": lambda w: w.storage().makedirs(""),
    "fs.makedirs": lambda w: w.fs().makedirs("checkpoints"),
    "fs.mkdir": lambda w: w.fs().mkdir("notes"),
    "fs.pipe_file": lambda w: w.fs().pipe_file("state.json", b"{}"),
    "fs.append_line": lambda w: w.fs().append_line("log.jsonl", {"event": "x"}),
    "fs.lock (lease)": _locked,
    "secrets.set": lambda w: w.fs().secrets.set("TOKEN", "s3cr3t"),
    "snapshot import": lambda w: snapshot.import_snapshot(w.fs(), w.archive),
    "migrate to the store": lambda w: migrate.apply(w.repo, storage=w.store, storage_options=w.options),
    "session persist": _persist,
    "session restore": lambda w: sessions.restore(w.local_session(), w.store, storage_options=w.options),
    # Reads and listings: not "empty" and not "no such file".
    "fs.ls of the root": lambda w: w.fs().ls(""),
    "fs.ls of a directory": lambda w: w.fs().ls("checkpoints"),
    "fs.find": lambda w: w.fs().find(""),
    "fs.cat_file": lambda w: w.fs().cat_file("state.json"),
    "fs.info": lambda w: w.fs().info("state.json"),
    "fs.exists": lambda w: w.fs().exists("state.json"),
    "secrets.list": lambda w: w.fs().secrets.list(),
    "secrets.get": lambda w: w.fs().secrets.get("TOKEN"),
    "Storage.scan": lambda w: w.storage().scan(""),
    "Storage.read_optional": lambda w: w.storage().read_optional("state.json"),
    "Storage.find_files": lambda w: w.storage().find_files("secrets"),
}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_an_operation_on_a_missing_bucket_says_so_and_creates_none(server, bucket, repo, archive, operation):
    world = World(server, bucket, repo, archive)
    if operation == "migrate to the store":
        build_legacy_repo(repo)
    elif operation.startswith("session"):
        world.local_session()
    before = digest_tree(str(repo))
    with pytest.raises(BucketNotFoundError) as caught:
        OPERATIONS[operation](world)
    assert (
        str(caught.value) == f"{world.store}: the bucket {bucket!r} does not exist; create the bucket first"
    )
    assert caught.value.bucket == bucket and "\n" not in str(caught.value)
    assert not bucket_exists(server, bucket)
    assert digest_tree(str(repo)) == before


def test_an_empty_bucket_still_reads_as_empty(server, bucket, repo, archive):
    """The bucket is there but holds nothing of the state yet: empty, not an error."""
    world = World(server, bucket, repo, archive)
    open_storage(
        f"{server.protocol}://{bucket}", {**server.storage_options, "skip_instance_cache": True}
    ).fs.mkdir(  # type: ignore[attr-defined]
        bucket
    )
    fs = world.fs()
    assert fs.ls("", detail=False) == [] and fs.find("") == [] and fs.secrets.list() == []
    assert not fs.exists("state.json")
    with pytest.raises(FileNotFoundError) as caught:
        fs.cat_file("state.json")
    assert not isinstance(caught.value, BucketNotFoundError)


ENVIRONMENT: dict[str, Callable[[Any], dict[str, str]]] = {
    "s3": lambda s: {
        "AWS_ENDPOINT_URL": s.endpoint,
        "AWS_ACCESS_KEY_ID": s.storage_options["key"],
        "AWS_SECRET_ACCESS_KEY": s.storage_options["secret"],
    },
    "gs": lambda s: {"STORAGE_EMULATOR_HOST": s.endpoint},
    "abfs": lambda s: {"AZURE_STORAGE_CONNECTION_STRING": s.storage_options["connection_string"]},
}


@pytest.fixture
def configured(server, bucket, repo, monkeypatch) -> Iterator[World]:
    """The repository's workflow.yaml names the missing bucket as ``state.storage``; the
    clients reach the server through the environment (their instance caches emptied before
    and after: a cached client keeps the endpoint of the environment it was made in)."""
    import adlfs
    import gcsfs
    import s3fs

    for cached in (s3fs.S3FileSystem, gcsfs.GCSFileSystem, adlfs.AzureBlobFileSystem):
        cached.clear_instance_cache()
    for name, value in ENVIRONMENT[server.protocol](server).items():
        monkeypatch.setenv(name, value)
    world = World(server, bucket, repo, "")
    (repo / "workflow.yaml").write_text(f"state:\n  storage: {world.store}\n")
    yield world
    for cached in (s3fs.S3FileSystem, gcsfs.GCSFileSystem, adlfs.AzureBlobFileSystem):
        cached.clear_instance_cache()


def _cli(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args))
    assert not isinstance(result.exception, BaseException) or isinstance(result.exception, SystemExit), result
    assert "Traceback" not in result.output
    return result


@pytest.mark.parametrize(
    "command", [("ls",), ("ls", "checkpoints"), ("cat", "state.json"), ("secrets", "list")]
)
def test_the_cli_reading_a_missing_bucket_says_so(configured, command):
    expected = f"{configured.store}: the bucket {configured.store.split('/')[2]!r} does not exist; create the bucket first"
    before = digest_tree(str(configured.repo))
    result = _cli("--root", str(configured.repo), *command)
    assert result.exit_code == 1, result.output
    assert [line for line in result.stderr.splitlines() if line] == [f"orchfs: error: {expected}"]
    assert result.stdout == ""
    result = _cli("--root", str(configured.repo), "--json", *command)
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"error": "BucketNotFoundError", "message": expected}
    assert digest_tree(str(configured.repo)) == before
    assert not bucket_exists(configured.server, configured.store.split("/")[2])


def test_doctor_reports_a_missing_bucket(configured):
    """A finding (an error: every command fails), never "no problems found"; exit 1;
    the same in --json; and doctor creates no bucket."""
    bucket = configured.store.split("/")[2]
    before = digest_tree(str(configured.repo))
    everything = doctor.run(configured.repo)
    found = [f for f in everything if f.id == "bucket-missing"]
    assert len(found) == 1 and found[0].severity == "error", everything
    assert bucket in found[0].message and configured.store in found[0].message
    assert "create the bucket" in found[0].fix and found[0].paths == (configured.store,)
    result = _cli("--root", str(configured.repo), "doctor")
    assert result.exit_code == 1, result.output
    assert "bucket-missing" in result.output and "no problems found" not in result.output
    assert "Traceback" not in result.stderr
    result = _cli("--root", str(configured.repo), "doctor", "--json")
    assert result.exit_code == 1
    ids = [f["id"] for f in json.loads(result.stdout)["findings"]]
    assert ids.count("bucket-missing") == 1
    assert digest_tree(str(configured.repo)) == before
    assert not bucket_exists(configured.server, bucket)
