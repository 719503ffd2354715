"""Linux inotify through ctypes, so the bench can sleep until a dest file is replaced instead of polling it.

A poll loop in the benchmark process would compete with the daemon it measures for the machine's two cores and
would add its own polling period to every latency; a blocking wait on inotify costs nothing while nothing
happens and wakes within microseconds of the rename.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import time
from dataclasses import dataclass

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len

# A dest changes either by a rename into place (atomic writers) or by an in-place write being closed.
REPLACEMENTS = IN_MOVED_TO | IN_CLOSE_WRITE


class InotifyError(Exception):
    """inotify could not be set up or lost events; the measurement it served cannot be trusted."""


@dataclass(frozen=True)
class Event:
    """One replacement seen in the watched directory; ``at`` is ``time.perf_counter()`` when the bench woke."""

    at: float
    name: str
    mask: int


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class DirectoryEvents:
    """Names renamed into (or written and closed in) one directory, delivered as they happen."""

    def __init__(self, directory: str, mask: int = REPLACEMENTS) -> None:
        libc = _libc()
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise InotifyError(f"inotify_init1 failed: {os.strerror(ctypes.get_errno())}")
        self._fd: int = fd
        if libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
            error = os.strerror(ctypes.get_errno())
            os.close(fd)
            raise InotifyError(f"cannot watch {directory} with inotify: {error} (see fs.inotify.max_user_watches)")
        self.directory = directory

    def wait(self, timeout: float) -> list[Event]:
        """Block up to ``timeout`` seconds for events; an empty list means nothing happened in that time."""
        readable, _, _ = select.select([self._fd], [], [], max(timeout, 0.0))
        now = time.perf_counter()
        if not readable:
            return []
        return self._drain(now)

    def _drain(self, now: float) -> list[Event]:
        events: list[Event] = []
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return events
            events.extend(_parse(data, now))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DirectoryEvents:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _parse(data: bytes, now: float) -> list[Event]:
    events = []
    offset = 0
    while offset < len(data):
        _, mask, _, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        if mask & IN_Q_OVERFLOW:
            raise InotifyError("the inotify queue overflowed (fs.inotify.max_queued_events): events were lost")
        name = data[offset : offset + length].rstrip(b"\0")
        offset += length
        events.append(Event(now, os.fsdecode(name), mask))
    return events
