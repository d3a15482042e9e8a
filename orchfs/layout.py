"""The v1 -> v2 layout as data: which logical paths have legacy locations, and where.

A :class:`Layout` is a list of :class:`Entry` values. An entry names a logical file
(``state.json``) or directory (``checkpoints/``), its scope (``session`` or ``repo``)
and the legacy locations that still hold it in v1 repositories, relative to the
repository root and tried in order. In v2 every logical path lives at the same path
under ``.orchestrator/`` (under ``sessions/<id>/`` for a session-scoped entry when a
session is bound). Paths that no entry names have no legacy location.

Layouts load from YAML (:meth:`Layout.from_yaml`) or a dict (:meth:`Layout.from_dict`)
in this shape, and :func:`default_layout` is the table of the design::

    entries:
      - {logical: state.json, scope: session, legacy: [.workflow_state.json]}
      - {logical: checkpoints/, scope: session, legacy: [.workflow_checkpoints/]}

``companions`` (e.g. ``[-wal, -shm, -journal]`` for SQLite) are suffixes that travel
with a file entry. ``import_sources`` maps v1 files that migration moves into
``.orchestrator/`` but that the logical view never shows (legacy secret files).

``write_once: true`` says that every file of the entry is written whole once and after
that only ever replaced by a rename, never written in place by any program: in the
default layout only ``checkpoints/`` (each checkpoint is a snapshot that the
orchestrator writes once). A migration keeps the backup of such a file as a hard link
of it rather than a copy (see :mod:`orchfs.migrate`). Everything else is written in
place by someone: the state file by v1 tools and editors that truncate it, logs by
appends, SQLite databases and their companions page by page, secrets by their own tools;
a companion is never write-once, and neither is a file that no entry names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .errors import ConfigError, PathEscapeError
from .paths import MARKER_PREFIXES, validate

SCOPES = ("session", "repo")
# v1-looking names that no entry may name: reported by migrate and doctor as unknown (or,
# with a ``.bak`` suffix on a legacy name, as leftovers of an earlier migration script).
UNNAMED_PATTERNS = (".workflow_", ".manus/secrets.enc")
_ENTRY_KEYS = {"logical", "scope", "legacy", "companions", "write_once"}


class Entry(NamedTuple):
    """One logical file or directory and its legacy locations."""

    logical: str
    scope: str
    legacy: tuple[str, ...]
    is_dir: bool = False
    companions: tuple[str, ...] = ()
    # Each file written whole once, then only ever replaced by a rename (see the module).
    write_once: bool = False


class Match(NamedTuple):
    """A logical path matched to its entry: ``remainder`` is the part below a directory."""

    entry: Entry
    remainder: str

    def legacy_paths(self) -> tuple[str, ...]:
        suffix = f"/{self.remainder}" if self.remainder else ""
        return tuple(loc + suffix for loc in self.entry.legacy)


@dataclass(frozen=True)
class Layout:
    """An ordered set of entries with fast lookup by logical path."""

    entries: tuple[Entry, ...]
    import_sources: tuple[tuple[str, str], ...] = ()
    _files: dict[str, tuple[Entry, str]] = field(default_factory=dict, compare=False, repr=False)
    _dirs: dict[str, Entry] = field(default_factory=dict, compare=False, repr=False)
    _virtual: dict[str, frozenset[str]] = field(default_factory=dict, compare=False, repr=False)
    # write_once of the directories met inside directory entries (every file there answers alike)
    _write_once_dirs: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for entry in self.entries:
            if entry.is_dir:
                self._dirs[entry.logical] = entry
            else:
                self._files[entry.logical] = (entry, "")
                for suffix in entry.companions:
                    self._files[entry.logical + suffix] = (entry, suffix)
            parts = entry.logical.split("/")
            for depth in range(len(parts)):
                parent = "/".join(parts[:depth])
                children = self._virtual.get(parent, frozenset())
                self._virtual[parent] = children | {parts[depth]}

    def match(self, logical: str) -> Match | None:
        """The entry that names ``logical`` (a file, a companion, or a path in a dir)."""
        found = self._files.get(logical)
        if found is not None:
            entry, suffix = found
            if suffix:
                return Match(
                    Entry(
                        entry.logical + suffix,
                        entry.scope,
                        tuple(loc + suffix for loc in entry.legacy),
                    ),
                    "",
                )
            return Match(entry, "")
        if not self._dirs:
            return None
        head = logical
        while head:
            entry = self._dirs.get(head)
            if entry is not None:
                return Match(entry, logical[len(head) + 1 :])
            head = head.rpartition("/")[0]
        return None

    def write_once(self, logical: str) -> bool:
        """Whether ``logical`` belongs to a write-once entry (see the module docstring):
        False for a companion and for a path that no entry names. One look-up per file
        of a directory already asked about (a migration asks for every checkpoint)."""
        parent = logical.rpartition("/")[0]
        known = self._write_once_dirs.get(parent)
        if known is not None:
            return known
        found = self.match(logical)
        if found is None:
            return False
        if found.remainder:  # inside a directory entry, as is all of ``parent`` (no entry nests)
            self._write_once_dirs[parent] = found.entry.write_once
        return found.entry.write_once

    def virtual_children(self, logical_dir: str) -> frozenset[str]:
        """Names that entries place directly in ``logical_dir`` (``feedback`` -> tool.jsonl)."""
        return self._virtual.get(logical_dir, frozenset())

    def named_in(self, logical_dir: str) -> frozenset[str]:
        """Names directly in ``logical_dir`` that an entry names itself (a file, one of its
        companions, a directory, or a directory on the way to one): any other name there
        matches what ``logical_dir`` matches, with the name added to the remainder."""
        prefix = f"{logical_dir}/" if logical_dir else ""
        companions = (
            name[len(prefix) :]
            for name in self._files
            if name.startswith(prefix) and "/" not in name[len(prefix) :]
        )
        return self.virtual_children(logical_dir) | frozenset(companions)

    def legacy_names(self) -> list[str]:
        """Every legacy location (repo-relative), entries first, then import sources."""
        names = [loc for entry in self.entries for loc in entry.legacy]
        names += [
            loc + suffix for entry in self.entries for suffix in entry.companions for loc in entry.legacy
        ]
        return names + [source for source, _ in self.import_sources]

    # --- loading -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> Layout:
        return _build(data, source, lines={})

    @classmethod
    def from_yaml(cls, text: str, source: str = "<string>") -> Layout:
        from .safeyaml import compose

        node = compose(text, source)
        lines: dict[int, int] = {}
        data = _to_python(node, lines) if node is not None else None
        return _build(data, source, lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "entries": [
                {
                    "logical": e.logical + ("/" if e.is_dir else ""),
                    "scope": e.scope,
                    "legacy": [loc + ("/" if e.is_dir else "") for loc in e.legacy],
                    **({"companions": list(e.companions)} if e.companions else {}),
                    **({"write_once": True} if e.write_once else {}),
                }
                for e in self.entries
            ],
            "import_sources": [{"legacy": s, "contained": c} for s, c in self.import_sources],
        }


def _to_python(node: Any, lines: dict[int, int]) -> Any:
    """YAML node -> Python value, remembering each container's line by ``id``."""
    import yaml

    from .safeyaml import construct

    if isinstance(node, yaml.MappingNode):
        value: Any = {}
        for key_node, value_node in node.value:
            value[_to_python(key_node, lines)] = _to_python(value_node, lines)
    elif isinstance(node, yaml.SequenceNode):
        value = [_to_python(item, lines) for item in node.value]
    else:
        return construct(node)
    lines[id(value)] = node.start_mark.line + 1
    return value


