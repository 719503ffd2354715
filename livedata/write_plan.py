"""The writer's plan: read the source, refuse what is almost certainly a mistake, diff, compare-and-set.

Every step is a plain function that takes a started client (or none), so tests and other tools drive them
against a real server; :mod:`livedata.writer` is the command line around them.  Every expected failure is a
:class:`WriterError`: one line on stderr, and nothing written.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
    CommandError,
)
from livedata.payload import DEFAULT_MAX_PAYLOAD_SIZE, PayloadError, PayloadTooLargeError, Stored, encode
from livedata.payload import parse as parse_payload
from livedata.textdiff import unified_diff

if TYPE_CHECKING:
    from kazoo.client import KazooClient

STDIN = "-"
STDIN_LABEL = "<stdin>"

READ_CHUNK = 1024 * 1024
DEFAULT_DIFF_LINES = 200  # a 1 MB text would otherwise print thousands of lines into a CI log
DEFAULT_DIFF_BYTES = 64 * 1024  # and one changed line of a one-line 5 MiB JSON would print 10 MB
FORMATS = ("auto", "json", "raw")  # auto: json for a SOURCE named *.json, raw otherwise
NOTHING_WRITTEN = "nothing written"

NO_CHANGES = "No changes detected. Not writing."
WROTE = "Wrote data to ZooKeeper."
DRY_RUN = "Dry run: not writing."
DRY_RUN_START = "Dry run: showing what writing {label} to ZooKeeper {path} would change..."

log = logging.getLogger("livedata.writer")  # the command's logger, as in livedata.writer


class WriterError(CommandError):
    """An expected reason for the writer to stop without writing; its message is the whole report."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_FAILURE)


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


def stored_form(label: str, data: bytes, mode: str, max_node_size: int) -> Stored:
    """How the data will be stored for ``mode``, decided before connecting; ``never`` keeps today's refusal."""
    if mode == "never":
        check_size(label, data, max_node_size)
    try:
        return encode(data, mode, max_node_size)
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


def store(client: KazooClient, path: str, stored: Stored, current: Current) -> int:
    """Compare-and-set the stored form (chunks first), then remove chunks nothing refers to any more."""
    from kazoo.exceptions import BadVersionError as ChunkedBadVersion

    from livedata import chunks

    if not stored.chunks:
        new_version = write_node(client, path, stored.node_data, current.version)
    else:
        with _zookeeper_errors("write chunks of", path):
            try:
                new_version, created = chunks.publish(client, path, stored, current.version)
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
    if stored.chunks or current.data is None or _had_chunks(current.node_data):
        _remove_old_chunks(client, path, stored)
    return new_version


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


def push(client: KazooClient, path: str, data: bytes, label: str, out: TextIO, *,
         allow_empty: bool = False, dry_run: bool = False, stored: Stored | None = None,
         max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE, diff_lines: int | None = None,
         diff_bytes: int | None = None, as_json: bool = False) -> None:
    """Compare, show, and (unless ``dry_run``) compare-and-set: every refusal happens before the write.

    ``stored`` is the form chosen by :func:`stored_form` (plain data when not given); the comparison and the
    diff are made on decoded data, so how the node is stored never shows up as a change of its content.
    ``diff_lines``, ``diff_bytes`` and ``as_json`` shape the diff (see :func:`render_diff`).
    """
    if stored is None:
        stored = Stored(node_data=data, envelope=None, codec="plain", stored_size=len(data))
    current = read_current(client, path, max_payload_size)
    log.debug("read %s: %d bytes at version %d", path, len(current.node_data), current.version)
    if current.data == data and current.node_data == stored.node_data:
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
    new_version = store(client, path, stored, current)
    log.debug("wrote %s: version %d -> %d", path, current.version, new_version)
    if stored.envelope is not None:
        print(describe_stored(stored), file=out)
    print(WROTE, file=out)
