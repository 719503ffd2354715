"""One function per scenario; each runs one target and returns its figures as :class:`Metric` rows.

Lower is better for every figure except the FileWatcher speed-up, so "ours / baseplate" below 1 is a win.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient

from tools.benchmark import measure
from tools.benchmark.inotify import DirectoryEvents
from tools.benchmark.measure import FloorWatch, payload, percentile
from tools.benchmark.targets import BenchError, Daemon, Node, Target

_PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "filewatcher_probe.py")
_WARMUP = 5  # changes before measuring: first-touch costs (imports, page faults) are not propagation
_CHANGE_TIMEOUT = 30.0


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    value: float | None


@dataclass
class Bench:
    """What every scenario shares: the ZooKeeper, a writing client, a scratch directory, the node trees."""

    zk: KazooClient
    hosts: str
    workdir: str
    rng: random.Random = field(default_factory=lambda: random.Random(8))
    _trees: dict[tuple[str, int, int, int], list[tuple[str, bytes]]] = field(default_factory=dict)
    _serial: int = 0
    # Which pass of a paired scenario runs (see cli.PAIRED): each pass gets fresh nodes, since a scenario that
    # changes its node leaves it holding other data than the tree's payload.
    pass_number: int = 0

    def tree(self, kind: str, count: int, size: int) -> list[tuple[str, bytes]]:
        """``count`` znodes of ``size`` bytes under /bench, created once; scenarios that change nodes use their own."""
        key = (kind, count, size, self.pass_number)
        if key not in self._trees:
            again = f"-pass{self.pass_number}" if self.pass_number else ""
            root = f"/bench/{kind}{again}-{count}x{size}"
            nodes = [(f"{root}/n{i:06d}", payload(root, i, size)) for i in range(count)]
            self.zk.ensure_path(root)
            for start in range(0, count, 1000):  # pipelined: 50,000 one-by-one round trips would take minutes
                for result in [self.zk.create_async(path, data) for path, data in nodes[start : start + 1000]]:
                    result.get(timeout=60)
            self._trees[key] = nodes
        return self._trees[key]

    def scratch(self, label: str) -> str:
        self._serial += 1
        path = os.path.join(self.workdir, f"{self._serial:03d}-{label}")
        os.makedirs(path)
        return path

    def spawn(
        self, target: Target, tree: Sequence[tuple[str, bytes]], dest_dir: str, name: str | None = None
    ) -> tuple[Daemon, dict[str, bytes]]:
        """Start a watcher mirroring ``tree`` into ``dest_dir``; returns it and the expected dest contents.

        Dests are named after their znodes, or ``name`` for a one-node tree (fan-out: one node, many files).
        """
        names = [name] if name else [os.path.basename(path) for path, _ in tree]
        nodes = [Node(n, path, os.path.join(dest_dir, n)) for n, (path, _) in zip(names, tree)]
        self._serial += 1
        config = os.path.join(self.workdir, f"{self._serial:03d}-{target.name}")
        target.write_config(config + ".ini", self.hosts, nodes)
        daemon = Daemon(target, config + ".ini", config + ".log")
        return daemon, {node.dest: data for node, (_, data) in zip(nodes, tree)}

    def gap(self) -> None:
        """A short random pause between changes: live data changes rarely, and a fixed period could alias."""
        time.sleep(self.rng.uniform(0.01, 0.03))


def startup(bench: Bench, target: Target, counts: Sequence[int], size: int, repeats: int) -> list[Metric]:
    """Spawn to every file correct, next to what reading the nodes and writing the files cost on their own.

    Dest directories are only removed at the end of the run: ext4 allocates inodes slowly for a minute or
    more after thousands of files were deleted, which would slow down whatever runs next.
    """
    metrics = []
    for count in counts:
        tree = bench.tree("startup", count, size)
        seconds, rss = [], []
        for _ in range(repeats):
            daemon, expected = bench.spawn(target, tree, bench.scratch(f"startup-{target.name}-{count}"))
            with daemon:
                ready = measure.wait_files_ready([daemon], expected, timeout=max(60.0, count / 100))
                seconds.append(ready - daemon.started)
                rss.append(daemon.rss_mb())
        read_floor = _read_floor(bench, tree)
        write_floor = _write_floor(bench.scratch(f"write-floor-{count}"), tree)
        label = f"{count:,} nodes"
        metrics += [
            Metric(f"n{count}_seconds", f"{label}: spawn to all files", "s", statistics.median(seconds)),
            Metric(f"n{count}_rss_mb", f"{label}: resident memory", "MB", statistics.median(rss)),
            Metric(f"n{count}_read_floor_s", f"{label}: floor, one pipelined get(watch) pass", "s", read_floor),
            Metric(f"n{count}_write_floor_s", f"{label}: floor, create+write+rename, 1 syncfs", "s", write_floor),
        ]
    return metrics


def _read_floor(bench: Bench, tree: Sequence[tuple[str, bytes]]) -> float:
    """Seconds for one kazoo session to read every node and leave a watch: any kazoo-based watcher pays this."""
    client = KazooClient(hosts=bench.hosts, timeout=10.0)
    client.start(timeout=30)
    try:
        start = time.perf_counter()
        for first in range(0, len(tree), 1000):
            for result in [client.get_async(path, watch=_ignore) for path, _ in tree[first : first + 1000]]:
                result.get(timeout=60)
        return time.perf_counter() - start
    finally:
        client.stop()
        client.close()


def _ignore(_event: object) -> None:
    pass


def _write_floor(directory: str, tree: Sequence[tuple[str, bytes]]) -> float:
    """Seconds to publish every file by create, write, rename, made durable by one syncfs: the disk's share."""
    start = time.perf_counter()
    temps = []
    for path, data in tree:
        temp = os.path.join(directory, "." + os.path.basename(path) + ".tmp")
        fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        temps.append((temp, os.path.join(directory, os.path.basename(path))))
    measure.syncfs(directory)
    for temp, final in temps:
        os.rename(temp, final)
    measure.fsync_directory(directory)
    return time.perf_counter() - start


