"""The operations lane: what writers of ZooKeeper do, through an admin session and the real writer.

Each operation announces what it may install to the observer, makes the change, and has the observer read it
back. ZooKeeper errors during faults are expected (the change happened or not; the read-back tells) and are
counted, not reported; what is reported is a writer's traceback, or a writer that cannot replace bad data
once everything is healed.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import os
import random
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from kazoo.security import make_digest_acl

from livedata.testing.chaos import content, envelope
from livedata.testing.chaos.invariants import Violations
from livedata.testing.chaos.layout import BULK, ROOT, TREE_POOL, Layout, NodeSpec, TreeSpec
from livedata.testing.chaos.observer import Observer
from livedata.testing.chaos.rig import ADMIN, OTHER, Rig, reader
from livedata.testing.chaos.schedule import Step

ZK_ERRORS: tuple[type[BaseException], ...] = (KazooException, TimeoutError, OSError)
WRITER_TIMEOUT = 60.0


def acl_for(identities: list[int]) -> list[Any]:
    """The protected nodes' ACL: the admin may do anything, each listed reader identity may read."""
    admin_user, admin_password = ADMIN.split(":")
    acl = [make_digest_acl(admin_user, admin_password, all=True)]
    for index in identities:
        user, password = reader(index).split(":")
        acl.append(make_digest_acl(user, password, read=True))
    return acl


