"""``.orchestrator/FORMAT`` and ``meta.json``: the layout version and the repository identity.

``FORMAT`` is text: the layout version on the first line and, optionally, the
minimum orchfs that writes it on the second (``orchfs>=0.3``). A repository whose
layout is newer than :data:`LAYOUT_VERSION` is read-only: every write raises
:class:`LayoutVersionError` saying which orchfs it needs. ``meta.json`` records the
``repo_id`` (the secret namespace), the root, the git remote, when it was created
and by which orchfs. Both are written on the first write, never by a read.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import time
import uuid
from typing import Any, NamedTuple

from .atomic import CREATE
from .errors import FormatError, LayoutVersionError, MetaError, UnsafeStateError
from .paths import STATE_DIR
from .statefiles import StateFiles
from .stored import check_repo_id, load_json, read_state
from .version import __version__

LAYOUT_VERSION = 2
FORMAT_FILE = "FORMAT"
META_FILE = "meta.json"


class FormatInfo(NamedTuple):
    """A ``FORMAT`` file: the layout version, and the second line, if any, naming the
    orchfs release a newer layout needs."""

    version: int
    requires: str | None


# A FORMAT file is two short lines; anything longer was not written by orchfs.
MAX_FORMAT_BYTES = 4096
_FORMAT_FIX = (
    "if this repository was written by orchfs, put its layout version back (`echo 2 > "
    ".orchestrator/FORMAT`); otherwise restore .orchestrator/ from a backup"
)
_META_FIX = (
    "restore .orchestrator/meta.json from a backup; or remove it and run `orchfs init` "
    "(a new repo_id: secrets stored under the old one become unreadable)"
)


def read_format(state: Any) -> FormatInfo | None:
    data = read_state(state, FORMAT_FILE, MAX_FORMAT_BYTES)
    return None if data is None else parse_format(data, f"{state.url(FORMAT_FILE)}")


def parse_format(data: bytes, where: str = FORMAT_FILE) -> FormatInfo:
    """The content of a FORMAT file. A damaged one is :class:`FormatError`, not "newer":
    either way the repository is never written through it."""
    lines = []
    if len(data) <= MAX_FORMAT_BYTES:
        text = data.decode("utf-8", "replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].isascii() or not lines[0].isdigit() or len(lines) > 2:
        raise FormatError(f"{where} is damaged (not a layout version); {_FORMAT_FIX}", where)
    return FormatInfo(int(lines[0]), lines[1] if len(lines) > 1 else None)


def check_writable(found: FormatInfo | None, where: str) -> None:
    if found is None or found.version <= LAYOUT_VERSION:
        return
    needed = found.requires or f"an orchfs that supports layout version {found.version}"
    raise LayoutVersionError(
        f"{where} uses layout version {found.version}; this orchfs {__version__} writes "
        f"version {LAYOUT_VERSION} and keeps the repository read-only. Upgrade to {needed}."
    )


def git_remote(root: str) -> str | None:
    """The ``origin`` URL from ``<root>/.git/config`` (no git binary needed)."""
    config_path = os.path.join(root, ".git", "config")
    if not os.path.isfile(config_path):
        return None
    import configparser  # only a repository with a .git/config (not every command) needs it

    parser = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        parser.read(config_path)
    except configparser.Error:
        return None
    section = 'remote "origin"'
    return parser.get(section, "url", fallback=None) if parser.has_section(section) else None


def new_meta(root: str, local_root: bool) -> dict[str, Any]:
    return {
        "repo_id": uuid.uuid4().hex,
        "root": root,
        "git_remote": git_remote(root) if local_root else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "orchfs_version": __version__,
    }


META_TYPES = {
    "repo_id": (str,),
    "root": (str, type(None)),
    "git_remote": (str, type(None)),
    "created": (str, type(None)),
    "orchfs_version": (str, type(None)),
    "portable": (bool,),
}


def read_meta(state: Any) -> dict[str, Any] | None:
    """meta.json, checked (``None`` when there is none yet): damaged is :class:`MetaError`,
    a ``repo_id`` outside its format :class:`~orchfs.errors.UnsafeStateError`."""
    data = read_state(state, META_FILE)
    if data is None:
        return None
    where = state.url(META_FILE)
    return check_meta(load_json(data, where, error=MetaError, fix=_META_FIX), where)


def write_meta(state: Any, meta: dict[str, Any]) -> None:
    """Replace meta.json with ``meta``, atomically."""
    StateFiles(state).write(META_FILE, json.dumps(meta, indent=2).encode() + b"\n")


def check_meta(meta: Any, where: str) -> dict[str, Any]:
    """A parsed meta.json document, or :class:`MetaError` saying what is wrong."""
    if not isinstance(meta, dict):
        raise MetaError(f"{where} is damaged (not a JSON object); {_META_FIX}", where)
    if "repo_id" not in meta:
        raise MetaError(f"{where} is damaged (no repo_id); {_META_FIX}", where)
    for name, types in META_TYPES.items():
        if name in meta and not isinstance(meta[name], types):
            raise MetaError(f"{where} is damaged ({name} is {type(meta[name]).__name__}); {_META_FIX}", where)
    check_repo_id(meta["repo_id"], where)
    return meta


def ensure_initialized(state: Any, root: str, local_root: bool) -> None:
    """Refuse a newer layout (``LayoutVersionError``), then create FORMAT and meta.json
    if missing (exclusive creates: safe against races)."""
    check_writable(read_format(state), state.url(""))
    if state.info(FORMAT_FILE) is None:
        with contextlib.suppress(FileExistsError):
            StateFiles(state).write(FORMAT_FILE, f"{LAYOUT_VERSION}\n".encode(), CREATE)
    if state.info(META_FILE) is None:
        document = json.dumps(new_meta(root, local_root), indent=2).encode() + b"\n"
        try:
            StateFiles(state).write(META_FILE, document, CREATE)
        except FileExistsError:  # made meanwhile; or an entry no read reaches
            if read_meta(state) is None:
                where = state.url(META_FILE)
                raise MetaError(f"{where} is a symlink that leads nowhere; {_META_FIX}", where) from None


IGNORE_LINE = f"{STATE_DIR}/"
_PROBE = f"{STATE_DIR}/meta.json"  # a path inside: `*` in .orchestrator/.gitignore covers it


def gitignored(root: str) -> bool:
    """Whether git ignores the state directory of ``root``: git's own answer where git is
    installed (every ignore file and rule counts), else a ``.orchestrator/`` line in
    the root ``.gitignore``."""
    git = None
    if os.path.exists(os.path.join(root, ".git")):  # a worktree's is a file
        import shutil

        git = shutil.which("git")
    if git is not None:
        import subprocess

        try:
            answer = subprocess.run(
                # No hooks or fsmonitor of the repository run: only the ignore rules count.
                [git, "-c", "core.fsmonitor=false", "check-ignore", "-q", "--no-index", _PROBE],
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
            ).returncode
        except (OSError, subprocess.SubprocessError):
            answer = None
        if answer in (0, 1):
            return answer == 0
    return any(line.strip().strip("/") == STATE_DIR for line in _gitignore_text(root).splitlines())


def ensure_gitignored(root: str) -> bool:
    """Add ``.orchestrator/`` to the root ``.gitignore`` unless git already ignores it;
    True when the file was changed (what ``orchfs init`` and a migration do)."""
    if gitignored(root):
        return False
    text = _gitignore_text(root)
    line = ("" if not text or text.endswith("\n") else "\n") + IGNORE_LINE + "\n"
    # O_NONBLOCK: a FIFO planted there must not hang the open (ENXIO with no reader).
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(os.path.join(root, ".gitignore"), flags, 0o644)  # a link there is refused
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO):
            raise
        raise UnsafeStateError(
            f"{root}/.gitignore is a symlink or a FIFO; orchfs never writes through one: replace "
            f"it with a file, or add {IGNORE_LINE} to the file it points at yourself",
            ".gitignore",
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            # A hard link may be another name of a file outside the repository.
            raise UnsafeStateError(
                f"{root}/.gitignore is not a plain file (a device, a FIFO or a hard link); orchfs "
                f"never appends to one: replace it with a file of its own, or add {IGNORE_LINE} yourself",
                ".gitignore",
            )
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return True


def _gitignore_text(root: str) -> str:
    """The root ``.gitignore`` ("" when absent, a link or not a file): opened without
    following a link, so what is read is the file the check saw."""
    try:
        fd = os.open(os.path.join(root, ".gitignore"), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return f.read(1 << 20).decode("utf-8", "replace")


__all__ = [
    "FORMAT_FILE",
    "LAYOUT_VERSION",
    "META_FILE",
    "FormatInfo",
    "check_writable",
    "ensure_gitignored",
    "ensure_initialized",
    "git_remote",
    "gitignored",
    "parse_format",
    "read_format",
    "read_meta",
    "write_meta",
]
