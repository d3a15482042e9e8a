"""Lease objects are read with a bound: a planted multi-megabyte ``locks/<name>.lease`` is
refused as a damaged lease (the error any planted lease gives) after a ranged read of at
most ``LEASE_MAX_BYTES + 1`` bytes, never read into memory whole; the version-only look
of a fenced write reads one byte of the object, not all of it. Real servers (moto,
fake-gcs-server, Azurite) through the launchers in ``backends/``; the bytes each answer
carried are counted by a loopback proxy in front of moto and fake-gcs-server."""

from __future__ import annotations

import json
import threading

import pytest

import orchfs
from orchfs import locks
from orchfs.errors import StateError
from orchfs.storage import open_storage

from .conftest import make_fs, store_of
from .test_locks import _proxied_fs, _RewritingProxy

BIG = 4 << 20  # a planted lease object of 4 MiB
# A lease record orchfs would accept in every field, padded past any lease's size.
PLANTED = json.dumps(
    {"pid": 1, "host": "h", "since": 0, "lease": 30, "generation": 1, "pad": "x" * BIG}
).encode()


class Answers:
    """The size of each answer's body the proxy passed on, by request path."""

    def __init__(self) -> None:
        self.sizes: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()

    def __call__(self, method: str, path: str, headers, status: int, payload: bytes):
        with self._lock:
            self.sizes.append((method, path, len(payload)))
        return status, payload

    def largest(self, fragment: str) -> int:
        return max(
            (size for method, path, size in self.sizes if fragment in path and method == "GET"), default=0
        )


@pytest.fixture(params=["s3", "gcs"])
def proxied(request):
    server, bucket = store_of(request.param, request)
    answers = Answers()
    proxy = _RewritingProxy(server.endpoint, answers)
    fs = _proxied_fs(server, bucket, proxy)
    # The proxy gives a HEAD's answer the length of its (empty) body: sizes are asked directly.
    direct = open_storage(fs.storage, {**server.storage_options, "skip_instance_cache": True})
    yield fs, answers, direct
    proxy.close()


def _refused(fs: orchfs.OrchFileSystem) -> None:
    with pytest.raises(StateError) as caught, fs.lock("repo", timeout=5):
        pass
    message = str(caught.value)
    assert "not a lease orchfs wrote" in message and f"over {locks.LEASE_MAX_BYTES} bytes" in message
    assert "\n" not in message and len(message) < 500


def test_an_oversized_lease_is_refused_after_a_bounded_read(proxied):
    fs, answers, direct = proxied
    direct.write("locks/repo.lease", PLANTED)
    answers.sizes.clear()
    _refused(fs)
    assert 0 < answers.largest("repo.lease") <= locks.LEASE_MAX_BYTES + 1, answers.sizes
    assert sum(size for _m, _p, size in answers.sizes) < BIG // 4  # nothing read it whole
    with pytest.raises(StateError, match="not a lease orchfs wrote"):
        locks.inspect(fs)  # doctor's look at the locks: the same error (unsafe-state)
    # Left alone: the object is the operator's to remove.
    assert direct.info("locks/repo.lease")["size"] == len(PLANTED)


def test_a_process_holding_no_lease_is_not_confused(proxied):
    """Reads and writes outside the lock go on; another lock is taken, and its fenced write
    over a large object it never read looks at one byte of it for the version."""
    fs, answers, direct = proxied
    direct.write("locks/repo.lease", PLANTED)
    fs.pipe_file("state.json", b'{"step": 1}')
    assert fs.cat_file("state.json") == b'{"step": 1}'
    fs.pipe_file("big.bin", b"y" * BIG)
    fs.pipe_file("empty.bin", b"")  # no byte 0 to start a range at: its version by a HEAD
    answers.sizes.clear()
    with fs.lock("other", timeout=5):
        fs.pipe_file("big.bin", b"z")
        fs.pipe_file("empty.bin", b"now")
    assert answers.largest("big.bin") <= 1, answers.sizes
    assert fs.cat_file("big.bin") == b"z" and fs.cat_file("empty.bin") == b"now"
    _refused(fs)


@pytest.mark.parametrize("kind", ["s3", "gcs", "azure"])
def test_bounded_reads_of_each_store(kind, request, tmp_path):
    """``get(path, limit)``: at most ``limit + 1`` bytes and the object's own version, for
    an object over the limit, one under it and an empty one."""
    storage = make_fs(kind, request, tmp_path).state_storage
    store = storage.conditional
    for name, data in (("big", b"q" * 100_000), ("small", b"abc"), ("empty", b"")):
        path = storage.backend_path(f"bounded-{name}")
        version = store.create(path, data)
        whole = store.get(path)
        found = store.get(path, 10)
        assert found.data == data[:11] and found.version == version == whole.version, name
        assert found.age is not None and -2.0 <= found.age <= 30.0, (name, found.age)
    planted = make_fs(kind, request, tmp_path)
    planted.state_storage.write("locks/repo.lease", PLANTED)
    _refused(planted)
