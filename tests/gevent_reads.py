"""ReadQueue scenarios run in a gevent monkey-patched process, as the daemon runs it (by tests/test_reads.py).

Usage: ``python -m tests.gevent_reads SCENARIO HOSTS ROOT``.  Prints a JSON report on success; a failed check
exits non-zero with the reason on stderr.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402 -- after patching, like any gevent program
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from kazoo.protocol.serialization import GetData  # noqa: E402

from livedata.reads import IDLE, RETRY_FIRST, ReadQueue  # noqa: E402
from livedata.testing.zookeeper import wait_for  # noqa: E402  (its time.sleep is gevent's now)
from livedata.zookeeper import zookeeper_client_from_config  # noqa: E402
from tests.payloads import amplifying, chunked, incompressible, inflating, put, read_bytes_under  # noqa: E402


class Item:
    """The smallest thing the queue can read: a path and the queue's bookkeeping."""

    def __init__(self, path: str, queue: list[ReadQueue]) -> None:
        self.path = path
        self.active = True
        self.read_state = IDLE
        self.reread = False
        self.read_delay = RETRY_FIRST
        self._queue = queue

    def on_watch(self, event: Any) -> None:
        self._queue[0].request(self)


class Sink:
    def __init__(self) -> None:
        self.data: dict[str, bytes | None] = {}
        self.failures: list[str] = []
        self.max_in_flight = 0
        self.queue: ReadQueue | None = None

    def read_done(self, item: Item, data: bytes, stat: Any) -> None:
        self.data[item.path] = data
        self._sample()

    def read_absent(self, item: Item) -> None:
        self.data[item.path] = None

    def read_failed(self, item: Item, reason: str) -> None:
        self.failures.append(f"{item.path}: {reason}")

    def read_settled(self, item: Item) -> None:
        pass

    def reads_idle(self) -> None:
        pass

    def _sample(self) -> None:
        assert self.queue is not None
        self.max_in_flight = max(self.max_in_flight, self.queue.in_flight)


def setup(hosts: str, deadline: float | None = None) -> tuple[Any, ReadQueue, Sink, list[ReadQueue]]:
    client = zookeeper_client_from_config(None, {"zookeeper.hosts": hosts})
    client.start(timeout=30)
    sink = Sink()
    holder: list[ReadQueue] = []
    queue = ReadQueue(client, sink, deadline=deadline)
    sink.queue = queue
    holder.append(queue)
    queue.start()
    return client, queue, sink, holder


def wedge(hosts: str, root: str, pipelined: bool = True) -> dict[str, Any]:
    """A request queued without its wake byte (what kazoo leaves after a failed send) must not hold ours back.

    With kazoo's own sender (``pipelined`` False) only the read queue's deadline and spare byte get ours
    out; livedata's pipelined sender takes the wedged request along with the next one.
    """
    client, queue, sink, holder = setup(hosts, deadline=1.0)
    if not pipelined:
        del client._connection._send_request  # back to kazoo's class method: one request per wake byte
    client.create(f"{root}/a", b"alpha", makepath=True)
    # Exactly the state kazoo's _call leaves when its wake-byte send fails: queued, no byte sent.
    client._queue.append((GetData(f"{root}/a", None), client.handler.async_result()))
    item = Item(f"{root}/a", holder)
    queue.request(item)
    wait_for(lambda: sink.data.get(item.path) == b"alpha", 20, "the read behind the wedged request")
    return {"timeouts": queue.timeouts, "failures": sink.failures, "in_flight": queue.in_flight}


def shared(hosts: str, root: str) -> dict[str, Any]:
    """Thousands of reads while another greenlet bursts its own requests on the same client: nothing is lost."""
    client, queue, sink, holder = setup(hosts)
    count = 3000
    for start in range(0, count, 500):
        results = [client.create_async(f"{root}/n{i}", f"v{i}".encode()) for i in range(start, start + 500)]
        for result in results:
            result.get(timeout=30)
    items = [Item(f"{root}/n{i}", holder) for i in range(count)]
    other_done = []

    def application_burst() -> None:  # an embedding app's own requests, in bursts of 100 between yields
        for _ in range(10):
            results = [client.exists_async(f"{root}/n{i}") for i in range(100)]
            gevent.sleep(0)
            other_done.append(sum(1 for result in results if result.get(timeout=30) is not None))

    burst = gevent.spawn(application_burst)
    queue.request_all(items)
    wait_for(lambda: len(sink.data) == count, 60, "every read")
    burst.join(60)
    wrong = [item.path for item in items if sink.data[item.path] != f"v{item.path.rsplit('n', 1)[1]}".encode()]
    return {"read": len(sink.data), "wrong": wrong[:5], "max_in_flight": sink.max_in_flight,
            "window": queue.window, "other": other_done, "timeouts": queue.timeouts, "pending": queue.pending()}


