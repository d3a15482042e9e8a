"""Effective configuration, every value with its origin (file and line).

Layers, lowest first: built-in defaults; the org file (``ORCHFS_ORG_CONFIG``, default
``~/.config/orchestrator/config.yaml``); each ``include:`` of ``workflow.yaml``, in
order (relative to the including file; ``{repo, path, optional}`` for another
repository); ``workflow.yaml``; ``.orchestrator/config.yaml`` (v1: ``.orchestra.yaml``,
``.orchestrator.yaml``); ``ORCHFS_*`` environment variables; explicit arguments.
Mappings merge deeply; scalars and lists replace.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .errors import ConfigError, VersionPinError

MAX_INCLUDE_DEPTH = 10
STATE_KEYS = {"storage", "legacy", "lock_timeout", "lease", "retention", "persist"}
RETENTION_KEYS = {"max_age", "max_sessions", "max_bytes", "min_age"}
PERSIST_KEYS = {"url", "interval"}
DEFAULTS: dict[str, Any] = {
    "web_mode": False,
    "state": {"storage": None, "legacy": "read", "lock_timeout": "10s", "lease": "30s"},
}
ENVIRONMENT = {
    "ORCHFS_STORAGE": ("state", "storage"),
    "ORCHFS_WEB_MODE": ("web_mode",),
    "ORCHFS_SESSION": ("session",),
    "ORCHFS_LEGACY": ("state", "legacy"),
    "ORCHFS_LOCK_TIMEOUT": ("state", "lock_timeout"),
    "ORCHFS_LEASE": ("state", "lease"),
}
_TRUE = ("1", "true", "yes", "on")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
# The longest duration any setting takes: far beyond what any wait needs, and inside what
# a thread's timed wait accepts (10^13 s overflows it).
MAX_DURATION_SECONDS = 100 * 365 * 86400.0
# A lease of seconds to minutes; a year is no lease (and a lease object that says more is
# refused as damaged when read back, so no setting may write one).
MAX_LEASE_SECONDS = 366 * 86400.0


class Origin(NamedTuple):
    """Where a value came from: a file and line, or ``default``/``env:NAME``/``argument``."""

    source: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.line is None:
            return self.source
        return f"{self.source}:{self.line}" + (f":{self.column}" if self.column else "")


@dataclass
class Config:
    """The merged configuration; ``origin(key)`` says where each value came from."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, Origin] = field(default_factory=dict)

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.values
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def origin(self, dotted: str) -> Origin | None:
        return self.origins.get(dotted)

    def flat(self) -> dict[str, tuple[Any, str]]:
        """``{"state.legacy": ("read", "workflow.yaml:4"), ...}`` for ``config show``."""
        return {
            key: (self.get(key), str(origin))
            for key, origin in sorted(self.origins.items())
            if not isinstance(self.get(key), dict)
        }

    @property
    def lock_timeout(self) -> float:
        return parse_duration(self.get("state.lock_timeout", "10s"), self.origin("state.lock_timeout"))


def parse_duration(value: Any, origin: Origin | None = None) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ConfigError(f"{origin or 'configuration'}: {value!r} is not a duration (use 10s, 5m, 1h)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 <= seconds < math.inf:  # YAML's .nan, .inf and negative numbers are no duration
        raise ConfigError(f"{origin or 'configuration'}: {value!r} is not a duration (use 10s, 5m, 1h)")
    if seconds > MAX_DURATION_SECONDS:
        raise ConfigError(f"{origin or 'configuration'}: {value!r} is longer than any wait needs (100 years)")
    return seconds


def _load(path: str) -> tuple[dict[str, Any], dict[str, Origin]]:
    """A YAML mapping with the origin of every key (dotted)."""
    import yaml

    from .safeyaml import compose, read_text

    node = compose(read_text(path), path)
    if node is None:
        return {}, {}
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}:{node.start_mark.line + 1}: the file must hold a mapping")
    origins: dict[str, Origin] = {}
    values = _mapping(node, path, "", origins)
    _anchor_storage(values, origins, path)
    return values, origins


