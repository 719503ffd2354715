"""Generations of a tree whose children must always agree, and a process that publishes them until killed.

A reader that ever sees children of two generations, or a name set that does not match the values, has seen a
half-applied snapshot. ``python -m tests.tree_publisher_process DEST START`` cleans up DEST as the daemon does at
start, then publishes generation START, START+1, ... forever; the crash tests SIGKILL it at random moments,
and run two at once to check that overlapping instances do not break each other.
"""
from __future__ import annotations

import errno
import sys
from collections.abc import Mapping

from livedata.snapshots import TreePublisher, TreeSpec, TreeWriteError, cleanup

STATIC = {f"static{i:02d}": b"never changes" for i in range(20)}
_FILLERS = 30


def generation(number: int) -> dict[str, bytes]:
    """Children of one generation: 20 unchanged ones (hard links), 30 rewritten ones, and 1-7 ``k`` children
    that come and go, all the rewritten ones holding the same text of the same size whatever the number."""
    keys = 1 + number % 7
    value = f"{number:012d}:{keys}".encode()
    children = dict(STATIC)
    children.update({f"fill{i:02d}": value for i in range(_FILLERS)})
    children.update({f"k{i}": value for i in range(keys)})
    return children


def consistency_problem(children: Mapping[str, bytes]) -> str | None:
    """Why ``children`` is not exactly one generation, or None if it is."""
    values = {data for name, data in children.items() if not name.startswith("static")}
    if len(values) != 1:
        return f"children of several generations: {sorted(values)[:3]}"
    (value,) = values
    number = int(value.split(b":")[0])
    if dict(children) != generation(number):
        return f"generation {number} has the wrong names: {sorted(children)}"
    return None


def main(argv: list[str]) -> int:
    dest, start = argv[1], int(argv[2])
    spec = TreeSpec(dest, 0o444)
    cleanup(spec)
    publisher = TreePublisher(spec)
    number = start
    while True:
        try:
            publisher.publish(generation(number))
        except TreeWriteError as exc:
            # Only an overlapping instance deleting the snapshot we were linking from can cause this; the
            # daemon retries too. Anything else is a bug that the tests must see.
            if exc.errno != errno.ENOENT:
                raise
            continue
        number += 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
