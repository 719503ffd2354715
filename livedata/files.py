"""The one place that writes destination files, so every durability and safety rule lives here.

Why so careful: applications may reparse a dest at any instant, so they must only ever see a complete old
file or a complete new one; some dests hold secrets, so they must never be readable by others, not even
between create and chmod; and a crash, a full disk or a second daemon instance overlapping during a deploy
must neither corrupt a dest nor leave a temp file that gets in the way of later writes.

How one file is published:

1. A temp file in the dest's own directory (rename is only atomic within one filesystem), named
   ``.<basename>.livedata-tmp.<pid>.<random>`` so that it is recognisable, unique per writer, and its
   writer's liveness can be checked by ``cleanup_stale_temp_files``.
2. Created with O_EXCL|O_NOFOLLOW and owner-only bits, then fchown and only then fchmod (chown clears setuid
   bits, fchmod sets the exact mode whatever the umask), all before a single byte of data lands in it.
3. Data, fsync, rename over the dest (which replaces a planted symlink instead of following it). The
   directory is fsynced only when the rename created a name that was not there before.

A batch (``sync_files``) first skips dests that already hold the right bytes, then writes every temp, makes
them durable with a single ``syncfs(2)`` per filesystem instead of thousands of fsyncs, renames them all and
fsyncs each directory that gained a name once. This is what makes a cold start with tens of thousands of
dests fast.

Durability (the contract README's "Durability" section states for operators):

* The data of a new version is on disk (fsync, or syncfs for a batch) before the rename that publishes it,
  so after a crash or a power loss a dest holds a complete version, never an empty or partial one.
* On every filesystem, ext4 included. ext4's ``auto_da_alloc`` heuristic (start writeback of a file
  renamed over another) is no substitute: with ``dioread_nolock`` (the default since Linux 5.6) the
  journal commit that carries the rename does not wait for that data, and a power loss at that moment
  leaves the dest full of zeros (tests/test_power_cut.py cuts an ext4 at the instant of the rename).
* fsync, not fdatasync: on a freshly created file both must write its size and blocks, so they cost the
  same; fsync also makes the temp's owner and mode durable, which matters for dests holding secrets.
* The rename itself may be lost in a power loss when it replaced an existing dest: the dest then holds the
  version before, which is complete and was current moments earlier, exactly what a loss of power a moment
  earlier would have left. Every dest is re-derived from ZooKeeper before the watcher reports READY at the
  next start, so nothing is lost for good. The directory fsync that would pin the rename costs a journal
  commit per change (0.2-0.4 ms of disk wait, plus CPU) and buys nothing a reader could tell apart; it is
  paid only where a name appears (a dest created for the first time, a directory created) or disappears (a
  removal), so once such a sync has returned, a power loss neither makes the dest vanish nor brings a
  removed one back.
* Callers that know what a dest holds can say so (``previous``): when that differs from the new data the
  dest is replaced without being opened and read first. A wrong hint costs one needless replacement,
  never a missed one.

Linux only; stdlib only (the daemon is gevent based, but nothing here yields or needs to).
"""
from __future__ import annotations

import enum
import errno
import functools
import hashlib
import logging
import os
import random
import re
import stat
import threading
import time
from dataclasses import dataclass
from posix import close as _close
from typing import Callable, Iterable, Mapping, Sequence, Union

log = logging.getLogger(__name__)

# _close is the C module's close: gevent's monkey-patched os.close checks every fd with fcntl and fstat first
# (two extra syscalls) to protect fds it may be watching; the regular files and directories opened here never are.

TEMP_MARKER = ".livedata-tmp."
# Above this many files needing a flush, one syncfs(2) beats one fsync per file.
SYNCFS_THRESHOLD = 8
# Directories we create must be traversable by the applications that read the dests.
DIRECTORY_MODE = 0o755

