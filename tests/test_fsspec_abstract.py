"""fsspec's own abstract test suite (shipped in the fsspec wheel) run on every backend."""

from __future__ import annotations

import posixpath

import pytest
from fsspec.tests.abstract import (
    AbstractCopyTests,
    AbstractFixtures,
    AbstractGetTests,
    AbstractOpenTests,
    AbstractPipeTests,
    AbstractPutTests,
)

from .conftest import BACKENDS, make_fs


class OrchFixtures(AbstractFixtures):
    # On object stores each test costs seconds (round trips): those copies run in the full suite.
    @pytest.fixture(
        params=[
            *(pytest.param(b, marks=pytest.mark.slow) if b == "s3" else b for b in BACKENDS),
            pytest.param("seaweedfs", marks=[pytest.mark.s3, pytest.mark.slow]),
            pytest.param("gcs", marks=[pytest.mark.s3, pytest.mark.slow]),
        ]
    )
    def fs(self, request, tmp_path_factory):
        return make_fs(request.param, request, tmp_path_factory.mktemp("orch"))

    @pytest.fixture
    def fs_join(self):
        return posixpath.join

    @pytest.fixture
    def fs_path(self):
        return "abstract"

    @pytest.fixture
    def supports_empty_directories(self, fs):
        return fs.storage_capabilities.empty_directories


class TestOrchCopy(AbstractCopyTests, OrchFixtures):
    pass


class TestOrchGet(AbstractGetTests, OrchFixtures):
    pass


class TestOrchPut(AbstractPutTests, OrchFixtures):
    pass


class TestOrchPipe(AbstractPipeTests, OrchFixtures):
    pass


class TestOrchOpen(AbstractOpenTests, OrchFixtures):
    pass


class RootFixtures(OrchFixtures):
    """fsspec's own set-up for its memory filesystem, with orchfs in its place: the
    logical root as ``fs_path`` (top-level names), ``/``-joined paths, one filesystem
    per class."""

    @pytest.fixture(scope="class", params=("memory", "local"))
    def fs(self, request, tmp_path_factory):
        return make_fs(request.param, request, tmp_path_factory.mktemp("orch"))

    @pytest.fixture
    def fs_join(self):
        return lambda *args: "/".join(args)

    @pytest.fixture
    def fs_path(self):
        return ""

    @pytest.fixture
    def fs_sanitize_path(self):
        return lambda path: path.lstrip("/")  # orchfs names have no root marker


class TestRootCopy(AbstractCopyTests, RootFixtures):
    pass


class TestRootGet(AbstractGetTests, RootFixtures):
    pass


class TestRootPut(AbstractPutTests, RootFixtures):
    pass


class TestRootPipe(AbstractPipeTests, RootFixtures):
    pass


class TestRootOpen(AbstractOpenTests, RootFixtures):
    pass
