"""Trees through the real watcher: a znode's children mirrored as a directory that switches all at once.

The publisher's own tests (tests/test_snapshots.py) prove the on-disk rules; these prove what the daemon does
with real ZooKeeper: children coming and going, the source deleted and re-created, changes of several children
in one transaction never half-applied, ephemeral children of an expired session, thousands of children with
changes in flight, the ``json`` format, and the probes.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import OPEN_ACL_UNSAFE, make_digest_acl

from livedata.testing.watcher_process import base_settings, read_bytes, write_ini
from livedata.testing.zookeeper import free_ports, wait_for
from tests.test_metrics import Endpoint
from tests.test_scale import chunks, create_all
from tests.test_watcher import chattr

pytestmark = pytest.mark.timeout(120)


def tree_settings(name: str, source: str, dest: str, **extra: object) -> dict[str, object]:
    settings: dict[str, object] = {f"trees.{name}.source": source, f"trees.{name}.dest": dest}
    settings.update({f"trees.{name}.{key}": value for key, value in extra.items()})
    return settings


def snapshot(dest: str) -> dict[str, bytes] | None:
    """What a careful reader sees: resolve ``..data`` once, read every child through it (None: no snapshot)."""
    link = os.path.join(dest, "..data")
    try:
        current = os.readlink(link)
        directory = os.path.join(dest, current)
        found = {name: read_bytes(os.path.join(directory, name)) for name in sorted(os.listdir(directory))}
        if os.readlink(link) != current:
            return None  # replaced (and removed) while we read: what we read may be cut short; try again
    except FileNotFoundError:
        return None
    return {name: data or b"" for name, data in found.items()}


def visible(dest: str) -> dict[str, bytes]:
    """What a plain reader sees through the visible names."""
    return {name: read_bytes(os.path.join(dest, name)) or b"" for name in sorted(os.listdir(dest))
            if not name.startswith(".")}  # fmt: skip


def children_data(client: KazooClient, source: str) -> dict[str, bytes]:
    if client.exists(source) is None:
        return {}
    names = client.get_children(source)
    found = {}
    for part in chunks(sorted(names)):
        for name, result in [(name, client.get_async(f"{source}/{name}")) for name in part]:
            found[name] = result.get(timeout=30)[0] or b""
    return found


def readable_children(client: KazooClient, source: str) -> dict[str, bytes]:
    """The children ``client`` may read, with their data (those another service locked are left out)."""
    found = {}
    names = sorted(client.get_children(source))
    for part in chunks(names):
        for name, result in [(name, client.get_async(f"{source}/{name}")) for name in part]:
            with contextlib.suppress(NoAuthError):
                found[name] = result.get(timeout=30)[0] or b""
    return found


def mirrored(dest: str, tree_format: str) -> dict[str, bytes] | None:
    """What readers of a tree's dest see, in either format (None: nothing consistent to read yet)."""
    if tree_format == "json":
        raw = read_bytes(dest)
        return None if raw is None else {name: text.encode() for name, text in json.loads(raw).items()}
    found = snapshot(dest)
    return found if found is not None and visible(dest) == found else None


SERVICE = ("registry", "registry-password")  # another service's credentials: its nodes' ACLs name only it


def other_service(server: object) -> KazooClient:
    """A session of another service, which may create children under a mirrored source with its own ACL."""
    client = KazooClient(hosts=server.address, timeout=10.0, auth_data=[("digest", ":".join(SERVICE))])  # type: ignore[attr-defined]
    client.start(timeout=30)
    return client


def wait_tree(client: KazooClient, source: str, dest: str, timeout: float = 30.0) -> None:
    wait_for(lambda: snapshot(dest) == children_data(client, source) and visible(dest) == snapshot(dest), timeout,
             f"{dest} to mirror the children of {source}")  # fmt: skip


