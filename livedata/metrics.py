"""The optional Prometheus endpoint of the watcher (``watcher.metrics_address``).

Why it is shaped like this:

* ``prometheus_client`` is an optional extra (``livedata[metrics]``), so this
  module imports it only inside the functions that need it: the daemon can
  parse its config, and run without metrics, on a host that lacks the library.
* Nothing per node happens on the hot path.  The mirror's observer calls
  (:class:`Metrics`) only bump plain integers or store one tuple; every
  per-node series is computed at scrape time by reading the mirror's node
  objects.  With 50,000 nodes, updating 50,000 gauge children on every resync
  would cost more than the resync itself, whereas a scrape every 15 s reading
  plain attributes costs little, and it runs in gevent's thread pool so the
  hub keeps answering ZooKeeper while the (large) text is formatted.
* Ages (seconds since the last write, since the last heartbeat) are computed at
  scrape time rather than exported as timestamps: the issue asks for ages,
  and an age can be alerted on without PromQL arithmetic (``> 600``).
"""
from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable

from livedata.files import Outcome
from livedata.signing import REFUSALS as SIGNATURE_REFUSALS
from livedata.sync import ABSENT, MirroredNode, MirroredTree, MirrorObserver

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from livedata.sync import Mirror

log = logging.getLogger("livedata.metrics")

LIBRARY = "prometheus_client"
INSTALL_HINT = "pip install 'livedata[metrics]'"
BIND_RETRY_FIRST = 1.0
BIND_RETRY_MAX = 30.0

_ERRNO_NAMES = {os.strerror(code): name for code, name in errno.errorcode.items()}


class MetricsUnavailable(Exception):
    """``watcher.metrics_address`` is set but the Prometheus client library is not installed."""


def require_library() -> None:
    """Fail early (at config time) rather than at the first scrape when the extra is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError as e:
        raise MetricsUnavailable(f"needs the {LIBRARY} package ({INSTALL_HINT}): {e}") from None


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT`` (every interface) -> (host, port); a config-spec parser."""
    host, colon, port = text.strip().rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text.strip()!r} is not HOST:PORT (like 127.0.0.1:9464)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text.strip()!r}: write an IPv6 address in brackets, like [::1]:9464")
    return host, int(port)


def short_reason(step: str, reason: str) -> str:
    """A bounded label value for a failure: the errno name of a write or touch, the exception type of a read."""
    if step in ("write", "touch"):
        return _ERRNO_NAMES.get(reason, "other")
    if reason.startswith("not allowed"):
        return "NoAuthError"
    name = reason.split(":", 1)[0]
    return name if name.isidentifier() else "other"


