"""Builders of stored payloads, good and bad, for every reader's tests (payload, writer, LiveNode, watcher).

``BAD_CASES`` maps a name to a function returning ``(node_data, chunks, reason)``: what to put in the node,
the chunk children to create (name -> bytes), and a fragment the reader's one-line reason must contain.
:func:`put` stores such a case in ZooKeeper by hand, bypassing the writer and its checks.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any, Callable

from kazoo.client import KazooClient

from livedata.payload import CHUNK_PREFIX, MAGIC, VERSION, chunk_name
from livedata.testing.documents import LIMIT, experiments_json, incompressible  # noqa: F401 -- for the tests
from livedata.testing.zookeeper import ZooKeeperServer, four_letter_word, start_standalone

MiB = 1024 * 1024

Case = tuple[bytes, dict[str, bytes], str]


def envelope(header: dict[str, Any], body: bytes = b"", version: int = VERSION, magic: bytes = MAGIC) -> bytes:
    """Envelope bytes exactly as the README lays them out, from a header given field by field."""
    raw = json.dumps(header).encode("utf-8")
    return magic + struct.pack(">BI", version, len(raw)) + raw + body


def header(
    data: bytes, body: bytes, codec: str = "zlib", chunks: list[str] | None = None, **changes: Any
) -> dict[str, Any]:
    """A correct header for ``data`` encoded as ``body``; ``changes`` overrides fields to make it wrong."""
    fields: dict[str, Any] = {
        "codec": codec,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "stored": len(body),
        "chunks": chunks or [],
    }
    fields.update(changes)
    return fields


def inline(data: bytes, codec: str = "zlib", **changes: Any) -> bytes:
    body = zlib.compress(data) if codec == "zlib" else data
    return envelope(header(data, body, codec, **changes), body)


def chunked(data: bytes, pieces: int, codec: str = "zlib") -> tuple[bytes, dict[str, bytes]]:
    """A good chunked envelope of ``data`` split into ``pieces`` chunks."""
    body = zlib.compress(data) if codec == "zlib" else data
    step = -(-len(body) // pieces)
    parts = [body[i : i + step] for i in range(0, len(body), step)]
    names = [chunk_name(part) for part in parts]
    return envelope(header(data, body, codec, names), b""), dict(zip(names, parts))


# --- the bad cases --------------------------------------------------------------------------------

_GOOD = b'{"good": "data"}\n' * 2000


def _deeply_nested_header() -> Case:
    raw = b"[" * 100_000 + b"]" * 100_000
    return MAGIC + struct.pack(">BI", VERSION, len(raw)) + raw, {}, "nested too deeply"


def _unknown_version() -> Case:
    return inline(_GOOD)[:4] + bytes([VERSION + 1]) + inline(_GOOD)[5:], {}, "format version 2"


def _unknown_codec() -> Case:
    body = zlib.compress(_GOOD)
    return envelope(header(_GOOD, body, codec="zstd"), body), {}, "codec 'zstd'"


def _malformed_header() -> Case:
    return MAGIC + struct.pack(">BI", VERSION, 5) + b"{nope", {}, "header is not JSON"


def _cut_short() -> Case:
    return MAGIC + b"\x01\x00", {}, "cut short"


def _hash_mismatch() -> Case:
    body = zlib.compress(_GOOD)
    return envelope(header(_GOOD, body, sha256="0" * 64), body), {}, "sha256"


def _truncated_stream() -> Case:
    body = zlib.compress(_GOOD)[:-20]
    return envelope(header(_GOOD, body), body), {}, "ends early"


def _corrupt_stream() -> Case:
    body = bytearray(zlib.compress(_GOOD))
    body[10:20] = b"\xff" * 10
    return envelope(header(_GOOD, bytes(body)), bytes(body)), {}, "compressed stream"


def _bomb() -> Case:
    """64 MiB of zeros deflated to about 64 KB, declared (plausibly) as twice its compressed size."""
    body = zlib.compress(bytes(64 * MiB), 9)
    return envelope(header(b"", body, size=2 * len(body), sha256="0" * 64), body), {}, "bomb"


def _too_large() -> Case:
    body = zlib.compress(bytes(1000))
    return envelope(header(bytes(1000), body, size=65 * MiB), body), {}, "above the limit"


def _missing_chunk() -> Case:
    node_data, chunks = chunked(_GOOD, 2)
    first = next(iter(chunks))
    return node_data, {first: chunks[first]}, "does not exist"


def _bad_chunk() -> Case:
    node_data, chunks = chunked(_GOOD, 2)
    first, second = chunks
    return node_data, {first: chunks[first], second: b"x" + chunks[second][1:]}, "holds other bytes"


def _longer_than_declared() -> Case:
    body = zlib.compress(_GOOD + b"more")
    return envelope(header(_GOOD, body), body), {}, "inflates past"


def _shorter_than_declared() -> Case:
    body = zlib.compress(_GOOD)
    return envelope(header(_GOOD, body, size=len(_GOOD) + 10), body), {}, "header says"


def _stored_size_mismatch() -> Case:
    body = zlib.compress(_GOOD)
    return envelope(header(_GOOD, body, stored=len(body) - 1), body), {}, "header says"


BAD_CASES: dict[str, Callable[[], Case]] = {
    "unknown version": _unknown_version,
    "unknown codec": _unknown_codec,
    "malformed header": _malformed_header,
    "deeply nested header": _deeply_nested_header,
    "cut short": _cut_short,
    "hash mismatch": _hash_mismatch,
    "truncated stream": _truncated_stream,
    "corrupt stream": _corrupt_stream,
    "bomb": _bomb,
    "longer than declared": _longer_than_declared,
    "shorter than declared": _shorter_than_declared,
    "stored size mismatch": _stored_size_mismatch,
    "decoded size above limit": _too_large,
    "missing chunk": _missing_chunk,
    "chunk with other bytes": _bad_chunk,
}


def amplifying(chunk: bytes, times: int = 2000) -> tuple[bytes, dict[str, bytes]]:
    """An envelope declaring ``len(chunk)`` stored bytes that lists the one chunk ``times`` times.

    Read naively it costs ``times x len(chunk)`` bytes per read (200 MB for 100 KB listed 2,000 times).
    """
    name = chunk_name(chunk)
    fields = header(chunk, chunk, codec="identity", chunks=[name] * times)
    return envelope(fields), {name: chunk}


def read_bytes_under(port: int, namespace: str) -> int:
    """Bytes the server on ``port`` has answered to reads under the top-level node ``/namespace`` (mntr)."""
    for line in four_letter_word(port, "mntr").splitlines():
        key, _, value = line.partition("\t")
        if key == f"zk_sum_{namespace}_read_per_namespace":
            return int(value)
    return 0


def inflating(size: int = 64 * MiB) -> tuple[bytes, int]:
    """A good inline envelope of ``size`` zero bytes stored in about ``size / 1000`` (64 KB for 64 MiB)."""
    data = bytes(size)
    body = zlib.compress(data, 9)
    return envelope(header(data, body), body), size


def stays_within(measure: Callable[[], int], bound: int, seconds: float) -> int:
    """Watch ``measure()`` for ``seconds`` (an absence of retries can only be observed over a while) and
    return its largest value, stopping early once it passes ``bound``."""
    deadline = time.monotonic() + seconds
    largest = measure()
    while largest <= bound and time.monotonic() < deadline:
        time.sleep(0.05)
        largest = max(largest, measure())
    return largest


def put(client: KazooClient, path: str, node_data: bytes, chunks: dict[str, bytes]) -> None:
    """Store a case by hand: chunks as the node's children (with its ACL), then the node's data."""
    acl, _ = client.get_acls(path)
    for name, data in chunks.items():
        if not client.exists(f"{path}/{name}"):
            client.create(f"{path}/{name}", data, acl=acl)
    client.set(path, node_data)


def chunk_children(client: KazooClient, path: str) -> list[str]:
    return sorted(name for name in client.get_children(path) if name.startswith(CHUNK_PREFIX))


def referenced_chunks(client: KazooClient, path: str) -> list[str]:
    """The chunks the node's envelope and its kept versions (history children) list: all a node may keep."""
    from livedata.chunks import history_references
    from livedata.payload import parse

    envelope = parse(client.get(path)[0] or b"")
    kept = history_references(client, path, client.get_children(path))
    assert kept is not None
    return sorted(set(envelope.chunk_names if envelope else []) | kept)


def large_data_server() -> Iterator[ZooKeeperServer]:
    """A server for a module of megabyte-sized tests (use it to override ``zk_server``, module-scoped).

    ZooKeeper keeps its last committed transactions in memory (``zookeeper.commitLogCount``, 500 by default),
    megabyte chunks included, even once their nodes are deleted: on the run's shared server, with its 256 MB
    heap, those tests would add up to an OutOfMemoryError for whoever comes after.
    """
    server = start_standalone(java_properties={"zookeeper.commitLogCount": "10"})
    yield server
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)
