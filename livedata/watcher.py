"""The watcher daemon: ``livedata-watcher CONFIG`` mirrors the configured znodes into local files.

One gevent process.  :func:`main` monkey-patches first (before kazoo is even
imported), validates the whole configuration before connecting anywhere, then
runs everything as greenlets of one hub: kazoo's (connection and watch
callbacks), the mirror's writer, two timers (heartbeat and resync), and the
parts attached to the mirror as observers: the connection log
(:mod:`livedata.connection_log`), and optionally Prometheus metrics
(:mod:`livedata.metrics`), systemd notification (:mod:`livedata.systemd`),
on_change hooks (:mod:`livedata.hooks`) and the probes' state files
(:mod:`livedata.probe_state`).

Signals: SIGTERM/SIGINT close the ZooKeeper session and exit 0; SIGHUP
re-reads the configuration (:meth:`Daemon.reload`).  ``--check`` (readiness)
and ``--alive`` (liveness) are separate, ZooKeeper-free probes
(:mod:`livedata.health`).
"""
from __future__ import annotations

import logging
import os
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
    boolean,
    byte_size,
    check_known_keys,
    comma_list,
    file_mode,
    one_of,
    parse_config,
    read_config,
    register,
    source_of,
    string,
    timespan,
    unix_group,
    unix_user,
    znode_path,
)
from livedata.destinations import DestLocks, create_missing_directories, dest_problem
from livedata.files import FileSpec
from livedata.logs import silence_kazoo
from livedata.payload import DEFAULT_MAX_PAYLOAD_SIZE as MAX_PAYLOAD_SIZE

if TYPE_CHECKING:
    from livedata.connection_log import ConnectionLog
    from livedata.hooks import HookRunner
    from livedata.metrics import Metrics, MetricsServer
    from livedata.probe_state import ProbeState
    from livedata.signing import Verifier
    from livedata.sync import Mirror, MirrorObserver, NodeConfig, TreeConfig
    from livedata.systemd import ServiceNotifier

log = logging.getLogger("livedata.watcher")

PROG = "livedata-watcher"
STOP_GRACE = 1.5  # seconds allowed for closing the session on SIGTERM; the whole exit stays under 2 s
RESYNC_JITTER = 0.1  # +-10%, so a fleet started together does not resync in step
LOCK_CHECK_INTERVAL = 5.0  # seconds between checks that each dest's lock file is still there (DestLocks.check)
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
    "require_signature": Optional(boolean),  # None: as watcher.require_signatures says
}
TREE_SPEC = {  # trees are not signed: their children are written by many services
    **{key: rule for key, rule in NODE_SPEC.items() if key != "require_signature"},
    "format": Optional(one_of("directory", "json"), "directory"),
}
WATCHER_SPEC = register({
    "watcher": {
        "heartbeat_interval": Optional(timespan, 300.0),
        "resync_interval": Optional(timespan, 600.0),
        "hook_timeout": Optional(timespan, DEFAULT_HOOK_TIMEOUT),
        "metrics_address": Optional(_listen_address),
        "state_dir": Optional(absolute_path),
        "max_payload_size": Optional(byte_size, MAX_PAYLOAD_SIZE),
        "absent_is_error": Optional(boolean, False),
        "trusted_keys": Optional(comma_list(string), []),
        "require_signatures": Optional(boolean, False),
    },
    "nodes": DictOf(NODE_SPEC),
    "trees": DictOf(TREE_SPEC),
})  # fmt: skip


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
    state_dir: str | None = None  # where the liveness file and the absent-node list go (the probes read them)
    trees: Sequence[TreeConfig] = ()
    max_payload_size: int = MAX_PAYLOAD_SIZE
    absent_is_error: bool = False  # --check fails on sources missing from ZooKeeper, the daemon logs them at ERROR
    trusted_keys: tuple[str, ...] = ()  # base64 Ed25519 public keys whose signatures are accepted
    signed_sources: frozenset[str] = frozenset()  # sources of the nodes that require a signature

    @property
    def mirrored(self) -> list[NodeConfig | TreeConfig]:
        """Nodes and trees, as the mirror takes them."""
        return [*self.nodes, *self.trees]

    def dests(self) -> list[tuple[str, str]]:
        """``(key, path)`` of every dest, keys as in the file (``nodes.a.dest``)."""
        return [(f"{kind}.{item.name}.dest", item.file.path)
                for kind, items in (("nodes", self.nodes), ("trees", self.trees)) for item in items]  # fmt: skip

    def zookeeper_settings(self) -> dict[str, str]:
        """What a reload cannot change without a new client (and so a restart)."""
        return {key: value for key, value in self.raw.items() if key.startswith(("zookeeper.", "secrets."))}