class Metrics(MirrorObserver):
    """Counts what the mirror reports (O(1) per event) and turns it, plus the nodes' state, into metrics."""

    def __init__(self, hook_counts: Callable[[], Mapping[str, int]] | None = None) -> None:
        self.mirror: Mirror | None = None
        self.hook_counts = hook_counts
        self.hooks_pending: Callable[[], int] | None = None
        self.connected = False
        self.ever_connected = False
        self.reconnects = 0
        self.disconnects = 0
        self.expirations = 0
        self.repairs = 0
        self.writes = {outcome.value: 0 for outcome in Outcome}
        self.failures: dict[tuple[str, str], int] = {}
        self.heartbeats = 0
        self.heartbeat_touched = 0
        self.last_heartbeat = time.monotonic()  # counted from start until the first heartbeat
        self.reloads = {"applied": 0, "rejected": 0}
        # (version, mzxid) each node's file last matched; -1 for a node that does not exist (file removed).
        self._written: dict[MirroredNode, tuple[int, int]] = {}

    def watch(self, mirror: Mirror) -> None:
        self.mirror = mirror

    # --- MirrorObserver: called in the hub, so each is a few integer operations ------------------

    def state_changed(self, state: str) -> None:
        if state == "CONNECTED":
            if self.ever_connected:
                self.reconnects += 1
            self.ever_connected = self.connected = True
            return
        if self.connected:
            self.disconnects += 1
        self.connected = False
        if state == "LOST":
            self.expirations += 1

    def written(self, node: MirroredNode, outcome: Outcome, repaired: bool) -> None:
        self.writes[outcome.value] += 1
        if repaired:
            self.repairs += 1
        self._written[node] = (-1, -1) if node.wanted is ABSENT else (node.version, node.mzxid)

    def failed(self, node: MirroredNode, step: str, reason: str) -> None:
        key = (step, short_reason(step, reason))
        self.failures[key] = self.failures.get(key, 0) + 1

    def heartbeat(self, touched: int) -> None:
        self.heartbeats += 1
        self.heartbeat_touched = touched
        self.last_heartbeat = time.monotonic()

    # --- daemon events ---------------------------------------------------------------------------

    def reloaded(self, applied: bool) -> None:
        self.reloads["applied" if applied else "rejected"] += 1
        self.forget_removed_nodes()

    def forget_removed_nodes(self) -> None:
        """Drop removed nodes' entries; runs in the hub (a scrape thread only ever reads the dict)."""
        if self.mirror is not None:
            current = self.mirror.nodes
            self._written = {node: self._written[node] for node in current if node in self._written}

    # --- scrape time (gevent's thread pool): reads only ------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """The prometheus_client collector protocol."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield gauge("livedata_zookeeper_connected", "1 while connected to ZooKeeper, else 0.", int(self.connected))
        yield counter("livedata_zookeeper_reconnects", "Connections made after the first one.", self.reconnects)
        yield counter("livedata_zookeeper_disconnects", "Times the connection to ZooKeeper was lost.", self.disconnects)
        yield counter(
            "livedata_zookeeper_session_expirations", "ZooKeeper sessions that expired (or were closed).",
            self.expirations,
        )  # fmt: skip
        writes = CounterMetricFamily(
            "livedata_writes", "Successful file syncs by outcome (unchanged: confirmed).", labels=["outcome"]
        )
        for outcome, count in self.writes.items():
            writes.add_metric([outcome], count)
        yield writes
        yield from self._failure_families(CounterMetricFamily)
        refusals = CounterMetricFamily(
            "livedata_signature_refusals", "Versions refused by the signature check, by reason (Unsigned, "
            "UntrustedKey, BadSignature, OtherPath, Replayed); the file keeps the last accepted one.",
            labels=["reason"],
        )  # fmt: skip
        for (step, reason), count in list(self.failures.items()):
            if step == "read" and reason in SIGNATURE_REFUSALS:
                refusals.add_metric([reason], count)
        yield refusals
        yield counter(
            "livedata_resync_repairs", "Files restored without a new znode version (local edits, deletions, drift).",
            self.repairs,
        )  # fmt: skip
        yield counter("livedata_heartbeats", "Heartbeat passes (only while connected).", self.heartbeats)
        yield gauge(
            "livedata_heartbeat_age_seconds", "Seconds since the last heartbeat pass (since start before the first).",
            time.monotonic() - self.last_heartbeat,
        )  # fmt: skip
        yield gauge("livedata_heartbeat_touched_files", "Files the last heartbeat touched.", self.heartbeat_touched)
        reloads = CounterMetricFamily("livedata_config_reloads", "SIGHUP reloads by result.", labels=["result"])
        for result, count in self.reloads.items():
            reloads.add_metric([result], count)
        yield reloads
        yield from self._hook_families(CounterMetricFamily, GaugeMetricFamily)
        if self.mirror is not None:
            yield gauge("livedata_initial_sync_complete", "1 once every node was written or failed once.",
                        int(self.mirror.initial_sync.is_set()))  # fmt: skip
            yield from self._node_families(GaugeMetricFamily, list(self.mirror.nodes))
            yield counter("livedata_resyncs", "Resync passes started (every node re-read).", self.mirror.resyncs)
            reads = self.mirror.reads
            yield gauge("livedata_zookeeper_requests_in_flight", "Reads issued to ZooKeeper and not yet answered.",
                        reads.in_flight)  # fmt: skip
            yield gauge("livedata_zookeeper_requests_queued", "Reads waiting to be issued (at most 128 are in flight).",
                        reads.pending() - reads.in_flight)  # fmt: skip
            yield counter("livedata_zookeeper_request_timeouts", "Reads still unanswered after their deadline "
                          "(kazoo's sender is woken again for each).", reads.timeouts)  # fmt: skip

    def _failure_families(self, family: Any) -> Iterator[Metric]:
        by_step = {
            "write": family("livedata_write_failures", "Failed file writes by reason (errno name).", labels=["reason"]),
            "read": family("livedata_read_failures", "Failed znode reads by reason.", labels=["reason"]),
            "touch": family(
                "livedata_heartbeat_failures", "Failed heartbeat touches by reason (errno name).", labels=["reason"]
            ),
        }
        for (step, reason), count in list(self.failures.items()):
            if step in by_step:
                by_step[step].add_metric([reason], count)
        yield from by_step.values()

    def _hook_families(self, counter: Any, gauge: Any) -> Iterator[Metric]:
        if self.hook_counts is not None:
            runs = counter("livedata_hook_runs", "on_change hook runs (ok, failed, timeout).", labels=["result"])
            for result, count in self.hook_counts().items():
                runs.add_metric([result], count)
            yield runs
        if self.hooks_pending is not None:
            yield gauge("livedata_hooks_pending", "Nodes whose on_change hook is queued or running.",
                        value=self.hooks_pending())  # fmt: skip

    def _node_families(self, gauge: Any, nodes: Sequence[MirroredNode]) -> Iterator[Metric]:
        """Per-node series; while disconnected no node counts as in sync (pending, unless failing).

        A disconnected watcher cannot know whether a node changed meanwhile,
        which is why its heartbeat stops touching files: ``in_sync`` tells
        the same story as the files' mtimes, and an alert on it fires during
        an outage instead of trusting the copy's last state.
        """
        states = {"in_sync": 0, "pending": 0, "failing": 0}
        vouched = self.connected
        in_sync = gauge(
            "livedata_node_in_sync",
            "1 when the node's file is known to match ZooKeeper (never while disconnected).",
            labels=["node"],
        )
        version = gauge("livedata_node_version", "znode version last written (-1: node absent).", labels=["node"])
        mzxid = gauge("livedata_node_mzxid", "znode mzxid last written (-1: node absent).", labels=["node"])
        age = gauge(
            "livedata_node_write_age_seconds", "Seconds since the file was last written or confirmed.", labels=["node"]
        )
        unreadable = gauge(
            "livedata_tree_unreadable_children", "Children of a tree whose last read failed (kept as last read, "
            "or left out); the rest of the tree is published.", labels=["tree"],
        )  # fmt: skip
        now = time.time()
        written = self._written
        for node in nodes:
            if isinstance(node, MirroredTree):
                unreadable.add_metric([node.config.name], node.unreadable)
            labels = [node.config.name]
            synced = vouched and node.in_sync
            state = "in_sync" if synced else "failing" if node.failure else "pending"
            states[state] += 1
            in_sync.add_metric(labels, int(synced))
            last = written.get(node)
            if last is not None:
                version.add_metric(labels, last[0])
                mzxid.add_metric(labels, last[1])
            if node.written_at:
                age.add_metric(labels, max(0.0, now - node.written_at))
        totals = gauge("livedata_nodes", "Configured nodes by state (in_sync, pending, failing); none in sync while "
                       "disconnected.", labels=["state"])  # fmt: skip
        for state, count in states.items():
            totals.add_metric([state], count)
        yield totals
        yield from (in_sync, version, mzxid, age, unreadable)


