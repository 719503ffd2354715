"""Choosing, by configuration alone, whether an application reads a mirrored file or watches the node itself.

Application code names the data it reads (``flags``) and keeps one reading API; the INI says where the data
comes from, with exactly one of::

    live_data.flags.file = /var/local/flags.json   # the file the watcher daemon keeps up to date
    live_data.flags.node = /flags                  # or: watch the znode in-process (gevent apps)
    live_data.experiments.dir = /var/local/experiments   # a tree the daemon mirrors: a TreeWatcher
    live_data.experiments.tree = /experiments            # or: watch the tree in-process (a LiveTree)

File mode never imports kazoo, so an application that only reads files does not pay for a ZooKeeper client.
In node mode, readers built from the same ``zookeeper.*`` settings share one client (one session and one
connection per process, however many nodes it watches) unless the caller passes its own.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any, Callable, Dict, Protocol, Tuple, TypeVar

from livedata.config import ConfigError, ConfigNamespace, Optional, absolute_path, parse_config, source_of, znode_path
from livedata.config import unknown_keys as _unknown_keys
from livedata.file_watcher import FileWatcher

if TYPE_CHECKING:
    from livedata.secrets import SecretsStore

__all__ = ["WatchedData", "parse_live_data_config", "shared_client", "stop_shared_clients", "watched_data_from_config"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

PREFIX = "live_data."
FIELDS = {
    "file": Optional(absolute_path),
    "node": Optional(znode_path),
    "dir": Optional(absolute_path),
    "tree": Optional(znode_path),
}


class WatchedData(Protocol[T_co]):
    """What FileWatcher and LiveNode have in common: all an application needs to read live data."""

    def get_data(self) -> T_co: ...

    def get_data_and_mtime(self) -> Tuple[T_co, float]: ...


def parse_live_data_config(config: Mapping[str, str], name: str) -> ConfigNamespace:
    """The ``file``/``node``/``dir`` settings of ``live_data.<name>``, exactly one of them set, typos rejected."""
    if not name or "." in name:
        raise ValueError(f"live data name must be non-empty and contain no dot, got {name!r}")
    prefix = f"{PREFIX}{name}."
    source = source_of(config)
    for key in _unknown_keys(config, PREFIX, FIELDS):
        if key.startswith(prefix):
            raise ConfigError(source, key, f"unknown setting (expected {prefix}file, {prefix}node, {prefix}dir "
                              f"or {prefix}tree)")  # fmt: skip
    where: ConfigNamespace = parse_config(config, {"live_data": {name: FIELDS}}).live_data[name]
    chosen = [field for field in FIELDS if where[field] is not None]
    if not chosen:
        raise ConfigError(source, f"{prefix}file", f"set either this (file mode), {prefix}node (direct mode), "
                          f"{prefix}dir (a mirrored tree) or {prefix}tree (a tree watched in-process)")  # fmt: skip
    if len(chosen) > 1:
        first, second = (f"{prefix}{field}" for field in chosen[:2])
        raise ConfigError(source, second, f"set only one of {first} and {second}")
    return where


def watched_data_from_config(
    config: Mapping[str, str],
    name: str,
    parser: Callable[[IO[Any]], T],
    client: Any = None,
    secrets: SecretsStore | None = None,
    **reader_options: Any,
) -> WatchedData[T]:
    """A FileWatcher or a LiveNode for ``live_data.<name>``, whichever the configuration asks for.

    ``config`` is a flat mapping of dotted keys: a baseplate ``app_config``, or
    ``livedata.config.read_config(path, section=...)`` for an INI file.  These
    ``live_data.<name>.*`` keys are the application's own and may sit in any
    section; ``[live-data]`` is only the section the watcher and writer read.

    A LiveNode never starts its client: a ``client`` passed in must be
    started (``start()`` or ``start_async()``) by the caller; the shared one
    is started here.

    ``reader_options`` (``timeout``, ``binary``, ``encoding``, ``newline``, ``backoff``, ``check_interval``)
    go to whichever reader is built; both accept all of them. In node mode without ``client``, the shared
    client for the config's ``zookeeper.*`` settings is used (see :func:`shared_client`).
    """
    where = parse_live_data_config(config, name)
    if where.file is not None:
        return FileWatcher(where.file, parser, **reader_options)
    if where.dir is not None:
        from livedata.tree_watcher import TreeWatcher

        return TreeWatcher(where.dir, parser, **reader_options)  # type: ignore[return-value]
    if client is None:
        client = shared_client(config, secrets)
    if where.tree is not None:
        from livedata.live_tree import LiveTree

        return LiveTree(client, where.tree, parser, **reader_options)  # type: ignore[return-value]
    from livedata.live_node import LiveNode

    return LiveNode(client, where.node, parser, **reader_options)


_shared_clients: Dict[Tuple[Tuple[str, str], ...], Any] = {}


def shared_client(config: Mapping[str, str], secrets: SecretsStore | None = None) -> Any:
    """The process's started client for these ``zookeeper.*`` settings, made on first use.

    The client is started without waiting for a connection: the readers' own ``timeout`` decides how long
    anything blocks. Clients are keyed on the settings alone; ``secrets`` is consulted only when the first
    client for those settings is made.
    """
    from livedata.zookeeper import zookeeper_client_from_config

    key = tuple(sorted((k, v) for k, v in config.items() if k.startswith("zookeeper.")))
    client = _shared_clients.get(key)
    if client is not None:
        return client
    # Built outside any lock (it may read the secrets file); dict.setdefault is atomic, so if two callers
    # race, both end up with the same client and the loser's, never started, is dropped.
    candidate = zookeeper_client_from_config(secrets, config)
    client = _shared_clients.setdefault(key, candidate)
    if client is candidate:
        client.start_async()
    return client


def stop_shared_clients() -> None:
    """Stop and close every shared client, e.g. at application shutdown; later calls make new ones."""
    while _shared_clients:
        try:
            _, client = _shared_clients.popitem()
        except KeyError:  # emptied by a concurrent call
            return
        client.stop()
        client.close()
