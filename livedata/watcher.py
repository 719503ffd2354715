"""The watcher daemon: ``livedata-watcher CONFIG`` mirrors the configured znodes into local files.

One gevent process.  :func:`main` monkey-patches first (before kazoo is even
imported), validates the whole configuration before connecting anywhere, then
runs everything as greenlets of one hub: kazoo's (connection and watch
callbacks), the mirror's writer, two timers (heartbeat and resync), and the
optional parts attached to the mirror as observers: Prometheus metrics
(:mod:`livedata.metrics`), systemd notification (:mod:`livedata.systemd`) and
on_change hooks (:mod:`livedata.hooks`).

Signals: SIGTERM/SIGINT close the ZooKeeper session and exit 0; SIGHUP
re-reads the configuration (:meth:`Daemon.reload`).  ``--check`` is a
separate, ZooKeeper-free probe of the dests (:mod:`livedata.health`).
"""
from __future__ import annotations

import logging
import random
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
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
    string,
    timespan,
    unix_group,
    unix_user,
    unknown_keys,
    znode_path,
)
from livedata.files import FileSpec

if TYPE_CHECKING:
    from livedata.hooks import HookRunner
    from livedata.metrics import Metrics, MetricsServer
    from livedata.sync import Mirror, MirrorObserver, NodeConfig
    from livedata.systemd import ServiceNotifier

log = logging.getLogger("livedata.watcher")

PROG = "livedata-watcher"
STOP_GRACE = 1.5  # seconds allowed for closing the session on SIGTERM; the whole exit stays under 2 s
RESYNC_JITTER = 0.1  # +-10%, so a fleet started together does not resync in step
DEFAULT_HOOK_TIMEOUT = 30.0


def _listen_address(text: str) -> tuple[str, int]:
    from livedata.metrics import parse_address  # lazily: it needs gevent, which must come after patching

    return parse_address(text)


