"""A pipelined client driven as the daemon drives it (by tests/test_pipelining.py), in a gevent process.

Usage: ``python -m tests.gevent_pipelining HOSTS ROOT COUNT SECRETS [SIZE]``.  Prints a JSON report; a failed
check exits non-zero with the reason on stderr. With SIZE, sets COUNT nodes ``ROOT/big<i>`` to SIZE bytes each,
all queued at once, and reports the peak of Python allocations while they are sent and answered.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402 -- after patching, like any gevent program
import sys  # noqa: E402
import tracemalloc  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from livedata.secrets import SecretsStore  # noqa: E402
from livedata.testing.zookeeper import wait_for  # noqa: E402
from livedata.zookeeper import zookeeper_client_from_config  # noqa: E402

BURST = 200  # requests queued without yielding: below the ~280 wake-up bytes kazoo's socket pair holds


def main(hosts: str, root: str, count: int, secrets_path: str) -> dict[str, Any]:
    config = {"zookeeper.hosts": hosts, "zookeeper.credentials": "secret/zk"}
    client = zookeeper_client_from_config(SecretsStore(secrets_path), config)
    connection = client._connection
    installed = "_send_request" in vars(connection)  # replaced on this instance, not on kazoo's class
    writes = [0]
    write = connection._write

    def counting_write(message: bytes, timeout: float) -> None:
        writes[0] += 1
        write(message, timeout)

    connection._write = counting_write
    client.start(timeout=30)
    protected = client.get(f"{root}/protected")[0]  # readable only with the digest credentials (auth first)
    paths = [f"{root}/n{i}" for i in range(count)]
    fired: dict[str, int] = {}
    all_fired = gevent.event.Event()

    def watch(event: Any) -> None:
        fired[event.path] = fired.get(event.path, 0) + 1
        if len(fired) == count:
            all_fired.set()

    writes[0] = 0
    results = []
    for start in range(0, count, BURST):
        results += [client.get_async(path, watch=watch) for path in paths[start : start + BURST]]
        gevent.sleep(0)
    wrong = [p for p, r in zip(paths, results) if r.get(timeout=60)[0] != f"value of {p}".encode()]
    read_writes = writes[0]
    sets = []
    for start in range(0, count, BURST):
        sets += [client.set_async(path, b"changed") for path in paths[start : start + BURST]]
        gevent.sleep(0)
    for result in sets:
        result.get(timeout=60)
    wait_for(all_fired.is_set, timeout=60, message="every watch to fire")
    client.stop()
    client.close()
    return {
        "installed": installed,
        "protected": protected.decode(),
        "wrong": wrong[:5],
        "reads": count,
        "read_writes": read_writes,
        "fired_once": sorted(set(fired.values())),
    }


def large_sets(hosts: str, root: str, count: int, secrets_path: str, size: int) -> dict[str, Any]:
    client = zookeeper_client_from_config(SecretsStore(secrets_path), {"zookeeper.hosts": hosts})
    installed = "_send_request" in vars(client._connection)
    client.start(timeout=30)
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)  # made before tracing: only the sending counts
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    results = [client.set_async(f"{root}/big{i}", data) for i in range(count)]  # one batch: no yield between
    for result in results:
        result.get(timeout=60)
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    client.stop()
    client.close()
    return {"installed": installed, "peak": peak}


if __name__ == "__main__":
    if len(sys.argv) > 5:
        print(json.dumps(large_sets(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))))
    else:
        print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])))
