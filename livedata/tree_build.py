"""A full build: a fresh snapshot directory holding the whole tree, when the spare cannot be reused.

Used first after a start, after another instance published, after a mode or owner change, or while there is
no spare. Unchanged children are hard links to the current snapshot's files, found by comparing bytes: with
what this publisher put there if it made the current snapshot, else by reading each file back. The replaced
snapshot becomes the spare (its content unknown: listed at its first reuse); a first snapshot gets one made of
hard links right after its switch.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from livedata import files
from livedata.tree_apply import TreeDir, fix_directory, remove_entry, seen
from livedata.tree_layout import changes_target, child_name_problem, current_snapshot, new_snapshot_name
from livedata.tree_plan import (
    BuildPlan,
    Published,
    PublisherState,
    Spare,
    Staged,
    Switched,
    plan_build,
    wanted_children,
)
from livedata.tree_spare import make_spare
from livedata.tree_tidy import place_links, tidy


def build(tree: TreeDir, state: PublisherState) -> Switched:
    """Publish the whole tree asked for (``state.published`` with ``state.pending`` applied) afresh."""
    try:
        current = current_snapshot(tree.fd)
    except OSError as exc:
        raise tree.error(exc) from exc
    wanted = wanted_children(state.published, state.pending or {})
    published, metadata = state.published, tree.spec.metadata
    trusted = published if published is not None and published.name == current else None
    if trusted is not None and trusted.metadata != metadata:
        trusted = None  # verify (and fix) every kept file's mode and owner
    stale = {known.name for known in (published, state.spare) if known is not None}
    try:
        old_fd = tree.open(current) if current else None
    except OSError as exc:
        raise tree.error(exc) from exc
    try:
        plan = plan_build(tree, old_fd, trusted, wanted)
        if current is not None and old_fd is not None and plan.changes_nothing():
            # Every file was checked (or is ours): trust them from now on; a spare of ours fits only our snapshot.
            links = trusted.links if trusted is not None else {}
            state.published = Published(current, metadata, wanted, plan.kept_inodes, links)
            if trusted is None:
                state.spare = None
            tidy(tree, current, set(wanted), links, state.spare.name if state.spare else None)
            return Switched(current, False, kept=len(plan.keep), metadata_fixed=plan.metadata_fixed)
        if old_fd is not None and state.staged is not None:
            discard_staged(tree, state)  # another instance published first: its snapshot is linked from
        snapshot = _switch(tree, state, old_fd, plan, wanted)
    finally:
        if old_fd is not None:
            os.close(old_fd)
    state.spare = None
    if current is not None and state.keeps_spare:
        state.spare = Spare(current, metadata, None)  # what it holds is listed at its first reuse
    stale -= {snapshot} if state.spare is None else {snapshot, current}
    assert state.published is not None
    spare = state.spare.name if state.spare is not None else None
    tidy(tree, snapshot, set(wanted), state.published.links, spare, frozenset(stale))
    return Switched(snapshot, True, tuple(sorted(plan.write)), tuple(sorted(plan.removed)), len(plan.keep),
                    plan.metadata_fixed)  # fmt: skip


def stage(tree: TreeDir, state: PublisherState, children: Mapping[str, bytes]) -> None:
    """Write ``children`` into the staged first snapshot (made now if need be; see ``TreePublisher.stage``)."""
    staged = state.staged
    if staged is None:
        if current_snapshot(tree.fd) is not None:
            state.staging_off = True  # a snapshot is there already: the build links what is unchanged in it
            return
        staged = state.staged = Staged(new_snapshot_name())
        files.note_in_flight(os.path.join(tree.dest, staged.name))  # until the build switches to it
        os.mkdir(staged.name, 0o700, dir_fd=tree.fd)
    fd = tree.open(staged.name)
    try:
        fix_directory(fd, tree.spec)
        for child, data in children.items():
            if child_name_problem(child) is None:
                staged.inodes[child] = tree.write_over(fd, child, data, child in staged.inodes)
                staged.data[child] = data
                if child not in staged.links:  # resolves once ..data first names the snapshot holding it
                    staged.links[child] = tree.make_link(child, False)
    finally:
        os.close(fd)


def discard_staged(tree: TreeDir, state: PublisherState) -> None:
    staged, state.staged, state.staging_off = state.staged, None, True
    if staged is not None:
        tree.discard(staged.name)
        files.forget_in_flight(os.path.join(tree.dest, staged.name))


def make_spare_after_build(tree: TreeDir, state: PublisherState) -> None:
    """A first snapshot has no predecessor to keep as the spare: make one (after the switch)."""
    if state.spare is None and state.keeps_spare and state.published is not None:
        state.spare = make_spare(tree, state.published, bool(state.fine))


def _switch(
    tree: TreeDir, state: PublisherState, old_fd: int | None, plan: BuildPlan, wanted: dict[str, bytes]
) -> str:
    """Build the new snapshot, make it durable and point ``..data`` at it; return its name."""
    staged, state.staged = state.staged, None
    with tree.new_snapshot(staged.name if staged is not None else None) as name:
        tree.step = "creating the snapshot directory"
        if staged is None:
            os.mkdir(name, 0o700, dir_fd=tree.fd)
        new_fd = tree.open(name)
        try:
            fix_directory(new_fd, tree.spec)
            if staged is not None:
                inodes = _fill_staged(tree, new_fd, staged, wanted)
            else:
                inodes = _fill(tree, new_fd, old_fd, plan, wanted)
            links = place_links(tree, wanted, staged.links if staged is not None else None)
            if staged is not None:
                links.update((child, inode) for child, inode in staged.links.items() if child in wanted)
            tree.flush(new_fd, plan.write)
            new_seen = seen(new_fd) if state.fine else None
        finally:
            os.close(new_fd)
        tree.switch(name, changes_target(name, None, 0, []))
    state.published = Published(name, tree.spec.metadata, wanted, inodes, links, new_seen)
    tree.make_switch_durable()
    return name


def _fill_staged(tree: TreeDir, new_fd: int, staged: Staged, wanted: dict[str, bytes]) -> dict[str, int]:
    """The staged directory holds what was read so far: rewrite what changed since, add the rest, drop the
    children gone; return child -> inode."""
    tree.step = "completing the staged snapshot"
    inodes: dict[str, int] = {}
    for child, data in wanted.items():
        held = staged.data.get(child)
        if held is not None and (held is data or held == data):
            inodes[child] = staged.inodes[child]
        else:
            inodes[child] = tree.write_over(new_fd, child, data, child in staged.inodes)
    for child in staged.inodes.keys() - wanted.keys():
        remove_entry(new_fd, child)
    return inodes


def _fill(tree: TreeDir, new_fd: int, old_fd: int | None, plan: BuildPlan, wanted: dict[str, bytes]) -> dict[str, int]:
    """Write the changed children and hard-link the kept ones; return child -> inode."""
    inodes: dict[str, int] = {}
    tree.step = "writing the changed children"
    for child in plan.write:
        inodes[child] = tree.create(new_fd, child, wanted[child])
    tree.step = "linking the unchanged children"
    for child in plan.keep:
        assert old_fd is not None, "only an existing snapshot has children to keep"
        os.link(child, child, src_dir_fd=old_fd, dst_dir_fd=new_fd, follow_symlinks=False)
    inodes.update(plan.kept_inodes)
    return inodes
