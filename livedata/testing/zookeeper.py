"""Real ZooKeeper servers for tests, tools/dev and the benchmark: standalone or a 3-server ensemble on loopback.

Servers are Debian's ``zookeeper`` package run directly with java, each in its
own temporary directory on free ports, so tests never depend on (or disturb)
a system-wide ZooKeeper.  Faults are injected on the real processes: stop,
SIGKILL, SIGSTOP/SIGCONT.

Nothing here sleeps to synchronise: :func:`wait_for` polls a condition until a
deadline and fails with a message that says what never happened.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Callable, TypeVar

JAVA = shutil.which("java") or "/usr/bin/java"
# Debian's zookeeper.jar manifest leaves out netty-codec (the Netty connection factory, used for TLS client
# ports, needs it) and binds no slf4j backend (so servers would log nothing); both jars come with the package.
CLASSPATH = ":".join(
    [
        "/etc/zookeeper/conf",
        "/usr/share/java/zookeeper.jar",
        "/usr/share/java/netty-codec.jar",
        "/usr/share/java/slf4j-simple.jar",
    ]
)
MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
TICK_MS = 200  # sessions may be negotiated from 2 ticks (0.4 s) up to maxSessionTimeout

T = TypeVar("T")


class ZooKeeperNotInstalledError(RuntimeError):
    """Java or Debian's ZooKeeper jar, which the launcher runs, is not on this machine."""


def require_installed() -> None:
    """Raise :class:`ZooKeeperNotInstalledError` naming what is missing, before any server is started."""
    missing = [path for path in (JAVA, "/usr/share/java/zookeeper.jar") if not os.path.exists(path)]
    if missing:
        raise ZooKeeperNotInstalledError(
            f"{', '.join(missing)} not found: throwaway ZooKeeper servers run Debian's zookeeper package"
            " (apt-get install zookeeper default-jre-headless)"
        )


class ConditionTimeout(AssertionError):
    """A waited-for condition did not become true before its deadline."""


