"""LiveNode against real ZooKeeper servers: loading, changes, failures kept out, timeouts, reconnection, gevent."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NoNodeError
from kazoo.protocol.states import Callback, KazooState
from kazoo.security import make_digest_acl

from livedata.file_watcher import WatchedFileNotAvailableError
from livedata.live_node import LiveNode
from livedata.testing.zookeeper import ZooKeeperServer, four_letter_word, wait_for
from livedata.zookeeper import zookeeper_client_from_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def client_for(hosts: str, **settings: str) -> KazooClient:
    """A client as an application gets it: from configuration, through the project's factory."""
    config = {"zookeeper.hosts": hosts, **{f"zookeeper.{key}": value for key, value in settings.items()}}
    client = zookeeper_client_from_config(None, config)
    client.start(timeout=30)
    return client


def close_client(client: KazooClient) -> None:
    client.stop()
    client.close()


@pytest.fixture
def app_client(zk_server: ZooKeeperServer) -> Iterator[KazooClient]:
    """The client the LiveNode under test watches with (the arranging client is the separate ``zk``)."""
    client = client_for(zk_server.address)
    yield client
    close_client(client)


@pytest.fixture
def node(zk_path: str) -> str:
    return f"{zk_path}/flags"


def drain_callbacks(client: KazooClient) -> None:
    """Return once ``client`` has run every watch callback queued so far.

    The handler runs callbacks one at a time, in order. A watch event is queued before the response to
    the write that caused it (ZooKeeper sends the notification first), so after ``client.set()`` returns,
    a marker queued now runs only after the LiveNode has handled that change.
    """
    done = client.handler.event_object()
    client.handler.dispatch_callback(Callback("watch", done.set, ()))
    assert done.wait(10), "the client's callback queue did not drain"


