"""The one place that writes tree dests: a znode's children mirrored as a directory that switches atomically.

Layout of a ``directory`` tree at ``dest`` (the shape of Kubernetes' AtomicWriter, plus one spare)::

    dest/
      ..data -> ..2026_11_26_03_01_02.123456789.4242.0f3a9c1e5b7d2a64   (symlink, relative)
      ..2026_11_26_03_01_02.123456789.4242.0f3a9c1e5b7d2a64/           (the current snapshot)
          alpha                                                           (regular files, one per child)
          beta
      ..2026_11_26_03_00_57.987654321.4242.5e1d0c7a9b3f2468/           (the spare: the snapshot before)
      alpha -> ..data/alpha                                               (one visible symlink per child)
      beta -> ..data/beta

Double buffering. The snapshot a switch replaces is not deleted: it stays as the *spare*, and the publisher
remembers the bytes and inodes of both directories. The next publish renames the spare to a fresh snapshot
name (names are never reused) and brings it from its content to the wanted one. That it holds what we left
there was checked by a listing (names and inode numbers from getdents, no stat) right after the switch that
made it the spare, off the readers' path; before reusing it, one ``stat`` checks that its directory's ctime
has not moved since (any entry added, removed or renamed moves it; if it moved, or the listing came too soon
after the directory's last change to rule out a change in the same clock tick, it is listed again then).
Only the children that differ cost syscalls. A child whose bytes are those of the current snapshot gets the current file
hard-linked in (a temporary name renamed over the old entry: same inode in both directories, no rewrite);
a new content is a new file (the rules of ``livedata.files``: O_EXCL|O_NOFOLLOW, fchown then fchmod before
any data) renamed over the old entry; a child gone is unlinked; anything we did not leave there is removed.
That is the changes of the last two publishes, whatever the tree's size. Once the new files' data and the
directory's entries are on disk, ``..data`` is switched to it with one rename of a temporary symlink and dest
is fsynced; visible names of removed children are dropped, and the replaced snapshot becomes the spare.

A publisher that does not know both directories (the first publish after a start, after another instance
published, after a mode or owner change, or when its spare is gone) builds a fresh directory instead, with
a hard link per unchanged child, found by reading the current snapshot back unless it made it; the snapshot
it replaces becomes the spare. A first snapshot gets its spare (hard links) right after its switch.

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

The writer owns ``dest``: anything in it that livedata did not write (files, symlinks, directories) is
removed at the next snapshot (inside the current snapshot: the next publish switches to a snapshot without
it, then deletes it from the directory that became the spare), and a symlink planted anywhere in it is
replaced, never followed. All work inside ``dest`` goes through a directory fd opened with O_NOFOLLOW, so
nothing is ever written outside it.

Crash safety: a killed run leaves at most an unfinished snapshot directory (``..<stamp>.<pid>.<random>``,
maybe a spare it was reusing), its spare and temporary symlinks (``livedata.files`` temp names), never a
half-switched ``..data``: the current snapshot is never touched. ``cleanup`` (and every publish) removes those
whose writer is gone, with the same rule as ``cleanup_stale_temp_files``. Publishes and cleanups of one dest
hold an exclusive ``flock`` on it, so two overlapping instances (during a deploy) take turns: each notices
the other's switch and builds afresh, and neither touches the other's work in progress (a spare that
vanished, whoever removed it, is simply rebuilt).

Also here: the ``json`` format, where ``dest`` is one file holding ``{child: text}``, written by
``livedata.files`` like a node. Linux only; stdlib only (no kazoo or gevent).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from livedata import files
from livedata.files import FileSpec, FileWriteError

log = logging.getLogger(__name__)

__all__ = [
    "DATA_LINK",
    "ChildNameError",
    "TreeOutcome",
    "TreePublisher",
    "TreeRenderError",
    "TreeSpec",
    "TreeWriteError",
    "child_name_problem",
    "cleanup",
    "is_snapshot_name",
    "publish",
    "publish_json",
    "render_json",
    "touch",
]

DATA_LINK = "..data"
_SNAPSHOT = re.compile(r"\.\.\d{4}(?:_\d\d){5}\.\d{9}\.(?P<pid>[1-9][0-9]{0,9})\.[0-9a-f]{16}")
# What a znode name may not hold (ZooKeeper's own rules), plus '/', which a single name never holds.
_UNSAFE_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f/\ud800-\uf8ff\ufff0-\uffff]")
_DEFAULT_NAME_MAX = 255

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


# --------------------------------------------------------------------------------------------- public API


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


class TreeWriteError(FileWriteError):
    """A tree could not be brought up to date; unless ``step`` says otherwise the old snapshot is intact."""

    def __str__(self) -> str:
        return f"cannot update tree {self.path!r} while {self.step}: {self.reason}"


class ChildNameError(ValueError):
    """A child whose name cannot be a file name in the tree; it is skipped, the rest of the tree is written."""

    def __init__(self, dest: str, child: str, reason: str) -> None:
        super().__init__(dest, child, reason)
        self.dest = dest
        self.child = child
        self.reason = reason

    def __str__(self) -> str:
        return f"tree {self.dest!r}: skipping child {self.child!r}: {self.reason}"


class TreeRenderError(ValueError):
    """The children cannot be rendered as the ``json`` format (a child is not UTF-8 text)."""


@dataclass(frozen=True)
class TreeOutcome:
    """What a publish did. ``switched`` is what readers notice (run ``on_change`` hooks on it)."""

    snapshot: str  # the current snapshot directory's name inside dest
    switched: bool  # a new snapshot replaced the old one
    written: tuple[str, ...] = ()  # children added or changed: their files were written
    removed: tuple[str, ...] = ()  # children gone from the tree
    kept: int = 0  # unchanged children carried into the new snapshot (the same file, hard-linked), not rewritten
    skipped: tuple[ChildNameError, ...] = ()  # children not written: their names are unsafe
    cleaned: tuple[str, ...] = ()  # paths removed that were not part of the tree (foreign files, debris)
    metadata_fixed: bool = False  # a mode or owner was corrected in place


def publish(spec: TreeSpec, children: Mapping[str, bytes]) -> TreeOutcome:
    """Make ``spec.dest`` hold exactly ``children`` (name -> bytes) as one atomic snapshot.

    Stateless: unchanged children are recognised by reading the current files, and the replaced snapshot
    is deleted (no spare is kept for a next publish). A long-lived caller should keep a ``TreePublisher``
    instead, which remembers what it published, skips those reads and reuses the replaced snapshot.
    """
    publisher = TreePublisher(spec)
    publisher._keeps_spare = False
    return publisher.publish(children)


def cleanup(spec: TreeSpec) -> list[str]:
    """Remove what a killed run left in ``spec.dest`` and repair visible names; return the removed paths.

    Run it at start: unfinished snapshots and temporary symlinks of dead writers go, as do foreign
    entries and visible names not backed by the current snapshot; missing visible names are recreated.
    A dest that does not exist is left alone. Failures are logged, not raised (housekeeping).
    """
    return TreePublisher(spec).cleanup()


def touch(spec: TreeSpec) -> bool:
    """Heartbeat: bump the mtime of ``dest`` itself (readers of children see nothing); False if it is missing.

    A switch moves that mtime too, so ``stat -c %Y dest`` is when the tree was last known in sync.
    """
    try:
        if not stat.S_ISDIR(os.lstat(spec.dest).st_mode):
            return False
        os.utime(spec.dest, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise _error(spec.dest, "updating its modification time", exc) from exc
    return True


def render_json(children: Mapping[str, bytes]) -> bytes:
    """The ``json`` format: one object {child name: child data as text}, keys sorted, so equal trees give
    equal bytes (and the file is not rewritten). Raises TreeRenderError naming the first non-UTF-8 child."""
    texts: dict[str, str] = {}
    for name in sorted(children):
        try:
            texts[name] = children[name].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TreeRenderError(
                f"child {name!r} is not UTF-8 text (byte {exc.start}): the json format holds text only"
            ) from None
    try:
        return (json.dumps(texts, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TreeRenderError(f"a child name cannot be written as UTF-8: {exc.reason}") from None


def publish_json(spec: TreeSpec, children: Mapping[str, bytes]) -> files.Outcome:
    """Write the ``json`` format to ``spec.dest`` with the single-file rules of ``livedata.files``.

    Raises TreeRenderError (nothing written, the old file kept) or FileWriteError.
    """
    try:
        data = render_json(children)
    except TreeRenderError as exc:
        raise TreeRenderError(f"tree {spec.dest!r}: {exc}; nothing written") from None  # whatever is there stays
    _remove_directory_tree(spec.dest)
    return files.sync_file(FileSpec(spec.dest, spec.mode, spec.owner, spec.group), data)


def _remove_directory_tree(dest: str) -> None:
    """A tree switched from ``directory`` to ``json``: its old directory (recognised by ``..data``) makes way."""
    try:
        if not stat.S_ISLNK(os.lstat(os.path.join(dest, DATA_LINK)).st_mode) or os.path.islink(dest):
            return
    except OSError:
        return  # no directory tree there: the usual case
    parent, name = os.path.split(dest)
    try:
        parent_fd = os.open(parent, _DIR_FLAGS)
        try:
            _remove_tree_at(parent_fd, name)
        finally:
            os.close(parent_fd)
    except OSError as exc:
        raise _error(dest, "removing the directory tree that the json file replaces", exc) from exc
    log.info("removed %r: the tree's format is now json", dest)


def child_name_problem(name: object, name_max: int = _DEFAULT_NAME_MAX) -> str | None:
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


# ------------------------------------------------------------------------------------------- the publisher


@dataclass
class _Published:
    """A snapshot this publisher put in place (or read), so the next publish trusts it instead of reading it
    back. For the spare, ``data`` may lack children whose bytes are unknown (their files get replaced)."""

    snapshot: str
    metadata: tuple[int, int | None, int | None]
    data: dict[str, bytes]
    inodes: dict[str, int]  # child -> inode of its file in ``snapshot``
    links: dict[str, int] = field(default_factory=dict)  # child -> inode of its visible symlink in dest
    # On the spare: the children whose file differs from the current snapshot's (None: unknown, compare all).
    delta: set[str] | None = None
    # On the spare: (inode, ctime) of its directory when a listing found it as we left it, a timestamp tick
    # after its last change; while both stay the same, nothing was added, removed or renamed in it since.
    verified: tuple[int, int] | None = None


@dataclass
class _Plan:
    keep: list[str] = field(default_factory=list)
    kept_inodes: dict[str, int] = field(default_factory=dict)
    write: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    dirty: bool = False  # the current snapshot holds something it should not
    metadata_fixed: bool = False
    old_inodes: dict[str, int] = field(default_factory=dict)  # the current snapshot's regular files


class TreePublisher:
    """Publishes snapshots of one tree dest. Keep one per tree: it remembers the current snapshot and the
    one before it, kept as a *spare* (bytes and inodes of both), so a later publish of 10,000 children with
    one change renames the spare, brings it up to date with a few syscalls and switches to it: its cost
    grows with the children that changed in the last two publishes, not with the tree. Publishes of the
    same dest are serialised, in this process and across processes (``flock`` on dest). Plain blocking
    syscalls: a gevent caller should run large trees in a thread pool.
    """

    def __init__(self, spec: TreeSpec) -> None:
        self.spec = spec
        self._published: _Published | None = None
        self._spare: _Published | None = None
        self._keeps_spare = True  # False for the stateless ``publish``: nobody would reuse it

    def publish(self, children: Mapping[str, bytes]) -> TreeOutcome:
        """Make dest hold exactly the children with safe names; raise TreeWriteError if impossible."""
        with _lock_for(self.spec.dest):
            dest_fd, cleaned = self._open_dest()
            try:
                _flock(dest_fd, self.spec.dest)
                return _Run(self, dest_fd, cleaned).publish(children)
            finally:
                os.close(dest_fd)  # releases the flock

    def cleanup(self) -> list[str]:
        """See the module-level ``cleanup``."""
        with _lock_for(self.spec.dest):
            try:
                dest_fd = os.open(self.spec.dest, _DIR_FLAGS)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    log.warning("cannot clean up tree %r: %s", self.spec.dest, exc.strerror or exc)
                return []
            try:
                _flock(dest_fd, self.spec.dest)
                return _Run(self, dest_fd, []).repair()
            except TreeWriteError as exc:
                log.warning("cannot clean up tree %r: %s", self.spec.dest, exc.reason)
                return []
            finally:
                os.close(dest_fd)

    def _open_dest(self) -> tuple[int, list[str]]:
        """dest as an O_NOFOLLOW directory fd, created if missing; a non-directory there is replaced."""
        dest = self.spec.dest
        cleaned: list[str] = []
        step = "creating the tree directory"
        try:
            try:
                status = os.lstat(dest)
            except FileNotFoundError:
                status = None
            if status is not None and not stat.S_ISDIR(status.st_mode):
                step = "replacing what is at the tree's path (not a directory)"
                os.unlink(dest)
                cleaned.append(dest)
                status = None
            if status is None:
                files.make_directories(os.path.dirname(dest))
                with contextlib.suppress(FileExistsError):  # an overlapping instance made it first
                    os.mkdir(dest, 0o700)
                files.fsync_directory(os.path.dirname(dest))
            step = "opening the tree directory"
            fd = os.open(dest, _DIR_FLAGS)
        except OSError as exc:
            raise _error(dest, step, exc) from exc
        try:
            _fix_directory(fd, self.spec)
        except OSError as exc:
            os.close(fd)
            raise _error(dest, "setting the tree directory's mode and ownership", exc) from exc
        return fd, cleaned


class _Run:
    """One publish or cleanup of one dest, all of it relative to ``dest_fd``."""

    def __init__(self, publisher: TreePublisher, dest_fd: int, cleaned: list[str]) -> None:
        self.publisher = publisher
        self.spec = publisher.spec
        self.dest = publisher.spec.dest
        self.dest_fd = dest_fd
        self.cleaned = cleaned
        self.step = "reading the current snapshot"

    # ------------------------------------------------------------------------------------------ publish

    def publish(self, children: Mapping[str, bytes]) -> TreeOutcome:
        wanted, skipped = self._check_names(children)
        try:
            current = _current_snapshot(self.dest_fd)
        except OSError as exc:
            raise _error(self.dest, self.step, exc) from exc
        if self._can_reuse_spare(current):
            assert current is not None
            outcome = self._publish_reusing(current, wanted, skipped)
            if outcome is not None:
                return outcome
        return self._publish_building(current, wanted, skipped)

    def _can_reuse_spare(self, current: str | None) -> bool:
        """Double buffering needs both snapshots known: ``..data`` still names what this publisher last put
        there (no other instance published since, no restart) and the metadata did not change."""
        published, spare, metadata = self.publisher._published, self.publisher._spare, _metadata(self.spec)
        return (
            current is not None and published is not None and spare is not None and published.snapshot == current
            and spare.snapshot != current and published.metadata == metadata and spare.metadata == metadata
        )  # fmt: skip

    def _publish_building(
        self, current: str | None, wanted: dict[str, bytes], skipped: tuple[ChildNameError, ...]
    ) -> TreeOutcome:
        """The full build: a fresh directory, a hard link per unchanged child (found by reading the current
        snapshot unless this publisher made it). Used first after a start, after another instance published,
        after a metadata change or while there is no spare; the replaced snapshot becomes the spare."""
        publisher = self.publisher
        stale = {known.snapshot for known in (publisher._published, publisher._spare) if known is not None}
        try:
            old_fd = os.open(current, _DIR_FLAGS, dir_fd=self.dest_fd) if current else None
        except OSError as exc:
            raise _error(self.dest, self.step, exc) from exc
        try:
            plan = self._plan(old_fd, current, wanted)
            if current is not None and old_fd is not None and not (plan.write or plan.removed or plan.dirty):
                self._tidy(current, set(wanted))
                return TreeOutcome(
                    current, False, kept=len(plan.keep), skipped=skipped,
                    cleaned=tuple(self.cleaned), metadata_fixed=plan.metadata_fixed,
                )
            trusted = publisher._published is not None and publisher._published.snapshot == current
            previous = publisher._published
            snapshot = self._switch(old_fd, current, plan, wanted)
        finally:
            if old_fd is not None:
                os.close(old_fd)
        publisher._spare = None
        if current is not None and not publisher._keeps_spare:
            stale.add(current)
        elif current is not None:
            if trusted and previous is not None and previous.metadata == _metadata(self.spec):
                previous.delta = set(plan.write) | set(plan.removed)
                publisher._spare = previous
            else:
                known = {name: wanted[name] for name in plan.keep}
                publisher._spare = _Published(current, _metadata(self.spec), known, dict(plan.old_inodes))
        stale -= {snapshot} if publisher._spare is None else {snapshot, current}
        self._tidy(snapshot, set(wanted), stale=frozenset(stale))
        if publisher._spare is None and publisher._keeps_spare:
            self._make_spare()
        else:
            self._verify_spare()
        return TreeOutcome(
            snapshot, True, tuple(sorted(plan.write)), tuple(sorted(plan.removed)), len(plan.keep), skipped,
            tuple(self.cleaned), plan.metadata_fixed,
        )

    def _make_spare(self) -> None:
        """A first snapshot has no predecessor to keep: make the spare now, after the switch (readers do not
        wait for it), as hard links to the current files, so that the next publish already reuses it."""
        published = self.publisher._published
        assert published is not None, "called right after a switch"
        name = f"..{_stamp()}.{files.unique_suffix()}"
        try:
            os.mkdir(name, 0o700, dir_fd=self.dest_fd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.dest_fd)
            try:
                _fix_directory(fd, self.spec)
                current_fd = os.open(published.snapshot, _DIR_FLAGS, dir_fd=self.dest_fd)
                try:
                    for child in published.inodes:
                        os.link(child, child, src_dir_fd=current_fd, dst_dir_fd=fd, follow_symlinks=False)
                finally:
                    os.close(current_fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("cannot make a spare snapshot in %r (the next publish builds one): %s",
                        self.dest, exc.strerror or exc)  # fmt: skip
            self._discard(name)
            return
        self.publisher._spare = _Published(
            name, published.metadata, published.data, dict(published.inodes), delta=set()
        )

    def _check_names(self, children: Mapping[str, bytes]) -> tuple[dict[str, bytes], tuple[ChildNameError, ...]]:
        """Names already published are known to be safe: only new ones are checked (set arithmetic in C)."""
        published = self.publisher._published
        known = published.data if published is not None else {}
        wanted = dict(children)
        unknown = wanted.keys() - known.keys()
        if not unknown:
            return wanted, ()
        try:
            name_max = os.fpathconf(self.dest_fd, "PC_NAME_MAX")
        except (OSError, ValueError):
            name_max = _DEFAULT_NAME_MAX
        skipped: list[ChildNameError] = []
        for name in unknown:
            problem = child_name_problem(name, name_max)
            if problem is not None:
                del wanted[name]
                skipped.append(ChildNameError(self.dest, repr(name) if not isinstance(name, str) else name, problem))
        return wanted, tuple(sorted(skipped, key=lambda error: error.child))

    # ------------------------------------------------------------------------- double buffering (hot path)

    def _publish_reusing(
        self, current: str, wanted: dict[str, bytes], skipped: tuple[ChildNameError, ...]
    ) -> TreeOutcome | None:
        """Rename the spare to a fresh snapshot name and bring it from its content to ``wanted``; switch.

        Returns None when the spare is gone (another instance's cleanup took it): the caller builds instead.
        """
        published, spare = self.publisher._published, self.publisher._spare
        assert published is not None and spare is not None
        written = _changed(wanted, published.data)
        removed = published.data.keys() - wanted.keys()
        if not written and not removed and self._is_clean(current, published):
            self._tidy(current, set(wanted))
            return TreeOutcome(current, False, kept=len(wanted), skipped=skipped, cleaned=tuple(self.cleaned))
        # Changes, or something planted in the current snapshot: switch to a clean one, built from the spare.
        with self._new_snapshot() as name:
            self.step = "renaming the spare snapshot"
            try:
                unchanged = self._spare_unchanged(spare)
                os.rename(spare.snapshot, name, src_dir_fd=self.dest_fd, dst_dir_fd=self.dest_fd)
            except FileNotFoundError:
                self.publisher._spare = None
                return None
            self.publisher._spare = None  # from here on it is an unfinished snapshot: discarded if we fail
            try:
                new_fd = os.open(name, _DIR_FLAGS, dir_fd=self.dest_fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                self._discard(name)  # something planted at the spare's name, not our directory
                return None
            try:
                unchanged = unchanged and spare.verified is not None and os.fstat(new_fd).st_ino == spare.verified[0]
                _fix_directory(new_fd, self.spec)
                self.step = "opening the current snapshot"
                current_fd = os.open(current, _DIR_FLAGS, dir_fd=self.dest_fd)
                try:
                    inodes, fresh = self._bring_up_to_date(
                        new_fd, current_fd, spare, published, wanted, written, removed, unchanged)
                finally:
                    os.close(current_fd)
                os.utime(new_fd)  # its mtime says when its content was made (TreeWatcher reports it)
                links = self._complete(new_fd, wanted, current, fresh)
            finally:
                os.close(new_fd)
            self.step = "switching ..data to the new snapshot"
            self._swap(name)
        self.publisher._published = _Published(name, _metadata(self.spec), wanted, inodes, links)
        published.delta = written | removed  # every other child has the same inode in both
        self.publisher._spare = published
        self._make_switch_durable()
        self._tidy(name, set(wanted))
        self._verify_spare()
        return TreeOutcome(
            name, True, tuple(sorted(written)), tuple(sorted(removed)), len(wanted) - len(written), skipped,
            tuple(self.cleaned),
        )

    def _bring_up_to_date(
        self, fd: int, current_fd: int, spare: _Published, current: _Published, wanted: dict[str, bytes],
        written: set[str], removed: set[str], unchanged: bool,
    ) -> tuple[dict[str, int], list[str]]:
        """Make the renamed spare (``fd``) hold exactly ``wanted``; return child -> inode and the files written.

        One listing (getdents: names and inode numbers, no stat) checks the directory against what we left
        in it; foreign or unknown entries go (skipped when ``_verify_spare`` listed it after the last switch
        and its ctime has not moved since). Then only the differences cost syscalls: an unchanged child
        whose file here is not the current snapshot's gets that file hard-linked over it (same inode in
        both, so readers reuse what they parsed), a changed child a new file, a removed child an unlink.
        Set arithmetic on dict views keeps the per-child work in C.
        """
        self.step = "listing the spare snapshot"
        # Listed after the last switch already, and unchanged since (see _verify_spare): no listing now.
        present = spare.inodes if unchanged else {entry.name: entry.inode() for entry in os.scandir(fd)}
        # Entries here that are not the current snapshot's file of that name; current files missing here.
        if present == spare.inodes and spare.delta is not None:  # as we left it: only the last changes differ
            known = current.inodes
            differing = {name for name in spare.delta if name in present and present[name] != known.get(name)}
            missing = {name for name in spare.delta if name in known and present.get(name) != known[name]}
        else:
            if present != spare.inodes:
                present = self._drop_foreign(fd, present, spare.inodes)
            differing = {name for name, _inode in present.items() - current.inodes.items()}
            missing = {name for name, _inode in current.inodes.items() - present.items()}
        inodes = dict(current.inodes)
        for name in removed:
            del inodes[name]
        self.step = "removing children that are gone"
        for name in (differing - wanted.keys()) | (removed & present.keys()):
            _remove_entry(fd, name)
        self.step = "linking the unchanged children"
        fresh: list[str] = []
        for name in missing - removed - written:
            self._link_over(fd, current_fd, name, name in present)
            if not self._is_our_file(fd, name, current.inodes[name]):  # replaced in the current snapshot
                inodes[name] = self._write_over(fd, name, wanted[name], True)
                fresh.append(name)
        self.step = "writing the changed children"
        for name in sorted(written):
            inode = present.get(name)
            if inode is not None and name in differing and self._holds(fd, name, spare, wanted[name]):
                inodes[name] = inode  # the change undoes the one before: the spare's file is already right
                continue
            inodes[name] = self._write_over(fd, name, wanted[name], inode is not None)
            fresh.append(name)
        return inodes, fresh

    def _spare_unchanged(self, spare: _Published) -> bool:
        """Is the spare's directory as ``_verify_spare`` found it (same inode, same ctime)? Asked before the
        rename, which moves the ctime; the caller checks the inode again through the opened directory."""
        if spare.verified is None:
            return False
        status = os.stat(spare.snapshot, dir_fd=self.dest_fd, follow_symlinks=False)
        return stat.S_ISDIR(status.st_mode) and (status.st_ino, status.st_ctime_ns) == spare.verified

    def _verify_spare(self) -> None:
        """List the new spare now, after the switch (readers do not wait for it), so that the next publish
        only compares its directory's ctime instead of listing it before its switch.

        Any entry added, removed or renamed in a directory moves its ctime, which nobody can set back; but
        the kernel stamps it with a clock that ticks once per jiffy (whole seconds on some file systems), so
        a change within the same tick as the stamp seen would go unnoticed. The listing therefore counts only
        if it starts at least a tick after that stamp: a later change then gets a later stamp.
        Failures are logged: the next publish lists the spare itself.
        """
        spare = self.publisher._spare
        if spare is None:
            return
        spare.verified = None
        try:
            fd = os.open(spare.snapshot, _DIR_FLAGS, dir_fd=self.dest_fd)
            try:
                now = time.time_ns()
                status = os.fstat(fd)
                present = {entry.name: entry.inode() for entry in os.scandir(fd)}
                if present != spare.inodes:
                    spare.inodes = self._drop_foreign(fd, present, spare.inodes)
                    spare.delta = None  # entries of ours went missing: compare everything at reuse
                elif now - status.st_ctime_ns >= _timestamp_tick(status.st_ctime_ns):
                    spare.verified = (status.st_ino, status.st_ctime_ns)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("cannot check the spare snapshot of %r: %s", self.dest, exc.strerror or exc)

    def _drop_foreign(self, fd: int, present: dict[str, int], ours: dict[str, int]) -> dict[str, int]:
        """Remove what we did not leave in the spare (planted, or left by a failed run); return what is ours."""
        kept: dict[str, int] = {}
        for name, inode in present.items():
            if ours.get(name) == inode:
                kept[name] = inode
            else:
                if name not in ours:
                    log.info("removing %r from the spare snapshot of %r: livedata did not write it", name, self.dest)
                _remove_entry(fd, name)
        return kept

    def _holds(self, fd: int, name: str, spare: _Published, data: bytes) -> bool:
        """Is the spare's file ``name`` a regular file known to hold ``data``?"""
        known = spare.data.get(name)
        if known is None or (known is not data and known != data):
            return False
        return stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)

    @staticmethod
    def _is_our_file(fd: int, name: str, inode: int) -> bool:
        """Is ``name`` the regular file we made with that inode? (A link is made by name: this checks it.)"""
        status = os.stat(name, dir_fd=fd, follow_symlinks=False)
        return status.st_ino == inode and stat.S_ISREG(status.st_mode)

    def _link_over(self, fd: int, current_fd: int, name: str, exists: bool) -> None:
        """Hard-link the current snapshot's file ``name`` into ``fd``, replacing what is there with one rename."""
        if not exists:
            os.link(name, name, src_dir_fd=current_fd, dst_dir_fd=fd, follow_symlinks=False)
            return
        temp = self._temp_name(name, fd)
        try:
            os.link(name, temp, src_dir_fd=current_fd, dst_dir_fd=fd, follow_symlinks=False)
            _rename_over(fd, temp, name)
        except BaseException:
            _unlink_quietly(fd, temp)
            raise

    def _write_over(self, fd: int, name: str, data: bytes, exists: bool) -> int:
        """A new file for ``name`` in ``fd`` (livedata.files rules); an existing entry is replaced by rename."""
        if not exists:
            return files.create_file(fd, name, self.spec.child(name), data, False).st_ino
        temp = self._temp_name(name, fd)
        try:
            inode = files.create_file(fd, temp, self.spec.child(name), data, False).st_ino
            _rename_over(fd, temp, name)
        except BaseException:
            _unlink_quietly(fd, temp)
            raise
        return inode

    def _is_clean(self, snapshot: str, known: _Published) -> bool:
        """Does the current snapshot hold exactly the files we put there? (A listing, no stat.)"""
        try:
            fd = os.open(snapshot, _DIR_FLAGS, dir_fd=self.dest_fd)
            try:
                return {entry.name: entry.inode() for entry in os.scandir(fd)} == known.inodes
            finally:
                os.close(fd)
        except OSError as exc:
            raise _error(self.dest, "listing the current snapshot", exc) from exc

    def _plan(self, old_fd: int | None, current: str | None, wanted: dict[str, bytes]) -> _Plan:
        """Sort children into kept (hard link) and written; note removed ones and foreign content."""
        plan = _Plan()
        if old_fd is None:
            plan.write = list(wanted)
            return plan
        try:
            _fix_directory(old_fd, self.spec)
        except OSError as exc:
            raise _error(self.dest, "setting the snapshot directory's mode and ownership", exc) from exc
        published = self.publisher._published
        trusted = published is not None and published.snapshot == current
        if published is not None and published.metadata != _metadata(self.spec):
            trusted = False  # verify (and fix) every kept file's mode and owner
        try:
            entries = {entry.name: entry for entry in os.scandir(old_fd)}
        except OSError as exc:
            raise _error(self.dest, self.step, exc) from exc
        for name, data in wanted.items():
            entry = entries.pop(name, None)
            if entry is not None and entry.is_file(follow_symlinks=False):
                plan.old_inodes[name] = entry.inode()
            if entry is None or not entry.is_file(follow_symlinks=False):
                plan.dirty |= entry is not None
                plan.write.append(name)
            elif _same(published, name, entry.inode(), data) if trusted else self._verify(old_fd, name, data, plan):
                plan.keep.append(name)
                plan.kept_inodes[name] = entry.inode()
            else:
                plan.write.append(name)
        for name, entry in entries.items():
            if child_name_problem(name) is None and entry.is_file(follow_symlinks=False):
                plan.old_inodes[name] = entry.inode()
            if child_name_problem(name) is None:
                plan.removed.append(name)
            else:
                plan.dirty = True  # something we did not write; it goes with the old snapshot
        return plan

    def _verify(self, old_fd: int, name: str, data: bytes, plan: _Plan) -> bool:
        """Does the old snapshot's file hold exactly ``data``? If so, fix its mode and owner in place."""
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=old_fd)
        except OSError:
            return False
        try:
            if not files.holds(fd, data):
                return False
            plan.metadata_fixed |= files.fix_metadata(fd, self.spec.child(name))
            return True
        except OSError as exc:
            raise _error(self.spec.child(name).path, "checking the current file", exc) from exc
        finally:
            os.close(fd)

    def _switch(self, old_fd: int | None, current: str | None, plan: _Plan, wanted: dict[str, bytes]) -> str:
        """Build the new snapshot, make it durable (see ``_complete``) and point ``..data`` at it; return its name."""
        with self._new_snapshot() as name:
            self.step = "creating the snapshot directory"
            os.mkdir(name, 0o700, dir_fd=self.dest_fd)
            new_fd = os.open(name, _DIR_FLAGS, dir_fd=self.dest_fd)
            try:
                inodes = self._fill(new_fd, old_fd, plan, wanted)
                links = self._complete(new_fd, wanted, current, plan.write)
            finally:
                os.close(new_fd)
            self.step = "switching ..data to the new snapshot"
            self._swap(name)
        self.publisher._published = _Published(name, _metadata(self.spec), dict(wanted), inodes, links)
        self._make_switch_durable()
        return name

    def _complete(
        self, new_fd: int, wanted: dict[str, bytes], current: str | None, written: list[str]
    ) -> dict[str, int]:
        """The visible names of every child, then one flush of the new snapshot and of dest; returns the links.

        Nothing is flushed before everything is in place, so on a journalling filesystem the first flush
        commits it all and the directory fsyncs after it are cheap.
        """
        self.step = "creating the visible names of new children"
        links = self._place_links(set(wanted), current)
        self.step = "flushing the new snapshot to disk"
        self._flush(new_fd, written)
        _fsync(self.dest_fd)
        return links

    def _make_switch_durable(self) -> None:
        try:
            _fsync(self.dest_fd)
        except OSError as exc:
            raise _error(self.dest, "making the switch durable (the new snapshot is already in place)", exc) from exc

    def _fill(self, new_fd: int, old_fd: int | None, plan: _Plan, wanted: dict[str, bytes]) -> dict[str, int]:
        """Write the changed children and hard-link the kept ones; return child -> inode."""
        _fix_directory(new_fd, self.spec)
        inodes: dict[str, int] = {}
        self.step = "writing the changed children"
        for child in plan.write:
            inodes[child] = files.create_file(new_fd, child, self.spec.child(child), wanted[child], False).st_ino
        self.step = "linking the unchanged children"
        for child in plan.keep:
            assert old_fd is not None, "only an existing snapshot has children to keep"
            os.link(child, child, src_dir_fd=old_fd, dst_dir_fd=new_fd, follow_symlinks=False)
        inodes.update(plan.kept_inodes)
        return inodes

    def _flush(self, new_fd: int, written: list[str]) -> None:
        """New files' data, then the snapshot's entries: one syncfs for many files, else one fsync each."""
        if len(written) <= files.SYNCFS_THRESHOLD or not _syncfs_or_false(new_fd):
            for child in written:
                fd = os.open(child, _READ_FLAGS, dir_fd=new_fd)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync(new_fd)

    @contextlib.contextmanager
    def _new_snapshot(self) -> Iterator[str]:
        """A fresh snapshot name, in flight (no cleanup takes it) while the block builds and switches to it.

        Both ways of building one (from scratch, or from the spare) end the same way: an OSError in the
        block discards whatever was built under the name and becomes one FileWriteError naming ``self.step``.
        """
        name = f"..{_stamp()}.{files.unique_suffix()}"
        path = os.path.join(self.dest, name)
        files.note_in_flight(path)
        try:
            yield name
        except OSError as exc:
            self._discard(name)
            raise _error(self.dest, self.step, exc) from exc
        finally:
            files.forget_in_flight(path)

    def _swap(self, snapshot: str) -> None:
        """One rename of a fresh symlink over ``..data``: readers see the old snapshot or the new one."""
        temp = self._temp_name(DATA_LINK)
        os.symlink(snapshot, temp, dir_fd=self.dest_fd)
        try:
            try:
                os.rename(temp, DATA_LINK, src_dir_fd=self.dest_fd, dst_dir_fd=self.dest_fd)
            except IsADirectoryError:
                self._remove(DATA_LINK, "a directory planted where ..data belongs", quiet=False)
                os.rename(temp, DATA_LINK, src_dir_fd=self.dest_fd, dst_dir_fd=self.dest_fd)
        except BaseException:
            _unlink_quietly(self.dest_fd, temp)
            raise
        finally:
            files.forget_in_flight(os.path.join(self.dest, temp))

    def _discard(self, snapshot: str) -> None:
        try:
            _remove_tree_at(self.dest_fd, snapshot)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove unfinished snapshot %r: %s", os.path.join(self.dest, snapshot), exc)

    # ------------------------------------------------------------------------------- visible names, debris

    def _place_links(self, children: set[str], current: str | None) -> dict[str, int]:
        """Make ``dest/<child>`` the symlink ``..data/<child>`` for each child; return child -> link inode.

        When this publisher made the current snapshot, its names are trusted here and only new children's
        are made: this runs before the switch, and the tidy after it checks every name anyway.
        """
        published = self.publisher._published
        known = published.links if published is not None else {}
        if published is not None and published.snapshot == current:
            trusted = dict(known)
            for child in known.keys() - children:
                del trusted[child]
            for child in children - known.keys():
                trusted[child] = self._make_link(child, False)
            return trusted
        entries = {entry.name: entry for entry in os.scandir(self.dest_fd) if entry.name in children}
        links: dict[str, int] = {}
        for child in children:
            entry = entries.get(child)
            if entry is not None and entry.is_symlink() and (
                known.get(child) == entry.inode() or self._readlink(child) == _link_target(child)
            ):
                links[child] = entry.inode()
            else:
                links[child] = self._make_link(child, entry is not None)
        return links

    def _make_link(self, child: str, exists: bool) -> int:
        target = _link_target(child)
        if not exists:
            try:
                os.symlink(target, child, dir_fd=self.dest_fd)
                return os.stat(child, dir_fd=self.dest_fd, follow_symlinks=False).st_ino
            except FileExistsError:
                pass
        # Something else holds the name (a planted file or symlink): replace it with one rename.
        temp = self._temp_name(child)
        os.symlink(target, temp, dir_fd=self.dest_fd)
        try:
            try:
                os.rename(temp, child, src_dir_fd=self.dest_fd, dst_dir_fd=self.dest_fd)
            except IsADirectoryError:
                self._remove(child, "a directory planted where a child's name belongs", report=False, quiet=False)
                os.rename(temp, child, src_dir_fd=self.dest_fd, dst_dir_fd=self.dest_fd)
        except BaseException:
            _unlink_quietly(self.dest_fd, temp)
            raise
        finally:
            files.forget_in_flight(os.path.join(self.dest, temp))
        self.cleaned.append(os.path.join(self.dest, child))
        return os.stat(child, dir_fd=self.dest_fd, follow_symlinks=False).st_ino

    def _tidy(self, snapshot: str, children: set[str], stale: frozenset[str] = frozenset()) -> None:
        """Make dest's entries match ``snapshot``: exactly one correct visible name per child, and nothing
        else but ``..data``, ``snapshot``, this publisher's spare and what live writers are still building.

        ``stale`` are snapshots this publisher made or kept and no longer needs (removed without being
        reported). The common case (entries as we left them) is checked with set arithmetic on inode
        numbers; only the entries that differ are looked at one by one.
        Failures are logged: the snapshot is in place, and the next publish or cleanup tries again.
        """
        try:
            listing = list(os.scandir(self.dest_fd))
        except OSError as exc:
            log.warning("cannot list tree %r to tidy it: %s", self.dest, exc.strerror or exc)
            return
        published = self.publisher._published
        links = published.links if published is not None and published.snapshot == snapshot else {}
        spare = self.publisher._spare.snapshot if self.publisher._spare is not None else None
        symlinks = {entry.name: entry.inode() for entry in listing if entry.is_symlink()}  # d_type: no stat
        trusted = {name for name, _inode in symlinks.items() & links.items()} & children
        missing = children - {entry.name for entry in listing}
        entries = {entry.name: entry for entry in listing}
        for name in entries.keys() - trusted:
            entry = entries[name]
            if name in children:
                if not entry.is_symlink() or self._readlink(name) != _link_target(name):
                    self._repair_link(name, exists=True)
                continue
            reason, report = self._removal_reason(entry, snapshot, spare, stale)
            if reason is not None:
                self._remove(name, reason, report)
        for name in sorted(missing):
            self._repair_link(name, exists=False)

    def _removal_reason(
        self, entry: os.DirEntry[str], snapshot: str, spare: str | None, stale: frozenset[str]
    ) -> tuple[str | None, bool]:
        """Why an entry of dest that is not a child's visible name must go (None: keep it), and whether
        the caller should hear of it (debris and foreign entries) or not (our own routine removals)."""
        name = entry.name
        if name in (DATA_LINK, snapshot, spare):
            return None, False
        snapshot_match = _SNAPSHOT.fullmatch(name)
        if snapshot_match is not None:
            if name in stale:
                return "a snapshot this publisher no longer needs", False
            owner = int(snapshot_match.group("pid"))
            if owner == os.getpid() and files.writer_is_gone(os.path.join(self.dest, name), owner):
                return "a snapshot kept by an earlier publisher of this process", False
            if files.writer_is_gone(os.path.join(self.dest, name), owner):
                return "a snapshot left by a writer that is gone", True
            return None, False  # another live instance's spare (or current, as it believes)
        pid = files.temp_pid(name)
        if pid is not None:
            if files.writer_is_gone(os.path.join(self.dest, name), pid):
                return "a temporary file left by a writer that is gone", True
            return None, False
        if child_name_problem(name) is None and entry.is_symlink() and self._readlink(name) == _link_target(name):
            return "the visible name of a removed child", False
        return "an entry livedata did not write (livedata owns this directory)", True

    def _repair_link(self, name: str, exists: bool) -> None:
        try:
            inode = self._make_link(name, exists)
            if self.publisher._published is not None:
                self.publisher._published.links[name] = inode
        except OSError as exc:
            log.warning("cannot repair %r: %s", os.path.join(self.dest, name), exc.strerror or exc)

    def _remove(self, name: str, reason: str, report: bool = True, quiet: bool = True) -> None:
        path = os.path.join(self.dest, name)
        try:
            _remove_tree_at(self.dest_fd, name)
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

    # ------------------------------------------------------------------------------------------ cleanup

    def repair(self) -> list[str]:
        """cleanup(): make dest consistent with its current snapshot, whatever a killed run left."""
        try:
            current = _current_snapshot(self.dest_fd)
        except OSError as exc:
            log.warning("cannot read the current snapshot of %r: %s", self.dest, exc.strerror or exc)
            return []
        children: set[str] = set()
        if current is not None:
            try:
                snapshot_fd = os.open(current, _DIR_FLAGS, dir_fd=self.dest_fd)
                try:
                    children = {entry.name for entry in os.scandir(snapshot_fd)
                                if entry.is_file(follow_symlinks=False) and child_name_problem(entry.name) is None}
                finally:
                    os.close(snapshot_fd)
            except OSError as exc:
                log.warning("cannot list the current snapshot of %r: %s", self.dest, exc.strerror or exc)
                return []
        self._tidy(current or "", children)
        return self.cleaned

    # ------------------------------------------------------------------------------------------ helpers

    def _temp_name(self, name: str, snapshot_fd: int | None = None) -> str:
        """A livedata.files temp name for ``name``; in dest it is noted in flight (inside a snapshot being
        built it needs not be: the whole snapshot is)."""
        temp = os.path.basename(files.temp_prefix(os.path.join(self.dest, name))) + files.unique_suffix()
        if snapshot_fd is None:
            files.note_in_flight(os.path.join(self.dest, temp))
        return temp

    def _readlink(self, name: str) -> str | None:
        try:
            return os.readlink(name, dir_fd=self.dest_fd)
        except OSError:
            return None


