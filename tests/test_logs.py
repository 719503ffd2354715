"""Logging: journald priorities, --log-level, kazoo's noise thinned, and the watcher's own connection lines."""
from __future__ import annotations

import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading

import pytest

from livedata import logs
from livedata.testing.watcher_process import WatcherProcess, node_settings, wait_for_content, write_ini
from livedata.testing.zookeeper import wait_for

pytestmark = pytest.mark.timeout(60)


def test_journal_priorities_follow_levels():
    assert [logs.journal_priority(level) for level in (10, 20, 30, 40, 50)] == [7, 6, 4, 3, 2]
    record = logging.LogRecord("livedata.x", logging.ERROR, __file__, 1, "broken\nsecond line", None, None)
    assert logs.JournalFormatter("%(name)s: %(message)s").format(record) == "<3>livedata.x: broken\n<3>second line"


def test_journal_is_detected_only_for_the_stream_systemd_named():
    with tempfile.TemporaryFile("w+") as journal, tempfile.TemporaryFile("w+") as other:
        status = os.fstat(journal.fileno())
        environ = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        assert logs.logs_to_journal(journal, environ)
        assert not logs.logs_to_journal(other, environ)  # inherited variable, different stream: not the journal
        assert not logs.logs_to_journal(journal, {})
        assert not logs.logs_to_journal(journal, {"JOURNAL_STREAM": "garbage"})
        assert not logs.logs_to_journal(io.StringIO(), environ)


