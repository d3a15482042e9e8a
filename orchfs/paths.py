"""The path gate: the one validation every logical path passes before any I/O.

A logical path is relative and ``/``-separated (``checkpoints/cp_1.json``); the
protocol (``orch://``) and leading slashes are optional. :func:`validate` returns
the normalised form (``""`` for the root) or raises :class:`PathEscapeError` with a
message that says what was wrong. Results are memoised, so the gate costs one
dictionary lookup for a path that has been seen before.

What is refused, and why:

* ``..`` in any spelling (plain, percent-encoded, full-width or other Unicode forms
  that fold to ``..`` under NFKC): it would climb out of the state directory;
* NUL, control and line-separator characters: they truncate or split paths in logs
  and in C APIs;
* backslashes, drive letters (``C:``) and embedded URLs (``file://``): they smuggle
  absolute physical paths through a relative one;
* a leading ``~`` segment: some tools expand it to a home directory;
* names that are not in Unicode NFC: ``café`` in NFD and in NFC would be two files
  on Linux and one on macOS;
* segments longer than 255 bytes and paths longer than 4096 bytes (``NAME_MAX``/``PATH_MAX``);
* names reserved for orchfs itself: whiteout markers (``.wh.*``), temp files
  (``.orchfs-tmp.*``) and the internal entries at the top of ``.orchestrator/``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from functools import lru_cache
from urllib.parse import unquote

from .errors import PathEscapeError

PROTOCOL = "orch"
SECRETS_VIEW = "secrets"  # the logical subtree that shows the secret store as files
STATE_DIR = ".orchestrator"  # the directory that plays the state directory inside a local root
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# Written once any marker exists: while it is absent, marker checks are skipped.
MARKER_SENTINEL = ".wh..wh..markers"
TEMP_PREFIX = ".orchfs-tmp."
MARKER_PREFIXES = (WHITEOUT_PREFIX, TEMP_PREFIX)

# Entries at the top of the state directory that belong to orchfs, not to the logical view:
# orchfs's own, and the bookkeeping of workflow-orchestrator's migrate_to_sessions.py
# (``current``, its log and its done-marker), which orchfs adopts as its own (DESIGN §8).
INTERNAL_NAMES = frozenset(
    {
        "FORMAT",
        "meta.json",
        "locks",
        "migrations",
        "migration_backup",
        "tmp",
        "superseded",
        "current",
        "migration.log",
        ".migration_complete",
    }
)

# How many entries any per-path memo keeps (gate results, layers, shortcuts, clean dirs).
MEMO_LIMIT = 65536

MAX_SEGMENT_BYTES = 255
MAX_PATH_BYTES = 4096

_DRIVE = re.compile(r"^[A-Za-z]:")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(//|:)")
_SEPARATORS = ("/", "\\")


def strip_protocol(path: str) -> str:
    """Drop ``orch://`` (or ``orch::``) and surrounding slashes; no validation."""
    if path.startswith(PROTOCOL):
        rest = path[len(PROTOCOL) :]
        if rest.startswith("://"):
            path = rest[3:]
        elif rest.startswith("::"):
            path = rest[2:]
    return path.strip("/")


def _refuse(path: str, why: str) -> PathEscapeError:
    shown = path if len(path) <= 120 else path[:117] + "..."
    return PathEscapeError(f"refused logical path {shown!r}: {why}")


