"""The reader: print a node's data as every livedata reader sees it, decoded, so nobody needs zkCli.

``tools/read_node CONFIG /node`` writes the decoded bytes to standard output (compressed and chunked
nodes reassembled, verified and inflated exactly as the watcher and ``LiveNode`` do it); ``--stat``
prints how the node is stored instead.  It shares the writer's connection handling, error messages and
exit statuses: one line on stderr, 1 for a failure, 2 for configuration and usage errors.
"""
from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, BinaryIO

from kazoo.exceptions import NoNodeError

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
from livedata.config import ConfigError, byte_size, check_known_keys, read_config, znode_path
from livedata.logs import silence_kazoo
from livedata.payload import DEFAULT_MAX_PAYLOAD_SIZE, DecodedTooLargeError, PayloadError
from livedata.writer import WRITER_KEYS, WriterError, _patch_gevent, _zookeeper_errors, connected_client

if TYPE_CHECKING:
    import argparse

    from kazoo.client import KazooClient

    from livedata.chunks import Decoded

PROG = "livedata.reader"  # the name under ``python -m``; the console script is named as the user typed it
NOTHING_PRINTED = ""  # a reader's failure needs no "nothing written": it writes nothing anywhere

log = logging.getLogger("livedata.reader")


class ReaderError(WriterError):
    """An expected reason to stop without output; the message is the whole report."""


def read(client: KazooClient, path: str, max_size: int) -> Decoded:
    """The node decoded; a node that does not exist or does not decode is a one-line :class:`ReaderError`.

    Data larger than ``max_size`` is intact, not undecodable: the message says which limit to raise.
    """
    from livedata.chunks import read_decoded

    with _zookeeper_errors("read", path, NOTHING_PRINTED):
        try:
            return read_decoded(client, path, max_size)
        except NoNodeError:
            raise ReaderError(f"{path} does not exist in ZooKeeper") from None
        except DecodedTooLargeError as e:
            raise ReaderError(f"{path}: {e} (--max-size); pass a larger --max-size to read it") from None
        except PayloadError as e:
            raise ReaderError(f"{path} holds data that cannot be decoded: {e}") from None


def describe(path: str, decoded: Decoded) -> str:
    """``--stat``: one ``key: value`` line each, stable enough for scripts to grep."""
    envelope = decoded.envelope
    chunks = envelope.chunk_names if envelope is not None else []
    digest = envelope.sha256 if envelope is not None else hashlib.sha256(decoded.data).hexdigest()
    lines = [
        ("node", path),
        ("version", str(decoded.stat.version)),
        ("codec", envelope.codec if envelope is not None else "plain"),
        ("stored", f"{envelope.stored_size if envelope is not None else len(decoded.node_data):,} bytes"),
        ("node bytes", f"{len(decoded.node_data):,}"),
        ("decoded", f"{len(decoded.data):,} bytes"),
        ("chunks", str(len(chunks))),
        ("sha256", digest),
    ]
    return "".join(f"{key}: {value}\n" for key, value in lines)


def parse_arguments(argv: Sequence[str] | None, prog: str = PROG) -> argparse.Namespace:
    parser = ArgumentParser(prog=prog, description="Print the decoded data of a ZooKeeper node.")
    parser.add_argument("config", metavar="CONFIG", help="INI file with a [live-data] section (zookeeper.*, secrets.*)")
    parser.add_argument("node", metavar="NODE", type=argument(znode_path), help="absolute path of the znode")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--stat", action="store_true", help="print how the node is stored instead of its data")
    shown.add_argument("--history", action="store_true", help="list the kept versions, newest first: version, UTC "
                       "time, author, size, sha256 prefix, message")  # fmt: skip
    parser.add_argument(
        "--max-size", type=argument(byte_size), default=DEFAULT_MAX_PAYLOAD_SIZE, metavar="BYTES",
        help="refuse data that decodes to more than this (default 64 MiB)",
    )
    add_common_arguments(parser, version_help="print kept version K's data (see --history); alone: show the "
                         "installed version and exit")  # fmt: skip
    args = parser.parse_args(argv)
    if args.version_value is not None:
        if args.stat or args.history:
            parser.error("argument --version: not allowed with --stat or --history")
        if not args.version_value.isdigit():
            parser.error(f"argument --version: {args.version_value!r} is not a version number")
    return args