def load_config(path: str, check_dests: bool = True) -> WatcherConfig:
    """Read and validate everything the daemon needs; any problem is one :class:`ConfigError`.

    ``check_dests`` refuses dests that can never be written (an existing
    directory); the probes turn it off, since for them a directory that
    appeared at a dest is a finding about this host, not about the config.
    """
    from livedata.sync import NodeConfig, TreeConfig
    from livedata.zookeeper import parse_zookeeper_config

    raw = read_config(path)
    check_known_keys(raw)
    zookeeper = parse_zookeeper_config(raw)
    parsed = parse_config(raw, WATCHER_SPEC)
    _check_nodes(raw, parsed.nodes, parsed.trees, check_dests)
    for key in ("heartbeat_interval", "resync_interval", "hook_timeout"):
        if parsed.watcher[key] <= 0:
            raise ConfigError(path, f"watcher.{key}", "must be greater than zero")
    if parsed.watcher.absent_is_error and parsed.watcher.state_dir is None:
        raise ConfigError(path, "watcher.absent_is_error", "needs watcher.state_dir, through which the daemon tells "
                          "--check which sources are absent")  # fmt: skip
    if parsed.watcher.metrics_address is not None:
        _require_metrics_library(path)
    signed = _signed_sources(path, parsed)
    nodes = [
        NodeConfig(name, node.source, FileSpec(node.dest, node.mode, node.owner, node.group))
        for name, node in parsed.nodes.items()
    ]
    trees = [
        TreeConfig(name, tree.source, FileSpec(tree.dest, tree.mode, tree.owner, tree.group), tree.format)
        for name, tree in parsed.trees.items()
    ]
    on_change = {name: item.on_change for items in (parsed.nodes, parsed.trees)
                 for name, item in items.items() if item.on_change}  # fmt: skip
    return WatcherConfig(
        # Only the connection settings are needed later; tens of thousands of node keys are not kept.
        raw=RawConfig({key: value for key, value in raw.items() if not key.startswith(("nodes.", "trees."))},
                      raw.source),
        nodes=nodes,
        heartbeat_interval=parsed.watcher.heartbeat_interval,
        resync_interval=parsed.watcher.resync_interval,
        credentials=bool(zookeeper.credentials),
        hooks=on_change,
        hook_timeout=parsed.watcher.hook_timeout,
        metrics_address=parsed.watcher.metrics_address,
        state_dir=parsed.watcher.state_dir,
        trees=trees,
        max_payload_size=parsed.watcher.max_payload_size,
        absent_is_error=parsed.watcher.absent_is_error,
        trusted_keys=tuple(parsed.watcher.trusted_keys),
        signed_sources=signed,
    )


def _signed_sources(path: str, parsed: Any) -> frozenset[str]:
    """The sources of the nodes that require a signature, once the keys and the library are known to be there."""
    from livedata.signing import KeyFormatError, SigningUnavailable, decode_key, require_library

    everywhere = parsed.watcher.require_signatures
    signed = frozenset(node.source for node in parsed.nodes.values()
                       if (everywhere if node.require_signature is None else node.require_signature))  # fmt: skip
    keys = parsed.watcher.trusted_keys
    if not signed and not keys:
        return signed
    key = "watcher.trusted_keys" if keys else "watcher.require_signatures"
    try:
        require_library()
    except SigningUnavailable as e:
        raise ConfigError(path, key, str(e)) from None
    if not keys:
        raise ConfigError(path, key, "nodes require signatures but watcher.trusted_keys is empty: list the public "
                          "keys (livedata-keygen prints them) whose signatures to accept")  # fmt: skip
    for number, text in enumerate(keys, 1):
        try:
            decode_key(text, f"key {number} ({text[:12]}...)" if len(text) > 12 else f"key {number} ({text!r})")
        except KeyFormatError as e:
            raise ConfigError(path, "watcher.trusted_keys", str(e)) from None
    return signed


