"""Publishing a batch of dirty nodes: each node's file written (or removed), each tree handed to its publisher.

Single files go through :func:`livedata.files.sync_files` in one batch (in the hub when small, in gevent's
thread pool when large, so the hub keeps answering ZooKeeper pings while thousands of files are written);
a tree's snapshot is published by the mirror's tree publisher.  Every outcome is then recorded on the node
(:meth:`Publisher.written`): in sync or failed, retried on a backoff, logged once per change of state, told
to the observers, and counted towards readiness.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import gevent

from livedata import files
from livedata.files import FileWriteError, Outcome
from livedata.mirrored import ABSENT, MirroredNode, MirrorObserver
from livedata.reads import RETRY_FIRST
from livedata.schedule import InitialSync, WriteSchedule

log = logging.getLogger("livedata.sync")

INLINE_BATCH = 16  # batches up to this size are written in the hub: cheaper than a thread hand-off


class Publisher:
    """Writes batches for the :class:`~livedata.schedule.WriteSchedule` and records how each node's write went."""

    def __init__(
        self,
        observer: MirrorObserver,
        initial: InitialSync,
        publish_tree: Callable[[MirroredNode], None],
    ) -> None:
        """``publish_tree`` publishes a tree's wanted picture and reports it through :meth:`written`."""
        self.observer = observer
        self.initial = initial
        self.schedule: WriteSchedule | None = None  # set by the mirror: where failed writes are retried
        self._publish_tree = publish_tree

    def write_batch(self, batch: list[MirroredNode]) -> None:
        """One batch's unexpected error fails that batch's nodes (retried later), never the writer itself."""
        try:
            self._write_batch(batch)
        except Exception as e:
            log.exception("internal error while writing %d files; they will be retried", len(batch))
            reason = f"internal error: {type(e).__name__}: {e}"
            for node in batch:
                if node.active:
                    self.written(node, FileWriteError(node.config.file.path, reason))

    def _write_batch(self, batch: list[MirroredNode]) -> None:
        batch = [node for node in batch if node.active]
        for node in batch:
            node.dirty = False
            node.writing = True  # until written()
        trees = [node for node in batch if node.lists_children]
        if trees:
            batch = [node for node in batch if not node.lists_children]
            for tree in trees:
                self._publish_tree(tree)
        items = [(node, node.config.file, node.wanted) for node in batch if isinstance(node.wanted, bytes)]
        absent = [node for node in batch if node.wanted is ABSENT]
        writes = [(spec, data) for _, spec, data in items]
        # What we last wrote there: a dest known to hold other bytes is replaced without reading it back first.
        previous = {spec.path: node.last_written for node, spec, _ in items if node.last_written is not None}
        if len(writes) <= INLINE_BATCH:
            results: list[Outcome | FileWriteError] = files.sync_files(writes, previous)
        else:
            results = gevent.get_hub().threadpool.apply(files.sync_files, (writes, previous))
        for (node, _, data), result in zip(items, results):
            node.last_written = None if isinstance(result, FileWriteError) else data
            if node.active:  # removed by a reload while its file was written: no hook, no bookkeeping
                self.written(node, result)
        for node in absent:
            node.last_written = None
            self.written(node, _remove(node))

    def written(self, node: MirroredNode, result: Outcome | FileWriteError) -> None:
        """Record a node's outcome: in sync, or failed and retried later; observers told, readiness counted."""
        node.writing = False
        if isinstance(result, FileWriteError):
            if node.failure != str(result):
                kept = "the file there is left as it was" if os.path.lexists(result.path) else "no file is there yet"
                log.error("%s: %s; will retry, %s", node.name, result, kept)
            node.failure = str(result)
            node.in_sync = False
            self.observer.failed(node, "write", result.reason)
            assert self.schedule is not None, "a mirror sets the schedule before anything is written"
            self.schedule.retry_later(node)
        else:
            if node.failure is not None:
                log.info("%s: recovered (%s)", node.name, node.config.file.path)
            node.failure = None
            node.retry_delay = RETRY_FIRST
            # A newer value may have arrived while we wrote, or a re-read may be under way (reconnection).
            node.in_sync = not node.dirty and node.quiet()
            node.written_at = time.time()
            repaired = result is not Outcome.UNCHANGED and node.written_version == node.version
            node.written_version = node.version
            if result is not Outcome.UNCHANGED and self.initial.done.is_set():
                _log_write(node, result, repaired)
            self.observer.written(node, result, repaired)
        self.initial.node_done(node)


def _remove(node: MirroredNode) -> Outcome | FileWriteError:
    try:
        return Outcome.WRITTEN if files.remove_file(node.config.file.path) else Outcome.UNCHANGED
    except OSError as e:
        return FileWriteError(node.config.file.path, e.strerror or str(e), step="removing")
    except FileWriteError as e:
        return e


def _log_write(node: MirroredNode, result: Outcome, repaired: bool) -> None:
    if getattr(node.config, "format", None) == "memory":
        return  # an in-process tree (LiveTree): no file, nothing an operator needs per change
    path = node.config.file.path
    if result is Outcome.METADATA_FIXED:
        log.info("%s: fixed mode/ownership of %s", node.name, path)
    elif isinstance(node.wanted, dict):
        log.info("%s: published %d children to %s", node.name, len(node.wanted), path)
    elif node.wanted is ABSENT:
        log.info("%s: node is absent: removed %s", node.name, path)
    elif isinstance(node.wanted, bytes):
        what = "restored" if repaired else "wrote"
        log.info("%s: %s %d bytes to %s (version %d)", node.name, what, len(node.wanted), path, node.version)
