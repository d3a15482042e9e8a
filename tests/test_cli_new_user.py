"""The command line and the documentation, tried as a new user would: each case here once
went wrong (a traceback, an ignored flag that did something else, a silent empty secret,
a usage error over four lines, a documented command or flag that did not parse)."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import orchfs
from orchfs.cli import main
from tests.conftest import digest_tree

PROJECT = Path(__file__).resolve().parent.parent
DOCS = [PROJECT / "README.md", *sorted((PROJECT / "docs").rglob("*.md"))]


@pytest.fixture
def repo(legacy_repo_factory):
    """A v1 repository from orchfs's own pytest plugin, as a git checkout."""
    root = legacy_repo_factory()
    (root / ".git").mkdir()
    return root


@pytest.fixture
def key_env(tmp_path, monkeypatch):
    """A master key in the environment, and a private config home (no user key file)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for name in ("ORCHFS_KEY_FILE", "ORCHFS_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("ORCHFS_KEY", key)
    return key


def run(*args, input=None):
    result = CliRunner().invoke(main, [str(a) for a in args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.output
    return result


def shell(line: str, repo: Path) -> subprocess.CompletedProcess:
    """A command line through a real shell (for `<&-`), with this checkout's orchfs."""
    command = f"{shlex.quote(sys.executable)} -m orchfs.cli --root {shlex.quote(str(repo))} {line}"
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    result = subprocess.run(command, shell=True, capture_output=True, text=True, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("orchfs: error: "), stderr
    return lines[0]


def stored_secrets(repo: Path) -> list[str]:
    return orchfs.OrchFileSystem(root=str(repo), skip_instance_cache=True).secrets.list()


# --- secrets from stdin ---------------------------------------------------------------------
def test_secrets_set_with_closed_stdin_is_a_usage_error(repo, key_env):
    result = shell("secrets set TOKEN <&-", repo)
    assert result.returncode == 2
    assert "stdin is closed" in one_error_line(result.stderr)
    assert stored_secrets(repo) == []


def test_secrets_set_with_nothing_piped_stores_nothing(repo, key_env):
    result = run("--root", repo, "secrets", "set", "TOKEN", input="")
    assert result.exit_code == 2
    assert "stdin was empty" in one_error_line(result.stderr)
    assert stored_secrets(repo) == []
    assert run("--root", repo, "secrets", "set", "TOKEN", input="s3cr3t\n").exit_code == 0
    assert run("--root", repo, "secrets", "get", "TOKEN").stdout == "s3cr3t\n"


@pytest.mark.parametrize(
    ("redirect", "says"), [("<&-", "stdin is closed"), ("</dev/null", "stdin was empty")]
)
def test_secrets_rotate_without_a_key_on_stdin(repo, key_env, redirect, says):
    assert run("--root", repo, "secrets", "set", "TOKEN", input="v").exit_code == 0
    result = shell(f"secrets rotate {redirect}", repo)
    assert result.returncode == 2
    assert says in one_error_line(result.stderr) and "--new-key-file" in result.stderr
    assert run("--root", repo, "secrets", "get", "TOKEN").stdout == "v\n"  # the old key still opens it


def test_secrets_rotate_replaces_the_old_key_where_it_was_found(repo, key_env, tmp_path, monkeypatch):
    """The new key given as ORCHFS_KEY as well: the old key is the user key file's, so
    that file takes the new key and the report names it, not ORCHFS_KEY."""
    assert run("--root", repo, "secrets", "init").exit_code == 0
    monkeypatch.delenv("ORCHFS_KEY")
    assert run("--root", repo, "secrets", "set", "TOKEN", input="v").exit_code == 0
    new_file = tmp_path / "new.key"
    new_file.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode() + "\n")
    new_file.chmod(0o600)
    monkeypatch.setenv("ORCHFS_KEY", new_file.read_text().strip())
    result = run("--root", repo, "secrets", "rotate", "--new-key-file", new_file)
    assert result.exit_code == 0 and "the user key file" in result.stdout, result.stdout
    assert "(ORCHFS_KEY)" not in result.stdout
    user_key = Path(os.environ["XDG_CONFIG_HOME"]) / "orchfs" / "key"
    assert user_key.read_text() == new_file.read_text()
    monkeypatch.delenv("ORCHFS_KEY")
    assert run("--root", repo, "secrets", "get", "TOKEN").stdout == "v\n"


