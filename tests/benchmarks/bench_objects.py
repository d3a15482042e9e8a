"""Object storage on moto and SeaweedFS: requests per operation, ops/s against plain s3fs,
and the lock hand-off latency (p50/p95) between two waiting holders.

Targets: a write is 1 request, ``update_json`` at most 4, a hand-off at most 50 ms (p50)
on SeaweedFS. Plain s3fs is the yardstick: it takes no lock and checks nothing, so its
``update_json`` row is a bare GET + PUT (what orchfs adds is the lease).
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
    """Counts the HTTP requests botocore sends through the given s3fs filesystems."""

    def __init__(self, *filesystems) -> None:
        self.sent = 0
        for client in {id(fs.s3): fs.s3 for fs in filesystems}.values():
            client.meta.events.register("before-send.s3", self._count)

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
    import s3fs

    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    plain = s3fs.S3FileSystem(**service.storage_options, skip_instance_cache=True, use_listings_cache=False)
    plain.mkdir(bucket)
    fs = orchfs.OrchFileSystem(
        root=f"s3://{bucket}/repo", storage_options=service.storage_options, skip_instance_cache=True
    )
    other = orchfs.OrchFileSystem(
        root=f"s3://{bucket}/repo", storage_options=service.storage_options, skip_instance_cache=True
    )
    counter = RequestCounter(fs.state_storage.fs, fs.repo_storage.fs, plain)
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
        table.add(Row(f"{name}, {label}: requests/op", "req", ours_requests, {"s3fs": their_requests}))
        compare(table, f"{name}, {label}", "ops/s", ours, {"s3fs": theirs}, number, repeat=3)
    handoffs = sorted(_handoffs(fs, other))
    p50 = statistics.median(handoffs) * 1000
    p95 = handoffs[int(0.95 * (len(handoffs) - 1))] * 1000
    table.add(Row(f"lock hand-off p50, {label}", "ms", p50, {"target 50 ms": 50.0}))
    table.add(Row(f"lock hand-off p95, {label}", "ms", p95))


def run() -> Table:
    from backends import moto_s3, seaweedfs

    table = Table("Object storage: requests/op, ops/s against plain s3fs, lock hand-off (ms)")
    for label, start in (("moto", moto_s3.start), ("SeaweedFS", seaweedfs.start)):
        service = start()
        try:
            _store_rows(table, label, service)
        finally:
            service.stop()
    return table
