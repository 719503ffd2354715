"""Logging for livedata's commands: levels, the journal, and kazoo's repetitive connection messages.

Under systemd, stderr goes to the journal, which stamps every line itself and
files it by priority only when the line starts with ``<N>`` (sd-daemon(3)).
So when stderr is the journal (``JOURNAL_STREAM`` names the same file as
stderr, see systemd.exec(5)) lines carry a ``<N>`` prefix and no timestamp;
``journalctl -p err`` then filters, and times are not doubled.  Anywhere
else lines start with a timestamp, for humans and plain log files.

kazoo's connection routine logs every failed attempt (``Connection dropped:
socket connection error: Connection refused``) every few seconds for as long
as ZooKeeper is unreachable.  :class:`KazooNoise` shows each distinct kazoo
message once per :data:`REPEAT_WINDOW` and tells livedata's own connection log
(:mod:`livedata.connection_log`) which server was tried and why it failed, so
livedata can say so in its own words.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable, TextIO

LEVELS = ("debug", "info", "warning", "error")
REPEAT_WINDOW = 600.0  # seconds during which a repeated kazoo message is not shown again
KAZOO_LOGGERS = ("kazoo.client", "kazoo.protocol.connection")

# syslog priorities (sd-daemon(3)): what journalctl -p filters on.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def journal_priority(levelno: int) -> int:
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return 7


class JournalFormatter(logging.Formatter):
    """``<N>name: message``: the journal adds the time and reads the priority from the prefix."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{journal_priority(record.levelno)}>"
        # A multi-line message (a traceback) keeps its priority on every line the journal stores.
        return "\n".join(prefix + line for line in text.split("\n"))


def logs_to_journal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """True when ``stream`` is the journal stream systemd connected us to (not merely inherited by a child)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Configure the root logger for a command; ``level`` is one of :data:`LEVELS`."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if logs_to_journal(stream):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    debug = level == "debug"
    NOISE.show_info, NOISE.window = (True, 0.0) if debug else (False, REPEAT_WINDOW)
    for name in KAZOO_LOGGERS:
        kazoo = logging.getLogger(name)
        # INFO is let through to the filter (it learns which server is tried from it) but not shown.
        kazoo.setLevel(logging.DEBUG if debug else logging.INFO)
        if NOISE not in kazoo.filters:
            kazoo.addFilter(NOISE)


class KazooNoise(logging.Filter):
    """Show a kazoo message once per window; report connection attempts and failures to a listener."""

    def __init__(self, show_info: bool = False, window: float = REPEAT_WINDOW) -> None:
        super().__init__()
        self.show_info = show_info
        self.window = window
        self.silenced = False
        self.last_shown: dict[str, float] = {}
        self.on_attempt: Callable[[str], None] | None = None  # called with "host:port" before each attempt
        self.on_failure: Callable[[str], None] | None = None  # called with kazoo's reason after a failed one

    def filter(self, record: logging.LogRecord) -> bool:
        self._notify(record)
        if self.silenced:
            return False
        if record.levelno < logging.WARNING and not self.show_info:
            return False
        message = record.getMessage()
        now = time.monotonic()
        shown = self.last_shown.get(message)
        if shown is not None and now - shown < self.window:
            return False
        self.last_shown[message] = now
        if len(self.last_shown) > 100:  # bounded: messages with changing details must not grow it forever
            self.last_shown = {message: now}
        return True

    def _notify(self, record: logging.LogRecord) -> None:
        if not isinstance(record.msg, str):
            return
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg.startswith("Connecting to ") and len(args) >= 3 and self.on_attempt is not None:
            self.on_attempt(_address(str(args[0]), str(args[2])))
        elif self.on_failure is not None and record.msg.startswith(
            ("Connection dropped", "Connection time-out", "Cannot resolve")
        ):
            self.on_failure(record.getMessage())

    def silence(self) -> None:
        """Drop every kazoo message from now on: after SIGTERM its retry-policy complaint is only noise."""
        self.silenced = True


def kazoo_reason(reason: str | None) -> str:
    """kazoo's wording without its prefixes: 'Connection dropped: socket connection error: X' -> 'X'."""
    text = reason or "unknown reason"
    for prefix in ("Connection dropped: ", "socket connection error: ", "Connection time-out: "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text


def _address(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


NOISE = KazooNoise()
"""The filter installed by :func:`setup_logging`; :mod:`livedata.connection_log` listens to it."""


def silence_kazoo() -> None:
    """Called when stopping: kazoo's complaints about a retry policy we interrupted help no one."""
    NOISE.silence()
