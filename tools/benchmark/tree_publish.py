"""What a tree snapshot costs on its own, without ZooKeeper: the disk and syscall share of the trees scenario.

``publish_costs`` publishes a tree of each size, then changes one child ``changes`` times, timing when
``..data`` switched (rename the spare snapshot, bring it up to date, flush, rename: what readers wait for),
the whole publish (which then tidies dest's visible names) and the TreeWatcher reload that follows. The trees
scenario of ``tools/bench`` puts these beside its end-to-end figures, to show how much of a change's latency
is the snapshot and how it grows from 100 to 10,000 children.

Standalone: ``.venv/bin/python -m tools.benchmark.tree_publish --sizes 100 10000 --changes 20``; with
``--baseline REV`` the publisher of git revision REV (its ``livedata/snapshots.py``) is measured first, under
the same conditions, and both columns are printed: before and after a change to the publisher.
"""
from __future__ import annotations

import argparse
import importlib
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from livedata import snapshots
from livedata.snapshots import DATA_LINK
from livedata.tree_watcher import TreeWatcher
from tools.benchmark.inotify import IN_MOVED_TO, DirectoryEvents
from tools.benchmark.measure import payload
from tools.benchmark.scenarios import Metric


def publish_costs(
    workdir: str, sizes: Sequence[int] = (100, 10_000), changes: int = 20, size: int = 200,
    implementation: ModuleType = snapshots,
) -> list[Metric]:
    """Figures per tree size: initial publish, one-child change (p50, max), reader reload after it (p50).

    ``implementation`` is the module whose ``TreePublisher`` and ``TreeSpec`` are timed (another revision's).
    """
    metrics: list[Metric] = []
    for count in sizes:
        dest = os.path.join(workdir, f"tree-{count}")
        children = {f"child{i:06d}": payload("tree", i, size) for i in range(count)}
        publisher = implementation.TreePublisher(implementation.TreeSpec(dest, 0o444))
        start = time.perf_counter()
        publisher.publish(children)
        initial = time.perf_counter() - start
        watcher = TreeWatcher(dest, lambda f: f.read(), binary=True)
        publishes, switches, reloads = [], [], []
        with DirectoryEvents(dest, IN_MOVED_TO) as events:
            for change in range(changes):
                children["child000000"] = payload("changed", change, size)
                start, switched, published, outcome = _timed_publish(publisher, children, events)
                data = watcher.get_data()
                reloaded = time.perf_counter()
                assert outcome.written == ("child000000",) and data["child000000"] == children["child000000"]
                switches.append((switched - start) * 1000)
                publishes.append((published - start) * 1000)
                reloads.append((reloaded - published) * 1000)
        label = f"tree of {count:,} children"
        metrics += [
            Metric(f"tree{count}_initial_s", f"{label}: initial publish", "s", initial),
            Metric(f"tree{count}_switch_p50_ms", f"{label}: one-child change, ..data switched p50", "ms",
                   statistics.median(switches)),
            Metric(f"tree{count}_switch_max_ms", f"{label}: one-child change, ..data switched max", "ms",
                   max(switches)),
            Metric(f"tree{count}_change_p50_ms", f"{label}: one-child change, publish p50", "ms",
                   statistics.median(publishes)),
            Metric(f"tree{count}_change_max_ms", f"{label}: one-child change, publish max", "ms", max(publishes)),
            Metric(f"tree{count}_reload_p50_ms", f"{label}: TreeWatcher reload after it, p50", "ms",
                   statistics.median(reloads)),
        ]  # fmt: skip
        shutil.rmtree(dest)
    if len(sizes) >= 2:
        small, large = min(sizes), max(sizes)
        by_key = {metric.key: metric.value or 0.0 for metric in metrics}
        for what, label in [("switch", "..data switched"), ("change", "whole publish")]:
            grown = by_key[f"tree{large}_{what}_p50_ms"] - by_key[f"tree{small}_{what}_p50_ms"]
            metrics.append(Metric(f"tree_{what}_us_per_child", f"one-child change, {label}: cost per extra child",
                                  "us", grown * 1000 / (large - small)))  # fmt: skip
    return metrics


def _timed_publish(
    publisher: Any, children: dict[str, bytes], events: DirectoryEvents
) -> tuple[float, float, float, Any]:
    """Publish in a thread while this one sleeps on inotify, to time the ``..data`` rename (when readers see
    the change) apart from the whole publish (which then tidies dest)."""
    result: list[Any] = []
    # What the daemon does: hand over only the child that changed, where the publisher takes changes.
    changes = getattr(publisher, "publish_changes", None)
    work = (lambda: changes({"child000000": children["child000000"]})) if changes else (
        lambda: publisher.publish(children))
    thread = threading.Thread(target=lambda: result.append(work()))
    start = time.perf_counter()
    thread.start()
    switched = None
    while switched is None:
        for event in events.wait(30.0):
            if event.name == DATA_LINK:
                switched = event.at
        if switched is None and not thread.is_alive() and not result:
            raise RuntimeError("the publish failed")
    thread.join()
    published = time.perf_counter()
    return start, switched, published, result[0]


def load_revision(revision: str, workdir: str) -> ModuleType:
    """``livedata.snapshots`` as it was at git ``revision``, with the modules it uses (the tree writer spans
    several), imported as a package of its own (``baseline_livedata``) beside the current one."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    archive = subprocess.run(["git", "-C", repo, "archive", revision, "livedata"], capture_output=True)
    if archive.returncode != 0:
        sys.exit(f"tree_publish: cannot read livedata/ at {revision!r}: {archive.stderr.decode().strip()}")
    root = os.path.join(workdir, "baseline")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(root, filter="data")
        else:  # Python before 3.9.17: our own repository's files
            tar.extractall(root)
    package = os.path.join(root, "baseline_livedata")
    os.rename(os.path.join(root, "livedata"), package)
    for directory, _dirs, names in os.walk(package):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                with open(path) as f:
                    text = f.read()
                text = re.sub(r"\b(from|import) livedata\b", r"\1 baseline_livedata", text)
                with open(path, "w") as f:
                    f.write(text)
    sys.path.insert(0, root)
    try:
        return importlib.import_module("baseline_livedata.snapshots")
    finally:
        sys.path.remove(root)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--payload", type=int, default=200)
    parser.add_argument("--workdir", default=None, help="where to build the trees (default: a temp dir)")
    parser.add_argument("--baseline", metavar="REV", help="also time the publisher of this git revision, first")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="livedata-tree-bench-", dir=args.workdir)
    try:
        columns = []
        if args.baseline:
            baseline = load_revision(args.baseline, workdir)
            columns.append((args.baseline, publish_costs(workdir, args.sizes, args.changes, args.payload, baseline)))
        columns.append(("this tree", publish_costs(workdir, args.sizes, args.changes, args.payload)))
        print(f"{'':<62} " + " ".join(f"{name[:12]:>12}" for name, _ in columns))
        for row, metric in enumerate(columns[-1][1]):
            shown = [column[row].value for _, column in columns]
            cells = " ".join(f"{'n/a' if value is None else f'{value:.3f}':>12}" for value in shown)
            print(f"{metric.label:<62} {cells} {metric.unit}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
