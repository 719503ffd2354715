"""Earlier versions of a node, kept in ZooKeeper beside it for ``--history``, ``--version K`` and ``--rollback``.

Each write through ``livedata-write`` (with ``writer.history`` above 0) creates, in the same transaction as
its compare-and-set, a child of the node named ``.livedata-history-<version>`` (:func:`livedata.payload.
history_name`; the version the write produced, 10 digits), holding that version's envelope with who, when and
why in its header (:mod:`livedata.provenance`).  Why children of the node, as chunks are:

* They carry the node's ACL and go with the node; nothing outside the node's own subtree is touched.
* Watchers read the node's data only, and trees skip every child named ``.livedata-*``: a kept version never
  reaches a file or a tree's directory.
* An envelope lists chunks by content, and chunks are the node's children: a kept version shares every chunk it
  has in common with the current one (or with other kept versions), and chunk cleanup keeps every chunk a kept
  version lists (:func:`livedata.chunks.history_references`).
* Exactly one version exists per successful compare-and-set, so racing writers leave a consistent history.

Trimming (oldest first, beyond ``keep``) happens after the write; a trimmed version's chunks go with the next
chunk cleanup, which the writer runs right after.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kazoo.exceptions import NoNodeError

from livedata.chunks import chunk_path, decode
from livedata.payload import Envelope, PayloadError, history_version, parse
from livedata.provenance import Provenance

if TYPE_CHECKING:
    from kazoo.client import KazooClient

log = logging.getLogger("livedata.history")

DEFAULT_KEEP = 10
_PIPELINE = 64


class VersionNotKeptError(LookupError):
    def __init__(self, path: str, version: int, kept: Sequence[int]) -> None:
        what = ", ".join(str(v) for v in kept) if kept else "none"
        super().__init__(f"version {version} of {path} is not kept (kept versions: {what})")


@dataclass(frozen=True)
class Entry:
    """One kept version: the znode version it was, its stored bytes and, when they parse, their envelope."""

    version: int
    node_data: bytes
    envelope: Envelope | None
    problem: str = ""

    @property
    def provenance(self) -> Provenance | None:
        return Provenance.of(self.envelope)


def entry_names(client: KazooClient, path: str) -> dict[int, str]:
    """version -> child name of every kept version of ``path``."""
    names: dict[int, str] = {}
    for name in client.get_children(path):
        version = history_version(name)
        if version is not None:
            names[version] = name
    return names


LIST_LIMIT = 100  # kept versions --history reads at most: anyone with CREATE on the node can plant thousands


def entries(client: KazooClient, path: str, newest: int = LIST_LIMIT) -> tuple[list[Entry], int]:
    """The newest ``newest`` kept versions, newest first (reads pipelined; one trimmed meanwhile is left out),
    and how many older ones were not read: each may hold up to a node's size, so a node with thousands of
    planted history children must not cost a writer or ``--history`` gigabytes."""
    names = entry_names(client, path)
    chosen = sorted(names, reverse=True)[: max(newest, 0)]
    found = entries_at(client, path, {version: names[version] for version in chosen})
    return sorted(found, key=lambda e: e.version, reverse=True), len(names) - len(chosen)


def read_version(client: KazooClient, path: str, version: int, max_size: int) -> bytes:
    """The decoded bytes of kept version ``version`` (its chunks read from the node, each verified)."""
    return read_entry(client, path, version, max_size)[0]


def read_entry(client: KazooClient, path: str, version: int, max_size: int) -> tuple[bytes, Envelope]:
    """Kept version ``version``: its decoded bytes and its envelope (whose record a rollback must verify first:
    anyone with ZooKeeper rights on the node can create or replace its history children)."""
    names = entry_names(client, path)
    if version not in names:
        raise VersionNotKeptError(path, version, sorted(names, reverse=True))
    data, _ = client.get(chunk_path(path, names[version]))
    decoded, envelope = decode(client, path, data or b"", max_size)
    if envelope is None:
        raise PayloadError(f"kept version {version} is not an envelope")
    return decoded, envelope


def trim(client: KazooClient, path: str, keep: int) -> list[int]:
    """Delete the kept versions beyond the newest ``keep``; returns the versions deleted (their chunks may be
    unused now: the caller's chunk cleanup reads what is still kept and removes what nothing lists).

    The doomed versions are deleted unread: there may be thousands (planted by anyone with CREATE on the
    node), each up to a node's size. Another writer trimming at the same time is harmless: a version already
    gone is skipped.
    """
    names = entry_names(client, path)
    doomed = sorted(names, reverse=True)[keep:]
    deleted = []
    for first in range(0, len(doomed), _PIPELINE):
        pending = [(version, client.delete_async(chunk_path(path, names[version])))
                   for version in doomed[first : first + _PIPELINE]]  # fmt: skip
        for version, result in pending:
            try:
                result.get()
                deleted.append(version)
            except NoNodeError:
                pass
    log.debug("%s: trimmed %d kept versions", path, len(deleted))
    return deleted


def entries_at(client: KazooClient, path: str, names: dict[int, str]) -> list[Entry]:
    """The kept versions named (version -> child name), read in one pipelined pass."""
    found: list[Entry] = []
    items = list(names.items())
    for first in range(0, len(items), _PIPELINE):
        batch = items[first : first + _PIPELINE]
        pending = [(version, client.get_async(chunk_path(path, name))) for version, name in batch]
        for version, result in pending:
            try:
                data = result.get()[0] or b""
            except NoNodeError:
                continue  # trimmed meanwhile
            try:
                envelope = parse(data)
                problem = "" if envelope is not None else "not an envelope"
            except PayloadError as e:
                envelope, problem = None, str(e)
            found.append(Entry(version, data, envelope, problem))
    return found
