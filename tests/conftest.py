"""Shared fixtures: one real backend per parameter (memory, local disk, S3 on moto)."""

from __future__ import annotations

import itertools
import os
import sys
import uuid
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orchfs
from backends import moto_s3

BACKENDS = ("memory", "local", "s3")
_bucket_counter = itertools.count()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[moto_s3.MotoServer]:
    server = moto_s3.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_bucket(moto_server: moto_s3.MotoServer) -> str:
    import s3fs

    name = f"orchfs-test-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(**moto_server.storage_options).mkdir(name)
    return name


def make_fs(kind: str, request: pytest.FixtureRequest, tmp_path, **kwargs) -> orchfs.OrchFileSystem:
    """A fresh, empty repository on the given backend."""
    if kind == "memory":
        root = f"memory://repo-{uuid.uuid4().hex}"
        return orchfs.OrchFileSystem(root=root, **kwargs)
    if kind == "local":
        repo = tmp_path / "repo"
        repo.mkdir(exist_ok=True)
        return orchfs.OrchFileSystem(root=str(repo), **kwargs)
    server = request.getfixturevalue("moto_server")
    bucket = request.getfixturevalue("s3_bucket")
    root = f"s3://{bucket}/repo-{uuid.uuid4().hex}"
    return orchfs.OrchFileSystem(root=root, storage_options=server.storage_options, **kwargs)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def orch(backend: str, request: pytest.FixtureRequest, tmp_path) -> orchfs.OrchFileSystem:
    """An empty repository on each backend in turn."""
    return make_fs(backend, request, tmp_path)


@pytest.fixture
def local_repo(tmp_path) -> str:
    repo = tmp_path / "repo"
    repo.mkdir()
    return str(repo)
