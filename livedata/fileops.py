"""The single-file steps every dest writer is built from, so each safety rule is written once.

Files are created O_EXCL|O_NOFOLLOW with owner-only bits (a planted file or symlink fails, never followed),
given their owner first and then their exact mode (chown clears set-id bits; fchmod ignores the umask), and
only then their data; directories livedata makes get their owner and mode through an fd of the directory
itself.  :mod:`livedata.files` (single-file dests) and :mod:`livedata.snapshots` (tree dests) use these.

Linux only; stdlib only.
"""
from __future__ import annotations

import errno
import functools
import os
import stat
from dataclasses import dataclass
from posix import close as _close
from typing import Callable

# _close is the C module's close: gevent's monkey-patched os.close checks every fd with fcntl and fstat first
# (two extra syscalls) to protect fds it may be watching; the regular files and directories opened here never are.

# Directories we create must be traversable by the applications that read the dests.
DIRECTORY_MODE = 0o755
_TEMP_FLAGS = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted at a dest must not hang the daemon when we look at it.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
MAX_ID = 2**32 - 2  # the largest uid/gid chown accepts: (uid_t)-1 means "leave unchanged"


@dataclass(frozen=True, slots=True)
class FileSpec:
    """Where a dest lives and the metadata it must have; owner and group are independent, and 0 is root."""

    path: str
    mode: int = 0o400
    owner: int | None = None
    group: int | None = None

    def __post_init__(self) -> None:
        problem = _spec_problem(self)
        if problem:
            raise ValueError(f"invalid FileSpec for {self.path!r}: {problem}")


def _spec_problem(spec: FileSpec) -> str | None:
    base = os.path.basename(spec.path)
    if not os.path.isabs(spec.path):
        return "path must be absolute"
    if os.path.normpath(spec.path) != spec.path or base in ("", ".", ".."):
        return "path must be normalised (no '.', '..', '//' or trailing '/') and name a file"
    if not 0 <= spec.mode <= 0o7777:
        return f"mode {spec.mode:#o} is not a permission mode"
    if any(value is not None and not 0 <= value <= MAX_ID for value in (spec.owner, spec.group)):
        return f"owner and group must be ids from 0 to {MAX_ID}, or None to leave them as created"
    return None


# ------------------------------------------------------------------ primitives shared with livedata.snapshots


def create_file(dir_fd: int, name: str, spec: FileSpec, data: bytes, flush: bool) -> os.stat_result:
    """Create ``name`` in directory ``dir_fd`` holding ``data`` with ``spec``'s owner and mode; return its status.

    The same rules as a temp file: O_EXCL|O_NOFOLLOW (an existing name or a planted symlink fails, never
    followed), owner-only bits at creation, fchown then fchmod, and only then the data. ``spec.path`` is
    what the file is published as; it is not opened. ``flush`` fsyncs the file before returning.
    """
    fd = os.open(name, _TEMP_FLAGS, spec.mode & 0o600, dir_fd=dir_fd)
    try:
        _set_metadata(fd, spec)
        _write_all(fd, data)
        if flush:
            os.fsync(fd)
        return os.fstat(fd)
    finally:
        os.close(fd)


def holds(fd: int, data: bytes) -> bool:
    """True if the open file is a regular file holding exactly ``data``."""
    return _status_if_holding(fd, data) is not None


def fix_metadata(fd: int, spec: FileSpec) -> bool:
    """Bring the open file's owner, group and mode to ``spec`` in place (owner first); True if anything changed."""
    return _fix_metadata(fd, os.fstat(fd), spec)


def fsync_directory(directory: str) -> None:
    """fsync a directory so the entries made or removed in it survive a crash (no-op where unsupported)."""
    _fsync_directory(directory)


def make_directories(directory: str) -> None:
    """Create ``directory`` and missing ancestors (DIRECTORY_MODE, whatever the umask), durably."""
    created_parents: set[str] = set()
    _make_directories(directory, created_parents)
    for parent in sorted(created_parents):
        _fsync_directory(parent)


def syncfs(fd: int) -> bool:
    """Flush the whole filesystem holding ``fd`` (one journal commit for many files); False if unavailable.

    Linux reports a writeback error to syncfs only if it happened after ``fd`` was opened: open it first.
    """
    function = _load_syncfs()
    if function is None:
        return False
    function(fd)
    return True


