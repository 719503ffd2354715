"""SIGHUP re-reads the configuration of a running watcher: nodes come and go, bad configs are refused."""
from __future__ import annotations

import os
import signal

import pytest

from livedata.testing.watcher_process import (
    WatcherProcess,
    base_settings,
    node_settings,
    read_bytes,
    wait_for_content,
    write_ini,
)
from livedata.testing.zookeeper import wait_for

pytestmark = pytest.mark.timeout(60)




base = base_settings


def reload(watcher: WatcherProcess, workdir: str, settings: dict, count: int = 1) -> None:
    write_ini(workdir, settings)
    watcher.signal(signal.SIGHUP)
    watcher.wait_for_log("reload", count=count)


def test_added_nodes_sync_removed_ones_stop_and_a_changed_dest_moves(zk_server, zk, zk_path, workdir, start_watcher):
    for name in ("kept", "removed", "moved", "added"):
        zk.create(f"{zk_path}/{name}", f"{name} 0".encode())
    settings = base(zk_server)
    settings.update(node_settings("kept", f"{zk_path}/kept", f"{workdir}/kept"))
    settings.update(node_settings("removed", f"{zk_path}/removed", f"{workdir}/removed"))
    settings.update(node_settings("moved", f"{zk_path}/moved", f"{workdir}/old/moved"))
    watcher = start_watcher(settings)
    for name, dest in (("kept", "kept"), ("removed", "removed"), ("moved", "old/moved")):
        wait_for_content(f"{workdir}/{dest}", f"{name} 0".encode())
    kept_inode = os.stat(f"{workdir}/kept").st_ino

    for key in ("source", "dest"):
        del settings[f"nodes.removed.{key}"]
    settings["nodes.moved.dest"] = f"{workdir}/new/moved"
    settings.update(node_settings("added", f"{zk_path}/added", f"{workdir}/added"))
    reload(watcher, workdir, settings)
    wait_for_content(f"{workdir}/added", b"added 0")
    wait_for_content(f"{workdir}/new/moved", b"moved 0")
    watcher.wait_for_log("reloaded")
    assert "3 nodes; added: added; removed: removed; changed: moved" in watcher.output()

    zk.set(f"{zk_path}/removed", b"removed 1")  # no longer watched...
    zk.set(f"{zk_path}/moved", b"moved 1")
    zk.set(f"{zk_path}/kept", b"kept 1")  # ...and events are handled in order: once this lands, so would have those
    wait_for_content(f"{workdir}/kept", b"kept 1")
    wait_for_content(f"{workdir}/new/moved", b"moved 1")
    assert read_bytes(f"{workdir}/removed") == b"removed 0", "a removed node's file is left as it was"
    assert read_bytes(f"{workdir}/old/moved") == b"moved 0", "a moved node's old file is left as it was"
    zk.set(f"{zk_path}/added", b"added 1")
    wait_for_content(f"{workdir}/added", b"added 1")
    assert os.stat(f"{workdir}/kept").st_ino != kept_inode  # rewritten by the change, so still watched


def test_the_reload_log_counts_trees_as_trees(zk_server, zk, zk_path, workdir, start_watcher):
    zk.create(f"{zk_path}/a", b"a0")
    zk.create(f"{zk_path}/web/index", b"i0", makepath=True)
    settings = base(zk_server)
    settings.update(node_settings("a", f"{zk_path}/a", f"{workdir}/a"))
    watcher = start_watcher(settings)
    wait_for_content(f"{workdir}/a", b"a0")
    settings.update({"trees.web.source": f"{zk_path}/web", "trees.web.dest": f"{workdir}/web"})
    reload(watcher, workdir, settings)
    wait_for_content(f"{workdir}/web/index", b"i0")
    watcher.wait_for_log("reloaded")
    assert "1 node and 1 tree; added: web (tree); removed: none; changed: none" in watcher.output()


