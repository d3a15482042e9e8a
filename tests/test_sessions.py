"""Sessions: listing, the retention policy (a property of `choose`), pruning on disk,
in memory and through the command line, and doctor's `retention` finding."""

from __future__ import annotations

import json
import os
import time

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import orchfs
from orchfs.cli import main
from orchfs.errors import ConfigError
from orchfs.sessions import Retention, Session, choose, list_sessions, parse_size, prune

NOW = 1_800_000_000.0
HOUR = 3600.0
DAY = 86400.0


def _sessions(draw_list):
    return [
        Session(f"s{i}", files=1, bytes=size, newest=NOW - age, locked=locked, current=current)
        for i, (size, age, locked, current) in enumerate(draw_list)
    ]


session_lists = st.lists(
    st.tuples(
        st.integers(0, 10_000),
        st.floats(0, 30 * DAY),
        st.booleans() | st.just(False),
        st.just(False),
    ),
    max_size=12,
).map(_sessions)
policies = st.builds(
    Retention,
    max_age=st.none() | st.floats(0, 20 * DAY),
    max_sessions=st.none() | st.integers(0, 10),
    max_bytes=st.none() | st.integers(0, 50_000),
    min_age=st.floats(0, 2 * DAY),
)


@settings(max_examples=300, deadline=None)
@given(sessions=session_lists, policy=policies, current=st.integers(0, 12))
def test_choose_keeps_the_protected_and_meets_the_limits_oldest_first(sessions, policy, current):
    if sessions:
        index = current % len(sessions)
        s = sessions[index]
        sessions[index] = Session(s.id, s.files, s.bytes, s.newest, s.locked, True)
    chosen = choose(sessions, policy, NOW)
    chosen_ids = {p.session.id for p in chosen}
    assert len(chosen_ids) == len(chosen)
    candidates = [s for s in sessions if not s.current and not s.locked and s.age(NOW) >= policy.min_age]
    for pruning in chosen:
        assert pruning.session in candidates  # never current, locked or too young
    if policy.max_age is not None:
        assert {s.id for s in candidates if s.age(NOW) > policy.max_age} <= chosen_ids
    kept = [s for s in sessions if s.id not in chosen_ids]
    spare = [s for s in candidates if s.id not in chosen_ids]
    if spare:  # a candidate is only spared once the limits hold
        if policy.max_sessions is not None:
            assert len(kept) <= policy.max_sessions
        if policy.max_bytes is not None:
            assert sum(s.bytes for s in kept) <= policy.max_bytes
    for pruning in chosen:
        if pruning.reason != "older than max_age":  # limits take the oldest first
            older = [s for s in candidates if (s.newest, s.id) < (pruning.session.newest, pruning.session.id)]
            assert {s.id for s in older} <= chosen_ids


def test_sizes_and_bad_policies():
    assert parse_size("500MB") == 500_000_000
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size(" 10 kb ") == 10_000
    assert parse_size(42) == 42
    for bad, key in (
        ({"max_bytes": "lots"}, "max_bytes"),
        ({"max_age": "forever"}, "max_age"),
        ({"max_sessions": -1}, "max_sessions"),
        ({"max_sessions": "20"}, "max_sessions"),
    ):
        with pytest.raises(ConfigError, match=key):
            Retention.from_config(bad)
    policy = Retention.from_config({"max_age": "7d", "max_sessions": 20, "max_bytes": "500MB"})
    assert (policy.max_age, policy.max_sessions, policy.max_bytes, policy.min_age) == (
        7 * DAY,
        20,
        500_000_000,
        HOUR,
    )


def _age_session(repo, session_id: str, seconds: float) -> None:
    stamp = time.time() - seconds
    for top, _dirs, files in os.walk(os.path.join(repo, ".orchestrator", "sessions", session_id)):
        for name in files:
            os.utime(os.path.join(top, name), (stamp, stamp))


