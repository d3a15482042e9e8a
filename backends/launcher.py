"""What every backend launcher shares: free ports, readiness, process-group shutdown, the CLI.

A launcher starts one storage service on 127.0.0.1, waits until it really serves
(a readiness probe that does what the tests will do, not just a port check), and
stops every process it started: each service runs in its own process group, which
:meth:`Service.stop` signals as a whole, and on Linux each child also gets SIGTERM
if its launcher dies first (``PR_SET_PDEATHSIG``), so no server outlives the tests
or the ``python -m backends.<name>`` command that started it, SIGTERM included.

Run one by hand with ``python -m backends.<name> --port 0`` (a free port): it prints
the endpoint, then a JSON line with the storage options and the capability record,
and serves until interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


class BackendUnavailable(RuntimeError):
    """The service's package is not installed and could not be installed here."""


@dataclass(frozen=True)
class Capability:
    """What a store does, as orchfs relies on it (the table in backends/README.md)."""

    conditional_create: bool  # a create that fails when the object exists (412 / 409)
    conditional_replace: bool  # a PUT that fails unless the ETag / generation matches
    conditional_delete: bool  # a DELETE that fails unless the ETag matches
    timestamps: bool  # LastModified on objects and a Date header on answers
    empty_directories: bool  # directories exist without objects (created or left behind)
    native_append: bool
    atomic_rename: bool


@dataclass
class Service:
    """A running service: where it answers, how to reach it, how to stop all of it."""

    name: str
    endpoint: str
    protocol: str
    storage_options: dict[str, Any]
    capability: Capability
    process: subprocess.Popen = field(repr=False)
    cleanup: Sequence[str] = field(default=(), repr=False)  # directories removed at stop

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "endpoint": self.endpoint,
            "protocol": self.protocol,
            "storage_options": self.storage_options,
            "capability": asdict(self.capability),
            "data": list(self.cleanup),
        }

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the whole process group, SIGKILL after ``timeout``; then the data."""
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait()
        # Children that ignored the group's SIGTERM (or were started by the child) go too,
        # and are gone before their data is removed (a dying server may still write).
        _signal_group(self.process, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while _group_alive(self.process) and time.monotonic() < deadline:
            time.sleep(0.02)
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)


def _group_alive(process: subprocess.Popen) -> bool:
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies of the group count as gone: only their parent (gone too) would reap them.
    return any(_state(pid) not in ("Z", None) for pid in _group_members(process.pid))


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = open(f"/proc/{entry}/stat").read().rpartition(")")[2].split()  # noqa: SIM115
                if int(fields[2]) == pgid:
                    members.append(int(entry))
    return members


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    argv: Sequence[str], *, env: dict[str, str] | None = None, log: str | None = None
) -> subprocess.Popen:
    """A child in its own process group that is sent SIGTERM when its parent dies."""
    out: Any = subprocess.DEVNULL
    if log is not None:
        out = open(log, "ab")  # noqa: SIM115 - the child keeps it; closed below in the parent
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    finally:
        if log is not None:
            out.close()


def free_port(companion_offset: int = 0) -> int:
    """A free TCP port on 127.0.0.1 (and, with an offset, one whose ``port+offset`` is free too:
    SeaweedFS puts each gRPC port at its HTTP port + 10000)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
            if not companion_offset:
                return port
            if port + companion_offset > 65535:
                continue
            with socket.socket() as other:
                try:
                    other.bind((LOOPBACK, port + companion_offset))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port pair on 127.0.0.1")


