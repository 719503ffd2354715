"""LiveTree scenarios in a gevent monkey-patched process, as a gevent application runs it (by tests/test_live_tree.py).

Usage: ``python -m tests.gevent_live_tree [unreadable] HOSTS ROOT``.  Prints a JSON report on success; a failed
check exits non-zero with the reason on stderr.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402 -- after patching, like any gevent program
import sys  # noqa: E402
from typing import IO, Any  # noqa: E402

from kazoo.security import make_digest_acl  # noqa: E402

from livedata.file_watcher import WatchedFileNotAvailableError  # noqa: E402
from livedata.live_data import watched_data_from_config  # noqa: E402
from livedata.live_tree import LiveTree  # noqa: E402
from livedata.testing.zookeeper import wait_for  # noqa: E402  (its time.sleep is gevent's now)
from livedata.zookeeper import zookeeper_client_from_config  # noqa: E402


def unreadable_child(hosts: str, root: str) -> dict[str, Any]:
    """A child this client may not read (another service's, with its own ACL) does not hold the tree back."""
    settings = {"zookeeper.hosts": hosts}
    service = zookeeper_client_from_config(None, settings)
    client = zookeeper_client_from_config(None, settings)
    service.start(timeout=30)
    client.start(timeout=30)
    service.add_auth("digest", "registry:registry-password")
    source = f"{root}/services"
    service.create(f"{source}/a", b"1", makepath=True)
    with LiveTree(client, source, json.load, timeout=10) as tree:
        service.create(f"{source}/locked", b"2", acl=[make_digest_acl("registry", "registry-password", all=True)],
                       ephemeral=True)  # fmt: skip
        service.set(f"{source}/a", b"10")
        wait_for(lambda: tree.get_data().get("a") == 10, 10, "the change beside an unreadable child")
        return {"data": dict(tree.get_data())}


def main() -> None:
    if sys.argv[1] == "unreadable":
        print(json.dumps(unreadable_child(*sys.argv[2:4])))
        return
    hosts, root = sys.argv[1:3]
    settings = {"zookeeper.hosts": hosts}
    admin = zookeeper_client_from_config(None, settings)
    client = zookeeper_client_from_config(None, settings)
    admin.start(timeout=30)
    client.start(timeout=30)
    report: dict[str, Any] = {}
    parsed: list[str] = []

    def parse(f: IO[str]) -> Any:
        text = f.read()
        parsed.append(text)
        return json.loads(text)

    source = f"{root}/experiments"
    admin.create(f"{source}/a", b'{"share": 1}', makepath=True)
    admin.create(f"{source}/b", b'{"share": 2}')
    with LiveTree(client, source, parse, timeout=10) as tree:
        report["first"] = dict(tree.get_data())
        parsed.clear()
        admin.set(f"{source}/a", b'{"share": 10}')
        wait_for(lambda: tree.get_data()["a"] == {"share": 10}, 10, "the change")
        report["parsed_after_one_change"] = list(parsed)

        transaction = admin.transaction()
        transaction.set_data(f"{source}/a", b'{"share": 20}')
        transaction.set_data(f"{source}/b", b'{"share": 20}')
        transaction.commit()
        wait_for(lambda: tree.get_data()["b"] == {"share": 20}, 10, "the transaction")
        report["after_transaction"] = dict(tree.get_data())

        admin.set(f"{source}/b", b"not json")
        admin.create(f"{source}/marker", b"1")
        wait_for(lambda: isinstance(getattr(tree, "_error", None), ValueError), 10, "the parse failure")
        report["kept_after_bad_child"] = dict(tree.get_data())
        admin.delete(source, recursive=True)
        wait_for(lambda: dict(tree.get_data()) == {}, 10, "the tree to empty once the source is gone")
        report["read_only"] = not hasattr(tree.get_data(), "__setitem__")

    try:
        LiveTree(client, f"{root}/missing-parent-is-empty", parse, timeout=5)
        report["missing"] = "loaded"
    except WatchedFileNotAvailableError as e:
        report["missing"] = f"error: {e}"

    admin.create(f"{root}/configured/x", b"1", makepath=True)
    configured = watched_data_from_config({**settings, "live_data.exp.tree": f"{root}/configured"}, "exp", json.load,
                                          client=client, timeout=10)  # fmt: skip
    report["configured"] = dict(configured.get_data())
    print(json.dumps(report))


if __name__ == "__main__":
    main()
