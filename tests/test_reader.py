"""``tools/read_node`` against a real ZooKeeper: decoded bytes on stdout, ``--stat``, and one-line failures."""
from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from livedata.payload import encode
from livedata.testing.zookeeper import free_ports
from livedata.writer import push
from tests.payloads import BAD_CASES, LIMIT, MiB, experiments_json, incompressible, large_data_server, put
from tests.test_writer import write_config

REPO = Path(__file__).resolve().parent.parent


def run_reader(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "livedata.reader", *args], cwd=cwd, capture_output=True, timeout=60
    )


def one_line_failure(result: subprocess.CompletedProcess[bytes], status: int, *fragments: str) -> None:
    stderr = result.stderr.decode()
    assert result.returncode == status, (result.returncode, stderr)
    assert "Traceback" not in stderr and result.stdout == b""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("livedata.reader: "), stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def zk_server():
    """Megabytes of transactions: a server of our own (see large_data_server)."""
    yield from large_data_server()


@pytest.fixture
def config(tmp_path, zk_server) -> Path:
    return write_config(tmp_path, zk_server.address)


@pytest.fixture
def node(zk, zk_path):
    path = f"{zk_path}/data"
    zk.create(path, b"plain\n")
    yield path
    zk.delete(zk_path, recursive=True)  # megabytes: the shared server's heap is small


def store(zk, node: str, data: bytes) -> None:
    push(zk, node, data, "test", io.StringIO(), stored=encode(data, "auto", LIMIT), allow_empty=True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "make", [lambda: b"plain\n", lambda: b"", lambda: experiments_json(3 * MiB), lambda: incompressible(3 * MiB)]
)
def test_prints_the_decoded_bytes(tmp_path, config, zk, node, make):
    data = make()
    store(zk, node, data)
    result = run_reader(tmp_path, "writer.ini", node)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data


@pytest.mark.timeout(60)
def test_stat_of_a_plain_node(tmp_path, config, zk, node):
    result = run_reader(tmp_path, "writer.ini", node, "--stat")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == (
        f"node: {node}\nversion: 0\ncodec: plain\nstored: 6 bytes\nnode bytes: 6\ndecoded: 6 bytes\nchunks: 0\n"
        f"sha256: {hashlib.sha256(b'plain' + bytes([10])).hexdigest()}\n"
    )


@pytest.mark.timeout(60)
def test_stat_of_a_chunked_node(tmp_path, config, zk, node):
    data = incompressible(3 * MiB)
    store(zk, node, data)
    result = run_reader(tmp_path, "writer.ini", node, "--stat")
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(": ", 1) for line in result.stdout.decode().splitlines())
    assert fields["version"] == "1"
    assert fields["codec"] == "identity"
    assert fields["stored"] == "3,145,728 bytes"
    assert fields["decoded"] == "3,145,728 bytes"
    assert fields["chunks"] == "4"
    assert fields["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["hash mismatch", "missing chunk", "bomb", "unknown codec", "deeply nested header"])
def test_bad_stored_data_is_one_line(tmp_path, config, zk, node, case):
    node_data, chunks, reason = BAD_CASES[case]()
    put(zk, node, node_data, chunks)
    one_line_failure(run_reader(tmp_path, "writer.ini", node), 1, node, "cannot be decoded", reason)


@pytest.mark.timeout(60)
def test_max_size_bounds_what_is_decoded(tmp_path, config, zk, node):
    store(zk, node, experiments_json(3 * MiB))
    result = run_reader(tmp_path, "writer.ini", node, "--max-size", "1 MiB")
    one_line_failure(result, 1, "above the limit of 1,048,576 bytes (--max-size)", "pass a larger --max-size")
    assert b"cannot be decoded" not in result.stderr  # the data is fine: only the limit is too small


@pytest.mark.timeout(60)
def test_failures_of_a_reader_do_not_say_nothing_written(tmp_path, zk_server, node):
    """The writer's connection code is shared: its "; nothing written" must not end a reader's messages."""
    write_config(tmp_path, zk_server.address, **{"secrets.path": str(tmp_path / "absent.json"),
                                                 "zookeeper.credentials": "secret/ci/zk"})  # fmt: skip
    credentials = run_reader(tmp_path, "writer.ini", node)
    one_line_failure(credentials, 1, "zookeeper.credentials", "absent.json")
    (port,) = free_ports(1)
    ini = f"[live-data]\nzookeeper.hosts = 127.0.0.1:{port}\nzookeeper.timeout = 1 seconds\n"
    (tmp_path / "writer.ini").write_text(ini)
    unreachable = run_reader(tmp_path, "writer.ini", node)
    assert unreachable.returncode == 1 and unreachable.stdout == b""
    told, failure = unreachable.stderr.decode().splitlines()
    assert f"cannot reach ZooKeeper server 127.0.0.1:{port}: Connection refused" in told
    assert failure.startswith(f"livedata.reader: could not connect to ZooKeeper at 127.0.0.1:{port} within 2 seconds")
    for result in (credentials, unreachable):
        assert b"nothing written" not in result.stderr


@pytest.mark.timeout(60)
def test_missing_node(tmp_path, config, zk_path):
    one_line_failure(run_reader(tmp_path, "writer.ini", f"{zk_path}/nope"), 1, "does not exist")


@pytest.mark.timeout(60)
def test_usage_and_config_errors_exit_2(tmp_path, zk_server, node):
    one_line_failure(run_reader(tmp_path, "missing.ini", node), 2, "missing.ini")
    write_config(tmp_path, zk_server.address)
    one_line_failure(run_reader(tmp_path, "writer.ini", "relative"), 2)
    one_line_failure(run_reader(tmp_path, "writer.ini", node, "--max-size", "big"), 2, "not a size")


@pytest.mark.timeout(60)
def test_tools_read_node_is_the_same_command(tmp_path, config, zk, node):
    result = subprocess.run([str(REPO / "tools" / "read_node"), "writer.ini", node], cwd=tmp_path, capture_output=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"plain\n"
