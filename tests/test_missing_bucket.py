"""orchfs never creates a bucket. With the state (``storage=``), a migration target or
``state.persist`` on a bucket that does not exist, every operation that would write
there, or make a "directory" there (which the ``makedirs`` of s3fs, gcsfs and adlfs do
by creating the bucket or container), says :class:`BucketNotFoundError` in one line
naming the store, the bucket and the fix; afterwards the bucket still does not exist,
and the repository on disk is as it was. Real S3-API (moto), GCS-API (fake-gcs-server)
and Azure Blob (Azurite) servers, through the launchers in ``backends/``."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import orchfs
from orchfs import migrate, sessions, snapshot
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
