"""The ZooKeeper side of chunked payloads: writing chunks, publishing an envelope, reading, cleaning up.

:mod:`livedata.payload` decides the bytes; this module puts them in ZooKeeper so that a reader sees the old
data or the new data, never a mix, and nothing is left behind:

* Chunks are created first, as children of the node with exactly the node's ACL (read with ``get_acls``).
  A chunk that already exists holds the same bytes (its name is their sha256), so it is simply reused.
* The envelope is published in one multi-op: ``check`` that every chunk it lists exists, then ``set_data``
  at the version the diff was computed from.  So an envelope can never be published pointing at a chunk
  that a concurrent cleanup removed (the transaction fails on that chunk; we re-create it and try again),
  and the version check is the writer's compare-and-set.
* After a successful write, chunks the new envelope does not list are removed at once (the previous
  version's, and any left by a writer that died between its chunks and its envelope).
* After a failed compare-and-set, the chunks this writer created are removed unless the node's current
  envelope lists them (a racing writer with the same content may have reused them).
* A reader that finds a chunk missing re-reads the node and starts over from the envelope there
  (:func:`read_decoded`): a missing chunk only means a newer version was published meanwhile.  Only when
  the node still holds the same envelope is the chunk missing for good, and the read fails.  This is why
  removal needs no delay: no reader ever has to finish reading a version that is no longer current.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kazoo.exceptions import NodeExistsError, NoNodeError, RolledBackError, RuntimeInconsistency

from livedata.payload import (
    CHUNK_PREFIX,
    BadChunkError,
    Envelope,
    MissingChunkError,
    PayloadError,
    Stored,
    parse,
)

if TYPE_CHECKING:
    from kazoo.client import KazooClient

log = logging.getLogger("livedata.chunks")

READ_ATTEMPTS = 3  # envelopes re-read after a missing chunk before it counts as missing for good
PUBLISH_ATTEMPTS = 3  # publications retried after a concurrent cleanup removed one of our chunks
_PIPELINE = 64  # chunk requests in flight at once


class ChunkVanishedError(Exception):
    """Our chunks kept disappearing between creation and publication (a cleanup loop of racing writers)."""


@dataclass(frozen=True)
class Decoded:
    """A node read and decoded: the data, the stat and raw bytes of the node it came from, its envelope."""

    data: bytes
    stat: Any
    node_data: bytes
    envelope: Envelope | None


def chunk_path(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}"


# --- reading --------------------------------------------------------------------------------------


def chunk_sizes(client: KazooClient, path: str, names: Sequence[str]) -> dict[str, int]:
    """Each chunk's size from its stat (pipelined, about one round trip); :class:`MissingChunkError` if one is gone.

    A stat costs a few dozen bytes whatever the chunk holds: this is how a reader learns what an envelope's
    chunks add up to before it reads any of them.
    """
    sizes: dict[str, int] = {}
    for first in range(0, len(names), _PIPELINE):
        batch = names[first : first + _PIPELINE]
        pending = [client.exists_async(chunk_path(path, name)) for name in batch]
        for name, result in zip(batch, pending):
            stat = result.get()
            if stat is None:
                raise MissingChunkError(name)
            sizes[name] = int(stat.dataLength)
    return sizes


def read_chunks(client: KazooClient, path: str, envelope: Envelope, sizes: dict[str, int]) -> dict[str, bytes]:
    """Each distinct chunk's bytes, pipelined; stops at the first chunk that is missing or not the size its stat said.

    With the sizes checked against the envelope first (:meth:`Envelope.check_chunk_sizes`), what is read for
    one version never exceeds its declared stored size plus one batch of chunks that changed meanwhile.
    """
    names = envelope.distinct_chunks
    tally = envelope.tally()
    found: dict[str, bytes] = {}
    for first in range(0, len(names), _PIPELINE):
        batch = names[first : first + _PIPELINE]
        pending = [client.get_async(chunk_path(path, name)) for name in batch]
        for name, result in zip(batch, pending):
            try:
                data = result.get()[0] or b""
            except NoNodeError:
                raise MissingChunkError(name) from None
            if len(data) != sizes[name]:
                raise BadChunkError(f"chunk {name} holds {len(data):,} bytes, its stat said {sizes[name]:,}")
            tally.add(name, data)
            found[name] = data
    return found


def decode(client: KazooClient, path: str, node_data: bytes, max_size: int) -> tuple[bytes, Envelope | None]:
    """Decode one version of the node, reading its chunks; :class:`MissingChunkError` if one is gone.

    Bounded before any chunk is read: the declared size against ``max_size``, then the chunks' sizes (from
    their stats, each name once) against the declared stored size.
    """
    envelope = parse(node_data)
    if envelope is None:
        return node_data, None
    envelope.check_size(max_size)
    if not envelope.chunked:
        return envelope.decode([], max_size), envelope
    sizes = chunk_sizes(client, path, envelope.distinct_chunks)
    envelope.check_chunk_sizes(sizes)
    found = read_chunks(client, path, envelope, sizes)
    return envelope.decode([found[name] for name in envelope.chunk_names], max_size), envelope


def read_decoded(
    client: KazooClient, path: str, max_size: int, node_data: bytes | None = None, stat: Any = None
) -> Decoded:
    """Read ``path`` (or start from ``node_data``/``stat`` already read, as a watch delivers them) and decode it.

    A missing chunk sends us back to the node: if it now holds another envelope, that one is read instead.
    Raises :class:`~livedata.payload.PayloadError` for bad stored data and kazoo's errors for the node itself.
    """
    if node_data is None or stat is None:
        node_data, stat = client.get(path)
    current = node_data or b""
    for _ in range(READ_ATTEMPTS):
        try:
            data, envelope = decode(client, path, current, max_size)
            return Decoded(data, stat, current, envelope)
        except MissingChunkError as missing:
            again, stat = client.get(path)
            if (again or b"") == current:
                raise missing from None  # same envelope, chunk still missing: for good
            log.debug("%s: %s; the node changed meanwhile, reading its new version", path, missing)
            current = again or b""
    raise PayloadError(f"chunks kept disappearing over {READ_ATTEMPTS} versions written meanwhile")


# --- writing --------------------------------------------------------------------------------------


def write_chunks(client: KazooClient, path: str, chunks: dict[str, bytes]) -> list[str]:
    """Create the chunks that do not exist yet, with the node's ACL; returns the names this call created."""
    if not chunks:
        return []
    acl, _ = client.get_acls(path)
    created = []
    names = list(chunks)
    for first in range(0, len(names), _PIPELINE):
        batch = names[first : first + _PIPELINE]
        pending = [client.create_async(chunk_path(path, name), chunks[name], acl=acl) for name in batch]
        for name, result in zip(batch, pending):
            try:
                result.get()
                created.append(name)
            except NodeExistsError:
                pass  # same name, same bytes: reuse it
    return created


