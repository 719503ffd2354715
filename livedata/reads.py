"""Every ZooKeeper read of the mirror, issued from one greenlet, a bounded window at a time.

Why one place, and why a window: kazoo wakes its connection greenlet with one
byte per request, sent through a socket pair that holds only about 280 of
them.  A greenlet that issues more requests than that without yielding blocks
on the full pair; any other greenlet or hub callback issuing a request
meanwhile fails inside kazoo (gevent refuses two waiters on one socket), and
kazoo then leaves that request queued *without* its wake byte.  From then on
every request waits for a later one to be sent, and nothing in the session
notices, because pings bypass the queue.  At a few thousand nodes that lost
changes for good.

So the rules here are:

* Callbacks (watch events, replies) never talk to ZooKeeper.  They only say
  "this item needs reading" (:meth:`ReadQueue.request`), which is a flag and a
  deque append.
* One greenlet issues the reads, never more than ``window`` outstanding: the
  socket pair stays far from full, whoever else uses the client.
* Each item has at most one read queued or in flight (asking again meanwhile
  just marks it to be read once more when the reply is in), and at most one
  retry pending, so retry chains cannot multiply.
* Every read has a deadline.  A read still unanswered by then is counted
  (:attr:`ReadQueue.timeouts`) and kazoo's sender is woken once more, which
  is what a request stuck without its wake byte needs (see
  :meth:`ReadQueue._nudge_overdue`).

A read of an item is *get with a watch*; when the node does not exist the
queue follows up with *exists with a watch* (a failed get leaves no watch),
and when that finds the node created meanwhile, with another get.  Data in
livedata's stored format (:mod:`livedata.payload`) is decoded here, so every
sink receives the application's bytes: a chunked node's chunks are read
through the same window (no watch: chunks never change), each name once,
their stats first so that nothing is fetched unless the chunks add up to the
stored size the envelope declares, then verified and inflated (in gevent's
thread pool when large).  A missing chunk sends the read back to the node,
whose envelope a writer may just have replaced; a chunk still missing under
the same envelope, like any bad stored data, is a read failure of that
version, which is not read again until the node changes (its watch) or a
resync: bad data is never re-fetched on a timer.  Results go to a
:class:`ReadSink`.

Other failed reads are retried with backoff, one pending retry per item.  An
item that says ``retry_on_change`` (a tree's child, which must not hold its
tree back) is not retried on its own: the queue leaves an *exists* watch on
it (which needs no read permission) and reports it settled; it is read again
when that watch fires, or when its owner asks (:meth:`ReadQueue.request_at`
after a new listing, a resync).
"""
from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import gevent
import gevent.event
from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionClosedError, ConnectionLoss, NoAuthError, NoNodeError, SessionExpiredError
from kazoo.protocol.states import Callback, KazooState, ZnodeStat

from livedata import payload
from livedata.payload import (
    BadChunkError,
    ChunkNotAllowedError,
    ChunkTally,
    Envelope,
    MissingChunkError,
    PayloadError,
)

log = logging.getLogger("livedata.reads")

WINDOW = 128  # reads outstanding at most: well below the ~280 wake bytes kazoo's socket pair holds
YIELD_EVERY = 32  # reads issued between yields, so the connection greenlet ships them while more are issued
DEADLINE_MIN = 10.0  # seconds; the deadline is the larger of this and twice the session timeout
RETRY_FIRST = 0.1
RETRY_MAX = 30.0
MAX_PAYLOAD_SIZE = payload.DEFAULT_MAX_PAYLOAD_SIZE  # decoded bytes accepted from one node (watcher.max_payload_size)
INLINE_DECODE = 256 * 1024  # envelopes storing or decoding to more are verified and inflated in the thread pool

DISCONNECTED = (ConnectionLoss, SessionExpiredError, ConnectionClosedError)

# An item's read state (an int in a slot: there may be 50,000 items).
IDLE, QUEUED, GETTING, CHECKING, WAITING = range(5)
GET, EXISTS, SIZE, CHUNK, DECODE = "get", "exists", "size", "chunk", "decode"
WATCH = "watch"  # exists with a watch after a failed read of a retry_on_change item: its change re-reads it


