"""The ``orch_fake_disk`` fixture: v1 and v2 repositories on pyfakefs's fake disk."""

from __future__ import annotations

import json
import os
import warnings

import orchfs
from orchfs import doctor, migrate
from orchfs.errors import LegacyPathWarning
from orchfs.secrets import new_key_text
from orchfs.testing import LEGACY_SAMPLE

from .conftest import digest_tree


def test_v2_repository_on_the_fake_disk(orch_fake_disk):
    fs = orch_fake_disk.repo(key=new_key_text())
    fs.pipe_file("state.json", b"{}")
    fs.update_json("state.json", lambda s: {**s, "step": 4})
    for i in range(3):
        fs.append_line("log.jsonl", {"event": "step", "i": i})
    fs.secrets.set("API_KEY", "s3cr3t-marker")
    fs.pipe_file("checkpoints/cp_1.json", b'{"n": 1}')
    assert json.loads(fs.cat_file("state.json")) == {"step": 4}
    assert [json.loads(line)["i"] for line in fs.cat_file("log.jsonl").splitlines()] == [0, 1, 2]
    assert fs.secrets.get("API_KEY") == "s3cr3t-marker"
    assert fs.ls("checkpoints", detail=False) == ["checkpoints/cp_1.json"]
    stored = digest_tree("/repo/.orchestrator")  # what is on the fake disk
    assert stored["checkpoints/cp_1.json"] == b'{"n": 1}'
    assert any(rel.startswith("secrets/") for rel in stored)
    assert all(b"s3cr3t-marker" not in data for data in stored.values())
    assert isinstance(doctor.run("/repo"), list)
    orch_fake_disk.fake.pause()  # the real disk: nothing was written there
    try:
        assert not os.path.exists("/repo")
    finally:
        orch_fake_disk.fake.resume()


def test_v1_repository_read_migrated_and_rolled_back_on_the_fake_disk(orch_fake_disk):
    root = str(orch_fake_disk.legacy_repo())
    before = digest_tree(root)
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fs.cat_file("state.json") == LEGACY_SAMPLE[".workflow_state.json"]
    assert any(issubclass(w.category, LegacyPathWarning) for w in caught)
    result = migrate.apply(root)
    assert result.applied
    migrated = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    assert migrated.resolve("log.jsonl").layer == "contained"
    assert migrated.cat_file("log.jsonl") == LEGACY_SAMPLE[".workflow_log.jsonl"]
    # a file written in place is backed up by copying: on the fake disk that is a plain
    # copy, never pyfakefs's no-op ioctl (which would leave an empty backup)
    backup = f"{root}/.orchestrator/migration_backup/{result.plan.migration_id}/.workflow_log.jsonl"
    with open(backup, "rb") as f:
        assert f.read() == LEGACY_SAMPLE[".workflow_log.jsonl"]
    migrate.rollback(root)
    after = {rel: data for rel, data in digest_tree(root).items() if not rel.startswith(".orchestrator")}
    assert after == before


def test_locks_are_taken_but_do_not_exclude_on_the_fake_disk(orch_fake_disk):
    """The documented limit: pyfakefs's flock does nothing, so a second holder gets in."""
    first = orch_fake_disk.repo()
    second = orchfs.OrchFileSystem(root="/repo", skip_instance_cache=True)
    with first.lock("repo", timeout=0), second.lock("repo", timeout=0):
        pass