def _build(data: Any, source: str, lines: dict[int, int]) -> Layout:
    def fail(container: Any, message: str) -> ConfigError:
        line = lines.get(id(container))
        return ConfigError(f"{source}{f':{line}' if line else ''}: {message}")

    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise fail(data, "a layout is a mapping with a list under 'entries'")
    unknown_top = set(data) - {"entries", "import_sources", "version"}
    if unknown_top:
        raise fail(data, f"unknown layout keys {sorted(unknown_top)}")
    entries: list[Entry] = []
    claimed: dict[str, int | None] = {}
    for raw in data["entries"]:
        entry = _entry(raw, fail)
        if entry.logical in claimed:
            raise fail(raw, f"logical path {entry.logical!r} is claimed twice")
        claimed[entry.logical] = lines.get(id(raw))
        entries.append(entry)
    for entry in entries:
        for other in entries:
            if other.is_dir and entry is not other and entry.logical.startswith(other.logical + "/"):
                raise ConfigError(
                    f"{source}: {entry.logical!r} lies inside directory entry "
                    f"{other.logical + '/'!r}; name one or the other"
                )
    sources = []
    for raw in data.get("import_sources") or []:
        if not isinstance(raw, dict) or set(raw) != {"legacy", "contained"}:
            raise fail(raw, "an import source is a mapping with 'legacy' and 'contained'")
        sources.append((_legacy_location(raw["legacy"], raw, fail), _contained(raw, fail)))
    return Layout(tuple(entries), tuple(sources))


def _contained(raw: dict[str, Any], fail: Any) -> str:
    try:
        return _plain_relative(raw["contained"])
    except (PathEscapeError, ValueError) as exc:
        raise fail(raw, f"bad contained location {raw['contained']!r}: {exc}") from None


def _plain_relative(text: Any) -> str:
    if not isinstance(text, str) or not text.strip("/"):
        raise ValueError("must be a non-empty relative path")
    parts = text.strip("/").split("/")
    if text.startswith("/") or any(p in ("..", ".", "") for p in parts) or "\\" in text:
        raise ValueError("must stay inside the repository (no '..', no absolute path)")
    if any(p.startswith(MARKER_PREFIXES) for p in parts):
        raise ValueError(f"has a name starting with {' or '.join(MARKER_PREFIXES)}, reserved for orchfs")
    return "/".join(parts)


