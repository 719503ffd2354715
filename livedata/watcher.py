"""The watcher daemon: ``livedata-watcher CONFIG`` mirrors the configured znodes into local files.

One gevent process.  :func:`main` monkey-patches first (before kazoo is even
imported), validates the whole configuration before connecting anywhere, then
runs three kinds of greenlets on one hub: kazoo's (connection and watch
callbacks), the mirror's writer, and two timers (heartbeat and resync).
SIGTERM/SIGINT close the ZooKeeper session and exit 0.
"""
from __future__ import annotations

import logging
import random
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from livedata import cli
from livedata.config import (
    ConfigError,
    DictOf,
    Optional,
    RawConfig,
    absolute_path,
    file_mode,
    parse_config,
    read_config,
    source_of,
    timespan,
    unix_group,
    unix_user,
    unknown_keys,
    znode_path,
)
from livedata.files import FileSpec

if TYPE_CHECKING:
    from livedata.sync import Mirror, NodeConfig

log = logging.getLogger("livedata.watcher")

PROG = "livedata-watcher"
STOP_GRACE = 1.5  # seconds allowed for closing the session on SIGTERM; the whole exit stays under 2 s
RESYNC_JITTER = 0.1  # +-10%, so a fleet started together does not resync in step

NODE_SPEC = {
    "source": znode_path,
    "dest": absolute_path,
    "owner": Optional(unix_user),
    "group": Optional(unix_group),
    "mode": Optional(file_mode, 0o400),
}
WATCHER_SPEC = {
    "watcher": {
        "heartbeat_interval": Optional(timespan, 300.0),
        "resync_interval": Optional(timespan, 600.0),
    },
    "nodes": DictOf(NODE_SPEC),
}


@dataclass(frozen=True)
class WatcherConfig:
    raw: RawConfig
    nodes: Sequence[NodeConfig]
    heartbeat_interval: float
    resync_interval: float
    credentials: bool


def load_config(path: str) -> WatcherConfig:
    """Read and validate everything the daemon needs; any problem is one :class:`ConfigError`."""
    from livedata.sync import NodeConfig
    from livedata.zookeeper import parse_zookeeper_config

    raw = read_config(path)
    zookeeper = parse_zookeeper_config(raw)
    parsed = parse_config(raw, WATCHER_SPEC)
    _check_nodes(raw, parsed.nodes)
    for key in ("heartbeat_interval", "resync_interval"):
        if parsed.watcher[key] <= 0:
            raise ConfigError(path, f"watcher.{key}", "must be greater than zero")
    nodes = [
        NodeConfig(name, node.source, FileSpec(node.dest, node.mode, node.owner, node.group))
        for name, node in parsed.nodes.items()
    ]
    return WatcherConfig(
        raw=raw,
        nodes=nodes,
        heartbeat_interval=parsed.watcher.heartbeat_interval,
        resync_interval=parsed.watcher.resync_interval,
        credentials=bool(zookeeper.credentials),
    )


def _check_nodes(raw: RawConfig, nodes: Mapping[str, Any]) -> None:
    source = source_of(raw)
    if not nodes:
        raise ConfigError(source, "nodes", "no nodes configured (expected nodes.<name>.source and nodes.<name>.dest)")
    for key in unknown_keys(raw, "nodes.", NODE_SPEC):
        raise ConfigError(source, key, f"unknown key (a node takes: {', '.join(NODE_SPEC)})")
    seen: dict[str, str] = {}
    for name, node in nodes.items():
        if node.dest in seen:
            raise ConfigError(source, f"nodes.{name}.dest", f"{node.dest} is also the dest of nodes.{seen[node.dest]}")
        seen[node.dest] = name


# --- running -----------------------------------------------------------------------------------


def every(interval: float, action: Callable[[], object], jitter: float = 0.0) -> None:
    """Run ``action`` forever, ``interval`` seconds apart (each wait jittered by +-``jitter``)."""
    import gevent

    while True:
        gevent.sleep(interval * random.uniform(1 - jitter, 1 + jitter))
        try:
            action()
        except Exception:
            log.exception("periodic %s failed; will run again", getattr(action, "__name__", action))


def run(config: WatcherConfig) -> int:
    """Mirror until SIGTERM or SIGINT; returns the exit status."""
    import gevent
    import gevent.event

    from livedata.secrets import secrets_store_from_config
    from livedata.sync import Mirror
    from livedata.zookeeper import zookeeper_client_from_config

    secrets = secrets_store_from_config(config.raw) if config.credentials else None
    client = zookeeper_client_from_config(secrets, config.raw, read_only=True)
    mirror = Mirror(client, config.nodes)
    stopping = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)

    log.info("watching %d nodes on %s", len(config.nodes), config.raw["zookeeper.hosts"])
    mirror.start()
    client.start_async()
    timers = [
        gevent.spawn(every, config.heartbeat_interval, mirror.heartbeat),
        gevent.spawn(every, config.resync_interval, mirror.resync, RESYNC_JITTER),
    ]
    stopping.wait()
    log.info("stopping")
    gevent.killall(timers)
    _shutdown(client, mirror)
    return cli.EXIT_OK


def _shutdown(client: Any, mirror: Mirror) -> None:
    """Close the session so the servers drop our watches now, not a session timeout later."""
    import gevent

    mirror.stop()
    with gevent.Timeout(STOP_GRACE, False):
        client.stop()
    client.close()


def main(argv: list[str] | None = None) -> int:
    from gevent import monkey

    monkey.patch_all()
    parser = cli.ArgumentParser(prog=PROG, description="Mirror ZooKeeper nodes into local files.")
    parser.add_argument("config", help="INI file with a [live-data] section")
    parser.add_argument("--debug", action="store_true", help="log every read, write and connection event")
    args = parser.parse_args(argv)
    cli.setup_logging(args.debug)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        return cli.fail(PROG, e, cli.EXIT_USAGE)
    from livedata.zookeeper import CredentialsError

    try:
        return run(config)
    except CredentialsError as e:
        return cli.fail(PROG, e, cli.EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main())
