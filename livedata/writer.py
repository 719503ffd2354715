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

import io
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
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
    EXIT_OK,
    EXIT_USAGE,
    ArgumentParser,
    CommandError,
    add_common_arguments,
    argument,
    fail,
    log_level,
    setup_logging,
)
from livedata.config import (
    ConfigError,
    ConfigNamespace,
    Optional,
    RawConfig,
    byte_size,
    check_known_keys,
    one_of,
    parse_config,
    read_config,
    register,
    source_of,
    znode_path,
)
from livedata.logs import silence_kazoo
from livedata.payload import DEFAULT_MAX_PAYLOAD_SIZE, MODES, PayloadError, PayloadTooLargeError, Stored, encode
from livedata.payload import parse as parse_payload
from livedata.textdiff import unified_diff

if TYPE_CHECKING:
    import argparse

    from kazoo.client import KazooClient

PROG = "livedata.writer"
WRITER_KEYS = ("zookeeper.", "secrets.", "writer.")  # the keys the writer reads (and so expands $VARs in)
STDIN = "-"
STDIN_LABEL = "<stdin>"

# Connecting may take one full pass over the hosts (kazoo gives each host its share of the session timeout)
# plus a reconnect backoff; twice the session timeout covers that without hanging a CI job on a dead ensemble.
CONNECT_TIMEOUT_FACTOR = 2.0

READ_CHUNK = 1024 * 1024
DEFAULT_DIFF_LINES = 200  # a 1 MB text would otherwise print thousands of lines into a CI log

NO_CHANGES = "No changes detected. Not writing."
WROTE = "Wrote data to ZooKeeper."
DRY_RUN = "Dry run: not writing."

log = logging.getLogger("livedata.writer")  # not __name__, which is "__main__" under python -m

# The writer's own keys; it reads only these (and zookeeper.*), so it can share a file with other programs.
WRITER_SPEC = register({
    "writer": {
        "compress": Optional(one_of(*MODES), "auto"),
        "max_payload_size": Optional(byte_size, DEFAULT_MAX_PAYLOAD_SIZE),
    }
})  # fmt: skip


class WriterError(CommandError):
    """An expected reason for the writer to stop without writing; its message is the whole report."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_FAILURE)


class SourceUnreadableError(WriterError):
    def __init__(self, source: str, reason: object) -> None:
        super().__init__(f"cannot read {source}: {reason}; nothing written")


class InvalidJSONError(WriterError):
    """The source is named ``*.json`` but would break every reader that parses it."""

    def __init__(self, label: str, problem: str) -> None:
        super().__init__(f"{label} is not valid JSON: {problem}; nothing written (--no-validate skips this check)")


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
    def __init__(self, action: str, path: str) -> None:
        super().__init__(
            f"ZooKeeper does not allow us to {action} {path}: check zookeeper.credentials and the node's ACL; "
            "nothing written"
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


def wants_json_validation(source: str) -> bool:
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


def render_diff(old: bytes, new: bytes, old_label: str, new_label: str, max_lines: int | None = None) -> str:
    """A unified diff of two texts, or a one-line size summary when either side is not UTF-8 text.

    ``max_lines`` caps the diff's output lines; what is cut is summarised in
    one line (lines added and removed in all), so a big change stays readable.
    """
    try:
        old_text, new_text = old.decode("utf-8"), new.decode("utf-8")
    except UnicodeDecodeError:
        return f"Binary data: {old_label} is {len(old)} bytes, {new_label} is {len(new)} bytes.\n"
    terminated = [_terminated(line) for line in unified_diff(old_text, new_text, old_label, new_label)]
    if max_lines is None or len(terminated) <= max_lines:
        return "".join(terminated)
    return "".join(terminated[:max_lines]) + _diff_summary(terminated, max_lines)


def _diff_summary(lines: list[str], shown: int) -> str:
    body = lines[2:]  # past the ---/+++ header
    added = sum(1 for line in body if line.startswith("+"))
    removed = sum(1 for line in body if line.startswith("-"))
    return (
        f"... diff cut after {shown} of {len(lines)} lines: {added} lines added, {removed} removed in all "
        "(--full-diff shows everything, --diff-lines N more)\n"
    )


@contextmanager
def _zookeeper_errors(action: str, path: str) -> Iterator[None]:
    """Turn what ZooKeeper can answer to one request into our one-line errors."""
    try:
        yield
    except NoNodeError:
        raise NodeMissingError(path) from None
    except NoAuthError:
        raise NotAllowedError(action, path) from None
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
         max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE, diff_lines: int | None = None) -> None:
    """Compare, show, and (unless ``dry_run``) compare-and-set: every refusal happens before the write.

    ``stored`` is the form chosen by :func:`stored_form` (plain data when not given); the comparison and the
    diff are made on decoded data, so how the node is stored never shows up as a change of its content.
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
    print(f"Writing {label} to ZooKeeper {path}...", file=out)
    if current.data is None:
        print(f"The current data of {path} cannot be decoded ({current.problem}); replacing it.", file=out)
    if current.data == data:
        print("The data is the same; only the way it is stored changes.", file=out)
    else:
        out.write(_off_the_loop(render_diff, old, data, f"{path} (current)", f"{label} (new)", diff_lines))
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


