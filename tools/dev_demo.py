"""The body of tools/dev: a local ZooKeeper, demo nodes, the watcher, and a FileWatcher showing each change.

It also prints a ready-to-paste ``tools/write_node`` command (with a sample input file and a writer
configuration for this ZooKeeper), so a newcomer can push a change by hand. The demo's own changes never
undo one: each bump continues from the node's current data with a compare-and-set, and after a write by
someone else the demo skips a round, so that value stays visible for a while.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kazoo.client import KazooClient  # noqa: E402
from kazoo.exceptions import BadVersionError  # noqa: E402

from livedata import FileWatcher, WatchedFileNotAvailableError  # noqa: E402
from livedata.testing.zookeeper import start_standalone, wait_for  # noqa: E402

DEV_DIR = os.path.join(ROOT, ".dev")
FILES = os.path.join(DEV_DIR, "files")
FLAGS = "/livedata-demo/flags"
SAMPLE = "flags-input.json"  # the input the printed write_node command pushes: yours to edit, kept across runs
BUMP_INTERVAL = 3.0  # seconds between the demo's own changes
SHOW_INTERVAL = 0.1  # how often the file is read to show its changes


def shown_path(path: str) -> str:
    """``path`` as the caller types it: relative to their directory when it lies below it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def write_node_hint(address: str) -> str:
    """Write a writer configuration for this ZooKeeper and a sample input file; return the command using them.

    The sample is written only when missing: the user edits it to push their own change, and a restart of
    tools/dev must not throw that edit away.
    """
    config = os.path.join(DEV_DIR, "write_node.ini")
    with open(config, "w") as f:
        f.write(f"; written by tools/dev for its throwaway ZooKeeper\n[live-data]\nzookeeper.hosts = {address}\n")
    sample = os.path.join(DEV_DIR, SAMPLE)
    if not os.path.exists(sample):
        with open(sample, "w") as f:
            json.dump({"greeting": "hello from write_node", "counter": 100}, f, indent=2)
            f.write("\n")
    tool = os.path.join(ROOT, "tools", "write_node")
    return shlex.join([shown_path(tool), shown_path(config), shown_path(sample), FLAGS])


class Demo:
    """Bumps the ``counter`` of the flags node, never over a value someone else just wrote."""

    def __init__(self, client: Any, own_version: int = 0) -> None:
        self.client = client
        self.own_version = own_version  # the node version our last write produced (0: we created it)

    def bump(self) -> str | None:
        """One round: what happened, for the terminal (None when the bump went through)."""
        data, stat = self.client.get(FLAGS)
        if stat.version != self.own_version:
            self.own_version = stat.version  # the next round continues from their data
            return f"someone else wrote {FLAGS}: the demo skips a round, then continues from their data"
        try:
            flags = json.loads(data)
            counter = flags.get("counter", 0)
        except (ValueError, AttributeError):
            self.own_version = stat.version
            return f"{FLAGS} does not hold a JSON object: the demo leaves it alone"
        if type(counter) is not int:
            self.own_version = stat.version
            return f"{FLAGS} has a counter that is not an integer: the demo leaves it alone"
        flags["counter"] = counter + 1
        try:
            self.own_version = self.client.set(FLAGS, json.dumps(flags).encode(), version=stat.version).version
        except BadVersionError:
            return f"someone wrote {FLAGS} meanwhile: the demo skips this round"
        return None


def show_changes(reader: FileWatcher[Any], watcher: subprocess.Popen[bytes], demo: Demo) -> None:
    """Print the file's data whenever it changes, and bump the node every BUMP_INTERVAL, until the watcher ends."""
    shown: object = None
    next_bump = time.monotonic() + BUMP_INTERVAL
    while watcher.poll() is None:
        try:
            current = reader.get_data_and_mtime()
        except WatchedFileNotAvailableError as e:
            current = (f"<not available: {e.inner}>", 0.0)
        if current != shown:
            print(f"{shown_path(reader.path)}: {current[0]}", flush=True)
            shown = current
        if time.monotonic() >= next_bump:
            note = demo.bump()
            if note:
                print(note, flush=True)
            next_bump += BUMP_INTERVAL
        time.sleep(SHOW_INTERVAL)


def reset_dev_dir() -> None:
    """Start from a clean .dev (a fresh ZooKeeper, no files), but keep the sample input the user may have edited."""
    os.makedirs(DEV_DIR, exist_ok=True)
    for name in os.listdir(DEV_DIR):
        if name == SAMPLE:
            continue
        path = os.path.join(DEV_DIR, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    os.makedirs(os.path.join(DEV_DIR, "files"))


def stop_on_signal(signum: int, frame: object) -> None:
    """SIGTERM stops the demo as Ctrl-C does: watcher, client and server in order, nothing left running."""
    raise KeyboardInterrupt


def main() -> int:
    # Set explicitly: a shell starting us in the background without job control leaves SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop_on_signal)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    reset_dev_dir()
    print("starting a throwaway ZooKeeper...", flush=True)
    server = start_standalone(os.path.join(DEV_DIR, "zookeeper"))
    try:
        client = KazooClient(server.address)
        client.start(timeout=30)
        try:
            client.create(FLAGS, json.dumps({"greeting": "hello", "counter": 0}).encode(), makepath=True)
            client.create("/livedata-demo/hosts", b"app01\napp02\n")
            run_watcher(server.address, client)
        finally:
            client.stop()
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    finally:
        server.stop()
    return 0


def run_watcher(address: str, client: Any) -> None:
    """Run the watcher on conf/dev.ini and show its file changing until Ctrl-C or the watcher's end."""
    env = {**os.environ, "LIVEDATA_DEV_ZK": address, "LIVEDATA_DEV_DIR": FILES}
    with open(os.path.join(DEV_DIR, "zookeeper-address"), "w") as f:  # tools/example_app's default server
        f.write(address + "\n")
    watcher = subprocess.Popen(
        [os.path.join(ROOT, ".venv/bin/livedata-watcher"), os.path.join(ROOT, "conf/dev.ini")],
        env=env,
        start_new_session=True,  # Ctrl-C reaches only this script, which then stops the rest in order
    )
    try:
        dest = os.path.join(FILES, "flags.json")
        print(f"ZooKeeper: {address}   watcher pid: {watcher.pid}   file: {shown_path(dest)}", flush=True)
        print(f"the demo bumps the counter of {FLAGS} every {BUMP_INTERVAL:g} s; Ctrl-C stops everything", flush=True)
        print(f"push your own version (edit the input file, push again):\n  {write_node_hint(address)}", flush=True)
        print("in another terminal, tools/example_app serves the same data on http://127.0.0.1:8080/", flush=True)
        wait_for(lambda: os.path.exists(dest), 30, "the watcher to write the first file")
        show_changes(FileWatcher(dest, json.load), watcher, Demo(client))
    finally:
        if watcher.poll() is None:
            watcher.send_signal(signal.SIGTERM)
            watcher.wait(10)


if __name__ == "__main__":
    sys.exit(main())
