"""The daemon's side of the probes: a liveness file and the list of nodes known to be absent.

Both live in ``watcher.state_dir`` (e.g. ``/run/livedata``, systemd's
``RuntimeDirectory=``) and are read by ``livedata-watcher --alive`` and
``--check`` (:mod:`livedata.health`), which never talk to the daemon:

* ``alive`` holds the daemon's pid; the event loop touches it every
  :data:`ALIVE_INTERVAL` seconds, whatever ZooKeeper does.  A stale mtime
  means the loop is stuck or the process is gone: what a liveness probe (and
  a restart) is for.  A ZooKeeper outage never makes it stale, because
  restarting cannot cure an outage.
* ``absent.json`` maps the name of every node (and tree) whose source does
  not exist in ZooKeeper to its dest, whose file is then absent on purpose
  (a tree's is an empty snapshot).  It is rewritten (atomically: temporary
  file and rename) when that set changes and on every heartbeat, so its
  mtime vouches for it the way a heartbeat vouches for a dest: the readiness
  probe trusts it only while it is fresh, and fails on it when
  ``watcher.absent_is_error`` is set.

:class:`AbsentSources` names each absent source in the log, once when it is
found absent, not on every resync: a typo in a source path looks exactly like
a node nobody created yet, and only its name tells the operator which.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import gevent

from livedata.health import ABSENT_FILE, ALIVE_FILE
from livedata.sync import ABSENT, MirroredNode, MirroredTree, MirrorObserver

log = logging.getLogger("livedata.probe_state")

ALIVE_INTERVAL = 5.0


def source_absent(node: MirroredNode) -> bool:
    """The node's source does not exist in ZooKeeper (a tree's is then mirrored as an empty tree)."""
    return node.wanted is ABSENT or (isinstance(node, MirroredTree) and node.version == -1)


def describe(node: MirroredNode) -> str:
    """``nodes.NAME`` or ``trees.NAME``: the config keys an operator looks up."""
    return f"{'trees' if isinstance(node, MirroredTree) else 'nodes'}.{node.name}"


class AbsentSources(MirrorObserver):
    """Logs each source found absent from ZooKeeper once (ERROR if ``as_error``, else WARNING), and its return.

    A failed read says nothing about existence, so it neither repeats nor
    clears the report.
    """

    def __init__(self, as_error: bool = False) -> None:
        self.as_error = as_error  # watcher.absent_is_error: a reload may change it
        # describe(node) -> the source logged absent: a reload that points it at another absent source
        # (one typo for another) is named again.
        self.reported: dict[str, str] = {}

    def written(self, node: Any, outcome: Any, repaired: bool) -> None:
        name = describe(node)
        if source_absent(node):
            if self.reported.get(name) != node.path:
                self.reported[name] = node.path
                what = "it is mirrored as an empty tree" if isinstance(node, MirroredTree) else "no file"
                log.log(logging.ERROR if self.as_error else logging.WARNING,
                        "%s: source %s does not exist in ZooKeeper; %s at %s until it is created",
                        name, node.path, what, node.config.file.path)  # fmt: skip
        elif self.reported.pop(name, None) is not None:
            log.info("%s: source %s exists now", name, node.path)

    def forget(self, names: set[str]) -> None:
        """Keep only these (``describe``) names: a node removed by a reload is reported afresh if it comes back."""
        self.reported = {name: source for name, source in self.reported.items() if name in names}


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
        if source_absent(node):
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
