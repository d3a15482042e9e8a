"""The legacy overlay: the nine rules, a realistic v1 repository, and a model check."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path

import fsspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import orchfs
from orchfs.errors import ConfigError, LayoutVersionError, PathEscapeError
from orchfs.testing import LEGACY_SAMPLE, build_legacy_repo


def tree_state(root: str) -> dict[str, tuple[str, int]]:
    """Every file under root (outside .orchestrator/) with its hash and mtime_ns."""
    out = {}
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".orchestrator"]
        for name in files:
            full = os.path.join(top, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, root)] = (
                    hashlib.sha256(f.read()).hexdigest(),
                    os.stat(full).st_mtime_ns,
                )
    return out


def whole_tree_hash(root: str) -> str:
    digest = hashlib.sha256()
    for top, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files + dirs):
            full = os.path.join(top, name)
            digest.update(os.path.relpath(full, root).encode())
            if os.path.isfile(full):
                with open(full, "rb") as f:
                    digest.update(f.read())
                digest.update(str(os.stat(full).st_mtime_ns).encode())
    return digest.hexdigest()


REALISTIC = {
    **LEGACY_SAMPLE,
    ".orchestrator.yaml": b"state:\n  legacy: off\n",
    ".workflow_approvals.db": b"SQLite format 3\x00" + b"\x01" * 100,
    ".workflow_approvals.db-wal": b"wal bytes",
    ".secrets.enc": b"Salted__" + b"\x02" * 40,
    "src/app.py": b"print('user code')\n",
    "README.md": b"# user readme\n",
    **{f".workflow_checkpoints/cp_{i:03d}.json": f'{{"cp": {i}}}\n'.encode() for i in range(200)},
    **{f".workflow_sessions/s{i}/state.json": f'{{"s": {i}}}\n'.encode() for i in range(20)},
}

LOGICAL_OF = {
    ".workflow_state.json": "state.json",
    ".workflow_log.jsonl": "log.jsonl",
    ".workflow_tool_feedback.jsonl": "feedback/tool.jsonl",
    ".workflow_process_feedback.jsonl": "feedback/process.jsonl",
    ".orchestra.yaml": "config.yaml",
    ".workflow_approvals.db": "approvals.db",
    ".workflow_approvals.db-wal": "approvals.db-wal",
    ".claude/prd_state.json": "prd/state.json",
}


def logical_for(legacy: str) -> str | None:
    if legacy in LOGICAL_OF:
        return LOGICAL_OF[legacy]
    for old, new in (
        (".workflow_checkpoints/", "checkpoints/"),
        (".workflow_sessions/", "sessions/"),
    ):
        if legacy.startswith(old):
            return new + legacy[len(old) :]
    return None


@pytest.fixture
def v1_repo(tmp_path):
    return str(build_legacy_repo(tmp_path / "repo", REALISTIC))


@pytest.fixture(autouse=True)
def quiet_legacy_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", orchfs.LegacyPathWarning)
        warnings.simplefilter("ignore", orchfs.LegacyConflictWarning)
        yield


def test_realistic_v1_repository_reads_back_and_is_never_changed(v1_repo):
    before = whole_tree_hash(v1_repo)
    fs = orchfs.OrchFileSystem(root=v1_repo, skip_instance_cache=True)
    checked = 0
    for _ in range(3):
        for legacy, data in REALISTIC.items():
            logical = logical_for(legacy)
            if logical is None:
                continue
            assert fs.cat_file(logical) == data, logical
            assert fs.resolve(logical).layer == "legacy"
            checked += 1
        assert len(fs.ls("checkpoints")) == sum(k.startswith(".workflow_checkpoints/") for k in REALISTIC)
        assert len(fs.find("sessions")) == sum(k.startswith(".workflow_sessions/") for k in REALISTIC)
        assert sorted(fs.ls("feedback", detail=False)) == [
            "feedback/process.jsonl",
            "feedback/tool.jsonl",
        ]
        root = set(fs.ls("", detail=False))
        assert {"state.json", "checkpoints", "config.yaml", "prd", "feedback", "sessions"} <= root
        assert "secrets" not in root and "README.md" not in root
        fs.exists("nothing.json"), fs.info("checkpoints"), fs.conflicts()
    assert checked >= 3 * 230
    assert whole_tree_hash(v1_repo) == before
    assert not os.path.exists(os.path.join(v1_repo, ".orchestrator"))


def test_rule1_read_falls_through_and_never_creates(v1_repo):
    fs = orchfs.OrchFileSystem(root=v1_repo)
    assert fs.cat_file("state.json") == REALISTIC[".workflow_state.json"]
    assert fs.cat_file("config.yaml") == REALISTIC[".orchestra.yaml"]  # first legacy name wins
    with pytest.raises(FileNotFoundError):
        fs.cat_file("checkpoints/absent.json")
    assert not os.path.exists(os.path.join(v1_repo, ".orchestrator"))


def test_rule2_write_lands_in_the_write_target(v1_repo):
    before = tree_state(v1_repo)
    fs = orchfs.OrchFileSystem(root=v1_repo)
    fs.pipe_file("state.json", b"new")
    assert Path(v1_repo, ".orchestrator", "state.json").read_bytes() == b"new"
    assert fs.cat_file("state.json") == b"new"
    assert fs.resolve("state.json").layer == "contained"
    assert tree_state(v1_repo) == before
    assert os.path.isfile(os.path.join(v1_repo, ".orchestrator", "FORMAT"))
    assert os.path.isfile(os.path.join(v1_repo, ".orchestrator", "meta.json"))


def test_rule3_copy_up_for_append_and_update(v1_repo):
    before = tree_state(v1_repo)
    fs = orchfs.OrchFileSystem(root=v1_repo)
    with fs.open("log.jsonl", "ab") as f:
        f.write(b'{"event": "more"}\n')
    assert fs.cat_file("log.jsonl") == REALISTIC[".workflow_log.jsonl"] + b'{"event": "more"}\n'
    with fs.open("state.json", "r+b") as f:
        f.seek(0)
        f.write(b"{")
    assert fs.cat_file("state.json") == REALISTIC[".workflow_state.json"]
    fs.append_line("feedback/tool.jsonl", {"x": 1})
    assert fs.cat_file("feedback/tool.jsonl").endswith(b'{"x":1}\n')
    assert fs.resolve("feedback/tool.jsonl").layer == "contained"
    assert tree_state(v1_repo) == before


def test_rule4_delete_writes_a_whiteout_and_a_write_removes_it(v1_repo):
    before = tree_state(v1_repo)
    fs = orchfs.OrchFileSystem(root=v1_repo)
    fs.rm_file("state.json")
    assert not fs.exists("state.json")
    assert os.path.exists(os.path.join(v1_repo, ".orchestrator", ".wh.state.json"))
    assert "state.json" not in fs.ls("", detail=False)
    assert tree_state(v1_repo) == before
    fs.pipe_file("state.json", b"again")
    assert fs.cat_file("state.json") == b"again"
    assert not os.path.exists(os.path.join(v1_repo, ".orchestrator", ".wh.state.json"))


def test_rule5_merged_listing_and_opaque_directories(v1_repo):
    fs = orchfs.OrchFileSystem(root=v1_repo)
    fs.pipe_file("checkpoints/cp_new.json", b"new")
    fs.pipe_file("checkpoints/cp_000.json", b"upper wins")
    names = fs.ls("checkpoints", detail=False)
    assert len(names) == len(set(names)) == 203
    assert not any("/.wh." in n for n in names)
    fs.rm("checkpoints", recursive=True)
    assert not fs.exists("checkpoints")
    assert fs.find("checkpoints") == []
    fs.mkdir("checkpoints")
    assert fs.ls("checkpoints") == []
    assert os.path.exists(os.path.join(v1_repo, ".orchestrator", "checkpoints", ".wh..wh..opq"))
    fs.pipe_file("checkpoints/fresh.json", b"f")
    assert fs.ls("checkpoints", detail=False) == ["checkpoints/fresh.json"]
    assert len(os.listdir(os.path.join(v1_repo, ".workflow_checkpoints"))) == 202


def test_rule6_rename_is_copy_up_plus_whiteout(v1_repo):
    before = tree_state(v1_repo)
    fs = orchfs.OrchFileSystem(root=v1_repo)
    fs.mv("checkpoints/cp_001.json", "checkpoints/renamed.json")
    assert fs.cat_file("checkpoints/renamed.json") == REALISTIC[".workflow_checkpoints/cp_001.json"]
    assert not fs.exists("checkpoints/cp_001.json")
    fs.mv("prd", "prd_old", recursive=True)
    assert fs.cat_file("prd_old/state.json") == REALISTIC[".claude/prd_state.json"]
    assert not fs.exists("prd/state.json")
    assert tree_state(v1_repo) == before


def test_rule7_both_exist_and_differ(v1_repo):
    # An upper copy that orchfs did not write over the legacy file (an old orchestrator
    # ran after the upgrade, or the file was placed by hand) is a conflict.
    upper = os.path.join(v1_repo, ".orchestrator", "state.json")
    os.makedirs(os.path.dirname(upper))
    with open(upper, "wb") as f:
        f.write(b"upper")
    fs = orchfs.OrchFileSystem(root=v1_repo, skip_instance_cache=True)
    fs.pipe_file("log.jsonl", REALISTIC[".workflow_log.jsonl"])  # same bytes: no conflict
    found = {c.logical: c for c in fs.conflicts()}
    assert sorted(found) == ["config.yaml", "state.json"]  # config.yaml: two legacy files differ
    conflict = found["state.json"]
    assert conflict.kind == "differ"
    assert conflict.upper_sha256 == hashlib.sha256(b"upper").hexdigest()
    assert conflict.legacy_sha256 == hashlib.sha256(REALISTIC[".workflow_state.json"]).hexdigest()
    assert found["config.yaml"].kind == "legacy-pair"
    assert found["config.yaml"].upper_url.endswith(".orchestra.yaml")
    from orchfs.overlay import forget_warnings

    forget_warnings()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fs.cat_file("state.json") == b"upper"
        fs.cat_file("state.json")
        assert fs.cat_file("config.yaml") == REALISTIC[".orchestra.yaml"]  # the first serves
        fs.cat_file("config.yaml")
    conflicts = [str(w.message) for w in caught if issubclass(w.category, orchfs.LegacyConflictWarning)]
    assert len(conflicts) == 2 and "the first wins" in conflicts[1]


def test_first_reads_of_contained_files_ask_the_index_not_the_v1_layer(tmp_path, monkeypatch):
    """Rule 7's check on the first read of a contained file asks the layer index whether
    a v1 copy is there: once the index lists the v1 directory, no file's read looks at its
    v1 location, and the one v1 copy that is there and differs still warns."""
    from orchfs.storage import LocalStorage

    root = tmp_path / "repo"
    (root / ".orchestrator" / "checkpoints").mkdir(parents=True)
    (root / ".workflow_checkpoints").mkdir()
    for i in range(40):
        (root / ".orchestrator" / "checkpoints" / f"cp_{i:02d}.json").write_bytes(b"new %d" % i)
    (root / ".workflow_checkpoints" / "cp_30.json").write_bytes(b"old 30")
    asked = []
    real_info = LocalStorage.info

    def info_asked(self, rel):
        asked.append(rel)
        return real_info(self, rel)

    monkeypatch.setattr(LocalStorage, "info", info_asked)
    fs = orchfs.OrchFileSystem(root=str(root), skip_instance_cache=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(40):
            assert fs.cat_file(f"checkpoints/cp_{i:02d}.json") == b"new %d" % i
    conflicts = [str(w.message) for w in caught if issubclass(w.category, orchfs.LegacyConflictWarning)]
    assert len(conflicts) == 1 and "cp_30.json" in conflicts[0]
    v1_looks = [rel for rel in asked if rel.startswith(".workflow_checkpoints/")]
    assert v1_looks[-1] == ".workflow_checkpoints/cp_30.json"  # the copy that is there
    assert len(v1_looks) <= 5, v1_looks  # the others: before the index listed the directory


def test_rule7_orchfs_writes_supersede_legacy_files(v1_repo):
    fs = orchfs.OrchFileSystem(root=v1_repo, skip_instance_cache=True)
    fs.pipe_file("state.json", b"written by orchfs")
    with fs.open("log.jsonl", "ab") as f:  # copy-up
        f.write(b'{"event": "more"}\n')
    fs.append_line("feedback/tool.jsonl", {"tool": "ruff"})
    fs.rm_file("checkpoints/cp_001.json")  # a whiteout
    assert fs.conflicts() == [c for c in fs.conflicts() if c.logical == "config.yaml"]
    stale = sorted(c.logical for c in fs.legacy_pairs() if c.kind == "stale")
    assert stale == ["feedback/tool.jsonl", "log.jsonl", "state.json"]
    from orchfs.overlay import forget_warnings

    forget_warnings()
    reader = orchfs.OrchFileSystem(root=v1_repo, skip_instance_cache=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for logical in stale:
            reader.cat_file(logical)
    assert not [w for w in caught if issubclass(w.category, orchfs.LegacyConflictWarning)]
    # An old orchestrator writes the legacy file again: now it is a conflict.
    with open(os.path.join(v1_repo, ".workflow_state.json"), "ab") as f:
        f.write(b" ")
    changed = [c for c in fs.conflicts() if c.logical == "state.json"]
    assert [c.kind for c in changed] == ["legacy-changed"]


def test_rule7_supersede_records_are_checked_when_read_back(v1_repo):
    from orchfs.supersede import RECORD_DIR, record_key

    fs = orchfs.OrchFileSystem(root=v1_repo, skip_instance_cache=True)
    fs.pipe_file("state.json", b"written by orchfs")
    records = os.path.join(v1_repo, ".orchestrator", RECORD_DIR)
    good = os.path.join(records, record_key(".workflow_state.json"))
    with open(good, "rb") as f:
        body = json.loads(f.read())
    for damaged in (
        b"not json",
        json.dumps([body]).encode(),
        json.dumps({**body, "legacy": ".workflow_log.jsonl"}).encode(),  # vouches for another file
        json.dumps({**body, "size": -1}).encode(),
        json.dumps({**body, "sha256": "../../etc"}).encode(),
        b"{" + b" " * 10000 + b"}",
    ):
        with open(good, "wb") as f:
            f.write(damaged)
        assert [c.kind for c in fs.conflicts() if c.logical == "state.json"] == ["differ"]
        from orchfs import doctor

        unsafe = [f for f in doctor.run(v1_repo) if f.id == "unsafe-state"]
        assert [f.paths for f in unsafe] == [(os.path.relpath(good, v1_repo),)]


def test_rule8_legacy_warning_once_per_path(v1_repo):
    from orchfs.overlay import forget_warnings

    fs = orchfs.OrchFileSystem(root=v1_repo)
    forget_warnings()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fs.cat_file("state.json")
        fs.cat_file("state.json")
        fs.cat_file("log.jsonl")
    legacy = [w for w in caught if issubclass(w.category, orchfs.LegacyPathWarning)]
    assert len(legacy) == 2
    assert issubclass(orchfs.LegacyPathWarning, DeprecationWarning)
    assert "orchfs migrate" in str(legacy[0].message)


def test_rule9_legacy_phases(v1_repo):
    off = orchfs.OrchFileSystem(root=v1_repo, legacy="off")
    assert not off.exists("state.json")
    assert off.ls("", detail=False) == []
    migrate = orchfs.OrchFileSystem(root=v1_repo, legacy="migrate")
    assert migrate.cat_file("state.json") == REALISTIC[".workflow_state.json"]
    assert not os.path.exists(os.path.join(v1_repo, ".workflow_state.json"))
    assert migrate.resolve("state.json").layer == "contained"
    backup = os.path.join(v1_repo, ".orchestrator", "migration_backup", "on-read", ".workflow_state.json")
    assert Path(backup).read_bytes() == REALISTIC[".workflow_state.json"]
    with pytest.raises(ValueError, match="legacy="):
        orchfs.OrchFileSystem(root=v1_repo, legacy="sometimes")


def test_resolve_names_the_file_in_use(v1_repo):
    fs = orchfs.OrchFileSystem(root=v1_repo)
    resolution = fs.resolve("checkpoints/cp_002.json")
    assert resolution == orchfs.Resolution(
        "checkpoints/cp_002.json",
        "legacy",
        os.path.join(v1_repo, ".workflow_checkpoints", "cp_002.json"),
        True,
    )
    assert fs.resolve("notes/todo.md").layer == "contained"
    assert fs.resolve("notes/todo.md").exists is False


def test_sessions_fall_through_session_contained_legacy(v1_repo):
    fs = orchfs.OrchFileSystem(root=v1_repo)
    session = fs.session("abc")
    assert session.cat_file("state.json") == REALISTIC[".workflow_state.json"]
    fs.pipe_file("state.json", b"repo level")
    assert session.cat_file("state.json") == b"repo level"
    session.pipe_file("state.json", b"session level")
    assert session.resolve("state.json").layer == "session"
    session_file = Path(v1_repo, ".orchestrator", "sessions", "abc", "state.json")
    assert session_file.read_bytes() == b"session level"
    assert fs.cat_file("state.json") == b"repo level"
    session.pipe_file("config.yaml", b"shared")  # repo-scoped: not in the session dir
    assert fs.cat_file("config.yaml") == b"shared"
    session.rm_file("state.json")  # a whiteout in the session hides the lower copies
    assert not session.exists("state.json")
    assert "state.json" not in session.ls("", detail=False)
    assert fs.cat_file("state.json") == b"repo level"
    for bad in ("a/b", "..", "../x", "a\\b"):
        with pytest.raises(PathEscapeError):
            fs.session(bad)


def test_web_mode_binds_a_session(v1_repo, monkeypatch):
    monkeypatch.setenv("ORCHFS_SESSION", "web1")
    fs = orchfs.OrchFileSystem(root=v1_repo, web_mode=True)
    assert fs.session_id == "web1"
    fs.pipe_file("state.json", b"w")
    assert fs.resolve("state.json").url.endswith("sessions/web1/state.json")


def test_newer_format_is_read_only(v1_repo):
    state = os.path.join(v1_repo, ".orchestrator")
    os.makedirs(state)
    with open(os.path.join(state, "FORMAT"), "w") as f:
        f.write("3\norchfs>=9.0\n")
    fs = orchfs.OrchFileSystem(root=v1_repo)
    assert fs.cat_file("state.json") == REALISTIC[".workflow_state.json"]
    with pytest.raises(LayoutVersionError, match=r"layout version 3.*orchfs>=9.0"):
        fs.pipe_file("state.json", b"x")
    with pytest.raises(LayoutVersionError):
        fs.append_line("log.jsonl", {"a": 1})
    assert not os.path.exists(os.path.join(state, "state.json"))


def test_custom_layout_from_yaml_and_dict(tmp_path):
    repo = build_legacy_repo(tmp_path / "r", {".old_state": b"old", ".old_dir/a": b"a"})
    text = "entries:\n  - {logical: state.json, scope: session, legacy: [.missing, .old_state]}\n  - {logical: d/, legacy: [.old_dir/]}\n"
    fs = orchfs.OrchFileSystem(root=str(repo), layout=orchfs.Layout.from_yaml(text))
    assert fs.cat_file("state.json") == b"old"
    assert fs.cat_file("d/a") == b"a"
    fs2 = orchfs.OrchFileSystem(
        root=str(repo), layout={"entries": [{"logical": "x.json", "legacy": [".old_state"]}]}
    )
    assert fs2.cat_file("x.json") == b"old"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("entries:\n  - logical: a\n   legacy: [x\n", r"layout.yaml:3:4: malformed"),
        ("entries:\n  - {logical: a, scope: team}\n", r"layout.yaml:2: unknown scope 'team'"),
        (
            "entries:\n  - {logical: a}\n  - {logical: a}\n",
            r"layout.yaml:3: logical path 'a' is claimed twice",
        ),
        (
            "entries:\n  - {logical: a, legacy: [../outside]}\n",
            r"layout.yaml:2: legacy location '../outside'",
        ),
        (
            "entries:\n  - {logical: a, legacy: [/etc/passwd]}\n",
            r"layout.yaml:2: legacy location '/etc/passwd'",
        ),
        (
            "entries:\n  - {logical: a/, legacy: [.orchfs-tmp.a/]}\n",
            r"layout.yaml:2: legacy location '.orchfs-tmp.a/' has a name starting with .wh. or .orchfs-tmp.",
        ),
        ("entries:\n  - {logical: ../a}\n", r"layout.yaml:2: bad logical path"),
        (
            "entries:\n  - {logical: a, colour: red}\n",
            r"layout.yaml:2: unknown entry keys \['colour'\]",
        ),
        ("- just a list\n", r"layout.yaml:1: a layout is a mapping"),
    ],
)
def test_malformed_layouts_name_file_and_line(text, message):
    with pytest.raises(ConfigError, match=message):
        orchfs.Layout.from_yaml(text, "layout.yaml")


def test_default_layout_is_the_design_table():
    layout = orchfs.default_layout()
    match = layout.match("checkpoints/cp_1.json")
    assert match.legacy_paths() == (".workflow_checkpoints/cp_1.json",)
    assert layout.match("config.yaml").legacy_paths() == (".orchestra.yaml", ".orchestrator.yaml")
    assert layout.match("approvals.db-shm").legacy_paths() == (".workflow_approvals.db-shm",)
    assert layout.match("state.json").entry.scope == "session"
    assert layout.match("notes/todo.md") is None
    assert orchfs.Layout.from_dict(layout.to_dict()).entries == layout.entries


# --- the model check ---------------------------------------------------------------
FILES = [
    "state.json",
    "log.jsonl",
    "config.yaml",
    "checkpoints/cp_1.json",
    "checkpoints/cp_2.json",
    "checkpoints/cp_3.json",
    "notes/a.txt",
    "feedback/tool.jsonl",
    "sessions/s1/state.json",
]
DIRS = ["checkpoints", "notes", "feedback", "sessions"]
SEEDS = {
    ".workflow_state.json": "state.json",
    ".workflow_log.jsonl": "log.jsonl",
    ".orchestra.yaml": "config.yaml",
    ".workflow_checkpoints/cp_1.json": "checkpoints/cp_1.json",
    ".workflow_checkpoints/cp_2.json": "checkpoints/cp_2.json",
    ".workflow_tool_feedback.jsonl": "feedback/tool.jsonl",
    ".workflow_sessions/s1/state.json": "sessions/s1/state.json",
}
payloads = st.binary(min_size=0, max_size=20)


class OverlayModel(RuleBasedStateMachine):
    backend = "local"

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, bytes] = {}
        self.seeded: dict[str, bytes] = {}
        if self.backend == "local":
            self.tmp = tempfile.mkdtemp(prefix="orchfs-model-")
            self.fs = orchfs.OrchFileSystem(root=self.tmp, skip_instance_cache=True)
        else:
            self.tmp = None
            name = f"model-{uuid.uuid4().hex}"
            self.memory_root = f"/{name}"
            self.fs = orchfs.OrchFileSystem(root=f"memory://{name}", skip_instance_cache=True)
        self.seeded_stat: dict[str, tuple[bytes, int | None]] = {}

    def _legacy_write(self, rel: str, data: bytes) -> None:
        if self.tmp:
            build_legacy_repo(self.tmp, {rel: data})
        else:
            fsspec.filesystem("memory").pipe_file(f"{self.memory_root}/{rel}", data)

    def _legacy_state(self, rel: str) -> tuple[bytes, float | None]:
        if self.tmp:
            full = os.path.join(self.tmp, rel)
            with open(full, "rb") as f:
                return f.read(), os.stat(full).st_mtime_ns
        memory = fsspec.filesystem("memory")
        return memory.cat_file(f"{self.memory_root}/{rel}"), memory.info(f"{self.memory_root}/{rel}").get(
            "created"
        )

    @rule(seed=st.sets(st.sampled_from(sorted(SEEDS))), data=payloads)
    def seed(self, seed, data):
        if self.seeded or self.model:
            return
        for rel in sorted(seed):
            value = data + rel.encode()
            self._legacy_write(rel, value)
            self.model[SEEDS[rel]] = value
            self.seeded[rel] = value
        self.seeded_stat = {rel: self._legacy_state(rel) for rel in self.seeded}

    @rule(path=st.sampled_from(FILES), data=payloads)
    def write(self, path, data):
        self.fs.pipe_file(path, data)
        self.model[path] = data

    @rule(path=st.sampled_from(FILES), data=payloads)
    def append(self, path, data):
        with self.fs.open(path, "ab") as f:
            f.write(data)
        self.model[path] = self.model.get(path, b"") + data

    @rule(path=st.sampled_from(FILES))
    def remove(self, path):
        if path in self.model:
            self.fs.rm_file(path)
            del self.model[path]
        else:
            with pytest.raises(FileNotFoundError):
                self.fs.rm_file(path)

    @rule(source=st.sampled_from(FILES), dest=st.sampled_from(FILES))
    def move(self, source, dest):
        if source not in self.model or source == dest:
            return
        self.fs.mv(source, dest)
        self.model[dest] = self.model.pop(source)

    @rule(directory=st.sampled_from(DIRS))
    def remove_tree(self, directory):
        if not any(p.startswith(directory + "/") for p in self.model):
            return
        self.fs.rm(directory, recursive=True)
        for path in [p for p in self.model if p.startswith(directory + "/")]:
            del self.model[path]

    @rule(directory=st.sampled_from(DIRS))
    def make_directory(self, directory):
        self.fs.makedirs(directory, exist_ok=True)

    @invariant()
    def matches_the_model(self):
        assert sorted(self.fs.find("")) == sorted(self.model)
        for path in FILES:  # twice: the second call takes the shortcuts the first one left
            for _ in range(2):
                assert self.fs.exists(path) == (path in self.model), path
                if path in self.model:
                    assert self.fs.cat_file(path) == self.model[path], path
                else:
                    assert not self.fs.isfile(path), path
        for directory in DIRS:
            expected = sorted(
                {p[len(directory) + 1 :].split("/")[0] for p in self.model if p.startswith(directory + "/")}
            )
            if expected:
                listed = sorted(n.rpartition("/")[2] for n in self.fs.ls(directory, detail=False))
                assert listed == expected, directory

    @invariant()
    def legacy_files_untouched(self):
        for rel, before in self.seeded_stat.items():
            assert self._legacy_state(rel) == before, rel

    def teardown(self):
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            memory = fsspec.filesystem("memory")
            if memory.exists(self.memory_root):
                memory.rm(self.memory_root, recursive=True)


class LocalOverlayModel(OverlayModel):
    backend = "local"


class MemoryOverlayModel(OverlayModel):
    backend = "memory"


model_settings = settings(
    max_examples=30,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLocalOverlayModel = model_settings(LocalOverlayModel).TestCase
TestMemoryOverlayModel = model_settings(MemoryOverlayModel).TestCase


@pytest.mark.parametrize("kind", ["memory", "s3"])
def test_the_rules_on_fsspec_backends(kind, request):
    """Rules 1-7 where the repository itself lives on memory or on S3."""
    if kind == "memory":
        root, options = f"memory://overlay-{uuid.uuid4().hex}", None
        raw = fsspec.filesystem("memory")
    else:
        import s3fs

        server = request.getfixturevalue("moto_server")
        root = f"s3://{request.getfixturevalue('s3_bucket')}/overlay-{uuid.uuid4().hex}"
        options = server.storage_options
        raw = s3fs.S3FileSystem(**options, use_listings_cache=False)
    base = raw._strip_protocol(root)
    seeded = {
        ".workflow_state.json": b"v1 state",
        ".workflow_checkpoints/cp_1.json": b"one",
        ".workflow_checkpoints/cp_2.json": b"two",
        ".orchestra.yaml": b"cfg",
    }
    for rel, data in seeded.items():
        raw.pipe_file(f"{base}/{rel}", data)
    fs = orchfs.OrchFileSystem(root=root, storage_options=options, skip_instance_cache=True)
    assert fs.cat_file("state.json") == b"v1 state"  # rule 1
    assert fs.resolve("checkpoints/cp_1.json").layer == "legacy"
    fs.pipe_file("checkpoints/cp_3.json", b"three")  # rule 2
    assert sorted(fs.ls("checkpoints", detail=False)) == [f"checkpoints/cp_{i}.json" for i in (1, 2, 3)]
    with fs.open("config.yaml", "ab") as f:  # rule 3
        f.write(b"+more")
    assert fs.cat_file("config.yaml") == b"cfg+more"
    fs.rm_file("checkpoints/cp_1.json")  # rule 4
    assert not fs.exists("checkpoints/cp_1.json")
    assert sorted(fs.ls("checkpoints", detail=False)) == ["checkpoints/cp_2.json", "checkpoints/cp_3.json"]
    fs.mv("checkpoints/cp_2.json", "checkpoints/renamed.json")  # rule 6
    assert fs.cat_file("checkpoints/renamed.json") == b"two" and not fs.exists("checkpoints/cp_2.json")
    fs.rm("checkpoints", recursive=True)  # rule 5
    assert fs.find("checkpoints") == []
    fs.pipe_file("state.json", b"new state")  # rule 7: orchfs's own writes make stale copies
    assert fs.conflicts() == []
    assert sorted(c.logical for c in fs.legacy_pairs()) == ["config.yaml", "state.json"]
    raw.pipe_file(f"{base}/.workflow_state.json", b"an old orchestrator wrote this")
    assert [(c.logical, c.kind) for c in fs.conflicts()] == [("state.json", "legacy-changed")]
    raw.pipe_file(f"{base}/.workflow_state.json", seeded[".workflow_state.json"])
    assert fs.cat_file("state.json") == b"new state"
    for rel, data in seeded.items():
        assert raw.cat_file(f"{base}/{rel}") == data, rel  # legacy bytes untouched


def _settle(*directories: Path) -> None:
    """Date directories an hour back, so that a listing of them may be kept."""
    past = os.stat(directories[0]).st_mtime - 3600
    for directory in directories:
        os.utime(directory, (past, past))


def test_names_only_listing_follows_every_change_to_a_kept_directory(tmp_path):
    repo = tmp_path / "repo"
    legacy = repo / ".workflow_checkpoints"
    contained = repo / ".orchestrator" / "checkpoints"
    legacy.mkdir(parents=True)
    contained.mkdir(parents=True)
    for i in range(3):
        (legacy / f"old_{i}.json").write_bytes(b"{}")
        (contained / f"new_{i}.json").write_bytes(b"{}")
    _settle(legacy, contained)
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)

    def names() -> list[str]:
        return sorted(fs.ls("checkpoints", detail=False))

    def detail_names() -> list[str]:
        return sorted(info["name"] for info in fs.ls("checkpoints", detail=True))

    expected = sorted(f"checkpoints/{p}_{i}.json" for p in ("old", "new") for i in range(3))
    assert names() == expected == detail_names()
    assert names() == expected  # served again, the directories unchanged
    # Another program changes the v1 directory and the contained one behind orchfs's back.
    (legacy / "old_9.json").write_bytes(b"{}")
    (legacy / "old_0.json").unlink()
    (contained / "new_1.json").rename(contained / "new_7.json")
    expected = sorted(
        f"checkpoints/{name}.json" for name in ("old_1", "old_2", "old_9", "new_0", "new_2", "new_7")
    )
    assert names() == expected == detail_names()
    # Dated back again (the listing may be kept), then a change that even restores the
    # old mtime afterwards: the ctime still tells.
    _settle(legacy, contained)
    assert names() == expected
    before = os.stat(legacy)
    (legacy / "old_5.json").write_bytes(b"{}")
    os.utime(legacy, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert "checkpoints/old_5.json" in names()
    # orchfs's own writes and deletes show at once.
    fs.pipe_file("checkpoints/mine.json", b"{}")
    fs.rm("checkpoints/old_1.json")
    shown = names()
    assert "checkpoints/mine.json" in shown and "checkpoints/old_1.json" not in shown
    assert shown == detail_names()


def test_names_only_listing_judges_links_like_the_detailed_one(tmp_path):
    repo = tmp_path / "repo"
    legacy = repo / ".workflow_checkpoints"
    legacy.mkdir(parents=True)
    (repo / "inside.json").write_bytes(b"{}")
    outside = tmp_path / "outside.json"
    outside.write_bytes(b"secret")
    (legacy / "plain.json").write_bytes(b"{}")
    os.symlink(repo / "inside.json", legacy / "alias.json")
    os.symlink(outside, legacy / "escape.json")
    _settle(legacy)
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    for _ in range(2):
        names = sorted(fs.ls("checkpoints", detail=False))
        assert names == ["checkpoints/alias.json", "checkpoints/plain.json"]
        assert names == sorted(info["name"] for info in fs.ls("checkpoints", detail=True))
    os.unlink(repo / "inside.json")  # the link dangles now; its directory did not change
    assert fs.ls("checkpoints", detail=False) == ["checkpoints/plain.json"]


@pytest.mark.parametrize("indexed", [True, False], ids=["layer-index", "probes"])
@pytest.mark.parametrize(
    "logical, legacy",
    [("state.json", ".workflow_state.json"), ("checkpoints/a.json", ".workflow_checkpoints/a.json")],
)
def test_a_legacy_file_put_there_after_a_path_was_written_is_superseded_by_the_next_write(
    tmp_path, indexed, logical, legacy
):
    """Rule 7 in a long-lived instance: the path was written when no legacy file lay
    below it (nothing to supersede), then removed; an old orchestrator puts the legacy
    file there, which now serves the path; the next write replaces what it served and
    records it, so it is stale, not a conflict (the check of the first write is not
    taken as the answer for good)."""
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    fs = orchfs.OrchFileSystem(root=str(root), skip_instance_cache=True)
    if not indexed:
        fs.overlay.index = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fs.pipe_file(logical, b'{"v": 2}')
        fs.rm(logical)
        (root / legacy).parent.mkdir(exist_ok=True)
        (root / legacy).write_bytes(b'{"v": 1}')
        assert fs.cat_file(logical) == b'{"v": 1}'  # the legacy file serves the path now
        fs.pipe_file(logical, b'{"v": 3}')
        assert fs.conflicts() == []
        assert [(c.logical, c.kind) for c in fs.legacy_pairs()] == [(logical, "stale")]


# --- writes of ordinary names in a directory, the quick way ---------------------------
OUTSIDE_BYTES = b"outside: must stay as it is"


def quick_writes_repo(tmp_path: Path, legacy: bool = True) -> tuple[Path, Path, orchfs.OrchFileSystem]:
    """A repository with a contained checkpoints directory and (``legacy``) a legacy one,
    an outside canary, and an instance whose writes in ``checkpoints/`` and
    ``checkpoints/sub/`` now take the quick way (checked: the full way would record
    each path it looked at)."""
    root, outside = tmp_path / "repo", tmp_path / "outside"
    for directory in (root / ".orchestrator" / "checkpoints", outside):
        directory.mkdir(parents=True)
    if legacy:
        (root / ".workflow_checkpoints" / "sub").mkdir(parents=True)
    (outside / "canary.json").write_bytes(OUTSIDE_BYTES)
    fs = orchfs.OrchFileSystem(root=str(root), skip_instance_cache=True)
    if fs.overlay.index is None:
        pytest.skip("the quick way needs the layer index (inotify)")
    for directory in ("checkpoints", "checkpoints/sub"):
        names = [f"{directory}/warm_{i}.json" for i in range(8)]
        for name in names:
            fs.pipe_file(name, b"warm")
        assert fs.overlay._directory_writes[directory] is not None
        assert names[-1] not in fs.overlay._supersede_checked
    return root, outside, fs


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-directory", "no-legacy-directory"])
def test_a_quick_write_supersedes_a_legacy_file_put_there_since(tmp_path, legacy):
    """Rule 7 after a directory's writes went the quick way: a legacy file an old
    orchestrator puts there afterwards (in the legacy directory, or in one it makes
    now) is seen by the next write of its path, which records it as superseded
    (stale, not a conflict)."""
    root, _outside, fs = quick_writes_repo(tmp_path, legacy)
    (root / ".workflow_checkpoints").mkdir(exist_ok=True)
    (root / ".workflow_checkpoints" / "late.json").write_bytes(b"legacy late")
    fs.pipe_file("checkpoints/late.json", b"upper late")
    assert fs.cat_file("checkpoints/late.json") == b"upper late"
    assert fs.conflicts() == []
    assert [(c.logical, c.kind) for c in fs.legacy_pairs()] == [("checkpoints/late.json", "stale")]


def test_a_quick_write_yields_to_markers_made_since(tmp_path):
    """Another instance removes a directory that the legacy layer shows (a whiteout, and
    the markers sentinel) after this one's writes there went the quick way: the next
    write reopens it, so that the new file shows and the old ones stay hidden."""
    root, _outside, fs = quick_writes_repo(tmp_path)
    (root / ".workflow_checkpoints" / "sub" / "old.json").write_bytes(b"old")
    orchfs.OrchFileSystem(root=str(root), skip_instance_cache=True).rm("checkpoints/sub", recursive=True)
    fs.pipe_file("checkpoints/sub/new.json", b"new")  # nothing asked before: the write's own look
    assert not (root / ".orchestrator" / "checkpoints" / ".wh.sub").exists()
    assert fs.cat_file("checkpoints/sub/new.json") == b"new"
    assert fs.ls("checkpoints/sub", detail=False) == ["checkpoints/sub/new.json"]
    assert (root / ".workflow_checkpoints" / "sub" / "old.json").read_bytes() == b"old"


@pytest.mark.parametrize("to", ["outside", "inside"])
def test_a_quick_write_refuses_a_directory_swapped_for_a_link(tmp_path, to):
    """The write target's directory is swapped for a symlink (to outside the root, or to
    the legacy directory inside it) after writes there went the quick way: the next
    write is refused, and nothing is written through the link."""
    root, outside, fs = quick_writes_repo(tmp_path)
    contained = root / ".orchestrator" / "checkpoints"
    legacy = root / ".workflow_checkpoints"
    legacy_before = sorted(os.listdir(legacy))
    contained.rename(root / "aside")
    contained.symlink_to(outside if to == "outside" else legacy)
    with pytest.raises(PathEscapeError):
        fs.pipe_file("checkpoints/c.json", b"never through a link")
    assert sorted(os.listdir(outside)) == ["canary.json"]
    assert (outside / "canary.json").read_bytes() == OUTSIDE_BYTES
    assert sorted(os.listdir(legacy)) == legacy_before
