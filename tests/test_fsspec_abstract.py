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
    # On S3 each test costs seconds (moto round trips): that copy runs in the full suite.
    @pytest.fixture(params=[pytest.param(b, marks=pytest.mark.slow) if b == "s3" else b for b in BACKENDS])
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
