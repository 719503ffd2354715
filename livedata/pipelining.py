"""Send every request kazoo has queued in one write, instead of one request per turn of its connection loop.

Why: kazoo's connection greenlet sends one request per turn of its loop: a ``select`` for the wake-up
byte, a ``select`` for the socket being writable, one ``send(2)`` of a few dozen bytes, one ``recv(1)``
of the wake-up byte. At start-up the mirror queues one read per node (50,000 reads for 50,000 nodes), and
these per-request turns were the largest cost left in the daemon (the 50,000-node start-up profile in
docs/performance.md). Sending whatever is queued, up to ``MAX_BATCH`` requests, in one write keeps
ZooKeeper's order and semantics (one TCP stream, requests in queue order, replies matched to them in the same
order) and removes most of those turns.

How: the connection object of one client gets its own ``_send_request`` (kazoo's method, replaced on that
instance only, never on the class). It takes ordinary requests from the head of kazoo's queue, gives each
the next xid, records it as pending exactly as kazoo does, writes them together (small ones copied into buffers of
about ``COALESCE_BYTES``; a larger request's body written from its own serialized buffer, so a batch of
large writes never exists twice in memory, joined), then consumes the wake-up
bytes of the requests it sent (one per request, sent by kazoo when it queued them; a byte not yet
consumed only causes one idle turn later, which kazoo already tolerates). Anything special at the head of
the queue (authentication, kazoo's test hooks) goes through kazoo's own method, unchanged.

A side effect: a request kazoo queued without its wake-up byte (see :mod:`livedata.reads`) no longer
waits for the read queue's deadline; it leaves with the next request queued behind it.

If a write fails, the requests already recorded as pending fail with ConnectionLoss when kazoo handles
the disconnection, as every in-flight request does; the mirror re-reads them on reconnection.

This relies on kazoo's private connection attributes, so it is installed only where they look as
expected (:func:`pipeline_requests` returns False otherwise and kazoo runs as shipped), and only for
clients driven by gevent: the queue is taken from one greenlet while others add to it, which needs no lock
only because greenlets never interleave between two Python statements of ours.
"""
from __future__ import annotations

import logging
import types
from typing import Any

from kazoo.protocol import connection as kazoo_connection
from kazoo.protocol.serialization import Auth, int_struct

MAX_BATCH = 64  # requests per write: ~4 KB of typical reads, far below a socket buffer
COALESCE_BYTES = 64 * 1024  # small requests share a write up to about this; a larger body is written on its own
_XID_MAX = 2147483647
_REQUIRED = ("_send_request", "_write", "_read_sock", "_xid", "logger")


def pipeline_requests(client: Any) -> bool:
    """Make ``client``'s connection send queued requests together; False (nothing changed) if it cannot."""
    connection = getattr(client, "_connection", None)
    if connection is None or not all(hasattr(connection, name) for name in _REQUIRED):
        return False
    if not hasattr(client, "_queue") or not hasattr(client, "_pending"):
        return False
    if not all(hasattr(kazoo_connection, name) for name in ("_SESSION_EXPIRED", "_CONNECTION_DROP")):
        return False
    original = connection._send_request
    connection._send_request = types.MethodType(_sender(original), connection)
    return True


def _special(request: Any) -> bool:
    """Requests kazoo's own method must send: authentication (a fixed xid) and its testing sentinels."""
    return (
        request is kazoo_connection._SESSION_EXPIRED
        or request is kazoo_connection._CONNECTION_DROP
        or request.type == Auth.type
    )


def _sender(original: Any) -> Any:
    def send_queued(connection: Any, read_timeout: float, connect_timeout: float) -> None:
        client = connection.client
        queue = client._queue
        if not queue or _special(queue[0][0]):
            original(read_timeout, connect_timeout)  # also handles a wake-up byte with nothing queued
            return
        debug = connection.logger.isEnabledFor(logging.DEBUG)
        small = bytearray()  # frames of small requests (and the header of a large one), written together
        sent = 0
        while queue and sent < MAX_BATCH and not _special(queue[0][0]):
            request, async_object = queue.popleft()
            connection._xid = (connection._xid % _XID_MAX) + 1
            xid = connection._xid
            header = int_struct.pack(xid) + (int_struct.pack(request.type) if request.type else b"")
            body = request.serialize()
            client._pending.append((request, async_object, xid))
            sent += 1
            if debug:
                connection.logger.debug("Sending request(xid=%s): %s", xid, request)
            small += int_struct.pack(len(header) + len(body))
            small += header
            if len(body) > COALESCE_BYTES:
                connection._write(small, connect_timeout)
                connection._write(body, connect_timeout)
                small = bytearray()
            else:
                small += body
                if len(small) >= COALESCE_BYTES:
                    connection._write(small, connect_timeout)
                    small = bytearray()
            del body  # before the next request is serialized: one large body at a time
        if small:
            connection._write(small, connect_timeout)
        connection._read_sock.recv(sent)

    return send_queued
