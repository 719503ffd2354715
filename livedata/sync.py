"""Keeping a set of local files equal to a set of znodes, one watch per node, on kazoo's gevent handler.

Each node's life is a small loop: *read the node with a watch* -> *remember
what the file should hold* -> *write it when it differs* -> the watch fires ->
read again.  ZooKeeper watches are one-shot and carry no data, so every event
is answered with a fresh read, which also means a burst of changes collapses
into one or two reads and the file ends on the last value.

Three greenlets do all the work:

* the read queue's (:class:`livedata.reads.ReadQueue`) is the only one that
  sends requests to ZooKeeper.  Watch events and replies, which arrive in
  kazoo's callback greenlet and the hub, only record the wanted state and ask
  for reads: a callback that issued requests itself could wedge kazoo's queue
  (see :mod:`livedata.reads`).
* the writer greenlet (:meth:`Mirror._write_loop`) takes every node marked
  dirty since its last pass and hands them to :mod:`livedata.files` as one
  batch; large batches (start-up, resync) run in gevent's thread pool so the
  hub keeps answering ZooKeeper pings while thousands of files are written.
* a follower of the secrets file re-applies changed credentials.

If the reader or the writer greenlet ever dies, :attr:`Mirror.died` is set:
the daemon exits non-zero rather than stay alive with files no longer
followed (a supervisor restarts it).
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import gevent
import gevent.event
from kazoo.client import KazooClient
from kazoo.protocol.states import EventType, KazooState, WatchedEvent, ZnodeStat

from livedata import files
from livedata.files import FileSpec, FileWriteError, Outcome
from livedata.payload import CHUNK_PREFIX
from livedata.reads import IDLE, MAX_PAYLOAD_SIZE, RETRY_FIRST, RETRY_MAX, ReadQueue, reset_backoff
from livedata.zookeeper import session_timeout

if TYPE_CHECKING:  # the tree writer is imported by the first tree only: a config of plain nodes never loads it
    from livedata.snapshots import ChildNameError, TreePublisher, TreeSpec

log = logging.getLogger("livedata.sync")

INLINE_BATCH = 16  # batches up to this size are written in the hub: cheaper than a thread hand-off
CHUNK = 2000  # files per thread-pool job, so memory and hub latency stay bounded on huge batches
STAGE_BATCH = 2000  # children of a first tree picture written ahead per thread-pool job
GATHER_MAX = 0.1  # longest a write waits for a burst of reads in flight to land, to share one flush with them
CREDENTIALS_POLL = 1.0  # seconds between looks at the secrets file for changed zookeeper.credentials
NAMED_FAILURES = 5  # failing nodes named in the initial sync's summary line


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One ``nodes.<name>.*`` entry: which znode goes to which file, with which ownership."""

    name: str
    source: str
    file: FileSpec


