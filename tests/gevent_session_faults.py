"""Session faults in a gevent monkey-patched process, as applications and the daemon run (tests/test_session_faults.py).

Usage: ``python -m tests.gevent_session_faults SCENARIO PORT ROOT`` (PORT: a ZooKeeper server's client port).

* ``dead-routine``: LiveTree and LiveNode on one client that goes through a
  :class:`tests.stray_reply_proxy.StrayReplyProxy`, which kills kazoo's connection routine with a reply that
  matches no request.
* ``failed-wake``: the read queue issues reads while another greenlet floods the same client, so kazoo's wake-up
  byte cannot be sent: kazoo fails those reads at once, yet leaves them queued and sends them later, setting
  their results a second time.

Prints a JSON report on success; a failed check exits non-zero.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402 -- after patching, like any gevent program
import sys  # noqa: E402
from typing import IO, Any  # noqa: E402

import gevent  # noqa: E402
from kazoo.exceptions import ConnectionClosedError  # noqa: E402

from livedata.live_node import LiveNode  # noqa: E402
from livedata.live_tree import LiveTree  # noqa: E402
from livedata.reads import ReadQueue  # noqa: E402
from livedata.session import keeper_of  # noqa: E402
from livedata.testing.zookeeper import wait_for  # noqa: E402  (its time.sleep is gevent's now)
from livedata.zookeeper import zookeeper_client_from_config  # noqa: E402
from tests.gevent_reads import Item, Sink  # noqa: E402
from tests.stray_reply_proxy import StrayReplyProxy  # noqa: E402


def dead_routine(port: int, root: str) -> dict[str, Any]:
    proxy = StrayReplyProxy(port)
    admin = zookeeper_client_from_config(None, {"zookeeper.hosts": f"127.0.0.1:{port}"})
    client = zookeeper_client_from_config(None, {"zookeeper.hosts": proxy.address})
    admin.start(timeout=30)
    client.start(timeout=30)
    source = f"{root}/tree"
    admin.create(f"{source}/a", b"a1", makepath=True)
    admin.create(f"{root}/node", b"n1")

    def text(f: IO[str]) -> str:
        return f.read()

    with LiveTree(client, source, text, timeout=10) as tree, LiveNode(client, f"{root}/node", text, timeout=10) as node:
        assert dict(tree.get_data()) == {"a": "a1"} and node.get_data() == "n1"
        keeper = keeper_of(client)
        assert keeper is not None and keeper.users == 2, keeper  # one keeper per client, shared
        assert proxy.inject() == 1
        admin.set(f"{source}/a", b"a2")
        admin.create(f"{source}/b", b"b1")
        admin.set(f"{root}/node", b"n2")
        wait_for(lambda: dict(tree.get_data()) == {"a": "a2", "b": "b1"}, 30, "the tree to follow")
        wait_for(lambda: node.get_data() == "n2", 30, "the node to follow")
        report = {"accepted": proxy.accepted, "revivals": keeper.revivals}
    assert keeper_of(client) is None, "released by the last user"
    client.stop()
    admin.stop()
    return report


def failed_wake(port: int, root: str) -> dict[str, Any]:
    client = zookeeper_client_from_config(None, {"zookeeper.hosts": f"127.0.0.1:{port}"})
    client.start(timeout=30)
    count = 600
    for result in [client.create_async(f"{root}/n{i}", f"v{i}".encode(), makepath=True) for i in range(count)]:
        result.get(timeout=30)
    failed: list[Any] = []  # results kazoo failed in _call because it could not send the wake-up byte
    kazoo_call = client._call

    def call(request: Any, async_object: Any) -> Any:
        outcome = kazoo_call(request, async_object)
        if async_object.ready() and isinstance(async_object.exception, ConnectionClosedError):
            failed.append(async_object)
        return outcome

    client._call = call
    sink, holder = Sink(), []
    queue = ReadQueue(client, sink)
    sink.queue = queue
    holder.append(queue)
    queue.start()
    replies = []
    on_reply = queue._on_reply

    def counting_reply(result: Any) -> None:
        replies.append(result)  # held, so no two of them share an id
        on_reply(result)

    queue._on_reply = counting_reply  # type: ignore[method-assign]

    def flood() -> None:  # an application's burst, with no yield: it fills kazoo's wake-up socket pair
        for _ in range(3):
            for result in [client.exists_async(f"{root}/n{i % count}") for i in range(1500)]:
                result.get(timeout=30)

    burst = gevent.spawn(flood)
    gevent.sleep(0)
    items = [Item(f"{root}/n{i}", holder) for i in range(count)]
    queue.request_all(items)
    wait_for(lambda: len(sink.data) == count, 60, "every read")
    burst.join(60)
    wait_for(lambda: not client._queue and not client._pending, 20, "kazoo to send and settle everything")
    gevent.sleep(0.2)  # let any second notification of a result set twice arrive, if there were one
    wrong = [item.path for item in items if sink.data[item.path] != f"v{item.path.rsplit('n', 1)[1]}".encode()]
    return {"failed_wakes": len(failed), "set_again": sum(1 for result in failed if result.successful()),
            "replies_handled_twice": len(replies) - len({id(result) for result in replies}), "wrong": wrong[:5],
            "failures": sink.failures[:5], "pending": queue.pending()}  # fmt: skip


def main() -> None:
    scenario, port, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    scenarios = {"dead-routine": dead_routine, "failed-wake": failed_wake}
    print(json.dumps(scenarios[scenario](port, root)))


if __name__ == "__main__":
    main()
