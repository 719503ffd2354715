"""Serve the parsed children of a tree dest that the watcher daemon keeps up to date (see livedata.snapshots).

An application reads a tree as one value: {child name: parsed child}. It must never see half of a change, so
every load resolves ``dest/..data`` once, reads the children through the snapshot directory it names, and
checks afterwards that ``..data`` still names it; if not (the writer switched, and may already be reusing that
snapshot's directory under a new name for the next one), it starts over with the new one. What is served is
always exactly one snapshot, and a child that fails to parse is blamed on a snapshot only if ``..data`` still
names it after the failure.

It must also stay cheap when 10,000 children hold one change:

* The hot path is one ``readlink`` of ``..data`` and a string comparison (none within ``check_interval``):
  snapshot names are unique and a snapshot is never modified under its name, so the same name means the
  same data.
* On a switch, ``dest/..changes`` names the children that changed since the snapshot before (see
  livedata.tree_layout): when that is the snapshot last loaded, only those children are read, and the mapping
  served is a copy of the last one with their values replaced, so a reload costs the change, not the tree.
* Otherwise children are listed with their (device, inode, size, mtime). The writer carries an unchanged
  child over by hard link, which keeps all four, so its parsed value is reused without reading it. Any other
  child is read, and parsed only if its bytes differ from the last good load. The ctime is not used: every
  hard link moves it, which would re-read the whole tree on every switch.
* Inode numbers are reused once a file is deleted; a new file with a recycled inode, the same size and the
  same mtime tick could pass for the old one. As in FileWatcher (and git's racily-clean check), a child whose
  mtime was within one timestamp tick of the moment we read it is not trusted by its signature next time.

Errors, threading, ``timeout``, ``backoff`` and ``check_interval`` behave as in ``FileWatcher`` (whose pieces
this reuses). A child that fails to parse makes the whole new snapshot unloadable: the previous snapshot keeps
being served, whole, until a later switch parses. Standard library only: no kazoo, no gevent.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import IO, Any, Callable, Generic, Tuple, TypeVar

from livedata.file_watcher import (
    _DEFAULT_BACKOFF,
    ContentReader,
    WatchedFileNotAvailableError,
    _is_racy,
    wait_for_first_load,
)
from livedata.tree_layout import CHANGES_LINK, DATA_LINK, parse_changes

__all__ = ["TreeWatcher"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

# Attempts to read one snapshot before giving up for this call (the writer switched under us every time).
_ATTEMPTS = 5

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

# (device, inode, size, mtime_ns) of a child's file.
_Key = Tuple[int, int, int, int]
# The lock-free read path: (fresh until (monotonic), snapshot name as readlink returns it, value, content
# mtime); a name of b"" never matches a readlink, which sends the call to the slow path.
_Fast = Tuple[float, bytes, Mapping[str, T], float]


_ReadChild = Callable[[int, str, "_Child[T] | None", int], "_Child[T]"]


class _Moved(Exception):
    """The snapshot being read was replaced (its directory is being reused or deleted): start over."""


class _Child(Generic[T]):
    __slots__ = ("content", "key", "racy", "value")

    def __init__(self, key: _Key, racy: bool, content: bytes, value: T) -> None:
        self.key = key
        self.racy = racy
        self.content = content
        self.value = value


class _Loaded(Generic[T]):
    """One snapshot fully parsed: its name, the mapping served (and the dict behind it), when its content last
    changed, and per-child records."""

    __slots__ = ("children", "mtime", "plain", "snapshot", "value")

    def __init__(
        self, snapshot: str, children: dict[str, _Child[T]], mtime: float, plain: dict[str, T] | None = None,
        value: Mapping[str, T] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.children = children
        self.mtime = mtime
        if plain is None:
            plain = {name: children[name].value for name in sorted(children)}
        self.plain = plain
        self.value = MappingProxyType(plain) if value is None else value


class _State(Generic[T]):
    """What we know, replaced as a whole: the snapshot (or failure) last looked at, and the last good load."""

    __slots__ = ("error", "loaded", "seen")

    def __init__(self, seen: str, loaded: _Loaded[T] | None, error: BaseException | str | None) -> None:
        self.seen = seen
        self.loaded = loaded
        self.error = error


class TreeWatcher(Generic[T]):
    """Keep the parsed children of the tree at ``dest`` in memory, refreshed when a new snapshot is switched in.

    ``parser`` receives a file object over one child's bytes (binary, or text decoded with ``encoding``, UTF-8
    by default, and ``newline``) whose ``name`` is ``dest/<child>``, and returns that child's value.
    ``get_data()`` returns a read-only mapping {child name: value} taken from one snapshot.

    ``timeout``, ``backoff`` and ``check_interval`` are those of ``FileWatcher``: wait in the constructor
    until a first snapshot loads (else raise WatchedFileNotAvailableError), and skip the check for a new
    snapshot for up to ``check_interval`` seconds. Instances are safe to share between threads and greenlets.
    """

    def __init__(
        self,
        dest: str,
        parser: Callable[[IO[Any]], T],
        timeout: float | None = None,
        binary: bool = False,
        encoding: str | None = None,
        newline: str | None = None,
        backoff: float | None = None,
        check_interval: float = 0.0,
    ) -> None:
        self._reader = ContentReader.from_arguments(
            "TreeWatcher", dest, binary, encoding, newline, timeout, backoff, check_interval
        )
        self._dest = dest
        self._link = os.fsencode(os.path.join(dest, DATA_LINK))  # pre-encoded for the hot path
        self._changes = os.path.join(dest, CHANGES_LINK)
        self._parser = parser
        self._interval = check_interval
        self._lock = threading.Lock()
        self._state: _State[T] = _State("", None, "not loaded yet")
        self._fast: _Fast[T] = (0.0, b"", MappingProxyType({}), 0.0)
        if timeout is None:
            self._refresh()
        else:
            wait_for_first_load(dest, self._refresh_outcome, timeout, _DEFAULT_BACKOFF if backoff is None else backoff)

    @property
    def path(self) -> str:
        return self._dest

    def get_data(self) -> Mapping[str, T]:
        """Return the children of the newest snapshot that loaded, as a read-only mapping."""
        return self._current()[2]

    def get_data_and_mtime(self) -> Tuple[Mapping[str, T], float]:
        """Return the mapping and when its content last changed (the mtime of the snapshot that changed it)."""
        fast = self._current()
        return fast[2], fast[3]

    def _current(self) -> _Fast[T]:
        fast = self._fast
        until = fast[0]
        if until and until > time.monotonic():
            return fast
        try:
            link = os.readlink(self._link)
        except OSError as exc:
            link = b""
            seen = _failure(exc)
        else:
            seen = os.fsdecode(link)
        if link == fast[1] and link:
            if until:
                # Lock-free on purpose, as in FileWatcher: this tuple was just verified against the tree.
                self._fast = (time.monotonic() + self._interval, *fast[1:])
            return fast
        state = self._state
        if seen != state.seen:
            state = self._refresh()
        elif self._interval:
            self._fast = self._fast_for(state)
        loaded = state.loaded
        if loaded is None:
            error = state.error
            if isinstance(error, BaseException):
                raise WatchedFileNotAvailableError(self._dest, error) from error
            raise WatchedFileNotAvailableError(self._dest, str(error))
        return (0.0, b"", loaded.value, loaded.mtime)

    def _fast_for(self, state: _State[T]) -> _Fast[T]:
        loaded = state.loaded
        if loaded is None:
            return (0.0, b"", MappingProxyType({}), 0.0)
        until = time.monotonic() + self._interval if self._interval else 0.0
        # Serving the last good load while the current snapshot does not load: every check goes to the
        # slow path, which finds the failure already recorded and answers without the lock.
        name = os.fsencode(state.seen) if state.error is None else b""
        return (until, name, loaded.value, loaded.mtime)

    def _refresh_outcome(self) -> tuple[bool, BaseException | str | None]:
        state = self._refresh()
        return state.loaded is not None, state.error

    def _refresh(self) -> _State[T]:
        # Callers that queued on the lock find the work done by the first one and share its result.
        with self._lock:
            new_state = self._next_state(self._state)
            self._state = new_state
            self._fast = self._fast_for(new_state)
            return new_state

    def _next_state(self, state: _State[T]) -> _State[T]:
        """Load the snapshot ``..data`` names now, unless it is the one already looked at; lock held."""
        error: BaseException | str = "the tree kept switching while being read"
        for _attempt in range(_ATTEMPTS):
            try:
                seen = os.fsdecode(os.readlink(self._link))
            except OSError as exc:
                seen = _failure(exc)
                if seen == state.seen:
                    return state
                return self._failed(state, seen, _unavailable(self._dest, exc))
            if seen == state.seen:
                return state
            if "/" in seen or not seen.startswith(".."):
                return self._failed(state, seen, f"{DATA_LINK} points to {seen!r}, not to a livedata snapshot")
            try:
                loaded = self._load(seen, state.loaded)
            except _Moved:
                continue
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ESTALE):
                    error = exc
                    continue  # the snapshot went away under us: a switch
                return self._failed(state, seen, exc)
            except _ParseError as exc:
                if not self._still_current(seen):
                    error = exc.cause
                    continue  # the writer was already reusing that directory: what failed was not a snapshot
                return self._failed(state, seen, exc.cause, exc.child)
            if self._still_current(seen):
                if state.loaded is not None and state.error is not None:
                    logger.info("%s: loadable again after: %s", self._dest, state.error)
                return _State(seen, loaded, None)
        # Not recorded as seen: the next call tries again.
        return self._failed(state, "", error)

    def _still_current(self, seen: str) -> bool:
        try:
            return os.fsdecode(os.readlink(self._link)) == seen
        except OSError:
            return False

    def _load(self, snapshot: str, previous: _Loaded[T] | None) -> _Loaded[T]:
        """Read ``snapshot``'s children, reusing what ``previous`` parsed from unchanged files."""
        old = previous.children if previous is not None else {}
        now_ns = time.time_ns()  # before any read: see _is_racy
        try:
            fd = os.open(os.path.join(self._dest, snapshot), _DIR_FLAGS)
        except FileNotFoundError:
            raise _Moved() from None
        try:
            if previous is not None:
                loaded = _load_changes(self._changes, self._read_child, fd, snapshot, previous, now_ns)
                if loaded is not None:
                    return loaded
            changed = updated = False
            children: dict[str, _Child[T]] = {}
            for entry in os.scandir(fd):
                name = entry.name
                if name.startswith("."):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    raise _Moved() from None
                if not stat.S_ISREG(st.st_mode):
                    continue
                known = old.get(name)
                child = known
                if child is None or child.racy or child.key != _key(st):
                    child = self._read_child(fd, name, child, now_ns)
                    updated = True
                    changed = changed or known is None or child.value is not known.value
                children[name] = child
            changed = changed or len(children) != len(old)
            mtime = os.fstat(fd).st_mtime if changed or previous is None else previous.mtime
        finally:
            os.close(fd)
        if previous is not None and not changed:
            # Same values: keep the very mapping served so far (callers may cache on its identity).
            return _Loaded(snapshot, children if updated else old, previous.mtime, previous.plain, previous.value)
        return _Loaded(snapshot, children, mtime)

    def _read_child(self, dir_fd: int, name: str, old: _Child[T] | None, now_ns: int) -> _Child[T]:
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            raise _Moved() from None
        try:
            st = os.fstat(fd)  # the signature of what is read, taken before reading it
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(fd)
        content = b"".join(chunks)
        key = _key(st)
        racy = _is_racy(st.st_mtime_ns, now_ns)
        if old is not None and old.content == content:
            if old.key == key and old.racy == racy:
                return old
            return _Child(key, racy, content, old.value)
        reader = dataclasses.replace(self._reader, path=os.path.join(self._dest, name))
        try:
            value = self._parser(reader.open(content))
        except Exception as exc:
            raise _ParseError(name, exc) from exc
        return _Child(key, racy, content, value)

    def _failed(
        self, state: _State[T], seen: str, error: BaseException | str, child: str | None = None
    ) -> _State[T]:
        # Only reached for a snapshot (or failure) not seen before, so each breakage is logged once.
        where = f"{self._dest} (child {child!r})" if child is not None else self._dest
        if state.loaded is not None:
            logger.warning("%s: cannot load the new snapshot (%s); still serving the previous one", where, error)
        else:
            logger.debug("%s: not available yet: %s", where, error)
        return _State(seen, state.loaded, error)


