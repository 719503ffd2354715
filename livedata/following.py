"""Following the connection for the mirror: re-read on every connection, never stay cut off, apply credentials.

The connection is followed, not trusted: kazoo drops client-side watches on any disconnect, so every
(re)connection re-reads everything; a session no server takes back is replaced by a new one after a session
timeout; changed credentials are applied through a new session.  The sessions themselves are started by the
client's :class:`livedata.session.SessionKeeper`, which also revives a client whose connection routine died,
so the mirror never sits in LOST.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import gevent
from kazoo.client import KazooClient
from kazoo.protocol.states import KazooState

from livedata.mirrored import MirroredNode, MirrorObserver
from livedata.reads import reset_backoff
from livedata.session import SessionKeeper
from livedata.zookeeper import session_timeout

log = logging.getLogger("livedata.sync")

CREDENTIALS_POLL = 1.0  # seconds between looks at the secrets file for changed zookeeper.credentials


class ConnectionFollower:
    """Reacts to the client's states for a mirror; held from :meth:`start` to :meth:`stop`."""

    def __init__(
        self,
        client: KazooClient,
        observer: MirrorObserver,
        read_everything: Callable[[], None],
        nodes: Callable[[], Sequence[MirroredNode]],
        refresh_credentials: Callable[[], bool] | None,
    ) -> None:
        """``read_everything`` re-reads every node; ``nodes`` is the mirror's current list (reset on new credentials);
        ``refresh_credentials`` re-reads and applies the credentials, True if they changed."""
        self.client = client
        self.observer = observer
        self._read_everything = read_everything
        self._nodes = nodes
        self.refresh_credentials = refresh_credentials
        self.session: SessionKeeper | None = None
        self._credentials_follower: gevent.Greenlet | None = None
        self._session_renewer: gevent.Greenlet | None = None

    def start(self) -> None:
        self.session = SessionKeeper.acquire(self.client)
        if self.refresh_credentials is not None:
            self._credentials_follower = gevent.spawn(self._follow_credentials)
        self.client.add_listener(self._on_state)
        if self.client.state == KazooState.CONNECTED:
            self._read_everything()

    def stop(self) -> None:
        """Stop listening; kazoo's listeners are called in its callback greenlet, none runs after this returns."""
        self.client.remove_listener(self._on_state)

    def stop_greenlets(self) -> None:
        for greenlet in (self._credentials_follower, self._session_renewer):
            if greenlet is not None:
                greenlet.kill(block=True, timeout=1)
        if self.session is not None:
            self.session.release()
            self.session = None

    def _on_state(self, state: str) -> None:
        """Every (re)connection re-reads every node: kazoo drops client-side watches on any disconnect."""
        self.observer.state_changed(state)
        if state == KazooState.CONNECTED:
            if self._session_renewer is not None:
                self._session_renewer.kill(block=False)
                self._session_renewer = None
            self._read_everything()
        elif state == KazooState.SUSPENDED and self._session_renewer is None:
            self._session_renewer = gevent.spawn(self._renew_session_when_cut_off)

    def _renew_session_when_cut_off(self) -> None:
        """Start a new session once cut off from every server for longer than the session timeout.

        kazoo, like ZooKeeper's own client, offers the old session to every
        server it reaches, forever.  A server in read-only mode (a partitioned
        minority with ``readonlymode.enabled``) refuses to take such a session
        back, so without this the mirror would never read from it.  After a
        session timeout without contact the quorum has expired the session, or
        will the moment it sees it, and the mirror owns nothing in it: no
        ephemeral nodes, and its watches are re-created on every connection.
        So dropping it costs nothing.
        """
        timeout = session_timeout(self.client)
        gevent.sleep(timeout)
        self._session_renewer = None  # from here on, a state change must not kill this greenlet
        if self.client.state == KazooState.CONNECTED:
            return
        if self.session is not None:
            self.session.renew(f"no ZooKeeper server took our session back within {timeout:.1f}s")

    def _follow_credentials(self) -> None:
        """Apply changed credentials within a second, through a new session that re-reads every node.

        Every node, not only those refused so far: ZooKeeper drops a watch
        event whose node the session may no longer read, so after an ACL
        change any node may have changed unseen.  A new session, never the
        live one: see :class:`livedata.zookeeper.CredentialsRefresher`.  The
        check is one stat of the secrets file, cheap enough to run all the time.
        """
        assert self.refresh_credentials is not None
        while True:
            gevent.sleep(CREDENTIALS_POLL)
            try:
                changed = self.refresh_credentials()
            except Exception:
                log.exception("cannot re-read zookeeper.credentials; will try again")
                continue
            if changed and self.session is not None:
                reset_backoff(self._nodes())  # refused reads are retried as soon as the new session is up
                self.session.renew("zookeeper.credentials changed")
