"""The writer: push a file's contents into an existing znode, showing what changes and never racing blind.

It is built for CI jobs and humans alike, so it errs on the side of refusing:
the node must already exist (its ACLs are a deliberate act, not a side
effect of a push), the write is a compare-and-set against the version the
diff was computed from (so the diff shown is exactly the change made), and
inputs that are almost certainly mistakes (broken JSON, an empty file over
real data, more bytes than ZooKeeper accepts) are stopped before anything is
sent.  Every expected failure is one line on stderr, so a CI log says what
went wrong without a traceback to dig through.

``main`` is the command-line face and gevent-patches the process; the other
functions are plain and take a started client, so tests (and other tools)
can drive each step against a real server.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, BinaryIO, TextIO

# Only exception classes: importing them opens no socket and starts no thread, so it is safe before gevent patches.
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NoNodeError,
    SessionExpiredError,
)

from livedata.cli import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    ArgumentParser,
    CommandError,
    add_common_arguments,
    argument,
    fail,
    log_level,
    program_name,
    setup_logging,
)
from livedata.config import (
    ConfigError,
    ConfigNamespace,
    Optional,
    RawConfig,
    byte_size,
    check_known_keys,
    integer,
    one_of,
    parse_config,
    read_config,
    register,
    source_of,
    string,
    znode_path,
)
from livedata.logs import silence_kazoo
from livedata.payload import (
    DEFAULT_MAX_PAYLOAD_SIZE,
    MODES,
    Envelope,
    PayloadError,
    PayloadTooLargeError,
    Stored,
    encode,
    restamp,
)
from livedata.payload import parse as parse_payload
from livedata.provenance import (
    AUTHOR_VARIABLE,
    MAX_MESSAGE,
    Provenance,
    default_author,
    next_sequence,
    now_utc,
    real_path,
)
from livedata.textdiff import unified_diff

if TYPE_CHECKING:
    import argparse

    from kazoo.client import KazooClient

    from livedata.signing import Signer

PROG = "livedata.writer"  # the name under ``python -m``; the console script is named as the user typed it
WRITER_KEYS = ("zookeeper.", "secrets.", "writer.")  # the keys the writer reads (and so expands $VARs in)
STDIN = "-"
STDIN_LABEL = "<stdin>"

# Connecting may take one full pass over the hosts (kazoo gives each host its share of the session timeout)
# plus a reconnect backoff; twice the session timeout covers that without hanging a CI job on a dead ensemble.
CONNECT_TIMEOUT_FACTOR = 2.0

READ_CHUNK = 1024 * 1024
_TRANSACTION_MARGIN = 16 * 1024  # room in one transaction for the checks of its chunks, paths and headers
DEFAULT_DIFF_LINES = 200  # a 1 MB text would otherwise print thousands of lines into a CI log
DEFAULT_DIFF_BYTES = 64 * 1024  # and one changed line of a one-line 5 MiB JSON would print 10 MB
FORMATS = ("auto", "json", "raw")  # auto: json for a SOURCE named *.json, raw otherwise
NOTHING_WRITTEN = "nothing written"

NO_CHANGES = "No changes detected. Not writing."
WROTE = "Wrote data to ZooKeeper."
DRY_RUN = "Dry run: not writing."
DRY_RUN_START = "Dry run: showing what writing {label} to ZooKeeper {path} would change..."

log = logging.getLogger("livedata.writer")  # not __name__, which is "__main__" under python -m

# The writer's own keys; it reads only these (and zookeeper.*), so it can share a file with other programs.
WRITER_SPEC = register({
    "writer": {
        "compress": Optional(one_of(*MODES), "auto"),
        "max_payload_size": Optional(byte_size, DEFAULT_MAX_PAYLOAD_SIZE),
        "history": Optional(integer, 10),
        "signing_key": Optional(string),
    }
})  # fmt: skip


class WriterError(CommandError):
    """An expected reason for the writer to stop without writing; its message is the whole report."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_FAILURE)


class UnsignedVersionError(WriterError):
    """A signing writer re-signs only a kept version its own key signed for this node: a history child is
    writable by anyone with ZooKeeper rights on the node, and signing its bytes would launder a forgery."""

    def __init__(self, path: str, version: int) -> None:
        super().__init__(
            f"kept version {version} of {path} is not signed by this writer's key for this node (planted by "
            f"someone with ZooKeeper rights, or written before signing or by another key): review it "
            f"(livedata-read --version {version}) and write it as a new version; nothing written"
        )


class SourceUnreadableError(WriterError):
    def __init__(self, source: str, reason: object) -> None:
        super().__init__(f"cannot read {source}: {reason}; nothing written")


class InvalidJSONError(WriterError):
    """The source is JSON (named ``*.json``, or ``--format json``) but would break every reader that parses it."""

    def __init__(self, label: str, problem: str) -> None:
        super().__init__(f"{label} is not valid JSON: {problem}; nothing written (--format raw skips this check)")


class TooLargeError(WriterError):
    def __init__(self, label: str, size: int | None, limit: int) -> None:
        """``size`` None: more than ``limit`` (standard input is not read further than that)."""
        amount = f"more than {limit}" if size is None else str(size)
        super().__init__(
            f"{label} is {amount} bytes but a node holds at most {limit} bytes (zookeeper.max_node_size); "
            "nothing written"
        )


