"""Diffs of large texts: only the changed region is matched, yet the output is difflib's for the whole texts."""
from __future__ import annotations

import difflib

import pytest

from livedata.textdiff import split_lines
from livedata.writer import _terminated, render_diff


def _lines(count: int, changes: dict[int, str], end: str = "\n") -> bytes:
    text = "".join(changes.get(i, f"line {i}") + "\n" for i in range(count))
    return (text[:-1] + end).encode()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (_lines(100_000, {}), _lines(100_000, {50_000: "changed"})),
        (_lines(100_000, {}), _lines(100_000, {0: "first"})),
        (_lines(100_000, {}), _lines(100_000, {99_999: "last"}, end="")),
        (_lines(100_000, {}), _lines(100_001, {})),
        (_lines(50, {}), _lines(50, {2: "x", 40: "y"})),
        (b"", _lines(10, {})),
    ],
    ids=["middle", "first line", "last line without newline", "one line added", "two hunks", "from empty"],
)
def test_diff_of_large_texts_is_difflibs(old, new):
    """The diff only matches the changed region, but must print exactly what difflib prints for the whole."""
    whole = difflib.unified_diff(split_lines(old.decode()), split_lines(new.decode()), "a", "b")
    assert render_diff(old, new, "a", "b") == "".join(_terminated(line) for line in whole)