# --------------------------------------------------------------------------------------------- plumbing

_locks: dict[str, threading.Lock] = {}
_locks_lock = threading.Lock()


def _lock_for(dest: str) -> threading.Lock:
    with _locks_lock:
        return _locks.setdefault(dest, threading.Lock())


def _flock(dest_fd: int, dest: str) -> None:
    """Wait for other processes publishing or cleaning this dest (an overlapping instance during a deploy):
    with one writer at a time, a spare or an unfinished snapshot is only ever touched by its owner."""
    try:
        fcntl.flock(dest_fd, fcntl.LOCK_EX)
    except OSError as exc:
        raise _error(dest, "locking the tree directory", exc) from exc


def _current_snapshot(dest_fd: int) -> str | None:
    """The snapshot ``..data`` names, if it is one of ours and a real directory; None otherwise."""
    try:
        target = os.readlink(DATA_LINK, dir_fd=dest_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EINVAL):  # missing, or not a symlink
            return None
        raise
    if _SNAPSHOT.fullmatch(target) is None:
        return None
    try:
        if not stat.S_ISDIR(os.stat(target, dir_fd=dest_fd, follow_symlinks=False).st_mode):
            return None
    except FileNotFoundError:
        return None
    return target


def _changed(wanted: dict[str, bytes], known: dict[str, bytes]) -> set[str]:
    """Children of ``wanted`` whose bytes are not those in ``known``: dict views compare in C (bytes cache
    their hash, and objects handed in again compare by identity first); a loop for unhashable buffers."""
    try:
        return {name for name, _data in wanted.items() - known.items()}
    except TypeError:
        return {name for name, data in wanted.items() if name not in known or known[name] != data}


