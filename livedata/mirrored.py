"""What the mirror knows about each thing it mirrors: its configuration, its wanted state, how far its file is.

One :class:`MirroredNode` per configured node (a tree is a :class:`livedata.sync.MirroredTree`), plain
attributes read and written by the rooms of the data path in turn:

* the read queue (:mod:`livedata.reads`) keeps its bookkeeping here (``read_state``, ``reread``...);
* the read results (:class:`livedata.sync.WantedState`) set ``wanted`` and the znode's version;
* the schedule (:mod:`livedata.schedule`) and the publisher (:mod:`livedata.publish`) mark it dirty, write it
  and record how it went (``in_sync``, ``failure``, ``written_at``...);
* observers (:class:`MirrorObserver`: metrics, hooks, probes) are told of each outcome.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kazoo.protocol.states import EventType, WatchedEvent

from livedata.files import FileSpec, Outcome
from livedata.reads import IDLE, RETRY_FIRST

if TYPE_CHECKING:  # the tree writer is imported by the first tree only: a config of plain nodes never loads it
    from livedata.snapshots import TreeSpec
    from livedata.sync import Mirror


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
