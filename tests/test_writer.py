"""The writer against a real ZooKeeper: exact output, every refusal, ACLs, an unreachable server, and the CAS race.

Output and exit codes are checked by running the command as a subprocess,
exactly as a CI job would; the compare-and-set race is driven in-process
through ``read_node``/``write_node`` so that the competing write lands
precisely between our read and our write.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kazoo.security import READ_ACL_UNSAFE, make_digest_acl

from livedata.config import read_config
from livedata.secrets import secrets_store_from_config
from livedata.testing.zookeeper import free_ports
from livedata.writer import (
    NO_CHANGES,
    NodeChangedError,
    NodeMissingError,
    read_node,
    render_diff,
    write_node,
)
from livedata.zookeeper import parse_zookeeper_config, zookeeper_client_from_config

REPO = Path(__file__).resolve().parent.parent
OLD_JSON = b'{\n    "key": "one"\n}\n'
NEW_JSON = b'{\n    "key": "two"\n}\n'


def write_config(directory: Path, hosts: str, **extra: str) -> Path:
    lines = ["[live-data]", f"zookeeper.hosts = {hosts}", "zookeeper.timeout = 5 seconds"]
    lines += [f"{key} = {value}" for key, value in extra.items()]
    path = directory / "writer.ini"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_writer(cwd: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "livedata.writer", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        encoding="utf-8",
        timeout=60,
    )


def assert_one_line_failure(result: subprocess.CompletedProcess[str], status: int, *fragments: str) -> str:
    """Exit status, no traceback, exactly one line on stderr (ours), containing each fragment."""
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("livedata.writer: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture
def config(tmp_path, zk_server) -> Path:
    return write_config(tmp_path, zk_server.address)


@pytest.fixture
def node(zk, zk_path) -> str:
    path = f"{zk_path}/target"
    zk.create(path, OLD_JSON)
    return path


# --- a normal run and its exact output ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_normal_run_prints_the_diff_and_writes(tmp_path, config, zk, node):
    (tmp_path / "input.json").write_bytes(NEW_JSON)
    result = run_writer(tmp_path, "writer.ini", "input.json", node)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == (
        f"Writing input.json to ZooKeeper {node}...\n"
        f"--- {node} (current)\n"
        "+++ input.json (new)\n"
        "@@ -1,3 +1,3 @@\n"
        " {\n"
        '-    "key": "one"\n'
        '+    "key": "two"\n'
        " }\n"
        "Wrote data to ZooKeeper.\n"
    )
    data, stat = zk.get(node)
    assert data == NEW_JSON
    assert stat.version == 1


@pytest.mark.timeout(60)
def test_client_runs_on_the_gevent_handler_like_the_watcher(tmp_path, config, zk, node):
    (tmp_path / "input.json").write_bytes(OLD_JSON)
    result = run_writer(tmp_path, "writer.ini", "input.json", node, "--debug")
    assert result.returncode == 0, result.stderr
    assert "connected to ZooKeeper using GeventHandler" in result.stderr  # livedata.handler, a gevent handler


@pytest.mark.timeout(60)
def test_identical_content_is_not_written(tmp_path, config, zk, node):
    (tmp_path / "input.json").write_bytes(OLD_JSON)
    result = run_writer(tmp_path, "writer.ini", "input.json", node)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{NO_CHANGES}\n"
    assert result.stdout == "No changes detected. Not writing.\n"
    assert zk.get(node)[1].version == 0  # not even rewritten with the same bytes


@pytest.mark.timeout(60)
def test_dry_run_shows_the_diff_and_writes_nothing(tmp_path, config, zk, node):
    (tmp_path / "input.json").write_bytes(NEW_JSON)
    result = run_writer(tmp_path, "writer.ini", "input.json", node, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"--- {node} (current)\n+++ input.json (new)\n" in result.stdout
    assert '-    "key": "one"\n+    "key": "two"\n' in result.stdout
    assert "Wrote data" not in result.stdout
    assert result.stdout.endswith("Dry run: not writing.\n")
    data, stat = zk.get(node)
    assert (data, stat.version) == (OLD_JSON, 0)


@pytest.mark.timeout(60)
def test_missing_trailing_newline_is_marked_and_lines_still_end(tmp_path, config, zk, zk_path):
    path = f"{zk_path}/no-newline"
    zk.create(path, b"alpha\nbeta")
    (tmp_path / "input.txt").write_bytes(b"alpha\ngamma")
    result = run_writer(tmp_path, "writer.ini", "input.txt", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"Writing input.txt to ZooKeeper {path}...\n"
        f"--- {path} (current)\n"
        "+++ input.txt (new)\n"
        "@@ -1,2 +1,2 @@\n"
        " alpha\n"
        "-beta\n"
        "\\ No newline at end of file\n"
        "+gamma\n"
        "\\ No newline at end of file\n"
        "Wrote data to ZooKeeper.\n"
    )
    assert zk.get(path)[0] == b"alpha\ngamma"


@pytest.mark.timeout(60)
def test_non_ascii_text_is_diffed_as_text(tmp_path, config, zk, zk_path):
    path = f"{zk_path}/unicode"
    zk.create(path, "naïve\n".encode())
    (tmp_path / "input.txt").write_bytes("café ☕\n".encode())
    result = run_writer(tmp_path, "writer.ini", "input.txt", path)
    assert result.returncode == 0, result.stderr
    assert "-naïve\n+café ☕\n" in result.stdout
    assert zk.get(path)[0] == "café ☕\n".encode()


@pytest.mark.timeout(60)
def test_standard_input(tmp_path, config, zk, node):
    result = run_writer(tmp_path, "writer.ini", "-", node, stdin="from a pipe\n")
    assert result.returncode == 0, result.stderr
    header = f"Writing <stdin> to ZooKeeper {node}...\n--- {node} (current)\n+++ <stdin> (new)\n"
    assert result.stdout.startswith(header)
    assert "+from a pipe\n" in result.stdout
    assert zk.get(node)[0] == b"from a pipe\n"


@pytest.mark.timeout(60)
def test_binary_data_is_summarised_by_size(tmp_path, config, zk, zk_path):
    path = f"{zk_path}/binary"
    zk.create(path, b"\x00\xff\xfe old")
    new = bytes(range(256))
    (tmp_path / "blob.bin").write_bytes(new)
    result = run_writer(tmp_path, "writer.ini", "blob.bin", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"Writing blob.bin to ZooKeeper {path}...\n"
        f"Binary data: {path} (current) is 7 bytes, blob.bin (new) is 256 bytes.\n"
        "Wrote data to ZooKeeper.\n"
    )
    assert zk.get(path)[0] == new


@pytest.mark.timeout(60)
def test_null_data_node_reads_as_empty(tmp_path, config, zk, zk_path):
    path = f"{zk_path}/null"
    zk.create(path, None)
    assert zk.get(path)[0] is None  # really null, not empty bytes
    (tmp_path / "input.txt").write_bytes(b"first\n")
    result = run_writer(tmp_path, "writer.ini", "input.txt", path)
    assert result.returncode == 0, result.stderr
    assert "@@ -0,0 +1 @@\n+first\n" in result.stdout
    assert zk.get(path)[0] == b"first\n"


@pytest.mark.timeout(60)
def test_empty_input_over_null_data_is_no_change(tmp_path, config, zk, zk_path):
    path = f"{zk_path}/null"
    zk.create(path, None)
    (tmp_path / "empty.txt").write_bytes(b"")
    result = run_writer(tmp_path, "writer.ini", "empty.txt", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "No changes detected. Not writing.\n"
    assert zk.get(path)[1].version == 0


# --- refusals before anything is sent ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_missing_node_is_never_created(tmp_path, config, zk, zk_path):
    path = f"{zk_path}/absent"
    (tmp_path / "input.json").write_bytes(NEW_JSON)
    result = run_writer(tmp_path, "writer.ini", "input.json", path)
    assert_one_line_failure(result, 1, path, "does not exist", "ACL")
    assert result.stdout == ""
    assert zk.exists(path) is None


@pytest.mark.timeout(60)
def test_invalid_json_is_refused_with_line_and_column(tmp_path, config, zk, node):
    (tmp_path / "input.json").write_bytes(b'{\n    "key": "two",\n}\n')
    result = run_writer(tmp_path, "writer.ini", "input.json", node)
    assert_one_line_failure(result, 1, "input.json", "not valid JSON", "line 3, column 1")
    assert zk.get(node)[0] == OLD_JSON


@pytest.mark.timeout(60)
def test_json_that_is_not_utf8_is_refused(tmp_path, config, zk, node):
    (tmp_path / "input.json").write_bytes(b'{"key": "\xff"}')
    result = run_writer(tmp_path, "writer.ini", "input.json", node)
    assert_one_line_failure(result, 1, "input.json", "not valid JSON", "UTF-8")
    assert zk.get(node)[0] == OLD_JSON


@pytest.mark.timeout(60)
def test_no_validate_writes_invalid_json(tmp_path, config, zk, node):
    (tmp_path / "input.json").write_bytes(b"{not json")
    result = run_writer(tmp_path, "writer.ini", "input.json", node, "--no-validate")
    assert result.returncode == 0, result.stderr
    assert zk.get(node)[0] == b"{not json"


@pytest.mark.timeout(60)
def test_only_json_sources_are_validated(tmp_path, config, zk, node):
    (tmp_path / "input.txt").write_bytes(b"{not json")
    result = run_writer(tmp_path, "writer.ini", "input.txt", node)
    assert result.returncode == 0, result.stderr
    assert zk.get(node)[0] == b"{not json"


@pytest.mark.timeout(60)
def test_empty_input_over_data_needs_allow_empty(tmp_path, config, zk, node):
    (tmp_path / "empty.txt").write_bytes(b"")
    refused = run_writer(tmp_path, "writer.ini", "empty.txt", node)
    assert_one_line_failure(refused, 1, "empty.txt", "empty", str(len(OLD_JSON)), "--allow-empty")
    assert zk.get(node)[0] == OLD_JSON

    allowed = run_writer(tmp_path, "writer.ini", "empty.txt", node, "--allow-empty")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.endswith("Wrote data to ZooKeeper.\n")
    assert zk.get(node)[0] == b""


@pytest.mark.timeout(60)
def test_empty_input_is_refused_even_in_a_dry_run(tmp_path, config, zk, node):
    (tmp_path / "empty.txt").write_bytes(b"")
    result = run_writer(tmp_path, "writer.ini", "empty.txt", node, "--dry-run")
    assert_one_line_failure(result, 1, "--allow-empty")
    assert zk.get(node)[0] == OLD_JSON


@pytest.mark.timeout(60)
def test_data_over_max_node_size_is_refused_with_both_sizes(tmp_path, zk_server, zk, node):
    write_config(tmp_path, zk_server.address, **{"zookeeper.max_node_size": "100"})
    (tmp_path / "big.txt").write_bytes(b"x" * 101)
    refused = run_writer(tmp_path, "writer.ini", "big.txt", node, "--compress", "never")  # auto would compress it
    assert_one_line_failure(refused, 1, "big.txt", "101 bytes", "100 bytes", "zookeeper.max_node_size")
    assert zk.get(node)[0] == OLD_JSON

    (tmp_path / "fits.txt").write_bytes(b"x" * 100)
    accepted = run_writer(tmp_path, "writer.ini", "fits.txt", node)
    assert accepted.returncode == 0, accepted.stderr
    assert zk.get(node)[0] == b"x" * 100


@pytest.mark.timeout(60)
def test_default_size_limit_stops_what_the_server_would_reject(tmp_path, config, zk, node):
    (tmp_path / "huge.txt").write_bytes(b"y" * (1024 * 1024 + 1))
    result = run_writer(tmp_path, "writer.ini", "huge.txt", node, "--compress", "never")
    assert_one_line_failure(result, 1, str(1024 * 1024 + 1), "1047552")
    assert zk.get(node)[0] == OLD_JSON


@pytest.mark.timeout(60)
@pytest.mark.parametrize("source", ["nowhere.json", "."])
def test_unreadable_source(tmp_path, config, zk, node, source):
    result = run_writer(tmp_path, "writer.ini", source, node)
    assert_one_line_failure(result, 1, f"cannot read {source}")
    assert zk.get(node)[0] == OLD_JSON


# --- credentials and ACLs ----------------------------------------------------------------------------


def secrets_config(tmp_path: Path, hosts: str, credential: str) -> Path:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"secrets": {"secret/ci/zk": {"type": "simple", "value": credential}}}))
    return write_config(
        tmp_path, hosts, **{"secrets.path": str(secrets), "zookeeper.credentials": "secret/ci/zk"}
    )


@pytest.fixture
def protected_node(zk, zk_path) -> str:
    """Readable and writable only by the CI identity."""
    path = f"{zk_path}/protected"
    zk.create(path, OLD_JSON, acl=[make_digest_acl("ci", "right-password", all=True)])
    return path


@pytest.fixture
def world_readable_node(zk, zk_path) -> str:
    """The usual production shape: every watcher reads anonymously, only the CI identity writes."""
    path = f"{zk_path}/world-readable"
    zk.create(path, OLD_JSON, acl=[make_digest_acl("ci", "right-password", all=True), *READ_ACL_UNSAFE])
    return path


@pytest.mark.timeout(60)
def test_acl_protected_node_written_with_the_right_credentials(tmp_path, zk_server, zk, protected_node):
    secrets_config(tmp_path, zk_server.address, "ci:right-password")
    (tmp_path / "input.json").write_bytes(NEW_JSON)
    result = run_writer(tmp_path, "writer.ini", "input.json", protected_node)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("Wrote data to ZooKeeper.\n")
    zk.add_auth("digest", "ci:right-password")
    assert zk.get(protected_node)[0] == NEW_JSON


@pytest.mark.timeout(60)
def test_acl_protected_node_refused_with_wrong_credentials(tmp_path, zk_server, zk, protected_node):
    secrets_config(tmp_path, zk_server.address, "ci:wrong-password")
    (tmp_path / "input.json").write_bytes(NEW_JSON)
    result = run_writer(tmp_path, "writer.ini", "input.json", protected_node)
    assert_one_line_failure(result, 1, "does not allow", "read", protected_node, "zookeeper.credentials")
    zk.add_auth("digest", "ci:right-password")
    data, stat = zk.get(protected_node)
    assert (data, stat.version) == (OLD_JSON, 0)


@pytest.mark.timeout(60)
def test_world_readable_node_refuses_the_write_of_wrong_credentials(tmp_path, zk_server, zk, world_readable_node):
    secrets_config(tmp_path, zk_server.address, "ci:wrong-password")
    (tmp_path / "input.json").write_bytes(NEW_JSON)
    result = run_writer(tmp_path, "writer.ini", "input.json", world_readable_node)
    assert_one_line_failure(result, 1, "does not allow", "write", world_readable_node)
    data, stat = zk.get(world_readable_node)
    assert (data, stat.version) == (OLD_JSON, 0)


@pytest.mark.timeout(60)
def test_anonymous_write_to_a_protected_node_is_refused(tmp_path, config, zk, world_readable_node):
    (tmp_path / "input.json").write_bytes(NEW_JSON)
    result = run_writer(tmp_path, "writer.ini", "input.json", world_readable_node)
    assert_one_line_failure(result, 1, "does not allow", "write")
    assert zk.get(world_readable_node)[0] == OLD_JSON


@pytest.mark.timeout(60)
def test_missing_secrets_file_is_one_line(tmp_path, zk_server, zk, node):
    write_config(
        tmp_path,
        zk_server.address,
        **{"secrets.path": str(tmp_path / "no-secrets.json"), "zookeeper.credentials": "secret/ci/zk"},
    )
    (tmp_path / "input.json").write_bytes(NEW_JSON)
    result = run_writer(tmp_path, "writer.ini", "input.json", node)
    assert_one_line_failure(result, 1, "zookeeper.credentials", "no-secrets.json")
    assert zk.get(node)[0] == OLD_JSON


@pytest.mark.timeout(60)
def test_malformed_credential_secret_is_one_line(tmp_path, zk_server, zk, node):
    secrets_config(tmp_path, zk_server.address, "no-colon-here")
    (tmp_path / "input.json").write_bytes(NEW_JSON)
    result = run_writer(tmp_path, "writer.ini", "input.json", node)
    assert_one_line_failure(result, 1, "username:password")
    assert zk.get(node)[0] == OLD_JSON


# --- connection and configuration failures -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_unreachable_zookeeper_fails_within_the_configured_limit(tmp_path):
    (port,) = free_ports(1)
    config = tmp_path / "writer.ini"
    config.write_text(f"[live-data]\nzookeeper.hosts = 127.0.0.1:{port}\nzookeeper.timeout = 1 seconds\n")
    (tmp_path / "input.json").write_bytes(NEW_JSON)
    result = run_writer(tmp_path, "writer.ini", "input.json", "/anything")
    warning, failure = result.stderr.splitlines()  # the first refused attempt is told, then the failure
    assert f"cannot reach ZooKeeper server 127.0.0.1:{port}: Connection refused" in warning
    assert_one_line_failure(
        subprocess.CompletedProcess(result.args, result.returncode, result.stdout, failure + "\n"), 1,
        "could not connect", f"127.0.0.1:{port}", "within 2 seconds", "(last attempt: server", "Connection refused",
    )  # fmt: skip
    assert result.stdout == ""


def connection_failure_lines(command: list[str], cwd: Path) -> tuple[str, bool, str]:
    """The first stderr line, whether the command was still running once it came, and the last line."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    first = process.stderr.readline()
    still_trying = process.poll() is None
    rest = process.stderr.read().splitlines()
    assert process.wait(timeout=60) == 1
    return first, still_trying, rest[-1] if rest else first


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("host", "told"),
    [("127.0.0.1:{port}", "cannot reach ZooKeeper server 127.0.0.1:{port}: Connection refused"),
     ("livedata-test.invalid:{port}", "cannot reach ZooKeeper: cannot resolve livedata-test.invalid")],
)  # fmt: skip
def test_a_refused_or_unresolvable_server_is_told_at_once_not_after_the_timeout(tmp_path, host, told):
    """zookeeper.timeout 5 s: the writer tries for 10 s, but says at its first failed attempt what goes wrong."""
    (port,) = free_ports(1)
    hosts = host.format(port=port)
    write_config(tmp_path, hosts)
    (tmp_path / "input.json").write_bytes(NEW_JSON)
    command = [sys.executable, "-m", "livedata.writer", "writer.ini", "input.json", "/anything"]
    first, still_trying, last = connection_failure_lines(command, tmp_path)
    assert told.format(port=port) in first and f"still trying {hosts} for up to 10 seconds" in first
    assert still_trying, "told only when giving up"
    assert last.startswith(f"livedata.writer: could not connect to ZooKeeper at {hosts} within 10 seconds")
    assert "(last attempt: " in last


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("ini", "fragments"),
    [
        ("[live-data]\nzookeeper.timeout = 5 seconds\n", ["zookeeper.hosts", "missing"]),
        ("[live-data]\nzookeeper.hosts = 127.0.0.1:2181\nzookeeper.timeout = soon\n", ["zookeeper.timeout"]),
        ("[live-data]\nzookeeper.hosts = 127.0.0.1:2181\nzookeeper.max_node_size = big\n", ["max_node_size"]),
        ("[live-data]\nzookeeper.hosts = 127.0.0.1:port\n", ["zookeeper.hosts", "port"]),
        ("[live-data]\nzookeeper.hosts = 127.0.0.1:2181\nsecrets.path = relative.json\n", ["secrets.path"]),
        ("[other]\nzookeeper.hosts = 127.0.0.1:2181\n", ["[live-data]"]),
    ],
)
def test_bad_config_is_a_usage_error(tmp_path, ini, fragments):
    (tmp_path / "writer.ini").write_text(ini)
    (tmp_path / "input.json").write_bytes(NEW_JSON)
    result = run_writer(tmp_path, "writer.ini", "input.json", "/anything")
    assert_one_line_failure(result, 2, "writer.ini", *fragments)