def _same(published: _Published | None, name: str, inode: int, data: bytes) -> bool:
    if published is None or published.inodes.get(name) != inode:
        return False
    old = published.data.get(name)
    return old is data or old == data


def _metadata(spec: TreeSpec) -> tuple[int, int | None, int | None]:
    return (spec.mode, spec.owner, spec.group)


def _fix_directory(fd: int, spec: TreeSpec) -> None:
    """Owner then mode, as for files; directories are searchable wherever the files are readable."""
    status = os.fstat(fd)
    uid = -1 if spec.owner is None or spec.owner == status.st_uid else spec.owner
    gid = -1 if spec.group is None or spec.group == status.st_gid else spec.group
    if uid != -1 or gid != -1:
        os.fchown(fd, uid, gid)
    if uid != -1 or gid != -1 or stat.S_IMODE(status.st_mode) != spec.directory_mode:
        os.fchmod(fd, spec.directory_mode)


def _timestamp_tick(ctime_ns: int) -> int:
    """How long a directory's ctime may stay the same across changes: the kernel's coarse clock ticks once per
    jiffy (10 ms at most; 20 ms for margin), file systems that store whole seconds round to 2 s (FAT)."""
    return 2_000_000_000 if ctime_ns % 1_000_000_000 == 0 else 20_000_000


