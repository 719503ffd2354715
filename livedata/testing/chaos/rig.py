"""The real parts of one schedule: a 3-server ensemble, the filesystems dests live on, and the watcher daemon.

Everything is started here and torn down in :meth:`Rig.close`, mounts included, whatever happened in between.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable

from livedata.testing.chaos.layout import MAX_NODE_SIZE, MAX_PAYLOAD, Layout, NodeSpec, TreeSpec
from livedata.testing.chaos.settings import Intensity
from livedata.testing.watcher_process import WatcherProcess, write_ini
from livedata.testing.zookeeper import Ensemble, free_ports

EXT4_IOC_SHUTDOWN = 0x8004587D
EXT4_GOING_FLAGS_LOGFLUSH = 1
ADMIN = "admin:admin-password"
OTHER = "other:other-password"
TEMP_FILE = re.compile(r"\.livedata-tmp\.")


def reader(index: int) -> str:
    """The watcher's identity after ``index`` credential rotations."""
    return f"reader{index}:password-{index}"


class MountError(RuntimeError):
    """A filesystem the schedule needs could not be made or mounted (root, losetup and mkfs.ext4 needed)."""


class Rig:
    def __init__(self, workdir: str, intensity: Intensity, layout: Layout) -> None:
        self.workdir = workdir
        self.intensity = intensity
        self.layout = layout
        self.ensemble = Ensemble(3, directory=os.path.join(workdir, "zk"))
        self.dirs = {"local": os.path.join(workdir, "local")}
        self.loop_device: str | None = None
        self.image = os.path.join(workdir, "ext4.img")
        self._mounted: list[str] = []
        self.watcher: WatcherProcess | None = None
        self.watcher_lock = threading.RLock()
        self.generation = 0  # watcher processes started so far: the checker resets its order per process
        self.killed_on_purpose = False
        self.paused = False
        self.without: set[str] = set()  # reloadable nodes and trees the current config leaves out
        self.identity = 0  # the reader identity in the secrets file
        (self.metrics_port,) = free_ports(1)
        self.secrets_path = os.path.join(workdir, "secrets.json")
        self.config_path = os.path.join(workdir, "watcher.ini")
        self.writer_config = os.path.join(workdir, "writer.ini")
        self.state_dir = os.path.join(workdir, "state")
        self.peak_rss = 0
        self.log_paths: list[str] = []  # each watcher process's log, oldest first

    # --- setting up ---------------------------------------------------------------------------------------

    def start_servers(self) -> None:
        self.ensemble.start()

    def mount(self) -> None:
        os.makedirs(self.dirs["local"], exist_ok=True)
        os.makedirs(self.state_dir, exist_ok=True)
        disks = self.layout.disks
        if "ext4" in disks:
            self.dirs["ext4"] = os.path.join(self.workdir, "ext4")
            os.makedirs(self.dirs["ext4"])
            with open(self.image, "wb") as f:
                f.truncate(64 * 1024 * 1024)
            _run(["mkfs.ext4", "-q", "-F", self.image])  # the kernel's defaults: dioread_nolock on 5.6 and later
            self.loop_device = _run(["losetup", "--direct-io=on", "-f", "--show", self.image]).strip()
            self._mount_ext4()
        if "tiny" in disks:
            self.dirs["tiny"] = os.path.join(self.workdir, "tiny")
            os.makedirs(self.dirs["tiny"])
            _run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", self.dirs["tiny"]])
            self._mounted.append(self.dirs["tiny"])

    def _mount_ext4(self) -> None:
        assert self.loop_device is not None
        _run(["mount", self.loop_device, self.dirs["ext4"]])
        self._mounted.append(self.dirs["ext4"])

    def dest(self, item: NodeSpec | TreeSpec) -> str:
        suffix = ".json" if isinstance(item, TreeSpec) and item.format == "json" else ""
        return os.path.join(self.dirs[item.disk], item.name + suffix)

    def write_secrets(self, identity: int) -> None:
        """Replace the secrets file atomically, as a secrets agent does; the writer's own secret stays."""
        self.identity = identity
        secrets = {"secret/zk": {"type": "simple", "value": reader(identity)},
                   "secret/admin": {"type": "simple", "value": ADMIN}}  # fmt: skip
        temp = self.secrets_path + ".new"
        with open(temp, "w") as f:
            json.dump({"secrets": secrets}, f)
        os.rename(temp, self.secrets_path)

    def write_configs(self) -> None:
        common: dict[str, object] = {"zookeeper.hosts": self.ensemble.hosts, "zookeeper.max_node_size": MAX_NODE_SIZE,
                                     "secrets.path": self.secrets_path}  # fmt: skip
        write_ini(self.workdir, {**common, "zookeeper.timeout": "5 seconds", "zookeeper.credentials": "secret/admin"},
                  os.path.basename(self.writer_config))  # fmt: skip
        settings = {**common, "zookeeper.timeout": f"{self.intensity.session_timeout:g} seconds",
                    "watcher.state_dir": self.state_dir, "watcher.metrics_address": f"127.0.0.1:{self.metrics_port}",
                    "watcher.max_payload_size": MAX_PAYLOAD}  # fmt: skip
        if self.intensity.has("acl"):
            settings["zookeeper.credentials"] = "secret/zk"
        for node in self.layout.nodes:
            if node.name not in self.without:
                settings.update({f"nodes.{node.name}.source": node.path, f"nodes.{node.name}.dest": self.dest(node)})
        for tree in self.layout.trees:
            if tree.name not in self.without:
                settings.update({f"trees.{tree.name}.source": tree.path, f"trees.{tree.name}.dest": self.dest(tree),
                                 f"trees.{tree.name}.format": tree.format})  # fmt: skip
        write_ini(self.workdir, settings, os.path.basename(self.config_path))

    def active(self, name: str) -> bool:
        return name not in self.without

    # --- the watcher ----------------------------------------------------------------------------------------

    def start_watcher(self) -> None:
        with self.watcher_lock:
            assert self.watcher is None or not self.watcher.alive()
            self.generation += 1
            self.killed_on_purpose = False
            self.paused = False
            self.watcher = WatcherProcess(self.config_path, log_dir=self.workdir)
            self.log_paths.append(self.watcher.log_path)

    def kill_watcher(self) -> None:
        with self.watcher_lock:
            if self.watcher is not None and self.watcher.alive():
                self.killed_on_purpose = True
                self.watcher.process.kill()
                self.watcher.process.wait()
                self.paused = False

    def pause_watcher(self) -> bool:
        with self.watcher_lock:
            if self.watcher is None or not self.watcher.alive() or self.paused:
                return False
            self.watcher.signal(signal.SIGSTOP)
            self.paused = True
            return True

    def resume_watcher(self) -> None:
        with self.watcher_lock:
            if self.watcher is not None and self.watcher.alive() and self.paused:
                self.watcher.signal(signal.SIGCONT)
            self.paused = False

    def reload(self, without: Iterable[str], signal_now: bool = True) -> None:
        """Rewrite the config without the reloadable parts named; SIGHUP now or at :meth:`signal_reload`."""
        with self.watcher_lock:
            self.without = set(without)
            self.write_configs()
            if signal_now:
                self.signal_reload()

    def signal_reload(self) -> None:
        """SIGHUP, once the watcher handles it (as systemd reloads only a started unit)."""
        with self.watcher_lock:
            watcher = self.watcher
        if watcher is None:
            return
        deadline = time.monotonic() + 30
        while watcher.alive() and "watching " not in watcher.output() and time.monotonic() < deadline:
            time.sleep(0.01)  # polling the log for the line logged once the SIGHUP handler is in place
        with self.watcher_lock:
            if watcher is self.watcher and watcher.alive():
                watcher.signal(signal.SIGHUP)

    def restart_watcher(self) -> int:
        """Stop the watcher as systemd does (SIGTERM) and start a fresh one; return the old one's exit status."""
        with self.watcher_lock:
            assert self.watcher is not None
            self.killed_on_purpose = True
            status = self.watcher.stop()
            self.start_watcher()
            return status

    def watcher_exit(self) -> int | None:
        """The status of a watcher that exited on its own (None while it runs or when the schedule ended it)."""
        with self.watcher_lock:
            if self.watcher is None or self.killed_on_purpose:
                return None
            return self.watcher.process.poll()

    def watcher_log(self) -> str:
        return self.watcher_logs()[-1] if self.watcher_logs() else ""

    def watcher_logs(self) -> list[str]:
        out = []
        for path in self.log_paths:
            with open(path, errors="replace") as f:
                out.append(f.read())
        return out

    def proc_value(self, name: str, key: str) -> int | None:
        """A number from /proc/<watcher>/<name> (``status`` VmRSS in kB, ``io`` rchar in bytes)."""
        with self.watcher_lock:
            if self.watcher is None or not self.watcher.alive():
                return None
            pid = self.watcher.pid
        try:
            with open(f"/proc/{pid}/{name}") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def check_probe(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "livedata.watcher", "--check", self.config_path],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    def temp_files(self) -> list[str]:
        found = []
        for directory in self.dirs.values():
            for parent, dirs, names in os.walk(directory):
                found += [os.path.join(parent, name) for name in names + dirs if TEMP_FILE.search(name)]
        return found

    # --- the filesystems' faults --------------------------------------------------------------------------

    def power_cut(self) -> None:
        """Cut the ext4 off as a power loss does: the journal is flushed, nothing else reaches the disk."""
        fd = os.open(self.dirs["ext4"], os.O_RDONLY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_LOGFLUSH))
        finally:
            os.close(fd)

    def remount_ext4(self) -> None:
        """Unmount the cut filesystem and mount it again: the journal is replayed, as at the next boot."""
        _run(["umount", self.dirs["ext4"]])
        self._mounted.remove(self.dirs["ext4"])
        self._mount_ext4()

    def fill_tiny(self) -> str | None:
        """Fill the tiny tmpfs up to its last byte with a file of the schedule's; return its path (None: it was
        full already)."""
        filler = os.path.join(self.dirs["tiny"], "filler")
        try:
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as e:
            vfs = os.statvfs(self.dirs["tiny"])
            print(f"chaos: the tiny disk is full already ({e}; {vfs.f_bfree} blocks free, holding "
                  f"{sorted(os.listdir(self.dirs['tiny']))})", file=sys.stderr)  # fmt: skip
            return None
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:  # ENOSPC: full, as wanted
            pass
        finally:
            os.close(fd)
        return filler

    # --- tearing down ---------------------------------------------------------------------------------------

    def close(self, keep: bool = False) -> None:
        with self.watcher_lock:
            if self.watcher is not None:
                self.watcher.stop()
        self.ensemble.stop()
        for mountpoint in reversed(self._mounted):
            subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)
        if self.loop_device:
            subprocess.run(["losetup", "-d", self.loop_device], check=False, capture_output=True)
        if not keep:  # kept: the logs, configs and servers' data, for a post-mortem
            shutil.rmtree(self.workdir, ignore_errors=True)


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise MountError(f"{' '.join(command)}: {done.stderr.strip() or f'exit status {done.returncode}'}")
    return done.stdout
