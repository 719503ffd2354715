"""The daemon's monkey-patching, checked in a fresh interpreter (patching is once per process, and first)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

PROBE = """
import json, sys
import zope.event
seen = []
zope.event.subscribers.append(lambda event: seen.append(type(event).__name__))
from livedata.patching import patch_for_daemon
patch_for_daemon()
import socket, threading, time
import gevent.events, gevent.monkey, gevent.socket
print(json.dumps({
    "patched": [gevent.monkey.is_module_patched(m) for m in ("socket", "select", "threading", "time", "os", "ssl")],
    "socket": socket.socket is gevent.socket.socket,
    "subprocess_patched": gevent.monkey.is_module_patched("subprocess"),
    "metadata_imported": "importlib.metadata" in sys.modules,
    "lookup_restored": gevent.events.notify_and_call_entry_points.__name__ == "notify_and_call_entry_points",
    "events": sorted(set(seen)),
}))
"""


def test_patches_what_the_daemon_uses_without_the_plugin_lookup() -> None:
    """Sockets, threads, time and ssl are cooperative; subprocess is left alone (hooks use gevent's own);
    zope.event subscribers still hear every patch event, but no installed package's metadata is read."""
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["patched"] == [True] * 6 and report["socket"]
    assert report["subprocess_patched"] is False
    assert report["metadata_imported"] is False
    assert report["lookup_restored"]
    assert {"GeventWillPatchAllEvent", "GeventDidPatchAllEvent"} <= set(report["events"])


DAEMON_PROBE = """
import sys
from livedata import sync, watcher, zookeeper
status = watcher.main([sys.argv[1], "--check"])  # builds the daemon's whole argument parser
print("importlib.metadata" in sys.modules)
"""


def test_the_daemon_reads_no_package_metadata_unless_asked_for_its_version(tmp_path: object) -> None:
    """``--version`` is looked up when given, not when the parser is built: importlib.metadata (with email,
    zipfile, csv...) would otherwise stay resident in every daemon, about 3 MB."""
    config = f"{tmp_path}/watcher.ini"
    with open(config, "w") as f:
        f.write(f"[live-data]\\nzookeeper.hosts = 127.0.0.1:1\\nnodes.a.source = /a\\nnodes.a.dest = {tmp_path}/a\\n")
    done = subprocess.run([sys.executable, "-c", DAEMON_PROBE, config], capture_output=True, text=True, timeout=50)
    assert done.stdout.strip() == "False", done.stderr
    version = subprocess.run(
        [sys.executable, "-m", "livedata.watcher", "--version"], capture_output=True, text=True, timeout=50
    )
    assert version.returncode == 0 and version.stdout.startswith("livedata-watcher "), version