@pytest.mark.timeout(60)
def test_missing_config_file_is_a_usage_error(tmp_path):
    (tmp_path / "input.json").write_bytes(NEW_JSON)
    result = run_writer(tmp_path, "absent.ini", "input.json", "/anything")
    assert_one_line_failure(result, 2, "absent.ini")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args",
    [
        [],
        ["writer.ini", "input.json"],
        ["writer.ini", "input.json", "relative/node"],
        ["writer.ini", "input.json", "/trailing/"],
        ["writer.ini", "input.json", "/node", "--no-such-flag"],
    ],
)
def test_usage_errors(tmp_path, args):
    result = run_writer(tmp_path, *args)
    assert_one_line_failure(result, 2)
    assert result.stdout == ""


# --- the compare-and-set race, for real ----------------------------------------------------------------


@pytest.fixture
def writer_client(zk_server):
    """A client built exactly as the writer builds its own."""
    config = {"zookeeper.hosts": zk_server.address}
    client = zookeeper_client_from_config(secrets_store_from_config(config), config)
    client.start(timeout=30)
    yield client
    client.stop()
    client.close()


@pytest.mark.timeout(60)
def test_a_write_between_our_read_and_our_write_wins(writer_client, zk, node):
    current, version = read_node(writer_client, node)
    assert (current, version) == (OLD_JSON, 0)

    zk.set(node, b"the other writer's data")  # lands between our read and our write

    with pytest.raises(NodeChangedError) as caught:
        write_node(writer_client, node, NEW_JSON, version)
    message = str(caught.value)
    assert "changed underneath" in message
    assert node in message
    assert "\n" not in message
    assert caught.value.status == 1
    data, stat = zk.get(node)
    assert (data, stat.version) == (b"the other writer's data", 1)