def _anchor_storage(values: dict[str, Any], origins: dict[str, Origin], path: str) -> None:
    """A relative local ``state.storage`` in a file is relative to that file's directory,
    as an ``include:`` is, never to wherever a command happens to run (which put the state
    of a repository in the working directory of each command, outside its root); an
    empty one is refused, not taken for that working directory."""
    state = values.get("state")
    storage = state.get("storage") if isinstance(state, dict) else None
    if isinstance(storage, str) and not storage.strip():
        where = origins.get("state.storage", Origin(path))
        raise ConfigError(f"{where}: state.storage is empty; remove it to keep the state in .orchestrator/")
    if isinstance(storage, str):
        state["storage"] = anchored_storage(storage, os.path.dirname(os.path.abspath(path)))


def anchored_storage(storage: str, base: str) -> str:
    """``storage`` as every comparison of state directories takes it: a local path made
    absolute (``~`` expanded, a relative one joined to the directory ``base``) and
    normalised; a URL (``s3://...``, ``file://...``, a chained ``::``) as it is.

    ``base`` is the directory of the configuration file that names the path, or the
    working directory for ``--storage`` on the command line, so that a migration's
    journal (which records the absolute path) matches the state directory named either
    way on a resume or a rollback."""
    if "://" in storage or "::" in storage:
        return storage
    return os.path.normpath(os.path.join(base, os.path.expanduser(storage)))


