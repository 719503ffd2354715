"""Serve the parsed children of a znode that this (gevent) process watches itself: a tree without the sidecar.

:class:`LiveTree` is to :class:`~livedata.TreeWatcher` what :class:`~livedata.LiveNode` is to
:class:`~livedata.FileWatcher`: the same reading API and errors, fed by ZooKeeper in-process instead of by the
daemon's directory, so :func:`livedata.live_data.watched_data_from_config` can pick either from configuration
alone (``live_data.<name>.tree = /znode`` or ``live_data.<name>.dir = /path``).

It is the daemon's own tree mirror (:class:`livedata.sync.Mirror`) with the disk publisher swapped for one that
keeps the picture in memory.  So it inherits exactly the daemon's guarantees: one read path (the read queue,
payload decoding, bounded requests), a consistent picture only (a change of several children in one ZooKeeper
transaction is wholly in a snapshot or not at all), re-reads after reconnection and session expiry, a new
session when kazoo's connection ends for good (:mod:`livedata.session`), and a failing picture that keeps the
last good one.  Only children whose bytes changed are parsed again.

The mirror runs greenlets, so this needs a client on kazoo's gevent handler (a gevent application: what
``zookeeper_client_from_config`` makes once gevent has patched the process).
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType, TracebackType
from typing import IO, Any, Callable, Generic, Tuple, TypeVar

import gevent.event
from kazoo.handlers.gevent import SequentialGeventHandler

from livedata.file_watcher import ContentReader, WatchedFileNotAvailableError
from livedata.files import FileSpec, FileWriteError, Outcome
from livedata.payload import DEFAULT_MAX_PAYLOAD_SIZE
from livedata.sync import Mirror, MirroredTree, PublishResult, TreeConfig

__all__ = ["LiveTree"]

T = TypeVar("T")

_NOTHING_YET = "no data received from ZooKeeper yet"
_NO_DEST = "/nonexistent/livedata-live-tree"  # a LiveTree writes no file: its dest is never opened


class _Snapshot(Generic[T]):
    """One published picture: parsed values, the bytes they came from, and when the content last changed."""

    __slots__ = ("content", "mtime", "values")

    def __init__(self, values: Mapping[str, T], content: Mapping[str, bytes], mtime: float) -> None:
        self.values = values
        self.content = content
        self.mtime = mtime


class LiveTree(Generic[T]):
    """Keep the parsed children of the znode ``path`` in memory, one consistent snapshot at a time.

    ``get_data()`` returns a read-only mapping {child name: parsed value}.  Arguments and errors are those of
    :class:`~livedata.LiveNode`: ``parser`` receives a file object over each child's bytes; until a first
    snapshot loads, reads raise :class:`WatchedFileNotAvailableError`; ``timeout`` makes the constructor wait
    for it.  A missing ``path`` is an empty tree.  ``backoff`` and ``check_interval`` are accepted for
    compatibility and unused (changes are pushed).  :meth:`close` stops following changes.
    """

    def __init__(
        self,
        client: Any,
        path: str,
        parser: Callable[[IO[Any]], T],
        timeout: float | None = None,
        binary: bool = False,
        encoding: str | None = None,
        newline: str | None = None,
        backoff: float | None = None,
        check_interval: float = 0.0,
        max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE,
    ) -> None:
        if not isinstance(client.handler, SequentialGeventHandler):
            raise TypeError("LiveTree needs a kazoo client on the gevent handler (a gevent application); "
                            "other applications read a tree the watcher mirrors, with TreeWatcher")  # fmt: skip
        self._reader = ContentReader.from_arguments(
            "LiveTree", path, binary, encoding, newline, timeout, backoff, check_interval
        )
        self._path = path
        self._parser = parser
        self._snapshot: _Snapshot[T] | None = None
        self._error: BaseException | str = _NOTHING_YET
        self._loaded = gevent.event.Event()
        config = TreeConfig(path, path, FileSpec(_NO_DEST), format="memory")
        self._mirror = Mirror(client, [config], max_payload_size=max_payload_size, publish_tree=self._publish)
        self._mirror.start()
        if timeout is not None:
            self._loaded.wait(timeout)
            try:
                self._current()
            except WatchedFileNotAvailableError:
                self.close()
                raise

    @property
    def path(self) -> str:
        return self._path

    def get_data(self) -> Mapping[str, T]:
        """The newest good snapshot: a read-only {child name: parsed value}."""
        return self._current().values

    def get_data_and_mtime(self) -> Tuple[Mapping[str, T], float]:
        """The snapshot and when its content last changed (a re-read of identical bytes does not move it)."""
        snapshot = self._current()
        return snapshot.values, snapshot.mtime

    def close(self) -> None:
        """Stop following changes; the last snapshot stays readable."""
        self._mirror.stop()

    def __enter__(self) -> LiveTree[T]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _current(self) -> _Snapshot[T]:
        snapshot = self._snapshot
        if snapshot is not None:
            return snapshot
        error = self._error
        if isinstance(error, BaseException):
            raise WatchedFileNotAvailableError(self._path, error) from error
        raise WatchedFileNotAvailableError(self._path, error)

    def _publish(self, tree: MirroredTree, changes: dict[str, bytes | None]) -> PublishResult:
        """The mirror's publisher: parse what changed, then swap the snapshot in one assignment."""
        assert isinstance(tree.wanted, dict), "called with a complete picture"
        children = tree.wanted  # the whole picture (in the hub, as this runs)
        previous = self._snapshot
        old_content: Mapping[str, bytes] = previous.content if previous is not None else {}
        values: dict[str, T] = {}
        for name in sorted(children):
            data = children[name]
            if previous is not None and name in old_content and old_content[name] == data:
                values[name] = previous.values[name]
                continue
            try:
                values[name] = self._parser(self._reader.open(data))
            except Exception as exc:
                self._error = exc
                return FileWriteError(f"{self._path}/{name}", f"cannot parse: {type(exc).__name__}: {exc}"), ()
        if previous is not None and dict(old_content) == children:
            return Outcome.UNCHANGED, ()
        self._snapshot = _Snapshot(MappingProxyType(values), MappingProxyType(dict(children)), time.time())
        self._loaded.set()
        return Outcome.WRITTEN, ()