@pytest.mark.timeout(60)
def test_write_node_succeeds_at_the_version_read(writer_client, zk, node):
    _, version = read_node(writer_client, node)
    assert write_node(writer_client, node, NEW_JSON, version) == version + 1
    assert zk.get(node)[0] == NEW_JSON


@pytest.mark.timeout(60)
def test_node_deleted_between_read_and_write(writer_client, zk, node):
    _, version = read_node(writer_client, node)
    zk.delete(node)
    with pytest.raises(NodeMissingError):
        write_node(writer_client, node, NEW_JSON, version)
    assert zk.exists(node) is None


# --- pieces that need no server --------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_diff_splits_only_on_newlines():
    old = "a\u2028b\x0cc\r\nend\n".encode()
    new = "a\u2028b\x0cc\r\nfin\n".encode()
    diff = render_diff(old, new, "old", "new")
    assert diff == "--- old\n+++ new\n@@ -1,2 +1,2 @@\n a\u2028b\x0cc\r\n-end\n+fin\n"


@pytest.mark.timeout(10)
def test_diff_of_one_undecodable_side_is_a_size_line():
    assert render_diff(b"text\n", b"\xff", "a", "b") == "Binary data: a is 5 bytes, b is 1 bytes.\n"
    assert render_diff(b"\xc3", b"text", "a", "b") == "Binary data: a is 1 bytes, b is 4 bytes.\n"


