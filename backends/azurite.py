"""Azurite, Microsoft's Azure Blob Storage emulator (npm package ``azurite``), on 127.0.0.1.

``python -m backends.azurite --port 0`` prints the blob endpoint and serves until
interrupted; :func:`start` does the same from Python (the pytest fixture). The npm
package is installed on first use into a cache directory (``$ORCHFS_BACKENDS_CACHE``,
default ``~/.cache/orchfs``), never into the project. Azurite runs with telemetry off
and ``--skipApiVersionCheck`` (the Python SDK may be newer than the emulator), keeps
its data in a temporary directory removed at stop, and is reached through adlfs with
the emulator's well-known development account.

Azure answers a create over an existing blob (``If-None-Match: *``) with 409
``BlobAlreadyExists`` and a failed ``If-Match`` with 412; orchfs treats both as
"the precondition failed".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request

from .launcher import (
    LOOPBACK,
    BackendUnavailable,
    Capability,
    Service,
    free_port,
    main,
    serve_when_ready,
    spawn,
)

CAPABILITY = Capability(
    conditional_create=True,
    conditional_replace=True,
    conditional_delete=True,
    timestamps=True,
    empty_directories=False,
    native_append=False,
    atomic_rename=False,
)
ACCOUNT = "devstoreaccount1"
# Azurite's published development key (the same in every installation; not a secret).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
PACKAGE = "azurite@3"


def cache_dir() -> str:
    base = os.environ.get("ORCHFS_BACKENDS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "orchfs"
    )
    return os.path.join(base, "azurite")


def azurite_binary() -> str:
    """``azurite-blob`` from the cache, installing the npm package there if it is missing."""
    prefix = cache_dir()
    binary = os.path.join(prefix, "node_modules", ".bin", "azurite-blob")
    if os.access(binary, os.X_OK):
        return binary
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise BackendUnavailable("Azurite needs node and npm (apt-get install nodejs npm)")
    os.makedirs(prefix, exist_ok=True)
    result = subprocess.run(
        [npm, "install", "--prefix", prefix, "--no-audit", "--no-fund", "--loglevel=error", PACKAGE],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0 or not os.access(binary, os.X_OK):
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackendUnavailable(f"`npm install {PACKAGE}` into {prefix} failed: {tail}")
    return binary


def connection_string(endpoint: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint={endpoint};"
    )


def start(port: int = 0, timeout: float = 60.0) -> Service:
    """Start Azurite's blob service on 127.0.0.1 and wait until it answers."""
    binary = azurite_binary()
    port = port or free_port()
    data = tempfile.mkdtemp(prefix="orchfs-azurite-")
    log = os.path.join(data, "azurite.log")
    argv = [
        binary,
        "--blobHost",
        LOOPBACK,
        "--blobPort",
        str(port),
        "--location",
        os.path.join(data, "store"),
        "--disableTelemetry",
        "--skipApiVersionCheck",
        "--silent",
    ]
    process = spawn(argv, log=log)
    endpoint = f"http://{LOOPBACK}:{port}/{ACCOUNT}"

    def probe() -> bool:
        # Any HTTP answer (403 without a signature) means it serves.
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(f"{endpoint}?comp=list", timeout=1).close()
        return True

    service = Service(
        "azurite",
        endpoint,
        "abfs",
        {"connection_string": connection_string(endpoint)},
        CAPABILITY,
        process,
        cleanup=(data,),
    )
    return serve_when_ready(service, "Azurite", probe, timeout, log)


if __name__ == "__main__":
    main("azurite", start)