@pytest.fixture
def repo_with_sessions(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".git").mkdir()
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    for session_id, age, size in (("old", 10 * DAY, 300), ("mid", 3 * DAY, 200), ("new", 2 * HOUR, 100)):
        bound = fs.session(session_id)
        bound.pipe_file("state.json", b"x" * size)
        bound.pipe_file("checkpoints/cp_1.json", b"{}")
        _age_session(str(repo), session_id, age)
    fs.session("young").pipe_file("state.json", b"{}")
    return repo, fs


def test_list_and_prune_on_disk(repo_with_sessions):
    repo, fs = repo_with_sessions
    listed = {s.id: s for s in list_sessions(fs)}
    assert sorted(listed) == ["mid", "new", "old", "young"]
    assert [s.id for s in list_sessions(fs)] == ["old", "mid", "new", "young"]  # oldest first
    assert listed["old"].files == 2 and listed["old"].bytes == 302
    current = fs.session("mid")
    policy = Retention(max_sessions=1)
    assert [p.session.id for p in prune(current, policy, dry_run=True)] == ["old", "new"]
    assert sorted(os.listdir(repo / ".orchestrator" / "sessions")) == ["mid", "new", "old", "young"]
    with fs.session("new").lock("work"):  # a session holding a lock is never pruned
        removed = prune(current, policy)
    assert [p.session.id for p in removed] == ["old"]
    assert [p.reason for p in removed] == ["more than max_sessions"]
    assert sorted(os.listdir(repo / ".orchestrator" / "sessions")) == ["mid", "new", "young"]
    assert current.cat_file("checkpoints/cp_1.json") == b"{}"  # the current one is whole


def test_prune_hides_a_v1_session_without_touching_it(tmp_path):
    repo = orchfs.testing.build_legacy_repo(tmp_path / "repo")
    legacy = repo / ".workflow_sessions" / "s1" / "state.json"
    before = legacy.read_bytes()
    stamp = time.time() - 30 * DAY
    os.utime(legacy, (stamp, stamp))
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    assert [s.id for s in list_sessions(fs)] == ["s1"]
    assert [p.session.id for p in prune(fs, Retention(max_age=7 * DAY))] == ["s1"]
    assert list_sessions(fs) == []
    assert legacy.read_bytes() == before  # v1 files are never written: a whiteout hides it


def test_prune_in_memory():
    fs = orchfs.OrchFileSystem(root=f"memory://sessions-{time.time_ns()}")
    for session_id in ("a", "b", "c"):
        fs.session(session_id).pipe_file("state.json", session_id.encode())
    later = time.time() + 2 * HOUR  # every session is past min_age by then
    removed = prune(fs, Retention(max_sessions=2), now=later)
    assert len(removed) == 1
    assert len(list_sessions(fs)) == 2


def run_cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_command_line_and_doctor(repo_with_sessions, monkeypatch, tmp_path):
    repo, _fs = repo_with_sessions
    monkeypatch.setenv("ORCHFS_ORG_CONFIG", str(tmp_path / "none.yaml"))
    root = str(repo)
    listed = json.loads(run_cli("--root", root, "sessions", "list", "--json").stdout)
    assert [s["id"] for s in listed["sessions"]] == ["old", "mid", "new", "young"]
    refused = run_cli("--root", root, "sessions", "prune")
    assert refused.exit_code == 1 and "state.retention" in refused.output
    (repo / "workflow.yaml").write_text("state:\n  retention: {max_age: 5d, max_bytes: 10KB}\n")
    doctor = run_cli("--root", root, "doctor", "--json")
    findings = [f for f in json.loads(doctor.stdout)["findings"] if f["id"] == "retention"]
    assert doctor.exit_code == 1
    assert findings[0]["paths"] == ["sessions/old"]
    dry = json.loads(run_cli("--root", root, "sessions", "prune", "--dry-run", "--json").stdout)
    assert [(p["id"], p["reason"]) for p in dry["pruned"]] == [("old", "older than max_age")]
    assert (repo / ".orchestrator" / "sessions" / "old").is_dir()
    done = run_cli("--root", root, "sessions", "prune", "--max-sessions", "2", "--json")
    assert [p["id"] for p in json.loads(done.stdout)["pruned"]] == ["old", "mid"]
    assert sorted(os.listdir(repo / ".orchestrator" / "sessions")) == ["new", "young"]
    assert not [
        f
        for f in json.loads(run_cli("--root", root, "doctor", "--json").stdout)["findings"]
        if f["id"] == "retention"
    ]
    bad = run_cli("--root", root, "sessions", "prune", "--max-bytes", "lots")
    assert bad.exit_code == 2 and "--max-bytes" in bad.output  # a usage error


