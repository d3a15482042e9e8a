"""The migration journal: ``.orchestrator/migrations/<id>.jsonl``, its schema and its checks.

A journal is JSON lines. :meth:`Journal.create` writes the whole plan at once (temp
file, fsync, rename): a ``begin`` record, then ``intents`` records holding the steps
(:data:`STEP_FIELDS`, 1,024 rows a line). A run appends ``done`` records in fsynced
batches and ``end`` when it finishes; a rollback appends ``rollback-begin`` and
``rolled-back``. Only the last line may be torn (a crash in the middle of an append).

A journal is stored state, so it is untrusted input (DESIGN §3): :func:`read` checks
every record against the schema of its version (:data:`SCHEMA_VERSION`; a ``begin``
without ``v`` is version 1, as written before the version was recorded). Every
``source`` must lie at a legacy location of the layout, every local ``target`` inside
``.orchestrator/``, every directory of ``dirs`` above a source, every id and mode in
its format. Anything else is :class:`~orchfs.errors.JournalError` (damaged) or
:class:`~orchfs.errors.UnsafeStateError` (a value that would lead elsewhere), naming
the file and line; nothing is done with a journal that fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from .atomic import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, temp_name
from .beneath import READ_FLAGS
from .errors import JournalError, UnsafeStateError
from .layout import Layout, is_unnamed_v1
from .paths import STATE_DIR
from .stored import check_id, check_relative

JOURNAL_DIR = "migrations"
SUFFIX = ".jsonl"
SCHEMA_VERSION = 1
DONE_BATCH = 512
ROWS_PER_LINE = 1024


class Step(NamedTuple):
    """One step of a migration, as its journal records it (one row of an intents record).

    ``source`` and ``target`` are relative to the root; ``rel`` is the target's path on
    another backend (``storage=``); ``replaced`` marks a step over an existing v2 copy.
    """

    i: int
    source: str
    target: str
    bytes: int
    action: str  # rename | copy | upload | retire | replace
    mode: int | None = None
    mtime_ns: int | None = None
    link: str | None = None
    replaced: bool | None = None
    rel: str | None = None


STEP_FIELDS = Step._fields
REQUIRED_FIELDS = 7  # i .. mtime_ns; a shorter row is damaged, a longer one's tail is optional
ACTIONS = frozenset({"rename", "copy", "retire", "replace", "upload"})
TAIL_KINDS = frozenset({"done", "end", "rollback-begin", "rolled-back"})
STATUS_OF = {"end": "done", "rollback-begin": "rolling-back", "rolled-back": "rolled-back"}
# A million-file migration writes about 250 MB of journal; a planted one cannot be larger.
MAX_JOURNAL_BYTES = 1 << 30
MAX_LINK_BYTES = 4096
_FIX = "move the journal aside (nothing was changed) and run `orchfs doctor`"


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (through this module's ``os``, which the
    fault-injection tests replace)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


class Journal:
    """Append-only JSON lines with batched fsyncs."""

    def __init__(self, path: str) -> None:
        self.path = path
        _check_directory(os.path.dirname(path))
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
        self._pending = 0
        self._buffer: list[bytes] = []

    def write(self, *records: dict[str, Any], sync: bool = False) -> None:
        self._buffer += [_encode(record) for record in records]
        self._pending += len(records)
        if sync or self._pending >= DONE_BATCH:
            self.sync()

    def done(self, index: int) -> None:
        """Record a finished step (made durable with the next batch)."""
        self._buffer.append(b'{"t":"done","i":%d}\n' % index)
        self._pending += 1
        if self._pending >= DONE_BATCH:
            self.sync()

    def done_all(self, indexes: Iterable[int]) -> None:
        """Record steps that one operation finished together (a v1 directory moved whole
        by one rename), made durable at once: one fsync, not one per batch of them."""
        self._buffer += [b'{"t":"done","i":%d}\n' % index for index in indexes]
        self.sync()

    def sync(self) -> None:
        if self._buffer:
            _write_all(self._fd, b"".join(self._buffer))
            self._buffer.clear()
        os.fsync(self._fd)
        self._pending = 0

    def close(self) -> None:
        if self._buffer or self._pending:  # a journal last synced needs no second fsync
            self.sync()
        os.close(self._fd)

    @staticmethod
    def create(path: str, records: list[dict[str, Any]]) -> None:
        """Write the plan records all at once: a journal exists whole or not at all."""
        directory = os.path.dirname(path)
        _check_directory(directory, create=True)
        temp = os.path.join(directory, temp_name(os.path.basename(path)))
        data = b"".join(_encode(r) for r in records)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(temp)
            raise
        os.close(fd)
        try:
            os.rename(temp, path)
        except BaseException:
            os.unlink(temp)
            raise
        _fsync_dir(directory)

    @staticmethod
    def status(path: str) -> str:
        """unfinished, done, rolling-back or rolled-back, from the journal's last record."""
        where = _shown(path)
        with _open(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise JournalError(f"{where} is empty; {_FIX}", where)
            f.seek(max(0, size - 4096))
            tail = f.read().splitlines()
        for line in reversed(tail):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line, or the cut first one
            if not isinstance(record, dict):
                raise JournalError(f"{where}: a line near the end is not a JSON object; {_FIX}", where)
            kind = record.get("t")
            return STATUS_OF.get(kind, "unfinished") if isinstance(kind, str) else "unfinished"
        return "unfinished"


def begin_record(
    migration_id: str,
    *,
    backup: bool,
    dirs: dict[str, list[int]],
    root_mtime_ns: int,
    root: str,
    storage: str | None,
    steps: int,
) -> dict[str, Any]:
    """The first record of a journal (schema :data:`SCHEMA_VERSION`)."""
    return {
        "t": "begin",
        "v": SCHEMA_VERSION,
        "id": migration_id,
        "backup": backup,
        "dirs": dirs,
        "root_mtime_ns": root_mtime_ns,
        "root": root,
        "storage": storage,
        "steps": steps,
    }


def intent_records(steps: list[Step]) -> Iterator[dict[str, Any]]:
    """The plan as intent records, 1,024 steps a line (one json.dumps of lists each)."""
    for start in range(0, len(steps), ROWS_PER_LINE):
        chunk = steps[start : start + ROWS_PER_LINE]
        yield {"t": "intents", "steps": chunk}  # a Step is a tuple: json writes it as a list


def steps_of(records: list[dict[str, Any]]) -> list[Step]:
    """The steps of checked records (fields a shorter row lacks are None)."""
    return [Step(*row) for record in records if record.get("t") == "intents" for row in record["steps"]]


def journals(root: str) -> list[str]:
    """The journal files of the repository at ``root``, oldest id first."""
    directory = os.path.join(root, STATE_DIR, JOURNAL_DIR)
    _check_directory(directory)
    if not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if n.endswith(SUFFIX))
    return [os.path.join(directory, n) for n in names]


