"""Serve the parsed contents of a file that another process keeps up to date.

Applications read live data on hot paths (every request), while the file changes rarely, is replaced
atomically by the watcher daemon, and is touched periodically as a liveness heartbeat. The design
follows from that:

* Change detection uses a stat signature (ctime, mtime, inode, size, device), not "mtime grew": an
  atomic rename or a ``cp -p`` restore can keep the mtime, and a parse failure must be retried on *any*
  later change, including one that moves the mtime backwards.
* A changed signature only triggers a read; the parser runs only when the bytes differ from the last good
  load. A heartbeat touch therefore costs one read and a byte comparison, never a reparse, and the mtime
  we report stays the time the *content* last changed, so caches keyed on it survive heartbeats.
* The parser is fed the very bytes that were compared, so what is served is exactly what was checked.
* Once something good has been loaded we keep serving it through deletions and broken writes: stale data
  beats an outage. Each distinct failure is logged once, not once per call.
* Reloads are serialised by a lock and re-checked inside it, so a burst of callers reparses once. The
  unchanged-file path takes no lock and costs one ``os.stat`` and two integer comparisons.

Only the standard library is used, and the lock and sleep are looked up when used rather than at import,
so the same class works in a threaded application and under gevent monkey-patching.
"""
from __future__ import annotations

import io
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import IO, Any, Callable, Generic, Tuple, TypeVar, cast

