"""Example: a gevent web application that serves live data, from a mirrored file or straight from ZooKeeper.

Run it with ``tools/example_app conf/example-app.ini`` (or ``python -m livedata.example_app CONFIG``).
``GET /`` answers with the current parsed JSON of ``live_data.flags``, its content mtime in the
``X-Data-Mtime`` header (and as ``Last-Modified``), or 503 while no good version has been loaded yet.

Whether the data comes from the watcher daemon's file or from an in-process watch is decided by the INI
alone (``live_data.flags.file`` or ``live_data.flags.node``); the code below does not know or care, which
is the point of the example. The serialized response is cached on the identity of the parsed value: a new
version is always a new object, while the mtime alone could repeat (two writes in one clock tick).

gevent is imported and the standard library patched in :func:`main`, before anything opens a socket or
starts a thread, so that importing this module (for a test or the docs) patches nothing.
"""
from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Iterable, Mapping
from email.utils import formatdate
from typing import Any, Callable, List, Tuple

from livedata.cli import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    ArgumentParser,
    add_common_arguments,
    fail,
    log_level,
    setup_logging,
)
from livedata.config import ConfigError, parse_config, read_config
from livedata.file_watcher import WatchedFileNotAvailableError
from livedata.secrets import secrets_store_from_config

PROG = "livedata.example_app"
DATA_NAME = "flags"

log = logging.getLogger(PROG)  # not __name__, which is "__main__" under python -m

Environ = dict[str, Any]
StartResponse = Callable[[str, List[Tuple[str, str]]], Any]


def listen_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6); port 0 lets the kernel choose."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text.strip()!r} is not a 'host:port' address")
    return host, int(port)


EXAMPLE_SPEC = {"example_app": {"listen": listen_address}}


class LiveDataApp:
    """The WSGI application: the current data as JSON; it never waits for ZooKeeper or the disk."""

    def __init__(self, data: Any) -> None:
        self._data = data  # a livedata.live_data.WatchedData
        self._cached: tuple[object, bytes] | None = None  # (value, its JSON): the value is kept to pin its id

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        body = self._respond(environ, start_response)
        # HEAD: the same status and headers (Content-Length included) as GET, no body; the server leaves that to us.
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else body

    def _respond(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "/") != "/":
            return _json(start_response, "404 Not Found", {"error": "not found; the data is at /"})
        method = environ.get("REQUEST_METHOD")
        if method not in ("GET", "HEAD"):
            return _json(start_response, "405 Method Not Allowed", {"error": "only GET and HEAD"},
                         [("Allow", "GET, HEAD")])  # fmt: skip
        try:
            value, mtime = self._data.get_data_and_mtime()
        except WatchedFileNotAvailableError as e:
            return _json(start_response, "503 Service Unavailable", {"error": str(e)})
        headers = [("X-Data-Mtime", repr(mtime)), ("Last-Modified", formatdate(mtime, usegmt=True))]
        return _send(start_response, "200 OK", self._encoded(value), headers)

    def _encoded(self, value: object) -> bytes:
        cached = self._cached
        if cached is None or cached[0] is not value:
            cached = (value, json.dumps(value, sort_keys=True).encode("utf-8"))
            self._cached = cached
        return cached[1]


def _json(
    start_response: StartResponse, status: str, payload: object, headers: list[tuple[str, str]] | None = None
) -> list[bytes]:
    return _send(start_response, status, json.dumps(payload).encode("utf-8"), headers or [])


def _send(start_response: StartResponse, status: str, body: bytes, headers: list[tuple[str, str]]) -> list[bytes]:
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers],
    )
    return [body]


def main(argv: list[str] | None = None) -> int:
    from gevent import monkey

    monkey.patch_all()  # first: kazoo's client and the server must see cooperative sockets
    args = _parse_args(argv)
    setup_logging(args.debug, log_level(args))
    try:
        config = read_config(args.config)
        listen = parse_config(config, EXAMPLE_SPEC).example_app.listen
        return _serve(config, listen)
    except ConfigError as e:
        return fail(PROG, e, EXIT_USAGE)


def _parse_args(argv: list[str] | None) -> Any:
    parser = ArgumentParser(prog=PROG, description="Serve the live data named 'flags' as JSON over HTTP.")
    parser.add_argument("config", help="INI file with a [live-data] section (see conf/example-app.ini)")
    add_common_arguments(parser)
    return parser.parse_args(argv)


def _serve(config: Mapping[str, str], listen: tuple[str, int]) -> int:
    import gevent
    from gevent.pywsgi import WSGIServer

    from livedata.live_data import stop_shared_clients, watched_data_from_config
    from livedata.zookeeper import CredentialsError

    try:
        # No timeout: start serving at once and answer 503 until the data is there. The secrets file is
        # read only if zookeeper.credentials is set.
        data = watched_data_from_config(config, DATA_NAME, json.load, secrets=secrets_store_from_config(config))
    except CredentialsError as e:
        return fail(PROG, e, EXIT_FAILURE)
    server = WSGIServer(listen, LiveDataApp(data), log=None)
    stoppers = [gevent.signal_handler(sig, server.stop) for sig in (signal.SIGTERM, signal.SIGINT)]
    try:
        try:
            server.start()
        except OSError as e:
            return fail(PROG, f"cannot listen on {listen[0]}:{listen[1]}: {e.strerror or e}", EXIT_FAILURE)
        log.info("serving live_data.%s on http://%s:%d/", DATA_NAME, listen[0], server.server_port)
        server.serve_forever()
    finally:
        for stopper in stoppers:
            stopper.cancel()
        stop_shared_clients()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