class Readable(Protocol):
    """What the queue needs of an item (a mirrored node): its path, its watch, and two slots of bookkeeping."""

    @property
    def path(self) -> str: ...

    active: bool  # False once removed from the configuration: its replies are dropped
    read_state: int
    reread: bool  # asked for again while a read was in flight: read once more when it completes
    read_delay: float  # the next retry's backoff

    def on_watch(self, event: Any) -> None: ...


class ReadSink(Protocol):
    """Where results go; called in the hub, so each must be quick and must not block or issue requests."""

    def read_done(self, item: Any, data: bytes, stat: ZnodeStat) -> None: ...

    def read_absent(self, item: Any) -> None: ...

    def children_done(self, item: Any, names: list[str], stat: ZnodeStat) -> None:
        """The children of an item that ``lists_children`` (a mirrored tree's source)."""

    def read_failed(self, item: Any, reason: str) -> None: ...

    def read_settled(self, item: Any) -> None:
        """The item's read is complete, with nothing more queued or in flight for it."""

    def reads_idle(self) -> None:
        """Nothing is queued or in flight any more (a burst of reads has landed)."""


@dataclass
class _Assembly:
    """A chunked node being read: its envelope, the chunks' sizes, then the chunks that have arrived so far.

    Each distinct chunk name is read once (``names``).  Their stats come first: only once the sizes add up
    to the stored size the envelope declares are the chunks themselves read, each checked against its
    stat and the running total (``tally``) as it arrives, so one version never costs more than it declares.
    """

    envelope: Envelope
    node_data: bytes
    stat: ZnodeStat
    names: list[str]
    sizes: dict[str, int]
    parts: dict[str, bytes]
    tally: ChunkTally
    missing: int  # stats, then chunks, still to arrive

    @classmethod
    def start(cls, envelope: Envelope, node_data: bytes, stat: ZnodeStat) -> _Assembly:
        names = envelope.distinct_chunks
        return cls(envelope, node_data, stat, names, {}, {}, envelope.tally(), len(names))


@dataclass
class _Request:
    item: Any
    op: str
    issued_at: float
    result: Any
    assembly: _Assembly | None = None
    index: int = 0