def read_journal(path: str, layout: Layout) -> list[dict[str, Any]]:
    """Every record of the journal at ``path``, checked (see the module docstring)."""
    where = _shown(path)
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_JOURNAL_BYTES:
            raise JournalError(
                f"{where} is {size} bytes, over the {MAX_JOURNAL_BYTES}-byte limit; {_FIX}", where
            )
        data = f.read()
    return parse(data, where, layout, os.path.basename(path)[: -len(SUFFIX)])


def parse(data: bytes, where: str, layout: Layout, expected_id: str | None = None) -> list[dict[str, Any]]:
    """The checked records of a journal's bytes (``where`` names it in errors)."""
    if not data:
        raise JournalError(f"{where} is empty; {_FIX}", where)
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline; else a line cut by a crash
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            raise JournalError(f"{where}:{number}: not a JSON record (damaged); {_FIX}", where) from None
        records.append(record)
    if torn and not records:
        raise JournalError(f"{where}:1: the begin record is truncated; {_FIX}", where)
    check(records, where, layout, expected_id)
    return records


def check(records: list[Any], where: str, layout: Layout, expected_id: str | None = None) -> None:
    """Raise JournalError/UnsafeStateError unless ``records`` follow the schema."""
    if not records:
        raise JournalError(f"{where}: no records; {_FIX}", where)
    begin = _record(records[0], where, 1)
    if begin.get("t") != "begin":
        raise JournalError(f"{where}:1: the first record is not 'begin'; {_FIX}", where)
    version = begin.get("v", 1)
    if version != SCHEMA_VERSION:
        raise JournalError(
            f"{where}:1: journal schema version {version!r} is not one this orchfs reads "
            f"({SCHEMA_VERSION}); finish or roll it back with the orchfs that wrote it",
            where,
        )
    migration_id = check_id(begin.get("id"), "migration id", f"{where}:1")
    if expected_id is not None and migration_id != expected_id:
        raise UnsafeStateError(f"{where}:1: id {migration_id!r} does not match the file name; refused", where)
    _typed(begin, "backup", (bool,), where, 1, required=False)
    _typed(begin, "root_mtime_ns", (int,), where, 1)
    _typed(begin, "root", (str,), where, 1, required=False)
    _typed(begin, "storage", (str, type(None)), where, 1, required=False)
    _typed(begin, "steps", (int,), where, 1, required=False)
    _typed(begin, "dirs", (dict,), where, 1, required=False)
    remote = begin.get("storage") is not None
    allowed = _legacy_prefixes(layout)
    sources: list[str] = []
    tail = False
    for number, raw in enumerate(records[1:], start=2):
        record = _record(raw, where, number)
        kind = record.get("t")
        if kind == "intents":
            if tail:
                raise JournalError(f"{where}:{number}: intents after the run began; {_FIX}", where)
            rows = record.get("steps")
            if not isinstance(rows, list):
                raise JournalError(f"{where}:{number}: 'steps' is not a list; {_FIX}", where)
            for row in rows:
                sources.append(_check_row(row, len(sources), f"{where}:{number}", allowed, remote))
        elif kind == "done":
            index = record.get("i")
            if type(index) is not int or not 0 <= index < len(sources):
                raise JournalError(f"{where}:{number}: done record names no step ({index!r}); {_FIX}", where)
        elif not isinstance(kind, str) or kind not in TAIL_KINDS:
            raise JournalError(f"{where}:{number}: unknown record type {kind!r}; {_FIX}", where)
        tail = tail or kind != "intents"
    expected = begin.get("steps")
    if expected is not None and expected != len(sources):
        raise JournalError(
            f"{where}: the begin record promises {expected} steps, the intents hold {len(sources)} "
            f"(truncated?); {_FIX}",
            where,
        )
    _check_dirs(begin.get("dirs") or {}, sources, f"{where}:1")