@dataclass(frozen=True, slots=True)
class TreeConfig:
    """One ``trees.<name>.*`` entry: whose children go to which directory (or JSON file), with which ownership.

    ``file`` holds the dest and the metadata of every file (and, for ``directory``, of the directories
    livedata makes), so hooks, probes and metrics read a tree's dest as they read a node's.
    """

    name: str
    source: str
    file: FileSpec
    format: str = "directory"  # or "json": one file holding {child name: child data as text}; "memory": LiveTree

    @property
    def spec(self) -> TreeSpec:
        from livedata.snapshots import TreeSpec

        return TreeSpec(self.file.path, self.file.mode, self.file.owner, self.file.group)


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
        """Reading (``step="read"``), writing (``"write"``) or touching (``"touch"``) a node's file failed."""

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
        "last_written",
        "mirror",
        "mzxid",
        "read_delay",
        "read_state",
        "reread",
        "retry_at",
        "retry_delay",
        "touch_failure",
        "version",
        "wanted",
        "writing",
        "written_at",
        "written_version",
    )
    lists_children = False

    def __init__(self, config: NodeConfig | TreeConfig) -> None:
        self.config = config
        self.wanted: bytes | dict[str, bytes] | _Absent | None = None
        self.version = -1
        self.mzxid = -1
        self.in_sync = False  # the file is known to equal `wanted`: heartbeats may vouch for it
        self.dirty = False
        self.writing = False  # its write is under way (the thread pool, say): a settled read must not vouch yet
        self.failure: str | None = None  # why the last read or write failed, until one succeeds
        self.touch_failure: str | None = None  # why the last heartbeat touch failed, until one succeeds
        self.retry_delay = RETRY_FIRST  # backoff of the next write retry
        self.retry_at = 0.0
        self.written_at = 0.0  # wall-clock time of the last successful write or confirmation
        self.written_version: int | None = None  # znode version the file last matched
        self.last_written: bytes | None = None  # the bytes our last successful write left in the file
        self.active = True  # False once removed from the configuration: late callbacks are ignored
        self.read_state = IDLE  # the read queue's bookkeeping (see livedata.reads)
        self.reread = False
        self.read_delay = RETRY_FIRST
        self.mirror: Mirror | None = None

    # kazoo's watch callback.  A bound method rather than a stored closure: a node costs a few hundred
    # bytes less (it matters at 50,000 nodes), and two bound methods of one node compare equal, so kazoo's
    # per-path watcher set never holds, or fires, the same node's watch twice.
    def on_watch(self, event: WatchedEvent) -> None:
        # NONE: the connection state changed, and every node is re-read on reconnection anyway.
        if event.type != EventType.NONE and self.active and self.mirror is not None:
            self.mirror.reads.request(self)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def path(self) -> str:
        return self.config.source

    def quiet(self) -> bool:
        """Nothing read is waiting to be taken into account."""
        return self.read_state == IDLE


class MirroredTree(MirroredNode):
    """A tree: its source's children (each a :class:`TreeChild`), published as one snapshot once all are read.

    ``wanted`` is the last *complete* picture, {child: bytes}: taken only when the listing and every
    child's read have settled, with no read pending.  It is kept up to date in place from ``changed`` (the
    children read with new bytes, or gone, since), and what it gained since the last publish waits in
    ``pending`` ({child: bytes, or None if gone}): a change of one child costs one child, whatever the tree.
    Replies are handled behind the watch events that came before them (see ``ReadQueue._completed``), so a
    change of several children in one ZooKeeper transaction is either wholly in a snapshot or not at all.

    A child that cannot be read (no permission: another service's node with its own ACL; bad stored data)
    settles all the same, so it never holds the tree back: it keeps the bytes last read, if any, or is left
    out (see :meth:`Mirror._child_unreadable`).
    """

    __slots__ = (
        "changed", "children", "listed", "logged_names", "pending", "publisher", "staging", "unreadable", "unsettled",
    )  # fmt: skip
    lists_children = True

    def __init__(self, config: TreeConfig) -> None:
        super().__init__(config)
        self.children: dict[str, TreeChild] = {}
        self.unsettled = 0  # children whose read is pending, or which were never read
        self.listed = False  # the children are known (or the source is known to be absent)
        self.publisher = _new_publisher(config)
        self.logged_names: set[str] = set()  # unsafe child names already logged
        self.unreadable = 0  # children whose last read failed (the livedata_tree_unreadable_children metric)
        self.changed: set[str] = set()  # children read with other bytes, or dropped, since the last picture
        self.pending: dict[str, bytes | None] = {}  # changes of the picture not yet handed to the publisher
        # Before the first picture: children read, to be written ahead (TreePublisher.stage) while the rest
        # of the tree is read, so that a first sync costs about the reads, not the reads and then the writes.
        self.staging: dict[str, bytes] = {}

    @property
    def tree_config(self) -> TreeConfig:
        assert isinstance(self.config, TreeConfig)
        return self.config

    def quiet(self) -> bool:
        return self.read_state == IDLE and self.unsettled == 0

    def complete(self) -> bool:
        return self.listed and self.quiet()


