"""Large data through the writer against a real ZooKeeper: round trips to the node and to LiveNode, the
stored forms chosen per mode, chunk ACLs, the compare-and-set race with chunks, and the missing-chunk policy.

The writer runs as a subprocess (as a CI job runs it) where its output matters; races are driven in-process
through ``read_current``/``store`` so the competing write lands exactly between a read and a write.
"""
from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import IO, Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import READ_ACL_UNSAFE, make_digest_acl

from livedata import chunks
from livedata.file_watcher import WatchedFileNotAvailableError
from livedata.live_node import LiveNode
from livedata.payload import MissingChunkError, PayloadError, decode_node, encode, parse
from livedata.testing.zookeeper import wait_for
from livedata.writer import NO_CHANGES, NodeChangedError, push, read_current, store, stored_form
from tests.conftest import make_client
from tests.payloads import (
    BAD_CASES,
    LIMIT,
    MiB,
    amplifying,
    chunk_children,
    chunked,
    experiments_json,
    incompressible,
    large_data_server,
    put,
    read_bytes_under,
    referenced_chunks,
)
from tests.test_writer import assert_one_line_failure, run_writer, secrets_config, write_config

MAX = 64 * MiB
OLD = b'{"old": true}\n'


def read_bytes(f: IO[bytes]) -> bytes:
    return f.read()


def decoded(zk: KazooClient, path: str) -> bytes:
    return chunks.read_decoded(zk, path, MAX).data


@pytest.fixture(scope="module")
def zk_server():
    """Megabytes of transactions: a server of our own (see large_data_server)."""
    yield from large_data_server()


@pytest.fixture(autouse=True)
def _remove_the_data(zk, zk_path):
    """The server is shared by the whole run and holds everything in a 256 MB heap: take our megabytes back."""
    yield
    zk.add_auth("digest", "ci:right-password")  # the ACL tests' nodes
    zk.delete(zk_path, recursive=True)


@pytest.fixture
def config(tmp_path, zk_server) -> Path:
    return write_config(tmp_path, zk_server.address)


@pytest.fixture
def node(zk, zk_path) -> str:
    path = f"{zk_path}/big"
    zk.create(path, OLD)
    return path


def write(tmp_path: Path, node: str, data: bytes, *args: str, name: str = "input.bin"):
    (tmp_path / name).write_bytes(data)
    return run_writer(tmp_path, "writer.ini", name, node, "--allow-empty", *args)