@pytest.mark.timeout(10)
def test_example_ci_config_is_valid(monkeypatch):
    monkeypatch.setenv("ZOOKEEPER_HOSTS", "zk01:2181,zk02:2181")
    config = read_config(str(REPO / "conf" / "ci.ini"))
    settings = parse_zookeeper_config(config)
    assert settings.hosts == "zk01:2181,zk02:2181"
    assert settings.credentials == ["secret/ci/zookeeper_credentials"]
    assert settings.timeout == 5.0
    assert secrets_store_from_config(config).path == "/var/local/secrets.json"


# --- the tools/ script ---------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_tools_write_node_end_to_end_from_another_directory(tmp_path, config, zk, node):
    (tmp_path / "input.json").write_bytes(NEW_JSON)
    (tmp_path / "livedata").mkdir()  # a directory of that name in the cwd must not shadow the package
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [str(REPO / "tools" / "write_node"), "writer.ini", "input.json", node],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=environment,
        timeout=110,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"Writing input.json to ZooKeeper {node}...\n")
    assert result.stdout.endswith("Wrote data to ZooKeeper.\n")
    assert zk.get(node)[0] == NEW_JSON


# --- shipping: diff cap, bounded input, shared configs, the console script ---------------------------------


@pytest.mark.timeout(60)
def test_long_diffs_are_capped_with_a_summary(tmp_path, config, zk, node):
    (tmp_path / "long.txt").write_text("".join(f"line {i}\n" for i in range(1000)))
    result = run_writer(tmp_path, "writer.ini", "long.txt", node, "--dry-run", "--diff-lines", "20")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + 20 + 2  # "Writing ...", 20 diff lines, the summary, "Dry run"
    assert lines[-2].startswith("... diff cut after 20 of 1006 lines: 1000 lines added, 3 removed in all")
    default = run_writer(tmp_path, "writer.ini", "long.txt", node, "--dry-run")
    assert len(default.stdout.splitlines()) == 1 + 200 + 2
    full = run_writer(tmp_path, "writer.ini", "long.txt", node, "--dry-run", "--full-diff")
    assert len(full.stdout.splitlines()) == 1 + 1006 + 1
    assert "diff cut" not in full.stdout


