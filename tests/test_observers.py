"""Watchers served by ZooKeeper observers only: the way a large fleet keeps read load off the voting servers.

One real ensemble of 3 voters and 2 observers on loopback; the real daemon is given the observers' addresses
alone.  Which server serves the watcher is read from the servers themselves (``wchs``: the watches each one
holds), so the test sees where the watch lives, not what the daemon logs.
"""
from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient
from kazoo.retry import KazooRetry

from livedata.testing.watcher_process import node_settings, wait_for_content
from livedata.testing.zookeeper import Ensemble, ZooKeeperServer, four_letter_word, wait_for
from tests.conftest import make_client

pytestmark = pytest.mark.timeout(90)

NODE = "/observed/flags"
SESSION_TIMEOUT = "2 seconds"


@pytest.fixture
def ensemble() -> Iterator[Ensemble]:
    """3 voters + 2 observers, fresh for the test (it stops and kills members)."""
    ensemble = Ensemble(3, observers=2)
    ensemble.start()
    yield ensemble
    ensemble.cleanup()


@pytest.fixture
def writer(ensemble: Ensemble) -> Iterator[KazooClient]:
    """A client on the voters alone, so nothing the watcher does depends on it."""
    client = make_client(",".join(server.address for server in ensemble.voters))
    client.create(NODE, b"v1", makepath=True)
    yield client
    client.stop()
    client.close()


def watches_held(server: ZooKeeperServer) -> int:
    """Watches the server holds for its clients right now (0 when it is down)."""
    if not server.running:
        return 0
    try:
        answer = four_letter_word(server.client_port, "wchs")
    except OSError:
        return 0
    found = re.search(r"Total watches:(\d+)", answer)
    return int(found.group(1)) if found else 0


def serving_observer(ensemble: Ensemble) -> ZooKeeperServer:
    """The one observer holding the watcher's watch; waits for it, and checks no voter holds one."""
    holder = wait_for(
        lambda: next((s for s in ensemble.observers if watches_held(s) > 0), None), 20, "an observer to hold the watch"
    )
    assert [watches_held(voter) for voter in ensemble.voters] == [0, 0, 0], "a voter serves the watcher"
    return holder


def set_through_failures(client: KazooClient, data: bytes) -> None:
    """A write that waits out a leader election instead of failing on the connection loss it causes."""
    KazooRetry(max_tries=-1, delay=0.05, max_delay=0.5, deadline=30)(client.set, NODE, data)


def test_watcher_on_observers_follows_changes_fails_over_and_survives_a_lost_voter(
    ensemble: Ensemble, writer: KazooClient, workdir: str, start_watcher
) -> None:
    dest = f"{workdir}/flags"
    settings: dict[str, object] = {"zookeeper.hosts": ensemble.observer_hosts, "zookeeper.timeout": SESSION_TIMEOUT}
    settings.update(node_settings("flags", NODE, dest, mode="0644"))
    watcher = start_watcher(settings)
    wait_for_content(dest, b"v1")
    first = serving_observer(ensemble)

    writer.set(NODE, b"v2")
    wait_for_content(dest, b"v2")

    first.stop()
    second = serving_observer(ensemble)
    assert second is not first
    writer.set(NODE, b"v3")
    wait_for_content(dest, b"v3")

    first.start()
    leader = ensemble.leader()
    leader.kill()  # the worst voter to lose: the observers must follow a newly elected leader
    set_through_failures(writer, b"v4")
    wait_for_content(dest, b"v4", timeout=30)
    serving_observer(ensemble)
    assert not leader.running
    assert watcher.alive()