CASES = {
    "empty": lambda: b"",
    "one byte": lambda: b"x",
    "exactly the node limit": lambda: b"a" * LIMIT,
    "one byte over the limit": lambda: b"a" * (LIMIT + 1),
    "5 MiB of experiments JSON": lambda: experiments_json(5 * MiB),
    "20 MiB incompressible": lambda: incompressible(20 * MiB),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_writer_to_node_and_live_node(tmp_path, config, zk, zk_server, node, case):
    data = CASES[case]()
    app = make_client(zk_server.address)
    try:
        with LiveNode(app, node, read_bytes, binary=True, timeout=10) as live:
            result = write(tmp_path, node, data)
            assert result.returncode == 0, result.stderr
            assert result.stdout.endswith("Wrote data to ZooKeeper.\n")
            assert decoded(zk, node) == data
            wait_for(lambda: live.get_data() == data, timeout=30, message="LiveNode to hold the new data")
        with LiveNode(app, node, read_bytes, binary=True, timeout=10) as fresh:
            assert fresh.get_data() == data
    finally:
        app.stop()
        app.close()
    raw = zk.get(node)[0]
    if len(data) <= LIMIT:
        assert raw == data  # auto: what fits is stored exactly as before
    else:
        assert parse(raw) is not None
    assert chunk_children(zk, node) == referenced_chunks(zk, node)  # the kept versions keep theirs


@pytest.mark.timeout(60)
def test_output_names_the_stored_form(tmp_path, config, zk, node):
    data = incompressible(3 * MiB)
    result = write(tmp_path, node, data)
    assert result.returncode == 0, result.stderr
    assert "stored as identity, 3,145,728 -> 3,145,728 bytes in 4 chunks\n" in result.stdout
    data = experiments_json(5 * MiB)
    result = write(tmp_path, node, data, name="experiments.json")
    envelope = parse(zk.get(node)[0])
    assert envelope is not None and not envelope.chunk_names
    line = f"stored as zlib, {len(data):,} -> {envelope.stored_size:,} bytes in the node\n"
    assert line in result.stdout
    assert chunk_children(zk, node) == referenced_chunks(zk, node)  # only the kept versions' chunks stay


@pytest.mark.timeout(60)
def test_binary_zlib_magic_stored_with_never_is_copied_as_is(tmp_path, config, zk, zk_server, node):
    data = zlib.compress(b"binary payload that is zlib data " * 100)
    result = write(tmp_path, node, data, "--compress", "never")
    assert result.returncode == 0, result.stderr
    assert zk.get(node)[0] == data
    app = make_client(zk_server.address)
    try:
        with LiveNode(app, node, read_bytes, binary=True, timeout=10) as live:
            assert live.get_data() == data
    finally:
        app.stop()
        app.close()


@pytest.mark.timeout(60)
def test_never_refuses_over_the_limit_before_connecting(tmp_path, zk, node):
    write_config(tmp_path, "127.0.0.1:1")  # nothing listens there: a refusal must come before connecting
    result = write(tmp_path, node, b"a" * (LIMIT + 1), "--compress", "never")
    assert_one_line_failure(result, 1, "zookeeper.max_node_size", "nothing written")


@pytest.mark.timeout(60)
def test_max_payload_size_refuses_before_connecting(tmp_path, zk, node):
    write_config(tmp_path, "127.0.0.1:1", **{"writer.max_payload_size": "1 MiB"})
    result = write(tmp_path, node, b"a" * (MiB + 1))
    assert_one_line_failure(result, 1, "1,048,577 bytes", "writer.max_payload_size", "nothing written")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("writer.compress", "sometimes", "writer.compress: 'sometimes' is not one of auto, always, never"),
        ("writer.max_payload_size", "lots", "writer.max_payload_size: 'lots' is not a size in bytes"),
    ],
)
def test_bad_writer_settings_are_usage_errors(tmp_path, zk_server, node, key, value, fragment):
    write_config(tmp_path, zk_server.address, **{key: value})
    result = write(tmp_path, node, b"x")
    assert_one_line_failure(result, 2, fragment)


@pytest.mark.timeout(60)
def test_compress_default_comes_from_the_config(tmp_path, zk_server, zk, node):
    write_config(tmp_path, zk_server.address, **{"writer.compress": "always"})
    data = b'{"key": "value"}\n' * 1000
    result = write(tmp_path, node, data)
    assert result.returncode == 0, result.stderr
    assert parse(zk.get(node)[0]) is not None and decoded(zk, node) == data
    result = write(tmp_path, node, data, "--compress", "never")  # same data, stored differently
    assert result.returncode == 0, result.stderr
    assert "only the way it is stored changes" in result.stdout
    assert zk.get(node)[0] == data


