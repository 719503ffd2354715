"""What changed in a JSON document, by path: JSON Patch (RFC 6902) operations for a reviewer to read.

A line diff of JSON written on one line (as most generators write it) says nothing: one changed value makes
the whole document one removed and one added line, megabytes each. Operations name the place instead
(``replace /experiments/10000/owner``). Each ``replace`` and ``remove`` is preceded by a ``test`` of the value
it replaces, so the reviewer sees the old value beside the new one, and the whole list is still a patch that
applies to the old document and checks, as it goes, that it is applied to the right one.

Lists are matched element by element (difflib on each element's canonical JSON), so an element inserted into
or removed from a long list is one operation. A pairwise comparison, which is what the ``jsonpatch`` library
does, turns one insertion near the start of a 13,000-element list (a 5 MiB document) into 130,000 operations
and takes 5 to 10 seconds; this module is also standard library only, so the writer still installs in a CI
job with nothing but kazoo and gevent.
"""
from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from typing import Any

__all__ = ["operations", "pointer"]

Operation = dict[str, Any]


def pointer(path: str, key: str | int) -> str:
    """``path`` extended by one step, escaped as RFC 6901 says (``~`` as ``~0``, ``/`` as ``~1``)."""
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def operations(old: Any, new: Any, path: str = "") -> Iterator[Operation]:
    """The operations turning ``old`` into ``new`` (parsed JSON), in the order a patch applies them.

    Values are compared as JSON sees them: ``true`` is not ``1`` and ``1.0`` is not ``1`` (Python says
    they are equal), while key order and spacing are not changes at all.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        yield from _object_operations(old, new, path)
    elif isinstance(old, list) and isinstance(new, list):
        yield from _array_operations(old, new, path)
    elif not _same(old, new):
        yield {"op": "test", "path": path, "value": old}
        yield {"op": "replace", "path": path, "value": new}


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, (dict, list)) or isinstance(new, (dict, list)):
        return _canonical(old) == _canonical(new)
    return type(old) is type(new) and (old == new or (old != old and new != new))  # NaN is itself here


def _canonical(value: Any) -> str:
    """One text per JSON value (keys sorted, no spaces): what list elements are matched on."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _object_operations(old: dict[str, Any], new: dict[str, Any], path: str) -> Iterator[Operation]:
    for key, value in old.items():
        where = pointer(path, key)
        if key in new:
            yield from operations(value, new[key], where)
        else:
            yield {"op": "test", "path": where, "value": value}
            yield {"op": "remove", "path": where}
    for key, value in new.items():
        if key not in old:
            yield {"op": "add", "path": pointer(path, key), "value": value}


def _array_operations(old: list[Any], new: list[Any], path: str) -> Iterator[Operation]:
    """Insertions and removals found by difflib; elements paired up in a changed stretch are compared inside.

    ``shift`` is how far the list as patched so far has moved from ``old``'s numbering: old element ``i``
    is at ``i + shift`` when the operations before it are applied.
    """
    old_keys, new_keys = [_canonical(value) for value in old], [_canonical(value) for value in new]
    if old_keys == new_keys:
        return
    shift = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old_keys, new_keys).get_opcodes():
        if tag == "equal":
            continue
        paired = min(i2 - i1, j2 - j1) if tag == "replace" else 0
        for k in range(paired):
            yield from operations(old[i1 + k], new[j1 + k], pointer(path, i1 + k + shift))
        at = pointer(path, i1 + paired + shift)
        for k in range(i1 + paired, i2):  # each removal brings the next one to the same index
            yield {"op": "test", "path": at, "value": old[k]}
            yield {"op": "remove", "path": at}
        for k in range(j1 + paired, j2):
            yield {"op": "add", "path": pointer(path, k), "value": new[k]}  # new[k] lands at index k
        shift += (j2 - j1) - (i2 - i1)
