"""Doing what a tree publish decided, under the durability and safety rules of ``livedata.files``.

Every change goes through a directory fd of dest opened with O_NOFOLLOW, so nothing is ever written outside
it, and a symlink planted anywhere in it is replaced, never followed. A new content is a new file
(O_EXCL|O_NOFOLLOW, fchown then fchmod before any data) renamed over the old entry; an unchanged child is the
same file hard-linked. Nothing is flushed before everything is in place: the new files' data (one fsync each,
or one syncfs for many), then the snapshot's entries, then dest, and only then is ``..data`` switched, with
one rename of a temporary symlink, so a power cut leaves the old snapshot or the new one, complete
(tests/test_power_cut.py cuts an ext4 at that rename). Failures become one ``TreeWriteError`` naming the step.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Iterable, Iterator

from livedata import files
from livedata.tree_errors import TreeWriteError, tree_error
from livedata.tree_layout import (
    CHANGES_LINK,
    DATA_LINK,
    DIR_FLAGS,
    READ_FLAGS,
    TreeSpec,
    link_target,
    new_snapshot_name,
)

log = logging.getLogger("livedata.snapshots")

# (inode, ctime) of a directory, as fstat saw it right after our last change to it.
Seen = tuple[int, int]


class TreeDir:
    """One publish's or cleanup's hold on dest: its fd, the step under way, the foreign paths it removed."""

    def __init__(self, spec: TreeSpec, dest_fd: int, cleaned: list[str]) -> None:
        self.spec = spec
        self.dest = spec.dest
        self.fd = dest_fd
        self.cleaned = cleaned
        self.step = "reading the current snapshot"
        # Every child's file gets the same metadata; create_file never opens the path (checking a FileSpec
        # per child would cost 20 us each at a start of 100,000 children).
        self._file_metadata = spec.child("child")

    def error(self, exc: OSError, step: str | None = None) -> TreeWriteError:
        return tree_error(self.dest, step or self.step, exc)

    def open(self, name: str, dir_fd: int | None = None) -> int:
        """A directory inside dest (or inside ``dir_fd``), never through a symlink."""
        return os.open(name, DIR_FLAGS, dir_fd=self.fd if dir_fd is None else dir_fd)

    # ------------------------------------------------------------------------------- building a snapshot

    @contextlib.contextmanager
    def new_snapshot(self, staged: str | None = None) -> Iterator[str]:
        """A fresh snapshot name (or ``staged``, one already in flight), in flight (no cleanup takes it) while
        the block builds and switches to it.

        Every way of building one (from scratch, from the spare, from a staged directory) ends the same way:
        an OSError in the block discards whatever was built under the name and becomes one TreeWriteError
        naming ``self.step``.
        """
        name = staged or new_snapshot_name()
        path = os.path.join(self.dest, name)
        files.note_in_flight(path)
        try:
            yield name
        except OSError as exc:
            self.discard(name)
            raise self.error(exc) from exc
        finally:
            files.forget_in_flight(path)

    def create(self, fd: int, name: str, data: bytes) -> int:
        """A new file ``name`` in ``fd`` (no entry there yet); returns its inode."""
        return files.create_file(fd, name, self._file_metadata, data, False).st_ino

    def write_over(self, fd: int, name: str, data: bytes, exists: bool) -> int:
        """A new file for ``name`` in ``fd`` (livedata.files rules); an existing entry is replaced by rename."""
        if not exists:
            return self.create(fd, name, data)
        temp = self.temp_name(name, fd)
        try:
            inode = self.create(fd, temp, data)
            rename_over(fd, temp, name)
        except BaseException:
            unlink_quietly(fd, temp)
            raise
        return inode

    def link_over(self, fd: int, source_fd: int, name: str, exists: bool) -> None:
        """Hard-link ``source_fd``'s file ``name`` into ``fd``, replacing what is there with one rename."""
        if not exists:
            os.link(name, name, src_dir_fd=source_fd, dst_dir_fd=fd, follow_symlinks=False)
            return
        temp = self.temp_name(name, fd)
        try:
            os.link(name, temp, src_dir_fd=source_fd, dst_dir_fd=fd, follow_symlinks=False)
            rename_over(fd, temp, name)
        except BaseException:
            unlink_quietly(fd, temp)
            raise

    def flush(self, snapshot_fd: int, written: Iterable[str]) -> None:
        """New files' data, then the snapshot's entries, then dest: one syncfs for many files, else one fsync
        each. On a journalling filesystem the first flush commits it all and the directory fsyncs are cheap."""
        self.step = "flushing the new snapshot to disk"
        written = list(written)
        if len(written) <= files.SYNCFS_THRESHOLD or not _syncfs_or_false(snapshot_fd):
            for child in written:
                fd = os.open(child, READ_FLAGS, dir_fd=snapshot_fd)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync(snapshot_fd)
        fsync(self.fd)

    def switch(self, snapshot: str, changes: str) -> None:
        """Say what changed (``..changes``), then one rename of a fresh symlink over ``..data``: readers see
        the old snapshot or the new one. ``..changes`` is a hint readers check against ``..data``."""
        self.step = "switching ..data to the new snapshot"
        self.replace_symlink(CHANGES_LINK, changes, "a directory planted where ..changes belongs")
        self.replace_symlink(DATA_LINK, snapshot, "a directory planted where ..data belongs")

    def make_switch_durable(self) -> None:
        try:
            fsync(self.fd)
        except OSError as exc:
            raise self.error(exc, "making the switch durable (the new snapshot is already in place)") from exc

    def discard(self, snapshot: str) -> None:
        try:
            remove_tree_at(self.fd, snapshot)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove unfinished snapshot %r: %s", os.path.join(self.dest, snapshot), exc)

    # --------------------------------------------------------------------------------------- dest's names

    def replace_symlink(self, name: str, target: str, planted: str) -> None:
        """Make ``name`` in dest the symlink ``target`` with one rename (a directory in the way is removed)."""
        temp = self.temp_name(name)
        os.symlink(target, temp, dir_fd=self.fd)
        try:
            try:
                os.rename(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            except IsADirectoryError:
                self.remove(name, planted, quiet=False)
                os.rename(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            unlink_quietly(self.fd, temp)
            raise
        finally:
            files.forget_in_flight(os.path.join(self.dest, temp))

    def make_link(self, child: str, exists: bool) -> int:
        """The visible name ``dest/<child>`` -> ``..data/<child>``; returns its inode."""
        if not exists:
            try:
                os.symlink(link_target(child), child, dir_fd=self.fd)
                return os.stat(child, dir_fd=self.fd, follow_symlinks=False).st_ino
            except FileExistsError:
                pass
        # Something else holds the name (a planted file or symlink): replace it with one rename.
        self.replace_symlink(child, link_target(child), "a directory planted where a child's name belongs")
        self.cleaned.append(os.path.join(self.dest, child))
        return os.stat(child, dir_fd=self.fd, follow_symlinks=False).st_ino

    def remove(self, name: str, reason: str, report: bool = True, quiet: bool = True) -> None:
        path = os.path.join(self.dest, name)
        try:
            remove_tree_at(self.fd, name)
        except FileNotFoundError:
            return
        except OSError as exc:
            if not quiet:
                raise
            log.warning("cannot remove %r (%s): %s", path, reason, exc.strerror or exc)
            return
        if report:
            log.info("removed %r: %s", path, reason)
            self.cleaned.append(path)

    def readlink(self, name: str) -> str | None:
        try:
            return os.readlink(name, dir_fd=self.fd)
        except OSError:
            return None

    def temp_name(self, name: str, snapshot_fd: int | None = None) -> str:
        """A livedata.files temp name for ``name``; in dest it is noted in flight (inside a snapshot being
        built it needs not be: the whole snapshot is)."""
        temp = os.path.basename(files.temp_prefix(os.path.join(self.dest, name))) + files.unique_suffix()
        if snapshot_fd is None:
            files.note_in_flight(os.path.join(self.dest, temp))
        return temp


# ----------------------------------------------------------------------------------------------- plumbing

_locks: dict[str, threading.Lock] = {}
_locks_lock = threading.Lock()


def lock_for(dest: str) -> threading.Lock:
    """Publishes and cleanups of one dest in this process take turns."""
    with _locks_lock:
        return _locks.setdefault(dest, threading.Lock())


def flock(dest_fd: int, dest: str) -> None:
    """Wait for other processes publishing or cleaning this dest (an overlapping instance during a deploy):
    with one writer at a time, a spare or an unfinished snapshot is only ever touched by its owner."""
    try:
        fcntl.flock(dest_fd, fcntl.LOCK_EX)
    except OSError as exc:
        raise tree_error(dest, "locking the tree directory", exc) from exc


def fix_directory(fd: int, spec: TreeSpec) -> None:
    """Owner then mode, as for files; directories are searchable wherever the files are readable."""
    status = os.fstat(fd)
    uid = -1 if spec.owner is None or spec.owner == status.st_uid else spec.owner
    gid = -1 if spec.group is None or spec.group == status.st_gid else spec.group
    if uid != -1 or gid != -1:
        os.fchown(fd, uid, gid)
    if uid != -1 or gid != -1 or stat.S_IMODE(status.st_mode) != spec.directory_mode:
        os.fchmod(fd, spec.directory_mode)


def seen(fd: int) -> Seen:
    """(inode, ctime) of a directory now: any entry added, removed or renamed in it later moves the ctime."""
    status = os.fstat(fd)
    return status.st_ino, status.st_ctime_ns


def fine_timestamps(dir_fd: int, dest: str) -> bool:
    """Does this file system give a change made after its ctime was looked at a later ctime, even within the
    same clock tick (Linux 6.13's multigrain timestamps)? Then a directory whose ctime is what ``seen``
    returned after our last change holds exactly what we left. Probed with four changes microseconds apart,
    each looked at: a coarse clock gives them one ctime (or two, across a tick), never four."""
    temp = os.path.basename(files.temp_prefix(os.path.join(dest, "probe"))) + files.unique_suffix()
    stamps = [os.fstat(dir_fd).st_ctime_ns]
    try:
        for _ in range(2):
            os.symlink("probe", temp, dir_fd=dir_fd)
            stamps.append(os.fstat(dir_fd).st_ctime_ns)
            os.unlink(temp, dir_fd=dir_fd)
            stamps.append(os.fstat(dir_fd).st_ctime_ns)
    except OSError:
        unlink_quietly(dir_fd, temp)
        return False
    return all(later > earlier for earlier, later in zip(stamps, stamps[1:]))


def fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # filesystems that cannot fsync a directory
            raise


def _syncfs_or_false(fd: int) -> bool:
    try:
        return files.syncfs(fd)
    except OSError as exc:
        log.warning("syncfs failed (%s); falling back to one fsync per file", exc.strerror or exc)
        return False


def remove_tree_at(parent_fd: int, name: str) -> None:
    """Remove ``name`` in ``parent_fd`` and, if it is a directory, all it holds, never following a symlink."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        os.unlink(name, dir_fd=parent_fd)
        return
    try:
        for entry in os.scandir(fd):
            if entry.is_dir(follow_symlinks=False):
                remove_tree_at(fd, entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def remove_entry(dir_fd: int, name: str) -> None:
    """Unlink ``name``; a directory (something planted) is removed with all it holds."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except IsADirectoryError:
        remove_tree_at(dir_fd, name)


def rename_over(dir_fd: int, temp: str, name: str) -> None:
    """Replace ``name`` by ``temp`` in one rename; a directory in the way (planted) is removed first."""
    try:
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except IsADirectoryError:
        remove_tree_at(dir_fd, name)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def unlink_quietly(dir_fd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)