_NAME_MAX = 255
_PID_DIGITS = 10
_RANDOM_BYTES = 8  # the hex part of a unique suffix: a namespace tag, then random digits
_TAG_DIGITS = 8
_RANDOM_BITS = 4 * (2 * _RANDOM_BYTES - _TAG_DIGITS)
FOREIGN_GRACE = 600.0  # seconds: a temp of another boot or pid namespace older than this is left over
_BASE_BUDGET = _NAME_MAX - (1 + len(TEMP_MARKER) + _PID_DIGITS + 1 + 2 * _RANDOM_BYTES)
_TEMP_NAME = re.compile(r"\.(?P<base>.*)\.livedata-tmp\.(?P<pid>[1-9][0-9]{0,9})\.[0-9a-f]{16}", re.DOTALL)

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


class FileWriteError(Exception):
    """A dest could not be brought up to date; unless ``step`` says otherwise its old content is intact."""

    def __init__(self, path: str, reason: str, step: str = "writing", code: int | None = None) -> None:
        super().__init__(path, reason, step, code)
        self.path = path
        self.reason = reason
        self.step = step
        self.errno = code

    def __str__(self) -> str:
        return f"cannot update {self.path!r} while {self.step}: {self.reason}"


class Outcome(enum.Enum):
    """What a sync did, so callers can tell readers apart: only WRITTEN makes them reparse."""

    UNCHANGED = "unchanged"
    METADATA_FIXED = "metadata_fixed"
    WRITTEN = "written"


SyncResult = Union[Outcome, FileWriteError]


# --------------------------------------------------------------------------------------------- public API


def sync_file(spec: FileSpec, data: bytes, previous: bytes | None = None) -> Outcome:
    """Make one dest hold ``data`` with ``spec``'s metadata; raise FileWriteError if that is impossible.

    ``previous``: what the caller believes the dest holds (see :func:`sync_files`).
    """
    (result,) = sync_files([(spec, data)], None if previous is None else {spec.path: previous})
    if isinstance(result, FileWriteError):
        raise result
    return result


def sync_files(
    items: Sequence[tuple[FileSpec, bytes]], previous: Mapping[str, bytes] | None = None
) -> list[SyncResult]:
    """Sync many dests at once, one result per item in order; a failing item does not hold back the others.

    On return every WRITTEN or METADATA_FIXED item is on disk. This is plain blocking syscalls: a gevent
    caller syncing a large batch while it must stay responsive should hand it to a thread pool.
    Raises ValueError if a path appears twice: which content should win would be a guess.

    ``previous`` maps dest paths to the bytes the caller believes they hold (say, what it last wrote there).
    A dest whose ``previous`` differs from its new data is replaced without being read first (the read-back
    would only confirm that it differs); one whose ``previous`` equals the new data, or that has none, is
    compared as usual, since a hint cannot prove the file was not edited since. A wrong hint costs at most
    one needless replacement.
    """
    known = previous or {}
    if len(items) == 1:  # one node's change: the same steps, without a batch's bookkeeping
        spec, data = items[0]
        return [_sync_one(spec, data, known.get(spec.path))]
    jobs = [_Job(spec, data, _differs(known.get(spec.path), data)) for spec, data in items]
    _reject_duplicate_paths(jobs)
    for job in jobs:
        if not job.replaces:
            _inspect(job)
    durability = _Durability(sum(1 for job in jobs if job.outcome is not Outcome.UNCHANGED))
    directories = _Directories()
    try:
        for job in _active(jobs, lambda job: job.outcome is None):
            _attempt(job, _write_temp, job, durability, directories)
        _make_durable(jobs, durability)
        for job in _active(jobs, lambda job: job.temp is not None):
            _attempt(job, _publish, job)
    finally:
        durability.close()
        for job in jobs:
            _discard_temp(job)
    _sync_directories(jobs, directories.created_parents)
    return [job.result() for job in jobs]


def _sync_one(spec: FileSpec, data: bytes, previous: bytes | None) -> SyncResult:
    """``sync_files`` for one dest: inspect, temp (fsynced), rename, directory fsync if a name appeared."""
    job = _Job(spec, data, _differs(previous, data))
    if not job.replaces:
        _inspect(job)
    directories = _Directories()
    try:
        if job.error is None and job.outcome is None:
            _attempt(job, _write_temp, job, _PER_FILE, directories)
        elif job.outcome is Outcome.METADATA_FIXED and job.error is None:
            job.step = "flushing to disk"
            _attempt(job, _fsync_file, spec.path)
        if job.temp is not None and job.error is None:
            _attempt(job, _publish, job)
    finally:
        _discard_temp(job)
    _sync_directories([job], directories.created_parents)
    return job.result()


