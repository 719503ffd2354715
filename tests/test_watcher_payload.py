"""Large data through the real watcher: compressed and chunked nodes land in files as the application's bytes.

The writer's own tests (tests/test_writer_payload.py) prove what is stored; these prove what every host sees:
round trips from the writer to the dest file, bad stored data refused without touching the old file (and
recovered from once the node is fixed), and whole versions only while a chunked node is rewritten.
"""
from __future__ import annotations

import io
import os
import threading
import zlib

import pytest
from kazoo.client import KazooClient

from livedata.testing.watcher_process import base_settings, node_settings, read_bytes, wait_for_content
from livedata.writer import push, stored_form
from tests.payloads import (
    BAD_CASES,
    LIMIT,
    MiB,
    amplifying,
    chunk_children,
    experiments_json,
    incompressible,
    large_data_server,
    put,
    read_bytes_under,
    stays_within,
)
from tests.test_writer_payload import CASES

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def zk_server():
    """Megabytes of transactions: a server of our own (see tests.payloads.large_data_server)."""
    yield from large_data_server()

ROUND_TRIPS = CASES  # the writer's own round trips, seen through the watcher


def write(client: KazooClient, path: str, data: bytes, mode: str = "auto") -> None:
    """What ``tools/write_node`` does, in-process: choose the stored form, then compare-and-set it."""
    push(client, path, data, "<test>", io.StringIO(), allow_empty=True, stored=stored_form("<test>", data, mode, LIMIT))


def test_writer_to_file_round_trips(zk_server, zk, zk_path, workdir, start_watcher):
    settings = base_settings(zk_server)
    dests = {}
    for index, case in enumerate(ROUND_TRIPS):
        path = f"{zk_path}/n{index}"
        zk.create(path, b"old")
        dests[case] = (path, f"{workdir}/out/n{index}")
        settings.update(node_settings(f"n{index}", path, dests[case][1]))
    magic = zlib.compress(b"binary payload that is zlib data " * 100)
    zk.create(f"{zk_path}/magic", b"old")
    settings.update(node_settings("magic", f"{zk_path}/magic", f"{workdir}/out/magic"))
    watcher = start_watcher(settings)
    for _path, dest in dests.values():
        wait_for_content(dest, b"old")

    for case, make in ROUND_TRIPS.items():
        data = make()
        path, dest = dests[case]
        write(zk, path, data)
        wait_for_content(dest, data, timeout=60)
    write(zk, f"{zk_path}/magic", magic, mode="never")  # looks like zlib, stored plain: copied as it is
    wait_for_content(f"{workdir}/out/magic", magic)
    assert watcher.alive()


def test_bad_stored_data_keeps_the_old_file_and_recovers(zk_server, zk, zk_path, workdir, start_watcher):
    settings = base_settings(zk_server)
    nodes = {}
    for index, case in enumerate(BAD_CASES):
        path, dest = f"{zk_path}/bad{index}", f"{workdir}/out/bad{index}"
        zk.create(path, f"good {index}".encode())
        nodes[case] = (path, dest)
        settings.update(node_settings(f"bad{index}", path, dest))
    watcher = start_watcher(settings)
    for index, (_path, dest) in enumerate(nodes.values()):
        wait_for_content(dest, f"good {index}".encode())
    inodes = {case: read_inode(dest) for case, (_, dest) in nodes.items()}

    for case, build in BAD_CASES.items():
        node_data, chunks, _ = build()
        path, _ = nodes[case]
        put(zk, path, node_data, chunks)
    for path, _ in nodes.values():
        name = path.rsplit("/", 1)[1]
        watcher.wait_for_log(f"{name}: cannot read {path}", timeout=30)
    output = watcher.output()
    for index, (case, (path, dest)) in enumerate(nodes.items()):
        assert read_bytes(dest) == f"good {index}".encode(), case
        assert read_inode(dest) == inodes[case], f"{case}: the old file must not be replaced"
        name = path.rsplit("/", 1)[1]
        assert output.count(f"{name}: cannot read") == 1, f"{case}: logged once, however often retried"
        line = next(line for line in output.splitlines() if f"{name}: cannot read" in line)
        assert BAD_CASES[case]()[2] in line, f"{case}: the reason is named: {line}"
    assert "Traceback" not in output and "internal error" not in output
    assert watcher.alive()

    for index, (path, dest) in enumerate(nodes.values()):  # fixing each node (a good write) recovers it
        fixed = experiments_json(2 * MiB, seed=index)
        write(zk, path, fixed)
        wait_for_content(dest, fixed, timeout=60)


