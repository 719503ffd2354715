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

The steps themselves are in :mod:`livedata.fileops` and temp naming and cleanup in
:mod:`livedata.temps`; this module decides which steps a batch of dests needs, in which order.

A batch (``sync_files``) first skips dests that already hold the right bytes, then writes every temp, makes
them durable with a single ``syncfs(2)`` per filesystem instead of thousands of fsyncs, renames them all and
fsyncs each directory that gained a name once. This is what makes a cold start with tens of thousands of
dests fast.

Durability (the contract docs/watcher.md's "Durability" section states for operators):

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
import logging
import os
import stat
from posix import close as _close
from typing import Callable, Mapping, Sequence, Union

from livedata.fileops import (
    _DIR_FLAGS,
    _READ_FLAGS,
    _TEMP_FLAGS,
    DIRECTORY_MODE,
    MAX_ID,
    FileSpec,
    _fix_metadata,
    _fsync_directory,
    _fsync_file,
    _holds,
    _load_syncfs,
    _make_directories,
    _metadata_ok,
    _set_metadata,
    _status_if_holding,
    _write_all,
    create_file,
    fix_metadata,
    fsync_directory,
    holds,
    make_directories,
    set_new_directory_metadata,
    syncfs,
)
from livedata.temps import (
    FOREIGN_GRACE,
    TEMP_MARKER,
    _forget_in_flight,
    _namespace_tag,
    _note_in_flight,
    cleanup_stale_temp_files,
    forget_in_flight,
    is_temp_name,
    note_in_flight,
    temp_pid,
    temp_prefix,
    unique_suffix,
    writer_is_gone,
)

__all__ = [
    "DIRECTORY_MODE",
    "FOREIGN_GRACE",
    "MAX_ID",
    "SYNCFS_THRESHOLD",
    "TEMP_MARKER",
    "FileSpec",
    "FileWriteError",
    "Outcome",
    "SyncResult",
    "_namespace_tag",
    "cleanup_stale_temp_files",
    "create_file",
    "fix_metadata",
    "forget_in_flight",
    "fsync_directory",
    "holds",
    "is_temp_name",
    "make_directories",
    "matches",
    "note_in_flight",
    "remove_file",
    "set_new_directory_metadata",
    "sync_file",
    "sync_files",
    "syncfs",
    "temp_pid",
    "temp_prefix",
    "touch",
    "unique_suffix",
    "writer_is_gone",
]

log = logging.getLogger(__name__)

# Above this many files needing a flush, one syncfs(2) beats one fsync per file.
SYNCFS_THRESHOLD = 8


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


# --------------------------------------------------------------------------------------------- plumbing


def _name_exists(path: str) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def _device(job: _Job) -> int:
    assert job.device is not None, "a job to flush knows its filesystem"
    return job.device


def _inside(directory: str, ancestor: str) -> bool:
    return directory == ancestor or directory.startswith(ancestor.rstrip("/") + "/")


def _error(path: str, step: str, exc: OSError) -> FileWriteError:
    return FileWriteError(path, exc.strerror or str(exc), step, exc.errno)


def _differs(previous: bytes | None, data: bytes) -> bool:
    return previous is not None and previous != data
