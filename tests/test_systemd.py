"""systemd notification: the protocol against real datagram sockets, and the daemon telling a stand-in systemd.

The stand-in is what systemd itself is to a ``Type=notify`` service: an AF_UNIX datagram socket whose name is
passed in ``$NOTIFY_SOCKET`` (a path, or an abstract name written ``@name``).
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from livedata.systemd import Notifier, watchdog_interval
from livedata.testing.watcher_process import base_settings, node_settings, read_bytes, write_ini
from livedata.testing.zookeeper import ConditionTimeout

pytestmark = pytest.mark.timeout(60)


class FakeSystemd:
    """A real datagram socket standing in for systemd's notify socket; collects every message."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + name[1:] if name.startswith("@") else name)
        self.messages: list[dict[str, str]] = []

    def receive(self, timeout: float) -> None:
        self.socket.settimeout(timeout)
        try:
            data = self.socket.recv(65536)
        except TimeoutError:
            return
        except socket.timeout:  # Python 3.9
            return
        self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def wait_for(
        self, predicate: Callable[[dict[str, str]], bool], timeout: float = 20.0, what: str = "", after: int = -1
    ) -> int:
        """Index of the first message after index ``after`` (received so far or from now on) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        checked = after + 1
        while True:
            for index in range(checked, len(self.messages)):
                if predicate(self.messages[index]):
                    return index
            checked = len(self.messages)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConditionTimeout(f"no notification {what or predicate} in {self.messages[-5:]}")
            self.receive(min(remaining, 0.5))

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def systemd(workdir: str) -> Iterator[FakeSystemd]:
    stand_in = FakeSystemd(os.path.join(workdir, "notify.sock"))
    yield stand_in
    stand_in.close()


@pytest.fixture
def abstract_systemd() -> Iterator[FakeSystemd]:
    stand_in = FakeSystemd(f"@livedata-test-{uuid.uuid4().hex}")
    yield stand_in
    stand_in.close()




base = base_settings


def is_ready(message: dict[str, str]) -> bool:
    return message.get("READY") == "1"


# --- the protocol ------------------------------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize("fixture", ["systemd", "abstract_systemd"])
def test_notifier_sends_datagrams_to_path_and_abstract_sockets(fixture, request):
    stand_in = request.getfixturevalue(fixture)
    environ = {"NOTIFY_SOCKET": stand_in.name, "OTHER": "kept"}
    notifier = Notifier.from_environment(environ)
    assert notifier is not None
    assert environ == {"OTHER": "kept"}, "NOTIFY_SOCKET is removed so that children cannot notify for us"
    try:
        assert notifier.send("READY=1", "STATUS=all good")
        stand_in.wait_for(lambda m: m == {"READY": "1", "STATUS": "all good"}, 5)
    finally:
        notifier.close()


@pytest.mark.timeout(10)
def test_notifier_is_off_without_a_usable_socket(workdir):
    assert Notifier.from_environment({}) is None
    assert Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
    notifier = Notifier(os.path.join(workdir, "nobody-listens.sock"))
    try:
        assert notifier.send("READY=1") is False  # logged, never raised: mirroring must go on
    finally:
        notifier.close()


@pytest.mark.timeout(10)
def test_watchdog_interval_is_half_the_timeout_and_only_for_the_named_process():
    environ = {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "42"}
    assert watchdog_interval(environ, pid=42) == 5.0
    assert environ == {}, "removed so that hooks do not inherit them"
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}, pid=42) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "43"}, pid=42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, pid=42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid=42) is None
    assert watchdog_interval({}, pid=42) is None


# --- the daemon --------------------------------------------------------------------------------


def test_ready_after_initial_sync_with_status_counts_and_watchdog(
    zk_server, zk, zk_path, workdir, systemd, start_watcher
):
    zk.create(f"{zk_path}/a", b"alpha")
    zk.create(f"{zk_path}/b", b"beta")
    with open(f"{workdir}/not-a-directory", "wb") as f:
        f.write(b"a regular file where a directory should be")
    settings = base(zk_server)
    settings.update(node_settings("a", f"{zk_path}/a", f"{workdir}/out/a"))
    settings.update(node_settings("b", f"{zk_path}/b", f"{workdir}/out/b"))
    settings.update(node_settings("broken", f"{zk_path}/a", f"{workdir}/not-a-directory/broken"))
    watcher = start_watcher(settings, env={"NOTIFY_SOCKET": systemd.name, "WATCHDOG_USEC": "200000"})

    ready = systemd.messages[systemd.wait_for(is_ready, what="READY=1")]
    # READY comes after the initial sync: the files are already there, and the failing node has been tried.
    assert read_bytes(f"{workdir}/out/a") == b"alpha"
    assert read_bytes(f"{workdir}/out/b") == b"beta"
    assert "broken: cannot update" in watcher.output()
    assert ready["STATUS"] == "connected to ZooKeeper; 3 nodes: 2 in sync, 0 pending, 1 failing"

    first_ping = systemd.wait_for(lambda m: m.get("WATCHDOG") == "1", what="WATCHDOG=1")
    systemd.wait_for(lambda m: m.get("WATCHDOG") == "1", what="another WATCHDOG=1", after=first_ping)

    watcher.signal(signal.SIGTERM)
    systemd.wait_for(lambda m: m.get("STOPPING") == "1", what="STOPPING=1")
    assert watcher.process.wait(timeout=20) == 0  # a clean stop, however long a loaded machine takes


def test_status_follows_the_connection(private_zk_server, workdir, systemd, start_watcher):
    from tests.conftest import make_client

    admin = make_client(private_zk_server.address)
    admin.create("/s", b"s")
    admin.stop()
    admin.close()
    settings = base(private_zk_server)
    settings.update(node_settings("s", "/s", f"{workdir}/s"))
    start_watcher(settings, env={"NOTIFY_SOCKET": systemd.name})
    systemd.wait_for(is_ready, what="READY=1")

    private_zk_server.stop()
    systemd.wait_for(lambda m: m.get("STATUS", "").startswith("disconnected from ZooKeeper"), what="disconnected")
    private_zk_server.start()
    systemd.wait_for(lambda m: m.get("STATUS", "").startswith("connected to ZooKeeper; 1 nodes: 1 in sync"), 30)


def test_reload_is_announced_and_ends_ready(zk_server, zk, zk_path, workdir, abstract_systemd, start_watcher):
    zk.create(f"{zk_path}/r", b"r")
    settings = base(zk_server)
    settings.update(node_settings("r", f"{zk_path}/r", f"{workdir}/r"))
    watcher = start_watcher(settings, env={"NOTIFY_SOCKET": abstract_systemd.name})
    first_ready = abstract_systemd.wait_for(is_ready, what="READY=1")

    watcher.signal(signal.SIGHUP)
    reloading = abstract_systemd.wait_for(lambda m: m.get("RELOADING") == "1", what="RELOADING=1")
    assert reloading > first_ready
    assert int(abstract_systemd.messages[reloading]["MONOTONIC_USEC"]) > 0
    again = abstract_systemd.wait_for(is_ready, what="READY=1 after reloading", after=reloading)
    assert abstract_systemd.messages[again]["STATUS"].endswith("1 nodes: 1 in sync, 0 pending, 0 failing")


def test_ready_waits_for_zookeeper_and_survives_a_reload_before_it(
    private_zk_server, workdir, systemd, start_watcher
):
    from tests.conftest import make_client

    admin = make_client(private_zk_server.address)
    admin.create("/kept", b"kept")
    admin.stop()
    admin.close()
    private_zk_server.stop()
    settings = base(private_zk_server)
    settings.update(node_settings("kept", "/kept", f"{workdir}/kept"))
    settings.update(node_settings("dropped", "/dropped", f"{workdir}/dropped"))
    watcher = start_watcher(settings, env={"NOTIFY_SOCKET": systemd.name})
    watcher.wait_for_log("watching 2 nodes")

    # Drop a node before its first sync: readiness must not wait for it forever.
    del settings["nodes.dropped.source"], settings["nodes.dropped.dest"]
    write_ini(workdir, settings)
    watcher.signal(signal.SIGHUP)
    watcher.wait_for_log("reloaded")
    assert read_bytes(f"{workdir}/kept") is None

    private_zk_server.start()
    ready = systemd.messages[systemd.wait_for(is_ready, 30, what="READY=1")]
    assert read_bytes(f"{workdir}/kept") == b"kept"
    assert ready["STATUS"] == "connected to ZooKeeper; 1 nodes: 1 in sync, 0 pending, 0 failing"


# --- the unit file and docs/operating.md's copy of it ---------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def systemd_analyze_verify(tmp_path, unit_text: str) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of the unit, with ExecStart pointing at this checkout's installed command."""
    import shutil

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    watcher = os.path.join(os.path.dirname(sys.executable), "livedata-watcher")
    assert os.access(watcher, os.X_OK), "pip install -e . provides the livedata-watcher command"
    unit = tmp_path / "livedata-watcher.service"
    unit.write_text(unit_text.replace("/opt/livedata/bin/livedata-watcher", watcher))
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(60)
def test_unit_file_verifies_cleanly(tmp_path):
    with open(os.path.join(REPO, "conf", "livedata-watcher.service")) as f:
        text = f.read()
    result = systemd_analyze_verify(tmp_path, text)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""
    settings = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert "RestartPreventExitStatus=2" in settings  # a bad config must not restart-loop
    assert "ExecStart=/opt/livedata/bin/livedata-watcher /etc/livedata/watcher.ini" in settings
    assert "RuntimeDirectory=livedata" in settings
    assert "ReadOnlyPaths=-/var/local/secrets.json" in settings


