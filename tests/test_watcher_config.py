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
    ("no-nodes", "[live-data]\n" + HOSTS, "nodes: no nodes or trees configured"),
    ("node-key-typo", "[live-data]\n" + HOSTS + GOOD_NODE + "nodes.a.dset = /x\n", "nodes.a.dset: unknown key"),
    ("node-without-field", "[live-data]\n" + HOSTS + GOOD_NODE + "nodes.b = /x\n", "nodes.b: expected keys like nodes.b.<field>"),
    ("unset-variable", "[live-data]\n" + HOSTS + "nodes.a.source = /a\nnodes.a.dest = $LIVEDATA_UNSET_FOR_TEST/a\n", "nodes.a.dest: environment variable $LIVEDATA_UNSET_FOR_TEST is not set"),
    ("tls-cert-without-key", "[live-data]\n" + HOSTS + GOOD_NODE + "zookeeper.tls.cert = /c.pem\n", "zookeeper.tls.cert: tls.cert and tls.key must be set together"),
    ("dest-is-a-directory", "[live-data]\n" + HOSTS + "nodes.a.source = /a\nnodes.a.dest = {dest}\n", "nodes.a.dest: {dest} is a directory; a dest must name a file"),
    ("uid-out-of-range", "[live-data]\n" + HOSTS + GOOD_NODE + "nodes.a.owner = 4294967296\n", "nodes.a.owner: uid 4294967296 is out of range (0 to 4294967294)"),
    ("absent-is-error-without-state-dir", "[live-data]\n" + HOSTS + GOOD_NODE + "watcher.absent_is_error = true\n", "watcher.absent_is_error: needs watcher.state_dir"),
    ("absent-is-error-not-boolean", "[live-data]\n" + HOSTS + GOOD_NODE + "watcher.absent_is_error = strict\n", "watcher.absent_is_error: 'strict' is not a boolean"),
    ("gid-out-of-range", "[live-data]\n" + HOSTS + GOOD_NODE + "nodes.a.group = 4294967295\n", "nodes.a.group: gid 4294967295 is out of range"),
]  # fmt: skip

# Typos: a key in a namespace livedata owns (or one that looks like it) that nothing reads is refused, named.
TYPOS = [
    ("watcher.heartbeat_intreval = 1 minute", "watcher.heartbeat_intreval: unknown key; did you mean watcher.heartbeat_interval?"),
    ("watcher.metrics_adress = :9464", "watcher.metrics_adress: unknown key; did you mean watcher.metrics_address?"),
    ("watcher.resync = 1 minute", "watcher.resync: unknown key; did you mean watcher.resync_interval?"),
    ("zookeeper.timout = 5 seconds", "zookeeper.timout: unknown key; did you mean zookeeper.timeout?"),
    ("zookeeper.credential = x", "zookeeper.credential: unknown key; did you mean zookeeper.credentials?"),
    ("zookeeper.tls.verfy = false", "zookeeper.tls.verfy: unknown key; did you mean zookeeper.tls.verify?"),
    ("secret.path = /s.json", "secret.path: unknown key: secret. is not a livedata namespace; did you mean secrets.path?"),
    ("secrets.pth = /s.json", "secrets.pth: unknown key; did you mean secrets.path?"),
    ("node.z.source = /z", "node.z.source: unknown key: node. is not a livedata namespace; did you mean nodes.z.source?"),
    ("zookeper.hosts = x:1", "zookeper.hosts: unknown key: zookeper. is not a livedata namespace; did you mean zookeeper.hosts?"),
    ("Watcher.heartbeat_interval = 1 minute", "Watcher.heartbeat_interval: unknown key: Watcher. is not a livedata namespace"),
    ("nodes.a.ownr = root", "nodes.a.ownr: unknown key; did you mean nodes.a.owner?"),
    ("writer.compresion = gzip", "writer.compresion: unknown key; did you mean writer.compress?"),
    ("trees.t.sources = /t", "trees.t.sources: unknown key; did you mean trees.t.source?"),
]  # fmt: skip

