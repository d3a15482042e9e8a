"""The ``orchfs`` command line (click).

Every command takes ``--json`` (before or after its name) for one machine-readable
document, and finds the repository root by walking up to ``.git/`` or
``workflow.yaml`` (or ``ORCHFS_ROOT``, or ``--root``). Exit codes: 0 clean, 1
findings/conflicts/errors, 2 usage errors. The groups are importable so that an
orchestrator can mount them under its own CLI::

    from orchfs.cli import main as orchfs_cli
    my_cli.add_command(orchfs_cli, name="state")
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

LEGACY_MARKER = "using legacy paths - run `orchfs migrate`"


def find_root(start: str | None = None) -> str:
    """Walk up from ``start`` to a directory with ``.git/`` or ``workflow.yaml``."""
    here = os.path.abspath(start or os.getcwd())
    probe = here
    while True:
        if os.path.isdir(os.path.join(probe, ".git")) or os.path.isfile(os.path.join(probe, "workflow.yaml")):
            return probe
        parent = os.path.dirname(probe)
        if parent == probe:
            raise click.UsageError(
                f"no repository found at or above {here} (no .git/ or workflow.yaml); "
                "pass --root DIR or set ORCHFS_ROOT"
            )
        probe = parent


class Context:
    def __init__(self, root: str | None, as_json: bool, quiet: bool) -> None:
        self._root = root
        self.json = as_json
        self.quiet = quiet
        self.legacy_used = False
        self._config: Any = None

    @property
    def root(self) -> str:
        given = "--root"
        if self._root is None:
            given = "ORCHFS_ROOT"
            self._root = os.environ.get("ORCHFS_ROOT") or find_root()
        if not os.path.isdir(self._root):  # a usage error (exit 2), not an orchfs failure
            raise click.UsageError(f"{given} {self._root}: no such directory; name an existing one")
        return os.path.abspath(self._root)

    def config(self) -> Any:
        """The effective configuration (DESIGN §6: org file, workflow.yaml and its
        includes, .orchestrator/config.yaml, ORCHFS_*), loaded once per command."""
        if self._config is None:
            from .config import load_config

            self._config = load_config(self.root)
        return self._config

    def fs(self) -> Any:
        from .filesystem import OrchFileSystem

        config = self.config()
        return OrchFileSystem(
            root=self.root,
            skip_instance_cache=True,
            storage=config.get("state.storage"),
            legacy=config.get("state.legacy"),
            lock_timeout=config.get("state.lock_timeout"),
            lease=config.get("state.lease"),
            web_mode=bool(config.get("web_mode")),
            session=config.get("session"),
        )

    def storage(self, given: str | None) -> str | None:
        """``--storage``, else the configured ``state.storage``."""
        return given or self.config().get("state.storage")

    def emit(self, document: Any, human: str | Callable[[], str]) -> None:
        if self.json:
            click.echo(json.dumps(document, indent=2, default=str))
        elif not self.quiet:
            text = human() if callable(human) else human
            if text:  # nothing to say (an empty directory): no blank line, as ls(1)
                from .errors import terminal_text

                click.echo(terminal_text(text))
        if self.legacy_used and not self.json and not self.quiet:
            click.echo(LEGACY_MARKER, err=True)


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--json`` after the command name, same as before it."""

    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @wraps(func)
    def wrapper(*args: Any, as_json: bool = False, **kwargs: Any) -> Any:
        ctx = click.get_current_context().find_object(Context)
        if as_json and ctx is not None:
            ctx.json = True
        return func(*args, **kwargs)

    return wrapper


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Known errors become one clear line on stderr and exit code 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .errors import OrchFSError, shown

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = func(*args, **kwargs)
            from .errors import LegacyConflictWarning

            for warning in caught:
                # orchfs's own advice only: a library's deprecation notice is not the user's
                # business, and v1 reads are summed up by the legacy marker instead.
                if issubclass(warning.category, LegacyConflictWarning):
                    click.echo(f"orchfs: warning: {warning.message}", err=True)
            return result
        except Exception as exc:
            if not isinstance(exc, (OrchFSError, OSError, ValueError, KeyError)) and _is_own(exc):
                raise  # a defect of orchfs itself: the group's main reports it (ORCHFS_DEBUG)
            ctx = click.get_current_context().find_object(Context)
            message = shown(_error_text(exc), limit=None)  # one line, no terminal escapes
            if ctx is not None and ctx.json:
                click.echo(json.dumps({"error": type(exc).__name__, "message": message}))
            else:
                click.echo(f"orchfs: error: {message}", err=True)
            sys.exit(1)

    return wrapper


def _is_own(exc: BaseException) -> bool:
    """Whether ``exc`` is Python's or orchfs's own; anything else comes from a storage
    client (an unreachable endpoint, a server's odd answer) and is one line like the rest."""
    return type(exc).__module__.partition(".")[0] in ("builtins", "orchfs", "click")


