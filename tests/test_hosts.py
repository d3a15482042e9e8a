"""Simulated hosts: three network namespaces share one repository on SeaweedFS in a fourth.

Each "host" is a network namespace joined by a veth pair to a bridge in the store's
namespace; addresses come from 198.18.0.0/15 (the benchmarking range) and exist only
inside these namespaces. Needs root and ``ip netns`` (CI runs as root); skipped with the
reason elsewhere. Every namespace and process is removed at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
HOSTS = 3
PROCESSES_PER_HOST = 4
INCREMENTS = 100
STORE_ADDRESS = "198.18.0.1"
LEASE = 3.0

pytestmark = [pytest.mark.slow, pytest.mark.s3]


def _ip(*args: str, namespace: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True, text=True)


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs as root)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    probe = f"orchfs-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"`ip netns add` does not work here: {getattr(exc, 'stderr', exc)}"
    _ip("netns", "del", probe)
    return None


@dataclass
class Network:
    """The namespaces, the store in one of them, and every process started in them."""

    tag: str
    store: str
    hosts: list[str]
    processes: list[subprocess.Popen] = field(default_factory=list)
    storage_options: dict = field(default_factory=dict)

    def run(self, namespace: str, *argv: str, stdin: int | None = None) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(PROJECT))
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, *argv],
            cwd=PROJECT,
            env=env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def link(self, host: int, up: bool) -> None:
        _ip("link", "set", f"h{host}-{self.tag}", "up" if up else "down", namespace=self.hosts[host])


def _build(tag: str) -> Network:
    net = Network(tag, f"orchfs-{tag}-s", [f"orchfs-{tag}-h{i}" for i in range(HOSTS)])
    _ip("netns", "add", net.store)
    _ip("link", "set", "lo", "up", namespace=net.store)
    _ip("link", "add", f"br-{tag}", "type", "bridge", namespace=net.store)
    _ip("addr", "add", f"{STORE_ADDRESS}/24", "dev", f"br-{tag}", namespace=net.store)
    _ip("link", "set", f"br-{tag}", "up", namespace=net.store)
    for i, host in enumerate(net.hosts):
        _ip("netns", "add", host)
        _ip("link", "set", "lo", "up", namespace=host)
        inside, outside = f"h{i}-{tag}", f"s{i}-{tag}"
        _ip("link", "add", inside, "netns", host, "type", "veth", "peer", "name", outside, "netns", net.store)
        _ip("link", "set", outside, "master", f"br-{tag}", namespace=net.store)
        _ip("link", "set", outside, "up", namespace=net.store)
        _ip("addr", "add", f"198.18.0.{10 + i}/24", "dev", inside, namespace=host)
        _ip("link", "set", inside, "up", namespace=host)
    return net


def _teardown(net: Network) -> None:
    for process in reversed(net.processes):  # the store's launcher last: it stops weed
        if process.poll() is None:
            with_group = process.pid
            try:
                os.killpg(with_group, signal.SIGCONT)
                os.killpg(with_group, signal.SIGTERM)
                process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(with_group, signal.SIGKILL)
                process.wait()
    for namespace in [*net.hosts, net.store]:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


@pytest.fixture
def network() -> Iterator[Network]:
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    from backends.seaweedfs import weed_binary

    try:
        weed_binary()
    except Exception as exc:
        pytest.skip(f"SeaweedFS cannot be installed here: {exc}")
    net = None
    try:
        net = _build(uuid.uuid4().hex[:5])
        launcher = net.run(net.store, "-m", "backends.seaweedfs", "--port", "0", "--host", STORE_ADDRESS)
        endpoint = launcher.stdout.readline().strip()
        assert endpoint.startswith(f"http://{STORE_ADDRESS}:"), f"SeaweedFS did not start: {endpoint!r}"
        net.storage_options = json.loads(launcher.stdout.readline())["storage_options"]
        # A cut link must fail requests within seconds, not botocore's minute.
        net.storage_options["config_kwargs"] = {
            "connect_timeout": 2,
            "read_timeout": 5,
            "retries": {"max_attempts": 2},
        }
        yield net
    finally:
        if net is not None:
            _teardown(net)
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert net is None or net.tag not in leftovers


def test_three_hosts_share_one_repository(network):
    bucket = "hosts"
    spec = json.dumps(
        {"root": f"s3://{bucket}/repo", "storage_options": network.storage_options, "lease": LEASE}
    )
    maker = network.run(network.hosts[0], "-c", _MAKE_BUCKET, json.dumps(network.storage_options), bucket)
    assert maker.wait(timeout=60) == 0

    # 3 hosts x 4 processes x 100 update_json: not one increment lost.
    workers = [
        network.run(host, "-m", "tests.workers", "increment", spec, str(INCREMENTS))
        for host in network.hosts
        for _ in range(PROCESSES_PER_HOST)
    ]
    for worker in workers:
        assert worker.wait(timeout=1500) == 0
    assert _counter(network, spec) == HOSTS * PROCESSES_PER_HOST * INCREMENTS

    # Host 0 holds the lock, then its link is cut: host 1 gets the lock only after the
    # lease, and host 0's late write is refused.
    holder = network.run(
        network.hosts[0], "-m", "tests.workers", "hold_then_update", spec, stdin=subprocess.PIPE
    )
    assert holder.stdout.readline().strip() == "holding"
    network.link(0, up=False)
    successor = network.run(network.hosts[1], "-m", "tests.workers", "timed_increment", spec)
    acquired = successor.stdout.readline().split()
    assert successor.wait(timeout=120) == 0 and acquired[0] == "acquired"
    network.link(0, up=True)
    holder.stdin.write("go\n")
    holder.stdin.flush()
    said = holder.stdout.readline().split()
    holder.wait(timeout=120)
    assert said[0] == "refused", said
    assert float(acquired[1]) >= float(said[1]), "host 1 took the lock before host 0's lease ended"
    assert _counter(network, spec) == HOSTS * PROCESSES_PER_HOST * INCREMENTS + 1


_MAKE_BUCKET = "import json, sys, s3fs; s3fs.S3FileSystem(**json.loads(sys.argv[1])).mkdir(sys.argv[2])"
_READ_COUNTER = (
    "import json, sys, orchfs; spec = json.loads(sys.argv[1]); "
    "fs = orchfs.OrchFileSystem(root=spec['root'], storage_options=spec['storage_options']); "
    "print(json.loads(fs.cat_file('counter.json'))['n'])"
)


def _counter(network: Network, spec: str) -> int:
    reader = network.run(network.hosts[2], "-c", _READ_COUNTER, spec)
    out, _ = reader.communicate(timeout=60)
    return int(out.strip())
