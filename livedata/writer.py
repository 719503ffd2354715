"""The writer: push a file's contents into an existing znode, showing what changes and never racing blind.

It is built for CI jobs and humans alike, so it errs on the side of refusing:
the node must already exist (its ACLs are a deliberate act, not a side
effect of a push), the write is a compare-and-set against the version the
diff was computed from (so the diff shown is exactly the change made), and
inputs that are almost certainly mistakes (broken JSON, an empty file over
real data, more bytes than ZooKeeper accepts) are stopped before anything is
sent.  Every expected failure is one line on stderr, so a CI log says what
went wrong without a traceback to dig through.

This module is the command line (arguments, config, connecting, exit
codes); ``main`` gevent-patches the process.  The steps are in
:mod:`livedata.write_plan`: plain functions that take a started client, so
tests (and other tools) can drive each step against a real server.
"""
from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

# Nothing imported here opens a socket or starts a thread (kazoo: exception classes only, in write_plan), so it
# is safe before gevent patches the process.
from livedata.cli import (
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
    one_of,
    parse_config,
    read_config,
    register,
    source_of,
    znode_path,
)
from livedata.logs import silence_kazoo
from livedata.payload import DEFAULT_MAX_PAYLOAD_SIZE, MODES

if TYPE_CHECKING:
    import argparse

    from kazoo.client import KazooClient
from livedata.write_plan import (
    DEFAULT_DIFF_BYTES,
    DEFAULT_DIFF_LINES,
    DRY_RUN,
    DRY_RUN_START,
    FORMATS,
    NO_CHANGES,
    NOTHING_WRITTEN,
    STDIN,
    STDIN_LABEL,
    WROTE,
    ConnectionFailedError,
    Current,
    EmptyInputError,
    InvalidJSONError,
    NodeChangedError,
    NodeMissingError,
    NotAllowedError,
    PayloadTooBigError,
    SourceUnreadableError,
    TooLargeError,
    UnstorableError,
    WriterError,
    _terminated,
    _zookeeper_errors,
    check_size,
    describe_stored,
    push,
    read_current,
    read_node,
    read_source,
    render_diff,
    source_label,
    store,
    stored_form,
    validate_json,
    wants_json_validation,
    write_node,
)

__all__ = [
    "DEFAULT_DIFF_BYTES",
    "DEFAULT_DIFF_LINES",
    "DRY_RUN",
    "DRY_RUN_START",
    "FORMATS",
    "NOTHING_WRITTEN",
    "NO_CHANGES",
    "PROG",
    "STDIN",
    "STDIN_LABEL",
    "WRITER_KEYS",
    "WRITER_SPEC",
    "WROTE",
    "ConnectionFailedError",
    "Current",
    "EmptyInputError",
    "InvalidJSONError",
    "NodeChangedError",
    "NodeMissingError",
    "NotAllowedError",
    "PayloadTooBigError",
    "SourceUnreadableError",
    "TooLargeError",
    "UnstorableError",
    "WriterError",
    "_patch_gevent",
    "_terminated",
    "_zookeeper_errors",
    "check_size",
    "connected_client",
    "describe_stored",
    "main",
    "parse_arguments",
    "push",
    "read_current",
    "read_node",
    "read_source",
    "render_diff",
    "run",
    "source_label",
    "store",
    "stored_form",
    "validate_json",
    "wants_json_validation",
    "write_node",
]

PROG = "livedata.writer"  # the name under ``python -m``; the console script is named as the user typed it
WRITER_KEYS = ("zookeeper.", "secrets.", "writer.")  # the keys the writer reads (and so expands $VARs in)

# Connecting may take one full pass over the hosts (kazoo gives each host its share of the session timeout)
# plus a reconnect backoff; twice the session timeout covers that without hanging a CI job on a dead ensemble.
CONNECT_TIMEOUT_FACTOR = 2.0

log = logging.getLogger("livedata.writer")  # not __name__, which is "__main__" under python -m

# The writer's own keys; it reads only these (and zookeeper.*), so it can share a file with other programs.
WRITER_SPEC = register({
    "writer": {
        "compress": Optional(one_of(*MODES), "auto"),
        "max_payload_size": Optional(byte_size, DEFAULT_MAX_PAYLOAD_SIZE),
    }
})  # fmt: skip

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
    parser.add_argument("source", metavar="SOURCE", help="file whose bytes to write, or - for standard input")
    parser.add_argument("node", metavar="NODE", type=argument(znode_path), help="absolute path of an existing znode")
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
    return args


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
    as_json = wants_json_validation(args.source, args.format)
    if as_json and data:  # empty input is refused (or allowed) as empty, whatever its format
        validate_json(label, data)
    stored = stored_form(label, data, mode, settings.max_node_size)
    with connected_client(config, settings) as client:
        push(
            client, args.node, data, label, out, allow_empty=args.allow_empty, dry_run=args.dry_run,
            stored=stored, max_payload_size=writer.max_payload_size,
            diff_lines=None if args.full_diff else args.diff_lines,
            diff_bytes=None if args.full_diff else args.diff_bytes or DEFAULT_DIFF_BYTES, as_json=as_json,
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