def test_secrets_rotate_names_stdin_for_a_malformed_key(repo, key_env):
    assert run("--root", repo, "secrets", "set", "TOKEN", input="v").exit_code == 0
    result = run("--root", repo, "secrets", "rotate", input="garbage\n")
    assert result.exit_code == 1
    assert one_error_line(result.stderr) == "orchfs: error: a key from stdin must be 32 bytes, not 5"
    assert run("--root", repo, "secrets", "get", "TOKEN").stdout == "v\n"


@pytest.mark.parametrize("where", ["before", "after"])
def test_secrets_get_takes_json_on_either_side(repo, key_env, where):
    assert run("--root", repo, "secrets", "set", "TOKEN", input="v").exit_code == 0
    args = (
        ["--json", "secrets", "get", "TOKEN"] if where == "before" else ["secrets", "get", "TOKEN", "--json"]
    )
    result = run("--root", repo, *args)
    assert result.exit_code == 0 and json.loads(result.stdout) == {"name": "TOKEN", "value": "v"}


# --- flags that would be ignored ------------------------------------------------------------
def test_migrate_id_without_rollback_changes_nothing(repo):
    before = digest_tree(str(repo))
    result = run("--root", repo, "migrate", "--id", "20260101T000000-abcdef")
    assert result.exit_code == 2
    assert "--rollback" in one_error_line(result.stderr)
    assert digest_tree(str(repo)) == before


@pytest.mark.parametrize("flag", [["--dry-run"], ["--prefer", "new"], ["--no-backup"], ["-j", "4"]])
def test_rollback_refuses_flags_it_would_ignore(repo, flag):
    assert run("--root", repo, "migrate").exit_code == 0
    after_migration = digest_tree(str(repo))
    result = run("--root", repo, "migrate", "--rollback", *flag)
    assert result.exit_code == 2
    assert flag[0] in one_error_line(result.stderr)
    assert digest_tree(str(repo)) == after_migration  # `--rollback --dry-run` rolled back for real


def test_config_show_checks_the_version_it_is_given(repo):
    result = run("--root", repo, "config", "show", "--orchestrator-version", "banana")
    assert result.exit_code == 2 and "'banana' is not a version" in one_error_line(result.stderr)
    assert run("--root", repo, "config", "show", "--orchestrator-version", "2.8.0").exit_code == 0


# --- paths ------------------------------------------------------------------------------------
def test_put_from_a_missing_file_is_a_usage_error(repo, tmp_path):
    result = run("--root", repo, "put", "notes.json", tmp_path / "nonexistent")
    assert result.exit_code == 2 and "does not exist" in one_error_line(result.stderr)
    assert not (repo / ".orchestrator" / "notes.json").exists()


def test_rm_of_a_directory_needs_r(repo):
    before = digest_tree(str(repo))
    result = run("--root", repo, "rm", "checkpoints")
    assert result.exit_code == 1
    assert "pass -r" in one_error_line(result.stderr)
    assert digest_tree(str(repo)) == before
    assert run("--root", repo, "ls", "checkpoints").stdout.strip()
    assert run("--root", repo, "rm", "checkpoints", "-r").exit_code == 0
    assert run("--root", repo, "ls", "checkpoints").exit_code == 1


def test_a_missing_root_from_the_environment_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHFS_ROOT", str(tmp_path / "gone"))
    result = run("ls")
    assert result.exit_code == 2
    assert f"ORCHFS_ROOT {tmp_path / 'gone'}: no such directory" in one_error_line(result.stderr)