def test_render_diff_cap_counts_what_was_cut():
    diff = render_diff(b"", b"a\nb\nc\n", "old", "new", max_lines=3)
    assert diff.splitlines()[:3] == ["--- old", "+++ new", "@@ -0,0 +1,3 @@"]
    assert diff.splitlines()[3].startswith("... diff cut after 3 of 6 lines: 3 lines added, 0 removed")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("settings", "refusal"),
    [
        ({"zookeeper.max_node_size": "1000", "writer.compress": "never"}, "a node holds at most 1000 bytes "
         "(zookeeper.max_node_size)"),
        ({"writer.max_payload_size": "1000"}, "above writer.max_payload_size (1,000 bytes)"),
    ],
)  # fmt: skip
def test_oversize_stdin_is_refused_without_reading_it_all(tmp_path, zk_server, zk, node, settings, refusal):
    """300 MB piped in: refused after the limit, with the writer's memory far below the input's size."""
    write_config(tmp_path, zk_server.address, **settings)
    # VmHWM (peak resident memory of this program image): ru_maxrss would include the forking pytest's own.
    code = (
        "import re, runpy, sys; sys.argv = ['livedata.writer', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('livedata.writer', run_name='__main__')\n"
        "finally:\n    status = open('/proc/self/status').read()\n"
        "    print(re.search(r'VmHWM:\\s*(\\d+) kB', status).group(1), file=sys.stderr)\n"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", code, "writer.ini", "-", node], cwd=tmp_path,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert writer.stdin is not None
    chunk = b"z" * (1024 * 1024)
    try:
        for _ in range(300):
            writer.stdin.write(chunk)
    except BrokenPipeError:
        pass  # it stopped reading: exactly the point
    finally:
        with contextlib.suppress(BrokenPipeError):
            writer.stdin.close()
    assert writer.stderr is not None
    err = writer.stderr.read()
    writer.wait(timeout=50)
    lines = err.decode().splitlines()
    assert writer.returncode == 1, err
    amount = "more than 1,000 bytes," if "payload" in refusal else "more than 1000 bytes but"
    assert lines[0] == f"livedata.writer: <stdin> is {amount} {refusal}; nothing written"
    assert int(lines[1]) < 100 * 1024  # KiB: far below the 300 MB offered
    assert zk.get(node)[0] == OLD_JSON


@pytest.mark.timeout(60)
def test_dev_config_works_without_the_watchers_variables(tmp_path, zk_server, zk, node):
    """conf/dev.ini's nodes.* use $LIVEDATA_DEV_DIR; the writer reads only zookeeper.* and needs only that."""
    (tmp_path / "input.json").write_bytes(NEW_JSON)
    environment = {key: value for key, value in os.environ.items() if key != "LIVEDATA_DEV_DIR"}
    environment["LIVEDATA_DEV_ZK"] = zk_server.address
    result = subprocess.run(
        [sys.executable, "-m", "livedata.writer", str(REPO / "conf" / "dev.ini"), "input.json", node],
        cwd=tmp_path, capture_output=True, text=True, env=environment, timeout=50,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert zk.get(node)[0] == NEW_JSON


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ("zookeeper.timout = 5 seconds", "zookeeper.timout: unknown key; did you mean zookeeper.timeout?"),
        ("writer.compresion = gzip", "writer.compresion: unknown key; did you mean writer.compress?"),
        ("secret.path = /x", "secret.path: unknown key: secret. is not a livedata namespace"),
    ],
)
def test_typos_in_the_writers_keys_are_usage_errors(tmp_path, extra, fragment):
    (tmp_path / "writer.ini").write_text(f"[live-data]\nzookeeper.hosts = 127.0.0.1:1\n{extra}\n")
    (tmp_path / "input.txt").write_text("x\n")
    assert_one_line_failure(run_writer(tmp_path, "writer.ini", "input.txt", "/n"), 2, fragment)


