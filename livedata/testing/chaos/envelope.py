"""The stored format, read and forged independently of ``livedata.payload`` and ``livedata.chunks``.

The observer must not share code with what it checks: a bug in the shared decoder would otherwise agree with
itself. This follows README "The stored format" directly (magic, version, header length, JSON header, inline
body or chunk children), strictly, and also builds the hostile envelopes the schedule plants.
"""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from typing import Any, Callable

MAGIC = b"\0LDP"
CHUNK_PREFIX = ".livedata-chunk-"


class Undecodable(Exception):
    """The node holds an envelope no correct reader may accept (what the watcher must not publish)."""


def is_envelope(data: bytes) -> bool:
    return data.startswith(MAGIC)


def decode(data: bytes, get_chunk: Callable[[str], bytes | None], limit: int) -> bytes:
    """The bytes a correct reader publishes for node ``data``; ``get_chunk(name)`` reads one chunk child."""
    if not is_envelope(data):
        return data
    if len(data) < 9 or data[4] != 1:
        raise Undecodable("unknown version or cut short")
    (length,) = struct.unpack(">I", data[5:9])
    if 9 + length > len(data):
        raise Undecodable("header cut short")
    try:
        header = json.loads(data[9 : 9 + length].decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise Undecodable(f"malformed header: {type(e).__name__}") from None
    if not isinstance(header, dict):
        raise Undecodable("header is not an object")
    size, stored, names = header.get("size"), header.get("stored"), header.get("chunks", [])
    if not (isinstance(size, int) and isinstance(stored, int) and isinstance(names, list)):
        raise Undecodable("size, stored or chunks missing")
    if size > limit or stored > limit + 1024:
        raise Undecodable("above the bound")
    body = data[9 + length :]
    if names:
        if body:
            raise Undecodable("both a body and chunks")
        parts = []
        total = 0
        for name in names:
            chunk = get_chunk(name) if isinstance(name, str) else None
            if chunk is None or name != CHUNK_PREFIX + hashlib.sha256(chunk).hexdigest():
                raise Undecodable(f"chunk {name!r} missing or not what its name says")
            total += len(chunk)
            if total > stored:
                raise Undecodable("chunks longer than the stored size")
            parts.append(chunk)
        body = b"".join(parts)
    if len(body) != stored:
        raise Undecodable("body size differs from stored")
    codec = header.get("codec")
    if codec == "identity":
        decoded = body
    elif codec == "zlib":
        inflater = zlib.decompressobj()
        try:
            decoded = inflater.decompress(body, size + 1)
        except zlib.error as e:
            raise Undecodable(f"corrupt stream: {e}") from None
        if not inflater.eof or inflater.unused_data:
            raise Undecodable("stream longer or shorter than declared")
    else:
        raise Undecodable(f"unknown codec {codec!r}")
    if len(decoded) != size or hashlib.sha256(decoded).hexdigest() != header.get("sha256"):
        raise Undecodable("size or sha256 differs")
    return decoded


def forge(header: dict[str, Any] | bytes, body: bytes = b"", version: int = 1) -> bytes:
    """An envelope with any header (a dict, or raw header bytes) and body, valid or not."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return MAGIC + bytes([version]) + struct.pack(">I", len(raw)) + raw + body


def chunk_name(chunk: bytes) -> str:
    return CHUNK_PREFIX + hashlib.sha256(chunk).hexdigest()


def honest_header(data: bytes, codec: str, body: bytes, chunks: list[str] | None = None) -> dict[str, Any]:
    return {"codec": codec, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "stored": len(body),
            "chunks": chunks or []}  # fmt: skip
