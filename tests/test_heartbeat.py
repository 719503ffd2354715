"""The heartbeat vouches only for dests whose content is known to be in place (livedata.sync.Mirror.heartbeat)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from livedata.testing.zookeeper import ZooKeeperServer


@pytest.mark.timeout(90)
def test_no_heartbeat_for_a_tree_while_its_publish_is_still_running(
    zk_server: ZooKeeperServer, zk_path: str, tmp_path: Path
) -> None:
    """A child set again to the bytes being published settles its read while the publish is held: the tree
    is not in sync until the publish is done, so the heartbeat does not touch the old snapshot meanwhile."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.gevent_heartbeat", zk_server.address, zk_path, str(tmp_path / "tree")],
        capture_output=True, text=True, timeout=80,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["first_heartbeat"] == 1
    assert report["file_while_publishing"] == "one"
    assert report["in_sync_while_publishing"] is False, report
    assert report["heartbeat_while_publishing"] == 0, report
    assert report["file_after"] == "two"
    assert report["heartbeat_after"] == 1
