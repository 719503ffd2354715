"""A TCP proxy in front of a ZooKeeper server that can slip a stray reply into what the server sends a client.

A reply whose xid matches no request is what kazoo gets when ZooKeeper answers out of the order kazoo expects
(an authentication answered ahead of earlier requests): kazoo pairs it with its oldest pending request, or finds
none, and its connection routine dies ("xids do not match", or an IndexError).  The proxy forwards whole frames
(ZooKeeper frames every message with a 4-byte length) so an injected one never splits a real one.  It works in
threads or, in a gevent-patched process, in greenlets.
"""
from __future__ import annotations

import contextlib
import socket
import struct
import threading

STRAY_XID = 0x7FFFFF00  # far above any xid a short test reaches: pairs with no request


def stray_reply() -> bytes:
    """A reply frame: length, then ZooKeeper's reply header (xid, zxid, err) with no body."""
    header = struct.pack(">iqi", STRAY_XID, 0, 0)
    return struct.pack(">i", len(header)) + header


class StrayReplyProxy:
    """Listens on a free loopback port (:attr:`address`) and relays every connection to ``port``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted = 0
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def inject(self) -> int:
        """Send a stray reply down every open connection; returns how many got one."""
        with self._lock:
            links = [link for link in self._links if link.open]
        for link in links:
            link.send(stray_reply())
        return len(links)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for link in self._links:
                link.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self.accepted += 1
                self._links = [link for link in self._links if link.open] + [_Link(client, server)]


class _Link:
    """One client connection and its server connection; server frames are relayed whole, under a lock."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.open = True
        self._send_lock = threading.Lock()
        threading.Thread(target=self._upstream, daemon=True).start()
        threading.Thread(target=self._downstream, daemon=True).start()

    def send(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self.client.sendall(data)
            except OSError:
                self.close()

    def close(self) -> None:
        self.open = False
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _upstream(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.client.recv(65536):
                self.server.sendall(data)
        self.close()

    def _downstream(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            while True:
                length = _read_exactly(self.server, 4)
                body = _read_exactly(self.server, struct.unpack(">i", length)[0])
                self.send(length + body)
        self.close()


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)
