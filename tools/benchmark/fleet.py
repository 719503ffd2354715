"""``tools/bench fleet``: a thousand hosts watching one znode, simulated as that many real ZooKeeper sessions.

Each simulated host is a kazoo session plus a :class:`livedata.sync.Mirror` writing into its own file on tmpfs
(see :mod:`tools.benchmark.fleet_worker`), packed a few hundred per gevent process.  The driver (this module)
starts its own servers, changes the node, and for every change learns when each host's file first held it.

What a capacity planner asks, per topology (1 standalone server; 3 voters + 2 observers serving every host),
fleet size, stored size and layout:

* time from ``set()`` to the first, median, 99th-percentile and last host holding the change;
* server CPU per change, from ``/proc/<pid>/stat`` of the serving JVMs, net of what the same sessions cost idle;
* bytes the servers sent to clients per change, from their own ``mntr`` counter ``zk_response_bytes`` (every
  reply and watch notification, serialized; TCP/IP headers not included);
* the bench's own client CPU per host per change (``getrusage`` of the workers, net of idle), so its overhead is
  not mistaken for the server's;
* sessions expired or disconnected during the run, and files not holding the last change at the end.

The run time is bounded: every wait has a deadline, and configurations left when ``--fleet-budget`` seconds are
spent are skipped and counted.  Every session is closed and every file removed on the way out.
"""
from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from kazoo.client import KazooClient

from livedata.testing.zookeeper import Ensemble, ZooKeeperServer, four_letter_word, start_standalone
from tools.benchmark.fleet_layouts import LAYOUTS, Layout, document
from tools.benchmark.fleet_pool import WorkerPool, merged
from tools.benchmark.measure import percentile
from tools.benchmark.scenarios import Bench, Metric
from tools.benchmark.targets import BenchError

TOPOLOGIES = {"standalone": "1 server", "observers": "2 observers"}
# Every simulated host connects from 127.0.0.1, so the per-address cap (60 by default) must go; a real fleet has
# one address per host and meets this cap only behind NAT (see docs/sizing.md, "What a deployment must set").
SERVER_CONFIG = {"maxClientCnxns": "0"}
_WARMUP = 2  # changes at a new size before timing: the first one also pays for growing every buffer
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_TMPFS = "/dev/shm"


@dataclass(frozen=True)
class FleetPlan:
    """What to measure; the defaults of a full run and of ``--smoke`` are in :mod:`tools.benchmark.cli`."""

    sessions: Sequence[int]  # fleet sizes on one standalone server
    observer_sessions: Sequence[int]  # fleet sizes spread over 2 observers (3 voters + 2 observers)
    sizes: Sequence[int]  # stored bytes per change
    changes: int  # timed changes per (topology, fleet size, layout, stored size)
    workers: int  # processes the hosts are packed into
    layouts: Sequence[str] = ("plain",)
    floor: bool = False  # also run every configuration with bare kazoo DataWatches: what ZooKeeper alone allows
    session_timeout: float = 5.0  # the daemon's default
    change_timeout: float = 60.0  # longest one change may take to reach every host
    quiet: float = 3.0  # seconds of an idle window measured per fleet size (the "idle" in "net of idle")
    budget: float = 1800.0  # seconds for the whole scenario; what is left after is skipped, and counted


@dataclass(frozen=True)
class Sample:
    """Cumulative counters of a set of servers at one moment."""

    at: float
    cpu: float  # seconds of CPU, all JVM threads
    response_bytes: int
    packets_sent: int
    serialized: int  # getData replies serialized afresh (zk_response_packet_cache_misses); the rest reuse one

    def rate(self, later: Sample) -> tuple[float, float, float]:
        """(CPU seconds, bytes, packets) per second between this sample and a later one."""
        span = later.at - self.at
        return ((later.cpu - self.cpu) / span, (later.response_bytes - self.response_bytes) / span,
                (later.packets_sent - self.packets_sent) / span)  # fmt: skip


def sample(servers: Sequence[ZooKeeperServer]) -> Sample:
    cpu, sent, packets, serialized = 0.0, 0, 0, 0
    at = time.monotonic()
    for server in servers:
        assert server.process is not None
        cpu += _cpu_seconds(server.process.pid)
        counters = mntr(server)
        sent += int(counters["zk_response_bytes"])
        packets += int(counters["zk_packets_sent"])
        serialized += int(counters.get("zk_response_packet_cache_misses", 0))
    return Sample(at, cpu, sent, packets, serialized)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime: fields 14 and 15 of stat(5)