def propagation(bench: Bench, target: Target, changes: int, size: int, node_count: int) -> list[Metric]:
    """One node changing, timed to its file: in the run's directory, then on a journaled ext4.

    The second is the common server setup (mkfs.ext4's defaults), where an fsync costs a journal commit. The
    run's directory is on whatever this machine has (its root here: an ext4 without a journal).
    """
    rows = _propagation_in(bench, target, bench.scratch(f"propagation-{target.name}"), changes, size, node_count)
    with measure.journaled_ext4(os.path.join(bench.workdir, "ext4-image")) as mountpoint:
        if mountpoint is None:
            return rows  # not root, or no loop devices: the rows show n/a
        dest_dir = os.path.join(mountpoint, target.name)
        os.makedirs(dest_dir)
        more = _propagation_in(bench, target, dest_dir, changes, size, node_count, label="ext4j")
    return rows + [Metric(f"ext4j_{m.key}", f"journaled ext4: {m.label}", m.unit, m.value) for m in more]


def _propagation_in(
    bench: Bench, target: Target, dest_dir: str, changes: int, size: int, node_count: int, label: str = ""
) -> list[Metric]:
    tree = bench.tree(f"propagation-{label}{target.name}", node_count, size)
    path = tree[0][0]  # the one that changes; the others only make the watcher bigger
    daemon, expected = bench.spawn(target, tree, dest_dir)
    with daemon:
        measure.wait_files_ready([daemon], expected, timeout=60)
        cpu = _cpu_seconds([daemon])
        timings = _timed_changes(bench, path, dest_dir, [os.path.basename(path)], [daemon], changes, size)
        cpu_ms = _cpu_ms_per_change([daemon], cpu, changes)
    rows = _latency_rows([arrived[0] for arrived, _ in timings], [floor for _, floor in timings])
    return [*rows, Metric("cpu_ms", "daemon CPU per change", "ms", cpu_ms)]


def _cpu_seconds(daemons: Sequence[Daemon]) -> float:
    return sum(daemon.cpu_seconds() for daemon in daemons)


