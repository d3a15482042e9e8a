"""The user key file: ``$XDG_CONFIG_HOME/orchfs/key`` (else ``~/.config/orchfs/key``).

It is the one file outside a repository where orchfs keeps key material, so a planted
link there, or a directory that someone else controls, would hand them the key (a write
through a link) or hand orchfs a key of theirs (a read through one). Hence:

* the configuration directory (``$XDG_CONFIG_HOME``, ``~/.config``) is the user's own
  choice of place and is opened as it is, a link included; ``orchfs/`` is opened beneath
  it with ``O_NOFOLLOW | O_DIRECTORY`` and everything after goes through that descriptor
  (``dir_fd=``), so nothing swapped in afterwards is reached;
* ``orchfs/`` must be a directory of this user (or root) that group and others cannot
  write; a new one is made 0700, and a write tightens an existing one to 0700 through
  its descriptor;
* the key file is opened ``O_NOFOLLOW | O_NONBLOCK`` and what was opened is checked (a
  regular file of this user or root, no bits for group or others, a key's size); it is
  written atomically (a temp file ``O_EXCL | O_NOFOLLOW`` 0600, fsync, rename beneath
  the descriptor), never in place of a link.

A refusal is a :class:`~orchfs.errors.KeyFileError` in one line naming the path, what is
wrong and the fix; nothing was read, written or chmodded.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from .atomic import DIR_FLAGS, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, write_whole
from .errors import KeyFileError

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a planted FIFO must not hang a read
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_READ_FLAGS = os.O_RDONLY | _O_NONBLOCK | _O_CLOEXEC
MAX_KEY_FILE_BYTES = 4096  # a key is 44 characters; anything far larger is not one


def user_key_path() -> str:
    """Where the user key file lives (``XDG_CONFIG_HOME`` is honoured)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "orchfs", "key")


def read_named_key(path: str, source: str) -> str:
    """The text of a key file the caller named (``ORCHFS_KEY_FILE``, ``--new-key-file``):
    its place is the caller's choice, so a link to it is followed; what was opened is then
    checked, the check and the read being one step."""
    fd = os.open(path, _READ_FLAGS)
    try:
        return _read_opened(fd, path, source)
    finally:
        os.close(fd)


def read_user_key(path: str | None = None) -> str | None:
    """The text of the user key file, or ``None`` when there is none."""
    path = path or user_key_path()
    dir_fd = _open_directory(os.path.dirname(path), create=False)
    if dir_fd is None:
        return None
    try:
        fd = os.open(os.path.basename(path), _READ_FLAGS | _O_NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _refuse_if_link(exc, dir_fd, os.path.basename(path), path)
        raise
    finally:
        os.close(dir_fd)
    try:
        _check_owner(os.fstat(fd), path)
        return _read_opened(fd, path, "user key file")
    finally:
        os.close(fd)


def write_user_key(text: str, path: str | None = None, *, exclusive: bool) -> str:
    """Write ``text`` as the user key file, atomically, 0600 (``exclusive``: only where
    there is none yet). Returns the path."""
    path = path or user_key_path()
    name = os.path.basename(path)
    dir_fd = _open_directory(os.path.dirname(path), create=True)
    try:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise _link_error(path)
        if st is not None and exclusive:
            raise FileExistsError(errno.EEXIST, "already exists; it is left as it is", path)
    except BaseException:
        os.close(dir_fd)
        raise
    write_whole(dir_fd, name, text.encode("ascii") + b"\n", exclusive=exclusive, final_mode=PRIVATE_FILE_MODE)
    return path


def _open_directory(directory: str, *, create: bool) -> int | None:
    """A descriptor of the key's directory, checked (``create``: made 0700 if missing, and
    tightened to 0700); ``None`` when it is missing and not to be made."""
    base, name = os.path.split(directory)
    if create:
        os.makedirs(base, mode=PRIVATE_DIR_MODE, exist_ok=True)
    try:
        base_fd = os.open(base or ".", os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        if create:
            raise
        return None  # no configuration directory: no key file in it
    try:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, PRIVATE_DIR_MODE, dir_fd=base_fd)
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=base_fd)
        except OSError as exc:
            _refuse_if_link(exc, base_fd, name, directory)
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
            if not create:
                return None  # nothing there, or no directory: no key file
            raise KeyFileError(f"{directory} is not a directory; move it aside, then run again") from None
    finally:
        os.close(base_fd)
    try:
        st = os.fstat(fd)
        _check_owner(st, directory)
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o022:
            raise KeyFileError(
                f"{directory} is writable by group or others (mode {mode:o}), so the user key "
                f"there could be swapped; run `chmod 700 {directory}`"
            )
        if create and mode != PRIVATE_DIR_MODE:
            os.fchmod(fd, PRIVATE_DIR_MODE)  # the directory checked above, not a link
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_opened(fd: int, path: str, source: str) -> str:
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{source} {path} is not a regular file; put the key in a file there")
    if mode & 0o077:
        raise KeyFileError(
            f"{source} {path} is readable by group or others (mode {mode:o}); run `chmod 600` on it"
        )
    if st.st_size > MAX_KEY_FILE_BYTES:
        raise KeyFileError(
            f"{source} {path} holds {st.st_size} bytes, not a key (url-safe base64 of 32 bytes)"
        )
    data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{source} {path} is not a key (url-safe base64 of 32 bytes)") from None


def _check_owner(st: os.stat_result, path: str) -> None:
    # This user's, or root's (which no other user can make), as OpenSSH has it for keys.
    if st.st_uid not in (os.geteuid(), 0):
        raise KeyFileError(
            f"{path} belongs to another user (uid {st.st_uid}), so it is not your key's place; "
            "remove it, or `chown` it to yourself if it is yours"
        )


def _link_error(path: str) -> KeyFileError:
    return KeyFileError(
        f"{path} is a symlink; orchfs never reads or writes the user key through a link: "
        "remove the link and run `orchfs secrets init` (or put the key file there)"
    )


def _refuse_if_link(exc: OSError, dir_fd: int, name: str, path: str) -> None:
    """Raise the link refusal when ``exc`` came from ``O_NOFOLLOW`` meeting a link."""
    if exc.errno not in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
        return
    try:
        is_link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return
    if is_link:
        raise _link_error(path) from None


__all__ = ["MAX_KEY_FILE_BYTES", "read_named_key", "read_user_key", "user_key_path", "write_user_key"]
