"""kazoo's gevent handler, with a select() cheap enough for thousands of requests in a burst.

kazoo's connection routine calls ``handler.select()`` once for every request
it sends and every response it reads.  The stock gevent handler builds a
fresh selector with io watchers on each call, which at start-up (one read
per node, thousands of nodes) costs more CPU than everything else together.

During such a burst the socket is nearly always ready, so this handler first
asks the kernel directly with a zero timeout (one ``poll(2)``, no hub
switch) and only falls back to gevent's cooperative select when nothing is
ready.  Every ``YIELD_EVERY`` immediate answers it still yields to the hub,
so callbacks, the file writer and timers keep running during the burst.
"""
from __future__ import annotations

import select
from collections.abc import Sequence
from typing import Any

import gevent
from gevent import monkey
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

    def select(
        self, rlist: Sequence[Any], wlist: Sequence[Any], xlist: Sequence[Any], timeout: float | None = None
    ) -> tuple[list[Any], list[Any], list[Any]]:
        if self._immediate < YIELD_EVERY:
            ready = _poll_now(rlist, wlist)
            if ready[0] or ready[1]:
                self._immediate += 1
                return ready
        else:
            gevent.sleep(0)
        self._immediate = 0
        result: tuple[list[Any], list[Any], list[Any]] = super().select(rlist, wlist, xlist, timeout)
        return result


def _poll_now(rlist: Sequence[Any], wlist: Sequence[Any]) -> tuple[list[Any], list[Any], list[Any]]:
    """Which of the files are ready right now (poll(2), zero timeout: it never blocks, never switches)."""
    wanted: dict[int, int] = {}
    for fileobj in rlist:
        wanted[_fileno(fileobj)] = wanted.get(_fileno(fileobj), 0) | select.POLLIN
    for fileobj in wlist:
        wanted[_fileno(fileobj)] = wanted.get(_fileno(fileobj), 0) | select.POLLOUT
    poller = _original_poll()
    for fd, events in wanted.items():
        poller.register(fd, events)
    ready = dict(poller.poll(0))
    readable_events = select.POLLIN | select.POLLERR | select.POLLHUP
    readable = [f for f in rlist if ready.get(_fileno(f), 0) & readable_events]
    writable = [f for f in wlist if ready.get(_fileno(f), 0) & (select.POLLOUT | select.POLLERR | select.POLLHUP)]
    return readable, writable, []
