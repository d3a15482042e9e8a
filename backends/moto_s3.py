"""A loopback S3-compatible server: moto's server mode in its own process.

Start it with ``python -m backends.moto_s3`` (prints the endpoint and waits), or from
Python with :func:`start` (the pytest session fixture does this). It listens on
127.0.0.1 only, on a free port.

Capabilities of this backend as orchfs sees it (see ``CAPABILITIES``): no atomic
rename (a move is copy + delete), conditional create (``If-None-Match: *``) and
conditional delete are honoured, no append (orchfs appends by a locked
read-modify-write), no empty directories (prefixes only exist through their keys).

Real S3 applies a conditional write atomically; moto's handlers check the condition
and then act, so two concurrent requests could both pass. The server here is moto's
own WSGI application (the one ``moto_server`` runs) behind a middleware that serves
one request at a time, which gives the atomicity S3 promises.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

CAPABILITIES = {
    "atomic_rename": False,
    "conditional_put": True,
    "conditional_delete": True,
    "native_append": False,
    "empty_directories": False,
}


@dataclass
class MotoServer:
    """A running moto server process and the options that reach it."""

    endpoint: str
    process: subprocess.Popen = field(repr=False)

    @property
    def storage_options(self) -> dict:
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "eu-west-1"},
        }

    def reset(self) -> None:
        """Forget every bucket and object (moto's reset endpoint)."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(timeout: float = 30.0) -> MotoServer:
    """Start moto's server on 127.0.0.1 and wait until it answers."""
    port = _free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    process = subprocess.Popen(
        [sys.executable, "-m", "backends.moto_s3", "--serve", str(port)],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with code {process.returncode}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return MotoServer(endpoint, process)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"moto server did not answer on {endpoint} within {timeout}s")


def serve(port: int) -> None:
    """Run moto's S3 application on 127.0.0.1:port, one request at a time."""
    import threading

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    one_at_a_time = threading.Lock()

    def serialised(environ, start_response):
        with one_at_a_time:
            return list(app(environ, start_response))

    make_server("127.0.0.1", port, serialised, threaded=True).serve_forever()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
        sys.exit(0)
    server = start()
    print(server.endpoint, flush=True)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()
