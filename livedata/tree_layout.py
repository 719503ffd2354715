"""The on-disk shape of a ``directory`` tree dest: its names, and what a reader may rely on.

Layout of a tree at ``dest`` (the shape of Kubernetes' AtomicWriter, plus one spare)::

    dest/
      ..data -> ..2026_11_26_03_01_02.123456789.4242.0f3a9c1e5b7d2a64   (symlink, relative)
      ..changes -> ..2026_11_26_03_01_02.123456789.4242.0f3a9c1e5b7d2a64/..2026_11_26_03_00_57.98...68/2/beta
      ..2026_11_26_03_01_02.123456789.4242.0f3a9c1e5b7d2a64/           (the current snapshot)
          alpha                                                           (regular files, one per child)
          beta
      ..2026_11_26_03_00_57.987654321.4242.5e1d0c7a9b3f2468/           (the spare: the snapshot before)
      alpha -> ..data/alpha                                               (one visible symlink per child)
      beta -> ..data/beta

``..changes`` says what a switch changed, so that a reader holding the snapshot before needs to look at the
changed children only: ``<snapshot>/<previous snapshot>/<children in snapshot>/<changed child>/...``. It is
replaced just before the ``..data`` switch it describes, so a reader trusts it only when its first field is the
snapshot ``..data`` names and its second the snapshot the reader loaded; anything else (a full build, too many
changes to fit a symlink, a missing ``..changes``) means: list the snapshot.

What a reader may rely on:

* ``dest/..data`` always resolves to one complete snapshot: the set of files and their bytes switch together.
  To read several children consistently, resolve ``..data`` once (``os.readlink``) and read them through
  ``dest/<that name>/``; list children there, never in ``dest`` (which also holds our own entries).
* A snapshot is never modified under the name ``..data`` gave it, and once replaced no name of it is ever
  current again; but its directory is reused, under a new name, by the next publish. A reader that resolved
  it before the switch may then find a file gone (ENOENT), the listing different, or a file holding a later
  publish's bytes: if ``..data`` no longer names the snapshot it read, retry. A file already open stays
  readable with the bytes it had. ``livedata.TreeWatcher`` does all of this.
* Files are never modified in place (only their mode or owner, when the configuration changes them): a new
  content is a new inode, replacing the old entry by rename. An unchanged child keeps its inode, size and
  mtime across snapshots; its ctime moves once, at the first switch after the one that changed it (the hard
  link into the reused directory), or at each switch of a full build (after a start), so a ``FileWatcher``
  on one child then re-reads and compares its bytes (on each call for about 100 ms, its racy window); it
  never reparses them.
* ``dest/<child>`` resolves exactly when the current snapshot holds that child: names of new children are
  created (dangling) just before the switch, names of removed children dropped just after it.
* Names starting with ``.`` are livedata's own; child names never start with ``.``.

Only names and read-only lookups live here (no syscall that changes anything): the writer is
``livedata.snapshots``; ``livedata.tree_watcher`` reads with these names.
"""
from __future__ import annotations

import errno
import os
import re
import stat
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from livedata import files
from livedata.files import FileSpec

DATA_LINK = "..data"
CHANGES_LINK = "..changes"
DEFAULT_NAME_MAX = 255
# A symlink's target holds up to PATH_MAX - 1 bytes; beyond this, ..changes says "list the snapshot".
CHANGES_MAX = 4000

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

_SNAPSHOT = re.compile(r"\.\.\d{4}(?:_\d\d){5}\.\d{9}\.(?P<pid>[1-9][0-9]{0,9})\.[0-9a-f]{16}")
# What a znode name may not hold (ZooKeeper's own rules), plus '/', which a single name never holds.
_UNSAFE_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f/\ud800-\uf8ff\ufff0-\uffff]")

Metadata = Tuple[int, Optional[int], Optional[int]]  # (typing: evaluated at import, Python 3.9)


