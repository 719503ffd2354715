"""pytest fixtures for applications that read live data; loaded by ``pip install livedata[testing]``.

Registered through the ``pytest11`` entry point, so a project only installs the extra and asks for the
fixtures by name:

* ``livedata_zookeeper`` (session): a throwaway real ZooKeeper on loopback, Debian's ``zookeeper`` package
  run by :mod:`livedata.testing.zookeeper`, the launcher livedata's own tests, ``tools/dev`` and
  ``tools/bench`` use. Its ``address`` is ``127.0.0.1:<port>``.
* ``livedata_client``: a started (threaded) kazoo client on it. Every test that takes it starts from an
  empty tree, so tests sharing the session's server do not see each other's nodes.
* ``livedata_watcher``: ``livedata_watcher(nodes={"flags": "/flags"})`` runs the real ``livedata-watcher``
  against that server, mirroring into the test's temporary directory, and returns once the files match
  ZooKeeper (a :class:`~livedata.testing.RunningWatcher`: ``dest(name)``, ``wait_synced()``). The daemon is
  always a subprocess: it monkey-patches the process it runs in, which the test runner must not be. To
  watch a node in-process, give ``livedata_client`` to :class:`~livedata.LiveNode`.

Nothing imports kazoo or gevent until a fixture that needs ZooKeeper runs, so a suite that only uses
:class:`~livedata.testing.StaticWatchedData` pays for neither.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable

import pytest

from livedata.testing.running_watcher import NodeSpec, RunningWatcher
from livedata.testing.zookeeper import ZooKeeperServer, start_standalone

__all__ = ["livedata_client", "livedata_watcher", "livedata_zookeeper"]

StartWatcher = Callable[..., RunningWatcher]


# ZooKeeper's superuser, known only to the fixtures: emptying the tree between tests must get past the ACLs
# that earlier tests set (a node only its own identity may read or delete), which no other identity can.
_SUPERUSER = ("livedata-testing-super", "not-a-secret")


def _super_digest(user: str, password: str) -> str:
    """``user:base64(sha1(user:password))``, the form of ZooKeeper's superDigest property."""
    digest = hashlib.sha1(f"{user}:{password}".encode()).digest()
    return f"{user}:{base64.b64encode(digest).decode()}"


@pytest.fixture(scope="session")
def livedata_zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    """One standalone ZooKeeper for the whole run; its ``server.log`` stays in pytest's temporary directory."""
    server = start_standalone(
        str(tmp_path_factory.mktemp("livedata-zookeeper")),
        java_properties={"zookeeper.DigestAuthenticationProvider.superDigest": _super_digest(*_SUPERUSER)},
    )
    yield server
    server.stop()


@pytest.fixture
def livedata_client(livedata_zookeeper: ZooKeeperServer) -> Iterator[Any]:
    """A started ``kazoo.client.KazooClient`` on ``livedata_zookeeper``, over a tree emptied for this test.

    The client itself is anonymous, so the ACLs a test sets apply to it as they would to the application.
    """
    from kazoo.client import KazooClient

    _empty_tree(livedata_zookeeper.address)
    client = KazooClient(hosts=livedata_zookeeper.address, timeout=10.0)
    client.start(timeout=30)
    try:
        yield client
    finally:
        client.stop()
        client.close()


def _empty_tree(hosts: str) -> None:
    """Delete every node but ZooKeeper's own, as the superuser, whatever their ACLs."""
    from kazoo.client import KazooClient

    admin = KazooClient(hosts=hosts, timeout=10.0, auth_data=[("digest", ":".join(_SUPERUSER))])
    admin.start(timeout=30)
    try:
        for child in admin.get_children("/"):
            if child != "zookeeper":  # the server's own subtree cannot be deleted
                admin.delete(f"/{child}", recursive=True)
    finally:
        admin.stop()
        admin.close()


@pytest.fixture
def livedata_watcher(livedata_zookeeper: ZooKeeperServer, tmp_path: Path) -> Iterator[StartWatcher]:
    """``livedata_watcher(nodes, settings=None, wait=True, timeout=30.0, trees=None)`` starts a watcher.

    ``nodes`` maps a name to a znode path, or to that node's settings (``source``, and ``dest``, ``mode``...
    as in the watcher's INI); ``trees`` likewise for trees (``format``: ``directory`` or ``json``); either
    may be left out. Files go to ``<tmp_path>/livedata-watcher-<n>/<name>`` unless a ``dest`` is given.
    ``settings`` adds other ``[live-data]`` keys. With ``wait`` (the default) it returns only once every
    file matches its node (:meth:`~livedata.testing.RunningWatcher.wait_synced`). All stop after the test.
    """
    started: list[RunningWatcher] = []
    numbers = itertools.count()

    def start(
        nodes: Mapping[str, NodeSpec] | None = None,
        settings: Mapping[str, object] | None = None,
        wait: bool = True,
        timeout: float = 30.0,
        trees: Mapping[str, NodeSpec] | None = None,
    ) -> RunningWatcher:
        directory = tmp_path / f"livedata-watcher-{next(numbers)}"
        directory.mkdir()
        watcher = RunningWatcher(livedata_zookeeper.address, nodes, str(directory), settings, trees=trees)
        started.append(watcher)
        if wait:
            watcher.wait_synced(timeout)
        return watcher

    yield start
    for watcher in started:
        watcher.stop()
