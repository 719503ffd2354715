"""The ZooKeeper side of chunked payloads: writing chunks, publishing an envelope, reading, cleaning up.

:mod:`livedata.payload` decides the bytes; this module puts them in ZooKeeper so that a reader sees the old
data or the new data, never a mix, and nothing is left behind:

* Chunks are created first, as children of the node with exactly the node's ACL (read with ``get_acls``).
  A chunk that already exists holds the same bytes (its name is their sha256), so it is reused, its ACL
  set to the node's when it differs: every chunk an envelope lists carries the node's ACL as of the write,
  whatever ACL the node had when the chunk was first created.
* The envelope is published in one multi-op: ``check`` that every chunk it lists exists, then ``set_data``
  at the version the diff was computed from.  So an envelope can never be published pointing at a chunk
  that a concurrent cleanup removed (the transaction fails on that chunk; we re-create it and try again),
  and the version check is the writer's compare-and-set.
* After a successful write, chunks the node's current envelope does not list are removed at once (the
  previous version's, and any left by a writer that died between its chunks and its envelope).
* After a failed compare-and-set, the chunks this writer created are removed unless the node's current
  envelope lists them (a racing writer with the same content may have reused them).
* Either removal is one multi that also checks the node is still at the version whose envelope was found
  not to list those chunks: a writer that publishes meanwhile (a newer envelope, perhaps reusing them)
  makes it fail, and the cleanup looks again.  "Current" is never a stale read.
* A reader reads each chunk name once, and first their stats: only when their sizes add up to the stored
  size the envelope declares does it fetch them (:func:`decode`), so one version never costs a reader more
  than it declares, however many times its envelope lists a chunk.
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

from kazoo.exceptions import (
    BadVersionError,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    RolledBackError,
    RuntimeInconsistency,
)

from livedata.payload import (
    CHUNK_PREFIX,
    HISTORY_PREFIX,
    BadChunkError,
    ChunkNotAllowedError,
    Envelope,
    MissingChunkError,
    PayloadError,
    Stored,
    history_name,
    parse,
)

if TYPE_CHECKING:
    from kazoo.client import KazooClient

log = logging.getLogger("livedata.chunks")

READ_ATTEMPTS = 3  # envelopes re-read after a missing chunk before it counts as missing for good
PUBLISH_ATTEMPTS = 3  # publications retried after a concurrent cleanup removed one of our chunks
CLEANUP_ATTEMPTS = 3  # cleanups looked at again after the node moved on; what is left goes with the next write
_DELETES_PER_MULTI = 256  # chunk deletes per transaction (a few dozen bytes each, far below jute.maxbuffer)
_PIPELINE = 64  # chunk requests in flight at once
OFF_THE_HUB = 256 * 1024  # envelopes storing or decoding to more are decoded in gevent's thread pool (gevent clients)


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
            except NoAuthError:  # bad stored data for this reader, not a refusal of the node: a writer replaces it
                raise ChunkNotAllowedError(name) from None
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
        return _verify_and_inflate(client, envelope, [], max_size), envelope
    sizes = chunk_sizes(client, path, envelope.distinct_chunks)
    envelope.check_chunk_sizes(sizes)
    found = read_chunks(client, path, envelope, sizes)
    return _verify_and_inflate(client, envelope, [found[name] for name in envelope.chunk_names], max_size), envelope


def _verify_and_inflate(client: KazooClient, envelope: Envelope, chunks: list[bytes], max_size: int) -> bytes:
    """:meth:`Envelope.decode`, in gevent's thread pool when the client runs on gevent and the data is large.

    The decoded size counts, not only the stored one: 64 KB of zlib can inflate to 64 MiB, a second of CPU
    that, run in a greenlet, would stop the hub (kazoo's pings, every other watch) for all that time.
    """
    if max(envelope.stored_size, envelope.size) > OFF_THE_HUB and _on_gevent(client):
        import gevent

        data: bytes = gevent.get_hub().threadpool.apply(envelope.decode, (chunks, max_size))
        return data
    return envelope.decode(chunks, max_size)


def _on_gevent(client: KazooClient) -> bool:
    handler = type(client.handler)
    return any(cls.__module__ == "kazoo.handlers.gevent" for cls in handler.__mro__)


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
    """Create the chunks that do not exist yet, with the node's ACL; returns the names this call created.

    Chunks that exist already are reused with the node's ACL as it is now (see :func:`align_acls`).
    """
    if not chunks:
        return []
    acl, _ = client.get_acls(path)
    created = []
    reused = []
    names = list(chunks)
    for first in range(0, len(names), _PIPELINE):
        batch = names[first : first + _PIPELINE]
        pending = [client.create_async(chunk_path(path, name), chunks[name], acl=acl) for name in batch]
        for name, result in zip(batch, pending):
            try:
                result.get()
                created.append(name)
            except NodeExistsError:
                reused.append(name)  # same name, same bytes: reuse it
    align_acls(client, path, reused, acl)
    return created


def align_acls(client: KazooClient, path: str, names: Sequence[str], acl: list[Any]) -> list[str]:
    """Give these existing chunks exactly ``acl`` (the node's) where theirs differs; returns the names changed.

    A reused chunk keeps the ACL it was created with, which the node may have changed since: widened (a
    reader granted later gets ``NoAuthError`` on the chunk for good) or tightened (the old readers could
    still read it).  A chunk gone meanwhile is skipped: the publication's check recreates it.
    """
    changed: list[str] = []
    for first in range(0, len(names), _PIPELINE):
        batch = names[first : first + _PIPELINE]
        pending = [client.get_acls_async(chunk_path(path, name)) for name in batch]
        differing = []
        for name, result in zip(batch, pending):
            try:
                if list(result.get()[0]) != list(acl):
                    differing.append(name)
            except NoNodeError:
                pass
        updates = [client.set_acls_async(chunk_path(path, name), acl) for name in differing]
        for name, result in zip(differing, updates):
            try:
                result.get()
                changed.append(name)
            except NoNodeError:
                pass
    if changed:
        log.debug("%s: set the node's ACL on %d reused chunks", path, len(changed))
    return changed


def publish(
    client: KazooClient, path: str, stored: Stored, expected_version: int, history: Stored | None = None,
    replace_entry: bool = False,
) -> tuple[int, list[str]]:
    """Write the chunks, then the envelope as a compare-and-set that also checks every chunk exists.

    With ``history`` (the version's record, an envelope), the same transaction creates the history child of the
    version it produces (``expected_version + 1``; ``replace_entry``: a stale child of that name is deleted
    first), so a kept version exists exactly when the write did.  Returns the new version and the chunks this
    call created.  Raises kazoo's ``BadVersionError`` when the node moved on, and whatever else ZooKeeper
    refused, after removing the chunks we created that nobody uses.
    """
    created: list[str] = []
    chunks = {**stored.chunks, **(history.chunks if history is not None else {})}
    acl = client.get_acls(path)[0] if history is not None else None
    for _ in range(PUBLISH_ATTEMPTS):
        created += write_chunks(client, path, chunks)
        transaction = client.transaction()
        for name in sorted(chunks):
            transaction.check(chunk_path(path, name), 0)  # chunks are never set, so always at version 0
        transaction.set_data(path, stored.node_data, expected_version)
        written = len(chunks)  # the set_data's index in the results
        if history is not None:
            entry = chunk_path(path, history_name(expected_version + 1))
            if replace_entry:
                transaction.delete(entry)
            transaction.create(entry, history.node_data, acl=acl)
        results = transaction.commit()
        cause, index = _first_failure(results)
        if cause is None:
            return int(results[written].version), sorted(set(created))
        if isinstance(cause, NoNodeError) and index < written:
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


def history_references(client: KazooClient, path: str, children: Sequence[str]) -> set[str] | None:
    """The chunk names the kept versions (history children) list; ``None`` when one does not parse.

    A kept version trimmed meanwhile lists nothing any more: trimming only ever drops references.
    """
    entries = [name for name in children if name.startswith(HISTORY_PREFIX)]
    referenced: set[str] = set()
    for first in range(0, len(entries), _PIPELINE):
        batch = entries[first : first + _PIPELINE]
        pending = [client.get_async(chunk_path(path, name)) for name in batch]
        for result in pending:
            try:
                envelope = parse(result.get()[0] or b"")
            except NoNodeError:
                continue
            except PayloadError:
                return None
            if envelope is not None:
                referenced.update(envelope.chunk_names)
    return referenced


def remove_unreferenced(client: KazooClient, path: str) -> list[str]:
    """After a successful write: delete every chunk child that the node's current envelope does not list."""
    return _remove_unlisted(client, path, None)


def remove_orphans(client: KazooClient, path: str, created: Iterable[str]) -> list[str]:
    """After a failed write: delete the chunks we created, except those the node's current envelope uses."""
    created = set(created)
    if not created:
        return []
    return _remove_unlisted(client, path, created)


def _remove_unlisted(client: KazooClient, path: str, only: set[str] | None) -> list[str]:
    """Delete the chunk children (of ``only``, if given) that the node's envelope does not list, each multi
    checking the node is still at the version that envelope was read at; looked at again when it moved on.

    Chunks a kept version (a history child) lists count as listed: a version kept for rollback keeps its
    chunks.  A kept version is only ever created in the transaction that moves the node to a new version, so
    the version check covers it too.  Nothing is removed while the node (or a kept version) holds data that
    does not parse (it may list chunks in a form this version cannot read), nor once the node is gone (its
    chunks went with it).
    """
    removed: list[str] = []
    for _ in range(CLEANUP_ATTEMPTS):
        try:
            data, stat = client.get(path)
            children = client.get_children(path)
            kept = history_references(client, path, children)
        except NoNodeError:
            return removed
        names = [name for name in children if name.startswith(CHUNK_PREFIX)]
        try:
            envelope = parse(data or b"")
        except PayloadError as e:
            log.debug("%s: leaving its chunks alone: its data does not parse (%s)", path, e)
            return removed
        if kept is None:
            log.debug("%s: leaving its chunks alone: a kept version does not parse", path)
            return removed
        listed = set(envelope.chunk_names) if envelope is not None else set()
        listed |= kept
        doomed = [name for name in names if name not in listed and (only is None or name in only)]
        if _delete_at_version(client, path, doomed, int(stat.version), removed):
            return removed
        log.debug("%s: moved on during the cleanup of its chunks; looking again", path)
    log.debug("%s: still moving; leaving what is left of its old chunks to the next write", path)
    return removed


def _delete_at_version(client: KazooClient, path: str, names: list[str], version: int, removed: list[str]) -> bool:
    """Delete ``names`` in multis that check ``path`` is at ``version``; False if one failed for a change."""
    for first in range(0, len(names), _DELETES_PER_MULTI):
        batch = names[first : first + _DELETES_PER_MULTI]
        transaction = client.transaction()
        transaction.check(path, version)
        for name in batch:
            transaction.delete(chunk_path(path, name))
        cause, _ = _first_failure(transaction.commit())
        if isinstance(cause, (BadVersionError, NoNodeError)):
            return False  # a new version was published, or a chunk (or the node) went meanwhile
        if cause is not None:
            raise cause
        removed += batch
    return True
