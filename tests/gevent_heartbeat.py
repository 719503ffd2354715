"""A heartbeat during a tree publish that is still running, in a gevent process as the daemon runs (by
tests/test_heartbeat.py).

Usage: ``python -m tests.gevent_heartbeat HOSTS ROOT DEST``.  Prints a JSON report; a failed check exits non-zero
with the reason on stderr.

The publish is held at its start (the writer greenlet waits on an event before the real publish, in the thread
pool, begins), as a slow disk would hold it; meanwhile a child is set again to the bytes being published, so
its read settles and the tree's picture equals the one in flight.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402 -- after patching, like any gevent program
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import gevent.event  # noqa: E402

from livedata import sync  # noqa: E402
from livedata.files import FileSpec  # noqa: E402
from livedata.testing.zookeeper import wait_for  # noqa: E402  (its time.sleep is gevent's now)
from livedata.zookeeper import zookeeper_client_from_config  # noqa: E402


def main(hosts: str, root: str, dest: str) -> dict[str, Any]:
    settings = {"zookeeper.hosts": hosts}
    admin = zookeeper_client_from_config(None, settings)
    client = zookeeper_client_from_config(None, settings)
    admin.start(timeout=30)
    client.start(timeout=30)
    source = f"{root}/tree"
    admin.create(f"{source}/a", b"one", makepath=True)
    hold, held = gevent.event.Event(), gevent.event.Event()
    hold.set()
    publishes = [0]

    def publish(tree: Any, children: dict[str, bytes]) -> Any:
        if not hold.is_set():
            held.set()
            hold.wait()
        result = sync._publish_tree_in_thread(tree, children)
        publishes[0] += 1
        return result

    config = sync.TreeConfig("tree", source, FileSpec(dest, 0o644))
    mirror = sync.Mirror(client, [config], publish_tree=publish)
    settled = [0]
    read_settled = mirror.read_settled

    def counting_settled(node: Any) -> None:
        read_settled(node)
        if isinstance(node, sync.TreeChild) and node.name == "a":
            settled[0] += 1

    mirror.read_settled = counting_settled  # type: ignore[method-assign]
    mirror.start()
    tree = mirror.nodes[0]
    wait_for(mirror.initial_sync.is_set, 30, "the first publish")
    report: dict[str, Any] = {"first_heartbeat": mirror.heartbeat()}

    hold.clear()
    admin.set(f"{source}/a", b"two")
    wait_for(held.is_set, 30, "the publish of 'two' to start")
    before = settled[0]
    admin.set(f"{source}/a", b"two")  # the same bytes: a watch, a re-read, a settled read, nothing to write
    wait_for(lambda: settled[0] > before, 30, "the re-read of a to settle")
    report["in_sync_while_publishing"] = tree.in_sync
    report["heartbeat_while_publishing"] = mirror.heartbeat()
    with open(os.path.join(dest, "a"), "rb") as f:
        report["file_while_publishing"] = f.read().decode()

    done = publishes[0]
    hold.set()
    wait_for(lambda: publishes[0] > done and tree.in_sync, 30, "the publish to finish")
    with open(os.path.join(dest, "a"), "rb") as f:
        report["file_after"] = f.read().decode()
    report["heartbeat_after"] = mirror.heartbeat()
    mirror.stop()
    client.stop()
    admin.stop()
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3])))
