"""The trees scenario: one znode's children mirrored as a directory by the real daemon (``trees.*`` keys).

* Initial sync: spawn to every ``dest/<child>`` correct for a tree of N children, beside the same N znodes
  configured as N nodes, and beside the floor: one kazoo session listing the parent and reading every child
  with a watch (no files); the daemon's resident memory for each.
* One child change: ``set()`` of one child to its new bytes readable at ``dest/<child>`` (timed at the
  ``..data`` rename that made them visible), p50 over the changes, beside a bare DataWatch on the same child
  (the floor), for each tree size; how the figure grows from 100 to 10,000 children is the point.
* The publisher alone (``tree_publish``, no ZooKeeper): the disk and syscall share of a change.

Ours only: the incumbent has no trees. Lives apart from ``scenarios.py`` so that the cli hook stays small.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence

from kazoo.client import KazooClient

from tools.benchmark import measure
from tools.benchmark.inotify import IN_MOVED_TO, DirectoryEvents
from tools.benchmark.measure import FloorWatch, payload
from tools.benchmark.scenarios import Bench, Metric
from tools.benchmark.targets import BenchError, Daemon, Target
from tools.benchmark.tree_publish import publish_costs

NAME = "trees"
FULL = {"trees_initial": 10_000, "trees_sizes": [100, 10_000], "trees_changes": 20, "trees_payload": 200}
SMOKE = {"trees_initial": 50, "trees_sizes": [5, 20], "trees_changes": 3}
SIZE_FLAGS = [
    ("trees-initial", "N", "children of the tree synced at start, beside as many nodes"),
    ("trees-sizes", "N", "tree sizes in which one child changes"),
    ("trees-changes", "K", "one-child changes timed per tree size"),
]
LISTS = ("trees_sizes",)

_DATA_LINK = "..data"
_WARMUP = 3  # the first change after a start builds the publisher's spare: not the steady state
_TIMEOUT = 60.0


def runner(args: argparse.Namespace) -> Callable[[Bench, Target], list[Metric]]:
    return lambda bench, target: trees(
        bench, target, args.trees_initial, args.trees_sizes, args.trees_changes, args.trees_payload
    )


def trees(
    bench: Bench, target: Target, initial: int, sizes: Sequence[int], changes: int, size: int
) -> list[Metric]:
    if target.name != "ours":
        return []  # only livedata mirrors trees
    metrics = _initial_sync(bench, target, initial, size)
    for count in sizes:
        metrics += _one_child_changes(bench, target, count, changes, size)
    metrics += publish_costs(bench.scratch("trees-publisher"), sizes, changes, size)
    return metrics


def _initial_sync(bench: Bench, target: Target, count: int, size: int) -> list[Metric]:
    """Seconds from spawn to every file correct: the tree, then the same znodes as nodes; the bare floor."""
    nodes = bench.tree(NAME, count, size)
    source = os.path.dirname(nodes[0][0])
    floor_s = _read_floor(bench.hosts, source, len(nodes))
    daemon, dest = _spawn_tree(bench, target, source, bench.scratch(f"trees-initial-{count}"))
    with daemon:
        expected = {os.path.join(dest, os.path.basename(path)): data for path, data in nodes}
        tree_s = measure.wait_files_ready([daemon], expected, timeout=max(_TIMEOUT, count / 100)) - daemon.started
        tree_rss = daemon.rss_mb()
    daemon, expected = bench.spawn(target, nodes, bench.scratch(f"trees-nodes-{count}"))
    with daemon:
        nodes_s = measure.wait_files_ready([daemon], expected, timeout=max(_TIMEOUT, count / 100)) - daemon.started
        nodes_rss = daemon.rss_mb()
    return [
        Metric("tree_initial_s", f"tree of {count:,} children: spawn to all files", "s", tree_s),
        Metric("tree_initial_floor_s", f"tree of {count:,} children: floor, get_children + get(watch) each",
               "s", floor_s),
        Metric("tree_initial_over_floor", f"tree of {count:,} children: spawn to all files / floor", "x",
               tree_s / floor_s),
        Metric("tree_rss_mb", f"tree of {count:,} children: resident memory", "MB", tree_rss),
        Metric("nodes_initial_s", f"{count:,} nodes (the same znodes): spawn to all files", "s", nodes_s),
        Metric("nodes_rss_mb", f"{count:,} nodes (the same znodes): resident memory", "MB", nodes_rss),
    ]  # fmt: skip


def _read_floor(hosts: str, source: str, count: int) -> float:
    """Seconds for one bare kazoo session to list ``source`` and read every child with a watch, pipelined
    1,000 at a time, writing nothing: what any kazoo-based mirror of the tree pays."""
    client = KazooClient(hosts=hosts, timeout=10.0)
    client.start(timeout=30)
    try:
        start = time.perf_counter()
        names = client.get_children(source, watch=_ignore)
        paths = [f"{source}/{name}" for name in names]
        for first in range(0, len(paths), 1000):
            for result in [client.get_async(path, watch=_ignore) for path in paths[first : first + 1000]]:
                result.get(timeout=60)
        elapsed = time.perf_counter() - start
    finally:
        client.stop()
        client.close()
    if len(paths) != count:
        raise BenchError(f"the floor listed {len(paths)} children of {source}, not {count}")
    return elapsed


def _ignore(_event: object) -> None:
    pass


def _one_child_changes(bench: Bench, target: Target, count: int, changes: int, size: int) -> list[Metric]:
    """set() of one child to its bytes at ``dest/<child>``, and to the floor DataWatch, per change (ms)."""
    nodes = bench.tree(NAME, count, size)
    path = nodes[0][0]
    child = os.path.basename(path)
    daemon, dest = _spawn_tree(bench, target, os.path.dirname(path), bench.scratch(f"trees-change-{count}"))
    with daemon:
        expected = {os.path.join(dest, os.path.basename(p)): data for p, data in nodes}
        measure.wait_files_ready([daemon], expected, timeout=max(_TIMEOUT, count / 100))
        files, floors = [], []
        with FloorWatch(bench.hosts, path) as floor, DirectoryEvents(dest, IN_MOVED_TO) as events:
            for i in range(_WARMUP + changes):
                value = payload(f"trees-change-{count}", i, size)
                start = time.perf_counter()
                result = bench.zk.set_async(path, value)
                arrived = _wait_visible(events, os.path.join(dest, child), value, daemon)
                floor_at = floor.wait(value, _TIMEOUT)
                result.get(timeout=_TIMEOUT)
                if i >= _WARMUP:
                    files.append((arrived - start) * 1000)
                    floors.append((floor_at - start) * 1000)
                bench.gap()
    p50, floor50 = statistics.median(files), statistics.median(floors)
    label = f"tree of {count:,} children: one child changed"
    return [
        Metric(f"tree{count}_p50_ms", f"{label}, set() to file p50 ({changes} changes)", "ms", p50),
        Metric(f"tree{count}_floor_p50_ms", f"{label}, floor: set() to bare DataWatch p50", "ms", floor50),
        Metric(f"tree{count}_over_floor_ms", f"{label}, p50 above the floor's p50", "ms", p50 - floor50),
        Metric(f"tree{count}_max_ms", f"{label}, set() to file max", "ms", max(files)),
    ]


def _wait_visible(events: DirectoryEvents, visible: str, value: bytes, daemon: Daemon) -> float:
    """``perf_counter()`` at the ``..data`` rename after which ``visible`` reads ``value``."""
    deadline = time.perf_counter() + _TIMEOUT
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise BenchError(f"timed out after {_TIMEOUT}s waiting for {visible} to hold its new bytes")
        batch = events.wait(min(remaining, 0.5))
        if not batch:
            daemon.check_alive()
        for event in batch:
            if event.name == _DATA_LINK and measure.read_or_none(visible) == value:
                return event.at


def _spawn_tree(bench: Bench, target: Target, source: str, directory: str) -> tuple[Daemon, str]:
    """A watcher mirroring the children of ``source`` into ``directory/tree``; returns it and that dest."""
    dest = os.path.join(directory, "tree")
    config = os.path.join(directory, "watcher.ini")
    lines = ["[live-data]", f"zookeeper.hosts = {bench.hosts}"]
    lines += [f"{key} = {value}" for key, value in target.extra_config.items()]
    lines += [f"trees.tree.source = {source}", f"trees.tree.dest = {dest}", "trees.tree.mode = 0644"]
    with open(config, "w") as f:
        f.write("\n".join(lines) + "\n")
    return Daemon(target, config, os.path.join(directory, "watcher.log")), dest