class PayloadTooBigError(WriterError):
    """Over ``writer.max_payload_size``: every host would have to hold and inflate it, so stop here."""

    def __init__(self, label: str, size: int | None, limit: int) -> None:
        """``size`` None: more than ``limit`` (standard input is not read further than that)."""
        amount = f"more than {limit:,}" if size is None else f"{size:,}"
        super().__init__(
            f"{label} is {amount} bytes, above writer.max_payload_size ({limit:,} bytes); nothing written"
        )


class UnstorableError(WriterError):
    def __init__(self, label: str, reason: object) -> None:
        super().__init__(f"cannot store {label}: {reason}; nothing written")


class EmptyInputError(WriterError):
    """An empty source is far more often a failed build step than a wish to erase the node."""

    def __init__(self, label: str, path: str, current_size: int) -> None:
        super().__init__(
            f"{label} is empty and would erase the {current_size} bytes in {path}; nothing written "
            "(pass --allow-empty if that is what you want)"
        )


class NodeMissingError(WriterError):
    def __init__(self, path: str) -> None:
        super().__init__(
            f"{path} does not exist in ZooKeeper and the writer never creates nodes: "
            "create it first, with the ACLs it should have, then run again"
        )


class NotAllowedError(WriterError):
    def __init__(self, action: str, path: str, outcome: str = NOTHING_WRITTEN) -> None:
        super().__init__(
            f"ZooKeeper does not allow us to {action} {path}: check zookeeper.credentials and the node's ACL"
            + (f"; {outcome}" if outcome else "")
        )


class NodeChangedError(WriterError):
    """Someone wrote the node after we read it: our diff no longer describes what we would do."""

    def __init__(self, path: str, expected_version: int) -> None:
        super().__init__(
            f"{path} changed underneath us (it is no longer at version {expected_version}, the one we read); "
            "nothing written: run again to review the new difference"
        )


class ConnectionFailedError(WriterError):
    """No usable session: the writer gives up rather than wait, since a CI job needs an answer, not a hang."""


# --- the steps ------------------------------------------------------------------------------------


def source_label(source: str) -> str:
    """How the source is named in messages and in the diff header."""
    return STDIN_LABEL if source == STDIN else source


def read_source(source: str, limit: int | None = None, payload_limit: bool = False) -> bytes:
    """All bytes of the file (or standard input for ``-``), exactly as they will be stored.

    With ``limit``, at most ``limit + 1`` bytes are read: more than the limit
    is refused as soon as it is seen, so a runaway pipe costs no more memory
    than one node's worth.
    """
    label = source_label(source)
    try:
        if source == STDIN:
            data = _read_at_most(sys.stdin.buffer, limit)
            size = None
        else:
            with open(source, "rb") as f:
                data = _read_at_most(f, limit)
                size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise SourceUnreadableError(label, e.strerror or e) from None
    if limit is not None and len(data) > limit:
        error = PayloadTooBigError if payload_limit else TooLargeError  # which setting the limit comes from
        raise error(label, size if size is not None and size > limit else None, limit)
    return data


