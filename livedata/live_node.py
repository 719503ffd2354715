"""Serve the parsed data of a znode that this process watches itself.

Most applications read the files that the watcher daemon mirrors, through :class:`~livedata.FileWatcher`. A
gevent application that already embeds a ZooKeeper client can skip the sidecar: :class:`LiveNode` watches the
node in-process and offers the same reading API and the same errors, so the two are interchangeable (and
:func:`livedata.live_data.watched_data_from_config` picks one from configuration alone).

How it is built, and why:

* kazoo's ``DataWatch`` does the hard part. It re-reads the node after every change, after a reconnect and
  after a session expiry, and follows it through deletion and re-creation. It calls us only when the znode
  version moved, so logging in the callback logs once per change, never once per read.
* The callback runs on the client's handler (a greenlet with the gevent handler), one call at a time per
  watch, so parsing there needs no lock. It must stay cheap (a slow callback delays every other watch of the
  client) and must never raise (kazoo would only log the exception), so everything it does is caught.
* Stored data is decoded through :mod:`livedata.payload` (compressed or chunked nodes, see docs/writer.md's
  "Large data"): chunks are read in the callback, verified and inflated with a bound of ``max_payload_size``
  decoded bytes. Bad stored data fails the version like a parser error does; a chunk found missing sends
  the read back to the node, since that only means a newer version was published meanwhile.
* The parser runs only when the decoded bytes differ from the last good version: a ``set()`` of identical bytes
  keeps both the value and its mtime, so application caches keyed on the mtime survive it.
* Once a good version has been loaded it is served through deletions, bad data, disconnects and session
  expiry: stale data beats an outage.
* Reads take no lock: the callback replaces one immutable snapshot, and readers load that one reference.
* kazoo's connection routine can die for good (a reply it cannot pair with its request), leaving the client
  LOST forever, which DataWatch cannot survive. While a LiveNode follows a client, a
  :class:`livedata.session.SessionKeeper` restarts that client's session when this happens (never when the
  application stopped the client), and DataWatch re-reads the node once connected again.
* The ``DataWatch`` is registered only once the client is connected, from a separate greenlet or thread:
  its first read retries while disconnected, holding its lock, with a delay that grows to a minute, which
  would hold back the first data for up to that long after an outage. Registering it only when
  connected also means the constructor's own ``timeout`` alone decides how long it blocks.
"""
from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import IO, Any, Callable, Generic, Sequence, Tuple, TypeVar

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import KazooState
from kazoo.recipe.watchers import DataWatch

from livedata.chunks import read_decoded
from livedata.file_watcher import ContentReader, WatchedFileNotAvailableError
from livedata.payload import DEFAULT_MAX_PAYLOAD_SIZE
from livedata.session import SessionKeeper
from livedata.signing import SignatureRefused, Verifier