def mntr(server: ZooKeeperServer) -> dict[str, float]:
    """The server's ``mntr`` counters (numeric ones only)."""
    answer = four_letter_word(server.client_port, "mntr", timeout=10.0)
    counters = {}
    for line in answer.splitlines():
        key, _, value = line.partition("\t")
        try:
            counters[key] = float(value)
        except ValueError:
            continue
    if "zk_response_bytes" not in counters:
        raise BenchError(f"ZooKeeper on port {server.client_port} has no zk_response_bytes in mntr: {answer[:200]!r}")
    return counters


@dataclass
class Topology:
    """Running servers: those the simulated hosts use, the voters behind them, and where the writer connects."""

    name: str
    serving: list[ZooKeeperServer]
    voters: list[ZooKeeperServer] = field(default_factory=list)  # besides the serving ones (observers only)

    @property
    def hosts(self) -> str:
        return ",".join(server.address for server in self.serving)

    @property
    def writer_hosts(self) -> str:
        return ",".join(server.address for server in (self.voters or self.serving))

    @property
    def label(self) -> str:
        return TOPOLOGIES[self.name]


@contextmanager
def running(name: str, directory: str) -> Iterator[Topology]:
    """Start the servers of one topology in ``directory``; stopped on the way out, whatever happens."""
    if name == "standalone":
        server = start_standalone(os.path.join(directory, "zookeeper"), extra_config=SERVER_CONFIG)
        try:
            yield Topology(name, [server])
        finally:
            server.stop()
        return
    ensemble = Ensemble(3, os.path.join(directory, "ensemble"), observers=2, extra_config=SERVER_CONFIG)
    try:
        ensemble.start()
        yield Topology(name, ensemble.observers, ensemble.voters)
    finally:
        ensemble.stop()


@dataclass
class Change:
    """One timed change: seconds from just before ``set()`` to each host's file holding it (sorted)."""

    seconds: list[float]
    missing: int  # hosts that never held it within the change timeout (counted at the timeout)


def fleet(bench: Bench, plan: FleetPlan) -> list[Metric]:
    """Every configuration of the plan, in order of cost, until done or the budget is spent."""
    for name in plan.layouts:
        if name not in LAYOUTS:
            raise BenchError(f"--fleet-layouts: unknown layout {name!r}; known: {', '.join(LAYOUTS)}")
    deadline = time.monotonic() + plan.budget
    metrics: list[Metric] = []
    skipped = 0
    for name, counts in (("standalone", plan.sessions), ("observers", plan.observer_sessions)):
        if not counts:
            continue
        with running(name, bench.scratch(f"fleet-{name}")) as topology:
            writer = KazooClient(hosts=topology.writer_hosts, timeout=10.0)
            writer.start(timeout=30)
            try:
                for layout_name, datawatch in _variants(plan):
                    for count in sorted(counts):
                        if time.monotonic() > deadline or not _memory_allows(count, max(plan.sizes)):
                            _warn(f"skipping {topology.label}, {count:,} hosts, {layout_name}: budget or memory")
                            skipped += len(plan.sizes)
                            continue
                        layout = LAYOUTS[layout_name]
                        metrics += fleet_size(bench, topology, writer, layout, datawatch, count, plan, deadline)
            finally:
                writer.stop()
                writer.close()
    metrics.append(Metric("skipped", "configurations skipped (time budget or memory)", "count", skipped))
    return metrics


def _variants(plan: FleetPlan) -> list[tuple[str, bool]]:
    """(layout, bare DataWatch?) pairs: every layout through the mirror, then (with ``floor``) without it."""
    return [(name, False) for name in plan.layouts] + [(name, True) for name in plan.layouts if plan.floor]


def variant(layout: Layout, datawatch: bool) -> str:
    return f"{layout.name}-datawatch" if datawatch else layout.name


def _warn(message: str) -> None:
    print(f"bench: fleet: {message}", file=sys.stderr, flush=True)


# Measured with this bench: a simulated host (session, mirror, greenlets) costs about this much worker memory;
# each in-flight copy of the data is held by the server, the worker and tmpfs.
_HOST_BYTES = 400 * 1024
_COPIES = 3


