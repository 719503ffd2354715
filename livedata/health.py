"""The probes: ``--check`` (readiness: is this host's copy present and fresh?) and ``--alive`` (liveness).

``--check`` is a readiness probe for Kubernetes (exec probe), Nagios or a cron job.  It looks only at
the files, never at ZooKeeper, so it answers even while ZooKeeper or the
daemon is down, and it answers the question that matters to applications:
the watcher touches every dest that is known to match ZooKeeper once per
heartbeat, and withholds that touch while disconnected or after a failed
write, so a dest older than two heartbeat intervals means "this copy is no
longer vouched for".  Mode and ownership are checked too, because an
application that cannot read its file is as broken as one without it.

A node that does not exist in ZooKeeper has no dest on purpose.  With
``watcher.state_dir`` set, the daemon lists such nodes in ``absent.json``
(:mod:`livedata.probe_state`) and the probe accepts their missing file while
that list is fresh; without it the probe cannot know and reports the file
missing.

``--alive`` is the liveness probe: it passes while the daemon's event loop
touches ``alive`` in the state dir, whatever ZooKeeper does.  Readiness
fails during a ZooKeeper outage (no copy is vouched for) and must not cause
restarts, which cannot help; liveness fails only when a restart can.
"""
from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterable, Mapping

from livedata.files import FileSpec

STALE_HEARTBEATS = 2
ALIVE_FILE = "alive"
ABSENT_FILE = "absent.json"
ALIVE_MAX_AGE = 30.0  # seconds; the daemon touches the file every 5


def absent_nodes(state_dir: str | None, max_age: float, now: float) -> dict[str, str]:
    """Nodes (name -> dest) the daemon last saw absent in ZooKeeper, if it said so within ``max_age``."""
    if state_dir is None:
        return {}
    path = os.path.join(state_dir, ABSENT_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            age = now - os.fstat(f.fileno()).st_mtime
            content = json.load(f)
    except (OSError, ValueError):
        return {}
    absent = content.get("absent") if isinstance(content, dict) else None
    if age > max_age or not isinstance(absent, dict):
        return {}
    return {str(name): str(dest) for name, dest in absent.items()}


def alive_problem(state_dir: str, now: float | None = None, max_age: float = ALIVE_MAX_AGE) -> str | None:
    """Why the daemon's loop is not known to be alive; None when it touched its liveness file recently."""
    now = time.time() if now is None else now
    path = os.path.join(state_dir, ALIVE_FILE)
    try:
        age = now - os.stat(path).st_mtime
    except FileNotFoundError:
        return f"{path}: missing: the watcher is not running (or watcher.state_dir differs)"
    except OSError as e:
        return f"{path}: cannot inspect: {e.strerror or e}"
    if age > max_age:
        return f"{path}: not touched for {age:.0f}s (more than {max_age:g}s): the watcher's loop is stuck or gone"
    return None


def problems(
    files: Iterable[tuple[str, FileSpec]],
    heartbeat_interval: float,
    now: float | None = None,
    absent: Mapping[str, str] | None = None,
    kind: str = "nodes",
    directory: bool = False,
) -> list[str]:
    """One line per unhealthy dest (``PATH: what is wrong (nodes.NAME)``); empty when all is well.

    ``absent`` (name -> dest) lists nodes known not to exist in ZooKeeper: a
    missing file is then exactly right.
    """
    max_age = STALE_HEARTBEATS * heartbeat_interval
    now = time.time() if now is None else now
    absent = absent or {}
    lines = []
    check = tree_problems if directory else file_problems
    for name, spec in files:
        found = check(spec, max_age, now)
        if found == ["missing"] and absent.get(name) == spec.path:
            continue
        if found:
            lines.append(f"{spec.path}: {'; '.join(found)} ({kind}.{name})")
    return lines


def file_problems(spec: FileSpec, max_age: float, now: float) -> list[str]:
    status = _status(spec.path)
    if isinstance(status, list):
        return status
    if not stat.S_ISREG(status.st_mode):
        return ["not a regular file"]
    found = []
    mode = stat.S_IMODE(status.st_mode)
    if mode != spec.mode:
        found.append(f"mode {mode:04o}, expected {spec.mode:04o}")
    return found + _ownership_and_age(status, spec, max_age, now)


def tree_problems(spec: FileSpec, max_age: float, now: float) -> list[str]:
    """A ``directory`` tree: a directory whose ``..data`` names a snapshot, touched by the heartbeat."""
    status = _status(spec.path)
    if isinstance(status, list):
        return status
    if not stat.S_ISDIR(status.st_mode):
        return ["not a directory"]
    found = []
    if not os.path.isdir(os.path.join(spec.path, "..data")):
        found.append("no snapshot (..data does not name one)")
    return found + _ownership_and_age(status, spec, max_age, now)


def _status(path: str) -> os.stat_result | list[str]:
    """The dest's own status (a symlink is not followed), or the one problem that stops any other check."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return ["missing"]
    except OSError as e:
        return [f"cannot inspect: {e.strerror or e}"]


def _ownership_and_age(status: os.stat_result, spec: FileSpec, max_age: float, now: float) -> list[str]:
    found = []
    if spec.owner is not None and status.st_uid != spec.owner:
        found.append(f"owner uid {status.st_uid}, expected {spec.owner}")
    if spec.group is not None and status.st_gid != spec.group:
        found.append(f"group gid {status.st_gid}, expected {spec.group}")
    age = now - status.st_mtime
    if age > max_age:
        found.append(f"stale: modified {age:.0f}s ago, more than {STALE_HEARTBEATS} heartbeats ({max_age:g}s)")
    return found