def _record(raw: Any, where: str, number: int) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise JournalError(f"{where}:{number}: a {type(raw).__name__}, not a JSON object; {_FIX}", where)
    return raw


def _typed(
    record: dict[str, Any],
    name: str,
    types: tuple[type, ...],
    where: str,
    number: int,
    *,
    required: bool = True,
) -> None:
    if name not in record:
        if required:
            raise JournalError(f"{where}:{number}: '{name}' is missing; {_FIX}", where)
        return
    value = record[name]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise JournalError(f"{where}:{number}: '{name}' is a {type(value).__name__}; {_FIX}", where)


def _legacy_prefixes(layout: Layout) -> tuple[str, ...]:
    return tuple(dict.fromkeys(layout.legacy_names()))


def _at_legacy_location(source: str, allowed: tuple[str, ...]) -> bool:
    return any(source == name or source.startswith(name + "/") for name in allowed)


def _check_row(row: Any, index: int, where: str, allowed: tuple[str, ...], remote: bool) -> str:
    """One intent row; returns its source."""
    if not isinstance(row, list) or not REQUIRED_FIELDS <= len(row) <= len(STEP_FIELDS):
        raise JournalError(f"{where}: step {index} is not a row of {len(STEP_FIELDS)} fields; {_FIX}", where)
    step = dict.fromkeys(STEP_FIELDS)
    step.update(zip(STEP_FIELDS, row, strict=False))

    def wrong(field: str) -> JournalError:
        return JournalError(f"{where}: step {index}: {field} {step[field]!r} is not valid; {_FIX}", where)

    if step["i"] != index or type(step["i"]) is not int:
        raise wrong("i")
    for field in ("bytes", "mode", "mtime_ns"):
        if type(step[field]) is not int or (field != "mtime_ns" and step[field] < 0):
            raise wrong(field)
    if step["mode"] > 0o7777:
        raise wrong("mode")
    if not isinstance(step["action"], str) or step["action"] not in ACTIONS:
        raise wrong("action")
    if step["replaced"] not in (None, True, False):
        raise wrong("replaced")
    link = step["link"]
    if link is not None and (
        not isinstance(link, str)
        or not link
        or "\x00" in link
        or len(link.encode("utf-8", "surrogatepass")) > MAX_LINK_BYTES
    ):
        raise wrong("link")
    source = check_relative(step["source"], f"step {index} source", where)
    if not _at_legacy_location(source, allowed) and not is_unnamed_v1(source):
        raise UnsafeStateError(
            f"{where}: step {index} source {source!r} is not a legacy location of the layout; refused", where
        )
    target = step["target"]
    if not isinstance(target, str):
        raise wrong("target")
    if remote:
        check_relative(step["rel"], f"step {index} rel", where)
    elif not target.startswith(STATE_DIR + "/"):
        raise UnsafeStateError(
            f"{where}: step {index} target {target!r} is not inside {STATE_DIR}/; refused", where
        )
    else:
        check_relative(target[len(STATE_DIR) + 1 :], f"step {index} target", where)
    return source


