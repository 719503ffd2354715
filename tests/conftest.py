"""Shared fixtures: real ZooKeeper servers, clients, and unique znode paths per test.

Built on the testing kit (livedata.testing) that applications use: the same launcher and session server.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Callable

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException

from livedata.testing.watcher_process import WatcherProcess, write_ini
from livedata.testing.zookeeper import Ensemble, ZooKeeperServer, start_standalone

_counter = itertools.count()


@pytest.fixture(scope="session")
def zk_server(livedata_zookeeper: ZooKeeperServer) -> ZooKeeperServer:
    """One standalone server shared by the whole run; tests isolate themselves by path (see ``zk_path``).

    It is the testing kit's own session server (livedata.testing.plugin, loaded by its pytest11 entry
    point), so the suite runs on exactly what applications' tests get.
    """
    return livedata_zookeeper


@pytest.fixture
def private_zk_server() -> Iterator[ZooKeeperServer]:
    """A standalone server of the test's own, for tests that stop, pause or kill it."""
    server = start_standalone()
    yield server
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture
def zk_ensemble() -> Iterator[Ensemble]:
    """A fresh 3-server ensemble on loopback, for failover tests."""
    ensemble = Ensemble(3)
    ensemble.start()
    yield ensemble
    ensemble.cleanup()


def make_client(hosts: str, **kwargs: object) -> KazooClient:
    client = KazooClient(hosts=hosts, timeout=10.0, **kwargs)
    client.start(timeout=30)
    return client


@pytest.fixture
def zk(zk_server: ZooKeeperServer) -> Iterator[KazooClient]:
    """A plain (threaded) kazoo client the test uses to arrange and inspect ZooKeeper state."""
    client = make_client(zk_server.address)
    yield client
    client.stop()
    client.close()


@pytest.fixture
def zk_path(zk: KazooClient) -> Iterator[str]:
    """A znode path unique to this test, created empty, under which the test may do anything.

    Removed afterwards (what a test protected with ACLs may stay): the server is shared by the whole run,
    and megabytes of payload tests left in its memory would starve the tests after them.
    """
    path = f"/t/{os.getpid()}-{next(_counter)}"
    zk.ensure_path(path)
    yield path
    with contextlib.suppress(KazooException):
        zk.delete(path, recursive=True)


@pytest.fixture
def workdir() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="livedata-test-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def start_watcher(workdir: str) -> Iterator[Callable[..., WatcherProcess]]:
    """``start_watcher(settings, *args, name=..., env=...)`` runs the daemon for this test; all are stopped after."""
    started: list[WatcherProcess] = []

    def start(
        settings: dict[str, object], *args: str, name: str = "watcher.ini", env: dict[str, str] | None = None
    ) -> WatcherProcess:
        process = WatcherProcess(write_ini(workdir, settings, name), *args, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def immutable_dir(workdir) -> Iterator[str]:
    """A directory in which nothing can be created, even by root (chattr +i), so writes there fail for real."""
    path = f"{workdir}/frozen"
    os.mkdir(path)
    yield path
    subprocess.run(["chattr", "-i", path], check=False)
