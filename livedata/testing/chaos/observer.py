"""What each node and tree held, from a kazoo client of the observer's own.

Every operation the schedule makes is announced first (:meth:`Observer.attempt`: the bytes it may install) and
then read back (:meth:`Observer.record_node`, :meth:`Observer.record_tree`) with the zxid it got. Operations
are the only writers and each lane issues them one at a time, so reading back after each one sees every state
a tree went through; a node's intermediate versions (two writers racing) are covered by the announcement.
Decoding goes through :mod:`.envelope`, never through the code under test.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoAuthError, NoNodeError

from livedata.testing.chaos import envelope
from livedata.testing.chaos.layout import MAX_PAYLOAD, NodeSpec, TreeSpec

ZK_ERRORS = (KazooException, TimeoutError, OSError)
T = TypeVar("T")


class Unreadable:
    """A node whose current data no correct reader may publish (hostile, or left broken by writers)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"<unreadable: {self.reason}>"


def file_name_ok(name: str) -> bool:
    """Whether a child name can be a file in a snapshot (README "Trees": the rest are skipped)."""
    return not name.startswith(".") and len(name.encode()) <= 255


@dataclass(frozen=True)
class TreeState:
    zxid: int  # the largest zxid among the source's children version and the children's mzxids
    children: tuple[tuple[str, bytes | None], ...]  # name -> data, None when the observer may not read it

    def visible(self) -> dict[str, bytes]:
        """What a snapshot of this state shows: readable children with names that can be files."""
        return {name: data for name, data in self.children if data is not None and file_name_ok(name)}


class Observer:
    """An independent record of every version; thread-safe (the lanes and the checker share it)."""

    def __init__(self, hosts: str, admin: str) -> None:
        self.client = KazooClient(hosts=hosts, timeout=10.0, auth_data=[("digest", admin)])
        self._lock = threading.Lock()
        self._attempted: dict[str, set[bytes]] = {}
        self._mzxid: dict[str, dict[bytes, int]] = {}  # node -> content -> mzxid it was seen at
        self._current: dict[str, bytes | Unreadable | None] = {}
        self._trees: dict[str, list[TreeState]] = {}
        self._newest: dict[str, tuple[int, int, int]] = {}  # node -> (czxid, version, mzxid) of its newest read
        self.rollbacks: dict[str, str] = {}  # node -> how ZooKeeper's own history of it went back
        self.records = 0

    def start(self) -> None:
        self.client.start(timeout=60)

    def stop(self) -> None:
        self.client.stop()
        self.client.close()

    # --- announcements and read-backs ------------------------------------------------------------------

    def attempt(self, node: str, content: bytes) -> None:
        with self._lock:
            self._attempted.setdefault(node, set()).add(content)

    def record_node(self, spec: NodeSpec, deadline: float = 60.0) -> bytes | Unreadable | None:
        """Read ``spec`` now (retrying while ZooKeeper is unreachable) and remember its version."""
        content, mzxid, stamp = self._retry(lambda: self._read_node(spec.path), deadline)
        with self._lock:
            self.records += 1
            self._note_stamp(spec.name, stamp)
            self._current[spec.name] = content
            if isinstance(content, bytes):
                self._attempted.setdefault(spec.name, set()).add(content)
                self._mzxid.setdefault(spec.name, {}).setdefault(content, mzxid)
        return content

    def announce_tree(self, tree: str, children: dict[str, bytes | None]) -> None:
        """The state a tree operation is about to install (the watcher may publish it before the read-back)."""
        state = TreeState(-1, tuple(sorted(children.items())))
        with self._lock:
            states = self._trees.setdefault(tree, [])
            if not states or states[-1].children != state.children:
                states.append(state)

    def record_tree(self, spec: TreeSpec, deadline: float = 60.0) -> TreeState:
        state = self._retry(lambda: self._read_tree(spec.path), deadline)
        with self._lock:
            self.records += 1
            states = self._trees.setdefault(spec.name, [])
            if not states or states[-1] != state:
                states.append(state)
        return state

    def _note_stamp(self, node: str, stamp: tuple[int, int, int] | None) -> None:
        """ZooKeeper's own history of one node incarnation (same czxid) only moves forward: a version seen again
        with another mzxid, or a lower version, means the ensemble lost acknowledged writes (a ZooKeeper bug)."""
        newest = self._newest.get(node)
        if stamp is None or (newest is not None and stamp[0] != newest[0]):
            if stamp is not None and (newest is None or stamp[2] > newest[2]):
                self._newest[node] = stamp
            return
        if newest is not None and (stamp[1] < newest[1] or (stamp[1] == newest[1] and stamp[2] != newest[2])):
            self.rollbacks.setdefault(node, f"version {newest[1]} at mzxid {newest[2]:#x}, then version {stamp[1]} at "
                                            f"mzxid {stamp[2]:#x}")  # fmt: skip
        if newest is None or stamp[2] > newest[2]:
            self._newest[node] = stamp

    def rolled_back(self, node: str) -> str | None:
        with self._lock:
            return self.rollbacks.get(node)

    # --- questions the checker asks ----------------------------------------------------------------------

    def allowed(self, node: str, content: bytes) -> bool:
        with self._lock:
            return content in self._attempted.get(node, ())

    def mzxid_of(self, node: str, content: bytes) -> int | None:
        with self._lock:
            return self._mzxid.get(node, {}).get(content)

    def current(self, node: str) -> bytes | Unreadable | None:
        with self._lock:
            return self._current.get(node)

    def tree_states(self, tree: str) -> list[TreeState]:
        with self._lock:
            return list(self._trees.get(tree, ()))

    def last_tree(self, tree: str) -> TreeState | None:
        with self._lock:
            states = self._trees.get(tree)
            return states[-1] if states else None

    # --- reading ZooKeeper -------------------------------------------------------------------------------

    def _retry(self, read: Callable[[], T], deadline: float) -> T:
        end = time.monotonic() + deadline
        while True:
            try:
                return read()
            except ZK_ERRORS:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)

    def _read_node(self, path: str) -> tuple[bytes | Unreadable | None, int, tuple[int, int, int] | None]:
        self.client.sync(path)  # the server this session uses may lag behind the one the change went through
        try:
            data, stat = self.client.get(path)
        except NoNodeError:
            return None, -1, None
        data = data or b""
        stamp = (int(stat.czxid), int(stat.version), int(stat.mzxid))

        def chunk(name: str) -> bytes | None:
            try:
                return bytes(self.client.get(f"{path}/{name}")[0] or b"")
            except NoNodeError:
                return None

        try:
            return envelope.decode(data, chunk, MAX_PAYLOAD), int(stat.mzxid), stamp
        except envelope.Undecodable as e:
            return Unreadable(str(e)), int(stat.mzxid), stamp

    def _read_tree(self, path: str) -> TreeState:
        self.client.sync(path)
        try:
            names, stat = self.client.get_children(path, include_data=True)
        except NoNodeError:
            return TreeState(-1, ())
        zxid = int(stat.pzxid)
        children: list[tuple[str, bytes | None]] = []
        for name in sorted(names):
            try:
                data, child = self.client.get(f"{path}/{name}")
            except NoNodeError:
                continue
            except NoAuthError:
                children.append((name, None))
                continue
            zxid = max(zxid, int(child.mzxid))
            children.append((name, bytes(data or b"")))
        return TreeState(zxid, tuple(children))
