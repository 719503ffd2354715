"""The stored form of data too big (or worth compressing) for one plain znode: a versioned envelope.

Standard library only: the watcher, :class:`~livedata.LiveNode`, the writer and the reader all decode through
this one module, and tools in other languages can follow the byte layout below.

Stored form (all integers big-endian)::

    offset 0   4 bytes  magic  b"\\x00LDP"   (NUL first: no text or JSON starts with it; zlib starts 0x78,
                                             gzip 0x1f 0x8b, so neither is ever mistaken for an envelope)
    offset 4   1 byte   format version, 1
    offset 5   4 bytes  header length H (unsigned)
    offset 9   H bytes  header: a UTF-8 JSON object
                          "codec":   "zlib" (RFC 1950 stream) or "identity" (bytes as they are)
                          "size":    decoded size in bytes
                          "sha256":  hex sha256 of the decoded bytes
                          "stored":  encoded size in bytes (inline body, or all chunks together)
                          "chunks":  list of chunk names, in order; empty when the body is inline
                        other keys are kept as :attr:`Envelope.meta` (who, when, why, signature: see
                        :mod:`livedata.provenance`); readers that do not know them ignore them
    offset 9+H          inline body (the whole encoded body) when "chunks" is empty, else nothing

A chunk is a child znode of the node, named ``.livedata-chunk-<hex sha256 of the chunk's bytes>``; the encoded
body is the chunks' bytes concatenated in the header's order.  Children rather than siblings: they carry the
node's own ACL, need no CREATE right on the parent, move and get deleted with the node (a recursive delete),
and can never collide with another node's chunks.  Content-addressed names make chunks immutable (a name
always means the same bytes, so a reader needs no watch on them and verifies each one by its name) and let
an unchanged part of the data reuse its chunk.

Data that does not start with the magic is *plain*: copied byte for byte, whatever it looks like (gzip or zlib
data included).  That is what keeps nodes written before this format, and nodes written in ``auto`` mode
that fit, readable by old and new readers alike.

The API, kept small on purpose:

* :func:`encode` ``(data, mode, max_node_size) -> Stored``: what to store: ``node_data`` for the node itself,
  ``chunks`` (name -> bytes) for its children, ``envelope`` (``None`` when stored plain), ``codec`` and
  ``stored_size``.  ``mode`` is one of :data:`MODES`.
* :func:`parse` ``(node_data) -> Envelope | None``: ``None`` for plain data.
* :attr:`Envelope.chunk_names` and :meth:`Envelope.decode` ``(chunks, max_size) -> bytes``: verify and inflate
  once the chunks have been read (the watcher reads them asynchronously).
* :func:`decode_node` ``(node_data, read_chunk, max_size) -> bytes``: the same in one call for synchronous
  readers; ``read_chunk(name)`` returns the chunk's bytes or ``None`` when the chunk does not exist.
* :attr:`Envelope.distinct_chunks`, :meth:`Envelope.check_chunk_sizes` ``(sizes)`` and :meth:`Envelope.tally`:
  read each name once, and never more than the declared stored size (checked from the chunks' stats before
  reading them, and as they arrive).
* :meth:`Envelope.check_size` ``(max_size)``: refuse early, before reading chunks; :func:`chunk_name`
  ``(chunk) -> str``: a chunk's child name.  :mod:`livedata.chunks` does the ZooKeeper side (``chunk_path``,
  ``read_decoded`` with the missing-chunk retry, writing and cleaning up).

Every refusal raises a :class:`PayloadError` subclass whose message is one line naming the reason (a header
nested too deeply for the JSON parser included).  Decoding is bounded: the declared size is checked against
``max_size`` before any work, what is read against the declared stored size (a chunk listed 2,000 times is
read once and counted 2,000 times), and the inflate is streamed with ``max_length`` so that a decompression
bomb never produces more than the declared size plus one byte.

Only zlib: it is always there, and the node's bytes cross the network once per host while inflating
5 MiB of JSON takes a few milliseconds, so a faster codec would buy little for an optional dependency.
"""
from __future__ import annotations

import hashlib
import json
import reprlib
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CHUNK_PREFIX",
    "CODECS",
    "DEFAULT_MAX_PAYLOAD_SIZE",
    "HISTORY_PREFIX",
    "MAGIC",
    "MODES",
    "RESERVED_PREFIX",
    "VERSION",
    "BadChunkError",
    "BadEnvelopeError",
    "ChunkNotAllowedError",
    "ChunkTally",
    "DecodedTooLargeError",
    "Envelope",
    "HashMismatchError",
    "InflateBombError",
    "MissingChunkError",
    "PayloadError",
    "PayloadTooLargeError",
    "Stored",
    "TruncatedError",
    "UnknownCodecError",
    "UnknownVersionError",
    "chunk_name",
    "decode_node",
    "encode",
    "history_name",
    "history_version",
    "parse",
    "restamp",
]

