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
blocks its successor.  The kernel checks a new record lock against every
lock on the file, so thousands of one-byte locks on one file would make a
start quadratic (50,000 dests in one directory: minutes): a watcher with
more than :data:`BULK_CLAIM` dests in one directory locks the whole file
instead, one lock that claims every dest there (another watcher may then
mirror nothing in that directory, which is said when it is refused).  A
watcher refused its claim exits with status 2
naming the holder's pid; a directory where no lock file can be made is
mirrored without one (logged).

A lock lives on the file, not on its name: once ``.livedata.lock`` is
removed (a cleanup script, an operator tidying up) or replaced, a second
watcher would create a new file and lock it unopposed.  So the daemon calls
:meth:`DestLocks.check` every few seconds: a lock file that is no longer
the one held is made and locked again, and a claim that could not be made
(no lock file possible: read-only directory, no inodes left; a directory
not there yet) is tried again.  A dest found held by another watcher then
raises :class:`DestinationBusy` as at start.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import stat
import struct
from collections.abc import Callable, Iterable

from livedata.config import ConfigError
from livedata.files import FileSpec, set_new_directory_metadata

log = logging.getLogger("livedata.destinations")

DIRECTORY_MODE = 0o755
LOCK_NAME = ".livedata.lock"
LOCK_MODE = 0o644
BULK_CLAIM = 64  # more dests than this in one directory: one lock on the whole lock file claims them all
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

    def __init__(self, source: str, key: str, path: str, lock_file: str, holder: int | None,
                 whole: bool = False) -> None:
        who = f"another watcher (pid {holder})" if holder else "another watcher"
        if whole:
            problem = (f"{who} claims every dest in {os.path.dirname(path)} (it has more than {BULK_CLAIM} there; "
                       f"its lock is {lock_file}): give this one another directory, or stop that one first")
        else:
            problem = (f"{path} is already mirrored by {who}, which holds its lock in {lock_file}; stop that one "
                       "first, or give this one other dests")
        super().__init__(source, key, problem)
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
    twice.  Every step is a dictionary look-up, so claiming, releasing and
    checking 50,000 dests stays linear.
    """

    def __init__(self, source: str) -> None:
        self.source = source  # the config file, named in refusals
        self._files: dict[_Identity, int] = {}  # lock file -> open descriptor
        self._held: dict[str, tuple[_Identity, int, str]] = {}  # dest -> (lock file, offset, key)
        self._bytes: dict[tuple[_Identity, int], set[str]] = {}  # locked byte -> the dests (names) it claims
        self._users: dict[_Identity, int] = {}  # lock file -> how many dests it claims
        self._names: dict[str, set[str]] = {}  # lock file name -> the dests claimed through it
        self._named: dict[str, dict[_Identity, int]] = {}  # lock file name -> its files claimed -> dests each
        self._unlockable: set[str] = set()  # directories already logged as having no lock file
        self._strays: list[int] = []  # descriptors of a lock file already open (a rename race): never closed
        self._pending = False  # some dest of the last claim went unclaimed: check() tries it again
        self._whole: set[_Identity] = set()  # lock files locked whole (BULK_CLAIM): no byte is locked or unlocked
        self._wanted: dict[str, int] = {}  # during claim(): lock file name -> dests this watcher will hold there

    def claim(self, dests: Iterable[tuple[str, str]]) -> None:
        """Claim each ``(key, dest)`` whose directory exists (others: once it does); all or nothing.

        Raises :class:`DestinationBusy` for the first dest another process
        holds, or :class:`ConfigError` for a dest that is another one's file
        under a second name, releasing what this call claimed.
        """
        batch = list(dests)
        paths = {path for _, path in batch}
        self._wanted = {}
        for path in paths | self._held.keys():
            name = _lock_name(path)
            self._wanted[name] = self._wanted.get(name, 0) + 1
        claimed: list[str] = []
        unclaimed = False
        self._pending = True  # until this call is through
        try:
            for key, path in batch:
                if path in self._held:
                    continue
                if self._claim(key, path, paths):
                    claimed.append(path)
                else:
                    unclaimed = True
        except ConfigError:
            self.release(claimed)
            raise
        self._pending = unclaimed

    def check(self, dests: Callable[[], Iterable[tuple[str, str]]]) -> None:
        """Claim again what is no longer held: lock files removed or replaced, claims that could not be made.

        ``dests`` gives the running configuration's dests; it is called only
        when something is to be claimed, so a check costs one ``stat`` per
        lock file. Raises :class:`DestinationBusy` when another process holds
        one of them now (it took a removed lock file's place).
        """
        if self._drop_replaced() or self._pending:
            self.claim(dests())

    def _drop_replaced(self) -> bool:
        """Forget the claims whose lock file is no longer at its name; whether there were any."""
        lost: list[str] = []
        for lock_file, paths in self._names.items():
            found = _identity_at(lock_file)
            if found is not None and self._named[lock_file].keys() == {found}:
                continue  # every dest claimed through this name holds the file now there: the usual case
            gone = [path for path in paths if self._held[path][0] != found]
            if gone:
                log.warning("%s was removed or replaced while this watcher held it: locking its dests again, so "
                            "that a second watcher is still refused", lock_file)  # fmt: skip
                lost += gone
        self.release(lost)  # closes the old file's descriptor: its locks guard nothing any more
        return bool(lost)

    def keep_only(self, dests: Iterable[str]) -> None:
        """Release every claim but these dests' (nodes removed or moved by a reload)."""
        keep = set(dests)
        self.release([path for path in self._held if path not in keep])

    def release(self, dests: Iterable[str]) -> None:
        for path in list(dests):
            identity, offset, _ = self._held.pop(path)
            name = _lock_name(path)
            self._names[name].discard(path)
            if not self._names[name]:
                del self._names[name]
            self._named[name][identity] -= 1
            if not self._named[name][identity]:
                del self._named[name][identity]
                if not self._named[name]:
                    del self._named[name]
            sharing = self._bytes[identity, offset]
            sharing.discard(path)
            self._users[identity] -= 1
            if not self._users[identity]:
                del self._users[identity]
                os.close(self._files.pop(identity))  # releases its last lock too
                self._whole.discard(identity)
            if not sharing:
                del self._bytes[identity, offset]
                if identity in self._files and identity not in self._whole:
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
        for other in self._bytes.get((identity, offset), ()):
            if other in batch:
                self._close_if_unused(identity)
                raise ConfigError(self.source, key, f"{path} is the file {self._held[other][2]} ({other}) names: "
                                  "one file cannot be the dest of two nodes")  # fmt: skip
        whole = identity not in self._whole and self._wanted.get(lock_file, 0) > BULK_CLAIM
        try:
            if whole:
                self._lock_whole(key, path, lock_file, fd, offset, (identity, offset) in self._bytes)
                self._whole.add(identity)
            elif identity not in self._whole:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN):
                holder, whole_file = _holder(fd, offset)
                self._close_if_unused(identity)
                raise DestinationBusy(self.source, key, path, lock_file, holder, whole_file) from None
            self._close_if_unused(identity)
            self._cannot_lock(directory, lock_file, e)
            return False
        except ConfigError:
            self._close_if_unused(identity)
            raise
        self._held[path] = (identity, offset, key)
        self._bytes.setdefault((identity, offset), set()).add(path)
        self._users[identity] = self._users.get(identity, 0) + 1
        self._names.setdefault(lock_file, set()).add(path)
        named = self._named.setdefault(lock_file, {})
        named[identity] = named.get(identity, 0) + 1
        if directory in self._unlockable:  # a claim that failed before (see check)
            self._unlockable.discard(directory)
            log.info("%s: locked now; the dests in %s are claimed, so a second watcher is refused", lock_file,
                     directory)  # fmt: skip
        return True

    def _lock_whole(self, key: str, path: str, lock_file: str, fd: int, offset: int, byte_held: bool) -> None:
        """Lock all of ``lock_file`` (see :data:`BULK_CLAIM`), or say why not: this dest's own holder, or
        another watcher's dests in the same directory (raises OSError from the kernel, or ConfigError)."""
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)  # this dest's own byte first: the precise refusal
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 0, 0)  # length 0: every byte, to the end of all offsets
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            if not byte_held:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)
            holder, _ = _holder(fd, 0, 0)
            who = f"another watcher (pid {holder})" if holder else "another watcher"
            raise ConfigError(self.source, key, f"{os.path.dirname(path)} holds dests that {who} mirrors (see "
                              f"{lock_file}), and this watcher has more than {BULK_CLAIM} dests there, which it "
                              "claims as a whole: give the two watchers separate directories") from None  # fmt: skip

    def _open(self, lock_file: str, directory: str) -> tuple[_Identity, int] | None:
        """The lock file's identity and this process's one descriptor of it, opened now if need be."""
        identity = _identity_at(lock_file)
        if identity is not None and identity in self._files:
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
        if not self._users.get(identity):
            os.close(self._files.pop(identity))
            self._whole.discard(identity)

    def _cannot_lock(self, directory: str, lock_file: str, error: OSError) -> None:
        if directory not in self._unlockable:
            self._unlockable.add(directory)
            log.warning("cannot lock %s (%s): the dests in %s are mirrored without a claim, so a second watcher "
                        "would not be refused; tried again every few seconds", lock_file, error.strerror or error,
                        directory)  # fmt: skip


def _lock_name(dest: str) -> str:
    return os.path.join(os.path.dirname(dest), LOCK_NAME)


def _identity_at(path: str) -> _Identity | None:
    """The identity of the file now at ``path`` (not following a symlink); None when there is none."""
    try:
        status = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _holder(fd: int, offset: int, length: int = 1) -> tuple[int | None, bool]:
    """The pid holding a lock on those bytes (F_GETLK) when the kernel tells it, else None; and whether that lock
    is on the whole file (a watcher with more than BULK_CLAIM dests there)."""
    request = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, offset, length, 0)
    try:
        reply = fcntl.fcntl(fd, fcntl.F_GETLK, request + bytes(8))  # room for the struct's tail padding
        kind, _, start, held, pid = struct.unpack_from(_FLOCK, reply)
    except (OSError, struct.error):
        return None, False
    if kind == fcntl.F_UNLCK:
        return None, False
    return (pid if pid > 0 else None), start == 0 and held == 0