def _cpu_ms_per_change(daemons: Sequence[Daemon], before: float, changes: int) -> float:
    """Mean CPU one daemon spent per change of :func:`_timed_changes` since ``before`` (a :func:`_cpu_seconds`).

    The clock ticks at 10 ms, so this is only meaningful over hundreds of changes.
    """
    spent = _cpu_seconds(daemons) - before
    return spent * 1000 / len(daemons) / (_WARMUP + changes)


def _timed_changes(
    bench: Bench,
    path: str,
    dest_dir: str,
    names: Sequence[str],
    daemons: Sequence[Daemon],
    changes: int,
    size: int,
) -> list[tuple[list[float], float]]:
    """Change ``path`` ``changes`` times (after a warm-up), each time waiting until every dest in ``names``
    holds the new bytes; returns per change the ms from set() to each dest, and to the floor DataWatch."""
    timings = []
    with FloorWatch(bench.hosts, path) as floor, DirectoryEvents(dest_dir) as events:
        for i in range(_WARMUP + changes):
            value = payload(os.path.basename(dest_dir), i, size)
            start = time.perf_counter()
            result = bench.zk.set_async(path, value)
            arrived = measure.wait_replacements(events, dict.fromkeys(names, value), daemons, _CHANGE_TIMEOUT)
            floor_at = floor.wait(value, _CHANGE_TIMEOUT)
            result.get(timeout=_CHANGE_TIMEOUT)
            if i >= _WARMUP:
                timings.append(([(arrived[name] - start) * 1000 for name in names], (floor_at - start) * 1000))
            bench.gap()
    return timings


def _latency_rows(file_ms: list[float], floor_ms: list[float]) -> list[Metric]:
    p50, p99 = percentile(file_ms, 50), percentile(file_ms, 99)
    floor50, floor99 = percentile(floor_ms, 50), percentile(floor_ms, 99)
    gaps = [file - floor for file, floor in zip(file_ms, floor_ms)]
    return [
        Metric("p50_ms", f"set() to file, p50 ({len(file_ms)} changes)", "ms", p50),
        Metric("p99_ms", "set() to file, p99", "ms", p99),
        Metric("floor_p50_ms", "floor: set() to bare DataWatch, p50", "ms", floor50),
        Metric("floor_p99_ms", "floor: set() to bare DataWatch, p99", "ms", floor99),
        Metric("p50_over_floor_ms", "p50 above the floor's p50", "ms", p50 - floor50),
        Metric("p99_over_floor_ms", "p99 above the floor's p99", "ms", p99 - floor99),
        Metric("median_gap_ms", "file after floor, per change, median", "ms", statistics.median(gaps)),
    ]


def burst(bench: Bench, target: Target, sets: int, size: int, rounds: int) -> list[Metric]:
    """Back-to-back set()s, timed from issuing the last one (its ack is no better reference: the writing client
    reads thousands of replies in Python and notices the last one late)."""
    (path, _), *_ = tree = bench.tree(f"burst-{target.name}", 1, size)
    name = os.path.basename(path)
    dest_dir = bench.scratch(f"burst-{target.name}")
    daemon, expected = bench.spawn(target, tree, dest_dir)
    file_ms, floor_ms, replacements = [], [], []
    with daemon, FloorWatch(bench.hosts, path) as floor, DirectoryEvents(dest_dir) as events:
        measure.wait_files_ready([daemon], expected, timeout=60)
        events.wait(0.05)  # forget the initial write
        for r in range(rounds):
            values = [payload(f"{target.name}-burst{r}", i, size) for i in range(sets)]
            results = [bench.zk.set_async(path, value) for value in values[:-1]]
            last_issued = time.perf_counter()
            results.append(bench.zk.set_async(path, values[-1]))
            arrived, count = _count_until(events, name, values[-1], daemon)
            floor_at = floor.wait(values[-1], _CHANGE_TIMEOUT)
            for result in results:
                result.get(timeout=_CHANGE_TIMEOUT)
            file_ms.append((arrived - last_issued) * 1000)
            floor_ms.append((floor_at - last_issued) * 1000)
            replacements.append(count)
            bench.gap()
    over_floor = [file - floor for file, floor in zip(file_ms, floor_ms)]
    return [
        Metric("final_ms", f"last set() to file final, max of {rounds} rounds", "ms", max(file_ms)),
        Metric("floor_ms", "floor: last set() to DataWatch final, max", "ms", max(floor_ms)),
        Metric("final_over_floor_ms", "file final after the floor saw it, max", "ms", max(over_floor)),
        Metric("replacements", f"file replacements per {sets:,} sets, mean", "count", statistics.mean(replacements)),
    ]


