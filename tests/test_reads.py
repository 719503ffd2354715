"""The read queue (livedata.reads) in a gevent process, as the daemon runs it, against a real ZooKeeper."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)


def run_scenario(name: str, hosts: str, root: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "tests.gevent_reads", name, hosts, root], capture_output=True, text=True, timeout=100
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_request_stuck_in_kazoos_queue_is_noticed_and_woken(zk_server, zk_path):
    """With kazoo's own sender (a client pipelining could not be installed on), the deadline does it."""
    report = run_scenario("wedge-unpipelined", zk_server.address, zk_path)
    assert report["timeouts"] >= 1, "the overdue read must be counted"
    assert report["failures"] == []
    assert report["in_flight"] == 0


def test_a_request_stuck_in_kazoos_queue_leaves_with_the_next_one_when_pipelined(zk_server, zk_path):
    report = run_scenario("wedge", zk_server.address, zk_path)
    assert report["timeouts"] == 0, "no deadline needed: the next request's wake byte sends both"
    assert report["failures"] == []
    assert report["in_flight"] == 0


def test_thousands_of_reads_beside_an_applications_own_bursts(zk_server, zk_path):
    report = run_scenario("shared", zk_server.address, zk_path)
    assert report["read"] == 3000 and report["wrong"] == []
    assert report["max_in_flight"] <= report["window"], "never more reads outstanding than the window"
    assert report["other"] == [100] * 10, "the application's own requests all completed"
    assert report["timeouts"] == 0 and report["pending"] == 0


def test_a_node_removed_while_its_chunks_are_read_leaves_the_queue_idle(zk_server, zk_path):
    """A reload removing a chunked node mid-read used to leave it counted as pending for good (every later
    write then waited 100 ms for reads that would never land)."""
    report = run_scenario("removed-mid-read", zk_server.address, zk_path)
    assert report["caught"] >= 1, "the removal must happen while the chunk reads are out"
    assert report["pending"] == 0
    assert report["failures"] == []


def test_a_node_removed_while_it_is_decoded_leaves_the_queue_idle(zk_server, zk_path):
    report = run_scenario("removed-while-decoding", zk_server.address, zk_path)
    assert report["caught"] >= 1, "the removal must happen while the envelope is decoded"
    assert report["pending"] == 0


def test_a_removed_node_leaves_no_missing_chunk_memory(zk_server, zk_path):
    report = run_scenario("missing-chunk-forgotten", zk_server.address, zk_path)
    assert report["failures"] and "chunk" in report["failures"][0]
    assert report["remembered"] == 1, "the envelope whose chunk was missing is remembered while the node is followed"
    assert report["left"] == 0, "and forgotten with the node"


def test_an_envelope_listing_one_chunk_thousands_of_times_costs_one_chunk_and_is_not_retried(zk_server, zk_path):
    """What a host reads for one version is bounded by its declared stored size plus one chunk, and a version
    that is bad for good waits for the node to change: nothing is scheduled to read it again."""
    report = run_scenario("amplification", zk_server.address, zk_path)
    assert report["read_bytes"] <= report["node_bytes"] + 2 * 100_000, "at most the stored size plus one chunk"
    assert report["issued"] <= 2, "the node, then the one chunk's stat: no chunk is fetched at all"
    assert report["idle"] and report["retries_pending"] == 0 and report["pending"] == 0, "no retry on a timer"
    assert len(report["failures"]) == 1
    assert "the chunks listed hold 200,000,000 bytes, header says 100,000" in report["failures"][0]
    assert report["recovered"]


def test_a_small_envelope_inflating_to_megabytes_is_decoded_off_the_hub(zk_server, zk_path):
    """About 64 KB stored, 64 MiB decoded: the inflate and the hash run in the thread pool, so the hub keeps
    serving pings and replies meanwhile (inflated in the hub it went 100-300 ms without running a greenlet)."""
    report = run_scenario("inflate", zk_server.address, zk_path)
    assert report["failures"] == []
    assert report["decoded_in"] == ["thread pool"]
