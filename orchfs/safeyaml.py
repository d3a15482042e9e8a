"""The one YAML loader of orchfs: safe and bounded (DESIGN §3).

Configuration files and layouts are read by every command, and a repository may come
from anyone, so a YAML document must not be able to hang orchfs or exhaust its memory:

* a document over :data:`MAX_DOCUMENT_BYTES` (1 MiB) is refused before it is parsed;
* nesting deeper than :data:`MAX_DEPTH` is refused from the event stream, before the
  (recursive) composer sees it;
* aliases may not expand the document past :data:`MAX_NODES` nodes in all (the
  "billion laughs" bomb is a few hundred bytes that expand to 10^9 nodes): the size of
  every anchored subtree is counted as the events stream by.

Every refusal, like malformed YAML, is :class:`~orchfs.errors.ConfigError` naming the
file, line and column. Only YAML's safe types are ever built.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from .errors import ConfigError

MAX_DOCUMENT_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000
# A malformed document this small is parsed again by the pure-Python parser, whose
# messages are clearer than libyaml's; a larger one keeps libyaml's (it is fast).
REPARSE_BYTES = 64 << 10


class _Frame:
    """An open collection: its anchor, and its own node with everything completed inside
    it so far, aliases expanded."""

    __slots__ = ("anchor", "nodes")

    def __init__(self, anchor: str | None, nodes: int = 1) -> None:
        self.anchor = anchor
        self.nodes = nodes


def _loader() -> Any:
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _where(source: str, mark: Any) -> str:
    return f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source


def read_text(path: str) -> str:
    """The text of a YAML file, refused unread past the size limit."""
    try:
        # O_NONBLOCK: a FIFO put where a YAML file was checked must not hang the open.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"{path}: not a regular file (a FIFO or a device); refused")
            data = f.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    _check_size(len(data), path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _check_size(size: int, source: str) -> None:
    if size > MAX_DOCUMENT_BYTES:
        raise ConfigError(f"{source}: over the {MAX_DOCUMENT_BYTES}-byte limit of a YAML document; refused")


def compose(text: str, source: str) -> Any:
    """The node tree of one YAML document (``None`` when empty), after the limits hold."""
    import yaml

    if len(text) > MAX_DOCUMENT_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        _check_size(MAX_DOCUMENT_BYTES + 1, source)
    try:
        try:
            _check_events(yaml.parse(text, Loader=_loader()), source)
            return yaml.compose(text, Loader=_loader())
        except yaml.YAMLError:
            if len(text) <= REPARSE_BYTES:  # events only: no recursion, however deep
                # Raises again, with the clearer message; the limits hold here too: libyaml
                # 0.2.6's own nesting limit (PyYAML 6.0.4's wheels) fails a deep document
                # before the first event, and the pure-Python parser would walk all of it.
                _check_events(yaml.parse(text, Loader=yaml.SafeLoader), source)
            raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{_where(source, mark)}: malformed YAML: {problem}") from None


def _check_events(events: Any, source: str) -> None:
    """Depth and expanded size from the event stream (no recursion, no expansion)."""
    import yaml

    anchors: dict[str, int] = {}
    stack: list[_Frame] = [_Frame(None, 0)]
    total = 0  # the document so far: the nodes of every open frame, kept as they change
    for event in events:
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(stack) > MAX_DEPTH:
                raise ConfigError(
                    f"{_where(source, event.start_mark)}: nested deeper than {MAX_DEPTH} levels; refused"
                )
            stack.append(_Frame(event.anchor))
            total += 1
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            frame = stack.pop()
            anchor, size = frame.anchor, frame.nodes
            total -= size  # counted again below, as part of the enclosing frame
        elif isinstance(event, yaml.ScalarEvent):
            anchor, size = event.anchor, 1
        elif isinstance(event, yaml.AliasEvent):
            anchor, size = None, anchors.get(event.anchor, 1)
        else:
            continue
        if anchor is not None:
            anchors[anchor] = size
        stack[-1].nodes += size
        total += size
        if total > MAX_NODES:
            raise ConfigError(
                f"{_where(source, event.start_mark)}: aliases expand the document past {MAX_NODES} "
                "nodes; refused"
            )


def construct(node: Any) -> Any:
    """The Python value of a node (safe types only); its size was bounded by :func:`compose`."""
    import yaml

    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


__all__ = ["MAX_DEPTH", "MAX_DOCUMENT_BYTES", "MAX_NODES", "compose", "construct", "read_text"]
