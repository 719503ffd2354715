"""Fault injection against real ZooKeeper servers: each test breaks something, then every file must equal its node.

The watcher runs as a real subprocess; servers are real JVMs that get stopped, killed and frozen. Which server the
watcher talks to, and whether the server still holds its session, are read from the outside (``/proc`` and the
``cons`` admin command), so nothing here depends on log wording for synchronisation more than it must.
"""
from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence

import pytest
from kazoo.client import KazooClient
from kazoo.retry import KazooRetry

from livedata import files
from livedata.testing.watcher_process import WatcherProcess, node_settings, read_bytes, wait_for_content, write_ini
from livedata.testing.zookeeper import Ensemble, ZooKeeperServer, four_letter_word, wait_for
from tests.conftest import make_client

pytestmark = pytest.mark.timeout(90)

SESSION_TIMEOUT = 3.0  # seconds; short so that expiry and failover happen within a test's budget


# --- helpers -----------------------------------------------------------------------------------------------------




def settings_for(hosts: str, timeout: float = SESSION_TIMEOUT, **watcher_options: object) -> dict:
    settings: dict = {"zookeeper.hosts": hosts, "zookeeper.timeout": f"{timeout} seconds"}
    settings.update({f"watcher.{key}": value for key, value in watcher_options.items()})
    return settings


def add_nodes(settings: dict, sources: Sequence[str], directory: str) -> dict[str, str]:
    """Configure one node per source (dest ``directory/<basename>``); returns source -> dest."""
    dests = {}
    for source in sources:
        name = source.rsplit("/", 1)[1]
        dests[source] = f"{directory}/{name}"
        settings.update(node_settings(name, source, dests[source], mode="0644"))
    return dests


def files_match(client: KazooClient, dests: dict[str, str]) -> bool:
    """Every dest holds exactly its node's data (an absent node: no file)."""
    for source, dest in dests.items():
        stat = client.exists(source)
        expected = None if stat is None else (client.get(source)[0] or b"")
        if read_bytes(dest) != expected:
            return False
    return True


def add_tree(settings: dict, source: str, dest: str) -> None:
    settings.update({"trees.tree.source": source, "trees.tree.dest": dest})


def tree_matches(client: KazooClient, source: str, dest: str) -> bool:
    """The tree's current snapshot holds exactly the source's children (none when the source is missing)."""
    names = client.get_children(source) if client.exists(source) else []
    wanted = {name: client.get(f"{source}/{name}")[0] or b"" for name in names}
    try:
        current = os.path.join(dest, os.readlink(os.path.join(dest, "..data")))
        held = {name: read_bytes(os.path.join(current, name)) for name in os.listdir(current)}
    except OSError:
        return False
    return held == wanted


def tree_state(dest: str) -> tuple[str, dict[str, bytes | None]]:
    current = os.readlink(os.path.join(dest, "..data"))
    directory = os.path.join(dest, current)
    return current, {name: read_bytes(os.path.join(directory, name)) for name in sorted(os.listdir(directory))}


def newest_write_seen(dests: dict[str, str]) -> int:
    """The highest write number (see :class:`Writer`) found in any dest."""
    numbers = [int(content.rsplit(b" ", 1)[1]) for content in map(read_bytes, dests.values())
               if content and b" write " in content]  # fmt: skip
    return max(numbers, default=-1)


def temp_files(directory: str) -> list[str]:
    return [name for name in os.listdir(directory) if files.is_temp_name(name)]


def tcp_connections(pid: int) -> list[tuple[int, int]]:
    """(local port, remote port) of every established TCP connection of process ``pid``, from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    connections = []
    with open(f"/proc/{pid}/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state == "01" and inode in inodes:  # 01: ESTABLISHED
                connections.append((int(local.split(":")[1], 16), int(remote.split(":")[1], 16)))
    return connections


def server_port_of(pid: int, ports: Sequence[int]) -> int | None:
    """The client port of the server the process is connected to, if any."""
    return next((remote for _, remote in tcp_connections(pid) if remote in ports), None)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def mtime(path: str) -> int:
    return os.stat(path).st_mtime_ns


def wait_for_heartbeats(path: str, count: int, timeout: float = 15.0) -> None:
    """Wait until the file's mtime has advanced ``count`` times (each advance is one heartbeat)."""
    for _ in range(count):
        before = mtime(path)
        wait_for(lambda before=before: mtime(path) > before, timeout, f"a heartbeat to touch {path}")


