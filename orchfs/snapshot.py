"""Snapshots: a whole state directory as one file, to move it between machines (DESIGN §7).

A snapshot is a gzip-compressed tar of ``.orchestrator/`` (whichever backend holds it),
minus ``locks/``, ``tmp/``, ``superseded/`` and temp files. Secrets travel as they are stored:
encrypted. With ``encrypt=True`` the whole archive is sealed with the master key in
orchfs's secret format (AES-256-GCM), so a snapshot can sit on shared storage.

Import is all or nothing and bounded (DESIGN §3): members stream into a staging
directory under ``tmp/`` through the storage adapter (which never follows a symlink),
checked as they come (regular files and directories only, every name a plain relative
path, sizes within ``max_bytes`` in total, default 1 GiB); the stored state among them
is checked as orchfs checks it on use; only then are the files moved into place.
Supersede records (``superseded/``) in an archive are dropped: each vouches that a legacy file of
the machine that wrote it is an old copy, and one carried in could turn a conflict
here into a silent retire of a file that differs (as fetched refs never move a local
branch).
``meta.json`` keeps its ``repo_id`` (the secret namespace) while its root becomes the
new one. An import into a state directory that already holds state is refused unless
``force`` is given. A snapshot that is refused leaves nothing behind: it is staged and
checked before the repository lock is taken, and a state directory that the import
created is removed again.

The swap is journaled: ``tmp/import-<id>.swap`` names the staged members before the
first move, so an import killed during it (``kill -9``, a power cut) is finished by
running the import again or by ``orchfs doctor --fix`` (:func:`finish_interrupted`),
never left half in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import stat
import uuid
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .atomic import PRIVATE_FILE_MODE, UMASK
from .beneath import Beneath, read_all
from .errors import ManifestError, MetaError, PathEscapeError, SnapshotError, StateError, UnsafeStateError
from .faults import checkpoint
from .journal import JOURNAL_DIR
from .meta import FORMAT_FILE, META_FILE
from .paths import validate_stored
from .supersede import RECORD_DIR

if TYPE_CHECKING:
    from .storage import Storage

# Never in a snapshot: locks, temp files, and supersede records (evidence about this
# machine's legacy files, none about another's; an import drops any it is given).
EXCLUDED_TOP = frozenset({"locks", "tmp", RECORD_DIR})
SNAPSHOT_NAMESPACE = "orchfs-snapshot"
SNAPSHOT_NAME = "snapshot"
PRIVATE_DIRS = ("secrets",)
CONFIG_FILE = "config.yaml"
# The local configuration's v1 names: a migration backup of one (or of config.yaml) is put
# back where it is read by `orchfs migrate --rollback`, so it is checked as config.yaml is.
V1_CONFIG_FILES = (".orchestra.yaml", ".orchestrator.yaml")
# Settings of config.yaml that decide where orchfs reads or writes (never from a snapshot).
PLACING_KEYS = ("include",)
PLACING_STATE_KEYS = ("storage", "persist")
DEFAULT_MAX_BYTES = 1 << 30  # --max-bytes: what a snapshot may hold in total
STAGING_DIR = "tmp"
STAGING_PREFIX = "import-"
ASIDE_SUFFIX = ".replaced"
SWAP_SUFFIX = ".swap"  # the swap's journal, beside its staging directory
_STAGING_NAME = re.compile(r"import-[0-9a-f]{12}")
# Room for tar headers and padding beyond the members' own bytes (512 bytes a member),
# and for compression that does not shrink (random or encrypted members).
STREAM_SLACK = 64 << 20
ARCHIVE_SLACK = 64 << 20


class SnapshotInfo(NamedTuple):
    """What an export wrote or an import read."""

    path: str
    files: int
    bytes: int
    encrypted: bool
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "files": self.files,
            "bytes": self.bytes,
            "encrypted": self.encrypted,
            "sha256": self.sha256,
        }


def _included(rel: str) -> bool:
    return rel.partition("/")[0] not in EXCLUDED_TOP


def _mode_of(state: Storage, rel: str) -> int:
    """The file's own mode where the backend keeps modes, else what orchfs would give it."""
    mode = (state.info(rel) or {}).get("mode")
    if mode is not None:
        return stat.S_IMODE(mode)
    return PRIVATE_FILE_MODE if rel.startswith(PRIVATE_DIRS) else 0o644


