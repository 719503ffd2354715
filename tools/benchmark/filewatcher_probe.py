"""Measure one FileWatcher implementation; run as a script under the interpreter whose FileWatcher is measured.

Standard library only (plus the FileWatcher under test), so the same file runs in our virtualenv and in the
incumbent's. Prints one JSON object of figures on stdout.

Per-call costs are the best of several timed loops (the least disturbed run, as timeit does), because the
machine is shared and noise only ever adds time.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import time
from typing import IO, Any, Callable

_REPEATS = 7
_CHANGES = 20
_INTERVAL_CHANGES = 5
_MTIME_TICK = 0.02  # the kernel stamps mtimes from a coarse clock; an mtime-based reader needs them to differ


def replace(path: str, data: bytes) -> None:
    """Publish ``data`` the way the watcher does: a complete temp file renamed over the old one."""
    temp = path + ".probe-tmp"
    with open(temp, "wb") as f:
        f.write(data)
    os.rename(temp, path)


class StatPerCall:
    """The simplest correct reader: stat on every call, reread when the mtime moved. The yardstick."""

    def __init__(self, path: str, parser: Callable[[IO[Any]], Any]) -> None:
        self._path = path
        self._parser = parser
        self._mtime = -1
        self._value: Any = None

    def get_data(self) -> Any:
        mtime = os.stat(self._path).st_mtime_ns
        if mtime != self._mtime:
            with open(self._path) as f:
                self._value = self._parser(f)
            self._mtime = mtime
        return self._value


def ns_per_call(candidates: dict[str, Callable[[], object]], calls: int) -> dict[str, float]:
    """Best time per call of each candidate; rounds interleave them so a noisy moment hits all alike."""
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(_REPEATS):
        for name, call in candidates.items():
            start = time.perf_counter_ns()
            for _ in range(calls):
                call()
            best[name] = min(best[name], (time.perf_counter_ns() - start) / calls)
    return best


def read_all(f: IO[Any]) -> Any:
    return f.read()


def visible_after(
    path: str, get: Callable[[], object], value: str, poll: float, timeout: float
) -> tuple[float, float] | None:
    """Seconds from an atomic replace until the first ``get()`` returning ``value`` began, and until it returned.

    The start measures how long stale data was served, whatever the polling period of this loop; the return
    adds what the reload itself cost. None if no call returned ``value`` within ``timeout``.
    """
    replace(path, value.encode())
    start = time.perf_counter()
    while True:
        called = time.perf_counter()
        if get() == value:
            return called - start, time.perf_counter() - start
        if called - start > timeout:
            return None
        if poll:
            time.sleep(poll)


def payload(index: int, size: int) -> str:
    head = f"probe:{index}:"
    return head + "." * max(0, size - len(head))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--module", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--payload-bytes", type=int, required=True)
    args = parser.parse_args()
    file_watcher = importlib.import_module(args.module).FileWatcher
    path = os.path.join(args.dir, "watched")
    replace(path, payload(0, args.payload_bytes).encode())

    reference = StatPerCall(path, read_all)
    default = file_watcher(path, read_all, timeout=5)
    candidates: dict[str, Callable[[], object]] = {
        "stat_ns": lambda: os.stat(path),
        "reference_ns": reference.get_data,
        "default_ns": default.get_data,
    }
    interval = None
    if "check_interval" in inspect.signature(file_watcher).parameters:
        interval = file_watcher(path, read_all, timeout=5, check_interval=args.interval)
        candidates["interval_ns"] = interval.get_data
    costs = ns_per_call(candidates, args.calls)
    figures: dict[str, float | None] = dict(costs)
    if interval is not None:
        figures["interval_speedup"] = costs["reference_ns"] / costs["interval_ns"]

    seen, missed = [], 0
    for i in range(1, _CHANGES + 1):
        time.sleep(_MTIME_TICK)
        took = visible_after(path, default.get_data, payload(i, args.payload_bytes), 0.0, 1.0)
        if took is None:
            missed += 1
        else:
            seen.append(took[1])
    figures["default_visible_p50_us"] = sorted(seen)[len(seen) // 2] * 1e6 if seen else None
    figures["default_visible_max_us"] = max(seen) * 1e6 if seen else None
    figures["default_missed"] = missed

    if interval is not None:
        late, late_missed = [], 0
        # Each change lands at a known point of the interval because the previous one was just seen (a fresh
        # check); change -1 only aligns the first. Point 0, right after a check, is the worst case.
        for i in range(-1, _INTERVAL_CHANGES):
            time.sleep(max(i, 0) / _INTERVAL_CHANGES * args.interval)
            value = payload(1000 + i, args.payload_bytes)
            took = visible_after(path, interval.get_data, value, 0.0005, args.interval * 3 + 1)
            if took is None:
                late_missed += 1
            elif i >= 0:
                late.append(took[0])
        figures["interval_visible_ms"] = max(late) * 1000 if late else None
        figures["interval_missed"] = late_missed
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