class CountingJSON:
    """A JSON parser that counts its calls, to prove what was (not) reparsed."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, f: IO[str]) -> Any:
        self.calls += 1
        return json.load(f)


def wait_until_clock_passes(mtime: float) -> None:
    """Make sure a write now gets a later znode mtime (millisecond resolution) than ``mtime``."""
    wait_for(lambda: time.time() > mtime + 0.002, 5, "the clock to move past the last mtime")


@pytest.mark.timeout(30)
def test_initial_load_serves_data_and_znode_mtime(zk: KazooClient, app_client: KazooClient, node: str) -> None:
    zk.create(node, b'{"a": 1}')
    _, stat = zk.get(node)
    with LiveNode(app_client, node, json.load) as live:
        assert live.get_data() == {"a": 1}
        assert live.get_data_and_mtime() == ({"a": 1}, stat.mtime / 1000.0)
        assert live.path == node
    with LiveNode(app_client, node, json.load, timeout=0) as no_wait:  # like FileWatcher: one attempt
        assert no_wait.get_data() == {"a": 1}


@pytest.mark.timeout(30)
def test_parser_gets_text_by_default_and_bytes_when_binary(
    zk: KazooClient, app_client: KazooClient, node: str
) -> None:
    zk.create(node, "größe\r\n".encode())
    with LiveNode(app_client, node, lambda f: (f.name, f.read())) as text:
        assert text.get_data() == (node, "größe\n")
    with LiveNode(app_client, node, lambda f: f.read(), newline="") as raw_newlines:
        assert raw_newlines.get_data() == "größe\r\n"
    with LiveNode(app_client, node, lambda f: f.read(), binary=True) as binary:
        assert binary.get_data() == "größe\r\n".encode()
    with LiveNode(app_client, node, lambda f: f.read(), encoding="latin-1") as latin:
        assert latin.get_data() == "größe\n".encode().decode("latin-1")


def test_text_options_with_binary_are_a_type_error(app_client: KazooClient, node: str) -> None:
    with pytest.raises(TypeError):
        LiveNode(app_client, node, json.load, binary=True, encoding="utf-8")
    with pytest.raises(TypeError):
        LiveNode(app_client, node, json.load, binary=True, newline="")


@pytest.mark.timeout(30)
def test_change_is_served_with_its_mtime(zk: KazooClient, app_client: KazooClient, node: str) -> None:
    zk.create(node, b"1")
    with LiveNode(app_client, node, json.load) as live:
        stat = zk.set(node, b"2")
        wait_for(lambda: live.get_data() == 2, 10, "the new value")
        assert live.get_data_and_mtime() == (2, stat.mtime / 1000.0)


@pytest.mark.timeout(30)
def test_identical_set_neither_reparses_nor_moves_mtime(app_client: KazooClient, node: str) -> None:
    parser = CountingJSON()
    app_client.create(node, b'{"a": 1}')
    with LiveNode(app_client, node, parser) as live:
        value, mtime = live.get_data_and_mtime()
        wait_until_clock_passes(mtime)
        stat = app_client.set(node, b'{"a": 1}')
        assert stat.mtime / 1000.0 != mtime  # the znode did change: its mtime and version moved
        drain_callbacks(app_client)
        assert parser.calls == 1
        assert live.get_data_and_mtime() == (value, mtime)
        assert live.get_data() is value


@pytest.mark.timeout(30)
def test_parse_failure_keeps_last_good_logs_once_and_recovers(
    app_client: KazooClient, node: str, caplog: pytest.LogCaptureFixture
) -> None:
    app_client.create(node, b'{"a": 1}')
    with LiveNode(app_client, node, json.load) as live, caplog.at_level(logging.INFO, "livedata.live_node"):
        good = live.get_data_and_mtime()
        app_client.set(node, b"{broken")
        drain_callbacks(app_client)
        for _ in range(50):
            assert live.get_data_and_mtime() == good
        failures = [r for r in caplog.records if "cannot load new version" in r.getMessage()]
        assert len(failures) == 1
        assert failures[0].levelno == logging.WARNING
        assert node in failures[0].getMessage()

        app_client.set(node, b"{still broken")  # a second bad change is a second log line, nothing else
        drain_callbacks(app_client)
        assert live.get_data_and_mtime() == good
        assert len([r for r in caplog.records if "cannot load new version" in r.getMessage()]) == 2

        stat = app_client.set(node, b'{"a": 2}')
        wait_for(lambda: live.get_data() == {"a": 2}, 10, "the repaired value")
        assert live.get_data_and_mtime() == ({"a": 2}, stat.mtime / 1000.0)
        assert any("loadable again" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(30)
def test_deleted_node_keeps_last_good_until_recreated(app_client: KazooClient, node: str) -> None:
    app_client.create(node, b'{"a": 1}')
    with LiveNode(app_client, node, json.load) as live:
        good = live.get_data_and_mtime()
        app_client.delete(node)
        drain_callbacks(app_client)
        assert live.get_data_and_mtime() == good
        app_client.create(node, b'{"a": 3}')
        wait_for(lambda: live.get_data() == {"a": 3}, 10, "the value of the re-created node")


def set_null(client: KazooClient, path: str) -> None:
    """Make the znode's data null, as Java clients can; kazoo's own API only writes bytes."""
    from kazoo.protocol.serialization import SetData

    result = client.handler.async_result()
    client._call(SetData(path, None, -1), result)
    result.get(timeout=10)


@pytest.mark.timeout(30)
def test_null_data_is_a_failure_not_a_value(app_client: KazooClient, node: str) -> None:
    app_client.create(node, b"1")
    with LiveNode(app_client, node, json.load) as live:
        good = live.get_data_and_mtime()
        set_null(app_client, node)
        assert app_client.get(node)[0] is None
        drain_callbacks(app_client)
        assert live.get_data_and_mtime() == good
        app_client.set(node, b"2")
        wait_for(lambda: live.get_data() == 2, 10, "the value after the null")


@pytest.mark.timeout(30)
def test_missing_node_raises_until_created(zk: KazooClient, app_client: KazooClient, node: str) -> None:
    with LiveNode(app_client, node, json.load) as live:
        with pytest.raises(WatchedFileNotAvailableError) as raised:
            live.get_data()
        assert raised.value.path == node
        assert isinstance(raised.value.inner, NoNodeError)
        with pytest.raises(WatchedFileNotAvailableError):
            live.get_data_and_mtime()
        zk.create(node, b"5")
        assert wait_for(lambda: live.get_data() == 5, 10, "the created node")


@pytest.mark.timeout(60)
def test_timeout_waits_for_a_node_created_later(
    zk_server: ZooKeeperServer, zk: KazooClient, app_client: KazooClient, node: str
) -> None:
    errors: list[BaseException] = []

    def create_once_watched() -> None:
        # The LiveNode's exists-watch on the path proves its constructor is already waiting.
        try:
            wait_for(lambda: node in four_letter_word(zk_server.client_port, "wchp").split(), 20, "the watch")
            zk.create(node, b'{"late": true}')
        except BaseException as e:
            errors.append(e)

    creator = threading.Thread(target=create_once_watched)
    creator.start()
    try:
        live = LiveNode(app_client, node, json.load, timeout=30)
    finally:
        creator.join()
    assert not errors
    assert live.get_data() == {"late": True}
    live.close()


@pytest.mark.timeout(30)
def test_timeout_expiry_raises_with_path_and_reason(zk: KazooClient, app_client: KazooClient, node: str) -> None:
    with pytest.raises(WatchedFileNotAvailableError) as missing:
        LiveNode(app_client, node, json.load, timeout=0.3)
    assert missing.value.path == node
    assert isinstance(missing.value.inner, NoNodeError)

    zk.create(node, b"{not json")
    with pytest.raises(WatchedFileNotAvailableError) as unparsable:
        LiveNode(app_client, node, json.load, timeout=0.3)
    assert unparsable.value.path == node
    assert isinstance(unparsable.value.inner, json.JSONDecodeError)


@pytest.mark.timeout(30)
def test_client_started_later_is_followed(zk_server: ZooKeeperServer, zk: KazooClient, node: str) -> None:
    zk.create(node, b'"hello"')
    client = zookeeper_client_from_config(None, {"zookeeper.hosts": zk_server.address})
    try:
        with pytest.raises(WatchedFileNotAvailableError) as raised:
            LiveNode(client, node, json.load, timeout=0.1)
        assert raised.value.inner == "not connected to ZooKeeper"
        live = LiveNode(client, node, json.load)  # no timeout: returns at once, not connected
        with pytest.raises(WatchedFileNotAvailableError) as raised:
            live.get_data()
        assert raised.value.inner == "not connected to ZooKeeper"
        client.start(timeout=30)
        wait_for(lambda: live.get_data() == "hello", 10, "the data once connected")
    finally:
        close_client(client)


@pytest.mark.timeout(30)
def test_close_stops_following_changes(app_client: KazooClient, node: str) -> None:
    app_client.create(node, b"1")
    with LiveNode(app_client, node, json.load) as live:
        assert live.get_data() == 1
    app_client.set(node, b"2")
    drain_callbacks(app_client)
    assert live.get_data() == 1  # the last version stays readable
    app_client.set(node, b"3")
    drain_callbacks(app_client)
    assert live.get_data() == 1


@pytest.mark.timeout(60)
def test_concurrent_readers_see_consistent_pairs(zk: KazooClient, app_client: KazooClient, node: str) -> None:
    zk.create(node, b"0")
    written = {0: zk.get(node)[1].mtime / 1000.0}
    seen: set[tuple[int, float]] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(live.get_data_and_mtime())
            time.sleep(0)  # a yield, not a wait: leave the GIL to the client's threads now and then

    with LiveNode(app_client, node, json.load) as live:
        readers = [threading.Thread(target=read) for _ in range(4)]
        for reader in readers:
            reader.start()
        try:
            for n in range(1, 10):
                written[n] = zk.set(node, str(n).encode()).mtime / 1000.0
                wait_for(lambda n=n: live.get_data() == n, 10, f"value {n}")
        finally:
            stop.set()
            for reader in readers:
                reader.join()
    assert seen
    assert all(written[value] == mtime for value, mtime in seen), "a read mixed two versions"


@pytest.mark.timeout(90)
def test_server_restart_keeps_value_and_later_change_arrives(private_zk_server: ZooKeeperServer) -> None:
    admin = client_for(private_zk_server.address)
    client = client_for(private_zk_server.address, timeout="30 seconds")
    try:
        admin.create("/flags", b'{"v": 1}')
        with LiveNode(client, "/flags", json.load) as live:
            assert live.get_data() == {"v": 1}
            private_zk_server.stop()
            wait_for(lambda: not client.connected, 30, "the client to notice the server is gone")
            assert live.get_data_and_mtime()[0] == {"v": 1}
            private_zk_server.start()
            wait_for(lambda: admin.connected and client.connected, 60, "both clients to reconnect")
            admin.set("/flags", b'{"v": 2}')
            wait_for(lambda: live.get_data() == {"v": 2}, 30, "the change made after the restart")
    finally:
        close_client(admin)
        close_client(client)


@pytest.mark.timeout(60)
def test_session_expiry_keeps_value_and_rewatches(zk_server: ZooKeeperServer, zk: KazooClient, node: str) -> None:
    zk.create(node, b'{"v": 1}')
    client = client_for(zk_server.address)
    states: list[str] = []
    client.add_listener(states.append)
    try:
        with LiveNode(client, node, json.load) as live:
            old_session = client.client_id
            # Expire the session for real: a second connection takes it over and closes it.
            thief = KazooClient(hosts=zk_server.address, client_id=old_session)
            thief.start(timeout=30)
            close_client(thief)
            wait_for(lambda: KazooState.LOST in states, 30, "the session to expire")
            assert live.get_data() == {"v": 1}
            wait_for(lambda: client.connected, 30, "a new session")
            assert client.client_id[0] != old_session[0]
            zk.set(node, b'{"v": 2}')
            wait_for(lambda: live.get_data() == {"v": 2}, 30, "the change made after the expiry")
    finally:
        close_client(client)


@pytest.mark.timeout(90)
def test_under_gevent_handler(zk_server: ZooKeeperServer, zk_path: str) -> None:
    """The same behaviour in a monkey-patched process, where the client gets kazoo's gevent handler."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.gevent_live_node", "basic", zk_server.address, f"{zk_path}/flags"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["handler"] == "SequentialGeventHandler"
    assert report["parses"] == report["distinct_versions"]
    assert report["reads"] > 0