class Writer(threading.Thread):
    """Keeps setting the given nodes, round robin, through failovers (a write that fails is retried)."""

    def __init__(self, client: KazooClient, paths: Sequence[str]) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.paths = list(paths)
        self.writes = 0
        self.last_write = 0.0
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._retry = KazooRetry(max_tries=-1, delay=0.05, max_delay=0.5, deadline=60, ignore_expire=False)

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                path = self.paths[self.writes % len(self.paths)]
                self._retry(self.client.set, path, f"{path} write {self.writes}".encode())
                self.writes += 1
                self.last_write = time.monotonic()
        except BaseException as e:  # surfaced by stop()
            self.error = e

    def wait_for_progress(self, writes: int, timeout: float = 30.0) -> None:
        target = self.writes + writes
        wait_for(lambda: self.writes >= target or self.error, timeout, f"{writes} more writes")
        assert self.error is None, self.error

    def stop(self) -> None:
        self._stopping.set()
        self.join(60)
        assert self.error is None, self.error


def seed(hosts: str, nodes: dict[str, bytes]) -> None:
    """Create the nodes a test starts from, with a short-lived client of its own."""
    admin = make_client(hosts)
    try:
        for path, data in nodes.items():
            admin.create(path, data, makepath=True)
    finally:
        admin.stop()
        admin.close()


# --- 1. failover -------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_failover_keeps_every_file_converging(zk_ensemble: Ensemble, workdir: str, start_watcher) -> None:
    ports = [server.client_port for server in zk_ensemble.servers]
    admin = make_client(zk_ensemble.hosts)
    try:
        sources = [f"/failover/n{i}" for i in range(40)]
        for source in sources:
            admin.create(source, b"initial", makepath=True)
        settings = settings_for(zk_ensemble.hosts)
        dests = add_nodes(settings, sources, f"{workdir}/out")
        watcher = start_watcher(settings)
        wait_for(lambda: files_match(admin, dests), 20, "the initial sync")

        writer = Writer(admin, sources)
        writer.start()
        writer.wait_for_progress(50)
        first = zk_ensemble.server_for_port(wait_for(lambda: server_port_of(watcher.pid, ports), 10, "a connection"))
        first.stop()
        wait_for(lambda: server_port_of(watcher.pid, ports) not in (None, first.client_port), 20, "a failover")
        writes_so_far = writer.writes
        wait_for(lambda: newest_write_seen(dests) > writes_so_far, 20, "updates through the new server")

        first.start()  # back as a follower, so that the quorum survives losing the leader next
        leader = zk_ensemble.leader()
        leader.kill()
        wait_for(lambda: server_port_of(watcher.pid, ports) not in (None, leader.client_port), 30, "a failover")
        writes_so_far = writer.writes
        wait_for(lambda: newest_write_seen(dests) > writes_so_far, 20, "updates after the leader was lost")
        writer.stop()

        deadline = writer.last_write + SESSION_TIMEOUT + 1.0
        wait_for(lambda: files_match(admin, dests), max(deadline - time.monotonic(), 0.1), "files to converge")
        assert watcher.alive()
        assert temp_files(f"{workdir}/out") == []
    finally:
        admin.stop()
        admin.close()