@pytest.mark.timeout(30)
def test_a_bad_host_list_is_a_usage_error(tmp_path):
    (tmp_path / "writer.ini").write_text("[live-data]\nzookeeper.hosts = 127.0.0.1:abc\n")
    (tmp_path / "input.txt").write_text("x\n")
    result = run_writer(tmp_path, "writer.ini", "input.txt", "/n")
    assert_one_line_failure(result, 2, "zookeeper.hosts: '127.0.0.1:abc': port 'abc' is not a number")


def test_console_script_is_declared():
    import configparser

    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    scripts = setup["options.entry_points"]["console_scripts"]
    assert "livedata-write = livedata.writer:main" in scripts
    assert "livedata-watcher = livedata.watcher:main" in scripts


def test_write_node_installs_only_the_package():
    """A CI job must not get ZooKeeper, Java or test tools: tools/write_node never runs tools/setup."""
    script = (REPO / "tools" / "write_node").read_text()
    commands = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert not any("tools/setup" in line for line in commands)
    assert any('pip install -q --disable-pip-version-check -e "$repo"' in line for line in commands)
    assert not any("[test" in line or "apt-get" in line for line in commands)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_write_node_creates_a_venv_with_the_package_alone(tmp_path):
    """In a checkout without .venv: a quiet install of the package and its two dependencies, nothing else."""
    import shutil

    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "livedata", checkout / "livedata", ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / "tools").mkdir()
    for name in ("tools/write_node", "setup.cfg", "setup.py", "README.md"):
        shutil.copy2(REPO / name, checkout / name)
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for _ in range(2):  # the second run finds the venv ready
        result = subprocess.run([str(checkout / "tools" / "write_node"), "--version"], capture_output=True,
                                text=True, env=environment, timeout=280)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert (result.stdout, result.stderr) == ("write_node 0.1.0\n", "")
    installed = set(os.listdir(checkout / ".venv" / "bin"))
    assert {"livedata-write", "livedata-watcher"} <= installed
    assert not installed & {"pytest", "mypy", "ruff"}


