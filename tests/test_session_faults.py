"""A session that breaks under the mirror: credentials rotated under load, kazoo's connection loop killed.

Whatever ends the connection, the mirror (and LiveNode, LiveTree) must start a new session and re-read
everything: files end equal to their nodes, and changes made afterwards keep flowing.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient
from kazoo.protocol.states import KazooState
from kazoo.security import make_digest_acl

from livedata.live_node import LiveNode
from livedata.session import SessionKeeper
from livedata.testing.watcher_process import node_settings, read_bytes
from livedata.testing.zookeeper import ZooKeeperServer, wait_for
from tests.conftest import make_client
from tests.stray_reply_proxy import StrayReplyProxy

pytestmark = pytest.mark.timeout(120)

NODES = 250
OLD = ("rotating-a", "password-a")
NEW = ("rotating-b", "password-b")
ADMIN = ("admin", "admin-password")
VALUE_SIZE = 4096  # replies this size keep reads in flight for a while: the race needs them there
ROTATIONS = 6  # three each way


def write_secrets(path: str, user: tuple[str, str]) -> None:
    """Replace the secrets file atomically, as a secrets agent would."""
    with open(f"{path}.new", "w") as f:
        json.dump({"secrets": {"secret/zk": {"type": "simple", "value": ":".join(user)}}}, f)
    os.rename(f"{path}.new", path)


def mismatches(client: KazooClient, dests: dict[str, str]) -> list[str]:
    """The dests that do not hold exactly their node's data."""
    return [dest for source, dest in dests.items() if read_bytes(dest) != client.get(source)[0]]


class Churn:
    """A client setting every node, round after round, about every 50 ms, until stopped."""

    def __init__(self, client: KazooClient, sources: list[str]) -> None:
        self.client = client
        self.sources = sources
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Churn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.rounds += 1
            value = f"round {self.rounds}".encode().ljust(VALUE_SIZE, b".")
            for result in [self.client.set_async(source, value) for source in self.sources]:
                result.get(timeout=30)
            self._stop.wait(0.01)


@pytest.fixture
def admin(zk_server: ZooKeeperServer) -> Iterator[KazooClient]:
    client = make_client(zk_server.address, auth_data=[("digest", ":".join(ADMIN))])
    yield client
    client.stop()
    client.close()


