"""The daemon's side of the probes: a liveness file and the list of nodes known to be absent.

Both live in ``watcher.state_dir`` (e.g. ``/run/livedata``, systemd's
``RuntimeDirectory=``) and are read by ``livedata-watcher --alive`` and
``--check`` (:mod:`livedata.health`), which never talk to the daemon:

* ``alive`` holds the daemon's pid; the event loop touches it every
  :data:`ALIVE_INTERVAL` seconds, whatever ZooKeeper does.  A stale mtime
  means the loop is stuck or the process is gone: what a liveness probe (and
  a restart) is for.  A ZooKeeper outage never makes it stale, because
  restarting cannot cure an outage.
* ``absent.json`` maps the name of every node that does not exist in
  ZooKeeper to its dest, whose file is then absent on purpose.  It is
  rewritten (atomically: temporary file and rename) when that set changes and
  on every heartbeat, so its mtime vouches for it the way a heartbeat vouches
  for a dest: the readiness probe trusts it only while it is fresh.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import gevent

from livedata.health import ABSENT_FILE, ALIVE_FILE
from livedata.sync import ABSENT, MirrorObserver

log = logging.getLogger("livedata.probe_state")

ALIVE_INTERVAL = 5.0


class ProbeState(MirrorObserver):
    """Keeps ``alive`` and ``absent.json`` in ``directory`` current; attached to the mirror by the watcher."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.absent: dict[str, str] = {}  # node name -> dest
        self._flush_scheduled = False
        self._toucher: Any = None
        self._problem: str | None = None

    def start(self) -> None:
        try:
            os.makedirs(self.directory, mode=0o755, exist_ok=True)
        except OSError as e:
            self._report(f"cannot create watcher.state_dir {self.directory}: {e.strerror or e}")
        self._write(ALIVE_FILE, f"{os.getpid()}\n")
        self._flush()  # never leave the absent list of an earlier run in force
        self._toucher = gevent.spawn(self._touch_forever)

    def stop(self) -> None:
        if self._toucher is not None:
            self._toucher.kill(block=False)

    # --- MirrorObserver ---------------------------------------------------------------------------

    def written(self, node: Any, outcome: Any, repaired: bool) -> None:
        if node.wanted is ABSENT:
            changed = self.absent.get(node.name) != node.config.file.path
            self.absent[node.name] = node.config.file.path
        else:
            changed = self.absent.pop(node.name, None) is not None
        if changed:
            self._schedule_flush()

    def failed(self, node: Any, step: str, reason: str) -> None:
        if self.absent.pop(node.name, None) is not None:
            self._schedule_flush()

    def heartbeat(self, touched: int) -> None:
        self._flush()

    # --- files ------------------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        """One rewrite for all changes of one pass: start-up reports thousands of nodes in a row."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            gevent.spawn(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._write(ABSENT_FILE, json.dumps({"absent": self.absent}, sort_keys=True) + "\n")

    def _touch_forever(self) -> None:
        while True:
            gevent.sleep(ALIVE_INTERVAL)
            try:
                os.utime(os.path.join(self.directory, ALIVE_FILE))
            except FileNotFoundError:  # a cleaned /run: put it back
                self._write(ALIVE_FILE, f"{os.getpid()}\n")
            except OSError as e:
                self._report(f"cannot touch {ALIVE_FILE} in watcher.state_dir: {e.strerror or e}")

    def _write(self, name: str, text: str) -> None:
        path = os.path.join(self.directory, name)
        temp = f"{path}.tmp{os.getpid()}"
        try:
            with open(temp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(temp, path)
        except OSError as e:
            self._report(f"cannot write {path}: {e.strerror or e}")
            return
        if self._problem is not None:
            log.info("probe files in %s written again", self.directory)
            self._problem = None

    def _report(self, problem: str) -> None:
        """Logged once per distinct problem: a read-only state dir must not flood the log every 5 seconds."""
        if problem != self._problem:
            log.error("%s; the --alive and --check probes will report it", problem)
            self._problem = problem
