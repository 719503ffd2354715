"""``nodes.<name>.on_change`` hooks of a real watcher against a real ZooKeeper.

Hook state is read from the metrics endpoint (runs by result, hooks pending), so that "the hook did not run"
is a fact the daemon reports, not something a test infers from waiting a while.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from livedata.testing.watcher_process import base_settings, node_settings, read_bytes, wait_for_content, write_ini
from livedata.testing.zookeeper import free_ports, wait_for

pytestmark = pytest.mark.timeout(60)


def metric(port: int, name: str, **labels: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def wait_metric(port: int, name: str, expected: float, timeout: float = 20.0, **labels: str) -> None:
    wait_for(lambda: metric(port, name, **labels) == expected, timeout, f"{name}{labels} == {expected}")


def lines(path: str) -> list[str]:
    content = read_bytes(path)
    return [] if content is None else content.decode().splitlines()


def wait_lines(path: str, count: int, timeout: float = 20.0) -> list[str]:
    return wait_for(lambda: len(found := lines(path)) >= count and found, timeout, f"{count} lines in {path}")




def base(server, port: int | None = None, **watcher_options: object) -> dict:
    return base_settings(server, metrics_port=port, **watcher_options)


def test_hook_gets_the_change_in_its_environment_and_its_output_is_logged(
    zk_server, zk, zk_path, workdir, start_watcher
):
    zk.create(f"{zk_path}/a", b"v0")
    dest, log = f"{workdir}/out/a", f"{workdir}/hook.log"
    # $$ is a literal $ in the INI file (a single $ would be expanded when the config is read).
    hook = (
        "printf '%s|%s|%s|%s|%s|%s|%s\\n' \"$$LIVEDATA_NODE\" \"$$LIVEDATA_DEST\" \"$$LIVEDATA_SOURCE\" "
        "\"$$LIVEDATA_EVENT\" \"$$LIVEDATA_VERSION\" \"$$(cat \"$$LIVEDATA_DEST\" 2>/dev/null)\" "
        f"\"$${{NOTIFY_SOCKET:-unset}}\" >> {log}; echo \"hello from the hook of $$LIVEDATA_NODE\""
    )
    settings = base(zk_server)
    settings.update(node_settings("a", f"{zk_path}/a", dest, on_change=hook))
    watcher = start_watcher(settings, env={"NOTIFY_SOCKET": f"{workdir}/nobody-listens"})

    assert wait_lines(log, 1) == [f"a|{dest}|{zk_path}/a|written|0|v0|unset"]
    zk.set(f"{zk_path}/a", b"v1")
    assert wait_lines(log, 2)[1] == f"a|{dest}|{zk_path}/a|written|1|v1|unset"
    zk.delete(f"{zk_path}/a")
    assert wait_lines(log, 3)[2] == f"a|{dest}|{zk_path}/a|removed|-1||unset"
    watcher.wait_for_log("a: on_change: hello from the hook of a", count=3)
    watcher.wait_for_log("a: on_change hook finished", count=3)


def test_hook_runs_for_content_changes_only(zk_server, zk, zk_path, workdir, start_watcher):
    """Not for equal content under a new version, not for a mode fix, not for heartbeats."""
    (port,) = free_ports(1)
    zk.create(f"{zk_path}/a", b"v0")
    dest, log = f"{workdir}/a", f"{workdir}/hook.log"
    settings = base(zk_server, port, heartbeat_interval="200 milliseconds")
    hook = f'echo "$$(cat "$$LIVEDATA_DEST")" >> {log}'
    settings.update(node_settings("a", f"{zk_path}/a", dest, mode="0640", on_change=hook))
    start_watcher(settings)
    wait_metric(port, "livedata_hook_runs_total", 1, result="ok")
    assert lines(log) == ["v0"]

    os.chmod(dest, 0o666)
    zk.set(f"{zk_path}/a", b"v0")  # version 1, same bytes: the mode is fixed, the content left alone
    wait_metric(port, "livedata_node_version", 1, node="a")
    assert os.stat(dest).st_mode & 0o777 == 0o640
    heartbeats = metric(port, "livedata_heartbeats_total")
    assert heartbeats is not None
    wait_for(lambda: metric(port, "livedata_heartbeats_total") >= heartbeats + 2, 10, "two more heartbeats")
    # A hook started by any of that would be pending (queued or running) or counted by now.
    assert metric(port, "livedata_hooks_pending") == 0
    assert metric(port, "livedata_hook_runs_total", result="ok") == 1
    assert lines(log) == ["v0"]

    zk.set(f"{zk_path}/a", b"v2")
    wait_metric(port, "livedata_hook_runs_total", 2, result="ok")
    assert lines(log) == ["v0", "v2"]


def test_changes_during_a_run_coalesce_into_one_more_run_and_other_nodes_keep_syncing(
    zk_server, zk, zk_path, workdir, start_watcher
):
    (port,) = free_ports(1)
    zk.create(f"{zk_path}/slow", b"v0")
    zk.create(f"{zk_path}/other", b"o0")
    log, release = f"{workdir}/hook.log", f"{workdir}/release"
    hook = f'echo "run $$(cat "$$LIVEDATA_DEST")" >> {log}; while [ ! -e {release} ]; do sleep 0.02; done'
    settings = base(zk_server, port)
    settings.update(node_settings("slow", f"{zk_path}/slow", f"{workdir}/slow", on_change=hook))
    settings.update(node_settings("other", f"{zk_path}/other", f"{workdir}/other", on_change=f"echo other >> {log}"))
    start_watcher(settings)
    wait_for(lambda: "run v0" in lines(log) and "other" in lines(log), 20, "both first runs to start")

    for i in range(1, 6):  # the slow hook is still running: these are written, its reruns coalesce
        zk.set(f"{zk_path}/slow", f"v{i}".encode())
    wait_for_content(f"{workdir}/slow", b"v5")
    zk.set(f"{zk_path}/other", b"o1")  # another node's sync and hook are not held up by the slow hook
    wait_for_content(f"{workdir}/other", b"o1")
    wait_for(lambda: lines(log).count("other") == 2, 20, "the other node's second hook run")
    wait_metric(port, "livedata_hooks_pending", 1)  # only the slow node's: running, with one rerun due
    assert lines(log).count("run v0") == 1

    with open(release, "w"):
        pass
    wait_metric(port, "livedata_hooks_pending", 0)
    assert [line for line in lines(log) if line.startswith("run")] == ["run v0", "run v5"]
    assert metric(port, "livedata_hook_runs_total", result="ok") == 4


def test_a_hook_over_its_timeout_is_killed_with_its_children(zk_server, zk, zk_path, workdir, start_watcher):
    (port,) = free_ports(1)
    zk.create(f"{zk_path}/t", b"t")
    pid_file = f"{workdir}/child.pid"
    hook = f"sleep 60 & echo $$! > {pid_file}; wait"
    # Long enough for the shell to start its child and write the pid file on a loaded machine (the kill is
    # the point here, not how soon it comes).
    settings = base(zk_server, port, hook_timeout="2 seconds")
    settings.update(node_settings("t", f"{zk_path}/t", f"{workdir}/t", on_change=hook))
    watcher = start_watcher(settings)
    watcher.wait_for_log("t: on_change hook failed: killed after the 2s hook_timeout")
    wait_metric(port, "livedata_hook_runs_total", 1, result="timeout")
    child = int(wait_lines(pid_file, 1)[0])
    wait_for(lambda: not alive(child), 10, "the hook's child process to be killed too")
    assert metric(port, "livedata_node_in_sync", node="t") == 1


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_failing_hook_is_logged_and_counted_and_mirroring_goes_on(zk_server, zk, zk_path, workdir, start_watcher):
    (port,) = free_ports(1)
    zk.create(f"{zk_path}/f", b"f0")
    settings = base(zk_server, port)
    settings.update(node_settings("f", f"{zk_path}/f", f"{workdir}/f", on_change="echo something broke >&2; exit 3"))
    watcher = start_watcher(settings)
    watcher.wait_for_log("f: on_change hook failed: exit status 3")
    assert "f: on_change: something broke" in watcher.output()
    wait_metric(port, "livedata_hook_runs_total", 1, result="failed")
    zk.set(f"{zk_path}/f", b"f1")
    wait_for_content(f"{workdir}/f", b"f1")
    wait_metric(port, "livedata_hook_runs_total", 2, result="failed")
    assert metric(port, "livedata_node_in_sync", node="f") == 1


def test_reload_adds_and_changes_hooks(zk_server, zk, zk_path, workdir, start_watcher):
    zk.create(f"{zk_path}/r", b"r0")
    log = f"{workdir}/hook.log"
    settings = base(zk_server)
    settings.update(node_settings("r", f"{zk_path}/r", f"{workdir}/r"))
    watcher = start_watcher(settings)
    wait_for_content(f"{workdir}/r", b"r0")

    settings["nodes.r.on_change"] = f'echo "first $$(cat "$$LIVEDATA_DEST")" >> {log}'
    write_ini(workdir, settings)
    watcher.signal(signal.SIGHUP)
    watcher.wait_for_log("reloaded")
    assert "changed: none" in watcher.output(), "a new hook alone does not re-add the node"
    zk.set(f"{zk_path}/r", b"r1")
    assert wait_lines(log, 1) == ["first r1"]

    settings["nodes.r.on_change"] = f'echo "second $$(cat "$$LIVEDATA_DEST")" >> {log}'
    write_ini(workdir, settings)
    watcher.signal(signal.SIGHUP)
    watcher.wait_for_log("reloaded", count=2)
    zk.set(f"{zk_path}/r", b"r2")
    assert wait_lines(log, 2) == ["first r1", "second r2"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"watcher.hook_timeout": "0 seconds"}, "watcher.hook_timeout: must be greater than zero"),
        ({"watcher.hook_timeout": "soon"}, "watcher.hook_timeout: 'soon' is not a time span"),
        ({"nodes.a.onchange": "true"}, "nodes.a.onchange: unknown key; did you mean nodes.a.on_change?"),
        ({"nodes.a.on_change": "cp $LIVEDATA_DEST /tmp"}, "nodes.a.on_change: environment variable $LIVEDATA_DEST "
         "is not set (for the hook's own environment, such as $LIVEDATA_DEST, write $$LIVEDATA_DEST: a single $ "
         "is expanded when the config is read)"),
    ],
)
def test_hook_settings_are_validated(workdir, extra, expected):
    settings = {"zookeeper.hosts": "127.0.0.1:1", **node_settings("a", "/a", f"{workdir}/a"), **extra}
    path = write_ini(workdir, settings)
    result = subprocess.run(
        [sys.executable, "-m", "livedata.watcher", path], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"livedata-watcher: {path}: {expected}")