@pytest.mark.timeout(60)
def test_the_unit_as_shipped_fails_verify_only_for_the_missing_venv_and_says_so(tmp_path):
    """Verified as is, before /opt/livedata exists, the one complaint is ExecStart's program; the unit warns."""
    import shutil

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    with open(os.path.join(REPO, "conf", "livedata-watcher.service")) as f:
        text = f.read()
    unit = tmp_path / "livedata-watcher.service"
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaint = "Command /opt/livedata/bin/livedata-watcher is not executable"
    if os.access("/opt/livedata/bin/livedata-watcher", os.X_OK):
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        assert result.stderr.splitlines() == [f"{unit.name}: {complaint}: No such file or directory"]
    comments = " ".join(line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#"))
    assert "systemd-analyze verify" in comments and f'"{complaint}"' in comments


@pytest.mark.timeout(60)
def test_readme_unit_snippet_verifies_cleanly(tmp_path):
    with open(os.path.join(REPO, "docs", "operating.md")) as f:
        readme = f.read()
    snippet = re.search(r"^```ini\n(\[Service\]\n.*?)^```", readme, re.MULTILINE | re.DOTALL)
    assert snippet is not None
    result = systemd_analyze_verify(tmp_path, "[Unit]\nDescription=README snippet\n" + snippet.group(1))
    assert result.returncode == 0, result.stderr
    assert "ignoring" not in result.stderr, result.stderr  # e.g. a trailing '# comment' on ReadWritePaths
    assert result.stderr == ""
