"""When files are written: the dirty set, gathering a burst of reads into one batch, write retries, readiness.

The read results mark a node dirty (:meth:`WriteSchedule.mark_dirty`) whenever its wanted state may differ
from its file; one greenlet, the writer, takes every node marked since its last pass and hands them to the
publisher as batches.  It does not care whether a thing is a node or a tree:

* a lone change has no reads pending behind it and is written at once;
* while a burst of reads is in flight (start-up, reconnection, resync), results pile up for at most
  ``GATHER_MAX`` or until ``CHUNK`` are waiting, so thousands of files share one flush to disk;
* a failed write is retried on its own backoff (``retry_later``), without holding back the others.

:class:`InitialSync` tracks readiness: set once every node has been written, or has failed, once.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import time
from collections.abc import Callable, Iterable, Sequence

import gevent
import gevent.event

from livedata.mirrored import ABSENT, MirroredNode
from livedata.reads import RETRY_MAX, ReadQueue

log = logging.getLogger("livedata.sync")

CHUNK = 2000  # files per batch, so memory and hub latency stay bounded on huge batches
GATHER_MAX = 0.1  # longest a write waits for a burst of reads in flight to land, to share one flush with them
NAMED_FAILURES = 5  # failing nodes named in the initial sync's summary line


def release_memory() -> None:
    """Hand the start-up burst's garbage back to the OS.

    Reading config and thousands of nodes at once leaves a heap full of
    freed objects that glibc keeps around; a sidecar lives on every host for
    months, so its resident size should be what it holds, not what it once
    touched.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


class WriteSchedule:
    """The writer greenlet and what it works from: nodes marked dirty, and failed writes waiting to be retried."""

    def __init__(self, reads: ReadQueue, write: Callable[[list[MirroredNode]], None]) -> None:
        """``write`` publishes one batch; it must report every node's outcome, and raise only on a bug."""
        self._reads = reads
        self._write = write
        self._dirty: dict[int, MirroredNode] = {}  # written on the writer's next pass
        self._retrying: dict[int, MirroredNode] = {}  # failed writes waiting for their retry_at
        self._wakeup = gevent.event.Event()
        self._batch_ready = gevent.event.Event()  # no reads pending, or a full chunk is waiting

    def start(self) -> gevent.Greenlet:
        return gevent.spawn(self._write_loop)

    def mark_dirty(self, node: MirroredNode) -> None:
        node.dirty = True
        self._dirty[id(node)] = node
        self._wakeup.set()
        if len(self._dirty) >= CHUNK:
            self._batch_ready.set()

    def reads_idle(self) -> None:
        """The read queue has nothing in flight: a gathered burst is complete."""
        self._batch_ready.set()

    def forget(self, node: MirroredNode) -> None:
        """A node removed from the configuration: neither written nor retried any more."""
        self._dirty.pop(id(node), None)
        self._retrying.pop(id(node), None)

    def retry_later(self, node: MirroredNode) -> None:
        """Write the node again after its backoff (doubled at each failure, up to RETRY_MAX)."""
        node.retry_at = time.monotonic() + node.retry_delay
        node.retry_delay = min(node.retry_delay * 2, RETRY_MAX)
        self._retrying[id(node)] = node

    def _write_loop(self) -> None:
        while True:
            self._wakeup.wait(timeout=self._next_retry_in())
            self._gather()
            self._wakeup.clear()
            self._requeue_due_retries()
            batch, self._dirty = list(self._dirty.values()), {}
            for start in range(0, len(batch), CHUNK):
                self._write_safely(batch[start : start + CHUNK])

    def _gather(self) -> None:
        """While a burst of reads is in flight (start-up, reconnection, resync), let their results pile up.

        Files are cheap to write but expensive to make durable: one flush for
        2,000 files costs about what one costs alone.  A lone change has no
        reads pending behind it and is written at once.
        """
        if self._reads.pending() > 0 and len(self._dirty) < CHUNK:
            self._batch_ready.clear()
            self._batch_ready.wait(timeout=GATHER_MAX)

    def _write_safely(self, batch: list[MirroredNode]) -> None:
        try:
            self._write(batch)
        finally:
            for node in batch:
                node.writing = False  # also for nodes no result was reported for (inactive, nothing to write)

    def _next_retry_in(self) -> float | None:
        if not self._retrying:
            return None
        return max(0.0, min(node.retry_at for node in self._retrying.values()) - time.monotonic())

    def _requeue_due_retries(self) -> None:
        now = time.monotonic()
        for key, node in list(self._retrying.items()):
            if node.retry_at <= now:
                del self._retrying[key]
                self.mark_dirty(node)


class InitialSync:
    """Readiness: ``done`` is set once every node has been written, or has failed, once (then logged in one line)."""

    def __init__(self, nodes: Sequence[MirroredNode]) -> None:
        self.done = gevent.event.Event()
        self.started_at = time.monotonic()
        self._pending = {id(node) for node in nodes}
        self._nodes = nodes

    def node_done(self, node: MirroredNode) -> None:
        if self._pending:
            self._pending.discard(id(node))
            if not self._pending:
                self._pending = set()  # a set never shrinks its table: 0.5 MB at 5,000 nodes
                self._finish()
                release_memory()

    def follow(
        self, nodes: Sequence[MirroredNode], removed: Iterable[MirroredNode], added: Iterable[MirroredNode]
    ) -> None:
        """A reload before the first full sync: readiness follows the new list, never waits for a removed node."""
        self._nodes = nodes
        if self.done.is_set():
            return
        self._pending -= {id(node) for node in removed}
        self._pending |= {id(node) for node in added}
        if not self._pending:
            self._finish()

    def _finish(self) -> None:
        failed = [node.name for node in self._nodes if node.failure]
        absent = sum(1 for node in self._nodes if node.wanted is ABSENT)
        named = ", ".join(failed[:NAMED_FAILURES]) + (f" and {len(failed) - NAMED_FAILURES} more"
                                                       if len(failed) > NAMED_FAILURES else "")  # fmt: skip
        log.info(
            "initial sync of %d nodes done in %.2fs: %d absent, %d failed%s",
            len(self._nodes), time.monotonic() - self.started_at, absent, len(failed), f" ({named})" if failed else "",
        )  # fmt: skip
        self.done.set()