def history_lines(client: KazooClient, path: str) -> str:
    """``--history``: one line per kept version, newest first, the fields separated by two spaces."""
    from livedata.history import LIST_LIMIT, entries
    from livedata.provenance import one_line

    with _zookeeper_errors("list the kept versions of", path, NOTHING_PRINTED):
        try:
            kept, older = entries(client, path)
        except NoNodeError:
            raise ReaderError(f"{path} does not exist in ZooKeeper") from None
    if older:
        print(f"{program_name(PROG)}: {path}: {older:,} older kept versions not listed, only the newest "
              f"{LIST_LIMIT}", file=sys.stderr)
    lines = []
    for entry in kept:
        record, envelope = entry.provenance, entry.envelope
        if envelope is None:
            lines.append(f"{entry.version}  (unreadable: {entry.problem})\n")
            continue
        time, author, message = (record.time, record.author, record.message) if record else ("-", "-", "")
        lines.append(f"{entry.version}  {time}  {one_line(author)}  {envelope.size:,}  {envelope.sha256[:12]}  "
                     f"{one_line(message)}".rstrip() + "\n")  # fmt: skip
    return "".join(lines)


def read_kept(client: KazooClient, path: str, version: int, max_size: int) -> bytes:
    """``--version K``: a kept version's data (the current one's, when it is version K and is not kept)."""
    from livedata.history import VersionNotKeptError, read_version

    with _zookeeper_errors("read", path, NOTHING_PRINTED):
        try:
            return read_version(client, path, version, max_size)
        except NoNodeError:
            raise ReaderError(f"{path} does not exist in ZooKeeper") from None
        except VersionNotKeptError as e:
            stat = client.exists(path)
            if stat is not None and stat.version == version:
                return read(client, path, max_size).data
            raise ReaderError(str(e)) from None
        except PayloadError as e:
            raise ReaderError(f"kept version {version} of {path} cannot be decoded: {e}") from None


def run(args: argparse.Namespace, out: BinaryIO) -> None:
    from livedata.zookeeper import parse_zookeeper_config

    config = read_config(args.config, expand=WRITER_KEYS)  # like the writer: only the keys it uses
    check_known_keys(config)
    settings = parse_zookeeper_config(config)
    with connected_client(config, settings, NOTHING_PRINTED) as client:
        if args.history:
            out.write(history_lines(client, args.node).encode("utf-8"))
            out.flush()
            return
        if args.version_value is not None:
            out.write(read_kept(client, args.node, int(args.version_value), args.max_size))
            out.flush()
            return
        decoded = read(client, args.node, args.max_size)
    out.write(describe(args.node, decoded).encode("utf-8") if args.stat else decoded.data)
    out.flush()


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """The command line only: like the writer's, it gevent-patches the whole process (``prog``: as the writer's)."""
    prog = prog or program_name(PROG)
    args = parse_arguments(argv, prog)
    _patch_gevent()
    setup_logging(args.debug, log_level(args))
    if not args.debug:
        silence_kazoo()  # our one line already says what failed
    try:
        run(args, sys.stdout.buffer)
    except ConfigError as e:
        return fail(prog, e, EXIT_USAGE)
    except CommandError as e:
        return fail(prog, e, e.status)
    except BrokenPipeError:
        return EXIT_OK  # `read_node ... | head` stopped reading: not our failure
    except KeyboardInterrupt:
        return fail(prog, "interrupted", 130)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
