"""``OrchFileSystem``: the fsspec face of orchfs (protocol ``orch``).

Every public method takes logical paths, passes them through the path gate
(:mod:`orchfs.paths`), finds where they live (the state directory that plays
``.orchestrator/``), and calls the storage adapter (:mod:`orchfs.storage`) that owns
atomicity on that backend. Names that come back are logical again, as in fsspec's
``DirFileSystem``.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fsspec.spec import AbstractFileSystem

try:  # marks the class as chainable: ``orch://state.json::file:///repo``
    from fsspec.implementations.chained import ChainedFileSystem
except ImportError:  # fsspec before 2025.10 chains every filesystem the same way
    ChainedFileSystem = AbstractFileSystem  # type: ignore[misc,assignment]

from .paths import INTERNAL_NAMES, PROTOCOL, join, strip_protocol, validate

STATE_DIR = ".orchestrator"


@dataclass(frozen=True)
class Resolution:
    """Which location serves a logical path: ``layer`` is session, contained or legacy."""

    logical: str
    layer: str
    url: str
    exists: bool


def _not_found(logical: str) -> FileNotFoundError:
    return FileNotFoundError(
        errno.ENOENT,
        "no such file or directory in the orchestrator state",
        f"{PROTOCOL}://{logical}",
    )


def _root_url(root: Any, fo: str | None, target_protocol: str | None) -> str:
    if root is None and fo is not None:
        root = fo if target_protocol in (None, "file", "local") else f"{target_protocol}://{fo}"
    if root is None:
        root = os.environ.get("ORCHFS_ROOT")
    if root is None:
        raise TypeError(
            "OrchFileSystem needs root= (a repository directory or an fsspec URL such as "
            "'memory://repo'), or ORCHFS_ROOT in the environment"
        )
    return os.fspath(root)


def _open_root(root: str, options: dict[str, Any]) -> tuple[str, Any]:
    """Normalise and check the repository root; return (root url, adapter)."""
    from fsspec.core import split_protocol

    from .storage import open_storage

    protocol, path = split_protocol(root)
    if protocol in (None, "file", "local"):
        local = os.path.abspath(os.path.expanduser(path))
        if not os.path.exists(local):
            raise FileNotFoundError(
                errno.ENOENT,
                "repository root does not exist (create it or pass another root=)",
                local,
            )
        if not os.path.isdir(local):
            raise NotADirectoryError(errno.ENOTDIR, "repository root is not a directory", local)
        return local, open_storage(local, None)
    import fsspec

    if protocol not in fsspec.available_protocols():
        raise ValueError(
            f"unknown protocol {protocol!r} in root {root!r}; known protocols include "
            "file, memory and s3 (install orchfs[s3] for S3)"
        )
    return root.rstrip("/"), open_storage(root, options)


class OrchFileSystem(ChainedFileSystem):
    """Orchestrator state as one filesystem of logical paths.

    ``root`` is the repository (a local path or an fsspec URL such as ``memory://repo``
    or ``s3://bucket/repo``); ``storage`` names the directory that plays
    ``.orchestrator/`` (default ``<root>/.orchestrator``), with ``storage_options``
    for its backend.
    """

    protocol = PROTOCOL
    root_marker = ""
    sep = "/"
    cachable = True

    def __init__(
        self,
        root: Any = None,
        *,
        storage: str | None = None,
        storage_options: dict[str, Any] | None = None,
        session: str | None = None,
        web_mode: bool = False,
        legacy: str = "read",
        layout: Any = None,
        key: Any = None,
        lock_timeout: float = 10.0,
        fo: str | None = None,
        target_protocol: str | None = None,
        target_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from .storage import open_storage

        options = dict(storage_options or target_options or {})
        self.root, self._repo = _open_root(_root_url(root, fo, target_protocol), options)
        local_root = self._repo.kind == "local"
        if storage is None:
            storage = f"{self.root}/{STATE_DIR}"
        self._state = open_storage(storage, options, boundary=self.root if local_root else None)
        self.storage = storage
        self.session_id = session
        self.web_mode = web_mode
        self.legacy = legacy
        self.layout = layout
        self._key = key
        self.lock_timeout = float(lock_timeout)

    def __repr__(self) -> str:
        return f"OrchFileSystem(root={self.root!r}, storage={self.storage!r})"

    @property
    def storage_capabilities(self) -> Any:
        """What the state backend does natively (rename, conditional put, ...)."""
        return self._state.capabilities

    # --- path handling ---------------------------------------------------------------
    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return strip_protocol(os.fspath(path))

    def unstrip_protocol(self, name: str) -> str:
        return f"{PROTOCOL}://{self._strip_protocol(name)}"

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        return {}

    def _locate(self, path: Any) -> tuple[str, Any, str]:
        """(logical path, adapter, physical relative path) after the path gate."""
        logical = validate(path if isinstance(path, str) else os.fspath(path))
        return logical, self._state, logical

    def resolve(self, path: str) -> Resolution:
        """Which location serves ``path``, with its physical URL."""
        logical, store, rel = self._locate(path)
        return Resolution(logical, "contained", store.url(rel), store.exists(rel))

    # --- locks and records -----------------------------------------------------------
    def lock(
        self, name: str = "repo", timeout: float | None = None, lease: float | None = None
    ) -> Any:
        """A re-entrant repository lock (context manager); ``LockTimeout`` names the holder.

        ``timeout`` defaults to ``lock_timeout`` (10 s); ``lease`` is the lease length on
        object storage (30 s), renewed while held.
        """
        from .locks import make_lock

        wait = self.lock_timeout if timeout is None else float(timeout)
        return make_lock(self._state, name, timeout=wait, session=self.session_id, lease=lease)

    def update_json(
        self,
        path: str,
        update: Callable[[Any], Any],
        default: Any = None,
        timeout: float | None = None,
    ) -> Any:
        """Read JSON, apply ``update``, write it back atomically under the repository lock.

        ``update`` gets the current value (``default``, or ``{}``, when the file does not
        exist) and returns the new one; returning ``None`` keeps the (mutated) value.
        """
        _, store, rel = self._locate(path)
        with self.lock("repo", timeout=timeout):
            try:
                current = json.loads(store.read(rel))
                existed = True
            except FileNotFoundError:
                current = {} if default is None else default
                existed = False
            result = update(current)
            value = current if result is None else result
            data = json.dumps(value, indent=2, sort_keys=True).encode() + b"\n"
            store.write(rel, data, known_file=existed)
        return value

    def append_line(self, path: str, record: Any) -> None:
        """Append one JSON line, atomically with respect to every other writer."""
        logical, store, rel = self._locate(path)
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        if store.capabilities.native_append:
            store.append(rel, line)
            return
        from hashlib import sha1

        lock_name = "append-" + sha1(logical.encode(), usedforsecurity=False).hexdigest()[:16]
        with self.lock(lock_name):
            store.append(rel, line)

    # --- reading ---------------------------------------------------------------------
    def info(self, path: Any, **kwargs: Any) -> dict[str, Any]:
        logical, store, rel = self._locate(path)
        found = store.info(rel)
        if found is None:
            if not logical:
                return {"name": "", "type": "directory", "size": 0, "mtime": None, "created": None}
            raise _not_found(logical)
        found["name"] = logical
        return found

    def exists(self, path: Any, **kwargs: Any) -> bool:
        logical, store, rel = self._locate(path)
        return not logical or store.exists(rel)

    def isdir(self, path: Any) -> bool:
        logical, store, rel = self._locate(path)
        return not logical or store.isdir(rel)

    def isfile(self, path: Any) -> bool:
        logical, store, rel = self._locate(path)
        found = store.info(rel) if logical else None
        return found is not None and found["type"] == "file"

    def ls(self, path: Any, detail: bool = True, **kwargs: Any) -> list[Any]:
        logical, store, rel = self._locate(path)
        try:
            children = store.listdir(rel)
        except (FileNotFoundError, NotADirectoryError):
            found = store.info(rel) if logical else None
            if found is None:
                if not logical:
                    return []
                raise _not_found(logical) from None
            found["name"] = logical
            return [found] if detail else [logical]
        if not logical:
            children = [(n, i) for n, i in children if n not in INTERNAL_NAMES]
        if not detail:
            return [join(logical, name) for name, _ in children]
        out = []
        for name, found in children:
            found["name"] = join(logical, name)
            out.append(found)
        return out

    def cat_file(
        self, path: Any, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        logical, store, rel = self._locate(path)
        try:
            return store.read(rel, start, end)
        except FileNotFoundError:
            raise _not_found(logical) from None
        except IsADirectoryError:
            raise IsADirectoryError(
                errno.EISDIR, "is a directory, not a file", f"{PROTOCOL}://{logical}"
            ) from None

    def created(self, path: Any) -> datetime:
        return _as_datetime(self.info(path).get("created"))

    def modified(self, path: Any) -> datetime:
        return _as_datetime(self.info(path).get("mtime"))

    # --- writing ---------------------------------------------------------------------
    def _open(
        self,
        path: Any,
        mode: str = "rb",
        block_size: Any = None,
        autocommit: bool = True,
        cache_options: Any = None,
        **kwargs: Any,
    ) -> Any:
        logical, store, rel = self._locate(path)
        if not logical:
            raise IsADirectoryError(
                errno.EISDIR, "the root is a directory, not a file", f"{PROTOCOL}://"
            )
        try:
            if mode == "rb":
                return store.open_read(rel, block_size if isinstance(block_size, int) else None)
            if mode in ("wb", "xb"):
                return store.open_write(rel, exclusive=mode == "xb", autocommit=autocommit)
            if mode == "ab":
                return self._open_append(logical, store, rel, autocommit)
        except FileNotFoundError:
            raise _not_found(logical) from None
        except IsADirectoryError:
            raise IsADirectoryError(
                errno.EISDIR, "is a directory, not a file", f"{PROTOCOL}://{logical}"
            ) from None
        raise ValueError(
            f"unsupported mode {mode!r} for {PROTOCOL}://{logical}: use rb, wb, xb "
            "or ab (text variants too)"
        )

    def _open_append(self, logical: str, store: Any, rel: str, autocommit: bool) -> Any:
        """Append is copy-to-stage then continue: the old file is intact until close."""
        try:
            old = store.read(rel)
        except FileNotFoundError:
            old = b""
        writer = store.open_write(rel, autocommit=autocommit)
        writer.write(old)
        return writer

    def pipe_file(self, path: Any, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        logical, store, rel = self._locate(path)
        if not logical:
            raise IsADirectoryError(errno.EISDIR, "the root is a directory", f"{PROTOCOL}://")
        try:
            store.write(rel, bytes(value), exclusive=mode == "create")
        except IsADirectoryError:
            raise IsADirectoryError(
                errno.EISDIR, "is a directory, not a file", f"{PROTOCOL}://{logical}"
            ) from None

    def cp_file(self, path1: Any, path2: Any, **kwargs: Any) -> None:
        logical1, store1, rel1 = self._locate(path1)
        _, store2, rel2 = self._locate(path2)
        found = store1.info(rel1) if logical1 else {"type": "directory"}
        if found is None:
            raise _not_found(logical1)
        if found["type"] == "directory":
            store2.makedirs(rel2)
            return
        if store1 is store2:
            store1.copy(rel1, rel2)
        else:
            store2.write(rel2, store1.read(rel1))

    def mv(
        self, path1: Any, path2: Any, recursive: bool = False, maxdepth: Any = None, **kwargs: Any
    ) -> None:
        logical1, store1, rel1 = self._locate(path1)
        logical2, store2, rel2 = self._locate(path2)
        if (
            isinstance(path1, str)
            and isinstance(path2, str)
            and store1 is store2
            and store1.capabilities.atomic_rename
            and "*" not in logical1
        ):
            found = store1.info(rel1)
            if found is None:
                raise _not_found(logical1)
            if found["type"] == "file" or recursive:
                if self.isdir(logical2) and found["type"] == "file":
                    rel2 = join(rel2, rel1.rpartition("/")[2])
                store1.rename(rel1, rel2)
                return
        super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    def rm_file(self, path: Any) -> None:
        logical, store, rel = self._locate(path)
        found = store.info(rel) if logical else None
        if found is None:
            raise _not_found(logical)
        if found["type"] == "directory":
            raise IsADirectoryError(
                errno.EISDIR, "is a directory (use rm(recursive=True))", f"{PROTOCOL}://{logical}"
            )
        store.remove(rel)

    def _rm(self, path: Any) -> None:
        logical, store, rel = self._locate(path)
        found = store.info(rel) if logical else {"type": "directory"}
        if found is None:
            if store.capabilities.empty_directories:
                raise _not_found(logical)
            return  # an implicit directory vanished with its last key
        if found["type"] == "directory":
            if logical:
                store.rmdir(rel)
        else:
            store.remove(rel)

    def rm(self, path: Any, recursive: bool = False, maxdepth: Any = None) -> None:
        paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        for item in sorted(paths, key=len, reverse=True):
            self._rm(item)

    def mkdir(self, path: Any, create_parents: bool = True, **kwargs: Any) -> None:
        logical, store, rel = self._locate(path)
        if not logical:
            return
        if store.exists(rel):
            raise FileExistsError(errno.EEXIST, "already exists", f"{PROTOCOL}://{logical}")
        if create_parents:
            store.makedirs(rel)
        else:
            store.mkdir(rel)

    def makedirs(self, path: Any, exist_ok: bool = False) -> None:
        logical, store, rel = self._locate(path)
        if not logical:
            return
        found = store.info(rel)
        if found is not None:
            if found["type"] != "directory":
                raise FileExistsError(
                    errno.EEXIST, "a file is in the way", f"{PROTOCOL}://{logical}"
                )
            if not exist_ok:
                raise FileExistsError(errno.EEXIST, "already exists", f"{PROTOCOL}://{logical}")
            return
        store.makedirs(rel)

    def rmdir(self, path: Any) -> None:
        logical, store, rel = self._locate(path)
        if not logical:
            raise PermissionError(errno.EPERM, "the root is never removed", f"{PROTOCOL}://")
        if not store.isdir(rel):
            raise _not_found(logical)
        store.rmdir(rel)

    def touch(self, path: Any, truncate: bool = True, **kwargs: Any) -> None:
        logical, store, rel = self._locate(path)
        if truncate or not store.exists(rel):
            self.pipe_file(logical, b"")


def _as_datetime(stamp: float | None) -> datetime:
    if stamp is None:
        raise FileNotFoundError("no timestamp recorded for this entry")
    return datetime.fromtimestamp(stamp, tz=timezone.utc)