def _link_target(child: str) -> str:
    return f"{DATA_LINK}/{child}"


def _stamp() -> str:
    now = time.time_ns()
    return time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime(now // 1_000_000_000)) + f".{now % 1_000_000_000:09d}"


def _fsync(fd: int) -> None:
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


def _remove_tree_at(parent_fd: int, name: str) -> None:
    """Remove ``name`` in ``parent_fd`` and, if it is a directory, all it holds, never following a symlink."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        os.unlink(name, dir_fd=parent_fd)
        return
    try:
        for entry in os.scandir(fd):
            if entry.is_dir(follow_symlinks=False):
                _remove_tree_at(fd, entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def _remove_entry(dir_fd: int, name: str) -> None:
    """Unlink ``name``; a directory (something planted) is removed with all it holds."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except IsADirectoryError:
        _remove_tree_at(dir_fd, name)


def _rename_over(dir_fd: int, temp: str, name: str) -> None:
    """Replace ``name`` by ``temp`` in one rename; a directory in the way (planted) is removed first."""
    try:
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except IsADirectoryError:
        _remove_tree_at(dir_fd, name)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _unlink_quietly(dir_fd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)


def _error(path: str, step: str, exc: OSError) -> TreeWriteError:
    return TreeWriteError(path, exc.strerror or str(exc), step, exc.errno)
