"""kazoo's gevent handler, with a select() cheap enough for thousands of requests in a burst.

kazoo's connection routine calls ``handler.select()`` once for every request
it sends and every response it reads.  The stock gevent handler builds a
fresh selector with io watchers on each call, which at start-up (one read
per node, thousands of nodes) costs more CPU than everything else together.

During such a burst the socket is nearly always ready, so this handler first
asks the kernel directly with a zero timeout (one ``poll(2)``, no hub
switch) and only falls back to a cooperative wait when nothing is ready.
Every ``YIELD_EVERY`` immediate answers it still yields to the hub, so
callbacks, the file writer and timers keep running during the burst.

The cooperative wait matters once the burst is over: an idle connection
waits in ``select`` once per change (for the watch event, then for the
reply), and the stock handler built and tore down a selector with its keys,
a timeout and fresh io watchers each time, a tenth of a change's CPU.  Here
the connection loop's usual wait (readable: the socket or kazoo's wake-up
pipe) reuses one io watcher per file and one waiter.
"""
from __future__ import annotations

import select
from collections.abc import Sequence
from typing import Any

import gevent
from gevent import monkey
from gevent.hub import Waiter
from kazoo.handlers.gevent import SequentialGeventHandler

YIELD_EVERY = 64

_original_poll = monkey.get_original("select", "poll")


def _fileno(fileobj: Any) -> int:
    return fileobj if isinstance(fileobj, int) else int(fileobj.fileno())


class GeventHandler(SequentialGeventHandler):  # type: ignore[misc]
    """A drop-in :class:`SequentialGeventHandler` whose ``select`` answers ready sockets without the hub."""

    def __init__(self) -> None:
        super().__init__()
        self._immediate = 0
        self._pollers = _Pollers()
        self._read_watchers: dict[int, tuple[Any, Any]] = {}  # fd -> (the object kazoo passed, its io watcher)

    def select(
        self, rlist: Sequence[Any], wlist: Sequence[Any], xlist: Sequence[Any], timeout: float | None = None
    ) -> tuple[list[Any], list[Any], list[Any]]:
        if self._immediate < YIELD_EVERY:
            ready = self._pollers.ready_now(rlist, wlist)
            if ready[0] or ready[1]:
                self._immediate += 1
                return ready
        else:
            gevent.sleep(0)
        self._immediate = 0
        if wlist or xlist or not rlist:
            result: tuple[list[Any], list[Any], list[Any]] = super().select(rlist, wlist, xlist, timeout)
            return result
        return self._wait_readable(rlist, timeout)

    def _wait_readable(self, rlist: Sequence[Any], timeout: float | None) -> tuple[list[Any], list[Any], list[Any]]:
        """Block this greenlet until one of ``rlist`` is readable (that one is returned) or ``timeout`` passes.

        One readable file is enough for kazoo's loop, which checks the other again on its next turn.
        """
        hub = gevent.get_hub()
        watchers = [self._read_watcher(hub, fileobj) for fileobj in rlist]
        waiter = Waiter(hub)
        timer = None if timeout is None else hub.loop.timer(max(timeout, 0.0))
        try:
            for fileobj, watcher in zip(rlist, watchers):
                watcher.start(waiter.switch, fileobj)
            if timer is not None:
                timer.start(waiter.switch, None)
            ready = waiter.get()
        finally:
            for watcher in watchers:
                watcher.stop()
            if timer is not None:
                timer.close()
        return ([] if ready is None else [ready]), [], []

    def _read_watcher(self, hub: Any, fileobj: Any) -> Any:
        """The io watcher kept for this file; a new object on the same fd (a reconnection) gets a new one."""
        fd = _fileno(fileobj)
        kept = self._read_watchers.get(fd)
        if kept is not None and kept[0] is fileobj:
            return kept[1]
        if kept is not None:
            kept[1].close()
        watcher = hub.loop.io(fd, 1)  # 1: readable
        self._read_watchers[fd] = (fileobj, watcher)
        return watcher


class _Pollers:
    """poll(2) objects kept per set of fds, so asking "ready now?" costs one syscall and no set-up.

    kazoo asks about the same two or three fd sets over and over (the socket and its wake-up pipe; the socket
    alone), so a few are kept; a reconnection brings new fds and the cache starts over when it grows.
    """

    LIMIT = 8

    def __init__(self) -> None:
        self._by_fds: dict[tuple[tuple[int, ...], tuple[int, ...]], Any] = {}

    def ready_now(self, rlist: Sequence[Any], wlist: Sequence[Any]) -> tuple[list[Any], list[Any], list[Any]]:
        """Which of the files are ready right now (zero timeout: it never blocks, never switches)."""
        rfds = tuple(_fileno(fileobj) for fileobj in rlist)
        wfds = tuple(_fileno(fileobj) for fileobj in wlist)
        poller = self._by_fds.get((rfds, wfds))
        if poller is None:
            poller = self._by_fds[(rfds, wfds)] = _new_poller(rfds, wfds)
            if len(self._by_fds) > self.LIMIT:
                self._by_fds = {(rfds, wfds): poller}
        answered = poller.poll(0)
        if not answered:
            return [], [], []
        ready = dict(answered)
        readable = [f for f, fd in zip(rlist, rfds) if ready.get(fd, 0) & _READABLE]
        writable = [f for f, fd in zip(wlist, wfds) if ready.get(fd, 0) & _WRITABLE]
        return readable, writable, []


_READABLE = select.POLLIN | select.POLLERR | select.POLLHUP
_WRITABLE = select.POLLOUT | select.POLLERR | select.POLLHUP


def _new_poller(rfds: Sequence[int], wfds: Sequence[int]) -> Any:
    wanted: dict[int, int] = {}
    for fd in rfds:
        wanted[fd] = wanted.get(fd, 0) | select.POLLIN
    for fd in wfds:
        wanted[fd] = wanted.get(fd, 0) | select.POLLOUT
    poller = _original_poll()
    for fd, events in wanted.items():
        poller.register(fd, events)
    return poller
