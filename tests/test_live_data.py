"""Choosing file mode or direct (node) mode from configuration alone."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient

from livedata.config import ConfigError, read_config
from livedata.file_watcher import FileWatcher, WatchedFileNotAvailableError
from livedata.live_data import shared_client, stop_shared_clients, watched_data_from_config
from livedata.live_node import LiveNode
from livedata.testing.zookeeper import ZooKeeperServer, wait_for


@pytest.fixture(autouse=True)
def no_shared_clients_left() -> Iterator[None]:
    yield
    stop_shared_clients()


def write_json(path: str, value: object) -> str:
    with open(path, "w") as f:
        json.dump(value, f)
    return path


def test_file_key_gives_a_file_watcher(workdir: str) -> None:
    path = write_json(os.path.join(workdir, "flags.json"), {"on": True})
    data = watched_data_from_config({"live_data.flags.file": path}, "flags", json.load)
    assert isinstance(data, FileWatcher)
    assert data.get_data() == {"on": True}


def test_reader_options_reach_the_file_watcher(workdir: str) -> None:
    config = {"live_data.flags.file": os.path.join(workdir, "missing.json")}
    with pytest.raises(WatchedFileNotAvailableError) as raised:
        watched_data_from_config(config, "flags", json.load, timeout=0.05, backoff=0.01)
    assert isinstance(raised.value.inner, FileNotFoundError)
    path = write_json(os.path.join(workdir, "b.json"), [1])
    data = watched_data_from_config({"live_data.flags.file": path}, "flags", lambda f: f.read(), binary=True)
    assert data.get_data() == b"[1]"


@pytest.mark.timeout(30)
def test_file_mode_does_not_import_kazoo(workdir: str) -> None:
    path = write_json(os.path.join(workdir, "flags.json"), 1)
    script = (
        "import json, sys\n"
        "from livedata.live_data import watched_data_from_config\n"
        f"assert watched_data_from_config({{'live_data.flags.file': {path!r}}}, 'flags', json.load).get_data() == 1\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kazoo', 'gevent')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=25)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.timeout(30)
def test_node_key_with_a_given_client_gives_a_live_node(zk: KazooClient, zk_path: str) -> None:
    zk.create(f"{zk_path}/flags", b'{"on": false}')
    config = {"live_data.flags.node": f"{zk_path}/flags"}  # no zookeeper.* needed: the client is given
    data = watched_data_from_config(config, "flags", json.load, client=zk, timeout=10, check_interval=1.0)
    assert isinstance(data, LiveNode)
    assert data.client is zk
    assert data.get_data() == {"on": False}
    data.close()


@pytest.mark.timeout(30)
def test_node_key_without_client_uses_one_shared_started_client(
    zk_server: ZooKeeperServer, zk: KazooClient, zk_path: str
) -> None:
    zk.create(f"{zk_path}/a", b"1")
    zk.create(f"{zk_path}/b", b"2")
    config = {
        "zookeeper.hosts": zk_server.address,
        "live_data.a.node": f"{zk_path}/a",
        "live_data.b.node": f"{zk_path}/b",
    }
    a = watched_data_from_config(config, "a", json.load, timeout=20)
    b = watched_data_from_config(dict(config), "b", json.load, timeout=20)
    assert isinstance(a, LiveNode) and isinstance(b, LiveNode)
    assert a.client is b.client is shared_client(config)
    assert (a.get_data(), b.get_data()) == (1, 2)
    zk.set(f"{zk_path}/a", b"10")
    wait_for(lambda: a.get_data() == 10, 10, "the change through the shared client")

    other = {**config, "zookeeper.timeout": "7 seconds"}
    assert shared_client(other) is not a.client  # different settings, different client

    stop_shared_clients()
    assert not a.client.connected
    assert shared_client(config) is not a.client  # a new one after stopping


@pytest.mark.timeout(30)
def test_node_mode_timeout_raises_the_same_error(zk: KazooClient, zk_path: str) -> None:
    config = {"live_data.flags.node": f"{zk_path}/missing"}
    with pytest.raises(WatchedFileNotAvailableError) as raised:
        watched_data_from_config(config, "flags", json.load, client=zk, timeout=0.2)
    assert raised.value.path == f"{zk_path}/missing"


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({}, "live_data.flags.file"),
        ({"live_data.flags.file": "", "live_data.flags.node": " "}, "live_data.flags.file"),
        ({"live_data.flags.file": "/var/x.json", "live_data.flags.node": "/flags"}, "live_data.flags.node"),
        ({"live_data.flags.file": "flags.json"}, "live_data.flags.file"),
        ({"live_data.flags.node": "flags"}, "live_data.flags.node"),
        ({"live_data.flags.node": "/flags/"}, "live_data.flags.node"),
        ({"live_data.flags.file": "/var/x.json", "live_data.flags.nod": "/flags"}, "live_data.flags.nod"),
        ({"live_data.flags.node": "/flags"}, "zookeeper.hosts"),
        ({"live_data.flags.dir": "/var/x", "live_data.flags.file": "/var/x.json"}, "live_data.flags.dir"),
        ({"live_data.flags.dir": "relative"}, "live_data.flags.dir"),
    ],
)
def test_configuration_errors_name_the_key(config: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        watched_data_from_config(config, "flags", json.load)
    assert raised.value.key == key


def test_dir_key_gives_a_tree_watcher_over_a_mirrored_tree(workdir: str) -> None:
    from livedata.snapshots import TreeSpec, publish
    from livedata.tree_watcher import TreeWatcher

    dest = os.path.join(workdir, "experiments")
    publish(TreeSpec(dest, 0o644), {"a": b"1", "b": b'{"x": 2}'})
    reader = watched_data_from_config({"live_data.experiments.dir": dest}, "experiments", json.load)
    assert isinstance(reader, TreeWatcher)
    assert dict(reader.get_data()) == {"a": 1, "b": {"x": 2}}


def test_other_names_are_not_this_readers_business(workdir: str) -> None:
    path = write_json(os.path.join(workdir, "flags.json"), 1)
    config = {"live_data.flags.file": path, "live_data.hosts.whatever": "x", "live_data.hosts.file": "relative"}
    assert watched_data_from_config(config, "flags", json.load).get_data() == 1


def test_errors_name_the_config_file(workdir: str) -> None:
    ini = os.path.join(workdir, "app.ini")
    with open(ini, "w") as f:
        f.write("[live-data]\nlive_data.flags.file = /a.json\nlive_data.flags.node = /a\n")
    with pytest.raises(ConfigError) as raised:
        watched_data_from_config(read_config(ini), "flags", json.load)
    assert str(raised.value).startswith(f"{ini}: live_data.flags.node: ")


@pytest.mark.parametrize("name", ["", "a.b"])
def test_bad_names_are_a_programming_error(name: str) -> None:
    with pytest.raises(ValueError):
        watched_data_from_config({}, name, json.load)
