"""Malformed configurations: each is refused before connecting, with one line naming the key and exit status 2."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(30)

GOOD_NODE = "nodes.a.source = /a\nnodes.a.dest = {dest}/a\n"
HOSTS = "zookeeper.hosts = 127.0.0.1:1\n"

# (case id, INI text or bytes, text the single error line must contain)
CASES = [
    ("no-section-header", "zookeeper.hosts = x\n", "expected a [live-data] section header"),
    ("wrong-section", "[other]\n" + HOSTS, "[live-data]: section is missing"),
    ("garbage-bytes", b"[live-data]\n\x00\xff\xfe\x9c garbage", "not a UTF-8 text file"),
    ("not-ini", "[live-data]\nthis is not ini\n", "not a 'key = value' line"),
    ("duplicate-key", "[live-data]\n" + HOSTS + HOSTS + GOOD_NODE, "zookeeper.hosts: key appears twice"),
    ("missing-hosts", "[live-data]\n" + GOOD_NODE, "zookeeper.hosts: required key is missing"),
    ("missing-source", "[live-data]\n" + HOSTS + "nodes.a.dest = {dest}/a\n", "nodes.a.source: required key is missing"),
    ("missing-dest", "[live-data]\n" + HOSTS + "nodes.a.source = /a\n", "nodes.a.dest: required key is missing"),
    ("relative-dest", "[live-data]\n" + HOSTS + "nodes.a.source = /a\nnodes.a.dest = a.txt\n", "nodes.a.dest: 'a.txt' is not an absolute path"),
    ("relative-source", "[live-data]\n" + HOSTS + "nodes.a.source = a\nnodes.a.dest = {dest}/a\n", "nodes.a.source: 'a' is not an absolute ZooKeeper path"),
    ("duplicate-dest", "[live-data]\n" + HOSTS + GOOD_NODE + "nodes.b.source = /b\nnodes.b.dest = {dest}/a\n", "nodes.b.dest: {dest}/a is also the dest of nodes.a"),
    ("duplicate-dest-normalised", "[live-data]\n" + HOSTS + GOOD_NODE + "nodes.b.source = /b\nnodes.b.dest = {dest}/x/../a\n", "nodes.b.dest: {dest}/a is also the dest of nodes.a"),
    ("bad-mode-digits", "[live-data]\n" + HOSTS + GOOD_NODE + "nodes.a.mode = 0999\n", "nodes.a.mode: '0999' is not an octal file mode"),
    ("bad-mode-symbolic", "[live-data]\n" + HOSTS + GOOD_NODE + "nodes.a.mode = rw-r--r--\n", "nodes.a.mode: 'rw-r--r--' is not an octal file mode"),
    ("unknown-user", "[live-data]\n" + HOSTS + GOOD_NODE + "nodes.a.owner = no-such-user-here\n", "nodes.a.owner: 'no-such-user-here' is not a known user"),
    ("unknown-group", "[live-data]\n" + HOSTS + GOOD_NODE + "nodes.a.group = no-such-group-here\n", "nodes.a.group: 'no-such-group-here' is not a known group"),
    ("bad-heartbeat", "[live-data]\n" + HOSTS + GOOD_NODE + "watcher.heartbeat_interval = 5\n", "watcher.heartbeat_interval: '5' is not a time span"),
    ("zero-heartbeat", "[live-data]\n" + HOSTS + GOOD_NODE + "watcher.heartbeat_interval = 0 seconds\n", "watcher.heartbeat_interval: must be greater than zero"),
    ("bad-resync", "[live-data]\n" + HOSTS + GOOD_NODE + "watcher.resync_interval = soon\n", "watcher.resync_interval: 'soon' is not a time span"),
    ("bad-session-timeout", "[live-data]\n" + HOSTS + GOOD_NODE + "zookeeper.timeout = 5 parsecs\n", "zookeeper.timeout: '5 parsecs' is not a time span"),
    ("no-nodes", "[live-data]\n" + HOSTS, "nodes: no nodes configured"),
    ("node-key-typo", "[live-data]\n" + HOSTS + GOOD_NODE + "nodes.a.dset = /x\n", "nodes.a.dset: unknown key"),
    ("node-without-field", "[live-data]\n" + HOSTS + GOOD_NODE + "nodes.b = /x\n", "nodes.b: expected keys like nodes.b.<field>"),
    ("unset-variable", "[live-data]\n" + HOSTS + "nodes.a.source = /a\nnodes.a.dest = $LIVEDATA_UNSET_FOR_TEST/a\n", "nodes.a.dest: environment variable $LIVEDATA_UNSET_FOR_TEST is not set"),
    ("tls-cert-without-key", "[live-data]\n" + HOSTS + GOOD_NODE + "zookeeper.tls.cert = /c.pem\n", "zookeeper.tls.cert: tls.cert and tls.key must be set together"),
]  # fmt: skip


def run_watcher(*args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "LIVEDATA_UNSET_FOR_TEST"}
    return subprocess.run(
        [sys.executable, "-m", "livedata.watcher", *args], capture_output=True, text=True, timeout=20, env=env
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("livedata-watcher: ")
    assert expected in lines[0]


@pytest.mark.parametrize(("text", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_config_is_refused_without_touching_any_dest(tmp_path, text, expected):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "a").write_bytes(b"from an earlier run")
    path = tmp_path / "watcher.ini"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text.format(dest=dest))
    result = run_watcher(str(path))
    assert_one_line_error(result, expected.format(dest=dest))
    assert str(path) in result.stderr or "livedata-watcher: " in result.stderr
    assert sorted(os.listdir(dest)) == ["a"]
    assert (dest / "a").read_bytes() == b"from an earlier run"


def test_unreadable_config_file(tmp_path):
    assert_one_line_error(run_watcher(str(tmp_path / "absent.ini")), "cannot read config file: No such file")
    assert_one_line_error(run_watcher(str(tmp_path)), "cannot read config file: Is a directory")


@pytest.mark.parametrize(("args", "expected"), [((), "the following arguments are required: config"),
                                                (("a.ini", "b.ini"), "unrecognized arguments: b.ini"),
                                                (("--frobnicate", "a.ini"), "unrecognized arguments: --frobnicate")])
def test_usage_errors(args, expected):
    assert_one_line_error(run_watcher(*args), expected)


def test_secrets_file_is_not_needed_without_credentials(tmp_path):
    """Only a config error can stop the daemon early; a missing secrets file must not when no credentials are set."""
    path = tmp_path / "watcher.ini"
    path.write_text("[live-data]\n" + HOSTS + f"secrets.path = {tmp_path}/absent.json\n"
                    + GOOD_NODE.format(dest=tmp_path) + "zookeeper.timeout = 1 seconds\n")
    process = subprocess.Popen([sys.executable, "-m", "livedata.watcher", str(path)],
                               stderr=subprocess.PIPE, text=True)
    try:
        from livedata.testing.zookeeper import wait_for

        output: list[str] = []
        wait_for(lambda: output.append(process.stderr.readline()) or "watching 1 nodes" in "".join(output), 15,
                 "the daemon to start")
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(10)
