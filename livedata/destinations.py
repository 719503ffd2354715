"""Checking dests before connecting, and creating their missing directories deliberately.

A dest that is an existing directory can never be written (a rename cannot
replace a directory with a file): accepting it would mean a failed write,
retried forever.  It is refused with the configuration instead (the watcher
never removes a directory, so this cannot cure itself).

A dest whose directory does not exist yet is allowed, since the directory
may be a tmpfs or a volume created late, but each directory created is
logged (a typo in a dest path must not grow a new tree silently) and given
the node's owner and group when it has them, mode 0755, so that the owner
can manage its files.  This happens before connecting (and on each reload
for the new nodes), in the same order as ``mkdir -p``.
"""
from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable

from livedata.files import FileSpec, set_new_directory_metadata

log = logging.getLogger("livedata.destinations")

DIRECTORY_MODE = 0o755


def dest_problem(path: str) -> str | None:
    """Why ``path`` can never be a dest, judged from what exists now; None when it can be."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    if stat.S_ISDIR(status.st_mode):
        return f"{path} is a directory; a dest must name a file"
    # A regular file where a directory should be is left to the mirror: it is logged when the directories
    # are created, and the node's writes fail and are retried (and counted) until someone removes it.
    return None


def create_missing_directories(nodes: Iterable[tuple[str, FileSpec]]) -> list[str]:
    """Create each missing dest directory with the first node's owner/group; return the directories created.

    A failure is logged and left to the mirror, which reports the node's
    writes as failing and retries them.
    """
    created: list[str] = []
    seen: set[str] = set()
    for name, spec in nodes:
        directory = os.path.dirname(spec.path)
        if directory in seen:
            continue
        seen.add(directory)
        if os.path.isdir(directory):
            continue
        try:
            made = _make_directories(directory, spec)
        except OSError as e:
            log.error("nodes.%s: cannot create %s: %s", name, e.filename or directory, e.strerror or e)
            continue
        created += made
        for path in made:
            log.info("nodes.%s: created directory %s (owner %s, group %s, mode %04o)", name, path,
                     _id(spec.owner), _id(spec.group), DIRECTORY_MODE)  # fmt: skip
    return created


def _make_directories(directory: str, spec: FileSpec) -> list[str]:
    missing = []
    path = directory
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    created = []
    for path in reversed(missing):
        try:
            os.mkdir(path, DIRECTORY_MODE)
        except FileExistsError:
            continue
        created.append(path)
        set_new_directory_metadata(path, DIRECTORY_MODE, spec.owner, spec.group)
    return created



def _id(value: int | None) -> str:
    return "unchanged" if value is None else str(value)
