"""The invariants, checked all along by polling the dests and once more after the schedule heals.

All along: a dest is absent or byte-equal to a version its node held (never zeros, short or mixed); while one
watcher process runs a dest never moves to an older version; a tree's snapshot is a set of children that
existed together, never older than one seen before; the watcher neither exits on its own nor grows past the
memory bound. After healing: see :func:`final_checks`.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass

from livedata.testing.chaos.layout import Layout, NodeSpec, TreeSpec
from livedata.testing.chaos.observer import Observer, TreeState, Unreadable
from livedata.testing.chaos.rig import Rig


@dataclass
class Violation(Exception):
    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"invariant broken: {self.invariant}: {self.detail}"


class Violations:
    """The first violation of a schedule (the lanes stop on it), and how many checks passed before it."""

    def __init__(self) -> None:
        self.first: Violation | None = None
        self.checks = 0
        self._lock = threading.Lock()

    def report(self, invariant: str, detail: str) -> None:
        with self._lock:
            if self.first is None:
                self.first = Violation(invariant, detail)

    def passed(self, count: int = 1) -> None:
        with self._lock:
            self.checks += count

    @property
    def broken(self) -> bool:
        return self.first is not None


def describe(data: bytes | Unreadable | None) -> str:
    """A short, telling description of some bytes: their size, zero bytes and start."""
    if data is None or isinstance(data, Unreadable):
        return "absent" if data is None else repr(data)
    zeros = data.count(0)
    return f"{len(data)} bytes ({zeros} zero bytes) starting {data[:40]!r}"


def read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def read_snapshot(dest: str, fmt: str) -> dict[str, bytes] | None:
    """A tree's dest as a careful reader sees it (None: nothing published yet, or replaced while read)."""
    if fmt == "json":
        data = read_file(dest)
        if data is None:
            return None
        try:
            loaded = json.loads(data)
        except ValueError:
            return {"<not JSON>": data}
        return {str(key): str(value).encode() for key, value in loaded.items()}
    link = os.path.join(dest, "..data")
    try:
        current = os.readlink(link)
        directory = os.path.join(dest, current)
        found = {name: read_file(os.path.join(directory, name)) for name in os.listdir(directory)}
        if os.readlink(link) != current or None in found.values():
            return None
    except (FileNotFoundError, NotADirectoryError):
        return None
    return {name: data or b"" for name, data in found.items()}


def latest_match(states: list[TreeState], snapshot: dict[str, bytes]) -> int | None:
    for index in range(len(states) - 1, -1, -1):
        if states[index].visible() == snapshot:
            return index
    return None


