"""Unified diffs of texts of any size, fast enough to show before a write.

difflib matches every line against every other, which takes many seconds on megabytes of lines (a 5 MiB JSON
document with one line changed took 15 s): long enough for a writer to lose its ZooKeeper session.  Here only
the region between the texts' common head and tail is split into lines and given to difflib, and its hunk
headers are shifted back by the lines left out, so the output is what difflib prints for the whole texts
whenever difflib's own matching is unambiguous.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterator

__all__ = ["split_lines", "unified_diff"]


def split_lines(text: str) -> list[str]:
    """Lines split on ``\\n`` only, ends kept: ``str.splitlines`` would also split on form feeds and U+2028."""
    return re.findall(r"[^\n]*\n|[^\n]+", text)


def unified_diff(old_text: str, new_text: str, old_label: str, new_label: str) -> Iterator[str]:
    """The lines of a unified diff (each ending with ``\\n`` unless the text's last line has none)."""
    start, old_end, new_end = _changed_region(old_text, new_text)
    return _trimmed_diff(
        split_lines(old_text[start:old_end]), split_lines(new_text[start:new_end]), old_label, new_label,
        offset=old_text.count("\n", 0, start),
    )


_DIFF_CONTEXT = 3  # difflib's default
_HUNK = re.compile(r"@@ -(\d+)(,\d+)? \+(\d+)(,\d+)? @@")


def _common_prefix(a: str, b: str) -> int:
    """Length of the common prefix, compared a block at a time at C speed (a character loop is far slower)."""
    limit, block, lo = min(len(a), len(b)), 1 << 16, 0
    while lo < limit:
        hi = min(limit, lo + block)
        if a[lo:hi] != b[lo:hi]:
            while hi - lo > 1:  # a[lo:hi] differs somewhere: halve it
                mid = (lo + hi) // 2
                if a[lo:mid] == b[lo:mid]:
                    lo = mid
                else:
                    hi = mid
            return lo
        lo = hi
    return limit


def _changed_region(old: str, new: str) -> tuple[int, int, int]:
    """``(start, old_end, new_end)``: whole lines around what differs, with more than a diff's context each side.

    Before and after the region both texts are identical, so only the region needs splitting into lines.
    """
    head = _common_prefix(old, new)
    tail = min(_common_prefix(old[::-1], new[::-1]), min(len(old), len(new)) - head)
    start = old.rfind("\n", 0, head) + 1
    for _ in range(_DIFF_CONTEXT):
        if start == 0:
            break
        start = old.rfind("\n", 0, start - 1) + 1
    end = len(old) - tail
    for _ in range(_DIFF_CONTEXT + 1):
        found = old.find("\n", end)
        end = len(old) if found < 0 else found + 1
    return start, end, end - len(old) + len(new)


def _trimmed_diff(old: list[str], new: list[str], old_label: str, new_label: str, offset: int = 0) -> Iterator[str]:
    """difflib's unified diff, with the common head and tail left out of the matching.

    difflib takes many seconds on megabytes of lines (a large JSON document with one line changed took 15 s),
    and a writer that long without a ZooKeeper heartbeat loses its session. The lines kept on each side of the
    change are the context difflib would show anyway, and its hunk headers are shifted back by what was cut.
    """
    head = 0
    while head < min(len(old), len(new)) and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < min(len(old), len(new)) - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    start = max(0, head - _DIFF_CONTEXT)
    keep_tail = max(0, tail - _DIFF_CONTEXT)
    shift = start + offset
    lines = difflib.unified_diff(old[start : len(old) - keep_tail], new[start : len(new) - keep_tail], old_label,
                                 new_label, n=_DIFF_CONTEXT)  # fmt: skip
    for line in lines:
        match = _HUNK.fullmatch(line.rstrip("\n")) if line.startswith("@@") else None
        if match is None or not shift:
            yield line
            continue
        old_start, old_len, new_start, new_len = match.groups()
        yield f"@@ -{int(old_start) + shift}{old_len or ''} +{int(new_start) + shift}{new_len or ''} @@\n"
