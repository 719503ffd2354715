"""The core promise at scale: thousands of nodes, changes in flight, and every file equal to its node at the end.

Each test runs the real daemon against real servers with 3,000 or more nodes, makes something happen while
reads are in flight (creations after start-up, a resync, a reconnection, a reload during the first pass), and
ends with every file equal to its node, READY sent, and the read queue empty (``livedata_zookeeper_requests_*``
back to zero, no read overdue).  These are the situations in which kazoo's request queue
used to wedge and leave files stale for good (see :mod:`livedata.reads`).
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator, Sequence

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.retry import KazooRetry

from livedata.testing.watcher_process import WatcherProcess, node_settings, read_bytes, write_ini
from livedata.testing.zookeeper import Ensemble, ZooKeeperServer, free_ports, wait_for
from tests.conftest import make_client
from tests.test_faults import server_port_of
from tests.test_filesystems import mount_fresh
from tests.test_metrics import Endpoint
from tests.test_systemd import FakeSystemd, is_ready

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

NODES = 3000
CONVERGE = 90.0  # seconds for thousands of files to converge on a loaded 2-core machine


# --- helpers -----------------------------------------------------------------------------------------------------


def chunks(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def create_all(client: KazooClient, data: dict[str, bytes]) -> None:
    """Create many nodes quickly: pipelined, a few hundred requests at a time."""
    paths = sorted(data)
    for part in chunks(paths):
        for result in [client.create_async(path, data[path]) for path in part]:
            result.get(timeout=30)


def set_all(client: KazooClient, data: dict[str, bytes]) -> None:
    for part in chunks(sorted(data)):
        for result in [client.set_async(path, data[path]) for path in part]:
            result.get(timeout=30)


def read_all(client: KazooClient, paths: Sequence[str]) -> dict[str, bytes | None]:
    """Every node's data (None: the node does not exist), read pipelined."""
    found: dict[str, bytes | None] = {}
    for part in chunks(paths):
        for path, result in [(path, client.get_async(path)) for path in part]:
            try:
                found[path] = result.get(timeout=30)[0] or b""
            except NoNodeError:
                found[path] = None
    return found


def mismatches(client: KazooClient, dests: dict[str, str]) -> list[str]:
    """Sources whose dest does not hold exactly the node's data (an absent node: no file)."""
    expected = read_all(client, sorted(dests))
    return [source for source, dest in dests.items() if read_bytes(dest) != expected[source]]


def wait_converged(client: KazooClient, dests: dict[str, str], timeout: float = CONVERGE) -> None:
    last: list[str] = []

    def converged() -> bool:
        last[:] = mismatches(client, dests)
        return not last

    try:
        wait_for(converged, timeout, "every file to equal its node")
    except AssertionError as e:
        raise AssertionError(f"{e}; {len(last)} still differ, e.g. {last[:5]}") from None


def configure(settings: dict[str, object], prefix: str, directory: str, count: int, first: int = 0) -> dict[str, str]:
    """``count`` nodes ``prefix/n<i>`` mirrored into ``directory/n<i>``; returns source -> dest."""
    dests = {}
    for i in range(first, first + count):
        source, dest = f"{prefix}/n{i}", f"{directory}/n{i}"
        settings.update(node_settings(f"n{i}", source, dest, mode="0644"))
        dests[source] = dest
    return dests


def assert_nothing_in_flight(metrics: Endpoint, nodes: int) -> None:
    """The read queue drained, no read ever needed its deadline, and every node is vouched for."""
    wait_for(lambda: metrics.value("livedata_zookeeper_requests_in_flight") == 0, 20, "no reads in flight")
    assert metrics.value("livedata_zookeeper_requests_queued") == 0
    assert metrics.value("livedata_zookeeper_request_timeouts_total") == 0, "a read went unanswered past its deadline"
    metrics.wait("livedata_nodes", nodes, state="in_sync")


@pytest.fixture
def systemd(workdir: str) -> Iterator[FakeSystemd]:
    stand_in = FakeSystemd(os.path.join(workdir, "notify.sock"))
    yield stand_in
    stand_in.close()


def start(
    start_watcher, systemd: FakeSystemd, settings: dict[str, object], port: int
) -> tuple[WatcherProcess, Endpoint]:
    settings["watcher.metrics_address"] = f"127.0.0.1:{port}"
    watcher = start_watcher(settings, env={"NOTIFY_SOCKET": systemd.name})
    return watcher, Endpoint(port)


