"""A loopback S3-compatible server: moto's server mode in its own process.

Start it with ``python -m backends.moto_s3 --port 0`` (prints the endpoint and serves
until interrupted), or from Python with :func:`start` (the pytest session fixture does
this). It listens on 127.0.0.1 only.

Real S3 applies a conditional write atomically; moto's handlers check the condition
and then act, so two concurrent requests could both pass. The server here is moto's
own WSGI application (the one ``moto_server`` runs) behind a middleware that serves
one request at a time, which gives the atomicity S3 promises.
"""

from __future__ import annotations

import os
import sys
import urllib.request

from .launcher import LOOPBACK, Capability, Service, free_port, main, spawn, wait_ready

CAPABILITY = Capability(
    conditional_create=True,
    conditional_replace=True,
    conditional_delete=True,
    timestamps=True,
    empty_directories=False,
    native_append=False,
    atomic_rename=False,
)
KEY = SECRET = "testing"
_PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MotoServer(Service):
    """moto's server: a :class:`Service` that can also forget everything it stores."""

    def reset(self) -> None:
        """Forget every bucket and object (moto's reset endpoint)."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()


def start(port: int = 0, timeout: float = 30.0) -> MotoServer:
    """Start moto's S3 server on 127.0.0.1 and wait until it answers."""
    port = port or free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PROJECT, env.get("PYTHONPATH")]))
    process = spawn([sys.executable, "-m", "backends.moto_s3", "--serve", str(port)], env=env)
    endpoint = f"http://{LOOPBACK}:{port}"

    def probe() -> bool:
        urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
        return True

    wait_ready("moto server", process, probe, timeout)
    options = {
        "key": KEY,
        "secret": SECRET,
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "eu-west-1"},
    }
    return MotoServer("moto_s3", endpoint, "s3", options, CAPABILITY, process)


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

    make_server(LOOPBACK, port, serialised, threaded=True).serve_forever()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
    else:
        main("moto_s3", start)
