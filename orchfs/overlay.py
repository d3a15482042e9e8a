"""The overlay: how one logical path resolves over session, contained and legacy layers.

Semantics follow Linux OverlayFS; markers are those of OCI image layers so that they
work on any backend, object storage included:

* each logical path has an ordered list of :class:`Location` values: the write target
  first (``sessions/<id>/`` for a session-scoped entry with a session bound, else the
  contained directory), then the read-only lower ones (contained, then each legacy
  location of the layout entry);
* a read is served by the first location that holds the path and is not hidden by a
  marker in a layer above it: a whiteout ``.wh.<name>`` beside the path (or beside
  one of its ancestors), or an opaque marker ``.wh..wh..opq`` in an ancestor;
* a listing merges every layer, upper first, without duplicates or hidden names.

Whiteouts are rare (they only appear when a path that exists below is deleted), so
a sentinel ``.wh..wh..markers`` at the top of the state directory says whether any
marker was ever written; without it the marker checks are skipped.
"""

from __future__ import annotations

import hashlib
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from hashlib import sha1
from operator import itemgetter
from typing import TYPE_CHECKING, Any, NamedTuple

from .atomic import REPLACE, REPLACE_LOOKED, WriteKind
from .beneath import FileReader
from .errors import (
    LegacyConflictWarning,
    LegacyPathWarning,
    PathEscapeError,
    UnsafeStateError,
    warn_outside,
)
from .layerindex import UNKNOWN, index_for
from .layout import Layout
from .paths import (
    MARKER_SENTINEL,
    MEMO_LIMIT,
    OPAQUE_MARKER,
    SECRETS_VIEW,
    WHITEOUT_PREFIX,
    join,
)

if TYPE_CHECKING:  # storage is imported with the first adapter, not with ``import orchfs``
    from .storage import Storage

SESSIONS_DIR = "sessions"
ABSENT = -1  # no layer showed the path
# A directory's names are listed again unless its identity (inode, device, mtime, ctime,
# size) is the one seen when they were listed. Timestamps are coarse (a kernel tick; a
# whole second or two on some filesystems), so a listing is kept only when the directory
# had not changed for longer than that before it was read: a later change then always
# shows as a new mtime.
SETTLED_NS = 50_000_000
SETTLED_WHOLE_SECONDS_NS = 2_000_000_000


@dataclass(frozen=True)
class Location:
    """One place a logical path may live: its layer, adapter and physical path."""

    layer: str  # "session" | "contained" | "legacy"
    store: Storage
    rel: str
    prefix: str = ""  # physical prefix of the layer's logical namespace (upper layers)

    @property
    def upper(self) -> bool:
        return self.layer != "legacy"

    @property
    def url(self) -> str:
        return self.store.url(self.rel)


@dataclass(frozen=True)
class Conflict:
    """A path whose copies in two locations both exist and differ (rule 7).

    ``kind``: ``differ`` (the upper copy and a legacy file), ``legacy-changed`` (a
    legacy file changed after orchfs superseded it), ``legacy-pair`` (two legacy
    locations of one entry; ``upper_url`` is then the first, which serves reads) or
    ``stale`` (a legacy file orchfs superseded and that still matches its record:
    not a conflict, :meth:`OrchFileSystem.conflicts` leaves it out).
    """

    logical: str
    upper_url: str
    legacy_url: str
    upper_sha256: str
    legacy_sha256: str
    kind: str = "differ"


@dataclass(frozen=True)
class Times:
    """A directory's ``mtime`` (the newest) and ``created`` (the oldest) of several stamps."""

    mtime: float | None
    created: float | None

    @classmethod
    def of(cls, infos: Iterable[dict[str, Any]]) -> Times:
        mtimes: list[float] = []
        created: list[float] = []
        for info in infos:
            if info.get("mtime") is not None:
                mtimes.append(info["mtime"])
                created.append(info.get("created") or info["mtime"])
        return cls(max(mtimes, default=None), min(created, default=None))

    def as_info(self) -> dict[str, Any]:
        return {"mtime": self.mtime, "created": self.created}


def _undated() -> Times:
    """The times of the secrets view where a listing needs none (the face dates it)."""
    return Times(None, None)


def _newest_times(shown: dict[str, Any], other: dict[str, Any]) -> None:
    """Give the listed ``shown`` directory the newest mtime and the oldest creation time
    of it and ``other`` (the same directory in a lower layer), where both are dated."""
    if shown.get("mtime") is None or other.get("mtime") is None:
        return
    both = Times.of((shown, other))
    shown["mtime"], shown["created"] = both.mtime, both.created


@dataclass(frozen=True)
class Resolution:
    """Which location serves a logical path: ``layer`` is session, contained or legacy."""

    logical: str
    layer: str
    url: str
    exists: bool


class Found(tuple):
    """The location that serves a logical path, and the info its lookup saw there:
    ``Found((location, info))``. A tuple subclass rather than a NamedTuple: every lookup
    makes one, and ``tuple.__new__`` costs half of a NamedTuple's ``__new__``."""

    __slots__ = ()
    location: Location = property(itemgetter(0))  # type: ignore[assignment]
    info: dict[str, Any] = property(itemgetter(1))  # type: ignore[assignment]

    @property
    def is_dir(self) -> bool:
        return self[1]["type"] == "directory"


