"""The body of tools/dev: a local ZooKeeper, demo nodes, the watcher, and a FileWatcher showing each change."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kazoo.client import KazooClient  # noqa: E402

from livedata import FileWatcher  # noqa: E402
from livedata.testing.zookeeper import start_standalone, wait_for  # noqa: E402

DEV_DIR = os.path.join(ROOT, ".dev")
FILES = os.path.join(DEV_DIR, "files")


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    shutil.rmtree(DEV_DIR, ignore_errors=True)
    os.makedirs(FILES)
    print("starting a throwaway ZooKeeper...", flush=True)
    server = start_standalone(os.path.join(DEV_DIR, "zookeeper"))
    client = KazooClient(server.address)
    client.start(timeout=30)
    flags = {"greeting": "hello", "counter": 0}
    client.create("/livedata-demo/flags", json.dumps(flags).encode(), makepath=True)
    client.create("/livedata-demo/hosts", b"app01\napp02\n")
    env = {**os.environ, "LIVEDATA_DEV_ZK": server.address, "LIVEDATA_DEV_DIR": FILES}
    watcher = subprocess.Popen(
        [os.path.join(ROOT, ".venv/bin/livedata-watcher"), os.path.join(ROOT, "conf/dev.ini")],
        env=env,
        start_new_session=True,  # Ctrl-C reaches only this script, which then stops the rest in order
    )
    dest = os.path.join(FILES, "flags.json")
    print(f"ZooKeeper: {server.address}   watcher pid: {watcher.pid}   file: {dest}", flush=True)
    print("the demo bumps /livedata-demo/flags every 3 seconds; Ctrl-C stops everything", flush=True)
    try:
        wait_for(lambda: os.path.exists(dest), 30, "the watcher to write the first file")
        reader = FileWatcher(dest, json.load)
        while watcher.poll() is None:
            print(f"{dest}: {reader.get_data()}", flush=True)
            time.sleep(3)
            flags["counter"] += 1
            client.set("/livedata-demo/flags", json.dumps(flags).encode())
            wait_for(lambda: reader.get_data()["counter"] == flags["counter"], 10, "the file to follow the node")
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    finally:
        if watcher.poll() is None:
            watcher.send_signal(signal.SIGTERM)
            watcher.wait(10)
        client.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