def matches(spec: FileSpec, data: bytes) -> bool:
    """True if the dest is a regular file (not a symlink) holding exactly ``data`` with ``spec``'s metadata."""
    try:
        fd = os.open(spec.path, _READ_FLAGS)
    except OSError:
        return False
    try:
        status = os.fstat(fd)
        return _metadata_ok(status, spec) and _holds(fd, status, data)
    except OSError:
        return False
    finally:
        _close(fd)


def remove_file(path: str) -> bool:
    """Remove a dest (a symlink itself, never its target) durably; False if there was nothing to remove."""
    try:
        os.unlink(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise _error(path, "removing the file", exc) from exc
    try:
        _fsync_directory(os.path.dirname(path))
    except OSError as exc:
        raise _error(path, "making the removal durable (the file is already gone)", exc) from exc
    return True


def touch(path: str) -> bool:
    """Heartbeat: bump the dest's times to now; False if it is missing or is not a regular file.

    A symlink at the dest is reported as missing (so the caller rewrites it) and is not followed.
    """
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        os.utime(path, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise _error(path, "updating its modification time", exc) from exc
    return True


def cleanup_stale_temp_files(paths: Iterable[str]) -> list[str]:
    """Remove temps of these dests that no running writer will ever rename; return the removed paths.

    The rule: a temp is stale when the pid in its name is not a running process, or is our own pid and no
    write of this process has it in flight. The second case is a previous incarnation that had our pid,
    which is routine in containers where the daemon is pid 1 on every start. A temp whose pid is another
    live process is left alone: two instances overlap during a deploy and each must be able to finish its
    own rename. (If that pid now belongs to an unrelated process, the temp stays until that process exits;
    a small leak is better than destroying a live writer's file.) Failures are logged, not raised: cleanup
    is housekeeping and must not stop the daemon from starting.
    """
    bases_by_directory: dict[str, set[str]] = {}
    for path in paths:
        directory, base = os.path.split(path)
        bases_by_directory.setdefault(directory, set()).add(_temp_base(base))
    removed: list[str] = []
    for directory, bases in bases_by_directory.items():
        removed.extend(_remove_stale_temps(directory, bases))
    return removed


def temp_prefix(path: str) -> str:
    """Every temp file for dest ``path`` starts with this (its pid and a random part follow)."""
    directory, base = os.path.split(path)
    return os.path.join(directory, "." + _temp_base(base) + TEMP_MARKER)


def is_temp_name(name: str) -> bool:
    """True if ``name`` (a basename or a path) looks like one of our temp files, e.g. for watchers to skip."""
    return _parse_temp_name(os.path.basename(name)) is not None


def temp_pid(name: str) -> int | None:
    """The pid of the process that created temp file ``name``, or None if it is not one of ours."""
    parsed = _parse_temp_name(os.path.basename(name))
    return None if parsed is None else parsed[1]


# ------------------------------------------------------------------------------------------ batch phases


class _Job:
    """One item of a batch as it moves through the phases; once ``error`` is set it is left alone."""

    __slots__ = ("data", "device", "directory", "error", "outcome", "replaces", "spec", "step", "temp")

    def __init__(self, spec: FileSpec, data: bytes, known_different: bool = False) -> None:
        self.spec = spec
        self.data = data
        # Something already sits at the dest, so a rename replaces a name rather than creating one. Assumed
        # when the caller knows the dest holds other bytes; otherwise found out by _inspect.
        self.replaces = known_different
        self.directory = os.path.dirname(spec.path)
        self.device: int | None = None
        self.temp: str | None = None
        self.outcome: Outcome | None = None
        self.error: FileWriteError | None = None
        self.step = "reading the current file"

    def fail(self, exc: OSError) -> None:
        self.error = _error(self.spec.path, self.step, exc)
        self.error.__cause__ = exc

    def result(self) -> SyncResult:
        if self.error is not None:
            return self.error
        assert self.outcome is not None, "every job ends with an outcome or an error"
        return self.outcome


def _active(jobs: list[_Job], wanted: Callable[[_Job], bool]) -> list[_Job]:
    return [job for job in jobs if job.error is None and wanted(job)]


def _attempt(job: _Job, action: Callable[..., None], *args: object) -> None:
    """Run one phase for one job; on failure drop its temp at once (on a full disk that frees space for
    the other items) and let the batch carry on."""
    try:
        action(*args)
    except OSError as exc:
        job.fail(exc)
        _discard_temp(job)


def _reject_duplicate_paths(jobs: list[_Job]) -> None:
    seen: set[str] = set()
    for job in jobs:
        if job.spec.path in seen:
            raise ValueError(f"{job.spec.path!r} appears twice in one batch; which content wins is ambiguous")
        seen.add(job.spec.path)


def _inspect(job: _Job) -> None:
    """Leave ``job.outcome`` unset if the dest needs writing; otherwise fix its metadata in place.

    Equal bytes are never rewritten: a rename would make every reader reparse for nothing.
    """
    try:
        fd = os.open(job.spec.path, _READ_FLAGS)
    except OSError as exc:
        # absent, a symlink (ELOOP), unreadable...: all of them mean "write it"
        job.replaces = exc.errno not in (errno.ENOENT, errno.ENOTDIR)
        return
    job.replaces = True
    try:
        status = _status_if_holding(fd, job.data)
        if status is not None:
            job.device = status.st_dev
            job.step = "fixing mode and ownership in place"
            fixed = _fix_metadata(fd, status, job.spec)
            job.outcome = Outcome.METADATA_FIXED if fixed else Outcome.UNCHANGED
    except OSError as exc:
        job.fail(exc)
    finally:
        _close(fd)


def _write_temp(job: _Job, durability: _Durability, directories: _Directories) -> None:
    spec = job.spec
    job.step = "creating the parent directory"
    job.device = directories.ensure(job.directory)
    job.step = "creating the temp file"
    job.temp, fd = _create_temp(spec.path, spec.mode)
    try:
        durability.watch(job.device, job.directory)
        job.step = "setting ownership and mode on the temp file"
        _set_metadata(fd, spec)
        job.step = "writing the temp file"
        _write_all(fd, job.data)
        if durability.per_file:
            job.step = "flushing the temp file to disk"
            os.fsync(fd)
    finally:
        _close(fd)


def _make_durable(jobs: list[_Job], durability: _Durability) -> None:
    """Get new temps and in-place metadata fixes onto the disk before any rename publishes them."""
    pending = _active(jobs, lambda job: job.temp is not None or job.outcome is Outcome.METADATA_FIXED)
    for job in pending:
        job.step = "flushing to disk"
    if durability.per_file:
        targets = [job for job in pending if job.temp is None]  # temps were fsynced as they were written
    else:
        for job in pending:
            _attempt(job, durability.watch, _device(job), job.directory)
        failed = durability.sync_filesystems()
        targets = _active(pending, lambda job: job.device in failed)
    for job in targets:
        _attempt(job, _fsync_file, job.temp or job.spec.path)


def _publish(job: _Job) -> None:
    assert job.temp is not None
    if job.replaces and not _name_exists(job.spec.path):
        job.replaces = False  # removed behind our back (or a wrong ``previous``): fsync the directory after
    job.step = "renaming the temp file over the destination"
    os.rename(job.temp, job.spec.path)
    _forget_in_flight(job.temp)
    job.temp = None
    job.outcome = Outcome.WRITTEN


def _sync_directories(jobs: list[_Job], created_parents: set[str]) -> None:
    """Make new names (dests created, directories we created) survive a crash; one fsync per directory.

    Renames over an existing dest are left to the filesystem's own commit (see "Durability" above).
    A failure here is reported although the new content is already in place: it may not survive a crash.
    """
    written = _active(jobs, lambda job: job.outcome is Outcome.WRITTEN and not job.replaces)
    directories = {job.directory for job in written} | created_parents
    for directory in sorted(directories):
        try:
            _fsync_directory(directory)
        except OSError as exc:
            for job in written:
                if job.error is None and _inside(job.directory, directory):
                    job.step = "making the rename durable (the new content is already in place)"
                    job.fail(exc)


def _discard_temp(job: _Job) -> None:
    """Remove a temp that will not be renamed; a leftover is logged and cleaned by a later startup."""
    if job.temp is None:
        return
    try:
        os.unlink(job.temp)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove temp file %r: %s", job.temp, exc.strerror or exc)
    _forget_in_flight(job.temp)
    job.temp = None


class _Directories:
    """Per batch: each dest directory is checked (and created) once however many dests it holds."""

    def __init__(self) -> None:
        self._devices: dict[str, int] = {}
        self.created_parents: set[str] = set()

    def ensure(self, directory: str) -> int:
        device = self._devices.get(directory)
        if device is None:
            device = self._devices[directory] = self._stat_or_create(directory).st_dev
        return device

    def _stat_or_create(self, directory: str) -> os.stat_result:
        try:
            status = os.stat(directory)
        except FileNotFoundError:
            _make_directories(directory, self.created_parents)
            status = os.stat(directory)
        if not stat.S_ISDIR(status.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), directory)
        return status


class _Durability:
    """How a batch's bytes reach the disk before anything is renamed into place.

    Small batches fsync each temp. Large ones write everything unsynced, then call syncfs(2) once per
    filesystem: about one journal commit instead of thousands. The fd used for syncfs is opened before any
    of our data is written to that filesystem, because Linux reports a writeback error to syncfs only if it
    happened after the fd was opened. A failed syncfs falls back to fsyncing each file on that filesystem,
    which pins the error on the files it concerns.
    """

    def __init__(self, dirty: int) -> None:
        self._syncfs = _load_syncfs() if dirty > SYNCFS_THRESHOLD else None
        self._fds: dict[int, int] = {}

    @property
    def per_file(self) -> bool:
        return self._syncfs is None

    def watch(self, device: int, directory: str) -> None:
        if self._syncfs is not None and device not in self._fds:
            self._fds[device] = os.open(directory, _DIR_FLAGS)

    def sync_filesystems(self) -> set[int]:
        """Devices whose syncfs failed."""
        failed: set[int] = set()
        syncfs = self._syncfs
        for device, fd in self._fds.items():
            assert syncfs is not None, "fds are only kept when syncfs is in use"
            try:
                syncfs(fd)
            except OSError as exc:
                log.warning("syncfs failed (%s); falling back to one fsync per file", exc.strerror or exc)
                failed.add(device)
        return failed

    def close(self) -> None:
        for fd in self._fds.values():
            _close(fd)
        self._fds.clear()


_PER_FILE = _Durability(1)  # no syncfs, nothing to close: a few files fsync each temp as it is written


# -------------------------------------------------------------------------------------- single-file steps


def _create_temp(path: str, mode: int) -> tuple[str, int]:
    """A fresh temp, registered as in flight before it exists so a concurrent cleanup never takes it.

    Created with owner-only bits at most: the final mode, which may let others read, comes after the data
    owner is set, and until then nobody else may open it.
    """
    # Unique, not secret: O_EXCL|O_NOFOLLOW refuse any file planted under the name, so a guessed name can at
    # worst fail one attempt, retried under a new name. Hence the random module (seeded once, reseeded after a
    # fork) rather than a getrandom(2) per name, which costs about 9 us: 0.4 s of a 50,000-node start.
    temp = f"{temp_prefix(path)}{unique_suffix()}"
    _note_in_flight(temp)
    try:
        return temp, os.open(temp, _TEMP_FLAGS, mode & 0o600)
    except BaseException:
        _forget_in_flight(temp)
        raise


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


# ------------------------------------------------------------------------------------- stale temp cleanup

_in_flight: set[str] = set()
_in_flight_lock = threading.Lock()


def _note_in_flight(temp: str) -> None:
    with _in_flight_lock:
        _in_flight.add(temp)


def _forget_in_flight(temp: str) -> None:
    with _in_flight_lock:
        _in_flight.discard(temp)


def _remove_stale_temps(directory: str, bases: set[str]) -> list[str]:
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        log.warning("cannot look for stale temp files in %r: %s", directory, exc.strerror or exc)
        return []
    removed: list[str] = []
    for name in names:
        parsed = _parse_temp_name(name)
        path = os.path.join(directory, name)
        if parsed is None or parsed[0] not in bases or not _is_stale(path, parsed[1]):
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove stale temp file %r: %s", path, exc.strerror or exc)
            continue
        removed.append(path)
    if removed:
        try:
            _fsync_directory(directory)
        except OSError as exc:
            log.warning("cannot fsync %r after removing stale temp files: %s", directory, exc.strerror)
    return removed


def _is_stale(path: str, pid: int) -> bool:
    """May a temp (or snapshot) made by ``pid`` be removed now?

    A pid only means something in the boot and pid namespace it was taken in.  Two containers sharing a
    volume are both pid 1, and a pid from before a reboot may be alive again.  So the name carries a tag of
    its maker's boot and namespace: with our tag, the pid is checked (our own pid: unless still in flight
    here; another: unless alive); with another tag nothing can be checked, and only what is older than
    FOREIGN_GRACE (no write takes that long) is removed.
    """
    if _tag_of(path) != _namespace_tag():
        try:
            return time.time() - os.lstat(path).st_mtime > FOREIGN_GRACE
        except OSError:
            return False
    if pid == os.getpid():
        with _in_flight_lock:
            return path not in _in_flight
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return True
    except PermissionError:
        return False  # alive, run by another user
    return False


@functools.cache
def _namespace_tag() -> str:
    """8 hex digits naming this boot and pid namespace (the same for every process that shares both)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            boot = f.read().strip()
    except OSError:
        boot = b"unknown boot"
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return hashlib.sha256(boot + b"/" + str(namespace).encode()).hexdigest()[:_TAG_DIGITS]


def _tag_of(path: str) -> str:
    """The namespace tag in a temp or snapshot name (after ``<pid>.``); names without one never match ours."""
    return os.path.basename(path).rsplit(".", 1)[-1][:_TAG_DIGITS]


def _parse_temp_name(name: str) -> tuple[str, int] | None:
    match = _TEMP_NAME.fullmatch(name)
    return None if match is None else (match.group("base"), int(match.group("pid")))


def _temp_base(base: str) -> str:
    """The dest's basename as it appears in temp names: cut (in bytes) so a temp name fits NAME_MAX."""
    raw = os.fsencode(base)
    return base if len(raw) <= _BASE_BUDGET else os.fsdecode(raw[:_BASE_BUDGET])


# --------------------------------------------------------------------------------------------- plumbing


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


def _name_exists(path: str) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def _device(job: _Job) -> int:
    assert job.device is not None, "a job to flush knows its filesystem"
    return job.device


def _id_or_keep(value: int | None) -> int:
    return -1 if value is None else value


def _inside(directory: str, ancestor: str) -> bool:
    return directory == ancestor or directory.startswith(ancestor.rstrip("/") + "/")


def _error(path: str, step: str, exc: OSError) -> FileWriteError:
    return FileWriteError(path, exc.strerror or str(exc), step, exc.errno)


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
# The snapshot writer (tree dests) is built from these, so each safety and durability rule is written once.


def unique_suffix() -> str:
    """``<pid>.<namespace tag><random hex>``: what makes a temp or snapshot name unique, and tells cleanup who
    made it: the process, and the boot and pid namespace its pid means something in (see ``_is_stale``)."""
    return f"{os.getpid()}.{_namespace_tag()}{random.getrandbits(_RANDOM_BITS):0{_RANDOM_BITS // 4}x}"


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


def note_in_flight(path: str) -> None:
    """Register a temp (or snapshot directory) this process is building, so no cleanup here removes it."""
    _note_in_flight(path)


def forget_in_flight(path: str) -> None:
    _forget_in_flight(path)


def writer_is_gone(path: str, pid: int) -> bool:
    """The ``cleanup_stale_temp_files`` rule for ``path`` made by process ``pid``: may it be removed now?"""
    return _is_stale(path, pid)


def _differs(previous: bytes | None, data: bytes) -> bool:
    return previous is not None and previous != data
