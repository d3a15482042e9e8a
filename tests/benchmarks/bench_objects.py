"""Object storage on moto, SeaweedFS and GCS (fake-gcs-server): requests per operation,
ops/s against the plain fsspec backend (s3fs, gcsfs), and the lock hand-off latency
(p50/p95) between two waiting holders.

Targets: a write is 1 request, ``update_json`` at most 4, a hand-off at most 50 ms (p50)
on SeaweedFS. The plain backend is the yardstick: it takes no lock and checks nothing, so
its ``update_json`` row is a bare GET + PUT (what orchfs adds is the lease).
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable

import orchfs

from .harness import Row, Table, compare

READS = WRITES = 40
UPDATES = 20
HANDOFFS = 25


class RequestCounter:
    """Counts the HTTP requests sent through the filesystems that were told of it:
    botocore's events for s3fs (:meth:`watch`), an aiohttp trace for gcsfs
    (:meth:`gcsfs_options`, passed when the filesystem is made)."""

    def __init__(self) -> None:
        self.sent = 0

    def watch(self, *filesystems) -> None:
        for client in {id(fs.s3): fs.s3 for fs in filesystems}.values():
            client.meta.events.register("before-send.s3", self._count)

    def gcsfs_options(self) -> dict:
        import aiohttp

        async def started(session, context, params) -> None:
            self._count()

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(started)
        return {"session_kwargs": {"trace_configs": [trace]}}

    def _count(self, **kwargs) -> None:
        self.sent += 1

    def per_call(self, operation: Callable[[], object], calls: int = 5) -> float:
        operation()  # warm: leases, lookups and buckets already known
        before = self.sent
        for _ in range(calls):
            operation()
        return (self.sent - before) / calls


def _handoffs(fs: orchfs.OrchFileSystem, other: orchfs.OrchFileSystem) -> list[float]:
    """Seconds from the holder starting to release to the waiter holding the lock."""
    out = []
    for _ in range(HANDOFFS):
        got = threading.Event()
        waiting = threading.Event()
        times = {}

        def waiter(got=got, waiting=waiting, times=times) -> None:
            waiting.set()
            with other.lock("handoff", timeout=30):
                times["acquired"] = time.perf_counter()
                got.set()

        with fs.lock("handoff", timeout=30):
            thread = threading.Thread(target=waiter)
            thread.start()
            waiting.wait()
            time.sleep(0.2)  # the waiter is polling by now
            times["released"] = time.perf_counter()
        got.wait(30)
        thread.join()
        out.append(times["acquired"] - times["released"])
    return out


def _store_rows(table: Table, label: str, service) -> None:
    from orchfs.storage import open_storage

    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    counter = RequestCounter()
    options = dict(service.storage_options)
    if service.protocol == "gs":
        options.update(counter.gcsfs_options())
    # The plain backend as orchfs opens it (for GCS at an endpoint, gcsfs's JSON-API filesystem).
    plain_storage = open_storage(f"{service.protocol}://{bucket}", dict(options, skip_instance_cache=True))
    plain = plain_storage.fs  # type: ignore[attr-defined]
    plain.mkdir(bucket)
    root = f"{service.protocol}://{bucket}/repo"
    fs = orchfs.OrchFileSystem(root=root, storage_options=options, skip_instance_cache=True)
    other = orchfs.OrchFileSystem(root=root, storage_options=options, skip_instance_cache=True)
    if service.protocol == "s3":
        counter.watch(fs.state_storage.fs, fs.repo_storage.fs, plain)
    yardstick = type(plain).__module__.partition(".")[0]  # s3fs, gcsfs
    raw = f"{bucket}/plain/state.json"
    fs.pipe_file("run/state.json", b"{}")
    plain.pipe_file(raw, b"{}")
    payload = b'{"step": 3, "status": "running"}\n'

    def bump(value):
        return {"n": value.get("n", 0) + 1}

    def plain_update() -> None:
        plain.pipe_file(raw, plain.cat_file(raw) + b" ")

    operations = {
        "read": (lambda: fs.cat_file("run/state.json"), lambda: plain.cat_file(raw), READS),
        "write": (
            lambda: fs.pipe_file("run/state.json", payload),
            lambda: plain.pipe_file(raw, payload),
            WRITES,
        ),
        "update_json": (lambda: fs.update_json("run/counter.json", bump), plain_update, UPDATES),
    }
    for name, (ours, theirs, number) in operations.items():
        ours_requests = counter.per_call(ours)
        their_requests = counter.per_call(theirs)
        table.add(Row(f"{name}, {label}: requests/op", "req", ours_requests, {yardstick: their_requests}))
        compare(table, f"{name}, {label}", "ops/s", ours, {yardstick: theirs}, number, repeat=3)
    handoffs = sorted(_handoffs(fs, other))
    p50 = statistics.median(handoffs) * 1000
    p95 = handoffs[int(0.95 * (len(handoffs) - 1))] * 1000
    table.add(Row(f"lock hand-off p50, {label}", "ms", p50, {"target 50 ms": 50.0}))
    table.add(Row(f"lock hand-off p95, {label}", "ms", p95))


def run() -> Table:
    from backends import fake_gcs, moto_s3, seaweedfs

    table = Table("Object storage: requests/op, ops/s against plain s3fs/gcsfs, lock hand-off (ms)")
    stores = (("moto", moto_s3.start), ("SeaweedFS", seaweedfs.start), ("GCS", fake_gcs.start))
    for label, start in stores:
        service = start()
        try:
            _store_rows(table, label, service)
        finally:
            service.stop()
    return table
