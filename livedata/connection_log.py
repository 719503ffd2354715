"""The watcher's own account of its ZooKeeper connection: one line per change, and a reminder while it lasts.

kazoo reports each failed attempt in its own words ("Connection dropped"
even for a server that never answered), without saying which server, every
few seconds.  This observer says what an operator needs instead: which
server we are connected to, when the connection is lost and to which
server, why attempts fail (once, with the server tried), and every
:data:`REMINDER_INTERVAL` while no server can be reached, how long it has
lasted.  kazoo's own lines are thinned out by :class:`livedata.logs.KazooNoise`,
which also tells this observer about each attempt.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import gevent
from kazoo.client import KazooClient
from kazoo.protocol.states import KazooState, KeeperState

from livedata.logs import NOISE
from livedata.logs import kazoo_reason as _short
from livedata.sync import MirrorObserver

log = logging.getLogger("livedata.connection")

REMINDER_INTERVAL = 60.0


class ConnectionLog(MirrorObserver):
    """Logs connection state changes with the server's address; attached to the mirror by the watcher."""

    def __init__(self, client: KazooClient, hosts: str, reminder_interval: float = REMINDER_INTERVAL) -> None:
        self.client = client
        self.hosts = hosts
        self.reminder_interval = reminder_interval
        self.server: str | None = None  # the server of the latest attempt
        self.connected = False
        self.since = time.monotonic()  # start of the current disconnection
        self.reason: str | None = None  # why the latest attempt failed
        self.failure_reported = False
        self._reminder: Any = None

    def start(self) -> None:
        NOISE.on_attempt = self.attempting
        NOISE.on_failure = self.attempt_failed
        log.info("connecting to ZooKeeper at %s", self.hosts)
        self._remind_while_disconnected()

    def stop(self) -> None:
        NOISE.on_attempt = NOISE.on_failure = None
        if self._reminder is not None:
            self._reminder.kill(block=False)
            self._reminder = None

    # --- what kazoo tells us --------------------------------------------------------------------

    def attempting(self, server: str) -> None:
        self.server = server

    def attempt_failed(self, reason: str) -> None:
        self.reason = reason
        if not self.connected and not self.failure_reported:
            self.failure_reported = True
            log.warning(
                "cannot reach ZooKeeper server %s: %s; retrying %s (every few seconds; reminder every %gs)",
                self.server or "?", _short(reason), self.hosts, self.reminder_interval,
            )  # fmt: skip

    def state_changed(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            self.connected = True
            self.failure_reported = False
            self._stop_reminder()
            mode = "read-only" if self.client.client_state == KeeperState.CONNECTED_RO else "read-write"
            log.info("connected to ZooKeeper server %s (%s)", self._server(), mode)
        elif state == KazooState.SUSPENDED:
            self._lost(f"lost the connection to ZooKeeper server {self.server or '?'}")
        elif state == KazooState.LOST:
            self._lost("ZooKeeper session ended (expired or closed); starting a new one")

    def _lost(self, what: str) -> None:
        if self.connected:
            self.since = time.monotonic()
        self.connected = False
        self.failure_reported = False
        log.warning("%s; retrying %s; files are kept as they are, heartbeats withheld", what, self.hosts)
        self._remind_while_disconnected()

    # --- the reminder ---------------------------------------------------------------------------

    def _remind_while_disconnected(self) -> None:
        if self._reminder is None:
            self._reminder = gevent.spawn(self._remind)

    def _stop_reminder(self) -> None:
        if self._reminder is not None and self._reminder is not gevent.getcurrent():
            self._reminder.kill(block=False)
        self._reminder = None

    def _remind(self) -> None:
        while not self.connected:
            gevent.sleep(self.reminder_interval)
            if self.connected:
                break
            last = f"; last attempt {self.server}: {_short(self.reason)}" if self.server and self.reason else ""
            log.warning(
                "still not connected to ZooKeeper after %.0fs (%s)%s",
                time.monotonic() - self.since, self.hosts, last,
            )  # fmt: skip
        self._reminder = None

    def _server(self) -> str:
        if self.server:
            return self.server
        try:
            host, port = self.client._connection._socket.getpeername()[:2]  # kazoo keeps no public address
        except (AttributeError, OSError, ValueError):
            return "?"
        return f"{host}:{port}"
