"""The README and docs/ cannot drift from the code.

Every INI example in README.md and docs/*.md loads with the loader that reads it, every secrets-file example is
read as documented, and the README's walk from nothing to a mirrored file runs as written against a real
ZooKeeper: its INI, its node creation (the kazoo snippet and the zkCli.sh commands), livedata-write,
livedata-watcher and --check.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from livedata.config import check_known_keys, read_config
from livedata.live_data import PREFIX, parse_live_data_config
from livedata.testing import wait_for
from livedata.watcher import load_config
from livedata.zookeeper import parse_zookeeper_config

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```ini\n(.*?)^```", re.MULTILINE | re.DOTALL)

# A fragment (keys without a section) is read inside the smallest watcher config it could belong to.
FRAGMENT_BASE = "[live-data]\nzookeeper.hosts = zk01:2181\nnodes.flags.source = /flags\nnodes.flags.dest = {dest}\n"


def ini_blocks() -> list[str]:
    return [block for path in DOCS for block in BLOCK.findall(path.read_text())]


def test_the_docs_have_their_examples():
    kinds = {kind(block) for block in ini_blocks()}
    assert kinds == {"application", "fragment", "systemd", "watcher"}  # systemd: tests/test_systemd.py
    assert [kind(block) for block in BLOCK.findall(README.read_text())] == ["watcher"]


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


def json_blocks(path: Path) -> list[str]:
    return re.findall(r"^```json\n(.*?)^```", path.read_text(), re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("name", ["README.md", "docs/configuration.md"])
def test_the_secrets_file_example_is_read_as_documented(tmp_path, name):
    from livedata.secrets import SecretsStore

    blocks = json_blocks(REPO / name)
    assert len(blocks) == 1
    path = tmp_path / "secrets.json"
    path.write_text(blocks[0])
    store = SecretsStore(str(path))
    assert store.get_simple("secret/myservice/zk") == b"myservice:s3cret"
    if "secret/other" in blocks[0]:
        assert store.get_simple("secret/other") == b"myservice:s3cret"


# --- the walk from nothing to a mirrored file, run as the README writes it ----------------------------------

HOSTS = "zk01:2181,zk02:2181,zk03:2181"


def section(heading: str) -> str:
    """The README's text from a '### <heading>' line to the next heading."""
    text = README.read_text()
    start = text.index(f"\n### {heading}")
    end = text.index("\n#", start + 1)
    return text[start:end]


def fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def replaced(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, f"the README no longer says {old!r}: update this test's replacements"
        text = text.replace(old, new)
    return text


def test_the_readme_creates_the_node_with_zkcli_as_written(zk, zk_server, zk_path):
    (commands,) = [block for block in fenced(section("2. Create the node"), "sh") if "zkCli.sh" in block]
    zkcli = commands.split()[0]
    if not os.access(zkcli, os.X_OK):
        pytest.skip(f"{zkcli} is not installed (Debian's zookeeper package)")
    script = replaced(commands, {"-server zk01:2181": f"-server {zk_server.address}{zk_path}"})
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    node = f"{zk_path}/myservice/flags"
    assert zk.get(node)[0] == b"{}"
    assert {(acl.id.scheme, acl.perms) for acl in zk.get_acls(node)[0]} == {("digest", 31), ("world", 1)}


def test_the_readme_walk_from_nothing_to_a_mirrored_file(zk, zk_server, zk_path, tmp_path):
    (ini,) = fenced(section("1. Configure"), "ini")
    (secrets,) = fenced(section("1. Configure"), "json")
    (create,) = fenced(section("2. Create the node"), "python")
    (push,) = fenced(section("3. Push data"), "sh")
    (run,) = fenced(section("4. Run the watcher"), "sh")
    files = {
        HOSTS: f"{zk_server.address}{zk_path}",  # a chroot: the README's paths, inside this test's own node
        "/etc/livedata/secrets.json": str(tmp_path / "secrets.json"),
        "/run/livedata": str(tmp_path / "state"),
        "/var/local/livedata/flags.json": str(tmp_path / "dests" / "flags.json"),
    }
    config = tmp_path / "livedata.ini"
    config.write_text(replaced(ini, files))
    (tmp_path / "secrets.json").write_text(secrets)
    (tmp_path / "state").mkdir()

    result = subprocess.run([sys.executable, "-c", replaced(create, {HOSTS: files[HOSTS]})], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    node = f"{zk_path}/myservice/flags"
    assert {(acl.id.scheme, acl.perms) for acl in zk.get_acls(node)[0]} == {("digest", 31), ("world", 1)}

    dest = files["/var/local/livedata/flags.json"]
    commands = replaced(push + run, {"/etc/livedata/livedata.ini": str(config), "/var/local/livedata/flags.json": dest})
    bin_dir = os.path.dirname(sys.executable)
    watcher: subprocess.Popen[bytes] | None = None
    pushed = None
    try:
        for line in commands.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("echo "):
                quoted, target = line[len("echo ") :].split(" > ")
                pushed = shlex.split(quoted)[0].encode() + b"\n"
                (tmp_path / target).write_bytes(pushed)
            elif line.startswith("livedata-write "):
                argv = shlex.split(line)
                result = subprocess.run([os.path.join(bin_dir, argv[0]), *argv[1:]], cwd=tmp_path,
                                        capture_output=True, text=True, timeout=60)  # fmt: skip
                assert result.returncode == 0, result.stderr
                assert zk.get(node)[0] == pushed
            elif line.startswith("livedata-watcher ") and line.endswith("&"):
                argv = shlex.split(line[:-1])
                watcher = subprocess.Popen([os.path.join(bin_dir, argv[0]), *argv[1:]], cwd=tmp_path,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            elif line.startswith("livedata-watcher --check "):
                argv = shlex.split(line)

                def check(argv: list[str] = argv) -> subprocess.CompletedProcess[str] | None:
                    done = subprocess.run([os.path.join(bin_dir, argv[0]), *argv[1:]], capture_output=True,
                                          text=True, timeout=30)  # fmt: skip
                    return done if done.returncode == 0 else None

                assert watcher is not None, "the README starts the watcher before it checks"
                assert wait_for(check, 30, "--check to pass").stdout == "ok: 1 dests present and fresh\n"
            elif line.startswith("cat "):
                assert Path(shlex.split(line)[1]).read_bytes() == pushed
            else:
                assert not line, f"the README's walk has a command this test does not know: {line!r}"
        assert watcher is not None and pushed is not None
        assert oct((tmp_path / "dests" / "flags.json").stat().st_mode & 0o777) == "0o444"
    finally:
        if watcher is not None:
            watcher.terminate()
            watcher.wait(timeout=10)
