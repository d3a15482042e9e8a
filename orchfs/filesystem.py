"""``OrchFileSystem``: the fsspec face of orchfs (protocol ``orch``).

Every public method takes logical paths, passes them through the path gate
(:mod:`orchfs.paths`) and delegates, as fsspec's ``DirFileSystem`` does: ``secrets/NAME``
to :mod:`orchfs.secretsview`, everything else to the logical tree
(:mod:`orchfs.namespace`) and the overlay below it, bulk ``get``/``copy`` through
:mod:`orchfs.transfer`. Names that come back are logical again.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from fsspec.spec import AbstractFileSystem

try:  # marks the class as chainable: ``orch://state.json::file:///repo``
    from fsspec.implementations.chained import ChainedFileSystem
except ImportError:  # fsspec before 2025.10 chains every filesystem the same way
    ChainedFileSystem = AbstractFileSystem  # type: ignore[misc,assignment]


from .atomic import CREATE, REPLACE
from .errors import BucketNotFoundError
from .errors import is_a_directory as _is_a_directory
from .errors import not_found as _not_found
from .namespace import Namespace
from .overlay import Conflict, Overlay, Resolution
from .paths import (
    MEMO_LIMIT,
    PROTOCOL,
    SECRETS_VIEW,
    strip_protocol,
    validate,
)
from .records import append_line, update_json
from .secretsview import SecretsView, secret_name
from .transfer import copy_plan, get_plan, has_magic

if TYPE_CHECKING:
    from .storage import Storage


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
        web_mode: bool | None = None,
        legacy: str | None = None,
        layout: Any = None,
        key: Any = None,
        lock_timeout: float | str | None = None,
        lease: float | str | None = None,
        fo: str | None = None,
        target_protocol: str | None = None,
        target_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from .config import face_settings
        from .repository import open_repository

        # Unset arguments come from the environment layer of the configuration (DESIGN §6).
        given = face_settings(
            storage=storage,
            session=session,
            web_mode=web_mode,
            legacy=legacy,
            lock_timeout=lock_timeout,
            lease=lease,
        )
        parts = open_repository(
            root,
            given,
            layout=layout,
            storage_options=storage_options,
            fo=fo,
            target_protocol=target_protocol,
            target_options=target_options,
        )
        self.root, self._repo, self._state = parts.root, parts.repo, parts.state_storage
        self._local_root = parts.local_root
        self.storage = parts.storage
        self.storage_options_ = parts.options
        self.session_id = parts.session_id
        self.web_mode = given.web_mode
        self.legacy = given.legacy
        self.layout = parts.layout
        if key is not None:
            from .secrets import KeyReference

            if isinstance(key, KeyReference):  # an unpickled copy
                key = key.resolve()
        self._key = key
        self.lock_timeout = given.lock_timeout
        self.lease = given.lease
        self._overlay = parts.overlay
        self._names = Namespace(self._overlay, self._state)
        # Shortcuts keyed by the caller's own spelling of a path that already passed the
        # gate: how to read it again once it was read quietly (Overlay.fast_reader: a read
        # beneath the root each time), and where exists() can look first.
        self._fast_reads: dict[str, Callable[[], Any]] = {}
        self._exists_logical: dict[str, str] = {}
        self._secret_store: Any = None

    @property
    def storage_options(self) -> dict[str, Any]:
        """The options this instance was made with, less ``key=``: key material never
        travels in ``to_json`` (a copy finds its key in the key sources, or is given it
        again), and a pickle carries only a :class:`~orchfs.secrets.KeyReference`."""
        return self._made_with

    @storage_options.setter
    def storage_options(self, value: dict[str, Any]) -> None:
        self._made_with = {name: option for name, option in dict(value).items() if name != "key"}

    def __reduce__(self) -> Any:
        from fsspec.spec import make_instance

        from .secrets import KeyReference

        options = dict(self.storage_options)
        if self._key is not None:
            if getattr(self, "_key_reference", None) is None:  # one handle per instance
                self._key_reference = KeyReference.to(self._key)
            options["key"] = self._key_reference
        return make_instance, (type(self), self.storage_args, options)

    def __repr__(self) -> str:
        session = f", session={self.session_id!r}" if self.session_id else ""
        return f"OrchFileSystem(root={self.root!r}, storage={self.storage!r}{session})"

    @property
    def storage_capabilities(self) -> Any:
        """What the state backend does natively (rename, conditional put, ...)."""
        return self._state.capabilities

    @property
    def state_storage(self) -> Storage:
        """The adapter of the state directory (what plays ``.orchestrator/``)."""
        return self._state

    @property
    def repo_storage(self) -> Storage:
        """The adapter of the repository root (where v1 files live)."""
        return self._repo

    @property
    def overlay(self) -> Overlay:
        """The overlay behind this face: which layer serves a path, for operations that
        must act on that layer's own file (a session's persister reads it beneath it)."""
        return self._overlay

    @property
    def secrets(self) -> Any:
        """The encrypted secret namespace of this repository (a ``SecretStore``)."""
        if self._secret_store is None:
            from .secrets import SecretStore

            self._secret_store = SecretStore(
                self._state,
                repo=self._repo,
                initialize=self.initialize,
                lock=self.lock,
                web_mode=self.web_mode,
                key=self._key,
                label=self.root,
            )
        return self._secret_store

    @property
    def _secrets_view(self) -> SecretsView:
        # Made per call: a view kept on the instance would be a reference cycle.
        return SecretsView(self)

    def session(self, session_id: str) -> OrchFileSystem:
        """The same repository with session-scoped entries bound to ``session_id``."""
        return type(self)(
            root=self.root,
            storage=self.storage,
            storage_options=self.storage_options_ or None,
            session=session_id,
            web_mode=self.web_mode,
            legacy=self.legacy,
            layout=self.layout,
            key=self._key,
            lock_timeout=self.lock_timeout,
            lease=self.lease,
        )

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

    @staticmethod
    def _gate(path: Any) -> str:
        return validate(path if isinstance(path, str) else os.fspath(path))

    def initialize(self) -> None:
        """Make the state directory ready for writes: refuse a newer layout
        (``LayoutVersionError``), write ``FORMAT`` and ``meta.json`` if they are missing."""
        self._overlay.initialize()

    def conflicts(self) -> list[Conflict]:
        """Every pair of locations of one path that both exist and differ: an upper copy
        and a legacy file orchfs did not supersede (or that changed since), or two legacy
        locations of one entry (import sources included)."""
        return self._overlay.conflicts()

    def legacy_pairs(self) -> list[Conflict]:
        """:meth:`conflicts` plus the ``stale`` legacy files (superseded, unchanged)."""
        return self._overlay.legacy_pairs()

    def resolve(self, path: str) -> Resolution:
        """Which location serves ``path`` (layer session/contained/legacy), with its URL."""
        logical = self._gate(path)
        if logical.startswith(SECRETS_VIEW + "/"):
            return self._secrets_view.resolve(logical)
        return self._overlay.resolve(logical)

    # --- locks and records -----------------------------------------------------------
    def lock(
        self,
        name: str = "repo",
        timeout: float | None = None,
        lease: float | None = None,
        renew: float | None = None,
    ) -> Any:
        """A re-entrant repository lock (context manager); ``LockTimeout`` names the holder.

        ``timeout`` defaults to ``lock_timeout`` (10 s); ``lease`` is the lease length on
        object storage (``state.lease``, ``ORCHFS_LEASE``, 30 s), renewed every ``renew``
        seconds (a third of the lease) while held. ``lock.token`` is the acquisition's
        fencing token, ``lock.lost`` tells whether the lease ended while held, and the
        ``with`` block raises ``LockLostError`` at its end if it did (see
        :mod:`orchfs.locks` for what is fenced).
        """
        from .locks import make_lock

        wait = self.lock_timeout if timeout is None else float(timeout)
        return make_lock(
            self._state,
            name,
            timeout=wait,
            session=self.session_id,
            lease=lease or self.lease,
            renew=renew,
        )

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
        logical = self._gate(path)
        return update_json(self._overlay, logical, update, default, self.lock("repo", timeout=timeout))

    def append_line(self, path: str, record: Any, timeout: float | None = None) -> None:
        """Append one JSON line, atomically with respect to every other writer.

        ``timeout`` is how long to wait for the log's lock where one is needed (object
        storage); it defaults to ``lock_timeout``."""
        logical = self._gate(path)
        append_line(self._overlay, logical, record, lambda name: self.lock(name, timeout=timeout))

    # --- reading ---------------------------------------------------------------------
    def info(self, path: Any, **kwargs: Any) -> dict[str, Any]:
        logical = self._gate(path)
        if logical.startswith(SECRETS_VIEW + "/"):
            return self._secrets_view.info(logical)
        return self._names.info(logical, self._secrets_view.times)

    def exists(self, path: Any, **kwargs: Any) -> bool:
        # The gate's answer for this spelling, when the layout places nothing below it.
        logical = self._exists_logical.get(path)
        if logical is None:
            logical = self._gate(path)
            if not logical:
                return True
            if logical == SECRETS_VIEW or logical.startswith(SECRETS_VIEW + "/"):
                try:  # the secret store, never the files below .orchestrator/secrets/
                    self.info(logical)
                except (FileNotFoundError, IsADirectoryError):
                    return False
                return True
            if self.layout.virtual_children(logical):  # a layout directory: asked in full
                return self._overlay.exists(logical) or self._overlay.is_virtual_dir(logical)
            if len(self._exists_logical) < MEMO_LIMIT:
                self._exists_logical[path] = logical
        return self._overlay.exists(logical)

    def isdir(self, path: Any) -> bool:
        return self._names.is_dir(self._gate(path))

    def isfile(self, path: Any) -> bool:
        logical = self._gate(path)
        if logical.startswith(SECRETS_VIEW + "/"):
            return self.exists(logical)
        return self._names.isfile(logical)

    def ls(self, path: Any, detail: bool = True, **kwargs: Any) -> list[Any]:
        logical = self._gate(path)
        if logical == SECRETS_VIEW:
            infos = self._secrets_view.listing()
            return infos if detail else [i["name"] for i in infos]
        return self._names.listing(logical, detail)

    def walk(
        self,
        path: Any,
        maxdepth: int | None = None,
        topdown: bool = True,
        on_error: Any = "omit",
        **kwargs: Any,
    ):  # type: ignore[override]
        """fsspec's walk (and so ``find``, ``du``, ``glob``), which reads a directory it
        cannot list as empty: a missing bucket is no empty directory, and says so."""
        if on_error == "omit":
            on_error = _raise_missing_bucket
        return super().walk(path, maxdepth=maxdepth, topdown=topdown, on_error=on_error, **kwargs)

    def cat_file(self, path: Any, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        whole = start is None and end is None
        if whole:
            fast = self._fast_reads.get(path)
            if fast is not None:
                try:
                    data = fast()
                except IsADirectoryError:
                    data = None
                if data.__class__ is bytes:
                    return data
        logical = self._gate(path)
        if not logical:
            raise _is_a_directory("")
        name = secret_name(logical) if logical.startswith(SECRETS_VIEW) else None
        if name is not None:
            return self._secrets_view.read(logical, name)[start:end]
        try:
            location, data = self._overlay.read(logical, start, end)
        except FileNotFoundError:
            if self._names.is_dir(logical):
                raise _is_a_directory(logical) from None
            raise _not_found(logical) from None
        except IsADirectoryError:
            raise _is_a_directory(logical) from None
        served = self._overlay.served(logical, location)
        if served is not location:  # legacy="migrate" moved it up
            return served.store.read(served.rel, start, end)
        if whole and len(self._fast_reads) < MEMO_LIMIT:
            fast = self._overlay.fast_reader(logical, location)
            if fast is not None:  # quiet from now on: later reads of it take the shortcut
                self._fast_reads[path] = fast
        return data

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
        logical = self._gate(path)
        if not logical:
            raise _is_a_directory("")
        name = secret_name(logical) if logical.startswith(SECRETS_VIEW) else None
        if name is not None:
            return self._secrets_view.open(logical, name, mode, autocommit)
        enlist = self.transaction.files.append if self._intrans else None
        publish = functools.partial(self._pipe_now, logical)
        return self._names.open_file(self, logical, mode, block_size, autocommit, publish, enlist)

    def pipe_file(self, path: Any, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        """Write ``value`` at ``path``; ``if_match=lock.token`` fences the write by that lock
        from any thread (``LockLostError``, nothing written, if the lock was lost or the
        object changed since it was read under it)."""
        token = kwargs.pop("if_match", None)
        if token is not None:
            from .locks import FencingToken

            if not isinstance(token, FencingToken):
                raise TypeError(f"if_match takes a lock's token (fs.lock(...).token), not {token!r}")
            with token.fenced():
                self.pipe_file(path, value, mode=mode, **kwargs)
            return
        logical = self._gate(path)
        if not logical:
            raise _is_a_directory("")
        if self._intrans:  # inside fs.transaction: staged as open("wb") is, published at its end
            with self.open(logical, "xb" if mode == "create" else "wb") as f:
                f.write(value)
            return
        self._pipe_now(logical, value, mode)

    def _pipe_now(self, logical: str, value: bytes, mode: str = "overwrite") -> None:
        """Write ``value`` at ``logical`` at once (atomically), whatever a transaction says."""
        name = secret_name(logical) if logical.startswith(SECRETS_VIEW) else None
        if name is not None:
            self._secrets_view.write(logical, name, value, mode)
            return
        if mode == "create" and self.exists(logical):
            raise FileExistsError(errno.EEXIST, "already exists", f"{PROTOCOL}://{logical}")
        try:
            self._overlay.write(logical, bytes(value), CREATE if mode == "create" else REPLACE)
        except IsADirectoryError:
            raise _is_a_directory(logical) from None

    def cp_file(self, path1: Any, path2: Any, **kwargs: Any) -> None:
        logical1 = self._gate(path1)
        logical2 = self._gate(path2)
        found = self._names.lookup(logical1)
        if self._names.shows_directory(logical1, found):
            self.makedirs(logical2, exist_ok=True)
            return
        source, _size = self._names.serving(logical1, found)
        self._overlay.copy_file(source, logical2)

    def copy(
        self,
        path1: Any,
        path2: Any,
        recursive: bool = False,
        maxdepth: Any = None,
        on_error: str | None = None,
        **kwargs: Any,
    ) -> None:
        if on_error is None:
            on_error = "ignore" if recursive else "raise"
        plan = copy_plan(self, path1, path2, recursive, maxdepth, kwargs)
        if plan is not None:
            super().copy(plan.sources, plan.targets, on_error=on_error, **kwargs)

    def get(
        self,
        rpath: Any,
        lpath: Any,
        recursive: bool = False,
        callback: Any = None,
        maxdepth: Any = None,
        **kwargs: Any,
    ) -> None:
        if callback is not None:
            kwargs["callback"] = callback
        plan = get_plan(self, rpath, lpath, recursive, maxdepth, kwargs)
        if plan is not None:
            super().get(plan.sources, plan.targets, **kwargs)

    def mv(
        self, path1: Any, path2: Any, recursive: bool = False, maxdepth: Any = None, **kwargs: Any
    ) -> None:
        single = isinstance(path1, str) and isinstance(path2, str) and not has_magic(path1)
        if single and self._names.move_file(self._gate(path1), self._gate(path2)):
            return
        super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    def rm_file(self, path: Any) -> None:
        logical = self._gate(path)
        name = secret_name(logical) if logical.startswith(SECRETS_VIEW) else None
        if name is not None:
            self._secrets_view.remove(logical, name)
            return
        self._names.remove_file(logical)

    def _rm(self, path: Any) -> None:
        logical = self._gate(path)
        if logical.startswith(SECRETS_VIEW) and secret_name(logical) is not None:
            self.rm_file(logical)
            return
        self._names.remove(logical)

    def rm(self, path: Any, recursive: bool = False, maxdepth: Any = None) -> None:
        paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        for item in sorted(paths, key=len, reverse=True):
            self._rm(item)

    def mkdir(self, path: Any, create_parents: bool = True, **kwargs: Any) -> None:
        logical = self._gate(path)
        if not logical:
            return
        if self.exists(logical):
            raise FileExistsError(errno.EEXIST, "already exists", f"{PROTOCOL}://{logical}")
        self._names.make_directory(logical, create_parents)

    def makedirs(self, path: Any, exist_ok: bool = False) -> None:
        logical = self._gate(path)
        if not logical:
            return
        self._names.makedirs(logical, exist_ok)

    def rmdir(self, path: Any) -> None:
        logical = self._gate(path)
        self._names.check_rmdir(logical)
        self._rm(logical)

    def touch(self, path: Any, truncate: bool = True, **kwargs: Any) -> None:
        logical = self._gate(path)
        if truncate or not self.exists(logical):
            self.pipe_file(logical, b"")


def _raise_missing_bucket(exc: BaseException) -> None:
    """``walk``'s error handler: a directory that cannot be listed is omitted, as fsspec
    does, unless its whole bucket is missing."""
    if isinstance(exc, BucketNotFoundError):
        raise exc


def _as_datetime(stamp: float | None) -> datetime:
    if stamp is None:
        raise FileNotFoundError("no timestamp recorded for this entry")
    return datetime.fromtimestamp(stamp, tz=timezone.utc)


__all__ = [
    "Conflict",
    "OrchFileSystem",
    "Resolution",
]
