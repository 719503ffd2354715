"""One worker process of ``tools/bench fleet``: many simulated hosts, each a real ZooKeeper session and Mirror.

Every host is what the daemon runs, minus the daemon's timers: a kazoo client built by
:func:`livedata.zookeeper.zookeeper_client_from_config` (so livedata's gevent handler, reconnect policy and
read-only acceptance) and a :class:`livedata.sync.Mirror` writing the node into the host's own file, so the whole
watch -> read -> durable write path runs for every host.  A :class:`MirrorObserver` stamps ``time.time()`` the
first time each host's file holds each znode version; the driver compares those stamps with the moment it
called ``set()`` (one clock, one machine).

The driver talks to a worker with one JSON object per line on stdin, and gets one JSON line back per command
on stdout: ``ready`` (every host connected and its file written), ``wait`` (every host holds a version; the
arrival stamps), ``usage`` (this process's CPU and memory), ``stop`` (close every session, then exit).  A
closed stdin counts as ``stop``, so a driver that dies leaves no session open for longer than this takes.

Run as ``python -m tools.benchmark.fleet_worker SETTINGS_JSON``; gevent patches the process before anything
else is imported, as the daemon does.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402 - everything below must see the patched socket and threading modules
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from gevent.fileobject import FileObjectPosix  # noqa: E402
from kazoo.protocol.states import KazooState  # noqa: E402

import livedata.schedule  # noqa: E402
from livedata.files import Outcome  # noqa: E402
from livedata.sync import Mirror, MirroredNode, MirrorObserver  # noqa: E402
from livedata.zookeeper import zookeeper_client_from_config  # noqa: E402
from tools.benchmark.fleet_layouts import LAYOUTS  # noqa: E402

_STOP_GRACE = 5.0  # seconds one session may take to close before the worker gives up on it

# After its first full sync a Mirror runs a full garbage collection and malloc_trim(), once: cheap for a
# daemon alone in its process.  Here hundreds of mirrors share one interpreter, so each of those collections
# would walk every other host's objects too, stalling the hub for seconds at start-up (long enough for
# sessions to time out).  One host, one process, one collection is the real cost; the bench skips it.
livedata.schedule.release_memory = lambda: None


class Host(MirrorObserver):
    """One simulated host: its session, its mirror, and when its file first held each znode version."""

    def __init__(
        self,
        worker: Worker,
        index: int,
        hosts: str,
        timeout: float,
        source: str,
        dest: str,
        layout: str,
        datawatch: bool,
    ) -> None:
        """``datawatch``: instead of the mirror, a bare kazoo DataWatch that writes nothing (the floor)."""
        self.worker = worker
        self.index = index
        settings = {"zookeeper.hosts": hosts, "zookeeper.timeout": f"{timeout} seconds"}
        self.client = zookeeper_client_from_config(None, settings, read_only=True)
        self.mirror = Mirror(self.client, LAYOUTS[layout].nodes(source, dest), self)
        self.source = source
        self.datawatch = datawatch
        self.arrivals: dict[int, float] = {}  # znode version -> time.time() its file first held it
        self.latest = -1
        self.expired = 0  # sessions lost (kazoo's LOST) while the run was on
        self.disconnects = 0
        self.closing = False
        self.synced = self.mirror.initial_sync  # set once the host first holds the node's data

    def start(self) -> None:
        if self.datawatch:
            self.client.add_listener(self.state_changed)
            self.client.start_async()
            self.client.DataWatch(self.source, self.on_data)  # kazoo sets it up once connected
            return
        self.mirror.start()
        self.client.start_async()

    def on_data(self, data: bytes | None, stat: Any) -> None:
        """The floor: the moment kazoo hands the new data over, before any file is written."""
        if stat is not None:
            self.arrived(stat.version)
        self.synced.set()

    def state_changed(self, state: str) -> None:
        if self.closing:
            return
        if state == KazooState.LOST:
            self.expired += 1
        elif state == KazooState.SUSPENDED:
            self.disconnects += 1
        else:
            return
        print(f"{time.time():.3f} session {self.index}: {state}", file=sys.stderr, flush=True)

    def written(self, node: MirroredNode, outcome: Outcome, repaired: bool) -> None:
        if outcome is not Outcome.UNCHANGED:
            self.arrived(node.version)

    def arrived(self, version: int) -> None:
        self.arrivals.setdefault(version, time.time())
        if version > self.latest:
            if self.latest < self.worker.target <= version:
                self.worker.reached_target()
            self.latest = version

    def arrival(self, version: int) -> float | None:
        """When the file first held ``version`` or a later one (a burst may skip versions), if it has."""
        stamps = [stamp for seen, stamp in self.arrivals.items() if seen >= version]
        return min(stamps) if stamps else None

    def connected(self) -> bool:
        return bool(self.client.state == KazooState.CONNECTED)

    def close(self) -> None:
        self.closing = True
        if not self.datawatch:
            self.mirror.stop()
        with gevent.Timeout(_STOP_GRACE, False):
            self.client.stop()
        self.client.close()


class Worker:
    """The hosts of this process and the commands the driver sends it."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.target = 0  # the znode version the driver waits for
        self.reached = 0  # hosts holding it (or a later one)
        self.all_reached = gevent.event.Event()
        directory = settings["dest_dir"]
        os.makedirs(directory, exist_ok=True)
        self.hosts = [
            Host(self, i, settings["hosts"], settings["session_timeout"], settings["source"],
                 os.path.join(directory, f"h{i:05d}"), settings["layout"], settings["datawatch"])
            for i in range(settings["sessions"])
        ]  # fmt: skip

    def start(self) -> None:
        for n, host in enumerate(self.hosts):
            host.start()
            if n % 50 == 49:
                gevent.sleep(0)  # let the connections already started make progress

    def ready(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for host in self.hosts:
            host.synced.wait(timeout=max(0.0, deadline - time.monotonic()))
        synced = sum(1 for host in self.hosts if host.synced.is_set())
        return {"synced": synced, **self.usage()}

    def wait(self, version: int, timeout: float) -> dict[str, Any]:
        """Block until every host holds ``version`` (or ``timeout`` passes); when each first held it."""
        self.target = version
        self.reached = sum(1 for host in self.hosts if host.latest >= version)
        self.all_reached.clear()
        if self.reached < len(self.hosts):
            self.all_reached.wait(timeout=timeout)
        return {"arrivals": [host.arrival(version) for host in self.hosts], **self.usage()}

    def reached_target(self) -> None:
        """A host just got to the version waited for; counted here so a wait costs O(1) per arrival."""
        self.reached += 1
        if self.reached >= len(self.hosts):
            self.all_reached.set()

    def usage(self) -> dict[str, Any]:
        used = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "cpu": used.ru_utime + used.ru_stime,
            "maxrss_mb": used.ru_maxrss / 1024,
            "connected": sum(1 for host in self.hosts if host.connected()),
            "expired": sum(host.expired for host in self.hosts),
            "disconnects": sum(host.disconnects for host in self.hosts),
        }

    def stop(self) -> dict[str, Any]:
        gevent.joinall([gevent.spawn(host.close) for host in self.hosts], timeout=_STOP_GRACE * 2)
        return {"closed": sum(1 for host in self.hosts if host.client.state == KazooState.LOST)}

    def serve(self, commands: Any, replies: Any) -> None:
        """Answer commands until ``stop`` or end of input; every answer is one JSON line."""
        for line in commands:
            command = json.loads(line)
            name = command["command"]
            if name == "ready":
                answer = self.ready(command["timeout"])
            elif name == "wait":
                answer = self.wait(command["version"], command["timeout"])
            elif name == "usage":
                answer = self.usage()
            elif name == "stop":
                break
            else:
                answer = {"error": f"unknown command {name!r}"}
            replies.write(json.dumps(answer) + "\n")
            replies.flush()
        replies.write(json.dumps(self.stop()) + "\n")
        replies.flush()


def main(argv: list[str]) -> int:
    settings = json.loads(argv[0])
    worker = Worker(settings)
    worker.start()
    commands = FileObjectPosix(sys.stdin.fileno(), "r", close=False)
    worker.serve(commands, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
