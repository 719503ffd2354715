"""The faults lane: servers killed, stopped and paused (the leader too), the quorum lost, the watcher killed or
frozen past its session timeout, a power cut of the ext4 at the instant of a rename, the tiny disk filled.

Faults run one at a time in their own lane, so that an operation blocked by a fault never holds up its healing.
"""
from __future__ import annotations

import collections
import contextlib
import os
import random
import threading
import time

from livedata.testing.chaos import content
from livedata.testing.chaos.invariants import Checker, Violations, describe, read_file
from livedata.testing.chaos.layout import Layout
from livedata.testing.chaos.observer import Observer
from livedata.testing.chaos.operations import Operations
from livedata.testing.chaos.rig import Rig
from livedata.testing.chaos.schedule import Step
from livedata.testing.zookeeper import ZooKeeperServer

RENAME_WAIT = 5.0  # seconds a power cut waits for the watcher to rename the changed dest into place
REJOIN_WAIT = 60.0  # seconds a server fault waits for servers started again to serve (synced with the leader)
SERVER_FAULTS = ("server-kill", "server-stop", "server-pause", "quorum-loss")


class Faults:
    def __init__(self, rig: Rig, observer: Observer, layout: Layout, checker: Checker, operations: Operations,
                 violations: Violations, stop: threading.Event) -> None:  # fmt: skip
        self.rig = rig
        self.observer = observer
        self.layout = layout
        self.checker = checker
        self.operations = operations
        self.violations = violations
        self.stop = stop
        self.counts: collections.Counter[str] = collections.Counter()
        self.cuts_at_rename = 0
        self._down: list[ZooKeeperServer] = []  # stopped or killed, to start again
        self._paused: list[ZooKeeperServer] = []
        self._filler: str | None = None

    def run(self, step: Step) -> None:
        self.counts[step.kind] += 1
        rng = random.Random(step.at)
        kind = step.kind
        if kind in SERVER_FAULTS:
            self._wait_rejoined()
        if kind == "power-cut":
            self.power_cut(step)
            return
        if kind in ("server-kill", "server-stop"):
            server = self._pick(step.args["target"], rng)
            if server is not None:
                server.kill() if kind == "server-kill" else server.stop()
                self._down.append(server)
        elif kind == "server-pause":
            server = self._pick(step.args["target"], rng)
            if server is not None:
                server.pause()
                self._paused.append(server)
        elif kind == "quorum-loss":
            first = self._pick(step.args["target"], rng)
            others = [s for s in self.rig.ensemble.servers if s is not first and s.running and not s.paused]
            for server in [first, rng.choice(others) if others else None]:
                if server is not None:
                    server.pause()
                    self._paused.append(server)
        elif kind == "watcher-kill":
            self.rig.kill_watcher()
        elif kind == "watcher-pause":
            self.rig.pause_watcher()
        elif kind == "disk-full":
            self._filler = self.rig.fill_tiny()
        self.stop.wait(step.length)  # the fault lasts this long (pacing, not synchronisation)
        self.heal()

    def heal(self) -> None:
        """Undo whatever fault is on: servers back, the watcher running, the disk freed."""
        while self._paused:
            server = self._paused.pop()
            if server.running and server.paused:
                server.resume()
        while self._down:
            self._down.pop().start(wait=False)
        if self.rig.paused:
            self.rig.resume_watcher()
        with self.rig.watcher_lock:
            if self.rig.killed_on_purpose:
                self.rig.start_watcher()
        if self._filler is not None:
            os.unlink(self._filler)
            self._filler = None

    def _wait_rejoined(self) -> None:
        """Take no server down while one started again is still syncing with the leader.

        ZooKeeper 3.8.0 loses acknowledged writes when a server that is still in that sync phase takes part
        in the next election (ZOOKEEPER-4643, -4646, -4685, -4785; fixed in 3.8.4 and 3.9.2): a server holding
        only the older epoch is elected and truncates the others. What the schedule tests is the watcher, so
        each server fault waits until every running server serves again (``srvr`` answers once in sync).
        """
        deadline = time.monotonic() + REJOIN_WAIT
        for server in self.rig.ensemble.servers:
            while (server.running and not server.paused and server.mode() is None
                   and time.monotonic() < deadline and not self.stop.is_set()):  # fmt: skip
                self.stop.wait(0.05)

    def _pick(self, target: str, rng: random.Random) -> ZooKeeperServer | None:
        serving = [s for s in self.rig.ensemble.servers if s.running and not s.paused]
        if not serving:
            return None
        modes = {id(s): s.mode() for s in serving}
        if target in ("leader", "follower"):
            chosen = [s for s in serving if modes[id(s)] == target]
            if chosen:
                return rng.choice(chosen)
        return rng.choice(serving)

    def power_cut(self, step: Step) -> None:
        """Change a node whose dest is on the ext4 and cut the power the instant the new name is in place;
        then, as after a reboot: remount, check every dest there, start the watcher again."""
        node = self.layout.node(step.args["node"])
        path = self.rig.dest(node)
        with self.checker.pause:
            before = _inode(path)
            data = content.text(node.name, next(self.operations.seq), 300, step.args["salt"])
            self.observer.attempt(node.name, data)
            with contextlib.suppress(Exception):
                self.operations.client.set(node.path, data)
            deadline = time.monotonic() + RENAME_WAIT
            while _inode(path) == before and time.monotonic() < deadline:
                pass  # spin: the cut must land within microseconds of the rename
            if _inode(path) != before:
                self.cuts_at_rename += 1
            self.rig.power_cut()
            self.rig.kill_watcher()
            self.rig.remount_ext4()
            for other in self.layout.nodes:
                if other.disk == "ext4":
                    found = read_file(self.rig.dest(other))
                    if found is not None and not self.observer.allowed(other.name, found):
                        self.violations.report(
                            "after a power cut every dest holds a complete version",
                            f"nodes.{other.name} ({self.rig.dest(other)}) holds {describe(found)} after a power cut "
                            f"at the instant {self.rig.dest(node)} was renamed",
                        )
            for tree in self.layout.trees:
                if tree.disk == "ext4":
                    self.checker.check_tree(tree, self.rig.generation, ordered=False)
            self.rig.start_watcher()
        self.observer.record_node(node)


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None
