"""Telling systemd how the watcher is doing (``Type=notify``), over its notify socket.

The protocol is small enough to speak directly instead of depending on a
library: every message is one datagram of ``KEY=VALUE`` lines sent to the
AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or an abstract name
written with a leading ``@``).  What we send, and why:

* ``READY=1`` once every node has been written or has failed once (the
  failure logged), so units ordered ``After=`` the watcher start with real
  data, not with whatever an earlier run left.
* ``STATUS=`` with counts (in sync, pending, failing) and the connection
  state, so ``systemctl status`` answers "is it healthy" on its own.
* ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` from a greenlet: if the hub is
  stuck, the pings stop and systemd restarts the daemon.
* ``RELOADING=1`` / ``READY=1`` around a SIGHUP reload and ``STOPPING=1`` on
  the way out, so systemd shows what is going on.

The variables are removed from the environment once read, so on_change hooks
(our children) cannot talk to systemd on our behalf.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING

import gevent
import gevent.event

from livedata.sync import MirrorObserver

if TYPE_CHECKING:
    from livedata.sync import Mirror

log = logging.getLogger("livedata.systemd")

STATUS_INTERVAL = 5.0  # seconds between recounts; a connection change updates the status at once


def socket_address(name: str) -> str:
    """``@name`` is Linux's abstract namespace, spelled with a leading NUL byte on the wire."""
    return "\0" + name[1:] if name.startswith("@") else name


def watchdog_interval(environ: MutableMapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half the timeout systemd gave), or None if not asked for.

    ``$WATCHDOG_PID``, when set, names the process meant to ping; a child that
    inherited the variables must stay silent.
    """
    usec = environ.pop("WATCHDOG_USEC", "")
    target = environ.pop("WATCHDOG_PID", "")
    if target and target != str(pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2 / 1_000_000 if value > 0 else None


class Notifier:
    """One datagram socket to systemd; a failed send is logged once, never raised (the daemon keeps mirroring)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.address = socket_address(name)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._failing = False

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier | None:
        environ = os.environ if environ is None else environ
        name = environ.pop("NOTIFY_SOCKET", "")
        if not name:
            return None
        if not name.startswith(("/", "@")):
            log.warning("NOTIFY_SOCKET=%s: only path and @abstract sockets are supported; not notifying", name)
            return None
        return cls(name)

    def send(self, *assignments: str) -> bool:
        try:
            self._socket.sendto("\n".join(assignments).encode(), self.address)
        except OSError as e:
            if not self._failing:
                log.warning("cannot notify systemd at %s: %s", self.name, e.strerror or e)
            self._failing = True
            return False
        self._failing = False
        return True

    def close(self) -> None:
        self._socket.close()


class ServiceNotifier(MirrorObserver):
    """Keeps systemd told about readiness, status and liveness of one mirror."""

    def __init__(self, notifier: Notifier, watchdog: float | None = None) -> None:
        self.notifier = notifier
        self.watchdog = watchdog
        self.mirror: Mirror | None = None
        self.ready = False
        self._connection = "connecting to ZooKeeper"
        self._last_status: str | None = None
        self._poke = gevent.event.Event()
        self._greenlets: list[gevent.Greenlet] = []

    @classmethod
    def from_environment(cls) -> ServiceNotifier | None:
        watchdog = watchdog_interval(os.environ, os.getpid())
        notifier = Notifier.from_environment()
        return None if notifier is None else cls(notifier, watchdog)

    def start(self, mirror: Mirror) -> None:
        self.mirror = mirror
        self._greenlets = [gevent.spawn(self._announce_ready), gevent.spawn(self._keep_status)]
        if self.watchdog is not None:
            self._greenlets.append(gevent.spawn(self._ping_watchdog, self.watchdog))

    def stop(self) -> None:
        gevent.killall(self._greenlets, block=False)
        self.notifier.send("STOPPING=1")
        self.notifier.close()

    # --- reload -----------------------------------------------------------------------------------

    def reloading(self) -> None:
        if self.ready:
            monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def reloaded(self) -> None:
        """Applied or rejected, the daemon runs again; READY only if it was ready before the reload."""
        status = "STATUS=" + self._remember_status()
        if self.ready:
            self.notifier.send("READY=1", status)
        else:
            self.notifier.send(status)

    # --- MirrorObserver ---------------------------------------------------------------------------

    def state_changed(self, state: str) -> None:
        self._connection = "connected to ZooKeeper" if state == "CONNECTED" else "disconnected from ZooKeeper"
        self._poke.set()

    # --- greenlets --------------------------------------------------------------------------------

    def status(self) -> str:
        """E.g. ``connected to ZooKeeper; 120 nodes: 118 in sync, 1 pending, 1 failing``."""
        nodes = list(self.mirror.nodes) if self.mirror is not None else []
        in_sync = failing = 0
        for node in nodes:
            if node.in_sync:
                in_sync += 1
            elif node.failure:
                failing += 1
        pending = len(nodes) - in_sync - failing
        return f"{self._connection}; {len(nodes)} nodes: {in_sync} in sync, {pending} pending, {failing} failing"

    def _remember_status(self) -> str:
        self._last_status = self.status()
        return self._last_status

    def _announce_ready(self) -> None:
        assert self.mirror is not None
        self.mirror.initial_sync.wait()
        self.ready = True
        self.notifier.send("READY=1", "STATUS=" + self._remember_status())

    def _keep_status(self) -> None:
        while True:
            self._poke.wait(timeout=STATUS_INTERVAL)
            self._poke.clear()
            status = self.status()
            if status != self._last_status:
                self._last_status = status
                self.notifier.send("STATUS=" + status)

    def _ping_watchdog(self, interval: float) -> None:
        while True:
            self.notifier.send("WATCHDOG=1")
            gevent.sleep(interval)