def _mapping(node: Any, path: str, prefix: str, origins: dict[str, Origin]) -> dict[str, Any]:
    import yaml

    from .safeyaml import construct

    out: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        dotted = f"{prefix}{key}"
        origins[dotted] = Origin(path, key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        if isinstance(value_node, yaml.MappingNode):
            out[key] = _mapping(value_node, path, dotted + ".", origins)
        else:
            out[key] = construct(value_node)
    return out


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _validate(values: dict[str, Any], origins: dict[str, Origin], path: str) -> None:
    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{origins.get(key, Origin(path))}: {message}")

    # Top-level keys other than ours belong to the workflow definition: not checked.
    state = values.get("state")
    if state is None:
        return
    if not isinstance(state, dict):
        raise fail("state", "'state' must be a mapping")
    for key, value in state.items():
        if key not in STATE_KEYS:
            raise fail(f"state.{key}", f"unknown key 'state.{key}' (known: {', '.join(sorted(STATE_KEYS))})")
        if key == "legacy" and value is False:
            # YAML 1.1 reads a bare `off` as false: the documented `legacy: off` means "off".
            state[key] = value = "off"
        if key == "legacy" and value not in LEGACY_MODES:
            raise fail("state.legacy", f"state.legacy is {value!r}; use read, migrate or off")
        if key in ("lock_timeout", "lease"):
            seconds = parse_duration(value, origins.get(f"state.{key}"))
            if key == "lease" and not 0 < seconds <= MAX_LEASE_SECONDS:
                raise fail("state.lease", f"state.lease is {value!r}; give more than 0s and at most 366d")
        if key == "storage" and value is not None and not isinstance(value, str):
            raise fail("state.storage", "state.storage must be a path or URL")
        for name, allowed in (("retention", RETENTION_KEYS), ("persist", PERSIST_KEYS)):
            if key == name:
                if not isinstance(value, dict):
                    raise fail(f"state.{name}", f"state.{name} must be a mapping")
                unknown = set(value) - allowed
                if unknown:
                    first = sorted(unknown)[0]
                    raise fail(f"state.{name}.{first}", f"unknown key 'state.{name}.{first}'")
        if key == "persist":  # where session copies go, and how often: a busy loop at 0
            url = value.get("url")
            if url is not None and not (isinstance(url, str) and url.strip()):
                raise fail("state.persist.url", "state.persist.url must be a URL (s3://bucket/prefix)")
            interval = value.get("interval")
            if interval is not None and parse_duration(interval, origins.get("state.persist.interval")) <= 0:
                raise fail("state.persist.interval", "state.persist.interval must be above 0 (such as 30s)")
    if "web_mode" in values and not isinstance(values["web_mode"], bool):
        raise fail("web_mode", "web_mode must be true or false")


def _includes(
    path: str, values: dict[str, Any], origins: dict[str, Origin], chain: list[str]
) -> list[tuple[str, dict[str, Any], dict[str, Origin]]]:
    """Every file included by ``path`` (depth first, in order), each before its includer."""
    raw = values.get("include") or []
    if not isinstance(raw, list):
        raise ConfigError(f"{origins.get('include', Origin(path))}: 'include' must be a list")
    out = []
    for item in raw:
        optional = False
        if isinstance(item, dict):
            unknown = set(item) - {"repo", "path", "optional"}
            if unknown or "path" not in item:
                raise ConfigError(
                    f"{origins.get('include', Origin(path))}: an include is a path or "
                    "{repo, path, optional}"
                )
            base = os.path.join(os.path.dirname(path), str(item.get("repo", ".")))
            target = os.path.normpath(os.path.join(base, str(item["path"])))
            optional = bool(item.get("optional", False))
        else:
            target = os.path.normpath(os.path.join(os.path.dirname(path), str(item)))
        if target in chain:
            cycle = " -> ".join([*chain[chain.index(target) :], target])
            raise ConfigError(f"include cycle: {cycle}")
        if len(chain) > MAX_INCLUDE_DEPTH:
            raise ConfigError(f"includes nested deeper than {MAX_INCLUDE_DEPTH}: {' -> '.join(chain)}")
        if not os.path.isfile(target):
            if optional:
                continue
            raise ConfigError(
                f"{origins.get('include', Origin(path))}: included file {target} does not "
                "exist (mark it `optional: true` if it may be absent)"
            )
        sub_values, sub_origins = _load(target)
        _validate(sub_values, sub_origins, target)
        out += _includes(target, sub_values, sub_origins, [*chain, target])
        out.append((target, sub_values, sub_origins))
    return out


def environment_layer(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``ORCHFS_*`` layer (DESIGN §6): ``{dotted key: value}`` for each variable set.

    The one reader of these variables: :func:`load_config` and ``OrchFileSystem``
    (for its unset arguments) both ask it.
    """
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name, keys in ENVIRONMENT.items():
        if name in environ:
            value: Any = environ[name]
            if keys == ("web_mode",):
                value = value.strip().lower() in _TRUE
            out[".".join(keys)] = value
    return out


LEGACY_MODES = ("read", "migrate", "off")


class FaceSettings(NamedTuple):
    """The arguments of ``OrchFileSystem`` that fall back on the ``ORCHFS_*`` layer,
    resolved and checked."""

    storage: str | None
    session: str | None
    web_mode: bool
    legacy: str
    lock_timeout: float
    lease: float


def face_settings(
    *,
    storage: str | None = None,
    session: str | None = None,
    web_mode: bool | None = None,
    legacy: str | None = None,
    lock_timeout: float | str | None = None,
    lease: float | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> FaceSettings:
    """Each unset argument from the environment layer, else its default; web mode
    without a session gets a new session id."""
    env = environment_layer(environ)
    legacy = legacy if legacy is not None else env.get("state.legacy", "read")
    web_mode = env.get("web_mode", False) if web_mode is None else web_mode
    wait = parse_duration(lock_timeout if lock_timeout is not None else env.get("state.lock_timeout", 10.0))
    lease = parse_duration(lease if lease is not None else env.get("state.lease", 30.0))
    if not 0 < lease <= MAX_LEASE_SECONDS:
        raise ValueError(f"lease must be more than 0 seconds and at most 366 days, not {lease}")
    if storage is None:
        storage = env.get("state.storage") or None
    if legacy not in LEGACY_MODES:
        raise ValueError(f"legacy={legacy!r} is not one of {', '.join(LEGACY_MODES)}")
    if web_mode and session is None:
        session = env.get("session") or uuid.uuid4().hex[:12]
    return FaceSettings(storage, session, bool(web_mode), legacy, float(wait), lease)


def root_url(
    root: Any,
    fo: str | None = None,
    target_protocol: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The repository an ``OrchFileSystem`` opens: ``root``, else fsspec's chained
    ``fo`` (with its ``target_protocol``), else ``ORCHFS_ROOT``."""
    if root is None and fo is not None:
        root = fo if target_protocol in (None, "file", "local") else f"{target_protocol}://{fo}"
    if root is None:
        root = (os.environ if environ is None else environ).get("ORCHFS_ROOT")
    if root is None:
        raise TypeError(
            "OrchFileSystem needs root= (a repository directory or an fsspec URL such as "
            "'memory://repo'), or ORCHFS_ROOT in the environment"
        )
    return os.fspath(root)


def _state_file(root: str, rel: str) -> str:
    """The link-free path of a local configuration file (in the state directory or at
    its v1 place): a symlink there is judged like any in stored state, and one that leads
    outside the root is refused, since its settings (``state.storage``) decide where
    orchfs writes."""
    from .beneath import Beneath
    from .errors import PathEscapeError

    try:
        return os.path.join(root, Beneath(root).resolve(rel))
    except PathEscapeError as exc:
        raise ConfigError(f"{root}/{rel}: refused as configuration ({exc})") from None


def load_config(
    root: Any,
    *,
    orchestrator_version: str | None = None,
    environ: dict[str, str] | None = None,
    **arguments: Any,
) -> Config:
    """The effective configuration of the repository at ``root``."""
    root = os.path.abspath(os.fspath(root))
    environ = dict(os.environ if environ is None else environ)
    layers: list[tuple[str, dict[str, Any], dict[str, Origin]]] = []
    org = environ.get("ORCHFS_ORG_CONFIG") or os.path.join(
        os.path.expanduser("~"), ".config", "orchestrator", "config.yaml"
    )
    if os.path.isfile(org):
        values, origins = _load(org)
        _validate(values, origins, org)
        layers.append((org, values, origins))
    workflow = os.path.join(root, "workflow.yaml")
    if os.path.isfile(workflow):
        values, origins = _load(workflow)
        _validate(values, origins, workflow)
        layers += _includes(workflow, values, origins, [workflow])
        layers.append((workflow, values, origins))
    for local in (
        _state_file(root, ".orchestrator/config.yaml"),
        _state_file(root, ".orchestra.yaml"),
        _state_file(root, ".orchestrator.yaml"),
    ):
        if os.path.isfile(local):
            values, origins = _load(local)
            _validate(values, origins, local)
            layers.append((local, values, origins))
            break
    config = Config()
    _apply(config, DEFAULTS, {k: Origin("default") for k in _dotted(DEFAULTS)})
    for _path, values, origins in layers:
        _apply(config, {k: v for k, v in values.items() if k != "include"}, origins)
    variables = {".".join(keys): name for name, keys in ENVIRONMENT.items()}
    for dotted, value in environment_layer(environ).items():
        keys = tuple(dotted.split("."))
        _apply(config, _nest(keys, value), {dotted: Origin(f"env:{variables[dotted]}")})
    for key, value in arguments.items():
        keys = ("state", key) if key in STATE_KEYS else (key,)
        _apply(config, _nest(keys, value), {".".join(keys): Origin("argument")})
    _validate(config.values, config.origins, "configuration")
    _check_pin(config, layers, orchestrator_version)
    return config


def _dotted(values: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in values.items():
        out.append(prefix + key)
        if isinstance(value, dict):
            out += _dotted(value, prefix + key + ".")
    return out


def _nest(keys: tuple[str, ...], value: Any) -> dict[str, Any]:
    for key in reversed(keys):
        value = {key: value}
    return value


def _apply(config: Config, values: dict[str, Any], origins: dict[str, Origin]) -> None:
    config.values = _merge(config.values, values)
    for key in _dotted(values):
        if key in origins:
            config.origins[key] = origins[key]


def _check_pin(
    config: Config, layers: list[tuple[str, dict[str, Any], dict[str, Origin]]], version: str | None
) -> None:
    pin = config.get("orchestrator_version")
    if pin is None or version is None:
        return
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version

    where = config.origin("orchestrator_version")
    try:
        allowed = SpecifierSet(str(pin))
    except InvalidSpecifier:
        raise ConfigError(f"{where}: orchestrator_version {pin!r} is not a PEP 440 range") from None
    try:
        running = Version(version)
    except InvalidVersion:
        raise ValueError(f"orchestrator_version={version!r} is not a PEP 440 version") from None
    if running not in allowed:
        raise VersionPinError(
            f"{where}: this repository pins orchestrator_version {pin!r}; the running orchestrator "
            f"is {version}. Use an orchestrator in that range, or change the pin."
        )


__all__ = [
    "Config",
    "Origin",
    "anchored_storage",
    "load_config",
]
