"""An in-memory stand-in for :class:`~livedata.FileWatcher` and :class:`~livedata.LiveNode` in unit tests.

Code that reads live data only calls ``get_data()`` and ``get_data_and_mtime()`` (the
:class:`~livedata.live_data.WatchedData` protocol). A unit test of that code needs neither a file nor
ZooKeeper: it needs a reader whose data it sets directly, that fails the way the real ones fail. This one
follows the real readers' rules, so what the test sees is what production will see:

* Until a first good version is set, reads raise :class:`~livedata.WatchedFileNotAvailableError`, whose
  ``inner`` says why (nothing set yet, or the parser's exception).
* Raw bytes given to :meth:`StaticWatchedData.set_content` go through the application's own parser, fed
  the way the real readers feed it (binary or decoded text, ``name`` set to ``path``); a parse failure
  keeps serving the last good version, as a broken write to the file or node would.
* Setting the same bytes again keeps the value and its mtime, as a heartbeat touch or an identical
  ``set()`` does.

Only the standard library is used: importing it costs an application's test suite neither kazoo nor gevent.
"""
from __future__ import annotations

import time
from typing import IO, Any, Callable, Generic, Tuple, TypeVar, Union

from livedata.file_watcher import ContentReader, WatchedFileNotAvailableError

__all__ = ["StaticWatchedData"]

T = TypeVar("T")

_NOTHING_SET = "no data set yet (the stand-in of a file or node that is not there yet)"


class _Unset:
    """The type of the marker for "no initial data"; None is valid data."""


_UNSET = _Unset()


class _Version(Generic[T]):
    """One good version: the value, its mtime, and the bytes it was parsed from (None when set as a value)."""

    __slots__ = ("content", "mtime", "value")

    def __init__(self, value: T, mtime: float, content: bytes | None) -> None:
        self.value = value
        self.mtime = mtime
        self.content = content


class StaticWatchedData(Generic[T]):
    """Serve data that the test sets, with the reading API and errors of FileWatcher and LiveNode.

    ``StaticWatchedData({"beta": True})`` serves that value at once; ``StaticWatchedData()`` raises
    :class:`~livedata.WatchedFileNotAvailableError` until :meth:`set_data` or :meth:`set_content` is called.
    ``parser``, ``binary``, ``encoding`` and ``newline`` have the real readers' meaning and are used by
    :meth:`set_content`. ``path`` only names the stand-in in errors and in the parser's file object.
    """

    def __init__(
        self,
        data: Union[T, _Unset] = _UNSET,
        *,
        mtime: float | None = None,
        path: str = "<static data>",
        parser: Callable[[IO[Any]], T] | None = None,
        binary: bool = False,
        encoding: str | None = None,
        newline: str | None = None,
    ) -> None:
        self._reader = ContentReader.from_arguments(
            "StaticWatchedData", path, binary, encoding, newline, None, None, 0.0
        )
        self._parser = parser
        self._version: _Version[T] | None = None
        self._error: BaseException | str = _NOTHING_SET
        if not isinstance(data, _Unset):
            self.set_data(data, mtime)

    @property
    def path(self) -> str:
        return self._reader.path

    def get_data(self) -> T:
        """The newest good value; raises WatchedFileNotAvailableError before the first one."""
        return self._current().value

    def get_data_and_mtime(self) -> Tuple[T, float]:
        """The newest good value and the time its content was set (seconds since the epoch)."""
        version = self._current()
        return version.value, version.mtime

    def set_data(self, value: T, mtime: float | None = None) -> None:
        """Serve ``value`` from now on, with ``mtime`` (default: now) as its content's modification time."""
        self._version = _Version(value, time.time() if mtime is None else mtime, None)
        self._error = _NOTHING_SET

    def set_content(self, content: bytes | str, mtime: float | None = None) -> None:
        """Parse ``content`` as the real readers would parse the file's or node's bytes, and serve the result.

        Identical bytes keep the current value and mtime. A parse failure is not raised here: like a bad
        write in production, it keeps serving the last good version, or (before one) makes reads raise
        WatchedFileNotAvailableError with the parser's exception as ``inner``.
        """
        if self._parser is None:
            raise TypeError("StaticWatchedData.set_content needs a parser: pass parser= to the constructor")
        raw = content.encode(self._reader.encoding) if isinstance(content, str) else content
        version = self._version
        if version is not None and version.content == raw:
            return
        try:
            value = self._parser(self._reader.open(raw))
        except Exception as exc:
            self._error = exc
            return
        self._version = _Version(value, time.time() if mtime is None else mtime, raw)
        self._error = _NOTHING_SET

    def clear(self) -> None:
        """Forget every version, as a freshly started reader whose file or node does not exist yet."""
        self._version = None
        self._error = _NOTHING_SET

    def _current(self) -> _Version[T]:
        version = self._version
        if version is None:
            error = self._error
            if isinstance(error, BaseException):
                raise WatchedFileNotAvailableError(self.path, error) from error
            raise WatchedFileNotAvailableError(self.path, error)
        return version