def _check_nodes(raw: RawConfig, nodes: Mapping[str, Any], trees: Mapping[str, Any], check_dests: bool) -> None:
    source = source_of(raw)
    if not nodes and not trees:
        raise ConfigError(source, "nodes", "no nodes or trees configured (expected nodes.<name>.source and "
                          "nodes.<name>.dest, or trees.<name>.source and trees.<name>.dest)")  # fmt: skip
    seen: dict[str, str] = {}  # dest -> the key that claims it
    owned: list[tuple[str, str]] = []  # (directory, key) of directory trees: nothing else may live in them
    for kind, items in (("nodes", nodes), ("trees", trees)):
        for name, item in items.items():
            key = f"{kind}.{name}"
            if kind == "trees" and name in nodes:
                raise ConfigError(source, f"{key}.source", f"nodes.{name} has the same name (hooks, metrics and "
                                  "probes name them alike): rename one")  # fmt: skip
            if item.dest in seen:
                raise ConfigError(source, f"{key}.dest", f"{item.dest} is also the dest of {seen[item.dest]}")
            seen[item.dest] = key
            if kind == "trees" and item.format == "directory":
                owned.append((item.dest, key))
            elif check_dests:
                problem = dest_problem(item.dest)
                if problem:
                    raise ConfigError(source, f"{key}.dest", problem)
    for directory, owner in owned:
        for dest, key in seen.items():
            if key != owner and (dest.startswith(directory + "/") or directory.startswith(dest + "/")):
                raise ConfigError(source, f"{owner}.dest", f"{directory} is a tree's directory, which livedata "
                                  f"owns entirely; it overlaps {key}.dest ({dest})")  # fmt: skip


def _require_metrics_library(path: str) -> None:
    from livedata.metrics import MetricsUnavailable, require_library

    try:
        require_library()
    except MetricsUnavailable as e:
        raise ConfigError(path, "watcher.metrics_address", str(e)) from None


# --- the probe ---------------------------------------------------------------------------------


def check(config: WatcherConfig) -> int:
    """``--check`` (readiness): one line per missing, stale or mis-moded dest; exit 1 if there is any.

    A node the daemon reported absent from ZooKeeper (in ``watcher.state_dir``)
    is fine without its file, as long as that report is fresh, unless
    ``watcher.absent_is_error`` says that every source must exist: then each
    absent node or tree is a line of its own.
    """
    import time

    from livedata import health

    now = time.time()
    max_age = health.STALE_HEARTBEATS * config.heartbeat_interval
    absent = health.absent_nodes(config.state_dir, max_age, now)
    found = health.problems(((node.name, node.file) for node in config.nodes), config.heartbeat_interval, now, absent)
    for directory in (False, True):
        trees = ((tree.name, tree.file) for tree in config.trees if (tree.format == "directory") == directory)
        found += health.problems(trees, config.heartbeat_interval, now, kind="trees", directory=directory)
    if config.absent_is_error:
        found += _absent_sources(config, absent)
    found += _refused_sources(config)
    for line in found:
        print(line)
    if found:
        return cli.EXIT_FAILURE
    gone = sum(1 for node in config.nodes
               if absent.get(node.name) == node.file.path and not os.path.lexists(node.file.path))  # fmt: skip
    also = f", {gone} known absent in ZooKeeper" if gone else ""
    print(f"ok: {len(config.nodes) + len(config.trees) - gone} dests present and fresh{also}")
    return cli.EXIT_OK


def _absent_sources(config: WatcherConfig, absent: Mapping[str, str]) -> list[str]:
    """One line per configured source the daemon reported absent (``watcher.absent_is_error``)."""
    return [f"{item.file.path}: source {item.source} does not exist in ZooKeeper ({kind}.{item.name}; "
            "watcher.absent_is_error is set)"
            for kind, items in (("nodes", config.nodes), ("trees", config.trees))
            for item in items if absent.get(item.name) == item.file.path]  # fmt: skip


def _refused_sources(config: WatcherConfig) -> list[str]:
    """One line per node whose current data in ZooKeeper the daemon refuses (a signature check failed)."""
    from livedata.signing import read_refused

    if not config.signed_sources:
        return []
    refused = read_refused(config.state_dir)
    return [f"{node.file.path}: the data in {node.source} is refused ({refused[node.source]}); the file keeps the "
            f"last accepted version (nodes.{node.name})"
            for node in config.nodes if node.source in refused and node.source in config.signed_sources]  # fmt: skip