# --- usage errors: one line (or one JSON document), exit code 2 -----------------------------
USAGE_ERRORS = [
    ["cat"],
    ["bogus"],
    ["ls", "--nope"],
    ["migrate", "--jobs", "0"],
    ["migrate", "--prefer", "banana"],
    ["sessions", "prune", "--max-age", "banana"],
    ["secrets", "get"],
    ["secrets", "bogus"],
    ["snapshot", "import", "/nonexistent.tgz"],
    ["snapshot", "import", __file__, "--max-bytes", "banana"],
]


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=" ".join)
def test_usage_errors_are_one_line_naming_the_help(repo, args):
    result = run("--root", repo, *args)
    assert result.exit_code == 2 and result.stdout == ""
    line = one_error_line(result.stderr)
    assert "--help`" in line and ". (see" not in line


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=" ".join)
@pytest.mark.parametrize("where", ["before", "after"])
def test_usage_errors_with_json_are_one_document(repo, args, where):
    argv = ["--json", *args] if where == "before" else [*args, "--json"]
    result = run("--root", repo, *argv)
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert document["error"] == "UsageError" and "--help`" in document["message"]


def test_bare_command_and_help_keep_their_own_output(repo):
    bare = run()
    assert bare.exit_code == 2 and "Commands:" in bare.output
    assert run("--help").exit_code == 0 and run("--version").exit_code == 0


GROUPS = sorted(name for name, command in main.commands.items() if isinstance(command, click.Group))


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("where", ["before", "after"])
def test_a_group_without_its_command_with_json_is_one_document(repo, group, where):
    argv = ["--json", group] if where == "before" else [group, "--json"]
    result = run("--root", repo, *argv)
    assert result.exit_code == 2 and result.stderr == ""
    document = json.loads(result.stdout)
    assert document["error"] == "UsageError"
    assert document["message"].startswith("missing command: one of ")
    assert all(name in document["message"] for name in main.commands[group].commands)
    assert f"{group} --help`" in document["message"]


@pytest.mark.parametrize("group", GROUPS)
def test_a_group_takes_json_after_its_name_before_the_command(repo, group):
    first = sorted(main.commands[group].commands)[0]
    result = run("--root", repo, group, "--json", first, "--help")
    assert result.exit_code == 0 and "Usage:" in result.stdout


def test_a_group_without_its_command_shows_its_help_on_stderr(repo):
    result = run("--root", repo, "secrets")
    assert result.exit_code == 2 and result.stdout == ""
    assert "Commands:" in result.stderr and "rotate" in result.stderr


def test_a_defect_is_one_line_not_a_traceback(repo, monkeypatch):
    from orchfs import doctor

    def broken(*args, **kwargs):
        raise RuntimeError("an orchfs defect")

    monkeypatch.setattr(doctor, "run", broken)
    monkeypatch.delenv("ORCHFS_DEBUG", raising=False)
    result = run("--root", repo, "doctor")
    assert result.exit_code == 1 and result.stdout == ""
    line = one_error_line(result.stderr)
    assert "RuntimeError: an orchfs defect" in line and "ORCHFS_DEBUG=1" in line
    result = run("--root", repo, "doctor", "--json")
    assert result.exit_code == 1 and result.stderr == ""
    assert json.loads(result.stdout)["error"] == "InternalError"
    monkeypatch.setenv("ORCHFS_DEBUG", "1")
    with pytest.raises(RuntimeError, match="an orchfs defect"):
        run("--root", repo, "doctor")


def test_ls_of_an_empty_repository_prints_nothing_and_creates_nothing(tmp_path):
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    result = run("--root", root, "ls")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""
    assert sorted(os.listdir(root)) == [".git"]


