"""Keeping a set of local files equal to a set of znodes, one watch per node, on kazoo's gevent handler.

Each node's life is a small loop: *read the node with a watch* -> *remember
what the file should hold* -> *write it when it differs* -> the watch fires ->
read again.  ZooKeeper watches are one-shot and carry no data, so every event
is answered with a fresh read, which also means a burst of changes collapses
into one or two reads and the file ends on the last value.

Two greenlets do all the work:

* kazoo's callback greenlet runs :meth:`Mirror._on_read` and friends.  They
  only record the wanted state and wake the writer: a slow callback would
  stall every other watch (kazoo's handler is sequential).
* the writer greenlet (:meth:`Mirror._write_loop`) takes every node marked
  dirty since its last pass and hands them to :mod:`livedata.files` as one
  batch; large batches (start-up, resync) run in gevent's thread pool so the
  hub keeps answering ZooKeeper pings while thousands of files are written.

Reads are issued with kazoo's async API, so start-up with thousands of nodes
is one pipelined burst of requests, not one round trip after another.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import gevent
import gevent.event
from kazoo.client import KazooClient
from kazoo.exceptions import (
    ConnectionClosedError,
    ConnectionLoss,
    NoAuthError,
    NoNodeError,
    SessionExpiredError,
)
from kazoo.protocol.states import EventType, KazooState, WatchedEvent, ZnodeStat

from livedata import files
from livedata.files import FileSpec, FileWriteError, Outcome
from livedata.zookeeper import session_timeout

log = logging.getLogger("livedata.sync")

INLINE_BATCH = 16  # batches up to this size are written in the hub: cheaper than a thread hand-off
CHUNK = 2000  # files per thread-pool job, so memory and hub latency stay bounded on huge batches
GATHER_MAX = 0.1  # longest a write waits for a burst of reads in flight to land, to share one flush with them
RETRY_FIRST = 0.1
RETRY_MAX = 30.0
CREDENTIALS_POLL = 1.0  # seconds between looks at the secrets file for changed zookeeper.credentials

_DISCONNECTED = (ConnectionLoss, SessionExpiredError, ConnectionClosedError)


@dataclass(frozen=True)
class NodeConfig:
    """One ``nodes.<name>.*`` entry: which znode goes to which file, with which ownership."""

    name: str
    source: str
    file: FileSpec


class _Absent:
    """The wanted state of a node that does not exist: its file must not exist either."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()


def release_memory() -> None:
    """Hand the start-up burst's garbage back to the OS.

    Reading config and thousands of nodes at once leaves a heap full of
    freed objects that glibc keeps around; a sidecar lives on every host for
    months, so its resident size should be what it holds, not what it once
    touched.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


class MirrorObserver:
    """Hooks for metrics, change hooks and readiness.  Called in the hub: implementations must not block."""

    def state_changed(self, state: str) -> None:
        """The client moved to CONNECTED, SUSPENDED or LOST (LOST: the session expired or was closed)."""

    def written(self, node: MirroredNode, outcome: Outcome, repaired: bool) -> None:
        """A node's file now matches ZooKeeper; ``repaired``: it was fixed without a new znode version."""

    def failed(self, node: MirroredNode, step: str, reason: str) -> None:
        """Reading (``step="read"``) or writing (``"write"``) a node failed; it will be retried."""

    def heartbeat(self, touched: int) -> None:
        """A heartbeat pass touched ``touched`` files."""


