"""Who, when, why; kept versions and rollback, against a real ZooKeeper and a real watcher.

The writer and the reader run as subprocesses, exactly as a CI job runs them; the racing writers run in
threads of this process, each with its own session, so that their compare-and-sets really collide.
"""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from livedata import history
from livedata.chunks import read_decoded
from livedata.payload import CHUNK_PREFIX, HISTORY_PREFIX, encode
from livedata.provenance import Provenance
from livedata.testing.watcher_process import base_settings, node_settings, wait_for_content
from livedata.writer import NodeChangedError, Stamp, push, stored_form
from tests.conftest import make_client
from tests.payloads import chunk_children, incompressible, referenced_chunks

LIMIT = 1047552


def write_config(directory: Path, hosts: str, **extra: object) -> Path:
    lines = ["[live-data]", f"zookeeper.hosts = {hosts}", "zookeeper.timeout = 5 seconds"]
    lines += [f"{key} = {value}" for key, value in extra.items()]
    path = directory / "writer.ini"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(cwd: Path, module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, timeout=60,
                          env={**os.environ, **(env or {})})  # fmt: skip


def write(tmp_path: Path, node: str, data: bytes, *args: str, env: dict[str, str] | None = None) -> str:
    (tmp_path / "input.txt").write_bytes(data)
    result = run(tmp_path, "livedata.writer", "writer.ini", "input.txt", node, *args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


@pytest.fixture
def node(zk, zk_path) -> str:
    path = f"{zk_path}/flags"
    zk.create(path, b"v0\n")
    return path


@pytest.mark.timeout(90)
def test_history_lists_who_when_why_and_a_rollback_reaches_the_watchers_file(
    tmp_path, zk_server, zk, node, start_watcher, workdir
):
    write_config(tmp_path, zk_server.address)
    write(tmp_path, node, b"v1\n", "-m", "first flags", "--author", "alice")
    write(tmp_path, node, b"v2 broken\n", "--message", "second\nline", env={"LIVEDATA_AUTHOR": "ci-job-7"})
    dest = os.path.join(workdir, "flags")
    tree_dest = os.path.join(workdir, "tree")
    settings = {**base_settings(zk_server), **node_settings("flags", node, dest),
                "trees.kids.source": node, "trees.kids.dest": tree_dest}  # fmt: skip
    watcher = start_watcher(settings)
    wait_for_content(dest, b"v2 broken\n")

    listing = run(tmp_path, "livedata.reader", "writer.ini", node, "--history")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.decode().splitlines()
    assert len(lines) == 2
    version, time, author, size, digest, *message = lines[0].split("  ")
    assert (version, author, size, digest) == ("2", "ci-job-7", "10", hashlib.sha256(b"v2 broken\n").hexdigest()[:12])
    assert time.endswith("Z") and message == ["second\\nline"]  # one line per version, whatever the message
    assert lines[1].split("  ")[0::2] == ["1", "alice", hashlib.sha256(b"v1\n").hexdigest()[:12]]
    assert lines[1].endswith("  first flags")
    kept = run(tmp_path, "livedata.reader", "writer.ini", node, "--version", "1")
    assert (kept.returncode, kept.stdout) == (0, b"v1\n")

    result = run(tmp_path, "livedata.writer", "writer.ini", "--rollback", node, "-m", "v2 breaks checkout")
    assert result.returncode == 0, result.stderr
    assert b"-v2 broken\n+v1\n" in result.stdout  # the same diff as any write
    wait_for_content(dest, b"v1\n")
    newest = history.entries(zk, node)[0][0]
    assert newest.version == 3 and newest.provenance is not None
    assert newest.provenance.message == "rollback to version 1: v2 breaks checkout"

    # Kept versions never reach a file or a tree's directory (a tree over the node sees no child at all).
    assert sorted(name for name in os.listdir(workdir) if not name.startswith(".")) == ["flags", "tree", "watcher.ini"]
    assert [name for name in os.listdir(tree_dest) if not name.startswith(".")] == []
    assert "cannot" not in watcher.output() and "skipped" not in watcher.output()


@pytest.mark.timeout(60)
def test_history_zero_keeps_nothing_and_a_missing_version_is_one_line(tmp_path, zk_server, zk, node):
    write_config(tmp_path, zk_server.address)
    write(tmp_path, node, b"v1\n")
    write_config(tmp_path, zk_server.address, **{"writer.history": 0})
    write(tmp_path, node, b"v2\n")
    assert history.entries(zk, node)[0] == []  # turning it off removes what was kept
    result = run(tmp_path, "livedata.reader", "writer.ini", node, "--version", "1")
    assert result.returncode == 1 and result.stderr.decode().count("\n") == 1
    assert b"version 1 of" in result.stderr and b"is not kept" in result.stderr
    result = run(tmp_path, "livedata.writer", "writer.ini", "--rollback", node)
    assert result.returncode == 1 and b"keeps no version before" in result.stderr and b"Traceback" not in result.stderr


@pytest.mark.timeout(90)
def test_kept_versions_keep_their_chunks_until_trimmed(tmp_path, zk_server, zk, node):
    big = incompressible(3 * 1024 * 1024)
    write_config(tmp_path, zk_server.address, **{"writer.history": 2})
    write(tmp_path, node, big)
    big_chunks = set(chunk_children(zk, node))
    assert len(big_chunks) == 4
    write(tmp_path, node, b"small\n")  # the cleanup after this write keeps what version 1 lists
    assert big_chunks <= set(chunk_children(zk, node))
    assert hashlib.sha256(run(tmp_path, "livedata.reader", "writer.ini", node, "--version", "1").stdout).digest() \
        == hashlib.sha256(big).digest()
    write(tmp_path, node, b"smaller\n")  # version 1 is trimmed: its chunks go
    assert [entry.version for entry in history.entries(zk, node)[0]] == [3, 2]
    assert not big_chunks & set(chunk_children(zk, node))
    assert chunk_children(zk, node) == referenced_chunks(zk, node)


@pytest.mark.timeout(90)
def test_racing_writers_keep_a_consistent_history(zk_server, zk, node):
    """Each successful compare-and-set creates exactly its own kept version, in the same transaction."""
    writers, rounds = 3, 4
    written: dict[bytes, str] = {}
    lock = threading.Lock()

    def writer(number: int) -> None:
        client = make_client(zk_server.address)
        stamp = Stamp(f"writer-{number}", "race", keep=100)
        try:
            for round_ in range(rounds):
                data = f"writer {number} round {round_}\n".encode() * (1 + number * 100)
                stored = stored_form("race", data, "auto", LIMIT)
                while True:
                    try:
                        push(client, node, data, "race", io.StringIO(), stored=stored, stamp=stamp)
                        break
                    except NodeChangedError:
                        continue
                with lock:
                    written[data] = f"writer-{number}"
        finally:
            client.stop()
            client.close()

    threads = [threading.Thread(target=writer, args=(number,)) for number in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(80)
    current = zk.exists(node)
    assert len(written) == writers * rounds and current.version == writers * rounds
    kept = history.entries(zk, node)[0]
    assert [entry.version for entry in kept] == list(range(current.version, 0, -1))  # one per version, no gap
    sequences = []
    for entry in kept:
        data = history.read_version(zk, node, entry.version, 64 << 20)
        record = entry.provenance
        assert record is not None and written[data] == record.author
        sequences.append(record.seq)
    assert sequences == sorted(sequences, reverse=True) and len(set(sequences)) == len(sequences)
    assert history.read_version(zk, node, current.version, 64 << 20) == read_decoded(zk, node, 64 << 20).data
    assert chunk_children(zk, node) == referenced_chunks(zk, node)


def test_plain_writes_stay_plain_and_keep_their_record_in_the_history(zk, node):
    """``auto`` stores small data byte for byte as before (readers that predate the envelope keep working)."""
    push(zk, node, b"plain\n", "x", io.StringIO(), stored=encode(b"plain\n", "auto", LIMIT), stamp=Stamp("bob", "why"))
    assert zk.get(node)[0] == b"plain\n"
    (entry,) = history.entries(zk, node)[0]
    record = Provenance.of(entry.envelope)
    assert record is not None and (record.author, record.message, record.path) == ("bob", "why", node)
    assert all(name.startswith((CHUNK_PREFIX, HISTORY_PREFIX)) for name in zk.get_children(node))


@pytest.mark.timeout(90)
def test_thousands_of_planted_history_children_cost_a_write_and_a_listing_only_the_kept_ones(
    tmp_path, zk_server, zk, node
):
    """Anyone with CREATE on the node can plant history children of up to a node's size each: a write reads
    only the versions it keeps (the planted ones are trimmed unread) and --history lists the newest 100."""
    from livedata.payload import history_name
    from tests.payloads import read_bytes_under

    write_config(tmp_path, zk_server.address)
    write(tmp_path, node, b"v1\n")
    planted = b"\0" * 100_000
    for first in range(0, 400, 100):
        for result in [zk.create_async(f"{node}/{history_name(version)}", planted)
                       for version in range(1000 + first, 1100 + first)]:  # fmt: skip
            result.get(timeout=30)
    listing = run(tmp_path, "livedata.reader", "writer.ini", node, "--history")
    assert listing.returncode == 0, listing.stderr
    assert len(listing.stdout.decode().splitlines()) == 100
    assert "301 older kept versions not listed, only the newest 100" in listing.stderr.decode()

    namespace = node.strip("/").split("/")[0]
    before = read_bytes_under(zk_server.client_port, namespace)
    write(tmp_path, node, b"v2\n")
    read = read_bytes_under(zk_server.client_port, namespace) - before
    # The versions kept (read for the sequence, and by the chunk cleanup): about 21 planted bodies, not 400.
    assert read < 30 * len(planted), f"the write read {read:,} bytes: more than the versions it keeps"
    kept = history.entry_names(zk, node)
    assert len(kept) == 10 and max(kept) == 1399  # the newest ten by version: the planted ones outrank the write