def test_secrets_where_without_a_key_says_how_to_give_one(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for name in ("ORCHFS_KEY", "ORCHFS_KEY_FILE", "ORCHFS_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)
    result = run("--root", repo, "secrets", "where")
    assert result.exit_code == 0
    assert "orchfs secrets init" in result.stdout and "ORCHFS_KEY" in result.stdout


def test_a_failing_demo_is_one_error_document(monkeypatch):
    import errno

    from orchfs import migrate

    def full_disk(root, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(root))

    monkeypatch.setattr(migrate, "apply", full_disk)
    result = run("demo", "--json")
    assert result.exit_code == 1 and result.stderr == ""
    document = json.loads(result.stdout)  # one document: the error's, not the steps too
    assert document["error"] == "OSError" and "No space left on device" in document["message"]
    result = run("demo")
    assert result.exit_code == 1
    assert "No space left on device" in one_error_line(result.stderr)


def test_import_legacy_without_a_v1_file_says_so_before_asking_a_password(repo, key_env, monkeypatch):
    monkeypatch.delenv("SECRETS_PASSWORD", raising=False)
    result = run("--root", repo, "secrets", "import-legacy")
    assert result.exit_code == 1
    assert "no v1 .secrets.enc" in one_error_line(result.stderr)


@pytest.mark.parametrize("argv", [["--json", "--version"], ["--version", "--json"]])
def test_version_with_json_is_one_document(argv):
    result = run(*argv)
    assert result.exit_code == 0 and json.loads(result.stdout) == {"version": orchfs.__version__}
    assert run("--version").stdout == f"orchfs {orchfs.__version__}\n"


# --- the documentation runs -----------------------------------------------------------------
def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_the_first_python_example_runs(tmp_path, key_env, page):
    """The example a new user copies first, run against a temporary repository."""
    root = tmp_path / "repo"
    root.mkdir()
    block = _python_blocks((PROJECT / page).read_text())[0]
    assert '"/path/to/repo"' in block
    exec(compile(block.replace('"/path/to/repo"', repr(str(root))), page, "exec"), {})
    state = root / ".orchestrator"
    assert json.loads((state / "state.json").read_text()) == {"step": 4}
    assert [json.loads(line) for line in (state / "log.jsonl").read_text().splitlines()] == [
        {"event": "step"}
    ]
    fs = orchfs.OrchFileSystem(root=str(root), skip_instance_cache=True)
    assert fs.secrets.get("API_KEY") == "s3cr3t"
    assert all(b"s3cr3t" not in data for data in digest_tree(str(state)).values())


def test_the_api_page_shows_every_constructor_argument():
    import inspect

    (shown,) = re.findall(
        r"^OrchFileSystem\((.*?)\)$", (PROJECT / "docs" / "api.md").read_text(), re.M | re.S
    )
    documented = {part.split("=")[0].strip() for part in shown.split(",")} - {"*"}
    internal = {"self", "fo", "target_protocol", "target_options", "kwargs"}  # fsspec's URL chaining
    assert documented == set(inspect.signature(orchfs.OrchFileSystem.__init__).parameters) - internal


SHELL_FENCES = {"", "bash", "sh", "shell", "console", "text"}
CUT = {"|", "||", "&&", ";", ">", "{"}


def _command_lines(text: str):
    """`orchfs ...` in shell code blocks and inline code spans."""
    fence = None
    for line in text.splitlines():
        opening = re.match(r"\s*```(\w*)", line)
        if opening:
            fence = None if fence is not None else opening.group(1)
        elif fence is not None:
            found = re.search(r"(?:^|[|$&;]\s*)(orchfs\s.*)", line.strip())
            if fence in SHELL_FENCES and found:
                yield found.group(1)
        else:
            yield from (span for span in re.findall(r"`([^`\n]+)`", line) if span.startswith("orchfs "))


def _documented_commands() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        for line in _command_lines(path.read_text()):
            if "[" in line or "{" in line.split("#")[0]:
                continue  # a synopsis (`[--root DIR]`, `{init,set}`), checked below from the table
            found.append((path.relative_to(PROJECT).as_posix(), line))
    return found


def _resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    """The command a list of words names (after the global options), and its arguments."""
    command: click.Command = main
    while isinstance(command, click.Group) and words:
        if words[0] == "--json":  # every group takes it before its command
            words = words[1:]
            continue
        sub = command.get_command(click.Context(command), words[0])
        assert sub is not None, f"no command {words[0]!r}"
        command, words = sub, words[1:]
    return command, words


@pytest.mark.parametrize(("page", "line"), _documented_commands(), ids=lambda v: v)
def test_every_documented_command_line_parses(page, line):
    words = []
    for word in shlex.split(line, comments=True)[1:]:
        if word in CUT:
            break
        words.append(word.split("|")[0])  # `--prefer new|legacy`: each choice is documented
    while words and words[0] in ("--json", "-q", "--quiet", "--root"):
        words = words[2:] if words[0] == "--root" else words[1:]
    command, rest = _resolve(words)
    if isinstance(command, click.Group) and not rest:
        return  # a group named in prose (`orchfs config`)
    try:
        command.make_context(command.name, rest)  # any other usage error fails the test
    except click.BadParameter as exc:
        assert "does not exist" in exc.message, exc.message  # an example file (/backups/repo.tgz)


def _table_rows() -> list[tuple[list[str], str]]:
    rows = []
    for line in (PROJECT / "docs" / "cli.md").read_text().splitlines():
        cell = re.match(r"\| `([^`]+)` \|", line)
        if not cell:
            continue
        synopsis = cell.group(1)
        names = []
        for word in synopsis.split():
            if not re.fullmatch(r"[a-z][a-z-]*|\{[a-z,-]+\}", word):
                break
            names.append(word)
        rows.append((names, synopsis))
    return rows


@pytest.mark.parametrize(("names", "synopsis"), _table_rows(), ids=lambda v: v if isinstance(v, str) else "")
def test_the_cli_table_matches_the_commands(names, synopsis):
    """Every command in docs/cli.md exists with the flags shown, and shows every flag it has."""
    last = names[-1]
    subcommands = last.strip("{}").split(",") if last.startswith("{") else [None]
    prefix = names[:-1] if last.startswith("{") else names
    documented = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", synopsis))
    for sub in subcommands:
        command, _rest = _resolve(prefix + ([sub] if sub else []))
        assert not isinstance(command, click.Group) or sub is None
        options = [set(p.opts + p.secondary_opts) for p in command.params if isinstance(p, click.Option)]
        assert documented <= set().union(*options), (synopsis, documented - set().union(*options))
        if sub is None:  # one command a row: each of its options appears in the row
            hidden = [o for o in options if not o & (documented | {"--json", "--help"})]
            assert hidden == [], synopsis


# --- the first read a user tries ------------------------------------------------------------
@pytest.mark.parametrize("backend", ["local", "memory"])
def test_open_then_read_in_one_expression(tmp_path, backend):
    """`fs.open(p).read()` drops the reader before the read runs; the read still works."""
    (tmp_path / "repo").mkdir()
    root = str(tmp_path / "repo") if backend == "local" else f"memory://{tmp_path.name}"
    fs = orchfs.OrchFileSystem(root=root, skip_instance_cache=True)
    fs.pipe_file("state.json", b'{"step": 1}')
    assert fs.open("state.json", "rb").read() == b'{"step": 1}'
    assert fs.open("state.json", "rb").seek(2) == 2
    assert fs.open("state.json", "r").read() == '{"step": 1}'


def test_snapshot_export_under_a_file_says_so(repo, tmp_path):
    (tmp_path / "a-file").write_bytes(b"x")
    result = run("--root", repo, "snapshot", "export", tmp_path / "a-file" / "state.tgz")
    assert result.exit_code == 1
    assert "is a file, not a directory" in one_error_line(result.stderr)
    assert (tmp_path / "a-file").read_bytes() == b"x"


def test_init_portable_after_init_says_git_still_ignores_the_state(repo, legacy_repo_factory):
    assert run("--root", repo, "init").exit_code == 0
    gitignore = (repo / ".gitignore").read_bytes()
    result = run("--root", repo, "init", "--portable")
    assert result.exit_code == 0 and "git still ignores .orchestrator/" in result.stdout
    assert (repo / ".gitignore").read_bytes() == gitignore  # the user's file is the user's to edit
    assert json.loads((repo / ".orchestrator" / "meta.json").read_text())["portable"] is True
    fresh = run("--root", legacy_repo_factory(), "init", "--portable")
    assert "git still ignores" not in fresh.stdout


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("nothere.json", "orch://nothere.json: no such file or directory in the orchestrator state"),
        (
            "checkpoints",
            "orch://checkpoints: is a directory, not a file (`orchfs ls -l checkpoints` lists it)",
        ),
    ],
)
def test_cat_errors_name_the_path_first(repo, path, says):
    result = run("--root", repo, "cat", path)
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert line.startswith(f"orchfs: error: {says}") and "[Errno" not in line


