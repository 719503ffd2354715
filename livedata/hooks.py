"""``nodes.<name>.on_change``: a command run after a node's file got new content.

Typical use: ``systemctl reload myapp`` or a script that validates and
installs the file.  The rules, and why:

* Only content changes run it (a new or removed file, including a repair of a
  locally damaged file), never heartbeats, confirmations of equal content or
  mode/owner fixes: a hook usually reloads an application, and reloading for
  nothing at every resync would be worse than no hook.
* The command runs as ``/bin/sh -c COMMAND`` in a session of its own, with
  ``LIVEDATA_NODE``, ``LIVEDATA_DEST``, ``LIVEDATA_SOURCE``, ``LIVEDATA_VERSION``
  and ``LIVEDATA_EVENT`` (``written`` or ``removed``) in its environment.  (In
  the INI file write ``$$LIVEDATA_DEST``: a single ``$`` is expanded when the
  config is read.)
* It is a gevent subprocess in a greenlet of its own, so a slow hook never
  delays other nodes' syncing; at most :data:`MAX_CONCURRENT` run at once so a
  cold start of thousands of hooked nodes does not fork thousands of shells.
* Changes coalesce: while a node's hook runs, further changes of that node
  cause exactly one more run after it, which sees the latest file.
* ``watcher.hook_timeout`` bounds a run; then the whole process group is
  killed.  Output is logged line by line; failures are logged and counted.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from typing import IO, Any

import gevent
import gevent.lock

from livedata.files import Outcome
from livedata.sync import ABSENT, MirroredNode, MirrorObserver

log = logging.getLogger("livedata.hooks")

DEFAULT_TIMEOUT = 30.0
MAX_CONCURRENT = 4
MAX_OUTPUT_LINES = 200  # per run; the rest is read and dropped, so a chatty hook cannot flood the journal
MAX_LINE = 4096
OUTPUT_GRACE = 1.0  # seconds to finish logging output after the hook exited (a background child may hold it)

SHELL = "/bin/sh"
RESULTS = ("ok", "failed", "timeout")

_QUEUED = "queued"
_RUNNING = "running"
_AGAIN = "again"  # running, and the node changed since it started: run once more afterwards


class HookRunner(MirrorObserver):
    """Runs each node's ``on_change`` command after content writes; call :meth:`configure` on reload."""

    def __init__(self, commands: Mapping[str, str], timeout: float = DEFAULT_TIMEOUT) -> None:
        self.commands = dict(commands)
        self.timeout = timeout
        self.results = dict.fromkeys(RESULTS, 0)
        self._state: dict[str, str] = {}
        self._nodes: dict[str, MirroredNode] = {}
        self._slots = gevent.lock.BoundedSemaphore(MAX_CONCURRENT)
        self._greenlets: set[gevent.Greenlet] = set()

    def configure(self, commands: Mapping[str, str], timeout: float) -> None:
        """Adopt a reloaded config; a queued run of a node whose hook was removed is skipped."""
        self.commands = dict(commands)
        self.timeout = timeout

    def counts(self) -> dict[str, int]:
        return dict(self.results)

    def pending(self) -> int:
        return len(self._state)

    def stop(self) -> None:
        """Stop waiting for hooks; a running command finishes on its own (it is in its own session)."""
        gevent.killall(list(self._greenlets), block=False)

    # --- MirrorObserver (in the hub: only bookkeeping and a spawn) ----------------------------------

    def written(self, node: MirroredNode, outcome: Outcome, repaired: bool) -> None:
        if outcome is Outcome.WRITTEN and node.name in self.commands:
            self._changed(node)

    def _changed(self, node: MirroredNode) -> None:
        self._nodes[node.name] = node
        state = self._state.get(node.name)
        if state is None:
            self._state[node.name] = _QUEUED
            greenlet = gevent.spawn(self._run_until_settled, node.name)
            self._greenlets.add(greenlet)
            greenlet.link(self._greenlets.discard)
        elif state == _RUNNING:
            self._state[node.name] = _AGAIN
        # queued or already due again: that coming run will see the latest file

    def _run_until_settled(self, name: str) -> None:
        try:
            while True:
                with self._slots:
                    self._state[name] = _RUNNING
                    self._run(name)
                if self._state.get(name) != _AGAIN:
                    return
                self._state[name] = _QUEUED
        finally:
            self._state.pop(name, None)

    # --- one run ----------------------------------------------------------------------------------

    def _run(self, name: str) -> None:
        command = self.commands.get(name)
        node = self._nodes.get(name)
        if command is None or node is None:
            return
        log.info("%s: running on_change hook", name)
        from gevent import subprocess  # here: most configurations run no hook, and the module costs memory

        try:
            process = subprocess.Popen(
                [SHELL, "-c", command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=hook_environment(node),
                start_new_session=True,  # its own process group: a timeout kills the shell and its children
            )
        except OSError as e:
            self._finished(name, "failed", f"could not start: {e.strerror or e}")
            return
        reader = gevent.spawn(_log_output, name, process.stdout)
        try:
            status = process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            process.wait()
            self._finished(name, "timeout", f"killed after the {self.timeout:g}s hook_timeout")
            status = None
        finally:
            reader.join(timeout=OUTPUT_GRACE)
            reader.kill(block=False)
            with contextlib.suppress(OSError):
                process.stdout.close()
        if status is None:
            return
        if status == 0:
            self._finished(name, "ok", "finished")
        else:
            how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
            self._finished(name, "failed", how)

    def _finished(self, name: str, result: str, detail: str) -> None:
        self.results[result] += 1
        if result == "ok":
            log.info("%s: on_change hook %s", name, detail)
        else:
            log.error("%s: on_change hook failed: %s", name, detail)


def hook_environment(node: MirroredNode) -> dict[str, str]:
    """The daemon's environment plus what the hook needs to know about the change."""
    removed = node.wanted is ABSENT
    return {
        **os.environ,
        "LIVEDATA_NODE": node.name,
        "LIVEDATA_DEST": node.config.file.path,
        "LIVEDATA_SOURCE": node.config.source,
        "LIVEDATA_VERSION": str(-1 if removed else node.version),
        "LIVEDATA_EVENT": "removed" if removed else "written",
    }


def _log_output(name: str, stream: IO[bytes] | Any) -> None:
    lines = 0
    while True:
        line = stream.readline(MAX_LINE)
        if not line:
            return
        lines += 1
        if lines <= MAX_OUTPUT_LINES:
            log.info("%s: on_change: %s", name, line.decode("utf-8", "replace").rstrip("\r\n"))
        elif lines == MAX_OUTPUT_LINES + 1:
            log.warning("%s: on_change: more output dropped (over %d lines)", name, MAX_OUTPUT_LINES)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
