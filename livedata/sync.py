"""Keeping a set of local files equal to a set of znodes, one watch per node, on kazoo's gevent handler.

Each node's life is a small loop: *read the node with a watch* -> *remember
what the file should hold* -> *write it when it differs* -> the watch fires ->
read again.  ZooKeeper watches are one-shot and carry no data, so every event
is answered with a fresh read, which also means a burst of changes collapses
into one or two reads and the file ends on the last value.

The data path, top-down, and the room of each step:

1. watch event: :meth:`MirroredNode.on_watch <livedata.mirrored.MirroredNode.on_watch>` (or a tree child's)
   asks for a read; nothing else happens in kazoo's callback greenlet.
2. read queue: :class:`livedata.reads.ReadQueue`'s greenlet is the only one that sends requests to
   ZooKeeper (a callback that issued requests itself could wedge kazoo's queue), and decodes what it reads
   (:mod:`livedata.payload`).
3. wanted state: :class:`WantedState` (here) turns each result into what the file should hold: bytes,
   ABSENT, or for a tree the consistent picture once every read of it has settled.
4. schedule: :class:`livedata.schedule.WriteSchedule`'s writer greenlet takes the nodes marked dirty,
   gathering a burst of reads into one batch, and retries failed writes.
5. publish: :class:`livedata.publish.Publisher` writes files through :mod:`livedata.files` (a tree: a
   snapshot through its publisher, :meth:`Mirror._publish`) and records each outcome.
6. reader: the application reads the file (:class:`livedata.file_watcher.FileWatcher`).

:class:`Mirror` ties them together, with :class:`livedata.following.ConnectionFollower` following the
connection (re-read everything on each connection, new sessions, credentials).  If the reader or the
writer greenlet ever dies, :attr:`Mirror.died` is set: the daemon exits non-zero rather than stay alive
with files no longer followed (a supervisor restarts it).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Callable

import gevent
import gevent.event
from kazoo.client import KazooClient
from kazoo.protocol.states import EventType, KazooState, WatchedEvent, ZnodeStat

from livedata import files
from livedata.files import FileWriteError, Outcome
from livedata.following import ConnectionFollower
from livedata.mirrored import ABSENT, MirroredNode, MirrorObserver, NodeConfig, TreeConfig, _Absent
from livedata.payload import RESERVED_PREFIX, Envelope
from livedata.publish import Publisher
from livedata.reads import IDLE, MAX_PAYLOAD_SIZE, RETRY_FIRST, RETRY_MAX, ReadQueue
from livedata.schedule import InitialSync, WriteSchedule

if TYPE_CHECKING:  # the tree writer is imported by the first tree only: a config of plain nodes never loads it
    from livedata.session import SessionKeeper
    from livedata.snapshots import ChildNameError, TreePublisher

__all__ = ["ABSENT", "Mirror", "MirrorObserver", "MirroredNode", "MirroredTree", "NodeConfig", "TreeChild",
           "TreeConfig", "WantedState"]  # fmt: skip

log = logging.getLogger("livedata.sync")

STAGE_BATCH = 2000  # children of a first tree picture written ahead per thread-pool job



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


class WantedState:
    """The read queue's sink (:class:`livedata.reads.ReadSink`): what each read result means for a file.

    Hub callbacks, in the order ZooKeeper answered: a node's bytes or absence become its ``wanted`` state; a
    tree's listing and children settle into one consistent picture.  Whatever may now differ from its file is
    marked dirty for the schedule.  Never blocks, never sends a request itself (the read queue does).
    """

    reads: ReadQueue
    observer: MirrorObserver
    schedule: WriteSchedule
    initial: InitialSync

    # --- read results (livedata.reads.ReadSink; hub callbacks) -------------------------------------

    def read_done(self, node: MirroredNode | TreeChild, data: bytes, stat: ZnodeStat) -> None:
        if isinstance(node, TreeChild):
            problem = _child_data_problem(node.tree, data)
            if problem is not None:
                self._child_unreadable(node, problem)  # its data watch is in place: its next change is read
                return
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
        wanted = {name for name in names if not name.startswith(RESERVED_PREFIX)}  # its chunks, kept versions
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
        self.initial.node_done(node)

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
        self.schedule.reads_idle()

    def _want(self, node: MirroredNode, wanted: bytes | dict[str, bytes] | _Absent) -> None:
        if wanted != node.wanted:
            node.in_sync = False
        node.wanted = wanted
        self._mark_dirty(node)

    def _mark_dirty(self, node: MirroredNode) -> None:
        self.schedule.mark_dirty(node)


class Mirror(WantedState):
    """Mirror znodes into files: start it once, then it follows the client through reconnects and expiry.

    The wiring of the rooms (see the module docstring), the node list and its reloads, and what is done to
    every node at once: re-read (each connection, resync), heartbeat.
    """

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

    def _written(self, node: MirroredNode, result: Outcome | FileWriteError) -> None:
        self.publisher.written(node, result)

    # --- every node at once: heartbeat and resync --------------------------------------------------

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

    # --- the wiring, and the node list -------------------------------------------------------------

    def __init__(
        self,
        client: KazooClient,
        nodes: Sequence[NodeConfig | TreeConfig],
        observer: MirrorObserver | None = None,
        refresh_credentials: Callable[[], bool] | None = None,
        max_payload_size: int = MAX_PAYLOAD_SIZE,
        publish_tree: TreePublish | None = None,
        verify: Callable[[str, bytes, Envelope | None], None] | None = None,
    ) -> None:
        """``refresh_credentials`` re-reads the credentials and applies them, True if they changed.

        ``publish_tree`` replaces where a tree's consistent pictures go (on disk, by default, in gevent's
        thread pool); :class:`livedata.live_tree.LiveTree` keeps them in memory instead.

        It is called every CREDENTIALS_POLL seconds, so fixing or rotating the
        credentials in the secrets file is all it takes (see :mod:`livedata.following`).
        """
        self.client = client
        self.observer = observer or MirrorObserver()
        self.reads = ReadQueue(client, self, max_payload_size=max_payload_size, verify=verify)
        self._publish_tree = publish_tree or _publish_tree_in_thread
        self.nodes = [self._new_node(config) for config in nodes]
        self.initial = InitialSync(self.nodes)
        self.initial_sync = self.initial.done  # set once every node has been written or has failed once
        self.publisher = Publisher(self.observer, self.initial, self._publish)  # type: ignore[arg-type]
        self.schedule = WriteSchedule(self.reads, self.publisher.write_batch)
        self.publisher.schedule = self.schedule
        self.following = ConnectionFollower(client, self.observer, self._read_everything, lambda: self.nodes,
                                            refresh_credentials)  # fmt: skip
        self._writer: gevent.Greenlet | None = None
        self._reader: gevent.Greenlet | None = None
        self.died = gevent.event.Event()  # a core greenlet died: the process must not go on without it
        self.started_at = self.initial.started_at
        self.resyncs = 0  # resync passes started

    def _new_node(self, config: NodeConfig | TreeConfig) -> MirroredNode:
        node = MirroredTree(config) if isinstance(config, TreeConfig) else MirroredNode(config)
        node.mirror = self
        return node

    def start(self) -> None:
        """Begin mirroring; call before or after the client connects, reads start on every (re)connection."""
        self._clean_up_after_earlier_runs(self.nodes)
        self._writer = self.schedule.start()
        self._reader = self.reads.start()
        for greenlet in (self._writer, self._reader):
            greenlet.link_exception(self._core_died)
        self.following.start()

    def stop(self) -> None:
        self.following.stop()
        for greenlet in (self._writer, self._reader):
            if greenlet is not None:
                greenlet.unlink(self._core_died)
        self.reads.stop()
        if self._writer is not None:
            self._writer.kill(block=True, timeout=1)
        self.following.stop_greenlets()

    @property
    def session(self) -> SessionKeeper | None:
        """The client's :class:`livedata.session.SessionKeeper`, held from start() to stop()."""
        return self.following.session

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
            self.schedule.forget(gone)
        new_nodes = [self._new_node(wanted[name]) for name in added]
        self.nodes = [node for node in self.nodes if node.active] + new_nodes
        self.initial.follow(self.nodes, [current[name] for name in removed], new_nodes)
        if new_nodes:
            self._clean_up_after_earlier_runs(new_nodes)
            self.reads.request_all(new_nodes)
        return added, removed

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


def _child_data_problem(tree: MirroredTree, data: bytes) -> str | None:
    """Why the tree's format cannot hold ``data``, or None: the json format holds text only.

    Such a child is treated as unreadable (kept as last published, or left out), never as a failure of the
    whole tree: anyone allowed to create children could otherwise freeze every host's copy with one binary node.
    """
    if tree.tree_config.format != "json":
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 text (byte {e.start}): the json format holds text only"
    return None


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