def publish(client: KazooClient, path: str, stored: Stored, expected_version: int) -> tuple[int, list[str]]:
    """Write the chunks, then the envelope as a compare-and-set that also checks every chunk exists.

    Returns the new version and the chunks this call created.  Raises kazoo's ``BadVersionError`` when the
    node moved on, and whatever else ZooKeeper refused, after removing the chunks we created that nobody uses.
    """
    created: list[str] = []
    for _ in range(PUBLISH_ATTEMPTS):
        created += write_chunks(client, path, stored.chunks)
        transaction = client.transaction()
        for name in sorted(stored.chunks):
            transaction.check(chunk_path(path, name), 0)  # chunks are never set, so always at version 0
        transaction.set_data(path, stored.node_data, expected_version)
        results = transaction.commit()
        cause, index = _first_failure(results)
        if cause is None:
            return int(results[-1].version), sorted(set(created))
        if isinstance(cause, NoNodeError) and index < len(results) - 1:
            log.debug("%s: a chunk was removed by a concurrent cleanup; creating it again", path)
            continue
        remove_orphans(client, path, created)
        raise cause
    remove_orphans(client, path, created)
    raise ChunkVanishedError(
        f"chunks of {path} were removed by other writers' cleanups {PUBLISH_ATTEMPTS} times in a row; run again"
    )


def _first_failure(results: Sequence[Any]) -> tuple[Exception | None, int]:
    """The operation that made a multi fail: others only report being rolled back or not run."""
    for index, result in enumerate(results):
        if isinstance(result, Exception) and not isinstance(result, (RolledBackError, RuntimeInconsistency)):
            return result, index
    for index, result in enumerate(results):
        if isinstance(result, Exception):
            return result, index
    return None, -1


def chunk_children(client: KazooClient, path: str) -> list[str]:
    return [name for name in client.get_children(path) if name.startswith(CHUNK_PREFIX)]


def referenced(client: KazooClient, path: str) -> set[str]:
    """The chunks the node's current envelope lists (none when it is plain or unreadable)."""
    try:
        data, _ = client.get(path)
        envelope = parse(data or b"")
    except (NoNodeError, PayloadError):
        return set()
    return set(envelope.chunk_names) if envelope is not None else set()


def remove_chunks(client: KazooClient, path: str, names: Iterable[str]) -> list[str]:
    """Delete these chunks (already gone is fine); returns the names actually deleted."""
    names = list(names)
    pending = [client.delete_async(chunk_path(path, name)) for name in names]
    removed = []
    for name, result in zip(names, pending):
        try:
            result.get()
            removed.append(name)
        except NoNodeError:
            pass
    return removed


def remove_unreferenced(client: KazooClient, path: str, keep: Iterable[str]) -> list[str]:
    """After a successful write: delete every chunk child that ``keep`` (the new envelope's list) lacks."""
    wanted = set(keep)
    return remove_chunks(client, path, [name for name in chunk_children(client, path) if name not in wanted])


def remove_orphans(client: KazooClient, path: str, created: Iterable[str]) -> list[str]:
    """After a failed write: delete the chunks we created, except those the node's current envelope uses."""
    created = set(created)
    if not created:
        return []
    in_use = referenced(client, path)
    return remove_chunks(client, path, sorted(created - in_use))