@pytest.mark.timeout(60)
def test_identical_decoded_data_is_not_written_again(tmp_path, config, zk, node):
    data = experiments_json(3 * MiB)
    assert write(tmp_path, node, data, name="e.json").returncode == 0
    version = zk.exists(node).version
    result = write(tmp_path, node, data, name="e.json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == NO_CHANGES + "\n"
    assert zk.exists(node).version == version


@pytest.mark.timeout(60)
def test_diff_and_dry_run_work_on_decoded_data(tmp_path, config, zk, node):
    data = experiments_json(3 * MiB)
    assert write(tmp_path, node, data, name="e.json").returncode == 0
    before = zk.get(node)[0]
    changed = data.replace(b'"version": 3', b'"version": 4', 1)
    result = write(tmp_path, node, changed, "--dry-run", name="e.json")
    assert result.returncode == 0, result.stderr
    assert '- "version": 3,\n+ "version": 4,\n' in result.stdout
    assert "would be stored as zlib" in result.stdout
    assert result.stdout.endswith("Dry run: not writing.\n")
    assert zk.get(node)[0] == before


@pytest.mark.timeout(60)
def test_invalid_json_is_refused_whatever_the_size(tmp_path, config, zk, node):
    data = experiments_json(3 * MiB)[:-10]
    result = write(tmp_path, node, data, name="broken.json")
    assert_one_line_failure(result, 1, "broken.json is not valid JSON")
    assert zk.get(node)[0] == OLD


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["hash mismatch", "deeply nested header"])
def test_undecodable_current_data_is_replaced(tmp_path, config, zk, node, case):
    node_data, chunk_map, reason = BAD_CASES[case]()
    put(zk, node, node_data, chunk_map)
    result = write(tmp_path, node, b"repaired\n")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "cannot be decoded (" in result.stdout and reason in result.stdout and "); replacing it." in result.stdout
    assert zk.get(node)[0] == b"repaired\n"


# --- chunks: ACLs, races, cleanup ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_chunks_carry_exactly_the_nodes_acl(tmp_path, zk_server, zk, zk_path):
    path = f"{zk_path}/protected"
    acl = [make_digest_acl("ci", "right-password", all=True), *READ_ACL_UNSAFE]
    zk.create(path, OLD, acl=acl)
    secrets_config(tmp_path, zk_server.address, "ci:right-password")
    result = write(tmp_path, path, incompressible(3 * MiB))
    assert result.returncode == 0, result.stderr
    names = chunk_children(zk, path)
    assert len(names) == 4
    node_acl = zk.get_acls(path)[0]
    for name in names:
        assert zk.get_acls(f"{path}/{name}")[0] == node_acl


def test_writer_without_create_right_fails_in_one_line_and_leaves_nothing(tmp_path, zk_server, zk, zk_path):
    path = f"{zk_path}/no-create"
    zk.create(path, OLD, acl=[make_digest_acl("ci", "right-password", read=True, write=True), *READ_ACL_UNSAFE])
    secrets_config(tmp_path, zk_server.address, "ci:right-password")
    result = write(tmp_path, path, incompressible(3 * MiB))
    assert_one_line_failure(result, 1, "does not allow", path)
    assert zk.get(path)[0] == OLD and chunk_children(zk, path) == []


@pytest.mark.timeout(60)
def test_two_writers_racing_on_a_chunked_node(zk, node):
    """Both read the same version; the second to write loses, and leaves none of its chunks behind."""
    shared = incompressible(LIMIT)  # the first chunk of both: created by the winner, reused by the loser
    winner = stored_form("a", shared + incompressible(2 * MiB), "auto", LIMIT)
    loser = stored_form("b", shared + incompressible(2 * MiB), "auto", LIMIT)
    seen_by_winner = read_current(zk, node, MAX)
    seen_by_loser = read_current(zk, node, MAX)
    store(zk, node, winner, seen_by_winner)
    with pytest.raises(NodeChangedError):
        store(zk, node, loser, seen_by_loser)
    assert chunk_children(zk, node) == sorted(winner.chunks)
    assert decoded(zk, node) == shared + decoded_tail(winner)


def decoded_tail(stored) -> bytes:
    data = decode_node(stored.node_data, stored.chunks.get, MAX)
    return data[LIMIT:]


@pytest.mark.timeout(60)
def test_a_loser_against_a_plain_write_removes_all_its_chunks(zk, node):
    stored = stored_form("a", incompressible(3 * MiB), "auto", LIMIT)
    seen = read_current(zk, node, MAX)
    zk.set(node, b"someone else\n")
    with pytest.raises(NodeChangedError):
        store(zk, node, stored, seen)
    assert chunk_children(zk, node) == []
    assert zk.get(node)[0] == b"someone else\n"