def alive(config: WatcherConfig) -> int:
    """``--alive`` (liveness): exit 0 while the daemon's event loop keeps touching its liveness file."""
    from livedata import health

    if config.state_dir is None:
        return cli.fail(PROG, f"{config.raw.source}: watcher.state_dir is not set; --alive needs it", cli.EXIT_USAGE)
    problem = health.alive_problem(config.state_dir)
    if problem:
        print(problem)
        return cli.EXIT_FAILURE
    print(f"ok: the watcher's loop is alive ({config.state_dir})")
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

    def __init__(self, config_path: str, config: WatcherConfig, dest_locks: DestLocks | None = None) -> None:
        from livedata.connection_log import ConnectionLog
        from livedata.hooks import HookRunner
        from livedata.probe_state import AbsentSources, ProbeState
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
        self.connection_log: ConnectionLog = ConnectionLog(self.client, config.raw["zookeeper.hosts"])
        self.probe_state: ProbeState | None = ProbeState(config.state_dir) if config.state_dir else None
        self.absent_sources = AbsentSources(config.absent_is_error)
        parts = (self.connection_log, self.absent_sources, self.metrics, self.hooks, self.service, self.probe_state)
        observers = [part for part in parts if part is not None]
        self.verifier: Verifier | None = None
        self._configure_signatures(config)
        self.mirror: Mirror = Mirror(
            self.client, config.mirrored, _fan_out(observers), credentials.refresh if credentials else None,
            max_payload_size=config.max_payload_size, verify=self._verify,
        )
        if self.metrics is not None:
            self.metrics.watch(self.mirror)
        self.timers: list[Any] = []
        self.dest_locks = dest_locks or DestLocks(config.raw.source)  # run() claims them before anything else
        self.dest_taken: Any = None  # set (a gevent Event, made in start) when another watcher took a dest

    def _verify(self, path: str, data: bytes, envelope: Any) -> None:
        """The read queue's verification step (:meth:`livedata.signing.Verifier.check`), when any node is signed."""
        if self.verifier is not None:
            self.verifier.check(path, data, envelope)

    def _configure_signatures(self, config: WatcherConfig) -> bool:
        """Create or update the verifier; True when the keys or the signed nodes changed."""
        from livedata.signing import SequenceStore, Verifier

        if not config.signed_sources:
            changed = self.verifier is not None
            self.verifier = None
            return changed
        signed = config.signed_sources
        if self.verifier is None:
            if config.state_dir is None:
                log.warning("watcher.state_dir is not set: the last accepted sequence of each signed node is "
                            "kept in memory only, so after a restart any validly signed version is accepted once")
            self.verifier = Verifier(config.trusted_keys, signed.__contains__, SequenceStore(self.config.state_dir),
                                     self.client.chroot)  # fmt: skip
            return True
        before = (self.verifier.keys, self.verifier.required)
        self.verifier.set_keys(config.trusted_keys)
        self.verifier.required = signed.__contains__
        return before != (self.verifier.keys, self.verifier.required)

    def _make_metrics(self) -> Metrics:
        from livedata.metrics import Metrics

        metrics = Metrics(hook_counts=self.hooks.counts)
        metrics.hooks_pending = self.hooks.pending
        return metrics

    def start(self) -> None:
        import gevent.event

        from livedata.metrics import MetricsServer

        self.dest_taken = gevent.event.Event()

        claim_dests(self.dest_locks, self.config)  # already held when run() claimed them: a no-op then
        log.info("watching %d nodes and %d trees on %s", len(self.config.nodes), len(self.config.trees),
                 self.config.raw["zookeeper.hosts"])
        if self.probe_state is not None:
            self.probe_state.start()
        self.connection_log.start()
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
            gevent.spawn(every, LOCK_CHECK_INTERVAL, self.check_dest_locks),
        ]

    def check_dest_locks(self) -> None:
        """Lock again a lock file removed or replaced, and retry claims that failed; stop if a dest was taken.

        A dest another watcher holds now is the conflict a start would have
        refused (it took the removed lock file's place): this watcher stops
        with the same status 2 and line, rather than keep two daemons writing
        one file; its supervisor then leaves it stopped, as after a refused start.
        """
        try:
            self.dest_locks.check(self.config.dests)
        except ConfigError as e:
            log.error("%s; stopping, as this watcher would be refused if it started now", " ".join(str(e).split()))
            self.dest_taken.set()

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
            claim_dests(self.dest_locks, new)
        except ConfigError as e:
            self.dest_locks.keep_only(path for _, path in self.config.dests())
            log.error("reload rejected, the running configuration stays in force: %s", " ".join(str(e).split()))
            self._reloaded(applied=False)
            return False
        self._report_restart_needed(new)
        old = self.config
        added, removed = self.mirror.update_nodes(new.mirrored)
        self.dest_locks.keep_only(path for _, path in new.dests())
        self.hooks.configure(new.hooks, new.hook_timeout)
        if self._configure_signatures(new):  # a revoked key or a newly signed node: read the signed nodes again
            self.mirror.reads.request_all(node for node in self.mirror.nodes if node.path in new.signed_sources)
        self.absent_sources.as_error = new.absent_is_error
        self.absent_sources.forget({f"{kind}.{item.name}" for kind, items in (("nodes", new.nodes),
                                    ("trees", new.trees)) for item in items})  # fmt: skip
        self.config = replace(new, metrics_address=old.metrics_address, state_dir=old.state_dir)
        # Restarting the timers on every reload would postpone heartbeats forever under frequent reloads.
        if (new.heartbeat_interval, new.resync_interval) != (old.heartbeat_interval, old.resync_interval):
            self._start_timers()
        changed = set(added) & set(removed)
        trees = {tree.name for tree in (*old.trees, *new.trees)}  # names are unique across nodes and trees

        def names(which: set[str]) -> str:
            return _names({f"{name} (tree)" if name in trees else name for name in which})

        log.info(
            "reloaded %s: %s; added: %s; removed: %s; changed: %s", self.config_path, _counts(new),
            names(set(added) - changed), names(set(removed) - changed), names(changed),
        )  # fmt: skip
        self._reloaded(applied=True)
        return True

    def _report_restart_needed(self, new: WatcherConfig) -> None:
        wanted = new.zookeeper_settings()
        changed = sorted(key for key in self.running_zookeeper.keys() | wanted.keys()
                         if self.running_zookeeper.get(key) != wanted.get(key))  # fmt: skip
        if new.metrics_address != self.config.metrics_address:
            changed.append("watcher.metrics_address")
        if new.state_dir != self.config.state_dir:
            changed.append("watcher.state_dir")
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
        self.connection_log.stop()
        if self.probe_state is not None:
            self.probe_state.stop()
        self.dest_locks.release_all()
        silence_kazoo()  # its "Failed connecting ... retry policy" after we interrupt the retries is noise
        with gevent.Timeout(STOP_GRACE, False):
            self.client.stop()
        if self.client._connection.connection_stopped.is_set():  # kazoo refuses to close a routine still running
            self.client.close()  # (else it waits on a server that does not answer: the process ends without it)


