"""``livedata-watcher --check CONFIG``: is this host's copy of the data present and fresh?

A probe for Kubernetes (exec probe), Nagios or a cron job.  It looks only at
the files, never at ZooKeeper, so it answers even while ZooKeeper or the
daemon is down, and it answers the question that matters to applications:
the watcher touches every dest that is known to match ZooKeeper once per
heartbeat, and withholds that touch while disconnected or after a failed
write, so a dest older than two heartbeat intervals means "this copy is no
longer vouched for".  Mode and ownership are checked too, because an
application that cannot read its file is as broken as one without it.

A node that does not exist in ZooKeeper has no dest on purpose; the probe
cannot know that without asking ZooKeeper, so it reports the file missing.
"""
from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterable

from livedata.files import FileSpec

STALE_HEARTBEATS = 2


def problems(files: Iterable[tuple[str, FileSpec]], heartbeat_interval: float, now: float | None = None) -> list[str]:
    """One line per unhealthy dest (``PATH: what is wrong (nodes.NAME)``); empty when all is well."""
    max_age = STALE_HEARTBEATS * heartbeat_interval
    now = time.time() if now is None else now
    lines = []
    for name, spec in files:
        found = file_problems(spec, max_age, now)
        if found:
            lines.append(f"{spec.path}: {'; '.join(found)} (nodes.{name})")
    return lines


def file_problems(spec: FileSpec, max_age: float, now: float) -> list[str]:
    try:
        status = os.lstat(spec.path)
    except FileNotFoundError:
        return ["missing"]
    except OSError as e:
        return [f"cannot inspect: {e.strerror or e}"]
    if not stat.S_ISREG(status.st_mode):
        return ["not a regular file"]
    found = []
    mode = stat.S_IMODE(status.st_mode)
    if mode != spec.mode:
        found.append(f"mode {mode:04o}, expected {spec.mode:04o}")
    if spec.owner is not None and status.st_uid != spec.owner:
        found.append(f"owner uid {status.st_uid}, expected {spec.owner}")
    if spec.group is not None and status.st_gid != spec.group:
        found.append(f"group gid {status.st_gid}, expected {spec.group}")
    age = now - status.st_mtime
    if age > max_age:
        found.append(f"stale: modified {age:.0f}s ago, more than {STALE_HEARTBEATS} heartbeats ({max_age:g}s)")
    return found
