"""Tests for livedata.file_watcher: the baseplate-compatible surface, then each improvement over it."""
from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, List

import pytest

from livedata import file_watcher
from livedata.file_watcher import FileWatcher, WatchedFileNotAvailableError

LOGGER = "livedata.file_watcher"


def wait_for(predicate: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {message}")
        time.sleep(0.001)


def write_atomic(path: Path, data: bytes, mtime_ns: int | None = None) -> None:
    """Replace ``path`` the way the watcher daemon does: temp file beside it, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    if mtime_ns is not None:
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
    os.replace(tmp, path)


class CountingParser:
    """Counts calls; content starting with "bad" fails to parse."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, f: IO[Any]) -> Any:
        self.calls += 1
        data = f.read()
        if data.startswith("bad" if isinstance(data, str) else b"bad"):
            raise ValueError(f"unparseable: {data!r}")
        return data


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data.txt"


@pytest.fixture
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the watcher trust stat right after a change, so a test sees the stat signature alone at work.

    Without this, a file written moments before is re-read on every call for a short while (to catch
    same-tick rewrites), which would also detect the changes these tests make, and hide a weak signature.
    """
    monkeypatch.setattr(file_watcher, "_TICK_WINDOW_NS", 0)
    monkeypatch.setattr(file_watcher, "_COARSE_WINDOW_NS", 0)


# --- compatibility surface -----------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_text_mode_defaults_to_utf8(path: Path) -> None:
    path.write_bytes("grüße ✓ 世界".encode())
    watcher = FileWatcher(str(path), lambda f: f.read())
    assert watcher.get_data() == "grüße ✓ 世界"


@pytest.mark.timeout(10)
def test_text_mode_honours_encoding(path: Path) -> None:
    path.write_bytes("café".encode("latin-1"))
    watcher = FileWatcher(str(path), lambda f: f.read(), encoding="latin-1")
    assert watcher.get_data() == "café"


@pytest.mark.timeout(10)
def test_text_mode_honours_newline(path: Path) -> None:
    path.write_bytes(b"a\r\nb\r\n")
    translated = FileWatcher(str(path), lambda f: f.read())
    untranslated = FileWatcher(str(path), lambda f: f.read(), newline="")
    assert translated.get_data() == "a\nb\n"
    assert untranslated.get_data() == "a\r\nb\r\n"


@pytest.mark.timeout(10)
def test_binary_mode_passes_bytes(path: Path) -> None:
    path.write_bytes(b"\x00\xff\xfe raw")
    watcher = FileWatcher(str(path), lambda f: f.read(), binary=True)
    assert watcher.get_data() == b"\x00\xff\xfe raw"


@pytest.mark.timeout(10)
def test_json_parser_works_in_both_modes(path: Path) -> None:
    path.write_text(json.dumps({"flag": True, "hosts": ["a", "b"]}))
    assert FileWatcher(str(path), json.load).get_data() == {"flag": True, "hosts": ["a", "b"]}
    assert FileWatcher(str(path), json.load, binary=True).get_data()["hosts"] == ["a", "b"]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("binary", [False, True])
def test_parser_sees_the_path_as_file_name(path: Path, binary: bool) -> None:
    path.write_text("x")
    watcher = FileWatcher(str(path), lambda f: f.name, binary=binary)
    assert watcher.get_data() == str(path)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("option", [{"encoding": "utf-8"}, {"newline": ""}, {"encoding": "ascii", "newline": ""}])
def test_text_options_with_binary_are_a_type_error(path: Path, option: dict[str, str]) -> None:
    path.write_text("x")
    with pytest.raises(TypeError, match="text mode"):
        FileWatcher(str(path), lambda f: f.read(), binary=True, **option)  # type: ignore[arg-type]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("bad", [{"backoff": 0}, {"check_interval": -1.0}, {"timeout": -1.0}])
def test_nonsense_numbers_are_rejected(path: Path, bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        FileWatcher(str(path), lambda f: f.read(), **bad)  # type: ignore[arg-type]


@pytest.mark.timeout(10)
def test_error_carries_path_and_inner_and_pickles() -> None:
    inner = ValueError("broken")
    error = WatchedFileNotAvailableError("/some/file", inner)
    assert (error.path, error.inner, str(error)) == ("/some/file", inner, "/some/file: broken")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, str(copy.inner), str(copy)) == ("/some/file", "broken", "/some/file: broken")
    assert str(WatchedFileNotAvailableError("/f", "gone")) == "/f: gone"


@pytest.mark.timeout(10)
def test_missing_file_without_timeout_does_not_block_and_reads_raise(path: Path) -> None:
    watcher = FileWatcher(str(path), CountingParser())
    for read in (watcher.get_data, watcher.get_data_and_mtime):
        with pytest.raises(WatchedFileNotAvailableError) as caught:
            read()
        assert caught.value.path == str(path)
        assert isinstance(caught.value.inner, FileNotFoundError)
        assert str(path) in str(caught.value)


@pytest.mark.timeout(10)
def test_parse_error_before_first_load_raises_with_parser_error(path: Path) -> None:
    path.write_text("bad content")
    watcher = FileWatcher(str(path), CountingParser())
    with pytest.raises(WatchedFileNotAvailableError) as caught:
        watcher.get_data()
    assert isinstance(caught.value.inner, ValueError)
    assert isinstance(caught.value.__cause__, ValueError)


@pytest.mark.timeout(10)
def test_first_good_version_is_picked_up_after_failures(path: Path) -> None:
    watcher = FileWatcher(str(path), CountingParser())
    with pytest.raises(WatchedFileNotAvailableError):
        watcher.get_data()
    write_atomic(path, b"bad")
    with pytest.raises(WatchedFileNotAvailableError):
        watcher.get_data()
    write_atomic(path, b"good")
    assert watcher.get_data() == "good"


class _EventOnRecord(logging.Handler):
    def __init__(self, needle: str) -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.seen.set()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("initially", [None, b"bad: half written"])
def test_timeout_waits_for_the_file_to_become_loadable(path: Path, initially: bytes | None) -> None:
    if initially is not None:
        path.write_bytes(initially)
    logger = logging.getLogger(LOGGER)
    handler = _EventOnRecord("retrying")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)

    def publish_after_first_failed_attempt() -> None:
        if handler.seen.wait(20):
            write_atomic(path, b"ready")

    writer = threading.Thread(target=publish_after_first_failed_attempt)
    writer.start()
    try:
        watcher = FileWatcher(str(path), CountingParser(), timeout=20, backoff=0.001)
    finally:
        writer.join(25)
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert handler.seen.is_set(), "the constructor never had to wait, so the test proved nothing"
    assert watcher.get_data() == "ready"


@pytest.mark.timeout(10)
def test_timeout_expiry_raises_with_path_and_last_error(path: Path) -> None:
    with pytest.raises(WatchedFileNotAvailableError) as caught:
        FileWatcher(str(path), CountingParser(), timeout=0.05, backoff=0.01)
    assert caught.value.path == str(path)
    assert isinstance(caught.value.inner, FileNotFoundError)

    path.write_text("bad forever")
    with pytest.raises(WatchedFileNotAvailableError) as caught:
        FileWatcher(str(path), CountingParser(), timeout=0)
    assert isinstance(caught.value.inner, ValueError)


@pytest.mark.timeout(10)
def test_last_good_value_is_kept_after_delete_and_restore_is_picked_up(path: Path) -> None:
    path.write_text("v1")
    watcher = FileWatcher(str(path), CountingParser())
    assert watcher.get_data() == "v1"
    path.unlink()
    assert watcher.get_data() == "v1"
    assert watcher.get_data_and_mtime()[0] == "v1"
    write_atomic(path, b"v2")
    assert watcher.get_data() == "v2"


@pytest.mark.timeout(10)
def test_last_good_value_is_kept_after_parse_error_and_fix_is_picked_up(path: Path) -> None:
    path.write_text("v1")
    watcher = FileWatcher(str(path), CountingParser())
    assert watcher.get_data() == "v1"
    write_atomic(path, b"bad data")
    assert watcher.get_data() == "v1"
    write_atomic(path, b"v2")
    assert watcher.get_data() == "v2"


@pytest.mark.timeout(10)
def test_each_distinct_failure_is_logged_once(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    path.write_text("v1")
    watcher = FileWatcher(str(path), CountingParser())
    watcher.get_data()

    def failures() -> int:
        return sum("cannot load" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)

    path.unlink()
    for _ in range(5):
        assert watcher.get_data() == "v1"
    assert failures() == 1
    write_atomic(path, b"bad one")
    for _ in range(5):
        assert watcher.get_data() == "v1"
    assert failures() == 2
    write_atomic(path, b"v2")
    assert watcher.get_data() == "v2"
    assert failures() == 2


@pytest.mark.timeout(10)
def test_get_data_and_mtime_reports_the_file_mtime(path: Path) -> None:
    write_atomic(path, b"v1", mtime_ns=1_600_000_000_123_456_789)
    watcher = FileWatcher(str(path), CountingParser())
    value, mtime = watcher.get_data_and_mtime()
    assert value == "v1"
    assert mtime == os.stat(path).st_mtime


# --- improvement 1: a heartbeat touch is not a change --------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.usefixtures("no_racy_window")
def test_heartbeat_touch_neither_reparses_nor_moves_the_mtime(path: Path) -> None:
    parser = CountingParser()
    path.write_text("v1")
    before = os.stat(path)
    watcher = FileWatcher(str(path), parser)
    assert watcher.get_data_and_mtime() == ("v1", before.st_mtime)

    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 300_000_000_000))
    assert os.stat(path).st_mtime_ns != before.st_mtime_ns
    assert os.stat(path).st_ino == before.st_ino
    for _ in range(3):
        assert watcher.get_data_and_mtime() == ("v1", before.st_mtime)
    assert parser.calls == 1

    # Identical bytes rewritten by rename (what a daemon does on a no-op version bump): same story.
    write_atomic(path, b"v1", mtime_ns=before.st_mtime_ns + 600_000_000_000)
    assert watcher.get_data_and_mtime() == ("v1", before.st_mtime)
    assert parser.calls == 1

    # A real change still goes through, and moves the reported mtime.
    write_atomic(path, b"v2", mtime_ns=before.st_mtime_ns + 900_000_000_000)
    assert watcher.get_data_and_mtime() == ("v2", os.stat(path).st_mtime)
    assert parser.calls == 2


@pytest.mark.timeout(10)
@pytest.mark.usefixtures("no_racy_window")
def test_file_restored_with_the_same_bytes_is_not_reparsed(path: Path) -> None:
    parser = CountingParser()
    path.write_text("v1")
    mtime = os.stat(path).st_mtime
    watcher = FileWatcher(str(path), parser)
    path.unlink()
    assert watcher.get_data() == "v1"
    write_atomic(path, b"v1")
    assert watcher.get_data_and_mtime() == ("v1", mtime)
    assert parser.calls == 1


# --- improvement 2: a replacement that keeps the mtime is still a change -------------------------------


@pytest.mark.timeout(10)
@pytest.mark.usefixtures("no_racy_window")
def test_rename_of_a_same_size_same_mtime_file_is_detected(path: Path) -> None:
    write_atomic(path, b"AAAA", mtime_ns=1_700_000_000_000_000_000)
    before = os.stat(path)
    watcher = FileWatcher(str(path), CountingParser())
    assert watcher.get_data() == "AAAA"

    write_atomic(path, b"BBBB", mtime_ns=before.st_mtime_ns)
    after = os.stat(path)
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)
    assert watcher.get_data_and_mtime() == ("BBBB", after.st_mtime)


@pytest.mark.timeout(10)
@pytest.mark.usefixtures("no_racy_window")
@pytest.mark.parametrize("new_content", [b"BBBB", b"BBBBBBBB"], ids=["same-size", "other-size"])
def test_in_place_restore_keeping_the_mtime_is_detected(path: Path, new_content: bytes) -> None:
    """What ``cp -p backup data.txt`` does: rewrite the same inode, then put the old mtime back."""
    write_atomic(path, b"AAAA", mtime_ns=1_700_000_000_000_000_000)
    before = os.stat(path)
    watcher = FileWatcher(str(path), CountingParser())
    assert watcher.get_data() == "AAAA"

    with open(path, "r+b") as f:
        f.truncate()
        f.write(new_content)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert watcher.get_data() == new_content.decode()


# --- improvement 3: a failed parse is retried on any change, and only then ------------------------------


@pytest.mark.timeout(10)
@pytest.mark.usefixtures("no_racy_window")
def test_failed_parse_is_retried_on_any_change_but_not_on_every_call(path: Path) -> None:
    parser = CountingParser()
    base = 1_700_000_000_000_000_000
    write_atomic(path, b"good-1", mtime_ns=base)
    watcher = FileWatcher(str(path), parser)
    assert (watcher.get_data(), parser.calls) == ("good-1", 1)

    write_atomic(path, b"bad", mtime_ns=base + 10_000_000_000)
    assert (watcher.get_data(), parser.calls) == ("good-1", 2)
    for _ in range(5):
        assert watcher.get_data() == "good-1"
    assert parser.calls == 2, "an unchanged broken file was parsed again"

    # Any signature change retries, even a touch of the same broken bytes.
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert (watcher.get_data(), parser.calls) == ("good-1", 3)

    # The fix carries an OLDER mtime than the broken version: it must still be picked up.
    write_atomic(path, b"good-2", mtime_ns=base + 5_000_000_000)
    assert watcher.get_data() == "good-2"


@pytest.mark.timeout(10)
@pytest.mark.usefixtures("no_racy_window")
def test_failed_first_load_is_not_retried_until_the_file_changes(path: Path) -> None:
    parser = CountingParser()
    write_atomic(path, b"bad", mtime_ns=1_700_000_000_000_000_000)
    watcher = FileWatcher(str(path), parser)
    for _ in range(5):
        with pytest.raises(WatchedFileNotAvailableError):
            watcher.get_data()
    assert parser.calls == 1
    write_atomic(path, b"good", mtime_ns=1_600_000_000_000_000_000)
    assert watcher.get_data() == "good"


# --- improvement 4: many concurrent callers, one reload --------------------------------------------------


def _in_file_watcher(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code.co_filename == file_watcher.__file__:
            return True
        frame = frame.f_back
    return False


@pytest.mark.timeout(60)
def test_concurrent_threads_reload_a_changed_file_once(path: Path) -> None:
    release = threading.Event()
    calls: List[str] = []

    def parser(f: IO[Any]) -> str:
        data: str = f.read()
        calls.append(data)
        if data == "v2":
            release.wait(30)
        return data

    path.write_text("v1")
    watcher = FileWatcher(str(path), parser)
    write_atomic(path, b"v2")

    results: List[str] = []
    threads = [threading.Thread(target=lambda: results.append(watcher.get_data())) for _ in range(20)]
    for thread in threads:
        thread.start()
    try:
        # Hold the first reload open until every caller is inside the watcher, so that without a lock
        # they would all parse.
        def all_inside() -> bool:
            frames = sys._current_frames()
            return all(t.ident in frames and _in_file_watcher(frames[t.ident]) for t in threads)

        wait_for(all_inside, 30, "all 20 callers inside FileWatcher")
    finally:
        release.set()
        for thread in threads:
            thread.join(30)
    assert results == ["v2"] * 20
    assert calls == ["v1", "v2"]


_GEVENT_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()

    import json, os, sys, threading, time
    import gevent
    from livedata.file_watcher import FileWatcher

    path = sys.argv[1]
    out = {"patched": monkey.is_module_patched("threading") and monkey.is_module_patched("time")}

    def publish(data):
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)

    # The constructor's backoff must yield to other greenlets: the file only appears if it does.
    writer = gevent.spawn(publish, b"v1")
    calls = []
    release = threading.Event()

    def parser(f):
        data = f.read()
        calls.append(data)
        if data == "v2":
            release.wait(30)
        return data

    watcher = FileWatcher(path, parser, timeout=20, backoff=0.001)
    writer.join()
    publish(b"v2")

    arrived = []
    results = []

    def reader():
        arrived.append(1)
        results.append(watcher.get_data())

    readers = [gevent.spawn(reader) for _ in range(20)]
    deadline = time.monotonic() + 30
    while len(arrived) < 20 and time.monotonic() < deadline:
        gevent.sleep(0)
    # Greenlets only switch when they block, so each reader is now parked in the lock or the parser.
    out["parked"] = len(arrived)
    release.set()
    gevent.joinall(readers, timeout=30)
    out["results"] = results
    out["calls"] = calls
    print(json.dumps(out))
    """
)


