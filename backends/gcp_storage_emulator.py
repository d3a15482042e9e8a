"""gcp-storage-emulator (PyPI), a Google Cloud Storage JSON-API stub, on 127.0.0.1.

It is here as the store that must be refused: it ignores every precondition
(``ifGenerationMatch=0`` on an existing object overwrites it), so a lease on it would
exclude nobody. orchfs notices that with its precondition probe at the first lease on a
bucket and refuses with a one-line error (tests/test_locks.py). Do not keep state on it.

``python -m backends.gcp_storage_emulator --port 0`` prints the endpoint and serves until
interrupted; :func:`start` does the same from Python (the pytest fixture). The package is
installed with pip on first use if missing; the emulator keeps objects in memory
(``--in-memory``), its data directory is a temporary one removed at stop, and it binds
127.0.0.1 only.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile

from .launcher import (
    LOOPBACK,
    Capability,
    Service,
    free_port,
    gcs_options,
    gcs_probe,
    main,
    pip_install,
    serve_when_ready,
    spawn,
)

CAPABILITY = Capability(
    conditional_create=False,  # ifGenerationMatch=0 over an existing object overwrites it
    conditional_replace=False,
    conditional_delete=False,
    timestamps=True,
    empty_directories=False,
    native_append=False,
    atomic_rename=False,
)
PACKAGE = "gcp-storage-emulator"


def ensure_installed() -> None:
    """Install the emulator's PyPI package with pip if it is missing."""
    if importlib.util.find_spec("gcp_storage_emulator") is None:
        pip_install(PACKAGE, "gcp-storage-emulator")


def start(port: int = 0, timeout: float = 60.0) -> Service:
    """Start gcp-storage-emulator on 127.0.0.1 (objects in memory) and wait until it stores objects."""
    ensure_installed()
    port = port or free_port()
    data = tempfile.mkdtemp(prefix="orchfs-gcp-storage-emulator-")
    log = os.path.join(data, "emulator.log")
    argv = [
        sys.executable,
        "-m",
        "gcp_storage_emulator",
        "--data-dir",
        os.path.join(data, "store"),
        "start",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--in-memory",
        "--quiet",
    ]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": data, "TMPDIR": data}
    process = spawn(argv, env=env, log=log)
    endpoint = f"http://{LOOPBACK}:{port}"
    service = Service(
        "gcp_storage_emulator", endpoint, "gs", gcs_options(endpoint), CAPABILITY, process, cleanup=(data,)
    )
    return serve_when_ready(service, "gcp-storage-emulator", gcs_probe(endpoint), timeout, log)


if __name__ == "__main__":
    main("gcp_storage_emulator", start)