class MirroredNode:
    """Everything the mirror knows about one node; plain attributes, one object per node (thousands of them)."""

    __slots__ = (
        "active",
        "config",
        "dirty",
        "failure",
        "in_sync",
        "mirror",
        "mzxid",
        "retry_at",
        "retry_delay",
        "version",
        "wanted",
        "written_at",
        "written_version",
    )

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.wanted: bytes | _Absent | None = None
        self.version = -1
        self.mzxid = -1
        self.in_sync = False  # the file is known to equal `wanted`: heartbeats may vouch for it
        self.dirty = False
        self.failure: str | None = None  # why the last read or write failed, until one succeeds
        self.retry_delay = RETRY_FIRST
        self.retry_at = 0.0
        self.written_at = 0.0  # wall-clock time of the last successful write or confirmation
        self.written_version: int | None = None  # znode version the file last matched
        self.active = True  # False once removed from the configuration: late callbacks are ignored
        # Bound once, so kazoo's per-path watcher set sees the same callable and never fires twice.
        self.mirror: Mirror | None = None

    # kazoo's callbacks.  Bound methods rather than stored closures: a node costs a few hundred bytes
    # less (it matters at 50,000 nodes), and two bound methods of one node compare equal, so kazoo's
    # per-path watcher set never holds, or fires, the same node's watch twice.
    def on_watch(self, event: WatchedEvent) -> None:
        assert self.mirror is not None
        self.mirror._on_watch(self, event)

    def on_read(self, result: Any) -> None:
        assert self.mirror is not None
        self.mirror._on_read(self, result)

    def on_exists(self, result: Any) -> None:
        assert self.mirror is not None
        self.mirror._on_exists(self, result)

    @property
    def name(self) -> str:
        return self.config.name


