"""End to end: the example gevent web app over real HTTP, in direct (node) mode and in file mode.

Each test starts from the shipped conf/example-app.ini and only edits its lines, as a user switching modes
would; the data is changed from outside (the writer CLI, or a file replacement) and the HTTP answer must
follow.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kazoo.client import KazooClient

from livedata.testing.zookeeper import ZooKeeperServer, free_ports, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_INI = os.path.join(REPO, "conf", "example-app.ini")

Response = tuple[int, dict[str, str], Any]


def edited_ini(directory: str, port: int, hosts: str, node: str | None = None, file: str | None = None) -> str:
    """The shipped INI with the listen port, the servers and exactly one of the two modes filled in."""
    with open(SHIPPED_INI) as f:
        text = f.read()

    def set_line(key: str, value: str | None, text: str) -> str:
        # Replaces an active or commented-out "key = ..." line; None comments it out.
        line = f"# {key} = unused" if value is None else f"{key} = {value}"
        new, count = re.subn(rf"^(?:# *)?{re.escape(key)} *=.*$", line, text, flags=re.MULTILINE)
        assert count == 1, f"{SHIPPED_INI} should have exactly one {key} line"
        return new

    text = set_line("example_app.listen", f"127.0.0.1:{port}", text)
    text = set_line("zookeeper.hosts", hosts, text)
    text = set_line("live_data.flags.node", node, text)
    text = set_line("live_data.flags.file", file, text)
    path = os.path.join(directory, "example-app.ini")
    with open(path, "w") as f:
        f.write(text)
    return path


@contextmanager
def running_app(ini: str, directory: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """The app as a real process; on the way out it must stop cleanly on SIGTERM."""
    with open(os.path.join(directory, "app.log"), "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "livedata.example_app", ini],
            stdout=log, stderr=subprocess.STDOUT, cwd=directory, env=env,
        )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    with open(os.path.join(directory, "app.log")) as f:
        output = f.read()
    assert status == 0, f"the app exited with {status}:\n{output}"


def fetch(port: int, path: str = "/", method: str = "GET") -> Response:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, dict(answer.headers), json.load(answer)
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), json.load(e)


def serving(process: subprocess.Popen[bytes], port: int, expected: Any) -> Response | None:
    """The response once the app serves ``expected`` (a 200 with that JSON body), else None."""
    assert process.poll() is None, "the app exited (see app.log)"
    response = fetch(port)
    return response if response[0] == 200 and response[2] == expected else None


def write_json(path: str, value: object) -> str:
    """Replace ``path`` atomically, as the watcher daemon does."""
    with open(path + ".new", "w") as f:
        json.dump(value, f)
    os.replace(path + ".new", path)
    return path


@pytest.mark.timeout(90)
def test_direct_mode_follows_the_writer(
    zk_server: ZooKeeperServer, zk: KazooClient, zk_path: str, workdir: str
) -> None:
    node = f"{zk_path}/flags"
    zk.create(node, b'{"color": "blue"}')
    (port,) = free_ports(1)
    ini = edited_ini(workdir, port, zk_server.address, node=node)
    with running_app(ini, workdir) as app:
        _, headers, _ = wait_for(lambda: serving(app, port, {"color": "blue"}), 30, "the app to serve the node")
        assert float(headers["X-Data-Mtime"]) == zk.get(node)[1].mtime / 1000.0

        source = os.path.join(workdir, "flags.json")
        with open(source, "w") as f:
            json.dump({"color": "green"}, f)
        writer = subprocess.run(
            [sys.executable, "-m", "livedata.writer", ini, source, node], capture_output=True, text=True, timeout=60
        )
        assert writer.returncode == 0, writer.stderr
        assert zk.get(node)[0] == b'{"color": "green"}'  # the writer really wrote it

        _, headers, _ = wait_for(lambda: serving(app, port, {"color": "green"}), 20, "the written value")
        assert float(headers["X-Data-Mtime"]) == zk.get(node)[1].mtime / 1000.0


@pytest.mark.timeout(90)
def test_file_mode_serves_503_until_the_file_exists_then_follows_it(workdir: str) -> None:
    data_file = os.path.join(workdir, "flags.json")
    (port,) = free_ports(1)
    # No ZooKeeper at all in file mode: the hosts line may point nowhere.
    ini = edited_ini(workdir, port, "127.0.0.1:1", file=data_file)
    with running_app(ini, workdir) as app:

        def unavailable() -> Response | None:
            assert app.poll() is None, "the app exited (see app.log)"
            response = fetch(port)
            return response if response[0] == 503 else None

        _, _, body = wait_for(unavailable, 30, "the app to answer 503")
        assert data_file in body["error"]

        write_json(data_file, {"v": 1})
        _, headers, _ = wait_for(lambda: serving(app, port, {"v": 1}), 20, "the file's data")
        assert float(headers["X-Data-Mtime"]) == os.stat(data_file).st_mtime
        assert headers["Content-Type"] == "application/json"

        write_json(data_file, {"v": 2})
        wait_for(lambda: serving(app, port, {"v": 2}), 20, "the replaced file's data")

        assert fetch(port, "/elsewhere")[0] == 404
        assert fetch(port, "/", method="POST")[0] == 405
        status, headers, body = head(port)
        assert (status, body) == (200, b"")
        assert int(headers["Content-Length"]) == len(json.dumps({"v": 2}).encode())


def head(port: int) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", method="HEAD")
    with urllib.request.urlopen(request, timeout=5) as answer:
        return answer.status, dict(answer.headers), answer.read()


@pytest.mark.timeout(60)
def test_shipped_defaults_serve_what_tools_dev_writes(workdir: str) -> None:
    """Only the listen port is changed: the file and server defaults are those of tools/dev and tools/example_app."""
    (port,) = free_ports(1)
    with open(SHIPPED_INI) as f:
        text = f.read().replace("example_app.listen = 127.0.0.1:8080", f"example_app.listen = 127.0.0.1:{port}")
    ini = os.path.join(workdir, "example-app.ini")
    with open(ini, "w") as f:
        f.write(text)
    with open(os.path.join(REPO, "tools", "example_app")) as f:
        assert 'LIVEDATA_DEV_DIR:-$root/.dev/files' in f.read()  # where tools/dev's watcher writes
    with open(os.path.join(REPO, "tools", "dev_demo.py")) as f:
        assert 'FILES = os.path.join(DEV_DIR, "files")' in f.read()
    write_json(os.path.join(workdir, "flags.json"), {"demo": True})
    env = {**os.environ, "LIVEDATA_DEV_DIR": workdir, "LIVEDATA_DEV_ZK": "127.0.0.1:1"}
    with running_app(ini, workdir, env) as app:
        wait_for(lambda: serving(app, port, {"demo": True}), 30, "the shipped defaults to serve the file")


@pytest.mark.timeout(30)
def test_bad_configuration_is_one_line_and_exit_2(workdir: str) -> None:
    ini = edited_ini(workdir, 8080, "127.0.0.1:1")  # neither mode set
    result = subprocess.run(
        [sys.executable, "-m", "livedata.example_app", ini], capture_output=True, text=True, timeout=25
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"livedata.example_app: {ini}: live_data.flags.file: set either this (file mode), "
        "live_data.flags.node (direct mode), live_data.flags.dir (a mirrored tree) or live_data.flags.tree "
        "(a tree watched in-process)"
    ]