def _chunked_node(client: Any, path: str, size: int, pieces: int) -> None:
    node_data, parts = chunked(incompressible(size), pieces)
    client.create(path, b"", makepath=True)
    put(client, path, node_data, parts)


def _idle_after_drain(queue: ReadQueue) -> bool:
    """Once the replies still out have landed, the queue must count nothing pending (a writer waits for it)."""
    wait_for(lambda: queue.in_flight == 0, 20, "the replies still out")
    try:
        wait_for(lambda: queue.pending() == 0, 3, "the queue to go idle")
    except AssertionError:
        return False
    return True


def removed_mid_read(hosts: str, root: str) -> dict[str, Any]:
    """An item forgotten (a reload removed it) while every chunk read of it is out: the queue goes idle.

    Each attempt reads the node afresh and forgets it at the first moment all its chunk reads are issued
    and none answered; attempts that miss that moment (the replies were quicker) are not counted.
    """
    client, queue, sink, holder = setup(hosts)
    path = f"{root}/chunked"
    _chunked_node(client, path, 64 * 1024, 16)
    caught = 0
    for _attempt in range(50):
        item = Item(path, holder)
        queue.request(item)
        while item.read_state != IDLE and not (id(item) in queue._assembling and queue.in_flight and not queue._queue):
            gevent.sleep(0)
        if item.read_state == IDLE:
            continue  # read in full before we looked
        queue.forget(item)
        caught += 1
        if not _idle_after_drain(queue):
            break
        if caught == 5:
            break
    return {"caught": caught, "pending": queue.pending(), "failures": sink.failures}


def removed_while_decoding(hosts: str, root: str) -> dict[str, Any]:
    """An item removed while its large envelope is verified and inflated in the thread pool: the queue goes idle."""
    client, queue, sink, holder = setup(hosts)
    path = f"{root}/large"
    _chunked_node(client, path, 1024 * 1024, 4)  # stored size above INLINE_DECODE: decoded in a thread
    caught = 0
    for _attempt in range(20):
        item = Item(path, holder)
        queue.request(item)
        assembly = None
        while item.read_state != IDLE:
            assembly = queue._assembling.get(id(item))
            if assembly is not None and assembly.missing == 0 and not queue._queue:
                break  # every chunk is in and the decode step was taken: it is running in the thread pool
            gevent.sleep(0)
        if item.read_state == IDLE:
            continue
        item.active = False  # what a reload (or a listing that dropped a tree's child) leaves it as
        caught += 1
        if not _idle_after_drain(queue) or caught == 3:
            break
    return {"caught": caught, "pending": queue.pending(), "failures": sink.failures}


def missing_chunk_forgotten(hosts: str, root: str) -> dict[str, Any]:
    """An item whose chunk is missing for good, then removed: nothing of it is left in the queue."""
    client, queue, sink, holder = setup(hosts)
    path = f"{root}/broken"
    node_data, parts = chunked(incompressible(8 * 1024), 2)
    client.create(path, b"", makepath=True)
    put(client, path, node_data, dict(list(parts.items())[:1]))  # the second chunk never written
    item = Item(path, holder)
    queue.request(item)
    wait_for(lambda: sink.failures, 20, "the missing chunk to be reported")
    remembered = len(queue._missing_under)
    queue.forget(item)
    return {"remembered": remembered, "left": len(queue._missing_under), "failures": sink.failures}

