"""Keeping a kazoo client in a live session, whatever ends the one it has.

kazoo reconnects by itself after a dropped connection and after a session
expiry, but some failures end its connection routine for good: an exception
it does not handle (a reply it cannot pair with its request, "xids do not
match"), or an authentication failure.  The client then sits in LOST, every
request fails with ``ConnectionClosedError``, and nothing in kazoo ever
tries again.  A :class:`SessionKeeper` notices a connection routine that
ended while nobody had asked the client to stop, and starts a new session.
Every user of the client then sees CONNECTED again and re-reads what it
follows: the mirror re-reads every node and tree, kazoo's ``DataWatch`` (so
:class:`~livedata.LiveNode`) re-reads its node.

The keeper is also the one way to start a new session on purpose
(:meth:`SessionKeeper.renew`): to apply new credentials, and when no server
takes the old session back.  Credentials change through a new session
because adding them to a live one races the requests in flight: ZooKeeper
answers an authentication ahead of requests sent before it, kazoo pairs that
answer with its oldest pending request, and its connection routine dies on
the next reply.

There is one keeper per client, shared by everything that follows it
(:meth:`SessionKeeper.acquire`, :meth:`SessionKeeper.release`).  It works
on both of kazoo's handlers: its checks run in a greenlet or a thread
spawned by the client's handler, never in kazoo's own callback worker,
which a restart stops and joins.
"""
from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionLoss
from kazoo.protocol import connection as kazoo_connection
from kazoo.protocol.states import KazooState

log = logging.getLogger("livedata.session")

CHECK_INTERVAL = 1.0  # seconds between looks at the connection routine (a LOST state looks at once)
CONFIRM_AFTER = 0.5  # a routine seen dead is looked at again this much later: a start may be under way
RESTART_FIRST = 0.1  # wait before the first retry of a failed restart, doubled up to RESTART_MAX
RESTART_MAX = 30.0  # also the longest pause between revivals that do not lead to a connection

# kazoo's marker that makes its connection routine act as if the server had expired the session.
_EXPIRE = getattr(kazoo_connection, "_SESSION_EXPIRED", None)

_keepers: weakref.WeakKeyDictionary[KazooClient, SessionKeeper] = weakref.WeakKeyDictionary()
_keepers_lock = threading.Lock()


def connection_routine_dead(client: KazooClient) -> bool:
    """True when kazoo's connection routine has ended although nobody stopped the client.

    In that state kazoo never connects again: a stopped client sets
    ``_stopped``; a client that is reconnecting (a server down, a session
    expired) still runs its routine.
    """
    connection = getattr(client, "_connection", None)
    if connection is None:
        return False
    return bool(not client._stopped.is_set() and connection.connection_stopped.is_set())