def claim_dests(locks: DestLocks, config: WatcherConfig) -> None:
    """Claim the dests (raising DestinationBusy, a ConfigError), creating their missing directories.

    Dests in existing directories are claimed first, so a refusal creates
    nothing; a directory just made cannot be another watcher's.
    """
    locks.claim(config.dests())
    create_missing_directories((node.name, node.file) for node in config.mirrored)
    locks.claim(config.dests())


def _counts(config: WatcherConfig) -> str:
    """``3 nodes``, or ``3 nodes and 1 tree``: a tree is not counted as a node."""
    nodes = f"{len(config.nodes)} node{'' if len(config.nodes) == 1 else 's'}"
    if not config.trees:
        return nodes
    return f"{nodes} and {len(config.trees)} tree{'' if len(config.trees) == 1 else 's'}"


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

    locks = DestLocks(config.raw.source)
    claim_dests(locks, config)  # before anything can log a line or create a file: a refusal is one line
    daemon = Daemon(config_path, config, locks)
    daemon.start()
    reloader = gevent.spawn(_reload_on_request, daemon, reload_requested)
    gevent.wait([stopping, daemon.mirror.died, daemon.dest_taken], count=1)
    log.info("stopping")
    reloader.kill()
    daemon.stop()
    if daemon.dest_taken.is_set():
        return cli.EXIT_USAGE
    return cli.EXIT_FAILURE if daemon.mirror.died.is_set() else cli.EXIT_OK


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
    cli.add_common_arguments(parser)
    probes = parser.add_mutually_exclusive_group()
    probes.add_argument(
        "--check",
        action="store_true",
        help="readiness probe instead of running: exit 0 if each dest exists with its mode (and owner/group) and "
        "was touched within two heartbeat intervals, or is known absent in ZooKeeper (unless "
        "watcher.absent_is_error is set), else print the bad ones and exit 1; needs no ZooKeeper",
    )
    probes.add_argument(
        "--alive",
        action="store_true",
        help="liveness probe instead of running: exit 0 if the running watcher's loop touched its liveness file "
        "in watcher.state_dir within 30 seconds, else exit 1",
    )
    args = parser.parse_args(argv)
    cli.setup_logging(args.debug, cli.log_level(args))
    try:
        config = load_config(args.config, check_dests=not (args.check or args.alive))
    except ConfigError as e:
        return cli.fail(PROG, e, cli.EXIT_USAGE)
    if args.check:
        return check(config)
    if args.alive:
        return alive(config)
    from livedata.zookeeper import CredentialsError

    try:
        return run(args.config, config)
    except (CredentialsError, ConfigError) as e:  # ConfigError: DestinationBusy, another watcher has a dest
        return cli.fail(PROG, e, cli.EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main())
