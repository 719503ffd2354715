"""The real ``livedata-watcher`` for an application's tests: its own configuration in a directory of the test's.

The daemon is a gevent program that monkey-patches the process it runs in, so it always runs in a process of
its own (a :class:`~livedata.testing.watcher_process.WatcherProcess`): patching the test runner, or running
the daemon unpatched inside it, would test something other than what runs in production. What this adds:
a configuration written from a few arguments, readiness told over the systemd notify protocol (no log
wording is relied on), and :meth:`RunningWatcher.wait_synced`, which compares the files with ZooKeeper.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Mapping
from typing import Any, Union

from livedata.testing.watcher_process import WatcherProcess, node_settings, read_bytes, write_ini
from livedata.testing.zookeeper import ConditionTimeout, wait_for

__all__ = ["NodeSpec", "RunningWatcher"]

# A node given to RunningWatcher: its source path, or every nodes.<name>.* setting (source required).
# A tree likewise, with the trees.<name>.* settings (format: directory or json).
NodeSpec = Union[str, Mapping[str, object]]


class RunningWatcher:
    """A ``livedata-watcher`` mirroring ``nodes`` and ``trees`` from ``hosts`` into files under ``directory``.

    Each node's file (each tree's directory, or JSON file with ``format: json``) is ``directory/<name>``
    unless its settings give a ``dest``. ``settings`` adds any other ``[live-data]`` key
    (``watcher.heartbeat_interval``...). The watcher is started at once; see :meth:`wait_ready` and
    :meth:`wait_synced`, and call :meth:`stop` when done (the pytest fixture does).
    """

    def __init__(
        self,
        hosts: str,
        nodes: Mapping[str, NodeSpec] | None,
        directory: str,
        settings: Mapping[str, object] | None = None,
        session_timeout: str = "5 seconds",
        trees: Mapping[str, NodeSpec] | None = None,
    ) -> None:
        nodes, trees = nodes or {}, trees or {}
        if not nodes and not trees and not any(str(key).startswith(("nodes.", "trees.")) for key in settings or {}):
            raise ValueError(
                "RunningWatcher: give at least one node or tree to mirror, e.g. nodes={'flags': '/flags'} "
                "or trees={'web': '/web'}"
            )
        self.hosts = hosts
        self.directory = directory
        ini: dict[str, object] = {"zookeeper.hosts": hosts, "zookeeper.timeout": session_timeout}
        self.sources: dict[str, str] = {}
        self.paths: dict[str, str] = {}
        self.tree_formats: dict[str, str] = {}  # name -> format, for the trees among sources and paths
        for kind, items in (("node", nodes), ("tree", trees)):
            for name, spec in items.items():
                options = {"source": spec} if isinstance(spec, str) else dict(spec)
                if "source" not in options:
                    raise ValueError(f"RunningWatcher: {kind} {name!r} needs a 'source' (its znode path)")
                options.setdefault("dest", os.path.join(directory, name))
                self.sources[name] = str(options["source"])
                self.paths[name] = str(options["dest"])
                settings_of = node_settings(name, str(options.pop("source")), str(options.pop("dest")), **options)
                if kind == "tree":
                    self.tree_formats[name] = str(options.get("format", "directory"))
                    settings_of = {f"trees.{key[len('nodes.'):]}": value for key, value in settings_of.items()}
                ini.update(settings_of)
        ini.update(settings or {})
        self.config_path = write_ini(directory, ini, "livedata-watcher.ini")
        # The stand-in for systemd: the daemon sends READY=1 once every node was written or failed once.
        self._notify_name = f"@livedata-testing-{uuid.uuid4().hex}"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._notify.bind("\0" + self._notify_name[1:])
        self._ready = False
        self.process = WatcherProcess(self.config_path, env={"NOTIFY_SOCKET": self._notify_name}, log_dir=directory)

    def dest(self, name: str) -> str:
        """The file the watcher keeps ``nodes[name]`` in (for a tree: its directory, or its JSON file)."""
        return self.paths[name]

    def output(self) -> str:
        """Everything the watcher logged so far."""
        return self.process.output()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the daemon says it is ready: each node written (or its failure logged) once."""
        deadline = time.monotonic() + timeout
        while not self._ready:
            self._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConditionTimeout(f"livedata-watcher not ready after {timeout:.1f}s; its log:\n{self.output()}")
            self._notify.settimeout(min(remaining, 0.2))
            try:
                message = self._notify.recv(65536).decode(errors="replace")
            except (socket.timeout, TimeoutError):
                continue
            self._ready = "READY=1" in message.splitlines()

    def wait_synced(self, timeout: float = 30.0) -> None:
        """Wait until every file holds exactly its node's data as ZooKeeper has it now (no file: no node).

        A tree's dest must hold each child's data (no children, or no node: an empty or absent dest).
        Call it after changing nodes to know the change has reached the files.
        """
        from kazoo.client import KazooClient  # the kit imports kazoo only where it is needed

        deadline = time.monotonic() + timeout
        self.wait_ready(timeout)
        client = KazooClient(hosts=self.hosts, timeout=10.0)
        client.start(timeout=max(deadline - time.monotonic(), 1.0))
        try:

            def synced_or_dead() -> bool:
                return not self.process.alive() or all(self._synced(client, name) for name in self.sources)

            try:
                wait_for(synced_or_dead, max(deadline - time.monotonic(), 0.0), "the files to match ZooKeeper")
            except ConditionTimeout as e:
                raise ConditionTimeout(f"{e}; the watcher's log:\n{self.output()}") from None
            self._check_alive()
        finally:
            client.stop()
            client.close()

    def stop(self, timeout: float = 10.0) -> int:
        """Stop the daemon (SIGTERM) and return its exit status (0 on a clean stop)."""
        self._notify.close()
        return self.process.stop(timeout)

    def _synced(self, client: Any, name: str) -> bool:
        source, dest = self.sources[name], self.paths[name]
        if name not in self.tree_formats:
            return read_bytes(dest) == _node_data(client, source)
        wanted = _children_data(client, source) or {}
        if self.tree_formats[name] == "json":
            text = read_bytes(dest)
            return wanted == {} if text is None else json.loads(text) == _texts(wanted)
        return _directory_tree(dest) == wanted

    def _check_alive(self) -> None:
        if not self.process.alive():
            raise ConditionTimeout(
                f"livedata-watcher exited with status {self.process.process.returncode}; its log:\n{self.output()}"
            )


def _node_data(client: Any, path: str) -> bytes | None:
    from kazoo.exceptions import NoNodeError

    try:
        data: bytes = client.get(path)[0]
    except NoNodeError:
        return None
    return data


def _children_data(client: Any, path: str) -> dict[str, bytes] | None:
    """A tree's children and their data in ZooKeeper; None when the tree's node does not exist."""
    from kazoo.exceptions import NoNodeError

    try:
        names = client.get_children(path)
    except NoNodeError:
        return None
    children = {name: _node_data(client, f"{path}/{name}") for name in names}
    return {name: data for name, data in children.items() if data is not None}  # gone while listing: not there


def _texts(children: dict[str, bytes]) -> dict[str, str]:
    return {name: data.decode("utf-8", "replace") for name, data in children.items()}


def _directory_tree(dest: str) -> dict[str, bytes]:
    """The current snapshot of a ``directory`` tree (through ``..data``, as readers should); none: empty."""
    snapshot = os.path.join(dest, "..data")
    try:
        names = os.listdir(snapshot)
    except OSError:
        return {}
    children = {name: read_bytes(os.path.join(snapshot, name)) for name in names}
    return {name: data for name, data in children.items() if data is not None}
