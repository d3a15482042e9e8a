"""The path gate: hostile paths are refused before any I/O; accepted ones stay inside."""

from __future__ import annotations

import hashlib
import os
import unicodedata
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import orchfs
from orchfs import paths
from orchfs.errors import PathEscapeError

NFD_CAFE = unicodedata.normalize("NFD", "café.json")

HOSTILE = [
    "..",
    "../etc/passwd",
    "a/../../b",
    "checkpoints/../../x",
    "a/..",
    "./..",
    "orch://../x",
    "/../x",
    "%2e%2e/x",
    "%2E%2E/x",
    "a/%2e%2e/%2e%2e/x",
    "%252e%252e/x",
    ".%2e/x",
    "%2e./x",
    "\uff0e\uff0e/x",  # full-width dots
    "a/\uff0e\uff0e/b",
    "\u2025/x",  # two-dot leader folds to '..'
    "\ufe52\ufe52/x",  # small full stops
    "a\x00b",
    "state.json\x00.txt",
    "a\nb",
    "a\rb",
    "a\tb",
    "a\x1bb",
    "a\x7fb",
    "a\u2028b",
    "a\\b",
    "..\\..\\windows",
    "\\\\server\\share",
    "C:",
    "C:/Windows/system32",
    "c:foo",
    "a/D:/x",
    "file:///etc/passwd",
    "s3://bucket/key",
    "a/%2fetc%2fpasswd",
    "a%5c..%5cb",
    "a/%00",
    "~/.ssh/id_rsa",
    ".wh.state.json",
    "checkpoints/.wh.cp_1.json",
    ".wh..wh..opq",
    "dir/.orchfs-tmp.x.1234",
    "x" * 4096,
    "a/" + "y" * 300,
    NFD_CAFE,
    "locks/repo.lock",
    "meta.json",
    "FORMAT",
    "tmp/x",
    "migration_backup/1/.workflow_state.json",
]


