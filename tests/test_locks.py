"""Locks, update_json and append_line across threads, processes and backends."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import orchfs
from orchfs import locks
from orchfs.errors import LockTimeout, PathEscapeError

from .conftest import OBJECT_STORES, make_bucket, make_fs, store_of

PROJECT = Path(__file__).resolve().parent.parent


def spec_of(fs: orchfs.OrchFileSystem, request: pytest.FixtureRequest | None = None, **extra) -> str:
    return json.dumps({"root": fs.root, "storage_options": fs.storage_options_ or None, **extra})


def worker(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.workers", *args],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.fixture(
    params=[
        "local",
        pytest.param("s3", marks=pytest.mark.slow),
        pytest.param("seaweedfs", marks=[pytest.mark.s3, pytest.mark.slow]),
        pytest.param("azure", marks=[pytest.mark.s3, pytest.mark.slow]),
        pytest.param("gcs", marks=[pytest.mark.s3, pytest.mark.slow]),
    ]
)
def shared_fs(request, tmp_path):
    return make_fs(request.param, request, tmp_path)


@pytest.fixture(params=OBJECT_STORES)
def store_kind(request) -> str:
    return request.param


def test_eight_processes_increment_exactly(shared_fs, request):
    spec = spec_of(shared_fs, request)
    # Azurite answers a conditional write in ~20 ms: fewer rounds there, the same contention.
    each = 50 if shared_fs.root.startswith("abfs://") else 200
    procs = [worker("increment", spec, str(each)) for _ in range(8)]
    for proc in procs:
        assert proc.wait(timeout=600) == 0
    assert json.loads(shared_fs.cat_file("counter.json")) == {"n": 8 * each}


def test_four_processes_append_every_line(shared_fs, request):
    spec = spec_of(shared_fs, request)
    per_writer = 500 if shared_fs.state_storage.kind == "local" else 50  # S3: moto answers in ~10 ms
    procs = [worker("append", spec, str(per_writer), f"w{i}") for i in range(4)]
    for proc in procs:
        assert proc.wait(timeout=600) == 0
    lines = shared_fs.cat_file("log.jsonl").decode().splitlines()
    assert len(lines) == 4 * per_writer
    records = [json.loads(line) for line in lines]
    for tag in ("w0", "w1", "w2", "w3"):
        assert [r["i"] for r in records if r["writer"] == tag] == list(range(per_writer))


def test_threads_in_one_process_increment_exactly(orch):
    threads_count, each = (8, 25) if orch.state_storage.kind != "object" else (4, 10)

    def run():
        for _ in range(each):
            # Exactness is what is checked, not waiting times: under load a thread may wait
            # longer than the default 10 s while the others take their turns (40 turns of
            # 0.4 s on S3 at load 13), so no thread gives up here.
            orch.update_json("counter.json", lambda v: {"n": v.get("n", 0) + 1}, timeout=600)

    threads = [threading.Thread(target=run) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert json.loads(orch.cat_file("counter.json")) == {"n": threads_count * each}


def test_lock_is_reentrant_in_one_thread(orch):
    with orch.lock("repo", timeout=1), orch.lock("repo", timeout=1):
        orch.update_json("state.json", lambda v: {"ok": True})
    assert json.loads(orch.cat_file("state.json")) == {"ok": True}


def test_other_thread_times_out_naming_the_holder(orch):
    errors = []
    with orch.lock("repo", timeout=1):

        def contender():
            try:
                with orch.lock("repo", timeout=0.3):
                    pass
            except LockTimeout as exc:
                errors.append(str(exc))

        thread = threading.Thread(target=contender)
        thread.start()
        thread.join()
    assert len(errors) == 1
    assert f"pid {os.getpid()}" in errors[0]
    assert "held for" in errors[0]


def test_kill_9_holder_does_not_block_the_next_acquirer(shared_fs, request):
    spec = spec_of(shared_fs, request)
    lease = 2.0
    holder = worker("hold", spec, "repo", str(lease))
    assert holder.stdout.readline().strip() == "holding"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    with shared_fs.lock("repo", timeout=20, lease=lease):
        waited = time.monotonic() - started
    bound = 0.5 if shared_fs.state_storage.kind == "local" else lease + 3.5  # 1 s Date resolution, probe
    assert waited < bound


def test_paused_live_holder_is_never_taken_over(shared_fs, request):
    spec = spec_of(shared_fs, request)
    holder = worker("hold", spec, "repo", "30")
    try:
        assert holder.stdout.readline().strip() == "holding"
        holder.send_signal(signal.SIGSTOP)
        with pytest.raises(LockTimeout) as info, shared_fs.lock("repo", timeout=1.5, lease=30):
            pass
        assert f"pid {holder.pid}" in str(info.value)
        statuses = {s.name: s for s in locks.inspect(shared_fs)}
        assert statuses["repo"].held and not statuses["repo"].stale
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_dead_holder_record_is_reported_stale(local_repo):
    fs = orchfs.OrchFileSystem(root=local_repo)
    holder = worker("hold", json.dumps({"root": local_repo}), "repo", "30")
    assert holder.stdout.readline().strip() == "holding"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    (status,) = locks.inspect(fs)
    assert status.stale and not status.held and status.holder.pid == holder.pid
    assert [s.name for s in locks.clear_stale(fs)] == ["repo"]
    (status,) = locks.inspect(fs)
    assert not status.stale and status.holder is None


def test_lock_modes_and_symlink_attack(tmp_path):
    """CVE-2025-68146: a symlink planted at the lock path must not touch its target."""
    repo = tmp_path / "repo"
    locks_dir = repo / ".orchestrator" / "locks"
    locks_dir.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"do not truncate me")
    os.symlink(victim, locks_dir / "repo.lock")
    fs = orchfs.OrchFileSystem(root=str(repo))
    with pytest.raises(PathEscapeError, match="symlink"), fs.lock("repo", timeout=0.2):
        pass
    assert victim.read_bytes() == b"do not truncate me"
    os.unlink(locks_dir / "repo.lock")
    with fs.lock("repo", timeout=1):
        assert stat.S_IMODE(locks_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((locks_dir / "repo.lock").stat().st_mode) == 0o600
        assert stat.S_IMODE((locks_dir / "repo.holder").stat().st_mode) == 0o600


def test_symlinked_locks_directory_is_refused(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".orchestrator").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, repo / ".orchestrator" / "locks")
    fs = orchfs.OrchFileSystem(root=str(repo))
    with pytest.raises(PathEscapeError), fs.lock("repo", timeout=0.2):
        pass
    assert os.listdir(elsewhere) == []


def test_bad_lock_names_and_timeouts(orch):
    for bad in ("a/b", "..", ""):
        with pytest.raises(PathEscapeError):
            orch.lock(bad)
    with pytest.raises(ValueError, match="timeout"):
        orch.lock("repo", timeout=-1)


@pytest.mark.slow
def test_sixteen_threads_race_for_one_s3_lease(moto_server, s3_bucket, request, tmp_path):
    fs = make_fs("s3", request, tmp_path)
    for trial in range(50):
        name = f"race{trial}"
        barrier = threading.Barrier(16)
        release = threading.Event()
        winners = []

        def contender(name=name, barrier=barrier, release=release, winners=winners):
            lock = fs.lock(name, timeout=0, lease=30)
            barrier.wait()
            try:
                lock.acquire()
            except LockTimeout:
                return
            winners.append(1)
            release.wait()
            lock.release()

        threads = [threading.Thread(target=contender) for _ in range(16)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while (
            any(t.is_alive() for t in threads)
            and len(winners) + sum(not t.is_alive() for t in threads) < 16
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        time.sleep(0.05)
        release.set()
        for thread in threads:
            thread.join()
        assert len(winners) == 1, f"trial {trial}: {len(winners)} winners"


@pytest.mark.slow
def test_four_processes_race_for_one_s3_lease(moto_server, s3_bucket, request, tmp_path):
    fs = make_fs("s3", request, tmp_path)
    spec = spec_of(fs, request)
    trials = 50
    first_at = time.time() + 3.0  # every worker imported and connected by then
    procs = [worker("race", spec, "prace", str(first_at), str(trials), "0.3") for _ in range(4)]
    outcomes: dict[int, list[str]] = {t: [] for t in range(trials)}
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        for line in out.splitlines():
            trial, outcome = line.split()
            outcomes[int(trial)].append(outcome)
    for trial, seen in outcomes.items():
        assert sorted(seen) == ["lost", "lost", "lost", "won"], f"trial {trial}: {seen}"


# --- fencing: a holder paused past its lease writes nothing ------------------------------
LEASE = 2.0  # short, so that a successor takes over within seconds


def _successor_work(fs: orchfs.OrchFileSystem, operation: str, count: int) -> None:
    for i in range(count):
        if operation == "update":
            fs.update_json("counter.json", lambda value: {"n": value.get("n", 0) + 1}, timeout=60)
        elif operation == "append":
            fs.append_line("log.jsonl", {"writer": "successor", "i": i}, timeout=60)
        else:
            fs.secrets.set(f"S{i}", f"value {i}")


def _outcome(fs: orchfs.OrchFileSystem, operation: str) -> list:
    if operation == "update":
        return [json.loads(fs.cat_file("counter.json"))["n"]]
    if operation == "append":
        return [json.loads(line)["writer"] for line in fs.cat_file("log.jsonl").decode().splitlines()]
    return fs.secrets.list()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["read", "put"])
@pytest.mark.parametrize("operation", ["update", "append", "secret"])
def test_paused_holder_is_fenced(store_kind, operation, where, request, tmp_path):
    """SIGSTOP a holder at a fault point inside its locked write, let a successor take the
    lock after the lease and write N times, resume the holder: LockLostError, exactly N."""
    from orchfs.secrets import new_key_text

    key = new_key_text()
    fs = make_fs(store_kind, request, tmp_path, key=key, lease=LEASE)
    count = 3
    holder = worker("fenced", spec_of(fs, key=key, lease=LEASE), operation, where, stdin=subprocess.PIPE)
    try:
        stopped = holder.stdout.readline().strip()
        assert stopped.startswith("stopped"), stopped
        holder.send_signal(signal.SIGSTOP)  # no renewal from here on: the lease runs out
        _successor_work(fs, operation, count)  # each waits for the lease to expire first
        holder.send_signal(signal.SIGCONT)
        holder.stdin.write("go\n")
        holder.stdin.flush()
        said = holder.stdout.readline().strip()
        assert holder.wait(timeout=60) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert said.startswith("refused: "), said
    assert "nothing was written" in said or "Nothing more is written" in said
    expected = {"update": [count], "append": ["successor"] * count, "secret": [f"S{i}" for i in range(count)]}
    assert _outcome(fs, operation) == expected[operation]
    if operation == "secret":
        assert fs.secrets.get("S2") == "value 2"


# --- renewal failures: the holder learns it lost the lease; nobody overlaps it --------------
def test_renewal_failure_is_learned_before_anyone_takes_over(store_kind, request, tmp_path):
    from orchfs.conditional import inject

    fs = make_fs(store_kind, request, tmp_path, lease=LEASE)
    other = orchfs.OrchFileSystem(root=fs.root, storage_options=fs.storage_options_, skip_instance_cache=True)
    failing = threading.Event()
    renewals_refused = []

    def cut_renewals(call) -> None:  # the holder's renewals fail as a cut network would
        if (
            failing.is_set()
            and call.op == "replace"
            and threading.current_thread().name.startswith("orchfs-lease")
        ):
            renewals_refused.append(call)
            raise ConnectionError("injected: network unreachable")

    taken = {}

    def successor() -> None:
        with other.lock("repo", timeout=30, lease=LEASE):
            taken["at"] = time.monotonic()
            taken["holder_knew"] = lock.lost

    with inject(cut_renewals):
        lock = fs.lock("repo", timeout=5, renew=0.2)
        lock.acquire()
        deadline = lock.deadline
        failing.set()
        thread = threading.Thread(target=successor)
        thread.start()
        thread.join(timeout=60)
        assert taken, "the successor never got the lock"
        assert len(renewals_refused) >= 2, "renewal was retried before giving up"
        assert taken["at"] >= deadline, "taken over before the holder's deadline"
        assert taken["holder_knew"], "the holder still believed it held the lease"
        with pytest.raises(orchfs.LockLostError):
            fs.pipe_file("late.json", b"{}")  # the holder's thread: fenced, refused
        with pytest.raises(orchfs.LockLostError, match="ended inside"):
            lock.__exit__(None, None, None)
    assert not fs.exists("late.json")


def test_with_block_raises_when_the_lease_was_lost_inside(tmp_path, request):
    from orchfs.conditional import inject

    fs = make_fs("s3", request, tmp_path, lease=LEASE)
    gone = threading.Event()

    def fail_renewals(call) -> None:
        if call.op == "replace" and threading.current_thread().name.startswith("orchfs-lease"):
            gone.set()
            raise ConnectionError("injected")

    with inject(fail_renewals), pytest.raises(orchfs.LockLostError), fs.lock("repo", renew=0.1) as lock:
        assert gone.wait(10)
        while not lock.lost:  # bounded by the lease: renewal keeps failing
            time.sleep(0.02)


# --- tokens: caller writes fenced from any thread ------------------------------------------
def test_token_fences_a_write_from_another_thread(orch):
    with orch.lock("repo") as lock:
        token = lock.token
        assert token.generation >= 1
        errors = []

        def write() -> None:
            try:
                orch.pipe_file("from-thread.json", b"1", if_match=token)
            except Exception as exc:
                errors.append(exc)

        thread = threading.Thread(target=write)
        thread.start()
        thread.join()
        assert not errors
    with pytest.raises(orchfs.LockLostError, match="released"):
        orch.pipe_file("from-thread.json", b"2", if_match=token)
    assert orch.cat_file("from-thread.json") == b"1"
    with orch.lock("repo") as again:
        assert again.token.generation > token.generation
    with pytest.raises(TypeError, match="token"):
        orch.pipe_file("x.json", b"1", if_match='"etag"')


def test_generations_only_grow_across_processes(shared_fs, request):
    seen = []
    for _ in range(3):
        with shared_fs.lock("gen") as lock:
            seen.append(lock.token.generation)
    spec = spec_of(shared_fs)
    holder = worker("hold", spec, "gen", "2")  # a 2 s lease: taken over soon after the kill
    assert holder.stdout.readline().strip() == "holding"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with shared_fs.lock("gen", timeout=40) as lock:
        seen.append(lock.token.generation)
    assert seen == sorted(set(seen)) and seen[-1] == seen[2] + 2


# --- precondition failures are judged by the HTTP status, never by the body ---------------
class _RewritingProxy:
    """A loopback HTTP proxy in front of an object store that rewrites error bodies."""

    def __init__(self, upstream: str, rewrite) -> None:
        import http.client
        import http.server
        import urllib.parse

        target = urllib.parse.urlsplit(upstream)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                status, payload = rewrite(self.command, self.path, self.headers, answer.status, answer.read())
                self.send_response(status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


_UNHELPFUL = b"<?xml version='1.0'?><Error><Code>Unknown</Code><Message>no</Message></Error>"
_MISLEADING = (
    b"<?xml version='1.0'?><Error><Code>PreconditionFailed</Code><Message>At least one of the "
    b"pre-conditions you specified did not hold</Message><Condition>If-None-Match</Condition></Error>"
)
_MISLEADING_GCS = json.dumps(
    {
        "error": {
            "code": 412,
            "message": "At least one of the pre-conditions you specified did not hold.",
            "errors": [{"reason": "conditionNotMet", "locationType": "header", "location": "If-Match"}],
        }
    }
).encode()


def _proxied_fs(server, bucket, proxy) -> orchfs.OrchFileSystem:
    options = dict(server.storage_options)
    if server.protocol == "s3":
        options["client_kwargs"] = dict(options["client_kwargs"], endpoint_url=proxy.endpoint)
        options["config_kwargs"] = {"retries": {"max_attempts": 1}}
    else:  # gcsfs
        options["endpoint_url"] = proxy.endpoint
    root = f"{server.protocol}://{bucket}/proxied-{time.time_ns()}"
    return orchfs.OrchFileSystem(root=root, storage_options=options, skip_instance_cache=True)


def _is_create(method, path, headers) -> bool:
    """S3's conditional create (If-None-Match: *) or GCS's (ifGenerationMatch=0)."""
    return (method == "PUT" and headers.get("If-None-Match") == "*") or (
        method == "POST" and "ifGenerationMatch=0" in path
    )


@pytest.mark.parametrize("kind", ["s3", pytest.param("gcs", marks=pytest.mark.s3)])
def test_412_means_held_whatever_the_body_says(kind, request):
    server, bucket = store_of(kind, request)

    def hide_the_words(method, path, headers, status, payload):
        return status, (_UNHELPFUL if status == 412 else payload)

    proxy = _RewritingProxy(server.endpoint, hide_the_words)
    try:
        fs = _proxied_fs(server, bucket, proxy)
        fs.pipe_file("once.json", b"1", mode="create")
        with pytest.raises(FileExistsError):
            fs.pipe_file("once.json", b"2", mode="create")
        with pytest.raises(FileExistsError), fs.open("once.json", "xb") as f:
            f.write(b"3")
        assert fs.cat_file("once.json") == b"1"
        with fs.lock("repo", timeout=1):
            rival = orchfs.OrchFileSystem(
                root=fs.root, storage_options=fs.storage_options_, skip_instance_cache=True
            )
            outcome = []

            def contend() -> None:  # another thread: the lock is re-entrant within one
                try:
                    with rival.lock("repo", timeout=0.3):
                        outcome.append("acquired")
                except Exception as exc:
                    outcome.append(exc)

            thread = threading.Thread(target=contend)
            thread.start()
            thread.join()
            assert isinstance(outcome[0], LockTimeout), outcome
            assert f"pid {os.getpid()}" in str(outcome[0])
    finally:
        proxy.close()


# S3: a server fault worded like a precondition failure. GCS: a 409 (a precondition failure
# on Azure's create, not on GCS's) with Google's wording of one; not a 5xx, which gcsfs
# retries for half a minute before giving up.
_NOT_A_PRECONDITION = {"s3": (500, _MISLEADING), "gcs": (409, _MISLEADING_GCS)}


@pytest.mark.parametrize("kind", ["s3", pytest.param("gcs", marks=pytest.mark.s3)])
def test_other_errors_are_not_preconditions_whatever_the_body_says(kind, request):
    server, bucket = store_of(kind, request)

    def pretend(method, path, headers, status, payload):
        return _NOT_A_PRECONDITION[kind] if _is_create(method, path, headers) else (status, payload)

    proxy = _RewritingProxy(server.endpoint, pretend)
    try:
        fs = _proxied_fs(server, bucket, proxy)
        with pytest.raises(OSError) as info:
            fs.pipe_file("new.json", b"1", mode="create")
        assert not isinstance(info.value, FileExistsError)
    finally:
        proxy.close()


# --- the conditional requests themselves, on each real store ------------------------------
def test_conditional_requests_on_each_store(store_kind, request, tmp_path):
    """What leases and fencing stand on: create fails over an object, get returns the
    version with the age by the server's clock, replace and delete name a version."""
    from orchfs.errors import PreconditionFailed

    server, _ = store_of(store_kind, request)
    storage = make_fs(store_kind, request, tmp_path).state_storage
    store = storage.conditional
    path = storage.backend_path(f"conditional-{time.time_ns()}")
    first = store.create(path, b"one")
    with pytest.raises(FileExistsError):
        store.create(path, b"two")
    found = store.get(path)
    assert (found.data, found.version) == (b"one", first)
    # Date and Last-Modified have a resolution of one second; the write was just now.
    assert found.age is not None and -2.0 <= found.age <= 30.0, found.age
    second = store.replace(path, b"three", first)
    assert second != first
    with pytest.raises(PreconditionFailed):
        store.replace(path, b"four", first)
    if server.capability.conditional_delete:  # fake-gcs-server deletes whatever generation is there
        with pytest.raises(PreconditionFailed):
            store.delete(path, first)
    assert store.get(path).data == b"three"
    store.delete(path, second)
    assert store.get(path) is None
    with pytest.raises(PreconditionFailed):  # gone is not at that version either
        store.delete(path, second)