# --- a writer that is safe in CI: diffs bounded in bytes, JSON by path, formats, names ---------------------------


def test_render_diff_caps_bytes_even_within_one_line():
    old, new = b"a" * 300_000 + b"\n", b"a" * 299_999 + b"b\n"
    diff = render_diff(old, new, "old", "new", max_lines=200, max_bytes=10_000)
    assert len(diff.encode()) < 10_000 + 200  # the cap plus the summary line
    last = diff.splitlines()[-1]
    assert last.startswith("... diff cut after 10,000 of 600,032 bytes (5 lines): 1 lines added, 1 removed in all")
    assert last.endswith("(--full-diff shows everything, --diff-bytes N more)")
    assert render_diff(old, new, "old", "new").count("\n") == 5  # uncapped: whole


def test_render_diff_shows_a_json_document_by_path_when_its_lines_do_not_fit():
    old = json.dumps({"items": [{"id": n, "owner": "a/b~c"} for n in range(3000)], "v": 1}).encode()
    document = json.loads(old)
    document["items"][1234]["owner"] = "x"
    document["items"].insert(10, {"id": "new"})
    new = json.dumps(document).encode()  # one line each: its line diff is the whole document twice
    diff = render_diff(old, new, "/n (current)", "in.json (new)", max_lines=200, max_bytes=64 * 1024, as_json=True)
    lines = diff.splitlines()
    assert lines[:2] == ["--- /n (current)", "+++ in.json (new)"]
    assert lines[2].startswith("JSON changes by path (RFC 6902 JSON Patch, one operation per line")
    assert [json.loads(line) for line in lines[3:]] == [
        {"op": "add", "path": "/items/10", "value": {"id": "new"}},
        {"op": "test", "path": "/items/1235/owner", "value": "a/b~c"},
        {"op": "replace", "path": "/items/1235/owner", "value": "x"},
    ]
    # Without as_json, or when a side is not JSON, the line diff is cut instead.
    assert "diff cut after" in render_diff(old, new, "a", "b", max_bytes=64 * 1024)
    assert "diff cut after" in render_diff(old, new[:-1], "a", "b", max_bytes=64 * 1024, as_json=True)
    same = render_diff(old, json.dumps(json.loads(old), indent=1).encode(), "a", "b", max_bytes=1000, as_json=True)
    assert same.splitlines()[-1].startswith("(none: the JSON value is the same")


def test_render_diff_caps_the_json_changes_too():
    old = json.dumps([f"a{n}" for n in range(5000)]).encode()
    new = json.dumps([f"b{n}" for n in range(5000)]).encode()
    diff = render_diff(old, new, "a", "b", max_lines=10, max_bytes=16 * 1024, as_json=True)
    assert len(diff.splitlines()) == 3 + 10 + 1
    assert diff.splitlines()[-1].startswith("... diff cut after 10 of 10000 operations")
    assert " operations (--full-diff shows everything" in diff.splitlines()[-1]