def _memory_allows(count: int, size: int) -> bool:
    """Whether ``count`` hosts of ``size`` bytes fit in the memory available now, with half of it to spare."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return True
    return count * (_HOST_BYTES + _COPIES * size) < available / 2


def fleet_size(
    bench: Bench,
    topology: Topology,
    writer: KazooClient,
    layout: Layout,
    datawatch: bool,
    count: int,
    plan: FleetPlan,
    deadline: float,
) -> list[Metric]:
    """Start ``count`` hosts, measure them idle, then at every stored size; close them all."""
    root = f"/fleet/{topology.name}-{variant(layout, datawatch)}-{count}"
    layout.prepare(writer, root, document(f"{root}:initial", min(plan.sizes)))
    config = f"{topology.name}.n{count}.{variant(layout, datawatch)}"
    label = f"{topology.label}, {count:,} hosts, {variant(layout, datawatch)}"
    dest_root = tempfile.mkdtemp(prefix="livedata-fleet-", dir=_TMPFS if os.path.isdir(_TMPFS) else bench.workdir)
    settings = {"hosts": topology.hosts, "session_timeout": plan.session_timeout,
                "source": layout.watched(root), "layout": layout.name, "datawatch": datawatch}  # fmt: skip
    try:
        began = time.monotonic()
        with WorkerPool(count, plan.workers, settings, dest_root, bench.scratch(f"fleet-{config}")) as pool:
            answers = pool.ask({"command": "ready"}, timeout=max(60.0, count / 10))
            synced = int(merged(answers, "synced"))
            if synced < count:
                raise BenchError(f"fleet: only {synced} of {count} sessions synced ({label})")
            connect_seconds = time.monotonic() - began
            started = (merged(answers, "expired"), merged(answers, "disconnects"))
            idle = _idle(topology, pool, plan.quiet)
            rows = [
                Metric(f"{config}.connect_s", f"{label}: start to every host synced", "s", connect_seconds),
                Metric(f"{config}.busiest_pct", f"{label}: hosts on the busiest server", "%",
                       busiest_share(topology, count)),
                Metric(f"{config}.idle_server_pct", f"{label}: server CPU, idle sessions", "%", 100 * idle.server_cpu),
                Metric(f"{config}.idle_client_us", f"{label}: bench CPU per idle host per second", "us",
                       1e6 * idle.client_cpu / count),
            ]  # fmt: skip
            for size in plan.sizes:
                if time.monotonic() > deadline:
                    _warn(f"skipping {label}, {size} bytes: the run-time budget is spent")
                    rows.append(Metric(f"{config}.{size_label(size)}.skipped", f"{label}: skipped", "count", 1))
                    continue
                rows += _timed_size(
                    topology, writer, pool, layout, datawatch, root, count, size, plan, idle, deadline
                )
            final = pool.ask({"command": "usage"}, timeout=10.0)
            rows += [
                Metric(f"{config}.expired", f"{label}: sessions expired once all were synced", "count",
                       merged(final, "expired") - started[0]),
                Metric(f"{config}.disconnects", f"{label}: disconnections once all were synced", "count",
                       merged(final, "disconnects") - started[1]),
                Metric(f"{config}.start_expired", f"{label}: sessions expired while starting", "count", started[0]),
                Metric(f"{config}.worker_kb", f"{label}: bench memory per host (workers' peak RSS)", "KB",
                       1024 * merged(final, "maxrss_mb") / count),
            ]  # fmt: skip
        return rows
    finally:
        shutil.rmtree(dest_root, ignore_errors=True)
        _delete_tree(writer, root)


def _delete_tree(writer: KazooClient, root: str) -> None:
    try:
        writer.delete(root, recursive=True)
    except Exception as e:  # the next fleet size uses its own root; a leftover only costs server memory
        _warn(f"could not delete {root}: {e}")


@dataclass(frozen=True)
class Idle:
    """What the servers and the bench spend per second with every session open and nothing changing."""

    server_cpu: float
    server_bytes: float
    client_cpu: float
    voters_cpu: float  # the voters behind observers (0 for a standalone server)


def _idle(topology: Topology, pool: WorkerPool, seconds: float) -> Idle:
    before, client_before = sample(topology.serving), merged(pool.ask({"command": "usage"}, 10.0), "cpu")
    voters_before = sample(topology.voters)
    time.sleep(seconds)  # the measurement window itself: nothing changes in ZooKeeper meanwhile
    after, client_after = sample(topology.serving), merged(pool.ask({"command": "usage"}, 10.0), "cpu")
    voters_after = sample(topology.voters)
    cpu, sent, _ = before.rate(after)
    voters_cpu = voters_before.rate(voters_after)[0] if topology.voters else 0.0
    return Idle(cpu, sent, (client_after - client_before) / (after.at - before.at), voters_cpu)


def busiest_share(topology: Topology, count: int) -> float:
    """Percentage of the hosts connected to the busiest serving server (each host picks one at random)."""
    connections = [mntr(server)["zk_num_alive_connections"] for server in topology.serving]
    # Not hosts: the mntr query's own connection, and on a standalone server the writer's session.
    others = 1 if topology.voters else 2
    return 100 * (max(connections) - others) / count


def size_label(size: int) -> str:
    return f"{size // 1024}KiB" if size % 1024 == 0 else f"{size}B"


def _timed_size(
    topology: Topology,
    writer: KazooClient,
    pool: WorkerPool,
    layout: Layout,
    datawatch: bool,
    root: str,
    count: int,
    size: int,
    plan: FleetPlan,
    idle: Idle,
    deadline: float,
) -> list[Metric]:
    config = f"{topology.name}.n{count}.{variant(layout, datawatch)}.{size_label(size)}"
    label = f"{topology.label}, {count:,} hosts, {size_label(size)} {variant(layout, datawatch)}"
    rng = random.Random(count * 7 + size)
    for i in range(_WARMUP):
        _change(writer, pool, layout, root, document(f"{root}:{size}:warmup{i}", size), plan.change_timeout)
    before, voters_before = sample(topology.serving), sample(topology.voters)
    client_before = merged(pool.ask({"command": "usage"}, 10.0), "cpu")
    changes: list[Change] = []
    for i in range(plan.changes):
        if changes and time.monotonic() > deadline:
            _warn(f"{label}: the run-time budget is spent after {len(changes)} of {plan.changes} changes")
            break
        last = document(f"{root}:{size}:{i}", size)
        changes.append(_change(writer, pool, layout, root, last, plan.change_timeout))
        time.sleep(rng.uniform(0.05, 0.15))  # live data changes rarely; a fixed period could alias with pings
    after, voters_after = sample(topology.serving), sample(topology.voters)
    client_after = merged(pool.ask({"command": "usage"}, 10.0), "cpu")
    span = after.at - before.at
    n = len(changes)
    server_cpu = (after.cpu - before.cpu - idle.server_cpu * span) / n
    sent = (after.response_bytes - before.response_bytes - idle.server_bytes * span) / n
    client_cpu = (client_after - client_before - idle.client_cpu * span) / n / count

    def p50_of(pick: int) -> float:
        return 1000 * statistics.median(change.seconds[pick] for change in changes)

    rows = [
        Metric(f"{config}.first_ms", f"{label}: set() to first host, p50 of {n} changes", "ms", p50_of(0)),
        Metric(f"{config}.median_ms", f"{label}: set() to median host, p50", "ms", p50_of(count // 2)),
        Metric(f"{config}.p99_ms", f"{label}: set() to p99 host, p50", "ms",
               1000 * statistics.median(percentile(c.seconds, 99) for c in changes)),
        Metric(f"{config}.last_ms", f"{label}: set() to last host, p50", "ms", p50_of(-1)),
        Metric(f"{config}.last_max_ms", f"{label}: set() to last host, worst change", "ms",
               1000 * max(change.seconds[-1] for change in changes)),
        Metric(f"{config}.server_cpu_ms", f"{label}: server CPU per change, net of idle", "ms", 1000 * server_cpu),
        Metric(f"{config}.sent_kb", f"{label}: bytes sent to clients per change", "KB", sent / 1e3),
        Metric(f"{config}.sent_per_host", f"{label}: bytes sent per change per host / stored bytes", "x",
               sent / count / len(layout.stored(last))),
        Metric(f"{config}.serialized", f"{label}: replies serialized per change (the rest reuse them)", "count",
               (after.serialized - before.serialized) / n),
        Metric(f"{config}.client_cpu_us", f"{label}: bench CPU per host per change, net of idle", "us",
               1e6 * client_cpu),
        Metric(f"{config}.missed", f"{label}: host-changes not seen within {plan.change_timeout:g}s", "count",
               sum(change.missing for change in changes)),
    ]  # fmt: skip
    if not datawatch:  # a DataWatch writes no file
        stale = _stale_files(pool.dests(), layout.expected(last))
        rows.append(Metric(f"{config}.stale_files", f"{label}: files not holding the last change", "count", stale))
    if topology.voters:
        voters_cpu = (voters_after.cpu - voters_before.cpu - idle.voters_cpu * span) / n
        rows.append(Metric(f"{config}.voters_cpu_ms", f"{label}: voters' CPU per change, net of idle", "ms",
                           1000 * voters_cpu))  # fmt: skip
    return rows


def _change(
    writer: KazooClient, pool: WorkerPool, layout: Layout, root: str, value: bytes, timeout: float
) -> Change:
    started = time.time()  # the workers stamp arrivals with time.time() too: one clock for both ends
    stat = writer.set(layout.changed(root), layout.stored(value))
    answers = pool.ask({"command": "wait", "version": stat.version}, timeout)
    arrivals = [stamp for answer in answers for stamp in answer["arrivals"]]
    missing = sum(1 for stamp in arrivals if stamp is None)
    if missing:
        _warn(f"{missing} hosts did not hold {root} version {stat.version} within {timeout:g}s")
    seconds = sorted(timeout if stamp is None else stamp - started for stamp in arrivals)
    return Change(seconds, missing)


def _stale_files(paths: Sequence[str], expected: bytes) -> int:
    """How many hosts' files do not hold ``expected`` (read back from tmpfs: the write path really ran)."""
    stale = 0
    for path in paths:
        try:
            with open(path, "rb") as f:
                stale += f.read() != expected
        except OSError:
            stale += 1
    return stale