__all__ = ["LiveNode", "WatchedFileNotAvailableError"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

_NOTHING_YET = "no data received from ZooKeeper yet"


class _Loaded(Generic[T]):
    """One successfully parsed version: the value, the znode mtime of its content, and the decoded bytes."""

    __slots__ = ("content", "mtime", "value")

    def __init__(self, value: T, mtime: float, content: bytes) -> None:
        self.value = value
        self.mtime = mtime
        self.content = content


class _State(Generic[T]):
    """Immutable snapshot, replaced as a whole so lock-free readers never see half an update."""

    __slots__ = ("error", "loaded")

    def __init__(self, loaded: _Loaded[T] | None, error: BaseException | str | None) -> None:
        self.loaded = loaded
        self.error = error


class LiveNode(Generic[T]):
    """Keep the parsed data of the znode ``path`` in memory, current through a watch on ``client``.

    The arguments and errors mirror :class:`~livedata.FileWatcher`. ``parser`` receives a file object over
    the node's bytes (binary, or text decoded with ``encoding``, UTF-8 by default) whose ``name`` is
    ``path``. Until a first version has been parsed, reads raise :class:`WatchedFileNotAvailableError`;
    after that they return the newest good version.

    ``timeout`` (seconds) makes the constructor wait until the node exists and parses, and raise
    :class:`WatchedFileNotAvailableError` when the time runs out. Without a timeout it does not wait for the
    node. Either way, if the client is connected, the constructor waits for the watch's first answer
    (normally one round trip, cut short if the connection drops), so an existing node is readable as soon
    as the constructor returns, as an existing file is.

    ``max_payload_size`` bounds the decoded size of a compressed or chunked node (64 MiB by default): a
    bigger one is refused like unparsable data, before any chunk is read.

    ``trusted_keys`` (base64 Ed25519 public keys; needs ``livedata[signing]``) makes the node require a
    signature, as ``require_signature`` does for the watcher: unsigned data, a bad signature, an untrusted key,
    data signed for another node or a sequence below the last accepted one fail that version like unparsable
    data, and the last good value is kept.

    ``backoff`` and ``check_interval`` are accepted for compatibility with FileWatcher and otherwise unused:
    changes are pushed by the watch, and reads never touch ZooKeeper.

    ``client`` may be connected or not yet (even not yet started): watching begins once it is connected.
    :meth:`close` (or leaving a ``with`` block) stops following changes; the last version remains readable.
    """

    def __init__(
        self,
        client: Any,
        path: str,
        parser: Callable[[IO[Any]], T],
        timeout: float | None = None,
        binary: bool = False,
        encoding: str | None = None,
        newline: str | None = None,
        backoff: float | None = None,
        check_interval: float = 0.0,
        max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE,
        trusted_keys: Sequence[str] | None = None,
    ) -> None:
        self._reader = ContentReader.from_arguments(
            "LiveNode", path, binary, encoding, newline, timeout, backoff, check_interval
        )
        self._client = client
        self._path = path
        self._parser = parser
        self._max_payload_size = max_payload_size
        # With trusted keys, a version is used only if signed as the watcher requires (livedata.signing); the
        # last accepted sequence lives as long as this object.
        self._verifier = (
            Verifier(trusted_keys, lambda _: True, chroot=client.chroot) if trusted_keys is not None else None
        )
        self._state: _State[T] = _State(None, _NOTHING_YET)
        self._lock = threading.Lock()  # guards the two flags below
        self._watch_started = False
        self._closed = False
        self._replied = client.handler.event_object()  # the watch has answered at least once
        self._ready = client.handler.event_object()  # a first good version has been loaded
        self._session: SessionKeeper | None = SessionKeeper.acquire(client)
        client.add_listener(self._on_session_state)
        if client.connected:  # after add_listener, so a connection made in between is not missed
            self._start_watch()
        try:
            if timeout is None:
                self._wait_for_first_reply()
            else:
                self._wait_for_first_load(timeout)
        except BaseException:
            self.close()  # nobody will ever hold this object: stop its watch
            raise

    @property
    def path(self) -> str:
        return self._path

    @property
    def client(self) -> Any:
        return self._client

    def get_data(self) -> T:
        """Return the newest good parsed value."""
        return self._loaded().value

    def get_data_and_mtime(self) -> Tuple[T, float]:
        """Return the value and the znode's mtime (epoch seconds) when that content was written.

        Setting identical bytes again does not move this mtime, so it is a sound cache key for derived data.
        """
        loaded = self._loaded()
        return loaded.value, loaded.mtime

    def close(self) -> None:
        """Stop following changes; the last version stays readable.

        kazoo cannot cancel a DataWatch from outside: ours ignores its next call, which ends it.
        """
        with self._lock:
            self._closed = True
            session, self._session = self._session, None
        self._client.remove_listener(self._on_session_state)
        if session is not None:
            session.release()

    def __enter__(self) -> LiveNode[T]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------------------------

    def _loaded(self) -> _Loaded[T]:
        state = self._state
        if state.loaded is not None:
            return state.loaded
        error = state.error
        if isinstance(error, BaseException):
            raise WatchedFileNotAvailableError(self._path, error) from error
        if error is _NOTHING_YET and not self._client.connected:
            error = "not connected to ZooKeeper"
        raise WatchedFileNotAvailableError(self._path, str(error))

    # --- waiting in the constructor ----------------------------------------------------------------------

    def _wait_for_first_load(self, timeout: float) -> None:
        if not self._ready.wait(timeout):
            self._wait_for_first_reply()  # even timeout=0 gets the answer a connected client has at once
        self._loaded()  # raises with the latest reason when nothing good arrived in time

    def _wait_for_first_reply(self) -> None:
        """Wait for what a connected client answers at once, the counterpart of FileWatcher's first read."""
        replied = self._replied

        def on_state(state: str) -> None:
            if state != KazooState.CONNECTED:
                replied.set()  # the answer now waits for a reconnection: do not wait with it

        self._client.add_listener(on_state)
        try:
            if self._client.connected:
                replied.wait()
        finally:
            self._client.remove_listener(on_state)

    # --- watching ----------------------------------------------------------------------------------------

    def _on_session_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            self._start_watch()

    def _start_watch(self) -> None:
        with self._lock:
            if self._watch_started or self._closed:
                return
            self._watch_started = True
        # From here on DataWatch follows reconnections and session expiry itself.
        self._client.remove_listener(self._on_session_state)
        # Spawned: listeners must not block, and neither should the constructor beyond its timeout.
        self._client.handler.spawn(self._watch)

    def _watch(self) -> None:
        try:
            DataWatch(self._client, self._path, self._on_change)
        except Exception as exc:  # e.g. NoAuthError on the first read; kazoo retries it on reconnection
            logger.error("%s: cannot watch the node: %s: %s", self._path, type(exc).__name__, exc)
            self._state = _State(self._state.loaded, exc)
            self._replied.set()

    def _on_change(self, data: bytes | None, stat: Any, event: Any = None) -> bool | None:
        """DataWatch's function: called with the node's data each time its version moves."""
        if self._closed:
            return False  # the way to tell DataWatch to stop
        try:
            self._state = self._next_state(self._state, data, stat)
            if self._state.loaded is not None:
                self._ready.set()
        except Exception:
            logger.exception("%s: unexpected error while handling a change; keeping the previous state", self._path)
        finally:
            self._replied.set()
        return None

    def _next_state(self, state: _State[T], data: bytes | None, stat: Any) -> _State[T]:
        if stat is None:
            return self._failed(state, NoNodeError("node does not exist"))
        if data is None:
            return self._failed(state, ValueError("node holds no data (null)"))
        try:
            # Retried through a lost connection like DataWatch's own read: it would not call us again for it.
            decoded = self._client.retry(read_decoded, self._client, self._path, self._max_payload_size, data, stat)
        except Exception as exc:  # bad stored data, or the node gone while reading its chunks
            return self._failed(state, exc)
        if self._verifier is not None:
            try:
                self._verifier.check(self._path, decoded.data, decoded.envelope)
            except SignatureRefused as exc:
                return self._failed(state, exc)
        data, stat = decoded.data, decoded.stat
        loaded = state.loaded
        if loaded is not None and data == loaded.content:
            self._log_recovery(state)
            return state if state.error is None else _State(loaded, None)
        try:
            value = self._parser(self._reader.open(data))
        except Exception as exc:
            return self._failed(state, exc)
        self._log_recovery(state)
        return _State(_Loaded(value, stat.mtime / 1000.0, data), None)

    def _failed(self, state: _State[T], exc: BaseException) -> _State[T]:
        if state.loaded is not None:
            logger.warning(
                "%s: cannot load new version (%s: %s); still serving the version with mtime %s",
                self._path,
                type(exc).__name__,
                exc,
                state.loaded.mtime,
            )
        elif isinstance(exc, NoNodeError):
            logger.info("%s: not available yet: the node does not exist", self._path)
        else:
            logger.warning("%s: not available yet: %s: %s", self._path, type(exc).__name__, exc)
        return _State(state.loaded, exc)

    def _log_recovery(self, state: _State[T]) -> None:
        if state.loaded is not None and state.error is not None:
            logger.warning("%s: loadable again after: %s", self._path, state.error)