def _count_until(events: DirectoryEvents, name: str, final: bytes, daemon: Daemon) -> tuple[float, int]:
    """When ``name`` first held ``final``, and how many times it was replaced up to then and shortly after."""
    deadline = time.perf_counter() + _CHANGE_TIMEOUT
    count, arrived = 0, None
    settle_until = None
    while settle_until is None or time.perf_counter() < settle_until:
        if time.perf_counter() > deadline:
            raise BenchError(f"the burst's last value never reached {events.directory}/{name}")
        batch = events.wait(0.05)
        if not batch:
            daemon.check_alive()
        for event in batch:
            if event.name != name:
                continue
            count += 1
            if arrived is None and measure.read_or_none(os.path.join(events.directory, name)) == final:
                arrived = event.at
                settle_until = time.perf_counter() + 0.2  # late rewrites still cost, count them too
    assert arrived is not None
    return arrived, count


def fanout(bench: Bench, target: Target, processes: int, changes: int, size: int) -> list[Metric]:
    (path, initial), *_ = tree = bench.tree(f"fanout-{target.name}", 1, size)
    dest_dir = bench.scratch(f"fanout-{target.name}")
    names = [f"w{k:02d}" for k in range(processes)]  # one daemon per name, all on the same node
    with ExitStack() as stack:
        daemons = [stack.enter_context(bench.spawn(target, tree, dest_dir, name)[0]) for name in names]
        measure.wait_files_ready(daemons, {os.path.join(dest_dir, n): initial for n in names}, timeout=120)
        cpu = _cpu_seconds(daemons)
        timings = _timed_changes(bench, path, dest_dir, names, daemons, changes, size)
        cpu_ms = _cpu_ms_per_change(daemons, cpu, changes)
    last = [max(arrived) for arrived, _ in timings]
    spread = [max(arrived) - min(arrived) for arrived, _ in timings]
    first = [min(arrived) for arrived, _ in timings]
    everyone = f"set() to all {processes} files"
    return [
        Metric("last_p50_ms", f"{everyone}, p50 ({changes} changes)", "ms", percentile(last, 50)),
        Metric("last_p99_ms", f"{everyone}, p99", "ms", percentile(last, 99)),
        Metric("spread_p50_ms", "first-to-last file spread, p50", "ms", percentile(spread, 50)),
        Metric("spread_p99_ms", "first-to-last file spread, p99", "ms", percentile(spread, 99)),
        Metric("first_p50_ms", "set() to first file, p50", "ms", percentile(first, 50)),
        Metric("floor_p50_ms", "floor: set() to bare DataWatch, p50", "ms", percentile([f for _, f in timings], 50)),
        Metric("cpu_ms", "CPU per change, per daemon", "ms", cpu_ms),
    ]