def read_inode(path: str) -> int:
    return os.stat(path).st_ino


def test_rewrites_of_a_chunked_node_only_ever_show_whole_versions(zk_server, zk, zk_path, workdir, start_watcher):
    versions = [incompressible(3 * MiB) for _ in range(2)]  # several chunks each, no chunk shared
    path, dest = f"{zk_path}/big", f"{workdir}/big"
    zk.create(path, b"start")
    settings = base_settings(zk_server)
    settings.update(node_settings("big", path, dest))
    watcher = start_watcher(settings)
    wait_for_content(dest, b"start")

    seen: set[int] = set()
    mixes: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        allowed = {b"start", *versions}
        while not stop.is_set():
            content = read_bytes(dest)
            if content not in allowed:
                mixes.append(len(content or b""))
            else:
                seen.add(hash(content))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for round_ in range(12):  # each write removes the chunks only the previous version used
            write(zk, path, versions[round_ % 2])
        wait_for_content(dest, versions[1], timeout=60)
    finally:
        stop.set()
        thread.join(10)
    assert mixes == [], "a reader saw a file that is neither version"
    assert watcher.alive()


def test_an_envelope_listing_one_chunk_thousands_of_times_costs_the_host_one_chunk(
    zk_server, zk, zk_path, workdir, start_watcher
):
    """100 KB listed 2,000 times under a declared stored size of 100 KB (a 166 KB node): the watcher reads at most
    the stored size plus one chunk for that version, and does not read it again on a timer."""
    path, dest = f"{zk_path}/hostile", f"{workdir}/hostile"
    zk.create(path, b"good")
    node_data, chunk_map = amplifying(incompressible(100_000))
    for name, chunk in chunk_map.items():
        zk.create(f"{path}/{name}", chunk)
    settings = base_settings(zk_server, max_payload_size="1 MiB")
    settings.update(node_settings("hostile", path, dest))
    watcher = start_watcher(settings)
    wait_for_content(dest, b"good")
    namespace = zk_path.split("/")[1]
    before = read_bytes_under(zk_server.client_port, namespace)

    zk.set(path, node_data)
    watcher.wait_for_log("hostile: cannot read", timeout=60)
    bound = len(node_data) + 2 * 100_000
    read = stays_within(lambda: read_bytes_under(zk_server.client_port, namespace) - before, bound, seconds=3)
    assert read <= bound, f"read {read:,} bytes for one version of {len(node_data):,} + 100,000 bytes"
    assert "the chunks listed hold 200,000,000 bytes, header says 100,000" in watcher.output()
    assert read_bytes(dest) == b"good" and watcher.alive()


def test_a_chunk_the_watcher_may_not_read_is_not_read_again_on_a_timer(zk_server, zk, zk_path, workdir, start_watcher):
    """The node readable, one chunk not (an ACL of its own): that version fails once, naming the chunk, and the
    chunks read before it are not fetched again and again on the retry timer (the stored size each time)."""
    from tests.test_writer_payload import unreadable_chunk

    path, dest = f"{zk_path}/acl", f"{workdir}/acl"
    zk.create(path, b"good")
    settings = base_settings(zk_server)
    settings.update(node_settings("acl", path, dest))
    watcher = start_watcher(settings)
    wait_for_content(dest, b"good")
    namespace = zk_path.split("/")[1]
    node_data = unreadable_chunk(zk, zk_server, path)
    before = read_bytes_under(zk_server.client_port, namespace)

    zk.set(path, node_data)
    watcher.wait_for_log("acl: cannot read", timeout=30)
    bound = len(node_data) + 300_000 + 100_000  # the node, every chunk once, and one more (a retry is 200 KB)
    read = stays_within(lambda: read_bytes_under(zk_server.client_port, namespace) - before, bound, seconds=3)
    assert read <= bound, f"read {read:,} bytes for one version storing 300,000"
    assert "not allowed to read chunk .livedata-chunk-" in watcher.output()
    assert read_bytes(dest) == b"good" and watcher.alive()
    for name in chunk_children(zk, path):  # a leaf's delete needs no right on it (a recursive one would)
        zk.delete(f"{path}/{name}")