# --- 2. full outage ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_full_outage_keeps_files_and_recovers(zk_ensemble: Ensemble, workdir: str, start_watcher) -> None:
    sources = [f"/outage/n{i}" for i in range(5)]
    children = {f"/outage/tree/c{i}": f"child {i}".encode() for i in range(3)}
    seed(zk_ensemble.hosts, {**{source: f"before {source}".encode() for source in sources}, **children})
    settings = settings_for(zk_ensemble.hosts, heartbeat_interval="300 milliseconds")
    dests = add_nodes(settings, sources, workdir)
    tree = f"{workdir}/tree"
    add_tree(settings, "/outage/tree", tree)
    watcher = start_watcher(settings)
    for source, dest in dests.items():
        wait_for_content(dest, f"before {source}".encode())
    wait_for(lambda: tree_state(tree)[1] == {"c0": b"child 0", "c1": b"child 1", "c2": b"child 2"}, 20, "the tree")
    wait_for_heartbeats(dests[sources[0]], 1)

    for server in zk_ensemble.servers:
        server.stop()
    watcher.wait_for_log("heartbeat withheld")
    snapshot = {dest: (read_bytes(dest), os.stat(dest).st_ino, mtime(dest)) for dest in dests.values()}
    tree_before = tree_state(tree)
    outage_end = time.monotonic() + 2 * SESSION_TIMEOUT  # longer than the session timeout
    while time.monotonic() < outage_end:  # watch the files through the whole outage, not only at its end
        for dest, (content, inode, modified) in snapshot.items():
            assert (read_bytes(dest), os.stat(dest).st_ino, mtime(dest)) == (content, inode, modified), dest
        assert tree_state(tree) == tree_before, "the tree's snapshot must stay as it was"
        assert watcher.alive()
    assert temp_files(workdir) == []

    for server in zk_ensemble.servers:
        server.start(wait=False)
    for server in zk_ensemble.servers:
        server.wait_serving()
    admin = make_client(zk_ensemble.hosts)
    try:
        admin.set(sources[0], b"changed after the outage")
        admin.delete(sources[1])
        admin.create(sources[1], b"re-created after the outage")
        admin.delete(sources[2])
        admin.set("/outage/tree/c0", b"changed after the outage")
        admin.delete("/outage/tree/c1")
        admin.create("/outage/tree/c3", b"created after the outage")
        wait_for(lambda: files_match(admin, dests), 30, "changes made after the return")
        wait_for(lambda: tree_matches(admin, "/outage/tree", tree), 30, "the tree's changes after the return")
        wait_for_heartbeats(dests[sources[3]], 2)
        assert watcher.alive()
    finally:
        admin.stop()
        admin.close()


# --- 3. session expiry while frozen ------------------------------------------------------------------------------