MAGIC = b"\x00LDP"
VERSION = 1
RESERVED_PREFIX = ".livedata-"  # children livedata keeps beside a node's data: never mirrored, never a tree's child
CHUNK_PREFIX = ".livedata-chunk-"
HISTORY_PREFIX = ".livedata-history-"  # + the znode version a write produced, 10 digits: a kept earlier version
_KNOWN_KEYS = ("codec", "size", "sha256", "stored", "chunks")
CODECS = ("zlib", "identity")
MODES = ("auto", "always", "never")
DEFAULT_MAX_PAYLOAD_SIZE = 64 * 1024 * 1024

_PREFIX = struct.Struct(">4sBI")  # magic, version, header length
_ZLIB_LEVEL = 6  # zlib's default: level 9 costs the writer about twice the time for under 3% fewer bytes
_HEX = frozenset("0123456789abcdef")
_INFLATE_STEP = 1 << 20  # output produced per call, so no single call allocates much past the bound


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 80
_SHOWN.maxlevel = 2


def _shown(value: object) -> str:
    """A header value as an error message quotes it: cut short, since a hostile header can hold a megabyte."""
    return _SHOWN.repr(value)


class PayloadError(ValueError):
    """Stored data that cannot be decoded (or data that cannot be stored); the message is one line."""


class BadEnvelopeError(PayloadError):
    """The magic is there but what follows is not a well-formed envelope."""


class UnknownVersionError(PayloadError):
    def __init__(self, version: int) -> None:
        super().__init__(f"stored with envelope format version {version}, this reader knows only {VERSION}")


class UnknownCodecError(PayloadError):
    def __init__(self, codec: object) -> None:
        super().__init__(f"stored with codec {_shown(codec)}, this reader knows only {', '.join(CODECS)}")


class MissingChunkError(PayloadError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"chunk {name} does not exist")


