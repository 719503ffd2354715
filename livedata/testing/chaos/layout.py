"""Which nodes and trees a schedule mirrors, how each is written, and on which filesystem its dest lives."""
from __future__ import annotations

from dataclasses import dataclass

from livedata.testing.chaos.settings import Intensity

ROOT = "/chaos"
MAX_NODE_SIZE = 16384  # zookeeper.max_node_size for writer and watcher: small, so chunked data stays cheap
MAX_PAYLOAD = 1024 * 1024  # watcher.max_payload_size
BULK = 200  # nodes under load while credentials rotate
TREE_POOL = tuple(f"c{i}" for i in range(10))  # the children ordinary tree operations use
HOSTILE_NAMES = (".sneaky", "..data", "x" * 300, "caf\u00e9 menu", "-rf *", "a b", "\u2603" * 90)


@dataclass(frozen=True)
class NodeSpec:
    name: str
    kind: str  # plain or bulk (set by an operator), compressed / chunked (the writer), hostile (forged, then repaired)
    disk: str  # ext4, tiny or local
    protected: bool = False
    reloadable: bool = False  # reloads may remove and re-add it

    @property
    def path(self) -> str:
        return f"{ROOT}/n/{self.name}"


@dataclass(frozen=True)
class TreeSpec:
    name: str
    format: str  # directory or json
    disk: str
    reloadable: bool = False

    @property
    def path(self) -> str:
        return f"{ROOT}/t/{self.name}"


@dataclass(frozen=True)
class Layout:
    nodes: tuple[NodeSpec, ...]
    trees: tuple[TreeSpec, ...]

    def node(self, name: str) -> NodeSpec:
        return next(n for n in self.nodes if n.name == name)

    def tree(self, name: str) -> TreeSpec:
        return next(t for t in self.trees if t.name == name)

    def of_kind(self, *kinds: str, protected: bool | None = None) -> list[NodeSpec]:
        return [n for n in self.nodes if n.kind in kinds and (protected is None or n.protected is protected)]

    @property
    def disks(self) -> set[str]:
        return {n.disk for n in self.nodes} | {t.disk for t in self.trees}


def make_layout(intensity: Intensity) -> Layout:
    """Every part the features call for: 8 plain nodes spread over the filesystems, payload nodes, trees."""
    ext4 = "ext4" if intensity.has("ext4") else "local"
    tiny = "tiny" if intensity.has("tiny") else "local"
    reload = intensity.has("reload")
    disks = [ext4, ext4, ext4, tiny, tiny, "local", "local", "local"]
    nodes = [NodeSpec(f"p{i}", "plain", disk, reloadable=reload and i == 7) for i, disk in enumerate(disks)]
    nodes += [
        NodeSpec("z0", "compressed", ext4),
        NodeSpec("c0", "chunked", "local"),
        NodeSpec("c1", "chunked", ext4, reloadable=reload),
    ]
    if intensity.has("acl"):
        nodes += [NodeSpec("a0", "plain", "local", protected=True), NodeSpec("ac0", "chunked", "local", protected=True)]
        # set many times a second while credentials rotate, so that the watcher has reads in flight then
        nodes += [NodeSpec(f"b{i}", "bulk", "local") for i in range(BULK)]
    if intensity.has("hostile"):
        nodes += [NodeSpec("h0", "hostile", "local")]
    trees = (TreeSpec("d", "directory", ext4), TreeSpec("j", "json", "local", reloadable=reload))
    return Layout(tuple(nodes), trees)