def connections_to(server: ZooKeeperServer) -> str:
    return four_letter_word(server.client_port, "cons")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_session_expiry_while_frozen(private_zk_server: ZooKeeperServer, workdir: str, start_watcher) -> None:
    admin = make_client(private_zk_server.address)
    try:
        sources = ["/frozen/changed", "/frozen/deleted", "/frozen/created", "/frozen/steady"]
        for source in sources:
            if source != "/frozen/created":
                admin.create(source, f"before {source}".encode(), makepath=True)
        admin.create("/frozen/tree/kept", b"kept", makepath=True)
        admin.create("/frozen/tree/changed", b"before")
        settings = settings_for(private_zk_server.address, timeout=2.0, heartbeat_interval="300 milliseconds")
        dests = add_nodes(settings, sources, workdir)
        tree = f"{workdir}/tree"
        add_tree(settings, "/frozen/tree", tree)
        watcher = start_watcher(settings)
        wait_for(lambda: files_match(admin, dests), 20, "the initial sync")
        wait_for(lambda: tree_matches(admin, "/frozen/tree", tree), 20, "the tree's initial sync")
        local_port = wait_for(lambda: tcp_connections(watcher.pid)[0][0], 10, "the watcher's connection")
        assert f":{local_port}[" in connections_to(private_zk_server)

        watcher.signal(signal.SIGSTOP)
        admin.set("/frozen/changed", b"changed while frozen")
        admin.delete("/frozen/deleted")
        admin.create("/frozen/created", b"created while frozen")
        admin.set("/frozen/tree/changed", b"changed while frozen")
        admin.create("/frozen/tree/new", b"created while frozen")
        # The server expires the session and closes its connection: from then on the old session is gone.
        wait_for(lambda: f":{local_port}[" not in connections_to(private_zk_server), 20, "the session to expire")

        resumed_cpu, resumed_at = cpu_seconds(watcher.pid), time.monotonic()
        watcher.signal(signal.SIGCONT)
        wait_for(lambda: files_match(admin, dests), 20, "catching up after the expiry")
        wait_for(lambda: tree_matches(admin, "/frozen/tree", tree), 20, "the tree catching up after the expiry")
        for source in sources:  # every watch was re-established on the new session
            if admin.exists(source):
                admin.set(source, f"after the expiry {source}".encode())
        admin.set("/frozen/tree/kept", b"after the expiry")  # the children's watches too
        admin.delete("/frozen/tree/new")  # and the listing's
        wait_for(lambda: files_match(admin, dests), 20, "changes after the expiry")
        wait_for(lambda: tree_matches(admin, "/frozen/tree", tree), 20, "the tree's changes after the expiry")
        wait_for_heartbeats(dests["/frozen/steady"], 3)
        wait_for(lambda: time.monotonic() - resumed_at >= 3.0, 10, "a few seconds of measurement")  # not a sync

        used = (cpu_seconds(watcher.pid) - resumed_cpu) / (time.monotonic() - resumed_at)
        assert used < 0.5, f"the watcher used {used:.0%} of a core after the stall: spinning?"
        assert watcher.alive()
    finally:
        admin.stop()
        admin.close()


# --- 4. read-only server -----------------------------------------------------------------------------------------


@pytest.fixture
def read_only_ensemble() -> Iterator[Ensemble]:
    """Servers that keep serving reads when cut off from the quorum.

    Since ZooKeeper 3.6.2 a read-only server only accepts *local* sessions, so
    ``localSessionsEnabled`` is needed besides ``readonlymode.enabled``.
    """
    ensemble = Ensemble(3, java_properties={"readonlymode.enabled": "true"})
    for server in ensemble.servers:
        server.extra_config.update({"localSessionsEnabled": "true", "localSessionsUpgradingEnabled": "true"})
    ensemble.start()
    yield ensemble
    ensemble.cleanup()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_read_only_server_keeps_the_watcher_serving(read_only_ensemble: Ensemble, workdir: str, start_watcher) -> None:
    ensemble = read_only_ensemble
    ports = [server.client_port for server in ensemble.servers]
    sources = [f"/readonly/n{i}" for i in range(3)]
    seed(ensemble.hosts, {source: f"value of {source}".encode() for source in sources})
    settings = settings_for(ensemble.hosts, heartbeat_interval="300 milliseconds")
    dests = add_nodes(settings, sources, f"{workdir}/first")
    watcher = start_watcher(settings)
    for source, dest in dests.items():
        wait_for_content(dest, f"value of {source}".encode())

    # Stop the watcher's own server and one more: it has to move to the survivor, which turns read-only.
    own = ensemble.server_for_port(wait_for(lambda: server_port_of(watcher.pid, ports), 10, "a connection"))
    survivor = next(server for server in ensemble.servers if server is not own)
    for server in ensemble.servers:
        if server is not survivor:
            server.stop()
    wait_for(lambda: survivor.mode() == "read-only", 30, "the survivor to serve read-only")
    wait_for(lambda: server_port_of(watcher.pid, ports) == survivor.client_port, 30, "the watcher to reconnect")
    wait_for_heartbeats(dests[sources[0]], 2)

    late_settings = settings_for(survivor.address)  # a watcher started during the partition syncs as well
    late_dests = add_nodes(late_settings, sources, f"{workdir}/late")
    start_watcher(late_settings, name="late.ini")
    for source, dest in late_dests.items():
        wait_for_content(dest, f"value of {source}".encode())
    assert all(read_bytes(dest) == f"value of {source}".encode() for source, dest in dests.items())

    for server in ensemble.servers:
        if server is not survivor:
            server.start(wait=False)
    admin = make_client(ensemble.hosts)
    try:
        wait_for(lambda: survivor.mode() in ("leader", "follower"), 60, "the quorum to return")
        admin.set(sources[0], b"written after the partition healed")
        wait_for(lambda: files_match(admin, dests), 30, "the first watcher to follow the healed ensemble")
        assert watcher.alive()
    finally:
        admin.stop()
        admin.close()


