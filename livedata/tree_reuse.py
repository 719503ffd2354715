"""A publish through the spare, the hot path: rename it to a fresh snapshot name, bring it up to date, switch.

Its cost follows the children that changed in the last two publishes: the plan comes from the pending
changes, the spare's content from its bookkeeping (``livedata.tree_spare``), dest's visible names from the
ones this publisher left there, and the publisher's records are updated in place. Only when something else
changed a directory since our last look (its ctime moved), or timestamps are too coarse to tell, is that
directory listed.
"""
from __future__ import annotations

import errno
import os

from livedata.tree_apply import TreeDir, fix_directory, seen
from livedata.tree_layout import changes_target, current_snapshot
from livedata.tree_plan import Changes, Published, PublisherState, Spare, Switched, plan_changes
from livedata.tree_spare import Update, bring_up_to_date, left_behind, unchanged, verify
from livedata.tree_tidy import place_links, tidy, tidy_known


def reuse(tree: TreeDir, state: PublisherState) -> Switched | None:
    """Publish ``state.pending`` through the spare; None when this publisher cannot (build instead)."""
    try:
        current = current_snapshot(tree.fd)
    except OSError as exc:
        raise tree.error(exc) from exc
    published, spare, metadata = state.published, state.spare, tree.spec.metadata
    if (
        current is None or published is None or spare is None or published.name != current
        or spare.name == current or published.metadata != metadata or spare.metadata != metadata
    ):  # fmt: skip
        return None  # double buffering needs both snapshots known, made under the same metadata
    changes = plan_changes(published, state.pending or {})
    if not changes and _is_clean(tree, published):
        _tidy(tree, state, published, changes)
        return Switched(current, False, kept=len(published.data))
    # Changes, or something planted in the current snapshot: switch to a clean one, built from the spare.
    with tree.new_snapshot() as name:
        tree.step = "renaming the spare snapshot"
        try:
            trusted = unchanged(tree, spare)
            os.rename(spare.name, name, src_dir_fd=tree.fd, dst_dir_fd=tree.fd)
        except FileNotFoundError:
            state.spare = None
            return None
        state.spare = None  # from here on it is an unfinished snapshot: discarded if we fail
        try:
            new_fd = tree.open(name)
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            tree.discard(name)  # something planted at the spare's name, not our directory
            return None
        try:
            trusted = trusted and spare.seen is not None and os.fstat(new_fd).st_ino == spare.seen[0]
            fix_directory(new_fd, tree.spec)
            tree.step = "opening the current snapshot"
            current_fd = tree.open(current)
            try:
                update = bring_up_to_date(tree, new_fd, current_fd, spare, published, changes, state.pending or {},
                                          trusted)  # fmt: skip
            finally:
                os.close(current_fd)
            os.utime(new_fd)  # its mtime says when its content was made (TreeWatcher reports it)
            added = [child for child in changes.written if child not in published.data]
            links = place_links(tree, added, published.links)
            tree.flush(new_fd, update.written)
            new_seen = seen(new_fd) if state.fine else None
        finally:
            os.close(new_fd)
        count = len(published.data) + len(added) - len(changes.removed)
        told = sorted(changes.written | changes.removed | update.replaced)
        tree.switch(name, changes_target(name, current, count, told))
    _take(state, published, name, update, changes, links, new_seen)
    tree.make_switch_durable()
    _tidy(tree, state, published, changes)
    if not state.fine and state.spare is not None:
        verify(tree, state.spare, published)
    written = tuple(sorted(changes.written))
    return Switched(name, True, written, tuple(sorted(changes.removed)), len(published.data) - len(written))


def _take(
    state: PublisherState, published: Published, name: str, update: Update, changes: Changes,
    links: dict[str, int], new_seen: tuple[int, int] | None,
) -> None:
    """After the switch: the records follow, in place (a few entries); the replaced snapshot is the spare."""
    differs = left_behind(published, update)
    state.spare = Spare(published.name, published.metadata, differs, published.seen if state.fine else None)
    pending = state.pending or {}
    for child, inode in update.inodes.items():
        if inode is None:
            del published.inodes[child]
            del published.data[child]
        else:
            published.inodes[child] = inode
    for child in changes.written:
        data = pending[child]
        assert data is not None, "a written child has bytes"
        published.data[child] = data
    published.links.update(links)
    published.name, published.seen = name, new_seen


def _tidy(tree: TreeDir, state: PublisherState, published: Published, changes: Changes) -> None:
    """dest as we left it (its ctime says so): only the names that changed; else every entry."""
    if state.dest_seen is not None:
        tidy_known(tree, changes.removed, published.links, ())
    else:
        spare = state.spare.name if state.spare is not None else None
        tidy(tree, published.name, set(published.data), published.links, spare, thorough=bool(state.fine))


def _is_clean(tree: TreeDir, published: Published) -> bool:
    """Does the current snapshot hold exactly the files we put there? Its ctime, else a listing (no stat)."""
    try:
        fd = tree.open(published.name)
        try:
            if published.seen is not None and seen(fd) == published.seen:
                return True
            return {entry.name: entry.inode() for entry in os.scandir(fd)} == published.inodes
        finally:
            os.close(fd)
    except OSError as exc:
        raise tree.error(exc, "listing the current snapshot") from exc
