"""The spare: the snapshot a switch replaced, kept so that the next publish reuses its directory.

The publisher remembers how the spare differs from the current snapshot (``Spare.differs``: the children whose
entry is not the current file, with the inode and bytes the spare holds instead, if any). The next publish
renames the spare to a fresh snapshot name (names are never reused) and brings it up to date: only the
children in ``differs`` or in the change cost syscalls. A child whose bytes are those of the current snapshot
gets the current file hard-linked in (a temporary name renamed over the old entry: same inode in both
directories, no rewrite); a new content is a new file; a child gone is unlinked. That is the changes of the
last two publishes, whatever the tree's size.

That the spare holds what we left there is known from its directory's ctime: any entry added, removed or
renamed in it moves the ctime, which nobody can set back. Where the file system stamps a change made after a
look at the ctime with a later one (``tree_apply.fine_timestamps``), the ctime seen right after our last
change to it is enough; elsewhere a change in the same clock tick could go unnoticed, so the spare is listed
after the switch that made it the spare (off the readers' path), and that listing counts only if it started a
tick after the ctime it saw. When it cannot be trusted, the spare is listed before its reuse and everything
in it that is not the current file of that name is replaced.
"""
from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from livedata.tree_apply import TreeDir, fix_directory, remove_entry, seen
from livedata.tree_layout import new_snapshot_name, timestamp_tick
from livedata.tree_plan import Changes, Differs, Published, Spare

log = logging.getLogger("livedata.snapshots")

@dataclass
class Update:
    """What bringing the spare up to date did: new inodes (None: removed) relative to the published snapshot,
    the files written (to flush), and every child looked at (how the directory left behind may differ)."""

    inodes: dict[str, int | None] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    replaced: set[str] = field(default_factory=set)  # current files replaced behind our back: bytes unknown


def unchanged(tree: TreeDir, spare: Spare) -> bool:
    """Is the spare's directory as we left it? Asked before its rename (which moves the ctime); the caller
    checks the inode again through the opened directory."""
    if spare.seen is None or spare.differs is None:
        return False
    status = os.stat(spare.name, dir_fd=tree.fd, follow_symlinks=False)
    return stat.S_ISDIR(status.st_mode) and (status.st_ino, status.st_ctime_ns) == spare.seen


def bring_up_to_date(
    tree: TreeDir, fd: int, current_fd: int, spare: Spare, current: Published, changes: Changes,
    wanted: Mapping[str, bytes | None], trusted: bool,
) -> Update:
    """Make the renamed spare (``fd``) hold exactly the current snapshot with ``changes`` applied (the bytes of
    written children in ``wanted``). ``trusted``: its directory is as we left it, so ``spare.differs`` says
    all; else it is listed (getdents: names and inode numbers, no stat) and compared with the current one."""
    update = Update()
    if trusted and spare.differs is not None:
        entries = _known_entries(spare.differs, current, changes)
    else:
        entries = _listed_entries(tree, fd, current, changes)
    inodes = current.inodes
    tree.step = "bringing the spare snapshot up to date"
    for name, (inode, held) in entries.items():
        update.touched.add(name)
        exists = inode is not None
        if name in changes.removed or (name not in changes.written and name not in inodes):
            if exists:
                remove_entry(fd, name)
            if name in changes.removed:
                update.inodes[name] = None
        elif name in changes.written:
            data = wanted[name]
            assert data is not None, "a written child has bytes"
            if exists and held is not None and (held is data or held == data) and _is_file(fd, name):
                update.inodes[name] = inode  # the change undoes the one before: the spare's file is already right
                continue
            update.inodes[name] = tree.write_over(fd, name, data, exists)
            update.written.append(name)
        else:  # unchanged: the current snapshot's file, hard-linked
            tree.link_over(fd, current_fd, name, exists)
            if not _is_our_file(fd, name, inodes[name]):  # replaced in the current snapshot behind our back
                update.inodes[name] = tree.write_over(fd, name, current.data[name], True)
                update.written.append(name)
                update.replaced.add(name)
    return update


