"""The Prometheus endpoint (``watcher.metrics_address``) of a real watcher against a real ZooKeeper."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from livedata.metrics import parse_address, short_reason
from livedata.testing.watcher_process import base_settings, node_settings, read_bytes, wait_for_content, write_ini
from livedata.testing.zookeeper import four_letter_word, free_ports, wait_for

pytestmark = pytest.mark.timeout(60)


class Endpoint:
    def __init__(self, port: int) -> None:
        self.port = port

    def text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            return response.read().decode()

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        found = {}
        for family in text_string_to_metric_families(self.text()):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, tuple(sorted(labels.items()))))

    def wait(self, name: str, expected: float, timeout: float = 20.0, **labels: str) -> None:
        wait_for(lambda: self.value(name, **labels) == expected, timeout, f"{name}{labels} == {expected}")

    def wait_at_least(self, name: str, minimum: float, timeout: float = 20.0, **labels: str) -> float:
        def reached() -> float | None:
            value = self.value(name, **labels)
            return value if value is not None and value >= minimum else None

        return wait_for(reached, timeout, f"{name}{labels} >= {minimum}")




def base(server, port: int | None = None, **watcher_options: object) -> dict:
    return base_settings(server, metrics_port=port, **watcher_options)


@pytest.fixture
def hidden_library(workdir) -> dict[str, str]:
    """An environment in which ``import prometheus_client`` fails, as on a host without the extra."""
    shim = os.path.join(workdir, "no-prometheus")
    os.makedirs(shim)
    with open(os.path.join(shim, "prometheus_client.py"), "w") as f:
        f.write("raise ImportError('No module named prometheus_client (hidden by the test)')\n")
    return {"PYTHONPATH": shim}


# --- pure functions ------------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_parse_address():
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address(" [::1]:9464 ") == ("::1", 9464)
    assert parse_address(":9464") == ("", 9464)
    for bad in ("9464", "localhost", "host:0", "host:70000", "host:http", "::1:9464"):
        with pytest.raises(ValueError):
            parse_address(bad)


@pytest.mark.timeout(10)
def test_failure_reasons_are_short_bounded_labels():
    assert short_reason("write", os.strerror(13)) == "EACCES"
    assert short_reason("write", "No space left on device") == "ENOSPC"
    assert short_reason("write", "something unheard of") == "other"
    assert short_reason("read", "not allowed to read the node (check zookeeper.credentials)") == "NoAuthError"
    assert short_reason("read", "MarshallingError: bad data") == "MarshallingError"
    assert short_reason("read", "weird, text: here") == "other"


# --- the daemon --------------------------------------------------------------------------------


def test_versions_connection_heartbeat_and_node_counts(zk_server, zk, zk_path, workdir, start_watcher):
    (port,) = free_ports(1)
    zk.create(f"{zk_path}/a", b"one")
    zk.create(f"{zk_path}/b", b"bee")
    settings = base(zk_server, port, heartbeat_interval="300 milliseconds")
    settings.update(node_settings("a", f"{zk_path}/a", f"{workdir}/a"))
    settings.update(node_settings("b", f"{zk_path}/b", f"{workdir}/b"))
    start_watcher(settings)
    endpoint = Endpoint(port)
    wait_for_content(f"{workdir}/a", b"one")

    zk.set(f"{zk_path}/a", b"two")
    stat = zk.set(f"{zk_path}/a", b"three")
    endpoint.wait("livedata_node_version", stat.version, node="a")
    assert endpoint.value("livedata_node_mzxid", node="a") == stat.mzxid
    assert read_bytes(f"{workdir}/a") == b"three"
    assert endpoint.value("livedata_node_in_sync", node="a") == 1
    assert endpoint.value("livedata_zookeeper_connected") == 1
    assert endpoint.value("livedata_initial_sync_complete") == 1
    assert endpoint.value("livedata_nodes", state="in_sync") == 2
    assert endpoint.value("livedata_nodes", state="failing") == 0
    age = endpoint.value("livedata_node_write_age_seconds", node="a")
    assert age is not None and age >= 0
    assert endpoint.value("livedata_writes_total", outcome="written") >= 3  # a twice or more, b once

    endpoint.wait_at_least("livedata_heartbeats_total", 2)
    assert endpoint.value("livedata_heartbeat_touched_files") == 2
    assert endpoint.value("livedata_heartbeat_age_seconds") is not None
    assert endpoint.value("process_resident_memory_bytes") > 0

    zk.delete(f"{zk_path}/b")
    endpoint.wait("livedata_node_version", -1, node="b")
    assert endpoint.value("livedata_node_mzxid", node="b") == -1
    assert read_bytes(f"{workdir}/b") is None


def test_write_failures_by_reason(zk_server, zk, zk_path, workdir, start_watcher):
    (port,) = free_ports(1)
    zk.create(f"{zk_path}/f", b"f")
    with open(f"{workdir}/a-file", "wb") as f:
        f.write(b"not a directory")
    settings = base(zk_server, port)
    settings.update(node_settings("f", f"{zk_path}/f", f"{workdir}/a-file/f"))
    settings.update(node_settings("ok", f"{zk_path}/f", f"{workdir}/ok"))
    start_watcher(settings)
    endpoint = Endpoint(port)
    endpoint.wait_at_least("livedata_write_failures_total", 2, reason="ENOTDIR")  # retried with backoff
    assert endpoint.value("livedata_nodes", state="failing") == 1
    assert endpoint.value("livedata_node_in_sync", node="f") == 0
    assert endpoint.value("livedata_node_in_sync", node="ok") == 1
    assert endpoint.value("livedata_node_version", node="f") is None  # never written


def test_read_failures_by_reason(zk_server, zk, zk_path, workdir, start_watcher):
    from kazoo.security import make_digest_acl

    (port,) = free_ports(1)
    zk.create(f"{zk_path}/secret", b"s", acl=[make_digest_acl("someone", "else", all=True)])
    settings = base(zk_server, port)
    settings.update(node_settings("secret", f"{zk_path}/secret", f"{workdir}/secret"))
    start_watcher(settings)
    endpoint = Endpoint(port)
    endpoint.wait_at_least("livedata_read_failures_total", 1, reason="NoAuthError")
    assert endpoint.value("livedata_nodes", state="failing") == 1
    assert read_bytes(f"{workdir}/secret") is None


def test_resync_repairs_are_counted(zk_server, zk, zk_path, workdir, start_watcher):
    (port,) = free_ports(1)
    zk.create(f"{zk_path}/r", b"right")
    settings = base(zk_server, port, resync_interval="300 milliseconds")
    settings.update(node_settings("r", f"{zk_path}/r", f"{workdir}/r"))
    start_watcher(settings)
    endpoint = Endpoint(port)
    wait_for_content(f"{workdir}/r", b"right")
    endpoint.wait_at_least("livedata_writes_total", 1, outcome="unchanged")  # a resync confirmed the file
    assert endpoint.value("livedata_resync_repairs_total") == 0

    os.unlink(f"{workdir}/r")
    wait_for_content(f"{workdir}/r", b"right")
    endpoint.wait("livedata_resync_repairs_total", 1)


def test_session_expiry_and_reconnects(private_zk_server, workdir, start_watcher):
    from tests.conftest import make_client

    admin = make_client(private_zk_server.address)
    admin.create("/e", b"e")
    admin.stop()
    admin.close()
    (port,) = free_ports(1)
    settings = base(private_zk_server, port)
    settings.update(node_settings("e", "/e", f"{workdir}/e"))
    watcher = start_watcher(settings)
    endpoint = Endpoint(port)
    wait_for_content(f"{workdir}/e", b"e")
    endpoint.wait("livedata_zookeeper_connected", 1)
    assert endpoint.value("livedata_zookeeper_session_expirations_total") == 0
    assert endpoint.value("livedata_zookeeper_reconnects_total") == 0

    assert four_letter_word(private_zk_server.client_port, "wchs").startswith("1 connections")
    # Frozen longer than its session timeout, the watcher comes back to a server that expired its session.
    watcher.signal(signal.SIGSTOP)
    wait_for(lambda: four_letter_word(private_zk_server.client_port, "wchs").startswith("0 connections"), 20,
             "the server to expire the frozen watcher's session (and its watch)")  # fmt: skip
    watcher.signal(signal.SIGCONT)
    endpoint.wait("livedata_zookeeper_session_expirations_total", 1, timeout=30)
    endpoint.wait("livedata_zookeeper_connected", 1, timeout=30)
    assert endpoint.value("livedata_zookeeper_reconnects_total") >= 1
    assert endpoint.value("livedata_zookeeper_disconnects_total") >= 1


def test_a_taken_port_is_retried_while_mirroring_goes_on(zk_server, zk, zk_path, workdir, start_watcher):
    (port,) = free_ports(1)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    zk.create(f"{zk_path}/p", b"p")
    settings = base(zk_server, port)
    settings.update(node_settings("p", f"{zk_path}/p", f"{workdir}/p"))
    try:
        watcher = start_watcher(settings)
        wait_for_content(f"{workdir}/p", b"p")
        watcher.wait_for_log(f"cannot serve metrics on 127.0.0.1:{port}")
    finally:
        squatter.close()
    endpoint = Endpoint(port)
    endpoint.wait("livedata_node_in_sync", 1, timeout=20, node="p")
    assert watcher.alive()


def test_scrape_does_not_log_requests(zk_server, zk, zk_path, workdir, start_watcher):
    (port,) = free_ports(1)
    zk.create(f"{zk_path}/q", b"q")
    settings = base(zk_server, port)
    settings.update(node_settings("q", f"{zk_path}/q", f"{workdir}/q"))
    watcher = start_watcher(settings)
    endpoint = Endpoint(port)
    endpoint.wait("livedata_node_in_sync", 1, node="q")
    endpoint.text()
    assert "GET /metrics" not in watcher.output()


@pytest.mark.timeout(30)
def test_address_without_the_library_is_a_config_error(workdir, hidden_library):
    settings = {"zookeeper.hosts": "127.0.0.1:1", "watcher.metrics_address": "127.0.0.1:9464"}
    settings.update(node_settings("a", "/a", f"{workdir}/a"))
    path = write_ini(workdir, settings)
    result = subprocess.run(
        [sys.executable, "-m", "livedata.watcher", path],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, **hidden_library},
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"livedata-watcher: {path}: watcher.metrics_address: needs the prometheus_client")
    assert "pip install 'livedata[metrics]'" in result.stderr


@pytest.mark.timeout(30)
def test_bad_address_is_a_config_error(workdir):
    settings = {"zookeeper.hosts": "127.0.0.1:1", "watcher.metrics_address": "localhost"}
    settings.update(node_settings("a", "/a", f"{workdir}/a"))
    path = write_ini(workdir, settings)
    command = [sys.executable, "-m", "livedata.watcher", path]
    result = subprocess.run(command, capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"livedata-watcher: {path}: watcher.metrics_address: 'localhost' is not HOST:PORT (like 127.0.0.1:9464)"
    ]


def test_the_daemon_runs_without_the_library_when_metrics_are_off(
    zk_server, zk, zk_path, workdir, start_watcher, hidden_library
):
    zk.create(f"{zk_path}/m", b"no metrics")
    settings = base(zk_server, None)
    settings.update(node_settings("m", f"{zk_path}/m", f"{workdir}/m"))
    watcher = start_watcher(settings, env=hidden_library)
    wait_for_content(f"{workdir}/m", b"no metrics")
    zk.set(f"{zk_path}/m", b"still no metrics")
    wait_for_content(f"{workdir}/m", b"still no metrics")
    watcher.signal(signal.SIGTERM)
    assert watcher.process.wait(timeout=20) == 0  # a clean stop, however long a loaded machine takes
    assert "prometheus" not in watcher.output().lower()


def test_no_node_is_in_sync_while_disconnected(private_zk_server, workdir, start_watcher):
    """A disconnected watcher cannot vouch for its copy: in_sync drops with the connection and returns with it."""
    from tests.conftest import make_client

    admin = make_client(private_zk_server.address)
    admin.create("/d", b"d")
    admin.stop()
    admin.close()
    (port,) = free_ports(1)
    settings = base(private_zk_server, port, session_timeout="4 seconds")
    settings.update(node_settings("d", "/d", f"{workdir}/d"))
    start_watcher(settings)
    endpoint = Endpoint(port)
    wait_for_content(f"{workdir}/d", b"d")
    endpoint.wait("livedata_node_in_sync", 1, node="d")
    endpoint.wait("livedata_zookeeper_connected", 1)

    private_zk_server.stop()
    endpoint.wait("livedata_zookeeper_connected", 0)
    assert endpoint.value("livedata_node_in_sync", node="d") == 0
    assert endpoint.value("livedata_nodes", state="in_sync") == 0
    assert endpoint.value("livedata_nodes", state="pending") == 1

    private_zk_server.start()
    endpoint.wait("livedata_zookeeper_connected", 1, timeout=30)
    endpoint.wait("livedata_node_in_sync", 1, timeout=30, node="d")
    assert endpoint.value("livedata_nodes", state="in_sync") == 1
