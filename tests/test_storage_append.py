"""LocalStorage.append against a file replaced between its open and the write.

A migrated checkpoint and its backup are one inode (a hard link), so the file that a
path named when an append opened it may live on under the backup's name after another
writer replaced the path (an atomic write, or another appender's copy of its own). The
append must then go to the file the path names now, never to the old one: a line in
the backup changes what a rollback restores, and the migrated file loses the line.
The interleaving is made deterministic by doing the other writer's change inside the
append, right after its open (the window between the open and the first look at the
descriptor).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from orchfs.storage import LocalStorage


class _ReplacedAfterOpen(LocalStorage):
    """An adapter whose first append meets ``change`` right after it opened the file."""

    def __init__(self, base: str, change: Callable[[LocalStorage], None]) -> None:
        super().__init__(base)
        self._change: Callable[[LocalStorage], None] | None = change

    def _append_fd(self, fd: int, rel: str, data: bytes) -> bool:
        change, self._change = self._change, None
        if change is not None:
            change(self)
        return super()._append_fd(fd, rel, data)


@pytest.mark.parametrize(
    "change, now",
    [
        (lambda store: store.write("cp.json", b"rewritten\n"), b"rewritten\n"),
        (lambda store: store.append("cp.json", b"other\n"), b"v1\nother\n"),
    ],
    ids=["atomic-write", "other-appender"],
)
@pytest.mark.parametrize("existing", [True, False], ids=["append_existing", "append"])
def test_an_append_never_lands_in_another_name_of_a_replaced_file(tmp_path, change, now, existing):
    state = tmp_path / "state"
    state.mkdir()
    (state / "cp.json").write_bytes(b"v1\n")
    backup = tmp_path / "backup.json"  # the other name, outside the store's base
    os.link(state / "cp.json", backup)
    before = os.lstat(backup)
    store = _ReplacedAfterOpen(str(state), change)
    if existing:
        assert store.append_existing("cp.json", b"line\n")
    else:
        store.append("cp.json", b"line\n")
    assert (state / "cp.json").read_bytes() == now + b"line\n"
    assert backup.read_bytes() == b"v1\n"
    after = os.lstat(backup)
    assert (after.st_size, after.st_mtime_ns, after.st_mode) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_mode,
    )
