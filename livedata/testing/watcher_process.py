"""Running the real ``livedata-watcher`` as a subprocess, for watcher, fault and operations tests.

The daemon monkey-patches the process it runs in, so it always gets a process of its own.
:class:`livedata.testing.running_watcher.RunningWatcher` builds on :class:`WatcherProcess` for applications.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping

from livedata.testing.zookeeper import wait_for


def write_ini(directory: str, settings: Mapping[str, object], name: str = "watcher.ini") -> str:
    """Write ``settings`` as the ``[live-data]`` section of ``directory/name``; return its path."""
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("[live-data]\n")
        f.writelines(f"{key} = {value}\n" for key, value in settings.items())
    return path


def node_settings(name: str, source: str, dest: str, **extra: object) -> dict[str, object]:
    """The ``nodes.<name>.*`` keys mirroring ``source`` into ``dest``, with ``extra`` ones (mode, owner...)."""
    settings: dict[str, object] = {f"nodes.{name}.source": source, f"nodes.{name}.dest": dest}
    settings.update({f"nodes.{name}.{key}": value for key, value in extra.items()})
    return settings


class WatcherProcess:
    """A running ``python -m livedata.watcher``; its stderr goes to a file that tests can wait on."""

    def __init__(
        self, config_path: str, *args: str, env: Mapping[str, str] | None = None, log_dir: str | None = None
    ) -> None:
        fd, self.log_path = tempfile.mkstemp(prefix="livedata-watcher-", suffix=".log", dir=log_dir)
        self._log = os.fdopen(fd, "wb")  # closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "livedata.watcher", config_path, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_for_log(self, text: str, timeout: float = 20.0, count: int = 1) -> None:
        wait_for(lambda: self.output().count(text) >= count, timeout, f"watcher log line {text!r} x{count}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def wait_for_content(path: str, expected: bytes | None, timeout: float = 20.0) -> None:
    """Wait until ``path`` holds exactly ``expected`` (None: until it does not exist)."""
    wait_for(lambda: read_bytes(path) == expected, timeout, f"{path} to hold {expected!r:.60}")


def base_settings(
    server: object, metrics_port: int | None = None, session_timeout: str = "2 seconds", **watcher_options: object
) -> dict[str, object]:
    """The connection settings every watcher test starts from, plus ``watcher.<option>`` values."""
    settings: dict[str, object] = {"zookeeper.hosts": server.address, "zookeeper.timeout": session_timeout}  # type: ignore[attr-defined]
    if metrics_port is not None:
        settings["watcher.metrics_address"] = f"127.0.0.1:{metrics_port}"
    settings.update({f"watcher.{key}": value for key, value in watcher_options.items()})
    return settings
