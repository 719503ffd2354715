"""Waiting for files and ZooKeeper watches to show a value, and timestamping the moment they do.

Every latency in the bench is ``time.perf_counter()`` in this process at the start of a ``set()`` compared with
``time.perf_counter()`` in this process when the result became observable, so all figures share one clock.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from kazoo.client import KazooClient

from tools.benchmark.inotify import DirectoryEvents
from tools.benchmark.targets import BenchError, Daemon

_POLL = 0.002  # existence poll period during startup: well below the figures it resolves


def payload(tag: str, index: int, size: int) -> bytes:
    """Distinct bytes per (tag, index), padded to ``size`` so every file is recognisably the right version."""
    head = f"{tag}:{index}:".encode()
    return head + b"." * max(0, size - len(head))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: always one of the measured values, never an interpolation between two."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def syncfs(path: str) -> None:
    """Flush the whole filesystem holding ``path`` (Linux syncfs(2); Python has no wrapper for it)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), f"syncfs({path}) failed")
    finally:
        os.close(fd)


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_cost_us(directory: str, count: int = 300) -> float:
    """Microseconds per empty-file create in a fresh directory: how fast this filesystem allocates inodes now.

    On ext4 without a journal (like this machine's root) the allocator skips inodes deleted in the last one
    to six minutes, one by one, so after a mass deletion creating files gets many times slower for a while.
    """
    os.makedirs(directory)
    start = time.perf_counter()
    for i in range(count):
        os.close(os.open(os.path.join(directory, f"f{i}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC))
    return (time.perf_counter() - start) / count * 1e6


def read_or_none(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def check_alive(daemons: Iterable[Daemon]) -> None:
    for daemon in daemons:
        daemon.check_alive()


def wait_files_ready(daemons: Sequence[Daemon], expected: Mapping[str, bytes], timeout: float) -> float:
    """``perf_counter()`` when every path first held its expected bytes.

    Cheap enough for 50,000 files while the daemons work: each pass stats pending paths in order only up to the
    first missing one (writers go roughly in config order), so the bench costs a few microseconds per pass
    until the end. Existence stands in for content while waiting; contents are checked once everything exists
    and any wrong file is then waited for by content.
    """
    deadline = time.perf_counter() + timeout
    pending = list(expected)
    while pending:
        found = 0
        while found < len(pending) and os.path.exists(pending[found]):
            found += 1
        pending = pending[found:]
        if pending:
            _pause(daemons, deadline, f"{len(pending)} of {len(expected)} files to appear, e.g. {pending[0]}")
    ready = time.perf_counter()
    wrong = [path for path, data in expected.items() if read_or_none(path) != data]
    while wrong:
        _pause(daemons, deadline, f"{len(wrong)} files to hold their node's data, e.g. {wrong[0]}")
        wrong = [path for path in wrong if read_or_none(path) != expected[path]]
        ready = time.perf_counter()
    return ready


def _pause(daemons: Sequence[Daemon], deadline: float, waiting_for: str) -> None:
    check_alive(daemons)
    if time.perf_counter() > deadline:
        raise BenchError(f"timed out waiting for {waiting_for}")
    time.sleep(_POLL)


def wait_replacements(
    events: DirectoryEvents, wanted: Mapping[str, bytes], daemons: Sequence[Daemon], timeout: float
) -> dict[str, float]:
    """``perf_counter()`` at which each dest basename in ``wanted`` was replaced with its wanted bytes."""
    deadline = time.perf_counter() + timeout
    arrived: dict[str, float] = {}
    while len(arrived) < len(wanted):
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            missing = sorted(set(wanted) - set(arrived))
            raise BenchError(f"timed out after {timeout}s waiting for {missing[:5]} in {events.directory}")
        batch = events.wait(min(remaining, 0.5))
        if not batch:
            check_alive(daemons)
        for event in batch:
            name = event.name
            path = os.path.join(events.directory, name)
            if name in wanted and name not in arrived and read_or_none(path) == wanted[name]:
                arrived[name] = event.at
    return arrived


class FloorWatch:
    """A bare kazoo DataWatch in this process on its own session: the earliest a watcher could know of a change."""

    def __init__(self, hosts: str, path: str) -> None:
        self._seen: dict[bytes, float] = {}
        self._changed = threading.Condition()
        self._client = KazooClient(hosts=hosts, timeout=10.0)
        self._client.start(timeout=30)
        self._client.DataWatch(path, self._on_data)

    def _on_data(self, data: bytes | None, _stat: object) -> None:
        now = time.perf_counter()
        if data is not None:
            with self._changed:
                self._seen.setdefault(data, now)
                self._changed.notify_all()

    def wait(self, data: bytes, timeout: float) -> float:
        """``perf_counter()`` when the watch first delivered ``data``."""
        with self._changed:
            if not self._changed.wait_for(lambda: data in self._seen, timeout):
                raise BenchError(f"the floor DataWatch never saw {data[:30]!r}... within {timeout}s")
            return self._seen.pop(data)

    def close(self) -> None:
        self._client.stop()
        self._client.close()

    def __enter__(self) -> FloorWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextmanager
def journaled_ext4(image: str, megabytes: int = 128) -> Iterator[str | None]:
    """A freshly made, loop-mounted ext4 with a journal (mkfs.ext4's defaults, as on most servers); None if
    this process cannot make one (not root, no mkfs.ext4 or loop devices). Unmounted and removed afterwards."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None or shutil.which("mount") is None:
        print("bench: not root or no mkfs.ext4/mount: skipping the journaled-ext4 rows", file=sys.stderr)
        yield None
        return
    with open(image, "wb") as f:
        f.truncate(megabytes * 1024 * 1024)
    mountpoint = image + ".mnt"
    os.makedirs(mountpoint)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", image], capture_output=True, text=True)
    mounted = made.returncode == 0 and subprocess.run(
        ["mount", "-o", "loop", image, mountpoint], capture_output=True, text=True
    ).returncode == 0
    if not mounted:
        print("bench: cannot mount a loop ext4 here: skipping the journaled-ext4 rows", file=sys.stderr)
    try:
        yield mountpoint if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", mountpoint], check=False)
        shutil.rmtree(mountpoint, ignore_errors=True)
        os.unlink(image)