def wait_ready(
    name: str, process: subprocess.Popen, probe: Callable[[], bool], timeout: float, log: str | None = None
) -> None:
    """Poll ``probe`` until it returns True; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if process.poll() is not None:
            code = process.returncode
            raise RuntimeError(f"{name} exited with code {code} before it was ready{_tail(log)}")
        try:
            if probe():
                return
        except Exception:  # not ready yet: any error means "ask again"
            pass
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    _signal_group(process, signal.SIGKILL)
    process.wait()
    raise RuntimeError(f"{name} was not ready within {timeout:.0f}s{_tail(log)}")


def _tail(log: str | None) -> str:
    if not log or not os.path.exists(log):
        return ""
    with open(log, "rb") as handle:
        handle.seek(max(0, os.path.getsize(log) - 800))
        return "; last output: " + handle.read().decode(errors="replace").strip()


def s3_probe(endpoint: str, key: str, secret: str) -> Callable[[], bool]:
    """Ready means a bucket can be created and an object written, read and deleted."""

    def probe() -> bool:
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
        )
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket="orchfs-ready")
        client.put_object(Bucket="orchfs-ready", Key="probe", Body=b"ok")
        ok = client.get_object(Bucket="orchfs-ready", Key="probe")["Body"].read() == b"ok"
        client.delete_object(Bucket="orchfs-ready", Key="probe")
        return ok

    return probe


def serve_when_ready(
    service: Service, what: str, probe: Callable[[], bool], timeout: float, log: str | None = None
) -> Service:
    """``service`` once ``probe`` answers (see :func:`wait_ready`); a service that never
    does is stopped, children and data included, before the error goes up."""
    try:
        wait_ready(what, service.process, probe, timeout, log)
    except BaseException:
        service.stop()
        raise
    return service


def pip_install(package: str, what: str) -> None:
    """``pip install package`` into this Python; :class:`BackendUnavailable` naming ``what`` if it fails."""
    import importlib

    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", package], capture_output=True, text=True, timeout=600
    )
    importlib.invalidate_caches()
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackendUnavailable(f"{what} is not installed and `pip install {package}` failed: {tail}")


GCS_PROJECT = "orchfs"


def gcs_options(endpoint: str) -> dict[str, str]:
    """What gcsfs needs to reach a GCS JSON-API server on this machine: no Google credentials."""
    return {"endpoint_url": endpoint, "token": "anon", "project": GCS_PROJECT}


def gcs_probe(endpoint: str) -> Callable[[], bool]:
    """Ready means a bucket can be created and an object written, read and deleted
    (plain HTTP requests of the GCS JSON API: the launcher needs no gcsfs)."""
    import urllib.error
    import urllib.request

    def send(method: str, url: str, data: bytes | None = None, kind: str = "application/json") -> bytes:
        request = urllib.request.Request(url, data=data, headers={"Content-Type": kind}, method=method)
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.read()

    def probe() -> bool:
        bucket = f"{endpoint}/storage/v1/b/orchfs-ready"
        try:
            send("POST", f"{endpoint}/storage/v1/b?project={GCS_PROJECT}", b'{"name": "orchfs-ready"}')
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # 409: made by an earlier probe
                raise
        upload = f"{endpoint}/upload/storage/v1/b/orchfs-ready/o?uploadType=media&name=probe"
        send("POST", upload, b"ok", "application/octet-stream")
        ok = send("GET", f"{bucket}/o/probe?alt=media") == b"ok"
        send("DELETE", f"{bucket}/o/probe")
        return ok

    return probe


def main(name: str, start: Callable[..., Service], argv: Sequence[str] | None = None) -> None:
    """``python -m backends.<name> --port 0``: start, print the endpoint and record, serve."""
    parser = argparse.ArgumentParser(prog=f"python -m backends.{name}", description=start.__doc__)
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    if "host" in inspect.signature(start).parameters:
        parser.add_argument(
            "--host", default=LOOPBACK, help="address to bind (only inside a network namespace of your own)"
        )
    args = parser.parse_args(argv)

    def stop(signum: int, _frame: Any) -> None:
        # Only unwind here: the ``finally`` below stops the service outside the handler
        # (a handler that waited on the child itself would deadlock with the wait below).
        raise SystemExit(128 + signum)

    # Installed before the start, and the endpoint printed inside the ``try``: a signal
    # that comes as soon as the endpoint has been read still stops the service and
    # removes its data (one that comes during the start is handled by the start itself).
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, stop)
    service = start(port=args.port, **({"host": args.host} if "host" in vars(args) else {}))
    try:
        print(service.endpoint, flush=True)
        print(json.dumps(service.record()), flush=True)
        service.process.wait()
    finally:
        service.stop()


__all__ = [
    "LOOPBACK",
    "BackendUnavailable",
    "Capability",
    "Service",
    "free_port",
    "gcs_options",
    "gcs_probe",
    "main",
    "pip_install",
    "s3_probe",
    "serve_when_ready",
    "spawn",
    "wait_ready",
]