def test_an_invalid_config_is_refused_and_the_running_one_stays(zk_server, zk, zk_path, workdir, start_watcher):
    zk.create(f"{zk_path}/a", b"a0")
    settings = base(zk_server)
    settings.update(node_settings("a", f"{zk_path}/a", f"{workdir}/a"))
    watcher = start_watcher(settings)
    wait_for_content(f"{workdir}/a", b"a0")

    broken = dict(settings)
    broken["nodes.a.dest"] = "relative/path"
    broken.update(node_settings("b", f"{zk_path}/a", f"{workdir}/b"))
    reload(watcher, workdir, broken)
    watcher.wait_for_log("reload rejected")
    rejected = [line for line in watcher.output().splitlines() if "reload" in line]
    assert len(rejected) == 1, rejected
    assert "ERROR" in rejected[0]
    assert "running configuration stays in force" in rejected[0]
    assert "nodes.a.dest: 'relative/path' is not an absolute path" in rejected[0]

    zk.set(f"{zk_path}/a", b"a1")
    wait_for_content(f"{workdir}/a", b"a1")
    assert read_bytes(f"{workdir}/b") is None
    assert watcher.alive()

    reload(watcher, workdir, settings, count=2)  # a good config afterwards is applied as usual
    watcher.wait_for_log("reloaded")


def test_zookeeper_settings_need_a_restart_but_the_rest_applies(zk_server, zk, zk_path, workdir, start_watcher):
    zk.create(f"{zk_path}/a", b"a0")
    zk.create(f"{zk_path}/b", b"b0")
    settings = base(zk_server)
    settings.update(node_settings("a", f"{zk_path}/a", f"{workdir}/a"))
    watcher = start_watcher(settings)
    wait_for_content(f"{workdir}/a", b"a0")

    settings["zookeeper.hosts"] = "127.0.0.1:1"
    settings["zookeeper.timeout"] = "9 seconds"
    settings.update(node_settings("b", f"{zk_path}/b", f"{workdir}/b"))
    reload(watcher, workdir, settings)
    watcher.wait_for_log("zookeeper.hosts, zookeeper.timeout changed; restart the watcher to apply")
    wait_for_content(f"{workdir}/b", b"b0")  # synced over the connection we kept
    zk.set(f"{zk_path}/a", b"a1")
    wait_for_content(f"{workdir}/a", b"a1")


def test_a_new_heartbeat_interval_applies_at_once(zk_server, zk, zk_path, workdir, start_watcher):
    zk.create(f"{zk_path}/h", b"h")
    dest = f"{workdir}/h"
    settings = base(zk_server, heartbeat_interval="1 hour")
    settings.update(node_settings("h", f"{zk_path}/h", dest))
    watcher = start_watcher(settings)
    wait_for_content(dest, b"h")
    written = os.stat(dest).st_mtime_ns

    settings["watcher.heartbeat_interval"] = "200 milliseconds"
    reload(watcher, workdir, settings)
    wait_for(lambda: os.stat(dest).st_mtime_ns > written, 10, "a heartbeat at the new interval")
    touched = os.stat(dest).st_mtime_ns
    wait_for(lambda: os.stat(dest).st_mtime_ns > touched, 10, "another heartbeat")


def test_a_misspelt_key_is_refused_on_reload_not_reported_as_a_change(zk_server, zk, zk_path, workdir, start_watcher):
    zk.create(f"{zk_path}/a", b"a 0")
    settings = base(zk_server)
    settings.update(node_settings("a", f"{zk_path}/a", f"{workdir}/a"))
    watcher = start_watcher(settings)
    wait_for_content(f"{workdir}/a", b"a 0")
    reload(watcher, workdir, {**settings, "zookeeper.timout": "9 seconds"})
    watcher.wait_for_log("reload rejected, the running configuration stays in force")
    assert "zookeeper.timout: unknown key; did you mean zookeeper.timeout?" in watcher.output()
    assert "restart the watcher to apply" not in watcher.output()
    zk.set(f"{zk_path}/a", b"a 1")
    wait_for_content(f"{workdir}/a", b"a 1")


def test_a_reload_creates_new_dest_directories_visibly(zk_server, zk, zk_path, workdir, start_watcher):
    zk.create(f"{zk_path}/a", b"a")
    settings = base(zk_server)
    settings.update(node_settings("a", f"{zk_path}/a", f"{workdir}/a"))
    watcher = start_watcher(settings)
    wait_for_content(f"{workdir}/a", b"a")
    settings.update(node_settings("b", f"{zk_path}/a", f"{workdir}/fresh/dir/b", owner="65534"))
    reload(watcher, workdir, settings)
    wait_for_content(f"{workdir}/fresh/dir/b", b"a")
    assert f"nodes.b: created directory {workdir}/fresh (owner 65534, group unchanged, mode 0755)" in watcher.output()
    assert os.stat(f"{workdir}/fresh/dir").st_uid == 65534
