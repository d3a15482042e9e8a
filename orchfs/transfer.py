"""Bulk ``get`` and ``copy`` over logical names: which source goes where.

fsspec maps the sources of a bulk transfer onto destinations with
``fsspec.utils.other_paths``. Over bare relative names it takes a top-level
directory for the common parent and drops its name (``get("checkpoints",
existing_dir)`` would fill ``existing_dir`` itself), so the mapping here is made over
names rooted at ``/``, as memory's and ``DirFileSystem``'s are. Every listed source
passes the path gate before any byte lands anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .paths import validate

__all__ = ["BulkPlan", "copy_plan", "get_plan", "has_magic"]


@dataclass(frozen=True)
class BulkPlan:
    """Where each source of a bulk ``get``/``copy`` goes, in order."""

    sources: list[str]
    targets: list[str]


def has_magic(path: str) -> bool:
    """Whether ``path`` is a glob pattern (fsspec's three magic characters)."""
    return any(char in path for char in "*?[")


def copy_plan(
    fs: Any, path1: Any, path2: Any, recursive: bool, maxdepth: Any, kwargs: dict[str, Any]
) -> BulkPlan | None:
    """The plan of ``fs.copy(path1, path2)`` (None: nothing to copy); two lists pass as given."""
    if isinstance(path1, list) and isinstance(path2, list):
        return BulkPlan(path1, path2)
    from fsspec.implementations.local import trailing_sep

    into_dir = isinstance(path2, str) and (trailing_sep(path2) or fs.isdir(path2))
    return _plan(fs, path1, path2, into_dir, recursive, maxdepth, kwargs)


def get_plan(
    fs: Any, rpath: Any, lpath: Any, recursive: bool, maxdepth: Any, kwargs: dict[str, Any]
) -> BulkPlan | None:
    """The plan of ``fs.get(rpath, lpath)`` onto local disk (None: nothing to get)."""
    if isinstance(rpath, list) and isinstance(lpath, list):
        return BulkPlan(rpath, lpath)
    from fsspec.implementations.local import LocalFileSystem, make_path_posix, trailing_sep

    if isinstance(lpath, str):
        lpath = make_path_posix(lpath)
    into_dir = isinstance(lpath, str) and (trailing_sep(lpath) or LocalFileSystem().isdir(lpath))
    return _plan(fs, rpath, lpath, into_dir, recursive, maxdepth, kwargs)


def _plan(
    fs: Any, source: Any, dest: Any, into_dir: bool, recursive: bool, maxdepth: Any, kwargs: dict[str, Any]
) -> BulkPlan | None:
    from fsspec.implementations.local import trailing_sep
    from fsspec.utils import other_paths

    options = {k: v for k, v in kwargs.items() if k != "callback"}
    source_is_str = isinstance(source, str)
    sources = fs.expand_path(source, recursive=recursive, maxdepth=maxdepth, **options)
    if source_is_str and (not recursive or maxdepth is not None):
        # Non-recursive: directories are not copied (fsspec's rule).
        sources = [p for p in sources if not (trailing_sep(p) or fs.isdir(p))]
    if not sources:
        return None
    for name in sources:
        validate(name)  # listed names pass the gate before any byte lands anywhere
    exists = source_is_str and (
        (has_magic(source) and len(sources) == 1)
        or (not has_magic(source) and into_dir and not trailing_sep(source))
    )
    rooted = ["/" + name for name in sources]
    targets = other_paths(rooted, dest, exists=exists, flatten=not source_is_str)
    return BulkPlan(sources, targets)
