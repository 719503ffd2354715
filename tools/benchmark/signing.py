"""What signature verification costs the watcher: one change's propagation, and start-up at N signed nodes.

    .venv/bin/python -m tools.benchmark.signing [--nodes 5000] [--changes 40]

Against a private ZooKeeper, the same signed data is mirrored twice, once with ``require_signatures`` off
(the floor: envelope decode, no verification) and once on; the difference is what verification adds.
Propagation: time from the writer's ``set`` returning to the file holding the new bytes (p50, p90).
Start-up: time from starting the daemon to its "initial sync ... done" log line.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

from kazoo.client import KazooClient

from livedata.payload import restamp
from livedata.provenance import Provenance, now_utc
from livedata.signing import Signer, decode_key, generate
from livedata.testing.watcher_process import WatcherProcess, write_ini
from livedata.testing.zookeeper import start_standalone, wait_for
from livedata.writer import Stamp, push, stored_form

LIMIT = 1047552
DATA = b'{"flags": {"new_checkout": false, "banner": "hello"}, "rollout": 10}\n' * 20


def signed_node_data(client: KazooClient, path: str, data: bytes, signer: Signer) -> None:
    push(client, path, data, "bench", io.StringIO(), stamp=Stamp("bench", "", 0, signer, LIMIT),
         stored=stored_form("bench", data, "auto", LIMIT, enveloped=True))  # fmt: skip


def signed_bytes(path: str, data: bytes, seq: int, signer: Signer) -> bytes:
    """A signed envelope made ahead, so that only ZooKeeper and the watcher are timed."""
    stored = stored_form("bench", data, "auto", LIMIT, enveloped=True)
    assert stored.envelope is not None
    record = Provenance("bench", now_utc(), "", path, seq, signer.public)
    record = Provenance(record.author, record.time, "", path, seq, signer.public,
                        signer.sign(record.message_for(stored.envelope)))  # fmt: skip
    return restamp(stored, record.header(), LIMIT).node_data


def settings(address: str, nodes: dict[str, str], public: str, required: bool, state: str) -> dict[str, object]:
    values: dict[str, object] = {"zookeeper.hosts": address, "watcher.trusted_keys": public,
                                 "watcher.require_signatures": str(required).lower(), "watcher.state_dir": state}
    for index, (source, dest) in enumerate(nodes.items()):
        values[f"nodes.n{index}.source"] = source
        values[f"nodes.n{index}.dest"] = dest
    return values


def propagation(client: KazooClient, address: str, signer: Signer, public: str, required: bool, changes: int,
                work: str) -> list[float]:  # fmt: skip
    path = "/bench-one"
    dest = os.path.join(work, f"one-{required}")
    config = write_ini(work, settings(address, {path: dest}, public, required, os.path.join(work, f"s{required}")),
                       f"one-{required}.ini")  # fmt: skip
    watcher = WatcherProcess(config)
    try:
        wait_for(lambda: os.path.exists(dest), 30, "first file")
        times = []
        for change in range(changes):
            data = DATA + f"change {change} {required}\n".encode()
            node_data = signed_bytes(path, data, 1000 + change + 1000 * required, signer)
            started = time.perf_counter()
            client.set(path, node_data)
            wait_for(lambda data=data: _read(dest) == data, 30, "the change", interval=0.0005)  # type: ignore[misc]
            times.append(time.perf_counter() - started)
        return times
    finally:
        watcher.stop()


def startup(address: str, sources: list[str], public: str, required: bool, work: str) -> float:
    directory = os.path.join(work, f"many-{required}")
    os.makedirs(directory, exist_ok=True)
    nodes = {source: os.path.join(directory, source.rsplit("/", 1)[1]) for source in sources}
    config = write_ini(work, settings(address, nodes, public, required, os.path.join(work, f"m{required}")),
                       f"many-{required}.ini")  # fmt: skip
    started = time.perf_counter()
    watcher = WatcherProcess(config)
    try:
        wait_for(lambda: "initial sync of" in watcher.output(), 300, "initial sync", interval=0.01)
        elapsed = time.perf_counter() - started
        match = re.search(r"initial sync of \d+ nodes done in ([\d.]+)s: \d+ absent, (\d+) failed", watcher.output())
        assert match and match.group(2) == "0", watcher.output()[-2000:]
        return elapsed
    finally:
        watcher.stop()


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--changes", type=int, default=40)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="livedata-bench-signing-")
    server = start_standalone(os.path.join(work, "zk"))
    client = KazooClient(server.address)
    client.start()
    try:
        private, public = generate()
        signer = Signer(decode_key(private))
        client.create("/bench-one", b"")
        signed_node_data(client, "/bench-one", DATA, signer)
        for required in (False, True):
            times = sorted(propagation(client, server.address, signer, public, required, args.changes, work))
            print(f"propagation, require_signatures={required}: p50 {statistics.median(times) * 1000:.2f} ms, "
                  f"p90 {times[int(len(times) * 0.9)] * 1000:.2f} ms over {len(times)} changes")  # fmt: skip
        client.create("/bench-many", b"")
        sources = []
        for index in range(args.nodes):
            path = f"/bench-many/n{index:05d}"
            client.create(path, b"")
            signed_node_data(client, path, DATA + f"{index}\n".encode(), signer)
            sources.append(path)
        for required in (False, True, False, True):
            print(f"start-up, {args.nodes} signed nodes, require_signatures={required}: "
                  f"{startup(server.address, sources, public, required, work):.2f} s to the initial sync")
            shutil.rmtree(os.path.join(work, f"many-{required}"), ignore_errors=True)
            shutil.rmtree(os.path.join(work, f"m{required}"), ignore_errors=True)
    finally:
        client.stop()
        client.close()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