def _error_text(exc: BaseException) -> str:
    """One line for an error: an OSError names its path first, not as ``[Errno 2] ...: 'x'``
    (which reads as the tail of a traceback), and a missing logical path says how to look."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror}"
        logical = str(exc.filename).removeprefix("orch://")
        if logical != str(exc.filename) and isinstance(exc, IsADirectoryError):
            text += f" (`orchfs ls -l {logical}` lists it)"
        elif logical != str(exc.filename) and isinstance(exc, FileNotFoundError):
            text += " (`orchfs ls -l` shows what is there)"
        return text
    if not isinstance(exc, (OSError, ValueError)) and not _is_own(exc):
        return f"{type(exc).__name__}: {exc}"
    return str(exc)


pass_ctx = click.make_pass_decorator(Context)


class OrchGroup(click.Group):
    """The top-level group: as a program, click's own errors (a missing argument, a bad
    option value, an unknown command) are one line naming the fix, as orchfs's are, or
    one JSON document with ``--json``; the exit code stays 2. Mounted under another CLI,
    that CLI's own handling applies."""

    json_requested = False  # --json anywhere on the command line (for --version)

    def main(self, args: Any = None, *pargs: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            self.json_requested = False
            return super().main(args, *pargs, standalone_mode=False, **kwargs)
        argv = list(sys.argv[1:] if args is None else args)
        as_json = self.json_requested = "--json" in argv
        try:
            result = super().main(argv, *pargs, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            if not as_json:  # bare `orchfs` or `orchfs secrets`: the help, on stderr
                exc.show()
                sys.exit(exc.exit_code)
            _usage_error(exc, f"missing command: {_choices(exc.ctx)}", True)
        except click.UsageError as exc:
            text = exc.format_message()
            if text == "Missing command.":  # `orchfs secrets --json`: the same words as above
                text = f"missing command: {_choices(exc.ctx)}"
            _usage_error(exc, text, as_json)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("orchfs: aborted", err=True)
            sys.exit(1)
        except Exception as exc:  # a defect of orchfs: one line, the traceback on request
            if os.environ.get("ORCHFS_DEBUG"):
                raise
            message = (
                f"internal error {type(exc).__name__}: {_error_text(exc)} (a bug in orchfs: "
                "rerun with ORCHFS_DEBUG=1 for the traceback and report it)"
            )
            _fail("InternalError", message, as_json, 1)
        # Without standalone mode click returns --help's and --version's exit code, or the
        # command's own return value (orchfs commands return nothing, or exit themselves).
        sys.exit(result if isinstance(result, int) else 0)


def _fail(kind: str, message: str, as_json: bool, code: int) -> None:
    """One JSON document on stdout, or one line on stderr; then exit with ``code``."""
    if as_json:
        click.echo(json.dumps({"error": kind, "message": message}))
    else:
        click.echo(f"orchfs: error: {message}", err=True)
    sys.exit(code)


def _usage_error(exc: click.UsageError, text: str, as_json: bool) -> None:
    help_hint = f"{exc.ctx.command_path} --help" if exc.ctx is not None else "orchfs --help"
    # click ends its sentences with a full stop; the pointer to --help finishes the line.
    _fail("UsageError", f"{text.rstrip('.')} (see `{help_hint}`)", as_json, exc.exit_code)


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """``--version``: one line, or one JSON document with ``--json``."""
    if not value or ctx.resilient_parsing:
        return
    from .version import __version__

    if getattr(ctx.find_root().command, "json_requested", False):
        click.echo(json.dumps({"version": __version__}))
    else:
        click.echo(f"orchfs {__version__}")
    ctx.exit()


def _choices(ctx: click.Context | None) -> str:
    """The subcommands a group invoked without one offers."""
    command = ctx.command if ctx is not None else None
    if not isinstance(command, click.Group) or ctx is None:
        return "name one"
    return "one of " + ", ".join(command.list_commands(ctx))


@click.group(cls=OrchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    help="Repository root (default: walk up to .git/ or workflow.yaml; ORCHFS_ROOT).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option(
    "--version",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=_show_version,
    help='Show the version and exit (with --json: {"version": ...}).',
)
@click.pass_context
def main(ctx: click.Context, root: str | None, as_json: bool, quiet: bool) -> None:
    """orchfs: orchestrator state in one .orchestrator/ directory.

    \b
    Examples:
      orchfs demo                      # a walk-through on a throwaway v1 repository
      orchfs migrate --dry-run         # what a migration of this repository would do
      orchfs doctor --json
    """
    ctx.obj = Context(root, as_json, quiet)


def _note_legacy(ctx: Context, fs: Any, logical: str) -> None:
    if fs.resolve(logical).layer == "legacy":
        ctx.legacy_used = True


@main.command()
@click.option(
    "--portable",
    is_flag=True,
    help="Keep .orchestrator/ out of .gitignore (state travels with the repository).",
)
@click.option(
    "--adopt",
    is_flag=True,
    help="Record this root and git remote in meta.json (a repository that was moved here).",
)
@json_option
@pass_ctx
@handle_errors
def init(ctx: Context, portable: bool, adopt: bool) -> None:
    """Create .orchestrator/ with FORMAT and meta.json, and ignore it in git.

    \b
    Example:
      orchfs init             # adds .orchestrator/ to .gitignore
      orchfs init --portable  # does not
      orchfs init --adopt     # the repository was moved: same identity, new place
    """
    from .meta import FORMAT_FILE, ensure_gitignored, gitignored, read_meta, write_meta

    fs = ctx.fs()
    state = fs.state_storage
    existed = state.info(FORMAT_FILE) is not None and read_meta(state) is not None
    fs.initialize()
    meta = read_meta(state) or {}
    changed = portable and not meta.get("portable")
    if portable:
        meta["portable"] = True
    if adopt:
        from .meta import git_remote

        moved = {"root": ctx.root, "git_remote": git_remote(ctx.root)}
        changed = changed or any(meta.get(key) != value for key, value in moved.items())
        meta.update(moved)
    if changed:
        write_meta(state, meta)
    ignored = False if portable else ensure_gitignored(ctx.root)
    if existed and not changed and not ignored:
        human = f"already initialised: {ctx.root}/.orchestrator (nothing to do)"
    else:
        human = f"{'updated' if existed else 'initialised'} {ctx.root}/.orchestrator" + (
            " (added to .gitignore)" if ignored else ""
        )
    if portable and gitignored(ctx.root):  # portable in meta.json, yet git would not carry it
        human += "; git still ignores .orchestrator/: remove that line from .gitignore to commit the state"
    ctx.emit(
        {
            "root": ctx.root,
            "repo_id": read_meta(state)["repo_id"],
            "portable": portable,
            "created": not existed,
            "gitignore_updated": ignored,
        },
        human,
    )


@main.command(name="ls")
@click.argument("path", default="")
@click.option(
    "--long", "-l", "long_", is_flag=True, help="Show type, size and which layer serves each entry."
)
@json_option
@pass_ctx
@handle_errors
def ls_command(ctx: Context, path: str, long_: bool) -> None:
    """List a logical directory (v1 and v2 files merged).

    \b
    Example:
      orchfs ls checkpoints -l
    """
    fs = ctx.fs()
    entries = fs.ls(path, detail=True)
    rows = []
    for entry in sorted(entries, key=lambda e: e["name"]):
        layer = fs.resolve(entry["name"]).layer
        ctx.legacy_used |= layer == "legacy"
        rows.append(
            {
                "name": entry["name"],
                "type": entry["type"],
                "size": entry.get("size", 0),
                "layer": layer,
            }
        )

    def human() -> str:
        if long_:
            # A secret's size is None: its plaintext length is not known without decrypting it.
            return "\n".join(
                f"{r['type'][0]} {'-' if r['size'] is None else r['size']:>10} {r['layer']:<9} {r['name']}"
                for r in rows
            )
        return "\n".join(r["name"] + ("/" if r["type"] == "directory" else "") for r in rows)

    ctx.emit({"path": path, "entries": rows}, human)


@main.command()
@click.argument("path")
@json_option
@pass_ctx
@handle_errors
def cat(ctx: Context, path: str) -> None:
    """Print a logical file's bytes (with --json: one document, text or base64).

    \b
    Example:
      orchfs cat state.json
    """
    fs = ctx.fs()
    data = fs.cat_file(path)
    _note_legacy(ctx, fs, path)
    if ctx.json:
        import base64

        resolution = fs.resolve(path)
        try:
            text: str | None = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        document = {"path": resolution.logical, "layer": resolution.layer, "url": resolution.url}
        document |= {"bytes": len(data), "text": text}
        document |= {"base64": None if text is not None else base64.b64encode(data).decode()}
        click.echo(json.dumps(document, indent=2))
        return
    click.echo(data, nl=False)  # bytes go to the binary stdout unchanged
    if ctx.legacy_used and not ctx.quiet:
        click.echo(LEGACY_MARKER, err=True)


@main.command()
@click.argument("path")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, allow_dash=True), required=False)
@json_option
@pass_ctx
@handle_errors
def put(ctx: Context, path: str, source: str | None) -> None:
    """Write a logical file atomically from SOURCE (a file, or - for stdin), else from
    what is piped in.

    \b
    Example:
      echo '{}' | orchfs put state.json
    """
    data = _put_source(source)
    fs = ctx.fs()
    fs.pipe_file(path, data)
    resolution = fs.resolve(path)
    ctx.emit(
        {"path": resolution.logical, "url": resolution.url, "bytes": len(data)},
        f"wrote {len(data)} bytes to {resolution.url}",
    )