def _remote_files(remote_fs, base) -> dict[str, bytes]:
    if not remote_fs.exists(base):
        return {}
    return {name[len(base) + 1 :]: remote_fs.cat_file(name) for name in remote_fs.find(base)}


@pytest.fixture
def bound_session(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    return repo, fs.session("web1")


def test_persist_syncs_changes_and_deletions_and_restores(bound_session, tmp_path):
    import fsspec

    from orchfs.sessions import Persister, restore

    _repo, session = bound_session
    url = f"memory://persist-{time.time_ns()}"
    memory = fsspec.filesystem("memory")
    base = memory._strip_protocol(url) + "/web1"
    session.pipe_file("state.json", b'{"step": 1}')
    session.pipe_file("checkpoints/cp_1.json", b"{}")
    persister = Persister(session, url, interval="1h")
    assert persister.sync() == 2
    assert _remote_files(memory, base) == {"state.json": b'{"step": 1}', "checkpoints/cp_1.json": b"{}"}
    assert persister.sync() == 0  # nothing changed: nothing sent
    session.pipe_file("state.json", b'{"step": 2}')
    session.rm_file("checkpoints/cp_1.json")
    assert persister.sync() == 2
    assert _remote_files(memory, base) == {"state.json": b'{"step": 2}'}
    elsewhere = tmp_path / "new-machine"
    elsewhere.mkdir()
    fresh = orchfs.OrchFileSystem(root=str(elsewhere), skip_instance_cache=True).session("web1")
    assert restore(fresh, url) == 1
    assert fresh.cat_file("state.json") == b'{"step": 2}'
    with pytest.raises(ValueError, match="bound session"):
        Persister(orchfs.OrchFileSystem(root=str(elsewhere), skip_instance_cache=True), url)


def test_persist_runs_every_interval_and_once_more_at_the_end(bound_session):
    import fsspec

    from orchfs.sessions import Persister

    _repo, session = bound_session
    url = f"memory://persist-{time.time_ns()}"
    memory = fsspec.filesystem("memory")
    base = memory._strip_protocol(url) + "/web1"
    with Persister(session, url, interval=0.05) as persister:
        session.pipe_file("state.json", b"first")
        deadline = time.monotonic() + 10
        while _remote_files(memory, base).get("state.json") != b"first":
            assert time.monotonic() < deadline, "the background sync never ran"
            time.sleep(0.02)
        session.pipe_file("state.json", b"last words")  # written just before the block ends
    assert persister.error is None
    assert _remote_files(memory, base) == {"state.json": b"last words"}


def test_persist_to_s3_and_from_configuration(bound_session, moto_server, s3_bucket, monkeypatch, tmp_path):
    import s3fs

    from orchfs.sessions import persister_of, restore

    repo, session = bound_session
    monkeypatch.setenv("ORCHFS_ORG_CONFIG", str(tmp_path / "none.yaml"))
    assert persister_of(session, repo) is None
    url = f"s3://{s3_bucket}/persist-{time.time_ns()}"
    (repo / "workflow.yaml").write_text(f"state:\n  persist: {{url: {url}, interval: 2s}}\n")
    persister = persister_of(session, repo, moto_server.storage_options)
    assert persister is not None and persister.interval == 2.0
    session.pipe_file("state.json", b"on s3")
    assert persister.sync() == 1
    remote = s3fs.S3FileSystem(**moto_server.storage_options, skip_instance_cache=True)
    assert remote.cat_file(f"{url}/web1/state.json") == b"on s3"
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    fresh = orchfs.OrchFileSystem(root=str(elsewhere), skip_instance_cache=True).session("web1")
    assert restore(fresh, url, moto_server.storage_options) == 1
    assert fresh.cat_file("state.json") == b"on s3"