def _load_changes(
    changes_link: str, read_child: _ReadChild[T], fd: int, snapshot: str, previous: _Loaded[T], now_ns: int
) -> _Loaded[T] | None:
    """Read only the children ``..changes`` names, if it describes the switch from ``previous``; None to
    list the snapshot instead. The caller checks that ``..data`` still names ``snapshot`` afterwards."""
    try:
        told = parse_changes(os.readlink(changes_link), snapshot, previous.snapshot)
    except OSError:
        return None
    if told is None:
        return None
    count, names = told
    # The records are updated in place (a copy would cost the tree), and put back if this load fails.
    children = previous.children
    undo = {name: children.get(name) for name in names}
    try:
        loaded = _apply_changes(read_child, fd, snapshot, previous, names, count, now_ns)
    except BaseException:
        loaded = None
        raise
    finally:
        if loaded is None:
            for name, child in undo.items():
                if child is None:
                    children.pop(name, None)
                else:
                    children[name] = child
    return loaded


def _apply_changes(
    read_child: _ReadChild[T], fd: int, snapshot: str, previous: _Loaded[T], names: list[str], count: int,
    now_ns: int,
) -> _Loaded[T] | None:
    """Read ``names`` into ``previous``'s records (in place); the new load, or None to list the snapshot."""
    children = previous.children
    updated: dict[str, T | None] = {}  # the values that changed (None: the child is gone)
    added = False
    for name in names:
        known = children.get(name)
        try:
            child = read_child(fd, name, known, now_ns)
        except _Moved:  # no such file: the child is gone (or the snapshot moved: the caller finds out)
            if known is not None:
                del children[name]
                updated[name] = None
            continue
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                return None  # not a regular file: what a listing would skip
            raise
        children[name] = child
        if known is None or child.value is not known.value:
            added |= known is None
            updated[name] = child.value
    if len(children) != count:
        return None  # something we did not expect is (or was) in a snapshot: look at all of it
    if not updated:
        return _Loaded(snapshot, children, previous.mtime, previous.plain, previous.value)
    plain = previous.plain.copy()  # the mapping served so far stays as it is: callers may hold it
    for name, value in updated.items():
        if name in children:
            plain[name] = value  # type: ignore[assignment]
        else:
            del plain[name]
    if added:
        plain = {name: plain[name] for name in sorted(plain)}
    return _Loaded(snapshot, children, os.fstat(fd).st_mtime, plain)


class _ParseError(Exception):
    def __init__(self, child: str, cause: BaseException) -> None:
        super().__init__(child, cause)
        self.child = child
        self.cause = cause


def _failure(exc: OSError) -> str:
    """What a failed readlink is recorded as: never a snapshot name, and equal for equal failures."""
    return f"\0{exc.errno}"


def _key(st: os.stat_result) -> _Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _unavailable(dest: str, exc: OSError) -> BaseException | str:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return FileNotFoundError(exc.errno, f"no snapshot yet ({DATA_LINK} is missing)", os.path.join(dest, DATA_LINK))
    return exc

