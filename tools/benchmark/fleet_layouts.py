"""What the simulated hosts of ``tools/bench fleet`` watch and how a change is stored: the seam for variants.

A layout says which znode(s) every host mirrors, what ``set()`` stores for a document, and what a host's file
holds once it has that document: ``plain`` (one znode holding the document as it is) and ``compressed`` (the
same document stored compressed, inflated by every watcher).  ``--fleet-layouts plain compressed`` measures
both with the same sessions, sizes and figures.  Trees (one child of a 1,000-child parent changes) would be
one more :class:`Layout` subclass registered in :data:`LAYOUTS`.

This module is imported by the driver and by the gevent workers, so it holds no clients and no threads.
"""
from __future__ import annotations

import json
import random
from typing import Any

from livedata import payload
from livedata.files import FileSpec
from livedata.sync import NodeConfig

_HEADER_ROOM = 64  # bytes kept free for the per-change header when a document is cut to size
_MAX_NODE_SIZE = 1024 * 1024 - 1024  # zookeeper.max_node_size's default


class Layout:
    """One node per host, stored as the document itself (``plain``); subclasses override what differs."""

    name = "plain"

    def watched(self, root: str) -> str:
        """The znode every host mirrors."""
        return f"{root}/data"

    def changed(self, root: str) -> str:
        """The znode each change sets (a tree layout changes one child of the watched parent)."""
        return self.watched(root)

    def stored(self, document: bytes) -> bytes:
        """The bytes ``set()`` puts into ZooKeeper for a document."""
        return document

    def expected(self, document: bytes) -> bytes:
        """The bytes a host's file holds once it has the document."""
        return document

    def prepare(self, zk: Any, root: str, document: bytes) -> None:
        """Create what the hosts watch, holding ``document`` (``zk``: a started, threaded KazooClient)."""
        zk.ensure_path(root)
        path = self.watched(root)
        if zk.exists(path):
            zk.set(path, self.stored(document))
        else:
            zk.create(path, self.stored(document))

    def nodes(self, source: str, dest: str) -> list[NodeConfig]:
        """What one simulated host mirrors: the same :class:`NodeConfig` the daemon builds from its INI."""
        return [NodeConfig("data", source, FileSpec(dest, mode=0o644))]


class Compressed(Layout):
    """The document as the writer stores it with ``--compress always``: zlib in livedata's envelope, inflated
    and verified by every host's watcher.  Fewer bytes per change leave the servers."""

    name = "compressed"

    def stored(self, document: bytes) -> bytes:
        stored = payload.encode(document, "always", _MAX_NODE_SIZE)
        assert not stored.chunks, "fleet documents compress into one node"
        return stored.node_data


LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (Layout(), Compressed())}


def document(tag: str, size: int) -> bytes:
    """A JSON document of exactly ``size`` bytes that says which change it is, shaped like real live data.

    A host list with random ids, weights and zones: text that compresses like production JSON does (a
    few times, not the hundredfold of a run of one byte), so a compressed layout is measured fairly.
    The body depends on ``size`` only; the ``change`` field makes every change's bytes distinct.
    """
    header = json.dumps({"change": tag})[:-1]  # '{"change": "..."' : the object continues with the body
    body = _body(size)
    room = size - len(header) - len(', "pad": ""}') - len(body)
    if room < 0:
        raise ValueError(f"a {size}-byte document cannot hold the change tag {tag!r}")
    text = f'{header}, "pad": "{" " * room}"{body}}}'
    data = text.encode()
    assert len(data) == size, (len(data), size)
    return data


_bodies: dict[int, str] = {}


def _body(size: int) -> str:
    """``, "hosts": [...]`` filling all but :data:`_HEADER_ROOM` bytes of a ``size``-byte document (cached)."""
    if size not in _bodies:
        rng = random.Random(size)
        budget = size - _HEADER_ROOM - len(', "pad": ""}')
        entries: list[str] = []
        used = len(', "hosts": []')
        while True:
            entry = json.dumps({
                "host": f"web-{rng.randrange(100000):05d}.{rng.choice(('us-east', 'eu-west', 'ap-south'))}",
                "id": f"{rng.getrandbits(64):016x}",
                "weight": rng.randrange(1, 1000),
                "enabled": rng.random() < 0.9,
            })  # fmt: skip
            if used + len(entry) + 2 > budget:
                break
            entries.append(entry)
            used += len(entry) + 2
        _bodies[size] = f', "hosts": [{", ".join(entries)}]'
    return _bodies[size]
