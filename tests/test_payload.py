"""The stored format on its own (no ZooKeeper): choices per mode, the exact byte layout, every bad input.

The bad stored data comes from tests/payloads.py, the same builders the ZooKeeper tests put in real nodes.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import struct
import subprocess
import sys
import tracemalloc
import zlib

import pytest

from livedata.payload import (
    CHUNK_PREFIX,
    MAGIC,
    DecodedTooLargeError,
    Envelope,
    InflateBombError,
    MissingChunkError,
    PayloadError,
    PayloadTooLargeError,
    chunk_name,
    decode_node,
    encode,
    parse,
)
from tests.payloads import (
    BAD_CASES,
    LIMIT,
    MiB,
    amplifying,
    envelope,
    experiments_json,
    header,
    incompressible,
    inline,
)

MAX = 64 * MiB


def round_trip(data: bytes, mode: str, limit: int = LIMIT) -> bytes:
    stored = encode(data, mode, limit)
    assert len(stored.node_data) <= limit
    assert all(len(chunk) <= limit for chunk in stored.chunks.values())
    return decode_node(stored.node_data, stored.chunks.get, MAX)


SIZES = {
    "empty": b"",
    "one byte": b"x",
    "exactly the limit": b"a" * LIMIT,
    "one byte over": b"a" * (LIMIT + 1),
    "5 MiB json": experiments_json(5 * MiB),
}


@pytest.mark.parametrize("mode", ["auto", "always", "never"])
@pytest.mark.parametrize("name", list(SIZES))
def test_round_trips(mode, name):
    data = SIZES[name]
    if mode == "never" and len(data) > LIMIT:
        with pytest.raises(PayloadTooLargeError, match="compression is off"):
            encode(data, mode, LIMIT)
        return
    assert round_trip(data, mode) == data


def test_auto_stores_what_fits_byte_for_byte():
    for data in (b"", b"x", b"a" * LIMIT, b'{"k": 1}'):
        stored = encode(data, "auto", LIMIT)
        assert stored.envelope is None and stored.node_data == data and stored.codec == "plain"


def test_auto_compresses_inline_when_the_compressed_form_fits():
    data = experiments_json(2 * MiB)
    stored = encode(data, "auto", LIMIT)
    assert stored.codec == "zlib" and not stored.chunks
    assert stored.stored_size * 5 < len(data)  # the target for JSON


def test_json_that_still_does_not_fit_is_chunked():
    data = experiments_json(5 * MiB)
    stored = encode(data, "auto", 256 * 1024)
    assert stored.codec == "zlib" and len(stored.chunks) >= 2
    assert decode_node(stored.node_data, stored.chunks.get, MAX) == data


def test_incompressible_data_is_chunked_uncompressed():
    data = incompressible(20 * MiB)
    stored = encode(data, "auto", LIMIT)
    assert stored.codec == "identity"
    assert len(stored.chunks) == 21 and stored.stored_size == len(data)
    assert decode_node(stored.node_data, stored.chunks.get, MAX) == data


def test_always_compresses_only_when_smaller():
    assert encode(b'{"a": 1}', "always", LIMIT).envelope is None  # the header would outweigh the savings
    assert encode(incompressible(10_000), "always", LIMIT).envelope is None
    stored = encode(b'{"key": "value"}\n' * 1000, "always", LIMIT)
    assert stored.codec == "zlib" and stored.total_bytes < 17_000


def test_chunks_are_content_addressed_and_shared():
    data = incompressible(LIMIT) * 3  # three identical chunks: stored once
    stored = encode(data, "auto", LIMIT)
    assert stored.envelope is not None
    assert len(stored.envelope.chunk_names) == 3 and len(stored.chunks) == 1
    for name, chunk in stored.chunks.items():
        assert name == CHUNK_PREFIX + hashlib.sha256(chunk).hexdigest()
    assert decode_node(stored.node_data, stored.chunks.get, MAX) == data


def test_byte_layout_is_the_documented_one():
    data = b'{"key": "value"}\n' * 1000
    node_data = encode(data, "always", LIMIT).node_data
    assert node_data[:4] == b"\x00LDP" and node_data[4] == 1
    (length,) = struct.unpack(">I", node_data[5:9])
    fields = json.loads(node_data[9 : 9 + length])
    assert fields == {
        "codec": "zlib",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "stored": len(node_data) - 9 - length,
        "chunks": [],
    }
    assert zlib.decompress(node_data[9 + length :]) == data


def test_unknown_header_keys_are_ignored():
    data = b"hello " * 100
    node_data = envelope({**header(data, zlib.compress(data)), "future": {"x": 1}}, zlib.compress(data))
    assert decode_node(node_data, {}.get, MAX) == data


@pytest.mark.parametrize(
    "data",
    [
        zlib.compress(b"looks compressed"),
        gzip.compress(b"looks gzipped"),
        b"\x78\x9c not really zlib",
        b"\x1f\x8b not really gzip",
        b"\x00 starts with NUL but is no envelope",
        b"\x00LD almost",
    ],
)
def test_plain_data_is_copied_byte_for_byte_whatever_it_looks_like(data):
    assert parse(data) is None
    assert decode_node(data, {}.get, MAX) == data
    stored = encode(data, "never", LIMIT)
    assert stored.node_data == data


def test_data_starting_with_the_magic_is_wrapped_or_refused():
    data = MAGIC + b"\x01 binary that happens to start like an envelope"
    for mode in ("auto", "always"):
        stored = encode(data, mode, LIMIT)
        assert stored.envelope is not None
        assert decode_node(stored.node_data, stored.chunks.get, MAX) == data
    with pytest.raises(PayloadError, match="envelope magic"):
        encode(data, "never", LIMIT)


@pytest.mark.parametrize("name", list(BAD_CASES))
def test_every_bad_stored_form_is_one_payload_error(name):
    node_data, chunks, reason = BAD_CASES[name]()
    with pytest.raises(PayloadError) as info:
        decode_node(node_data, chunks.get, MAX)
    message = str(info.value)
    assert reason in message
    assert "\n" not in message


def test_size_above_the_limit_is_refused_before_reading_any_chunk():
    data = b"z" * (3 * LIMIT)
    stored = encode(data, "auto", 1000)

    def read_chunk(name: str) -> bytes:
        raise AssertionError("a chunk was read")

    with pytest.raises(DecodedTooLargeError, match="above the limit of 100 bytes"):
        decode_node(stored.node_data, read_chunk, 100)


def test_missing_chunk_names_the_chunk():
    stored = encode(incompressible(2 * LIMIT), "auto", LIMIT)
    assert stored.envelope is not None
    gone = stored.envelope.chunk_names[1]
    with pytest.raises(MissingChunkError) as info:
        decode_node(stored.node_data, {k: v for k, v in stored.chunks.items() if k != gone}.get, MAX)
    assert info.value.name == gone


def test_a_bomb_never_allocates_much_beyond_its_declared_size():
    body = zlib.compress(bytes(256 * MiB), 9)  # about 256 KB inflating to 256 MiB
    bomb = Envelope("zlib", 2 * len(body), "0" * 64, len(body), [], body)
    tracemalloc.start()
    try:
        with pytest.raises(InflateBombError):
            bomb.decode([], MAX)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, peak


def test_an_implausible_stored_size_is_refused_at_parse():
    with pytest.raises(PayloadError, match="implausible"):
        parse(envelope(header(b"", b"", stored=10**9)))


def test_envelope_to_bytes_round_trips_through_parse():
    stored = encode(incompressible(3 * LIMIT), "auto", LIMIT)
    assert stored.envelope is not None
    assert parse(stored.envelope.to_bytes()) == stored.envelope
    assert parse(inline(b"abc" * 100)) is not None


def test_payload_module_needs_neither_kazoo_nor_gevent():
    code = (
        "import sys, livedata.payload; "
        "print(sorted(m for m in sys.modules if m.startswith(('kazoo', 'gevent'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_chunk_listed_thousands_of_times_is_read_once_and_refused():
    """100 KB listed 2,000 times under a declared stored size of 100 KB: one read, not 200 MB."""
    chunk = incompressible(100_000)
    node_data, chunk_map = amplifying(chunk)
    reads: list[str] = []

    def read_chunk(name: str) -> bytes | None:
        reads.append(name)
        return chunk_map.get(name)

    with pytest.raises(PayloadError, match="more than the 100,000 bytes the header says"):
        decode_node(node_data, read_chunk, MAX)
    assert reads == list(chunk_map)


def test_a_chunk_the_data_repeats_is_listed_again_and_read_once():
    """Incompressible data repeating a whole chunk: the writer lists the chunk twice, a reader reads it once."""
    block = incompressible(LIMIT)
    data = block * 3
    stored = encode(data, "auto", LIMIT)
    assert stored.envelope is not None and len(stored.envelope.chunk_names) == 3 and len(stored.chunks) == 1
    reads: list[str] = []

    def read_chunk(name: str) -> bytes | None:
        reads.append(name)
        return stored.chunks.get(name)

    assert decode_node(stored.node_data, read_chunk, MAX) == data
    assert reads == list(stored.chunks)


def test_more_distinct_chunks_than_stored_bytes_is_refused_at_parse():
    names = [chunk_name(bytes([i])) for i in range(10)]
    node_data = envelope(header(b"abc", b"abc", codec="identity", chunks=names))
    with pytest.raises(PayloadError, match="10 distinct chunks cannot hold 3 stored bytes"):
        parse(node_data)


@pytest.mark.parametrize("field", ["codec", "size", "sha256", "stored", "chunks"])
def test_a_header_value_of_a_megabyte_is_quoted_cut_short_in_the_one_line_error(field):
    """The error names the field and shows the start of its value, not the megabyte a hostile header can hold
    (a line that size per version per host in the watcher's log, the writer's and the reader's output)."""
    data = b"abc"
    body = zlib.compress(data)
    huge = "x" * 1_000_000
    fields = header(data, body, **{field: [huge] if field == "chunks" else huge})
    with pytest.raises(PayloadError) as refused:
        decode_node(envelope(fields, body), lambda name: None, MiB)
    message = str(refused.value)
    assert len(message) < 300 and "\n" not in message, message[:300]
    assert "xxxx" in message and (field in ("codec", "chunks") or field in message), message
