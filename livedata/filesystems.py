"""Which filesystems keep a replace-by-rename crash-safe on their own, so a change needs no fsync.

Why it matters: the fsync before each rename is the largest single cost of propagating one change (a
journal commit, 0.2-0.4 ms of disk wait), and on the most common Linux setup it buys nothing. A journaled
ext4 detects "write a new file, rename it over the old one" and, at the next journal commit, forces the new
file's data to disk before the rename is committed: after a power loss the name holds the complete old
file or the complete new one, never an empty or partial one (the kernel's ext4 documentation, mount option
``auto_da_alloc``). That holds in the ``data=ordered`` (default) and ``data=journal`` modes. It does not
hold with ``data=writeback`` or ``noauto_da_alloc``, nor on an ext4 *without a journal* (nothing is
ordered there), nor on other filesystems (XFS, btrfs, overlayfs, network filesystems): those keep their
fsync per change.

Only renames that *replace* a name are covered: a rename that creates a name is flushed as before.

The answer comes from ``/proc/fs/ext4/<device>/options``, which lists every option of a mounted ext4
including the defaults (``/proc/mounts`` omits those, and shows nothing that tells a journaled ext4 from
one without a journal). It is kept per device for ``RECHECK_AFTER`` seconds: reading it costs tens of
microseconds, too much for every change, while a device can be unmounted and mounted again with other
options (loop devices are).
"""
from __future__ import annotations

import os
import time
from typing import Iterable

EXT4_OPTIONS = "/proc/fs/ext4/{name}/options"
BLOCK_DEVICES = "/sys/dev/block/{major}:{minor}"
RECHECK_AFTER = 10.0  # seconds an answer is kept

_ORDERED_MODES = frozenset({"data=ordered", "data=journal"})
_answers: dict[int, tuple[bool, float]] = {}  # device -> (ordered, monotonic time it expires)


def replacement_is_ordered(ext4_options: Iterable[str]) -> bool:
    """True if an ext4 mounted with these options (all of them, defaults included) commits a replacing rename
    only after the new file's data: a journal in ordered or journal mode, and auto_da_alloc."""
    options = set(ext4_options)
    return bool(options & _ORDERED_MODES) and "auto_da_alloc" in options and "noauto_da_alloc" not in options


def orders_replacements(device: int) -> bool:
    """:func:`replacement_is_ordered` for the filesystem ``device`` (an ``st_dev``); False when not a known ext4."""
    now = time.monotonic()
    known = _answers.get(device)
    if known is not None and now < known[1]:
        return known[0]
    options = ext4_options(device)
    ordered = options is not None and replacement_is_ordered(options)
    _answers[device] = (ordered, now + RECHECK_AFTER)
    return ordered


def forget() -> None:
    """Look the mounts up again at the next question (after mounting something, say)."""
    _answers.clear()


def ext4_options(device: int) -> list[str] | None:
    """Every option of the ext4 mounted from ``device``; None if it is not an ext4 on a block device."""
    link = BLOCK_DEVICES.format(major=os.major(device), minor=os.minor(device))
    try:
        name = os.path.basename(os.readlink(link))  # e.g. "vda", "dm-0", "loop3"
        with open(EXT4_OPTIONS.format(name=name), encoding="ascii", errors="replace") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError:
        return None