def _known_entries(differs: Differs, current: Published, changes: Changes) -> Differs:
    """The entries to look at, from bookkeeping alone: those that differ, and those that change now."""
    entries = dict(differs)
    for name in changes.written | changes.removed:
        if name not in entries:
            entries[name] = (current.inodes.get(name), current.data.get(name))
    return entries


def _listed_entries(tree: TreeDir, fd: int, current: Published, changes: Changes) -> Differs:
    """The entries to look at, from a listing: every entry that is not the current file of its name (foreign,
    or left by a failed run: replaced, bytes unknown), every current file missing, and the changes."""
    tree.step = "listing the spare snapshot"
    present = {entry.name: entry.inode() for entry in os.scandir(fd)}
    inodes = current.inodes
    entries: Differs = {name: (inode, None) for name, inode in present.items() - inodes.items()}
    for name in inodes.keys() - present.keys():
        entries[name] = (None, None)
    for name in changes.written | changes.removed:
        if name not in entries:
            entries[name] = (present.get(name), current.data.get(name))
    return entries


def left_behind(current: Published, update: Update) -> Differs:
    """How the directory just replaced (the current snapshot before the switch, soon the spare) differs from the
    new current snapshot: call before ``current`` takes the update."""
    differs: Differs = {}
    for name in update.touched | update.inodes.keys():
        old = current.inodes.get(name)
        new = update.inodes.get(name, old)
        if old != new:
            differs[name] = (old, None if name in update.replaced else current.data.get(name))
    return differs


def make_spare(tree: TreeDir, current: Published, fine: bool) -> Spare | None:
    """A first snapshot has no predecessor to keep: make the spare now, after the switch (readers do not
    wait for it), as hard links to the current files, so that the next publish already reuses it."""
    name = new_snapshot_name()
    try:
        os.mkdir(name, 0o700, dir_fd=tree.fd)
        fd = tree.open(name)
        try:
            fix_directory(fd, tree.spec)
            current_fd = tree.open(current.name)
            try:
                for child in current.inodes:
                    os.link(child, child, src_dir_fd=current_fd, dst_dir_fd=fd, follow_symlinks=False)
            finally:
                os.close(current_fd)
            spare_seen = seen(fd) if fine else None
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("cannot make a spare snapshot in %r (the next publish builds one): %s",
                    tree.dest, exc.strerror or exc)  # fmt: skip
        tree.discard(name)
        return None
    spare = Spare(name, current.metadata, {}, spare_seen)
    if not fine:
        verify(tree, spare, current)
    return spare


def verify(tree: TreeDir, spare: Spare, current: Published) -> None:
    """Where timestamps are coarse: list the new spare now, after the switch (readers do not wait for it), so
    that the next publish only compares its directory's ctime. The listing counts only if it starts at least
    a tick after that ctime: a later change then gets a later stamp. Entries we did not leave there are
    removed; failures are logged (the next publish lists the spare itself)."""
    spare.seen = None
    differs = spare.differs
    try:
        fd = tree.open(spare.name)
        try:
            now = time.time_ns()
            status = os.fstat(fd)
            present = {entry.name: entry.inode() for entry in os.scandir(fd)}
            expected = dict(current.inodes)
            for name, (inode, _held) in (differs or {}).items():
                if inode is None:
                    expected.pop(name, None)
                else:
                    expected[name] = inode
            if differs is None or present != expected:
                for name, inode in present.items():
                    if expected.get(name) != inode:
                        if name not in expected:
                            log.info("removing %r from the spare snapshot of %r: livedata did not write it",
                                     name, tree.dest)  # fmt: skip
                        remove_entry(fd, name)
                spare.differs = None  # entries of ours went missing: compare everything at reuse
            elif now - status.st_ctime_ns >= timestamp_tick(status.st_ctime_ns):
                spare.seen = (status.st_ino, status.st_ctime_ns)
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("cannot check the spare snapshot of %r: %s", tree.dest, exc.strerror or exc)


def _is_file(fd: int, name: str) -> bool:
    return stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)


def _is_our_file(fd: int, name: str, inode: int) -> bool:
    """Is ``name`` the regular file we made with that inode? (A link is made by name: this checks it.)"""
    status = os.stat(name, dir_fd=fd, follow_symlinks=False)
    return status.st_ino == inode and stat.S_ISREG(status.st_mode)
