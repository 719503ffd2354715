"""Tests for livedata.TreeWatcher over trees written by livedata.snapshots (no ZooKeeper needed)."""
from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

import livedata
from livedata import file_watcher
from livedata.file_watcher import WatchedFileNotAvailableError
from livedata.snapshots import DATA_LINK, TreePublisher, TreeSpec
from livedata.testing.zookeeper import wait_for
from livedata.tree_watcher import TreeWatcher
from tests.tree_publisher_process import consistency_problem, generation

LOGGER = "livedata.tree_watcher"


class CountingParser:
    """Records what it parses; content starting with "bad" fails."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, f: IO[Any]) -> Any:
        data = f.read()
        with self.lock:
            self.calls.append(f.name)
        if data.startswith("bad" if isinstance(data, str) else b"bad"):
            raise ValueError(f"unparseable: {data!r}")
        return data


@pytest.fixture
def publisher(tmp_path: Path) -> TreePublisher:
    return TreePublisher(TreeSpec(os.path.join(tmp_path, "tree"), 0o444))


def names(parser: CountingParser) -> list[str]:
    return sorted(os.path.basename(path) for path in parser.calls)


# --------------------------------------------------------------------------------------------- content


@pytest.mark.timeout(30)
def test_get_data_follows_children_added_changed_deleted_and_all_deleted(publisher: TreePublisher) -> None:
    publisher.publish({"a": b"1", "b": b"2"})
    watcher = TreeWatcher(publisher.spec.dest, CountingParser())
    for children in [
        {"a": b"1", "b": b"2", "c": b"3"},
        {"a": b"1", "b": b"two", "c": b"3"},
        {"a": b"1", "c": b"3"},
        {},
        {"z": b"back"},
    ]:
        publisher.publish(children)
        assert dict(watcher.get_data()) == {name: data.decode() for name, data in children.items()}


@pytest.mark.timeout(30)
def test_the_mapping_is_read_only_and_sorted(publisher: TreePublisher) -> None:
    publisher.publish({"b": b"2", "a": b"1"})
    data = TreeWatcher(publisher.spec.dest, json.load).get_data()
    assert list(data) == ["a", "b"] and data["a"] == 1
    with pytest.raises(TypeError):
        data["a"] = 3  # type: ignore[index]


@pytest.mark.timeout(30)
def test_only_changed_children_are_reparsed(publisher: TreePublisher) -> None:
    parser = CountingParser()
    publisher.publish({"a": b"1", "b": b"2", "c": b"3"})
    watcher = TreeWatcher(publisher.spec.dest, parser)
    assert names(parser) == ["a", "b", "c"]
    parser.calls.clear()
    publisher.publish({"a": b"1", "b": b"changed", "c": b"3", "d": b"new"})
    assert watcher.get_data()["b"] == "changed"
    assert names(parser) == ["b", "d"]
    parser.calls.clear()
    publisher.publish({"a": b"1", "d": b"new"})
    assert list(watcher.get_data()) == ["a", "d"]
    assert parser.calls == []


@pytest.mark.timeout(30)
def test_parser_gets_the_childs_visible_path_and_the_modes(publisher: TreePublisher) -> None:
    publisher.publish({"a": "é\r\n".encode()})
    dest = publisher.spec.dest
    assert TreeWatcher(dest, lambda f: f.name).get_data() == {"a": os.path.join(dest, "a")}
    assert TreeWatcher(dest, lambda f: f.read(), binary=True).get_data() == {"a": "é\r\n".encode()}
    assert TreeWatcher(dest, lambda f: f.read(), encoding="latin-1", newline="").get_data() == {
        "a": "é\r\n".encode().decode("latin-1")
    }


def test_arguments_are_checked_as_for_file_watcher(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="TreeWatcher"):
        TreeWatcher(str(tmp_path), json.load, binary=True, encoding="utf-8")
    with pytest.raises(ValueError, match="check_interval"):
        TreeWatcher(str(tmp_path), json.load, check_interval=-1)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.timeout(30)
def test_before_a_first_snapshot_reads_raise_without_blocking(publisher: TreePublisher) -> None:
    watcher = TreeWatcher(publisher.spec.dest, json.load)
    with pytest.raises(WatchedFileNotAvailableError) as caught:
        watcher.get_data()
    assert caught.value.path == publisher.spec.dest and DATA_LINK in str(caught.value)
    assert pickle.loads(pickle.dumps(caught.value)).path == publisher.spec.dest
    publisher.publish({})
    assert watcher.get_data() == {}


@pytest.mark.timeout(30)
def test_timeout_waits_for_a_first_snapshot(publisher: TreePublisher) -> None:
    with pytest.raises(WatchedFileNotAvailableError):
        TreeWatcher(publisher.spec.dest, json.load, timeout=0.05)
    thread = threading.Thread(target=publisher.publish, args=({"a": b"1"},))
    thread.start()
    try:
        assert TreeWatcher(publisher.spec.dest, json.load, timeout=20).get_data() == {"a": 1}
    finally:
        thread.join(20)


@pytest.mark.timeout(30)
def test_a_bad_child_keeps_the_previous_snapshot_whole(
    publisher: TreePublisher, caplog: pytest.LogCaptureFixture
) -> None:
    publisher.publish({"a": b"1", "b": b"1"})
    parser = CountingParser()
    watcher = TreeWatcher(publisher.spec.dest, parser)
    publisher.publish({"a": b"2", "b": b"bad"})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            assert dict(watcher.get_data()) == {"a": "1", "b": "1"}, "never a mix of two snapshots"
    assert len(caplog.records) == 1 and "'b'" in caplog.records[0].getMessage()
    parses = len(parser.calls)
    watcher.get_data()
    assert len(parser.calls) == parses, "a failed snapshot is not retried until the tree switches again"
    publisher.publish({"a": b"2", "b": b"2"})
    assert dict(watcher.get_data()) == {"a": "2", "b": "2"}


@pytest.mark.timeout(30)
def test_a_bad_child_before_a_first_load_raises_with_the_parser_error(publisher: TreePublisher) -> None:
    publisher.publish({"a": b"bad"})
    watcher = TreeWatcher(publisher.spec.dest, CountingParser())
    with pytest.raises(WatchedFileNotAvailableError) as caught:
        watcher.get_data()
    assert isinstance(caught.value.inner, ValueError)


@pytest.mark.timeout(30)
def test_a_removed_tree_keeps_serving_the_last_snapshot(publisher: TreePublisher) -> None:
    publisher.publish({"a": b"1"})
    watcher = TreeWatcher(publisher.spec.dest, CountingParser())
    os.unlink(os.path.join(publisher.spec.dest, DATA_LINK))
    assert watcher.get_data() == {"a": "1"}


# ----------------------------------------------------------------------------------------- mtime, speed


@pytest.mark.timeout(30)
def test_mtime_moves_only_when_the_content_changes(publisher: TreePublisher) -> None:
    publisher.publish({"a": b"1"})
    watcher = TreeWatcher(publisher.spec.dest, CountingParser())
    value, mtime = watcher.get_data_and_mtime()
    wait_for(lambda: time.time() > mtime + 0.01, 5, "the clock to move on")
    publisher.publish({"a": b"1"})
    assert watcher.get_data_and_mtime() == (value, mtime)
    publisher.publish({"a": b"2"})
    assert watcher.get_data_and_mtime()[1] > mtime


@pytest.mark.timeout(30)
def test_check_interval_delays_noticing_a_switch(publisher: TreePublisher) -> None:
    publisher.publish({"a": b"1"})
    lazy = TreeWatcher(publisher.spec.dest, CountingParser(), check_interval=3600)
    eager = TreeWatcher(publisher.spec.dest, CountingParser())
    assert lazy.get_data() == eager.get_data() == {"a": "1"}
    publisher.publish({"a": b"2"})
    assert eager.get_data() == {"a": "2"}
    assert lazy.get_data() == {"a": "1"}


def served_after_recycling(dest: Path) -> Any:
    """What a deleted child's inode reused by a new file of the same size in the same clock tick looks like
    to a reader: the same (device, inode, size, mtime), other bytes. Returns what the watcher then serves."""
    first, second = dest / "..first", dest / "..second"
    first.mkdir(parents=True)
    (first / "a").write_bytes(b"1")
    os.symlink(first.name, dest / DATA_LINK)
    watcher = TreeWatcher(str(dest), CountingParser())  # reads "a" right after it was written
    assert watcher.get_data() == {"a": "1"}
    second.mkdir()
    os.link(first / "a", second / "a")
    mtime = os.stat(first / "a").st_mtime_ns
    (second / "a").write_bytes(b"2")
    os.utime(second / "a", ns=(mtime, mtime))
    os.symlink(second.name, dest / "..next")
    os.rename(dest / "..next", dest / DATA_LINK)
    return watcher.get_data()["a"]


@pytest.mark.timeout(30)
def test_a_recycled_inode_with_the_same_size_and_mtime_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert served_after_recycling(tmp_path / "racy") == "2", "a child read within a tick of its mtime is re-read"
    # Control: with the window closed the signature alone is trusted, which is why the window exists.
    monkeypatch.setattr(file_watcher, "_TICK_WINDOW_NS", 0)
    monkeypatch.setattr(file_watcher, "_COARSE_WINDOW_NS", 0)
    assert served_after_recycling(tmp_path / "blind") == "1"


# ----------------------------------------------------------------------------------------- concurrency


@pytest.mark.timeout(120)
def test_reader_threads_never_see_a_mix_over_hundreds_of_switches(publisher: TreePublisher) -> None:
    publisher.publish(generation(0))
    parser = CountingParser()
    watcher = TreeWatcher(publisher.spec.dest, parser, binary=True)
    problems: list[str] = []
    stop = threading.Event()
    reads = [0] * 4

    def read(index: int) -> None:
        while not stop.is_set():
            try:
                problem = consistency_problem(watcher.get_data())
            except Exception as exc:
                problem = repr(exc)
            if problem is not None:
                problems.append(problem)
                return
            reads[index] += 1
            # Pacing, not synchronisation: four threads spinning on the GIL would starve the publisher.
            stop.wait(0.0005)

    threads = [threading.Thread(target=read, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    written = 0
    try:
        for number in range(1, 301):
            written += len(publisher.publish(generation(number)).written)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not problems, problems
    assert all(reads), "every reader must have read"
    assert watcher.get_data() == generation(300)
    assert len(parser.calls) <= len(generation(0)) + written, "only written children may be parsed"


def test_importing_tree_watcher_pulls_neither_kazoo_nor_gevent() -> None:
    script = (
        "import sys, livedata; livedata.TreeWatcher; "
        "assert 'kazoo' not in sys.modules and 'gevent' not in sys.modules, sorted(sys.modules)"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", script], check=True, cwd=root, env=dict(os.environ, PYTHONPATH=root))
    assert livedata.TreeWatcher is TreeWatcher


@pytest.mark.timeout(60)
def test_a_listing_cut_short_by_the_writer_deleting_the_snapshot_is_not_served(tmp_path: Path) -> None:
    """The writer deletes a replaced snapshot while a reader may still be listing it: the reader then gets
    a short listing whose every file still reads fine. Only re-checking ``..data`` afterwards can tell.

    Made deterministic by doing the writer's part from inside the parser, while the reader is between
    getdents batches: entries past the first 4,096 (more than libc buffers at once) are deleted."""
    dest = tmp_path / "tree"
    count = 8192
    old, new = dest / "..old", dest / "..new"
    for directory, value in [(old, b"old"), (new, b"new")]:
        directory.mkdir(parents=True)
        for i in range(count):
            (directory / f"c{i:05d}").write_bytes(value)
    os.symlink(old.name, dest / DATA_LINK)
    fired = threading.Event()

    def parser(f: IO[Any]) -> str:
        value: str = f.read()
        if value == "old" and not fired.is_set():
            fired.set()
            os.symlink(new.name, dest / "..swap")
            os.rename(dest / "..swap", dest / DATA_LINK)
            for name in os.listdir(old)[count // 2 :]:
                os.unlink(old / name)
        return value

    watcher = TreeWatcher(str(dest), parser, check_interval=3600)  # serves what the constructor loaded
    assert fired.is_set()
    assert watcher.get_data() == {f"c{i:05d}": "new" for i in range(count)}


@pytest.mark.timeout(60)
def test_a_bad_child_read_from_a_directory_being_reused_is_not_blamed_on_a_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer reuses a replaced snapshot's directory for the next one: a reader still in it may read a
    child of a later publish, which may not parse. That is not a failure of any snapshot it could serve.

    Deterministic: the writer's part runs inside the parser. It switches to ``..new`` and rewrites a child
    of ``..old`` (the directory being read) with bytes that do not parse."""
    dest = tmp_path / "tree"
    first, old, new = dest / "..first", dest / "..old", dest / "..new"
    for directory in (first, old, new):
        directory.mkdir(parents=True)
        for name in ("a", "b"):
            (directory / name).write_text("first" if directory == first else "good")
    os.symlink(first.name, dest / DATA_LINK)
    fired = threading.Event()

    def parser(f: IO[Any]) -> str:
        value: str = f.read()
        if value == "bad":
            raise ValueError("unparseable")
        if value == "good" and not fired.is_set():
            fired.set()
            os.symlink(new.name, dest / "..swap")
            os.rename(dest / "..swap", dest / DATA_LINK)
            other = "b" if os.path.basename(f.name) == "a" else "a"  # the child not read yet
            (old / ".tmp").write_text("bad")
            os.rename(old / ".tmp", old / other)  # a later publish's bytes, in the directory being read
        return value

    watcher = TreeWatcher(str(dest), parser)
    assert dict(watcher.get_data()) == {"a": "first", "b": "first"}
    os.symlink(old.name, dest / "..swap")
    os.rename(dest / "..swap", dest / DATA_LINK)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert dict(watcher.get_data()) == {"a": "good", "b": "good"}
    assert fired.is_set()
    assert not caplog.records, [record.getMessage() for record in caplog.records]
