"""livedata.handler's select, on real sockets in a gevent-patched interpreter (the way kazoo's loop calls it)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

PROGRAM = """
from gevent import monkey; monkey.patch_all()
import json, socket, time
import gevent
from livedata.handler import GeventHandler

handler = GeventHandler()
report = {}

def send_later(sock, delay):
    gevent.sleep(delay)
    sock.send(b"x")

a, b = socket.socketpair()
c, d = socket.socketpair()
began = time.monotonic()
report["timeout"] = handler.select([a, c], [], [], 0.05) == ([], [], [])
report["waited"] = time.monotonic() - began >= 0.04
gevent.spawn(send_later, d, 0.01)
report["woken_by_c"] = handler.select([a, c], [], [], 5.0)[0] == [c]
report["ready_now"] = handler.select([a, c], [], [], 5.0)[0] == [c]  # unread data: answered without waiting
c.recv(1)
report["writable"] = handler.select([], [a], [], 5.0)[1] == [a]
old_fd = a.fileno()
a.close(); b.close()
a2, b2 = socket.socketpair()  # a reconnection: new objects, quite possibly on the same fds
report["fd_reused"] = a2.fileno() == old_fd
gevent.spawn(send_later, b2, 0.01)
report["new_socket"] = handler.select([a2, c], [], [], 5.0)[0] == [a2]
report["watchers"] = len(handler._read_watchers)
print(json.dumps(report))
"""


def test_select_waits_cooperatively_answers_ready_files_at_once_and_follows_new_sockets() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report.pop("watchers") <= 3  # one per fd ever waited on, not one per call
    report.pop("fd_reused")  # informative: the kernel usually hands the same numbers back
    assert report == dict.fromkeys(report, True), report
