"""The watcher daemon against a real ZooKeeper server: one test per promise of the watcher issue."""
from __future__ import annotations

import os
import signal
import subprocess
import threading

import pytest

from livedata import files
from livedata.testing.watcher_process import base_settings, node_settings, read_bytes, wait_for_content
from livedata.testing.zookeeper import wait_for

pytestmark = pytest.mark.timeout(90)




def base(server, **watcher_options: object) -> dict:
    return base_settings(server, session_timeout="3 seconds", **watcher_options)


def test_initial_sync_change_delete_and_recreate(zk_server, zk, zk_path, workdir, start_watcher):
    zk.create(f"{zk_path}/a", b"alpha")
    zk.create(f"{zk_path}/empty", b"")
    settings = base(zk_server)
    settings.update(node_settings("a", f"{zk_path}/a", f"{workdir}/out/a.txt"))
    settings.update(node_settings("empty", f"{zk_path}/empty", f"{workdir}/out/empty.txt"))
    settings.update(node_settings("later", f"{zk_path}/later", f"{workdir}/deep/er/later.txt"))
    start_watcher(settings)

    wait_for_content(f"{workdir}/out/a.txt", b"alpha")
    wait_for_content(f"{workdir}/out/empty.txt", b"")
    assert read_bytes(f"{workdir}/deep/er/later.txt") is None
    assert os.stat(f"{workdir}/out/a.txt").st_mode & 0o7777 == 0o400  # the default mode

    zk.set(f"{zk_path}/a", b"beta")
    wait_for_content(f"{workdir}/out/a.txt", b"beta")
    zk.create(f"{zk_path}/later", b"created after start")
    wait_for_content(f"{workdir}/deep/er/later.txt", b"created after start")  # parents created
    zk.delete(f"{zk_path}/later")
    wait_for_content(f"{workdir}/deep/er/later.txt", None)
    zk.create(f"{zk_path}/later", b"again")
    wait_for_content(f"{workdir}/deep/er/later.txt", b"again")
    zk.set(f"{zk_path}/a", b"")
    wait_for_content(f"{workdir}/out/a.txt", b"")


def test_binary_data_is_copied_byte_for_byte(zk_server, zk, zk_path, workdir, start_watcher):
    payload = bytes(range(256)) * 64 + b"\x00\r\n\xff"
    zk.create(f"{zk_path}/bin", payload)
    settings = base(zk_server)
    settings.update(node_settings("bin", f"{zk_path}/bin", f"{workdir}/bin"))
    start_watcher(settings)
    wait_for_content(f"{workdir}/bin", payload)


def test_unchanged_data_is_not_rewritten_but_metadata_is_enforced(zk_server, zk, zk_path, workdir, start_watcher):
    zk.create(f"{zk_path}/same", b"same bytes")
    zk.create(f"{zk_path}/marker", b"0")
    dest = f"{workdir}/same"
    settings = base(zk_server)
    settings.update(node_settings("same", f"{zk_path}/same", dest, mode="0640"))
    settings.update(node_settings("marker", f"{zk_path}/marker", f"{workdir}/marker"))
    start_watcher(settings)
    wait_for_content(dest, b"same bytes")
    wait_for_content(f"{workdir}/marker", b"0")
    inode = os.stat(dest).st_ino

    os.chmod(dest, 0o666)  # drift, to be repaired in place on the next event
    zk.set(f"{zk_path}/same", b"same bytes")  # a new version with identical content
    zk.set(f"{zk_path}/marker", b"1")  # events are handled in order: once this lands, "same" was handled
    wait_for_content(f"{workdir}/marker", b"1")
    wait_for(lambda: os.stat(dest).st_mode & 0o7777 == 0o640, 10, "the mode to be repaired")
    assert os.stat(dest).st_ino == inode, "identical content must not be replaced"


def test_owner_group_and_mode(zk_server, zk, zk_path, workdir, start_watcher):
    if os.geteuid() != 0:
        pytest.skip("changing ownership needs root")
    for name in ("root", "owner_only", "group_only", "both"):
        zk.create(f"{zk_path}/{name}", name.encode())
    settings = base(zk_server)
    settings.update(node_settings("root", f"{zk_path}/root", f"{workdir}/root", owner="0", group="root", mode="0600"))
    settings.update(node_settings("owner_only", f"{zk_path}/owner_only", f"{workdir}/owner_only", owner=65534))
    settings.update(node_settings("group_only", f"{zk_path}/group_only", f"{workdir}/group_only", group=65534))
    settings.update(node_settings("both", f"{zk_path}/both", f"{workdir}/both", owner=65533, group=65532, mode="0444"))
    # files from an earlier run with the wrong owner: uid/gid 0 must be applied, not ignored
    with open(f"{workdir}/root", "wb") as f:
        f.write(b"stale")
    os.chown(f"{workdir}/root", 1234, 1234)
    start_watcher(settings)
    for name in ("root", "owner_only", "group_only", "both"):
        wait_for_content(f"{workdir}/{name}", name.encode())
    expectations = {
        "root": (0, 0, 0o600),
        "owner_only": (65534, 0, 0o400),
        "group_only": (0, 65534, 0o400),
        "both": (65533, 65532, 0o444),
    }
    for name, expected in expectations.items():
        st = os.stat(f"{workdir}/{name}")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == expected, name