def _put_source(source: str | None) -> bytes:
    """The bytes to write: SOURCE's, or stdin's; never a silent empty file because nothing
    was piped in (an empty pipe needs an explicit ``-``)."""
    if source is not None and source != "-":
        with open(source, "rb") as f:
            return f.read()
    data = _piped("name a SOURCE file, or pipe the bytes in", read_terminal=source == "-")
    if data is None:
        raise click.UsageError("nothing piped in: pipe the bytes in, or name a SOURCE file")
    if not data and source is None:
        raise click.UsageError("stdin was empty: pipe the bytes in (give `-` to write an empty file)")
    return data


def _piped(fix: str, read_terminal: bool = False) -> bytes | None:
    """Everything piped into stdin, or None when stdin is a terminal (unless
    ``read_terminal``): the caller prompts or refuses. A closed or unreadable stdin is a
    usage error whose message ends with ``fix``."""
    stdin = sys.stdin
    if stdin is None or stdin.closed:  # `<&-`: Python leaves sys.stdin None
        raise click.UsageError(f"stdin is closed: {fix}")
    if stdin.isatty() and not read_terminal:
        return None
    reader = getattr(stdin, "buffer", stdin)
    try:
        data = reader.read()
    except (OSError, ValueError):
        raise click.UsageError(f"stdin cannot be read: {fix}") from None
    return data.encode() if isinstance(data, str) else data


@main.command()
@click.argument("path")
@click.option("--recursive", "-r", is_flag=True, help="Remove a directory and everything in it.")
@json_option
@pass_ctx
@handle_errors
def rm(ctx: Context, path: str, recursive: bool) -> None:
    """Remove a logical path (v1 files are hidden by a whiteout, never deleted).

    \b
    Example:
      orchfs rm checkpoints -r
    """
    fs = ctx.fs()
    if not fs.exists(path):
        raise FileNotFoundError(f"no such path: {path}")
    if not recursive and fs.isdir(path):  # as rm(1): a whole directory only when asked
        raise IsADirectoryError(f"{path} is a directory: pass -r to remove it and everything in it")
    fs.rm(path, recursive=recursive)
    ctx.emit({"removed": path}, f"removed {path}")


