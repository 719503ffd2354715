"""dest's own entries besides the snapshots: one visible name per child, and nothing else that is not ours.

The writer owns dest: anything in it that livedata did not write (files, symlinks, directories) is removed,
and a visible name that is wrong is replaced. ``tidy`` lists dest and checks every entry; it runs after a full
build, at cleanup, and whenever dest's ctime says someone else changed it since our last publish. Otherwise a
publish knows dest holds what it left there, and ``tidy_known`` only adds and drops the names of the children
it added and removed. Debris of a killed run (unfinished snapshots, temporary symlinks) is removed once its
writer is gone, with the rule of ``livedata.files.cleanup_stale_temp_files``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from livedata import files
from livedata.tree_apply import TreeDir
from livedata.tree_layout import (
    CHANGES_LINK,
    DATA_LINK,
    child_name_problem,
    current_snapshot,
    link_target,
    snapshot_owner,
)

log = logging.getLogger("livedata.snapshots")


def place_links(tree: TreeDir, children: Iterable[str], known: dict[str, int] | None) -> dict[str, int]:
    """Make ``dest/<child>`` the symlink ``..data/<child>`` for each of ``children``; return child -> inode.

    ``known``: the links this publisher left in dest, trusted (only children without one get a name made);
    None to look at each name (a full build: the tidy after the switch checks every name anyway).
    """
    tree.step = "creating the visible names of new children"
    if known is not None:
        return {child: tree.make_link(child, False) for child in children if child not in known}
    wanted = set(children)
    entries = {entry.name: entry for entry in os.scandir(tree.fd) if entry.name in wanted}
    links: dict[str, int] = {}
    for child in wanted:
        entry = entries.get(child)
        if entry is not None and entry.is_symlink() and tree.readlink(child) == link_target(child):
            links[child] = entry.inode()
        else:
            links[child] = tree.make_link(child, entry is not None)
    return links


def tidy_known(tree: TreeDir, removed: Iterable[str], links: dict[str, int], stale: Iterable[str]) -> None:
    """dest as we left it: drop the visible names of removed children and the snapshots no longer needed."""
    for name in removed:
        links.pop(name, None)
        if tree.readlink(name) == link_target(name):
            tree.remove(name, "the visible name of a removed child", report=False)
    for name in stale:
        tree.remove(name, "a snapshot this publisher no longer needs", report=False)


def tidy(
    tree: TreeDir, snapshot: str, children: set[str], links: dict[str, int], spare: str | None,
    stale: frozenset[str] = frozenset(), thorough: bool = False,
) -> None:
    """Make dest's entries match ``snapshot``: exactly one correct visible name per child, and nothing
    else but ``..data``, ``..changes``, ``snapshot``, the spare and what live writers are still building.

    ``links`` are the visible names we made (updated with repairs); ``stale`` are snapshots this publisher
    made or kept and no longer needs (removed without being reported). Unless ``thorough`` (someone else
    changed dest since we made them), names whose inode is that of the link we made are trusted; only the
    other entries are looked at one by one.
    Failures are logged: the snapshot is in place, and the next publish or cleanup tries again.
    """
    try:
        listing = list(os.scandir(tree.fd))
    except OSError as exc:
        log.warning("cannot list tree %r to tidy it: %s", tree.dest, exc.strerror or exc)
        return
    symlinks = {entry.name: entry.inode() for entry in listing if entry.is_symlink()}  # d_type: no stat
    # An inode number is reused as soon as it is freed: a name replaced since our last look may have ours.
    trusted = set() if thorough else {name for name, _inode in symlinks.items() & links.items()} & children
    entries = {entry.name: entry for entry in listing}
    missing = children - entries.keys()
    for name in entries.keys() - trusted:
        entry = entries[name]
        if name in children:
            if not entry.is_symlink() or tree.readlink(name) != link_target(name):
                _repair_link(tree, name, True, links)
            else:
                links[name] = entry.inode()
            continue
        reason, report = _removal_reason(tree, entry, snapshot, spare, stale)
        if reason is not None:
            tree.remove(name, reason, report)
    for name in sorted(missing):
        _repair_link(tree, name, False, links)


def repair(tree: TreeDir, spare: str | None) -> list[str]:
    """cleanup(): make dest consistent with its current snapshot, whatever a killed run left."""
    try:
        current = current_snapshot(tree.fd)
    except OSError as exc:
        log.warning("cannot read the current snapshot of %r: %s", tree.dest, exc.strerror or exc)
        return []
    children: set[str] = set()
    if current is not None:
        try:
            snapshot_fd = tree.open(current)
            try:
                children = {entry.name for entry in os.scandir(snapshot_fd)
                            if entry.is_file(follow_symlinks=False) and child_name_problem(entry.name) is None}
            finally:
                os.close(snapshot_fd)
        except OSError as exc:
            log.warning("cannot list the current snapshot of %r: %s", tree.dest, exc.strerror or exc)
            return []
    tidy(tree, current or "", children, {}, spare)
    return tree.cleaned


def _removal_reason(
    tree: TreeDir, entry: os.DirEntry[str], snapshot: str, spare: str | None, stale: frozenset[str]
) -> tuple[str | None, bool]:
    """Why an entry of dest that is not a child's visible name must go (None: keep it), and whether
    the caller should hear of it (debris and foreign entries) or not (our own routine removals)."""
    name = entry.name
    if name in (DATA_LINK, CHANGES_LINK, snapshot, spare):
        return None, False
    owner = snapshot_owner(name)
    if owner is not None:
        if name in stale:
            return "a snapshot this publisher no longer needs", False
        gone = files.writer_is_gone(os.path.join(tree.dest, name), owner)
        if owner == os.getpid() and gone:
            return "a snapshot kept by an earlier publisher of this process", False
        if gone:
            return "a snapshot left by a writer that is gone", True
        return None, False  # another live instance's spare (or current, as it believes)
    pid = files.temp_pid(name)
    if pid is not None:
        if files.writer_is_gone(os.path.join(tree.dest, name), pid):
            return "a temporary file left by a writer that is gone", True
        return None, False
    if child_name_problem(name) is None and entry.is_symlink() and tree.readlink(name) == link_target(name):
        return "the visible name of a removed child", False
    return "an entry livedata did not write (livedata owns this directory)", True


def _repair_link(tree: TreeDir, name: str, exists: bool, links: dict[str, int]) -> None:
    try:
        links[name] = tree.make_link(name, exists)
    except OSError as exc:
        log.warning("cannot repair %r: %s", os.path.join(tree.dest, name), exc.strerror or exc)
