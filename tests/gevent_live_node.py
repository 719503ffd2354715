"""A LiveNode scenario run in a gevent monkey-patched process (by tests/test_live_node.py).

Usage: ``python -m tests.gevent_live_node basic HOSTS NODE_PATH`` or ``python -m tests.gevent_live_node restart``
(which runs a ZooKeeper server of its own). Prints a JSON report on success; any failed check exits non-zero
with the reason on stderr.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402 -- after patching, like any gevent program
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import IO, Any  # noqa: E402

import gevent  # noqa: E402
from kazoo.handlers.gevent import SequentialGeventHandler  # noqa: E402
from kazoo.protocol.states import Callback  # noqa: E402

from livedata.live_node import LiveNode  # noqa: E402
from livedata.testing.zookeeper import start_standalone, wait_for  # noqa: E402  (its time.sleep is gevent's now)
from livedata.zookeeper import zookeeper_client_from_config  # noqa: E402


def handler_kind(client: Any) -> str:
    """Our handler subclasses kazoo's gevent handler; what matters is that it is one."""
    return "SequentialGeventHandler" if isinstance(client.handler, SequentialGeventHandler) else "other"


def basic(hosts: str, node: str) -> dict[str, Any]:
    client = zookeeper_client_from_config(None, {"zookeeper.hosts": hosts})
    admin = zookeeper_client_from_config(None, {"zookeeper.hosts": hosts})
    client.start(timeout=30)
    admin.start(timeout=30)
    parses = 0

    def parse(f: IO[str]) -> Any:
        nonlocal parses
        parses += 1
        return json.load(f)

    # The node is created by another greenlet, which can only run while the constructor waits
    # cooperatively: a constructor that blocked the hub would time out here.
    gevent.spawn(admin.create, node, b"0")
    live = LiveNode(client, node, parse, timeout=30)
    assert live.get_data() == 0

    written = {0: admin.get(node)[1].mtime / 1000.0}
    seen: set[tuple[int, float]] = set()
    reads = 0
    running = True

    def reader() -> None:
        nonlocal reads
        while running:
            seen.add(live.get_data_and_mtime())
            reads += 1
            gevent.sleep(0)

    readers = [gevent.spawn(reader) for _ in range(20)]
    for n in range(1, 10):
        written[n] = admin.set(node, str(n).encode()).mtime / 1000.0
        wait_for(lambda n=n: live.get_data() == n, 10, f"value {n}")
    running = False
    gevent.joinall(readers, timeout=10, raise_error=True)
    assert all(written[value] == mtime for value, mtime in seen), "a read mixed two versions"

    # Identical bytes through the watching client: once its callback queue has drained, nothing reparsed.
    value, mtime = live.get_data_and_mtime()
    wait_for(lambda: time.time() > mtime + 0.002, 5, "the clock to pass the last mtime")
    client.set(node, b"9")
    done = client.handler.event_object()
    client.handler.dispatch_callback(Callback("watch", done.set, ()))
    assert done.wait(10), "callback queue did not drain"
    assert live.get_data_and_mtime() == (value, mtime)

    live.close()
    report = {
        "handler": handler_kind(client),
        "parses": parses,
        "distinct_versions": len(written),
        "reads": reads,
    }
    for c in (client, admin):
        c.stop()
        c.close()
    return report


def restart() -> dict[str, Any]:
    """Stop the server under a loaded LiveNode, start it again on the same port, change the node."""
    server = start_standalone()
    try:
        client = zookeeper_client_from_config(None, {"zookeeper.hosts": server.address, "zookeeper.timeout": "30 s"})
        admin = zookeeper_client_from_config(None, {"zookeeper.hosts": server.address})
        client.start(timeout=30)
        admin.start(timeout=30)
        admin.create("/flags", b"1")
        live = LiveNode(client, "/flags", json.load, timeout=30)
        server.stop()
        wait_for(lambda: not client.connected, 30, "the client to notice the server is gone")
        assert live.get_data() == 1
        server.start()
        wait_for(lambda: client.connected and admin.connected, 60, "both clients to reconnect")
        admin.set("/flags", b"2")
        wait_for(lambda: live.get_data() == 2, 30, "the change made after the restart")
        report = {"handler": handler_kind(client), "value": live.get_data()}
        for c in (client, admin):
            c.stop()
            c.close()
        return report
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)


def inflate(hosts: str, node: str) -> dict[str, Any]:
    """LiveNode on a gevent client meets an envelope of about 64 KB that inflates to 64 MiB (see gevent_reads)."""
    from tests.gevent_reads import Ticker, decode_spy
    from tests.payloads import inflating

    decoded_in = decode_spy()
    node_data, size = inflating()
    client = zookeeper_client_from_config(None, {"zookeeper.hosts": hosts})
    client.start(timeout=30)
    client.create(node, b"small", makepath=True)
    live = LiveNode(client, node, lambda f: f.read(), binary=True, timeout=30)
    ticker = Ticker()
    gevent.sleep(1.0)
    idle = ticker.longest_ms()
    client.set(node, node_data)
    wait_for(lambda: len(live.get_data()) == size, 60, "the 64 MiB version")
    decoding = ticker.longest_ms()
    ticker.stop()
    return {"decoded_in": decoded_in, "max_gap_ms": decoding, "idle_max_gap_ms": idle}


if __name__ == "__main__":
    if sys.argv[1] == "basic":
        print(json.dumps(basic(sys.argv[2], sys.argv[3])))
    elif sys.argv[1] == "inflate":
        print(json.dumps(inflate(sys.argv[2], sys.argv[3])))
    else:
        print(json.dumps(restart()))