class Checker:
    """Polls every dest (and the watcher's memory) in a thread of its own until stopped."""

    def __init__(self, rig: Rig, observer: Observer, layout: Layout, violations: Violations,
                 interval: float = 0.02) -> None:  # fmt: skip
        self.rig = rig
        self.observer = observer
        self.layout = layout
        self.violations = violations
        self.interval = interval
        self.pause = threading.Lock()  # held by whoever makes the dests unreadable for a while (a power cut)
        self._stop = threading.Event()
        self._order: dict[tuple[int, str], int] = {}  # (watcher generation, node or tree) -> last mzxid / index
        self._thread = threading.Thread(target=self._run, name="chaos-checker", daemon=True)
        self.expect_exit = False  # set while the schedule itself stops or replaces the watcher
        self._cycle = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set() and not self.violations.broken:
            # OSError: a dest being cut off or remounted; the power-cut step checks those itself
            with self.pause, contextlib.suppress(OSError):
                self.check_once()
            self._stop.wait(self.interval)

    def check_once(self) -> None:
        generation = self.rig.generation
        self._cycle += 1
        for node in self.layout.nodes:
            if node.kind != "bulk" or self._cycle % 10 == 0:  # 200 bulk nodes: a tenth of the cycles is plenty
                self.check_node(node, generation)
        for tree in self.layout.trees:
            self.check_tree(tree, generation)
        self.check_process()

    def check_node(self, node: NodeSpec, generation: int, ordered: bool = True) -> None:
        data = read_file(self.rig.dest(node))
        self.violations.passed()
        if data is None:
            return
        if not self.observer.allowed(node.name, data):
            now = describe(self.observer.current(node.name))
            self.violations.report("dest holds a version its node held",
                                   f"nodes.{node.name} ({self.rig.dest(node)}) holds {describe(data)}, "
                                   f"which {node.path} never held; it holds {now}")  # fmt: skip
            return
        mzxid = self.observer.mzxid_of(node.name, data)
        if not ordered or mzxid is None:
            return
        key = (generation, node.name)
        last = self._order.get(key)
        if last is not None and mzxid < last:
            self.observer.record_node(node)  # ZooKeeper itself may have gone back: its history tells
            lost = self.observer.rolled_back(node.name)
            if lost is not None:
                self.violations.report("ZooKeeper keeps every acknowledged write (not the watcher: the ensemble)",
                                       f"{node.path} went back: {lost}; see the servers' logs")  # fmt: skip
            else:
                self.violations.report("a dest never moves to an older version while a watcher runs",
                                       f"nodes.{node.name} went back from mzxid {last:#x} to {mzxid:#x} "
                                       f"({describe(data)})")  # fmt: skip
        self._order[key] = max(mzxid, last or mzxid)

    def check_tree(self, tree: TreeSpec, generation: int, ordered: bool = True) -> None:
        snapshot = read_snapshot(self.rig.dest(tree), tree.format)
        if snapshot is None:
            return
        self.violations.passed()
        states = self.observer.tree_states(tree.name)
        index = latest_match(states, snapshot)
        if index is None:
            nearest = states[-1].visible() if states else {}
            extra = sorted(set(snapshot.items()) - set(nearest.items()))[:3]
            self.violations.report("a tree snapshot is a set of children that existed together",
                                   f"trees.{tree.name} shows {len(snapshot)} children, a set {tree.path} never "
                                   f"held; differing from its latest state by {extra!r:.300}")  # fmt: skip
            return
        key = (generation, "tree:" + tree.name)
        last = self._order.get(key)
        if ordered and last is not None and index < last and latest_match(states[last:], snapshot) is None:
            self.violations.report("a tree snapshot never moves to an older state while a watcher runs",
                                   f"trees.{tree.name} went back from state {last} to {index}")  # fmt: skip
        self._order[key] = max(index, last or 0)

    def check_process(self) -> None:
        rss = self.rig.proc_value("status", "VmRSS")
        if rss is not None:
            self.rig.peak_rss = max(self.rig.peak_rss, rss)
            if rss > self.rig.intensity.rss_bound_mb * 1024:
                self.violations.report("the watcher's memory is bounded",
                                       f"resident memory {rss / 1024:.0f} MB, above {self.rig.intensity.rss_bound_mb:g}"
                                       " MB")  # fmt: skip
        status = self.rig.watcher_exit()
        if status is not None and not self.expect_exit:
            tail = "\n".join(self.rig.watcher_log().splitlines()[-15:])
            self.violations.report("the watcher keeps running",
                                   f"it exited with status {status}; its log ends:\n{tail}")  # fmt: skip


