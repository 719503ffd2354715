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
from livedata.snapshots import DATA_LINK, TreePublisher, TreeSpec, child_name_problem
from livedata.snapshots import cleanup as tree_cleanup
from livedata.tree_layout import CHANGES_LINK

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


# --- the tree publisher against a model ----------------------------------------------------------------------


child_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=10)
trees = st.dictionaries(child_names, st.binary(max_size=48), max_size=10)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), trees),
        st.tuples(st.just("foreign"), st.sampled_from(["top", "snapshot", "dotted"])),
        st.tuples(st.just("killed"), trees, st.integers(0, 2000)),
        st.tuples(st.just("restart"), st.just(None)),
    ),
    min_size=1,
    max_size=12,
)


def visible(dest: str, strict: bool = True) -> dict[str, bytes]:
    """What a reader finds through the visible names (each a link through ``..data``), read the documented way;
    ``strict``: and nothing else is visible (no foreign file planted since the last publish)."""
    snapshot = os.readlink(os.path.join(dest, DATA_LINK))
    names = sorted(os.listdir(os.path.join(dest, snapshot)))
    if strict:
        assert sorted(n for n in os.listdir(dest) if not n.startswith(".")) == names, "visible names are not ..data's"
    result = {}
    for name in names:
        with open(os.path.join(dest, name if strict else os.path.join(DATA_LINK, name)), "rb") as f:
            result[name] = f.read()
    return result


def killed_publish(spec: TreeSpec, children: dict[str, bytes], after_us: int) -> None:
    """A run killed at a random moment of its publish (a fork SIGKILLed, as a crash or an OOM kill would)."""
    import signal
    import time

    pid = os.fork()
    if pid == 0:  # the child publishes and never returns to the test
        try:
            TreePublisher(spec).publish(children)
        finally:
            os._exit(0)
    time.sleep(after_us / 1e6)  # a random moment of the child's run, not a synchronisation
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_a_tree_dest_always_holds_exactly_one_published_snapshot(script) -> None:
    """Any sequence of publishes, foreign files and killed runs: the directory always holds exactly the last
    snapshot published (or, after a killed run, the one before or the one it was publishing), never a mix;
    after a restart's cleanup nothing else is left in it."""
    with tempfile.TemporaryDirectory() as top:
        spec = TreeSpec(os.path.join(top, "tree"), mode=0o444)
        publisher = TreePublisher(spec)
        model: dict[str, bytes] | None = None
        for step in script:
            kind = step[0]
            if kind == "publish":
                publisher.publish(step[1])
                model = dict(step[1])
            elif kind == "foreign" and model is not None:
                where = {"top": spec.dest, "dotted": spec.dest,
                         "snapshot": os.path.join(spec.dest, os.readlink(os.path.join(spec.dest, DATA_LINK)))}
                name = ".stray" if step[1] == "dotted" else "stray-file"
                with open(os.path.join(where[step[1]], name), "wb") as f:
                    f.write(b"not livedata's")
                if step[1] == "snapshot":
                    model = None  # a foreign file inside the snapshot: what readers see until the next publish
            elif kind == "killed":
                exists = os.path.lexists(os.path.join(spec.dest, DATA_LINK))
                before = visible(spec.dest, strict=False) if exists else None  # foreign files may stand beside
                killed_publish(spec, step[1], step[2])
                tree_cleanup(spec)
                after = visible(spec.dest) if os.path.lexists(os.path.join(spec.dest, DATA_LINK)) else None
                assert after in (before, step[1]), "a killed run left neither the old nor the new snapshot"
                publisher, model = TreePublisher(spec), after  # the next run starts afresh
            elif kind == "restart" and model is not None:
                tree_cleanup(spec)
                publisher = TreePublisher(spec)
                assert visible(spec.dest) == model
                current = os.readlink(os.path.join(spec.dest, DATA_LINK))
                layout = [DATA_LINK, current, *model] + ([CHANGES_LINK] if os.path.lexists(
                    os.path.join(spec.dest, CHANGES_LINK)) else [])  # what the last publish changed, for readers
                assert sorted(os.listdir(spec.dest)) == sorted(layout), "cleanup left debris"
            if model is not None and kind != "foreign":
                assert visible(spec.dest) == model
