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

import stat
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import PathEscapeError
from .layout import Layout
from .paths import MARKER_SENTINEL, MEMO_LIMIT, OPAQUE_MARKER, WHITEOUT_PREFIX, join

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


class Found(NamedTuple):
    """The location that serves a logical path, and the info its lookup saw there."""

    location: Location
    info: dict[str, Any]

    @property
    def is_dir(self) -> bool:
        return self.info["type"] == "directory"


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
        self, state: Storage, repo: Storage, layout: Layout, session: str | None, legacy_mode: str
    ) -> None:
        self.state = state
        self.repo = repo
        self.layout = layout
        self.session = session
        self.legacy_mode = legacy_mode
        self._session_prefix = f"{SESSIONS_DIR}/{session}/" if session else ""
        self._layers_cache: dict[str, tuple[Location, ...]] = {}
        self._has_lower: dict[str, bool] = {}
        # Which layer answered for a path last time (ABSENT: none): the layers above it
        # are asked first with the adapter's cheap probe, which misses without an exception.
        self._last_layer: dict[str, int] = {}
        self._markers_seen = False
        self._listings: dict[tuple[Storage, str], tuple[tuple[int, ...], list[str], list[str]]] = {}

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
            cached = any(
                len(self.layers(a)) > 1 or self.layout.virtual_children(a)
                for a in (logical, *ancestors(logical))
            )
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
    def markers_present(self) -> bool:
        if not self._markers_seen:
            self._markers_seen = self.state.has_entry(MARKER_SENTINEL)
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
    def lookup(self, logical: str, upper_listed: bool = False) -> Found | None:
        """The location that serves ``logical`` and its info, or None.

        ``upper_listed``: the caller has just listed the parent in every upper layer and
        did not find ``logical`` there, so only the legacy layers are asked.
        """
        layers = self.layers(logical)
        for index, location in enumerate(layers):
            if upper_listed and location.upper:
                continue
            found = location.store.info(location.rel)
            if found is not None:
                if index and self.hidden_above(layers, index, logical):
                    return None
                return Found(location, found)
        return None

    def exists(self, logical: str) -> bool:
        """Whether a layer shows ``logical`` (without building an info dictionary).

        One exact look per layer until one shows it; the layers above the one that
        answered last time are asked with the cheap probe first (see ``_last_layer``).
        """
        layers = self._layers_cache.get(logical) or self.layers(logical)
        top = layers[0]
        if len(layers) == 1:  # most paths: one place to look, no markers to weigh
            return top.store.exists(top.rel)
        last = self._last_layer.get(logical, 0)
        if not last and top.store.exists(top.rel):  # the top layer answered last time too
            return True
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
            return location, data
        raise FileNotFoundError(logical)

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
                    if name not in seen and name not in hidden:
                        seen[name] = (found, location)
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
            for name in self.layout.virtual_children(logical):
                if name in seen or name in hidden:
                    continue
                child = join(logical, name)
                try:
                    found_child = self.lookup(child, upper_listed=True)
                except PathEscapeError:
                    continue  # listings leave out links that leave the root
                if found_child is not None:
                    seen[name] = (found_child.info, found_child.location)
                elif self.is_virtual_dir(child):
                    seen[name] = (
                        {"type": "directory", "size": 0, "mtime": None, "created": None},
                        layers[0],
                    )
        return seen


__all__ = [
    "Found",
    "Location",
    "Overlay",
]
