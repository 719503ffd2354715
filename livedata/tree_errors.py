"""What can go wrong writing a tree, as the exceptions ``livedata.snapshots`` raises or reports."""
from __future__ import annotations

from livedata.files import FileWriteError


class TreeWriteError(FileWriteError):
    """A tree could not be brought up to date; unless ``step`` says otherwise the old snapshot is intact."""

    def __str__(self) -> str:
        return f"cannot update tree {self.path!r} while {self.step}: {self.reason}"


class ChildNameError(ValueError):
    """A child whose name cannot be a file name in the tree; it is skipped, the rest of the tree is written."""

    def __init__(self, dest: str, child: str, reason: str) -> None:
        super().__init__(dest, child, reason)
        self.dest = dest
        self.child = child
        self.reason = reason

    def __str__(self) -> str:
        return f"tree {self.dest!r}: skipping child {self.child!r}: {self.reason}"


class TreeRenderError(ValueError):
    """The children cannot be rendered as the ``json`` format (a child is not UTF-8 text)."""


def tree_error(path: str, step: str, exc: OSError) -> TreeWriteError:
    return TreeWriteError(path, exc.strerror or str(exc), step, exc.errno)
