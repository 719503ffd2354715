"""Every INI example in README.md loads with the loader that reads it: the README cannot drift from the code."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from livedata.config import check_known_keys, read_config
from livedata.live_data import PREFIX, parse_live_data_config
from livedata.watcher import load_config
from livedata.zookeeper import parse_zookeeper_config

pytestmark = pytest.mark.timeout(30)

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```ini\n(.*?)^```", re.MULTILINE | re.DOTALL)

# A fragment (keys without a section) is read inside the smallest watcher config it could belong to.
FRAGMENT_BASE = "[live-data]\nzookeeper.hosts = zk01:2181\nnodes.flags.source = /flags\nnodes.flags.dest = {dest}\n"


def ini_blocks() -> list[str]:
    return BLOCK.findall(README.read_text())


def test_the_readme_has_its_examples():
    kinds = {kind(block) for block in ini_blocks()}
    assert kinds == {"application", "fragment", "systemd", "watcher"}  # systemd: tests/test_systemd.py


def kind(block: str) -> str:
    if block.startswith("[Service]"):
        return "systemd"
    if block.startswith("[live-data]"):
        return "watcher"
    if block.startswith("[app:main]"):
        return "application"
    return "fragment"


@pytest.mark.parametrize("block", ini_blocks(), ids=[kind(block) for block in ini_blocks()])
def test_every_ini_block_loads(tmp_path, block):
    path = tmp_path / "example.ini"
    if kind(block) == "systemd":
        pytest.skip("verified with systemd-analyze in tests/test_systemd.py")
    if kind(block) == "watcher":
        path.write_text(block)
        config = load_config(str(path))
        assert config.nodes, "the example configures nodes"
        assert all("#" not in value and ";" not in value for value in config.raw.values())
    elif kind(block) == "fragment":
        path.write_text(FRAGMENT_BASE.format(dest=tmp_path / "flags.json") + block)
        config = load_config(str(path))
        if "trees." in block:
            assert [tree.name for tree in config.trees] == ["experiments"]
            assert config.hooks["experiments"] == "systemctl reload myapp"
        else:
            assert config.hooks == {"flags": "systemctl reload myapp"}
    else:
        path.write_text(block)
        raw = read_config(str(path), section="app:main")
        check_known_keys(raw)
        names = {key[len(PREFIX) :].split(".")[0] for key in raw if key.startswith(PREFIX)}
        assert names == {"flags"}
        assert parse_live_data_config(raw, "flags").node == "/flags"
        assert parse_zookeeper_config(raw).hosts == "zk01:2181,zk02:2181"


def test_the_secrets_file_example_is_read_as_documented(tmp_path):
    from livedata.secrets import SecretsStore

    blocks = re.findall(r"^```json\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1
    path = tmp_path / "secrets.json"
    path.write_text(blocks[0])
    store = SecretsStore(str(path))
    assert store.get_simple("secret/myservice/zk") == b"myservice:s3cret"
    assert store.get_simple("secret/other") == b"myservice:s3cret"
