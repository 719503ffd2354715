"""Dests checked before connecting, and missing dest directories created visibly with the node's owner."""
from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys

import pytest

from livedata.destinations import create_missing_directories, dest_problem
from livedata.files import FileSpec
from livedata.testing.watcher_process import base_settings, node_settings, wait_for_content, write_ini
from livedata.testing.zookeeper import wait_for

pytestmark = pytest.mark.timeout(10)

NOBODY = 65534


def test_only_a_directory_at_the_dest_is_a_problem(tmp_path):
    assert dest_problem(str(tmp_path)) == f"{tmp_path} is a directory; a dest must name a file"
    assert "is the name of the watchers' lock file" in (dest_problem(f"{tmp_path}/.livedata.lock") or "")
    (tmp_path / "file").write_text("x")
    assert dest_problem(f"{tmp_path}/file/deeper/dest") is None  # a runtime failure, logged
    assert dest_problem(f"{tmp_path}/new/dir/dest") is None
    assert dest_problem(f"{tmp_path}/file") is None  # an existing file is simply replaced


def test_missing_directories_get_the_nodes_owner_and_a_log_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="livedata.destinations")
    old_umask = os.umask(0o077)
    try:
        created = create_missing_directories([
            ("a", FileSpec(f"{tmp_path}/x/y/a", 0o400, NOBODY, NOBODY)),
            ("b", FileSpec(f"{tmp_path}/x/y/b", 0o400)),  # same directory: already there
            ("c", FileSpec(f"{tmp_path}/c", 0o400)),  # existing directory: nothing to do
        ])  # fmt: skip
    finally:
        os.umask(old_umask)
    assert created == [f"{tmp_path}/x", f"{tmp_path}/x/y"]
    for path in created:
        status = os.stat(path)
        assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (NOBODY, NOBODY, 0o755)
    assert [record.getMessage() for record in caplog.records] == [
        f"nodes.a: created directory {tmp_path}/x (owner {NOBODY}, group {NOBODY}, mode 0755)",
        f"nodes.a: created directory {tmp_path}/x/y (owner {NOBODY}, group {NOBODY}, mode 0755)",
    ]


def test_a_directory_that_cannot_be_created_is_logged_not_fatal(tmp_path, caplog):
    (tmp_path / "file").write_text("x")
    assert create_missing_directories([("a", FileSpec(f"{tmp_path}/file/sub/a", 0o400))]) == []
    assert "nodes.a: cannot create" in caplog.text


# --- one watcher per dest: real daemons ----------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_second_watcher_on_the_same_dests_is_refused(zk_server, zk, zk_path, workdir, start_watcher):
    """Two daemons writing one file would undo each other: the second exits 2 naming the first; SIGKILL frees it."""
    out = f"{workdir}/out"
    for name in ("a", "b", "c"):
        zk.create(f"{zk_path}/{name}", name.encode())
    settings = {**base_settings(zk_server), **node_settings("a", f"{zk_path}/a", f"{out}/a"),
                **node_settings("b", f"{zk_path}/b", f"{out}/b")}  # fmt: skip
    first = start_watcher(settings)
    wait_for_content(f"{out}/a", b"a")
    config = os.path.join(workdir, "watcher.ini")

    second = subprocess.run([sys.executable, "-m", "livedata.watcher", config], capture_output=True, text=True,
                            timeout=30)  # fmt: skip
    assert second.returncode == 2, second.stderr
    assert second.stderr.splitlines() == [
        f"livedata-watcher: {config}: nodes.a.dest: {out}/a is already mirrored by another watcher (pid "
        f"{first.pid}), which holds its lock in {out}/.livedata.lock; stop that one first, or give this one other dests"
    ]
    zk.set(f"{zk_path}/a", b"a2")  # the first one goes on, alone
    wait_for_content(f"{out}/a", b"a2")

    # Other dests in the same directory are another watcher's business: no false refusal.
    neighbour_settings = {**base_settings(zk_server), **node_settings("c", f"{zk_path}/c", f"{out}/c")}
    neighbour = start_watcher(neighbour_settings, name="neighbour.ini")
    wait_for_content(f"{out}/c", b"c")
    # A reload that would take one of the first watcher's dests is rejected; the running configuration stays.
    write_ini(workdir, {**neighbour_settings, **node_settings("b", f"{zk_path}/b", f"{out}/b")}, "neighbour.ini")
    neighbour.signal(signal.SIGHUP)
    neighbour.wait_for_log(f"reload rejected, the running configuration stays in force: {workdir}/neighbour.ini: "
                           f"nodes.b.dest: {out}/b is already mirrored by another watcher (pid {first.pid})")

    first.process.kill()  # SIGKILL: no cleanup runs, the kernel drops the lock
    first.process.wait(10)
    third = start_watcher(settings, name="watcher.ini")
    third.wait_for_log("watching 2 nodes")
    zk.set(f"{zk_path}/a", b"a3")
    wait_for_content(f"{out}/a", b"a3")
    neighbour.signal(signal.SIGHUP)  # and now the third one holds b
    wait_for(lambda: neighbour.output().count("reload rejected") == 2, 20, "the second reload to be rejected too")
    assert f"nodes.b.dest: {out}/b is already mirrored by another watcher (pid {third.pid})" in neighbour.output()
    assert neighbour.alive() and third.alive()