def test_heartbeat_only_while_connected(private_zk_server, workdir, start_watcher):
    from tests.conftest import make_client

    zk = make_client(private_zk_server.address)
    zk.create("/hb", b"beat")
    zk.stop()
    dest = f"{workdir}/hb"
    settings = base(private_zk_server, heartbeat_interval="300 milliseconds")
    settings.update(node_settings("hb", "/hb", dest))
    watcher = start_watcher(settings)
    wait_for_content(dest, b"beat")
    first = os.stat(dest).st_mtime_ns
    wait_for(lambda: os.stat(dest).st_mtime_ns > first, 10, "a heartbeat to touch the file")

    private_zk_server.stop()
    watcher.wait_for_log("heartbeat withheld", timeout=20)
    frozen = os.stat(dest).st_mtime_ns
    watcher.wait_for_log("heartbeat withheld", timeout=20, count=3)  # at least two more intervals passed
    assert os.stat(dest).st_mtime_ns == frozen
    assert read_bytes(dest) == b"beat", "the file is kept while ZooKeeper is unreachable"

    private_zk_server.start()
    wait_for(lambda: os.stat(dest).st_mtime_ns > frozen, 30, "heartbeats to resume after reconnecting")
    assert watcher.alive()


def chattr(flag: str, path: str) -> None:
    result = subprocess.run(["chattr", flag, path], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"chattr is not usable here: {result.stderr.strip()}")


def test_an_untouchable_file_does_not_stop_the_heartbeat_of_the_others(
    zk_server, zk, zk_path, workdir, start_watcher
):
    zk.create(f"{zk_path}/stuck", b"stuck")
    zk.create(f"{zk_path}/ok", b"ok")
    stuck, ok = f"{workdir}/a-stuck", f"{workdir}/z-ok"  # the stuck file comes first in the pass
    settings = base(zk_server, heartbeat_interval="300 milliseconds")
    settings.update(node_settings("stuck", f"{zk_path}/stuck", stuck))
    settings.update(node_settings("ok", f"{zk_path}/ok", ok))
    watcher = start_watcher(settings)
    wait_for_content(stuck, b"stuck")
    wait_for_content(ok, b"ok")
    chattr("+i", stuck)  # even root cannot touch it now
    try:
        for _ in range(3):
            before = os.stat(ok).st_mtime_ns
            wait_for(lambda before=before: os.stat(ok).st_mtime_ns > before, 10, "a heartbeat of the other file")
        watcher.wait_for_log("stuck: heartbeat:")
        assert watcher.output().count("stuck: heartbeat:") == 1, "logged once, not on every heartbeat"
    finally:
        subprocess.run(["chattr", "-i", stuck], check=True)
    watcher.wait_for_log("stuck: heartbeat touches")
    assert watcher.alive()


def test_failed_write_is_retried_and_withholds_the_heartbeat(
    zk_server, zk, zk_path, workdir, immutable_dir, start_watcher
):
    zk.create(f"{zk_path}/f", b"v1")
    zk.create(f"{zk_path}/ok", b"ok")
    dest = f"{immutable_dir}/f"
    settings = base(zk_server, heartbeat_interval="300 milliseconds")
    settings.update(node_settings("f", f"{zk_path}/f", dest))
    settings.update(node_settings("ok", f"{zk_path}/ok", f"{workdir}/ok"))
    watcher = start_watcher(settings)
    wait_for_content(dest, b"v1")

    chattr("+i", immutable_dir)
    zk.set(f"{zk_path}/f", b"v2")
    watcher.wait_for_log("f: ")  # the failure is logged, naming the node
    watcher.wait_for_log("will retry")
    stale_mtime = os.stat(dest).st_mtime_ns
    ok_mtime = os.stat(f"{workdir}/ok").st_mtime_ns
    wait_for(lambda: os.stat(f"{workdir}/ok").st_mtime_ns > ok_mtime, 10, "a heartbeat of the healthy node")
    ok_mtime = os.stat(f"{workdir}/ok").st_mtime_ns
    wait_for(lambda: os.stat(f"{workdir}/ok").st_mtime_ns > ok_mtime, 10, "a second heartbeat of the healthy node")
    assert os.stat(dest).st_mtime_ns == stale_mtime, "a node whose write failed must not be heartbeated"
    assert read_bytes(dest) == b"v1", "the old file is left untouched"
    assert [name for name in os.listdir(immutable_dir) if files.is_temp_name(name)] == []

    subprocess.run(["chattr", "-i", immutable_dir], check=True)
    wait_for_content(dest, b"v2")
    watcher.wait_for_log("f: recovered")
    recovered = os.stat(dest).st_mtime_ns
    wait_for(lambda: os.stat(dest).st_mtime_ns > recovered, 10, "heartbeats to resume once the write succeeded")