def file_watcher(bench: Bench, target: Target, calls: int, interval: float, size: int) -> list[Metric]:
    """Runs the probe under the target's own interpreter, so each FileWatcher is measured in its own venv."""
    argv = [target.python, _PROBE, "--module", target.file_watcher_module, "--dir", bench.scratch("filewatcher")]
    argv += ["--calls", str(calls), "--interval", str(interval), "--payload-bytes", str(size)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise BenchError(f"the FileWatcher probe failed for {target.name}:\n{result.stderr[-2000:]}")
    figures: dict[str, float | None] = json.loads(result.stdout)
    rows = [
        ("stat_ns", "bare os.stat() per call", "ns"),
        ("reference_ns", "a stat-per-call reader, get per call", "ns"),
        ("default_ns", "get_data(), unchanged file, default", "ns"),
        ("interval_ns", f"get_data(), unchanged file, check_interval={interval:g}", "ns"),
        ("interval_speedup", "stat-per-call reader / check_interval cost", "x"),
        ("default_visible_p50_us", "atomic replace to new value, default, p50", "us"),
        ("default_visible_max_us", "atomic replace to new value, default, max", "us"),
        ("default_missed", "replacements never seen, default", "count"),
        ("interval_visible_ms", f"atomic replace to new value, check_interval={interval:g}, max", "ms"),
        ("interval_missed", "replacements never seen, check_interval", "count"),
    ]
    return [Metric(key, label, unit, figures.get(key)) for key, label, unit in rows]


def idle(bench: Bench, target: Target, node_count: int, seconds: float, size: int) -> list[Metric]:
    tree = bench.tree("startup", node_count, size)
    dest_dir = bench.scratch(f"idle-{target.name}")
    daemon, expected = bench.spawn(target, tree, dest_dir)
    with daemon:
        measure.wait_files_ready([daemon], expected, timeout=max(60.0, node_count / 100))
        time.sleep(min(2.0, seconds / 10))  # let start-up work (logging, garbage collection) finish first
        cpu_before, wall_before = daemon.cpu_seconds(), time.perf_counter()
        time.sleep(seconds)  # the measurement window itself: nothing changes in ZooKeeper meanwhile
        daemon.check_alive()
        cpu = daemon.cpu_seconds() - cpu_before
        wall = time.perf_counter() - wall_before
        rss = daemon.rss_mb()
    return [
        Metric("cpu_seconds", f"CPU over {seconds:g} quiet seconds, {node_count:,} nodes", "s", cpu),
        Metric("cpu_percent", "share of one core", "%", 100 * cpu / wall),
        Metric("rss_mb", "resident memory at the end", "MB", rss),
    ]


@contextmanager
def scratch_root(parent: str | None, keep: bool) -> Iterator[str]:
    """The run's working directory: configs, logs, dests; removed afterwards unless asked to keep it."""
    path = tempfile.mkdtemp(prefix="livedata-bench-", dir=parent)
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


# --- payloads: compressed and chunked nodes -------------------------------------------------------------


def payloads(bench: Bench, target: Target, sizes: Sequence[int], changes: int, writer_runs: int) -> list[Metric]:
    """Per JSON size: stored bytes plain vs compressed, the writer's wall time, and set-to-decoded latency.

    The decoded side is an in-process LiveNode (the watcher's own decoding is measured once it has it); the
    latency runs from just before the store (chunks, then envelope) to the LiveNode's parser holding the
    new bytes, for the same changes stored plain and compressed. Ours only: the incumbent has no such form.
    """
    if target.name != "ours":
        return []
    metrics: list[Metric] = []
    for size in sizes:
        metrics += _payload_size(bench, size, changes, writer_runs)
    return metrics


def _payload_size(bench: Bench, size: int, changes: int, writer_runs: int) -> list[Metric]:
    from livedata.payload import encode
    from livedata.testing.documents import LIMIT, experiments_json

    base = experiments_json(size, seed=size)
    variants = [base.replace(b'"version": 3', b'"version": 1%06d' % i, 1) for i in range(_WARMUP + changes)]
    compressed = encode(base, "always", LIMIT)
    fits = len(base) <= LIMIT
    key, label = f"kib{size // 1024}", f"{_size_label(size)} JSON"
    path = f"/bench/payloads-{key}"
    bench.zk.ensure_path(path)
    plain_ms = _live_latencies(bench, path, variants, "never") if fits else None
    zlib_ms = _live_latencies(bench, path, variants, "always")
    writer_s, start_to_live_s = _writer_runs(bench, path, base, writer_runs)
    plain_p50 = percentile(plain_ms, 50) if plain_ms else None
    rows = [
        ("plain_bytes", "stored plain", "count", float(len(base)) if fits else None),
        ("zlib_bytes", "stored compressed (node + chunks)", "count", float(compressed.total_bytes)),
        ("ratio", "plain / compressed bytes", "x", len(base) / compressed.total_bytes),
        ("chunks", "chunks when compressed", "count", float(len(compressed.chunks))),
        ("live_plain_p50_ms", "store to LiveNode, plain, p50", "ms", plain_p50),
        ("live_zlib_p50_ms", "store to LiveNode, compressed, p50", "ms", percentile(zlib_ms, 50)),
        ("live_zlib_p99_ms", "store to LiveNode, compressed, p99", "ms", percentile(zlib_ms, 99)),
        ("writer_s", "tools/write_node run, compressed, median", "s", writer_s),
        ("start_to_live_s", "writer start to LiveNode decoded, median", "s", start_to_live_s),
    ]
    return [Metric(f"{key}_{name}", f"{label}: {text}", unit, value) for name, text, unit, value in rows]


def _size_label(size: int) -> str:
    return f"{size / 1024 / 1024:g} MiB" if size >= 1024 * 1024 else f"{size / 1024:g} KiB"


class _Arrivals:
    """A LiveNode parser that records when each value arrived, so waiting adds no polling delay to the figure."""

    def __init__(self) -> None:
        import threading

        self.condition = threading.Condition()
        self.seen: dict[bytes, float] = {}

    def __call__(self, f: Any) -> bytes:
        data: bytes = f.read()
        with self.condition:
            self.seen[data] = time.perf_counter()
            self.condition.notify_all()
        return data

    def wait(self, data: bytes, timeout: float) -> float:
        with self.condition:
            if not self.condition.wait_for(lambda: data in self.seen, timeout):
                raise BenchError("a payload change never reached the LiveNode")
            return self.seen.pop(data)


def _live_latencies(bench: Bench, path: str, variants: Sequence[bytes], mode: str) -> list[float]:
    """ms from the start of each store to the LiveNode's parser holding the new data."""
    from livedata.live_node import LiveNode
    from livedata.payload import encode
    from livedata.testing.documents import LIMIT
    from livedata.writer import read_current, store

    arrivals = _Arrivals()
    app = KazooClient(hosts=bench.hosts, timeout=10.0)
    app.start(timeout=30)
    timings = []
    try:
        with LiveNode(app, path, arrivals, binary=True):
            for i, data in enumerate(variants):
                stored = encode(data, mode, LIMIT)
                current = read_current(bench.zk, path, len(data) * 2)
                start = time.perf_counter()
                store(bench.zk, path, stored, current)
                arrived = arrivals.wait(data, _CHANGE_TIMEOUT)
                if i >= _WARMUP:
                    timings.append((arrived - start) * 1000)
                bench.gap()
    finally:
        app.stop()
        app.close()
    return timings


def _writer_runs(bench: Bench, path: str, base: bytes, runs: int) -> tuple[float, float]:
    """Median wall time of ``python -m livedata.writer --compress always``, and from its start to LiveNode."""
    import sys

    from livedata.live_node import LiveNode

    directory = bench.scratch(f"payloads-writer-{len(base)}")
    config = os.path.join(directory, "writer.ini")
    with open(config, "w") as f:
        f.write(f"[live-data]\nzookeeper.hosts = {bench.hosts}\n")
    arrivals = _Arrivals()
    app = KazooClient(hosts=bench.hosts, timeout=10.0)
    app.start(timeout=30)
    wall, to_live = [], []
    try:
        with LiveNode(app, path, arrivals, binary=True):
            for i in range(runs):
                data = base.replace(b'"version": 3', b'"version": 2%06d' % i, 1)
                source = os.path.join(directory, "experiments.json")
                with open(source, "wb") as f:
                    f.write(data)
                argv = [sys.executable, "-m", "livedata.writer", config, source, path, "--compress", "always"]
                start = time.perf_counter()
                done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=directory)
                finished = time.perf_counter()
                if done.returncode != 0:
                    raise BenchError(f"the writer failed: {done.stderr.strip()}")
                wall.append(finished - start)
                to_live.append(arrivals.wait(data, _CHANGE_TIMEOUT) - start)
    finally:
        app.stop()
        app.close()
    return statistics.median(wall), statistics.median(to_live)
