"""The worker processes of ``tools/bench fleet``: start them, ask them all the same question, close them.

Each worker (:mod:`tools.benchmark.fleet_worker`) holds a share of the simulated hosts.  Questions go out as one
JSON line to every worker before any answer is read, so the workers wait in parallel; every answer is read
against a deadline, so a stuck or dead worker ends the run with its log instead of hanging it.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from tools.benchmark.targets import REPO, BenchError

_GRACE = 5.0  # seconds past a command's own timeout before a worker counts as stuck
_STOP_TIMEOUT = 30.0  # closing hundreds of sessions takes a few seconds on a loaded machine


def shares(total: int, workers: int) -> list[int]:
    """``total`` hosts split as evenly as possible over at most ``workers`` processes (none empty)."""
    count = max(1, min(workers, total))
    return [total // count + (1 if k < total % count else 0) for k in range(count)]


class _Process:
    """One worker: its pipes, its log, and the partial line read from it so far."""

    def __init__(self, index: int, settings: dict[str, Any], log_path: str) -> None:
        self.index = index
        self.log_path = log_path
        self.sessions: int = settings["sessions"]
        self.dest_dir: str = settings["dest_dir"]
        self._buffer = b""
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tools.benchmark.fleet_worker", json.dumps(settings)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=REPO,
            )  # fmt: skip

    @property
    def stdin(self) -> IO[bytes]:
        assert self.process.stdin is not None
        return self.process.stdin

    def send(self, command: dict[str, Any]) -> None:
        try:
            self.stdin.write(json.dumps(command).encode() + b"\n")
            self.stdin.flush()
        except BrokenPipeError:
            raise BenchError(self._died("it exited")) from None

    def receive(self, deadline: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(self._died("it did not answer in time"))
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise BenchError(self._died("it exited"))
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise BenchError(f"fleet worker {self.index}: {answer['error']}")
        return answer

    def _died(self, what: str) -> str:
        with open(self.log_path, errors="replace") as f:
            tail = "".join(f.readlines()[-15:])
        return f"fleet worker {self.index} ({self.sessions} sessions) failed: {what}; its log {self.log_path}:\n{tail}"

    def end(self) -> None:
        """Close stdin (the worker's signal to close its sessions and exit), then wait; kill it if it lingers."""
        if self.process.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                self.stdin.close()
            try:
                self.process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGKILL)
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


class WorkerPool:
    """The worker processes of one fleet size; a context manager that always ends every one of them."""

    def __init__(self, total: int, workers: int, settings: dict[str, Any], dest_root: str, log_dir: str) -> None:
        self.processes: list[_Process] = []
        try:
            for index, sessions in enumerate(shares(total, workers)):
                own = {**settings, "sessions": sessions, "dest_dir": os.path.join(dest_root, f"w{index}")}
                self.processes.append(_Process(index, own, os.path.join(log_dir, f"fleet-worker{index}.log")))
        except BaseException:
            self.close()
            raise

    def dests(self) -> list[str]:
        """Every simulated host's file, in the order of the arrival lists the workers return."""
        return [os.path.join(p.dest_dir, f"h{i:05d}") for p in self.processes for i in range(p.sessions)]

    def ask(self, command: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        """Send ``command`` (with ``timeout``) to every worker, then collect each one's answer."""
        for process in self.processes:
            process.send({**command, "timeout": timeout})
        deadline = time.monotonic() + timeout + _GRACE
        return [process.receive(deadline) for process in self.processes]

    def close(self) -> None:
        for process in self.processes:
            if process.process.poll() is None:
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.close()  # all at once: the workers close their sessions in parallel
        for process in self.processes:
            process.end()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def merged(answers: Sequence[dict[str, Any]], key: str) -> float:
    """The sum of one figure over every worker's answer."""
    return float(sum(answer[key] for answer in answers))