class Operations:
    def __init__(self, rig: Rig, observer: Observer, layout: Layout, violations: Violations) -> None:
        self.rig = rig
        self.observer = observer
        self.layout = layout
        self.violations = violations
        self.client = KazooClient(hosts=rig.ensemble.hosts, timeout=10.0, auth_data=[("digest", ADMIN)])
        self.other: KazooClient | None = None  # the session holding an unreadable ephemeral child
        self.seq = itertools.count(1)
        self.counts: collections.Counter[str] = collections.Counter()
        self.errors = 0
        self.inputs = os.path.join(rig.workdir, "inputs")

    # --- set-up and tear-down -------------------------------------------------------------------------------

    def start(self) -> None:
        """Create every node and tree with a first version (payload nodes through the writer)."""
        os.makedirs(self.inputs, exist_ok=True)
        self.client.start(timeout=60)
        self.client.ensure_path(f"{ROOT}/n")
        self.client.ensure_path(f"{ROOT}/t")
        for node in self.layout.nodes:
            acl = acl_for([0]) if node.protected else None
            if node.kind in ("plain", "bulk"):
                data = content.text(node.name, next(self.seq), 300, 0)
                self.observer.attempt(node.name, data)
                self.client.create(node.path, data, acl=acl)
            else:
                self.client.create(node.path, b"", acl=acl)
                self._push(node, 0, required=True)
            self.observer.record_node(node)
        for tree in self.layout.trees:
            self.client.create(tree.path)
            for child in TREE_POOL[:4]:
                self.client.create(f"{tree.path}/{child}", self._child_data(tree, child, 0))
            self.observer.record_tree(tree)

    def stop(self) -> None:
        for client in (self.other, self.client):
            if client is not None:
                client.stop()
                client.close()

    # --- the lane ---------------------------------------------------------------------------------------------

    def run(self, step: Step) -> None:
        handler: Callable[[dict[str, Any]], None] = getattr(self, "op_" + step.kind.replace("-", "_"))
        self.counts[step.kind] += 1
        try:
            handler(step.args)
        except ZK_ERRORS:
            self.errors += 1  # a fault was on: the read-back below says what the node holds now
        for node in self.layout.nodes:
            if node.name in _touched(step):
                self.observer.record_node(node)
        for tree in self.layout.trees:
            if tree.name == step.args.get("tree") or (tree.name == "d" and step.kind in _TREE_D_OPS):
                self.observer.record_tree(tree)

    def op_set(self, args: dict[str, Any]) -> None:
        node = self.layout.node(args["node"])
        data = content.text(node.name, next(self.seq), args["size"], args["salt"])
        self.observer.attempt(node.name, data)
        try:
            self.client.set(node.path, data)
        except NoNodeError:
            self.client.create(node.path, data, acl=acl_for([self.rig.identity]) if node.protected else None)

    def op_toggle(self, args: dict[str, Any]) -> None:
        node = self.layout.node(args["node"])
        if self.client.exists(node.path):
            self.client.delete(node.path)
        else:
            data = content.text(node.name, next(self.seq), 300, args["salt"])
            self.observer.attempt(node.name, data)
            self.client.create(node.path, data)

    def op_burst(self, args: dict[str, Any]) -> None:
        """Every plain node set at once: many reads in flight in the watcher right after."""
        waits = self._burst_start(args["salt"])
        for wait in waits:
            wait()

    def _burst_start(self, salt: int, kinds: tuple[str, ...] = ("plain",)) -> list[Callable[[], Any]]:
        results: list[Any] = []
        for node in self.layout.of_kind(*kinds, protected=False):
            data = content.text(node.name, next(self.seq), 300, salt)
            self.observer.attempt(node.name, data)
            results.append(self.client.set_async(node.path, data))
        return [functools.partial(_quietly, functools.partial(r.get, timeout=30)) for r in results]

    def _load(self, seconds: float, salt: int, midway: Callable[[], None]) -> None:
        """Every plain and bulk node set every 50 ms for ``seconds``, ``midway()`` called after the first fifth: the
        watcher has reads in flight most of the time, as on a busy fleet."""
        waits: list[Callable[[], Any]] = []
        start = time.monotonic()
        called = False
        while time.monotonic() - start < seconds:
            waits += self._burst_start(salt, ("plain", "bulk"))
            if not called and time.monotonic() - start > seconds / 5:
                midway()
                called = True
            time.sleep(0.05)  # the load's pace
        if not called:
            midway()
        for wait in waits:
            wait()

    def _push(self, node: NodeSpec, base: int, required: bool = False) -> subprocess.Popen[str]:
        process = self._writer(node, base)
        self._finish_writer(process, node, required)
        return process

    def _writer(self, node: NodeSpec, base: int) -> subprocess.Popen[str]:
        seq = next(self.seq)
        if node.kind == "chunked":
            data, compress = content.chunked(node.name, seq, base, large=node.reloadable), "auto"
        elif node.kind == "compressed":
            data, compress = content.compressible(node.name, seq, base), "auto"
        else:
            data, compress = content.text(node.name, seq, 200, base), "always"
        self.observer.attempt(node.name, data)
        source = os.path.join(self.inputs, f"{node.name}-{seq}")
        with open(source, "wb") as f:
            f.write(data)
        command = [sys.executable, "-m", "livedata.writer", self.rig.writer_config, source, node.path,
                   "--allow-empty", "--no-validate", "--compress", compress, "--diff-lines", "1"]  # fmt: skip
        return subprocess.Popen(command, cwd=self.rig.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True)  # fmt: skip

    def _finish_writer(self, process: subprocess.Popen[str], node: NodeSpec, required: bool) -> None:
        try:
            _, stderr = process.communicate(timeout=WRITER_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        if "Traceback" in stderr:
            self.violations.report("the writer fails with one line, never a traceback",
                                   f"writing {node.path}: {stderr[-1500:]}")  # fmt: skip
        elif required and process.returncode != 0:
            self.violations.report("the writer can always replace what a node holds",
                                   f"writing {node.path} with every server up: exit {process.returncode}: "
                                   f"{stderr.strip()[-600:]}")  # fmt: skip

    def op_push(self, args: dict[str, Any]) -> None:
        self._push(self.layout.node(args["node"]), args["base"])

    def op_race(self, args: dict[str, Any]) -> None:
        """Two or three writers push the same node at once, with data sharing all chunks but the last."""
        node = self.layout.node(args["node"])
        writers = [self._writer(node, args["base"]) for _ in range(args.get("writers", 2))]
        for process in writers:
            self._finish_writer(process, node, False)

    def op_tree_put(self, args: dict[str, Any]) -> None:
        tree = self.layout.tree(args["tree"])
        data = self._child_data(tree, args["child"], args["salt"])
        children = self._children(tree)
        children[args["child"]] = data
        self.observer.announce_tree(tree.name, children)
        path = f"{tree.path}/{args['child']}"
        try:
            self.client.set(path, data)
        except NoNodeError:
            self.client.create(path, data)

    def op_tree_delete(self, args: dict[str, Any]) -> None:
        tree = self.layout.tree(args["tree"])
        children = self._children(tree)
        if children.pop(args["child"], None) is not None:
            self.observer.announce_tree(tree.name, children)
            self.client.delete(f"{tree.path}/{args['child']}")

    def op_tree_multi(self, args: dict[str, Any]) -> None:
        """Several children changed in one transaction: a snapshot shows all of it or none."""
        tree = self.layout.tree(args["tree"])
        children = self._children(tree)
        transaction = self.client.transaction()
        for child, change in args["changes"]:
            path = f"{tree.path}/{child}"
            if change == "del":
                if child in children:
                    transaction.delete(path)
                    del children[child]
            else:
                data = self._child_data(tree, child, args["salt"])
                (transaction.set_data if child in children else transaction.create)(path, data)
                children[child] = data
        self.observer.announce_tree(tree.name, children)
        transaction.commit()

    def op_envelope(self, args: dict[str, Any]) -> None:
        """Bad data in the hostile node: the watcher must keep the old file, bounded, and log it."""
        node = self.layout.node("h0")
        data = self._forge(node, args["form"], args["salt"])
        self.client.set(node.path, data)

    def _forge(self, node: NodeSpec, form: str, salt: int) -> bytes:
        rng = random.Random(salt)
        if form == "deep-nesting":
            return envelope.forge(b"[" * 100_000 + b"]" * 100_000)
        if form == "chunk-list-bomb":  # one 100 KB chunk listed 2,000 times: 200 MB for a 100 KB declaration
            chunk = rng.randbytes(100_000)
            name = envelope.chunk_name(chunk)
            with contextlib.suppress(NodeExistsError):
                self.client.create(f"{node.path}/{name}", chunk, acl=None)
            return envelope.forge({**envelope.honest_header(chunk, "identity", chunk), "chunks": [name] * 2000})
        good = content.text("forged", salt, 200, salt)
        if form == "unknown-codec":
            return envelope.forge(envelope.honest_header(good, "lzma", good), good)
        if form == "hash-mismatch":
            return envelope.forge({**envelope.honest_header(good, "identity", good), "sha256": "0" * 64}, good)
        if form == "missing-chunk":
            return envelope.forge(envelope.honest_header(good, "identity", good, [envelope.chunk_name(b"gone")]))
        if form == "inflate-bomb":
            bomb = content.inflate_bomb(salt)
            return envelope.forge(envelope.honest_header(good, "zlib", bomb), bomb)
        if form == "cut-short":
            return envelope.forge(envelope.honest_header(good, "identity", good), good)[:-10]
        return envelope.forge(b"{not json at all")

    def op_repair(self, args: dict[str, Any]) -> None:
        self._push(self.layout.node("h0"), args["salt"] % 3)

    def repair_all(self) -> None:
        """With everything healed: the writer replaces the hostile node's data, whatever it holds."""
        for node in self.layout.of_kind("hostile"):
            self._push(node, 0, required=True)
            self.observer.record_node(node)

    def op_hostile_name(self, args: dict[str, Any]) -> None:
        tree = self.layout.tree("d")
        children = self._children(tree)
        data = content.text("hostile", next(self.seq), 40, args["salt"])
        if args["name"] in children:
            return
        children[args["name"]] = data
        self.observer.announce_tree(tree.name, children)
        self.client.create(f"{tree.path}/{args['name']}", data)

    def op_unreadable_child(self, args: dict[str, Any]) -> None:
        """Another service's session creates an ephemeral child only it may read (a lock, a registration)."""
        tree = self.layout.tree("d")
        if self.other is None:
            self.other = KazooClient(hosts=self.rig.ensemble.hosts, timeout=20.0, auth_data=[("digest", OTHER)])
            self.other.start(timeout=60)
        user, password = OTHER.split(":")
        name = f"lock-{args['salt'] % 1000}"
        children = self._children(tree)
        children[name] = None
        self.observer.announce_tree(tree.name, children)
        self.other.create(f"{tree.path}/{name}", b"held", ephemeral=True, acl=[make_digest_acl(user, password,
                                                                                                 all=True)])

    def op_rotate(self, args: dict[str, Any]) -> None:
        """Credential rotation as an operator does it: the ACLs admit the new identity, the protected data is
        rewritten under them, and the secrets agent replaces the file while the watcher is busy reading."""
        old, new = self.rig.identity, self.rig.identity + 1
        for node in self.layout.nodes:
            if node.protected:
                self.client.set_acls(node.path, acl_for([old, new]))
        for node in self.layout.nodes:
            if node.protected and node.kind == "chunked":
                self._push(node, args["salt"] % 3)
            elif node.protected:
                self.op_set({"node": node.name, "size": 300, "salt": args["salt"]})
        self._load(2.5, args["salt"], lambda: self._rotate_secrets(new, args.get("stall", False)))

    def _rotate_secrets(self, identity: int, stall: bool) -> None:
        """The secrets agent's part; with ``stall``, the ensemble stalls for a second meanwhile (a GC pause, a
        slow disk), so that the watcher's reads are still unanswered when it applies the new credentials (it
        looks at the file every second)."""
        stalled = [s for s in self.rig.ensemble.servers if s.running and not s.paused] if stall else []
        if stalled:  # stall in the middle of a burst: its notifications are out, the watcher's reads are not back
            results = []
            for node in self.layout.of_kind("bulk"):
                data = content.text(node.name, next(self.seq), 300, identity)
                self.observer.attempt(node.name, data)
                results.append(self.client.set_async(node.path, data))
            deadline = time.monotonic() + 2.0
            while sum(r.ready() for r in results) < len(results) // 4 and time.monotonic() < deadline:
                time.sleep(0.0005)  # polling the burst's progress
        for server in stalled:
            server.pause()
        self.rig.write_secrets(identity)
        if stalled:
            time.sleep(1.1)  # the stall's length: under the watcher's read timeout (2/3 of its session timeout)
        for server in stalled:
            if server.running and server.paused:
                server.resume()

    def op_rotate_end(self, args: dict[str, Any]) -> None:
        for node in self.layout.nodes:
            if node.protected:
                self.client.set_acls(node.path, acl_for([self.rig.identity]))

    def op_reload(self, args: dict[str, Any]) -> None:
        """SIGHUP with some reloadable nodes and trees left out (and the rest back), sometimes right after a
        push to one being left out, so that it goes while its chunks are being read."""
        pushed = [n for n in self.layout.nodes if n.reloadable and n.kind == "chunked" and n.name in args["without"]]
        if not (args["push_first"] and pushed) or not self.rig.active(pushed[0].name):
            self.rig.reload(args["without"])
            return
        node = pushed[0]
        self.rig.reload(args["without"], signal_now=False)
        signalled = threading.Event()

        def changed(event: Any) -> None:  # the commit's notification: the watcher starts reading it now too
            if not signalled.is_set():
                signalled.set()
                self.rig.signal_reload()

        self.client.exists(node.path, watch=changed)
        process = self._writer(node, 1)
        self._finish_writer(process, node, False)
        if not signalled.is_set():
            signalled.set()
            self.rig.signal_reload()

    # --- helpers ------------------------------------------------------------------------------------------------

    def _children(self, tree: TreeSpec) -> dict[str, bytes | None]:
        state = self.observer.last_tree(tree.name)
        return dict(state.children) if state else {}

    def _child_data(self, tree: TreeSpec, child: str, salt: int) -> bytes:
        return content.text(f"{tree.name}/{child}", next(self.seq), 60, salt)


_TREE_D_OPS = frozenset({"hostile-name", "unreadable-child"})


def _touched(step: Step) -> set[str]:
    """The nodes a step may have changed (read back after it)."""
    if step.kind == "burst":
        return {f"p{i}" for i in range(8)}
    if step.kind == "rotate":
        return {f"p{i}" for i in range(8)} | {"a0", "ac0"} | {f"b{i}" for i in range(BULK)}
    if step.kind in ("envelope", "repair"):
        return {"h0"}
    if step.kind == "reload":
        return {"c1"}
    return {step.args["node"]} if "node" in step.args else set()


def _quietly(call: Callable[[], Any]) -> None:
    try:
        call()
    except ZK_ERRORS:  # a fault was on: the read-back says what happened
        return