def test_gcs_requests_per_operation(gcs_server, gcs_bucket):
    """Pinned round trips on GCS: a write is one upload; update_json is four requests
    uncontended (lease taken, the read under it, the fenced upload, the lease released)."""
    sent: list[str] = []

    def record(method, path, headers, status, payload):
        # A releasing holder looks for announced waiters every few seconds: not a cost of one call.
        if not path.split("?")[0].endswith(".waiting"):
            sent.append(method)
        return status, payload

    proxy = _RewritingProxy(gcs_server.endpoint, record)
    try:
        fs = _proxied_fs(gcs_server, gcs_bucket, proxy)

        def requests(operation) -> list[str]:
            sent.clear()
            operation()
            return sorted(sent)

        def bump() -> None:
            fs.update_json("run/counter.json", lambda v: {"n": v.get("n", 0) + 1})

        bump()  # the lease object, the counter and the precondition probe exist from here on
        assert requests(bump) == ["GET", "POST", "POST", "POST"]
        assert requests(lambda: fs.pipe_file("run/fresh.json", b"{}")) == ["POST"]
        assert requests(lambda: fs.pipe_file("run/fresh.json", b"{2}")) == ["POST"]
        assert requests(lambda: fs.cat_file("run/fresh.json")) == ["GET"]
        assert json.loads(fs.cat_file("run/counter.json")) == {"n": 2}
    finally:
        proxy.close()


