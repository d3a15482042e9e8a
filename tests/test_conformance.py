"""One behaviour suite for every operation, run on memory, local disk and the object stores
(S3 on moto, SeaweedFS, Azure Blob on Azurite, GCS on fake-gcs-server)."""

from __future__ import annotations

import pickle
from datetime import datetime

import fsspec
import pytest
from fsspec.callbacks import Callback

import orchfs

from .conftest import ALL_BACKENDS, make_fs


@pytest.fixture(params=ALL_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def test_pipe_and_cat_roundtrip(orch):
    orch.pipe_file("state.json", b'{"a": 1}')
    assert orch.cat_file("state.json") == b'{"a": 1}'
    assert orch.cat_file("state.json", start=1, end=4) == b'"a"'
    assert orch.cat_file("state.json", start=-2) == b"1}"


def test_open_write_then_read(orch):
    with orch.open("checkpoints/cp_1.json", "wb") as f:
        f.write(b"abc")
        f.write(b"def")
    with orch.open("checkpoints/cp_1.json", "rb") as f:
        assert f.read() == b"abcdef"
    with orch.open("notes.txt", "w") as f:
        f.write("héllo\n")
    with orch.open("notes.txt", "r") as f:
        assert f.read() == "héllo\n"


def test_failed_writer_keeps_old_bytes(orch):
    orch.pipe_file("state.json", b"old")
    with pytest.raises(RuntimeError), orch.open("state.json", "wb") as f:
        f.write(b"new but unfinished")
        raise RuntimeError("crash inside the with block")
    assert orch.cat_file("state.json") == b"old"
    assert orch.ls("", detail=False) == ["state.json"]


def test_append_mode_keeps_old_until_close(orch):
    orch.pipe_file("log.jsonl", b"1\n")
    f = orch.open("log.jsonl", "ab")
    f.write(b"2\n")
    assert orch.cat_file("log.jsonl") == b"1\n"
    f.close()
    assert orch.cat_file("log.jsonl") == b"1\n2\n"


def test_exclusive_create(orch):
    orch.pipe_file("a.json", b"1", mode="create")
    with pytest.raises(FileExistsError):
        orch.pipe_file("a.json", b"2", mode="create")
    with pytest.raises(FileExistsError):
        orch.open("a.json", "xb")
    assert orch.cat_file("a.json") == b"1"


def test_ls_info_exists_names_are_logical(orch):
    orch.pipe_file("checkpoints/cp_1.json", b"1")
    orch.pipe_file("checkpoints/cp_2.json", b"22")
    assert sorted(orch.ls("checkpoints", detail=False)) == [
        "checkpoints/cp_1.json",
        "checkpoints/cp_2.json",
    ]
    detail = {e["name"]: e for e in orch.ls("orch://checkpoints")}
    assert detail["checkpoints/cp_2.json"]["size"] == 2
    assert detail["checkpoints/cp_2.json"]["type"] == "file"
    assert orch.info("checkpoints")["type"] == "directory"
    assert orch.info("/checkpoints/cp_1.json")["name"] == "checkpoints/cp_1.json"
    assert orch.exists("checkpoints/cp_1.json")
    assert not orch.exists("checkpoints/cp_9.json")
    assert orch.isdir("checkpoints") and orch.isfile("checkpoints/cp_1.json")
    with pytest.raises(FileNotFoundError, match="cp_9"):
        orch.info("checkpoints/cp_9.json")
    with pytest.raises(FileNotFoundError, match="nothing"):
        orch.ls("nothing")


def test_find_glob_walk(orch):
    for name in ("a/1.json", "a/b/2.json", "a/b/c/3.txt", "top.json"):
        orch.pipe_file(name, name.encode())
    assert orch.find("a") == ["a/1.json", "a/b/2.json", "a/b/c/3.txt"]
    assert sorted(orch.glob("**/*.json")) == ["a/1.json", "a/b/2.json", "top.json"]
    walked = {root: sorted(files) for root, _, files in orch.walk("a")}
    assert walked == {"a": ["1.json"], "a/b": ["2.json"], "a/b/c": ["3.txt"]}
    assert orch.du("a") == len(b"a/1.json") + len(b"a/b/2.json") + len(b"a/b/c/3.txt")


def test_cp_mv_rm(orch):
    orch.pipe_file("src/one.json", b"1")
    orch.cp_file("src/one.json", "dst/one.json")
    assert orch.cat_file("dst/one.json") == b"1"
    orch.mv("dst/one.json", "dst/two.json")
    assert not orch.exists("dst/one.json")
    assert orch.cat_file("dst/two.json") == b"1"
    orch.pipe_file("src/sub/deep.json", b"d")
    orch.mv("src", "moved", recursive=True)
    assert orch.cat_file("moved/sub/deep.json") == b"d"
    assert not orch.exists("src/one.json")
    orch.rm_file("moved/one.json")
    assert not orch.exists("moved/one.json")
    orch.rm("moved", recursive=True)
    assert not orch.exists("moved/sub/deep.json")
    with pytest.raises(FileNotFoundError):
        orch.rm_file("moved/one.json")


def test_mkdir_makedirs_rmdir(orch):
    orch.makedirs("x/y", exist_ok=True)
    orch.makedirs("x/y", exist_ok=True)
    if orch.storage_capabilities.empty_directories:
        assert orch.isdir("x/y")
        with pytest.raises(FileExistsError):
            orch.makedirs("x/y")
        with pytest.raises(FileExistsError):
            orch.mkdir("x/y")
        orch.rmdir("x/y")
        assert not orch.exists("x/y")
    orch.pipe_file("x/file", b"")
    with pytest.raises(FileExistsError):
        orch.makedirs("x/file", exist_ok=True)


def test_created_modified(orch):
    orch.pipe_file("state.json", b"{}")
    assert isinstance(orch.modified("state.json"), datetime)
    assert isinstance(orch.created("state.json"), datetime)


def test_put_get_with_callbacks(orch, tmp_path):
    source = tmp_path / "in.bin"
    source.write_bytes(b"x" * 10_000)
    seen = []

    class Recorder(Callback):
        def branched(self, path_1, path_2, **kwargs):
            seen.append((path_1, path_2))
            return Callback()

    orch.put(str(source), "uploads/in.bin", callback=Recorder())
    assert orch.cat_file("uploads/in.bin") == b"x" * 10_000
    out = tmp_path / "out.bin"
    orch.get("uploads/in.bin", str(out), callback=Recorder())
    assert out.read_bytes() == b"x" * 10_000
    assert ("uploads/in.bin", str(out)) in seen


def test_transaction_commits_at_exit(orch):
    orch.pipe_file("state.json", b"old")
    with orch.transaction:
        with orch.open("state.json", "wb") as f:
            f.write(b"new")
        assert orch.cat_file("state.json") == b"old"
    assert orch.cat_file("state.json") == b"new"


def test_transaction_discards_on_error(orch):
    orch.pipe_file("state.json", b"old")
    with pytest.raises(KeyError), orch.transaction:
        with orch.open("state.json", "wb") as f:
            f.write(b"new")
        raise KeyError("abort")
    assert orch.cat_file("state.json") == b"old"


def test_directory_opened_as_file(orch):
    orch.pipe_file("checkpoints/cp_1.json", b"1")
    with pytest.raises(IsADirectoryError, match="checkpoints"):
        orch.cat_file("checkpoints")
    with pytest.raises(IsADirectoryError, match="checkpoints"):
        orch.open("checkpoints", "rb")
    with pytest.raises(IsADirectoryError, match="checkpoints"):
        orch.pipe_file("checkpoints", b"x")


def test_repeated_calls_see_every_change(orch):
    """Reads and exists() remember where a path was found; the next call must still
    see a removal, a directory in the file's place and another spelling of the path."""
    other = orchfs.OrchFileSystem(
        root=orch.root, storage_options=orch.storage_options_, skip_instance_cache=True
    )
    for _ in range(2):
        assert not orch.exists("run.json")
    other.pipe_file("run.json", b"1")
    for spelling in ("run.json", "/run.json", "orch://run.json"):
        assert orch.exists(spelling)
        assert orch.cat_file(spelling) == b"1"
    other.rm_file("run.json")
    assert not orch.exists("run.json")
    with pytest.raises(FileNotFoundError, match="run.json"):
        orch.cat_file("run.json")
    other.pipe_file("run.json/inner.json", b"2")
    assert orch.exists("run.json")
    with pytest.raises(IsADirectoryError, match="run.json"):
        orch.cat_file("run.json")
    assert orch.cat_file("run.json/inner.json") == b"2"


def test_pickle_reopens_same_repository(orch):
    orch.pipe_file("state.json", b"pickled")
    clone = pickle.loads(pickle.dumps(orch))
    assert clone.root == orch.root
    assert clone.cat_file("state.json") == b"pickled"


def test_internal_entries_are_hidden(orch):
    orch.pipe_file("state.json", b"{}")
    orch.state_storage.write("FORMAT", b"2\n")
    assert orch.ls("", detail=False) == ["state.json"]


def test_fsspec_entry_points(local_repo):
    fs = fsspec.filesystem("orch", root=local_repo)
    assert isinstance(fs, orchfs.OrchFileSystem)
    fs.pipe_file("state.json", b"via entry point")
    with fsspec.open("orch://state.json", "rb", root=local_repo) as f:
        assert f.read() == b"via entry point"
    with fsspec.open(f"orch://state.json::file://{local_repo}", "rb") as f:
        assert f.read() == b"via entry point"


def test_instance_caching(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a1 = orchfs.OrchFileSystem(root=str(tmp_path / "a"))
    a2 = orchfs.OrchFileSystem(root=str(tmp_path / "a"))
    b = orchfs.OrchFileSystem(root=str(tmp_path / "b"))
    assert a1 is a2
    assert a1 is not b
    a1.pipe_file("state.json", b"a")
    assert not b.exists("state.json")


def test_s3_storage_for_local_root(local_repo, moto_server, s3_bucket):
    fs = orchfs.OrchFileSystem(
        root=local_repo,
        storage=f"s3://{s3_bucket}/elsewhere/prefix",
        storage_options=moto_server.storage_options,
    )
    fs.pipe_file("state.json", b"remote")
    assert fs.resolve("state.json").url == f"s3://{s3_bucket}/elsewhere/prefix/state.json"
    import s3fs

    s3 = s3fs.S3FileSystem(**moto_server.storage_options)
    assert s3.cat_file(f"{s3_bucket}/elsewhere/prefix/state.json") == b"remote"


def test_gcs_server_of_its_own_is_reached_through_the_json_api(gcs_server, gcs_bucket, monkeypatch):
    """With an endpoint (or STORAGE_EMULATOR_HOST) orchfs opens gcsfs's plain JSON-API
    filesystem: the default one asks Google's control API about each bucket first."""
    from gcsfs.core import GCSFileSystem

    from orchfs.storage import open_storage

    options = dict(gcs_server.storage_options)
    storage = open_storage(f"gs://{gcs_bucket}/plain", options)
    assert type(storage.fs) is GCSFileSystem
    storage.write("state.json", b"{}")
    assert storage.read("state.json") == b"{}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint)
    del options["endpoint_url"]
    assert type(open_storage(f"gs://{gcs_bucket}/plain", options).fs) is GCSFileSystem


def test_s3_requests_per_operation(request, tmp_path):
    """Every round trip to object storage costs milliseconds: pin how many each call makes."""
    fs = make_fs("s3", request, tmp_path)
    fs.pipe_file("state.json", b"{}")
    fs.cat_file("state.json")
    sent: list[str] = []

    def record(request, **kwargs):
        is_list = request.method == "GET" and "list-type=2" in request.url
        sent.append("LIST" if is_list else request.method)

    for client in {id(s.fs.s3): s.fs.s3 for s in (fs.state_storage, fs.repo_storage)}.values():
        client.meta.events.register("before-send.s3", record)

    def requests(operation) -> list[str]:
        sent.clear()
        operation()
        return sorted(sent)

    assert requests(lambda: fs.cat_file("state.json")) == ["GET"]
    assert requests(lambda: fs.exists("state.json")) == ["HEAD"]
    assert requests(lambda: fs.exists("absent.json")) == ["HEAD", "LIST"]
    # Two marker probes (state.json has a legacy location), then the PUT: the file was just
    # read, so no lookup first.
    assert requests(lambda: fs.pipe_file("state.json", b"{1}")) == ["GET", "GET", "PUT"]
    # A path with no legacy location: one PUT, nothing asked first.
    assert requests(lambda: fs.pipe_file("run/fresh.json", b"{}")) == ["PUT"]
    assert requests(lambda: fs.pipe_file("run/fresh.json", b"{2}")) == ["PUT"]

    def bump() -> None:
        fs.update_json("run/counter.json", lambda v: {"n": v.get("n", 0) + 1})

    bump()  # the lease object and the counter exist from here on
    # Lease taken (a conditional PUT on the released record), the read under the lock,
    # the fenced PUT, the lease released (a conditional PUT): 4 requests.
    assert requests(bump) == ["GET", "PUT", "PUT", "PUT"]

    def write_new() -> None:
        with fs.open("run/new.json", "wb") as f:
            f.write(b"abc")

    assert requests(write_new) == ["PUT"]  # no legacy location: nothing asked first

    # The lookup's HEAD, then s3fs's own (it keeps the ETag to notice a changed object).
    def read_new() -> None:
        with fs.open("run/new.json", "rb") as f:
            f.read()

    assert requests(read_new) == ["GET", "HEAD", "HEAD"]
    assert requests(lambda: fs.rm_file("run/new.json")) == ["DELETE", "HEAD"]
    assert fs.cat_file("state.json") == b"{1}"


def test_write_where_a_directory_was(orch):
    """A directory emptied by rm is no longer in the way of a file of its name."""
    orch.pipe_file("run/a/b.json", b"1")
    with pytest.raises(IsADirectoryError):
        orch.pipe_file("run/a", b"x")
    orch.rm("run/a", recursive=True)
    orch.pipe_file("run/a", b"x")
    assert orch.cat_file("run/a") == b"x"