def _check_characters(original: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: no file name can hold it
        raise _refuse(original, f"U+{ord(text[exc.start]):04X} cannot be encoded as UTF-8") from None
    for char in text:
        if char == "\\":
            raise _refuse(original, "backslashes are not path separators here; use '/'")
        category = unicodedata.category(char)
        if category == "Cc" or category in ("Zl", "Zp"):
            raise _refuse(original, f"control character U+{ord(char):04X} is not allowed in a path")


def _check_plain_segment(original: str, segment: str) -> None:
    if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
        raise _refuse(original, f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes")
    if unicodedata.normalize("NFC", segment) != segment:
        raise _refuse(original, "names must be in Unicode NFC form (normalise the name first)")


def _check_segment(original: str, segment: str, *, first: bool) -> None:
    _check_plain_segment(original, segment)
    spellings = {segment, unquote(segment), unquote(unquote(segment))}
    for spelling in list(spellings):
        spellings.add(unicodedata.normalize("NFKC", spelling))
    for spelling in spellings:
        if spelling in ("..", ".") or spelling.strip() in ("..",):
            raise _refuse(original, "'..' segments (in any spelling) would leave the root")
        if spelling != segment and any(sep in spelling for sep in _SEPARATORS):
            raise _refuse(original, "an encoded path separator is hidden in a segment")
        if "\x00" in spelling or any(unicodedata.category(c) == "Cc" for c in spelling):
            raise _refuse(original, "an encoded control character is hidden in a segment")
    if _DRIVE.match(segment):
        raise _refuse(original, "drive letters are physical paths, not logical ones")
    if first and segment == "~":
        raise _refuse(original, "'~' would be read as a home directory by some tools")
    if segment.startswith(MARKER_PREFIXES):
        raise _refuse(original, f"names starting with {segment[:4]!r}... are reserved for orchfs")


@lru_cache(maxsize=MEMO_LIMIT)
def validate(path: str) -> str:
    """Return the normalised logical path, or raise :class:`PathEscapeError`."""
    if not isinstance(path, str):
        raise PathEscapeError(f"a logical path must be a str, not {type(path).__name__}")
    # Already normal and nothing _checked looks for: one regular expression.
    plain = len(path) <= MAX_PATH_BYTES and _PLAIN_PATH.fullmatch(path)
    if plain and path.partition("/")[0] not in INTERNAL_NAMES:
        return path
    return _checked(path)


def _checked(path: str) -> str:
    """:func:`validate` of any string, every rule looked at one by one."""
    original = path
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise _refuse(original, f"longer than {MAX_PATH_BYTES} bytes")
    _check_characters(original, path)
    path = strip_protocol(path)
    if _URL.match(path):
        raise _refuse(original, "a URL is not a logical path (use the path inside the repository)")
    segments = [s for s in path.split("/") if s and s != "."]
    for index, segment in enumerate(segments):
        _check_segment(original, segment, first=index == 0)
    if segments and segments[0] in INTERNAL_NAMES:
        raise _refuse(original, f"{segments[0]!r} is internal to .orchestrator/")
    return "/".join(segments)


def validate_stored(path: str) -> str:
    """Check a physical path relative to the state directory (a snapshot member, say).

    Orchfs's own names (markers, ``FORMAT``, ``locks/``) are allowed here; what is
    refused is what no stored name may be: absolute, empty, ``.``/``..`` segments,
    backslashes, control characters, non-NFC names and names over the length limits.
    """
    if not path or path.startswith("/"):
        raise _refuse(path, "not a relative path")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise _refuse(path, f"longer than {MAX_PATH_BYTES} bytes")
    _check_characters(path, path)
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise _refuse(path, "empty, '.' and '..' segments are not allowed")
        _check_plain_segment(path, segment)
    return path


def validate_name(name: str, what: str = "name") -> str:
    """Validate a single path segment such as a session id; no '/' allowed."""
    if not isinstance(name, str) or not name:
        raise PathEscapeError(f"{what} must be a non-empty string")
    if "/" in name or "\\" in name:
        raise _refuse(name, f"{what} must be a single segment without '/' or '\\'")
    normal = validate(name)
    if normal != name:
        raise _refuse(name, f"{what} must already be in normal form")
    return name


# Migration and session ids: what orchfs generates, and all that a stored one may be.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def validate_id(value: str, what: str = "id") -> str:
    """A session or migration id: letters, digits, ``_``, ``.``, ``-``, starting with a
    letter or digit, at most 128 characters."""
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise _refuse(
            str(value),
            f"{what} must be letters, digits, '_', '.' or '-' (at most 128), starting with a letter or digit",
        )
    return value


# Names the gate accepts without a closer look: plain ASCII, no '%' (an encoded form),
# ':' (a drive letter or URL), '~', '\\' or blank (' ..' reads as '..'); anything else
# takes the full check.
# One such name (_PLAIN_ONE) and a whole path of them (_PLAIN_PATH), as validate() would
# return it: no empty, '.' or '..' segment, no reserved prefix, none longer than a name may be.
_PLAIN_SEGMENT = (
    r"(?!\.\.?(?:/|$))"
    + "".join(f"(?!{re.escape(prefix)})" for prefix in MARKER_PREFIXES)
    + rf"[A-Za-z0-9_.,+=@#-]{{1,{MAX_SEGMENT_BYTES}}}"
)
_PLAIN_PATH = re.compile(rf"{_PLAIN_SEGMENT}(?:/{_PLAIN_SEGMENT})*")
_PLAIN_ONE = re.compile(_PLAIN_SEGMENT)


def listable(parent: str, name: str) -> bool:
    """Whether the stored entry ``name`` of the (valid) logical directory ``parent`` may be
    listed: only a name the gate accepts is, so every listed name can be passed back to
    ``info``/``open``. A name the gate refuses (a backslash, a control character, a name
    not in NFC, ``C:x``, ``%2e%2e``) stays on disk, out of the logical view."""
    if _PLAIN_ONE.fullmatch(name):
        return bool(parent) or name not in INTERNAL_NAMES
    try:
        validate(join(parent, name))
    except PathEscapeError:
        return False
    return True


def unlisted(parent: str, names: Collection[str]) -> list[str]:
    """Those of ``names`` that :func:`listable` refuses, for a whole directory: one
    regular expression per name, the full look only at the few that are not plain."""
    plain = _PLAIN_ONE.fullmatch
    odd = [name for name in names if not plain(name)]
    if not parent:
        odd += [name for name in INTERNAL_NAMES if name in names]
    return [name for name in odd if not listable(parent, name)]


def join(*parts: str) -> str:
    """Join already validated logical parts with '/', skipping empty ones."""
    return "/".join(p for p in parts if p)


__all__ = [
    "INTERNAL_NAMES",
    "MARKER_PREFIXES",
    "MARKER_SENTINEL",
    "MEMO_LIMIT",
    "OPAQUE_MARKER",
    "PROTOCOL",
    "SECRETS_VIEW",
    "STATE_DIR",
    "TEMP_PREFIX",
    "WHITEOUT_PREFIX",
    "join",
    "listable",
    "strip_protocol",
    "unlisted",
    "validate",
    "validate_name",
    "validate_stored",
]
