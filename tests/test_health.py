"""``livedata-watcher --check CONFIG``: the probe of the dests, with and without a running watcher."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from livedata import health
from livedata.files import FileSpec
from livedata.testing.watcher_process import WatcherProcess, node_settings, wait_for_content, write_ini
from livedata.testing.zookeeper import wait_for

pytestmark = pytest.mark.timeout(60)

HOUR = 3600.0


def run_check(config_path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "livedata.watcher", "--check", config_path], capture_output=True, text=True, timeout=30
    )


def make_dest(path: str, data: bytes = b"data", mode: int = 0o400, age: float = 0.0) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))


def offline_config(workdir: str, heartbeat: str = "1 hour", **nodes: dict) -> str:
    """A config whose ZooKeeper does not exist: the probe must never need it."""
    settings: dict = {"zookeeper.hosts": "127.0.0.1:1", "watcher.heartbeat_interval": heartbeat}
    for name, extra in nodes.items():
        settings.update(node_settings(name, f"/{name}", f"{workdir}/dests/{name}", **extra))
    return write_ini(workdir, settings)


@pytest.mark.timeout(30)
def test_fresh_dests_pass_without_zookeeper(workdir):
    config = offline_config(workdir, a={}, b={"mode": "0644"})
    make_dest(f"{workdir}/dests/a", age=1.5 * HOUR)  # older than one heartbeat, younger than two
    make_dest(f"{workdir}/dests/b", mode=0o644)
    result = run_check(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "ok: 2 dests present and fresh\n"
    assert result.stderr == ""


@pytest.mark.timeout(30)
def test_each_bad_dest_gets_one_line(workdir):
    config = offline_config(workdir, fine={}, gone={}, old={}, moded={"mode": "0640"}, both={"mode": "0600"})
    make_dest(f"{workdir}/dests/fine")
    make_dest(f"{workdir}/dests/old", age=2.5 * HOUR)
    make_dest(f"{workdir}/dests/moded", mode=0o644)
    make_dest(f"{workdir}/dests/both", mode=0o644, age=3 * HOUR)
    result = run_check(config)
    assert result.returncode == 1
    lines = sorted(result.stdout.splitlines())
    assert len(lines) == 4, result.stdout
    both, gone, moded, old = lines
    assert gone == f"{workdir}/dests/gone: missing (nodes.gone)"
    assert moded == f"{workdir}/dests/moded: mode 0644, expected 0640 (nodes.moded)"
    assert old.startswith(f"{workdir}/dests/old: stale: modified ")
    assert "more than 2 heartbeats (7200s)" in old
    assert "mode 0644, expected 0600; stale" in both


@pytest.mark.timeout(30)
def test_a_symlink_or_directory_is_not_a_healthy_dest(workdir):
    config = offline_config(workdir, link={}, directory={})
    make_dest(f"{workdir}/elsewhere")
    os.makedirs(f"{workdir}/dests/directory")
    os.symlink(f"{workdir}/elsewhere", f"{workdir}/dests/link")
    result = run_check(config)
    assert result.returncode == 1
    assert sorted(result.stdout.splitlines()) == [
        f"{workdir}/dests/directory: not a regular file (nodes.directory)",
        f"{workdir}/dests/link: not a regular file (nodes.link)",
    ]


@pytest.mark.timeout(30)
def test_owner_and_group_are_checked_when_configured(workdir):
    if os.geteuid() != 0:
        pytest.skip("changing ownership needs root")
    config = offline_config(workdir, owned={"owner": "65534", "group": "65533"}, free={})
    make_dest(f"{workdir}/dests/owned")
    make_dest(f"{workdir}/dests/free")
    os.chown(f"{workdir}/dests/free", 1234, 1234)  # no owner configured: any owner will do
    result = run_check(config)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{workdir}/dests/owned: owner uid 0, expected 65534; group gid 0, expected 65533 (nodes.owned)"
    ]
    os.chown(f"{workdir}/dests/owned", 65534, 65533)
    assert run_check(config).returncode == 0


@pytest.mark.timeout(30)
def test_config_error_is_one_line_and_status_2(workdir):
    path = write_ini(workdir, {"zookeeper.hosts": "127.0.0.1:1", "nodes.a.source": "/a", "nodes.a.dest": "rel"})
    result = run_check(path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"livedata-watcher: {path}: nodes.a.dest: 'rel' is not an absolute path"]


@pytest.fixture
def watcher_for(workdir) -> Iterator:
    started: list[WatcherProcess] = []

    def start(config_path: str) -> WatcherProcess:
        process = WatcherProcess(config_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def test_probe_follows_the_heartbeat_of_a_running_watcher(private_zk_server, workdir, watcher_for):
    """Healthy while the watcher vouches for the file; stale once heartbeats stop (ZooKeeper unreachable)."""
    from tests.conftest import make_client

    admin = make_client(private_zk_server.address)
    admin.create("/hb", b"beat")
    admin.stop()
    admin.close()
    dest = f"{workdir}/hb"
    config = write_ini(
        workdir,
        {
            "zookeeper.hosts": private_zk_server.address,
            "zookeeper.timeout": "2 seconds",
            # The probe allows two intervals: wide enough for a starved watcher or a slow probe start on a
            # loaded machine (a heartbeat's punctuality is not what this test is about).
            "watcher.heartbeat_interval": "2 seconds",
            **node_settings("hb", "/hb", dest, mode="0444"),
        },
    )
    watcher = watcher_for(config)
    wait_for_content(dest, b"beat")
    assert run_check(config).returncode == 0

    old = time.time() - HOUR
    os.utime(dest, (old, old))  # as if the watcher had been silent for an hour
    # In-process, so that no heartbeat can land between the utime and the look (a subprocess takes a while).
    assert "stale" in health.file_problems(FileSpec(dest, 0o444), max_age=1.0, now=time.time())[0]
    wait_for(lambda: run_check(config).returncode == 0, 15, "a heartbeat to make the dest fresh again")

    private_zk_server.stop()
    watcher.wait_for_log("heartbeat withheld")
    result = wait_for(lambda: (r := run_check(config)).returncode == 1 and r, 15, "the probe to see the silence")
    assert result.stdout.startswith(f"{dest}: stale: ")
    private_zk_server.start()
    wait_for(lambda: run_check(config).returncode == 0, 30, "heartbeats to resume after reconnecting")


# --- readiness vs liveness, and nodes known to be absent -----------------------------------------


def run_probe(flag: str, config_path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "livedata.watcher", flag, config_path], capture_output=True, text=True, timeout=30
    )


def test_absent_list_counts_only_while_fresh_and_for_the_same_dest(workdir):
    spec = FileSpec(f"{workdir}/dests/gone", 0o400)
    now = time.time()
    assert health.problems([("gone", spec)], 10.0, now, absent={"gone": spec.path}) == []
    missing = [f"{spec.path}: missing (nodes.gone)"]
    assert health.problems([("gone", spec)], 10.0, now, absent={"gone": "/elsewhere"}) == missing
    assert health.problems([("gone", spec)], 10.0, now) == missing

    state = f"{workdir}/state"
    os.makedirs(state)
    with open(f"{state}/{health.ABSENT_FILE}", "w") as f:
        json.dump({"absent": {"gone": spec.path}}, f)
    assert health.absent_nodes(state, max_age=20.0, now=time.time()) == {"gone": spec.path}
    assert health.absent_nodes(state, max_age=20.0, now=time.time() + 21) == {}  # no longer vouched for
    assert health.absent_nodes(None, max_age=20.0, now=now) == {}
    with open(f"{state}/{health.ABSENT_FILE}", "w") as f:
        f.write("not json")
    assert health.absent_nodes(state, max_age=20.0, now=time.time()) == {}


def test_liveness_file_age():
    import tempfile

    with tempfile.TemporaryDirectory() as state:
        assert "missing: the watcher is not running" in (health.alive_problem(state) or "")
        with open(f"{state}/{health.ALIVE_FILE}", "w") as f:
            f.write("1\n")
        assert health.alive_problem(state) is None
        assert "not touched for 31s" in (health.alive_problem(state, now=time.time() + 31) or "")


def test_alive_needs_a_state_dir(workdir):
    config = offline_config(workdir, a={})
    result = run_probe("--alive", config)
    assert result.returncode == 2
    assert result.stderr.strip() == f"livedata-watcher: {config}: watcher.state_dir is not set; --alive needs it"


def test_absent_node_is_ready_and_liveness_survives_an_outage(private_zk_server, workdir, watcher_for):
    """A node absent in ZooKeeper passes --check; during an outage --check fails but --alive keeps passing."""
    from tests.conftest import make_client

    admin = make_client(private_zk_server.address)
    admin.create("/here", b"data")
    state = f"{workdir}/run/livedata"  # created by the watcher
    config = write_ini(
        workdir,
        {
            "zookeeper.hosts": private_zk_server.address,
            "zookeeper.timeout": "2 seconds",
            "watcher.heartbeat_interval": "1 second",
            "watcher.state_dir": state,
            **node_settings("here", "/here", f"{workdir}/out/here"),
            **node_settings("gone", "/gone", f"{workdir}/out/gone"),
        },
    )
    watcher = watcher_for(config)
    wait_for_content(f"{workdir}/out/here", b"data")
    result = wait_for(lambda: (r := run_probe("--check", config)).returncode == 0 and r, 15, "the absent node to count")
    assert result.stdout == "ok: 1 dests present and fresh, 1 known absent in ZooKeeper\n"
    assert run_probe("--alive", config).returncode == 0
    with open(f"{state}/alive") as f:
        assert f.read().strip() == str(watcher.process.pid)

    admin.create("/gone", b"back")  # no longer absent: its file is expected, and written
    wait_for_content(f"{workdir}/out/gone", b"back")
    admin.delete("/gone")
    wait_for(lambda: not os.path.exists(f"{workdir}/out/gone"), 15, "the file to go with the node")
    wait_for(lambda: run_probe("--check", config).returncode == 0, 15, "the node to be known absent again")
    admin.stop()
    admin.close()

    private_zk_server.stop()  # readiness fails (nothing is vouched for), liveness does not: no restart loop
    watcher.wait_for_log("heartbeat withheld")
    wait_for(lambda: run_probe("--check", config).returncode == 1, 15, "readiness to fail in the outage")
    alive = run_probe("--alive", config)
    assert alive.returncode == 0, alive.stdout
    private_zk_server.start()


def test_absent_sources_are_named_once_and_can_fail_the_check(zk_server, zk, zk_path, workdir, watcher_for):
    """A typo in a source is logged by name (once, not on every resync); absent_is_error makes --check fail on it."""
    from livedata.testing.zookeeper import free_ports
    from tests.test_metrics import Endpoint

    zk.create(f"{zk_path}/here", b"data")
    (port,) = free_ports(1)
    settings = {
        "zookeeper.hosts": zk_server.address,
        "watcher.heartbeat_interval": "1 second",
        "watcher.resync_interval": "100 milliseconds",
        "watcher.state_dir": f"{workdir}/run",
        "watcher.metrics_address": f"127.0.0.1:{port}",
        **node_settings("here", f"{zk_path}/here", f"{workdir}/out/here"),
        **node_settings("typo", f"{zk_path}/flgas", f"{workdir}/out/flags"),
        "trees.t.source": f"{zk_path}/tre",
        "trees.t.dest": f"{workdir}/out/tree",
    }
    config = write_ini(workdir, settings)
    watcher = watcher_for(config)
    watcher.wait_for_log("initial sync of 3 nodes done")
    Endpoint(port).wait_at_least("livedata_resyncs_total", 5)
    node_line = (f"nodes.typo: source {zk_path}/flgas does not exist in ZooKeeper; no file at {workdir}/out/flags "
                 "until it is created")  # fmt: skip
    tree_line = (f"trees.t: source {zk_path}/tre does not exist in ZooKeeper; it is mirrored as an empty tree at "
                 f"{workdir}/out/tree until it is created")  # fmt: skip
    reported = [line for line in watcher.output().splitlines() if "does not exist" in line]
    assert len(reported) == 2, reported  # one line each, however many resyncs found them absent again
    assert reported[0].endswith(node_line) or reported[1].endswith(node_line), reported
    assert reported[0].endswith(tree_line) or reported[1].endswith(tree_line), reported
    assert all("WARNING" in line for line in reported), reported
    result = wait_for(lambda: (r := run_check(config)).returncode == 0 and r, 15, "the absent node to count")
    assert result.stdout == "ok: 2 dests present and fresh, 1 known absent in ZooKeeper\n"

    strict = write_ini(workdir, {**settings, "watcher.absent_is_error": "true"}, name="strict.ini")
    result = run_check(strict)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{workdir}/out/flags: source {zk_path}/flgas does not exist in ZooKeeper (nodes.typo; "
        "watcher.absent_is_error is set)",
        f"{workdir}/out/tree: source {zk_path}/tre does not exist in ZooKeeper (trees.t; "
        "watcher.absent_is_error is set)",
    ]

    zk.create(f"{zk_path}/flgas", b"typo fixed")
    zk.create(f"{zk_path}/tre/child", b"c", makepath=True)
    wait_for_content(f"{workdir}/out/flags", b"typo fixed")
    watcher.wait_for_log(f"nodes.typo: source {zk_path}/flgas exists now")
    watcher.wait_for_log(f"trees.t: source {zk_path}/tre exists now")
    result = wait_for(lambda: (r := run_check(strict)).returncode == 0 and r, 15, "no source to be absent")
    assert result.stdout == "ok: 3 dests present and fresh\n"


def test_a_reload_to_another_absent_source_names_it(zk_server, zk, zk_path, workdir, watcher_for):
    """One typo fixed with another: the new source is named too, not hidden behind the first report."""
    import signal

    settings = {"zookeeper.hosts": zk_server.address, **node_settings("t", f"{zk_path}/flgas", f"{workdir}/out/t")}
    config = write_ini(workdir, settings)
    watcher = watcher_for(config)
    watcher.wait_for_log(f"nodes.t: source {zk_path}/flgas does not exist in ZooKeeper")
    write_ini(workdir, {**settings, "nodes.t.source": f"{zk_path}/flag"})
    watcher.signal(signal.SIGHUP)
    watcher.wait_for_log(f"nodes.t: source {zk_path}/flag does not exist in ZooKeeper")
    zk.create(f"{zk_path}/flag", b"f")
    watcher.wait_for_log(f"nodes.t: source {zk_path}/flag exists now")
