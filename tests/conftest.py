"""Shared fixtures: one real backend per parameter (memory, local disk, S3 on moto, and the
object stores SeaweedFS, Azurite and fake-gcs-server (GCS), each started through its
``backends/`` launcher).

Markers: every test that talks to an object-storage service is marked ``s3`` here (by its
fixtures or an object-store parameter), so ``-m "not s3"`` is the fast loop. Tests marked
``slow`` (the S3 copy of fsspec's abstract suite, the longest fault injections and
concurrency runs) are left out of a plain ``pytest`` run unless ``--full`` or a ``-m``
expression is given, or the selection holds nothing else; ``nox -s full`` and the second
step of ``.ci/run`` run them.
"""

from __future__ import annotations

import itertools
import os
import sys
import uuid
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orchfs
from backends import azurite, fake_gcs, gcp_storage_emulator, moto_s3, seaweedfs
from backends.launcher import BackendUnavailable, Service

BACKENDS = ("memory", "local", "s3")
# The real object stores: slower to start and to talk to, so marked (and kept out of the quick run).
OBJECT_STORES = (
    "s3",
    pytest.param("seaweedfs", marks=pytest.mark.s3),
    pytest.param("azure", marks=pytest.mark.s3),
    pytest.param("gcs", marks=pytest.mark.s3),
)
ALL_BACKENDS = (*BACKENDS[:2], *OBJECT_STORES)
STORE_FIXTURES = frozenset(
    {
        "moto_server",
        "s3_bucket",
        "seaweedfs_server",
        "seaweedfs_bucket",
        "azurite_server",
        "azure_container",
        "gcs_server",
        "gcs_bucket",
        "ignoring_gcs_server",
        "ignoring_gcs_bucket",
    }
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full",
        action="store_true",
        default=False,
        help="also run the tests marked slow (what `nox -s full` does)",
    )


def _uses_s3(item: pytest.Item) -> bool:
    if STORE_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(
        value in ("s3", "seaweedfs", "azure", "gcs") for value in callspec.params.values()
    )


def pytest_itemcollected(item: pytest.Item) -> None:
    if _uses_s3(item):  # marked as collected: before any -m selection looks
        item.add_marker(pytest.mark.s3)


@pytest.hookimpl(trylast=True)  # after -k and -m have chosen
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("full") or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if len(slow) < len(items):  # a selection of slow tests alone runs them (never exit code 5)
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


_bucket_counter = itertools.count()


def _serve(start) -> Iterator[Service]:
    """Start a service through its launcher for the session; skip if it cannot be installed."""
    try:
        server = start()
    except BackendUnavailable as exc:
        pytest.skip(f"backend not installable here: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[moto_s3.MotoServer]:
    yield from _serve(moto_s3.start)


@pytest.fixture(scope="session")
def seaweedfs_server() -> Iterator[Service]:
    yield from _serve(seaweedfs.start)


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[Service]:
    yield from _serve(azurite.start)


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[Service]:
    yield from _serve(fake_gcs.start)


@pytest.fixture(scope="session")
def ignoring_gcs_server() -> Iterator[Service]:
    """A GCS-API server that ignores preconditions: leases there must be refused."""
    yield from _serve(gcp_storage_emulator.start)


def make_bucket(server: Service) -> str:
    from orchfs.storage import open_storage

    name = f"orchfs-test-{uuid.uuid4().hex[:8]}"
    options = {**server.storage_options, "skip_instance_cache": True}
    open_storage(f"{server.protocol}://{name}", options).fs.mkdir(name)  # type: ignore[attr-defined]
    return name


@pytest.fixture(scope="session")
def s3_bucket(moto_server: moto_s3.MotoServer) -> str:
    return make_bucket(moto_server)


@pytest.fixture(scope="session")
def seaweedfs_bucket(seaweedfs_server: Service) -> str:
    return make_bucket(seaweedfs_server)


@pytest.fixture(scope="session")
def azure_container(azurite_server: Service) -> str:
    return make_bucket(azurite_server)


@pytest.fixture(scope="session")
def gcs_bucket(gcs_server: Service) -> str:
    return make_bucket(gcs_server)


@pytest.fixture(scope="session")
def ignoring_gcs_bucket(ignoring_gcs_server: Service) -> str:
    return make_bucket(ignoring_gcs_server)


# kind -> (server fixture, bucket fixture)
_STORES = {
    "s3": ("moto_server", "s3_bucket"),
    "seaweedfs": ("seaweedfs_server", "seaweedfs_bucket"),
    "azure": ("azurite_server", "azure_container"),
    "gcs": ("gcs_server", "gcs_bucket"),
}


def store_of(kind: str, request: pytest.FixtureRequest) -> tuple[Service, str]:
    """The running service for an object-store kind and the test bucket on it."""
    server_fixture, bucket_fixture = _STORES[kind]
    return request.getfixturevalue(server_fixture), request.getfixturevalue(bucket_fixture)


def make_fs(kind: str, request: pytest.FixtureRequest, tmp_path, **kwargs) -> orchfs.OrchFileSystem:
    """A fresh, empty repository on the given backend."""
    if kind == "memory":
        root = f"memory://repo-{uuid.uuid4().hex}"
        return orchfs.OrchFileSystem(root=root, **kwargs)
    if kind == "local":
        repo = tmp_path / "repo"
        repo.mkdir(exist_ok=True)
        return orchfs.OrchFileSystem(root=str(repo), **kwargs)
    server, bucket = store_of(kind, request)
    root = f"{server.protocol}://{bucket}/repo-{uuid.uuid4().hex}"
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


def digest_tree(root: str) -> dict[str, bytes]:
    """Every file below ``root`` (relative name -> bytes)."""
    out = {}
    for top, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(top, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, root)] = f.read()
    return out