@pytest.mark.timeout(60)
def test_writing_plain_over_chunks_removes_them(zk, node):
    out = io.StringIO()
    push(zk, node, incompressible(3 * MiB), "big", out, stored=encode(incompressible(3 * MiB), "auto", LIMIT))
    assert chunk_children(zk, node) != []
    push(zk, node, b"small\n", "small", out, stored=encode(b"small\n", "auto", LIMIT))
    assert chunk_children(zk, node) == [] and zk.get(node)[0] == b"small\n"


@pytest.mark.timeout(60)
def test_orphans_of_a_crashed_writer_are_removed_by_the_next_write(zk, node):
    orphan = encode(incompressible(2 * MiB), "auto", LIMIT)
    chunks.write_chunks(zk, node, orphan.chunks)  # as if the writer died before its envelope
    data = incompressible(2 * MiB)
    push(zk, node, data, "next", io.StringIO(), stored=encode(data, "auto", LIMIT))
    assert set(chunk_children(zk, node)) == set(encode(data, "auto", LIMIT).chunks)


class Interleaved:
    """A real client through which a writer runs, and that runs another writer's whole write inside its window.

    ``after="commit"``: just after the writer's first transaction commits, before the writer goes on (to its
    cleanup).  ``after="read after a failed commit"``: just after the first read of the node that follows a
    commit that failed (the failed writer's cleanup looking at the node's current envelope).
    """

    def __init__(self, client: KazooClient, after: str, then: Any) -> None:
        self._client, self._after, self._then = client, after, then
        self._armed = after == "commit"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _fire(self) -> None:
        then, self._then = self._then, None
        if then is not None:
            then()

    def transaction(self) -> Any:
        real = self._client.transaction()
        commit = real.commit

        def commit_then() -> Any:
            results = commit()
            failed = any(isinstance(result, Exception) for result in results)
            if self._after == "commit":
                self._fire()
            elif failed:
                self._armed = True
            return results

        real.commit = commit_then
        return real

    def get(self, *args: Any, **kwargs: Any) -> Any:
        result = self._client.get(*args, **kwargs)
        if self._armed and self._after == "read after a failed commit":
            self._fire()
        return result


def assert_readable(zk: KazooClient, node: str, data: bytes) -> None:
    assert decoded(zk, node) == data
    envelope = parse(zk.get(node)[0])
    assert envelope is not None and set(envelope.chunk_names) <= set(chunk_children(zk, node))


@pytest.mark.timeout(60)
def test_a_cleanup_running_after_a_newer_publication_keeps_the_chunks_the_node_now_lists(zk, node):
    """B commits; C publishes (and cleans up B's chunks); then B's cleanup runs: C's chunks stay."""
    b_data, c_data = incompressible(2 * MiB), incompressible(2 * MiB)
    c_stored = stored_form("c", c_data, "auto", LIMIT)

    def c_writes() -> None:
        push(zk, node, c_data, "c", io.StringIO(), stored=c_stored)

    b = Interleaved(zk, "commit", c_writes)
    store(b, node, stored_form("b", b_data, "auto", LIMIT), read_current(zk, node, MAX))
    assert_readable(zk, node, c_data)
    assert chunk_children(zk, node) == sorted(c_stored.chunks)


@pytest.mark.timeout(60)
def test_a_failed_writers_cleanup_keeps_its_chunks_once_a_racing_writer_publishes_them(zk, node):
    """A's compare-and-set fails; A looks at the node; D publishes the same content, reusing A's chunks; A's
    cleanup then runs: the chunks D's envelope lists stay."""
    data = incompressible(2 * MiB)
    stored = stored_form("a", data, "auto", LIMIT)
    seen_by_a = read_current(zk, node, MAX)
    zk.set(node, b"someone else\n")  # A's compare-and-set will fail

    def d_writes() -> None:
        push(zk, node, data, "d", io.StringIO(), stored=stored)

    a = Interleaved(zk, "read after a failed commit", d_writes)
    with pytest.raises(NodeChangedError):
        store(a, node, stored, seen_by_a)
    assert_readable(zk, node, data)
    assert chunk_children(zk, node) == sorted(stored.chunks)