@main.command()
@click.argument("paths", nargs=-1, required=True)
@json_option
@pass_ctx
@handle_errors
def resolve(ctx: Context, paths: tuple[str, ...]) -> None:
    """Say which physical file serves each logical path.

    \b
    Example:
      orchfs resolve state.json checkpoints/cp_1.json
    """
    from .errors import PathEscapeError

    fs = ctx.fs()
    rows: list[dict[str, Any]] = []
    for path in paths:  # each path on its own: a refused one does not hide the others
        try:
            r = fs.resolve(path)
        except PathEscapeError as exc:
            rows.append({"logical": path, "error": str(exc)})
            continue
        rows.append({"logical": r.logical, "layer": r.layer, "url": r.url, "exists": r.exists})
    ctx.legacy_used = any(r.get("layer") == "legacy" for r in rows)

    def human() -> str:
        return "\n".join(
            f"{r['logical']}\terror: {r['error']}"
            if "error" in r
            else f"{r['logical']}\t{r['layer']}\t{r['url']}" + ("" if r["exists"] else "\t(missing)")
            for r in rows
        )

    ctx.emit(rows, human)
    if any("error" in r for r in rows):
        sys.exit(1)


def _progress(ctx: Context) -> tuple[Callable[[int, int], None] | None, Callable[[], None]]:
    """A progress bar on a terminal only; nothing when piped or with --json."""
    if ctx.json or ctx.quiet or not sys.stderr.isatty():
        return None, lambda: None
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = click.progressbar(length=total, label="migrating", file=sys.stderr)
            state["bar"].__enter__()
        state["bar"].update(done - state.get("done", 0))
        state["done"] = done

    def close() -> None:
        if "bar" in state:
            state["bar"].__exit__(None, None, None)

    return update, close


def _human_plan(document: dict[str, Any], dry_run: bool) -> str:
    from .errors import shown

    def name(value: str) -> str:  # read from disk: one on each line, whatever a v1 name holds
        return shown(value, None)

    lines = []
    for move in document["moves"][:50]:
        lines.append(
            f"  {move['action']:<7} {name(move['source'])} -> {name(move['target'])} ({move['bytes']} B)"
        )
    if len(document["moves"]) > 50:
        lines.append(f"  ... and {len(document['moves']) - 50} more")
    for conflict in document["conflicts"]:
        source, target = name(conflict["source"]), name(conflict["target"])
        if conflict.get("other"):
            other = name(conflict["other"])
            lines.append(
                f"  CONFLICT {source} <> {other} (two legacy locations of "
                f"{target} differ: {other} moves, {source} is kept in the backup)"
            )
        else:
            lines.append(f"  CONFLICT {source} <> {target} (both exist and differ)")
    kept = "moved into the backup" if document.get("retire_leftovers") else "not moved"
    for leftover in document.get("leftovers", []):
        lines.append(f"  leftover {name(leftover)} (a copy an earlier migration script left; {kept})")
    for unknown in document["unknown"]:
        lines.append(f"  unknown  {name(unknown)} (no layout entry names it; {kept})")
    if (document.get("leftovers") or document["unknown"]) and not document.get("retire_leftovers"):
        lines.append("  (`orchfs migrate --retire-leftovers` moves them into the migration backup)")
    room = "yes" if document["room"] else "NO"
    lines.append(
        f"{len(document['moves'])} file(s), {document['total_bytes']} bytes; "
        f"{document['copy_bytes']} to copy, {document['backup_bytes']} to back up; "
        f"room on disk: {room}"
    )
    if document.get("blocked"):
        lines.append(f"blocked: {document['blocked']}")
    if dry_run:
        lines.append("dry run: nothing was changed")
    return "\n".join(lines)


def _check_migrate_flags(
    rollback: bool,
    migration_id: str | None,
    dry_run: bool,
    prefer: str | None,
    no_backup: bool,
    jobs: int,
    retire_leftovers: bool,
) -> None:
    """Flags that would be ignored are usage errors: `migrate --id X` alone would migrate,
    and `--rollback --dry-run` would roll back for real."""
    if migration_id is not None and not rollback:
        raise click.UsageError("--id names the migration to roll back: use it with --rollback")
    if not rollback:
        return
    ignored = [
        flag
        for flag, given in (
            ("--dry-run", dry_run),
            ("--prefer", prefer is not None),
            ("--no-backup", no_backup),
            ("--jobs", jobs != 1),
            ("--retire-leftovers", retire_leftovers),
        )
        if given
    ]
    if ignored:
        raise click.UsageError(
            f"--rollback does not take {', '.join(ignored)}: run `orchfs migrate --rollback` "
            "(or with --id ID) alone; a rollback has no dry run"
        )