def base(hosts: str, **watcher: object) -> dict[str, object]:
    settings: dict[str, object] = {"zookeeper.hosts": hosts, "zookeeper.timeout": "6 seconds"}
    settings.update({f"watcher.{key}": value for key, value in watcher.items()})
    return settings


def mirrored_names(directory: str) -> list[str]:
    """The names in a dest directory besides the watchers' lock file (which claims its dests for one watcher)."""
    return sorted(name for name in os.listdir(directory) if name != ".livedata.lock")


# --- the tests ---------------------------------------------------------------------------------------------------


def test_thousands_of_absent_nodes_created_after_start_up(zk_server, zk, zk_path, workdir, systemd, start_watcher):
    settings = base(zk_server.address)
    dests = configure(settings, zk_path, f"{workdir}/out", NODES)
    watcher, metrics = start(start_watcher, systemd, settings, free_ports(1)[0])
    systemd.wait_for(is_ready, 60, "READY=1 after the first pass over absent nodes")
    assert not os.path.exists(f"{workdir}/out") or mirrored_names(f"{workdir}/out") == []

    create_all(zk, {source: f"created {source}".encode() for source in dests})
    wait_converged(zk, dests)
    assert_nothing_in_flight(metrics, NODES)
    assert watcher.alive()


def test_thousands_of_changes_during_resyncs(zk_server, zk, zk_path, workdir, systemd, start_watcher):
    data = {f"{zk_path}/n{i}": b"round 0" for i in range(NODES)}
    create_all(zk, data)
    settings = base(zk_server.address, resync_interval="1 second")
    dests = configure(settings, zk_path, f"{workdir}/out", NODES)
    watcher, metrics = start(start_watcher, systemd, settings, free_ports(1)[0])
    systemd.wait_for(is_ready, 60, "READY=1")
    wait_converged(zk, dests)

    resyncs = metrics.value("livedata_resyncs_total") or 0
    rounds = 0
    # Keep changing every node until at least three resync passes ran meanwhile.
    while rounds < 3 or (metrics.value("livedata_resyncs_total") or 0) < resyncs + 3:
        rounds += 1
        set_all(zk, {source: f"round {rounds}".encode() for source in dests})
        assert rounds < 200, "no resync pass ran while nodes changed"
    # Resyncs every second keep reads in flight nearly all the time: slow them down to see the queue drain.
    settings["watcher.resync_interval"] = "10 minutes"
    config_path = watcher.process.args[3]
    write_ini(os.path.dirname(config_path), settings, os.path.basename(config_path))
    watcher.signal(signal.SIGHUP)
    watcher.wait_for_log("reloaded")
    wait_converged(zk, dests)
    assert all(read_bytes(dest) == f"round {rounds}".encode() for dest in dests.values())
    assert_nothing_in_flight(metrics, NODES)
    assert watcher.alive()


class Changer(threading.Thread):
    """Sets every node again and again, round after round, until stopped; ``rounds`` counts the finished ones.

    A round cut off by a connection loss is set again (kazoo's retry; a set is idempotent): stopping one
    server of the ensemble drops every client when that server was the leader, the changer's too, and what
    the tests check is the watcher, not the changer's own luck in an election.
    """

    def __init__(self, client: KazooClient, sources: Sequence[str]) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.sources = list(sources)
        self.rounds = 0
        self.error: BaseException | None = None
        self._stopping = threading.Event()

    def run(self) -> None:
        retry = KazooRetry(max_tries=-1, delay=0.1, max_delay=1.0, deadline=60.0)
        try:
            while not self._stopping.is_set():
                retry(set_all, self.client, {source: f"round {self.rounds + 1}".encode() for source in self.sources})
                self.rounds += 1
        except BaseException as e:  # surfaced by stop()
            self.error = e

    def wait_rounds(self, count: int, timeout: float = 60.0) -> None:
        target = self.rounds + count
        wait_for(lambda: self.rounds >= target or self.error, timeout, f"{count} more rounds of changes")
        assert self.error is None, self.error

    def stop(self) -> None:
        self._stopping.set()
        self.join(60)
        assert self.error is None, self.error


