"""The one place that writes tree dests: a znode's children mirrored as a directory that switches atomically.

A publish makes dest hold one new snapshot directory and switches ``..data`` to it with one rename; the shape
of dest and what readers may rely on are in ``livedata.tree_layout``. The work is split by idea:

* ``tree_plan``: what a publish changes, from the children that changed since the last one;
* ``tree_spare``: the snapshot before, reused as the next one: only the changes of the last two publishes
  cost syscalls, whatever the tree's size;
* ``tree_apply``: doing it under the durability rules of ``livedata.files`` (every new file's data on disk
  before the ``..data`` switch), all through an O_NOFOLLOW directory fd of dest;
* ``tree_tidy``: the visible names in dest, foreign entries and debris of killed runs.

A publisher that does not know both directories (the first publish after a start, after another instance
published, after a mode or owner change, or when its spare is gone) builds a fresh directory instead, with a
hard link per unchanged child, found by reading the current snapshot back unless it made it; the snapshot it
replaces becomes the spare. A first snapshot gets its spare (hard links) right after its switch.

Crash safety: a killed run leaves at most an unfinished snapshot directory (``..<stamp>.<pid>.<random>``,
maybe a spare it was reusing), its spare and temporary symlinks (``livedata.files`` temp names), never a
half-switched ``..data``: the current snapshot is never touched. ``cleanup`` (and the first publish) removes
those whose writer is gone, with the same rule as ``cleanup_stale_temp_files``. Publishes and cleanups of one
dest hold an exclusive ``flock`` on it, so two overlapping instances (during a deploy) take turns: each
notices the other's switch and builds afresh, and neither touches the other's work in progress.

Also here: the ``json`` format, where ``dest`` is one file holding ``{child: text}``, written by
``livedata.files`` like a node. Linux only; stdlib only (no kazoo or gevent).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from livedata import files
from livedata.files import FileSpec, FileWriteError
from livedata.tree_apply import TreeDir, fine_timestamps, fix_directory, flock, lock_for, remove_tree_at, seen
from livedata.tree_build import build, discard_staged, make_spare_after_build, stage
from livedata.tree_errors import ChildNameError, TreeRenderError, TreeWriteError, tree_error
from livedata.tree_layout import DATA_LINK, DIR_FLAGS, TreeSpec, child_name_problem, is_snapshot_name
from livedata.tree_plan import PublisherState, check_names, differences
from livedata.tree_reuse import reuse
from livedata.tree_tidy import repair

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


class TreePublisher:
    """Publishes snapshots of one tree dest. Keep one per tree: it remembers the current snapshot and the
    one before it, kept as a *spare*, so a later publish of 100,000 children with one change renames the
    spare, brings it up to date with a few syscalls and switches to it: its cost grows with the children that
    changed in the last two publishes, not with the tree. ``publish_changes`` takes only what changed, so
    the caller's cost does not grow with the tree either. Publishes of the same dest are serialised, in this
    process and across processes (``flock`` on dest). Plain blocking syscalls: a gevent caller should run
    large trees in a thread pool.
    """

    def __init__(self, spec: TreeSpec) -> None:
        self.spec = spec
        self.state = PublisherState()

    def publish(self, children: Mapping[str, bytes]) -> TreeOutcome:
        """Make dest hold exactly the children with safe names; raise TreeWriteError if impossible."""
        with self._dest() as tree:
            known = self.state.published.data if self.state.published is not None else {}
            self.state.pending = differences(children, known)
            return self._publish(tree)

    def publish_changes(self, changes: Mapping[str, bytes | None]) -> TreeOutcome:
        """Apply ``changes`` ({child: new bytes, or None if gone}) to the children last asked for, and make
        dest hold them. Changes of a failed publish are kept: the next call publishes them too."""
        with self._dest() as tree:
            self.state.pending = {**(self.state.pending or {}), **changes}
            return self._publish(tree)

    def stage(self, children: Mapping[str, bytes]) -> None:
        """Write these children's files ahead, while the rest of a first tree is still being read: the first
        publish then switches to that directory, rewriting only what changed since. Only into a dest that
        holds no snapshot yet; failures are logged and leave the work to the publish."""
        state = self.state
        if state.published is not None or state.staging_off:
            return
        try:
            with self._dest() as tree:
                try:
                    stage(tree, state, children)
                except OSError:
                    discard_staged(tree, state)
                    raise
        except (OSError, FileWriteError) as exc:
            state.staging_off = True
            log.info("cannot write tree %r ahead (the first publish writes it all): %s", self.spec.dest, exc)

    def cleanup(self) -> list[str]:
        """See the module-level ``cleanup``."""
        with lock_for(self.spec.dest):
            try:
                dest_fd = os.open(self.spec.dest, DIR_FLAGS)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    log.warning("cannot clean up tree %r: %s", self.spec.dest, exc.strerror or exc)
                return []
            try:
                flock(dest_fd, self.spec.dest)
                spare = self.state.spare.name if self.state.spare is not None else None
                return repair(TreeDir(self.spec, dest_fd, []), spare)
            except TreeWriteError as exc:
                log.warning("cannot clean up tree %r: %s", self.spec.dest, exc.reason)
                return []
            finally:
                os.close(dest_fd)

    def touch(self) -> bool:
        """The module-level ``touch``, which moves dest's ctime: noted, so the next publish still knows dest
        holds what it left there (unless a publish is under way: then it lists dest)."""
        lock = lock_for(self.spec.dest)
        if not lock.acquire(blocking=False):
            self.state.dest_seen = None
            return touch(self.spec)
        try:
            before = self.state.dest_seen
            touched = touch(self.spec)
            self.state.dest_seen = None
            if touched and before is not None:
                with contextlib.suppress(OSError):
                    fd = os.open(self.spec.dest, DIR_FLAGS)
                    try:
                        status = os.fstat(fd)
                        if status.st_ino == before[0]:
                            self.state.dest_seen = seen(fd)
                    finally:
                        os.close(fd)
            return touched
        finally:
            lock.release()

    def _publish(self, tree: TreeDir) -> TreeOutcome:
        state = self.state
        known = state.published.data if state.published is not None else {}
        state.pending, skipped = check_names(tree, state.pending or {}, known)
        done = reuse(tree, state) or build(tree, state)
        state.pending = None
        make_spare_after_build(tree, state)
        state.dest_seen = seen(tree.fd) if state.fine else None
        return TreeOutcome(
            done.snapshot, done.switched, done.written, done.removed, done.kept, skipped, tuple(tree.cleaned),
            done.metadata_fixed,
        )

    @contextlib.contextmanager
    def _dest(self) -> Iterator[TreeDir]:
        """dest locked (in this process and across processes) and opened, created if missing."""
        with lock_for(self.spec.dest):
            dest_fd, cleaned = _open_dest(self.spec)
            try:
                flock(dest_fd, self.spec.dest)
                tree = TreeDir(self.spec, dest_fd, cleaned)
                state = self.state
                if state.fine is None:
                    state.fine = _probe(tree)
                if state.dest_seen is not None and seen(dest_fd) != state.dest_seen:
                    state.dest_seen = None  # someone else changed dest: list it after the switch
                yield tree
            finally:
                os.close(dest_fd)  # releases the flock


def _probe(tree: TreeDir) -> bool:
    """Once per publisher: can dest's directories be trusted by their ctime alone? (tree_apply.fine_timestamps)"""
    return fine_timestamps(tree.fd, tree.dest)