@main.command()
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--rollback", is_flag=True, help="Undo the newest migration (or --id).")
@click.option("--id", "migration_id", help="The migration to roll back.")
@click.option(
    "--prefer",
    type=click.Choice(["new", "legacy"]),
    help="Settle conflicts: keep the new or the legacy copy.",
)
@click.option(
    "--no-backup",
    is_flag=True,
    help="Do not keep the old files in .orchestrator/migration_backup/.",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Parallel copies (remote or cross-device moves).",
)
@click.option(
    "--storage",
    metavar="URL",
    help="Move the state to this directory instead of .orchestrator/ (s3://bucket/prefix, "
    "gs://..., an existing bucket; credentials and endpoint from the environment). Default: "
    "state.storage from the configuration; set it to this URL afterwards, as the repository "
    "does not remember it.",
)
@click.option(
    "--retire-leftovers",
    is_flag=True,
    help="Also move .bak leftovers and unknown .workflow_* files into the migration backup.",
)
@click.option(
    "--lock-timeout",
    metavar="DURATION",
    help="How long to wait for the repository lock (e.g. 30s). Default: state.lock_timeout.",
)
@json_option
@pass_ctx
@handle_errors
def migrate(
    ctx: Context,
    dry_run: bool,
    rollback: bool,
    migration_id: str | None,
    prefer: str | None,
    no_backup: bool,
    jobs: int,
    storage: str | None,
    retire_leftovers: bool,
    lock_timeout: str | None,
) -> None:
    """Move a v1 repository to the v2 layout (journaled, resumable, undoable).

    \b
    Examples:
      orchfs migrate --dry-run       # the plan: moves, sizes, conflicts, room
      orchfs migrate                 # do it (rerun to finish an interrupted run)
      orchfs migrate --prefer new    # keep the new copy where both exist and differ
      orchfs migrate --rollback      # restore the v1 layout
    """
    from . import migrate as migration
    from .config import parse_duration
    from .errors import ConfigError

    try:
        wait = parse_duration(lock_timeout) if lock_timeout is not None else None
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--lock-timeout") from None
    if wait is None:
        wait = ctx.config().lock_timeout  # state.lock_timeout, ORCHFS_LOCK_TIMEOUT
    _check_migrate_flags(rollback, migration_id, dry_run, prefer, no_backup, jobs, retire_leftovers)
    if rollback:
        result = migration.rollback(ctx.root, migration_id, storage=ctx.storage(storage), lock_timeout=wait)
        ctx.emit(result.to_json(), result.message)
        return
    if dry_run:
        the_plan = migration.plan(
            ctx.root, storage=ctx.storage(storage), retire_leftovers=retire_leftovers, backup=not no_backup
        )
        document = the_plan.to_json(False) | {"retire_leftovers": retire_leftovers}
        ctx.emit(document, lambda: _human_plan(document, True))
        return
    from .errors import MigrationConflictError

    update, close = _progress(ctx)
    try:
        result = migration.apply(
            ctx.root,
            prefer=prefer,
            backup=not no_backup,
            jobs=jobs,
            progress=update,
            storage=ctx.storage(storage),
            retire_leftovers=retire_leftovers,
            lock_timeout=wait,
        )
    except MigrationConflictError as conflict:
        document = conflict.plan.to_json(False)
        human = _human_plan(document, False) + f"\n{conflict}"
        ctx.emit(document, human)
        sys.exit(1)
    finally:
        close()
    document = result.to_json() | {"retire_leftovers": retire_leftovers}
    ctx.emit(document, lambda: _human_plan(document, False) + "\n" + result.message)


@main.command()
@click.option(
    "--fix",
    "apply_fixes",
    is_flag=True,
    help="Apply the safe fixes (temp files, stale locks, unfinished migration or import, modes).",
)
@json_option
@pass_ctx
@handle_errors
def doctor(ctx: Context, apply_fixes: bool) -> None:
    """Check the repository; exit 0 when clean, 1 on warnings or errors.

    \b
    Example:
      orchfs doctor --json
      orchfs doctor --fix
    """
    from . import doctor as checks
    from .errors import shown

    findings = checks.run(ctx.root)
    fixed: list[str] = []
    if apply_fixes and findings:
        fixed = checks.fix(ctx.root, findings)
        findings = checks.run(ctx.root)
    document = {"findings": [f.to_json() for f in findings], "fixed": fixed}

    def human() -> str:
        lines = [f"fixed: {line}" for line in fixed]
        for f in findings:
            lines.append(f"[{f.severity}] {f.id}: {shown(f.message, None)}\n    fix: {shown(f.fix, None)}")
        return "\n".join(lines) or "no problems found"

    ctx.emit(document, human)
    sys.exit(checks.exit_code(findings))


@main.group()
@json_option
def sessions() -> None:
    """Working sessions under sessions/ and their retention policy (state.retention).

    \b
    Examples:
      orchfs sessions list
      orchfs sessions prune --dry-run
      orchfs sessions prune --max-age 7d --max-sessions 20
    """


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


@sessions.command(name="list")
@json_option
@pass_ctx
@handle_errors
def sessions_list(ctx: Context) -> None:
    """Every session, oldest first: files, bytes, age, locked, current.

    \b
    Example:
      orchfs sessions list --json
    """
    import time

    from .sessions import list_sessions

    now = time.time()
    found = list_sessions(ctx.fs())
    document = {"sessions": [s.to_json(now) for s in found]}

    def human() -> str:
        lines = []
        for s in found:
            flags = " ".join(f for f, on in (("current", s.current), ("locked", s.locked)) if on)
            what = f"{s.files:>6} files" if s.kind == "session" else f"{'transcript':>12}"
            lines.append(f"{s.id:<24} {what} {s.bytes:>12} B  {_age(s.age(now)):>7} old  {flags}")
        return "\n".join(lines) or "no sessions"

    ctx.emit(document, human)