def amplification(hosts: str, root: str) -> dict[str, Any]:
    """An envelope declaring 100 KB that lists one 100 KB chunk 2,000 times (the watcher's 1 MiB bound).

    Reports what reading that version cost: requests issued, bytes the server answered under the root's
    namespace, whether anything is left to retry it; then whether a good write is read again.
    """
    client, queue, sink, holder = setup(hosts)
    queue.max_payload_size = 1024 * 1024
    port, namespace = int(hosts.rsplit(":", 1)[1]), root.split("/")[1]
    node_data, chunk_map = amplifying(os.urandom(100_000))
    path = f"{root}/hostile"
    client.create(path, b"good", makepath=True)
    for name, chunk in chunk_map.items():
        client.create(f"{path}/{name}", chunk)
    item = Item(path, holder)
    queue.request(item)
    wait_for(lambda: sink.data.get(path) == b"good", 20, "the good version")
    issued, read_before = queue.issued, read_bytes_under(port, namespace)
    client.set(path, node_data)
    wait_for(lambda: sink.failures, 60, "the hostile version's failure")
    report = {
        "failures": list(sink.failures),
        "issued": queue.issued - issued,
        "read_bytes": read_bytes_under(port, namespace) - read_before,
        "node_bytes": len(node_data),
        "idle": item.read_state == IDLE,
        "retries_pending": len(queue._retries),
        "in_flight": queue.in_flight,
        "pending": queue.pending(),
    }
    client.set(path, b"fixed")
    wait_for(lambda: sink.data.get(path) == b"fixed", 20, "the next version, read when the node changes")
    report["recovered"] = True
    return report


def decode_spy() -> list[str]:
    """Record, for every :meth:`Envelope.decode` from now on, whether it ran in the hub's thread or another."""
    from gevent import monkey as gevent_monkey

    from livedata.payload import Envelope

    real_ident = gevent_monkey.get_original("threading", "get_ident")
    hub_thread = real_ident()
    decoded_in: list[str] = []
    decode = Envelope.decode

    def watched_decode(self: Envelope, chunks: Any, max_size: int) -> bytes:
        decoded_in.append("hub" if real_ident() == hub_thread else "thread pool")
        return decode(self, chunks, max_size)

    Envelope.decode = watched_decode  # type: ignore[method-assign]
    return decoded_in


class Ticker:
    """A greenlet sleeping 2 ms at a time, recording how long each sleep really took (the hub's stalls)."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self._running = True
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while self._running:
            started = time.monotonic()
            gevent.sleep(0.002)
            self.gaps.append(time.monotonic() - started)

    def longest_ms(self) -> float:
        longest, self.gaps[:] = max(self.gaps, default=0.0), []
        return round(longest * 1000, 1)

    def stop(self) -> None:
        self._running = False
        self._greenlet.join()


def inflate(hosts: str, root: str) -> dict[str, Any]:
    """An envelope stored in about 64 KB (well under the 256 KiB decoded inline) that inflates to 64 MiB.

    Reports which thread ran the decode and the longest the hub went without running a greenlet that only
    sleeps 2 ms at a time (what kazoo's pings and every other read wait on), idle and while decoding.
    """
    decoded_in = decode_spy()
    node_data, size = inflating()
    client, queue, sink, holder = setup(hosts)
    path = f"{root}/inflating"
    client.create(path, b"small", makepath=True)
    item = Item(path, holder)
    queue.request(item)
    wait_for(lambda: sink.data.get(path) == b"small", 20, "the small version")
    ticker = Ticker()
    gevent.sleep(1.0)  # the same ticker with nothing to decode: what the machine's load alone costs
    idle = ticker.longest_ms()
    client.set(path, node_data)
    wait_for(lambda: len(sink.data.get(path) or b"") == size, 60, "the 64 MiB version")
    decoding = ticker.longest_ms()
    ticker.stop()
    return {"decoded_in": decoded_in, "stored": len(node_data), "max_gap_ms": decoding, "idle_max_gap_ms": idle,
            "failures": sink.failures}


def main() -> None:
    scenario, hosts, root = sys.argv[1:4]
    scenarios = {
        "wedge": wedge, "wedge-unpipelined": lambda h, r: wedge(h, r, pipelined=False), "shared": shared,
        "removed-mid-read": removed_mid_read, "removed-while-decoding": removed_while_decoding,
        "missing-chunk-forgotten": missing_chunk_forgotten, "amplification": amplification, "inflate": inflate,
    }  # fmt: skip
    report = scenarios[scenario](hosts, root)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