def wait_until(predicate: object, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():  # type: ignore[operator]
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def mismatches(rig: Rig, observer: Observer, layout: Layout) -> list[str]:
    """Dests (of the current config) that differ from their node or tree as ZooKeeper holds it now."""
    found = []
    for node in layout.nodes:
        if not rig.active(node.name):
            continue
        want = observer.current(node.name)
        have = read_file(rig.dest(node))
        if isinstance(want, Unreadable) or have != want:
            want = observer.record_node(node)  # read it again: a mismatch is reported only against fresh data
        if isinstance(want, Unreadable) or have != want:
            found.append(f"nodes.{node.name}: dest {describe(have)}, node {describe(want)}")
    for tree in layout.trees:
        if not rig.active(tree.name):
            continue
        state = observer.last_tree(tree.name)
        want_tree = state.visible() if state else {}
        have_tree = read_snapshot(rig.dest(tree), tree.format) or {}
        if have_tree != want_tree:
            differ = sorted(set(have_tree.items()) ^ set(want_tree.items()))
            found.append(f"trees.{tree.name}: {len(differ)} children differ, e.g. {differ[:2]!r:.300}")
    return found


def final_checks(rig: Rig, observer: Observer, layout: Layout, violations: Violations) -> None:
    """After healing: every dest equals its node within the bound, nothing in flight, no temp file left,
    ``--check`` passes, the watcher reads next to nothing while nothing changes, and logged no traceback."""
    for node in layout.nodes:
        observer.record_node(node)
        if node.kind != "hostile" and isinstance(observer.current(node.name), Unreadable):
            violations.report("writers never leave a node unreadable",
                              f"{node.path}: {observer.current(node.name)!r} after its writers finished")  # fmt: skip
            return
    for tree in layout.trees:
        observer.record_tree(tree)
    bound = rig.intensity.converge_bound
    if not wait_until(lambda: not mismatches(rig, observer, layout), bound, 0.2):
        left = mismatches(rig, observer, layout)
        violations.report(f"every dest equals its node within {bound:g}s of healing",
                          f"{len(left)} differ: " + "; ".join(left[:6]))  # fmt: skip
        return
    violations.passed()

    def idle() -> bool:
        values = rig.metrics()
        return values.get("livedata_zookeeper_requests_in_flight") == 0 and values.get(
            "livedata_zookeeper_requests_queued") == 0  # fmt: skip

    if not wait_until(_quiet(idle), 10.0, 0.2):
        values = rig.metrics()
        flying, queued = (values.get(f"livedata_zookeeper_requests_{name}") for name in ("in_flight", "queued"))
        violations.report("nothing is in flight once writes stop",
                          f"requests in flight {flying}, queued {queued} 10s after every dest matched")  # fmt: skip
        return
    violations.passed()
    temps = rig.temp_files()
    if temps:
        violations.report("no temp file is left", ", ".join(temps[:5]))
        return
    probe = rig.check_probe()
    if probe.returncode != 0:
        violations.report("livedata-watcher --check passes", f"exit {probe.returncode}: {probe.stdout}{probe.stderr}")
        return
    before = rig.proc_value("io", "rchar")
    time.sleep(rig.intensity.quiet_window)  # a measuring window, not a synchronisation
    after = rig.proc_value("io", "rchar")
    if before is not None and after is not None and after - before > rig.intensity.quiet_read_bound:
        violations.report("the watcher reads next to nothing while nothing changes",
                          f"it read {after - before:,} bytes in {rig.intensity.quiet_window:g}s with no change"
                          )  # fmt: skip
        return
    violations.passed(3)
    for log in rig.watcher_logs():
        if "Traceback" in log:
            start = log.index("Traceback")
            violations.report("the watcher logs no traceback", log[start : start + 1500])
            return
    restart_checks(rig, observer, layout, violations)


def restart_checks(rig: Rig, observer: Observer, layout: Layout, violations: Violations) -> None:
    """A deploy: SIGTERM exits 0, and a fresh watcher (a new session, today's credentials only) converges too."""
    status = rig.restart_watcher()
    if status != 0:
        violations.report("SIGTERM stops the watcher cleanly", f"exit status {status}")
        return
    bound = rig.intensity.converge_bound
    if not wait_until(lambda: not mismatches(rig, observer, layout), bound, 0.2):
        left = mismatches(rig, observer, layout)
        violations.report(f"a freshly started watcher makes every dest equal its node within {bound:g}s",
                          f"{len(left)} differ: " + "; ".join(left[:6]))  # fmt: skip
        return
    violations.passed()


def _quiet(predicate: object) -> object:
    def safe() -> bool:
        try:
            return bool(predicate())  # type: ignore[operator]
        except OSError:
            return False

    return safe