class _DirectoryWrites(NamedTuple):
    """Where a write of any ordinary name in one logical directory goes, and what it must
    look at first: facts about strings (the layout, the session, the phase), nothing
    about the disk, so kept for the life of the overlay.

    ``names_kept``: names there that an entry names itself, which take the full path.
    ``store`` and ``prefix``: the write target (``prefix + name`` in ``store``).
    ``lower``: a layer below could show the path or hide it (markers matter).
    ``legacy``: the layer index's directory of each legacy location (rule 7's check).
    """

    names_kept: frozenset[str]
    store: Storage
    prefix: str
    lower: bool
    legacy: tuple[str, ...]


def ancestors(logical: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b"]`` (proper ancestors, outermost first)."""
    parts = logical.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def whiteout_rel(prefix: str, logical: str) -> str:
    head, _, name = logical.rpartition("/")
    return f"{prefix}{join(head, WHITEOUT_PREFIX + name)}"


class Overlay:
    """Resolution of logical paths for one repository, session and legacy phase."""

    def __init__(
        self,
        state: Storage,
        repo: Storage,
        layout: Layout,
        session: str | None,
        legacy_mode: str,
        *,
        root: str = "",
        local_root: bool = False,
    ) -> None:
        self.state = state
        self.repo = repo
        self.layout = layout
        self.session = session
        self.legacy_mode = legacy_mode
        self.root = root
        self.local_root = local_root
        self.initialized = False  # FORMAT and meta.json checked (or written) by this process
        self._quiet_reads: set[tuple[str, str]] = set()
        self._supersede_checked: set[str] = set()
        self._session_prefix = f"{SESSIONS_DIR}/{session}/" if session else ""
        self._layers_cache: dict[str, tuple[Location, ...]] = {}
        self._has_lower: dict[str, bool] = {}
        # Which layer answered for a path last time (ABSENT: none): the layers above it
        # are asked first with the adapter's cheap probe, which misses without an exception.
        self._last_layer: dict[str, int] = {}
        self._markers_seen = False
        self._listings: dict[tuple[Storage, str], tuple[tuple[int, ...], list[str], list[str]]] = {}
        # Which layer holds a path, kept exact by inotify on local disk (None elsewhere):
        # one look instead of a probe per layer (see orchfs.layerindex).
        self.index = index_for(state, repo)
        self._beneath: dict[str, tuple[tuple[str, str], ...]] = {}
        # Logical directory -> how writes there go (None: each takes the full path).
        self._directory_writes: dict[str, _DirectoryWrites | None] = {}
        if self.index is not None:
            self._sentinel = self.index.key(state.path_beneath(MARKER_SENTINEL))  # type: ignore[attr-defined]

    # --- layers --------------------------------------------------------------------
    def layers(self, logical: str) -> tuple[Location, ...]:
        cached = self._layers_cache.get(logical)
        if cached is not None:
            return cached
        match = self.layout.match(logical) if logical else None
        out = []
        if self.session and (
            (match is None and logical == "") or (match is not None and match.entry.scope == "session")
        ):
            prefix = self._session_prefix
            out.append(Location("session", self.state, f"{prefix}{logical}".rstrip("/"), prefix))
        out.append(Location("contained", self.state, logical))
        if match is not None and self.legacy_mode != "off":
            out.extend(Location("legacy", self.repo, rel) for rel in match.legacy_paths())
        result = tuple(out)
        if len(self._layers_cache) < MEMO_LIMIT:
            self._layers_cache[logical] = result
        return result

    def target(self, logical: str) -> Location:
        return self.layers(logical)[0]

    def has_lower(self, logical: str) -> bool:
        """Whether a marker could ever matter for ``logical``: it, or one of its
        ancestors, has a layer below the write target (or is a layout directory)."""
        cached = self._has_lower.get(logical)
        if cached is None:
            parent = logical.rpartition("/")[0]  # its answer covers the ancestors: asked once per directory
            cached = bool(
                len(self.layers(logical)) > 1
                or self.layout.virtual_children(logical)
                or (parent and self.has_lower(parent))
            )
            if len(self._has_lower) < MEMO_LIMIT:
                self._has_lower[logical] = cached
        return cached

    def has_legacy(self, logical: str) -> bool:
        """Whether a legacy location could serve ``logical``."""
        return not self.layers(logical)[-1].upper

    def upper_layers(self) -> list[Location]:
        """The layers that can hold markers, for listing the root."""
        out = []
        if self.session:
            out.append(
                Location("session", self.state, self._session_prefix.rstrip("/"), self._session_prefix)
            )
        out.append(Location("contained", self.state, ""))
        return out

    # --- markers -------------------------------------------------------------------
    def markers_present(self, polled: bool = False) -> bool:
        """Whether a marker was ever written (the sentinel is there). The index answers
        when it can (``polled``: as of the poll this operation already made), else the disk."""
        if not self._markers_seen:
            index = self.index
            if index is None:
                said = UNKNOWN
            elif polled:
                said = ABSENT if index.known_absent(self._sentinel) else UNKNOWN
            else:
                said = index.first((self._sentinel,))
            self._markers_seen = said == 0 if said != UNKNOWN else self.state.has_entry(MARKER_SENTINEL)
        return self._markers_seen

    def hidden_by(self, layer: Location, logical: str) -> bool:
        """Whether markers in ``layer`` hide ``logical`` in every layer below it."""
        store, prefix = layer.store, layer.prefix
        if store.has_entry(whiteout_rel(prefix, logical)):
            return True
        for ancestor in ancestors(logical):
            if store.has_entry(whiteout_rel(prefix, ancestor)):
                return True
            if store.has_entry(f"{prefix}{ancestor}/{OPAQUE_MARKER}"):
                return True
        return store.has_entry(f"{prefix}{OPAQUE_MARKER}")

    def write_marker(self, rel: str) -> None:
        if not self._markers_seen and not self.state.has_entry(MARKER_SENTINEL):
            self.state.write(MARKER_SENTINEL, b"")
        self._markers_seen = True
        self.state.write(rel, b"")

    # --- lookups -------------------------------------------------------------------
    def _indexed(self, logical: str, layers: tuple[Location, ...]) -> int:
        """The position of the layer that shows ``logical`` by the layer index, ABSENT,
        or UNKNOWN (ask the layers): one poll, and markers weighed from the same look."""
        index: Any = self.index
        at: int = index.first(self._keys(logical, layers))
        if at > 0 and (self._markers_seen or not index.known_absent(self._sentinel)):
            return UNKNOWN  # markers may hide it: the full check
        return at

    def _keys(self, logical: str, layers: tuple[Location, ...]) -> tuple[tuple[str, str], ...]:
        """The layer index's key of each of ``logical``'s ``layers`` (kept per path)."""
        paths = self._beneath.get(logical)
        if paths is None:  # index_for made sure that every layer is a LocalStorage
            index: Any = self.index
            paths = tuple(index.key(loc.store.path_beneath(loc.rel)) for loc in layers)  # type: ignore[attr-defined]
            if len(self._beneath) < MEMO_LIMIT:
                self._beneath[logical] = paths
        return paths

    def lookup(self, logical: str, upper_listed: bool = False) -> Found | None:
        """The location that serves ``logical`` and its info, or None.

        ``upper_listed``: the caller has just listed the parent in every upper layer and
        did not find ``logical`` there, so only the legacy layers are asked.
        """
        layers = self.layers(logical)
        if self.index is not None and not upper_listed:
            at = self._indexed(logical, layers)
            if at != UNKNOWN:
                found = layers[at].store.info(layers[at].rel) if at >= 0 else None
                if found is not None or at < 0:
                    return None if found is None else Found((layers[at], found))
        for index, location in enumerate(layers):
            if upper_listed and location.upper:
                continue
            found = location.store.info(location.rel)
            if found is not None:
                if index and self.hidden_above(layers, index, logical):
                    return None
                if not location.upper:
                    self._served_from_below(logical)
                return Found((location, found))
        return None

    def exists(self, logical: str) -> bool:
        """Whether a layer shows ``logical`` (without building an info dictionary).

        One exact look per layer until one shows it; the layers above the one that
        answered last time are asked with the cheap probe first (see ``_last_layer``).
        """
        layers = self._layers_cache.get(logical) or self.layers(logical)
        if self.index is not None:
            at = self._indexed(logical, layers)
            if at != UNKNOWN:
                return at >= 0
        top = layers[0]
        if len(layers) == 1:  # most paths: one place to look, no markers to weigh
            return top.store.exists(top.rel)
        last = self._last_layer.get(logical, 0)
        if not last and top.store.exists(top.rel):  # the top layer answered last time too
            return True
        if last == ABSENT:  # absent last time: a cheap probe per layer says whether it still is
            for location in layers:
                if location.store.maybe_exists(location.rel):
                    break
            else:
                return False
        for index, location in enumerate(layers):
            store = location.store
            if index < last or last == ABSENT:
                if not store.maybe_exists(location.rel):
                    continue
            elif not index:
                continue  # asked above
            if store.exists(location.rel):
                if index != last:
                    self._remember_layer(logical, index)
                return not (index and self.hidden_above(layers, index, logical))
        if last != ABSENT:
            self._remember_layer(logical, ABSENT)
        return False

    def _remember_layer(self, logical: str, index: int) -> None:
        if len(self._last_layer) < MEMO_LIMIT or logical in self._last_layer:
            self._last_layer[logical] = index

    def read(self, logical: str, start: int | None = None, end: int | None = None) -> tuple[Location, bytes]:
        """Read through the layers without a separate lookup (one open per layer)."""
        layers = self._layers_cache.get(logical) or self.layers(logical)
        if self.index is not None:
            at = self._indexed(logical, layers)
            if at >= 0:
                data = layers[at].store.read_optional(layers[at].rel, start, end)
                if data is not None:
                    return layers[at], data
            elif at != UNKNOWN:
                raise FileNotFoundError(logical)
        last = self._last_layer.get(logical, 0)
        for index, location in enumerate(layers):
            if (index < last or last == ABSENT) and not location.store.maybe_exists(location.rel):
                continue  # a cheap miss above the layer that served this path last time
            data = location.store.read_optional(location.rel, start, end)
            if data is None:
                continue
            if index != last:
                self._remember_layer(logical, index)
            if index and self.hidden_above(layers, index, logical):
                break
            if not location.upper:
                self._served_from_below(logical)
            return location, data
        raise FileNotFoundError(logical)

    def fast_reader(self, logical: str, location: Location) -> Callable[[], bytes | int | None] | None:
        """A call that reads ``logical`` again as :meth:`read` just did from ``location``
        (its bytes, or anything else when :meth:`read` must answer), or None.

        Only strings are kept, nothing about the disk: every call opens the file beneath
        the root with no link followed, as any read. The write target always wins, so
        its reader reads. A lower layer is read only when the layer index, polled in the
        same call, shows every location above it and the markers sentinel absent: what
        :meth:`read` would then find there (or its reader fails, and :meth:`read`
        answers: a link to judge, nothing there). Without an index,
        or in the ``migrate`` phase (a legacy read moves the file), lower reads take
        :meth:`read`.
        """
        layers = self.layers(logical)
        if location is layers[0]:
            return location.store.whole_reader(location.rel)
        if self.index is None or self.legacy_mode != "read":
            return None
        reader = location.store.whole_reader(location.rel)
        keys = self._beneath.get(logical)  # made by _indexed, which the read asked
        for at, layer in enumerate(layers):
            if layer is location and keys is not None and isinstance(reader, FileReader):
                return self.index.read_if_absent((*keys[:at], self._sentinel), reader)
        return None

    def hidden_above(self, layers: tuple[Location, ...], index: int, logical: str) -> bool:
        """Whether markers in the upper layers above ``layers[index]`` hide ``logical``.

        Checked only once something was found below, so absent paths cost nothing.
        """
        if not self.markers_present():
            return False
        return any(layer.upper and self.hidden_by(layer, logical) for layer in layers[:index])

    def is_virtual_dir(self, logical: str) -> bool:
        """A directory that only exists because layout entries place files in it."""
        for name in self.layout.virtual_children(logical):
            child = join(logical, name)
            if self.lookup(child) is not None or self.is_virtual_dir(child):
                return True
        return False

    def _names(self, location: Location) -> tuple[list[str], list[str]]:
        """The child names and the markers of one layer's directory, without a stat per
        child. On local disk they are kept between calls while the directory is
        unchanged (one lstat says so, and judges a link on the way as every lookup does);
        a directory that holds a symlink is listed afresh each time, its links judged."""
        store, rel = location.store, location.rel
        lstat = getattr(store, "lstat", None)
        if lstat is None:  # object storage and memory: one listing request, nothing kept
            children, markers = store.scan(rel, detail=False)
            return [name for name, _info in children], markers
        st = lstat(rel)
        if st is None:
            raise FileNotFoundError(location.url)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(location.url)
        key = (store, rel)
        identity = (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        kept = self._listings.get(key)
        if kept is not None and kept[0] == identity:
            return kept[1], kept[2]
        started = time.time_ns()
        children, markers = store.scan(rel, detail=False)
        names = [name for name, info in children if info is None]
        changed = max(st.st_mtime_ns, st.st_ctime_ns)
        settled = SETTLED_WHOLE_SECONDS_NS if changed % 1_000_000_000 == 0 else SETTLED_NS
        if len(names) == len(children) and started - changed > settled:
            if len(self._listings) < MEMO_LIMIT:
                self._listings[key] = (identity, names, markers)
        else:
            names = [name for name, _info in children]
        return names, markers

    def listdir(self, logical: str, detail: bool = True) -> dict[str, tuple[dict[str, Any] | None, Location]]:
        """Merged children of a logical directory: name -> (info, serving location); the
        info is None without ``detail`` (no stat per child: names only)."""
        layers = list(self.layers(logical)) if logical else self.upper_layers()
        if logical and self.session and layers[0].layer != "session":
            session_dir = Location(
                "session", self.state, f"{self._session_prefix}{logical}", self._session_prefix
            )
            layers.insert(0, session_dir)
        seen: dict[str, tuple[dict[str, Any], Location]] = {}
        hidden: set[str] = set()
        check = None
        opaque = False
        for index, location in enumerate(layers):
            if index and layers[index - 1].upper:
                if check is None:
                    check = self.markers_present()
                if check and logical and self.hidden_by(layers[index - 1], logical):
                    break
            try:
                if detail:
                    children, markers = location.store.scan(location.rel)
                else:
                    names, markers = self._names(location)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if detail:
                for name, found in children:
                    if name in hidden:
                        continue
                    if name not in seen:
                        seen[name] = (found, location)
                    elif found["type"] == "directory" == seen[name][0]["type"]:
                        _newest_times(seen[name][0], found)  # as info() dates it: every layer
            else:
                fresh = [name for name in names if name not in seen and name not in hidden]
                seen.update(dict.fromkeys(fresh, (None, location)))
            if location.upper:
                for marker in markers:
                    if marker == OPAQUE_MARKER:
                        opaque = True
                    elif marker.startswith(WHITEOUT_PREFIX):
                        hidden.add(marker[len(WHITEOUT_PREFIX) :])
                if opaque:
                    break
        if not opaque:
            # Layout directories are dated as info() dates them where that is cheap (local
            # disk: a few stats); on memory and object storage it takes a subtree listing.
            dated = detail and layers[0].store.capabilities.local_path
            for name in self.layout.virtual_children(logical):
                if name in hidden:
                    continue
                child = join(logical, name)
                if name in seen:
                    shown = seen[name][0]
                    if dated and shown is not None and shown["type"] == "directory":
                        _newest_times(shown, self.directory_times(child, _undated).as_info())
                    continue
                try:
                    found_child = self.lookup(child, upper_listed=True)
                except PathEscapeError:
                    continue  # listings leave out links that leave the root
                if found_child is not None:
                    seen[name] = (found_child.info, found_child.location)
                elif self.is_virtual_dir(child):
                    times = self.directory_times(child, _undated) if dated else Times(None, None)
                    seen[name] = ({"type": "directory", "size": 0, **times.as_info()}, layers[0])
        return seen

    def resolve(self, logical: str) -> Resolution:
        """Which location serves ``logical`` (or, absent, where a write would go)."""
        found = self.lookup(logical) if logical else None
        if found is not None:
            return Resolution(logical, found.location.layer, found.location.url, True)
        target = self.target(logical)
        layer = self._virtual_layer(logical)
        if layer is not None:  # feedback/, prd/: a directory only because its files exist
            return Resolution(logical, layer, target.url, True)
        return Resolution(logical, target.layer, target.url, not logical or self.is_virtual_dir(logical))

    def _virtual_layer(self, logical: str) -> str | None:
        """The layer serving the first file that a layout directory shows (None: empty)."""
        for name in sorted(self.layout.virtual_children(logical)):
            child = join(logical, name)
            found = self.lookup(child)
            if found is not None:
                return found.location.layer
            layer = self._virtual_layer(child)
            if layer is not None:
                return layer
        return None

    def directory_times(self, logical: str, secret_times: Callable[[], Times]) -> Times:
        """A directory's times (see :meth:`_held_times`); one that holds nothing dated
        takes the root's, and a root with nothing stored at all the epoch.
        ``secret_times`` gives those of the ``secrets`` view (the secret store's)."""
        for place in (logical, "") if logical else ("",):
            times = self._held_times(place, secret_times)
            if times.mtime is not None:
                return times
        return Times(0.0, 0.0)

    def _held_times(self, logical: str, secret_times: Callable[[], Times]) -> Times:
        """The newest of the layers that show the directory where the backend keeps
        directory times (local disk), else the newest of what it holds (memory and object
        storage keep none for directories); no times when it holds no file."""
        if logical == SECRETS_VIEW:
            return secret_times()
        if logical:
            layers: list[Location] = list(self.layers(logical))
        else:  # the root: the state directory (and session), and the repository for legacy files
            layers = self.upper_layers()
            if self.legacy_mode != "off":
                layers.append(Location("legacy", self.repo, ""))
        infos = (location.store.info(location.rel) for location in layers)
        own = Times.of(info for info in infos if info is not None and info["type"] == "directory")
        if own.mtime is not None:
            return own
        return Times.of(
            self._held_times(join(logical, name), secret_times).as_info()
            if found.get("mtime") is None
            else found
            for name, (found, _location) in self.listdir(logical).items()
        )

    # --- reads through a lower layer (rules 7-9) -------------------------------------
    def served(self, logical: str, location: Location) -> Location:
        """Rules 7-9 for a read served by ``location``; returns where to read now."""
        key = (logical, location.layer)
        if key in self._quiet_reads:
            return location
        if location.layer == "legacy":
            if self.legacy_mode == "migrate":
                return self._migrate_on_read(logical, location)
            warn_legacy_once(logical, location.url)
            if sum(not layer.upper for layer in self.layers(logical)) > 1:
                self._warn_conflict_once(logical, location)  # two legacy locations may differ
        elif (
            self.has_lower(logical)
            and location.url not in _conflicts_checked
            and not self._lower_absent(logical)
        ):
            self._warn_conflict_once(logical, location)
        if len(self._quiet_reads) < MEMO_LIMIT:
            self._quiet_reads.add(key)  # warned or checked once: later reads skip this
        return location

    def _lower_absent(self, logical: str) -> bool:
        """Whether the layer index shows every lower location of ``logical`` absent, as of
        the poll of the read asking: then no pair can differ, and the conflict check of
        that read looks at no layer on the disk (a stat of each, for every path read)."""
        keys = self._beneath.get(logical)  # made by _indexed, which the read asked
        if keys is None:
            return False
        index: Any = self.index
        layers = self.layers(logical)
        return all(
            index.known_absent(key) for key, layer in zip(keys, layers, strict=True) if not layer.upper
        )

    def _warn_conflict_once(self, logical: str, upper: Location) -> None:
        key = upper.url
        if key in _conflicts_checked:
            return
        _conflicts_checked.add(key)
        try:
            pairs = self._conflicts_of(logical)
        except (PathEscapeError, UnsafeStateError):
            return  # a lower location that leads outside is doctor's unsafe-state, not this read's
        for pair in pairs:
            if pair.upper_url == upper.url and pair.kind != "stale":  # stale: orchfs's own
                winner = "the first" if pair.kind == "legacy-pair" else "the new copy"
                warn_outside(
                    f"{logical}: {pair.upper_url} and {pair.legacy_url} both exist and differ; "
                    f"{winner} wins. Run `orchfs doctor` to see both hashes and "
                    "`orchfs migrate --prefer new|legacy` to settle it.",
                    LegacyConflictWarning,
                )
                return

    def _migrate_on_read(self, logical: str, location: Location) -> Any:
        data = location.store.read(location.rel)
        target = self.prepare_write(logical)
        target.store.write(target.rel, data)
        self.finish_write(logical, target)
        self.state.write(f"migration_backup/on-read/{location.rel}", data)
        location.store.remove(location.rel)
        return target

    # --- writes (rules 2-6) ------------------------------------------------------------
    def prepare_write(self, logical: str) -> Any:
        """Check the layout version, initialise the state dir, record what a write
        supersedes (rule 7), reopen whited-out parents."""
        self.initialize()
        polled = False  # whether this write has asked the layer index already
        if self.has_legacy(logical) and (
            logical not in self._supersede_checked or self._legacy_indexed(logical)
        ):
            self._record_superseded(logical)
            polled = self.index is not None  # its lookup did
        target = self.target(logical)
        if self.has_lower(logical) and self.markers_present(polled):
            for ancestor in ancestors(logical):
                marker = whiteout_rel(target.prefix, ancestor)
                if target.store.has_entry(marker):
                    target.store.remove(marker)
                    target.store.makedirs(f"{target.prefix}{ancestor}")
                    self.write_marker(f"{target.prefix}{ancestor}/{OPAQUE_MARKER}")
        return target

    def initialize(self) -> None:
        """Make the state directory ready for writes: refuse a newer layout
        (``LayoutVersionError``), write ``FORMAT`` and ``meta.json`` if they are missing."""
        if not self.initialized:
            from .meta import ensure_initialized

            ensure_initialized(self.state, self.root, self.local_root)
            self.initialized = True

    def _legacy_indexed(self, logical: str) -> bool:
        """Whether the layer index shows a file at a legacy location of ``logical``: a
        path checked once (``_supersede_checked``) is checked again then, as an old
        orchestrator may put its file there after the check, and while it serves the
        path (the upper copy removed since) a write replaces it. An upper layer is never
        asked. Without an index the check costs a request per legacy location on object
        storage, so the memo stands until this instance sees a legacy file serve the
        path or removes the path (:meth:`_served_from_below`, :meth:`remove_file`)."""
        if self.index is None:
            return False
        layers = self.layers(logical)
        keys = zip(self._keys(logical, layers), layers, strict=True)
        said = self.index.first(tuple(key for key, loc in keys if not loc.upper))
        return said != ABSENT  # UNKNOWN: look again, the index cannot say

    def _served_from_below(self, logical: str) -> None:
        """A legacy layer serves ``logical`` now: the next write must check rule 7 again."""
        self._supersede_checked.discard(logical)

    def _record_superseded(self, logical: str) -> None:
        """Rule 7: a write, copy-up or whiteout is about to replace what a legacy file
        serves; record that file's hash and size (and those of later legacy locations
        with the same bytes) so that it reads as stale rather than as a conflict."""
        if len(self._supersede_checked) < MEMO_LIMIT:
            self._supersede_checked.add(logical)
        try:
            found = self.lookup(logical)
        except PathEscapeError:
            return  # a link planted above: the write replaces it, and no legacy file serves
        if found is None or found.location.upper or found.is_dir:
            return  # an upper copy already serves it, or nothing does
        from .supersede import write_record  # here: most writes supersede nothing

        served = found.location.store.read(found.location.rel)
        write_record(self.state, found.location.rel, served)
        for location in self.layers(logical):
            if location.upper or location.rel == found.location.rel:
                continue
            other = location.store.read_optional(location.rel)
            if other == served:
                write_record(self.state, location.rel, other)

    def finish_write(self, logical: str, target: Location) -> None:
        # The markers as prepare_write saw them: a whiteout made since is another's race.
        if self.has_lower(logical) and self.markers_present(polled=True):
            marker = whiteout_rel(target.prefix, logical)
            if target.store.has_entry(marker):
                target.store.remove(marker)

    def whiteout_if_lower(self, logical: str) -> None:
        """Rule 4: hide what lower layers still show of ``logical``."""
        overlay = self
        if not overlay.has_lower(logical):
            return  # no layer below could show it: nothing to hide, nothing to ask the backend
        if overlay.lookup(logical) is not None or overlay.is_virtual_dir(logical):
            target = self.prepare_write(logical)
            overlay.write_marker(whiteout_rel(target.prefix, logical))

    def write(self, logical: str, data: bytes, kind: WriteKind = REPLACE) -> None:
        """Rule 2: ``data`` lands in the write target of ``logical``, atomically."""
        if self._write_at_once(logical, data, kind):
            return
        target = self.prepare_write(logical)
        target.store.write(target.rel, data, kind)
        self.finish_write(logical, target)

    def _write_at_once(self, logical: str, data: bytes, kind: WriteKind) -> bool:
        """The write of :meth:`write` when it has nothing to do but write: False (and
        nothing done) unless the layer index, polled now, shows no legacy file at the
        path (rule 7: nothing to supersede) and no marker anywhere (nothing to reopen or
        remove). What :meth:`prepare_write` would ask, in one poll and a look-up per
        legacy location, with nothing built or kept per path."""
        index = self.index
        if index is None or not self.initialized:
            return False
        head, _, name = logical.rpartition("/")
        plan = self._directory_writes.get(head, False)
        if plan is False:
            plan = self._plan_writes(head, name)
        if plan is None or name in plan.names_kept:
            return False
        if plan.lower:
            if self._markers_seen:
                return False
            keys = [self._sentinel]
            for directory in plan.legacy:
                keys.append((directory, name))
            if index.first(keys) != ABSENT:
                return False  # a legacy file to supersede, a marker, or ask the disk
        plan.store.write(plan.prefix + name, data, kind)
        return True

    def _plan_writes(self, head: str, name: str) -> _DirectoryWrites | None:
        """How writes in the logical directory ``head`` go (see :class:`_DirectoryWrites`),
        worked out from those of ``name`` there; None where a location is not the
        directory's own plus the name (then every write there takes the full path)."""
        plan = None
        kept = self.layout.named_in(head)
        if name in kept:
            return None  # asked again with an ordinary name
        logical = f"{head}/{name}" if head else name
        layers = self.layers(logical)
        prefixes = [loc.rel[: -len(name)] for loc in layers if loc.rel.endswith(name)]
        if len(prefixes) == len(layers) and all(not p or p.endswith("/") for p in prefixes):
            legacy = tuple(
                self.index.key(loc.store.path_beneath(loc.rel))[0]  # type: ignore[union-attr,attr-defined]
                for loc in layers
                if not loc.upper
            )
            target = layers[0]
            plan = _DirectoryWrites(kept, target.store, prefixes[0], self.has_lower(logical), legacy)
        if len(self._directory_writes) < MEMO_LIMIT:
            self._directory_writes[head] = plan
        return plan

    def open_writer(self, logical: str, kind: WriteKind, *, found: Found | None) -> Any:
        """A staged writer into the write target; ``found`` (the caller's lookup, which
        asked the write target first) is copied up first when given (rule 3). Without a
        lookup (``kind.looked`` false) the store checks what it must itself."""
        target = self.prepare_write(logical)
        writer = target.store.open_write(target.rel, kind)
        writer.after_publish = lambda: self.finish_write(logical, target)
        if found is not None:  # copy-up: the lower file stays untouched
            writer.write(found.location.store.read(found.location.rel))
        return writer

    def copy_file(self, source: Location, logical: str) -> None:
        """Write what ``source`` holds to ``logical`` (a server-side copy where it can)."""
        target = self.prepare_write(logical)
        if source.store is target.store:
            target.store.copy(source.rel, target.rel)
        else:
            target.store.write(target.rel, source.store.read(source.rel))
        self.finish_write(logical, target)

    def append(self, logical: str, line: bytes, lock: Callable[[str], Any]) -> None:
        """Append ``line``, atomically with respect to every other writer: natively where
        the backend appends, else a read-modify-write under ``lock(name)``."""
        target = self.target(logical)
        if self.initialized and target.store.append_existing(target.rel, line):
            return  # the common case: the log already lives in its write target
        native = target.store.capabilities.native_append
        if native:
            found = self.lookup(logical) if logical else None
            if found is None or found.location == target:
                if found is None:
                    target = self.prepare_write(logical)
                target.store.append(target.rel, line)
                return
        lock_name = "append-" + sha1(logical.encode(), usedforsecurity=False).hexdigest()[:16]
        with lock(lock_name):
            try:  # one read through the layers; it asks the write target first
                location, old = self.read(logical)
            except FileNotFoundError:
                location, old = None, b""
            target = self.prepare_write(logical)
            if native and location == target:
                target.store.append(target.rel, line)
            else:  # read-modify-write, or the copy-up of a lower log (rule 3)
                target.store.write(target.rel, old + line, REPLACE_LOOKED)
            self.finish_write(logical, target)

    def move_file(self, logical1: str, logical2: str, source: Location) -> None:
        """Rule 6: a rename is a copy-up to the new name plus a whiteout at the old one."""
        target = self.prepare_write(logical2)
        in_target = source == self.target(logical1)
        if in_target and source.store is target.store and source.store.capabilities.atomic_rename:
            source.store.rename(source.rel, target.rel)
        else:
            self.copy_file(self.served(logical1, source), logical2)
            if in_target:
                source.store.remove(source.rel)
        self.finish_write(logical2, target)
        self._supersede_checked.discard(logical1)  # a legacy file may serve it next
        self.whiteout_if_lower(logical1)

    def remove_file(self, logical: str, location: Location) -> None:
        self._supersede_checked.discard(logical)  # a legacy file may serve it next
        if location == self.target(logical):
            location.store.remove(location.rel)
        self.whiteout_if_lower(logical)

    def remove_dir(self, logical: str) -> None:
        """Rule 5: ``rm -r`` removes the write target's tree and hides the layers below."""
        self._supersede_checked.clear()  # legacy files may serve any path below it next
        target = self.target(logical)
        if target.store.exists(target.rel):
            target.store.remove_tree(target.rel)
        self.whiteout_if_lower(logical)

    def make_directory(self, logical: str) -> None:
        target = self.prepare_write(logical)
        marker = whiteout_rel(target.prefix, logical)
        overlay = self
        if overlay.has_lower(logical) and overlay.markers_present() and target.store.has_entry(marker):
            # Rule 5: a directory re-created after rm -r is opaque to the layers below.
            target.store.remove(marker)
            target.store.makedirs(target.rel)
            self.write_marker(f"{target.rel}/{OPAQUE_MARKER}")
            return
        target.store.makedirs(target.rel)

    # --- conflicts (rule 7) ----------------------------------------------------------
    def conflicts(self) -> list[Conflict]:
        """Every pair of locations of one path that both exist and differ: an upper copy
        and a legacy file orchfs did not supersede (or that changed since), or two legacy
        locations of one entry (import sources included)."""
        return [c for c in self.legacy_pairs() if c.kind != "stale"]

    def legacy_pairs(self) -> list[Conflict]:
        """:meth:`conflicts` plus the ``stale`` legacy files (superseded, unchanged)."""
        out: list[Conflict] = []
        for entry in self.layout.entries:
            names = [entry.logical] + [entry.logical + c for c in entry.companions]
            if entry.is_dir:
                names = [join(entry.logical, rel) for rel in self._legacy_files(entry)]
            for logical in names:
                out.extend(self._conflicts_of(logical))
        return out + self._import_source_pairs()

    def _import_source_pairs(self) -> list[Conflict]:
        """Import sources (legacy secret files) that land on one contained name and differ."""
        targets: dict[str, list[Any]] = {}
        for source, contained in self.layout.import_sources:
            targets.setdefault(contained, []).append(Location("legacy", self.repo, source))
        out = []
        for contained, sources in targets.items():
            upper = Location("contained", self.state, contained)
            out.extend(self._differing(contained, [upper, *sources]))
        return out

    def _legacy_files(self, entry: Any) -> list[str]:
        files: set[str] = set()
        for location in entry.legacy:
            files.update(self.repo.find_files(location))
        return sorted(files)

    def _conflicts_of(self, logical: str) -> list[Conflict]:
        return self._differing(logical, self.layers(logical))

    def _differing(self, logical: str, layers: Any) -> list[Conflict]:
        """The first file among ``layers`` (upper first) against each later legacy file."""
        from .supersede import is_stale, read_record

        files = [
            (loc, info) for loc in layers if (info := loc.store.info(loc.rel)) and info["type"] == "file"
        ]
        files = [pair for pair in files if pair[0].upper][:1] + [pair for pair in files if not pair[0].upper]
        if len(files) < 2:
            return []
        first = files[0][0]
        first_hash = hashlib.sha256(first.store.read(first.rel)).hexdigest()
        out = []
        for location, info in files[1:]:
            legacy_hash = hashlib.sha256(location.store.read(location.rel)).hexdigest()
            if legacy_hash == first_hash:
                continue
            if not first.upper:
                kind = "legacy-pair"
            else:
                record = read_record(self.state, location.rel)
                if is_stale(record, info.get("size"), lambda h=legacy_hash: h):
                    kind = "stale"
                else:
                    kind = "legacy-changed" if record is not None else "differ"
            out.append(Conflict(logical, first.url, location.url, first_hash, legacy_hash, kind))
        return out


_warned_legacy: set[str] = set()
_conflicts_checked: set[str] = set()


def forget_warnings() -> None:
    """Forget which paths this process warned about or checked for conflicts."""
    _warned_legacy.clear()
    _conflicts_checked.clear()


def warn_legacy_once(logical: str, url: str) -> None:
    """Rule 8: one LegacyPathWarning per legacy file per process."""
    if url in _warned_legacy:
        return
    _warned_legacy.add(url)
    warn_outside(
        f"{logical} was read from its v1 location {url}; run `orchfs migrate` to move it into .orchestrator/",
        LegacyPathWarning,
    )


__all__ = [
    "Conflict",
    "Found",
    "Location",
    "Overlay",
    "Resolution",
    "Times",
    "forget_warnings",
]