def test_children_come_and_go_and_the_source_may_vanish(zk_server, zk, zk_path, workdir, start_watcher):
    source, dest = f"{zk_path}/experiments", f"{workdir}/experiments"
    zk.create(source)
    zk.create(f"{source}/a", b"alpha")
    zk.create(f"{source}/b", b"beta")
    settings = base_settings(zk_server)
    settings.update(tree_settings("experiments", source, dest, mode="0440"))  # a config with trees only
    watcher = start_watcher(settings)
    wait_tree(zk, source, dest)
    assert oct(os.stat(os.path.join(dest, "a")).st_mode & 0o777) == oct(0o440)

    zk.set(f"{source}/a", b"alpha 2")
    zk.create(f"{source}/c", b"gamma")
    zk.delete(f"{source}/b")
    wait_tree(zk, source, dest)
    assert snapshot(dest) == {"a": b"alpha 2", "c": b"gamma"}
    inode = os.stat(os.path.join(dest, "c")).st_ino
    zk.set(f"{source}/a", b"alpha 3")
    wait_tree(zk, source, dest)
    assert os.stat(os.path.join(dest, "c")).st_ino == inode, "an unchanged child is never rewritten"

    for name in ("a", "c"):
        zk.delete(f"{source}/{name}")
    wait_for(lambda: snapshot(dest) == {} and visible(dest) == {}, 30, "an empty snapshot")
    zk.create(f"{source}/d", b"delta")
    wait_tree(zk, source, dest)
    zk.delete(source, recursive=True)
    wait_for(lambda: snapshot(dest) == {} and visible(dest) == {}, 30, "an empty tree once the source is gone")
    zk.create(f"{source}/e", b"epsilon", makepath=True)
    wait_tree(zk, source, dest)
    assert snapshot(dest) == {"e": b"epsilon"}
    assert watcher.alive()


def test_a_transaction_over_several_children_is_never_half_applied(zk_server, zk, zk_path, workdir, start_watcher):
    source, dest = f"{zk_path}/pair", f"{workdir}/pair"
    zk.create(source)
    names = ("left", "middle", "right")
    for name in names:
        zk.create(f"{source}/{name}", b"0")
    settings = base_settings(zk_server)
    settings.update(tree_settings("pair", source, dest))
    watcher = start_watcher(settings)
    wait_tree(zk, source, dest)

    mixes: list[dict[str, bytes]] = []
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader() -> None:  # every snapshot must hold one value in all three children
        while not stop.is_set():
            found = snapshot(dest)
            if found is None:
                continue
            if len(set(found.values())) != 1:
                mixes.append(found)
            else:
                seen.add(next(iter(found.values())))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for value in range(1, 301):
            transaction = zk.transaction()
            for name in names:
                transaction.set_data(f"{source}/{name}", str(value).encode())
            assert all(result is True or not isinstance(result, Exception) for result in transaction.commit())
        wait_for(lambda: snapshot(dest) == {name: b"300" for name in names}, 30, "the last transaction")
    finally:
        stop.set()
        thread.join(10)
    assert mixes == [], f"half-applied transactions seen: {mixes[:3]}"
    assert len(seen) > 1, "the reader saw the tree change"
    assert watcher.alive()


