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