@pytest.mark.timeout(90)
def test_concurrent_greenlets_reload_a_changed_file_once(path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _GEVENT_SCRIPT, str(path)], capture_output=True, text=True, timeout=80
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["patched"] is True
    assert out["parked"] == 20
    assert out["results"] == ["v2"] * 20
    assert out["calls"] == ["v1", "v2"]


# --- improvement 5: freshness by default, bounded staleness on request ---------------------------------


@pytest.mark.timeout(10)
@pytest.mark.usefixtures("no_racy_window")
def test_default_sees_a_change_on_the_very_next_call(path: Path) -> None:
    path.write_text("v1")
    watcher = FileWatcher(str(path), CountingParser())
    for version in ("v2", "v3", "v4"):
        write_atomic(path, version.encode())
        assert watcher.get_data() == version


@pytest.mark.timeout(30)
def test_check_interval_serves_stale_data_within_the_interval_only(path: Path) -> None:
    interval = 1.0
    parser = CountingParser()
    path.write_text("v1")
    started = time.monotonic()
    watcher = FileWatcher(str(path), parser, check_interval=interval)
    assert watcher.get_data() == "v1"
    write_atomic(path, b"v2")
    stale = watcher.get_data_and_mtime()[0]
    stale_at = time.monotonic()

    wait_for(lambda: watcher.get_data() == "v2", 20, "the change to show after check_interval")
    seen_at = time.monotonic()
    # No stat may happen before the interval since the constructor's check has passed.
    assert seen_at - started >= interval
    if stale_at - started < interval:
        assert stale == "v1"
    assert parser.calls == 2
    assert watcher.get_data_and_mtime() == ("v2", os.stat(path).st_mtime)