# What the README's example used to break: values keep no inline comment; bad host lists are one line.
HOST_CASES = [
    ("zookeeper.hosts = 127.0.0.1:abc", "zookeeper.hosts: '127.0.0.1:abc': port 'abc' is not a number from 1 to 65535"),
    ("zookeeper.hosts = zk01:2181;chroot", "zookeeper.hosts: 'zk01:2181;chroot': port '2181;chroot' is not a number"),
    ("zookeeper.hosts = zk01:0", "port '0' is not a number from 1 to 65535"),
    ("zookeeper.hosts = zk01:65536", "port '65536' is not a number from 1 to 65535"),
    ("zookeeper.hosts = zk01:2181,,zk02:2181", "zookeeper.hosts: 'zk01:2181,,zk02:2181' has an empty entry"),
    ("zookeeper.hosts = :2181", "zookeeper.hosts: ':2181' is not host:port"),
    ("zookeeper.hosts = zk 01:2181", "zookeeper.hosts: 'zk 01:2181' is not host:port"),
    ("zookeeper.hosts = zk01:2181/bad/", "zookeeper.hosts: chroot '/bad/' is not a valid ZooKeeper path"),
    ("zookeeper.hosts = ::1:2181", "is not host:port (IPv6 addresses go in brackets"),
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


@pytest.mark.parametrize(("line", "expected"), TYPOS, ids=[case[0].split(" ")[0] for case in TYPOS])
def test_typo_keys_are_refused_naming_the_key(tmp_path, line, expected):
    dest = tmp_path / "dest"
    path = tmp_path / "watcher.ini"
    path.write_text("[live-data]\n" + HOSTS + GOOD_NODE.format(dest=dest) + line + "\n")
    result = run_watcher(str(path))
    assert_one_line_error(result, f"{path}: {expected}")
    assert not dest.exists()
    assert_one_line_error(run_watcher("--check", str(path)), expected)


@pytest.mark.parametrize(("line", "expected"), HOST_CASES, ids=[case[0].split("= ")[1] for case in HOST_CASES])
def test_bad_host_lists_are_one_line_and_exit_2(tmp_path, line, expected):
    path = tmp_path / "watcher.ini"
    path.write_text("[live-data]\n" + line + "\n" + GOOD_NODE.format(dest=tmp_path))
    assert_one_line_error(run_watcher(str(path)), expected)
    assert_one_line_error(run_watcher("--check", str(path)), expected)


def test_inline_comments_are_not_part_of_values(tmp_path):
    path = tmp_path / "watcher.ini"
    path.write_text(
        "[live-data]\n"
        "zookeeper.hosts = 127.0.0.1:1          ; optional chroot at the end: zk01:2181,zk02:2181/some/root\n"
        f"nodes.a.source = /a\nnodes.a.dest = {tmp_path}/a\n"
        "nodes.a.mode = 0400                    ; optional, default 0400\n"
        "nodes.a.owner = 0                      # root\n"
    )
    from livedata.watcher import load_config

    config = load_config(str(path))
    assert config.raw["zookeeper.hosts"] == "127.0.0.1:1"
    assert config.nodes[0].file.mode == 0o400
    assert config.nodes[0].file.owner == 0


def test_version_on_every_command():
    for module in ("livedata.watcher", "livedata.writer", "livedata.example_app"):
        result = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=20)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith("0.1.0") or "not installed" in result.stdout


@pytest.mark.parametrize("name", ["prod.ini", "dev.ini"])
def test_shipped_watcher_configs_load(monkeypatch, tmp_path, name):
    from livedata.watcher import load_config

    monkeypatch.setenv("LIVEDATA_DEV_ZK", "127.0.0.1:2181")
    monkeypatch.setenv("LIVEDATA_DEV_DIR", str(tmp_path))
    config = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", name))
    assert len(config.nodes) == 2


JOINED_LINES = "[live-data]\n" + HOSTS + "nodes.a.source = /x\nnodes.a.dest = {dest}/q.json\n" \
    "  nodes.b.source = /y\n  nodes.b.dest = {dest}/r.json\n"

PROGRAMS = [
    ("livedata.watcher", ()),
    ("livedata.watcher", ("--check",)),
    ("livedata.watcher", ("--alive",)),
    ("livedata.writer", ("-", "/x")),
    ("livedata.reader", ("/x",)),
]


@pytest.mark.parametrize(("module", "args"), PROGRAMS, ids=[" ".join((p[0], *p[1][:1])) for p in PROGRAMS])
def test_an_indented_line_is_refused_by_every_program_and_nothing_is_created(tmp_path, module, args):
    """Joined to nodes.a.dest, it would drop node b and create a directory whose name holds a line break."""
    path = tmp_path / "watcher.ini"
    path.write_text(JOINED_LINES.format(dest=tmp_path / "dest"))
    argv = [*args, str(path)] if module == "livedata.watcher" else [str(path), *args]
    result = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=20,
                            input="")  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.endswith(
        f": {path}: nodes.a.dest: line 5: this indented line would be joined to the value of nodes.a.dest "
        "(line 4); continuation lines are not supported: write each key and each value on one line, without "
        "indentation"
    )
    assert sorted(os.listdir(tmp_path)) == ["watcher.ini"]
