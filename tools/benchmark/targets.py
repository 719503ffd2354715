"""The implementations under test (ours, and the incumbent as a black box) and how to run their daemons.

Everything about a target that differs between the two lives here: the command that starts its watcher, the
extra configuration it insists on, and where its FileWatcher is imported from. The scenarios only see
:class:`Target` and :class:`Daemon`.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASEPLATE_VERSION = "2.7.1"
BASEPLATE_VENV = os.path.join(REPO, ".bench", "baseplate-venv")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_STOP_GRACE = 10.0


class BenchError(Exception):
    """The benchmark cannot produce a trustworthy figure; the message says what went wrong and where to look."""


@dataclass(frozen=True)
class Node:
    """One znode mirrored into one file: the name is the config key and the dest's basename."""

    name: str
    source: str
    dest: str


@dataclass(frozen=True)
class Target:
    """One implementation: how to start its watcher and where its FileWatcher comes from."""

    name: str
    python: str
    watcher_command: tuple[str, ...]
    file_watcher_module: str
    extra_config: dict[str, str] = field(default_factory=dict)

    def write_config(self, path: str, hosts: str, nodes: Sequence[Node]) -> None:
        lines = ["[live-data]", f"zookeeper.hosts = {hosts}"]
        lines += [f"{key} = {value}" for key, value in self.extra_config.items()]
        for node in nodes:
            lines += [f"nodes.{node.name}.source = {node.source}", f"nodes.{node.name}.dest = {node.dest}"]
            lines.append(f"nodes.{node.name}.mode = 0644")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")


def ours(command: str | None) -> Target:
    """Our daemon: the console script next to this interpreter, unless ``command`` overrides it."""
    if command:
        argv = tuple(shlex.split(command))
    else:
        script = os.path.join(os.path.dirname(sys.executable), "livedata-watcher")
        argv = (script,) if os.access(script, os.X_OK) else (sys.executable, "-m", "livedata.watcher")
    # Heartbeats never fall inside a measurement window; the incumbent's are fixed at the same period.
    extra = {"watcher.heartbeat_interval": "5 minutes"}
    return Target("ours", sys.executable, argv, "livedata.file_watcher", extra)


def baseplate(venv: str, workdir: str) -> Target:
    """The incumbent, installed into its own virtualenv, with the secrets file it refuses to start without."""
    python = ensure_baseplate_venv(venv)
    secrets = os.path.join(workdir, "baseplate-secrets.json")
    with open(secrets, "w") as f:
        json.dump({"secrets": {}}, f)  # it holds no credentials for ZooKeeper; the file just has to parse
    command = (python, "-m", "baseplate.sidecars.live_data_watcher")
    return Target("baseplate", python, command, "baseplate.lib.file_watcher", {"secrets.path": secrets})


def ensure_baseplate_venv(venv: str) -> str:
    """Create the incumbent's virtualenv once; kazoo is pinned to our version so only the products differ."""
    kazoo = importlib.metadata.version("kazoo")
    requirements = [f"baseplate=={BASEPLATE_VERSION}", f"kazoo=={kazoo}"]
    python = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, ".installed")
    wanted = " ".join(requirements)
    if _read_text(stamp) == wanted:
        return python
    print(f"bench: installing {wanted} into {venv} (once)...", file=sys.stderr)
    _run([sys.executable, "-m", "venv", venv])
    _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements])
    with open(stamp, "w") as f:
        f.write(wanted)
    return python


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} failed (exit {result.returncode}):\n{result.stdout[-2000:]}")


class Daemon:
    """One running watcher process; stopped with SIGTERM (then SIGKILL) by :meth:`stop` or on leaving a ``with``."""

    def __init__(self, target: Target, config: str, log: str) -> None:
        self.target = target
        self.log = log
        self.started = time.perf_counter()
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [*target.watcher_command, config], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"the {self.target.name} watcher exited with status {code}; its output:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        with open(self.log, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def rss_mb(self) -> float:
        """Resident memory now, from /proc/PID/status VmRSS."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise BenchError(f"no VmRSS in /proc/{self.pid}/status")

    def cpu_seconds(self) -> float:
        """User plus system CPU time of all the daemon's threads so far, from /proc/PID/stat."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime: fields 14 and 15 of stat(5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=_STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
