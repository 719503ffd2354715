"""Tests for livedata.snapshots on the real filesystem: layout, atomic switches, hostile input, crashes, scale.

No ZooKeeper is needed: the publisher is given the children directly. Runs as root (chown to nobody/nogroup).
"""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from livedata import files, snapshots
from livedata.files import FileWriteError, Outcome, is_temp_name
from livedata.snapshots import (
    DATA_LINK,
    TreeOutcome,
    TreePublisher,
    TreeRenderError,
    TreeSpec,
    TreeWriteError,
    child_name_problem,
    cleanup,
    is_snapshot_name,
    publish,
    publish_json,
    render_json,
    touch,
)
from livedata.testing.zookeeper import wait_for
from livedata.tree_layout import CHANGES_LINK
from livedata.tree_watcher import TreeWatcher
from tests.tree_publisher_process import consistency_problem, generation

NOBODY = 65534
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="these tests chown to nobody: run as root")


# ------------------------------------------------------------------------------------------------ helpers


def read_tree(dest: str) -> dict[str, bytes]:
    """The documented reader protocol: resolve ..data once, read through it, retry if it moved meanwhile."""
    for _attempt in range(100):
        snapshot = os.readlink(os.path.join(dest, DATA_LINK))
        directory = os.path.join(dest, snapshot)
        try:
            children = {}
            for name in os.listdir(directory):
                with open(os.path.join(directory, name), "rb") as f:
                    children[name] = f.read()
        except FileNotFoundError:
            continue
        if os.readlink(os.path.join(dest, DATA_LINK)) == snapshot:
            return children
    raise AssertionError("the tree kept switching under the reader")


def inodes(dest: str) -> dict[str, int]:
    snapshot = os.path.join(dest, DATA_LINK)
    return {name: os.lstat(os.path.join(snapshot, name)).st_ino for name in os.listdir(snapshot)}


def spares(dest: str) -> list[str]:
    """Snapshot directories that ``..data`` does not name: a publisher's spare (reused by its next publish)."""
    current = os.readlink(os.path.join(dest, DATA_LINK))
    return [name for name in os.listdir(dest) if is_snapshot_name(name) and name != current]


def assert_clean(dest: str, children: dict[str, bytes]) -> None:
    """dest holds exactly ..data, ..changes, the snapshot it names, at most one spare snapshot, and one correct visible
    symlink per child."""
    snapshot = os.readlink(os.path.join(dest, DATA_LINK))
    assert is_snapshot_name(snapshot)
    spare = spares(dest)
    assert len(spare) <= 1, spare
    assert sorted(os.listdir(dest)) == sorted([DATA_LINK, CHANGES_LINK, snapshot, *spare, *children])
    assert os.readlink(os.path.join(dest, CHANGES_LINK)).startswith(f"{snapshot}/"), "..changes describes ..data"
    for name, data in children.items():
        visible = os.path.join(dest, name)
        assert os.readlink(visible) == f"{DATA_LINK}/{name}"
        assert stat.S_ISREG(os.lstat(os.path.join(dest, snapshot, name)).st_mode)
        with open(visible, "rb") as f:
            assert f.read() == data
    assert sorted(os.listdir(os.path.join(dest, snapshot))) == sorted(children)


@pytest.fixture
def spec(tmp_path: Path) -> TreeSpec:
    return TreeSpec(os.path.join(tmp_path, "tree"), 0o444)