class TreeChild:
    """One child of a mirrored tree: read (and watched) like a node, its data kept for the tree's snapshot.

    A failed read is not retried on a timer (``retry_on_change``): the read queue leaves a watch on it, and
    the mirror reads it again after a new listing (once ``retry_at`` is past), a resync or a reconnection.
    """

    __slots__ = (
        "active", "data", "name", "path", "read_delay", "read_state", "reread", "retry_at", "retry_delay",
        "settled", "tree", "unreadable",
    )  # fmt: skip
    lists_children = False
    retry_on_change = True

    def __init__(self, tree: MirroredTree, name: str) -> None:
        self.tree = tree
        self.name = name
        self.path = f"{tree.config.source.rstrip('/')}/{name}"
        self.data: bytes | None = None
        self.settled = False  # read, with nothing pending: counted out of tree.unsettled
        self.active = True
        self.read_state = IDLE
        self.reread = False
        self.read_delay = RETRY_FIRST
        self.unreadable: str | None = None  # why its last read failed, until one succeeds
        self.retry_delay = RETRY_FIRST  # how long a new listing waits before it reads an unreadable child again
        self.retry_at = 0.0

    def on_watch(self, event: WatchedEvent) -> None:
        if event.type != EventType.NONE and self.active and self.tree.mirror is not None:
            self.tree.mirror._request_child(self)


