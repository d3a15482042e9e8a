"""``orchfs doctor``: check a repository and explain what is wrong and how to fix it.

:func:`run` returns :class:`Finding` values, each with a stable ``id``, a severity
(``error``, ``warning`` or ``info``), a message, the fix, and the paths involved.
:func:`fix` applies the safe fixes: sweep orphaned temp files, clear stale locks,
finish an unfinished migration.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .atomic import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE
from .beneath import Beneath
from .errors import BucketNotFoundError, PathEscapeError, StateError, library_logger, shown
from .layout import coerce_layout
from .meta import LAYOUT_VERSION, git_remote, gitignored, read_format, read_meta
from .paths import INTERNAL_NAMES, STATE_DIR, TEMP_PREFIX, WHITEOUT_PREFIX

ORPHAN_TEMP_AGE = 15 * 60.0
# Trees of the state directory where orchfs never makes a symlink, so any symlink there
# was planted: migrate, rollback and --fix would otherwise write or chmod through it.
LINK_FREE_TREES = frozenset({"secrets", "locks", "migrations", "tmp"})

logger = library_logger(__name__)

# Every id a finding can have: stable (scripts match on them), each one listed in
# docs/cli.md (tests/test_doctor.py holds the docs and this set to the ids used below).
FINDING_IDS = frozenset(
    {
        "bucket-missing",
        "conflict",
        "copied-state",
        "leftover-legacy",
        "legacy-changed",
        "loose-permissions",
        "mixed-layout",
        "newer-layout",
        "not-gitignored",
        "orphan-temp",
        "retention",
        "secret-unreadable",
        "stale-legacy",
        "stale-lock",
        "state-elsewhere",
        "unfinished-import",
        "unfinished-migration",
        "unknown-legacy",
        "unsafe-state",
        "web-incompatible",
    }
)


@dataclass(frozen=True)
class Finding:
    id: str
    severity: str
    message: str
    fix: str
    paths: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.id not in FINDING_IDS:  # a new kind of finding is documented first
            raise ValueError(f"{self.id!r} is not a finding id of orchfs.doctor.FINDING_IDS")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["paths"] = list(self.paths)
        return out


def _fs(root: str, layout: Any = None) -> Any:
    from .filesystem import OrchFileSystem

    return OrchFileSystem(root=root, layout=layout, skip_instance_cache=True)


def run(root: Any, *, layout: Any = None, now: float | None = None) -> list[Finding]:
    """Every finding for the repository at ``root`` (local disk)."""
    root = os.path.abspath(os.fspath(root))
    now = time.time() if now is None else now
    layout = coerce_layout(layout)
    state = os.path.join(root, STATE_DIR)
    findings: list[Finding] = []
    findings += _unsafe_links(root, state, layout)
    if os.path.islink(state):  # every other check would look (and --fix act) through it
        return findings
    from .config import face_settings, load_config
    from .repository import open_repository

    config = load_config(root)
    # The state where the commands keep it: the configured store, as the CLI opens it.
    settings = face_settings(storage=config.get("state.storage"))
    parts = open_repository(root, settings, layout=layout)  # the overlay and the state store
    # The fsspec face, made only for the check that needs it (retention).
    face: Callable[[], Any] = functools.cache(lambda: _fs(root, layout))
    checks: list[Callable[[], list[Finding]]] = [
        lambda: _bucket_findings(parts.state_storage),
        lambda: _layout_findings(root, state, layout),
        lambda: _unnamed_findings(root, layout),
        lambda: _conflict_findings(parts.overlay),
        lambda: _record_findings(state),
        lambda: _legacy_changed(root, state, layout),
        lambda: _migration_findings(root, layout),
        lambda: _elsewhere_findings(root, layout, parts.storage),
        lambda: _import_findings(parts),
        lambda: _staging_findings(state),
        lambda: _lock_findings(parts),
        lambda: _temp_findings(state, now),
        lambda: _permission_findings(state),
        lambda: _identity_findings(root, state),
        lambda: _secret_findings(lambda: _secret_store(parts, settings), state),
        lambda: _session_name_findings(state),
    ]
    for check in checks:
        findings += _guarded(check)
    findings += _guarded(lambda: _retention_findings(config, face, now))
    findings += _web_findings(config, state)
    return _unique(findings)


def _guarded(check: Callable[[], list[Finding]]) -> list[Finding]:
    """A check's findings; damaged or refused stored state is an ``unsafe-state`` finding,
    and a check that met a missing bucket adds nothing to ``bucket-missing``."""
    try:
        return check()
    except BucketNotFoundError as exc:
        return [_bucket_missing(exc)]
    except StateError as exc:
        return [_unsafe(str(exc), exc.path)]
    except PathEscapeError as exc:  # a symlink met on the way beneath the root
        return [_unsafe(str(exc), None)]


def _bucket_missing(exc: BucketNotFoundError) -> Finding:
    return Finding(
        "bucket-missing",
        "error",
        str(exc),
        f"create the bucket {exc.bucket!r} (orchfs never creates one), or set `state.storage` "
        "to a store that exists",
        (exc.store,),
    )


def _bucket_findings(storage: Any) -> list[Finding]:
    """The bucket (or container) of object storage named by ``state.storage`` is missing:
    every read would look empty and every write fail (one request; none on local disk)."""
    conditional = getattr(storage, "conditional", None)
    if conditional is not None:
        conditional.require_bucket(storage.backend_path(""))
    return []


def _import_findings(parts: Any) -> list[Finding]:
    """Snapshot imports killed during their swap (their journals are read and checked)."""
    from .snapshot import interrupted

    journals = interrupted(parts)  # each one read and checked: a bad one is unsafe-state
    if not journals:
        return []
    return [
        Finding(
            "unfinished-import",
            "error",
            f"{len(journals)} snapshot import(s) stopped half way through putting files in place",
            "`orchfs doctor --fix` finishes it (as does running the same `orchfs snapshot import` again)",
            tuple(journals),
        )
    ]


def _staging_findings(state: str) -> list[Finding]:
    """A ``tmp`` that is no directory (imports stop at it): unsafe-state, through
    :func:`_guarded` (a link there is one already: :func:`_unsafe_links`)."""
    from .snapshot import STAGING_DIR, check_staging_dir

    if os.path.isdir(state) and not os.path.islink(os.path.join(state, STAGING_DIR)):
        check_staging_dir(fs_state(state))
    return []


def _unsafe(message: str, path: str | None) -> Finding:
    return Finding(
        "unsafe-state",
        "error",
        message,
        "inspect and repair or remove it by hand (doctor --fix never changes it); the message says how",
        (path,) if path else (),
    )


def _session_name_findings(state: str) -> list[Finding]:
    """Session directories whose names are not session ids (prune and list refuse them)."""
    from .paths import ID_PATTERN

    sessions = os.path.join(state, "sessions")
    if os.path.islink(sessions) or not os.path.isdir(sessions):
        return []
    return [
        _unsafe(f"{STATE_DIR}/sessions/{name!r} is not a session id; sessions commands refuse it", None)
        for name in sorted(os.listdir(sessions))
        if os.path.isdir(os.path.join(sessions, name)) and not ID_PATTERN.match(name)
    ]


def _unique(findings: list[Finding]) -> list[Finding]:
    """One finding per (id, message): several checks may trip over the same damaged file."""
    return list({(f.id, f.message): f for f in findings}.values())


def _unsafe_links(root: str, state: str, layout: Any) -> list[Finding]:
    """Symlinks that lead outside the root: inside the state directory (orchfs never follows
    them, and never makes them in its own directories) and at legacy locations."""
    out = []
    places = [os.path.join(root, name) for name in dict.fromkeys([*layout.legacy_names(), ".gitignore"])]
    if os.path.islink(state):
        places.append(state)
    elif os.path.isdir(state):
        for top, dirs, files in os.walk(state):
            places += [os.path.join(top, name) for name in dirs + files]
    # Where a symlink stands in for a directory orchfs writes into (or for its own files).
    link_free = {
        *INTERNAL_NAMES,
        "secrets",
        "sessions",
        *(e.logical.split("/")[0] for e in layout.entries if e.is_dir or "/" in e.logical),
    }
    real_root = os.path.realpath(root)
    for place in places:
        if not os.path.islink(place):
            continue
        rel = os.path.relpath(place, root)
        inner = os.path.relpath(place, state).split(os.sep) if place.startswith(state + os.sep) else [""]
        resolved = os.path.realpath(place)
        outside = os.path.commonpath([real_root, resolved]) != real_root
        planted = inner[0] in LINK_FREE_TREES or (len(inner) == 1 and inner[0] in link_free)
        if outside or planted or place == state:
            where = "outside the repository" if outside else "inside a directory orchfs keeps for itself"
            out.append(
                _unsafe(f"{rel} is a symlink to {os.readlink(place)!r} ({where}); orchfs refuses it", rel)
            )
    return out


def _web_findings(config: Any, state: str) -> list[Finding]:
    """Settings that need a desktop while ``web_mode`` is on (an ephemeral machine, no
    OS keyring)."""
    if not config.get("web_mode"):
        return []
    where = (str(config.origin("web_mode") or "web_mode"),)
    out = []
    storage = config.get("state.storage")
    if storage is None or "://" not in storage or storage.startswith("file://"):
        out.append(
            Finding(
                "web-incompatible",
                "warning",
                "web_mode is on but the state stays on this machine's disk, which a web "
                "session's machine does not keep",
                "set state.storage to object storage (s3://bucket/prefix) in workflow.yaml",
                where,
            )
        )
    if os.path.isdir(os.path.join(state, "secrets")) and not _web_mode_finds_a_key():
        out.append(
            Finding(
                "web-incompatible",
                "warning",
                "this repository has secrets, and web mode never asks the OS keyring for their key",
                "provide the key as ORCHFS_KEY or ORCHFS_KEY_FILE (or ORCHFS_PASSPHRASE)",
                where,
            )
        )
    return out


def _web_mode_finds_a_key() -> bool:
    """Whether the key sources that web mode asks (all but the OS keyring) give a key."""
    from .errors import OrchFSError
    from .secrets import find_keys

    try:
        return bool(find_keys(None, "doctor", web_mode=True))
    except OrchFSError:  # a key file with loose modes is no key; secret-unreadable says why
        return False


def _retention_findings(config: Any, face: Callable[[], Any], now: float) -> list[Finding]:
    """Sessions that the configured retention policy would remove."""
    from .sessions import SESSIONS, choose, list_sessions, policy_of

    policy = policy_of(config)
    if not policy.limited:
        return []
    over = choose(list_sessions(face()), policy, now)
    if not over:
        return []
    total = sum(p.session.bytes for p in over)
    return [
        Finding(
            "retention",
            "warning",
            f"{len(over)} session(s) ({total} bytes) are over the retention policy (state.retention)",
            "`orchfs sessions prune --dry-run` shows them; `orchfs sessions prune` removes them",
            tuple(f"{SESSIONS}/{p.session.id}" for p in over),
        )
    ]


def _secret_store(parts: Any, settings: Any) -> Any:
    """The secret store that ``OrchFileSystem.secrets`` gives, over the parts doctor has
    open (the same stores, initialisation, repository locks and key sources), so that a
    repository with secrets is checked without loading the fsspec face."""
    from .locks import make_lock
    from .secrets import SecretStore

    def lock(name: str) -> Any:
        return make_lock(
            parts.state_storage,
            name,
            timeout=settings.lock_timeout,
            session=parts.session_id,
            lease=settings.lease,
        )

    return SecretStore(
        parts.state_storage,
        repo=parts.repo,
        initialize=parts.overlay.initialize,
        lock=lock,
        web_mode=settings.web_mode,
        label=parts.root,
    )


def _secret_findings(store_of: Callable[[], Any], state: str) -> list[Finding]:
    """Secrets that the keys available here cannot open."""
    if not os.path.isdir(os.path.join(state, "secrets")):
        return []
    from .errors import SecretIntegrityError, SecretsLockedError

    store = store_of()
    unreadable = []
    try:
        names = store.list()
    except (SecretsLockedError, SecretIntegrityError) as exc:
        if isinstance(exc, StateError):
            raise  # a damaged or unsealed manifest is unsafe-state, not a missing key
        try:
            stored = store.stored_names()
        except (OSError, ValueError):
            stored = []
        return [
            Finding(
                "secret-unreadable",
                "error",
                f"{len(stored)} secret(s) cannot be read with the keys available "
                f"({', '.join(stored) or 'none stored yet'}): {exc}",
                "provide the key (ORCHFS_KEY, ORCHFS_KEY_FILE, `orchfs secrets where`)",
                tuple(f"secrets/{name}" for name in stored) or ("secrets/",),
            )
        ]
    for name in names:
        try:
            store.get_bytes(name)
        except (SecretsLockedError, SecretIntegrityError, KeyError) as exc:
            unreadable.append((name, str(exc)))
    if not unreadable:
        return []
    return [
        Finding(
            "secret-unreadable",
            "error",
            f"{len(unreadable)} secret(s) cannot be read with the keys available: "
            + "; ".join(f"{name} ({message})" for name, message in unreadable),
            "provide the key they were written with, or set them again",
            tuple(f"secrets/{name}" for name, _ in unreadable),
        )
    ]


def _layout_findings(root: str, state: str, layout: Any) -> list[Finding]:
    out = []
    legacy = sorted(name for name in layout.legacy_names() if os.path.lexists(os.path.join(root, name)))
    found = read_format(fs_state(state)) if os.path.isdir(state) else None
    if legacy and os.path.isdir(state) and found is not None:
        out.append(
            Finding(
                "mixed-layout",
                "warning",
                f"{len(legacy)} v1 file(s) sit beside {STATE_DIR}/; orchfs reads them but never writes them",
                "run `orchfs migrate` (try `--dry-run` first)",
                tuple(legacy),
            )
        )
    elif legacy:
        out.append(
            Finding(
                "mixed-layout",
                "info",
                f"the repository uses the v1 layout ({len(legacy)} file(s)); orchfs reads it in place",
                "run `orchfs migrate` when no old orchestrator runs here any more",
                tuple(legacy),
            )
        )
    if found is not None and found.version > LAYOUT_VERSION:
        out.append(
            Finding(
                "newer-layout",
                "error",
                f"{STATE_DIR}/FORMAT says layout {found.version}; this orchfs writes {LAYOUT_VERSION}"
                " and keeps the repository read-only",
                f"upgrade orchfs{' to ' + found.requires if found.requires else ''}",
                (f"{STATE_DIR}/FORMAT",),
            )
        )
    return out


def fs_state(state: str) -> Any:
    from .storage import LocalStorage

    return LocalStorage(state)


def _unnamed_findings(root: str, layout: Any) -> list[Finding]:
    """``.bak`` copies an earlier migration script left, and v1-looking files no entry
    names: orchfs neither reads nor moves them, so they are said out loud."""
    from .migrate import unnamed_files

    leftovers, unknown = unnamed_files(root, layout)
    out = []
    if leftovers:
        out.append(
            Finding(
                "leftover-legacy",
                "info",
                f"{len(leftovers)} .bak copy(ies) of v1 state left by an earlier migration script; "
                "orchfs does not read them",
                "`orchfs migrate --retire-leftovers` moves them into the migration backup",
                tuple(leftovers),
            )
        )
    if unknown:
        out.append(
            Finding(
                "unknown-legacy",
                "info",
                f"{len(unknown)} v1-looking file(s) that no layout entry names; orchfs does not read them",
                "name them in a custom layout, or `orchfs migrate --retire-leftovers` moves them "
                "into the migration backup",
                tuple(unknown),
            )
        )
    return out


def _record_findings(state: str) -> list[Finding]:
    """Supersede records that do not check out (they are ignored: their pairs stay conflicts)."""
    from .supersede import damaged_records

    if not os.path.isdir(os.path.join(state, "superseded")):
        return []
    return [
        _unsafe(
            f"{STATE_DIR}/{rel} is not a supersede record orchfs wrote (damaged, planted, or copied "
            "under another name); it is ignored, so its legacy file counts as a conflict",
            f"{STATE_DIR}/{rel}",
        )
        for rel in damaged_records(fs_state(state))
    ]


def _conflict_findings(overlay: Any) -> list[Finding]:
    out = []
    for c in overlay.legacy_pairs():
        hashes = f"sha256 {c.upper_sha256[:12]} and {c.legacy_sha256[:12]}"
        if c.kind == "stale":
            out.append(
                Finding(
                    "stale-legacy",
                    "info",
                    f"{c.logical}: {c.legacy_url} is the copy orchfs superseded (unchanged since); "
                    f"{c.upper_url} is in use",
                    "`orchfs migrate` retires it into the migration backup",
                    (c.upper_url, c.legacy_url),
                )
            )
        elif c.kind == "legacy-pair":
            out.append(
                Finding(
                    "conflict",
                    "warning",
                    f"{c.logical}: two legacy files differ ({hashes}); the first, {c.upper_url}, is in use",
                    "keep one: remove or rename the other, or `orchfs migrate --prefer new|legacy` "
                    "(the first moves, the other is kept in the migration backup)",
                    (c.upper_url, c.legacy_url),
                )
            )
        else:
            out.append(
                Finding(
                    "conflict",
                    "warning",
                    f"{c.logical}: both copies exist and differ (new sha256 {c.upper_sha256[:12]}, old "
                    f"sha256 {c.legacy_sha256[:12]}); the new one is in use",
                    "keep one: `orchfs migrate --prefer new` or `--prefer legacy`",
                    (c.upper_url, c.legacy_url),
                )
            )
    return out


def _legacy_changed(root: str, state: str, layout: Any) -> list[Finding]:
    """A v1 file modified after orchfs superseded it (copy-up, write or whiteout): an old
    orchestrator still runs. The supersede record says so by hash; without one, by mtime."""
    from .migrate import _sha256_file
    from .supersede import is_stale, read_record

    records = fs_state(state)
    out = []
    for entry in layout.entries:
        if entry.is_dir:
            continue
        for legacy in entry.legacy:
            old = os.path.join(root, legacy)
            if not os.path.isfile(old):
                continue
            head, _, name = entry.logical.rpartition("/")
            newer = [
                path
                for path in (
                    os.path.join(state, entry.logical),
                    os.path.join(state, head, WHITEOUT_PREFIX + name),
                )
                if os.path.lexists(path)
            ]
            if not newer:
                continue
            record = read_record(records, legacy) if os.path.isdir(state) else None
            if record is not None:
                changed = not is_stale(record, os.path.getsize(old), lambda p=old: _sha256_file(p))
            else:
                changed = os.lstat(old).st_mtime > os.lstat(newer[0]).st_mtime
            if changed:
                out.append(
                    Finding(
                        "legacy-changed",
                        "warning",
                        f"{legacy} changed after orchfs took over {entry.logical}: an old "
                        "orchestrator may still be writing it",
                        "stop the old orchestrator, compare the two files, then "
                        "`orchfs migrate --prefer new|legacy`",
                        (legacy, os.path.relpath(newer[0], root)),
                    )
                )
    return out


def _migration_findings(root: str, layout: Any) -> list[Finding]:
    """Interrupted migrations; a journal that fails its checks is ``unsafe-state`` instead."""
    from .journal import Journal, journals, read_journal

    out = []
    for path in journals(root):
        rel = os.path.relpath(path, root)
        try:
            read_journal(path, layout)
            interrupted = Journal.status(path) in ("unfinished", "rolling-back")
        except StateError as exc:
            out.append(_unsafe(str(exc), rel))
            continue
        if interrupted:
            out.append(
                Finding(
                    "unfinished-migration",
                    "error",
                    f"migration journal {rel} was interrupted",
                    "run `orchfs migrate` to finish it or `orchfs migrate --rollback` to undo it "
                    "(`orchfs doctor --fix` finishes it)",
                    (rel,),
                )
            )
    return out


def _elsewhere_findings(root: str, layout: Any, configured: str) -> list[Finding]:
    """The newest finished migration moved the state to a store other than the one the
    configuration names (``migrate --storage`` is not remembered): every command then
    works on that other, often empty, state. The journal is untrusted (it may come with a
    clone or a snapshot), so the store it names is only shown, as printable text, and
    never offered as the value to configure."""
    from .journal import Journal, journals, read_journal

    for path in reversed(journals(root)):
        try:
            if Journal.status(path) != "done":
                continue
            moved_to = read_journal(path, layout)[0].get("storage")
        except StateError:
            return []  # _migration_findings reports it as unsafe-state
        if moved_to is None or moved_to.rstrip("/") == configured.rstrip("/"):
            return []
        rel = os.path.relpath(path, root)
        return [
            Finding(
                "state-elsewhere",
                "warning",
                f"the last migration ({rel}) says it moved the state to {shown(moved_to)}, but the "
                f"configuration keeps it at {configured}, which every command uses",
                "if you moved it there yourself, set `state.storage` to that URL in .orchestra.yaml "
                "(or ORCHFS_STORAGE); if not, the journal did not come from you: remove it",
                (rel,),
            )
        ]
    return []


def _lock_findings(parts: Any) -> list[Finding]:
    from .locks import inspect

    out = []
    for status in inspect(parts):
        if status.stale and status.holder is not None:
            out.append(
                Finding(
                    "stale-lock",
                    "warning",
                    f"lock {status.name!r} was held by pid {status.holder.pid} on "
                    f"{status.holder.host}, which is gone",
                    "`orchfs doctor --fix` removes the stale record",
                    (status.url,),
                )
            )
    return out


def _temp_files(state: str) -> list[str]:
    out = []
    if not os.path.isdir(state):
        return out
    for top, _dirs, files in os.walk(state):
        out += [os.path.join(top, n) for n in files if n.startswith(TEMP_PREFIX)]
    return out


def _abandoned_staging(state: str) -> list[str]:
    """Staging directories of snapshot imports killed before their swap began (no swap
    journal beside them): nothing of them was put in place. One with a journal is an
    ``unfinished-import``; a ``.replaced`` directory holds old files and is never swept."""
    from .snapshot import ASIDE_SUFFIX, STAGING_DIR, STAGING_PREFIX, SWAP_SUFFIX

    tmp = os.path.join(state, STAGING_DIR)
    if os.path.islink(tmp) or not os.path.isdir(tmp):
        return []
    names = set(os.listdir(tmp))
    return [
        os.path.join(tmp, name)
        for name in sorted(names)
        if name.startswith(STAGING_PREFIX)
        and not name.endswith((ASIDE_SUFFIX, SWAP_SUFFIX))
        and name + SWAP_SUFFIX not in names
        and stat.S_ISDIR(os.lstat(os.path.join(tmp, name)).st_mode)
    ]


def _temp_findings(state: str, now: float) -> list[Finding]:
    found = _temp_files(state) + _abandoned_staging(state)
    old = [p for p in found if now - os.lstat(p).st_mtime > ORPHAN_TEMP_AGE]
    if not old:
        return []
    return [
        Finding(
            "orphan-temp",
            "warning",
            f"{len(old)} temp file(s) left by interrupted writes or snapshot imports",
            "`orchfs doctor --fix` removes them",
            tuple(old),
        )
    ]


def _permission_findings(state: str) -> list[Finding]:
    """Loose modes under secrets/ and locks/; symlinks there are never candidates (they are
    ``unsafe-state``), so --fix never chmods through one."""
    loose = []
    for sub in ("secrets", "locks"):
        top_dir = os.path.join(state, sub)
        if os.path.islink(top_dir) or not os.path.isdir(top_dir):
            continue
        for top, _dirs, files in os.walk(top_dir):
            if stat.S_IMODE(os.lstat(top).st_mode) & 0o077:
                loose.append(top)
            for name in files:
                st = os.lstat(os.path.join(top, name))
                if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
                    loose.append(os.path.join(top, name))
    if not loose:
        return []
    return [
        Finding(
            "loose-permissions",
            "error",
            f"{len(loose)} secret or lock path(s) readable by group or others",
            "`chmod 700` the directories and `chmod 600` the files (or `orchfs doctor --fix`)",
            tuple(loose),
        )
    ]


def _identity_findings(root: str, state: str) -> list[Finding]:
    out = []
    meta = read_meta(fs_state(state)) if os.path.isdir(state) else None
    if meta is not None:
        moved = meta.get("root") not in (None, root)
        remote = git_remote(root)
        other_remote = meta.get("git_remote") and remote and meta["git_remote"] != remote
        if moved or other_remote:
            out.append(
                Finding(
                    "copied-state",
                    "warning",
                    f"{STATE_DIR}/meta.json was made for {shown(meta.get('root'))} "
                    f"({shown(meta.get('git_remote') or 'no remote')}); "
                    f"this is {root} ({remote or 'no remote'})",
                    "if this repository was moved here, `orchfs init --adopt` records the new "
                    "place (same identity and secrets); if .orchestrator/ was copied from another "
                    f"repository, remove {STATE_DIR}/meta.json and run `orchfs init` for a new identity",
                    (f"{STATE_DIR}/meta.json",),
                )
            )
    if (
        os.path.isdir(os.path.join(root, ".git"))
        and os.path.isdir(state)
        and not (meta or {}).get("portable")
    ) and not gitignored(root):
        out.append(
            Finding(
                "not-gitignored",
                "warning",
                f"{STATE_DIR}/ is not in .gitignore: state (and secrets) could be committed",
                f"add `{STATE_DIR}/` to .gitignore (`orchfs init` does it)",
                (".gitignore",),
            )
        )
    return out


def fix(root: Any, findings: list[Finding] | None = None, *, layout: Any = None) -> list[str]:
    """Apply the safe fixes; return what was done, one line each."""
    root = os.path.abspath(os.fspath(root))
    findings = run(root, layout=layout) if findings is None else findings
    done = []
    ids = {f.id for f in findings}
    guard = Beneath(root)  # every change below is made beneath the root, never through a link
    if "orphan-temp" in ids:
        for finding in findings:
            if finding.id == "orphan-temp":
                for path in finding.paths:
                    if stat.S_ISDIR(os.lstat(path).st_mode):  # a staging directory
                        guard.remove_tree(guard.relpath(path))
                    else:
                        guard.unlink(guard.relpath(path))
                done.append(f"removed {len(finding.paths)} orphaned temp file(s)")
    if "stale-lock" in ids:
        from .locks import clear_stale

        cleared = clear_stale(_fs(root, layout))
        done.append(f"cleared {len(cleared)} stale lock record(s)")
    if "unfinished-import" in ids and "unsafe-state" not in ids:
        from .snapshot import finish_interrupted

        fs = _fs(root, layout)
        with fs.lock("repo"):
            finished = finish_interrupted(fs)
        done.append(f"finished {len(finished)} interrupted snapshot import(s)")
    if "unfinished-migration" in ids and "unsafe-state" not in ids:
        from .config import load_config
        from .migrate import apply

        # The configured store, as `orchfs migrate` passes it: a journal alone names none.
        storage = load_config(root).get("state.storage")
        done.append(apply(root, layout=layout, storage=storage).message)
    if "loose-permissions" in ids:
        for finding in findings:
            if finding.id == "loose-permissions":
                for path in finding.paths:
                    rel = guard.relpath(path)
                    is_dir = stat.S_ISDIR(guard.lstat(rel).st_mode)
                    guard.chmod(rel, PRIVATE_DIR_MODE if is_dir else PRIVATE_FILE_MODE)
        done.append("tightened secret and lock permissions")
    for line in done:
        logger.info("doctor fix: %s", line)
    return done


def exit_code(findings: list[Finding]) -> int:
    return 1 if any(f.severity in ("error", "warning") for f in findings) else 0


def to_json(findings: list[Finding]) -> str:
    return json.dumps({"findings": [f.to_json() for f in findings]}, indent=2)


__all__ = [
    "FINDING_IDS",
    "Finding",
    "exit_code",
    "fix",
    "run",
    "to_json",
]