def test_thousands_of_changes_on_a_journaled_ext4(zk_server, zk, zk_path, tmp_path, workdir, systemd, start_watcher):
    """On a journaled ext4 (mkfs.ext4's defaults, as on most servers), thousands of files replaced round after
    round, batches and single changes mixed, all end equal to their nodes."""
    mounts = mount_fresh(tmp_path, "ext4", "data=ordered", megabytes=64)
    directory = next(mounts)
    try:
        sources = [f"{zk_path}/n{i}" for i in range(NODES)]
        create_all(zk, {source: b"round 0" for source in sources})
        settings = base(zk_server.address)
        dests = configure(settings, zk_path, f"{directory}/out", NODES)
        watcher, metrics = start(start_watcher, systemd, settings, free_ports(1)[0])
        systemd.wait_for(is_ready, 60, "READY=1")
        changer = Changer(zk, sources)
        changer.start()
        changer.wait_rounds(3)
        changer.stop()
        wait_converged(zk, dests)
        assert_nothing_in_flight(metrics, NODES)
        assert mirrored_names(f"{directory}/out") == sorted(os.path.basename(dest) for dest in dests.values())
        assert watcher.alive()
        watcher.stop()
    finally:
        mounts.close()


def test_thousands_of_changes_during_a_reconnection(zk_ensemble: Ensemble, workdir, systemd, start_watcher):
    ports = [server.client_port for server in zk_ensemble.servers]
    watched = ",".join(server.address for server in zk_ensemble.servers[:2])
    admin = make_client(zk_ensemble.servers[2].address)  # the changes go through the server the watcher never uses
    try:
        sources = [f"/scale/reconnect/n{i}" for i in range(NODES)]
        admin.ensure_path("/scale/reconnect")
        create_all(admin, {source: b"round 0" for source in sources})
        settings = base(watched)
        dests = configure(settings, "/scale/reconnect", f"{workdir}/out", NODES)
        watcher, metrics = start(start_watcher, systemd, settings, free_ports(1)[0])
        systemd.wait_for(is_ready, 60, "READY=1")

        changer = Changer(admin, sources)
        changer.start()
        changer.wait_rounds(1)
        port = wait_for(lambda: server_port_of(watcher.pid, ports), 10, "the watcher's connection")
        zk_ensemble.server_for_port(port).stop()  # the watcher moves to the other server while nodes change
        wait_for(lambda: server_port_of(watcher.pid, ports) not in (None, port), 30, "a reconnection")
        changer.wait_rounds(2)
        changer.stop()

        wait_converged(admin, dict(zip(sources, (dests[source] for source in sources))))
        assert all(read_bytes(dest) == f"round {changer.rounds}".encode() for dest in dests.values())
        assert (metrics.value("livedata_zookeeper_reconnects_total") or 0) >= 1
        assert_nothing_in_flight(metrics, NODES)
        assert watcher.alive()
    finally:
        admin.stop()
        admin.close()


def test_reload_adding_thousands_of_nodes_during_the_first_pass(
    private_zk_server: ZooKeeperServer, workdir, systemd, start_watcher
):
    admin = make_client(private_zk_server.address)
    try:
        admin.ensure_path("/scale/reload")
        data = {f"/scale/reload/n{i}": f"value {i} ".encode() * 40 for i in range(2 * NODES)}
        create_all(admin, data)
        settings = base(private_zk_server.address)
        first = configure(settings, "/scale/reload", f"{workdir}/out", NODES)
        watcher, metrics = start(start_watcher, systemd, settings, free_ports(1)[0])
        config_path = watcher.process.args[3]
        watcher.wait_for_log("watching")

        # Freeze the server as soon as the first files land, so the first pass is certainly still running.
        wait_for(lambda: any(os.path.exists(dest) for dest in first.values()), 30, "the first files")
        private_zk_server.pause()
        try:
            assert "initial sync" not in watcher.output(), "the first pass ended before the reload could join it"
            assert not any(is_ready(message) for message in systemd.messages)
            more = configure(settings, "/scale/reload", f"{workdir}/out", NODES, first=NODES)
            write_ini(os.path.dirname(config_path), settings, os.path.basename(config_path))
            watcher.signal(signal.SIGHUP)
            watcher.wait_for_log("reloaded")
        finally:
            private_zk_server.resume()

        systemd.wait_for(is_ready, 60, "READY=1 after the reload joined the first pass")
        wait_converged(admin, {**first, **more})
        assert_nothing_in_flight(metrics, 2 * NODES)
        assert watcher.alive()
    finally:
        admin.stop()
        admin.close()
