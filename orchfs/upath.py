"""``OrchPath``: the universal_pathlib face of orchfs (``UPath("orch://state.json", root=...)``).

universal_pathlib finds this class through its implementation registry (the entry point
``universal_pathlib.implementations`` named ``orch``), so ``UPath("orch://...")`` is an
:class:`OrchPath` without the fallback warning. Paths are logical: ``orch://state.json``
is ``state.json`` in the repository given by the storage options (``root=``, and any of
:class:`~orchfs.OrchFileSystem`'s other options), whatever layer serves it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fsspec
from upath.core import UPath

from .paths import PROTOCOL

__all__ = ["OrchPath"]

# upath takes the path syntax (the "flavour") from an imported fsspec class; importing it
# here, as the registry loads this module, spares the "creating a default flavour" warning.
fsspec.get_filesystem_class(PROTOCOL)


class _RepositoryRoot:
    """``cwd()`` of a path: the logical root of its repository.

    Each repository is its own namespace, so its root is where relative targets (as in
    ``path.rename("new-name.json")``) start from. Asked of the class, with no repository
    to name, it is unsupported, as for every other fsspec-backed UPath.
    """

    def __get__(self, obj: OrchPath | None, objtype: type[OrchPath] | None = None) -> Callable[[], Any]:
        if obj is None:
            return UPath.cwd.__func__.__get__(objtype)  # type: ignore[attr-defined]
        # built afresh: with_segments of a relative path would be relative too
        return lambda: type(obj)(f"{PROTOCOL}://", **obj.storage_options)


class OrchPath(UPath):
    """A logical path in an orchfs repository; the repository root is ``orch://``.

    ``OrchPath("orch://state.json", root="/path/to/repo")`` reads and writes what
    ``OrchFileSystem(root="/path/to/repo")`` serves as ``state.json``. Logical paths have
    no leading ``/`` (as in fsspec's ``DirFileSystem``); ``cwd()`` of a path is the root
    of its repository, so relative targets (``rename("old.json")``) stay in it.
    """

    __slots__ = ()

    cwd = _RepositoryRoot()  # type: ignore[assignment]