class ChunkNotAllowedError(PayloadError):
    """A chunk this session may not read although it may read the node: the chunk's ACL is not the node's."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"not allowed to read chunk {name} (its ACL is not the node's; writing the node again gives every "
            "chunk the node's ACL)"
        )


class BadChunkError(PayloadError):
    """A chunk whose bytes do not match its content-addressed name."""


class HashMismatchError(PayloadError):
    """The decoded bytes are not the ones the writer hashed."""


class TruncatedError(PayloadError):
    """The encoded body ends before the data does."""


class DecodedTooLargeError(PayloadError):
    def __init__(self, size: int, max_size: int) -> None:
        super().__init__(f"decoded data would be {size:,} bytes, above the limit of {max_size:,} bytes")


class InflateBombError(PayloadError):
    def __init__(self, size: int) -> None:
        super().__init__(f"compressed stream inflates past its declared {size:,} bytes (decompression bomb?)")


class PayloadTooLargeError(PayloadError):
    """The data cannot be stored within the node size limit (mode ``never``, or a limit too small for chunks)."""


# --- the envelope -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """A parsed envelope: what the header promises, and the inline body when there are no chunks."""

    codec: str
    size: int
    sha256: str
    stored_size: int
    chunk_names: list[str]
    inline: bytes = b""
    meta: Mapping[str, Any] = field(default_factory=dict)  # the header's other keys (provenance, signature)

    @property
    def chunked(self) -> bool:
        return bool(self.chunk_names)

    @property
    def distinct_chunks(self) -> list[str]:
        """Each chunk name once, in order of first use: a name listed twice is read once (its bytes are the same)."""
        return list(dict.fromkeys(self.chunk_names))

    def check_chunk_sizes(self, sizes: Mapping[str, int]) -> None:
        """Before reading any chunk: the sizes of the chunks (``name -> bytes``, from their stats) must add up,
        counting each name as often as it is listed, to the declared stored size.

        This is what bounds what a reader fetches for one version by the ``stored`` it declares, however many
        times an envelope lists a chunk and however big the chunks it names.
        """
        total = sum(sizes[name] for name in self.chunk_names)
        if total != self.stored_size:
            error = TruncatedError if total < self.stored_size else BadEnvelopeError
            raise error(f"the chunks listed hold {total:,} bytes, header says {self.stored_size:,}")

    def tally(self) -> ChunkTally:
        """A running count of the bytes read, for readers that check as they go (see :class:`ChunkTally`)."""
        return ChunkTally(self)

    def to_bytes(self) -> bytes:
        """The node data for this envelope (the inverse of :func:`parse`)."""
        header = {
            "codec": self.codec,
            "size": self.size,
            "sha256": self.sha256,
            "stored": self.stored_size,
            "chunks": self.chunk_names,
            **{key: value for key, value in self.meta.items() if key not in _KNOWN_KEYS},
        }
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        return _PREFIX.pack(MAGIC, VERSION, len(raw)) + raw + self.inline

    def check_size(self, max_size: int) -> None:
        """Refuse before reading any chunk when the data would be bigger than the caller accepts."""
        if self.size > max_size:
            raise DecodedTooLargeError(self.size, max_size)

    def decode(self, chunks: Sequence[bytes], max_size: int) -> bytes:
        """The decoded data, from the chunks' bytes in :attr:`chunk_names` order (nothing when inline).

        Checks, in order: the size limit, each chunk against its name, the stored size, then a bounded
        inflate, the decoded size and its sha256.
        """
        self.check_size(max_size)
        if len(chunks) != len(self.chunk_names):
            raise BadEnvelopeError(f"{len(self.chunk_names)} chunks listed but {len(chunks)} given")
        verified: dict[str, bytes] = {}
        for name, chunk in zip(self.chunk_names, chunks):
            if verified.get(name) is chunk:
                continue  # the same chunk listed again: hashed once
            if chunk_name(chunk) != name:
                raise BadChunkError(f"chunk {name} holds other bytes (sha256 {chunk_name(chunk)[len(CHUNK_PREFIX):]})")
            verified[name] = chunk
        parts = list(chunks) if self.chunk_names else [self.inline]
        stored = sum(len(part) for part in parts)
        if stored != self.stored_size:
            error = TruncatedError if stored < self.stored_size else BadEnvelopeError
            raise error(f"encoded body is {stored:,} bytes, header says {self.stored_size:,}")
        data = _inflate(parts, self.size) if self.codec == "zlib" else b"".join(parts)
        if len(data) != self.size:
            raise TruncatedError(f"decoded {len(data):,} bytes, header says {self.size:,}")
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise HashMismatchError("decoded data does not match its sha256")
        return data


class ChunkTally:
    """The bytes of one version's chunks as they arrive: never more than the declared stored size.

    Each name counts as often as the envelope lists it, so a reader that stops at the first refusal has read
    at most the stored size plus one chunk, whatever the envelope lists.
    """

    def __init__(self, envelope: Envelope) -> None:
        self._envelope = envelope
        self._listed = Counter(envelope.chunk_names)
        self.total = 0

    def add(self, name: str, chunk: bytes) -> None:
        """Count a chunk just read; :class:`BadEnvelopeError` once the chunks outgrow the stored size."""
        self.total += len(chunk) * self._listed[name]
        if self.total > self._envelope.stored_size:
            raise BadEnvelopeError(
                f"the chunks listed hold more than the {self._envelope.stored_size:,} bytes the header says"
            )


def _inflate(parts: Sequence[bytes], size: int) -> bytes:
    """Inflate a zlib stream spread over ``parts``, never producing more than ``size + 1`` bytes.

    The pieces are joined once at the end: a growing buffer would copy itself over and over, holding the
    GIL (and so the gevent hub, even from the thread pool) each time.
    """
    inflater = zlib.decompressobj()
    out: list[bytes] = []
    produced = 0
    try:
        for part in parts:
            pending = part
            while pending or not inflater.eof:
                if inflater.eof:
                    raise BadEnvelopeError("bytes follow the end of the compressed stream")
                room = min(size + 1 - produced, _INFLATE_STEP)
                piece = inflater.decompress(pending, room)
                out.append(piece)
                produced += len(piece)
                if produced > size:
                    raise InflateBombError(size)
                pending = inflater.unconsumed_tail
                if not pending and len(piece) < room:
                    break  # this part is used up and nothing is held back: on to the next one
    except zlib.error as e:
        raise BadEnvelopeError(f"corrupt compressed stream: {e}") from None
    if not inflater.eof:
        raise TruncatedError("compressed stream ends early")
    if inflater.unused_data:
        raise BadEnvelopeError("bytes follow the end of the compressed stream")
    return b"".join(out)


def parse(node_data: bytes) -> Envelope | None:
    """The envelope stored in a node, or ``None`` when the node holds plain data (no magic prefix)."""
    if not node_data.startswith(MAGIC):
        return None
    if len(node_data) < _PREFIX.size:
        raise BadEnvelopeError(f"envelope cut short: {len(node_data)} bytes")
    _, version, header_length = _PREFIX.unpack_from(node_data)
    if version != VERSION:
        raise UnknownVersionError(version)
    end = _PREFIX.size + header_length
    if end > len(node_data):
        raise BadEnvelopeError(f"header of {header_length:,} bytes does not fit in {len(node_data):,} bytes")
    try:
        header = json.loads(node_data[_PREFIX.size : end].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadEnvelopeError(f"header is not JSON: {e}") from None
    except RecursionError:
        raise BadEnvelopeError("header is not JSON: nested too deeply") from None
    if not isinstance(header, dict):
        raise BadEnvelopeError("header is not a JSON object")
    envelope = Envelope(
        codec=_codec(header.get("codec")),
        size=_count(header, "size"),
        sha256=_hex_digest(header.get("sha256"), "sha256"),
        stored_size=_count(header, "stored"),
        chunk_names=_chunk_names(header.get("chunks")),
        inline=node_data[end:],
        meta={key: value for key, value in header.items() if key not in _KNOWN_KEYS},
    )
    if envelope.chunk_names and envelope.inline:
        raise BadEnvelopeError("both chunks and an inline body")
    if envelope.stored_size > envelope.size + envelope.size // 1000 + 64:
        raise BadEnvelopeError(f"stored size {envelope.stored_size:,} is implausible for {envelope.size:,} bytes")
    distinct = len(envelope.distinct_chunks)
    if distinct > envelope.stored_size:
        raise BadEnvelopeError(f"{distinct:,} distinct chunks cannot hold {envelope.stored_size:,} stored bytes")
    return envelope


def _codec(value: Any) -> str:
    if value not in CODECS:
        raise UnknownCodecError(value)
    return str(value)


def _count(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if type(value) is not int or value < 0:
        raise BadEnvelopeError(f"header {key!r} is not a byte count: {_shown(value)}")
    return value


def _hex_digest(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or not _HEX.issuperset(value):
        raise BadEnvelopeError(f"header {what!r} is not a lowercase hex sha256: {_shown(value)}")
    return value


def _chunk_names(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise BadEnvelopeError("header 'chunks' is not a list")
    names = []
    for name in value:
        if not isinstance(name, str) or not name.startswith(CHUNK_PREFIX):
            raise BadEnvelopeError(f"header lists a chunk that is not a chunk name: {_shown(name)}")
        _hex_digest(name[len(CHUNK_PREFIX) :], "chunks")
        names.append(name)
    return names


def history_name(version: int) -> str:
    """The child name of the kept version that a write turned into znode version ``version``."""
    return f"{HISTORY_PREFIX}{version:010d}"


def history_version(name: str) -> int | None:
    """The znode version a history child's name records; ``None`` for any other name."""
    digits = name[len(HISTORY_PREFIX) :] if name.startswith(HISTORY_PREFIX) else ""
    return int(digits) if digits.isdigit() and len(digits) == 10 else None