def describe(error: BaseException) -> str:
    """A failure in words an operator can act on."""
    if isinstance(error, NoAuthError):
        return "not allowed to read the node (check zookeeper.credentials and the node's ACL)"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class ReadQueue:
    """Reads items on request, one greenlet, ``window`` at a time, each with a deadline and one retry at most."""

    def __init__(
        self,
        client: KazooClient,
        sink: ReadSink,
        window: int = WINDOW,
        deadline: float | None = None,
        max_payload_size: int = MAX_PAYLOAD_SIZE,
        verify: Callable[[str, bytes, Envelope | None], None] | None = None,
    ) -> None:
        """``verify(path, data, envelope)``, when given, vets each decoded version before the sink gets it; a
        :class:`~livedata.payload.PayloadError` it raises fails that version like bad stored data
        (:class:`livedata.signing.Verifier`)."""
        self.client = client
        self.verify = verify
        self.sink = sink
        self.window = window
        self.max_payload_size = max_payload_size
        self._deadline = deadline
        self._queue: deque[tuple[Any, str, Any]] = deque()  # (item, op, the assembly of a chunk read or decode)
        self._in_flight: dict[int, _Request] = {}
        self._assembling: dict[int, _Assembly] = {}  # id(item) -> its chunked read under way
        self._missing_under: dict[int, bytes] = {}  # id(item) -> envelope whose chunk was missing: re-read once
        self._retries: list[tuple[float, int, Any]] = []  # (due, tie-breaker, item), heap-ordered
        self._tie = itertools.count()
        self._wake = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None
        self.timeouts = 0  # reads found unanswered after their deadline (each one nudged)
        self.issued = 0

    # --- asking for reads (any greenlet or callback) ---------------------------------------------

    def request(self, item: Readable) -> None:
        """Read ``item`` soon: now if idle or waiting for a retry, once more after a read in flight."""
        if not item.active:
            return
        state = item.read_state
        if state in (IDLE, WAITING):
            self._enqueue(item, GET)
        elif state in (GETTING, CHECKING):
            item.reread = True

    def request_at(self, item: Readable, due: float) -> None:
        """Read an idle ``item`` once at ``due`` (time.monotonic), unless something reads it first; like a retry,
        at most one is pending per item."""
        if item.active and item.read_state == IDLE:
            item.read_state = WAITING
            heapq.heappush(self._retries, (due, next(self._tie), item))
            self._wake.set()

    def request_all(self, items: Any) -> None:
        for item in items:
            self.request(item)

    def forget(self, item: Readable) -> None:
        """``item`` left the configuration (or its tree): whatever is queued or in flight for it is dropped as it
        comes up, and nothing of it stays counted as pending (a writer waits for pending reads to land)."""
        item.active = False
        self._drop(item)
        self._maybe_idle()

    def pending(self) -> int:
        """Reads queued or in flight (a chunked node being assembled counts as one at least)."""
        return max(len(self._queue) + len(self._in_flight), len(self._assembling))

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def _enqueue(self, item: Readable, op: str) -> None:
        item.read_state = QUEUED
        self._queue.append((item, op, None))
        self._wake.set()

    def _enqueue_part(self, item: Readable, op: str, assembly: _Assembly, index: int = 0) -> None:
        """A step of a chunked read: the item stays GETTING (a request meanwhile marks it for a re-read)."""
        self._queue.append((item, op, (assembly, index)))
        self._wake.set()

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> gevent.Greenlet:
        self._greenlet = gevent.spawn(self._run)
        return self._greenlet

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=1)
        self._retries.clear()

    def wake(self) -> None:
        """The connection state changed: issue what waited for a connection."""
        self._wake.set()

    # --- the issuing greenlet --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(timeout=self._next_timer())
            self._wake.clear()
            now = time.monotonic()
            self._nudge_overdue(now)
            self._queue_due_retries(now)
            self._issue()

    def _connected(self) -> bool:
        return bool(self.client.state == KazooState.CONNECTED)

    def _issue(self) -> None:
        issued = 0
        while self._queue and len(self._in_flight) < self.window and self._connected():
            item, op, part = self._queue.popleft()
            if not item.active:
                self._drop(item)
                continue
            if part is not None and self._assembling.get(id(item)) is not part[0]:
                continue  # a step of a chunked read that was given up (disconnection, newer envelope)
            if op == DECODE:
                self._decode(item, part[0])
                continue
            self._send(item, op, part)
            issued += 1
            if issued % YIELD_EVERY == 0:
                gevent.sleep(0)
        if not self._queue:
            self._maybe_idle()

    def _send(self, item: Readable, op: str, part: tuple[_Assembly, int] | None) -> None:
        if op in (SIZE, CHUNK):
            assert part is not None
            assembly, index = part
            chunk = f"{item.path.rstrip('/')}/{assembly.names[index]}"
            # No watch: chunks never change.
            result = self.client.exists_async(chunk) if op == SIZE else self.client.get_async(chunk)
            request = _Request(item, op, time.monotonic(), result, assembly, index)
        elif op == WATCH:
            item.read_state = CHECKING  # a change meanwhile (reread) is read once the watch is in place
            result = self.client.exists_async(item.path, watch=item.on_watch)
            request = _Request(item, op, time.monotonic(), result)
        else:
            item.read_state = GETTING if op == GET else CHECKING
            item.reread = False
            if op == EXISTS:
                result = self.client.exists_async(item.path, watch=item.on_watch)
            elif getattr(item, "lists_children", False):
                result = self.client.get_children_async(item.path, watch=item.on_watch, include_data=True)
            else:
                result = self.client.get_async(item.path, watch=item.on_watch)
            request = _Request(item, op, time.monotonic(), result)
        self._in_flight[id(result)] = request
        self.issued += 1
        result.rawlink(self._completed)

    def _next_timer(self) -> float | None:
        waits = []
        if self._retries:
            waits.append(max(0.0, self._retries[0][0] - time.monotonic()))
        if self._in_flight:
            waits.append(1.0)  # look for overdue reads once a second while any is out
        return min(waits) if waits else None

    def deadline(self) -> float:
        if self._deadline is not None:
            return self._deadline
        from livedata.zookeeper import session_timeout

        return max(DEADLINE_MIN, 2 * session_timeout(self.client))

    def _nudge_overdue(self, now: float) -> None:
        """Wake kazoo's sender once more for every read that is overdue.

        While connected, ZooKeeper answers every request in order (a dead
        connection is noticed by kazoo's pings and fails every read, which
        the reconnection re-issues), so an overdue read is one sitting in
        kazoo's queue without its wake byte: kazoo lost it when a send on the
        full socket pair failed, typically because another user of the same
        client (an application sharing it) issued a burst.  One spare byte
        makes kazoo send the next queued request; an extra byte with nothing
        queued is discarded by kazoo itself.  Each nudge is counted.
        """
        if not self._in_flight or not self._connected():
            return  # while disconnected kazoo fails every read itself; a reconnection re-reads all
        limit = now - self.deadline()
        overdue = [request for request in self._in_flight.values() if request.issued_at < limit]
        for request in overdue:
            self.timeouts += 1
            request.issued_at = now  # nudged again only after another deadline
            log.warning("%s: no reply to a read within %.0fs; waking kazoo's sender", request.item.path,
                        self.deadline())  # fmt: skip
            self._spare_wake_byte()

    def _spare_wake_byte(self) -> None:
        connection = getattr(self.client, "_connection", None)
        write_sock = getattr(connection, "_write_sock", None)
        if write_sock is None:
            return
        try:
            write_sock.send(b"\0")
        except Exception as e:  # a closing connection: the reconnection re-reads everything anyway
            log.debug("could not wake kazoo's sender: %r", e)

    def _queue_due_retries(self, now: float) -> None:
        while self._retries and self._retries[0][0] <= now:
            _, _, item = heapq.heappop(self._retries)
            if item.read_state == WAITING and item.active:  # anything else: read since, or removed
                self._enqueue(item, GET)

    # --- replies (hub callbacks) -----------------------------------------------------------------

    def _completed(self, result: Any) -> None:
        """A reply is in: handle it in kazoo's callback greenlet, behind the watch events received before it.

        The order matters for trees: ZooKeeper sends every event of one
        transaction before the reply to any later read, and kazoo queues
        events for that greenlet as it receives them.  Handling replies in the
        same queue means that when a reply is handled, the events that came
        before it have already asked for their reads, so a tree is never
        taken as complete half-way through a multi-node transaction.
        """
        self.client.handler.dispatch_callback(Callback("livedata-reply", self._on_reply, (result,)))

    def _on_reply(self, result: Any) -> None:
        request = self._in_flight.pop(id(result))
        try:
            self._handle_reply(request, result)
        except Exception as e:  # a bug must not leave the item waiting for a reply that was dropped
            log.exception("internal error while handling the reply to a read of %s", request.item.path)
            if request.item.active:
                self._fail(request.item, e)

    def _handle_reply(self, request: _Request, result: Any) -> None:
        if len(self._in_flight) <= self.window // 2:
            self._wake.set()  # room for a new slice of the queue; waking on every reply would cost a switch each
        try:
            if request.op == SIZE:
                self._size_arrived(request, result)
            elif request.op == CHUNK:
                self._chunk_arrived(request, result)
            else:
                self._handle(request.item, request.op, result)
        finally:
            self._maybe_idle()

    def _handle(self, item: Any, op: str, result: Any) -> None:
        if not item.active:
            self._drop(item)
            return
        if op == WATCH:
            self._watched(item, result)
            return
        if result.successful():
            if op == GET and getattr(item, "lists_children", False):
                names, stat = result.value
                self.sink.children_done(item, names, stat)
                self._finish(item)
            elif op == GET:
                data, stat = result.value
                self._got(item, data or b"", stat)
            elif result.value is not None:
                self._enqueue(item, GET)  # created between our get and our exists
            else:
                self._finish(item)
            return
        error = result.exception
        if isinstance(error, NoNodeError) and op == GET:
            self.sink.read_absent(item)
            self._enqueue(item, EXISTS)  # leaves a watch that fires on creation
        elif isinstance(error, DISCONNECTED):
            self._enqueue(item, GET)  # issued again once connected
        else:
            self._fail(item, error)

    def _fail(self, item: Any, error: BaseException) -> None:
        """Report the failure and retry later, with backoff: one pending retry per item at most.

        An item that is ``retry_on_change`` gets a watch instead of a timer (see :meth:`_watched`).
        """
        self._assembling.pop(id(item), None)
        if getattr(item, "retry_on_change", False):
            item.read_state = CHECKING  # not QUEUED: a request meanwhile must mark it for a read (reread)
            self._queue.append((item, WATCH, None))
            self._wake.set()
            self.sink.read_failed(item, describe(error))
            return
        item.read_state = WAITING
        item.reread = False
        due = time.monotonic() + item.read_delay
        item.read_delay = min(item.read_delay * 2, RETRY_MAX)
        heapq.heappush(self._retries, (due, next(self._tie), item))
        self._wake.set()  # the issuing greenlet's timer must account for this retry
        self.sink.read_failed(item, describe(error))

    def _watched(self, item: Any, result: Any) -> None:
        """The watch after a failed read is in place: the item is settled until it changes (or is asked for).

        A read that fails for good (no permission, bad stored data) is never retried in a loop: the watch
        fires on the node's next change or deletion (an exists needs no read permission, but ZooKeeper only
        sends the event once the session may read the node: the owner has its own reasons to ask again).
        A change that came while the failed read was out (``reread``) is read now.
        """
        if result.successful() and result.value is None:
            self.sink.read_absent(item)  # deleted meanwhile
        elif not result.successful() and isinstance(result.exception, DISCONNECTED):
            self._enqueue(item, GET)  # issued again once connected
            return
        self._finish(item)

    def _drop(self, item: Any) -> None:
        """An item no longer followed: forget its chunked read and its missing-chunk memory."""
        item.read_state = IDLE
        self._assembling.pop(id(item), None)
        self._missing_under.pop(id(item), None)

    def _fail_for_good(self, item: Any, error: PayloadError) -> None:
        """Bad stored data: this version is not read again, on no timer; the node's watch (armed by the get
        that delivered it) or a resync brings the next one.  Changed while being read: read it now."""
        if getattr(item, "retry_on_change", False):
            self._fail(item, error)  # a tree's child: settled behind its watch, never holding its tree back
            return
        self._assembling.pop(id(item), None)
        reread = item.reread
        item.read_state = IDLE
        item.reread = False
        self.sink.read_failed(item, describe(error))
        if reread and item.active:
            self._enqueue(item, GET)

    # --- decoding livedata's stored format --------------------------------------------------------

    def _got(self, item: Any, data: bytes, stat: ZnodeStat) -> None:
        """The node's own bytes: plain data is delivered as is, an envelope is decoded first."""
        try:
            envelope = payload.parse(data)
            if envelope is not None:
                envelope.check_size(self.max_payload_size)
        except PayloadError as e:
            self._fail_for_good(item, e)
            return
        if envelope is None:
            self._deliver(item, data, stat)
            return
        assembly = _Assembly.start(envelope, data, stat)
        self._assembling[id(item)] = assembly
        if not envelope.chunked:
            self._enqueue_part(item, DECODE, assembly)
        for index in range(len(assembly.names)):
            self._enqueue_part(item, SIZE, assembly, index)

    def _step_wanted(self, item: Any, assembly: _Assembly, index: int, result: Any) -> bool:
        """Whether a chunk step's reply still matters and succeeded: an item no longer followed is dropped, a
        read given up meanwhile (disconnection, newer envelope) ignored, and a failed step fails the read."""
        if not item.active:
            self._drop(item)
            return False
        if self._assembling.get(id(item)) is not assembly:
            return False
        if not result.successful():
            self._chunk_failed(item, assembly, index, result.exception)
            return False
        return True

    def _size_arrived(self, request: _Request, result: Any) -> None:
        """A chunk's stat: once all are in and add up to the declared stored size, the chunks are read."""
        item, assembly = request.item, request.assembly
        assert assembly is not None
        if not self._step_wanted(item, assembly, request.index, result):
            return
        if result.value is None:
            self._chunk_failed(item, assembly, request.index, NoNodeError())
            return
        assembly.sizes[assembly.names[request.index]] = int(result.value.dataLength)
        assembly.missing -= 1
        if assembly.missing:
            return
        try:
            assembly.envelope.check_chunk_sizes(assembly.sizes)
        except PayloadError as e:
            self._fail_for_good(item, e)
            return
        assembly.missing = len(assembly.names)
        for index in range(len(assembly.names)):
            self._enqueue_part(item, CHUNK, assembly, index)

    def _chunk_arrived(self, request: _Request, result: Any) -> None:
        item, assembly = request.item, request.assembly
        assert assembly is not None
        if not self._step_wanted(item, assembly, request.index, result):
            return
        name = assembly.names[request.index]
        chunk = result.value[0] or b""
        try:
            if len(chunk) != assembly.sizes[name]:
                raise BadChunkError(f"chunk {name} holds {len(chunk):,} bytes, its stat said {assembly.sizes[name]:,}")
            assembly.tally.add(name, chunk)
        except PayloadError as e:
            self._fail_for_good(item, e)  # what is still queued for this version is dropped with it
            return
        assembly.parts[name] = chunk
        assembly.missing -= 1
        if assembly.missing == 0:
            self._enqueue_part(item, DECODE, assembly)

    def _chunk_failed(self, item: Any, assembly: _Assembly, index: int, error: BaseException) -> None:
        del self._assembling[id(item)]
        if isinstance(error, DISCONNECTED):
            self._enqueue(item, GET)
        elif isinstance(error, NoNodeError):
            name = assembly.names[index]
            if self._missing_under.get(id(item)) == assembly.node_data:
                self._fail_for_good(item, MissingChunkError(name))  # the same envelope, the chunk still missing
            else:
                # A writer replaces an envelope, then removes the chunks only the old one used: read the node again.
                self._missing_under[id(item)] = assembly.node_data
                self._enqueue(item, GET)
        elif isinstance(error, NoAuthError):
            # The node is readable, this chunk is not: bad for good for this version.  Retried on a timer, it
            # would cost the chunks read before it (up to the stored size) every time; new credentials and
            # resyncs read every node again anyway.
            self._fail_for_good(item, ChunkNotAllowedError(assembly.names[index]))
        else:
            self._fail(item, error)

    def _decode(self, item: Any, assembly: _Assembly) -> None:
        """Verify and inflate; large ones in the thread pool, so the hub keeps serving meanwhile."""
        chunks = [assembly.parts[name] for name in assembly.envelope.chunk_names]
        try:
            # The decoded size counts: 64 KB of zlib can inflate to 64 MiB, seconds of the hub's time.
            if max(assembly.envelope.stored_size, assembly.envelope.size) > INLINE_DECODE:
                data = gevent.get_hub().threadpool.apply(assembly.envelope.decode, (chunks, self.max_payload_size))
            else:
                data = assembly.envelope.decode(chunks, self.max_payload_size)
        except PayloadError as e:
            if not item.active:
                self._drop(item)
            elif self._assembling.get(id(item)) is assembly:
                self._fail_for_good(item, e)
            return
        if not item.active:
            self._drop(item)
            return
        if self._assembling.get(id(item)) is not assembly:
            return  # given up while decoding
        del self._assembling[id(item)]
        self._deliver(item, data, assembly.stat, assembly.envelope)

    def _deliver(self, item: Any, data: bytes, stat: ZnodeStat, envelope: Envelope | None = None) -> None:
        if self.verify is not None:
            try:
                self.verify(item.path, data, envelope)
            except PayloadError as e:
                self._fail_for_good(item, e)
                return
        self._missing_under.pop(id(item), None)
        self.sink.read_done(item, data, stat)
        self._finish(item)

    def _finish(self, item: Any) -> None:
        item.read_delay = RETRY_FIRST
        if item.reread:
            self._enqueue(item, GET)
        else:
            item.read_state = IDLE
            self.sink.read_settled(item)

    def _maybe_idle(self) -> None:
        if not self._queue and not self._in_flight and not self._assembling:
            self.sink.reads_idle()


def reset_backoff(items: Any, first: float = RETRY_FIRST) -> None:
    """Retry soon again (new credentials may make refused reads succeed)."""
    for item in items:
        item.read_delay = first