class Mirror:
    """Mirror znodes into files: start it once, then it follows the client through reconnects and expiry."""

    def __init__(
        self,
        client: KazooClient,
        nodes: Sequence[NodeConfig | TreeConfig],
        observer: MirrorObserver | None = None,
        refresh_credentials: Callable[[], bool] | None = None,
        max_payload_size: int = MAX_PAYLOAD_SIZE,
        publish_tree: TreePublish | None = None,
    ) -> None:
        """``refresh_credentials`` re-reads the credentials and applies them, True if they changed.

        ``publish_tree`` replaces where a tree's consistent pictures go (on disk, by default, in gevent's
        thread pool); :class:`livedata.live_tree.LiveTree` keeps them in memory instead.

        It is called every CREDENTIALS_POLL seconds, so fixing or rotating the
        credentials in the secrets file is all it takes (see _follow_credentials).
        """
        self.client = client
        self.observer = observer or MirrorObserver()
        self.refresh_credentials = refresh_credentials
        self.reads = ReadQueue(client, self, max_payload_size=max_payload_size)
        self._publish_tree = publish_tree or _publish_tree_in_thread
        self._credentials_follower: gevent.Greenlet | None = None
        self._session_renewer: gevent.Greenlet | None = None
        self.nodes = [self._new_node(config) for config in nodes]
        self._dirty: dict[int, MirroredNode] = {}  # written on the writer's next pass
        self._retrying: dict[int, MirroredNode] = {}  # failed writes waiting for their retry_at
        self._wakeup = gevent.event.Event()
        self._batch_ready = gevent.event.Event()  # no reads pending, or a full chunk is waiting
        self._writer: gevent.Greenlet | None = None
        self._reader: gevent.Greenlet | None = None
        self.died = gevent.event.Event()  # a core greenlet died: the process must not go on without it
        self.initial_sync = gevent.event.Event()  # set once every node has been written or has failed once
        self._pending_initial = {id(node) for node in self.nodes}
        self.started_at = time.monotonic()
        self.resyncs = 0  # resync passes started

    def _new_node(self, config: NodeConfig | TreeConfig) -> MirroredNode:
        node = MirroredTree(config) if isinstance(config, TreeConfig) else MirroredNode(config)
        node.mirror = self
        return node

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin mirroring; call before or after the client connects, reads start on every (re)connection."""
        self._clean_up_after_earlier_runs(self.nodes)
        self._writer = gevent.spawn(self._write_loop)
        self._reader = self.reads.start()
        for greenlet in (self._writer, self._reader):
            greenlet.link_exception(self._core_died)
        if self.refresh_credentials is not None:
            self._credentials_follower = gevent.spawn(self._follow_credentials)
        self.client.add_listener(self._on_state)
        if self.client.state == KazooState.CONNECTED:
            self._read_everything()

    @staticmethod
    def _clean_up_after_earlier_runs(nodes: Sequence[MirroredNode]) -> None:
        """Temporary files (and, in trees, unfinished snapshots) that a killed run left behind."""
        removed = files.cleanup_stale_temp_files(node.config.file.path for node in nodes)
        for path in removed:
            log.info("removed temporary file left by an earlier run: %s", path)
        for node in nodes:
            if isinstance(node, MirroredTree) and node.tree_config.format == "directory":
                node.publisher.cleanup()

    def _core_died(self, greenlet: gevent.Greenlet) -> None:
        log.critical("internal error: the %s greenlet died (%r); exiting so that a supervisor restarts the watcher",
                     "writer" if greenlet is self._writer else "reader", greenlet.exception)  # fmt: skip
        self.died.set()

    def update_nodes(self, configs: Sequence[NodeConfig | TreeConfig]) -> tuple[list[str], list[str]]:
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
            gone = current[name]
            self.reads.forget(gone)
            if isinstance(gone, MirroredTree):
                for child in gone.children.values():
                    self.reads.forget(child)
            self._dirty.pop(id(current[name]), None)
            self._retrying.pop(id(current[name]), None)
        new_nodes = [self._new_node(wanted[name]) for name in added]
        self.nodes = [node for node in self.nodes if node.active] + new_nodes
        if not self.initial_sync.is_set():
            # Before the first full sync, readiness follows the new list: never wait for a removed node.
            self._pending_initial -= {id(current[name]) for name in removed}
            self._pending_initial |= {id(node) for node in new_nodes}
            if not self._pending_initial:
                self._initial_sync_done()
        if new_nodes:
            self._clean_up_after_earlier_runs(new_nodes)
            self.reads.request_all(new_nodes)
        return added, removed

    def stop(self) -> None:
        self.client.remove_listener(self._on_state)
        for greenlet in (self._writer, self._reader):
            if greenlet is not None:
                greenlet.unlink(self._core_died)
        self.reads.stop()
        for greenlet in (self._writer, self._credentials_follower, self._session_renewer):
            if greenlet is not None:
                greenlet.kill(block=True, timeout=1)

    # --- following the connection -----------------------------------------------------------------

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

    def _read_everything(self) -> None:
        """Re-read every node (and tree child), and vouch for none until it is: it may have changed meanwhile."""
        for node in self.nodes:
            node.in_sync = False
            self.reads.request(node)
            if isinstance(node, MirroredTree):
                for child in node.children.values():
                    self._request_child(child)
        self.reads.wake()

    def _request_child(self, child: TreeChild) -> None:
        """Read a tree's child again; until it is, the tree is not complete (no snapshot is taken)."""
        if child.settled:
            child.settled = False
            child.tree.unsettled += 1
        self.reads.request(child)

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
                reset_backoff(self.nodes)
                self._read_everything()

    # --- read results (livedata.reads.ReadSink; hub callbacks) -------------------------------------

    def read_done(self, node: MirroredNode | TreeChild, data: bytes, stat: ZnodeStat) -> None:
        if isinstance(node, TreeChild):
            tree = node.tree
            if node.data is None or (node.data is not data and node.data != data):
                tree.changed.add(node.name)  # taken into the picture once every read of the tree has settled
            node.data = data
            if tree.wanted is None and tree.tree_config.format == "directory":
                tree.staging[node.name] = data
                if len(tree.staging) >= STAGE_BATCH:
                    self._mark_dirty(tree)
            if node.unreadable is not None:
                self._child_readable(node)
            return
        node.version, node.mzxid = stat.version, stat.mzxid
        self._want(node, data)

    def read_absent(self, node: MirroredNode | TreeChild) -> None:
        if isinstance(node, TreeChild):
            self._drop_child(node)  # deleted since the listing, whose watch fires as well
            self._tree_maybe_complete(node.tree)
        elif isinstance(node, MirroredTree):
            for child in list(node.children.values()):
                self._drop_child(child)
            node.listed = True  # a missing source is an empty tree; it fills when the node is created
            node.version = node.mzxid = -1
        else:
            self._want(node, ABSENT)

    def children_done(self, tree: MirroredTree, names: list[str], stat: ZnodeStat) -> None:
        tree.version, tree.mzxid = stat.cversion, stat.pzxid
        tree.listed = True
        wanted = {name for name in names if not name.startswith(CHUNK_PREFIX)}  # the source's own chunks
        for name, child in list(tree.children.items()):
            if name not in wanted:
                self._drop_child(child)
        for name in sorted(wanted - tree.children.keys()):
            child = TreeChild(tree, name)
            tree.children[name] = child
            tree.unsettled += 1
            self.reads.request(child)
        if tree.unreadable:
            self._retry_unreadable(tree)

    def _drop_child(self, child: TreeChild) -> None:
        tree = child.tree
        if tree.children.get(child.name) is child:
            del tree.children[child.name]
            if child.data is not None:
                tree.changed.add(child.name)
        if child.active and not child.settled:
            tree.unsettled -= 1
        if child.active and child.unreadable is not None:
            tree.unreadable -= 1
        self.reads.forget(child)  # a chunked read under way must not stay counted as pending

    # --- unreadable tree children ----------------------------------------------------------------

    def _child_unreadable(self, child: TreeChild, reason: str) -> None:
        """A child's read failed: the tree goes on without it (its last bytes, or left out); logged once per reason.

        Anyone allowed to create children could otherwise freeze every host's copy of the tree (an ephemeral
        node with a digest-only ACL is enough).  ZooKeeper sends no watch event of a node the session may not
        read, so a new listing (backed off per child), a resync or a reconnection is what reads it again.
        """
        tree = child.tree
        if child.unreadable is None:
            tree.unreadable += 1
        if child.unreadable != reason:
            kept = "its last bytes are kept" if child.data is not None else "it is left out"
            log.warning("%s: cannot read child %s (%s): %s; %s, the rest of the tree is published",
                        tree.name, child.name, child.path, reason, kept)  # fmt: skip
        child.unreadable = reason
        child.retry_at = time.monotonic() + child.retry_delay
        child.retry_delay = min(child.retry_delay * 2, RETRY_MAX)
        self.observer.failed(tree, "read", reason)

    def _child_readable(self, child: TreeChild) -> None:
        log.info("%s: child %s is readable again", child.tree.name, child.name)
        child.unreadable = None
        child.retry_delay = RETRY_FIRST
        child.tree.unreadable -= 1

    def _retry_unreadable(self, tree: MirroredTree) -> None:
        """A new listing: read the unreadable children again, each once its backoff is over (a listing may change
        often, and each host would read every such child at each change).

        They stay settled meanwhile: the snapshot does not wait for a read that most likely fails again.
        """
        for child in tree.children.values():
            if child.unreadable is not None and child.read_state == IDLE:
                self.reads.request_at(child, child.retry_at)

    def read_failed(self, node: MirroredNode | TreeChild, reason: str) -> None:
        if isinstance(node, TreeChild):
            self._child_unreadable(node, reason)
            return
        if node.failure != reason:
            what = "the snapshot" if isinstance(node, MirroredTree) else "the file"
            log.error("%s: cannot read %s: %s; %s is left as it is", node.name, node.config.source, reason, what)
        node.failure = reason
        node.in_sync = False
        self.observer.failed(node, "read", reason)
        self._initial_done(node)

    def read_settled(self, node: MirroredNode | TreeChild) -> None:
        """The file may be vouched for once what was read is written (a write can finish first)."""
        if isinstance(node, TreeChild):
            if node.active and not node.settled:
                node.settled = True
                node.tree.unsettled -= 1
            self._tree_maybe_complete(node.tree)
        elif isinstance(node, MirroredTree):
            self._tree_maybe_complete(node)
        elif not node.dirty and not node.writing and node.failure is None and node.wanted is not None:
            node.in_sync = True

    def _tree_maybe_complete(self, tree: MirroredTree) -> None:
        """Every read of the tree has settled: its picture is consistent, publish it (if it changed).

        Only the children in ``tree.changed`` are looked at, except for a first picture (or after a resync).
        """
        if not tree.active or not tree.complete():
            return
        picture = tree.wanted
        first = not isinstance(picture, dict)  # published even if empty: dest must show the tree is empty
        if not isinstance(picture, dict):
            picture = {name: child.data for name, child in tree.children.items() if child.data is not None}
            changes: dict[str, bytes | None] = dict(picture)
        else:
            changes = {}
            for name in tree.changed:
                child = tree.children.get(name)
                data = child.data if child is not None else None
                if data is None:
                    if picture.pop(name, None) is not None:
                        changes[name] = None
                elif picture.get(name) != data:
                    picture[name] = changes[name] = data
        tree.changed = set()
        tree.staging = {}  # the publish writes what was not written ahead
        tree.wanted = picture
        if not changes and not first and not tree.dirty and tree.failure is None:
            if not tree.writing:  # else the publish of this picture under way vouches for it when it ends
                tree.in_sync = True
            return
        if changes:
            tree.in_sync = False
            tree.pending.update(changes)
        self._mark_dirty(tree)

    def reads_idle(self) -> None:
        self._batch_ready.set()

    def _want(self, node: MirroredNode, wanted: bytes | dict[str, bytes] | _Absent) -> None:
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
                self._write_batch_safely(batch[start : start + CHUNK])

    def _gather(self) -> None:
        """While a burst of reads is in flight (start-up, reconnection, resync), let their results pile up.

        Files are cheap to write but expensive to make durable: one flush for
        2,000 files costs about what one costs alone.  A lone change has no
        reads pending behind it and is written at once.
        """
        if self.reads.pending() > 0 and len(self._dirty) < CHUNK:
            self._batch_ready.clear()
            self._batch_ready.wait(timeout=GATHER_MAX)

    def _write_batch_safely(self, batch: list[MirroredNode]) -> None:
        """One batch's unexpected error fails that batch's nodes (retried later), never the writer itself."""
        try:
            self._write_batch(batch)
        except Exception as e:
            log.exception("internal error while writing %d files; they will be retried", len(batch))
            reason = f"internal error: {type(e).__name__}: {e}"
            for node in batch:
                if node.active:
                    self._written(node, FileWriteError(node.config.file.path, reason))
        finally:
            for node in batch:
                node.writing = False  # also for nodes no result was reported for (inactive, nothing to write)

    def _write_batch(self, batch: list[MirroredNode]) -> None:
        batch = [node for node in batch if node.active]
        for node in batch:
            node.dirty = False
            node.writing = True  # until _written
        trees = [node for node in batch if isinstance(node, MirroredTree)]
        if trees:
            batch = [node for node in batch if not isinstance(node, MirroredTree)]
            for tree in trees:
                self._publish(tree)
        items = [(node, node.config.file, node.wanted) for node in batch if isinstance(node.wanted, bytes)]
        present = [node for node, _, _ in items]
        absent = [node for node in batch if node.wanted is ABSENT]
        writes = [(spec, data) for _, spec, data in items]
        # What we last wrote there: a dest known to hold other bytes is replaced without reading it back first.
        previous = {node.config.file.path: node.last_written for node in present if node.last_written is not None}
        if len(writes) <= INLINE_BATCH:
            results: list[Outcome | FileWriteError] = files.sync_files(writes, previous)
        else:
            results = gevent.get_hub().threadpool.apply(files.sync_files, (writes, previous))
        for (node, _, data), result in zip(items, results):
            node.last_written = None if isinstance(result, FileWriteError) else data
            if node.active:  # removed by a reload while its file was written: no hook, no bookkeeping
                self._written(node, result)
        for node in absent:
            node.last_written = None
            self._written(node, self._remove(node))

    def _publish(self, tree: MirroredTree) -> None:
        """One snapshot of a tree (in the thread pool: a big tree takes a while, pings must keep flowing)."""
        if not isinstance(tree.wanted, dict):
            if tree.staging:  # a first picture is still being read: write what is read so far ahead
                batch, tree.staging = tree.staging, {}
                gevent.get_hub().threadpool.apply(tree.publisher.stage, (batch,))
            return
        changes, tree.pending = tree.pending, {}  # the publisher keeps what a failed publish did not publish
        result, skipped = self._publish_tree(tree, changes)
        for error in skipped:
            if error.child not in tree.logged_names:
                tree.logged_names.add(error.child)
                log.error("%s: %s; that child is skipped", tree.name, error)
        if tree.active:
            self._written(tree, result)

    def _remove(self, node: MirroredNode) -> Outcome | FileWriteError:
        try:
            return Outcome.WRITTEN if files.remove_file(node.config.file.path) else Outcome.UNCHANGED
        except OSError as e:
            return FileWriteError(node.config.file.path, e.strerror or str(e), step="removing")
        except FileWriteError as e:
            return e

    def _written(self, node: MirroredNode, result: Outcome | FileWriteError) -> None:
        node.writing = False
        if isinstance(result, FileWriteError):
            if node.failure != str(result):
                kept = "the file there is left as it was" if os.path.lexists(result.path) else "no file is there yet"
                log.error("%s: %s; will retry, %s", node.name, result, kept)
            node.failure = str(result)
            node.in_sync = False
            self.observer.failed(node, "write", result.reason)
            self._schedule_write_retry(node)
        else:
            if node.failure is not None:
                log.info("%s: recovered (%s)", node.name, node.config.file.path)
            node.failure = None
            node.retry_delay = RETRY_FIRST
            # A newer value may have arrived while we wrote, or a re-read may be under way (reconnection).
            node.in_sync = not node.dirty and node.quiet()
            node.written_at = time.time()
            repaired = result is not Outcome.UNCHANGED and node.written_version == node.version
            node.written_version = node.version
            if result is not Outcome.UNCHANGED and self.initial_sync.is_set():
                self._log_write(node, result, repaired)
            self.observer.written(node, result, repaired)
        self._initial_done(node)

    def _log_write(self, node: MirroredNode, result: Outcome, repaired: bool) -> None:
        if isinstance(node, MirroredTree) and node.tree_config.format == "memory":
            return  # an in-process tree (LiveTree): no file, nothing an operator needs per change
        path = node.config.file.path
        if result is Outcome.METADATA_FIXED:
            log.info("%s: fixed mode/ownership of %s", node.name, path)
        elif isinstance(node.wanted, dict):
            log.info("%s: published %d children to %s", node.name, len(node.wanted), path)
        elif node.wanted is ABSENT:
            log.info("%s: node is absent: removed %s", node.name, path)
        elif isinstance(node.wanted, bytes):
            what = "restored" if repaired else "wrote"
            log.info("%s: %s %d bytes to %s (version %d)", node.name, what, len(node.wanted), path, node.version)

    # --- write retries ---------------------------------------------------------------------------

    def _schedule_write_retry(self, node: MirroredNode) -> None:
        node.retry_at = time.monotonic() + node.retry_delay
        node.retry_delay = min(node.retry_delay * 2, RETRY_MAX)
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
                self._pending_initial = set()  # a set never shrinks its table: 0.5 MB at 5,000 nodes
                self._initial_sync_done()
                release_memory()

    def _initial_sync_done(self) -> None:
        failed = [node.name for node in self.nodes if node.failure]
        absent = sum(1 for node in self.nodes if node.wanted is ABSENT)
        named = ", ".join(failed[:NAMED_FAILURES]) + (f" and {len(failed) - NAMED_FAILURES} more"
                                                       if len(failed) > NAMED_FAILURES else "")  # fmt: skip
        log.info(
            "initial sync of %d nodes done in %.2fs: %d absent, %d failed%s",
            len(self.nodes), time.monotonic() - self.started_at, absent, len(failed), f" ({named})" if failed else "",
        )  # fmt: skip
        self.initial_sync.set()

    def connected(self) -> bool:
        return bool(self.client.state == KazooState.CONNECTED)

    def heartbeat(self) -> int:
        """Touch the files known to match ZooKeeper, only while connected; return how many were touched.

        A node whose last read or write failed is skipped on purpose: its
        mtime then ages, and mtime-based monitoring sees the failure.  A file
        that cannot be touched (immutable, read-only mount...) is logged once
        and skipped; the others are still touched.
        """
        if not self.connected():
            log.warning("not connected to ZooKeeper: heartbeat withheld")
            return 0
        touched = 0
        for index, node in enumerate(self.nodes):
            if node.in_sync and node.wanted is not None and node.wanted is not ABSENT and self._touch(node):
                touched += 1
            if index % 1000 == 999:
                gevent.sleep(0)
        self.observer.heartbeat(touched)
        return touched

    def _touch(self, node: MirroredNode) -> bool:
        try:
            if isinstance(node, MirroredTree) and node.tree_config.format == "directory":
                touched = node.publisher.touch()
            else:
                touched = files.touch(node.config.file.path)
        except FileWriteError as e:
            if node.touch_failure != str(e):
                log.error("%s: heartbeat: %s; its mtime will age", node.name, e)
            node.touch_failure = str(e)
            self.observer.failed(node, "touch", e.reason)
            return False
        if node.touch_failure is not None:
            log.info("%s: heartbeat touches %s again", node.name, node.config.file.path)
            node.touch_failure = None
        return touched

    def resync(self) -> None:
        """Re-read every node and re-check every file, repairing local edits, deletions and drifted metadata."""
        if self.connected():
            self.resyncs += 1
            for node in self.nodes:
                if isinstance(node, MirroredTree):
                    # Forget what was published, so the next snapshot checks every file on disk again.
                    node.publisher = _new_publisher(node.tree_config)
                    node.wanted = None
                    node.pending, node.changed = {}, set()
            self._read_everything()

    def out_of_sync(self) -> Iterable[MirroredNode]:
        return (node for node in self.nodes if not node.in_sync)