@pytest.mark.timeout(90)
def test_one_changed_value_in_a_one_line_json_of_megabytes_prints_a_short_diff(tmp_path, config, zk, zk_path):
    """2 MiB of JSON on one line, one value changed: a few lines by JSON path, not two lines of megabytes."""
    from livedata.payload import encode
    from livedata.testing.documents import LIMIT, experiments_json
    from livedata.writer import DEFAULT_DIFF_BYTES, push

    document = json.loads(experiments_json(2 * 1024 * 1024))
    old = json.dumps(document, separators=(",", ":")).encode()
    path = f"{zk_path}/big"
    zk.create(path, b"")
    try:
        push(zk, path, old, "setup", io.StringIO(), stored=encode(old, "auto", LIMIT))
        document["experiments"][3000]["owner"] = "someone@example.com"
        (tmp_path / "big.json").write_bytes(json.dumps(document, separators=(",", ":")).encode())
        result = run_writer(tmp_path, "writer.ini", "big.json", path, "--dry-run")
        assert result.returncode == 0, result.stderr
        assert len(result.stdout) < 1000
        assert '{"op": "replace", "path": "/experiments/3000/owner", "value": "someone@example.com"}' in result.stdout
        raw = run_writer(tmp_path, "writer.ini", "big.json", path, "--dry-run", "--format", "raw")
        assert raw.returncode == 0, raw.stderr
        assert DEFAULT_DIFF_BYTES < len(raw.stdout.encode()) < DEFAULT_DIFF_BYTES + 1000
        assert "--diff-bytes N more" in raw.stdout
        small = run_writer(tmp_path, "writer.ini", "big.json", path, "--dry-run", "--format", "raw",
                           "--diff-bytes", "1 KiB")  # fmt: skip
        assert len(small.stdout.encode()) < 1024 + 1000
    finally:
        zk.delete(path, recursive=True)


@pytest.mark.timeout(60)
def test_a_dry_run_says_so_before_anything_else(tmp_path, config, zk, node):
    (tmp_path / "input.json").write_bytes(NEW_JSON)
    result = run_writer(tmp_path, "writer.ini", "input.json", node, "--dry-run")
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first == f"Dry run: showing what writing input.json to ZooKeeper {node} would change..."
    assert "Writing" not in result.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("source", "extra"),
    [("-", ["--format", "json"]), ("input", ["--format", "json"]), ("input.JSON", [])],
)
def test_format_json_validates_standard_input_and_any_file_name(tmp_path, config, zk, node, source, extra):
    if source != "-":
        (tmp_path / source).write_text('{"key": ')
    result = run_writer(tmp_path, "writer.ini", source, node, *extra, stdin='{"key": ')
    label = "<stdin>" if source == "-" else source
    assert_one_line_failure(result, 1, f"{label} is not valid JSON", "(--format raw skips this check)")
    assert zk.get(node)[0] == OLD_JSON


@pytest.mark.timeout(60)
def test_format_raw_and_auto_write_what_is_not_json(tmp_path, config, zk, node):
    (tmp_path / "input.json").write_text("not json\n")
    assert run_writer(tmp_path, "writer.ini", "input.json", node, "--format", "raw").returncode == 0
    assert run_writer(tmp_path, "writer.ini", "-", node, stdin="plain\n").returncode == 0  # auto: stdin is raw
    assert zk.get(node)[0] == b"plain\n"
    result = run_writer(tmp_path, "writer.ini", "-", node, "--format", "yaml")
    assert_one_line_failure(result, 2, "--format", "invalid choice")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("extra", [[], ["--format", "json"]])
def test_an_empty_json_file_gets_the_empty_refusal_and_allow_empty_pushes_it(tmp_path, config, zk, node, extra):
    (tmp_path / "empty.json").write_bytes(b"")
    refused = run_writer(tmp_path, "writer.ini", "empty.json", node, *extra)
    assert_one_line_failure(refused, 1, "empty.json is empty and would erase", "--allow-empty")
    assert zk.get(node)[0] == OLD_JSON
    allowed = run_writer(tmp_path, "writer.ini", "empty.json", node, "--allow-empty", *extra)
    assert allowed.returncode == 0, allowed.stderr
    assert zk.get(node)[0] == b""


@pytest.mark.timeout(60)
def test_messages_and_version_name_the_command_as_typed(tmp_path):
    """The console script says livedata-write, python -m says livedata.writer, tools/write_node says write_node."""
    script = os.path.join(os.path.dirname(sys.executable), "livedata-write")
    commands = {
        "livedata-write": [script],
        "livedata.writer": [sys.executable, "-m", "livedata.writer"],
        "write_node": [str(REPO / "tools" / "write_node")],
    }
    for name, command in commands.items():
        version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=50)
        assert (version.returncode, version.stdout) == (0, f"{name} 0.1.0\n"), version.stderr
        usage = subprocess.run([*command, "only-one-argument"], capture_output=True, text=True, timeout=50)
        assert usage.returncode == 2 and usage.stderr.startswith(f"{name}: "), usage.stderr
        missing = subprocess.run([*command, "absent.ini", "x", "/n"], capture_output=True, text=True, timeout=50,
                                 cwd=tmp_path)  # fmt: skip
        assert missing.returncode == 2 and missing.stderr.startswith(f"{name}: absent.ini"), missing.stderr