def test_quiet_demo_prints_nothing():
    result = run("-q", "demo")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""


def _leaves(command: click.Command, path: tuple[str, ...] = ()):
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _leaves(sub, (*path, name))
    else:
        yield path, command


@pytest.mark.parametrize(
    ("path", "command"), list(_leaves(main)), ids=lambda v: " ".join(v) if isinstance(v, tuple) else ""
)
def test_every_command_takes_json_after_its_name(path, command):
    """DESIGN §10: `--json` is also accepted after the command name."""
    assert "--json" in {opt for param in command.params for opt in param.opts}, path


def test_long_listing_of_secrets(repo, key_env):
    assert run("--root", repo, "secrets", "set", "TOKEN", input="s3cr3t").exit_code == 0
    result = run("--root", repo, "ls", "secrets", "-l")
    assert result.exit_code == 0
    assert result.stdout.split() == ["f", "-", "contained", "secrets/TOKEN"]  # size unknown unread
    assert "s3cr3t" not in result.stdout


def test_two_legacy_copies_conflict_says_which_moves(repo):
    (repo / "secrets.enc.yaml").write_text("sops: first\n")
    (repo / ".manus").mkdir(exist_ok=True)
    (repo / ".manus" / "secrets.enc.yaml").write_text("sops: second\n")
    plan = run("--root", repo, "migrate", "--dry-run").stdout
    (line,) = [line for line in plan.splitlines() if "CONFLICT" in line]
    assert "secrets.enc.yaml moves, .manus/secrets.enc.yaml is kept in the backup" in line
    assert run("--root", repo, "migrate", "--prefer", "new").exit_code == 0
    assert (repo / ".orchestrator" / "secrets" / "sops.yaml").read_text() == "sops: first\n"