PublishResult = tuple["Outcome | FileWriteError", "tuple[ChildNameError, ...]"]
# Publishes a tree's picture: called with the changes since the last call ({child: bytes, or None if gone});
# ``tree.wanted`` is the whole picture (read it in the hub only: it changes in place).
TreePublish = Callable[[MirroredTree, dict[str, "bytes | None"]], PublishResult]


def _new_publisher(config: TreeConfig) -> TreePublisher:
    from livedata.snapshots import TreePublisher

    return TreePublisher(config.spec)


def _publish_tree_in_thread(tree: MirroredTree, changes: dict[str, bytes | None]) -> PublishResult:
    if tree.tree_config.format == "json":  # the whole picture, rendered: copied here, in the hub
        assert isinstance(tree.wanted, dict)
        result: PublishResult = gevent.get_hub().threadpool.apply(_publish_json, (tree, dict(tree.wanted)))
        return result
    result = gevent.get_hub().threadpool.apply(_publish_tree, (tree, changes))
    return result


def _publish_json(tree: MirroredTree, children: dict[str, bytes]) -> PublishResult:
    from livedata import snapshots

    config = tree.tree_config
    try:
        return snapshots.publish_json(config.spec, children), ()
    except snapshots.TreeRenderError as e:
        return FileWriteError(config.file.path, str(e), step="rendering"), ()
    except FileWriteError as e:
        return e, ()
    except OSError as e:
        return FileWriteError(config.file.path, e.strerror or str(e), code=e.errno), ()


def _publish_tree(tree: MirroredTree, changes: dict[str, bytes | None]) -> PublishResult:
    """Publish the changes of a tree's picture; runs in a thread, so it only touches the file system, its
    arguments and the tree's publisher (which keeps the whole picture, and what a failed publish left)."""
    from livedata import snapshots

    config = tree.tree_config
    try:
        outcome = tree.publisher.publish_changes(changes)
    except snapshots.TreeRenderError as e:
        return FileWriteError(config.file.path, str(e), step="rendering"), ()
    except FileWriteError as e:
        return e, ()
    except OSError as e:
        return FileWriteError(config.file.path, e.strerror or str(e), code=e.errno), ()
    if outcome.switched:
        return Outcome.WRITTEN, outcome.skipped
    return (Outcome.METADATA_FIXED if outcome.metadata_fixed else Outcome.UNCHANGED), outcome.skipped
