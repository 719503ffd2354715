"""Which filesystems keep a replace-by-rename crash-safe on their own, so a change needs no fsync.

Why it matters: the fsync before each rename is the largest single cost of propagating one change (a
journal commit, 0.2-0.4 ms of disk wait here), and on the most common Linux filesystem it buys nothing.
ext4 detects "write a new file, rename it over the old one" and, at the next journal commit, forces the new
file's data to disk before the rename is committed: after a power loss the name holds the complete old
file or the complete new one, never an empty or partial one (the kernel's ext4 documentation, mount option
``auto_da_alloc``). That holds in the default ``data=ordered`` mode and in ``data=journal``; it does not
hold with ``data=writeback`` or ``noauto_da_alloc``, nor on other filesystems (XFS, btrfs, overlayfs as
seen from the mount, network filesystems), where every change keeps its fsync.

Only renames that *replace* a name are covered: a rename that creates a name is flushed as before.

The answer comes from ``/proc/self/mountinfo`` (the superblock's options, which bind mounts share) and is
kept per device for ``RECHECK_AFTER`` seconds: reading the table costs tens of microseconds, too much for
every change, while a device can be unmounted and mounted again with other options (loop devices are).
"""
from __future__ import annotations

import os
import time
from typing import Iterable

MOUNTINFO = "/proc/self/mountinfo"
RECHECK_AFTER = 10.0  # seconds an answer is kept

_answers: dict[int, tuple[bool, float]] = {}  # device -> (ordered, monotonic time it expires)

# ext4 superblock options that withdraw the guarantee.
_UNORDERED_OPTIONS = frozenset({"data=writeback", "noauto_da_alloc"})


def replacement_is_ordered(fstype: str, super_options: Iterable[str]) -> bool:
    """True if this filesystem, mounted with these options, commits a replacing rename only after its data."""
    return fstype == "ext4" and not _UNORDERED_OPTIONS.intersection(super_options)


def orders_replacements(device: int) -> bool:
    """:func:`replacement_is_ordered` for the filesystem ``device`` (an ``st_dev``); False when unknown."""
    now = time.monotonic()
    known = _answers.get(device)
    if known is not None and now < known[1]:
        return known[0]
    mount = _mount_of(device)
    ordered = mount is not None and replacement_is_ordered(*mount)
    _answers[device] = (ordered, now + RECHECK_AFTER)
    return ordered


def forget() -> None:
    """Look the mounts up again at the next question (after mounting something, say)."""
    _answers.clear()


def _mount_of(device: int, mountinfo: str = MOUNTINFO) -> tuple[str, list[str]] | None:
    """(filesystem type, superblock options) of the mount for ``device``, or None if it cannot be found."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                parsed = parse_mountinfo_line(line)
                if parsed is not None and parsed[0] == wanted:
                    return parsed[1], parsed[2]
    except OSError:
        return None
    return None


def parse_mountinfo_line(line: str) -> tuple[str, str, list[str]] | None:
    """(``major:minor``, filesystem type, superblock options) of one mountinfo line; None if malformed.

    The format (proc(5)): ``id parent major:minor root mountpoint options [optional fields...] - fstype
    source super_options``; the optional fields vary in number, hence the search for the separator.
    """
    fields = line.split()
    try:
        separator = fields.index("-", 6)
        return fields[2], fields[separator + 1], fields[separator + 3].split(",")
    except (ValueError, IndexError):
        return None