@pytest.mark.timeout(30)
def test_check_interval_rechecks_an_unchanged_file_without_reparsing(path: Path) -> None:
    parser = CountingParser()
    path.write_text("v1")
    watcher = FileWatcher(str(path), parser, check_interval=0.05)
    first_fast = watcher._fast
    wait_for(lambda: watcher.get_data() == "v1" and watcher._fast[0] > first_fast[0], 10, "a re-armed check")
    assert parser.calls == 1


@pytest.mark.timeout(10)
def test_check_interval_does_not_delay_the_first_load(path: Path) -> None:
    watcher = FileWatcher(str(path), CountingParser(), check_interval=3600)
    with pytest.raises(WatchedFileNotAvailableError):
        watcher.get_data()
    path.write_text("v1")
    assert watcher.get_data() == "v1"


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("no_racy_window")
def test_check_interval_never_goes_back_to_an_older_value(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stat taken before a concurrent refresh must not re-arm the older value once a newer one was returned."""
    interval = 0.2
    path.write_text("v1")
    watcher = FileWatcher(str(path), CountingParser(), check_interval=interval)
    assert watcher.get_data() == "v1"

    slow_thread_stated = threading.Event()
    release = threading.Event()
    real_stat = file_watcher._stat

    def slowed_stat(target: str) -> os.stat_result:  # only the slow thread's stat is held up, after it was taken
        result = real_stat(target)
        if threading.current_thread().name == "slow-reader":
            slow_thread_stated.set()
            release.wait(10)
        return result

    monkeypatch.setattr(file_watcher, "_stat", slowed_stat)
    expired = watcher._fast[0]
    wait_for(lambda: time.monotonic() > expired, 5, "the interval to pass")
    slow = threading.Thread(target=watcher.get_data, name="slow-reader")
    slow.start()
    assert slow_thread_stated.wait(10)  # it holds a stat of v1 and is about to re-arm v1

    write_atomic(path, b"v2")
    expired = watcher._fast[0]
    wait_for(lambda: time.monotonic() > expired, 5, "the interval to pass")
    assert watcher.get_data() == "v2"
    release.set()
    slow.join(10)
    for _ in range(100):  # within the next interval: must never serve v1 again
        assert watcher.get_data() == "v2"