# --- a store that ignores preconditions is refused: a lease there would exclude nobody -----
def test_store_that_ignores_preconditions_refuses_a_lease(ignoring_gcs_server, ignoring_gcs_bucket):
    """gcp-storage-emulator overwrites on ifGenerationMatch=0: two processes would both
    "create" the lease. The probe at the first lease notices, and nothing is written."""
    from orchfs.errors import ConfigError

    root = f"gs://{ignoring_gcs_bucket}/repo-{time.time_ns()}"
    fs = orchfs.OrchFileSystem(root=root, storage_options=ignoring_gcs_server.storage_options)
    for _ in range(2):  # the answer is remembered, and refused again
        with pytest.raises(ConfigError) as info, fs.lock("repo", timeout=1):
            pass
        message = str(info.value)
        assert "\n" not in message, message
        assert root in message and "ignores preconditions" in message, message
        assert "honours conditional writes" in message  # the fix
    with pytest.raises(ConfigError, match="ignores preconditions"):
        fs.update_json("counter.json", lambda v: {"n": 1})
    assert not fs.exists("counter.json")
    assert fs.state_storage.info("locks/repo.lease") is None  # no lease was ever written


def test_precondition_probe_is_asked_once_per_bucket(gcs_server):
    """On a store that honours preconditions the probe costs one or two creates at the first
    lease on a bucket in a process, and nothing after (another repository, the same bucket)."""
    from orchfs.conditional import PROBE_NAME, inject

    bucket = make_bucket(gcs_server)
    probes = []

    def count(call) -> None:
        if call.url.endswith(PROBE_NAME):
            probes.append(call.op)

    with inject(count):
        for repo in ("one", "two"):
            fs = orchfs.OrchFileSystem(
                root=f"gs://{bucket}/{repo}", storage_options=gcs_server.storage_options
            )
            fs.update_json("counter.json", lambda v: {"n": v.get("n", 0) + 1})
            fs.update_json("counter.json", lambda v: {"n": v.get("n", 0) + 1})
            assert json.loads(fs.cat_file("counter.json")) == {"n": 2}
            if repo == "one":
                assert probes == ["create", "create"], probes  # made, then refused: honoured
    assert probes == ["create", "create"], "asked again for the same bucket"


