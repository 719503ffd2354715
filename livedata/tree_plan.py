"""Planning what a tree publish changes, from what changed: never from the whole tree on the hot path.

A publisher remembers the snapshot it put in place (``Published``: each child's bytes, file inode and visible
name's inode) and the children asked for since (``pending``: name -> bytes, or None for a child gone). A
publish then only looks at the pending names: ``plan_changes`` sorts them into written and removed, dropping
those that end where they started. Only a full build (the first publish, or after another instance published)
looks at every child, with ``plan_build``, which reads the current snapshot back unless this publisher made it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from livedata import files
from livedata.tree_apply import Seen, TreeDir, fix_directory
from livedata.tree_errors import ChildNameError, tree_error
from livedata.tree_layout import DEFAULT_NAME_MAX, READ_FLAGS, Metadata, child_name_problem


@dataclass
class Published:
    """The snapshot this publisher last put in place, trusted instead of read back. Updated in place by each
    switch (a few entries), so its cost follows the change, not the tree."""

    name: str
    metadata: Metadata
    data: dict[str, bytes]  # child -> bytes
    inodes: dict[str, int]  # child -> inode of its file in the snapshot
    links: dict[str, int] = field(default_factory=dict)  # child -> inode of its visible symlink in dest
    seen: Seen | None = None  # the snapshot directory after our last change to it (see tree_apply.seen)


@dataclass
class Changes:
    """What one publish changes relative to the published snapshot."""

    written: set[str] = field(default_factory=set)  # added or changed: new files
    removed: set[str] = field(default_factory=set)  # gone from the tree

    def __bool__(self) -> bool:
        return bool(self.written or self.removed)


# child -> (inode of its entry in the spare, None: no entry; bytes it holds, None: unknown)
Differs = Dict[str, Tuple[Optional[int], Optional[bytes]]]


@dataclass
class Spare:
    """The snapshot before the current one, kept for reuse (see ``livedata.tree_spare``)."""

    name: str
    metadata: Metadata
    differs: Differs | None = field(default_factory=dict)  # how it differs from the current one; None: unknown
    seen: Seen | None = None  # its directory as we left it, if trusted: while the same, nothing changed in it


@dataclass
class Staged:
    """A first snapshot written ahead while its children are still being read (``TreePublisher.stage``): the
    full build that follows switches to it, rewriting only the children whose bytes changed since."""

    name: str
    data: dict[str, bytes] = field(default_factory=dict)
    inodes: dict[str, int] = field(default_factory=dict)
    links: dict[str, int] = field(default_factory=dict)  # visible names made ahead (dangling: no ..data yet)


@dataclass
class PublisherState:
    """What a TreePublisher remembers between publishes."""

    published: Published | None = None  # the current snapshot, as this publisher put it in place
    spare: Spare | None = None  # the snapshot before, to be reused
    pending: dict[str, bytes | None] | None = None  # children asked for since (None: gone), not yet published
    keeps_spare: bool = True  # False for the stateless ``publish``: nobody would reuse it
    fine: bool | None = None  # does dest's file system stamp every change apart? (tree_apply.fine_timestamps)
    dest_seen: Seen | None = None  # dest after our last change to it, if fine: while the same, as we left it
    staged: Staged | None = None  # a first snapshot being written ahead (no snapshot in dest yet)
    staging_off: bool = False  # dest had a snapshot already, or staging failed: the build does it all


@dataclass(frozen=True)
class Switched:
    """What one publish did to the snapshots (TreeOutcome without what the publisher adds)."""

    snapshot: str
    switched: bool
    written: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    kept: int = 0
    metadata_fixed: bool = False


def check_names(
    tree: TreeDir, changes: Mapping[str, bytes | None], known: Mapping[str, bytes]
) -> tuple[dict[str, bytes | None], tuple[ChildNameError, ...]]:
    """Names already published are known to be safe: only new ones are checked."""
    wanted = dict(changes)
    unknown = [name for name in wanted if name not in known]  # (keys() - keys() would walk all of ``known``)
    if not unknown:
        return wanted, ()
    try:
        name_max = os.fpathconf(tree.fd, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = DEFAULT_NAME_MAX
    skipped: list[ChildNameError] = []
    for name in unknown:
        problem = child_name_problem(name, name_max)
        if problem is not None:
            del wanted[name]
            if changes[name] is not None:
                skipped.append(ChildNameError(tree.dest, repr(name) if not isinstance(name, str) else name, problem))
    return wanted, tuple(sorted(skipped, key=lambda error: error.child))


def differences(children: Mapping[str, bytes], known: Mapping[str, bytes]) -> dict[str, bytes | None]:
    """What turns ``known`` into ``children``: {name: new bytes, or None if gone}. For callers that hand over a
    whole tree: dict views compare in C (bytes cache their hash, objects handed in again compare by identity
    first); a loop for unhashable buffers."""
    try:
        changed = {name: data for name, data in children.items() - known.items()}
    except TypeError:
        changed = {name: data for name, data in children.items() if name not in known or known[name] != data}
    gone: dict[str, bytes | None] = dict.fromkeys(known.keys() - children.keys())
    return {**changed, **gone}


def plan_changes(published: Published, pending: Mapping[str, bytes | None]) -> Changes:
    """Sort the pending names into written and removed; those back where they were are dropped."""
    changes = Changes()
    data = published.data
    for name, wanted in pending.items():
        if wanted is None:
            if name in data:
                changes.removed.add(name)
        else:
            old = data.get(name)
            if old is None or (old is not wanted and old != wanted):
                changes.written.add(name)
    return changes


def wanted_children(published: Published | None, pending: Mapping[str, bytes | None]) -> dict[str, bytes]:
    """The whole tree asked for (for a full build): the published children with the pending changes applied."""
    wanted = dict(published.data) if published is not None else {}
    for name, data in pending.items():
        if data is None:
            wanted.pop(name, None)
        else:
            wanted[name] = data
    return wanted


# ------------------------------------------------------------------------------------------- full builds


@dataclass
class BuildPlan:
    keep: list[str] = field(default_factory=list)
    kept_inodes: dict[str, int] = field(default_factory=dict)
    write: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    dirty: bool = False  # the current snapshot holds something it should not
    metadata_fixed: bool = False
    old_inodes: dict[str, int] = field(default_factory=dict)  # the current snapshot's regular files

    def changes_nothing(self) -> bool:
        return not (self.write or self.removed or self.dirty)


def plan_build(
    tree: TreeDir, old_fd: int | None, trusted: Published | None, wanted: dict[str, bytes]
) -> BuildPlan:
    """Sort children into kept (hard link) and written; note removed ones and foreign content.

    ``trusted`` is what this publisher knows the current snapshot holds (None: read each file to compare).
    """
    plan = BuildPlan()
    if old_fd is None:
        plan.write = list(wanted)
        return plan
    try:
        fix_directory(old_fd, tree.spec)
    except OSError as exc:
        raise tree.error(exc, "setting the snapshot directory's mode and ownership") from exc
    try:
        entries = {entry.name: entry for entry in os.scandir(old_fd)}
    except OSError as exc:
        raise tree.error(exc) from exc
    for name, data in wanted.items():
        entry = entries.pop(name, None)
        is_file = entry is not None and entry.is_file(follow_symlinks=False)
        if entry is not None and is_file:
            plan.old_inodes[name] = entry.inode()
        if entry is None or not is_file:
            plan.dirty |= entry is not None
            plan.write.append(name)
        elif _same(trusted, name, entry.inode(), data) if trusted else _verify(tree, old_fd, name, data, plan):
            plan.keep.append(name)
            plan.kept_inodes[name] = entry.inode()
        else:
            plan.write.append(name)
    for name, entry in entries.items():
        if child_name_problem(name) is None:
            if entry.is_file(follow_symlinks=False):
                plan.old_inodes[name] = entry.inode()
            plan.removed.append(name)
        else:
            plan.dirty = True  # something we did not write; it goes with the old snapshot
    return plan


def _same(published: Published | None, name: str, inode: int, data: bytes) -> bool:
    if published is None or published.inodes.get(name) != inode:
        return False
    old = published.data.get(name)
    return old is data or old == data


def _verify(tree: TreeDir, old_fd: int, name: str, data: bytes, plan: BuildPlan) -> bool:
    """Does the old snapshot's file hold exactly ``data``? If so, fix its mode and owner in place."""
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=old_fd)
    except OSError:
        return False
    try:
        if not files.holds(fd, data):
            return False
        plan.metadata_fixed |= files.fix_metadata(fd, tree.spec.child(name))
        return True
    except OSError as exc:
        raise tree_error(tree.spec.child(name).path, "checking the current file", exc) from exc
    finally:
        os.close(fd)
