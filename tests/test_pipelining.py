"""Pipelined sends (livedata.pipelining) against a real server, in a gevent process as the daemon runs."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from kazoo.client import KazooClient
from kazoo.security import make_digest_acl

from livedata.pipelining import pipeline_requests
from livedata.testing.zookeeper import ZooKeeperServer
from tests.test_zookeeper import secrets_file, simple

COUNT = 3000


@pytest.mark.timeout(180)
def test_thousands_of_reads_share_few_writes_and_keep_order_watches_and_auth(
    zk_server: ZooKeeperServer, zk: KazooClient, zk_path: str, tmp_path: object
) -> None:
    """3,000 reads, each answered with its own node's data (replies matched in order), each leaving a
    watch that fires exactly once; the digest credentials go through kazoo's own path first; and the
    reads leave in a few dozen writes instead of 3,000."""
    zk.create(f"{zk_path}/protected", b"only with credentials", acl=[make_digest_acl("reader", "pw", all=True)])
    for start in range(0, COUNT, 500):
        results = [zk.create_async(f"{zk_path}/n{i}", f"value of {zk_path}/n{i}".encode())
                   for i in range(start, min(start + 500, COUNT))]  # fmt: skip
        for result in results:
            result.get(timeout=30)
    secrets = secrets_file(tmp_path, {"secret/zk": simple("reader:pw")})
    done = subprocess.run(
        [sys.executable, "-m", "tests.gevent_pipelining", zk_server.address, zk_path, str(COUNT), secrets.path],
        capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["installed"]
    assert report["protected"] == "only with credentials"
    assert report["wrong"] == []
    assert report["fired_once"] == [1]
    assert report["read_writes"] <= COUNT // 10, report  # one per request without pipelining


@pytest.mark.timeout(120)
def test_a_batch_of_large_requests_is_sent_without_joining_it(
    zk_server: ZooKeeperServer, zk: KazooClient, zk_path: str, tmp_path: object
) -> None:
    """16 sets of 1,000,000 bytes queued at once leave as one batch; what the sender allocates for them peaks
    near one request's size (its serialized copy), never near the batch's 16 MB (a joined buffer, and a copy of
    it, made a 30 MiB push peak 43 MB above kazoo's own sender)."""
    count, size = 16, 1_000_000  # below ZooKeeper's default 1 MiB packet limit
    for i in range(count):
        zk.create(f"{zk_path}/big{i}")
    secrets = secrets_file(tmp_path, {})
    done = subprocess.run(
        [sys.executable, "-m", "tests.gevent_pipelining", zk_server.address, zk_path, str(count), secrets.path,
         str(size)],
        capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["installed"]
    assert report["peak"] < 3 * size, report
    assert zk.get(f"{zk_path}/big{count - 1}")[0][:256] == bytes(range(256))


def test_a_client_without_kazoos_connection_internals_is_left_as_it_is() -> None:
    class Elsewhere:
        _connection = object()

    assert pipeline_requests(Elsewhere()) is False
    assert pipeline_requests(object()) is False