def test_storage_without_its_backend_names_the_extra(repo):
    """Installed without the s3 extra (s3fs absent from this child process)."""
    program = "import sys; sys.modules['s3fs'] = None; from orchfs.cli import main; main()"
    command = [
        sys.executable,
        "-c",
        program,
        "--root",
        str(repo),
        "migrate",
        "--dry-run",
        "--storage",
        "s3://b/x",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(PROJECT))
    )
    assert result.returncode == 1, result.stderr
    assert "pip install 'orchfs[s3]'" in one_error_line(result.stderr)


@pytest.fixture(params=["s3", "gcs"])
def missing_bucket_store(request, monkeypatch):
    """A store URL whose bucket does not exist, on a real S3-API (moto) or GCS-API
    (fake-gcs-server) server that this process's clients reach through the environment.
    The clients' instance caches are emptied before and after: a cached client keeps the
    endpoint of the environment it was made in, and each test's environment names another."""
    import gcsfs
    import s3fs

    for cached in (s3fs.S3FileSystem, gcsfs.GCSFileSystem):
        cached.clear_instance_cache()
        request.addfinalizer(cached.clear_instance_cache)
    if request.param == "s3":
        server = request.getfixturevalue("moto_server")
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.storage_options["key"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.storage_options["secret"])
        scheme = "s3"
    else:
        server = request.getfixturevalue("gcs_server")
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.endpoint)
        scheme = "gs"
    return server, f"{scheme}://orchfs-no-such-bucket/repo"


@pytest.mark.parametrize("how", ["migrate --storage", "put with ORCHFS_STORAGE"])
def test_a_store_whose_bucket_does_not_exist_names_it_and_the_fix(
    repo, missing_bucket_store, monkeypatch, how
):
    """One line naming the store URL, the bucket and the fix; exit 1; nothing is left in
    the repository (not even an empty .orchestrator/) and no bucket is created."""
    from orchfs.storage import open_storage

    server, store = missing_bucket_store
    before = digest_tree(repo)
    if how == "migrate --storage":
        result = run("--root", repo, "migrate", "--storage", store)
    else:
        monkeypatch.setenv("ORCHFS_STORAGE", store)
        result = run("--root", repo, "put", "state.json", "-", input="{}")
    assert result.exit_code == 1, result.output
    line = one_error_line(result.stderr)
    assert line == (
        f"orchfs: error: {store}: the bucket 'orchfs-no-such-bucket' does not exist; create the bucket first"
    )
    assert digest_tree(repo) == before
    assert not (repo / ".orchestrator").exists()
    options = {**server.storage_options, "skip_instance_cache": True}
    assert not open_storage(store, options).fs.exists("orchfs-no-such-bucket")  # type: ignore[attr-defined]
