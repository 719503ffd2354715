"""Checking dests before connecting, and creating their missing directories deliberately.

A dest that is an existing directory can never be written (a rename cannot
replace a directory with a file): accepting it would mean a failed write,
retried forever.  It is refused with the configuration instead (the watcher
never removes a directory, so this cannot cure itself).

A dest whose directory does not exist yet is allowed, since the directory
may be a tmpfs or a volume created late, but each directory created is
logged (a typo in a dest path must not grow a new tree silently) and given
the node's owner and group when it has them, mode 0755, so that the owner
can manage its files.  This happens before connecting (and on each reload
for the new nodes), in the same order as ``mkdir -p``.

Each dest is claimed by one watcher at a time (:class:`DestLocks`): two
daemons writing one file (a second unit, a forgotten manual run, two
configs that overlap) would each undo the other's writes, run both sets of
hooks, and tell the probes two stories, all without a word.  The claim is a
POSIX record lock on one byte of ``.livedata.lock`` in the dest's directory,
at an offset derived from the dest's name: one lock file and one open file
per directory however many dests it holds, watchers with different dests
in one directory do not collide, and the kernel drops the locks when the
process ends in any way (SIGKILL included), so a crashed watcher never
blocks its successor.  A watcher refused its claim exits with status 2
naming the holder's pid; a directory where no lock file can be made is
mirrored without one (logged).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import stat
import struct
from collections.abc import Iterable

from livedata.config import ConfigError
from livedata.files import FileSpec, set_new_directory_metadata

log = logging.getLogger("livedata.destinations")

DIRECTORY_MODE = 0o755
LOCK_NAME = ".livedata.lock"
LOCK_MODE = 0o644
_OFFSET_BITS = 62  # offsets stay positive in a signed 64-bit off_t
_FLOCK = "hhqqi"  # struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid (native alignment)


def dest_problem(path: str) -> str | None:
    """Why ``path`` can never be a dest, judged from what exists now; None when it can be."""
    if os.path.basename(path) == LOCK_NAME:
        return f"{path}: {LOCK_NAME} is the name of the watchers' lock file"
    try:
        status = os.stat(path)
    except OSError:
        return None
    if stat.S_ISDIR(status.st_mode):
        return f"{path} is a directory; a dest must name a file"
    # A regular file where a directory should be is left to the mirror: it is logged when the directories
    # are created, and the node's writes fail and are retried (and counted) until someone removes it.
    return None


def create_missing_directories(nodes: Iterable[tuple[str, FileSpec]]) -> list[str]:
    """Create each missing dest directory with the first node's owner/group; return the directories created.

    A failure is logged and left to the mirror, which reports the node's
    writes as failing and retries them.
    """
    created: list[str] = []
    seen: set[str] = set()
    for name, spec in nodes:
        directory = os.path.dirname(spec.path)
        if directory in seen:
            continue
        seen.add(directory)
        if os.path.isdir(directory):
            continue
        try:
            made = _make_directories(directory, spec)
        except OSError as e:
            log.error("nodes.%s: cannot create %s: %s", name, e.filename or directory, e.strerror or e)
            continue
        created += made
        for path in made:
            log.info("nodes.%s: created directory %s (owner %s, group %s, mode %04o)", name, path,
                     _id(spec.owner), _id(spec.group), DIRECTORY_MODE)  # fmt: skip
    return created


def _make_directories(directory: str, spec: FileSpec) -> list[str]:
    missing = []
    path = directory
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    created = []
    for path in reversed(missing):
        try:
            os.mkdir(path, DIRECTORY_MODE)
        except FileExistsError:
            continue
        created.append(path)
        set_new_directory_metadata(path, DIRECTORY_MODE, spec.owner, spec.group)
    return created



def _id(value: int | None) -> str:
    return "unchanged" if value is None else str(value)


# --- one watcher per dest -----------------------------------------------------------------------


class DestinationBusy(ConfigError):
    """Another running process (a watcher) holds the claim on a dest this configuration names."""

    def __init__(self, source: str, key: str, path: str, lock_file: str, holder: int | None) -> None:
        who = f"another watcher (pid {holder})" if holder else "another watcher"
        super().__init__(source, key, f"{path} is already mirrored by {who}, which holds its lock in {lock_file}; "
                         "stop that one first, or give this one other dests")  # fmt: skip
        self.holder = holder


_Identity = tuple[int, int]  # (st_dev, st_ino) of a lock file: the same file under any name or mount


class DestLocks:
    """The dests this watcher has claimed (see the module docstring); a process holds one instance.

    POSIX record locks belong to the process and vanish when it closes *any*
    descriptor of the file: so each lock file is opened once, known by its
    device and inode (a symlinked directory or a bind mount gives it another
    name, never another descriptor), and closed only when none of its dests
    is claimed any more.  Likewise a byte is unlocked only when no name this
    watcher still mirrors leads to it: the same file under two names (a
    symlinked directory) is one claim, and one configuration may not name it
    twice.
    """

    def __init__(self, source: str) -> None:
        self.source = source  # the config file, named in refusals
        self._files: dict[_Identity, int] = {}  # lock file -> open descriptor
        self._held: dict[str, tuple[_Identity, int, str]] = {}  # dest -> (lock file, offset, key)
        # The same, indexed: (lock file, offset) -> dests, lock file -> how many dests: a claim or a release
        # costs the same at 100,000 dests as at one.
        self._by_lock: dict[tuple[_Identity, int], list[str]] = {}
        self._per_file: dict[_Identity, int] = {}
        self._unlockable: set[str] = set()  # directories already logged as having no lock file
        self._strays: list[int] = []  # descriptors of a lock file already open (a rename race): never closed

    def claim(self, dests: Iterable[tuple[str, str]]) -> None:
        """Claim each ``(key, dest)`` whose directory exists (others: once it does); all or nothing.

        Raises :class:`DestinationBusy` for the first dest another process
        holds, or :class:`ConfigError` for a dest that is another one's file
        under a second name, releasing what this call claimed.
        """
        batch = list(dests)
        paths = {path for _, path in batch}
        claimed: list[str] = []
        try:
            for key, path in batch:
                if path not in self._held and self._claim(key, path, paths):
                    claimed.append(path)
        except ConfigError:
            self.release(claimed)
            raise

    def keep_only(self, dests: Iterable[str]) -> None:
        """Release every claim but these dests' (nodes removed or moved by a reload)."""
        keep = set(dests)
        self.release([path for path in self._held if path not in keep])

    def release(self, dests: Iterable[str]) -> None:
        for path in list(dests):
            identity, offset, _ = self._held.pop(path)
            sharing = self._by_lock[(identity, offset)]
            sharing.remove(path)
            if not sharing:
                del self._by_lock[(identity, offset)]
            self._per_file[identity] -= 1
            if not self._per_file[identity]:
                del self._per_file[identity]
                os.close(self._files.pop(identity))  # releases its last lock too
            elif not sharing:
                fcntl.lockf(self._files[identity], fcntl.LOCK_UN, 1, offset)

    def release_all(self) -> None:
        self.release(list(self._held))

    def _claim(self, key: str, path: str, batch: set[str]) -> bool:
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            return False
        lock_file = os.path.join(directory, LOCK_NAME)
        opened = self._open(lock_file, directory)
        if opened is None:
            return False
        identity, fd = opened
        offset = int.from_bytes(hashlib.blake2b(os.path.basename(path).encode(), digest_size=8).digest(), "big")
        offset >>= 64 - _OFFSET_BITS
        for other in self._by_lock.get((identity, offset), ()):
            other_key = self._held[other][2]
            if other in batch:
                self._close_if_unused(identity)
                raise ConfigError(self.source, key, f"{path} is the file {other_key} ({other}) names: "
                                  "one file cannot be the dest of two nodes")  # fmt: skip
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN):
                holder = _holder(fd, offset)
                self._close_if_unused(identity)
                raise DestinationBusy(self.source, key, path, lock_file, holder) from None
            self._close_if_unused(identity)
            self._cannot_lock(directory, lock_file, e)
            return False
        self._held[path] = (identity, offset, key)
        self._by_lock.setdefault((identity, offset), []).append(path)
        self._per_file[identity] = self._per_file.get(identity, 0) + 1
        return True

    def _open(self, lock_file: str, directory: str) -> tuple[_Identity, int] | None:
        """The lock file's identity and this process's one descriptor of it, opened now if need be."""
        try:
            status = os.stat(lock_file, follow_symlinks=False)
        except OSError:
            pass
        else:
            identity = (status.st_dev, status.st_ino)
            if identity in self._files:
                return identity, self._files[identity]
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, LOCK_MODE)
            status = os.fstat(fd)
        except OSError as e:
            self._cannot_lock(directory, lock_file, e)
            return None
        identity = (status.st_dev, status.st_ino)
        if identity in self._files:  # replaced under our stat by a file we hold: closing fd would drop our locks
            self._strays.append(fd)
            return identity, self._files[identity]
        self._files[identity] = fd
        return identity, fd

    def _close_if_unused(self, identity: _Identity) -> None:
        if not self._per_file.get(identity):
            os.close(self._files.pop(identity))

    def _cannot_lock(self, directory: str, lock_file: str, error: OSError) -> None:
        if directory not in self._unlockable:
            self._unlockable.add(directory)
            log.warning("cannot lock %s (%s): the dests in %s are mirrored without a claim, so a second watcher "
                        "would not be refused", lock_file, error.strerror or error, directory)  # fmt: skip


def _holder(fd: int, offset: int) -> int | None:
    """The pid holding the lock at ``offset`` (F_GETLK), when the kernel tells it; None otherwise."""
    request = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
    try:
        reply = fcntl.fcntl(fd, fcntl.F_GETLK, request + bytes(8))  # room for the struct's tail padding
        kind, _, _, _, pid = struct.unpack_from(_FLOCK, reply)
    except (OSError, struct.error):
        return None
    return pid if kind != fcntl.F_UNLCK and pid > 0 else None
