"""The test servers themselves: settings that tests and the fleet benchmark rely on really reach ZooKeeper."""
from __future__ import annotations

import shutil

import pytest
from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError

from livedata.testing.zookeeper import start_standalone

pytestmark = pytest.mark.timeout(60)


def test_max_client_cnxns_caps_connections_from_one_address() -> None:
    """ZooKeeper's per-address cap is real: the fleet bench lifts it, and a NATed fleet must raise it."""
    server = start_standalone(extra_config={"maxClientCnxns": "2"})
    clients = [KazooClient(hosts=server.address, timeout=5.0) for _ in range(3)]
    try:
        clients[0].start(timeout=10)
        clients[1].start(timeout=10)
        with pytest.raises(KazooTimeoutError):
            clients[2].start(timeout=3)
        with open(f"{server.directory}/server.log") as log:
            assert "Too many connections from /127.0.0.1 - max is 2" in log.read()
    finally:
        for client in clients:
            client.stop()
            client.close()
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