def test_credentials_rotated_under_load_keep_every_file_flowing(
    zk_server: ZooKeeperServer, admin: KazooClient, zk_path: str, workdir: str, start_watcher
) -> None:
    """Rotation between two identities the ACLs both grant, while every node changes every 50 ms."""
    acl = [make_digest_acl(*OLD, read=True), make_digest_acl(*NEW, read=True), make_digest_acl(*ADMIN, all=True)]
    sources = [f"{zk_path}/n{index:03d}" for index in range(NODES)]
    for source in sources:
        admin.create(source, b"initial", acl=acl)
    secrets = f"{workdir}/secrets.json"
    write_secrets(secrets, OLD)
    settings: dict[str, object] = {
        "zookeeper.hosts": zk_server.address,
        "zookeeper.timeout": "3 seconds",
        "zookeeper.credentials": "secret/zk",
        "secrets.path": secrets,
    }
    dests = {source: f"{workdir}/out/{source.rsplit('/', 1)[1]}" for source in sources}
    for source, dest in dests.items():
        settings.update(node_settings(source.rsplit("/", 1)[1], source, dest))
    watcher = start_watcher(settings)
    watcher.wait_for_log(f"initial sync of {NODES} nodes done", timeout=60)

    with Churn(admin, sources):
        for rotation, user in enumerate((NEW, OLD) * (ROTATIONS // 2), start=1):
            time.sleep(1.5)  # the cadence of the fault, not a synchronisation
            write_secrets(secrets, user)
            watcher.wait_for_log("zookeeper.credentials changed", count=rotation)
        time.sleep(1.7)

    wait_for(lambda: not mismatches(admin, dests), 30, "every file to equal its node after the rotations")
    admin.set(sources[0], b"after the rotations")
    wait_for(lambda: read_bytes(dests[sources[0]]) == b"after the rotations", 20, "a later change to flow")
    assert watcher.alive()
    assert "Traceback" not in watcher.output()


# --- kazoo's connection routine killed by a reply it cannot pair -------------------------------------------------


@pytest.fixture
def proxy(zk_server: ZooKeeperServer) -> Iterator[StrayReplyProxy]:
    relay = StrayReplyProxy(zk_server.client_port)
    yield relay
    relay.close()


def test_mirror_starts_a_new_session_when_the_connection_routine_dies(
    zk: KazooClient, zk_path: str, proxy: StrayReplyProxy, workdir: str, start_watcher
) -> None:
    sources = [f"{zk_path}/n{index:02d}" for index in range(20)]
    for source in sources:
        zk.create(source, b"before")
    settings: dict[str, object] = {"zookeeper.hosts": proxy.address, "zookeeper.timeout": "3 seconds"}
    dests = {source: f"{workdir}/out/{source.rsplit('/', 1)[1]}" for source in sources}
    for source, dest in dests.items():
        settings.update(node_settings(source.rsplit("/", 1)[1], source, dest))
    watcher = start_watcher(settings)
    watcher.wait_for_log("initial sync of 20 nodes done")

    assert proxy.inject() == 1
    for source in sources:  # while the routine dies and a new session starts
        zk.set(source, b"changed while cut off")
    wait_for(lambda: not mismatches(zk, dests), 30, "every file to equal its node after the routine died")
    assert proxy.accepted >= 2, "a new connection"
    watcher.wait_for_log("starting a new ZooKeeper session")
    zk.set(sources[0], b"after")
    wait_for(lambda: read_bytes(dests[sources[0]]) == b"after", 20, "a later change to flow")
    assert watcher.alive()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the routine's death: injected
def test_live_node_survives_a_dead_connection_routine(zk: KazooClient, zk_path: str, proxy: StrayReplyProxy) -> None:
    source = f"{zk_path}/flags"
    zk.create(source, b"before")
    client = make_client(proxy.address)
    try:
        with LiveNode(client, source, lambda f: f.read(), timeout=10, binary=True) as node:
            assert node.get_data() == b"before"
            assert proxy.inject() == 1
            wait_for(lambda: client.state == KazooState.LOST or proxy.accepted >= 2, 10, "the routine to die")
            zk.set(source, b"after")
            wait_for(lambda: node.get_data() == b"after", 30, "the change to reach the LiveNode")
            assert proxy.accepted >= 2, "a new connection"
    finally:
        client.stop()
        client.close()


def test_live_tree_and_live_node_on_a_gevent_client_survive_a_dead_connection_routine(
    zk_server: ZooKeeperServer, zk_path: str
) -> None:
    report = gevent_scenario("dead-routine", zk_server, zk_path)
    assert report["accepted"] >= 2, "a new connection"
    assert report["revivals"] == 1


def test_a_read_whose_wake_byte_failed_is_handled_once(zk_server: ZooKeeperServer, zk_path: str) -> None:
    """kazoo fails a request at once when it cannot send the wake-up byte, yet sends it later and sets its result
    again.  gevent calls a result's links once, so the read queue handles one reply, re-reads, and loses nothing."""
    report = gevent_scenario("failed-wake", zk_server, zk_path)
    assert report["failed_wakes"] > 0, "the flood must have made kazoo fail some reads"
    assert report["set_again"] == report["failed_wakes"], "kazoo sent them anyway and set their results again"
    assert report["replies_handled_twice"] == 0
    assert report["wrong"] == [] and report["failures"] == [] and report["pending"] == 0


def gevent_scenario(name: str, server: ZooKeeperServer, root: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "tests.gevent_session_faults", name, str(server.client_port), root],
                            capture_output=True, text=True, timeout=100)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict = json.loads(result.stdout.strip().splitlines()[-1])
    return report


# --- stopping while a new session is being started ------------------------------------------------------------


def test_sigterm_while_a_new_session_is_started_under_a_hung_server_exits_cleanly(
    private_zk_server: ZooKeeperServer, workdir: str, start_watcher
) -> None:
    """The only server hangs (SIGSTOP): past the session timeout the mirror asks for a new session, and kazoo's
    connection routine waits on the hung server.  A SIGTERM then must end the daemon with 0 and no traceback: the
    renewal must not leave the client half stopped (kazoo refuses to close it) nor start it again."""
    setup = make_client(private_zk_server.address)
    setup.create("/hung", b"data")
    setup.stop()
    setup.close()
    settings: dict[str, object] = {"zookeeper.hosts": private_zk_server.address, "zookeeper.timeout": "2 seconds"}
    settings.update(node_settings("hung", "/hung", f"{workdir}/out/hung"))
    watcher = start_watcher(settings)
    watcher.wait_for_log("initial sync of 1 nodes done")
    private_zk_server.pause()
    try:
        watcher.wait_for_log("no ZooKeeper server took our session back", timeout=30)
        watcher.signal(signal.SIGTERM)
        status = watcher.process.wait(20)
    finally:
        private_zk_server.resume()
    assert status == 0, watcher.output()[-3000:]
    assert "Traceback" not in watcher.output()


def test_a_client_the_application_stops_during_a_renewal_stays_stopped(
    private_zk_server: ZooKeeperServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A renewal asked for while the only server hangs, then the application stops its client (threads): once the
    server answers again and the renewal is over, the client is still stopped, never started behind its back."""
    client = KazooClient(hosts=private_zk_server.address, timeout=2.0)
    client.start(timeout=30)
    keeper = SessionKeeper.acquire(client)
    try:
        private_zk_server.pause()
        try:
            wait_for(lambda: not client.connected, 10, "the client to notice the hung server")
            keeper.renew("a test renewal")
            client.stop()  # by the application
        finally:
            private_zk_server.resume()
        wait_for(lambda: "a test renewal: starting a new" in caplog.text and not keeper._restarting, 30, "the renewal")
        assert client._stopped.is_set() and not client.connected, "the client was started again"
    finally:
        keeper.release()
        client.stop()
        client.close()
