"""livedata: mirror small, often-read ZooKeeper nodes into local files on every host.

The public names are imported lazily so that an application which only reads
files (``FileWatcher``) never pays for importing kazoo or gevent.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from livedata.file_watcher import FileWatcher, WatchedFileNotAvailableError
    from livedata.live_data import watched_data_from_config
    from livedata.live_node import LiveNode
    from livedata.live_tree import LiveTree
    from livedata.tree_watcher import TreeWatcher
    from livedata.zookeeper import zookeeper_client_from_config

__all__ = [
    "FileWatcher",
    "LiveNode",
    "LiveTree",
    "TreeWatcher",
    "WatchedFileNotAvailableError",
    "watched_data_from_config",
    "zookeeper_client_from_config",
]

_LAZY = {
    "FileWatcher": "livedata.file_watcher",
    "WatchedFileNotAvailableError": "livedata.file_watcher",
    "LiveNode": "livedata.live_node",
    "LiveTree": "livedata.live_tree",
    "TreeWatcher": "livedata.tree_watcher",
    "watched_data_from_config": "livedata.live_data",
    "zookeeper_client_from_config": "livedata.zookeeper",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'livedata' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