NODE_SPEC = {
    "source": znode_path,
    "dest": absolute_path,
    "owner": Optional(unix_user),
    "group": Optional(unix_group),
    "mode": Optional(file_mode, 0o400),
    "on_change": Optional(string),
}
WATCHER_SPEC = {
    "watcher": {
        "heartbeat_interval": Optional(timespan, 300.0),
        "resync_interval": Optional(timespan, 600.0),
        "hook_timeout": Optional(timespan, DEFAULT_HOOK_TIMEOUT),
        "metrics_address": Optional(_listen_address),
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
    hooks: Mapping[str, str] = field(default_factory=dict)  # node name -> on_change command
    hook_timeout: float = DEFAULT_HOOK_TIMEOUT
    metrics_address: tuple[str, int] | None = None

    def zookeeper_settings(self) -> dict[str, str]:
        """What a reload cannot change without a new client (and so a restart)."""
        return {key: value for key, value in self.raw.items() if key.startswith(("zookeeper.", "secrets."))}


def load_config(path: str) -> WatcherConfig:
    """Read and validate everything the daemon needs; any problem is one :class:`ConfigError`."""
    from livedata.sync import NodeConfig
    from livedata.zookeeper import parse_zookeeper_config

    raw = read_config(path)
    zookeeper = parse_zookeeper_config(raw)
    parsed = parse_config(raw, WATCHER_SPEC)
    _check_nodes(raw, parsed.nodes)
    for key in ("heartbeat_interval", "resync_interval", "hook_timeout"):
        if parsed.watcher[key] <= 0:
            raise ConfigError(path, f"watcher.{key}", "must be greater than zero")
    if parsed.watcher.metrics_address is not None:
        _require_metrics_library(path)
    nodes = [
        NodeConfig(name, node.source, FileSpec(node.dest, node.mode, node.owner, node.group))
        for name, node in parsed.nodes.items()
    ]
    return WatcherConfig(
        # Only the connection settings are needed later; tens of thousands of node keys are not kept.
        raw=RawConfig({key: value for key, value in raw.items() if not key.startswith("nodes.")}, raw.source),
        nodes=nodes,
        heartbeat_interval=parsed.watcher.heartbeat_interval,
        resync_interval=parsed.watcher.resync_interval,
        credentials=bool(zookeeper.credentials),
        hooks={name: node.on_change for name, node in parsed.nodes.items() if node.on_change},
        hook_timeout=parsed.watcher.hook_timeout,
        metrics_address=parsed.watcher.metrics_address,
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


def _require_metrics_library(path: str) -> None:
    from livedata.metrics import MetricsUnavailable, require_library

    try:
        require_library()
    except MetricsUnavailable as e:
        raise ConfigError(path, "watcher.metrics_address", str(e)) from None


# --- the probe ---------------------------------------------------------------------------------


def check(config: WatcherConfig) -> int:
    """``--check``: print one line per missing, stale or mis-moded dest; exit 1 if there is any."""
    from livedata import health

    found = health.problems(((node.name, node.file) for node in config.nodes), config.heartbeat_interval)
    for line in found:
        print(line)
    if found:
        return cli.EXIT_FAILURE
    print(f"ok: {len(config.nodes)} dests present and fresh")
    return cli.EXIT_OK


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


class Daemon:
    """The running watcher: the mirror, what is attached to it, and what a SIGHUP may change."""

    def __init__(self, config_path: str, config: WatcherConfig) -> None:
        from livedata.hooks import HookRunner
        from livedata.secrets import secrets_store_from_config
        from livedata.sync import Mirror
        from livedata.systemd import ServiceNotifier
        from livedata.zookeeper import credentials_refresher, zookeeper_client_from_config

        self.config_path = config_path
        self.config = config
        self.running_zookeeper = config.zookeeper_settings()
        secrets = secrets_store_from_config(config.raw) if config.credentials else None
        # A secrets file that is missing or wrong at start is logged, not fatal: the mirror picks the
        # credentials up once it is fixed, and meanwhile serves what needs none and keeps every file.
        self.client = zookeeper_client_from_config(secrets, config.raw, read_only=True, credentials_required=False)
        credentials = credentials_refresher(self.client, secrets, config.raw)
        self.hooks: HookRunner = HookRunner(config.hooks, config.hook_timeout)
        self.service: ServiceNotifier | None = ServiceNotifier.from_environment()
        self.metrics: Metrics | None = None
        self.metrics_server: MetricsServer | None = None
        if config.metrics_address is not None:
            self.metrics = self._make_metrics()
        observers = [part for part in (self.metrics, self.hooks, self.service) if part is not None]
        self.mirror: Mirror = Mirror(
            self.client, config.nodes, _fan_out(observers), credentials.refresh if credentials else None
        )
        if self.metrics is not None:
            self.metrics.watch(self.mirror)
        self.timers: list[Any] = []

    def _make_metrics(self) -> Metrics:
        from livedata.metrics import Metrics

        metrics = Metrics(hook_counts=self.hooks.counts)
        metrics.hooks_pending = self.hooks.pending
        return metrics

    def start(self) -> None:
        from livedata.metrics import MetricsServer

        log.info("watching %d nodes on %s", len(self.config.nodes), self.config.raw["zookeeper.hosts"])
        self.mirror.start()
        self.client.start_async()
        self._start_timers()
        if self.metrics is not None and self.config.metrics_address is not None:
            self.metrics_server = MetricsServer(self.metrics, self.config.metrics_address)
            self.metrics_server.start()
        if self.service is not None:
            self.service.start(self.mirror)

    def _start_timers(self) -> None:
        import gevent

        gevent.killall(self.timers)
        self.timers = [
            gevent.spawn(every, self.config.heartbeat_interval, self.mirror.heartbeat),
            gevent.spawn(every, self.config.resync_interval, self.mirror.resync, RESYNC_JITTER),
        ]

    def reload(self) -> bool:
        """Re-read the config file and apply it; an invalid one is rejected and the running one stays.

        Nodes are added and removed live (a node whose settings changed is
        removed and added again, so a changed dest is written at its new
        path; files of removed nodes, and a moved node's old file, are left
        in place).  ZooKeeper settings and the metrics address would need a
        new client or listener: they are reported and wait for a restart.
        """
        if self.service is not None:
            self.service.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            log.error("reload rejected, the running configuration stays in force: %s", " ".join(str(e).split()))
            self._reloaded(applied=False)
            return False
        self._report_restart_needed(new)
        old = self.config
        added, removed = self.mirror.update_nodes(new.nodes)
        self.hooks.configure(new.hooks, new.hook_timeout)
        self.config = replace(new, metrics_address=old.metrics_address)
        # Restarting the timers on every reload would postpone heartbeats forever under frequent reloads.
        if (new.heartbeat_interval, new.resync_interval) != (old.heartbeat_interval, old.resync_interval):
            self._start_timers()
        changed = sorted(set(added) & set(removed))
        log.info(
            "reloaded %s: %d nodes; added: %s; removed: %s; changed: %s",
            self.config_path, len(new.nodes), _names(set(added) - set(changed)),
            _names(set(removed) - set(changed)), _names(changed),
        )  # fmt: skip
        self._reloaded(applied=True)
        return True

    def _report_restart_needed(self, new: WatcherConfig) -> None:
        wanted = new.zookeeper_settings()
        changed = sorted(key for key in self.running_zookeeper.keys() | wanted.keys()
                         if self.running_zookeeper.get(key) != wanted.get(key))  # fmt: skip
        if new.metrics_address != self.config.metrics_address:
            changed.append("watcher.metrics_address")
        if changed:
            log.warning("reload: %s changed; restart the watcher to apply (keeping the current ones)",
                        ", ".join(changed))  # fmt: skip

    def _reloaded(self, applied: bool) -> None:
        if self.metrics is not None:
            self.metrics.reloaded(applied)
        if self.service is not None:
            self.service.reloaded()

    def stop(self) -> None:
        """Close the session so the servers drop our watches now, not a session timeout later."""
        import gevent

        gevent.killall(self.timers)
        if self.service is not None:
            self.service.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.hooks.stop()
        self.mirror.stop()
        with gevent.Timeout(STOP_GRACE, False):
            self.client.stop()
        self.client.close()


def _names(names: Sequence[str] | set[str], limit: int = 10) -> str:
    ordered = sorted(names)
    if not ordered:
        return "none"
    more = f" and {len(ordered) - limit} more" if len(ordered) > limit else ""
    return ", ".join(ordered[:limit]) + more


def _fan_out(observers: Sequence[MirrorObserver]) -> MirrorObserver:
    """One observer for the mirror that forwards to each part; a failing part is logged, never fatal.

    Defined lazily because MirrorObserver lives in a module that needs gevent and kazoo.
    """
    from livedata.sync import MirrorObserver

    class FanOut(MirrorObserver):
        def state_changed(self, state: str) -> None:
            for observer in observers:
                _guarded(observer.state_changed, state)

        def written(self, node: Any, outcome: Any, repaired: bool) -> None:
            for observer in observers:
                _guarded(observer.written, node, outcome, repaired)

        def failed(self, node: Any, step: str, reason: str) -> None:
            for observer in observers:
                _guarded(observer.failed, node, step, reason)

        def heartbeat(self, touched: int) -> None:
            for observer in observers:
                _guarded(observer.heartbeat, touched)

    return FanOut()


def _guarded(call: Callable[..., None], *args: Any) -> None:
    try:
        call(*args)
    except Exception:
        log.exception("%s failed; mirroring goes on", getattr(call, "__qualname__", call))


def run(config_path: str, config: WatcherConfig) -> int:
    """Mirror until SIGTERM or SIGINT, reloading on SIGHUP; returns the exit status."""
    import gevent
    import gevent.event

    stopping = gevent.event.Event()
    reload_requested = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)
    gevent.signal_handler(signal.SIGHUP, reload_requested.set)

    daemon = Daemon(config_path, config)
    daemon.start()
    reloader = gevent.spawn(_reload_on_request, daemon, reload_requested)
    stopping.wait()
    log.info("stopping")
    reloader.kill()
    daemon.stop()
    return cli.EXIT_OK


def _reload_on_request(daemon: Daemon, requested: Any) -> None:
    """Several SIGHUPs during one reload cause one more reload, not one each."""
    while True:
        requested.wait()
        requested.clear()
        try:
            daemon.reload()
        except Exception:
            log.exception("reload failed; the running configuration stays in force")


def main(argv: list[str] | None = None) -> int:
    from livedata.patching import patch_for_daemon

    patch_for_daemon()
    parser = cli.ArgumentParser(prog=PROG, description="Mirror ZooKeeper nodes into local files.")
    parser.add_argument("config", help="INI file with a [live-data] section")
    parser.add_argument("--debug", action="store_true", help="log every read, write and connection event")
    parser.add_argument(
        "--check",
        action="store_true",
        help="probe the dests instead of running: exit 0 if each exists with its mode (and owner/group) and was "
        "touched within two heartbeat intervals, else print the bad ones and exit 1; needs no ZooKeeper",
    )
    args = parser.parse_args(argv)
    cli.setup_logging(args.debug)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        return cli.fail(PROG, e, cli.EXIT_USAGE)
    if args.check:
        return check(config)
    from livedata.zookeeper import CredentialsError

    try:
        return run(args.config, config)
    except CredentialsError as e:
        return cli.fail(PROG, e, cli.EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main())