def tree_digest(top: str) -> dict[str, str]:
    """Every entry under ``top`` with a hash of its bytes (or link target / 'dir')."""
    out = {}
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, top)
            if os.path.islink(full):
                out[rel] = "link:" + os.readlink(full)
            elif os.path.isdir(full):
                out[rel] = "dir"
            else:
                with open(full, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_the_hostile_list_is_long_enough():
    assert len(HOSTILE) >= 40
    assert len(set(HOSTILE)) == len(HOSTILE)


@pytest.mark.parametrize("path", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_path_refused_by_the_gate(path):
    with pytest.raises(PathEscapeError) as info:
        paths.validate(path)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("path", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_path_refused_for_read_and_write_with_nothing_written(path, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (tmp_path / "outside.txt").write_bytes(b"outside")
    fs = orchfs.OrchFileSystem(root=str(repo))
    fs.pipe_file("state.json", b"{}")
    before = tree_digest(str(tmp_path))
    operations = [
        lambda: fs.cat_file(path),
        lambda: fs.open(path, "rb"),
        lambda: fs.info(path),
        lambda: fs.exists(path),
        lambda: fs.ls(path),
        lambda: fs.pipe_file(path, b"evil"),
        lambda: fs.open(path, "wb"),
        lambda: fs.makedirs(path, exist_ok=True),
        lambda: fs.rm_file(path),
        lambda: fs.cp_file("state.json", path),
        lambda: fs.mv("state.json", path),
    ]
    for operation in operations:
        with pytest.raises(PathEscapeError):
            operation()
    assert tree_digest(str(tmp_path)) == before


def test_memory_and_s3_refuse_too(orch):
    for path in ("../x", "%2e%2e/x", "a\x00b", ".wh.x"):
        with pytest.raises(PathEscapeError):
            orch.pipe_file(path, b"evil")
    assert orch.ls("", detail=False) == []


def test_error_message_names_the_path_and_the_reason():
    with pytest.raises(PathEscapeError, match=r"refused logical path '\.\./x'.*'\.\.'"):
        paths.validate("../x")
    with pytest.raises(PathEscapeError, match="NFC"):
        paths.validate(NFD_CAFE)


@pytest.mark.parametrize(
    ("given_path", "normal"),
    [
        ("state.json", "state.json"),
        ("/state.json", "state.json"),
        ("orch://state.json", "state.json"),
        ("orch:///checkpoints/cp_1.json", "checkpoints/cp_1.json"),
        ("checkpoints//cp_1.json", "checkpoints/cp_1.json"),
        ("./checkpoints/./cp_1.json", "checkpoints/cp_1.json"),
        ("checkpoints/", "checkpoints"),
        ("", ""),
        ("/", ""),
        ("café.json", "café.json"),
        ("a..b/c...d", "a..b/c...d"),
        ("notes/todo.md", "notes/todo.md"),
        ("cp_2024-01-01T10:00.json", "cp_2024-01-01T10:00.json"),
        ("50%.txt", "50%.txt"),
    ],
)
def test_accepted_paths_normalise(given_path, normal):
    assert paths.validate(given_path) == normal


def test_session_ids_are_single_segments():
    assert paths.validate_name("abc-123", "session id") == "abc-123"
    for bad in ("a/b", "..", "", "a\\b", ".wh.x"):
        with pytest.raises(PathEscapeError):
            paths.validate_name(bad, "session id")


segment = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(segment, min_size=1, max_size=4))
def test_any_accepted_path_writes_only_under_the_state_dir(parts, tmp_path_factory):
    base = tmp_path_factory.mktemp("prop")
    repo = base / "repo"
    repo.mkdir()
    (base / "sibling.txt").write_bytes(b"sibling")
    (repo / "workflow.yaml").write_bytes(b"name: x\n")
    candidate = "/".join(parts)
    fs = orchfs.OrchFileSystem(root=str(repo))
    try:
        logical = paths.validate(candidate)
    except PathEscapeError:
        return
    if not logical:
        return
    outside_before = {
        k: v
        for k, v in tree_digest(str(base)).items()
        if not k.startswith(os.path.join("repo", ".orchestrator"))
    }
    try:
        fs.pipe_file(candidate, b"payload")
    except OSError:
        return  # e.g. a file where a directory is needed: refused, nothing written
    outside_after = {
        k: v
        for k, v in tree_digest(str(base)).items()
        if not k.startswith(os.path.join("repo", ".orchestrator"))
    }
    assert outside_after == outside_before
    written = os.path.join(str(repo), ".orchestrator", *logical.split("/"))
    assert os.path.realpath(written).startswith(os.path.realpath(str(repo / ".orchestrator")))
    with open(written, "rb") as f:
        assert f.read() == b"payload"


def test_planted_symlink_in_state_dir_leaves_target_untouched(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".orchestrator").mkdir(parents=True)
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    victim = victim_dir / "secret.txt"
    victim.write_bytes(b"precious")
    os.symlink(victim, repo / ".orchestrator" / "state.json")
    os.symlink(victim_dir, repo / ".orchestrator" / "checkpoints")
    fs = orchfs.OrchFileSystem(root=str(repo))
    with pytest.raises(PathEscapeError):
        fs.cat_file("state.json")
    with pytest.raises(PathEscapeError):
        fs.cat_file("checkpoints/secret.txt")
    with pytest.raises(PathEscapeError):
        fs.pipe_file("checkpoints/secret.txt", b"overwritten")
    with pytest.raises(PathEscapeError):
        fs.pipe_file("checkpoints/new.txt", b"new")
    fs.pipe_file("state.json", b"replaced the link, not the target")
    assert victim.read_bytes() == b"precious"
    assert sorted(os.listdir(victim_dir)) == ["secret.txt"]
    assert not os.path.islink(repo / ".orchestrator" / "state.json")
    assert fs.ls("", detail=False) == ["state.json"]


def test_symlink_inside_the_root_is_readable(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".orchestrator").mkdir(parents=True)
    (repo / "real.json").write_bytes(b"inside")
    os.symlink(repo / "real.json", repo / ".orchestrator" / "alias.json")
    fs = orchfs.OrchFileSystem(root=str(repo))
    assert fs.cat_file("alias.json") == b"inside"


LONE_SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)


@settings(max_examples=300, deadline=None)
@given(prefix=st.text(max_size=8), surrogate=LONE_SURROGATES, suffix=st.text(max_size=8))
def test_lone_surrogates_are_refused_by_the_gate(prefix, surrogate, suffix):
    with pytest.raises(PathEscapeError, match="cannot be encoded"):
        paths.validate(f"{prefix}{surrogate}{suffix}")
    with pytest.raises(PathEscapeError):
        paths.validate_name(f"s{surrogate}")


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=20))
def test_whatever_the_gate_accepts_encodes(text):
    try:
        normal = paths.validate(text)
    except PathEscapeError:
        return
    normal.encode("utf-8")  # strictly: no UnicodeEncodeError later, half-way through
    os.fsencode(normal)