def chunk_name(chunk: bytes) -> str:
    """The content-addressed child name of a chunk."""
    return CHUNK_PREFIX + hashlib.sha256(chunk).hexdigest()


def decode_node(node_data: bytes, read_chunk: Callable[[str], bytes | None], max_size: int) -> bytes:
    """The decoded data of a node: plain data as is, an envelope verified and inflated.

    ``read_chunk(name)`` returns a chunk's bytes, or ``None`` when it does not exist; chunks are only read
    once the declared size has passed ``max_size``, each name once, and reading stops as soon as they hold
    more than the declared stored size.
    """
    envelope = parse(node_data)
    if envelope is None:
        return node_data
    envelope.check_size(max_size)
    found: dict[str, bytes] = {}
    tally = envelope.tally()
    for name in envelope.distinct_chunks:  # each name read once, and no more once past the stored size
        chunk = read_chunk(name)
        if chunk is None:
            raise MissingChunkError(name)
        tally.add(name, chunk)
        found[name] = chunk
    return envelope.decode([found[name] for name in envelope.chunk_names], max_size)


# --- encoding -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    """How to store some data: ``node_data`` into the node, ``chunks`` (name -> bytes) as its children.

    ``envelope`` is ``None`` when the data is stored plain (then ``node_data`` is the data itself and
    ``codec`` is ``"plain"``); ``stored_size`` counts the bytes that carry the data (the node's data when
    plain, else the encoded body, inline or in chunks).
    """

    node_data: bytes
    envelope: Envelope | None
    codec: str
    stored_size: int
    chunks: dict[str, bytes] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """Everything written: the node's data and every chunk (what one change costs each reading host)."""
        return len(self.node_data) + sum(len(chunk) for chunk in self.chunks.values())


