"""A testing kit for applications that read live data, also used by livedata's own tests and tools.

* :class:`StaticWatchedData`: an in-memory stand-in for :class:`~livedata.FileWatcher` and
  :class:`~livedata.LiveNode`, with their reading API and errors, whose data a unit test sets directly.
* :mod:`livedata.testing.zookeeper`: throwaway real ZooKeeper servers on loopback (:func:`start_standalone`,
  :class:`Ensemble`) and :func:`wait_for`, which polls a condition until a deadline instead of sleeping.
* :class:`RunningWatcher`: the real ``livedata-watcher`` as a subprocess against a directory of your choice.
* :mod:`livedata.testing.plugin`: the pytest fixtures ``livedata_zookeeper``, ``livedata_client`` and
  ``livedata_watcher``, loaded automatically once ``livedata[testing]`` is installed.

Everything here imports only the standard library (and livedata's own reader); kazoo is imported by the
helpers that talk to ZooKeeper when they are called, and gevent never.
"""
from __future__ import annotations

from livedata.testing.running_watcher import RunningWatcher
from livedata.testing.static_data import StaticWatchedData
from livedata.testing.watcher_process import WatcherProcess
from livedata.testing.zookeeper import (
    ConditionTimeout,
    Ensemble,
    ZooKeeperNotInstalledError,
    ZooKeeperServer,
    start_standalone,
    wait_for,
)

__all__ = [
    "ConditionTimeout",
    "Ensemble",
    "RunningWatcher",
    "StaticWatchedData",
    "WatcherProcess",
    "ZooKeeperNotInstalledError",
    "ZooKeeperServer",
    "start_standalone",
    "wait_for",
]
