"""A LiveNode scenario run in a gevent monkey-patched process (by tests/test_live_node.py).

Usage: python -m tests.gevent_live_node HOSTS NODE_PATH. Prints a JSON report on success; any failed check
exits non-zero with the reason on stderr.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402 -- after patching, like any gevent program
import sys  # noqa: E402
import time  # noqa: E402
from typing import IO, Any  # noqa: E402

import gevent  # noqa: E402
from kazoo.protocol.states import Callback  # noqa: E402

from livedata.live_node import LiveNode  # noqa: E402
from livedata.zookeeper import zookeeper_client_from_config  # noqa: E402
from tests.harness import wait_for  # noqa: E402  (its time.sleep is gevent's now)


def main(hosts: str, node: str) -> dict[str, Any]:
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
        "handler": type(client.handler).__name__,
        "parses": parses,
        "distinct_versions": len(written),
        "reads": reads,
    }
    for c in (client, admin):
        c.stop()
        c.close()
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