def _legacy_location(text: Any, raw: Any, fail: Any) -> str:
    try:
        return _plain_relative(text)
    except ValueError as exc:
        raise fail(raw, f"legacy location {text!r} {exc}") from None


def _entry(raw: Any, fail: Any) -> Entry:
    if not isinstance(raw, dict):
        raise fail(raw, f"an entry is a mapping, not {type(raw).__name__}")
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        raise fail(raw, f"unknown entry keys {sorted(unknown)} (allowed: {sorted(_ENTRY_KEYS)})")
    logical_text = raw.get("logical")
    if not isinstance(logical_text, str) or not logical_text.strip("/"):
        raise fail(raw, "each entry needs a non-empty 'logical' path")
    is_dir = logical_text.endswith("/")
    try:
        logical = validate(logical_text)
    except PathEscapeError as exc:
        raise fail(raw, f"bad logical path: {exc}") from None
    scope = raw.get("scope", "repo")
    if scope not in SCOPES:
        raise fail(raw, f"unknown scope {scope!r} for {logical_text!r} (use session or repo)")
    legacy_raw = raw.get("legacy", [])
    if isinstance(legacy_raw, str):
        legacy_raw = [legacy_raw]
    if not isinstance(legacy_raw, list):
        raise fail(raw, "'legacy' is a list of repository-relative paths")
    legacy = tuple(_legacy_location(loc, raw, fail) for loc in legacy_raw)
    companions = raw.get("companions", [])
    if not isinstance(companions, list) or not all(isinstance(c, str) and c for c in companions):
        raise fail(raw, "'companions' is a list of suffixes such as '-wal'")
    write_once = raw.get("write_once", False)
    if not isinstance(write_once, bool):
        raise fail(raw, "'write_once' is true or false")
    return Entry(logical, scope, legacy, is_dir, tuple(companions), write_once)


_DEFAULT = {
    "entries": [
        {"logical": "state.json", "scope": "session", "legacy": [".workflow_state.json"]},
        {"logical": "log.jsonl", "scope": "session", "legacy": [".workflow_log.jsonl"]},
        {
            "logical": "checkpoints/",
            "scope": "session",
            "legacy": [".workflow_checkpoints/"],
            "write_once": True,
        },
        {
            "logical": "feedback/tool.jsonl",
            "scope": "session",
            "legacy": [".workflow_tool_feedback.jsonl"],
        },
        {
            "logical": "feedback/process.jsonl",
            "scope": "session",
            "legacy": [".workflow_process_feedback.jsonl"],
        },
        {"logical": "sessions/", "scope": "repo", "legacy": [".workflow_sessions/"]},
        {
            "logical": "config.yaml",
            "scope": "repo",
            "legacy": [".orchestra.yaml", ".orchestrator.yaml"],
        },
        {
            "logical": "approvals.db",
            "scope": "repo",
            "legacy": [".workflow_approvals.db"],
            "companions": ["-wal", "-shm", "-journal"],
        },
        {"logical": "prd/state.json", "scope": "repo", "legacy": [".claude/prd_state.json"]},
        {"logical": "audit.jsonl", "scope": "repo", "legacy": []},
    ],
    "import_sources": [
        {"legacy": ".secrets.enc", "contained": "secrets/legacy.enc"},
        {"legacy": "secrets.enc.yaml", "contained": "secrets/sops.yaml"},
        {"legacy": ".manus/secrets.enc.yaml", "contained": "secrets/sops.yaml"},
    ],
}

_default_layout: Layout | None = None


def is_unnamed_v1(rel: str) -> bool:
    """Whether the root-relative ``rel`` is, or lies below, a v1-looking name
    (:data:`UNNAMED_PATTERNS`): what a migration may retire into its backup."""
    for pattern in UNNAMED_PATTERNS:
        folder, _, stem = pattern.rpartition("/")
        parts = rel.split("/")
        depth = folder.count("/") + 1 if folder else 0
        if len(parts) > depth and "/".join(parts[:depth]) == folder and parts[depth].startswith(stem):
            return True
    return False


def default_layout() -> Layout:
    """The v1 -> v2 table of the design, as a :class:`Layout`."""
    global _default_layout
    if _default_layout is None:
        _default_layout = Layout.from_dict(_DEFAULT, "<default layout>")
    return _default_layout


def coerce_layout(layout: Any) -> Layout:
    """Accept a Layout, a dict, YAML text, or None (the default)."""
    if layout is None:
        return default_layout()
    if isinstance(layout, Layout):
        return layout
    if isinstance(layout, dict):
        return Layout.from_dict(layout)
    if isinstance(layout, str):
        return Layout.from_yaml(layout)
    raise TypeError(f"layout= takes a Layout, a dict or YAML text, not {type(layout).__name__}")


__all__ = [
    "Entry",
    "Layout",
    "Match",
    "default_layout",
]