@pytest.mark.parametrize("name", ["a\udc80.json", "dir/\ud800/x", "\udcff"])
def test_unencodable_names_fail_at_the_gate_for_every_entry_point(name, tmp_path):
    fs = orchfs.OrchFileSystem(root=str(tmp_path), skip_instance_cache=True)
    for call in (
        lambda: fs.pipe_file(name, b"x"),
        lambda: fs.cat_file(name),
        lambda: fs.exists(name),
        lambda: fs.ls(name),
        lambda: fs.rm(name),
        lambda: fs.append_line(name, {"a": 1}),
        lambda: fs.session(name),
    ):
        with pytest.raises(PathEscapeError):
            call()
    assert not os.path.exists(tmp_path / ".orchestrator" / "a")


# A name a directory on disk may hold: any encodable text but '/' and NUL, at most 255 bytes.
disk_name = segment.filter(
    lambda n: "/" not in n and "\x00" not in n and n not in (".", "..") and len(n.encode()) <= 255
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(disk_name, min_size=1, max_size=4, unique=True))
def test_every_listed_name_passes_back_to_info_and_open(names, tmp_path_factory):
    """Whatever names v1 and v2 directories hold on disk, ls/find/walk list only names
    that info, exists and cat accept: the listing and the gate agree."""
    repo = tmp_path_factory.mktemp("names") / "repo"
    places = [".workflow_checkpoints", ".orchestrator/notes", ".workflow_sessions/s1", ".orchestrator"]
    for place in places:
        os.makedirs(repo / place, exist_ok=True)
        for name in names:
            stored = f"top-{name}" if place == ".orchestrator" else name
            (repo / place / stored).write_bytes(name.encode())
    (repo / ".git").mkdir()
    fs = orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # v1 reads warn once per path
        listed = fs.find("", withdirs=True)
        for top, dirs, files in fs.walk(""):
            assert {paths.join(top, n) for n in dirs + files} <= set(listed)
        for directory in ("", "checkpoints", "notes", "sessions/s1"):
            listed += fs.ls(directory, detail=False)
            assert [e["name"] for e in fs.ls(directory, detail=True)] == fs.ls(directory, detail=False)
        for logical in listed:
            assert fs.exists(logical) and fs.info(logical)["name"] == logical
            if fs.isfile(logical):
                assert fs.cat_file(logical).decode() in names
    accepted = set()
    for name in names:
        try:
            accepted.add(paths.validate(f"checkpoints/{name}"))
        except PathEscapeError:
            continue
    assert {p for p in listed if p.startswith("checkpoints/")} == accepted  # none left out


@settings(max_examples=400, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                [".", "..", "...", ".wh.x", ".wh..wh..opq", ".orchfs-tmp.x", "locks", "meta.json", "~"]
            ),
            st.text(alphabet="ab.-_,+=@#%:~ /", min_size=0, max_size=12),
            st.text(alphabet="x", min_size=250, max_size=260),
        ),
        max_size=5,
    ).map("/".join)
)
def test_the_gates_quick_look_agrees_with_the_full_check(path):
    """validate() takes plain ASCII paths with one regular expression: whatever it
    answers so must be what the rule-by-rule check answers (the same path, or a refusal)."""

    def answer(check):
        try:
            return check(path)
        except PathEscapeError:
            return PathEscapeError

    assert answer(paths.validate.__wrapped__) == answer(paths._checked)


@pytest.mark.parametrize("name", ["a\\b", "C:x", "%2e%2e", "tab\there", NFD_CAFE])
def test_memory_listings_leave_out_names_the_gate_refuses(name):
    """The same on memory: a key written behind orchfs's back under a refused name."""
    import uuid

    import fsspec

    fs = orchfs.OrchFileSystem(root=f"memory://names-{uuid.uuid4().hex}", skip_instance_cache=True)
    fs.pipe_file("notes/ok.md", b"1")
    fsspec.filesystem("memory").pipe(fs.state_storage.url(f"notes/{name}"), b"x")
    fsspec.filesystem("memory").pipe(fs.state_storage.url(name), b"x")  # at the top too
    fsspec.filesystem("memory").pipe(fs.state_storage.url("~"), b"x")  # refused at the top only
    assert fs.ls("notes", detail=False) == ["notes/ok.md"]
    assert fs.find("", withdirs=True) == ["notes", "notes/ok.md"]
    for logical in fs.find("", withdirs=True):
        assert fs.info(logical)["name"] == logical