@sessions.command(name="prune")
@click.option("--dry-run", is_flag=True, help="Say which sessions would go; remove nothing.")
@click.option("--max-age", metavar="DURATION", help="Override state.retention.max_age (e.g. 7d).")
@click.option("--max-sessions", type=click.IntRange(0), help="Override state.retention.max_sessions.")
@click.option("--max-bytes", metavar="SIZE", help="Override state.retention.max_bytes (e.g. 500MB).")
@click.option("--min-age", metavar="DURATION", help="Override state.retention.min_age (default 1h).")
@json_option
@pass_ctx
@handle_errors
def sessions_prune(
    ctx: Context,
    dry_run: bool,
    max_age: str | None,
    max_sessions: int | None,
    max_bytes: str | None,
    min_age: str | None,
) -> None:
    """Remove the sessions over the retention policy, each directory as a whole.

    Never the current session, never a locked one, never one younger than min_age.

    \b
    Examples:
      orchfs sessions prune --dry-run
      orchfs sessions prune --max-sessions 5
    """
    import dataclasses
    import time

    from .sessions import Retention, policy_of, prune

    configured = policy_of(ctx.config())
    given = {"max_age": max_age, "max_sessions": max_sessions, "max_bytes": max_bytes, "min_age": min_age}
    given = {key: value for key, value in given.items() if value is not None}
    policy = configured
    if given:
        from .errors import ConfigError

        try:
            parsed = Retention.from_config(given, lambda key: "--" + key.replace("_", "-"))
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        policy = dataclasses.replace(configured, **{key: getattr(parsed, key) for key in given})
    if not policy.limited:
        raise ValueError(
            "no retention policy: set state.retention (max_age, max_sessions, max_bytes) in "
            "workflow.yaml, or pass --max-age, --max-sessions or --max-bytes"
        )
    now = time.time()
    chosen = prune(ctx.fs(), policy, dry_run=dry_run, now=now)
    document = {
        "dry_run": dry_run,
        "pruned": [{**p.session.to_json(now), "reason": p.reason} for p in chosen],
    }

    def human() -> str:
        verb = "would remove" if dry_run else "removed"
        lines = [
            f"{verb} {p.session.id} ({p.session.bytes} B, {_age(p.session.age(now))} old): {p.reason}"
            for p in chosen
        ]
        return "\n".join(lines) or "nothing to prune"

    ctx.emit(document, human)


@main.group()
@json_option
def snapshot() -> None:
    """Move a whole .orchestrator/ (minus locks and temp files) between machines.

    \b
    Examples:
      orchfs snapshot export state.tgz --encrypt
      orchfs snapshot import state.tgz
    """


@snapshot.command(name="export")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--encrypt", is_flag=True, help="Seal the archive with the master key (AES-256-GCM).")
@json_option
@pass_ctx
@handle_errors
def snapshot_export(ctx: Context, file: str, encrypt: bool) -> None:
    """Write the repository's state to FILE (mode 0600, atomically).

    \b
    Example:
      orchfs snapshot export /backups/repo.tgz --encrypt
    """
    from .snapshot import export

    info = export(ctx.fs(), file, encrypt=encrypt)
    sealed = ", encrypted" if info.encrypted else ""
    ctx.emit(info.to_json(), f"exported {info.files} file(s), {info.bytes} bytes{sealed} to {info.path}")


@snapshot.command(name="import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--force", is_flag=True, help="Import even though the repository already holds state.")
@click.option(
    "--max-bytes",
    default="1GiB",
    metavar="SIZE",
    show_default=True,
    help="Refuse a snapshot holding more than this in total.",
)
@json_option
@pass_ctx
@handle_errors
def snapshot_import(ctx: Context, file: str, force: bool, max_bytes: str) -> None:
    """Restore FILE into the repository's state, all or nothing.

    The whole snapshot is checked before anything is written; a refused one leaves the
    repository as it was. An import killed part way is finished by running it again
    (or by `orchfs doctor --fix`).

    \b
    Example:
      orchfs snapshot import /backups/repo.tgz
    """
    from .errors import ConfigError
    from .sessions import parse_size
    from .snapshot import import_snapshot

    try:
        limit = parse_size(max_bytes, "--max-bytes")
    except ConfigError as exc:  # a bad option value is a usage error, as for sessions prune
        raise click.UsageError(str(exc)) from None
    info = import_snapshot(ctx.fs(), file, force=force, max_bytes=limit)
    ctx.emit(info.to_json(), f"imported {info.files} file(s), {info.bytes} bytes from {info.path}")


@main.group()
@json_option
def config() -> None:
    """The effective configuration (defaults, org file, includes, workflow.yaml, env).

    \b
    Example:
      orchfs config show --show-origin
    """


def _pep440(param: click.Parameter, value: str | None) -> str | None:
    """A version given on the command line is checked even where no pin would use it."""
    from packaging.version import InvalidVersion, Version

    try:
        if value is not None:
            Version(value)
    except InvalidVersion:
        raise click.BadParameter(f"{value!r} is not a version (e.g. 2.8.0)", param=param) from None
    return value


@config.command(name="show")
@click.option("--show-origin", is_flag=True, help="Say which file and line each value comes from.")
@click.option(
    "--orchestrator-version",
    metavar="VERSION",
    callback=lambda _ctx, param, value: _pep440(param, value),
    help="Check the repository's orchestrator_version pin against this (e.g. 2.8.0).",
)
@json_option
@pass_ctx
@handle_errors
def config_show(ctx: Context, show_origin: bool, orchestrator_version: str | None) -> None:
    """Print the effective configuration, one dotted key a line.

    \b
    Example:
      orchfs config show --show-origin
    """
    from .config import load_config

    effective = load_config(ctx.root, orchestrator_version=orchestrator_version)
    flat = effective.flat()
    document = {
        key: ({"value": value, "origin": origin} if show_origin else value)
        for key, (value, origin) in flat.items()
    }
    ctx.emit(
        document,
        lambda: "\n".join(
            f"{key} = {json.dumps(value)}" + (f"\t# {origin}" if show_origin else "")
            for key, (value, origin) in flat.items()
        ),
    )