# --- connecting -----------------------------------------------------------------------------------


@contextmanager
def connected_client(config: RawConfig, settings: ConfigNamespace) -> Iterator[KazooClient]:
    """A started client for the block, stopped and closed afterwards whatever happens.

    Unlike the watcher, the writer gives up on an unreachable ensemble: a CI
    job should fail with a reason, not hang until its own timeout kills it.
    """
    from livedata.secrets import secrets_store_from_config
    from livedata.zookeeper import CredentialsError, zookeeper_client_from_config

    try:
        client = zookeeper_client_from_config(secrets_store_from_config(config), config)
    except CredentialsError as e:
        raise WriterError(f"{e}; nothing written") from None
    except ValueError as e:  # kazoo's own parsing of the host list
        raise ConfigError(source_of(config), "zookeeper.hosts", str(e)) from None
    limit = CONNECT_TIMEOUT_FACTOR * settings.timeout
    try:
        try:
            client.start(timeout=limit)
        except client.handler.timeout_exception:
            raise ConnectionFailedError(
                f"could not connect to ZooKeeper at {settings.hosts} within {limit:g} seconds "
                f"(twice zookeeper.timeout); nothing written"
            ) from None
        log.debug("connected to ZooKeeper using %s", type(client.handler).__name__)
        yield client
    finally:
        client.stop()
        client.close()


# --- the command line -----------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog=PROG,
        description="Write a file's contents into an existing ZooKeeper node, showing the difference first.",
    )
    parser.add_argument("config", metavar="CONFIG", help="INI file with a [live-data] section (zookeeper.*, secrets.*)")
    parser.add_argument("source", metavar="SOURCE", help="file whose bytes to write, or - for standard input")
    parser.add_argument("node", metavar="NODE", type=argument(znode_path), help="absolute path of an existing znode")
    parser.add_argument("--dry-run", action="store_true", help="show the difference but write nothing")
    parser.add_argument(
        "--no-validate", dest="validate", action="store_false", help="do not require a *.json SOURCE to parse as JSON"
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
    add_common_arguments(parser)
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of lines")
    return int(text)


def run(args: argparse.Namespace, out: TextIO) -> None:
    """Every check that needs no server comes first, so a bad input never costs a connection."""
    from livedata.zookeeper import parse_zookeeper_config

    # Only the keys the writer uses are expanded: a shared file's $VARs for nodes.* need not be set here.
    config = read_config(args.config, expand=WRITER_KEYS)
    check_known_keys(config)
    settings = parse_zookeeper_config(config)
    writer = parse_config(config, WRITER_SPEC).writer
    label = source_label(args.source)
    mode = args.compress or writer.compress
    if mode == "never":  # stored as it is: one node's worth is all that may be read
        data = read_source(args.source, settings.max_node_size)
    else:
        data = read_source(args.source, writer.max_payload_size, payload_limit=True)
    if args.validate and wants_json_validation(args.source):
        validate_json(label, data)
    stored = stored_form(label, data, mode, settings.max_node_size)
    with connected_client(config, settings) as client:
        push(
            client, args.node, data, label, out, allow_empty=args.allow_empty, dry_run=args.dry_run,
            stored=stored, max_payload_size=writer.max_payload_size,
            diff_lines=None if args.full_diff else args.diff_lines,
        )


def _patch_gevent() -> None:
    """Same process model as the watcher: kazoo picks its gevent handler once sockets are patched."""
    from gevent import monkey

    monkey.patch_all()


def main(argv: Sequence[str] | None = None) -> int:
    """The command line only: it gevent-patches the whole process, so library code must not call it."""
    args = parse_arguments(argv)
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
        return fail(PROG, e, EXIT_USAGE)
    except CommandError as e:
        return fail(PROG, e, e.status)
    except KeyboardInterrupt:
        return fail(PROG, "interrupted; if a write was under way, check the node before running again", 130)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