def test_ephemeral_children_of_an_expired_session_vanish(zk_server, zk, zk_path, workdir, start_watcher):
    source, dest = f"{zk_path}/servers", f"{workdir}/servers"
    zk.create(source)
    zk.create(f"{source}/static", b"stays")
    member_code = (
        "import sys, time\nfrom kazoo.client import KazooClient\n"
        "client = KazooClient(hosts=sys.argv[1], timeout=4.0)\nclient.start(timeout=30)\n"
        "client.create(sys.argv[2], b'10.0.0.1:80', ephemeral=True)\nprint('ready', flush=True)\ntime.sleep(600)\n"
    )
    member = subprocess.Popen([sys.executable, "-c", member_code, zk_server.address, f"{source}/host-1"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert member.stdout is not None and member.stdout.readline().strip() == "ready"
        settings = base_settings(zk_server)
        settings.update(tree_settings("servers", source, dest))
        start_watcher(settings)
        wait_for(lambda: snapshot(dest) == {"host-1": b"10.0.0.1:80", "static": b"stays"}, 30, "the ephemeral child")
    finally:
        member.kill()  # a crash: the session is not closed, the servers expire it after its timeout
        member.wait()
    wait_for(lambda: snapshot(dest) == {"static": b"stays"}, 30, "the expired session's child to vanish")


def test_json_format_and_a_child_that_is_not_text(zk_server, zk, zk_path, workdir, start_watcher):
    source, dest = f"{zk_path}/flags", f"{workdir}/flags.json"
    zk.create(source)
    zk.create(f"{source}/dark_mode", b"on")
    zk.create(f"{source}/beta", b'{"share": 5}')
    settings = base_settings(zk_server)
    settings.update(tree_settings("flags", source, dest, format="json"))
    watcher = start_watcher(settings)
    wait_for(lambda: read_bytes(dest) and json.loads(read_bytes(dest) or b"{}") == {
        "beta": '{"share": 5}', "dark_mode": "on"}, 30, "the json file")  # fmt: skip
    before = read_bytes(dest)
    zk.create(f"{source}/binary", b"\xff\xfe")
    watcher.wait_for_log("not UTF-8")
    assert read_bytes(dest) == before, "the old file is kept"
    zk.delete(f"{source}/binary")
    zk.set(f"{source}/dark_mode", b"off")
    wait_for(lambda: json.loads(read_bytes(dest) or b"{}").get("dark_mode") == "off", 30, "recovery")


def test_a_failure_with_no_file_there_yet_does_not_claim_an_old_file(
    zk_server, zk, zk_path, workdir, start_watcher, immutable_dir
):
    """A tree that cannot be written (its directory takes no new entry, even from root) says no file is there yet."""
    source, dest = f"{zk_path}/flags", f"{immutable_dir}/flags.json"
    zk.create(f"{source}/a", b"1", makepath=True)
    chattr("+i", immutable_dir)
    settings = base_settings(zk_server)
    settings.update(tree_settings("flags", source, dest, format="json"))
    watcher = start_watcher(settings)
    watcher.wait_for_log("will retry")
    (line, *_) = [line for line in watcher.output().splitlines() if "will retry" in line]
    assert line.endswith("will retry, no file is there yet"), line
    assert "old file" not in watcher.output() and not os.path.lexists(dest)


def test_thousands_of_children_with_changes_in_flight(zk_server, zk, zk_path, workdir, start_watcher):
    source, dest = f"{zk_path}/big", f"{workdir}/big"
    zk.create(source)
    count = 3000
    create_all(zk, {f"{source}/c{i}": f"v0 {i}".encode() for i in range(count)})
    settings = base_settings(zk_server)
    settings.update(tree_settings("big", source, dest))
    watcher = start_watcher(settings)
    wait_tree(zk, source, dest, timeout=90)

    changer = KazooClient(hosts=zk_server.address)
    changer.start(timeout=30)
    try:
        for round_ in range(1, 4):  # every child changes three times, some are removed and others added
            for part in chunks([f"c{i}" for i in range(count)]):
                for result in [changer.set_async(f"{source}/{name}", f"v{round_} {name}".encode()) for name in part]:
                    result.get(timeout=30)
        for result in [changer.delete_async(f"{source}/c{i}") for i in range(0, count, 7)]:
            result.get(timeout=30)
        for result in [changer.create_async(f"{source}/n{i}", b"new") for i in range(200)]:
            result.get(timeout=30)
    finally:
        changer.stop()
        changer.close()
    wait_tree(zk, source, dest, timeout=90)
    assert watcher.alive()


def test_check_covers_trees(zk_server, zk, zk_path, workdir, start_watcher):
    source = f"{zk_path}/probe"
    zk.create(source)
    zk.create(f"{source}/x", b"x")
    settings = base_settings(zk_server, heartbeat_interval="1 second")
    settings.update(tree_settings("probe", source, f"{workdir}/probe"))
    settings.update(tree_settings("probejson", source, f"{workdir}/probe.json", format="json"))
    config = write_ini(workdir, settings, "probe.ini")
    probe = [sys.executable, "-m", "livedata.watcher", "--check", config]
    missing = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1 and "(trees.probe)" in missing.stdout and "(trees.probejson)" in missing.stdout
    start_watcher(settings, name="probe.ini")
    wait_for(lambda: subprocess.run(probe, capture_output=True, timeout=30).returncode == 0, 30, "a healthy probe")


@pytest.mark.parametrize(
    ("extra", "key", "fragment"),
    [
        ({"trees.t.format": "yaml"}, "trees.t.format", "yaml"),
        ({"trees.t.dest": "relative/dir"}, "trees.t.dest", "absolute"),
        ({"nodes.n.source": "/n", "nodes.n.dest": "{dest}/inside"}, "trees.t.dest", "owns entirely"),
        ({"trees.t.colour": "blue"}, "trees.t.colour", "unknown"),
        ({"nodes.t.source": "/n", "nodes.t.dest": "/tmp/elsewhere-t"}, "trees.t.source", "same name"),
    ],
)
def test_bad_tree_configuration_is_refused_before_connecting(workdir, extra, key, fragment):
    settings: dict[str, object] = {"zookeeper.hosts": "127.0.0.1:1"}
    settings.update(tree_settings("t", "/t", f"{workdir}/tree"))
    settings.update({name: str(value).format(dest=f"{workdir}/tree") for name, value in extra.items()})
    config = write_ini(workdir, settings)
    result = subprocess.run([sys.executable, "-m", "livedata.watcher", config], capture_output=True, text=True,
                            timeout=30)  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and fragment in lines[0], lines
    assert not os.path.exists(f"{workdir}/tree")



def test_hook_runs_for_a_snapshot_and_a_reload_adds_a_tree(zk_server, zk, zk_path, workdir, start_watcher):
    source, dest, log = f"{zk_path}/hooked", f"{workdir}/hooked", f"{workdir}/hook.log"
    zk.create(source)
    zk.create(f"{source}/a", b"1")
    settings = base_settings(zk_server)
    settings.update(tree_settings("hooked", source, dest,
                                  on_change=f'echo "$$LIVEDATA_NODE $$LIVEDATA_EVENT $$LIVEDATA_DEST" >> {log}'))
    watcher = start_watcher(settings, name="trees.ini")
    wait_tree(zk, source, dest)
    zk.set(f"{source}/a", b"2")
    wait_for(lambda: f"hooked written {dest}\n" in (read_bytes(log) or b"").decode(), 30, "the hook of a snapshot")

    later_source, later_dest = f"{zk_path}/later", f"{workdir}/later"
    zk.create(later_source)
    zk.create(f"{later_source}/x", b"x")
    settings.update(tree_settings("later", later_source, later_dest))
    write_ini(workdir, settings, "trees.ini")
    watcher.signal(signal.SIGHUP)
    watcher.wait_for_log("reloaded")
    wait_tree(zk, later_source, later_dest)
    assert watcher.alive()


@pytest.mark.parametrize("tree_format", ["directory", "json"])
def test_an_unreadable_child_never_freezes_the_tree(zk_server, zk, zk_path, workdir, start_watcher, tree_format):
    """Another service's session creates a child this watcher may not read (an ephemeral node with a digest-only
    ACL): the rest of the tree keeps flowing and that child is left out; a child that becomes unreadable keeps
    the bytes last read; each is logged once per reason however often it is read again, and counted."""
    source, dest = f"{zk_path}/services", f"{workdir}/services" + (".json" if tree_format == "json" else "")
    zk.create(source)
    for name, data in (("a", b"alpha"), ("b", b"beta"), ("d", b"delta")):
        zk.create(f"{source}/{name}", data)
    (port,) = free_ports(1)
    settings = base_settings(zk_server, metrics_port=port, resync_interval="1 second")
    settings.update(tree_settings("services", source, dest, format=tree_format))
    watcher = start_watcher(settings)
    wait_for(lambda: mirrored(dest, tree_format) == {"a": b"alpha", "b": b"beta", "d": b"delta"}, 30, "the tree")
    endpoint = Endpoint(port)
    other = other_service(zk_server)
    only_the_service = [make_digest_acl(*SERVICE, all=True)]
    try:
        other.create(f"{source}/locked", b"10.0.0.9:80", acl=only_the_service, ephemeral=True)
        zk.set(f"{source}/a", b"alpha 2")
        zk.delete(f"{source}/d")
        zk.create(f"{source}/e", b"epsilon")
        wait_for(lambda: mirrored(dest, tree_format) == {"a": b"alpha 2", "b": b"beta", "e": b"epsilon"}, 20,
                 "the rest of the tree to flow past the unreadable child")  # fmt: skip
        endpoint.wait("livedata_tree_unreadable_children", 1, tree="services")

        zk.set_acls(f"{source}/b", only_the_service)  # b was read before: its last bytes stay in the tree
        other.set(f"{source}/b", b"beta 2")
        endpoint.wait("livedata_tree_unreadable_children", 2, tree="services")  # a resync read it again
        zk.set(f"{source}/a", b"alpha 3")
        wait_for(lambda: mirrored(dest, tree_format) == {"a": b"alpha 3", "b": b"beta", "e": b"epsilon"}, 20,
                 "the change of a beside an unreadable b")  # fmt: skip
        resyncs = endpoint.wait_at_least("livedata_resyncs_total", 1)
        endpoint.wait_at_least("livedata_resyncs_total", resyncs + 2)  # each read both children again
        assert watcher.output().count("cannot read child locked ") == 1, watcher.output()[-3000:]
        assert watcher.output().count("cannot read child b ") == 1, watcher.output()[-3000:]

        other.set_acls(f"{source}/b", OPEN_ACL_UNSAFE)
        wait_for(lambda: mirrored(dest, tree_format) == {"a": b"alpha 3", "b": b"beta 2", "e": b"epsilon"}, 20,
                 "b readable again")  # fmt: skip
        endpoint.wait("livedata_tree_unreadable_children", 1, tree="services")
        watcher.wait_for_log("child b is readable again")
    finally:
        other.stop()
        other.close()
    endpoint.wait("livedata_tree_unreadable_children", 0, tree="services")  # the ephemeral child went with its session
    assert mirrored(dest, tree_format) == {"a": b"alpha 3", "b": b"beta 2", "e": b"epsilon"}
    assert watcher.alive()


@pytest.mark.timeout(180)
def test_thousands_of_children_some_unreadable_with_changes_in_flight(zk_server, zk, zk_path, workdir,
                                                                      start_watcher):  # fmt: skip
    source, dest = f"{zk_path}/fleet", f"{workdir}/fleet"
    zk.create(source)
    count = 3000
    create_all(zk, {f"{source}/c{i}": f"v0 {i}".encode() for i in range(count)})
    other = other_service(zk_server)
    only_the_service = [make_digest_acl(*SERVICE, all=True)]
    try:
        for i in range(3):
            other.create(f"{source}/locked{i}", b"x", acl=only_the_service, ephemeral=True)
        (port,) = free_ports(1)
        settings = base_settings(zk_server, metrics_port=port)
        settings.update(tree_settings("fleet", source, dest))
        watcher = start_watcher(settings)
        wait_for(lambda: snapshot(dest) == readable_children(zk, source), 90, "the readable children")

        changer = KazooClient(hosts=zk_server.address)
        changer.start(timeout=30)
        try:
            for round_ in range(1, 3):  # every child changes twice; unreadable children come and go meanwhile
                other.create(f"{source}/locked{2 + round_}", b"x", acl=only_the_service, ephemeral=True)
                for part in chunks([f"c{i}" for i in range(count)]):
                    for result in [changer.set_async(f"{source}/{name}", f"v{round_} {name}".encode())
                                   for name in part]:  # fmt: skip
                        result.get(timeout=30)
            other.delete(f"{source}/locked0")
            for result in [changer.delete_async(f"{source}/c{i}") for i in range(0, count, 7)]:
                result.get(timeout=30)
            for result in [changer.create_async(f"{source}/n{i}", b"new") for i in range(200)]:
                result.get(timeout=30)
        finally:
            changer.stop()
            changer.close()
        wait_for(lambda: snapshot(dest) == readable_children(zk, source) and visible(dest) == snapshot(dest), 90,
                 "every readable child's file equal to its node")  # fmt: skip
        endpoint = Endpoint(port)
        endpoint.wait("livedata_tree_unreadable_children", 4, tree="fleet")
        endpoint.wait("livedata_zookeeper_requests_in_flight", 0)
        endpoint.wait("livedata_zookeeper_requests_queued", 0)
        assert not any(name.startswith("locked") for name in os.listdir(dest))
    finally:
        other.stop()
        other.close()
    assert watcher.alive()


def test_an_unreadable_child_is_read_again_when_the_listing_changes(zk_server, zk, zk_path, workdir, start_watcher):
    """ZooKeeper sends no event of a node the session may not read, not even when its ACL opens up: a change of
    the children (the one event that still comes) reads it again, long before the next resync."""
    source, dest = f"{zk_path}/services", f"{workdir}/services"
    zk.create(source)
    zk.create(f"{source}/a", b"alpha")
    other = other_service(zk_server)
    try:
        other.create(f"{source}/locked", b"10.0.0.9:80", acl=[make_digest_acl(*SERVICE, all=True)], ephemeral=True)
        settings = base_settings(zk_server)
        settings.update(tree_settings("services", source, dest))
        watcher = start_watcher(settings)
        wait_for(lambda: mirrored(dest, "directory") == {"a": b"alpha"}, 30, "the readable part of the tree")
        watcher.wait_for_log("cannot read child locked ")
        other.set_acls(f"{source}/locked", OPEN_ACL_UNSAFE)
        zk.create(f"{source}/b", b"beta")
        wait_for(lambda: mirrored(dest, "directory") == {"a": b"alpha", "b": b"beta", "locked": b"10.0.0.9:80"}, 20,
                 "the child readable again")  # fmt: skip
    finally:
        other.stop()
        other.close()


def test_a_child_that_is_not_text_never_freezes_a_json_tree(zk_server, zk, zk_path, workdir, start_watcher):
    """The json format holds text only: a child whose bytes are not UTF-8 (anyone allowed to create children can
    make one) is left out, or keeps the text last published, and the rest of the tree keeps flowing."""
    source, dest = f"{zk_path}/services", f"{workdir}/services.json"
    zk.create(source)
    zk.create(f"{source}/a", b"alpha")
    zk.create(f"{source}/b", b"beta")
    (port,) = free_ports(1)
    settings = base_settings(zk_server, metrics_port=port)
    settings.update(tree_settings("services", source, dest, format="json"))
    watcher = start_watcher(settings)
    wait_for(lambda: mirrored(dest, "json") == {"a": b"alpha", "b": b"beta"}, 30, "the tree")
    endpoint = Endpoint(port)
    zk.create(f"{source}/binary", b"\x89PNG\r\n\x1a\n\xff")
    zk.set(f"{source}/b", b"\xffbeta")  # was text: its last text stays
    zk.set(f"{source}/a", b"alpha 2")
    wait_for(lambda: mirrored(dest, "json") == {"a": b"alpha 2", "b": b"beta"}, 20,
             "the rest of the tree to flow past the children that are not text")  # fmt: skip
    endpoint.wait("livedata_tree_unreadable_children", 2, tree="services")
    zk.set(f"{source}/b", b"beta 2")  # text again: its change is read (no listing change, no resync needed)
    wait_for(lambda: mirrored(dest, "json") == {"a": b"alpha 2", "b": b"beta 2"}, 20, "b as text again")
    endpoint.wait("livedata_tree_unreadable_children", 1, tree="services")
    assert watcher.output().count("cannot read child binary ") == 1, watcher.output()[-3000:]
    assert "while rendering" not in watcher.output(), "no failure of the whole tree"
