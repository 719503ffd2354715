"""tools/dev's demo: the write_node command it prints works as pasted, and its loop never undoes a write."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from livedata.testing.zookeeper import ZooKeeperServer
from tools import dev_demo

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def flags(zk: KazooClient) -> str:
    """The demo's node, created as tools/dev creates it (the demo's own first version)."""
    if zk.exists(dev_demo.FLAGS):
        zk.delete(dev_demo.FLAGS, recursive=True)  # with its kept versions
    zk.create(dev_demo.FLAGS, json.dumps({"greeting": "hello", "counter": 0}).encode(), makepath=True)
    return dev_demo.FLAGS


def node_json(zk: KazooClient, path: str) -> object:
    return json.loads(zk.get(path)[0])


def test_the_printed_write_node_command_works_as_pasted(
    zk_server: ZooKeeperServer, zk: KazooClient, flags: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dev_demo, "DEV_DIR", str(tmp_path))
    command = dev_demo.write_node_hint(zk_server.address)
    result = subprocess.run(shlex.split(command), capture_output=True, text=True, cwd=os.getcwd(), timeout=50)
    assert result.returncode == 0, result.stderr
    assert node_json(zk, flags) == {"greeting": "hello from write_node", "counter": 100}


def test_a_restart_keeps_the_edited_sample_input(
    zk_server: ZooKeeperServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dev_demo, "DEV_DIR", str(tmp_path / ".dev"))
    dev_demo.reset_dev_dir()
    dev_demo.write_node_hint(zk_server.address)
    sample = tmp_path / ".dev" / "flags-input.json"
    sample.write_text('{"greeting": "my own edit"}\n')
    (tmp_path / ".dev" / "files" / "flags.json").write_text("{}")
    dev_demo.reset_dev_dir()  # what tools/dev does when it starts again
    dev_demo.write_node_hint(zk_server.address)
    assert sample.read_text() == '{"greeting": "my own edit"}\n'
    assert os.listdir(tmp_path / ".dev" / "files") == []  # the rest starts afresh


def test_the_demo_continues_from_the_current_data(zk: KazooClient, flags: str) -> None:
    demo = dev_demo.Demo(zk)
    assert demo.bump() is None
    assert demo.bump() is None
    assert node_json(zk, flags) == {"greeting": "hello", "counter": 2}


def test_after_someone_elses_write_the_demo_skips_a_round_then_keeps_their_data(zk: KazooClient, flags: str) -> None:
    demo = dev_demo.Demo(zk)
    zk.set(flags, b'{"greeting": "mine", "counter": 100}')
    assert "someone else wrote" in (demo.bump() or "")
    assert node_json(zk, flags) == {"greeting": "mine", "counter": 100}  # left as they wrote it for a round
    assert demo.bump() is None
    assert node_json(zk, flags) == {"greeting": "mine", "counter": 101}


def test_data_the_demo_cannot_continue_from_is_left_alone(zk: KazooClient, flags: str) -> None:
    demo = dev_demo.Demo(zk)
    for data in (b"not json", b"[1, 2]", b'{"counter": "ten"}'):
        version = zk.set(flags, data).version
        demo.bump()  # notices the write, skips the round
        assert "leaves it alone" in (demo.bump() or "")
        assert zk.get(flags)[0] == data
        assert zk.get(flags)[1].version == version