class SessionKeeper:
    """Restarts ``client``'s session when its connection routine dies, and on request."""

    def __init__(self, client: KazooClient) -> None:
        self.client = client
        self.users = 0
        self.revivals = 0  # new sessions started because the connection routine had died
        self.renewals = 0  # new sessions started on request
        self._handler = client.handler
        self._wake = client.handler.event_object()
        self._lock = client.handler.lock_object()  # guards the three flags below
        self._closed = False
        self._restarting = False
        self._renew_again: str | None = None  # a renewal asked for while a restart was under way
        self._idle_revivals = 0  # revivals since the last connection: spaces out the next one

    # --- sharing one keeper per client ------------------------------------------------------------

    @classmethod
    def acquire(cls, client: KazooClient) -> SessionKeeper:
        """The client's keeper (made and started on first use); pair every call with :meth:`release`."""
        with _keepers_lock:
            keeper = _keepers.get(client)
            if keeper is None or keeper._closed:
                keeper = _keepers[client] = cls(client)
                keeper._start()
            keeper.users += 1
            return keeper

    def release(self) -> None:
        """One user less; the last one stops the keeper (the client itself is left as it is)."""
        with _keepers_lock:
            self.users -= 1
            if self.users > 0:
                return
            if _keepers.get(self.client) is self:
                del _keepers[self.client]
        with self._lock:
            self._closed = True
        self.client.remove_listener(self._on_state)
        self._wake.set()

    def _start(self) -> None:
        self.client.add_listener(self._on_state)
        self._handler.spawn(self._watch)

    # --- the watch on the connection routine ---------------------------------------------------------

    def _on_state(self, state: str) -> None:
        """A listener: it must not block, so it only wakes the watch (LOST: the routine may just have died)."""
        if state == KazooState.CONNECTED:
            self._idle_revivals = 0
        elif state == KazooState.LOST:
            self._wake.set()

    def _watch(self) -> None:
        while not self._closed:
            self._wake.wait(CHECK_INTERVAL)
            self._wake.clear()
            try:
                self._check()
            except Exception:  # the watch itself must outlive any surprise
                log.exception("internal error while checking the ZooKeeper connection; checking again")

    def _check(self) -> None:
        if self._restarting or not connection_routine_dead(self.client):
            return
        self._handler.sleep_func(CONFIRM_AFTER)
        if self._closed or self._restarting or not connection_routine_dead(self.client):
            return
        if self._idle_revivals:  # the last revival did not lead to a connection (an authentication failure...)
            self._handler.sleep_func(min(RESTART_FIRST * 2**self._idle_revivals, RESTART_MAX))
            if self._closed or not connection_routine_dead(self.client):
                return
        self._idle_revivals += 1
        self.revivals += 1
        self._restart("kazoo's connection to ZooKeeper ended for good (see its log above)")

    # --- restarting ------------------------------------------------------------------------------------

    def renew(self, reason: str) -> None:
        """Close the session and start a new one, soon, in a greenlet or thread of its own; returns at once.

        Callable from anywhere, a state listener or kazoo's callback worker included.
        """
        self.renewals += 1
        self._handler.spawn(self._restart, reason)

    def _restart(self, reason: str) -> None:
        """Start a new session; one restart at a time, a renewal asked for meanwhile runs right after."""
        with self._lock:
            if self._closed:
                return
            if self._restarting:
                self._renew_again = reason
                return
            self._restarting = True
        try:
            while reason:
                log.warning("%s: starting a new ZooKeeper session", reason)
                self._restart_once()
                with self._lock:
                    reason, self._renew_again = self._renew_again or "", None
        finally:
            self._restarting = False

    def _restart_once(self) -> None:
        delay = RESTART_FIRST
        while not self._closed:
            try:
                self._new_session()
                return
            except Exception:  # kazoo's routine did not wind down in time: never leave the client stopped
                log.exception("could not restart the ZooKeeper session; trying again in %.1fs", delay)
                self._handler.sleep_func(delay)
                delay = min(delay * 2, RESTART_MAX)

    def _new_session(self) -> None:
        """Have kazoo start a new session, the way that disturbs least in the client's current state.

        * Its connection routine is dead: start it again.  No close request
          first: it would wait in kazoo's queue and end the next session the
          moment it starts.
        * Connected: ask the routine itself to drop the session, exactly as
          when the server expires it (kazoo fails the requests in flight,
          forgets the session and reconnects at once with a new one).
        * Otherwise (cut off from every server): forget the session, so that
          the routine's next connection attempt asks for a new one.

        The client is never stopped here: a stop blocks until kazoo's routine
        winds down (up to a session timeout when a server hangs), and an
        application or daemon stopping the client meanwhile would find it
        half stopped (``close()`` fails) and then see it started again.
        """
        client = self.client
        if connection_routine_dead(client):
            client.start_async()
        elif client.connected and _EXPIRE is not None:
            self._expire_live_session()
        else:
            client._reset_session()  # the routine reads these when it next connects: nothing is in flight
            if client.connected and _EXPIRE is not None:  # connected meanwhile (threads), maybe to the old session
                self._expire_live_session()

    def _expire_live_session(self) -> None:
        """Queue kazoo's expiry marker; should the connection drop before the routine reaches it, renew again."""
        marker = self.client.handler.async_result()
        marker.rawlink(self._marker_done)
        self.client._call(_EXPIRE, marker)

    def _marker_done(self, marker: Any) -> None:
        """The marker failed with ConnectionLoss: dropped unseen with the connection, whose session kazoo will
        offer again.  (SessionExpiredError: the session did end; ConnectionClosedError: the client stopped.)"""
        if isinstance(marker.exception, ConnectionLoss) and not self._closed and not self.client._stopped.is_set():
            self._handler.spawn(self._restart, "the connection dropped before the session was renewed")

    def __repr__(self) -> str:
        return f"<SessionKeeper users={self.users} revivals={self.revivals} renewals={self.renewals}>"


def keeper_of(client: Any) -> SessionKeeper | None:
    """The keeper following ``client``, if any (for probes and tests)."""
    with _keepers_lock:
        return _keepers.get(client)