def test_resync_repairs_local_damage(zk_server, zk, zk_path, workdir, start_watcher):
    zk.create(f"{zk_path}/r1", b"one")
    zk.create(f"{zk_path}/r2", b"two")
    settings = base(zk_server, resync_interval="500 milliseconds")
    settings.update(node_settings("r1", f"{zk_path}/r1", f"{workdir}/r1", mode="0644"))
    settings.update(node_settings("r2", f"{zk_path}/r2", f"{workdir}/r2", mode="0644"))
    start_watcher(settings)
    wait_for_content(f"{workdir}/r1", b"one")
    wait_for_content(f"{workdir}/r2", b"two")
    os.unlink(f"{workdir}/r1")
    with open(f"{workdir}/r2", "wb") as f:
        f.write(b"edited by hand")
    os.chmod(f"{workdir}/r2", 0o600)
    wait_for_content(f"{workdir}/r1", b"one")
    wait_for_content(f"{workdir}/r2", b"two")
    wait_for(lambda: os.stat(f"{workdir}/r2").st_mode & 0o777 == 0o644, 10, "the mode to be restored")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_clean_stop(zk_server, zk, zk_path, workdir, start_watcher, signum):
    zk.create(f"{zk_path}/s", b"x")
    settings = base(zk_server)
    settings.update(node_settings("s", f"{zk_path}/s", f"{workdir}/s"))
    watcher = start_watcher(settings)
    wait_for_content(f"{workdir}/s", b"x")
    watcher.signal(signum)
    assert watcher.process.wait(timeout=20) == 0  # a clean stop, however long a loaded machine takes
    output = watcher.output()
    assert "Traceback" not in output
    assert "stopping" in output
    assert read_bytes(f"{workdir}/s") == b"x"


def test_starts_before_zookeeper_and_keeps_old_files(private_zk_server, workdir, start_watcher):
    from tests.conftest import make_client

    zk = make_client(private_zk_server.address)
    zk.create("/early", b"from zookeeper")
    zk.stop()
    dest = f"{workdir}/early"
    with open(dest, "wb") as f:
        f.write(b"from an earlier run")
    private_zk_server.stop()
    settings = base(private_zk_server)
    settings.update(node_settings("early", "/early", dest))
    watcher = start_watcher(settings)
    watcher.wait_for_log("watching 1 nodes")
    wait_for(lambda: "Connection refused" in watcher.output() or "connect" in watcher.output().lower(), 20, "retries")
    assert read_bytes(dest) == b"from an earlier run", "nothing is touched while ZooKeeper is unreachable"
    private_zk_server.start()
    wait_for_content(dest, b"from zookeeper", timeout=30)
    assert watcher.alive()


def test_stale_temp_files_are_removed_at_start(zk_server, zk, zk_path, workdir, start_watcher):
    zk.create(f"{zk_path}/t", b"fresh")
    dest = f"{workdir}/t"
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{files.temp_prefix(dest)}{dead.pid}.{files._namespace_tag()}01234567"
    with open(stale, "wb") as f:
        f.write(b"half a wri")
    unrelated = os.path.join(workdir, "unrelated.txt")
    with open(unrelated, "wb") as f:
        f.write(b"keep me")
    assert files.is_temp_name(os.path.basename(stale))
    settings = base(zk_server)
    settings.update(node_settings("t", f"{zk_path}/t", dest))
    start_watcher(settings)
    wait_for_content(dest, b"fresh")
    assert not os.path.exists(stale)
    assert read_bytes(unrelated) == b"keep me"


def test_thousands_of_nodes_start_concurrently(zk_server, zk, zk_path, workdir, start_watcher):
    count = 3000
    transaction_size = 500
    for start in range(0, count, transaction_size):
        batch = range(start, start + transaction_size)
        results = [zk.create_async(f"{zk_path}/n{i}", f"value {i}".encode()) for i in batch]
        for result in results:
            result.get(timeout=30)
    settings = base(zk_server)
    for i in range(count):
        settings.update(node_settings(f"n{i}", f"{zk_path}/n{i}", f"{workdir}/many/n{i}"))
    watcher = start_watcher(settings)
    watcher.wait_for_log(f"initial sync of {count} nodes done", timeout=60)
    for i in range(count):
        assert read_bytes(f"{workdir}/many/n{i}") == f"value {i}".encode()


def test_reader_never_sees_a_partial_file(zk_server, zk, zk_path, workdir, start_watcher):
    versions = [(f"version {i} ".encode() * (50 + i % 200)) for i in range(300)]
    zk.create(f"{zk_path}/hot", versions[0])
    dest = f"{workdir}/hot"
    settings = base(zk_server)
    settings.update(node_settings("hot", f"{zk_path}/hot", dest))
    start_watcher(settings)
    wait_for_content(dest, versions[0])

    valid = set(versions)
    seen_bad: list[bytes | None] = []
    reads = 0
    done = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not done.is_set():
            content = read_bytes(dest)
            reads += 1
            if content not in valid:
                seen_bad.append(content)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in versions[1:]:
            zk.set(f"{zk_path}/hot", version)
        wait_for_content(dest, versions[-1])
    finally:
        done.set()
        thread.join()
    assert seen_bad == []
    assert reads > len(versions)