# --- 5. crash safety ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkill_at_random_moments_never_exposes_a_partial_file(
    zk_server: ZooKeeperServer, zk: KazooClient, zk_path: str, workdir: str
) -> None:
    count = 20  # more than one inline batch, so both the per-file fsync and the syncfs paths get killed
    sources = [f"{zk_path}/n{i}" for i in range(count)]
    valid: dict[str, set[bytes]] = {source: set() for source in sources}

    def value(source: str, sequence: int) -> bytes:
        size = random.randint(1, 64 * 1024)
        return (f"{source} #{sequence}|".encode() * (size // 16 + 1))[:size]  # never empty, sizes vary

    for source in sources:
        initial = value(source, 0)
        valid[source].add(initial)
        zk.create(source, initial)
    settings = settings_for(zk_server.address)
    dests = add_nodes(settings, sources, f"{workdir}/out")
    config = write_ini(workdir, settings)

    watcher = WatcherProcess(config)
    try:
        wait_for(lambda: files_match(zk, dests), 20, "the initial sync")
    finally:
        watcher.process.kill()
        watcher.stop()

    problems: list[str] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            for source, dest in dests.items():
                content = read_bytes(dest)
                reads += 1
                if content not in valid[source]:
                    problems.append(f"{dest}: {'missing' if content is None else f'{len(content)} bytes'}")

    updates = 0

    def update_some() -> None:
        nonlocal updates
        for source in random.sample(sources, 3):
            new = value(source, updates)
            valid[source].add(new)  # valid before ZooKeeper has it, so the reader never races the set
            zk.set_async(source, new)
            updates += 1

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    kills = left_behind = 0
    try:
        for _ in range(30):
            watcher = WatcherProcess(config)
            try:
                update_some()
                # The fault: a random moment from interpreter start-up to mid-stream (not a synchronisation).
                deadline = time.monotonic() + random.uniform(0.0, 1.2)
                while time.monotonic() < deadline:
                    update_some()
                    time.sleep(0.01)
                watcher.process.kill()
                kills += 1
            finally:
                watcher.stop()
            # A kill mid-write may leave a temp behind; the next start must remove it.
            left_behind += len([name for name in temp_files(f"{workdir}/out") if files.temp_pid(name) == watcher.pid])
        watcher = WatcherProcess(config)
        try:
            wait_for(lambda: files_match(zk, dests), 30, "the last watcher to catch up")
            wait_for(lambda: temp_files(f"{workdir}/out") == [], 10, "temporary files of killed runs to be removed")
        finally:
            watcher.stop()
    finally:
        stop.set()
        thread.join(10)
    assert problems == []
    assert kills == 30 and updates >= 300 and reads > updates
    print(f"{kills} kills, {updates} updates, {reads} reads, {left_behind} temp files left by killed runs")


# --- 6. disk full ------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mountpoint = tempfile.mkdtemp(prefix="livedata-tmpfs-")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0755", "livedata-test", mountpoint],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        os.rmdir(mountpoint)
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mountpoint
    if subprocess.run(["umount", mountpoint], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", mountpoint], check=False)
    os.rmdir(mountpoint)


def fill(directory: str) -> str:
    """Fill the filesystem to the last byte with one file; returns its path."""
    path = f"{directory}/filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    return path


@pytest.mark.timeout(60)
def test_disk_full_keeps_the_old_file_and_recovers(
    zk_server: ZooKeeperServer, zk: KazooClient, zk_path: str, tiny_tmpfs: str, start_watcher
) -> None:
    source = f"{zk_path}/big"
    zk.create(source, b"old content that must survive")
    dest = f"{tiny_tmpfs}/data/big"
    settings = settings_for(zk_server.address)
    settings.update(node_settings("big", source, dest))
    watcher = start_watcher(settings)
    wait_for_content(dest, b"old content that must survive")

    filler = fill(tiny_tmpfs)
    new = os.urandom(200 * 1024)
    zk.set(source, new)
    watcher.wait_for_log("No space left on device")
    watcher.wait_for_log("big: ")
    assert read_bytes(dest) == b"old content that must survive"
    # Waited on, not asserted at once: a retry (every 0.1 s and up) may hold its temp for an instant.
    wait_for(lambda: temp_files(f"{tiny_tmpfs}/data") == [], 10, "the failed write's temp file to be removed")
    assert watcher.alive()

    os.unlink(filler)
    wait_for_content(dest, new)
    watcher.wait_for_log("big: recovered")
    assert temp_files(f"{tiny_tmpfs}/data") == []


# --- 7. burst ----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_burst_of_updates_ends_on_the_last_value(
    zk_server: ZooKeeperServer, zk: KazooClient, zk_path: str, workdir: str, start_watcher
) -> None:
    source = f"{zk_path}/burst"
    zk.create(source, b"start")
    settings = settings_for(zk_server.address)
    settings.update(node_settings("burst", source, f"{workdir}/burst"))
    watcher = start_watcher(settings)
    wait_for_content(f"{workdir}/burst", b"start")
    results = [zk.set_async(source, f"update {i}".encode()) for i in range(5000)]
    for result in results:
        result.get(timeout=30)
    wait_for_content(f"{workdir}/burst", b"update 4999")
    assert watcher.alive()
    assert temp_files(workdir) == []


# --- 9. hostile node data ----------------------------------------------------------------------------------------

MAX_NODE = 1024 * 1024 - 1024  # jute.maxbuffer (1 MiB) less room for the request's own framing


@pytest.mark.timeout(60)
def test_binary_empty_and_maximum_size_nodes_sync_byte_for_byte(
    zk_server: ZooKeeperServer, zk: KazooClient, zk_path: str, workdir: str, start_watcher
) -> None:
    payloads = {
        "binary": bytes(range(256)) * 16 + b"\xff\xfe\x00\x00invalid utf-8 \xc3\x28",
        "empty": b"",
        "null": None,  # a node created without data at all
        "huge": os.urandom(MAX_NODE),
        "newlines": b"\r\n\n\r" * 1000,
    }
    settings = settings_for(zk_server.address)
    for name, payload in payloads.items():
        zk.create(f"{zk_path}/{name}", payload)
        settings.update(node_settings(name, f"{zk_path}/{name}", f"{workdir}/{name}"))
    settings.update(node_settings("canary", f"{zk_path}/canary", f"{workdir}/canary"))
    zk.create(f"{zk_path}/canary", b"alive")
    watcher = start_watcher(settings)
    for name, payload in payloads.items():
        wait_for_content(f"{workdir}/{name}", payload or b"")

    # Swap the contents around: huge -> empty, empty -> huge, binary -> huge again.
    zk.set(f"{zk_path}/huge", b"")
    zk.set(f"{zk_path}/empty", payloads["huge"])
    zk.set(f"{zk_path}/binary", payloads["huge"][::-1])
    wait_for_content(f"{workdir}/huge", b"")
    wait_for_content(f"{workdir}/empty", payloads["huge"])
    wait_for_content(f"{workdir}/binary", payloads["huge"][::-1])
    zk.set(f"{zk_path}/canary", b"still alive")
    wait_for_content(f"{workdir}/canary", b"still alive")
    assert read_bytes(f"{workdir}/huge") == b""
    assert watcher.alive()