@dataclass(frozen=True)
class TreeSpec:
    """Where a tree lives and the metadata of what it holds: ``mode`` is the files' mode; directories get
    the same read bits plus search (x) wherever a read bit is set, and are always owner-writable."""

    dest: str
    mode: int = 0o400
    owner: int | None = None
    group: int | None = None

    def __post_init__(self) -> None:
        try:
            FileSpec(self.dest, self.mode, self.owner, self.group)  # the same rules as a node's dest
        except ValueError as exc:
            raise ValueError(str(exc).replace("FileSpec", "TreeSpec", 1)) from None

    def child(self, name: str) -> FileSpec:
        """The metadata a child's file gets, under the name readers see it by."""
        return FileSpec(os.path.join(self.dest, name), self.mode, self.owner, self.group)

    @property
    def directory_mode(self) -> int:
        readable = self.mode & 0o444
        return 0o700 | readable | (readable >> 2)

    @property
    def metadata(self) -> Metadata:
        """What a snapshot's files and directory carry besides bytes; snapshots made under other metadata
        are checked file by file before they are trusted."""
        return (self.mode, self.owner, self.group)


def child_name_problem(name: object, name_max: int = DEFAULT_NAME_MAX) -> str | None:
    """Why ``name`` cannot be a child's file name, or None if it can."""
    if not isinstance(name, str):
        return f"a name must be text, not {type(name).__name__}"
    if not name:
        return "the name is empty"
    if name.startswith("."):
        return "a leading '.' is reserved for livedata's own entries (..data, snapshots, temporary files)"
    unsafe = _UNSAFE_CHARACTER.search(name)
    if unsafe is not None:
        return f"it contains {unsafe.group()!r}, which a file name or a znode name cannot hold"
    size = len(os.fsencode(name))
    if size > name_max:
        return f"it is {size} bytes long, more than the {name_max} this file system allows in a name"
    return None


def is_snapshot_name(name: str) -> bool:
    """True for a snapshot directory's name (what ``..data`` points to)."""
    return _SNAPSHOT.fullmatch(name) is not None


def snapshot_owner(name: str) -> int | None:
    """The pid of the process that named this snapshot, or None if ``name`` is not a snapshot's."""
    match = _SNAPSHOT.fullmatch(name)
    return int(match.group("pid")) if match is not None else None


def new_snapshot_name() -> str:
    """A fresh snapshot name: a UTC timestamp (sorts by age), the pid (liveness), random digits (unique)."""
    now = time.time_ns()
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime(now // 1_000_000_000)) + f".{now % 1_000_000_000:09d}"
    return f"..{stamp}.{files.unique_suffix()}"


def link_target(child: str) -> str:
    """What the visible name ``dest/<child>`` points to."""
    return f"{DATA_LINK}/{child}"


def changes_target(snapshot: str, previous: str | None, count: int, changed: list[str]) -> str:
    """``..changes`` for a switch to ``snapshot``: without ``previous`` (or too long), it only says "list it"."""
    if previous is not None:
        target = "/".join([snapshot, previous, str(count), *changed])
        if len(os.fsencode(target)) <= CHANGES_MAX:
            return target
    return f"{snapshot}//"


def parse_changes(target: str, snapshot: str, loaded: str) -> tuple[int, list[str]] | None:
    """(children in ``snapshot``, changed children) if ``..changes`` describes the switch from ``loaded`` to
    ``snapshot``; None when the reader must list the snapshot."""
    fields = target.split("/")
    if len(fields) < 3 or fields[0] != snapshot or fields[1] != loaded or not fields[2].isdigit():
        return None
    return int(fields[2]), fields[3:]


def current_snapshot(dest_fd: int) -> str | None:
    """The snapshot ``..data`` names, if it is one of ours and a real directory; None otherwise."""
    try:
        target = os.readlink(DATA_LINK, dir_fd=dest_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EINVAL):  # missing, or not a symlink
            return None
        raise
    if not is_snapshot_name(target):
        return None
    try:
        if not stat.S_ISDIR(os.stat(target, dir_fd=dest_fd, follow_symlinks=False).st_mode):
            return None
    except FileNotFoundError:
        return None
    return target


def timestamp_tick(ctime_ns: int) -> int:
    """How long a directory's ctime may stay the same across changes: the kernel's coarse clock ticks once per
    jiffy (10 ms at most; 20 ms for margin), file systems that store whole seconds round to 2 s (FAT)."""
    return 2_000_000_000 if ctime_ns % 1_000_000_000 == 0 else 20_000_000