def _check_dirs(dirs: dict[str, Any], sources: list[str], where: str) -> None:
    """``dirs`` names v1 directories above moved files, each with [mode, mtime_ns]."""
    above = set()
    for source in sources:
        parts = source.split("/")[:-1]
        above.update("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))
    for name, value in dirs.items():
        if name not in above:
            raise UnsafeStateError(
                f"{where}: dirs names {name!r}, which holds no migrated file; refused", where
            )
        if (
            not isinstance(value, list)
            or len(value) != 2
            or any(type(v) is not int for v in value)
            or not 0 <= value[0] <= 0o7777
        ):
            raise JournalError(f"{where}: dirs[{name!r}] is not [mode, mtime_ns]; {_FIX}", where)


# --- local disk ------------------------------------------------------------------------
def _check_directory(directory: str, create: bool = False) -> None:
    """The journal directory and ``.orchestrator/`` above it must be real directories: a
    symlink there would put the journal (or read one) outside the repository."""
    for place in (os.path.dirname(directory), directory):
        try:
            st = os.lstat(place)
        except FileNotFoundError:
            if not create:
                return
            os.mkdir(place, PRIVATE_DIR_MODE if place == directory else 0o777)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeStateError(f"{place} is a symlink or not a directory; refused (remove it)", place)


@contextlib.contextmanager
def _open(path: str) -> Iterator[Any]:
    _check_directory(os.path.dirname(path))
    try:
        fd = os.open(path, READ_FLAGS)  # O_NONBLOCK: a planted FIFO must not hang the open
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafeStateError(f"{_shown(path)} is a symlink; refused (remove it)", path) from None
        raise exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeStateError(f"{_shown(path)} is not a regular file; refused", path)
        yield f


def _shown(path: str) -> str:
    """A journal's path from ``.orchestrator/`` on, as messages name it."""
    marker = f"/{STATE_DIR}/"
    return path[path.rindex(marker) + 1 :] if marker in path else path


__all__ = [
    "DONE_BATCH",
    "JOURNAL_DIR",
    "SCHEMA_VERSION",
    "STEP_FIELDS",
    "Journal",
    "Step",
    "begin_record",
    "check",
    "intent_records",
    "journals",
    "parse",
    "read_journal",
    "steps_of",
]