def _open_dest(spec: TreeSpec) -> tuple[int, list[str]]:
    """dest as an O_NOFOLLOW directory fd, created if missing; a non-directory there is replaced."""
    dest = spec.dest
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
        fd = os.open(dest, DIR_FLAGS)
    except OSError as exc:
        raise tree_error(dest, step, exc) from exc
    try:
        fix_directory(fd, spec)
    except OSError as exc:
        os.close(fd)
        raise tree_error(dest, "setting the tree directory's mode and ownership", exc) from exc
    return fd, cleaned


# --------------------------------------------------------------------------------------------- public API


def publish(spec: TreeSpec, children: Mapping[str, bytes]) -> TreeOutcome:
    """Make ``spec.dest`` hold exactly ``children`` (name -> bytes) as one atomic snapshot.

    Stateless: unchanged children are recognised by reading the current files, and the replaced snapshot
    is deleted (no spare is kept for a next publish). A long-lived caller should keep a ``TreePublisher``
    instead, which remembers what it published, skips those reads and reuses the replaced snapshot.
    """
    publisher = TreePublisher(spec)
    publisher.state.keeps_spare = False
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
        raise tree_error(spec.dest, "updating its modification time", exc) from exc
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
        parent_fd = os.open(parent, DIR_FLAGS)
        try:
            remove_tree_at(parent_fd, name)
        finally:
            os.close(parent_fd)
    except OSError as exc:
        raise tree_error(dest, "removing the directory tree that the json file replaces", exc) from exc
    log.info("removed %r: the tree's format is now json", dest)
