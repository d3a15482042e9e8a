"""Migration of a v1 repository to the v2 layout: plan, apply, resume, rollback.

* :func:`plan` is pure: it reads the tree and says what would move, what conflicts,
  what it does not know, how many bytes would be copied and whether there is room.
* :func:`apply` holds the repository lock for the whole run and keeps a write-ahead
  journal in ``.orchestrator/migrations/<id>.jsonl``: the whole plan as intent
  records (one fsync), then a ``done`` record per step, fsynced in batches. Every step
  is idempotent, so an interrupted run (even ``kill -9``) is finished by running
  again. Same-device moves are renames, each relative to directories held open for
  its batch of steps (a v1 directory whose files all move to one new directory is one
  rename); other moves copy, check the SHA-256 of what landed, then delete. Modes,
  mtimes and symlinks are preserved (a relative link is
  rewritten to point at the same target). Old files are kept in
  ``.orchestrator/migration_backup/<id>/`` unless ``backup=False``: a file of a
  write-once entry (:meth:`~orchfs.layout.Layout.write_once`: checkpoints) that is
  renamed and has no other name is kept as a hard link of itself (see :func:`_linkable`),
  everything else as a copy of its own. The backups of a journal batch (all those of a
  v1 directory that may move whole) are made with no fsync each and made durable
  together (one ``syncfs`` for copies, an fsync of their directories for links) before
  any of its sources moves (:func:`_stage_backups`).
* :func:`rollback` undoes the newest (or a named) migration: every migrated file,
  with any later change, goes back to its v1 name with its v1 mode and mtime, v1
  directories get their mtimes back, and the backup is emptied.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from .atomic import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, LocalAtomicWriter, temp_name
from .beneath import Beneath, copied_mode, copy_fresh, link_fresh
from .errors import (
    MigrationConflictError,
    OrchFSError,
    PathEscapeError,
    RollbackIncompleteError,
    SQLiteInUseError,
    UnsafeStateError,
    library_logger,
)
from .faults import checkpoint
from .journal import (
    DONE_BATCH,
    JOURNAL_DIR,
    Journal,
    Step,
    begin_record,
    intent_records,
    journals,
    read_journal,
    steps_of,
)
from .layout import UNNAMED_PATTERNS, Layout, coerce_layout
from .paths import INTERNAL_NAMES, MARKER_PREFIXES, MARKER_SENTINEL, STATE_DIR, WHITEOUT_PREFIX
from .stored import check_id
from .syncfs import sync_filesystem

BACKUP_DIR = "migration_backup"
# What a file or directory moved into .orchestrator/ keeps of its mode, and what a rollback
# restores of a mode the journal recorded: permission bits, never the set-ID or sticky bits
# nor write by everyone (as git never checks out either). A world-writable config.yaml
# would let any local user say where the state goes; a journal and the bytes it restores
# may come from a snapshot.
RESTORED_BITS = 0o775
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
SQLITE_HEADER = b"SQLite format 3\x00"
# Files that are appended to in place, by name: never a hard-linked backup (see _linkable).
APPENDED_SUFFIXES = (".jsonl", ".log")

logger = library_logger(__name__)


class Move(NamedTuple):
    """One file of the plan. ``source`` and ``target`` are relative to the root."""

    source: str
    target: str
    bytes: int
    action: str  # rename | copy | retire


class MoveConflict(NamedTuple):
    """``source`` and what is at ``target`` differ. ``other`` names the earlier legacy
    location that moves to ``target`` in the same run (two legacy locations of one
    entry): the first in order moves, ``source`` is then kept in the backup."""

    source: str
    target: str
    other: str | None = None


@dataclass(frozen=True)
class Plan:
    """What a migration does (:func:`plan`), or did: the moves, the conflicts and what
    is reported without moving, with the room on disk it needs."""

    migration_id: str
    moves: tuple[Move, ...]
    conflicts: tuple[MoveConflict, ...]
    unknown: tuple[str, ...]
    free_bytes: int | None
    blocked: str | None = None  # e.g. a SQLite database in use
    stats: dict[str, os.stat_result] = field(default_factory=dict, compare=False, repr=False)
    leftovers: tuple[str, ...] = ()  # ``.bak`` copies an older migration script left
    # Retired sources whose bytes exist nowhere else (stale copies, leftovers, the later of
    # two differing legacy locations): kept in the backup even with ``backup=False``.
    keep: frozenset[str] = field(default_factory=frozenset, compare=False, repr=False)
    # Bytes the backup copies into .orchestrator/migration_backup/ (on local disk).
    backup_bytes: int = 0
    # Sources whose backup may be a hard link of them, taking no room (see _linkable).
    linked: frozenset[str] = field(default_factory=frozenset, compare=False, repr=False)

    @property
    def total_bytes(self) -> int:
        """The bytes of every move, retirements included (the sum of ``moves``)."""
        return sum(m.bytes for m in self.moves)

    @property
    def copy_bytes(self) -> int:
        """Bytes that are copied rather than renamed: what needs free space."""
        return sum(m.bytes for m in self.moves if m.action in ("copy", "upload"))

    @property
    def room(self) -> bool:
        return self.free_bytes is None or self.copy_bytes + self.backup_bytes <= self.free_bytes

    def to_json(self, applied: bool) -> dict[str, Any]:
        return {
            "migration_id": self.migration_id,
            "moves": [m._asdict() for m in self.moves],
            "conflicts": [c._asdict() for c in self.conflicts],
            "unknown": list(self.unknown),
            "leftovers": list(self.leftovers),
            "total_bytes": self.total_bytes,
            "copy_bytes": self.copy_bytes,
            "backup_bytes": self.backup_bytes,
            "free_bytes": self.free_bytes,
            "room": self.room,
            "blocked": self.blocked,
            "applied": applied,
        }


@dataclass
class Result:
    """How a run of :func:`apply` or :func:`rollback` ended, with the plan it carried out."""

    plan: Plan
    applied: bool
    message: str
    resumed: bool = False
    steps: int = 0

    def to_json(self) -> dict[str, Any]:
        doc = self.plan.to_json(self.applied)
        doc.update({"message": self.message, "resumed": self.resumed, "steps": self.steps})
        return doc


def _root(root: Any) -> str:
    path = os.path.abspath(os.fspath(root))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"repository root {path} does not exist or is not a directory")
    return path


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    if stat.S_ISLNK(_lstat(path).st_mode):
        digest.update(b"link:" + _readlink(path).encode())
        return digest.hexdigest()
    with _open_read(path) as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            # A device (/dev/zero) never ends and a pipe may block: neither is hashed.
            digest.update(b"special:" + path.encode())
            return digest.hexdigest()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _same_bytes(a: str, b: str) -> bool:
    sa, sb = _lstat(a), _lstat(b)
    if stat.S_ISLNK(sa.st_mode) or stat.S_ISLNK(sb.st_mode):
        return stat.S_ISLNK(sa.st_mode) == stat.S_ISLNK(sb.st_mode) and _sha256_file(a) == _sha256_file(b)
    return sa.st_size == sb.st_size and _sha256_file(a) == _sha256_file(b)


class _Pair(NamedTuple):
    """A v1 file and where it goes (a named tuple: a plan of 20,000 files makes as many)."""

    source: str  # relative to the root
    contained: str  # relative to the state directory
    st: os.stat_result
    sqlite: bool = False


def _legacy_pairs(root: str, layout: Layout) -> Iterator[_Pair]:
    """Every v1 file with the contained path it moves to (directories expanded), the
    legacy locations of an entry in order: the first that exists is the one that moves."""
    for entry in layout.entries:
        for suffix in ("", *entry.companions):
            for legacy in entry.legacy:
                source = legacy + suffix
                try:
                    st = os.lstat(os.path.join(root, source))
                except FileNotFoundError:
                    continue
                contained = entry.logical + suffix
                if stat.S_ISDIR(st.st_mode):
                    yield from _directory_pairs(root, source, contained)
                else:
                    yield _Pair(source, contained, st, bool(entry.companions) and not suffix)
    for source, contained in layout.import_sources:
        with contextlib.suppress(FileNotFoundError):
            yield _Pair(source, contained, os.lstat(os.path.join(root, source)))


def _directory_pairs(root: str, source: str, contained: str) -> Iterator[_Pair]:
    """Files (and links) below a v1 directory, in a stable order, one lstat each. The
    directory is opened beneath the root and each one below it relative to its parent's
    descriptor (no link followed, no path looked up again), and it is checked to be still
    at its place once read: a directory renamed or swapped for a link meanwhile cannot
    make the listing name anything outside the root (:class:`UnsafeStateError`)."""
    guard = _GUARDS.get(root)
    own = guard is None
    guard = Beneath(root) if guard is None else guard
    try:
        fd = guard.open_dir(source)
        try:
            pairs = list(_pairs_below(fd, source, contained))
            moved = not _same_inode(os.fstat(fd), guard.lstat(source))
        finally:
            os.close(fd)
        if moved:
            raise _moved_while_listed(guard.show(source), source)
    finally:
        if own:
            guard.close()
    yield from pairs


def _pairs_below(fd: int, source: str, contained: str) -> Iterator[_Pair]:
    """:func:`_directory_pairs` below the directory open as ``fd``."""
    names = sorted(os.listdir(fd))
    stats = [os.stat(name, dir_fd=fd, follow_symlinks=False) for name in names]
    is_dir = stat.S_ISDIR
    make = _Pair._make  # one call per file, not the named tuple's keyword-aware __new__
    source_dir, contained_dir = source + "/", contained + "/"  # joined once per directory
    for name, st in zip(names, stats, strict=True):
        if not is_dir(st.st_mode):
            yield make((source_dir + name, contained_dir + name, st, False))
            continue
        try:
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError:  # gone, or a link now (O_NOFOLLOW): not what was listed
            raise _moved_while_listed(f"{source}/{name}", f"{source}/{name}") from None
        try:
            if not _same_inode(os.fstat(sub), st):
                raise _moved_while_listed(f"{source}/{name}", f"{source}/{name}")
            yield from _pairs_below(sub, f"{source}/{name}", f"{contained}/{name}")
        finally:
            os.close(sub)


def _moved_while_listed(shown: str, rel: str) -> UnsafeStateError:
    return UnsafeStateError(
        f"{shown} was moved or replaced while orchfs listed it (another process changed the "
        "repository); nothing was changed: check it, then run the command again",
        rel,
    )


LEFTOVER_SUFFIX = ".bak"


def unnamed_files(root: str, layout: Layout) -> tuple[list[str], list[str]]:
    """v1-looking files that no entry names: ``.bak`` copies of legacy files (what
    workflow-orchestrator's own migration script leaves), and every other ``.workflow_*``
    or ``.manus/secrets.enc*``. Returns (leftovers, unknown), root-relative."""
    known = set(layout.legacy_names())
    leftovers, unknown = [], []
    for pattern in UNNAMED_PATTERNS:
        folder, _, stem = pattern.rpartition("/")
        try:
            names = os.listdir(os.path.join(root, folder)) if folder else os.listdir(root)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            rel = f"{folder}/{name}" if folder else name
            if not name.startswith(stem) or rel in known:
                continue
            if rel.endswith(LEFTOVER_SUFFIX) and rel[: -len(LEFTOVER_SUFFIX)] in known:
                leftovers.append(rel)
            else:
                unknown.append(rel)
    return sorted(leftovers), sorted(unknown)


def _same_device(root: str, state_dir: str) -> bool:
    probe = state_dir
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return os.stat(root).st_dev == os.stat(probe).st_dev


def _sqlite_header(full: str) -> bool:
    """Whether the file at ``full`` (never a link followed) begins as a SQLite database."""
    with _open_read(full) as f:
        return f.read(16) == SQLITE_HEADER


def _sqlite_in_use(root: str, sources: list[str]) -> str | None:
    """A lock someone holds (a write transaction, an open reader), or a hot journal left
    by a crash, on a SQLite database that would move."""
    import fcntl

    for source in sources:
        full = os.path.join(root, source)
        # A link is moved as a link, never opened: what it points at may lie outside.
        if source.endswith(SQLITE_COMPANIONS) or not stat.S_ISREG(_lstat(full).st_mode):
            continue
        if not _sqlite_header(full):
            continue
        fd = _open_fd(full, os.O_RDWR)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(fd, fcntl.LOCK_UN)
        except OSError:
            return (
                f"{source} is in use (a process holds a SQLite lock on it, e.g. an open write "
                "transaction): let it finish or stop that process, then migrate"
            )
        finally:
            os.close(fd)
        journal = full + "-journal"
        if os.path.exists(journal) and os.path.getsize(journal) > 0:
            return (
                f"{source} has a hot journal ({source}-journal) left by a process that stopped "
                "mid-transaction: open the database with sqlite3 once to recover it, then migrate"
            )
    return None


def plan(
    root: Any,
    *,
    layout: Any = None,
    migration_id: str | None = None,
    copy: bool = False,
    storage: str | None = None,
    storage_options: dict[str, Any] | None = None,
    retire_leftovers: bool = False,
    backup: bool = True,
) -> Plan:
    """What a migration of ``root`` would do. Reads only.

    ``copy=True`` copies (with hash check) even where a rename would do. ``storage``
    names a state directory elsewhere (``s3://bucket/prefix``, ``memory://...``): files
    are then uploaded to it, hash-checked, and removed from the repository.
    ``retire_leftovers=True`` also moves the ``.bak`` leftovers and the unknown v1 files
    into the backup (they are reported either way). ``backup`` counts the copies the
    backup takes (``backup_bytes``) towards the room needed.
    """
    from .storage import LocalStorage

    root = _root(root)
    layout = coerce_layout(layout)
    remote = _remote_store(root, storage, storage_options)
    if remote is not None:
        return _remote_plan(root, layout, remote, migration_id, retire_leftovers)
    guard = Beneath(root)
    try:
        _refuse_planted_links(guard, layout)  # the plan compares bytes: never outside ones
    finally:
        guard.close()
    state_dir = os.path.join(root, STATE_DIR)
    action = "rename" if not copy and _same_device(root, state_dir) else "copy"
    existing_dirs: dict[str, bool] = {}

    def present(contained: str) -> bool:
        # contained paths are relative and '/'-separated
        parent = contained.rpartition("/")[0]
        there = existing_dirs.get(parent)
        if there is None:  # a directory this run has not seen: one check
            there = existing_dirs[parent] = os.path.isdir(f"{state_dir}/{parent}")
        return there and _lexists(f"{state_dir}/{contained}")

    the_plan = _plan_moves(
        root,
        layout,
        migration_id,
        target=lambda contained: f"{STATE_DIR}/{contained}",
        present=present,
        same=lambda source, contained: _same_bytes(source, os.path.join(state_dir, contained)),
        action=action,
        records=LocalStorage(state_dir) if os.path.isdir(state_dir) else None,
        retire_leftovers=retire_leftovers,
    )
    # Backups are copies of their own on the state directory's disk, but for the files
    # kept as hard links (see _stage_backups), which take no room.
    stats, keep = the_plan.stats, the_plan.keep
    linked: list[str] = []
    kept = 0
    for m in the_plan.moves:
        source = m.source
        if backup and _linkable(
            layout, m.action, m.target, stats[source].st_mode, m.bytes, f"{root}/{source}"
        ):
            linked.append(source)
        elif backup or source in keep:
            kept += m.bytes
    the_plan = replace(the_plan, backup_bytes=kept, linked=frozenset(linked))
    if the_plan.copy_bytes or the_plan.backup_bytes:
        free = shutil.disk_usage(state_dir if os.path.exists(state_dir) else root).free
        the_plan = replace(the_plan, free_bytes=free)
    return the_plan


def _plan_moves(
    root: str,
    layout: Layout,
    migration_id: str | None,
    *,
    target: Callable[[str], str],
    present: Callable[[str], bool],
    same: Callable[[str, str], bool],
    action: str,
    records: Any,
    retire_leftovers: bool,
) -> Plan:
    """Every v1 file as a move, a retirement (already there, or a stale copy orchfs
    superseded) or a conflict (there, different)."""
    if migration_id is not None:
        check_id(migration_id, "migration id", "migration_id argument")
    migration_id = migration_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    moves, conflicts, sqlite_sources, keep = [], [], [], set()
    stats: dict[str, os.stat_result] = {}
    claimed: dict[str, str] = {}  # contained path -> the legacy source moving there
    make_move = Move._make  # one call per file, not the named tuple's keyword-aware __new__
    for source, contained, st, sqlite in _legacy_pairs(root, layout):
        stats[source] = st
        if sqlite:
            sqlite_sources.append(source)
        where = target(contained)
        first = claimed.get(contained)
        if first is not None:  # a later legacy location of an entry whose first one moves
            if _same_bytes(f"{root}/{source}", f"{root}/{first}"):
                moves.append(make_move((source, where, st.st_size, "retire")))
            else:
                conflicts.append(MoveConflict(source, where, first))
            continue
        if present(contained):
            full = f"{root}/{source}"  # sources are relative and '/'-separated
            if same(full, contained):
                moves.append(make_move((source, where, st.st_size, "retire")))
                continue
            from .supersede import is_stale, read_record  # only where both copies exist

            if records is not None and is_stale(
                read_record(records, source), st.st_size, lambda f=full: _sha256_file(f)
            ):
                moves.append(make_move((source, where, st.st_size, "retire")))
                keep.add(source)
            else:
                conflicts.append(MoveConflict(source, where))
            continue
        claimed[contained] = source
        moves.append(make_move((source, where, st.st_size, action)))
    leftovers, unknown = unnamed_files(root, layout)
    if retire_leftovers:
        for name in (*leftovers, *unknown):
            for file_rel, st in _files_below(root, name):
                stats[file_rel] = st
                where = f"{STATE_DIR}/{BACKUP_DIR}/{migration_id}/{file_rel}"
                moves.append(Move(file_rel, where, st.st_size, "retire"))
                keep.add(file_rel)
    return Plan(
        migration_id,
        tuple(moves),
        tuple(conflicts),
        tuple(unknown),
        None,
        _sqlite_in_use(root, sqlite_sources),
        stats,
        tuple(leftovers),
        frozenset(keep),
    )


def _files_below(root: str, rel: str) -> Iterator[tuple[str, os.stat_result]]:
    """``rel`` itself, or every file (and link) below it when it is a directory."""
    st = os.lstat(os.path.join(root, rel))
    if not stat.S_ISDIR(st.st_mode):
        yield rel, st
        return
    for pair in _directory_pairs(root, rel, rel):
        yield pair.source, pair.st


def _state_store(root: str, storage: str | None, options: dict[str, Any] | None) -> Any:
    """The adapter of the state directory, where the lock, FORMAT and meta.json live, as
    ``OrchFileSystem`` opens it (without loading fsspec for a local one)."""
    from .storage import open_storage

    return open_storage(storage or os.path.join(root, STATE_DIR), options, root)


def _repository_lock(state: Any, timeout: float) -> Any:
    """The repository lock that ``OrchFileSystem.lock("repo")`` takes."""
    from .locks import make_lock

    return make_lock(state, "repo", timeout=timeout, session=None)


def _remote_store(root: str, storage: str | None, options: dict[str, Any] | None) -> Any:
    """The adapter of a state directory that is not ``<root>/.orchestrator`` (or None)."""
    if storage is None:
        return None
    from .storage import LocalStorage, open_storage

    store = open_storage(storage, options)
    if isinstance(store, LocalStorage) and store.base == os.path.join(root, STATE_DIR):
        return None
    return store


def _absolute_storage(storage: str) -> str:
    """A state directory as the journal records it and compares it: a relative local path
    is relative to the working directory (as ``--storage`` on the command line is; a
    configuration file's own are already absolute), a URL stays as it is."""
    from .config import anchored_storage

    return anchored_storage(storage, os.getcwd())


def _recorded_storage(begin: dict[str, Any], given: str | None, where: str) -> str | None:
    """The state directory a journal's migration went to, checked against the one this run
    was given (``--storage``, else the configured ``state.storage``): a journal may not
    send a rollback or a resume anywhere else. Never one the journal alone names: a local
    directory may be any on this machine, and an object store would be read, written and
    emptied with the caller's credentials (a journal may come from a snapshot)."""
    recorded = begin.get("storage")
    if recorded is not None:  # a journal written before paths were recorded absolute
        recorded = _absolute_storage(recorded)
    if recorded is None or recorded == given:  # a local migration is undone locally
        return recorded
    if given is not None:
        raise UnsafeStateError(
            f"{where}: the journal's migration went to {recorded!r}, not {given!r}; refused "
            "(pass the storage it went to)",
            where,
        )
    raise UnsafeStateError(
        f"{where}: the journal's migration went to {recorded!r}; pass --storage with it to "
        "roll back or finish from there (a journal alone never names a place to read, write "
        "or delete in)",
        where,
    )


def _remote_plan(
    root: str, layout: Layout, store: Any, migration_id: str | None, retire_leftovers: bool
) -> Plan:
    existing = set(store.find_files(""))  # one listing instead of a request per file
    return _plan_moves(
        root,
        layout,
        migration_id,
        target=store.url,
        present=existing.__contains__,
        same=lambda source, contained: _sha256_file(source) == _sha256_bytes(store.read(contained)),
        action="upload",
        records=store,
        retire_leftovers=retire_leftovers,
    )


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _upload(source: str, store: Any, rel: str) -> None:
    """Stream a file (a link: what it points at) to the store; check what landed."""
    digest = hashlib.sha256()
    with _open_read(source) as reader, store.open_write(rel) as writer:
        for chunk in iter(lambda: reader.read(1 << 20), b""):
            digest.update(chunk)
            writer.write(chunk)
    if _sha256_bytes(store.read(rel)) != digest.hexdigest():
        raise OSError(f"upload of {source} to {store.url(rel)} did not verify; the source is kept")


def _download(store: Any, rel: str, path: str) -> None:
    """Bring a stored file back to local disk through a staged writer: ``path`` holds
    the old bytes or the complete new ones, never part of them."""
    _ensure_parent(path)
    with _entry(path) as (fd, name), store.open_read(rel) as reader:
        writer = LocalAtomicWriter(os.dup(fd), name, path, final_mode=PRIVATE_FILE_MODE)
        with writer:
            shutil.copyfileobj(reader, writer, 1 << 20)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (through this module's ``os``, which the
    fault-injection tests replace)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def unfinished(root: Any) -> list[str]:
    """Journals of migrations (or rollbacks) that were interrupted."""
    root = _root(root)
    return [p for p in journals(root) if Journal.status(p) in ("unfinished", "rolling-back")]


# --- steps -------------------------------------------------------------------------------
def _relink_target(link_text: str, old_path: str, new_path: str, root: str, moved: dict[str, str]) -> str:
    """The text a moved symlink needs so that it still points at the same file.

    A target that moves too (it is part of the migration) is followed to its new place.
    """
    if os.path.isabs(link_text):
        return link_text
    pointed = os.path.normpath(os.path.join(os.path.dirname(old_path), link_text))
    rel = os.path.relpath(pointed, root)
    head, tail = rel, ""
    while head and head != ".":
        if head in moved:
            pointed = os.path.join(root, moved[head], tail) if tail else os.path.join(root, moved[head])
            break
        head, _, last = head.rpartition("/")
        tail = f"{last}/{tail}" if tail else last
    return os.path.relpath(pointed, os.path.dirname(new_path))


def moved_paths(steps: list[Step]) -> dict[str, str]:
    """Where each migrated file and directory goes (root-relative), for relinking."""
    out: dict[str, str] = {}
    for step in steps:
        if step.action == "retire":
            continue
        source, target = step.source, step.target
        out[source] = target
        src_parts, dst_parts = source.split("/"), target.split("/")
        while len(src_parts) > 1 and len(dst_parts) > 1 and src_parts[-1] == dst_parts[-1]:
            src_parts, dst_parts = src_parts[:-1], dst_parts[:-1]
            out.setdefault("/".join(src_parts), "/".join(dst_parts))
    return out


# The roots of the migrations and rollbacks running in this process, each with its
# beneath-root layer: every directory a step creates or moves into is reached through it,
# so a symlink on the way (planted, or swapped in) is refused, never followed.
_GUARDS: dict[str, Beneath] = {}
# The directories held open for the steps running now, by root (sequential runs only).
_HELD: dict[str, _HeldDirs] = {}
# Directories held at once; more and all are released (a tree of many directories must
# not run out of descriptors).
HELD_LIMIT = 64


class _HeldDirs:
    """The directories a stretch of steps works in, each opened once beneath the root
    (no symlink followed on the way, as every open of :class:`Beneath`) and held until
    :meth:`release`: a step's stats, links and renames are then single ``*at`` calls
    relative to them, not two path resolutions each. They are held for one journal
    batch at most, by one thread. :meth:`release` checks that each is still the
    directory at its path beneath the root: one moved away or swapped for a link while
    it was held is reported (:class:`UnsafeStateError`), never worked in again."""

    def __init__(self, guard: Beneath) -> None:
        self._guard = guard
        self._fds: dict[str, int] = {}

    def fd(self, rel: str, *, create: bool = False) -> int:
        """The held descriptor of directory ``rel`` (``create``: make it first if missing).
        It may release the others (see :meth:`fds`): use it before asking for another."""
        return self.fds(rel, create=create)[0]

    def fds(self, *rels: str, create: bool = False) -> tuple[int, ...]:
        """The held descriptors of directories ``rels``, together (``create``: make the
        last first if missing). When they would not fit, everything is released before
        any of them is opened, never between: a descriptor a step asked for with the
        ones it uses with it is never closed, nor its number reused, under that step."""
        held = [self._fds.get(rel) for rel in rels]
        if None not in held:  # the common case: every one held already
            return tuple(held)  # type: ignore[arg-type]
        missing = {rel for rel in rels if rel not in self._fds}
        if len(self._fds) + len(missing) > HELD_LIMIT:
            self.release()
        last = len(rels) - 1
        return tuple(self._open(rel, create and at == last) for at, rel in enumerate(rels))

    def _open(self, rel: str, create: bool) -> int:
        fd = self._fds.get(rel)
        if fd is None:
            fd = self._fds[rel] = self._guard.open_dir(rel, create=create)
        return fd

    def forget(self, rel: str) -> None:
        """Close ``rel`` and everything held below it (it is about to be removed)."""
        for held in [h for h in self._fds if h == rel or h.startswith(rel + "/") or not rel]:
            os.close(self._fds.pop(held))

    def release(self) -> None:
        """Close every held directory, after checking each is still where it was."""
        moved = []
        for rel, fd in self._fds.items():
            try:
                if rel and not _same_inode(os.fstat(fd), self._guard.lstat(rel)):
                    moved.append(rel)
            except (OSError, PathEscapeError):
                moved.append(rel)
            finally:
                os.close(fd)
        self._fds.clear()
        if moved:
            raise UnsafeStateError(
                f"{self._guard.show(moved[0])} was moved or replaced while the migration worked "
                "in it (another process changed the repository); nothing more was moved: check "
                "it, then run `orchfs migrate` again to finish, or `orchfs migrate --rollback`",
                moved[0],
            )


def _same_inode(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def _holding(root: str) -> Iterator[None]:
    """Hold the directories of the steps run inside (see :class:`_HeldDirs`); the caller
    releases them at each journal batch through :func:`_release_held`."""
    held = _HeldDirs(_GUARDS[root])
    _HELD[root] = held
    try:
        yield
    except BaseException:
        del _HELD[root]
        with contextlib.suppress(UnsafeStateError):  # the error already on its way wins
            held.release()
        raise
    del _HELD[root]
    held.release()


def _release_held(root: str) -> None:
    held = _HELD.get(root)
    if held is not None:
        held.release()


def _refuse_planted_links(guard: Beneath, layout: Layout) -> None:
    """Refuse symlinks where a migration reads, writes or moves back to: at
    ``.orchestrator/`` itself and its own directories any link (orchfs never makes one
    there, so it was planted); at the contained directories of the layout and the v1
    directories a link that leads outside the root (one inside it is a v1 link that
    migration moves as a link; the steps never write through it)."""
    own = [STATE_DIR, *(f"{STATE_DIR}/{name}" for name in sorted({*INTERNAL_NAMES, "secrets"}))]
    dirs = {e.logical.split("/")[0] for e in layout.entries if e.is_dir or "/" in e.logical}
    tops = {"sessions", *dirs} - {*INTERNAL_NAMES, "secrets"}
    judged = [f"{STATE_DIR}/{top}" for top in sorted(tops)]
    judged += [name for entry in layout.entries if entry.is_dir for name in entry.legacy]
    # The directories above v1 locations (.claude/, .manus/): through a link there a
    # migration would take files from outside the root.
    judged += sorted(
        {
            "/".join(name.split("/")[:depth])
            for name in layout.legacy_names()
            for depth in range(1, name.count("/") + 1)
        }
    )
    for place in own + judged:
        try:
            st = guard.lstat(place)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if not stat.S_ISLNK(st.st_mode):
            continue
        if place in judged:
            try:
                guard.resolve(place)
                continue
            except PathEscapeError:
                pass
        raise UnsafeStateError(
            f"{guard.show(place)} is a symlink (to {guard.readlink(place)!r}); migrate and "
            "rollback never go through one: remove it (nothing was changed)",
            place,
        )


@contextlib.contextmanager
def _guarded(root: str, layout: Layout) -> Iterator[Beneath]:
    """Hold ``root``'s beneath-root layer for a run, after :func:`_refuse_planted_links`."""
    guard = Beneath(root)
    _refuse_planted_links(guard, layout)
    _GUARDS[root] = guard
    try:
        yield guard
    finally:
        del _GUARDS[root]
        guard.close()


def _guard_of(path: str) -> tuple[Beneath, str] | None:
    """The layer of the running root that holds ``path``, and ``path`` beneath it."""
    for root, guard in tuple(_GUARDS.items()):  # runs of other roots may start meanwhile
        if path.startswith(root):
            if path == root:
                return guard, ""
            if path[len(root)] == "/":
                return guard, path[len(root) + 1 :]
    return None


# Every operation of a step on an entry goes through its directory's descriptor, reached
# beneath the running root without following a symlink (``_entry``), so a link swapped
# in anywhere on the way is refused, not followed; while steps run, the descriptor is the
# one held for the batch (``_HeldDirs``). Outside a run (``plan``) they fall back to
# plain paths. They call this module's ``os``, which the fault tests replace.
@contextlib.contextmanager
def _entry(path: str) -> Iterator[tuple[int, str]]:
    """``(descriptor of path's directory, path's name)``."""
    head, _, name = path.rpartition("/")
    found = _guard_of(head)
    if found is None:
        fd = os.open(head or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    else:
        held = _HELD.get(found[0].root)
        if held is not None:
            yield held.fd(found[1]), name
            return
        fd = found[0].open_dir(found[1])
    try:
        yield fd, name
    finally:
        os.close(fd)


def _held_entry(path: str) -> tuple[int, str] | None:
    """:func:`_entry` for the steps of a batch, which hold their directories: the
    directory's held descriptor and the name, or None outside one (the hot path of the
    careful checks, without a context manager)."""
    head, _, name = path.rpartition("/")
    found = _guard_of(head)
    held = _HELD.get(found[0].root) if found is not None else None
    return (held.fd(found[1]), name) if held is not None else None  # type: ignore[index]


def _held_pair(src: str, dst: str) -> tuple[tuple[int, str], tuple[int, str]] | None:
    """:func:`_held_entry` of two paths of one root, held together (:meth:`_HeldDirs.fds`)."""
    (src_head, _, src_name), (dst_head, _, dst_name) = src.rpartition("/"), dst.rpartition("/")
    source, target = _guard_of(src_head), _guard_of(dst_head)
    if source is None or target is None or source[0] is not target[0]:
        return None
    held = _HELD.get(source[0].root)
    if held is None:
        return None
    src_fd, dst_fd = held.fds(source[1], target[1])
    return (src_fd, src_name), (dst_fd, dst_name)


def _lstat(path: str) -> os.stat_result:
    at = _held_entry(path)
    if at is not None:
        return os.stat(at[1], dir_fd=at[0], follow_symlinks=False)
    if _guard_of(path) is None:
        return os.lstat(path)
    with _entry(path) as (fd, name):
        return os.stat(name, dir_fd=fd, follow_symlinks=False)


def _lexists(path: str) -> bool:
    try:
        _lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _rename(src: str, dst: str, *, replace: bool = True) -> None:
    move = os.replace if replace else os.rename
    pair = _held_pair(src, dst)
    if pair is not None:
        (src_fd, src_name), (dst_fd, dst_name) = pair
        move(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        return
    with _entry(src) as (src_fd, src_name), _entry(dst) as (dst_fd, dst_name):
        move(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def _unlink(path: str) -> None:
    with _entry(path) as (fd, name):
        os.unlink(name, dir_fd=fd)


def _rmdir(path: str) -> None:
    found = _guard_of(path)
    held = _HELD.get(found[0].root) if found is not None else None
    if held is not None:
        held.forget(found[1])  # type: ignore[index]
    with _entry(path) as (fd, name):
        os.rmdir(name, dir_fd=fd)


def _symlink(text: str, path: str) -> None:
    with _entry(path) as (fd, name):
        os.symlink(text, name, dir_fd=fd)


def _readlink(path: str) -> str:
    with _entry(path) as (fd, name):
        return os.readlink(name, dir_fd=fd)


def _utime(path: str, ns: tuple[int, int]) -> None:
    """The entry's own times (a link's, never its target's)."""
    with _entry(path) as (fd, name):
        os.utime(name, ns=ns, dir_fd=fd, follow_symlinks=False)


def _open_fd(path: str, flags: int, mode: int = 0o666) -> int:
    """A descriptor of ``path`` itself: ``O_NOFOLLOW``, so a link there is refused."""
    with _entry(path) as (fd, name):
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)


def _open_read(path: str) -> Any:
    return os.fdopen(_open_fd(path, os.O_RDONLY | os.O_NONBLOCK), "rb")


def _ensure_parent(path: str) -> None:
    parent = os.path.dirname(path)
    found = _guard_of(parent)
    if found is None:
        os.makedirs(parent, exist_ok=True)
        return
    held = _HELD.get(found[0].root)
    if held is not None:
        held.fd(found[1], create=True)
    else:
        found[0].makedirs(found[1])


def _fresh_dir(held: _HeldDirs, rel: str, fresh: set[str]) -> bool:
    """Hold directory ``rel``, making it if missing; True when this run made it."""
    if rel in fresh:
        return True
    try:
        held.fd(rel)  # a symlink on the way is refused
        return False
    except FileNotFoundError:
        pass
    held.fd(rel, create=True)
    fresh.add(rel)
    return True


def _rename_fresh(held: _HeldDirs, root: str, step: Step, backup_id: str | None, fresh: set[str]) -> bool:
    """The first pass's common step, every call relative to held directories: keep the
    source in the backup (``backup_id``; a copy of its own, see :func:`_backup`),
    then rename it into its target's directory if this run made that directory (nothing
    can be in the way there). False when the directory was there before: the careful
    path of :func:`_execute` takes over."""
    src_dir, _, src_name = step.source.rpartition("/")
    if backup_id is not None:
        backup_rel = f"{STATE_DIR}/{BACKUP_DIR}/{backup_id}/{step.source}"
        _fresh_dir(held, backup_rel.rpartition("/")[0], fresh)
        _backup(root, f"{root}/{step.source}", f"{root}/{backup_rel}")
    checkpoint("migrate.move")
    dst_dir, _, dst_name = step.target.rpartition("/")
    if not _fresh_dir(held, dst_dir, fresh):
        return False
    src_fd, dst_fd = held.fds(src_dir, dst_dir)
    os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
    return True


class _WholeDirectory(NamedTuple):
    """Steps that one rename of a v1 directory can do (see :func:`_move_directory`)."""

    directory: str  # the v1 directory, root-relative
    target: str  # where it goes, inside the state directory
    files: frozenset[str]  # the steps' files, relative to both
    steps: int
    alone: bool  # no other step moves a file of the directory (else it cannot move whole)


def _whole_directory(steps: list[Step], start: int) -> _WholeDirectory | None:
    """The run of steps from ``start`` that are plain renames (no link, nothing replaced)
    of files below one top-level v1 directory, each to the same place below one directory
    inside the state directory; None when the step at ``start`` is none of those."""
    first = steps[start]
    directory, _, rel = first.source.partition("/")
    if not rel or not _plain_rename(first) or not first.target.endswith("/" + rel):
        return None
    target = first.target[: -len(rel) - 1]
    if not target.startswith(STATE_DIR + "/"):
        return None
    prefix, inside, files = directory + "/", target + "/", [rel]
    skip, end, count = len(prefix), start + 1, len(steps)
    while end < count:
        step = steps[end]
        rel = step.source[skip:]
        if not (
            step.action == "rename"  # _plain_rename, inline: this loop sees every step
            and step.link is None
            and not step.replaced
            and step.source.startswith(prefix)
            and step.target == inside + rel
        ):
            break
        files.append(rel)
        end += 1
    alone = not any(
        0 <= at < len(steps) and steps[at].source.startswith(prefix) for at in (start - 1, end)
    )  # the steps of one v1 directory are next to each other: its neighbours tell
    return _WholeDirectory(directory, target, frozenset(files) if alone else frozenset(), end - start, alone)


def _plain_rename(step: Step) -> bool:
    return step.action == "rename" and step.link is None and not step.replaced


def _move_directory(root: str, group: _WholeDirectory) -> bool:
    """Do a run of steps (:func:`_whole_directory`) as one rename of their v1 directory,
    when that moves exactly their files: the target is absent, and below the directory
    (read beneath the root, no link followed) there is no other entry and no empty
    directory. False, with nothing changed, when it would move anything else. The
    journal keeps one step per file, so a resume or a rollback works file by file
    whether or not this rename happened."""
    held = _HELD[root]
    guard = _GUARDS[root]
    directory, target = group.directory, group.target
    try:
        guard.lstat(target)
        return False  # something is there: the careful path looks file by file
    except FileNotFoundError:
        pass
    except (OSError, PathEscapeError):
        return False
    found: set[str] = set()
    for here, dirs, others in guard.walk(directory):
        if not dirs and not others:
            return False  # an empty directory would move along, and not come back
        found.update(f"{here}/{name}" if here else name for name in others)
    if found != group.files:
        return False
    st = os.fstat(held.fd(directory))  # a real directory beneath the root, no link
    held.forget(directory)
    parent, _, name = directory.rpartition("/")
    target_parent, _, target_name = target.rpartition("/")
    source_fd, target_fd = held.fds(parent, target_parent, create=True)
    checkpoint("migrate.move")
    os.rename(name, target_name, src_dir_fd=source_fd, dst_dir_fd=target_fd)
    if not _same_inode(st, guard.lstat(target)):
        back = _move_back(target_fd, target_name, source_fd, name)
        raise UnsafeStateError(
            f"{guard.show(directory)} was replaced while the migration moved it (another process "
            "changed the repository); "
            + (
                "what was there is back in its place"
                if back
                else f"what was there is now at {guard.show(target)}"
            )
            + ": check it, then run `orchfs migrate` again to finish, or `orchfs migrate --rollback`",
            directory,
        )
    logger.debug("migration moved %s to %s whole: %d file(s)", directory, target, group.steps)
    return True


def _move_back(target_fd: int, target_name: str, source_fd: int, name: str) -> bool:
    """Put back what a whole-directory rename moved when it was not the directory
    planned (another process swapped a link or another entry in): orchfs moved it into
    the state directory, so orchfs moves it out again, never over anything now at its
    old place (a link is hard-linked back, which fails on an existing name; a directory
    is renamed, which never replaces a file or a directory with entries). True when done."""
    try:
        if stat.S_ISDIR(os.stat(target_name, dir_fd=target_fd, follow_symlinks=False).st_mode):
            os.rename(target_name, name, src_dir_fd=target_fd, dst_dir_fd=source_fd)
        else:
            os.link(target_name, name, src_dir_fd=target_fd, dst_dir_fd=source_fd, follow_symlinks=False)
            os.unlink(target_name, dir_fd=target_fd)
    except OSError:
        return False
    return True


def _temp_beside(target: str) -> str:
    return os.path.join(os.path.dirname(target), temp_name(os.path.basename(target)))


def _copy_exact(source: str, target: str) -> None:
    """Copy bytes (or a link), fsync, check the hash, give it the source's mode and mtime.

    The copy is made under a temp name and renamed into place; on any failure the
    temp file is removed and the target is untouched.
    """
    _ensure_parent(target)
    st = _lstat(source)
    temp = _temp_beside(target)
    try:
        if stat.S_ISLNK(st.st_mode):
            _symlink(_readlink(source), temp)
            with contextlib.suppress(OSError, NotImplementedError):  # the link's own mtime
                _utime(temp, (st.st_atime_ns, st.st_mtime_ns))
        else:
            expected = _write_copy(source, temp, copied_mode(st.st_mode))
            if _sha256_file(temp) != expected:
                raise OSError(f"copy of {source} did not verify; nothing was changed")
            _utime(temp, (st.st_atime_ns, st.st_mtime_ns))
        checkpoint("migrate.copy")  # a verified temp file, not yet in place
        _rename(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            _unlink(temp)
        raise


def _write_copy(source: str, temp: str, mode: int) -> str:
    digest = hashlib.sha256()
    with _open_read(source) as src:
        fd = _open_fd(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        try:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                _write_all(fd, chunk)
            os.fsync(fd)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    return digest.hexdigest()


def _place(
    source: str, target: str, action: str, link_text: str | None, root: str, moved: dict[str, str]
) -> None:
    """Move ``source`` to ``target`` (rename or verified copy), keeping links pointing right."""
    _ensure_parent(target)
    if link_text is not None:
        new_text = _relink_target(link_text, source, target, root, moved)
        st = _lstat(source)
        temp = _temp_beside(target)
        _symlink(new_text, temp)
        try:
            with contextlib.suppress(OSError, NotImplementedError):
                _utime(temp, (st.st_atime_ns, st.st_mtime_ns))
            _rename(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                _unlink(temp)
            raise
        _unlink(source)
        return
    if action == "rename":
        _rename(source, target, replace=False)
    else:
        _copy_exact(source, target)
        _unlink(source)


def _backup(root: str, source: str, backup: str) -> None:
    """Keep ``source`` at ``backup`` as a copy of its own (a reflink where the filesystem
    offers one, ``copy_file_range`` otherwise, through :mod:`orchfs.beneath`), made
    durable on its own: the careful path, for what :func:`_stage_backups` did not keep
    (a symlink, anything odd, a replaced file put aside, a migration to another backend)."""
    if _lexists(backup):
        return
    _ensure_parent(backup)
    if stat.S_ISLNK(_lstat(source).st_mode):
        _copy_exact(source, backup)
        return
    found = _guard_of(root)
    guard = found[0] if found is not None else Beneath(root)
    guard.copy(os.path.relpath(source, root), os.path.relpath(backup, root))


def _backup_rel(migration_id: str, source: str) -> str:
    return f"{STATE_DIR}/{BACKUP_DIR}/{migration_id}/{source}"


_STATE_PREFIX = STATE_DIR + "/"


def _linkable(layout: Layout, action: str, target: str, mode: int | None, size: int, full: str) -> bool:
    """Whether the backup of a file moving to ``target`` by ``action`` may be a hard link
    of it rather than a copy: a rename (one device) into the state directory of a file
    of a write-once entry (:meth:`~orchfs.layout.Layout.write_once`) whose v1 ``mode``
    has no bit that the move drops (:data:`RESTORED_BITS`: the chmod would give the
    moved file a copy of its own anyway, and the backup would keep a set-ID bit). No program writes
    such a file in place, so a shared inode never carries a later change into the
    backup: it is replaced by a rename (an orchfs write is one), which leaves the
    backup's inode alone, and orchfs's own in-place writer, an append on local disk,
    first gives the file a copy of its own (``LocalStorage.append``). Every other file
    may be written in place by someone (a log appended to, SQLite's pages, a state file
    truncated and rewritten by a v1 tool or an editor): its backup is a copy. So is that
    of a file a write-once directory holds but a program writes in place all the same
    (:func:`_written_in_place`: the file at ``full``, of ``size`` bytes)."""
    return (
        action == "rename"
        and mode is not None
        and not mode & ~RESTORED_BITS & 0o7777
        and target.startswith(_STATE_PREFIX)
        and layout.write_once(target[len(_STATE_PREFIX) :])
        and not _written_in_place(full, size)
    )


def _written_in_place(full: str, size: int) -> bool:
    """Whether the file at ``full`` is one the migration treats as SQLite (a companion by
    its name, a database by its header: SQLite writes its pages in place) or an
    append-style file (:data:`APPENDED_SUFFIXES`), wherever it lies. A database is whole
    pages of at least 512 bytes, so only a file of such a size is opened to read its
    header, and an empty file (which SQLite would make a database of) counts as one, as
    does a file that cannot be read (a copy is the safe side)."""
    if full.endswith(SQLITE_COMPANIONS) or full.endswith(APPENDED_SUFFIXES):
        return True
    if size % 512:
        return False
    try:
        return size == 0 or _sqlite_header(full)
    except OSError:
        return True


_NOT_LINKED: Any = object()  # a step missing from _linked_steps' answer


def _linked_steps(
    root: str, layout: Layout, steps: list[Step], the_plan: Plan | None
) -> dict[int, os.stat_result | None]:
    """The steps whose backup may be a hard link (see :func:`_linkable`: a first run's
    plan has decided, ``the_plan.linked``; a resumed run decides from the journal's
    steps), each with the plan's ``lstat`` of its source (None in a resumed run), by
    which :func:`~orchfs.beneath.link_fresh` passes over a file the plan saw unfit; what
    it links it judges after the link either way."""
    if the_plan is not None:
        linked, stats = the_plan.linked, the_plan.stats
        return {s.i: stats.get(s.source) for s in steps if s.source in linked and s.link is None}
    return {
        s.i: None
        for s in steps
        if s.link is None and _linkable(layout, s.action, s.target, s.mode, s.bytes, f"{root}/{s.source}")
    }


def _backs_up_source(step: Step, backup: bool) -> bool:
    """Whether :func:`_execute` keeps the step's source in the backup (a retired file
    that lost a conflict is kept even without one)."""
    return backup or (step.action == "retire" and bool(step.replaced))


def _stage_backups(
    root: str, steps: list[Step], migration_id: str, backup: bool, linked: dict[int, os.stat_result | None]
) -> set[int]:
    """The first half of a journal batch: keep the sources of ``steps`` in the backup,
    each in the run's own backup directory with no fsync: as a hard link of the source
    for a step in ``linked`` whose source has no other name
    (:func:`~orchfs.beneath.link_fresh`; see :func:`_linkable`), else as a copy written
    in place (:func:`~orchfs.beneath.copy_fresh`, also where the filesystem makes no
    link). Then they are all made durable at once (one ``syncfs``; without it an fsync
    of each file and directory) before any of the steps runs. So a source leaves its v1
    place only once its backup (the new name, or the copy's bytes) is durable, and a
    backup that a crash may have torn or lost belongs to a step whose source is still in
    place (:func:`_discard_unsynced_backups` drops it on resume). Returns the indexes of
    the steps whose backup is made; the others take the step's own path."""
    held = _HELD[root]
    staged: set[int] = set()
    directories: set[str] = set()  # where backups were made
    copies: list[tuple[str, str]] = []  # (directory, name) of copies made with no fsync
    top = _backup_rel(migration_id, "")  # ends in "/"
    here: str | None = None  # the source directory whose descriptors ``fds`` holds
    fds = (-1, -1)
    made_in = ""  # the directory of the last backup made
    src_seen: str | None = None  # the source directory of the last step looked at
    last_dir = ""  # its backup's directory
    for step in steps:
        if not backup and not _backs_up_source(step, backup):  # with a backup, every step
            continue
        src_dir, _, name = step.source.rpartition("/")
        if src_dir != src_seen:  # the steps of one directory run together: joined once
            src_seen = src_dir
            last_dir = top + src_dir if src_dir else top[:-1]  # the backup's directory, the same name
        copied = step.link is None
        linked_here = False
        if copied:
            try:
                if src_dir != here:  # the steps of one directory run together: asked once
                    here = None
                    fds = held.fds(src_dir, last_dir, create=True)
                    here = src_dir
                seen = linked.get(step.i, _NOT_LINKED)
                linked_here = seen is not _NOT_LINKED and link_fresh(fds[0], name, fds[1], name, seen)
                if not linked_here:
                    copy_fresh(fds[0], name, fds[1], name)
            except FileNotFoundError:
                continue  # moved by an earlier run, or gone: the step itself settles it
            except OSError:  # nothing found here is trusted: the careful copy makes it anew
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=held.fd(last_dir))
                copied = False
        if not copied:  # a link, or anything odd: the careful copy, with its own errors
            here = None  # it may release the held directories
            source = f"{root}/{step.source}"
            if not _lexists(source):
                continue
            _backup(root, source, f"{root}/{top}{step.source}")
        # A copy made here has bytes to flush; a link (the source's own bytes) and a
        # careful copy (durable on its own) only a new entry in their directory.
        directories.add(last_dir)
        made_in = last_dir
        if copied and not linked_here:
            copies.append((last_dir, name))
        staged.add(step.i)
        checkpoint("migrate.backup")  # linked or copied, not yet durable
    if staged:  # on the filesystem of a backup made (the last step's may have no directory)
        _make_durable(held, made_in, directories, copies)
        checkpoint("migrate.synced")  # durable, their steps not yet run
    return staged


def _make_durable(
    held: _HeldDirs, anywhere: str, directories: set[str], copies: list[tuple[str, str]]
) -> None:
    """Make a batch's backups durable: the new entries in ``directories``, and the bytes
    of ``copies`` (directory and name of each copy written with no fsync). With copies:
    ``syncfs`` on the backup's filesystem (``anywhere``: a held directory on it); where
    there is none, an fsync of each copy. Then, and for a batch of hard links and
    careful copies alone (no bytes of their own to flush: not a flush of every other
    program's writes on the filesystem), an fsync of every directory above the new
    entries up to the state directory (a link's entry and its inode's new link count
    are one journal transaction)."""
    if copies and sync_filesystem(held.fd(anywhere)):
        return
    for directory, name in copies:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=held.fd(directory))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    above: set[str] = set()
    for directory in directories:
        parts = directory.split("/")
        above.update("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))
    for directory in sorted(above, key=len, reverse=True):
        os.fsync(held.fd(directory))


def _discard_unsynced_backups(root: str, steps: list[Step], migration_id: str, backup: bool) -> None:
    """Before a resumed run: the backup of a step not recorded done may have been copied
    or linked and never made durable (:func:`_stage_backups`), so it may be torn; while
    the step's source is still at its v1 place, the backup is removed (a link: only that
    name, the source keeps its bytes), to be made again from it. (The backup of a step
    whose source has left was durable before it left.)"""
    for step in steps:
        if _backs_up_source(step, backup) and _lexists(f"{root}/{step.source}"):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                _unlink(f"{root}/{_backup_rel(migration_id, step.source)}")


def _execute(
    root: str,
    step: Step,
    migration_id: str,
    backup: bool,
    moved: dict[str, str],
    fresh: set[str] | None = None,
) -> None:
    """Perform one planned step; safe to repeat after a crash at any point.

    ``fresh`` (first pass only) holds the directories this run created, root-relative:
    a rename into one of them cannot find anything in its way, so it skips the careful
    checks (:func:`_rename_fresh`, in sequential runs, which hold their directories).
    """
    if fresh is not None and step.action == "rename" and step.link is None:
        held = _HELD.get(root)
        if held is not None and _rename_fresh(held, root, step, migration_id if backup else None, fresh):
            return
    source = f"{root}/{step.source}"
    target = f"{root}/{step.target}"
    backup_path = f"{root}/{STATE_DIR}/{BACKUP_DIR}/{migration_id}/{step.source}"
    if step.action == "retire":
        if _lexists(source):
            if backup or step.replaced:
                _backup(root, source, backup_path)
            _unlink(source)
        return
    if step.action == "replace":  # --prefer legacy: the contained copy is put aside
        aside = os.path.join(
            root,
            STATE_DIR,
            BACKUP_DIR,
            migration_id,
            STATE_DIR + "-replaced",
            step.target[len(STATE_DIR) + 1 :],
        )
        if _lexists(source) and _lexists(target):
            _backup(root, target, aside)
            _unlink(target)
    if not _lexists(source):
        return  # already moved
    if _lexists(target):
        if _same_bytes(source, target):
            _unlink(source)
            return
        _unlink(target)  # a copy torn by a crash before its rename: redo it
    if backup:
        _backup(root, source, backup_path)
    checkpoint("migrate.move")
    _place(source, target, "copy" if step.action == "copy" else "rename", step.link, root, moved)


def _execute_remote(root: str, step: Step, migration_id: str, backup: bool, store: Any) -> None:
    """One step towards a state directory on another backend (upload, verify, delete)."""
    source = f"{root}/{step.source}"
    backup_path = f"{root}/{STATE_DIR}/{BACKUP_DIR}/{migration_id}/{step.source}"
    if not _lexists(source):
        return  # already done
    if backup or step.replaced:
        _backup(root, source, backup_path)
    if step.action == "replace":
        aside = f"{root}/{STATE_DIR}/{BACKUP_DIR}/{migration_id}/{STATE_DIR}-replaced/{step.rel}"
        if not _lexists(aside):
            _download(store, step.rel, aside)
    if step.action != "retire":
        _upload(source, store, step.rel)
    _unlink(source)


def _undo_remote(root: str, step: Step, backup_root: str, store: Any) -> None:
    source = f"{root}/{step.source}"
    if step.action == "retire":
        backup_path = f"{backup_root}/{step.source}"
        if not _lexists(source) and _lexists(backup_path):
            _copy_or_rename(backup_path, source)
        _restore_meta(source, step)
        return
    unchanged = False
    if not _lexists(source) and store.exists(step.rel):
        if step.link is not None:
            _ensure_parent(source)
            _symlink(step.link, source)
        else:
            _download(store, step.rel, source)
            kept = f"{backup_root}/{step.source}"
            # The backup tells whether the file changed while it lived in the store.
            unchanged = _lexists(kept) and _sha256_file(kept) == _sha256_file(source)
    if store.exists(step.rel):
        aside = f"{backup_root}/{STATE_DIR}-replaced/{step.rel}"
        if step.action == "replace" and _lexists(aside):
            _upload(aside, store, step.rel)
        else:
            store.remove(step.rel)
    _restore_meta(source, step, unchanged)


def _legacy_dirs(root: str, moves: list[Step]) -> dict[str, list[int]]:
    """v1 directories that hold moved files: their mode and mtime, to restore on rollback."""
    out: dict[str, list[int]] = {}
    for parent in dict.fromkeys(step.source.rpartition("/")[0] for step in moves):
        parts = parent.split("/") if parent else []
        for depth in range(1, len(parts) + 1):
            rel = "/".join(parts[:depth])
            if rel not in out:
                st = os.lstat(os.path.join(root, rel))
                out[rel] = [stat.S_IMODE(st.st_mode), st.st_mtime_ns]
    return out


def _remove_empty_dirs(root: str, rels: list[str]) -> None:
    for rel in sorted(rels, key=lambda r: r.count("/"), reverse=True):
        with contextlib.suppress(OSError):
            _rmdir(os.path.join(root, rel))


def apply(
    root: Any,
    *,
    prefer: str | None = None,
    backup: bool = True,
    jobs: int = 1,
    layout: Any = None,
    progress: Callable[[int, int], None] | None = None,
    lock_timeout: float = 10.0,
    copy: bool = False,
    storage: str | None = None,
    storage_options: dict[str, Any] | None = None,
    retire_leftovers: bool = False,
) -> Result:
    """Migrate ``root`` (or finish an interrupted migration). See the module docstring."""
    if prefer not in (None, "new", "legacy"):
        raise ValueError(f"prefer={prefer!r}: use 'new' or 'legacy'")
    if jobs < 1:
        raise ValueError(f"jobs={jobs}: give at least 1")
    root = _root(root)
    layout = coerce_layout(layout)
    storage = None if storage is None else _absolute_storage(storage)
    # Before the lock, which makes .orchestrator/ in the root (a new entry: a new mtime).
    root_mtime_ns = os.stat(root).st_mtime_ns
    state = _state_store(root, storage, storage_options)
    remote = _remote_store(root, storage, storage_options)
    with _repository_lock(state, lock_timeout), _guarded(root, layout):
        found = journals(root)
        pending = [p for p in found if Journal.status(p) == "unfinished"]
        if pending:
            records = read_journal(pending[-1], layout)
            recorded = _recorded_storage(records[0], storage, os.path.relpath(pending[-1], root))
            remote = _remote_store(root, recorded, storage_options)
            return _run(root, pending[-1], records, layout, jobs, progress, resumed=True, remote=remote)
        if [p for p in found if Journal.status(p) == "rolling-back"]:
            raise OrchFSError(
                "a rollback was interrupted: run `orchfs migrate --rollback` again to finish it"
            )
        with _holding(root):  # the plan's look at each target is one fstatat, too
            the_plan = plan(
                root,
                layout=layout,
                copy=copy,
                storage=storage,
                storage_options=storage_options,
                retire_leftovers=retire_leftovers,
                backup=backup,
            )
        if the_plan.conflicts and prefer is None:
            raise MigrationConflictError(
                f"{len(the_plan.conflicts)} conflict(s): both copies exist and differ "
                f"({', '.join(c.source for c in the_plan.conflicts[:5])}); nothing was moved. "
                "Rerun with --prefer new or --prefer legacy.",
                the_plan,
            )
        if not the_plan.moves and not the_plan.conflicts:
            return Result(the_plan, False, "nothing to migrate: the repository already uses the v2 layout")
        if the_plan.blocked:
            raise SQLiteInUseError(the_plan.blocked)
        if not the_plan.room:
            raise OSError(
                f"not enough free space: {the_plan.copy_bytes} bytes to copy and "
                f"{the_plan.backup_bytes} to back up, {the_plan.free_bytes} free; make room, or "
                "pass --no-backup"
            )
        steps = _steps(root, the_plan, prefer, None if remote is None else remote.url(""))
        from .meta import ensure_initialized, read_meta

        ensure_initialized(state, root, True)  # FORMAT and meta.json, so that the repo is v2
        portable = bool((read_meta(state) or {}).get("portable"))
        os.makedirs(os.path.join(root, STATE_DIR), exist_ok=True)  # the journal stays local
        path = os.path.join(root, STATE_DIR, JOURNAL_DIR, f"{the_plan.migration_id}.jsonl")
        records = [
            begin_record(
                the_plan.migration_id,
                backup=backup,
                dirs=_legacy_dirs(root, steps),
                root_mtime_ns=root_mtime_ns,
                root=root,
                storage=storage if remote is not None else None,
                steps=len(steps),
            )
            # What .gitignore held before the run adds .orchestrator/ to it (None: portable).
            | {"gitignore": None if portable else _file_snapshot(root, ".gitignore")},
            *intent_records(steps),
        ]
        Journal.create(path, records)
        return _run(
            root,
            path,
            records,
            layout,
            jobs,
            progress,
            resumed=False,
            the_plan=the_plan,
            remote=remote,
            steps=steps,
        )


def _steps(root: str, the_plan: Plan, prefer: str | None, base: str | None) -> list[Step]:
    """The journal's steps for a plan: its moves, then its conflicts as ``prefer`` settles
    them, each with its v1 mode, mtime and link text (``base``: the URL of a state
    directory on another backend, which each step's ``rel`` is relative to)."""
    stats, moves = the_plan.stats, the_plan.moves
    # A retirement the plan keeps in the backup, and every conflict, replaces what it meets.
    replacing = the_plan.keep
    settled = []
    for conflict in the_plan.conflicts:
        # The later of two legacy locations never replaces the first: it is retired
        # into the backup (kept even without one), whichever copy is preferred.
        action = "retire" if prefer == "new" or conflict.other else "replace"
        size = os.lstat(f"{root}/{conflict.source}").st_size
        settled.append(Move(conflict.source, conflict.target, size, action))
    if settled:
        replacing = replacing | {m.source for m in settled}
    steps = []
    is_link = stat.S_ISLNK
    make = Step._make  # one call per step, not the named tuple's keyword-aware __new__
    for index, (source, target, size, action) in enumerate(itertools.chain(moves, settled)):
        replaced = True if source in replacing else None
        st = stats.get(source) or os.lstat(f"{root}/{source}")
        mode = st.st_mode
        link = os.readlink(f"{root}/{source}") if is_link(mode) else None
        rel = None if base is None else target[len(base) :].lstrip("/")
        steps.append(
            make((index, source, target, size, action, mode & 0o7777, st.st_mtime_ns, link, replaced, rel))
        )
    return steps


def _plan_of_steps(migration_id: str, steps: list[Step]) -> Plan:
    """The plan a journal recorded, as a Plan (for results of resumed runs and rollbacks)."""
    moves = tuple(Move(s.source, s.target, s.bytes, s.action) for s in steps)
    return Plan(migration_id, moves, (), (), None)


@dataclass(frozen=True)
class LocalMover:
    """Moves steps into ``<root>/.orchestrator`` on the same disk, and back."""

    root: str
    migration_id: str
    backup: bool
    moved: dict[str, str] = field(default_factory=dict)
    fresh: set[str] | None = None  # directories this run made itself (no checks inside)
    staged: set[int] = field(default_factory=set)  # steps whose backup is made (_stage_backups)
    # Steps whose backup may be a hard link (_linkable), with the plan's lstat of the source.
    linked: dict[int, os.stat_result | None] = field(default_factory=dict)

    def execute(self, step: Step) -> None:
        backup = self.backup and step.i not in self.staged
        _execute(self.root, step, self.migration_id, backup, self.moved, self.fresh)

    def undo(self, step: Step, backup_root: str) -> None:
        _undo(self.root, step, backup_root)


@dataclass(frozen=True)
class RemoteMover:
    """Moves steps to a state directory on another backend (upload, verify, delete), and back."""

    root: str
    migration_id: str
    backup: bool
    store: Any

    def execute(self, step: Step) -> None:
        _execute_remote(self.root, step, self.migration_id, self.backup, self.store)

    def undo(self, step: Step, backup_root: str) -> None:
        _undo_remote(self.root, step, backup_root, self.store)


def _run(
    root: str,
    path: str,
    records: list[dict[str, Any]],
    layout: Layout,
    jobs: int,
    progress: Callable[[int, int], None] | None,
    resumed: bool,
    the_plan: Plan | None = None,
    remote: Any = None,
    steps: list[Step] | None = None,
) -> Result:
    """Run the steps of a journal's records (``steps``: the ones a fresh run has just
    recorded there, rather than parsed back from the records)."""
    begin = records[0]
    migration_id = begin["id"]
    if steps is None:
        steps = steps_of(records)
    done = {r["i"] for r in records if r.get("t") == "done"}
    todo = [s for s in steps if s.i not in done]
    journal = Journal(path)
    finished = len(done)
    total = len(steps)
    moved = moved_paths(steps) if any(s.link for s in steps) else {}
    try:
        backup = begin.get("backup", True)
        mover: LocalMover | RemoteMover = (
            RemoteMover(root, migration_id, backup, remote)
            if remote is not None
            else LocalMover(
                root,
                migration_id,
                backup,
                moved,
                None if resumed else set(),
                linked=_linked_steps(root, layout, todo, the_plan) if backup else {},
            )
        )
        if resumed:
            _discard_unsynced_backups(root, todo, migration_id, backup)
        logger.info(
            "%s migration %s: %d of %d step(s) to run",
            "resuming" if resumed else "starting",
            migration_id,
            len(todo),
            total,
        )

        def one(step: Step) -> int:
            checkpoint("migrate.step")
            logger.debug(
                "migration %s step %d: %s %s -> %s",
                migration_id,
                step.i,
                step.action,
                step.source,
                step.target,
            )
            mover.execute(step)
            return step.i

        if jobs > 1 and any(s.action in ("copy", "upload") for s in todo):
            from concurrent.futures import ThreadPoolExecutor  # only parallel runs need threads

            with ThreadPoolExecutor(max_workers=jobs) as pool:
                for start in range(0, len(todo), DONE_BATCH):
                    batch = todo[start : start + DONE_BATCH]
                    if isinstance(mover, LocalMover):  # the batch's backups first, durable together
                        with _holding(root):
                            mover.staged.update(
                                _stage_backups(root, batch, migration_id, backup, mover.linked)
                            )
                    for index in pool.map(one, batch):
                        journal.done(index)
                        finished += 1
                        if progress:
                            progress(finished, total)
        elif remote is not None:
            for step in todo:
                journal.done(one(step))
                finished += 1
                if progress:
                    progress(finished, total)
        else:
            whole = isinstance(mover, LocalMover) and mover.fresh is not None  # a first pass
            with _holding(root):
                position = staged_to = looked_to = 0
                while position < len(todo):
                    # A directory is asked about once: if it cannot move whole, its files
                    # move one by one without asking again at each.
                    group = _whole_directory(todo, position) if whole and position >= looked_to else None
                    if group is not None:
                        looked_to = position + group.steps
                    whole_group = group if group is not None and group.alone else None
                    end = position + (whole_group.steps if whole_group is not None else 1)
                    if end > staged_to and isinstance(mover, LocalMover):
                        # The backups of the next batch first, durable together (all those
                        # of a directory that may move whole: its files leave together).
                        start = max(position, staged_to)
                        staged_to = max(end, start + DONE_BATCH)
                        mover.staged.update(
                            _stage_backups(root, todo[start:staged_to], migration_id, backup, mover.linked)
                        )
                    if (
                        whole_group is not None
                        and (not backup or mover.staged.issuperset(s.i for s in todo[position:end]))
                        and _move_directory(root, whole_group)
                    ):
                        journal.done_all(step.i for step in todo[position:end])
                        position = end
                        finished += whole_group.steps
                        _release_held(root)
                        if progress:
                            progress(finished, total)
                        continue
                    journal.done(one(todo[position]))
                    position += 1
                    finished += 1
                    if progress:
                        progress(finished, total)
                    if finished % DONE_BATCH == 0:
                        _release_held(root)
        journal.sync()
        _remove_empty_dirs(root, list(begin.get("dirs", {})))
        if remote is None:
            _tighten_moved(root, steps)
            _tighten_secrets(root, steps, migration_id)
        if "gitignore" in begin and begin["gitignore"] is not None:
            from .meta import ensure_gitignored

            ensure_gitignored(root)
        checkpoint("migrate.finish")
        journal.write({"t": "end"}, sync=True)
    finally:
        journal.close()
    logger.info("migration %s finished: %d file(s)", migration_id, total)
    if the_plan is None:
        the_plan = _plan_of_steps(migration_id, steps)
    verb = "finished the interrupted migration of" if resumed else "migrated"
    where = f"{STATE_DIR}/" if remote is None else remote.url("")
    return Result(
        the_plan,
        True,
        f"{verb} {total} file(s) into {where} (id {migration_id})",
        resumed=resumed,
        steps=len(todo),
    )


SECRETS_PREFIX = f"{STATE_DIR}/secrets/"


def _tighten_secrets(root: str, steps: list[Step], migration_id: str) -> None:
    """Moved secret files 0600 and their directories 0700, as doctor expects; so too the
    run's backups of secret material (a v1 secret kept as it was, a contained one put
    aside by ``--prefer legacy``) and the backup directories above them up to the run's
    own. Rollback gives the files and v1 directories their v1 modes back."""
    guard = Beneath(root)
    backup_top = f"{STATE_DIR}/{BACKUP_DIR}/{migration_id}"
    for step in steps:
        target = step.target
        if not target.startswith(SECRETS_PREFIX):
            continue
        _make_private(guard, f"{backup_top}/{step.source}", backup_top)
        if step.action == "replace":
            _make_private(
                guard, f"{backup_top}/{STATE_DIR}-replaced/{target[len(STATE_DIR) + 1 :]}", backup_top
            )
        if step.action != "retire":
            _make_private(guard, target, SECRETS_PREFIX.rstrip("/"))


def _tighten_moved(root: str, steps: list[Step]) -> None:
    """Everything moved into the state directory keeps only :data:`RESTORED_BITS` of its
    mode: the moved files, and the directories above them up to the state directory (a
    v1 directory moved whole keeps its own mode otherwise). The journal keeps each v1
    mode, and a rollback restores the same bits, so this loses nothing a rollback gives.
    A file whose v1 mode (the journal's, read just before the plan) has no bit to drop
    is not looked at again: only the directories above it are."""
    guard = Beneath(root)
    seen: set[str] = set()
    try:
        for step in steps:
            if step.action == "retire" or step.link is not None:
                continue
            rel = step.target
            if step.mode is not None and not step.mode & ~RESTORED_BITS:
                rel = rel.rpartition("/")[0]
            while rel.startswith(_STATE_PREFIX) and rel not in seen:
                seen.add(rel)
                _drop_loose_bits(guard, rel)
                rel = rel.rpartition("/")[0]
    finally:
        guard.close()  # not left to the collector: a run leaves no descriptor open


def _drop_loose_bits(guard: Beneath, rel: str) -> None:
    """``rel`` without set-ID, sticky and write-by-others bits, where it has any."""
    with contextlib.suppress(PathEscapeError, FileNotFoundError, NotADirectoryError):
        mode = stat.S_IMODE(guard.lstat(rel).st_mode)
        if mode & ~RESTORED_BITS:
            _chmod_own(guard, rel, mode & RESTORED_BITS)


def _make_private(guard: Beneath, rel: str, top: str) -> None:
    """``rel`` 0600 and each directory above it up to ``top`` (included) 0700, where there."""
    _chmod_own(guard, rel, PRIVATE_FILE_MODE)
    folder = rel.rpartition("/")[0]
    while len(folder) >= len(top):
        _chmod_own(guard, folder, PRIVATE_DIR_MODE)
        folder = folder.rpartition("/")[0]


def _chmod_own(guard: Beneath, rel: str, mode: int) -> None:
    """chmod what ``rel`` names itself: never what a symlink there points at, never a file
    outside through a hard link (:meth:`Beneath.chmod`), never opening a FIFO."""
    with contextlib.suppress(PathEscapeError, FileNotFoundError, NotADirectoryError):
        guard.chmod(rel, mode)  # a link is refused, a gone entry is nothing of ours


def _file_snapshot(root: str, rel: str) -> dict[str, Any]:
    """A small file's bytes, mode and mtime (or that it is absent), for the journal."""
    import base64

    full = os.path.join(root, rel)
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return {"exists": False}
    if not stat.S_ISREG(st.st_mode) or st.st_size > 1 << 20:
        return {"exists": True, "untouched": True}  # a link or a huge file: never edited
    with open(full, "rb") as f:
        data = f.read()
    return {
        "exists": True,
        "data": base64.b64encode(data).decode(),
        "mode": stat.S_IMODE(st.st_mode),
        "mtime_ns": st.st_mtime_ns,
    }


def _restore_gitignore(root: str, before: Any) -> None:
    """Take back the line a migration added to .gitignore, if nothing else changed.

    ``before`` comes from the journal: anything but the shape :func:`_file_snapshot`
    writes leaves the file alone."""
    import base64
    import binascii

    from .meta import IGNORE_LINE

    if not isinstance(before, dict) or before.get("untouched") or type(before.get("exists")) is not bool:
        return
    mode, mtime = before.get("mode"), before.get("mtime_ns")
    try:
        old = base64.b64decode(before.get("data", ""), validate=True) if before["exists"] else b""
    except (binascii.Error, TypeError, ValueError):
        return
    if before["exists"] and not (type(mode) is int and 0 <= mode <= 0o7777 and type(mtime) is int):
        return
    full = os.path.join(root, ".gitignore")
    try:
        fd = os.open(full, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return  # gone, or a link: never written through
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return  # a FIFO (a read would block) or a hard link (maybe a file outside)
        with os.fdopen(os.dup(fd), "rb") as f:
            now = f.read()
        added = now[len(old) :].lstrip(b"\n")
        if not now.startswith(old) or added != IGNORE_LINE.encode() + b"\n":
            return  # edited since: the user's file stays as it is
        if not before["exists"]:
            os.unlink(full)
            return
        os.ftruncate(fd, len(old))
        os.fchmod(fd, mode & RESTORED_BITS)
        os.utime(fd, ns=(mtime, mtime))
    finally:
        os.close(fd)


def rollback(
    root: Any,
    migration_id: str | None = None,
    *,
    lock_timeout: float = 10.0,
    layout: Any = None,
    storage: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Result:
    """Restore the v1 layout of a migration (the newest one if no id is given).

    A migration to another backend is rolled back from it: pass the same
    ``storage_options`` (they are never written to the journal).
    """
    root = _root(root)
    layout = coerce_layout(layout)
    storage = None if storage is None else _absolute_storage(storage)
    state = _state_store(root, storage, storage_options)
    with _repository_lock(state, lock_timeout), _guarded(root, layout) as guard:
        candidates = journals(root)
        if migration_id is not None:
            check_id(migration_id, "migration id", "--id")
            candidates = [p for p in candidates if os.path.basename(p) == f"{migration_id}.jsonl"]
            if not candidates:
                raise FileNotFoundError(f"no migration {migration_id!r} under {STATE_DIR}/{JOURNAL_DIR}/")
        live = [p for p in candidates if Journal.status(p) != "rolled-back"]
        empty_plan = _plan_of_steps(migration_id or "", [])
        if not live:
            return Result(empty_plan, False, "nothing to roll back")
        path = live[-1]
        records = read_journal(path, layout)
        begin = records[0]
        mid = begin["id"]
        steps = steps_of(records)
        recorded = _recorded_storage(begin, storage, os.path.relpath(path, root))
        remote = _remote_store(root, recorded, storage_options)
        _refuse_linked_restores(root, steps, os.path.join(root, STATE_DIR, BACKUP_DIR, mid), remote is None)
        journal = Journal(path)
        logger.info("rolling back migration %s: %d step(s)", mid, len(steps))
        journal.write({"t": "rollback-begin"}, sync=True)
        for name, (mode, _mtime) in sorted(begin.get("dirs", {}).items()):
            try:
                guard.lstat(name)
            except FileNotFoundError:
                guard.makedirs(name)
                guard.chmod(name, mode & RESTORED_BITS)
        backup_root = os.path.join(root, STATE_DIR, BACKUP_DIR, mid)
        mover: LocalMover | RemoteMover = (
            RemoteMover(root, mid, begin.get("backup", True), remote)
            if remote is not None
            else LocalMover(root, mid, begin.get("backup", True))
        )
        with _holding(root) if remote is None else contextlib.nullcontext():
            for number, step in enumerate(reversed(steps), start=1):
                checkpoint("rollback.step")
                mover.undo(step, backup_root)
                if number % DONE_BATCH == 0:
                    _release_held(root)
        if remote is None:
            _carry_back_new_files(root, layout, begin)
        _restore_gitignore(root, begin.get("gitignore"))
        missing = [
            s.source
            for s in steps
            if not _lexists(os.path.join(root, s.source)) and not _vanished_companion(s)
        ]
        for name, (mode, mtime) in sorted(begin.get("dirs", {}).items(), key=lambda kv: -kv[0].count("/")):
            guard.chmod(name, mode & RESTORED_BITS)
            guard.utime(name, ns=(mtime, mtime))
        if not missing:  # the backup goes only once everything is back
            with contextlib.suppress(FileNotFoundError):
                guard.remove_tree(f"{STATE_DIR}/{BACKUP_DIR}/{mid}")
        _prune_state_dirs(root)
        with contextlib.suppress(OSError):
            os.utime(root, ns=(begin["root_mtime_ns"], begin["root_mtime_ns"]))
        checkpoint("rollback.finish")
        journal.write({"t": "rolled-back"}, sync=True)
        journal.close()
        if missing:
            raise RollbackIncompleteError(
                f"rolled back migration {mid}, but {len(missing)} file(s) could not be restored "
                f"(removed after the migration, or migrated without a backup): "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; whatever remains of "
                f"them is in {os.path.relpath(backup_root, root)}/ and {STATE_DIR}/"
            )
        return Result(
            _plan_of_steps(mid, steps), True, f"rolled back migration {mid}: the v1 layout is restored"
        )


def _undo(root: str, step: Step, backup_root: str) -> None:
    source = os.path.join(root, step.source)
    target = os.path.join(root, step.target)
    backup_path = os.path.join(backup_root, step.source)
    if step.action == "retire":
        if not _lexists(source) and _lexists(backup_path):
            _ensure_parent(source)
            _copy_or_rename(backup_path, source)
            _restore_meta(source, step)  # a backup of secret material was made private
        elif not _lexists(source) and _lexists(target) and not step.replaced:
            _copy_exact(target, source)  # retired without a backup: it held these bytes
            _restore_meta(source, step)
        return
    if step.action == "replace":
        aside = os.path.join(backup_root, STATE_DIR + "-replaced", step.target[len(STATE_DIR) + 1 :])
        if _lexists(target) and not _lexists(source):
            _ensure_parent(source)
            _copy_or_rename(target, source)
        if _lexists(aside):
            _copy_or_rename(aside, target)
        _restore_meta(source, step)
        return
    if _lexists(target):
        _ensure_parent(source)
        if step.link is not None:
            with contextlib.suppress(FileNotFoundError):
                _unlink(source)
            _symlink(step.link, source)
            _unlink(target)
        else:
            _copy_or_rename(target, source)
    elif not _lexists(source) and _lexists(backup_path) and not _vanished_companion(step):
        _copy_or_rename(backup_path, source)
    _restore_meta(source, step)


def _refuse_linked_restores(root: str, steps: list[Step], backup_root: str, local: bool) -> None:
    """Before anything is put back: a symlink (or a FIFO, a device, a directory) where a
    rollback would take a file back to its v1 location (its backup; on local disk the
    migrated copy and a replaced file kept aside) was planted, and at the root the v1
    tool would read and write through it (or block on it)."""
    for step in steps:
        if step.link is not None:
            continue  # a v1 link: put back from the journal's text
        places = [os.path.join(backup_root, step.source)]
        if local:
            places.append(os.path.join(root, step.target))
        if local and step.action == "replace":
            places.append(
                os.path.join(backup_root, STATE_DIR + "-replaced", step.target[len(STATE_DIR) + 1 :])
            )
        for place in places:
            try:
                mode = _lstat(place).st_mode
            except (FileNotFoundError, NotADirectoryError):
                continue
            if not stat.S_ISREG(mode):
                what = "a symlink" if stat.S_ISLNK(mode) else "not a regular file"
                raise UnsafeStateError(
                    f"{place} is {what} where the migration kept the file {step.source}; a "
                    "rollback puts back only files where files were: remove it, then roll back again",
                    place,
                )


def _vanished_companion(step: Step) -> bool:
    """A SQLite ``-wal``/``-shm``/``-journal`` is gone because SQLite folded it into its
    database (or rolled it back): its old bytes must never come back over the database's
    new ones."""
    return step.source.endswith(SQLITE_COMPANIONS)


def _copy_or_rename(src: str, dst: str) -> None:
    _ensure_parent(dst)
    try:
        _rename(src, dst)
    except OSError:  # another device: a verified copy
        _copy_exact(src, dst)
        _unlink(src)


def _restore_meta(path: str, step: Step, unchanged: bool = False) -> None:
    """v1 mode back; v1 mtime back unless the file was changed after the migration."""
    if not _lexists(path):
        return
    link = step.link is not None
    if not link:
        found = _guard_of(path)
        if found is None:
            os.chmod(path, step.mode & RESTORED_BITS)
        else:
            found[0].chmod(found[1], step.mode & RESTORED_BITS)  # a link where a file was is refused
        changed = _lstat(path).st_mtime_ns != step.mtime_ns and step.action != "retire"
        if changed and not unchanged:
            return  # a later change, carried back: its own mtime tells the truth
    with contextlib.suppress(OSError, NotImplementedError):
        _utime(path, (step.mtime_ns, step.mtime_ns))


def _carry_back_new_files(root: str, layout: Layout, begin: dict[str, Any]) -> None:
    """Files created in migrated directories after the migration go back with them."""
    for entry in layout.entries:
        if not entry.is_dir or not entry.legacy:
            continue
        legacy_dir = entry.legacy[0]
        if legacy_dir not in begin.get("dirs", {}):
            continue
        contained = os.path.join(root, STATE_DIR, entry.logical)
        if not os.path.isdir(contained):
            continue
        for top, _dirs, files in os.walk(contained):
            for name in files:
                if name.startswith(MARKER_PREFIXES):
                    continue
                full = os.path.join(top, name)
                if os.path.islink(full):
                    continue  # planted (orchfs makes none here): never put where the v1 tool follows it
                rel = os.path.relpath(full, contained)
                _copy_or_rename(full, os.path.join(root, legacy_dir, rel))


def _prune_state_dirs(root: str) -> None:
    """Remove directories the migration left empty inside the state directory."""
    state = os.path.join(root, STATE_DIR)
    for top, _dirs, files in os.walk(state, topdown=False):
        rel = os.path.relpath(top, state)
        if rel.split(os.sep)[0] in ("locks", "migrations", "tmp", "."):
            continue
        for name in files:
            if name.startswith(WHITEOUT_PREFIX):
                with contextlib.suppress(OSError):
                    _unlink(os.path.join(top, name))
        with contextlib.suppress(OSError):
            _rmdir(top)
    with contextlib.suppress(OSError):
        _unlink(os.path.join(state, MARKER_SENTINEL))


__all__ = [
    "MigrationConflictError",
    "Move",
    "MoveConflict",
    "Plan",
    "Result",
    "RollbackIncompleteError",
    "SQLiteInUseError",
    "apply",
    "plan",
    "rollback",
    "unfinished",
    "unnamed_files",
]