# --- one watcher per dest: the claims of one process -------------------------------------------


def claimed_by_another_process(dest: str) -> bool:
    """Whether a second process (POSIX locks are per process) is refused ``dest``."""
    probe = ("import sys\nfrom livedata.destinations import DestLocks, DestinationBusy\n"
             "try:\n    DestLocks('second.ini').claim([('nodes.z.dest', sys.argv[1])])\n"
             "except DestinationBusy:\n    sys.exit(3)\n")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", probe, dest], capture_output=True, text=True, timeout=20)
    assert result.returncode in (0, 3), result.stderr
    return result.returncode == 3


def test_one_file_under_two_names_is_one_claim(tmp_path):
    """Two names of one dest (a symlinked directory): refused in one config; a reload from one to the other keeps it."""
    from livedata.config import ConfigError
    from livedata.destinations import DestLocks

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    real, link = f"{tmp_path}/real/x", f"{tmp_path}/link/x"
    locks = DestLocks("w.ini")
    with pytest.raises(ConfigError, match=rf"^w\.ini: nodes\.b\.dest: {link} is the file nodes\.a\.dest \({real}\) "
                       "names: one file cannot be the dest of two nodes$"):  # fmt: skip
        locks.claim([("nodes.a.dest", real), ("nodes.b.dest", link)])
    assert not claimed_by_another_process(real)  # all or nothing

    locks.claim([("nodes.a.dest", link), ("nodes.k.dest", f"{tmp_path}/real/k")])
    locks.claim([("nodes.a.dest", real), ("nodes.k.dest", f"{tmp_path}/real/k")])  # a reload names it directly
    locks.keep_only([real, f"{tmp_path}/real/k"])
    assert claimed_by_another_process(real)
    locks.release_all()
    assert not claimed_by_another_process(real)


@pytest.fixture
def bind_mount(tmp_path):
    """``tmp_path/b`` showing ``tmp_path/a`` (needs root, as mounting does)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "--bind", tmp_path / "a", tmp_path / "b"]).returncode:
        pytest.skip("needs root to bind-mount")
    yield tmp_path
    subprocess.run(["umount", tmp_path / "b"], check=True)


def test_releasing_a_dest_through_a_bind_mount_keeps_the_others_claim(bind_mount):
    """One lock file under two names is opened once: closing a second descriptor would drop every lock on it."""
    from livedata.destinations import DestLocks

    locks = DestLocks("w.ini")
    locks.claim([("nodes.x.dest", f"{bind_mount}/a/x"), ("nodes.y.dest", f"{bind_mount}/b/y")])
    locks.keep_only([f"{bind_mount}/a/x"])  # a reload removes node y
    assert claimed_by_another_process(f"{bind_mount}/a/x")
    assert claimed_by_another_process(f"{bind_mount}/b/x")
    locks.release_all()
    assert not claimed_by_another_process(f"{bind_mount}/a/x")


def test_many_dests_in_one_directory_claim_it_whole(tmp_path):
    """The kernel checks each new lock against all on the file: past a threshold, one lock covers the directory."""
    from livedata.destinations import DestinationBusy, DestLocks

    many = [(f"nodes.n{i}.dest", f"{tmp_path}/n{i}") for i in range(4)]
    locks = DestLocks("w.ini", whole_directory_at=3)
    locks.claim(many[:2])  # two: one byte each, a neighbour may share the directory
    assert not claimed_by_another_process(f"{tmp_path}/other")
    locks.claim(many)  # a reload brings four: the directory is this watcher's alone
    assert claimed_by_another_process(f"{tmp_path}/other")
    locks.keep_only([path for _, path in many[:1]])
    assert claimed_by_another_process(f"{tmp_path}/n0")
    locks.release_all()
    assert not claimed_by_another_process(f"{tmp_path}/other")

    # A neighbour already there: taking the directory whole is refused, naming the directory and the holder.
    neighbour = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom livedata.destinations import "
                                  "DestLocks\nDestLocks('n.ini').claim([('nodes.z.dest', sys.argv[1])])\n"
                                  "print('held', flush=True)\ntime.sleep(60)\n", f"{tmp_path}/z"],
                                 stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert neighbour.stdout is not None and neighbour.stdout.readline() == "held\n"
        with pytest.raises(DestinationBusy, match=rf"more than 3 dests in {tmp_path}, so it claims that directory "
                           rf"whole, but another watcher \(pid {neighbour.pid}\) holds dests there"):  # fmt: skip
            DestLocks("w.ini", whole_directory_at=3).claim(many)
    finally:
        neighbour.kill()
        neighbour.wait(10)
