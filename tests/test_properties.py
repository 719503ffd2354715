"""Property tests (Hypothesis) where the input space is too large for examples: stored envelopes from any
bytes, INI files from any text, tree child names.

Each property states what must hold for every input; the ``@example`` cases are inputs that once broke it.
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
import unicodedata

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from livedata.config import ConfigError, read_config
from livedata.payload import CHUNK_PREFIX, MAGIC, Envelope, PayloadError, chunk_name, decode_node, parse
from livedata.snapshots import child_name_problem

LIMIT = 1 << 20

# --- envelopes -----------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
CHUNKS = [bytes([i]) * (1 + 997 * i) for i in range(4)]
header_values = st.fixed_dictionaries(
    {},
    optional={
        "codec": st.sampled_from(["zlib", "identity", "lzma", 7]) | json_values,
        "size": st.integers(-1, 3 * LIMIT) | json_values,
        "sha256": st.sampled_from(["0" * 64, "f" * 64]) | json_values,
        "stored": st.integers(-1, 3 * LIMIT) | json_values,
        "chunks": st.lists(st.sampled_from([chunk_name(c) for c in CHUNKS]), max_size=3000) | json_values,
    },
)


def forged(header: bytes, body: bytes = b"", version: int = 1, length: int | None = None) -> bytes:
    return MAGIC + bytes([version]) + struct.pack(">I", len(header) if length is None else length) + header + body


node_data = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda b: MAGIC + b, st.binary(max_size=200)),
    st.builds(lambda h, body: forged(json.dumps(h).encode(), body), header_values, st.binary(max_size=64)),
    st.builds(
        forged, st.binary(max_size=200), st.binary(max_size=64), st.integers(0, 255),
        st.none() | st.integers(0, 2**32 - 1),
    ),
)  # fmt: skip


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(node_data)
@example(forged(b"[" * 100_000 + b"]" * 100_000))
@example(forged(b'{"a":' * 50_000 + b"1" + b"}" * 50_000))
def test_any_node_data_parses_or_raises_a_documented_error(data: bytes) -> None:
    try:
        envelope = parse(data)
    except PayloadError as e:
        assert "\n" not in str(e), "one line"
        return
    assert envelope is None or isinstance(envelope, Envelope)
    if envelope is None:
        assert not data.startswith(MAGIC)


def _repeated_chunk_bomb(copies: int) -> bytes:
    chunk = CHUNKS[3]
    header = {"codec": "identity", "size": len(chunk), "sha256": "0" * 64, "stored": len(chunk),
              "chunks": [chunk_name(chunk)] * copies}  # fmt: skip
    return forged(json.dumps(header).encode())


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(node_data)
@example(_repeated_chunk_bomb(2000))
def test_decoding_reads_no_more_than_the_declared_stored_size_plus_one_chunk(data: bytes) -> None:
    """What one version costs a host is bounded by what its envelope declares, before and while reading."""
    by_name = {chunk_name(c): c for c in CHUNKS}
    read = []

    def read_chunk(name: str) -> bytes | None:
        chunk = by_name.get(name)
        read.append(len(chunk or b""))
        return chunk

    try:
        decoded = decode_node(data, read_chunk, LIMIT)
    except PayloadError:
        decoded = None
    envelope = None
    with contextlib.suppress(PayloadError):
        envelope = parse(data)
    if envelope is not None:
        assert sum(read) <= envelope.stored_size + max(map(len, CHUNKS)), f"read {sum(read):,} bytes"
    if decoded is not None:
        assert len(decoded) <= LIMIT


# --- INI files -----------------------------------------------------------------------------------------------

INI_FRAGMENTS = ["[live-data]", "[other]", "", "; comment", "# comment", "nodes.a.source = /a",
                 "nodes.a.dest = /tmp/a", "  nodes.b.source = /b", "\tnodes.b.dest = /tmp/b", "key: value",
                 "zookeeper.hosts = 127.0.0.1:2181", "x = $HOME", "y = $$literal", "[live-data"]  # fmt: skip
ini_lines = st.one_of(
    st.sampled_from(INI_FRAGMENTS),
    st.text(max_size=30),
    st.builds(lambda k, v: f"{k} = {v}", st.text(max_size=10), st.text(max_size=20)),
    st.builds(lambda v: f"   {v}", st.text(max_size=20)),
)


def _has_control_character(value: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in value)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(ini_lines, max_size=12))
@example(["[live-data]", "nodes.a.dest = /tmp/q.json", "  nodes.b.source = /y", "  nodes.b.dest = /tmp/b"])
def test_any_ini_text_is_a_config_error_or_values_without_control_characters(lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "x.ini")
        with open(path, "w", encoding="utf-8", errors="surrogatepass", newline="") as f:
            f.write("\n".join(["[live-data]", *lines]) + "\n")
        try:
            config = read_config(path)
        except ConfigError as e:
            assert "\n" not in str(e), "one line"
            return
    bad = {key: value for key, value in config.items() if _has_control_character(key + value)}
    assert not bad, f"accepted values holding control characters: {bad!r}"


# --- child names ---------------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300) | st.sampled_from([".", "..", "..data", "a/b", "a\0b", CHUNK_PREFIX + "0" * 64]))
def test_a_child_name_is_refused_or_makes_exactly_one_plain_file(name: str) -> None:
    problem = child_name_problem(name)
    if problem is not None:
        assert "\n" not in problem
        return
    assert not name.startswith(".") and "/" not in name and "\0" not in name
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, name)
        with open(path, "x"):
            pass
        assert os.listdir(directory) == [name]