@main.group()
@json_option
def secrets() -> None:
    """Encrypted secrets of this repository (AES-256-GCM, a namespace per repository).

    \b
    Examples:
      orchfs secrets init                 # a user key file, 0600
      printf %s "$TOKEN" | orchfs secrets set API_TOKEN
      orchfs secrets get API_TOKEN
    """


def _read_value(what: str, fix: str) -> str:
    """``what`` from piped stdin (one trailing newline dropped), else a hidden prompt on a
    terminal. Nothing piped in is a usage error: an unset ``$TOKEN`` in
    ``printf %s "$TOKEN" | orchfs secrets set`` must not store an empty secret."""
    data = _piped(fix)
    if data is None:
        return click.prompt(what, hide_input=True, confirmation_prompt=False)
    try:
        value = data.decode("utf-8").rstrip("\n")
    except UnicodeDecodeError:
        raise click.UsageError(f"the {what} on stdin is not UTF-8 text: {fix}") from None
    if not value:
        raise click.UsageError(f"stdin was empty: {fix}")
    return value


@secrets.command(name="init")
@json_option
@pass_ctx
@handle_errors
def secrets_init(ctx: Context) -> None:
    """Create the user key file (~/.config/orchfs/key, mode 0600).

    \b
    Example:
      orchfs secrets init
    """
    from .secrets import init_user_key

    path = init_user_key()  # an existing key file is left as it is (FileExistsError)
    ctx.emit({"key_file": path}, f"created {path} (mode 0600); keep a copy somewhere safe")


@secrets.command(name="set")
@click.argument("name")
@json_option
@pass_ctx
@handle_errors
def secrets_set(ctx: Context, name: str) -> None:
    """Store a secret; the value comes from stdin or a prompt, never from the command line.

    \b
    Example:
      printf %s "$TOKEN" | orchfs secrets set API_TOKEN
    """
    value = _read_value(
        f"value of {name}", f'pipe the value in (printf %s "$VALUE" | orchfs secrets set {name})'
    )
    ctx.fs().secrets.set(name, value)
    ctx.emit({"set": name}, f"stored {name}")


@secrets.command(name="get")
@click.argument("name")
@json_option
@pass_ctx
@handle_errors
def secrets_get(ctx: Context, name: str) -> None:
    """Print a secret's value, and nothing else (with --json: name and value).

    \b
    Example:
      export TOKEN="$(orchfs secrets get API_TOKEN)"
    """
    value = ctx.fs().secrets.get(name)
    if ctx.json:
        click.echo(json.dumps({"name": name, "value": value}))
    else:
        click.echo(value)  # even with --quiet: the value is what was asked for


@secrets.command(name="list")
@json_option
@pass_ctx
@handle_errors
def secrets_list(ctx: Context) -> None:
    """List secret names (never values).

    \b
    Example:
      orchfs secrets list --json
    """
    names = ctx.fs().secrets.list()
    if not names and not ctx.json:
        if not ctx.quiet:  # stdout stays empty: `for name in $(orchfs secrets list)` sees none
            click.echo("no secrets stored", err=True)
        return
    ctx.emit({"secrets": names}, "\n".join(names))


@secrets.command(name="rm")
@click.argument("name")
@json_option
@pass_ctx
@handle_errors
def secrets_rm(ctx: Context, name: str) -> None:
    """Delete a secret.

    \b
    Example:
      orchfs secrets rm API_TOKEN
    """
    ctx.fs().secrets.delete(name)
    ctx.emit({"removed": name}, f"removed {name}")


@secrets.command(name="reseal")
@json_option
@pass_ctx
@handle_errors
def secrets_reseal(ctx: Context) -> None:
    """Seal a new manifest from the secret files the key opens (after it was lost or damaged).

    \b
    Example:
      orchfs secrets reseal
    """
    names = ctx.fs().secrets.reseal()
    ctx.emit({"secrets": names}, f"sealed a new manifest of {len(names)} secret(s)")


@secrets.command(name="rotate")
@click.option(
    "--new-key-file",
    type=click.Path(exists=True, dir_okay=False),
    help="File holding the new key (url-safe base64 of 32 bytes); else read from stdin.",
)
@json_option
@pass_ctx
@handle_errors
def secrets_rotate(ctx: Context, new_key_file: str | None) -> None:
    """Re-encrypt every secret under a new key (resumable: rerun after a crash).

    \b
    Example:
      orchfs secrets rotate --new-key-file ~/.config/orchfs/key.new
    """
    from .secrets import _read_key_file, install_user_key, parse_key, user_key_path

    if new_key_file:
        new_key: Any = _read_key_file(new_key_file, "--new-key-file")  # 0600 and well-formed
    else:
        text = _read_value(
            "new key", "pipe the new key in (url-safe base64 of 32 bytes), or pass --new-key-file"
        )
        new_key = parse_key(text, "stdin")
    store = ctx.fs().secrets
    before = list(store.keys())
    report = store.rotate(new_key)
    # The source that held a retired key, not the first one found: with the new key given
    # as ORCHFS_KEY too, the old one is in the key file, which then needs the new key.
    held_old = [k.source for k in before if k.id.hex() in report["retired"]]
    old_source = held_old[0] if held_old else (before[0].source if before else "")
    installed = None
    if report["retired"] and old_source.startswith("user key file"):
        # The retired key would lock the next `get` out: the user key file takes the new one.
        installed = install_user_key(new_key, user_key_path())
    report = {**report, "installed": installed}
    if installed:
        after = f"; the user key file {installed} now holds the new key"
    elif report["retired"]:
        after = f"; the old key ({old_source}) no longer opens them: put the new key there"
    else:
        after = "; old key still needed"
    ctx.emit(
        report,
        f"re-encrypted {report['rewritten']} secret(s) under key id {report['key_id']}"
        + (f"; retired {', '.join(report['retired'])}" if report["retired"] else "")
        + after,
    )