@pytest.fixture(params=["fine", "coarse"])
def timestamps(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a publisher knows its directories hold what it left: their ctime alone (file systems whose
    timestamps tell every change apart), or listings after each switch (coarse timestamps)."""
    if request.param == "coarse":
        monkeypatch.setattr(snapshots, "_probe", lambda tree: False)
    return str(request.param)


# ---------------------------------------------------------------------------------------------- content


@pytest.mark.timeout(30)
def test_children_added_changed_deleted_and_all_deleted(spec: TreeSpec) -> None:
    publisher = TreePublisher(spec)
    steps: list[dict[str, bytes]] = [
        {"a": b"1", "b": b"2"},
        {"a": b"1", "b": b"2", "c": b"3"},  # added
        {"a": b"1", "b": b"two", "c": b"3"},  # changed
        {"a": b"1", "c": b"3"},  # deleted
        {},  # all deleted: an empty snapshot
        {"a": bytes(range(256)), "e": b""},  # binary and empty children, back from empty
    ]
    for children in steps:
        publisher.publish(children)
        assert read_tree(spec.dest) == children
        assert_clean(spec.dest, children)


@pytest.mark.timeout(30)
def test_outcome_says_what_changed(spec: TreeSpec) -> None:
    publisher = TreePublisher(spec)
    first = publisher.publish({"a": b"1", "b": b"2"})
    assert first.switched and first.written == ("a", "b") and first.kept == 0
    second = publisher.publish({"a": b"1", "c": b"3"})
    assert second == TreeOutcome(second.snapshot, True, written=("c",), removed=("b",), kept=1)
    assert second.snapshot != first.snapshot and os.readlink(os.path.join(spec.dest, DATA_LINK)) == second.snapshot


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fresh", [False, True], ids=["same-publisher", "after-restart"])
def test_unchanged_child_is_hard_linked_not_rewritten(spec: TreeSpec, fresh: bool) -> None:
    publisher = TreePublisher(spec)
    publisher.publish({"same": b"unchanged", "other": b"1"})
    before = os.stat(os.path.join(spec.dest, "same"))
    if fresh:
        publisher = TreePublisher(spec)  # a restarted daemon knows nothing and reads the files back
    outcome = publisher.publish({"same": b"unchanged", "other": b"2"})
    after = os.stat(os.path.join(spec.dest, "same"))
    assert outcome.switched and outcome.written == ("other",) and outcome.kept == 1
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)


@pytest.mark.timeout(30)
def test_identical_children_switch_nothing(spec: TreeSpec) -> None:
    first = publish(spec, {"a": b"1"})
    again = publish(spec, {"a": b"1"})  # stateless: compares with the files
    assert not again.switched and again.snapshot == first.snapshot and again.kept == 1


@pytest.mark.timeout(60)
def test_ten_thousand_children_then_one_change_writes_one_file(spec: TreeSpec) -> None:
    publisher = TreePublisher(spec)
    children = {f"child{i:05d}": f"value {i}".encode() for i in range(10_000)}
    publisher.publish(children)
    before = inodes(spec.dest)
    children["child04242"] = b"changed"
    outcome = publisher.publish(children)
    after = inodes(spec.dest)
    assert outcome.written == ("child04242",) and outcome.kept == 9_999
    assert [name for name in after if after[name] != before[name]] == ["child04242"]
    assert read_tree(spec.dest) == children


# -------------------------------------------------------------------------------------- double buffering


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("timestamps")
def test_random_changes_through_the_spare_read_back_exactly_and_keep_unchanged_inodes(spec: TreeSpec) -> None:
    """Model check of the spare's reuse: changes, additions, removals and changes undone, 300 publishes."""
    rng = random.Random(2026)
    publisher = TreePublisher(spec)
    values = [b"", b"a", b"bb", b"ccc", bytes(range(256))]
    children = {f"n{i:02d}": rng.choice(values) for i in range(20)}
    publisher.publish(children)
    for _step in range(300):
        before, previous = inodes(spec.dest), dict(children)
        for _change in range(rng.choice([1, 1, 1, 2, 5])):
            name = f"n{rng.randrange(30):02d}"
            if name in children and rng.random() < 0.3:
                del children[name]
            else:
                children[name] = rng.choice(values)
        current = os.readlink(os.path.join(spec.dest, DATA_LINK))
        (spare,) = [os.lstat(os.path.join(spec.dest, name)).st_ino for name in spares(spec.dest)]
        outcome = publisher.publish(dict(children))
        written = tuple(sorted(name for name in children if previous.get(name) != children[name]))
        assert (outcome.written, outcome.removed) == (written, tuple(sorted(previous.keys() - children.keys())))
        assert outcome.switched == bool(outcome.written or outcome.removed)
        assert read_tree(spec.dest) == children
        assert_clean(spec.dest, children)
        after = inodes(spec.dest)
        assert [name for name in children if previous.get(name) == children[name] and after[name] != before[name]] == []
        if outcome.switched:
            assert spares(spec.dest) == [current], "the replaced snapshot is the spare"
            assert os.stat(os.path.join(spec.dest, DATA_LINK)).st_ino == spare, "the spare was reused"


@pytest.mark.timeout(90)
@pytest.mark.usefixtures("timestamps")
def test_three_thousand_children_follow_changes_handed_over_alone_and_readers_parse_only_those(spec: TreeSpec) -> None:
    """The daemon's path: publish_changes gets only what changed; TreeWatcher, told by ..changes, reads and
    parses only those children, and still serves exactly the tree, sorted; a file planted in the current
    snapshot is in neither the next snapshot nor what the reader serves."""
    rng = random.Random(23)
    publisher = TreePublisher(spec)
    children = {f"c{i:05d}": f"v0-{i}".encode() for i in range(3000)}
    publisher.publish(children)
    parsed: list[bytes] = []

    def parse(f: IO[bytes]) -> bytes:
        parsed.append(f.read())
        return parsed[-1]

    watcher = TreeWatcher(spec.dest, parse, binary=True)
    for turn in range(1, 16):
        changes: dict[str, bytes | None] = {name: f"v{turn}".encode() for name in rng.sample(sorted(children), 4)}
        changes.update(dict.fromkeys(rng.sample(sorted(children.keys() - changes.keys()), 2)))
        changes[f"new{turn:02d}"] = b"new"
        for name, data in changes.items():
            if data is None:
                del children[name]
            else:
                children[name] = data
        parsed.clear()
        outcome = publisher.publish_changes(changes)
        assert outcome.switched and len(outcome.written) == 5 and len(outcome.removed) == 2
        data = watcher.get_data()
        assert dict(data) == children and list(data) == sorted(children)
        assert len(parsed) == 5, "only the children written were read and parsed"
    current = os.path.join(spec.dest, os.readlink(os.path.join(spec.dest, DATA_LINK)))
    with open(os.path.join(current, "planted"), "wb") as f:
        f.write(b"x")
    publisher.publish_changes({"c00000": b"last"})
    children["c00000"] = b"last"
    assert dict(watcher.get_data()) == children
    assert read_tree(spec.dest) == children
    assert_clean(spec.dest, children)


@pytest.mark.timeout(60)
def test_a_first_tree_written_ahead_switches_with_exactly_the_children_asked_for(spec: TreeSpec) -> None:
    """stage() writes children while the rest of a first tree is read: the first publish switches to that
    directory, keeping staged files whose bytes still hold, rewriting changed ones, dropping children gone."""
    publisher = TreePublisher(spec)
    publisher.stage({f"c{i:04d}": b"early" for i in range(2500)})
    publisher.stage({"c0001": b"changed early", "..bad": b"x", "late": b"1"})
    staged = [name for name in os.listdir(spec.dest) if is_snapshot_name(name)]
    assert len(staged) == 1 and not os.path.lexists(os.path.join(spec.dest, DATA_LINK)), "nothing visible yet"
    kept_inode = os.stat(os.path.join(spec.dest, staged[0], "c0002")).st_ino
    children = {f"c{i:04d}": b"early" for i in range(2, 2500)}
    children.update({"c0001": b"final", "late": b"1", "fresh": b"2"})
    outcome = publisher.publish(children)
    assert outcome.snapshot == staged[0] and outcome.switched
    assert read_tree(spec.dest) == children
    assert os.stat(os.path.join(spec.dest, "c0002")).st_ino == kept_inode, "a staged file is not rewritten"
    assert_clean(spec.dest, children)
    publisher.stage({"c0002": b"too late"})  # once a snapshot is published, staging does nothing
    assert read_tree(spec.dest) == children and len(spares(spec.dest)) == 1


@pytest.mark.timeout(60)
def test_a_one_child_change_touches_only_that_child(spec: TreeSpec) -> None:
    """Unchanged children keep inode and ctime: no link count moves, so a FileWatcher does not even re-read."""
    publisher = TreePublisher(spec)
    children = {f"c{i:04d}": b"same" for i in range(2000)}
    publisher.publish(children)
    for value in (b"one", b"two", b"three"):  # the second and third reuse spares that differ by one child
        before = os.stat(os.path.join(spec.dest, "c0999"))
        children["c0000"] = value
        outcome = publisher.publish(children)
        after = os.stat(os.path.join(spec.dest, "c0999"))
        assert outcome.written == ("c0000",) and outcome.kept == 1999
        assert (after.st_ino, after.st_ctime_ns, after.st_nlink) == (before.st_ino, before.st_ctime_ns, 2)
    assert read_tree(spec.dest) == children


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("timestamps")
def test_entries_planted_in_the_spare_never_become_visible(tmp_path: Path, spec: TreeSpec) -> None:
    outside = os.path.join(tmp_path, "outside")
    os.mkdir(outside)
    with open(os.path.join(outside, "precious"), "wb") as f:
        f.write(b"keep")
    publisher = TreePublisher(spec)
    publisher.publish({"a": b"1", "b": b"1"})
    publisher.publish({"a": b"1", "b": b"2"})
    (spare,) = spares(spec.dest)
    spare = os.path.join(spec.dest, spare)
    with open(os.path.join(spare, "intruder"), "w") as f:
        f.write("x")
    os.makedirs(os.path.join(spare, "subdir", "deeper"))
    os.unlink(os.path.join(spare, "a"))
    os.symlink(os.path.join(outside, "precious"), os.path.join(spare, "a"))  # a child's name, as a symlink
    outcome = publisher.publish({"a": b"1", "b": b"3"})
    assert outcome.written == ("b",)
    assert read_tree(spec.dest) == {"a": b"1", "b": b"3"}
    assert_clean(spec.dest, {"a": b"1", "b": b"3"})
    assert os.listdir(outside) == ["precious"] and stat.S_IMODE(os.stat(outside + "/precious").st_mode) != 0o444
    with open(os.path.join(outside, "precious"), "rb") as f:
        assert f.read() == b"keep"


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("timestamps")
def test_a_spare_checked_after_the_switch_still_notices_what_is_planted_later(spec: TreeSpec) -> None:
    """The spare is listed after the switch that made it the spare; the next publish only compares its
    directory's ctime, which any entry planted since moves."""
    publisher = TreePublisher(spec)
    publisher.publish({"a": b"1", "b": b"1"})
    first = os.path.join(spec.dest, os.readlink(os.path.join(spec.dest, DATA_LINK)))
    # The listing counts only a timestamp tick (20 ms) after the directory's last change.
    wait_for(lambda: time.time_ns() - os.stat(first).st_ctime_ns > 30_000_000, 5, "the snapshot to age a tick")
    publisher.publish({"a": b"1", "b": b"2"})
    spare = publisher.state.spare
    assert spare is not None and spare.seen is not None, "the spare is known as left"
    with open(os.path.join(first, "intruder"), "w") as f:
        f.write("x")
    os.unlink(os.path.join(first, "a"))
    os.symlink("/etc/passwd", os.path.join(first, "a"))
    publisher.publish({"a": b"1", "b": b"3"})
    assert read_tree(spec.dest) == {"a": b"1", "b": b"3"}
    assert_clean(spec.dest, {"a": b"1", "b": b"3"})


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("timestamps")
def test_a_file_replaced_in_the_current_snapshot_is_not_linked_into_the_next(spec: TreeSpec) -> None:
    publisher = TreePublisher(spec)
    publisher.publish({"a": b"1", "b": b"1"})
    publisher.publish({"a": b"2", "b": b"1"})  # the spare still holds a's old file: the next publish links a
    current = os.path.join(spec.dest, os.readlink(os.path.join(spec.dest, DATA_LINK)))
    os.unlink(os.path.join(current, "a"))
    with open(os.path.join(current, "a"), "wb") as f:
        f.write(b"evil")
    publisher.publish({"a": b"2", "b": b"2"})
    assert read_tree(spec.dest) == {"a": b"2", "b": b"2"}
    assert_clean(spec.dest, {"a": b"2", "b": b"2"})


@pytest.mark.timeout(30)
def test_a_spare_removed_behind_the_publishers_back_is_rebuilt(spec: TreeSpec) -> None:
    publisher = TreePublisher(spec)
    publisher.publish({"a": b"1", "b": b"1"})
    for value in (b"2", b"3"):
        (spare,) = spares(spec.dest)
        subprocess.run(["rm", "-rf", os.path.join(spec.dest, spare)], check=True)
        outcome = publisher.publish({"a": b"1", "b": value})
        assert outcome.switched and outcome.written == ("b",) and outcome.kept == 1
        assert_clean(spec.dest, {"a": b"1", "b": value})
        assert len(spares(spec.dest)) == 1


@pytest.mark.timeout(30)
def test_a_file_held_open_keeps_its_bytes_when_its_snapshot_is_reused(spec: TreeSpec) -> None:
    publisher = TreePublisher(spec)
    publisher.publish({"a": b"old"})
    with open(os.path.join(spec.dest, "a"), "rb") as held:
        publisher.publish({"a": b"new"})
        publisher.publish({"a": b"newer"})  # reuses the directory the held file was opened in
        publisher.publish({})
        assert held.read() == b"old"
    assert read_tree(spec.dest) == {}


@pytest.mark.timeout(30)
def test_a_metadata_change_reaches_every_file_of_later_snapshots(tmp_path: Path) -> None:
    dest = os.path.join(tmp_path, "tree")
    publisher = TreePublisher(TreeSpec(dest, 0o444))
    for value in (b"1", b"2", b"3"):
        publisher.publish({"a": b"same", "b": value, "c": value})
    publisher.spec = TreeSpec(dest, 0o440, NOBODY, NOBODY)
    for value in (b"2", b"4", b"5"):  # b changes back to what the spare holds, then on
        publisher.publish({"a": b"same", "b": value, "c": b"3"})
        snapshot = os.path.join(dest, os.readlink(os.path.join(dest, DATA_LINK)))
        for path in [snapshot] + [os.path.join(snapshot, name) for name in os.listdir(snapshot)]:
            status = os.lstat(path)
            assert (status.st_uid, status.st_gid) == (NOBODY, NOBODY), path
            assert stat.S_IMODE(status.st_mode) == (0o750 if path == snapshot else 0o440), path


@pytest.mark.timeout(30)
def test_the_stateless_publish_keeps_no_spare(spec: TreeSpec) -> None:
    publish(spec, {"a": b"1"})
    publish(spec, {"a": b"2"})
    assert spares(spec.dest) == []
    publisher = TreePublisher(spec)
    publisher.publish({"a": b"3"})
    assert len(spares(spec.dest)) == 1
    assert publisher.cleanup() == [] and len(spares(spec.dest)) == 1, "the publisher's own spare stays"
    assert cleanup(spec) == [] and spares(spec.dest) == [], "another publisher of this process: removed quietly"
    assert publisher.publish({"a": b"4"}).written == ("a",)
    assert_clean(spec.dest, {"a": b"4"})


# -------------------------------------------------------------------------------------------- metadata


@pytest.mark.timeout(30)
def test_owner_group_and_mode_apply_to_files_and_directories(tmp_path: Path) -> None:
    spec = TreeSpec(os.path.join(tmp_path, "a", "tree"), 0o440, NOBODY, NOBODY)
    publish(spec, {"x": b"1"})
    snapshot = os.path.join(spec.dest, os.readlink(os.path.join(spec.dest, DATA_LINK)))
    for path, mode in [(spec.dest, 0o750), (snapshot, 0o750), (os.path.join(snapshot, "x"), 0o440)]:
        status = os.lstat(path)
        assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (NOBODY, NOBODY, mode), path
    assert stat.S_IMODE(os.stat(os.path.join(tmp_path, "a")).st_mode) == 0o755  # parents: traversable


@pytest.mark.timeout(30)
def test_changed_mode_and_owner_are_fixed_in_place(tmp_path: Path) -> None:
    dest = os.path.join(tmp_path, "tree")
    publisher = TreePublisher(TreeSpec(dest, 0o444))
    publisher.publish({"x": b"1"})
    inode = os.stat(os.path.join(dest, "x")).st_ino
    publisher.spec = TreeSpec(dest, 0o400, NOBODY, 0)
    outcome = publisher.publish({"x": b"1"})
    status = os.stat(os.path.join(dest, "x"))
    assert outcome.metadata_fixed and not outcome.switched
    assert (status.st_ino, status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (inode, NOBODY, 0, 0o400)
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o700


@pytest.mark.timeout(30)
def test_files_are_exact_whatever_the_umask(spec: TreeSpec) -> None:
    old = os.umask(0o077)
    try:
        publish(spec, {"x": b"1"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(os.path.join(spec.dest, "x")).st_mode) == 0o444
    assert stat.S_IMODE(os.stat(spec.dest).st_mode) == 0o755


# ------------------------------------------------------------------------------------------ hostile input


HOSTILE = [
    ".hidden", DATA_LINK, "..", ".", "", "a/b", "../escape", "/abs", "nul\0byte", "tab\tname", "del\x7f",
    "x" * 256, "é" * 128, "\ud800surrogate", "private\ue000", "\uffff",
]
FINE = ["plain", "with space", "é" * 127, "x" * 255, "日本語", "dash-dot.ext", "UPPER_lower"]


@pytest.mark.timeout(30)
def test_hostile_names_are_skipped_with_one_error_each(tmp_path: Path) -> None:
    spec = TreeSpec(os.path.join(tmp_path, "tree"), 0o444)
    children = {name: name.encode("utf-8", "surrogatepass") for name in HOSTILE + FINE}
    outcome = publish(spec, children)
    assert sorted(error.child for error in outcome.skipped) == sorted(HOSTILE)
    for error in outcome.skipped:
        assert "\n" not in str(error) and spec.dest in str(error)
    assert read_tree(spec.dest) == {name: name.encode() for name in FINE}
    assert sorted(os.listdir(tmp_path)) == ["tree"], "nothing may be written outside dest"


def test_child_name_rules() -> None:
    assert child_name_problem("ok") is None
    assert "leading '.'" in str(child_name_problem(".x"))
    assert "255" in str(child_name_problem("x" * 256))
    assert "'/'" in str(child_name_problem("a/b"))
    assert child_name_problem(b"bytes") is not None


@pytest.mark.timeout(30)
def test_planted_symlinks_are_replaced_never_followed(tmp_path: Path, spec: TreeSpec) -> None:
    outside = os.path.join(tmp_path, "outside")
    os.mkdir(outside)
    with open(os.path.join(outside, "precious"), "wb") as f:
        f.write(b"keep")
    precious = os.stat(os.path.join(outside, "precious"))
    os.makedirs(spec.dest)
    os.symlink(os.path.join(outside, "precious"), os.path.join(spec.dest, "a"))  # a child's name
    os.symlink(os.path.join(outside, "new"), os.path.join(spec.dest, "b"))  # a dangling one
    os.symlink(outside, os.path.join(spec.dest, DATA_LINK))  # the switch itself
    publish(spec, {"a": b"1", "b": b"2"})
    assert_clean(spec.dest, {"a": b"1", "b": b"2"})
    assert sorted(os.listdir(outside)) == ["precious"]
    with open(os.path.join(outside, "precious"), "rb") as f:
        assert f.read() == b"keep"
    # Inside the current snapshot too: the next publish does not link through it.
    snapshot = os.path.join(spec.dest, os.readlink(os.path.join(spec.dest, DATA_LINK)))
    os.unlink(os.path.join(snapshot, "a"))
    os.symlink(os.path.join(outside, "precious"), os.path.join(snapshot, "a"))
    publish(spec, {"a": b"1", "b": b"2"})
    assert_clean(spec.dest, {"a": b"1", "b": b"2"})
    # At a visible name, with a publisher that trusts what it made: fixed right after the switch.
    publisher = TreePublisher(spec)
    publisher.publish({"a": b"1", "b": b"2"})
    os.unlink(os.path.join(spec.dest, "a"))
    os.symlink(os.path.join(outside, "precious"), os.path.join(spec.dest, "a"))
    outcome = publisher.publish({"a": b"1", "b": b"3"})
    assert outcome.cleaned == (os.path.join(spec.dest, "a"),)
    assert_clean(spec.dest, {"a": b"1", "b": b"3"})
    assert os.stat(os.path.join(outside, "precious")) == precious  # not written, re-moded or linked
    with open(os.path.join(outside, "precious"), "rb") as f:
        assert f.read() == b"keep"


@pytest.mark.timeout(30)
def test_a_symlink_at_dest_is_replaced_by_a_directory(tmp_path: Path, spec: TreeSpec) -> None:
    outside = os.path.join(tmp_path, "outside")
    os.mkdir(outside)
    os.symlink(outside, spec.dest)
    outcome = publish(spec, {"a": b"1"})
    assert not os.path.islink(spec.dest) and os.listdir(outside) == []
    assert outcome.cleaned == (spec.dest,)
    assert_clean(spec.dest, {"a": b"1"})


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("timestamps")
def test_foreign_entries_are_removed_at_the_next_snapshot(spec: TreeSpec) -> None:
    publisher = TreePublisher(spec)
    publisher.publish({"a": b"1"})
    snapshot = os.path.join(spec.dest, os.readlink(os.path.join(spec.dest, DATA_LINK)))
    planted = ["notes.txt", ".dotfile", "subdir", "link", "fifo", f"..{'9' * 4}_planted"]
    with open(os.path.join(spec.dest, "notes.txt"), "w") as f:
        f.write("mine")
    with open(os.path.join(spec.dest, ".dotfile"), "w") as f:
        f.write("mine")
    os.makedirs(os.path.join(spec.dest, "subdir", "deeper"))
    os.symlink("/etc", os.path.join(spec.dest, "subdir", "deeper", "etc"))
    os.symlink("/etc/passwd", os.path.join(spec.dest, "link"))
    os.mkfifo(os.path.join(spec.dest, "fifo"))
    os.mkdir(os.path.join(spec.dest, planted[-1]))
    with open(os.path.join(snapshot, "intruder"), "w") as f:  # inside the current snapshot
        f.write("x")
    outcome = publisher.publish({"a": b"1"})
    assert outcome.switched, "a snapshot holding a file livedata did not write is replaced"
    assert sorted(outcome.cleaned) == sorted(os.path.join(spec.dest, name) for name in planted)
    assert_clean(spec.dest, {"a": b"1"})
    assert os.path.isdir("/etc") and os.path.exists("/etc/passwd")


@pytest.mark.timeout(30)
def test_a_directory_planted_at_a_childs_name_is_replaced(spec: TreeSpec) -> None:
    os.makedirs(os.path.join(spec.dest, "a", "inside"))
    publish(spec, {"a": b"1"})
    assert_clean(spec.dest, {"a": b"1"})


# ------------------------------------------------------------------------------------- failures, cleanup


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[str]:
    """A 256 KiB tmpfs, to run out of space for real."""
    mountpoint = os.path.join(tmp_path, "small")
    os.mkdir(mountpoint)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", mountpoint], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", mountpoint], check=True)


@pytest.mark.timeout(30)
def test_full_disk_keeps_the_old_snapshot_and_leaves_nothing(small_fs: str) -> None:
    spec = TreeSpec(os.path.join(small_fs, "tree"), 0o444)
    publisher = TreePublisher(spec)
    publisher.publish({"a": b"old", "b": b"old"})
    with pytest.raises(TreeWriteError) as caught:
        publisher.publish({"a": b"old", "b": os.urandom(1024 * 1024), "c": b"new"})
    assert caught.value.errno == errno.ENOSPC and "\n" not in str(caught.value)
    assert isinstance(caught.value, FileWriteError)
    visible = {name for name in os.listdir(spec.dest) if not name.startswith(".")}
    assert read_tree(spec.dest) == {"a": b"old", "b": b"old"}
    assert len([name for name in os.listdir(spec.dest) if is_snapshot_name(name)]) == 1
    assert not [name for name in os.listdir(spec.dest) if is_temp_name(name)]
    assert visible <= {"a", "b", "c"}  # c's name may dangle until the next publish: it resolves to nothing
    assert not os.path.exists(os.path.join(spec.dest, "c"))
    publisher.publish({"a": b"old", "b": b"new", "c": b"new"})
    assert_clean(spec.dest, {"a": b"old", "b": b"new", "c": b"new"})


@pytest.mark.timeout(30)
def test_cleanup_removes_debris_of_dead_writers_and_repairs_names(spec: TreeSpec) -> None:
    publish(spec, {"a": b"1", "b": b"2"})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    tag = files._namespace_tag()  # our boot and pid namespace: the pids in these names are checked
    unfinished = f"..2026_01_01_00_00_00.000000000.{pid}.{tag}{'ab' * 4}"
    os.makedirs(os.path.join(spec.dest, unfinished, "a"))
    os.symlink("whatever", os.path.join(spec.dest, f"...data.livedata-tmp.{pid}.{tag}{'cd' * 4}"))
    alive = f"..2026_01_01_00_00_00.000000000.1.{tag}{'ef' * 4}"  # pid 1 is alive: an overlapping instance
    os.mkdir(os.path.join(spec.dest, alive))
    os.unlink(os.path.join(spec.dest, "a"))  # a visible name lost
    os.symlink(f"{DATA_LINK}/gone", os.path.join(spec.dest, "gone"))  # a name left dangling
    removed = cleanup(spec)
    assert sorted(removed) == sorted(
        os.path.join(spec.dest, name) for name in [unfinished, f"...data.livedata-tmp.{pid}.{tag}{'cd' * 4}"]
    )
    assert sorted(os.listdir(spec.dest)) == sorted([DATA_LINK, CHANGES_LINK,
                                                    os.readlink(os.path.join(spec.dest, DATA_LINK)), alive, "a", "b"])
    os.rmdir(os.path.join(spec.dest, alive))
    assert_clean(spec.dest, {"a": b"1", "b": b"2"})
    assert cleanup(TreeSpec(os.path.join(spec.dest + "-missing"))) == []


@pytest.mark.timeout(120)
def test_sigkill_while_publishing_never_shows_a_mix_and_cleanup_leaves_no_debris(spec: TreeSpec) -> None:
    rng = random.Random(14)
    problems: list[str] = []
    stop = threading.Event()
    seen: list[int] = [-1]

    def read_forever() -> None:
        watcher = TreeWatcher(spec.dest, lambda f: f.read(), binary=True, timeout=30)
        while not stop.is_set():
            try:
                snapshots = (read_tree(spec.dest), watcher.get_data())
            except Exception as exc:  # a missing ..data, a vanished file: what a reader must never see
                problems.append(repr(exc))
                return
            for children in snapshots:
                problem = consistency_problem(children)
                if problem is not None:
                    problems.append(problem)
                    return
                seen[0] = int(children["k0"].split(b":")[0])

    env = dict(os.environ, PYTHONPATH=REPO)
    start = 0
    reader = threading.Thread(target=read_forever, daemon=True)
    for kill in range(20):
        process = subprocess.Popen([sys.executable, "-m", "tests.tree_publisher_process", spec.dest, str(start)],
                                   env=env, cwd=REPO)
        try:
            if kill == 0:
                wait_for(lambda: os.path.exists(os.path.join(spec.dest, DATA_LINK)), 30, "a first snapshot")
                reader.start()
            target = start + rng.randint(1, 30)
            wait_for(lambda t=target: seen[0] >= t or problems, 30, f"generation {target} to be seen")
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        assert not problems, problems
        start = (seen[0] // 1000 + 1) * 1000
    stop.set()
    reader.join(30)
    assert not problems, problems
    before = read_tree(spec.dest)
    cleanup(TreeSpec(spec.dest, 0o444))
    assert read_tree(spec.dest) == before
    assert_clean(spec.dest, before)
    assert consistency_problem(before) is None
    assert before == generation(int(before["k0"].split(b":")[0]))


@pytest.mark.timeout(120)
def test_two_overlapping_publishers_never_show_a_mix_nor_break_each_other(spec: TreeSpec) -> None:
    """During a deploy two daemon instances may publish the same tree at once."""
    problems: list[str] = []
    stop = threading.Event()
    seen: dict[int, set[int]] = {0: set(), 1: set()}  # publisher -> generations seen from it
    env = dict(os.environ, PYTHONPATH=REPO)
    processes = [
        subprocess.Popen([sys.executable, "-m", "tests.tree_publisher_process", spec.dest, str(start)],
                         env=env, cwd=REPO)
        for start in (0, 1_000_000)
    ]

    def read_forever() -> None:
        watcher = TreeWatcher(spec.dest, lambda f: f.read(), binary=True, timeout=30)
        while not stop.is_set():
            try:
                children = watcher.get_data()
            except Exception as exc:
                problems.append(repr(exc))
                return
            problem = consistency_problem(children)
            if problem is not None:
                problems.append(problem)
                return
            number = int(children["k0"].split(b":")[0])
            seen[number // 1_000_000].add(number)

    reader = threading.Thread(target=read_forever)
    try:
        reader.start()
        wait_for(lambda: min(len(s) for s in seen.values()) >= 100 or problems
                 or any(p.poll() is not None for p in processes), 90, "100 snapshots of each publisher")
        assert [process.poll() for process in processes] == [None, None], "a publisher died"
    finally:
        stop.set()
        for process in processes:
            process.send_signal(signal.SIGKILL)
            process.wait()
        reader.join(30)
    assert not problems, problems
    before = read_tree(spec.dest)
    cleanup(spec)
    assert_clean(spec.dest, before)


# ------------------------------------------------------------------------------------- heartbeat, json


@pytest.mark.timeout(30)
def test_touch_moves_the_dest_mtime_only(spec: TreeSpec) -> None:
    assert not touch(spec)
    publish(spec, {"a": b"1"})
    child = os.stat(os.path.join(spec.dest, "a"))
    os.utime(spec.dest, ns=(0, 0))
    assert touch(spec)
    assert os.stat(spec.dest).st_mtime_ns > 0
    assert os.stat(os.path.join(spec.dest, "a")) == child


def test_render_json_is_sorted_text() -> None:
    data = render_json({"b": "é".encode(), "a": b'{"x": 1}'})
    assert json.loads(data) == {"a": '{"x": 1}', "b": "é"}
    assert data.index(b'"a"') < data.index(b'"b"')
    assert render_json({}) == b"{}\n"


def test_render_json_refuses_binary_children_naming_them() -> None:
    with pytest.raises(TreeRenderError, match=r"child 'bin' is not UTF-8 text \(byte 1\)"):
        render_json({"ok": b"fine", "bin": b"a\xff"})


@pytest.mark.timeout(30)
def test_publish_json_keeps_the_old_file_on_a_binary_child(tmp_path: Path) -> None:
    spec = TreeSpec(os.path.join(tmp_path, "tree.json"), 0o440, NOBODY, NOBODY)
    assert publish_json(spec, {"a": b"1"}) is Outcome.WRITTEN
    assert publish_json(spec, {"a": b"1"}) is Outcome.UNCHANGED
    inode = os.stat(spec.dest).st_ino
    with pytest.raises(TreeRenderError, match=r"; nothing written$"):
        publish_json(spec, {"a": b"\xff"})
    assert os.stat(spec.dest).st_ino == inode
    with open(spec.dest, "rb") as f:
        assert json.load(f) == {"a": "1"}
    status = os.stat(spec.dest)
    assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (NOBODY, NOBODY, 0o440)


@pytest.mark.parametrize(
    "kwargs",
    [{"dest": "relative"}, {"dest": "/"}, {"dest": "/a/../b"}, {"dest": "/a", "mode": 0o10000},
     {"dest": "/a", "owner": -1}],
)
def test_invalid_specs_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="invalid TreeSpec"):
        TreeSpec(**kwargs)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_publish_cost_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    """tools/benchmark/tree_publish.py is called by the trees scenario; keep it from rotting."""
    from tools.benchmark.tree_publish import publish_costs

    metrics = {metric.key: metric.value for metric in publish_costs(str(tmp_path), sizes=(5, 20), changes=2)}
    assert set(metrics) >= {"tree5_initial_s", "tree20_switch_p50_ms", "tree20_change_p50_ms", "tree20_reload_p50_ms"}
    assert "tree_switch_us_per_child" in metrics and os.listdir(tmp_path) == []


@pytest.mark.timeout(60)
def test_publish_cost_benchmark_compares_with_a_git_revision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tools.benchmark.tree_publish import main

    assert main(["--baseline", "HEAD", "--sizes", "3", "--changes", "1", "--workdir", str(tmp_path)]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["HEAD", "this", "tree"] and len(rows) == 6
    assert os.listdir(tmp_path) == []


@pytest.mark.timeout(30)
def test_switching_formats_replaces_the_dest_both_ways(spec: TreeSpec) -> None:
    publish(spec, {"a": b"1"})
    assert publish_json(spec, {"a": b"2"}) is Outcome.WRITTEN
    with open(spec.dest, "rb") as f:
        assert json.load(f) == {"a": "2"}
    outcome = publish(spec, {"a": b"3"})
    assert outcome.cleaned == (spec.dest,)
    assert_clean(spec.dest, {"a": b"3"})


@pytest.mark.timeout(30)
def test_publish_json_leaves_a_directory_it_did_not_write(tmp_path: Path) -> None:
    dest = os.path.join(tmp_path, "tree")
    os.makedirs(os.path.join(dest, "theirs"))
    with pytest.raises(FileWriteError):
        publish_json(TreeSpec(dest), {"a": b"1"})
    assert os.listdir(dest) == ["theirs"]


@pytest.mark.timeout(30)
def test_a_file_watcher_on_one_child_follows_it_and_never_reparses_it_unchanged(spec: TreeSpec) -> None:
    from livedata.file_watcher import FileWatcher

    publisher = TreePublisher(spec)
    publisher.publish({"a": b"1", "b": b"0"})
    parsed: list[bytes] = []
    watcher = FileWatcher(os.path.join(spec.dest, "a"), lambda f: parsed.append(f.read()) or parsed[-1], binary=True)
    for i in range(1, 6):
        publisher.publish({"a": b"1", "b": str(i).encode()})  # a's ctime moves (hard links), its bytes do not
        assert watcher.get_data() == b"1"
    publisher.publish({"a": b"2", "b": b"0"})
    assert watcher.get_data() == b"2"
    assert parsed == [b"1", b"2"]
