"""Snapshots: a whole state directory as one file, to move it between machines (DESIGN §7).

A snapshot is a gzip-compressed tar of ``.orchestrator/`` (whichever backend holds it),
minus ``locks/``, ``tmp/`` and temp files. Secrets travel as they are stored:
encrypted. With ``encrypt=True`` the whole archive is sealed with the master key in
orchfs's secret format (AES-256-GCM), so a snapshot can sit on shared storage.

Import checks the whole archive before it writes anything: regular files and
directories only, every name a plain relative path, FORMAT readable by this orchfs.
Each file is then written atomically through the storage adapter (which never
follows a symlink), and ``meta.json`` keeps its ``repo_id`` (the secret namespace)
while its root becomes the new one. An import into a state directory that already
holds state is refused unless ``force`` is given.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from dataclasses import dataclass
from typing import Any

from .atomic import PRIVATE_FILE_MODE
from .errors import PathEscapeError, SnapshotError
from .paths import validate_stored

EXCLUDED_TOP = frozenset({"locks", "tmp"})
SNAPSHOT_NAMESPACE = "orchfs-snapshot"
SNAPSHOT_NAME = "snapshot"
PRIVATE_DIRS = ("secrets",)


@dataclass(frozen=True)
class SnapshotInfo:
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


def _mode_of(state: Any, rel: str) -> int:
    if state.kind == "local":
        return stat.S_IMODE(os.lstat(state.url(rel)).st_mode)
    return PRIVATE_FILE_MODE if rel.startswith(PRIVATE_DIRS) else 0o644


def export(fs: Any, path: str | os.PathLike[str], *, encrypt: bool = False, key: Any = None) -> SnapshotInfo:
    """Write the state of ``fs`` to ``path`` (mode 0600, atomically), under the repo lock."""
    state = fs._state
    archive = io.BytesIO()
    total = 0
    with fs.lock("repo"):
        names = sorted(rel for rel in state.find_files("", include_markers=True) if _included(rel))
        with tarfile.open(fileobj=archive, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
            for rel in names:
                data = state.read(rel)
                member = tarfile.TarInfo(rel)
                member.size = len(data)
                member.mode = _mode_of(state, rel)
                tar.addfile(member, io.BytesIO(data))
                total += len(data)
    blob = archive.getvalue()
    if encrypt:
        blob = _seal(fs, blob, key)
    target = os.path.abspath(os.fspath(path))
    _write_private_file(target, blob)
    return SnapshotInfo(target, len(names), total, encrypt, hashlib.sha256(blob).hexdigest())


def import_snapshot(
    fs: Any, path: str | os.PathLike[str], *, force: bool = False, key: Any = None
) -> SnapshotInfo:
    """Restore the snapshot at ``path`` into the state directory of ``fs``."""
    from .meta import FORMAT_FILE, META_FILE, check_writable, parse_format, read_format

    source = os.path.abspath(os.fspath(path))
    with open(source, "rb") as f:
        blob = f.read()
    encrypted = _is_sealed(blob)
    archive = _open_sealed(fs, blob, source, key) if encrypted else blob
    members = _checked_members(archive, source)
    state = fs._state
    with fs.lock("repo"):
        existing = [
            rel
            for rel in state.find_files("", include_markers=True)
            if _included(rel) and rel not in (FORMAT_FILE, META_FILE)  # `orchfs init` made them
        ]
        if existing and not force:
            raise SnapshotError(
                f"{state.url('')} already holds state ({len(existing)} files); import into an "
                "empty repository, or pass --force to overwrite the files the snapshot has"
            )
        if FORMAT_FILE in members:
            check_writable(parse_format(members[FORMAT_FILE][1]), source)
        else:
            check_writable(read_format(state), state.url(""))
        for rel, (mode, data) in members.items():
            if rel == META_FILE:
                data = _rehomed_meta(data, fs)
            if rel.startswith(PRIVATE_DIRS):
                state.makedirs_private(rel.rpartition("/")[0])
            state.write(rel, data, mode=mode)
    total = sum(len(data) for _mode, data in members.values())
    return SnapshotInfo(source, len(members), total, encrypted, hashlib.sha256(blob).hexdigest())


def _checked_members(archive: bytes, source: str) -> dict[str, tuple[int, bytes]]:
    """Every file of the archive as ``rel -> (mode, bytes)``, or SnapshotError."""
    out: dict[str, tuple[int, bytes]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for member in tar.getmembers():
                name = _checked_name(member.name, source)
                if member.isdir():
                    continue
                if not member.isreg():
                    raise SnapshotError(
                        f"{source}: {member.name!r} is not a regular file (links and devices "
                        "are never restored)"
                    )
                if not _included(name):
                    raise SnapshotError(f"{source}: {name!r} is a lock or temp file; snapshots have none")
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise SnapshotError(f"{source}: {name!r} has no content")
                out[name] = (stat.S_IMODE(member.mode) & 0o777, extracted.read())
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"{source} is not an orchfs snapshot (or is damaged): {exc}") from None
    return out


def _checked_name(name: str, source: str) -> str:
    """A member name as a plain relative path inside the state directory."""
    try:
        return validate_stored(name)
    except PathEscapeError:
        raise SnapshotError(f"{source}: member name {name!r} is not a plain relative path; refused") from None


def _rehomed_meta(data: bytes, fs: Any) -> bytes:
    """The snapshot's identity (repo_id: the secrets' namespace) at its new root."""
    from .meta import git_remote

    try:
        meta = json.loads(data)
    except ValueError:
        return data
    if isinstance(meta, dict):
        meta["root"] = fs.root
        meta["git_remote"] = git_remote(fs.root) if fs._local_root else None
        data = json.dumps(meta, indent=2).encode() + b"\n"
    return data


def _write_private_file(target: str, blob: bytes) -> None:
    from .storage import LocalStorage

    directory, name = os.path.split(target)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory} does not exist; create it or choose another place")
    LocalStorage(directory).write(name, blob, mode=PRIVATE_FILE_MODE)


# --- sealing -----------------------------------------------------------------------------
def _keys(fs: Any, key: Any) -> list[Any]:
    from .secrets import find_keys

    return find_keys(key if key is not None else fs._key, SNAPSHOT_NAMESPACE, web_mode=fs.web_mode)


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
    "SnapshotError",
    "SnapshotInfo",
    "export",
    "import_snapshot",
]