__all__ = ["FileWatcher", "WatchedFileNotAvailableError"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

# (ctime_ns, mtime_ns, inode, size, device) of a file we could stat, or (errno,) for one we could not, so
# "still missing" compares equal to "missing" and costs no reload.
_Signature = Tuple[int, ...]
_NEVER_SEEN: _Signature = ()

# What the lock-free read path needs, in one tuple that is replaced as a whole:
# (fresh until (monotonic), ctime_ns, inode, value, content mtime). "Fresh until" stays 0.0 unless
# check_interval is set. A ctime of -1 never matches a real stat, which sends every call to the slow path.
_Fast = Tuple[float, int, int, T, float]

_DEFAULT_BACKOFF = 0.01
# Doubling without a ceiling would make a long timeout notice a late file very late.
_MAX_BACKOFF = 1.0

# How long after a file's ctime a modification can still get that same ctime. Kernels stamp files from a
# clock that ticks every 1-10 ms; some filesystems (ext3, FAT, HFS+, some NFS servers) keep whole seconds.
_TICK_WINDOW_NS = 100_000_000
_COARSE_WINDOW_NS = 2_000_000_000

_monotonic = time.monotonic
_stat = os.stat


class WatchedFileNotAvailableError(Exception):
    """Raised when no good version of the watched file has been loaded yet.

    ``inner`` is the reason of the most recent failure (missing file, unreadable file, parser error), so
    the caller can tell "not synced yet" from "synced but malformed".
    """

    def __init__(self, path: str, inner: BaseException | str) -> None:
        super().__init__(f"{path}: {inner}")
        self.path = path
        self.inner = inner

    def __reduce__(self) -> Tuple[Any, ...]:
        # Exceptions cross process boundaries (multiprocessing, log shipping); keep them picklable.
        return (type(self), (self.path, self.inner))


class _Loaded(Generic[T]):
    """One successfully parsed version: the value, the mtime of its content, and the bytes it came from."""

    __slots__ = ("content", "mtime", "value")

    def __init__(self, value: T, mtime: float, content: bytes) -> None:
        self.value = value
        self.mtime = mtime
        self.content = content


class _State(Generic[T]):
    """Immutable snapshot of what we know, swapped as a whole so lock-free readers never see half of it.

    ``content`` is the last bytes read, good or not, so a re-read of unchanged bytes is recognised.
    ``racy`` means the file changed so recently that a further change could keep the same signature;
    until that window has passed, every call re-reads and compares bytes instead of trusting stat.
    """

    __slots__ = ("content", "error", "loaded", "racy", "signature")

    def __init__(
        self,
        signature: _Signature,
        loaded: _Loaded[T] | None,
        error: BaseException | str | None,
        content: bytes | None = None,
        racy: bool = False,
    ) -> None:
        self.signature = signature
        self.loaded = loaded
        self.error = error
        self.content = content
        self.racy = racy


def _signature_of(st: os.stat_result) -> _Signature:
    # Order matters: FileWatcher._fast_for takes ctime and inode from positions 0 and 2.
    return (st.st_ctime_ns, st.st_mtime_ns, st.st_ino, st.st_size, st.st_dev)


def _failure_signature(exc: OSError) -> _Signature:
    return (exc.errno or 0,)


def _current_signature(path: str) -> _Signature:
    try:
        return _signature_of(_stat(path))
    except OSError as exc:
        return _failure_signature(exc)


def _is_racy(ctime_ns: int, now_ns: int) -> bool:
    """Could a write still land with this same ctime? (``now_ns`` must be taken before the read.)

    The same problem as git's "racily clean" index entries: a write in the same timestamp tick as the
    one we read gets an identical ctime and mtime, and if it keeps the size the signature is unchanged.
    Once the clock has moved past the tick, any later write gets a new ctime.
    """
    window = _COARSE_WINDOW_NS if ctime_ns % 1_000_000_000 == 0 else _TICK_WINDOW_NS
    return now_ns - ctime_ns < window



@dataclass(frozen=True)
class ContentReader:
    """How watched bytes reach a parser, and the constructor arguments both readers share.

    FileWatcher and LiveNode accept and reject exactly the same arguments,
    so an application can switch between them by configuration alone.
    """

    path: str
    binary: bool
    encoding: str
    newline: str | None

    @classmethod
    def from_arguments(
        cls,
        owner: str,
        path: str,
        binary: bool,
        encoding: str | None,
        newline: str | None,
        timeout: float | None,
        backoff: float | None,
        check_interval: float,
    ) -> ContentReader:
        if binary and (encoding is not None or newline is not None):
            raise TypeError(f"{owner}: 'encoding' and 'newline' only apply to text mode, not binary=True")
        if backoff is not None and backoff <= 0:
            raise ValueError(f"{owner}: backoff must be a positive number of seconds, got {backoff!r}")
        if check_interval < 0:
            raise ValueError(f"{owner}: check_interval must be >= 0 seconds, got {check_interval!r}")
        if timeout is not None and timeout < 0:
            raise ValueError(f"{owner}: timeout must be >= 0 seconds or None, got {timeout!r}")
        return cls(path, binary, encoding or "utf-8", newline)

    def open(self, content: bytes) -> IO[Any]:
        """A file object over exactly the bytes that were compared, so what is parsed is what was checked."""
        raw = io.BytesIO(content)
        raw.name = self.path  # parsers may name the file in their errors
        if self.binary:
            return raw
        return io.TextIOWrapper(raw, encoding=self.encoding, newline=self.newline)


class FileWatcher(Generic[T]):
    """Keep the parsed contents of ``path`` in memory and refresh them when the file changes.

    ``parser`` receives a file object over the file's bytes (binary, or text decoded with ``encoding``,
    UTF-8 by default, and ``newline`` as for :func:`open`) whose ``name`` is ``path``, and returns the
    value to serve.

    ``timeout`` (seconds) makes the constructor wait, with exponential backoff starting at ``backoff``
    seconds, until the file exists and parses; it raises :class:`WatchedFileNotAvailableError` when the
    time runs out. Without a timeout the constructor never blocks and reads raise until a first good load.

    ``check_interval`` (seconds, default 0) trades freshness for speed: by default every read costs one
    ``os.stat`` and sees a change at once; with a positive interval a read of an unchanged file skips the
    stat until the interval has elapsed since the last check, so a change may be served up to
    ``check_interval`` seconds late.

    For about 100 ms after each change (2 s on filesystems with whole-second timestamps), reads re-read
    the file and compare bytes instead of trusting stat alone, which catches a same-size rewrite inside
    one timestamp tick. Instances are safe to share between threads and greenlets.
    """

    def __init__(
        self,
        path: str,
        parser: Callable[[IO[Any]], T],
        timeout: float | None = None,
        binary: bool = False,
        encoding: str | None = None,
        newline: str | None = None,
        backoff: float | None = None,
        check_interval: float = 0.0,
    ) -> None:
        self._reader = ContentReader.from_arguments(
            "FileWatcher", path, binary, encoding, newline, timeout, backoff, check_interval
        )
        self._path = path
        # Pre-encoded for the hot path: os.stat skips encoding the str on every call.
        self._stat_path = os.fsencode(path)
        self._parser = parser
        self._interval = check_interval
        self._lock = threading.Lock()
        self._state: _State[T] = _State(_NEVER_SEEN, None, "not loaded yet")
        # The value is never returned before a first good load (ctime -1 never matches), hence the cast.
        self._fast: _Fast[T] = (0.0, -1, -1, cast(T, None), 0.0)
        if timeout is None:
            self._refresh()
        else:
            self._wait_for_first_load(timeout, _DEFAULT_BACKOFF if backoff is None else backoff)

    @property
    def path(self) -> str:
        return self._path

    def get_data(self) -> T:
        """Return the newest good parsed value (see the class docstring for how fresh it is)."""
        # This is the call applications make per request, so it is written flat: one tuple read, no
        # lock, one stat (none within check_interval) and two integer comparisons. A helper call would
        # cost about as much as the whole check, hence the near-copy in get_data_and_mtime.
        fast = self._fast
        until, ctime_ns, ino, value, _ = fast
        if until and until > _monotonic():
            return value
        try:
            st = _stat(self._stat_path)
        except OSError as exc:
            return self._resolve(_failure_signature(exc))[3]
        # ctime moves on every write, truncate, utime, chmod and (on Linux) rename, and userspace cannot
        # set it; a replacement by rename has a new inode. What this misses, a change within one
        # timestamp tick, is covered by the racy window, during which the ctime here is -1.
        if st.st_ctime_ns == ctime_ns and st.st_ino == ino:
            if until:
                self._rearm(fast)
            return value
        return self._resolve(_signature_of(st))[3]

    def get_data_and_mtime(self) -> Tuple[T, float]:
        """Return the value and the modification time of the file when its content last changed.

        Heartbeat touches do not move this mtime, so it is a sound cache key for derived data.
        """
        fast = self._fast
        until, ctime_ns, ino, value, mtime = fast
        if until and until > _monotonic():
            return value, mtime
        try:
            st = _stat(self._stat_path)
        except OSError as exc:
            fast = self._resolve(_failure_signature(exc))
            return fast[3], fast[4]
        if st.st_ctime_ns == ctime_ns and st.st_ino == ino:
            if until:
                self._rearm(fast)
            return value, mtime
        fast = self._resolve(_signature_of(st))
        return fast[3], fast[4]

    def _rearm(self, seen: _Fast[T]) -> None:
        """Serve ``seen`` for another interval: a stat just confirmed it, unless a refresh replaced it meanwhile.

        Under the lock, and only if ``seen`` is still the current tuple: a stat
        taken before a concurrent refresh must not put the older value back,
        or a caller could see a value older than one already returned.  It
        runs once per interval, so the lock costs nothing measurable.
        """
        with self._lock:
            if self._fast is seen:
                self._fast = (_monotonic() + self._interval, *seen[1:])

    def _resolve(self, signature: _Signature) -> _Fast[T]:
        """Slow path: reload if the file moved on (or may have), and raise if nothing good was loaded."""
        state = self._state
        if signature != state.signature or state.racy:
            state = self._refresh()
        elif self._interval:
            with self._lock:
                if self._state is state:  # a concurrent refresh may have moved on: never re-arm an older state
                    self._fast = self._fast_for(state)
        loaded = state.loaded
        if loaded is None:
            error = state.error
            if isinstance(error, BaseException):
                raise WatchedFileNotAvailableError(self._path, error) from error
            raise WatchedFileNotAvailableError(self._path, str(error))
        return (0.0, -1, -1, loaded.value, loaded.mtime)

    def _fast_for(self, state: _State[T]) -> _Fast[T]:
        loaded = state.loaded
        if loaded is None:
            return (0.0, -1, -1, cast(T, None), 0.0)
        until = _monotonic() + self._interval if self._interval else 0.0
        signature = state.signature
        if state.racy or len(signature) < 3:
            # Racy, or the file is missing or unreadable: every stat goes to the slow path, which keeps
            # serving the last good value (without the lock unless something moved).
            return (until, -1, -1, loaded.value, loaded.mtime)
        return (until, signature[0], signature[2], loaded.value, loaded.mtime)

    def _refresh(self) -> _State[T]:
        # Callers that queued on the lock find the work done by the first one and share its result.
        with self._lock:
            state = self._state
            new_state = self._next_state(state)
            self._state = new_state
            # Rewritten even when unchanged, so check_interval re-arms and a stale tuple is replaced.
            self._fast = self._fast_for(new_state)
            return new_state

    def _next_state(self, state: _State[T]) -> _State[T]:
        """Work out the state for the file as it is now; must be called with the lock held."""
        now_ns = time.time_ns()
        try:
            f = open(self._path, "rb")  # noqa: SIM115 -- closed below, after fstat and read
        except OSError as exc:
            # Vanished since the caller's stat, or unreadable: key the failure on what stat says now, so
            # an unchanged unreadable file is not retried on every call.
            if isinstance(exc, FileNotFoundError):
                signature = _failure_signature(exc)
            else:
                signature = _current_signature(self._path)
            if signature == state.signature:
                return state
            return self._failed(state, signature, exc, None)
        with f:
            try:
                # Signature taken before reading: if a writer changes the file under us, the next call
                # sees a different signature and reads again, rather than trusting a torn read forever.
                st = os.fstat(f.fileno())
                signature = _signature_of(st)
                if signature == state.signature and not state.racy:
                    return state
                content = f.read()
            except OSError as exc:
                return self._failed(state, _current_signature(self._path), exc, None)
        racy = _is_racy(st.st_ctime_ns, now_ns)
        if signature == state.signature and content == state.content:
            # A racy re-check that found nothing new: the earlier outcome stands.
            return _State(signature, state.loaded, state.error, content, racy)
        loaded = state.loaded
        if loaded is not None and content == loaded.content:
            # Touched, or rewritten with identical bytes: keep the value and its content mtime.
            self._log_recovery(state)
            return _State(signature, loaded, None, content, racy)
        try:
            value = self._parser(self._reader.open(content))
        except Exception as exc:
            return self._failed(state, signature, exc, content, racy)
        self._log_recovery(state)
        return _State(signature, _Loaded(value, st.st_mtime, content), None, content, racy)

    def _failed(
        self,
        state: _State[T],
        signature: _Signature,
        exc: BaseException,
        content: bytes | None,
        racy: bool = False,
    ) -> _State[T]:
        # Only reached when the file changed, so each distinct breakage is logged once.
        if state.loaded is not None:
            logger.warning(
                "%s: cannot load the new version (%s: %s); still serving the one with mtime %s",
                self._path,
                type(exc).__name__,
                exc,
                state.loaded.mtime,
            )
        else:
            logger.debug("%s: not available yet: %s: %s", self._path, type(exc).__name__, exc)
        return _State(signature, state.loaded, exc, content, racy)

    def _log_recovery(self, state: _State[T]) -> None:
        if state.loaded is not None and state.error is not None:
            logger.info("%s: loadable again after: %s", self._path, state.error)

    def _wait_for_first_load(self, timeout: float, backoff: float) -> None:
        wait_for_first_load(self._path, self._refresh_outcome, timeout, backoff)

    def _refresh_outcome(self) -> tuple[bool, BaseException | str | None]:
        state = self._refresh()
        return state.loaded is not None, state.error


def wait_for_first_load(
    path: str, refresh: Callable[[], tuple[bool, BaseException | str | None]], timeout: float, backoff: float
) -> None:
    """Call ``refresh`` (which says whether something good is loaded, and the latest error) with exponential
    backoff until it succeeds; raise WatchedFileNotAvailableError once ``timeout`` seconds have passed.

    Shared by FileWatcher and TreeWatcher so both wait, and fail, the same way.
    """
    deadline = _monotonic() + timeout
    delay = backoff
    while True:
        loaded, error = refresh()
        if loaded:
            return
        remaining = deadline - _monotonic()
        error = error if error is not None else "not loaded yet"
        if remaining <= 0:
            raise WatchedFileNotAvailableError(path, error) from (
                error if isinstance(error, BaseException) else None
            )
        pause = min(delay, remaining)
        logger.debug("%s: not loadable yet (%s); retrying in %.3fs", path, error, pause)
        # Looked up on each call so gevent's patched sleep is used even if patching came after import.
        time.sleep(pause)
        delay = min(delay * 2, max(_MAX_BACKOFF, backoff))