class MetricsServer:
    """The HTTP endpoint, a pywsgi server on the daemon's hub; keeps retrying to bind while the port is taken.

    Retrying matters during a deploy: the previous instance may still hold the
    port for a few seconds, and mirroring must not wait for (or die on) that.
    """

    def __init__(self, metrics: Metrics, address: tuple[str, int]) -> None:
        self.metrics = metrics
        self.address = address
        self._greenlet: Any = None
        self._server: Any = None

    def start(self) -> None:
        import gevent

        self._greenlet = gevent.spawn(self._bind_and_serve)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
        if self._server is not None:
            self._server.stop(timeout=0.5)

    def _bind_and_serve(self) -> None:
        import gevent
        from gevent.pywsgi import WSGIServer

        delay = BIND_RETRY_FIRST
        while True:
            server = WSGIServer(self.address, self._app(), log=None, error_log=log)
            try:
                server.start()
            except OSError as e:
                log.error("cannot serve metrics on %s:%d: %s; retrying in %.0fs",
                          *self.address, e.strerror or e, delay)  # fmt: skip
                gevent.sleep(delay)
                delay = min(delay * 2, BIND_RETRY_MAX)
                continue
            self._server = server
            log.info("serving metrics on http://%s:%d/metrics", *server.address[:2])
            return

    def _app(self) -> Callable[..., Any]:
        import gevent
        from prometheus_client import CollectorRegistry, make_wsgi_app
        from prometheus_client.process_collector import ProcessCollector

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.metrics)
        ProcessCollector(registry=registry)
        prometheus_app = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            # Formatting tens of thousands of series takes a while: in a thread, the hub keeps serving.
            return gevent.get_hub().threadpool.apply(prometheus_app, (environ, start_response))

        return app