def encode(data: bytes, mode: str, max_node_size: int, enveloped: bool = False) -> Stored:
    """Choose the stored form of ``data`` for ``mode`` (see :data:`MODES`) and nodes of ``max_node_size`` bytes.

    ``never`` stores plain or raises :class:`PayloadTooLargeError`; ``auto`` stores plain what fits and
    compresses (then chunks) the rest; ``always`` compresses whenever that makes the stored form smaller.
    Plain data that happens to start with :data:`MAGIC` is wrapped (``identity``) unless ``mode`` is
    ``never``, which refuses it: stored plain, every new reader would misread it.  ``enveloped`` (the writer
    records who, when and why in the header) stores an envelope in ``auto`` and ``always`` even for data that
    would fit plain: zlib when that is smaller, else ``identity``; see :func:`restamp`.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}, expected one of {', '.join(MODES)}")
    ambiguous = data.startswith(MAGIC)
    if mode == "never":
        if ambiguous:
            raise PayloadError("data starts with livedata's envelope magic (\\x00LDP): use --compress auto")
        if len(data) > max_node_size:
            raise PayloadTooLargeError(
                f"{len(data):,} bytes do not fit in a node of {max_node_size:,} bytes and compression is off"
            )
        return _plain(data)
    fits = len(data) <= max_node_size and not enveloped
    if mode == "auto" and fits and not ambiguous:
        return _plain(data)
    compressed = zlib.compress(data, _ZLIB_LEVEL)
    if len(compressed) >= len(data):
        if fits and not ambiguous:
            return _plain(data)
        return _enveloped(data, "identity", data, max_node_size)
    stored = _enveloped(data, "zlib", compressed, max_node_size)
    if mode == "always" and fits and not ambiguous and stored.total_bytes >= len(data):
        return _plain(data)  # the header outweighed what compression saved
    return stored


def _plain(data: bytes) -> Stored:
    return Stored(node_data=data, envelope=None, codec="plain", stored_size=len(data))


def _enveloped(data: bytes, codec: str, body: bytes, max_node_size: int) -> Stored:
    return _envelope_of(len(data), hashlib.sha256(data).hexdigest(), codec, body, max_node_size, {})


def _envelope_of(
    size: int, digest: str, codec: str, body: bytes, max_node_size: int, meta: Mapping[str, Any],
    chunked: bool = False,
) -> Stored:
    inline = Envelope(codec, size, digest, len(body), [], body, meta)
    node_data = inline.to_bytes()
    if len(node_data) <= max_node_size and not (chunked and body):
        return Stored(node_data=node_data, envelope=inline, codec=codec, stored_size=len(body))
    pieces = [body[i : i + max_node_size] for i in range(0, len(body), max_node_size)]
    chunks = {chunk_name(piece): piece for piece in pieces}
    envelope = Envelope(codec, size, digest, len(body), [chunk_name(piece) for piece in pieces], b"", meta)
    node_data = envelope.to_bytes()
    if len(node_data) > max_node_size:
        raise PayloadTooLargeError(
            f"{size:,} bytes do not fit in nodes of {max_node_size:,} bytes even compressed and chunked "
            f"(the list of {len(pieces):,} chunks and the header alone need {len(node_data):,} bytes)"
        )
    return Stored(node_data=node_data, envelope=envelope, codec=codec, stored_size=len(body), chunks=chunks)


def restamp(stored: Stored, meta: Mapping[str, Any], max_node_size: int, chunked: bool = False) -> Stored:
    """The same stored body under a header that also carries ``meta`` (author, time, message, signature).

    The body is encoded once, before the writer connects; the header's provenance needs what the node holds
    now (its sequence), so it is added here.  An inline body whose header grew past ``max_node_size`` moves
    to chunks; ``chunked`` moves any body to chunks (a kept version created in the same transaction as a
    large write: one transaction must fit in ``jute.maxbuffer`` too).  Plain data (mode ``never``) has no
    header and is returned as it is.
    """
    envelope = stored.envelope
    if envelope is None:
        return stored
    body = envelope.inline if not envelope.chunked else b"".join(stored.chunks[name] for name in envelope.chunk_names)
    return _envelope_of(envelope.size, envelope.sha256, envelope.codec, body, max_node_size, meta, chunked)