@pytest.mark.timeout(60)
def test_reused_chunks_take_the_nodes_acl_as_of_the_write(tmp_path, zk_server, zk, zk_path):
    """Node readable by alice only; a chunked write; bob is granted read; alice writes data changed in its last
    byte (two chunks reused): every chunk carries the node's ACL, so bob reads the new version.  Taking bob's
    right away again and writing once more takes it from the reused chunks too."""
    alice_acl = make_digest_acl("alice", "alice-pw", all=True)
    bob_acl = make_digest_acl("bob", "bob-pw", read=True)
    alice = make_client(zk_server.address, auth_data=[("digest", "alice:alice-pw")])
    bob = make_client(zk_server.address, auth_data=[("digest", "bob:bob-pw")])
    path = f"{zk_path}/acl"
    try:
        alice.create(path, OLD, acl=[alice_acl])
        first = incompressible(3 * MiB)
        push(alice, path, first, "first", io.StringIO(), stored=encode(first, "auto", LIMIT))
        alice.set_acls(path, [alice_acl, bob_acl])  # the operator grants bob read
        second = first[:-1] + bytes([first[-1] ^ 1])
        push(alice, path, second, "second", io.StringIO(), stored=encode(second, "auto", LIMIT))
        node_acl = alice.get_acls(path)[0]
        names = chunk_children(alice, path)
        assert len(names) == 4
        assert [alice.get_acls(f"{path}/{name}")[0] for name in names] == [node_acl] * 4
        assert chunks.read_decoded(bob, path, MAX).data == second

        alice.set_acls(path, [alice_acl])  # and takes it away again
        third = second[:-1] + bytes([second[-1] ^ 1])
        push(alice, path, third, "third", io.StringIO(), stored=encode(third, "auto", LIMIT))
        node_acl = alice.get_acls(path)[0]
        for name in chunk_children(alice, path):
            assert alice.get_acls(f"{path}/{name}")[0] == node_acl
            with pytest.raises(NoAuthError):
                bob.get(f"{path}/{name}")
    finally:
        alice.delete(path, recursive=True)
        for client in (alice, bob):
            client.stop()
            client.close()


# --- the missing-chunk policy: readers go back to the envelope -----------------------------------------


@pytest.mark.timeout(60)
def test_a_reader_meeting_removed_chunks_restarts_from_the_new_envelope(zk, zk_server, node):
    """Old chunks go as soon as the new envelope is in place; a reader caught mid-read re-reads the node."""
    first, second = incompressible(2 * MiB), incompressible(2 * MiB)
    push(zk, node, first, "first", io.StringIO(), stored=encode(first, "auto", LIMIT))
    stale_data, stale_stat = zk.get(node)  # a reader has the envelope, not yet its chunks...
    push(zk, node, second, "second", io.StringIO(), stored=encode(second, "auto", LIMIT))  # ...when it is replaced

    with pytest.raises(MissingChunkError):
        chunks.decode(zk, node, stale_data, MAX)  # the stale envelope alone cannot be read any more
    result = chunks.read_decoded(zk, node, MAX, stale_data, stale_stat)
    assert result.data == second and result.stat.version == zk.exists(node).version