def _read_at_most(stream: BinaryIO, limit: int | None) -> bytes:
    if limit is None:
        return stream.read()
    chunks = []
    remaining = limit + 1
    while remaining > 0:
        chunk = stream.read(min(remaining, READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def wants_json_validation(source: str, data_format: str = "auto") -> bool:
    """Whether SOURCE is JSON: ``--format json`` says so, ``auto`` trusts a ``.json`` name (standard input has none)."""
    if data_format != "auto":
        return data_format == "json"
    return source != STDIN and source.lower().endswith(".json")


def validate_json(label: str, data: bytes) -> None:
    """Refuse data that every JSON-parsing reader of the node would choke on."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidJSONError(label, f"not UTF-8 text (byte {e.start})") from None
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidJSONError(label, f"{e.msg} at line {e.lineno}, column {e.colno}") from None


def check_size(label: str, data: bytes, limit: int) -> None:
    """Refuse here rather than let the server drop the connection mid-request (its only answer to oversize data)."""
    if len(data) > limit:
        raise TooLargeError(label, len(data), limit)


def stored_form(label: str, data: bytes, mode: str, max_node_size: int, enveloped: bool = False) -> Stored:
    """How the data will be stored for ``mode``, decided before connecting; ``never`` keeps today's refusal.

    ``enveloped``: always an envelope (signed writes), even for data that would fit plain.
    """
    if mode == "never":
        check_size(label, data, max_node_size)
    try:
        return encode(data, mode, max_node_size, enveloped)
    except PayloadTooLargeError as e:
        raise UnstorableError(label, f"{e} (zookeeper.max_node_size)") from None
    except PayloadError as e:
        raise UnstorableError(label, e) from None


def describe_stored(stored: Stored) -> str:
    """The output line for an envelope, e.g. ``stored as zlib, 4,812,331 -> 612,004 bytes in 1 chunk``."""
    assert stored.envelope is not None
    count = len(stored.envelope.chunk_names)
    where = "in the node" if count == 0 else f"in {count} chunk{'' if count == 1 else 's'}"
    return f"stored as {stored.codec}, {stored.envelope.size:,} -> {stored.stored_size:,} bytes {where}"


def _terminated(line: str) -> str:
    """A diff line always ends a line of output; a last line without newline is flagged the way patch tools do."""
    return line if line.endswith("\n") else f"{line}\n\\ No newline at end of file\n"


def render_diff(
    old: bytes, new: bytes, old_label: str, new_label: str, max_lines: int | None = None,
    max_bytes: int | None = None, as_json: bool = False,
) -> str:
    """A unified diff of two texts, or a one-line size summary when either side is not UTF-8 text.

    ``max_lines`` and ``max_bytes`` cap the diff's output; what is cut is summarised in one line (lines
    added and removed in all), so a big change stays readable and a CI log stays small. With ``as_json``,
    a line diff that does not fit is replaced by the changes by path (:mod:`livedata.jsondiff`) when both
    sides parse: one changed value in a document written on one line is then one short line, not two
    lines of megabytes.
    """
    try:
        old_text, new_text = old.decode("utf-8"), new.decode("utf-8")
    except UnicodeDecodeError:
        return f"Binary data: {old_label} is {len(old)} bytes, {new_label} is {len(new)} bytes.\n"
    lines = (_terminated(line) for line in unified_diff(old_text, new_text, old_label, new_label))
    shown, cut = _capped(lines, max_lines, max_bytes)
    if cut is None:
        return "".join(shown)
    if as_json:
        changes = _json_changes(old_text, new_text, old_label, new_label, cut, max_lines, max_bytes)
        if changes is not None:
            return changes
    return "".join(shown) + cut.summary("lines")


@dataclass
class _Cut:
    """What a capped output left out, for its one summary line."""

    shown_lines: int = 0
    shown_bytes: int = 0
    lines: int = 0
    size: int = 0
    added: int = 0
    removed: int = 0
    by_bytes: bool = False

    def summary(self, unit: str) -> str:
        more = "--diff-bytes N" if self.by_bytes else "--diff-lines N"
        where = (
            f"{self.shown_bytes:,} of {self.size:,} bytes ({self.lines:,} {unit})" if self.by_bytes
            else f"{self.shown_lines} of {self.lines} {unit}"
        )  # fmt: skip
        counts = f": {self.added} lines added, {self.removed} removed in all" if unit == "lines" else ""
        return f"... diff cut after {where}{counts} (--full-diff shows everything, {more} more)\n"


def _capped(
    lines: Iterable[str], max_lines: int | None, max_bytes: int | None, header: int = 2
) -> tuple[list[str], _Cut | None]:
    """The lines that fit both caps (a line too long for the bytes left is cut), and what was left out.

    The lines left out are still counted, not kept: a capped diff costs no more memory than what it shows.
    """
    shown: list[str] = []
    cut = _Cut()
    full = True
    for number, line in enumerate(lines):
        size = len(line.encode("utf-8"))
        cut.lines += 1
        cut.size += size
        if number >= header:  # past the ---/+++ header
            cut.added += line.startswith("+")
            cut.removed += line.startswith("-")
        if not full:
            continue
        if max_lines is not None and len(shown) >= max_lines:
            full = False
        elif max_bytes is not None and cut.shown_bytes + size > max_bytes:
            full, cut.by_bytes = False, True
            room = max_bytes - cut.shown_bytes
            if room > 1:  # the start of the line, whole characters only, and the newline the cut took
                shown.append(line.encode("utf-8")[: room - 1].decode("utf-8", "ignore") + "\n")
                cut.shown_bytes += len(shown[-1].encode("utf-8"))
        else:
            shown.append(line)
            cut.shown_bytes += size
    cut.shown_lines = len(shown)
    return shown, None if full else cut


def _json_changes(
    old_text: str, new_text: str, old_label: str, new_label: str, line_diff: _Cut, max_lines: int | None,
    max_bytes: int | None,
) -> str | None:
    """The changes by path as JSON Patch operations, one per line, capped like the line diff; None if not JSON."""
    from livedata.jsondiff import operations

    try:
        old_value, new_value = json.loads(old_text), json.loads(new_text)
    except ValueError:
        return None
    header = (
        f"--- {old_label}\n+++ {new_label}\n"
        f"JSON changes by path (RFC 6902 JSON Patch, one operation per line; a test names the value replaced), "
        f"as the line diff would be {line_diff.size:,} bytes:\n"
    )
    lines = (json.dumps(operation, ensure_ascii=False) + "\n" for operation in operations(old_value, new_value))
    shown, cut = _capped(lines, max_lines, max_bytes, header=0)
    if not shown and cut is None:
        return header + "(none: the JSON value is the same; only its text changes, such as spacing or key order)\n"
    return header + "".join(shown) + ("" if cut is None else cut.summary("operations"))


@contextmanager
def _zookeeper_errors(action: str, path: str, outcome: str = NOTHING_WRITTEN) -> Iterator[None]:
    """Turn what ZooKeeper can answer to one request into our one-line errors; ``outcome`` ends a refusal."""
    try:
        yield
    except NoNodeError:
        raise NodeMissingError(path) from None
    except NoAuthError:
        raise NotAllowedError(action, path, outcome) from None
    except (ConnectionLoss, SessionExpiredError, ConnectionClosedError):
        raise ConnectionFailedError(f"lost the connection to ZooKeeper while trying to {action} {path}") from None
    except KazooException as e:
        raise WriterError(f"ZooKeeper refused to {action} {path}: {type(e).__name__} {e}".strip()) from None


def read_node(client: KazooClient, path: str) -> tuple[bytes, int]:
    """The node's data and the version a compare-and-set must match; a node holding null reads as empty."""
    with _zookeeper_errors("read", path):
        data, stat = client.get(path)
    return data or b"", stat.version


def write_node(client: KazooClient, path: str, data: bytes, expected_version: int) -> int:
    """Set the node only if it is still at ``expected_version``; returns the new version.

    Not retried on connection loss: a retry could find our own write already
    applied and misreport it as someone else's change, so we say plainly that
    the outcome is unknown instead.
    """
    with _zookeeper_errors("write", path):
        try:
            stat = client.set(path, data, version=expected_version)
        except BadVersionError:
            raise NodeChangedError(path, expected_version) from None
        except (ConnectionLoss, SessionExpiredError):
            raise ConnectionFailedError(
                f"lost the connection to ZooKeeper while writing {path}: the write may or may not have been "
                "applied; check the node before running again"
            ) from None
    version: int = stat.version
    return version


def _off_the_loop(function: Callable[..., str], *args: object) -> str:
    """Run CPU-heavy work (diffing megabytes) in a native thread when gevent runs the process.

    Run on the gevent loop it would starve kazoo's heartbeats and cost the session before our write.
    """
    from livedata.zookeeper import gevent_is_active

    if not gevent_is_active():
        return function(*args)
    import gevent

    result: str = gevent.get_hub().threadpool.apply(function, args)
    return result


@dataclass(frozen=True)
class Current:
    """The node as it is: its stored bytes and version, and the data they decode to (``None`` if they do not)."""

    node_data: bytes
    version: int
    data: bytes | None
    problem: str = ""


def read_current(client: KazooClient, path: str, max_size: int) -> Current:
    """The node decoded as every reader sees it, so the diff and the identical check speak of the data itself.

    Undecodable stored data is not an error here: replacing it is how an operator repairs the node.
    """
    from livedata.chunks import read_decoded

    with _zookeeper_errors("read", path):
        try:
            decoded = read_decoded(client, path, max_size)
        except PayloadError as e:
            node_data, version = read_node(client, path)
            return Current(node_data, version, None, str(e))
    return Current(decoded.node_data, decoded.stat.version, decoded.data)


def store(
    client: KazooClient, path: str, stored: Stored, current: Current, history: Stored | None = None,
    replace_entry: bool = False, keep: int | None = None,
) -> int:
    """Compare-and-set the stored form (chunks first, and the kept version in the same transaction), trim the
    kept versions to ``keep`` (``None``: leave them), then remove chunks nothing refers to any more."""
    from kazoo.exceptions import BadVersionError as ChunkedBadVersion

    from livedata import chunks

    if not stored.chunks and history is None:
        new_version = write_node(client, path, stored.node_data, current.version)
    else:
        with _zookeeper_errors("write chunks of", path), _history_rights(path, history is not None):
            try:
                new_version, created = chunks.publish(client, path, stored, current.version, history, replace_entry)
            except ChunkedBadVersion:
                raise NodeChangedError(path, current.version) from None
            except chunks.ChunkVanishedError as e:
                raise WriterError(f"{e}; nothing written") from None
            except (ConnectionLoss, SessionExpiredError):
                raise ConnectionFailedError(
                    f"lost the connection to ZooKeeper while writing {path}: the write may or may not have been "
                    "applied; check the node (tools/read_node --stat) before running again"
                ) from None
        log.debug("%s: created %d chunks", path, len(created))
    trimmed_chunks = keep is not None and _trim_history(client, path, keep)
    if stored.chunks or current.data is None or _had_chunks(current.node_data) or trimmed_chunks:
        _remove_old_chunks(client, path, stored)
    return new_version


@contextmanager
def _history_rights(path: str, keeping: bool) -> Iterator[None]:
    """Keeping a version creates a child of the node: say which rights that takes, and how to do without."""
    try:
        yield
    except NoAuthError:
        if not keeping:
            raise
        raise NotAllowedError(
            "write", path, "keeping its versions (writer.history) takes the CREATE and DELETE rights on the node "
            "besides WRITE: grant them, or set writer.history = 0; nothing written",
        ) from None


def _had_chunks(node_data: bytes) -> bool:
    """Whether the data just replaced listed chunks (orphans of a dead writer go with the next chunked write)."""
    envelope = parse_payload(node_data)
    return envelope is not None and envelope.chunked


def _remove_old_chunks(client: KazooClient, path: str, stored: Stored) -> None:
    """The new data is in place: failing to clean up is worth a warning, never a failed run."""
    from livedata.chunks import remove_unreferenced

    try:
        removed = remove_unreferenced(client, path)
    except KazooException as e:
        log.warning("%s: written, but old chunks could not be removed: %s %s", path, type(e).__name__, e)
        return
    log.debug("%s: removed %d old chunks", path, len(removed))


@dataclass(frozen=True)
class Stamp:
    """What a write records besides the data: who and why, how many versions to keep, the key that signs it.

    ``push`` without a stamp writes the data only (the library's behaviour before provenance existed).
    """

    author: str
    message: str = ""
    keep: int = 10  # writer.history: kept versions, 0 for none
    signer: Signer | None = None
    max_node_size: int = 1047552


@dataclass(frozen=True)
class Stamped:
    """A write's stored form with its record in the header, and the version the history keeps of it."""

    stored: Stored
    history: Stored | None
    replace_entry: bool
    record: Provenance


def stamp_write(client: KazooClient, path: str, data: bytes, stored: Stored, current: Current, stamp: Stamp) -> Stamped:
    """The header record of this write: its sequence comes from what the node and its kept versions hold now.

    The sequence is one above the highest the current data and the kept versions carry, and at least the znode
    version the compare-and-set produces (:func:`livedata.provenance.next_sequence`).  A signing writer counts
    only the versions its own key signed for this node: a header anyone with ZooKeeper rights planted must not
    choose the sequence the key signs (a huge one would make later writes wrap past the bound and be refused).
    """
    from livedata import history

    with _zookeeper_errors("read the kept versions of", path):
        kept, _ = history.entries(client, path, newest=stamp.keep + 1)  # what a trim leaves, and this write's own
    try:
        current_envelope = parse_payload(current.node_data)
    except PayloadError:
        current_envelope = None
    new_version = current.version + 1
    signed_path = real_path(client.chroot, path)
    counted = [envelope for envelope in (current_envelope, *(entry.envelope for entry in kept))
               if envelope is not None and (stamp.signer is None or stamp.signer.signed(signed_path, envelope))]
    seq = next_sequence(None, counted, new_version)
    record = Provenance(stamp.author, now_utc(), stamp.message, signed_path, seq)
    envelope = stored.envelope if stored.envelope is not None else _plain_envelope(data, stamp.max_node_size)
    if stamp.signer is not None:
        record = replace(record, key=stamp.signer.public, sig=stamp.signer.sign(record.message_for(envelope)))
    stamped = restamp(stored, record.header(), stamp.max_node_size)
    entry = _kept_version(path, data, stamped, record, stamp) if stamp.keep > 0 else None
    replace_entry = any(entry_version == new_version for entry_version in (e.version for e in kept))
    return Stamped(stamped, entry, replace_entry, record)


def _kept_version(path: str, data: bytes, stamped: Stored, record: Provenance, stamp: Stamp) -> Stored | None:
    """The history child for this write: its envelope, small enough to share one transaction with the write.

    When the write's node data and an inline copy would not fit in one request together (``jute.maxbuffer``
    bounds a whole transaction), the kept version's body goes to chunks, created before the transaction like
    any chunk and shared by content with every other version that holds the same bytes.
    """
    try:
        source = stamped if stamped.envelope is not None else encode(data, "always", stamp.max_node_size, True)
        entry = restamp(source, record.header(), stamp.max_node_size)
        if len(entry.node_data) + len(stamped.node_data) > stamp.max_node_size - _TRANSACTION_MARGIN:
            entry = restamp(source, record.header(), stamp.max_node_size, chunked=True)
    except PayloadError as e:  # nodes too small for a header (a tiny zookeeper.max_node_size)
        log.warning("%s: this version is not kept: %s", path, e)
        return None
    return entry


def _plain_envelope(data: bytes, max_node_size: int) -> Envelope:
    """What a record says of plain data: its size and sha256 (nothing is encoded)."""
    return Envelope("identity", len(data), hashlib.sha256(data).hexdigest(), len(data), [])


def _same_form(current: Current, stored: Stored, stamp: Stamp | None, path: str) -> bool:
    """Whether the node already stores this data this way (its header's record aside): then nothing is written.

    A node that must be signed and is not (or not by this key, or not for this path) is not the same form.
    """
    if stored.envelope is None or stamp is None:
        return current.node_data == stored.node_data
    try:
        envelope = parse_payload(current.node_data)
    except PayloadError:
        return False
    if envelope is None:
        return False
    new = stored.envelope
    if (envelope.codec, envelope.chunk_names, envelope.inline) != (new.codec, new.chunk_names, new.inline):
        return False
    if stamp.signer is None:
        return True
    record = Provenance.of(envelope)
    return record is not None and record.key == stamp.signer.public and record.path == path


def _trim_history(client: KazooClient, path: str, keep: int) -> bool:
    """Keep the newest ``keep`` versions; True when some were trimmed (chunks they listed may be unused now)."""
    from livedata import history

    try:
        trimmed = history.trim(client, path, max(keep, 0))
    except KazooException as e:
        log.warning("%s: written, but old kept versions could not be removed: %s %s", path, type(e).__name__, e)
        return False
    return bool(trimmed)


def push(client: KazooClient, path: str, data: bytes, label: str, out: TextIO, *,
         allow_empty: bool = False, dry_run: bool = False, stored: Stored | None = None,
         max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE, diff_lines: int | None = None,
         diff_bytes: int | None = None, as_json: bool = False, stamp: Stamp | None = None) -> None:
    """Compare, show, and (unless ``dry_run``) compare-and-set: every refusal happens before the write.

    ``stored`` is the form chosen by :func:`stored_form` (plain data when not given); the comparison and the
    diff are made on decoded data, so how the node is stored never shows up as a change of its content.
    ``diff_lines``, ``diff_bytes`` and ``as_json`` shape the diff (see :func:`render_diff`).  ``stamp``
    records who, when and why in the header (and signs it), and keeps the version in the node's history.
    """
    if stored is None:
        stored = Stored(node_data=data, envelope=None, codec="plain", stored_size=len(data))
    current = read_current(client, path, max_payload_size)
    log.debug("read %s: %d bytes at version %d", path, len(current.node_data), current.version)
    if current.data == data and _same_form(current, stored, stamp, real_path(client.chroot, path)):
        print(NO_CHANGES, file=out)
        return
    old = current.data if current.data is not None else b""
    if not data and not allow_empty:
        raise EmptyInputError(label, path, len(current.data if current.data is not None else current.node_data))
    # A dry run says so first: a CI log read from the top must not suggest a write that never happens.
    start = DRY_RUN_START if dry_run else "Writing {label} to ZooKeeper {path}..."
    print(start.format(label=label, path=path), file=out)
    if current.data is None:
        print(f"The current data of {path} cannot be decoded ({current.problem}); replacing it.", file=out)
    if current.data == data:
        print("The data is the same; only the way it is stored changes.", file=out)
    else:
        out.write(_off_the_loop(
            render_diff, old, data, f"{path} (current)", f"{label} (new)", diff_lines, diff_bytes, as_json
        ))  # fmt: skip
    if dry_run:
        if stored.envelope is not None:
            print(f"would be {describe_stored(stored)}", file=out)
        print(DRY_RUN, file=out)
        return
    if stamp is None:
        new_version = store(client, path, stored, current)
    else:
        stamped = stamp_write(client, path, data, stored, current, stamp)
        stored = stamped.stored
        new_version = store(client, path, stored, current, stamped.history, stamped.replace_entry, stamp.keep)
    log.debug("wrote %s: version %d -> %d", path, current.version, new_version)
    if stored.envelope is not None:
        print(describe_stored(stored), file=out)
    if stamp is not None and stamp.signer is not None:
        print(f"signed with key {stamp.signer.public}, sequence {stamped.record.seq}", file=out)
    print(WROTE, file=out)


# --- connecting -----------------------------------------------------------------------------------


@contextmanager
def connected_client(
    config: RawConfig, settings: ConfigNamespace, outcome: str = NOTHING_WRITTEN
) -> Iterator[KazooClient]:
    """A started client for the block, stopped and closed afterwards whatever happens.

    Unlike the watcher, the writer gives up on an unreachable ensemble: a CI
    job should fail with a reason, not hang until its own timeout kills it.
    The first failed attempt is logged at once (a refused connection or a
    host name that does not resolve), so a wait is never silent; ``outcome``
    ends the one-line error ("nothing written" for the writer).
    """
    from livedata.secrets import secrets_store_from_config
    from livedata.zookeeper import CredentialsError, zookeeper_client_from_config

    then = f"; {outcome}" if outcome else ""
    try:
        client = zookeeper_client_from_config(secrets_store_from_config(config), config)
    except CredentialsError as e:
        raise WriterError(f"{e}{then}") from None
    except ValueError as e:  # kazoo's own parsing of the host list
        raise ConfigError(source_of(config), "zookeeper.hosts", str(e)) from None
    limit = CONNECT_TIMEOUT_FACTOR * settings.timeout
    try:
        with _failed_attempts_told(settings.hosts, limit) as attempts:
            try:
                client.start(timeout=limit)
            except client.handler.timeout_exception:
                last = f" (last attempt: {attempts.last})" if attempts.last else ""
                raise ConnectionFailedError(
                    f"could not connect to ZooKeeper at {settings.hosts} within {limit:g} seconds "
                    f"(twice zookeeper.timeout){last}{then}"
                ) from None
        log.debug("connected to ZooKeeper using %s", type(client.handler).__name__)
        yield client
    finally:
        client.stop()
        client.close()


class _Attempts:
    """What kazoo says of each connection attempt, heard through :data:`livedata.logs.NOISE` (as the watcher does)."""

    def __init__(self, hosts: str, limit: float) -> None:
        self.hosts = hosts
        self.limit = limit
        self.server = ""
        self.last = ""

    def attempting(self, server: str) -> None:
        self.server = server

    def failed(self, reason: str) -> None:
        from livedata.logs import kazoo_reason

        if reason.startswith("Cannot resolve"):  # no attempt was made: the server of the one before is not it
            self.server = ""
        text = kazoo_reason(reason)
        what = f"server {self.server}: {text}" if self.server else text[:1].lower() + text[1:]
        if not self.last:
            logging.getLogger("livedata.connection").warning(  # the watcher's connection messages' name
                "cannot reach ZooKeeper%s%s; still trying %s for up to %g seconds",
                " " if self.server else ": ", what, self.hosts, self.limit,
            )  # fmt: skip
        self.last = what


@contextmanager
def _failed_attempts_told(hosts: str, limit: float) -> Iterator[_Attempts]:
    """Listen to kazoo's attempts while connecting: the first failure is logged at once, the last one kept."""
    from livedata.logs import NOISE

    attempts = _Attempts(hosts, limit)
    saved = NOISE.on_attempt, NOISE.on_failure
    NOISE.on_attempt, NOISE.on_failure = attempts.attempting, attempts.failed
    try:
        yield attempts
    finally:
        NOISE.on_attempt, NOISE.on_failure = saved


# --- the command line -----------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str] | None, prog: str = PROG) -> argparse.Namespace:
    parser = ArgumentParser(
        prog=prog,
        description="Write a file's contents into an existing ZooKeeper node, showing the difference first.",
    )
    parser.add_argument("config", metavar="CONFIG", help="INI file with a [live-data] section (zookeeper.*, secrets.*)")
    parser.add_argument(
        "source", metavar="SOURCE", nargs="?", help="file whose bytes to write, or - for standard input"
    )
    parser.add_argument(
        "node", metavar="NODE", nargs="?", type=argument(znode_path), help="absolute path of an existing znode"
    )
    parser.add_argument("-m", "--message", default="", help="why: recorded with the write (and signed)")
    parser.add_argument("--author", help=f"who: recorded with the write (default: ${AUTHOR_VARIABLE}, else user@host)")
    parser.add_argument(
        "--rollback", metavar="NODE", type=argument(znode_path), help="write an earlier kept version of NODE again, "
        "as a new version (instead of SOURCE NODE); see --to",
    )  # fmt: skip
    parser.add_argument(
        "--to", metavar="K", type=argument(_version_number),
        help="with --rollback: the kept version to write again (default: the one before the current version)",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="show the difference but write nothing")
    data_format = parser.add_mutually_exclusive_group()
    data_format.add_argument(
        "--format", choices=FORMATS, default="auto", help="json: SOURCE must parse as JSON (checked before "
        "connecting), and a diff too long for the caps shows the changes by JSON path; raw: any bytes; "
        "auto (default): json for a SOURCE named *.json, raw otherwise (standard input included)",
    )  # fmt: skip
    data_format.add_argument(
        "--no-validate", dest="format", action="store_const", const="raw", help="same as --format raw"
    )
    parser.add_argument("--allow-empty", action="store_true", help="allow empty input to replace non-empty data")
    parser.add_argument(
        "--compress", choices=MODES, help="auto: compress (and chunk) only what does not fit in one node; always: "
        "whenever smaller; never: store as is (default: writer.compress, else auto)",
    )
    diff = parser.add_mutually_exclusive_group()
    diff.add_argument(
        "--diff-lines", type=_positive, default=DEFAULT_DIFF_LINES, metavar="N",
        help=f"show at most N lines of diff, then a summary (default {DEFAULT_DIFF_LINES})",
    )  # fmt: skip
    diff.add_argument("--full-diff", action="store_true", help="show the whole diff, however long")
    parser.add_argument(
        "--diff-bytes", type=argument(_positive_size), metavar="BYTES",
        help=f"show at most BYTES of diff, then a summary (default {DEFAULT_DIFF_BYTES // 1024} KiB)",
    )  # fmt: skip
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.full_diff and args.diff_bytes is not None:
        parser.error("argument --diff-bytes: not allowed with argument --full-diff")
    if args.rollback is not None and args.source is not None:
        parser.error("argument --rollback: takes the node itself; give no SOURCE or NODE with it")
    if args.rollback is None and args.node is None:
        parser.error("the following arguments are required: SOURCE, NODE" if args.source is None
                     else "the following arguments are required: NODE")  # fmt: skip
    if args.to is not None and args.rollback is None:
        parser.error("argument --to: only with --rollback")
    if len(args.message) > MAX_MESSAGE:
        parser.error(f"argument -m/--message: at most {MAX_MESSAGE} characters (it is {len(args.message)})")
    return args


def _version_number(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a version number")
    return int(text)


def _positive(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of lines")
    return int(text)


def _positive_size(text: str) -> int:
    size = byte_size(text)
    if size < 1:
        raise ValueError(f"{text.strip()!r} is not a positive size")
    return size


def load_signer(config: RawConfig, name: str, mode: str) -> Signer:
    """The private key named by ``writer.signing_key``, checked before connecting.

    No ``cryptography`` package, or ``--compress never`` (plain data has no header to carry a signature): a
    configuration problem, exit 2.  A missing or malformed secret: exit 1, like a credential.
    """
    from livedata.secrets import SecretsError, secrets_store_from_config
    from livedata.signing import KeyFormatError, Signer, SigningUnavailable, decode_key, require_library

    source = source_of(config)
    try:
        require_library()
    except SigningUnavailable as e:
        raise ConfigError(source, "writer.signing_key", str(e)) from None
    if mode == "never":
        raise ConfigError(source, "writer.signing_key", "signed data is stored as an envelope, which --compress "
                          "never (or writer.compress = never) refuses: use auto or always")  # fmt: skip
    try:
        private = decode_key(secrets_store_from_config(config).get_simple(name), f"the secret {name}")
    except SecretsError as e:
        raise WriterError(f"writer.signing_key: {e}; nothing written") from None
    except KeyFormatError as e:
        raise WriterError(f"writer.signing_key: {e} (livedata-keygen prints one); nothing written") from None
    return Signer(private)


def run(args: argparse.Namespace, out: TextIO) -> None:
    """Every check that needs no server comes first, so a bad input never costs a connection."""
    from livedata.zookeeper import parse_zookeeper_config

    # Only the keys the writer uses are expanded: a shared file's $VARs for nodes.* need not be set here.
    config = read_config(args.config, expand=WRITER_KEYS)
    check_known_keys(config)
    settings = parse_zookeeper_config(config)
    writer = parse_config(config, WRITER_SPEC).writer
    if writer.history < 0:
        raise ConfigError(source_of(config), "writer.history", "must be 0 (keep no versions) or more")
    mode = args.compress or writer.compress
    signer = load_signer(config, writer.signing_key, mode) if writer.signing_key else None
    stamp = Stamp(args.author or default_author(), args.message, writer.history, signer, settings.max_node_size)
    if args.rollback is not None:
        rollback(args, out, config, settings, writer, stamp, mode)
        return
    label = source_label(args.source)
    if mode == "never":  # stored as it is: one node's worth is all that may be read
        data = read_source(args.source, settings.max_node_size)
    else:
        data = read_source(args.source, writer.max_payload_size, payload_limit=True)
    as_json = wants_json_validation(args.source, args.format)
    if as_json and data:  # empty input is refused (or allowed) as empty, whatever its format
        validate_json(label, data)
    stored = stored_form(label, data, mode, settings.max_node_size, enveloped=signer is not None)
    with connected_client(config, settings) as client:
        push(
            client, args.node, data, label, out, allow_empty=args.allow_empty, dry_run=args.dry_run,
            stored=stored, max_payload_size=writer.max_payload_size,
            diff_lines=None if args.full_diff else args.diff_lines,
            diff_bytes=None if args.full_diff else args.diff_bytes or DEFAULT_DIFF_BYTES, as_json=as_json,
            stamp=stamp,
        )


def rollback(
    args: argparse.Namespace, out: TextIO, config: RawConfig, settings: ConfigNamespace, writer: ConfigNamespace,
    stamp: Stamp, mode: str,
) -> None:
    """``--rollback NODE [--to K]``: version K's bytes written as a new version, like any write (diff,
    compare-and-set, guards, history, signature); the message says it is a rollback to K."""
    from livedata import history

    path = args.rollback
    with connected_client(config, settings) as client:
        with _zookeeper_errors("read the kept versions of", path):
            current = client.exists(path)
            if current is None:
                raise NodeMissingError(path)
            kept = sorted(history.entry_names(client, path), reverse=True)
            target = args.to
            if target is None:
                earlier = [version for version in kept if version < current.version]
                if not earlier:
                    raise WriterError(f"{path} keeps no version before its current one (version "
                                      f"{current.version}); nothing written")  # fmt: skip
                target = earlier[0]
            try:
                data, envelope = history.read_entry(client, path, target, writer.max_payload_size)
            except history.VersionNotKeptError as e:
                raise WriterError(f"{e}; nothing written") from None
            except PayloadError as e:
                raise WriterError(f"kept version {target} of {path} cannot be decoded: {e}; nothing written") from None
        if stamp.signer is not None and not stamp.signer.signed(real_path(client.chroot, path), envelope):
            raise UnsignedVersionError(path, target)
        label = f"{path}@{target}"
        stored = stored_form(label, data, mode, settings.max_node_size, enveloped=stamp.signer is not None)
        why = f"rollback to version {target}" + (f": {args.message}" if args.message else "")
        push(
            client, path, data, label, out, allow_empty=args.allow_empty, dry_run=args.dry_run, stored=stored,
            max_payload_size=writer.max_payload_size, diff_lines=None if args.full_diff else args.diff_lines,
            diff_bytes=None if args.full_diff else args.diff_bytes or DEFAULT_DIFF_BYTES,
            stamp=replace(stamp, message=why),
        )


def _patch_gevent() -> None:
    """Same process model as the watcher: kazoo picks its gevent handler once sockets are patched."""
    from gevent import monkey

    monkey.patch_all()


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """The command line only: it gevent-patches the whole process, so library code must not call it.

    ``prog`` names the command in messages and ``--version``; by default, as the user typed it.
    """
    prog = prog or program_name(PROG)
    args = parse_arguments(argv, prog)
    if isinstance(sys.stdout, io.TextIOWrapper):
        # The diff shows the data's own text; a terminal that cannot encode it must not turn into a traceback.
        sys.stdout.reconfigure(errors="backslashreplace")
    _patch_gevent()
    setup_logging(args.debug, log_level(args))
    if not args.debug:
        # kazoo logs every refused connection attempt; our one line already says what failed.
        silence_kazoo()
    try:
        run(args, sys.stdout)
    except ConfigError as e:
        return fail(prog, e, EXIT_USAGE)
    except CommandError as e:
        return fail(prog, e, e.status)
    except KeyboardInterrupt:
        return fail(prog, "interrupted; if a write was under way, check the node before running again", 130)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