@secrets.command(name="import-legacy")
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False),
    help="The v1 .secrets.enc (default: found in the repository).",
)
@json_option
@pass_ctx
@handle_errors
def secrets_import_legacy(ctx: Context, path: str | None) -> None:
    """Import the v1 .secrets.enc (openssl aes-256-cbc -pbkdf2; password in SECRETS_PASSWORD).

    \b
    Example:
      SECRETS_PASSWORD=... orchfs secrets import-legacy
    """
    names = ctx.fs().secrets.import_legacy(path=path)
    ctx.emit({"imported": names}, f"imported {len(names)} secret(s): {', '.join(names)}")


@secrets.command(name="where")
@json_option
@pass_ctx
@handle_errors
def secrets_where(ctx: Context) -> None:
    """Say which key source is in use.

    \b
    Example:
      orchfs secrets where
    """
    store = ctx.fs().secrets
    ctx.emit({"source": store.where(), "repo_id": store.repo_id}, store.where())


@main.command()
@click.option("--keep", is_flag=True, help="Keep the demo repository instead of deleting it.")
@json_option
@pass_ctx
@handle_errors
def demo(ctx: Context, keep: bool) -> None:
    """Walk through orchfs on a throwaway v1 repository in a temp directory.

    Builds a realistic v1 repository, reads it through the overlay, shows the
    migration plan, migrates, runs doctor, and rolls back.

    \b
    Example:
      orchfs demo --keep
    """
    import shutil
    import tempfile

    from . import doctor as checks
    from . import migrate as migration
    from .filesystem import OrchFileSystem
    from .sample import build_legacy_repo

    workdir = tempfile.mkdtemp(prefix="orchfs-demo-")
    repo = str(build_legacy_repo(workdir, _demo_files()))
    os.makedirs(os.path.join(repo, ".git"))
    steps: list[dict[str, Any]] = []

    def step(title: str, detail: Any) -> None:
        steps.append({"step": title, "detail": detail})
        if not ctx.json and not ctx.quiet:  # -q: the walk-through as a silent check (exit code)
            click.echo(click.style(f"== {title}", bold=True))
            click.echo(detail if isinstance(detail, str) else json.dumps(detail, indent=2))

    try:
        legacy = sorted(
            os.path.relpath(os.path.join(t, n), repo)
            for t, _d, files in os.walk(repo)
            for n in files
            if ".git" not in t
        )
        step("1. a v1 repository: state scattered over the root", legacy)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fs = OrchFileSystem(root=repo, skip_instance_cache=True)
            reads = {
                p: fs.cat_file(p).decode().strip()
                for p in ("state.json", "config.yaml", "checkpoints/cp_1.json")
            }
            where = {p: f"{fs.resolve(p).layer}: {os.path.relpath(fs.resolve(p).url, repo)}" for p in reads}
        step(
            "2. overlay reads: logical paths served from their v1 files",
            {"bytes": reads, "served by": where},
        )
        the_plan = migration.plan(repo)
        step("3. orchfs migrate --dry-run", _human_plan(the_plan.to_json(False), True))
        result = migration.apply(repo)
        step("4. orchfs migrate", result.message)
        fs = OrchFileSystem(root=repo, skip_instance_cache=True)
        step(
            "   after: every logical path now lives in .orchestrator/",
            {p: os.path.relpath(fs.resolve(p).url, repo) for p in ("state.json", "checkpoints/cp_1.json")},
        )
        findings = checks.run(repo)
        step(
            "5. orchfs doctor",
            [f"[{f.severity}] {f.id}: {f.message}" for f in findings] or "no problems found",
        )
        undone = migration.rollback(repo)
        step("6. orchfs migrate --rollback", undone.message)
        restored = sorted(
            os.path.relpath(os.path.join(t, n), repo)
            for t, _d, files in os.walk(repo)
            for n in files
            if ".git" not in t and ".orchestrator" not in t
        )
        step("   the v1 files are back", {"identical to step 1": restored == legacy})
        if ctx.json:  # on an error the one document is the error's
            click.echo(json.dumps({"root": repo, "steps": steps}, indent=2, default=str))
    finally:
        if keep:
            if not ctx.json:
                click.echo(f"demo repository kept at {repo}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _demo_files() -> dict[str, bytes]:
    from .sample import LEGACY_SAMPLE

    files = dict(LEGACY_SAMPLE)
    files.update(
        {f".workflow_checkpoints/cp_{i}.json": f'{{"checkpoint": {i}}}\n'.encode() for i in range(3, 40)}
    )
    files[".workflow_unknown_tool.json"] = b"{}\n"
    files[".gitignore"] = b".orchestrator/\n"  # what `orchfs init` adds
    files["src/app.py"] = b"print('the user code is never touched')\n"
    return files


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = [
    "main",
]