def test_store_without_conditional_requests_refuses_a_lease(tmp_path):
    import fsspec

    from orchfs.errors import ConfigError
    from orchfs.storage import FsspecStorage

    storage = FsspecStorage(fsspec.filesystem("file"), str(tmp_path), "object")
    with pytest.raises(ConfigError, match="no conditional requests"):
        locks.make_lock(storage, "repo", timeout=1, session=None)


def test_lease_on_memory_storage_renews_and_fences(tmp_path):
    """The lease logic itself, in process: a failed renewal is retried, then the holder
    learns it lost the lease and its fenced write is refused."""
    import fsspec

    from orchfs.conditional import inject
    from orchfs.storage import FsspecStorage

    storage = FsspecStorage(fsspec.filesystem("memory"), f"/lease-{time.time_ns()}", "memory")
    lease = locks.LeaseLock(storage, "repo", None, lease=0.5, renew=0.05)
    tries = []

    def refuse(call) -> None:
        if call.op == "replace" and threading.current_thread().name.startswith("orchfs-lease"):
            tries.append(call)
            raise ConnectionError("injected")

    lock = locks.RepositoryLock(lease, timeout=5)
    with inject(refuse):
        lock.acquire()
        first = lock.token.generation
        storage.write("state.json", b"1")  # fenced: the lease is fresh
        while not lock.lost:
            time.sleep(0.01)
        with pytest.raises(orchfs.LockLostError):
            storage.write("state.json", b"2")
        lock.release()
    assert len(tries) >= 2
    assert storage.read("state.json") == b"1"
    lock.acquire()  # taken again over the expired record: the generation grew
    assert lock.token.generation == first + 1
    lock.release()