@pytest.mark.timeout(90)
def test_under_gevent_handler_a_small_envelope_inflating_to_megabytes_is_decoded_off_the_hub(
    zk_server: ZooKeeperServer, zk_path: str
) -> None:
    """About 64 KB stored, 64 MiB decoded: inflated in the callback greenlet it stopped the hub (pings, every
    other watch) for hundreds of milliseconds; the thread pool does it now."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.gevent_live_node", "inflate", zk_server.address, f"{zk_path}/inflating"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["decoded_in"] == ["thread pool"]


@pytest.mark.timeout(120)
def test_under_gevent_handler_across_server_restart() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.gevent_live_node", "restart"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"handler": "SequentialGeventHandler", "value": 2}


@pytest.mark.timeout(30)
def test_unreadable_node_is_reported_not_hung_on(zk: KazooClient, app_client: KazooClient, node: str) -> None:
    zk.create(node, b"1", acl=[make_digest_acl("someone", "else", all=True)])
    with pytest.raises(WatchedFileNotAvailableError) as raised:
        LiveNode(app_client, node, json.load, timeout=0.3)
    assert isinstance(raised.value.inner, NoAuthError)
    with LiveNode(app_client, node, json.load) as live:  # without timeout: returns after the refusal
        with pytest.raises(WatchedFileNotAvailableError) as raised:
            live.get_data()
        assert isinstance(raised.value.inner, NoAuthError)