def test_repeated_kazoo_messages_are_shown_once_per_window():
    noise = logs.KazooNoise(window=600.0)
    attempts: list[str] = []
    failures: list[str] = []
    noise.on_attempt, noise.on_failure = attempts.append, failures.append

    def record(level: int, msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("kazoo.client", level, __file__, 1, msg, args, None)

    connecting = record(logging.INFO, "Connecting to %s(%s):%s, use_ssl: %r", "zk01", "10.0.0.1", 2181, False)
    dropped = record(logging.WARNING, "Connection dropped: %s", "socket connection error: Connection refused")
    assert not noise.filter(connecting)  # INFO: heard, not shown
    assert [noise.filter(dropped) for _ in range(5)] == [True, False, False, False, False]
    assert attempts == ["zk01:2181"]
    assert failures == ["Connection dropped: socket connection error: Connection refused"] * 5
    noise.silence()
    stopped = "Failed connecting to Zookeeper within the connection retry policy."
    assert not noise.filter(record(logging.WARNING, stopped))


def test_unreachable_zookeeper_is_reported_in_our_words_once(workdir):
    """A 'server' that accepts and hangs up at once: every attempt fails, and we can count the attempts."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    attempts = []

    def hang_up() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            attempts.append(1)
            connection.close()

    threading.Thread(target=hang_up, daemon=True).start()
    config = write_ini(workdir, {"zookeeper.hosts": f"127.0.0.1:{port}", "zookeeper.timeout": "1 second",
                                 **node_settings("a", "/a", f"{workdir}/out/a")})  # fmt: skip
    watcher = WatcherProcess(config)
    try:
        watcher.wait_for_log(f"cannot reach ZooKeeper server 127.0.0.1:{port}: ")
        seen = len(attempts)
        wait_for(lambda: len(attempts) >= seen + 3, 30, "kazoo to try three more times")
    finally:
        assert watcher.stop() == 0
        listener.close()
    output = watcher.output()
    assert output.count("cannot reach ZooKeeper server") == 1, output
    kazoo_messages = [line.split(" kazoo.", 1)[1] for line in output.splitlines() if " kazoo." in line]
    assert len(kazoo_messages) == len(set(kazoo_messages)), output  # none repeated within 10 minutes
    assert len(kazoo_messages) < 3 + 1, output  # three more attempts (and more) did not each add a line
    assert "Failed connecting to Zookeeper" not in output  # not after SIGTERM either
    assert "Traceback" not in output


def test_connection_changes_name_the_server(private_zk_server, workdir):
    from tests.conftest import make_client

    admin = make_client(private_zk_server.address)
    admin.create("/a", b"x")
    admin.stop()
    admin.close()
    config = write_ini(workdir, {"zookeeper.hosts": private_zk_server.address, "zookeeper.timeout": "2 seconds",
                                 **node_settings("a", "/a", f"{workdir}/out/a")})  # fmt: skip
    watcher = WatcherProcess(config)
    try:
        wait_for_content(f"{workdir}/out/a", b"x")
        watcher.wait_for_log(f"connected to ZooKeeper server {private_zk_server.address} (read-write)")
        private_zk_server.stop()
        watcher.wait_for_log(f"lost the connection to ZooKeeper server {private_zk_server.address}")
        private_zk_server.start()
        watcher.wait_for_log(f"connected to ZooKeeper server {private_zk_server.address}", timeout=30, count=2)
    finally:
        assert watcher.stop() == 0


def test_journal_lines_carry_priorities_and_no_timestamps(workdir):
    config = write_ini(workdir, {"zookeeper.hosts": "127.0.0.1:1", **node_settings("a", "/a", f"{workdir}/out/a")})
    log_path = os.path.join(workdir, "journal.log")
    with open(log_path, "wb") as journal:
        status = os.fstat(journal.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        process = subprocess.Popen([sys.executable, "-m", "livedata.watcher", config, "--log-level", "warning"],
                                   stdout=journal, stderr=journal, env=env)  # fmt: skip
        try:
            wait_for(lambda: "cannot reach ZooKeeper" in read_text(log_path), 20, "the connection warning")
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(10) == 0
    lines = read_text(log_path).splitlines()
    assert lines
    assert all(re.match(r"<[2-7]>[a-z.]+: ", line) for line in lines), lines
    assert any(line.startswith("<4>livedata.connection: cannot reach ZooKeeper server 127.0.0.1:1") for line in lines)
    assert not any(line.startswith("<6>") for line in lines)  # --log-level warning


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def test_reminder_repeats_while_disconnected_and_stops_on_connect(caplog):
    """The observer alone, on a real kazoo client that is never started: the reminder is its own timer."""
    import gevent
    from kazoo.client import KazooClient
    from kazoo.protocol.states import KazooState

    from livedata.connection_log import ConnectionLog

    caplog.set_level(logging.INFO, logger="livedata.connection")
    observer = ConnectionLog(KazooClient("127.0.0.1:1"), "127.0.0.1:1", reminder_interval=0.05)

    def reminders() -> int:
        return sum("still not connected to ZooKeeper after" in record.getMessage() for record in caplog.records)

    def gevent_wait(condition, timeout: float = 10.0) -> None:  # the timer runs only while the hub does
        deadline = gevent.get_hub().loop.now() + timeout
        while not condition():
            assert gevent.get_hub().loop.now() < deadline, caplog.text
            gevent.sleep(0.01)

    observer.start()
    observer.attempting("127.0.0.1:1")
    observer.attempt_failed("Connection dropped: socket connection error: Connection refused")
    observer.attempt_failed("Connection dropped: socket connection error: Connection refused")
    gevent_wait(lambda: reminders() >= 2)
    assert caplog.text.count("cannot reach ZooKeeper server 127.0.0.1:1: Connection refused") == 1
    assert "last attempt 127.0.0.1:1: Connection refused" in caplog.text

    observer.state_changed(KazooState.CONNECTED)
    assert "connected to ZooKeeper server 127.0.0.1:1 (read-write)" in caplog.text
    seen = reminders()
    gevent.sleep(0.2)  # four reminder intervals: none may come while connected
    assert reminders() == seen

    observer.state_changed(KazooState.SUSPENDED)
    assert "lost the connection to ZooKeeper server 127.0.0.1:1" in caplog.text
    gevent_wait(lambda: reminders() > seen)
    observer.stop()