@pytest.mark.slow
def test_a_waiter_is_not_starved_by_a_tight_loop(request, tmp_path):
    """One process increments in a tight loop (it never waits); another process asks once:
    it gets in while the loop still runs (waiters announce themselves; the looping holder
    looks now and then and lets them go first)."""
    fs = make_fs("s3", request, tmp_path)
    stop = threading.Event()
    done = []

    def loop() -> None:
        while not stop.is_set() and len(done) < 3000:
            fs.update_json("counter.json", lambda value: {"n": value.get("n", 0) + 1})
            done.append(1)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        while len(done) < 3 and thread.is_alive():
            time.sleep(0.01)
        waiter = worker("timed_increment", spec_of(fs))
        said = waiter.stdout.readline().split()
        assert waiter.wait(timeout=120) == 0
        still_looping = thread.is_alive()
    finally:
        stop.set()
        thread.join()
    assert said and said[0] == "acquired"
    assert still_looping, "the waiter got the lock only after the loop ended"
    assert json.loads(fs.cat_file("counter.json"))["n"] == len(done) + 1


def test_lease_length_comes_from_the_configuration(monkeypatch, request, tmp_path):
    monkeypatch.setenv("ORCHFS_LEASE", "7s")
    fs = make_fs("s3", request, tmp_path)
    assert fs.lease == 7.0
    with fs.lock("repo") as lock:
        assert 0 < lock.deadline - time.monotonic() <= 7.0
    with fs.lock("repo", lease=12) as lock:
        assert 7.0 < lock.deadline - time.monotonic() <= 12.0
    monkeypatch.setenv("ORCHFS_LEASE", "soon")
    with pytest.raises(orchfs.ConfigError, match="soon"):
        make_fs("memory", request, tmp_path)


def test_lease_object_deleted_behind_the_process_is_recreated(request, tmp_path):
    """This process remembers the version of a released lease; if the object is gone
    (a bucket emptied, a cleanup), the next acquisition creates it again."""
    fs = make_fs("s3", request, tmp_path)
    with fs.lock("gone"):
        pass
    fs.state_storage.fs.rm_file(fs.state_storage.backend_path("locks/gone.lease"))
    with fs.lock("gone", timeout=5) as lock:
        assert lock.token.generation == 1
    fs.update_json("state.json", lambda value: {"ok": True})
