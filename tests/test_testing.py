"""The testing kit (livedata.testing): the stand-in reader, the pytest fixtures, and the kit as a downstream
project gets it, installed from a built package into a fresh virtualenv outside this checkout."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import make_digest_acl

from livedata import FileWatcher, LiveNode, WatchedFileNotAvailableError
from livedata.live_data import WatchedData
from livedata.testing import StaticWatchedData, ZooKeeperNotInstalledError, start_standalone, wait_for
from livedata.testing import zookeeper as launcher
from livedata.testing.plugin import StartWatcher
from livedata.testing.watcher_process import read_bytes

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = Path(__file__).with_name("downstream_example.py")

pytestmark = pytest.mark.timeout(90)


# --- StaticWatchedData ---------------------------------------------------------------------------------------


def test_static_data_is_served_with_its_mtime() -> None:
    data = StaticWatchedData({"a": 1}, mtime=1234.5)
    assert data.get_data() == {"a": 1}
    assert data.get_data_and_mtime() == ({"a": 1}, 1234.5)
    data.set_data({"a": 2})
    value, mtime = data.get_data_and_mtime()
    assert value == {"a": 2}
    assert mtime > 1234.5  # now, by default


def test_none_is_data_not_the_absence_of_it() -> None:
    assert StaticWatchedData(None).get_data() is None


def test_unset_raises_like_a_reader_of_a_missing_file() -> None:
    data: StaticWatchedData[object] = StaticWatchedData(path="/var/local/flags.json")
    with pytest.raises(WatchedFileNotAvailableError) as raised:
        data.get_data()
    assert raised.value.path == "/var/local/flags.json"
    assert "no data set yet" in str(raised.value.inner)
    with pytest.raises(WatchedFileNotAvailableError):
        data.get_data_and_mtime()


def test_content_goes_through_the_parser_as_a_file_object_named_after_the_path() -> None:
    names = []

    def parser(f: object) -> object:
        names.append(getattr(f, "name", None))
        return json.load(f)  # type: ignore[arg-type]

    data = StaticWatchedData(parser=parser, path="flags.json")
    data.set_content('{"a": "\u00e9"}')
    assert data.get_data() == {"a": "\u00e9"}
    assert names == ["flags.json"]


def test_a_bad_first_version_raises_with_the_parsers_error() -> None:
    data = StaticWatchedData(parser=json.load)
    data.set_content(b"{not json")
    with pytest.raises(WatchedFileNotAvailableError) as raised:
        data.get_data()
    assert isinstance(raised.value.inner, json.JSONDecodeError)


def test_a_bad_later_version_keeps_serving_the_last_good_one() -> None:
    data = StaticWatchedData(parser=json.load)
    data.set_content(b'{"a": 1}', mtime=10.0)
    data.set_content(b"{broken")
    assert data.get_data_and_mtime() == ({"a": 1}, 10.0)
    data.set_content(b'{"a": 2}', mtime=20.0)
    assert data.get_data_and_mtime() == ({"a": 2}, 20.0)


def test_identical_bytes_keep_the_value_and_its_mtime() -> None:
    parsed = []
    data = StaticWatchedData(parser=lambda f: parsed.append(f.read()) or len(parsed))
    data.set_content(b"same", mtime=10.0)
    data.set_content(b"same", mtime=20.0)
    assert data.get_data_and_mtime() == (1, 10.0)
    assert parsed == ["same"]


def test_binary_mode_hands_bytes_to_the_parser() -> None:
    data = StaticWatchedData(parser=lambda f: f.read(), binary=True)
    data.set_content(b"\x00\xff")
    assert data.get_data() == b"\x00\xff"


def test_constructor_arguments_are_checked_like_the_real_readers() -> None:
    with pytest.raises(TypeError, match="only apply to text mode"):
        StaticWatchedData(parser=json.load, binary=True, encoding="latin-1")
    with pytest.raises(TypeError, match="needs a parser"):
        StaticWatchedData().set_content(b"{}")


def test_clear_forgets_every_version() -> None:
    data = StaticWatchedData(1)
    data.clear()
    with pytest.raises(WatchedFileNotAvailableError):
        data.get_data()


def test_stands_in_wherever_a_real_reader_is_accepted() -> None:
    readers: list[WatchedData[int]] = [StaticWatchedData(1)]  # what mypy checks when this file is type-checked
    assert [reader.get_data() for reader in readers] == [1]


# --- what importing the kit costs ----------------------------------------------------------------------------


def test_importing_the_kit_and_its_plugin_imports_neither_kazoo_nor_gevent() -> None:
    code = (
        "import sys, livedata.testing, livedata.testing.plugin;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'kazoo', 'gevent'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_machine_without_zookeeper_gets_one_line_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(launcher, "JAVA", str(tmp_path / "no-java-here"))
    with pytest.raises(ZooKeeperNotInstalledError, match=r"no-java-here not found.*apt-get install zookeeper"):
        start_standalone(str(tmp_path))


# --- the fixtures ---------------------------------------------------------------------------------------------


def test_every_test_with_the_client_starts_from_an_empty_tree(livedata_client: KazooClient) -> None:
    assert livedata_client.get_children("/") == ["zookeeper"]
    livedata_client.create("/left/behind", b"x", makepath=True)
    # A node only another identity may read, which this anonymous client could not even list, let alone delete.
    livedata_client.create("/left/locked", b"x", acl=[make_digest_acl("someone", "else", all=True)])
    with pytest.raises(NoAuthError):
        livedata_client.get_children("/left/locked")


def test_the_tree_left_behind_is_gone_for_the_next_test(livedata_client: KazooClient) -> None:
    assert livedata_client.get_children("/") == ["zookeeper"]


def test_watcher_mirrors_changes_deletions_and_creations(
    livedata_client: KazooClient, livedata_watcher: StartWatcher
) -> None:
    livedata_client.create("/a", b"one")
    watcher = livedata_watcher(nodes={"a": "/a", "b": {"source": "/b", "mode": "0640"}})
    assert read_bytes(watcher.dest("a")) == b"one"
    assert not os.path.exists(watcher.dest("b"))  # no node, no file

    livedata_client.set("/a", b"two")
    livedata_client.create("/b", b"")
    watcher.wait_synced()
    assert read_bytes(watcher.dest("a")) == b"two"
    assert read_bytes(watcher.dest("b")) == b""
    assert os.stat(watcher.dest("b")).st_mode & 0o777 == 0o640

    livedata_client.delete("/a")
    watcher.wait_synced()
    assert not os.path.exists(watcher.dest("a"))
    assert watcher.stop() == 0
    assert os.path.dirname(watcher.process.log_path) == watcher.directory  # nothing left outside the test's tmp


def test_file_watcher_on_the_mirrored_file_follows_the_node(
    livedata_client: KazooClient, livedata_watcher: StartWatcher
) -> None:
    livedata_client.create("/flags", b'{"n": 1}')
    watcher = livedata_watcher(nodes={"flags": "/flags"})
    flags = FileWatcher(watcher.dest("flags"), json.load)
    assert flags.get_data() == {"n": 1}
    livedata_client.set("/flags", b'{"n": 2}')
    watcher.wait_synced()
    assert flags.get_data() == {"n": 2}


def test_watcher_settings_reach_the_daemon(
    livedata_client: KazooClient, livedata_watcher: StartWatcher, tmp_path: Path
) -> None:
    livedata_client.create("/a", b"x")
    dest = tmp_path / "elsewhere" / "a.txt"
    dest.parent.mkdir()
    settings = {"watcher.heartbeat_interval": "1 second"}
    watcher = livedata_watcher(nodes={"a": {"source": "/a", "dest": str(dest)}}, settings=settings)
    assert watcher.dest("a") == str(dest)
    assert read_bytes(str(dest)) == b"x"
    first = os.stat(dest).st_mtime_ns
    wait_for(lambda: os.stat(dest).st_mtime_ns > first, 20, "a heartbeat touch")


def test_a_watcher_that_dies_is_reported_with_its_log(
    livedata_client: KazooClient, livedata_watcher: StartWatcher
) -> None:
    livedata_client.create("/a", b"x")
    with pytest.raises(AssertionError, match=r"exited with status 2(.|\n)*nodes\.a\.mode"):
        livedata_watcher(nodes={"a": {"source": "/a", "mode": "0999"}})


def test_a_node_without_source_is_refused_before_starting(livedata_watcher: StartWatcher) -> None:
    with pytest.raises(ValueError, match="node 'a' needs a 'source'"):
        livedata_watcher(nodes={"a": {"dest": "/tmp/x"}})


def test_a_tree_only_configuration_is_mirrored_and_waited_for(
    livedata_client: KazooClient, livedata_watcher: StartWatcher, tmp_path: Path
) -> None:
    livedata_client.create("/web/a", b"alpha", makepath=True)
    livedata_client.create("/web/b", b"beta")
    watcher = livedata_watcher(trees={"web": "/web", "web_json": {"source": "/web", "format": "json"}})
    assert read_bytes(os.path.join(watcher.dest("web"), "a")) == b"alpha"
    assert json.loads(read_bytes(watcher.dest("web_json")) or b"") == {"a": "alpha", "b": "beta"}

    livedata_client.set("/web/a", b"ALPHA")
    livedata_client.delete("/web/b")
    livedata_client.create("/web/c", b"gamma")
    watcher.wait_synced()
    assert read_bytes(os.path.join(watcher.dest("web"), "a")) == b"ALPHA"
    assert not os.path.exists(os.path.join(watcher.dest("web"), "b"))
    assert json.loads(read_bytes(watcher.dest("web_json")) or b"") == {"a": "ALPHA", "c": "gamma"}

    # Trees given as settings only are accepted too (the watcher's own keys).
    dest = tmp_path / "from-settings"
    by_settings = livedata_watcher(settings={"trees.web.source": "/web", "trees.web.dest": str(dest)})
    wait_for(lambda: read_bytes(str(dest / "c")) == b"gamma", 20, "the tree given in settings")
    assert by_settings.stop() == 0


def test_nothing_to_mirror_is_refused_before_starting(livedata_watcher: StartWatcher) -> None:
    with pytest.raises(ValueError, match="give at least one node or tree"):
        livedata_watcher(nodes={})


def test_live_node_runs_in_process_on_the_client(livedata_client: KazooClient) -> None:
    livedata_client.create("/n", b"1")
    with LiveNode(livedata_client, "/n", lambda f: int(f.read())) as node:
        assert node.get_data() == 1
        livedata_client.set("/n", b"2")
        wait_for(lambda: node.get_data() == 2, 10, "LiveNode to see the change")


# --- as a downstream project gets it --------------------------------------------------------------------------


def test_the_readme_shows_the_example_that_runs_downstream() -> None:
    readme = (REPO / "docs" / "applications.md").read_text()
    assert EXAMPLE.read_text() in readme


def _copy_distribution(destination: Path) -> Path:
    """What an sdist holds, copied so that building it leaves nothing (build/, *.egg-info) in the checkout."""
    source = destination / "livedata-src"
    source.mkdir()
    for name in ("setup.py", "setup.cfg", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "livedata", source / "livedata", ignore=shutil.ignore_patterns("__pycache__"))
    return source


def test_a_downstream_project_gets_the_fixtures_from_pip_install(tmp_path: Path) -> None:
    """``pip install livedata[testing]`` into a fresh virtualenv, then pytest on the README's example there.

    Building the package and installing it are real (pip's isolated build gets setuptools and wheel from its
    cache, or the index, as for any install); only the dependencies (kazoo, gevent, pytest...) come from this
    checkout's .venv, through a .pth line, to keep it fast. A .pth line only adds a path, so
    the .venv's editable install of livedata (a .pth of its own there) stays inactive and the checkout is
    never importable: the test checks that the package and the plugin come from the new virtualenv.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "dependencies-from-the-checkout-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    source = _copy_distribution(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--disable-pip-version-check",
         "--no-deps", f"{source}[testing]"],
        check=True, cwd=tmp_path,
    )  # fmt: skip
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy2(EXAMPLE, project / "test_flags.py")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}

    where = subprocess.run(
        [str(python), "-c", "import livedata, livedata.testing.plugin as p; print(livedata.__file__, p.__file__)"],
        capture_output=True, text=True, check=True, cwd=project, env=env,
    ).stdout.split()  # fmt: skip
    assert all(path.startswith(purelib) for path in where), where

    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=60", "test_flags.py"],
        capture_output=True, text=True, cwd=project, env=env, timeout=80,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