def _describe(error: BaseException) -> str:
    if isinstance(error, NoAuthError):
        return "not allowed to read the node (check zookeeper.credentials and the node's ACL)"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class Mirror:
    """Mirror znodes into files: start it once, then it follows the client through reconnects and expiry."""

    def __init__(
        self,
        client: KazooClient,
        nodes: Sequence[NodeConfig],
        observer: MirrorObserver | None = None,
        refresh_credentials: Callable[[], bool] | None = None,
    ) -> None:
        """``refresh_credentials`` re-reads the credentials and applies them, True if they changed.

        It is called every CREDENTIALS_POLL seconds, so fixing or rotating the
        credentials in the secrets file is all it takes (see _follow_credentials).
        """
        self.client = client
        self.observer = observer or MirrorObserver()
        self.refresh_credentials = refresh_credentials
        self._credentials_follower: gevent.Greenlet | None = None
        self._session_renewer: gevent.Greenlet | None = None
        self.nodes = [self._new_node(config) for config in nodes]
        self._dirty: dict[int, MirroredNode] = {}  # written on the writer's next pass
        self._retrying: dict[int, MirroredNode] = {}  # failed writes waiting for their retry_at
        self._wakeup = gevent.event.Event()
        self._reading = 0  # reads and exists() calls in flight
        self._batch_ready = gevent.event.Event()  # no reads in flight, or a full chunk is waiting
        self._writer: gevent.Greenlet | None = None
        self._fetcher: gevent.Greenlet | None = None
        self.initial_sync = gevent.event.Event()  # set once every node has been written or has failed once
        self._pending_initial = {id(node) for node in self.nodes}
        self.started_at = time.monotonic()

    def _new_node(self, config: NodeConfig) -> MirroredNode:
        node = MirroredNode(config)
        node.mirror = self
        return node

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin mirroring; call before or after the client connects, reads start on every (re)connection."""
        removed = files.cleanup_stale_temp_files(node.config.file.path for node in self.nodes)
        for path in removed:
            log.info("removed temporary file left by an earlier run: %s", path)
        self._writer = gevent.spawn(self._write_loop)
        if self.refresh_credentials is not None:
            self._credentials_follower = gevent.spawn(self._follow_credentials)
        self.client.add_listener(self._on_state)
        if self.client.state == KazooState.CONNECTED:
            self._fetch_all_soon()

    def update_nodes(self, configs: Sequence[NodeConfig]) -> tuple[list[str], list[str]]:
        """Adopt a new node list (a reloaded config); returns the names (added, removed).

        A node whose settings changed counts as removed and added again, so
        it is re-read and written to its (possibly new) dest.  Files of
        removed nodes are left where they are: deleting data on a config
        typo would be worse than leaving a stale file.
        """
        current = {node.name: node for node in self.nodes}
        wanted = {config.name: config for config in configs}
        removed = [name for name, node in current.items() if wanted.get(name) != node.config]
        added = [name for name, config in wanted.items() if name not in current or name in removed]
        for name in removed:
            current[name].active = False
            self._dirty.pop(id(current[name]), None)
            self._retrying.pop(id(current[name]), None)
        new_nodes = [self._new_node(wanted[name]) for name in added]
        self.nodes = [node for node in self.nodes if node.active] + new_nodes
        if not self.initial_sync.is_set():
            # Before the first full sync, readiness follows the new list: never wait for a removed node.
            self._pending_initial -= {id(current[name]) for name in removed}
            self._pending_initial |= {id(node) for node in new_nodes}
            if not self._pending_initial:
                self._log_initial_summary()
                self.initial_sync.set()
        if new_nodes:
            files.cleanup_stale_temp_files(node.config.file.path for node in new_nodes)
            if self.connected():
                gevent.spawn(self._fetch_many, new_nodes)
        return added, removed

    def stop(self) -> None:
        self.client.remove_listener(self._on_state)
        for greenlet in (self._fetcher, self._writer, self._credentials_follower, self._session_renewer):
            if greenlet is not None:
                greenlet.kill(block=True, timeout=1)

    # --- reading from ZooKeeper (kazoo's callback greenlet) --------------------------------------

    def _on_state(self, state: str) -> None:
        """Every (re)connection re-reads every node: kazoo drops client-side watches on any disconnect."""
        self.observer.state_changed(state)
        if state == KazooState.CONNECTED:
            if self._session_renewer is not None:
                self._session_renewer.kill(block=False)
                self._session_renewer = None
            self._fetch_all_soon()
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
        log.warning("no ZooKeeper server took our session back within %.1fs: starting a new session", timeout)
        while True:
            try:
                self.client.stop()  # a no-op once stopped, so a retry goes straight to start_async()
                self.client.start_async()
                return
            except Exception:  # kazoo's connection routine did not wind down in time: never stay stopped
                log.exception("could not restart the ZooKeeper session; trying again")
                gevent.sleep(RETRY_FIRST)

    def _fetch_all_soon(self) -> None:
        # Never issue thousands of requests from inside kazoo's connection routine.  A pass still running
        # started over: reads it issued before a disconnect failed, and must be issued again.
        if self._fetcher is not None:
            self._fetcher.kill(block=False)  # it only yields between chunks, so no read is half issued
        self._fetcher = gevent.spawn(self._fetch_many, list(self.nodes))

    def _fetch_many(self, nodes: Sequence[MirroredNode]) -> None:
        for start in range(0, len(nodes), 1000):
            for node in nodes[start : start + 1000]:
                self._fetch(node)
            gevent.sleep(0)  # let the connection greenlet ship what is queued

    def _fetch(self, node: MirroredNode) -> None:
        if not node.active:
            return
        with contextlib.suppress(*_DISCONNECTED):  # the next CONNECTED state reads it again
            self.client.get_async(node.config.source, watch=node.on_watch).rawlink(node.on_read)
            self._read_started()

    def _on_watch(self, node: MirroredNode, event: WatchedEvent) -> None:
        if event.type != EventType.NONE and node.active:  # NONE: connection state changed; _on_state re-reads
            self._fetch(node)

    def _read_started(self) -> None:
        self._reading += 1
        self._batch_ready.clear()

    def _read_finished(self) -> None:
        self._reading -= 1
        if self._reading == 0:
            self._batch_ready.set()

    def _on_read(self, node: MirroredNode, result: Any) -> None:
        self._read_finished()
        if not node.active:
            return
        if result.successful():
            data, stat = result.value
            self._want(node, data or b"", stat)
            return
        error = result.exception
        if isinstance(error, NoNodeError):
            # A read does not leave a watch on a missing node; exists() does, and fires on creation.
            self._want(node, ABSENT, None)
            with contextlib.suppress(*_DISCONNECTED):
                self.client.exists_async(node.config.source, watch=node.on_watch).rawlink(node.on_exists)
                self._read_started()
        elif isinstance(error, _DISCONNECTED):
            pass
        else:
            self._read_failed(node, _describe(error))

    def _on_exists(self, node: MirroredNode, result: Any) -> None:
        self._read_finished()
        if node.active and result.successful() and result.value is not None:
            self._fetch(node)  # created between our read and our exists(): read it now

    def _read_failed(self, node: MirroredNode, reason: str) -> None:
        if node.failure != reason:
            log.error("%s: cannot read %s: %s; the file is left as it is", node.name, node.config.source, reason)
        node.failure = reason
        node.in_sync = False
        self.observer.failed(node, "read", reason)
        self._initial_done(node)
        self._schedule_retry(node, refetch=True)

    def _follow_credentials(self) -> None:
        """Apply changed credentials within a second, then re-read every node.

        Every node, not only those refused so far: ZooKeeper drops a watch
        event whose node the session may no longer read, so after an ACL
        change any node may have changed unseen.  The check is one stat of
        the secrets file, cheap enough to run all the time, which also lets a
        rotation apply the new credentials before the ACLs move to them.
        """
        assert self.refresh_credentials is not None
        while True:
            gevent.sleep(CREDENTIALS_POLL)
            try:
                changed = self.refresh_credentials()
            except Exception:
                log.exception("cannot re-read zookeeper.credentials; will try again")
                continue
            if changed and self.connected():
                log.info("re-reading every node with the new credentials")
                for node in self.nodes:
                    node.retry_delay = RETRY_FIRST
                gevent.spawn(self._fetch_many, list(self.nodes))

    def _want(self, node: MirroredNode, wanted: bytes | _Absent, stat: ZnodeStat | None) -> None:
        if stat is not None:
            node.version, node.mzxid = stat.version, stat.mzxid
        if wanted != node.wanted:
            node.in_sync = False
        node.wanted = wanted
        self._mark_dirty(node)

    def _mark_dirty(self, node: MirroredNode) -> None:
        node.dirty = True
        self._dirty[id(node)] = node
        self._wakeup.set()
        if len(self._dirty) >= CHUNK:
            self._batch_ready.set()

    # --- writing files (the writer greenlet) ------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            self._wakeup.wait(timeout=self._next_retry_in())
            self._gather()
            self._wakeup.clear()
            self._requeue_due_retries()
            batch, self._dirty = list(self._dirty.values()), {}
            for start in range(0, len(batch), CHUNK):
                self._write_batch(batch[start : start + CHUNK])

    def _gather(self) -> None:
        """While a burst of reads is in flight (start-up, reconnection, resync), let their results pile up.

        Files are cheap to write but expensive to make durable: one flush for
        2,000 files costs about what one costs alone.  A lone change has no
        reads in flight behind it and is written at once.
        """
        if self._reading > 0 and len(self._dirty) < CHUNK:
            self._batch_ready.wait(timeout=GATHER_MAX)

    def _write_batch(self, batch: list[MirroredNode]) -> None:
        batch = [node for node in batch if node.active]
        for node in batch:
            node.dirty = False
        items = [(node, node.config.file, node.wanted) for node in batch if isinstance(node.wanted, bytes)]
        present = [node for node, _, _ in items]
        absent = [node for node in batch if node.wanted is ABSENT]
        writes = [(spec, data) for _, spec, data in items]
        if len(writes) <= INLINE_BATCH:
            results: list[Outcome | FileWriteError] = files.sync_files(writes)
        else:
            results = gevent.get_hub().threadpool.apply(files.sync_files, (writes,))
        for node, result in zip(present, results):
            self._written(node, result)
        for node in absent:
            self._written(node, self._remove(node))

    def _remove(self, node: MirroredNode) -> Outcome | FileWriteError:
        try:
            return Outcome.WRITTEN if files.remove_file(node.config.file.path) else Outcome.UNCHANGED
        except OSError as e:
            return FileWriteError(node.config.file.path, e.strerror or str(e), step="removing")
        except FileWriteError as e:
            return e

    def _written(self, node: MirroredNode, result: Outcome | FileWriteError) -> None:
        if isinstance(result, FileWriteError):
            if node.failure != str(result):
                log.error("%s: %s; will retry, the old file is left as it was", node.name, result)
            node.failure = str(result)
            node.in_sync = False
            self.observer.failed(node, "write", result.reason)
            self._schedule_retry(node, refetch=False)
        else:
            if node.failure is not None:
                log.info("%s: recovered (%s)", node.name, node.config.file.path)
            node.failure = None
            node.retry_delay = RETRY_FIRST
            node.in_sync = not node.dirty  # a newer value may have arrived while we wrote
            node.written_at = time.time()
            repaired = result is not Outcome.UNCHANGED and node.written_version == node.version
            node.written_version = node.version
            if result is not Outcome.UNCHANGED and self.initial_sync.is_set():
                self._log_write(node, result, repaired)
            self.observer.written(node, result, repaired)
        self._initial_done(node)

    def _log_write(self, node: MirroredNode, result: Outcome, repaired: bool) -> None:
        path = node.config.file.path
        if result is Outcome.METADATA_FIXED:
            log.info("%s: fixed mode/ownership of %s", node.name, path)
        elif node.wanted is ABSENT:
            log.info("%s: node is absent: removed %s", node.name, path)
        elif isinstance(node.wanted, bytes):
            what = "restored" if repaired else "wrote"
            log.info("%s: %s %d bytes to %s (version %d)", node.name, what, len(node.wanted), path, node.version)

    # --- retries ---------------------------------------------------------------------------------

    def _schedule_retry(self, node: MirroredNode, refetch: bool) -> None:
        node.retry_at = time.monotonic() + node.retry_delay
        node.retry_delay = min(node.retry_delay * 2, RETRY_MAX)
        if refetch:
            gevent.spawn_later(node.retry_at - time.monotonic(), self._fetch, node)
        else:
            self._retrying[id(node)] = node

    def _next_retry_in(self) -> float | None:
        if not self._retrying:
            return None
        return max(0.0, min(node.retry_at for node in self._retrying.values()) - time.monotonic())

    def _requeue_due_retries(self) -> None:
        now = time.monotonic()
        for key, node in list(self._retrying.items()):
            if node.retry_at <= now:
                del self._retrying[key]
                self._mark_dirty(node)

    # --- start-up bookkeeping, heartbeat and resync ----------------------------------------------

    def _initial_done(self, node: MirroredNode) -> None:
        if self._pending_initial:
            self._pending_initial.discard(id(node))
            if not self._pending_initial:
                self._log_initial_summary()
                self.initial_sync.set()
                release_memory()

    def _log_initial_summary(self) -> None:
        failed = sum(1 for node in self.nodes if node.failure)
        absent = sum(1 for node in self.nodes if node.wanted is ABSENT)
        log.info(
            "initial sync of %d nodes done in %.2fs: %d absent, %d failed",
            len(self.nodes), time.monotonic() - self.started_at, absent, failed,
        )  # fmt: skip

    def connected(self) -> bool:
        return bool(self.client.state == KazooState.CONNECTED)

    def heartbeat(self) -> int:
        """Touch the files known to match ZooKeeper, only while connected; return how many were touched.

        A node whose last read or write failed is skipped on purpose: its
        mtime then ages, and mtime-based monitoring sees the failure.
        """
        if not self.connected():
            log.warning("not connected to ZooKeeper: heartbeat withheld")
            return 0
        touched = 0
        for index, node in enumerate(self.nodes):
            if node.in_sync and isinstance(node.wanted, bytes) and files.touch(node.config.file.path):
                touched += 1
            if index % 1000 == 999:
                gevent.sleep(0)
        self.observer.heartbeat(touched)
        return touched

    def resync(self) -> None:
        """Re-read every node and re-check every file, repairing local edits, deletions and drifted metadata."""
        if not self.connected():
            return
        for node in self.nodes:
            node.in_sync = False
        self._fetch_all_soon()

    def out_of_sync(self) -> Iterable[MirroredNode]:
        return (node for node in self.nodes if not node.in_sync)
