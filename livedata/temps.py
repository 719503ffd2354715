"""Temp files and their names: unique per writer, recognisable, and cleaned up once their writer is gone.

A temp is named ``.<basename>.livedata-tmp.<pid>.<tag><random>``: in the dest's own directory (a rename is
atomic only within one filesystem), hidden, unique per writer, and telling who made it: the process, and the
boot and pid namespace its pid means something in.  :func:`cleanup_stale_temp_files` removes those no
running writer will ever rename; the tree writer (:mod:`livedata.snapshots`) names and cleans its snapshot
directories by the same rules.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterable

from livedata.fileops import _fsync_directory

log = logging.getLogger("livedata.files")

TEMP_MARKER = ".livedata-tmp."
_NAME_MAX = 255
_PID_DIGITS = 10
_RANDOM_BYTES = 8  # the hex part of a unique suffix: a namespace tag, then random digits
_TAG_DIGITS = 8
_RANDOM_BITS = 4 * (2 * _RANDOM_BYTES - _TAG_DIGITS)
FOREIGN_GRACE = 600.0  # seconds: a temp of another boot or pid namespace older than this is left over
_BASE_BUDGET = _NAME_MAX - (1 + len(TEMP_MARKER) + _PID_DIGITS + 1 + 2 * _RANDOM_BYTES)
_TEMP_NAME = re.compile(r"\.(?P<base>.*)\.livedata-tmp\.(?P<pid>[1-9][0-9]{0,9})\.[0-9a-f]{16}", re.DOTALL)


# ------------------------------------------------------------------------------------------------ names


def unique_suffix() -> str:
    """``<pid>.<namespace tag><random hex>``: what makes a temp or snapshot name unique, and tells cleanup who
    made it: the process, and the boot and pid namespace its pid means something in (see ``_is_stale``)."""
    return f"{os.getpid()}.{_namespace_tag()}{random.getrandbits(_RANDOM_BITS):0{_RANDOM_BITS // 4}x}"


def temp_prefix(path: str) -> str:
    """Every temp file for dest ``path`` starts with this (its pid and a random part follow)."""
    directory, base = os.path.split(path)
    return os.path.join(directory, "." + _temp_base(base) + TEMP_MARKER)


def is_temp_name(name: str) -> bool:
    """True if ``name`` (a basename or a path) looks like one of our temp files, e.g. for watchers to skip."""
    return _parse_temp_name(os.path.basename(name)) is not None


def temp_pid(name: str) -> int | None:
    """The pid of the process that created temp file ``name``, or None if it is not one of ours."""
    parsed = _parse_temp_name(os.path.basename(name))
    return None if parsed is None else parsed[1]


def _parse_temp_name(name: str) -> tuple[str, int] | None:
    match = _TEMP_NAME.fullmatch(name)
    return None if match is None else (match.group("base"), int(match.group("pid")))


def _temp_base(base: str) -> str:
    """The dest's basename as it appears in temp names: cut (in bytes) so a temp name fits NAME_MAX."""
    raw = os.fsencode(base)
    return base if len(raw) <= _BASE_BUDGET else os.fsdecode(raw[:_BASE_BUDGET])


@functools.cache
def _namespace_tag() -> str:
    """8 hex digits naming this boot and pid namespace (the same for every process that shares both)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            boot = f.read().strip()
    except OSError:
        boot = b"unknown boot"
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return hashlib.sha256(boot + b"/" + str(namespace).encode()).hexdigest()[:_TAG_DIGITS]


def _tag_of(path: str) -> str:
    """The namespace tag in a temp or snapshot name (after ``<pid>.``); names without one never match ours."""
    return os.path.basename(path).rsplit(".", 1)[-1][:_TAG_DIGITS]


# ------------------------------------------------------------------------------------ in flight, cleanup

_in_flight: set[str] = set()
_in_flight_lock = threading.Lock()


def _note_in_flight(temp: str) -> None:
    with _in_flight_lock:
        _in_flight.add(temp)


def _forget_in_flight(temp: str) -> None:
    with _in_flight_lock:
        _in_flight.discard(temp)


def note_in_flight(path: str) -> None:
    """Register a temp (or snapshot directory) this process is building, so no cleanup here removes it."""
    _note_in_flight(path)


def forget_in_flight(path: str) -> None:
    _forget_in_flight(path)


def cleanup_stale_temp_files(paths: Iterable[str]) -> list[str]:
    """Remove the temps in these dests' directories that no running writer will ever rename; return them.

    Every livedata temp of the directory is looked at, not only those of the dests given: a node removed
    from the configuration while a killed run was writing it would otherwise leave its temp for good.

    The rule: a temp is stale when the pid in its name is not a running process, or is our own pid and no
    write of this process has it in flight. The second case is a previous incarnation that had our pid,
    which is routine in containers where the daemon is pid 1 on every start. A temp whose pid is another
    live process is left alone: two instances overlap during a deploy and each must be able to finish its
    own rename. (If that pid now belongs to an unrelated process, the temp stays until that process exits;
    a small leak is better than destroying a live writer's file.) Failures are logged, not raised: cleanup
    is housekeeping and must not stop the daemon from starting.
    """
    removed: list[str] = []
    for directory in dict.fromkeys(os.path.dirname(path) for path in paths):
        removed.extend(_remove_stale_temps(directory))
    return removed


def _remove_stale_temps(directory: str) -> list[str]:
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        log.warning("cannot look for stale temp files in %r: %s", directory, exc.strerror or exc)
        return []
    removed: list[str] = []
    for name in names:
        parsed = _parse_temp_name(name)
        path = os.path.join(directory, name)
        if parsed is None or not _is_stale(path, parsed[1]):
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove stale temp file %r: %s", path, exc.strerror or exc)
            continue
        removed.append(path)
    if removed:
        try:
            _fsync_directory(directory)
        except OSError as exc:
            log.warning("cannot fsync %r after removing stale temp files: %s", directory, exc.strerror)
    return removed


def _is_stale(path: str, pid: int) -> bool:
    """May a temp (or snapshot) made by ``pid`` be removed now?

    A pid only means something in the boot and pid namespace it was taken in.  Two containers sharing a
    volume are both pid 1, and a pid from before a reboot may be alive again.  So the name carries a tag of
    its maker's boot and namespace: with our tag, the pid is checked (our own pid: unless still in flight
    here; another: unless alive); with another tag nothing can be checked, and only what is older than
    FOREIGN_GRACE (no write takes that long) is removed.
    """
    if _tag_of(path) != _namespace_tag():
        try:
            return time.time() - os.lstat(path).st_mtime > FOREIGN_GRACE
        except OSError:
            return False
    if pid == os.getpid():
        with _in_flight_lock:
            return path not in _in_flight
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return True
    except PermissionError:
        return False  # alive, run by another user
    return False


def writer_is_gone(path: str, pid: int) -> bool:
    """The ``cleanup_stale_temp_files`` rule for ``path`` made by process ``pid``: may it be removed now?"""
    return _is_stale(path, pid)