def set_new_directory_metadata(path: str, mode: int, owner: int | None = None, group: int | None = None) -> None:
    """Owner and mode (whatever the umask) of a directory just made, through an fd of that very directory.

    Never by path: between the mkdir and a chmod by path, whoever can write
    to the parent could swap in a symlink, and chmod/chown would follow it.
    O_NOFOLLOW|O_DIRECTORY refuse anything but the directory itself.
    """
    fd = os.open(path, _DIR_FLAGS | os.O_NOFOLLOW)
    try:
        if owner is not None or group is not None:
            os.fchown(fd, _id_or_keep(owner), _id_or_keep(group))
        os.fchmod(fd, mode)  # after chown, which may clear set-id bits
    finally:
        _close(fd)


# -------------------------------------------------------------------------------------- single-file steps


def _set_metadata(fd: int, spec: FileSpec) -> None:
    """Owner first, then mode: chown clears setuid/setgid bits, and fchmod is not filtered by the umask."""
    if spec.owner is not None or spec.group is not None:
        os.fchown(fd, _id_or_keep(spec.owner), _id_or_keep(spec.group))
    os.fchmod(fd, spec.mode)


def _fix_metadata(fd: int, status: os.stat_result, spec: FileSpec) -> bool:
    """Bring an existing file's owner, group and mode to ``spec``; True if anything had to change."""
    uid = None if spec.owner == status.st_uid else spec.owner
    gid = None if spec.group == status.st_gid else spec.group
    chowned = uid is not None or gid is not None
    if chowned:
        os.fchown(fd, _id_or_keep(uid), _id_or_keep(gid))
    if chowned or stat.S_IMODE(status.st_mode) != spec.mode:
        os.fchmod(fd, spec.mode)
        return True
    return False


def _id_or_keep(value: int | None) -> int:
    return -1 if value is None else value


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def _status_if_holding(fd: int, data: bytes) -> os.stat_result | None:
    """The open file's status if it holds exactly ``data``; None if not, or unreadable (a rewrite fixes both)."""
    try:
        status = os.fstat(fd)
        return status if _holds(fd, status, data) else None
    except OSError:
        return None


def _holds(fd: int, status: os.stat_result, data: bytes) -> bool:
    """True if the open file is a regular file with exactly ``data``; reads at most one byte too many."""
    if not stat.S_ISREG(status.st_mode) or status.st_size != len(data):
        return False
    chunks: list[bytes] = []
    remaining = len(data) + 1  # one more than expected, to notice a file that grew since fstat
    while remaining > 0:
        chunk = os.read(fd, remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks) == data


def _metadata_ok(status: os.stat_result, spec: FileSpec) -> bool:
    return (
        stat.S_IMODE(status.st_mode) == spec.mode
        and spec.owner in (None, status.st_uid)
        and spec.group in (None, status.st_gid)
    )


def _fsync_file(path: str) -> None:
    fd = os.open(path, _READ_FLAGS)
    try:
        os.fsync(fd)
    finally:
        _close(fd)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, _DIR_FLAGS)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # filesystems that cannot fsync a directory
            raise
    finally:
        _close(fd)


def _make_directories(directory: str, created_parents: set[str]) -> None:
    """Create missing ancestors with DIRECTORY_MODE whatever the umask; remember their parents to fsync."""
    missing: list[str] = []
    current = directory
    while not os.path.exists(current) and os.path.dirname(current) != current:
        missing.append(current)
        current = os.path.dirname(current)
    for path in reversed(missing):
        try:
            os.mkdir(path, DIRECTORY_MODE)
        except FileExistsError:
            if os.path.isdir(path):
                continue  # another writer (say, an overlapping instance) made it first
            raise
        set_new_directory_metadata(path, DIRECTORY_MODE)
        created_parents.add(os.path.dirname(path))


@functools.cache
def _load_syncfs() -> Callable[[int], None] | None:
    """libc's syncfs through ctypes (os has no wrapper), or None where it cannot be found."""
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (ImportError, OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if function(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return syncfs
