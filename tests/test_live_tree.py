"""LiveTree (an in-process tree for gevent applications) against a real ZooKeeper, in a gevent process."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from kazoo.client import KazooClient

from livedata.live_tree import LiveTree

pytestmark = pytest.mark.timeout(120)


def test_live_tree_follows_children_consistently(zk_server, zk_path):
    result = subprocess.run([sys.executable, "-m", "tests.gevent_live_tree", zk_server.address, zk_path],
                            capture_output=True, text=True, timeout=100)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["first"] == {"a": {"share": 1}, "b": {"share": 2}}
    assert report["parsed_after_one_change"] == ['{"share": 10}'], "only the changed child is parsed again"
    assert report["after_transaction"] == {"a": {"share": 20}, "b": {"share": 20}}
    assert report["kept_after_bad_child"] == {"a": {"share": 20}, "b": {"share": 20}}, "the last good snapshot"
    assert report["read_only"] is True
    assert report["missing"] == "loaded", "a missing source is an empty tree"
    assert report["configured"] == {"x": 1}


def test_live_tree_goes_on_beside_a_child_it_may_not_read(zk_server, zk_path):
    result = subprocess.run([sys.executable, "-m", "tests.gevent_live_tree", "unreadable", zk_server.address, zk_path],
                            capture_output=True, text=True, timeout=100)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"data": {"a": 10}}, "the unreadable child left out"


def test_live_tree_needs_a_gevent_client(zk):
    assert isinstance(zk, KazooClient)
    with pytest.raises(TypeError, match="gevent handler"):
        LiveTree(zk, "/anything", json.load)