def _exported(state: Storage, rel: str) -> tuple[bytes, int]:
    """The bytes and mode of the state's own file ``rel``. On local disk one open beneath
    the root with no link followed (not even one that stays inside), then the descriptor's
    own stat and bytes: a link swapped in after the listing is refused, never read."""
    if not state.capabilities.local_path:  # no links off local disk
        return state.read(rel), _mode_of(state, rel)
    disk = state.disk  # type: ignore[attr-defined]
    fd = disk.try_open(state.path_beneath(rel))  # type: ignore[attr-defined]
    try:
        st = os.fstat(fd) if fd >= 0 else None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise SnapshotError(
                f"{state.url(rel)} is a symlink (or on the way through one, or no regular "
                "file): a snapshot carries the state's own files, never what a link leads "
                "to; remove it and export again"
            )
        return read_all(fd, state.url(rel)), stat.S_IMODE(st.st_mode)
    finally:
        if fd >= 0:
            os.close(fd)


def export(fs: Any, path: str | os.PathLike[str], *, encrypt: bool = False, key: Any = None) -> SnapshotInfo:
    """Write the state of ``fs`` to ``path`` (mode 0600, atomically), under the repo lock."""
    state = fs.state_storage
    target = os.path.abspath(os.fspath(path))
    _refuse_inside(state, target)
    import tarfile  # here, not at import: doctor reads this module's names without archives

    archive = io.BytesIO()
    total = 0
    with fs.lock("repo"):
        names = sorted(rel for rel in state.find_files("", include_markers=True) if _included(rel))
        with tarfile.open(fileobj=archive, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
            for rel in names:
                data, mode = _exported(state, rel)
                member = tarfile.TarInfo(rel)
                member.size = len(data)
                member.mode = mode
                tar.addfile(member, io.BytesIO(data))
                total += len(data)
    blob = archive.getvalue()
    if encrypt:
        blob = _seal(fs, blob, key)
    _write_private_file(target, blob)
    return SnapshotInfo(target, len(names), total, encrypt, hashlib.sha256(blob).hexdigest())


def _refuse_inside(state: Storage, target: str) -> None:
    """A snapshot written into the state directory it is taken of would be exported into
    the next snapshot and imported back with it (and swept with the state)."""
    if not state.capabilities.local_path:
        return
    base = os.path.realpath(state.base)
    where = os.path.realpath(os.path.dirname(target))
    if where == base or where.startswith(base + os.sep):
        raise SnapshotError(
            f"{target} is inside the state directory {state.base} that the snapshot is taken of; "
            f"write it outside, e.g. `orchfs snapshot export ../{os.path.basename(target)}`"
        )


def import_snapshot(
    fs: Any,
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    key: Any = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> SnapshotInfo:
    """Restore the snapshot at ``path`` into the state directory of ``fs``, all or nothing.

    Members stream into a staging directory under ``tmp/``; their sizes are checked
    against ``max_bytes`` (in total) from their headers before a byte is written, and
    the decompressed stream as a whole is bounded too (a gzip bomb stops there). The
    stored state among them (meta.json, FORMAT, journals, secrets manifests, session
    and namespace names) is checked as orchfs checks it on use. Only then are the
    files moved into place, each file it replaces put aside until the last one is in;
    any failure leaves the old state as it was.
    """
    source = os.path.abspath(os.fspath(path))
    blob = _read_archive(source, max_bytes)
    digest = hashlib.sha256(blob).hexdigest()
    encrypted = _is_sealed(blob)
    archive = _open_sealed(fs, blob, source, key) if encrypted else blob
    state = fs.state_storage
    check_staging_dir(state)
    placed: frozenset[str] = frozenset()
    if _swap_journals(state):
        with fs.lock("repo"):
            finished = finish_interrupted(fs)
        # This very import, killed during its swap, is finished now; it runs again over
        # the files it placed (the same bytes), since a journal planted with its digest
        # could have placed files no import checked.
        placed = frozenset(name for done in finished if done.sha256 == digest for name in done.members)
    _refuse_existing(state, force, placed)  # early, before anything is staged; again under the lock
    had_state_dir = not state.capabilities.local_path or state.info("") is not None
    mover = ImportMover(state, f"{STAGING_DIR}/{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
    try:
        members = mover.stage(archive, source, max_bytes)
        _check_state(members, fs, source)
        meta = members.get(META_FILE)
        if meta is not None:
            mover.restage(META_FILE, _rehomed_meta(meta.data, fs), meta.mode)
        total = sum(m.size for m in members.values())
        with fs.lock("repo"):
            _refuse_existing(state, force, placed)
            _check_clashes(state, members, source)
            record = {"source": source, "sha256": digest, "files": len(members), "bytes": total}
            mover.swap(members, record)
    except BaseException:
        mover.clean(remove_state_dir=not had_state_dir)  # refused: the repository as found
        raise
    mover.clean()
    return SnapshotInfo(source, len(members), total, encrypted, digest)


@dataclass(frozen=True)
class ImportMover:
    """Every write of an import to the state directory, through its staging directory
    ``staging`` (``tmp/import-<id>``): members stream in, are moved into place with what
    they replace put aside, and the staging directory goes again. The operation decides
    and checks; only this mover (and the functions it alone calls) writes."""

    state: Storage
    staging: str

    def stage(self, archive: bytes, source: str, max_bytes: int) -> dict[str, _Member]:
        self.state.makedirs_private(self.staging)
        return _stage(archive, source, self.state, self.staging, max_bytes)

    def restage(self, name: str, data: bytes, mode: int) -> None:
        """Replace the staged member ``name`` (meta.json, rehomed) with ``data``."""
        self.state.write(f"{self.staging}/{name}", data, mode=mode)

    def swap(self, members: dict[str, _Member], record: dict[str, Any]) -> None:
        _swap(self.state, self.staging, members, record)

    def finish(self, journal: str, members: list[str]) -> None:
        """Complete a swap killed after its journal was written (see :func:`_swap`)."""
        state, staging = self.state, self.staging
        aside = f"{staging}{ASIDE_SUFFIX}"
        for name in members:
            if state.info(f"{staging}/{name}") is None:
                continue  # already in place
            if state.info(name) is not None and state.info(f"{aside}/{name}") is None:
                state.rename(name, f"{aside}/{name}")
            _make_parent(state, name)
            state.rename(f"{staging}/{name}", name)
        _remove_quietly(state, aside)
        _remove_quietly(state, staging)
        state.remove(journal)
        self._remove_tmp()

    def _remove_tmp(self) -> None:
        with contextlib.suppress(OSError):
            self.state.rmdir(STAGING_DIR)  # when nothing else is in it

    def clean(self, *, remove_state_dir: bool = False) -> None:
        """Remove the staging directory (and ``tmp/`` when nothing else is in it);
        ``remove_state_dir``: the state directory too, when the import made it."""
        _remove_quietly(self.state, self.staging)
        self._remove_tmp()
        if remove_state_dir:
            with contextlib.suppress(OSError):
                self.state.rmdir("")


def _refuse_existing(state: Storage, force: bool, placed: frozenset[str] = frozenset()) -> None:
    """Refuse a state directory that holds state, unless ``force``; ``placed``: files an
    interrupted run of this import put in place, which it may put there again."""
    existing = [
        rel
        for rel in state.find_files("", include_markers=True)
        # FORMAT and meta.json: `orchfs init` made them
        if _included(rel) and rel not in (FORMAT_FILE, META_FILE) and rel not in placed
    ]
    if existing and not force:
        raise SnapshotError(
            f"{state.url('')} already holds state ({len(existing)} files); import into an "
            "empty repository, or pass --force to overwrite the files the snapshot has"
        )


class _Member(NamedTuple):
    """A staged file: its mode and size, and its bytes when it is stored state orchfs reads."""

    mode: int
    size: int
    data: bytes = b""


def _read_archive(source: str, max_bytes: int) -> bytes:
    """The snapshot file; one much larger than its contents may be is refused unread."""
    limit = 2 * max_bytes + ARCHIVE_SLACK
    with open(source, "rb") as f:
        blob = f.read(limit + 1)
    if len(blob) > limit:
        raise SnapshotError(
            f"{source} is larger than a snapshot of at most {max_bytes} bytes can be; refused"
        )
    return blob


class _Bounded(io.RawIOBase):
    """The decompressed stream, cut off past ``limit`` bytes (headers and padding count)."""

    def __init__(self, stream: Any, limit: int, source: str) -> None:
        self._stream, self._left, self._source = stream, limit, source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(min(len(buffer), self._left + 1))
        if len(data) > self._left:
            raise SnapshotError(f"{self._source} expands past its limit (a compression bomb?); refused")
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)


def _stage(archive: bytes, source: str, state: Any, staging: str, max_bytes: int) -> dict[str, _Member]:
    """Stream every member into ``staging``, checking names, types and sizes first."""
    out: dict[str, _Member] = {}
    parents: set[str] = set()
    left = max_bytes
    import gzip  # here, not at import: doctor reads this module's names without archives
    import tarfile

    stream = _Bounded(gzip.GzipFile(fileobj=io.BytesIO(archive)), max_bytes + STREAM_SLACK, source)
    try:
        with tarfile.open(fileobj=io.BufferedReader(stream), mode="r|") as tar:
            for member in tar:
                name = _checked_name(member.name, source)
                if name.partition("/")[0] == RECORD_DIR:
                    continue  # evidence about another machine's legacy files: never kept
                if member.isdir():
                    _claim_dir(name, out, parents, source)
                    continue
                if not member.isreg():
                    raise SnapshotError(
                        f"{source}: {member.name!r} is not a regular file (links and devices "
                        "are never restored)"
                    )
                if not _included(name):
                    raise SnapshotError(f"{source}: {name!r} is a lock or temp file; snapshots have none")
                if member.size > left:
                    raise SnapshotError(
                        f"{source}: {name!r} ({member.size} bytes) takes the snapshot past "
                        f"--max-bytes {max_bytes}; refused"
                    )
                left -= member.size
                if name in out or name in parents:
                    raise SnapshotError(f"{source}: {name!r} appears twice (or as a file and a directory)")
                _claim_dir(name.rpartition("/")[0], out, parents, source)
                out[name] = _copy_member(tar, member, state, f"{staging}/{name}", name)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise SnapshotError(f"{source} is not an orchfs snapshot (or is damaged): {exc}") from None
    return out


def _claim_dir(name: str, files: dict[str, _Member], parents: set[str], source: str) -> None:
    """``name`` and its parents are directories: none of them may be a member file."""
    while name and name not in parents:
        if name in files:
            raise SnapshotError(f"{source}: {name!r} is both a file and a directory; refused")
        parents.add(name)
        name = name.rpartition("/")[0]


def _copy_member(tar: Any, member: Any, state: Any, rel: str, name: str) -> _Member:
    # A secret is 0600 whatever the archive says (a planted 0666 would let anyone read it);
    # any other file gets the archive's bits less the umask, as every file orchfs writes,
    # and never world write (a planted 0666 config.yaml would let anyone say where the
    # state goes).
    if name.startswith(PRIVATE_DIRS):
        mode = PRIVATE_FILE_MODE
    else:
        mode = stat.S_IMODE(member.mode) & 0o777 & ~(UMASK | 0o002)
    reader = tar.extractfile(member)
    keep = _is_state_file(name)
    kept = []
    with state.open_write(rel, mode=mode) as writer:
        for chunk in iter(lambda: reader.read(1 << 20), b""):
            writer.write(chunk)
            if keep:
                kept.append(chunk)
    return _Member(mode, member.size, b"".join(kept))


def _is_config(name: str) -> bool:
    """config.yaml, or a migration backup of a local configuration file."""
    from .migrate import BACKUP_DIR

    base = name.rpartition("/")[2]
    return name == CONFIG_FILE or (
        name.startswith(f"{BACKUP_DIR}/") and base in (CONFIG_FILE, *V1_CONFIG_FILES)
    )


def _is_state_file(name: str) -> bool:
    """Members that orchfs itself reads back (and so checks before they land)."""
    return (
        name in (META_FILE, FORMAT_FILE)
        or _is_config(name)
        or (name.startswith(f"{JOURNAL_DIR}/") and name.endswith(".jsonl"))
        or (name.startswith("secrets/") and name.endswith("/MANIFEST"))
    )


def _check_config(data: bytes, where: str) -> None:
    """A snapshot's ``config.yaml`` (the local overrides, read by every command) may not
    say where orchfs reads or writes: a snapshot brings state, not a new place for it."""
    from .safeyaml import compose, construct

    try:
        node = compose(data.decode("utf-8"), where)  # bounded: bombs are ConfigError
    except UnicodeDecodeError:
        raise SnapshotError(f"{where} is not UTF-8 text; refused") from None
    values = construct(node) if node is not None else {}
    state = values.get("state") if isinstance(values, dict) else None
    placing = [key for key in PLACING_KEYS if isinstance(values, dict) and key in values]
    placing += [f"state.{key}" for key in PLACING_STATE_KEYS if isinstance(state, dict) and key in state]
    if placing:
        raise SnapshotError(
            f"{where} sets {', '.join(placing)}: a snapshot brings state, never a new place for "
            "orchfs to read or write it; remove those settings from the snapshot's config.yaml"
        )


def _check_state(members: dict[str, _Member], fs: Any, source: str) -> None:
    """The snapshot's stored state, checked as orchfs checks it when it reads it."""
    for name in filter(_is_config, members):
        _check_config(members[name].data, f"{source}: {name}")
    from .journal import parse as parse_journal
    from .meta import check_meta, check_writable, parse_format, read_format
    from .secrets import check_manifest
    from .stored import check_id, check_repo_id, load_json

    if FORMAT_FILE in members:
        check_writable(parse_format(members[FORMAT_FILE].data, f"{source}: FORMAT"), source)
    else:
        check_writable(read_format(fs.state_storage), fs.state_storage.url(""))
    if META_FILE in members:
        where = f"{source}: {META_FILE}"
        check_meta(load_json(members[META_FILE].data, where, error=MetaError), where)
    for name, member in members.items():
        where = f"{source}: {name}"
        top, _, rest = name.partition("/")
        if top == "secrets" and "/" in rest:
            check_repo_id(rest.partition("/")[0], where)
        if top == "sessions" and "/" in rest:
            check_id(rest.partition("/")[0], "session id", where)
        if name.startswith(f"{JOURNAL_DIR}/") and name.endswith(".jsonl"):
            check_id(rest[: -len(".jsonl")], "migration id", where)
            parse_journal(member.data, where, fs.layout, rest[: -len(".jsonl")])
        if top == "secrets" and name.endswith("/MANIFEST"):
            check_manifest(load_json(member.data, where, error=ManifestError), where)


def _check_clashes(state: Any, members: dict[str, _Member], source: str) -> None:
    """A member whose place (or a parent of it) is taken by the other kind of entry."""
    seen: set[str] = set()
    for name in members:
        info = state.info(name)
        if info is not None and info.get("type") == "directory":
            raise SnapshotError(f"{source}: {name!r} is a directory in the state here; nothing was imported")
        head = name.rpartition("/")[0]
        while head and head not in seen:
            seen.add(head)
            info = state.info(head)
            if info is not None and info.get("type") != "directory":
                raise SnapshotError(
                    f"{source}: {head!r} is a file in the state here, the snapshot has a directory "
                    "there; nothing was imported"
                )
            head = head.rpartition("/")[0]


def _swap(state: Any, staging: str, members: dict[str, _Member], record: dict[str, Any]) -> None:
    """Move the staged files into place, each file they replace put aside first. The
    journal is written whole before the first move, so a kill anywhere in between is
    finished by :func:`finish_interrupted`; on an error put everything back (what cannot
    be put back stays aside, never deleted)."""
    aside = f"{staging}{ASIDE_SUFFIX}"
    journal = f"{staging}{SWAP_SUFFIX}"
    state.write(journal, json.dumps({**record, "members": list(members)}).encode())
    checkpoint("snapshot.swap")
    placed: list[tuple[str, bool]] = []
    try:
        for name in members:
            _make_parent(state, name)
            replaced = state.info(name) is not None
            if replaced:
                state.rename(name, f"{aside}/{name}")
                checkpoint("snapshot.swap")
            placed.append((name, replaced))
            state.rename(f"{staging}/{name}", name)
            checkpoint("snapshot.swap")
    except BaseException:
        _remove_quietly(state, journal)  # undone here: nothing is left to finish
        if _put_back(state, staging, aside, placed):
            _remove_quietly(state, aside)
        raise
    _remove_quietly(state, aside)
    checkpoint("snapshot.swap")
    state.remove(journal)


def _make_parent(state: Any, name: str) -> None:
    """Secrets' directories are 0700 before a member lands in them (a rename would make
    them with the usual mode)."""
    if name.startswith(PRIVATE_DIRS) and "/" in name:
        state.makedirs_private(name.rpartition("/")[0])


class FinishedImport(NamedTuple):
    """An import whose interrupted swap :func:`finish_interrupted` completed."""

    journal: str
    source: str
    sha256: str
    files: int
    bytes: int
    members: tuple[str, ...]


def check_staging_dir(state: Storage) -> None:
    """Refuse a ``tmp`` in a local state directory that is there and no directory (a
    file, a link, a FIFO): imports stage in it, and would stop at it with a bare errno."""
    if not state.capabilities.local_path:
        return  # an object store has no directories: a "tmp" object blocks nothing
    try:
        found = state.info(STAGING_DIR)  # the entry itself: a link is judged, never followed
    except PathEscapeError:
        kind = "a symlink leading outside the repository"
    else:
        if found is None or found["type"] == "directory":
            return
        mode = found["mode"]
        kind = "a symlink" if stat.S_ISLNK(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a file"
    where = state.url(STAGING_DIR)
    raise UnsafeStateError(
        f"{where} is {kind}, not a directory: orchfs stages snapshot imports in it; move it out "
        "of the state directory (or remove it), then run the command again",
        where,
    )


def _swap_journals(state: Storage) -> list[str]:
    """The journals of swaps that did not finish (``tmp/import-<id>.swap``)."""
    try:
        names = [name for name, _info in state.listdir(STAGING_DIR)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        f"{STAGING_DIR}/{n}" for n in names if n.startswith(STAGING_PREFIX) and n.endswith(SWAP_SUFFIX)
    )


def interrupted(fs: Any) -> list[str]:
    """URLs of the journals of imports killed during their swap (for ``doctor``), each
    read and checked (``StateError`` for one orchfs did not write)."""
    state = fs.state_storage
    journals = _swap_journals(state)
    for journal in journals:
        _read_swap_journal(state, journal, journal[: -len(SWAP_SUFFIX)])
    return [state.url(rel) for rel in journals]


def finish_interrupted(fs: Any) -> list[FinishedImport]:
    """Finish every import killed during its swap: the staged members, checked before the
    journal was written, are moved into place, and what they replaced is dropped as the
    import meant to. Call under the repository lock. A journal that is not what orchfs
    writes (stored state is untrusted) is refused (``StateError``) with nothing changed."""
    state = fs.state_storage
    done = []
    for journal in _swap_journals(state):
        staging = journal[: -len(SWAP_SUFFIX)]
        finished, members = _read_swap_journal(state, journal, staging)
        ImportMover(state, staging).finish(journal, members)
        done.append(finished)
    return done


def _read_swap_journal(state: Storage, journal: str, staging: str) -> tuple[FinishedImport, list[str]]:
    """What a swap journal says was being imported, and its member names, each checked
    as a snapshot member is."""
    from .stored import load_json, read_state

    where = state.url(journal)
    fix = "remove it and its staging directory by hand, then import the snapshot again"
    value = load_json(read_state(state, journal) or b"", where, fix=fix)
    if not isinstance(value, dict):
        value = {}
    members = value.get("members")
    valid = (
        _STAGING_NAME.fullmatch(staging.rpartition("/")[2]) is not None
        and isinstance(members, list)
        and all(isinstance(name, str) for name in members)
        and all(isinstance(value.get(key), str) for key in ("source", "sha256"))
        and all(type(value.get(key)) is int for key in ("files", "bytes"))
    )
    if not valid:
        raise StateError(f"{where} is not a snapshot swap journal orchfs wrote; {fix}", where)
    for name in members:
        try:
            validate_stored(name)
        except PathEscapeError:
            raise StateError(f"{where} names {name!r}, not a plain relative path; {fix}", where) from None
        if not _included(name):
            raise StateError(f"{where} names {name!r}, a lock or temp file; {fix}", where)
        if not _moves_file_over_file(state, staging, name):
            raise StateError(
                f"{where} would move {staging}/{name} (not a staged file) into place, over a "
                f"directory or through a link; an import only ever moves files over files; {fix}",
                where,
            )
    finished = FinishedImport(
        where, value["source"], value["sha256"], value["files"], value["bytes"], tuple(members)
    )
    return finished, members


def _moves_file_over_file(state: Storage, staging: str, name: str) -> bool:
    """Whether finishing the swap of ``name`` moves a regular file over a file or nothing,
    and every directory it moves through (the staging and aside directories, the
    member's own) is one reached without a link: what the import made sure of before
    its swap. A planted journal may say otherwise, and a rename refused half way would
    leave the members before it moved."""
    staged = _entry_kind(state, f"{staging}/{name}")
    if staged is None:
        return True  # already in place
    head = name.rpartition("/")[0]
    aside = f"{staging}{ASIDE_SUFFIX}"
    directories = [staging, aside]
    if head:
        directories += [f"{staging}/{head}", f"{aside}/{head}", head]
    return (
        staged == "file"
        and _entry_kind(state, name) in (None, "file", "special")
        and all(_entry_kind(state, rel) in (None, "directory") for rel in directories)
    )


def _entry_kind(state: Storage, rel: str) -> str | None:
    """What is at ``rel``: None (nothing), ``directory``, ``file`` (regular), ``special``
    (a link, FIFO or device itself) or ``linked`` (a link on the way to it)."""
    if not state.capabilities.local_path:  # no links off local disk
        info = state.info(rel)
        return None if info is None else "directory" if info.get("type") == "directory" else "file"
    try:
        mode = state.disk.lstat(state.path_beneath(rel)).st_mode  # type: ignore[attr-defined]
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PathEscapeError:
        return "linked"
    return "directory" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "special"


def _put_back(state: Any, staging: str, aside: str, placed: list[tuple[str, bool]]) -> bool:
    """Undo :func:`_swap` so far; True when every replaced file is back in its place."""
    whole = True
    for name, replaced in reversed(placed):
        try:
            if state.info(name) is not None and state.info(f"{staging}/{name}") is None:
                state.rename(name, f"{staging}/{name}")
            if replaced:
                state.rename(f"{aside}/{name}", name)
        except OSError:
            whole = False
    return whole


def _remove_quietly(state: Any, rel: str) -> None:
    with contextlib.suppress(OSError):
        if state.info(rel) is not None:
            state.remove_tree(rel)


def _checked_name(name: str, source: str) -> str:
    """A member name as a plain relative path inside the state directory."""
    try:
        return validate_stored(name)
    except PathEscapeError:
        raise SnapshotError(f"{source}: member name {name!r} is not a plain relative path; refused") from None


def _rehomed_meta(data: bytes, fs: Any) -> bytes:
    """The snapshot's identity (repo_id: the secrets' namespace) at its new root, which
    stays portable (its state committed to git) only if it was so before the import."""
    from .meta import git_remote, read_meta

    try:
        meta = json.loads(data)
    except ValueError:
        return data
    if isinstance(meta, dict):
        meta["root"] = fs.root
        meta["git_remote"] = git_remote(fs.root) if fs.repo_storage.capabilities.local_path else None
        try:
            portable = (read_meta(fs.state_storage) or {}).get("portable") is True
        except StateError:
            portable = False
        meta.pop("portable", None)
        if portable:
            meta["portable"] = True
        data = json.dumps(meta, indent=2).encode() + b"\n"
    return data


def _write_private_file(target: str, blob: bytes) -> None:
    directory, name = os.path.split(target)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(f"{directory} is a file, not a directory; choose a place inside a directory")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory} does not exist; create it or choose another place")
    disk = Beneath(directory)  # the snapshot file is published atomically, no link followed
    try:
        disk.write_bytes(name, blob, mode=PRIVATE_FILE_MODE)
    finally:
        disk.close()


# --- sealing -----------------------------------------------------------------------------
def _keys(fs: Any, key: Any) -> list[Any]:
    return fs.secrets.keys_for(SNAPSHOT_NAMESPACE, key)


def _seal(fs: Any, archive: bytes, key: Any) -> bytes:
    from .errors import SecretsLockedError
    from .secrets import encrypt

    keys = [k for k in _keys(fs, key) if k.source != "ORCHFS_PASSPHRASE"]
    if not keys:
        raise SecretsLockedError(
            "--encrypt needs a master key: pass key=, set ORCHFS_KEY or ORCHFS_KEY_FILE, or run "
            "`orchfs secrets init` (a passphrase cannot seal a snapshot: its salt stays behind)"
        )
    return encrypt(keys[0], SNAPSHOT_NAMESPACE, SNAPSHOT_NAME, archive)


def _is_sealed(blob: bytes) -> bool:
    from .secrets import MAGIC

    return blob.startswith(MAGIC)


def _open_sealed(fs: Any, blob: bytes, source: str, key: Any) -> bytes:
    from .secrets import decrypt

    table = {k.id: (k, k.namespace_key(SNAPSHOT_NAMESPACE)) for k in _keys(fs, key)}
    return decrypt(table, SNAPSHOT_NAMESPACE, SNAPSHOT_NAME, blob, source)


__all__ = [
    "FinishedImport",
    "SnapshotError",
    "SnapshotInfo",
    "check_staging_dir",
    "export",
    "finish_interrupted",
    "import_snapshot",
    "interrupted",
]