@pytest.mark.timeout(60)
def test_a_chunk_that_stays_missing_is_a_read_failure(zk, zk_server, node):
    good = b"good\n"
    zk.set(node, good)
    app = make_client(zk_server.address)
    try:
        with LiveNode(app, node, read_bytes, binary=True, timeout=10) as live:
            node_data, chunk_map, _ = BAD_CASES["missing chunk"]()
            put(zk, node, node_data, chunk_map)
            with pytest.raises(MissingChunkError):
                chunks.read_decoded(zk, node, MAX)
            version = zk.exists(node).version
            wait_for(lambda: isinstance(live._state.error, PayloadError), timeout=10, message="the read failure")
            assert live.get_data() == good
            assert app.exists(node).version == version
    finally:
        app.stop()
        app.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(BAD_CASES))
def test_live_node_keeps_the_last_good_value_through_bad_stored_data(zk, zk_server, node, case, caplog):
    good = b"good\n"
    zk.set(node, good)
    app = make_client(zk_server.address)
    try:
        with LiveNode(app, node, read_bytes, binary=True, timeout=10) as live:
            node_data, chunk_map, reason = BAD_CASES[case]()
            put(zk, node, node_data, chunk_map)
            wait_for(lambda: live._state.error is not None, timeout=10, message="the bad version to be seen")
            assert live.get_data() == good
            assert reason in str(live._state.error)
            fixed = experiments_json(2 * MiB)
            push(zk, node, fixed, "fixed", io.StringIO(), stored=encode(fixed, "auto", LIMIT))
            wait_for(lambda: live.get_data() == fixed, timeout=10, message="recovery")
    finally:
        app.stop()
        app.close()
    warnings = [r for r in caplog.records if r.name == "livedata.live_node" and "cannot load" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


@pytest.mark.timeout(60)
def test_live_node_bounds_the_decoded_size(zk, zk_server, node):
    data = experiments_json(3 * MiB)
    push(zk, node, data, "big", io.StringIO(), stored=encode(data, "auto", LIMIT))
    app = make_client(zk_server.address)
    try:
        live = LiveNode(app, node, read_bytes, binary=True, max_payload_size=MiB)
        with pytest.raises(Exception, match="above the limit of 1,048,576 bytes"):
            live.get_data()
        live.close()
    finally:
        app.stop()
        app.close()


@pytest.mark.timeout(120)
def test_live_node_during_rewrites_sees_only_whole_versions(zk, zk_server, node):
    """Chunked versions replaced back to back (old chunks removed each time): every value parsed is one written."""
    shared = incompressible(LIMIT)  # every version's first chunk: it must survive each cleanup
    versions = [shared + incompressible(LIMIT) + bytes([i]) * 1000 for i in range(8)]  # 3 chunks each
    parsed: list[bytes] = []

    def record(f: IO[bytes]) -> bytes:
        data = f.read()
        parsed.append(data)
        return data

    app = make_client(zk_server.address)
    try:
        with LiveNode(app, node, record, binary=True, timeout=10) as live:
            for data in versions:
                push(zk, node, data, "v", io.StringIO(), stored=encode(data, "auto", LIMIT))
            wait_for(lambda: live.get_data() == versions[-1], timeout=30, message="the last version")
    finally:
        app.stop()
        app.close()
    assert parsed[0] == OLD
    assert all(value in versions for value in parsed[1:])
    assert chunk_children(zk, node) == sorted(encode(versions[-1], "auto", LIMIT).chunks)


# --- amplification: what one version costs a reader ---------------------------------------------------


def hostile(zk: KazooClient, node: str) -> bytes:
    """100 KB listed 2,000 times under a declared stored size of 100 KB: the chunk is in place, not the envelope."""
    node_data, chunk_map = amplifying(incompressible(100_000))
    for name, chunk in chunk_map.items():
        zk.create(f"{node}/{name}", chunk)
    return node_data


def namespace_of(path: str) -> str:
    return path.split("/")[1]


@pytest.mark.timeout(60)
def test_live_node_reads_at_most_the_stored_size_of_an_envelope_listing_one_chunk_thousands_of_times(
    zk, zk_server, node
):
    node_data = hostile(zk, node)
    app = make_client(zk_server.address)
    try:
        with LiveNode(app, node, read_bytes, binary=True, timeout=10, max_payload_size=MiB) as live:
            before = read_bytes_under(zk_server.client_port, namespace_of(node))
            zk.set(node, node_data)
            wait_for(lambda: live._state.error is not None, timeout=60, message="the hostile version to fail")
            read = read_bytes_under(zk_server.client_port, namespace_of(node)) - before
            assert live.get_data() == OLD
    finally:
        app.stop()
        app.close()
    assert read <= len(node_data) + 2 * 100_000, f"read {read:,} bytes for one version"
    assert "the chunks listed hold 200,000,000 bytes, header says 100,000" in str(live._state.error)


@pytest.mark.timeout(60)
def test_writer_and_reader_read_at_most_the_stored_size_of_an_envelope_listing_one_chunk_thousands_of_times(
    tmp_path, config, zk, zk_server, node
):
    from livedata.reader import ReaderError, read

    zk.set(node, hostile(zk, node))
    for attempt in ("reader", "writer"):
        before = read_bytes_under(zk_server.client_port, namespace_of(node))
        if attempt == "reader":
            with pytest.raises(ReaderError) as refused:
                read(zk, node, MAX)
            problem = str(refused.value)
        else:
            current = read_current(zk, node, MAX)
            assert current.data is None
            problem = current.problem
        read_now = read_bytes_under(zk_server.client_port, namespace_of(node)) - before
        assert read_now <= 2 * len(zk.get(node)[0]) + 2 * 100_000, f"{attempt} read {read_now:,} bytes"
        assert "the chunks listed hold 200,000,000 bytes, header says 100,000" in problem
    result = write(tmp_path, node, b"repaired\n")  # and the writer replaces it
    assert result.returncode == 0, result.stderr
    assert zk.get(node)[0] == b"repaired\n" and chunk_children(zk, node) == []


def unreadable_chunk(zk: KazooClient, zk_server: Any, node: str) -> bytes:
    """A chunked envelope whose last chunk only another identity may read (the node itself stays readable)."""
    node_data, chunk_map = chunked(incompressible(300_000), 3, codec="identity")
    other = make_client(zk_server.address, auth_data=[("digest", "mallory:pw")])
    try:
        *readable, last = chunk_map
        for name in readable:
            zk.create(f"{node}/{name}", chunk_map[name])
        other.create(f"{node}/{last}", chunk_map[last], acl=[make_digest_acl("mallory", "pw", all=True)])
    finally:
        other.stop()
        other.close()
    return node_data


@pytest.mark.timeout(60)
def test_a_chunk_the_reader_may_not_read_is_bad_stored_data_in_every_face_and_the_writer_replaces_it(
    tmp_path, config, zk, zk_server, node
):
    """A chunk with an ACL of its own (not the node's) is bad data for this version: one line naming the chunk
    from the reader, LiveNode and the writer's diff, and the writer replaces it (the node is readable)."""
    from livedata.reader import ReaderError, read

    zk.set(node, unreadable_chunk(zk, zk_server, node))
    try:
        with pytest.raises(ReaderError, match=r"not allowed to read chunk \.livedata-chunk-"):
            read(zk, node, MAX)
        app = make_client(zk_server.address)
        try:
            with pytest.raises(WatchedFileNotAvailableError, match=r"not allowed to read chunk \.livedata-chunk-"):
                LiveNode(app, node, read_bytes, binary=True, timeout=10)
        finally:
            app.stop()
            app.close()
        result = write(tmp_path, node, b"repaired\n")
        assert result.returncode == 0, result.stderr
        assert "cannot be decoded (not allowed to read chunk" in result.stdout
        assert zk.get(node)[0] == b"repaired\n" and chunk_children(zk, node) == []
    finally:
        for name in chunk_children(zk, node):  # a leaf's delete needs no right on it (a recursive one would)
            zk.delete(f"{node}/{name}")