def wait_for(
    predicate: Callable[[], T | None], timeout: float = 10.0, message: str = "condition", interval: float = 0.005
) -> T:
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` passes (raises).

    Exceptions from the predicate count as "not yet": a file that does not
    exist yet, a server still refusing connections.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:
            last_error = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise ConditionTimeout(f"timed out after {timeout:.1f}s waiting for {message}{detail}")
        time.sleep(interval)


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out and that nothing listens on; held open together so they differ."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def four_letter_word(port: int, command: str, timeout: float = 1.0) -> str:
    """Send a ZooKeeper admin command (``srvr``, ``ruok``...) and return the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(command.encode())
        chunks = []
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def server_mode(port: int) -> str | None:
    """``standalone``, ``leader``, ``follower``, ``read-only``, or None when not serving."""
    try:
        answer = four_letter_word(port, "srvr")
    except OSError:
        return None
    for line in answer.splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return None


@dataclass
class ZooKeeperServer:
    """One ZooKeeper server process. Create through :func:`start_standalone` or :class:`Ensemble`."""

    directory: str
    client_port: int
    server_id: int = 0
    peers: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # id -> (peer, election, client) ports
    observer_ids: frozenset[int] = frozenset()  # peers that are observers: they serve clients but never vote
    extra_config: dict[str, str] = field(default_factory=dict)
    java_properties: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def config_path(self) -> str:
        return os.path.join(self.directory, "zoo.cfg")

    def write_config(self) -> None:
        data_dir = os.path.join(self.directory, "data")
        os.makedirs(data_dir, exist_ok=True)
        settings = {
            "tickTime": str(TICK_MS),
            "initLimit": "25",
            "syncLimit": "10",
            "minSessionTimeout": str(2 * TICK_MS),
            "maxSessionTimeout": "60000",
            "dataDir": data_dir,
            "clientPort": str(self.client_port),
            "clientPortAddress": "127.0.0.1",
            "admin.enableServer": "false",
            "4lw.commands.whitelist": "*",
            "forceSync": "no",
            "preAllocSize": "1024",
            "maxClientCnxns": "0",
        }
        for peer_id, (peer_port, election_port, _) in sorted(self.peers.items()):
            role = ":observer" if peer_id in self.observer_ids else ""
            settings[f"server.{peer_id}"] = f"127.0.0.1:{peer_port}:{election_port}{role}"
        if self.server_id in self.observer_ids:
            settings["peerType"] = "observer"
        settings.update(self.extra_config)
        with open(self.config_path, "w") as f:
            f.writelines(f"{key}={value}\n" for key, value in settings.items())
        if self.peers:
            with open(os.path.join(data_dir, "myid"), "w") as f:
                f.write(f"{self.server_id}\n")

    def start(self, wait: bool = True, timeout: float = 30.0) -> None:
        """Start the JVM (again); with ``wait``, until it answers ``srvr`` as a serving member."""
        assert self.process is None, "server already running"
        require_installed()
        self.write_config()
        properties = {
            "zookeeper.jmx.log4j.disable": "true",
            "org.slf4j.simpleLogger.defaultLogLevel": "warn",  # server.log keeps what explains a failure
            **self.java_properties,
        }
        command = [
            JAVA,
            "-Xms32m", "-Xmx1g", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto",
            *(f"-D{key}={value}" for key, value in properties.items()),
            "-cp", CLASSPATH, MAIN_CLASS, self.config_path,
        ]  # fmt: skip
        log = open(os.path.join(self.directory, "server.log"), "ab")  # noqa: SIM115 - owned by the child
        try:
            # A session of its own: a Ctrl-C meant for the test run or tools/dev must not kill the server
            # before its clients have closed their sessions.
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        finally:
            log.close()
        if wait:
            self.wait_serving(timeout)

    def wait_serving(self, timeout: float = 30.0) -> str:
        def serving() -> str | None:
            if self.process is not None and self.process.poll() is not None:
                raise ConditionTimeout(f"ZooKeeper on port {self.client_port} exited: see {self.directory}/server.log")
            return server_mode(self.client_port)

        return wait_for(serving, timeout, f"ZooKeeper on port {self.client_port} to serve", interval=0.02)

    def mode(self) -> str | None:
        return server_mode(self.client_port)

    def stop(self) -> None:
        """Graceful stop (SIGTERM), then SIGKILL if it lingers."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def _end(self, sig: int) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if self.paused:
            process.send_signal(signal.SIGCONT)
            self.paused = False
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.paused = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def start_standalone(
    directory: str | None = None,
    extra_config: dict[str, str] | None = None,
    java_properties: dict[str, str] | None = None,
) -> ZooKeeperServer:
    directory = directory or tempfile.mkdtemp(prefix="livedata-zk-")
    (port,) = free_ports(1)
    server = ZooKeeperServer(
        directory=directory,
        client_port=port,
        extra_config=dict(extra_config or {}),
        java_properties=dict(java_properties or {}),
    )
    server.start()
    return server


class Ensemble:
    """Three (or more) voting servers forming one quorum on loopback, plus ``observers`` non-voting ones.

    Observers follow the leader like followers do and serve clients (reads and watches) the same way, but
    take no part in elections or write quorums: they are how ZooKeeper scales to many readers without
    slowing writes.  ``extra_config`` goes into every server's zoo.cfg (e.g. ``{"maxClientCnxns": "60"}``).
    """

    def __init__(
        self,
        size: int = 3,
        directory: str | None = None,
        java_properties: dict[str, str] | None = None,
        observers: int = 0,
        extra_config: dict[str, str] | None = None,
    ):
        self.directory = directory or tempfile.mkdtemp(prefix="livedata-ensemble-")
        total = size + observers
        ports = free_ports(3 * total)
        peers = {i + 1: (ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]) for i in range(total)}
        observer_ids = frozenset(range(size + 1, total + 1))
        self.servers = [
            ZooKeeperServer(
                directory=os.path.join(self.directory, f"server{server_id}"),
                client_port=client_port,
                server_id=server_id,
                peers=peers,
                observer_ids=observer_ids,
                extra_config=dict(extra_config or {}),
                java_properties=dict(java_properties or {}),
            )
            for server_id, (_, _, client_port) in peers.items()
        ]

    @property
    def voters(self) -> list[ZooKeeperServer]:
        return [server for server in self.servers if server.server_id not in server.observer_ids]

    @property
    def observers(self) -> list[ZooKeeperServer]:
        return [server for server in self.servers if server.server_id in server.observer_ids]

    @property
    def observer_hosts(self) -> str:
        """The connection string of the observers alone, for clients that must never load the voters."""
        return ",".join(server.address for server in self.observers)

    @property
    def hosts(self) -> str:
        return ",".join(server.address for server in self.servers)

    def start(self, timeout: float = 60.0) -> None:
        for server in self.servers:
            os.makedirs(server.directory, exist_ok=True)
            server.start(wait=False)
        for server in self.servers:
            server.wait_serving(timeout)

    def leader(self) -> ZooKeeperServer:
        return wait_for(
            lambda: next((s for s in self.servers if s.running and s.mode() == "leader"), None),
            30.0,
            "the ensemble to elect a leader",
        )

    def server_for_port(self, port: int) -> ZooKeeperServer:
        return next(s for s in self.servers if s.client_port == port)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def stop_all(servers: Iterable[ZooKeeperServer]) -> None:
    for server in servers:
        server.stop()
