"""LiveTree and LiveNode on one gevent client whose connection routine dies (by tests/test_session_faults.py).

Usage: ``python -m tests.gevent_session_faults PORT ROOT`` (PORT: a ZooKeeper server's client port).  The client
goes through a :class:`tests.stray_reply_proxy.StrayReplyProxy`, which kills kazoo's connection routine with a
reply that matches no request.  Prints a JSON report on success; a failed check exits non-zero.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402 -- after patching, like any gevent program
import sys  # noqa: E402
from typing import IO  # noqa: E402

from livedata.live_node import LiveNode  # noqa: E402
from livedata.live_tree import LiveTree  # noqa: E402
from livedata.session import keeper_of  # noqa: E402
from livedata.testing.zookeeper import wait_for  # noqa: E402  (its time.sleep is gevent's now)
from livedata.zookeeper import zookeeper_client_from_config  # noqa: E402
from tests.stray_reply_proxy import StrayReplyProxy  # noqa: E402


def main() -> None:
    port, root = int(sys.argv[1]), sys.argv[2]
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
    print(json.dumps(report))


if __name__ == "__main__":
    main()
