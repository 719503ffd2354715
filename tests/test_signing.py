"""Signed data against a forger holding full ZooKeeper rights but no key: real servers, a real watcher.

The forger is this test's own client (it created the node, so it holds every right on it).  Each forgery
must be refused by the watcher, for its own reason, with the last accepted file kept; the daemon's log,
its metrics and ``--check`` must say so.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from livedata.live_node import LiveNode
from livedata.payload import parse, restamp
from livedata.signing import Signer, decode_key, generate
from livedata.testing.watcher_process import base_settings, node_settings, read_bytes, wait_for_content, write_ini
from livedata.testing.zookeeper import free_ports, wait_for
from livedata.writer import Stamp, push, stored_form
from tests.conftest import make_client
from tests.payloads import chunk_children, incompressible
from tests.test_faults import fill, tiny_tmpfs  # noqa: F401 (a fixture)

LIMIT = 1047552


def signed_write(client, path: str, data: bytes, private: str, message: str = "") -> None:
    """What ``livedata-write`` does with ``writer.signing_key`` set (in-process: quicker than a subprocess)."""
    stamp = Stamp("ci", message, 10, Signer(decode_key(private)), LIMIT)
    push(client, path, data, "x", io.StringIO(), stored=stored_form("x", data, "auto", LIMIT, enveloped=True),
         stamp=stamp, allow_empty=True)  # fmt: skip


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def check(config: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "livedata.watcher", config, "--check"], capture_output=True,
                          encoding="utf-8", timeout=30)  # fmt: skip


@pytest.fixture
def keys() -> tuple[str, str]:
    return generate()


@pytest.mark.timeout(120)
def test_every_forgery_is_refused_and_the_last_accepted_file_kept(zk_server, zk, zk_path, keys, start_watcher, workdir):
    private, public = keys
    node, other = f"{zk_path}/flags", f"{zk_path}/other"
    zk.create(node, b"unsigned start\n")
    zk.create(other, b"")
    signed_write(zk, node, b"v1\n", private)
    v1_stored = zk.get(node)[0]
    big = incompressible(1536 * 1024)  # chunked: two chunks
    signed_write(zk, node, big, private, "v2")
    signed_write(zk, other, b"the other node's data\n", private)
    dest, state = os.path.join(workdir, "flags"), os.path.join(workdir, "state")
    (port,) = free_ports(1)
    settings = {**base_settings(zk_server, metrics_port=port, state_dir=state, trusted_keys=public),
                **node_settings("flags", node, dest, require_signature="true")}  # fmt: skip
    watcher = start_watcher(settings)
    wait_for_content(dest, big)
    config = os.path.join(workdir, "watcher.ini")
    assert check(config).returncode == 0

    def refused(reason: str, count: int = 1) -> None:
        watcher.wait_for_log(f"flags: cannot read {node}: {reason}", count=count)
        assert hashlib.sha256(read_bytes(dest) or b"").digest() == hashlib.sha256(big).digest()

    zk.set(node, b"plain data from a stolen credential\n")
    refused("Unsigned")
    result = check(config)
    assert result.returncode == 1 and f"{dest}: the data in {node} is refused (Unsigned" in result.stdout

    envelope = parse(v1_stored)
    assert envelope is not None
    forged = restamp(stored_form("x", b"evil\n", "always", LIMIT, enveloped=True), envelope.meta, LIMIT)
    zk.set(node, forged.node_data)  # v1's header and signature over other data
    refused("BadSignature")

    zk.set(node, zk.get(other)[0])  # a valid signature, made for another node
    refused("OtherPath")

    zk.set(node, v1_stored)  # an older version, validly signed for this node
    refused("Replayed")

    thief_private, _ = generate()
    signed_write(zk, node, b"signed by a key nobody trusts\n", thief_private)
    refused("UntrustedKey")

    # The big version's chunk swapped for other bytes of the same size, the node written again to be read again.
    signed_write(zk, node, big, private, "back to v2")
    wait_for(lambda: b"Replayed" not in check(config).stdout.encode(), 20, "the refusal to clear")
    chunk = f"{node}/{chunk_children(zk, node)[0]}"
    size = len(zk.get(chunk)[0])
    zk.delete(chunk)
    zk.create(chunk, incompressible(size))
    zk.set(node, zk.get(node)[0])
    refused("BadChunkError")

    text = metrics_text(port)
    for reason in ("Unsigned", "BadSignature", "OtherPath", "Replayed", "UntrustedKey"):
        assert f'livedata_signature_refusals_total{{reason="{reason}"}} 1.0' in text

    # A restart remembers the last accepted sequence (state_dir): the old version replayed is still refused.
    watcher.stop()
    zk.set(node, v1_stored)
    watcher = start_watcher(settings)
    refused("Replayed")
    signed_write(zk, node, b"v3\n", private, "a real change")  # and a real change goes through
    wait_for_content(dest, b"v3\n")
    assert check(config).returncode == 0


@pytest.mark.timeout(90)
def test_rotation_two_keys_trusted_then_one_removed_is_revoked(zk_server, zk, zk_path, start_watcher, workdir):
    (old_private, old_public), (new_private, new_public) = generate(), generate()
    node = f"{zk_path}/flags"
    zk.create(node, b"")
    signed_write(zk, node, b"by the old key\n", old_private)
    dest = os.path.join(workdir, "flags")
    settings = {**base_settings(zk_server, trusted_keys=f"{old_public}, {new_public}", require_signatures="true"),
                **node_settings("flags", node, dest)}  # fmt: skip
    watcher = start_watcher(settings)
    wait_for_content(dest, b"by the old key\n")
    signed_write(zk, node, b"by the new key\n", new_private)
    wait_for_content(dest, b"by the new key\n")
    write_ini(workdir, {**settings, "watcher.trusted_keys": new_public})  # the old key revoked, by a reload
    watcher.signal(signal.SIGHUP)
    watcher.wait_for_log("reloaded")
    signed_write(zk, node, b"by the old key again\n", old_private)
    watcher.wait_for_log(f"flags: cannot read {node}: UntrustedKey")
    assert read_bytes(dest) == b"by the new key\n"
    signed_write(zk, node, b"by the new key, later\n", new_private)
    wait_for_content(dest, b"by the new key, later\n")


@pytest.mark.timeout(60)
def test_live_node_verifies_the_same_way(zk_server, zk, zk_path, keys):
    private, public = keys
    node = f"{zk_path}/flags"
    zk.create(node, b"")
    signed_write(zk, node, b"good\n", private)
    parsed: list[bytes] = []

    def parser(f) -> bytes:
        parsed.append(f.read())
        return parsed[-1]

    app = make_client(zk_server.address)
    try:
        with LiveNode(app, node, parser, binary=True, timeout=10, trusted_keys=[public]) as live:
            assert live.get_data() == b"good\n"
            zk.set(node, b"evil\n")
            signed_write(zk, node, b"better\n", private)
            wait_for(lambda: live.get_data() == b"better\n", 20, "the signed change")
        assert b"evil\n" not in parsed
    finally:
        app.stop()
        app.close()


@pytest.mark.timeout(60)
def test_without_the_cryptography_package_a_config_needing_it_is_one_line_exit_2(tmp_path, zk_server, keys):
    _, public = keys
    blocked = "import sys; sys.modules['cryptography'] = None; "
    config = write_ini(str(tmp_path), {**base_settings(zk_server, trusted_keys=public),
                                       **node_settings("a", "/a", str(tmp_path / "a"), require_signature="true")})
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"secrets": {"k": {"type": "simple", "value": keys[0]}}}))
    writer = write_ini(str(tmp_path), {"zookeeper.hosts": zk_server.address, "secrets.path": str(secrets),
                                       "writer.signing_key": "k"}, "writer.ini")  # fmt: skip
    (tmp_path / "in.txt").write_text("x")
    commands = {
        "watcher": f"from livedata.watcher import main; sys.exit(main([{config!r}, '--check']))",
        "writer": f"from livedata.writer import main; sys.exit(main([{writer!r}, {str(tmp_path / 'in.txt')!r}, '/a']))",
        "keygen": "from livedata.signing import main; sys.exit(main([]))",
    }
    for what, command in commands.items():
        result = subprocess.run([sys.executable, "-c", blocked + command], capture_output=True, encoding="utf-8",
                                timeout=30)  # fmt: skip
        assert result.returncode == 2, (what, result.stderr)
        assert result.stderr.count("\n") == 1 and "livedata[signing]" in result.stderr, (what, result.stderr)


def test_keygen_prints_a_raw_ed25519_pair(tmp_path):
    result = subprocess.run([sys.executable, "-m", "livedata.signing"], capture_output=True, encoding="utf-8",
                            timeout=30)  # fmt: skip
    private, public = result.stdout.splitlines()
    assert private.startswith("private ") and public.startswith("public ")
    assert len(base64.b64decode(private.split()[1])) == len(base64.b64decode(public.split()[1])) == 32
    assert Signer(decode_key(private.split()[1])).public == public.split()[1]


def test_signed_writes_through_the_command_line(tmp_path, zk_server, zk, zk_path, keys):
    private, public = keys
    node = f"{zk_path}/flags"
    zk.create(node, b"")
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"secrets": {"signing/ci": {"type": "simple", "value": private}}}))
    write_ini(str(tmp_path), {"zookeeper.hosts": zk_server.address, "secrets.path": str(secrets),
                              "writer.signing_key": "signing/ci"}, "writer.ini")  # fmt: skip
    (tmp_path / "in.txt").write_text("signed\n")
    result = subprocess.run([sys.executable, "-m", "livedata.writer", "writer.ini", "in.txt", node, "-m", "why"],
                            cwd=tmp_path, capture_output=True, encoding="utf-8", timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"signed with key {public}, sequence 1\n" in result.stdout
    envelope = parse(zk.get(node)[0])
    assert envelope is not None and envelope.meta["key"] == public and envelope.meta["message"] == "why"
    result = subprocess.run([sys.executable, "-m", "livedata.writer", "writer.ini", "in.txt", node, "--compress",
                             "never"], cwd=tmp_path, capture_output=True, encoding="utf-8", timeout=60)  # fmt: skip
    assert result.returncode == 2 and "writer.signing_key" in result.stderr and result.stderr.count("\n") == 1
    assert Path(tmp_path / "in.txt").read_text() == "signed\n"


@pytest.mark.timeout(60)
def test_rollback_never_signs_a_kept_version_the_key_did_not_sign(tmp_path, zk_server, zk, zk_path, keys):
    """A forger who plants a kept version (history child) cannot get the writer to sign its bytes by --rollback."""
    from livedata.payload import history_name
    from livedata.signing import SequenceStore, Verifier

    private, public = keys
    node = f"{zk_path}/flags"
    zk.create(node, b"")
    signed_write(zk, node, b"v1\n", private)
    signed_write(zk, node, b"v2\n", private)
    version = zk.exists(node).version
    kept = f"{node}/{history_name(version - 1)}"  # what --rollback takes by default
    real = parse(zk.get(kept)[0])
    assert real is not None
    forged = restamp(stored_form("x", b"evil\n", "always", LIMIT, enveloped=True), real.meta, LIMIT)
    unsigned = restamp(stored_form("x", b"evil\n", "always", LIMIT, enveloped=True), {}, LIMIT)
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"secrets": {"k": {"type": "simple", "value": private}}}))
    write_ini(str(tmp_path), {"zookeeper.hosts": zk_server.address, "secrets.path": str(secrets),
                              "writer.signing_key": "k"}, "writer.ini")  # fmt: skip
    for planted in (forged.node_data, unsigned.node_data):
        zk.set(kept, planted)
        result = subprocess.run([sys.executable, "-m", "livedata.writer", "writer.ini", "--rollback", node],
                                cwd=tmp_path, capture_output=True, encoding="utf-8", timeout=60)  # fmt: skip
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert "not signed by this writer's key" in result.stderr and "nothing written" in result.stderr
        assert zk.exists(node).version == version
    # A genuine kept version still rolls back, signed anew.
    zk.set(kept, real.to_bytes())
    result = subprocess.run([sys.executable, "-m", "livedata.writer", "writer.ini", "--rollback", node],
                            cwd=tmp_path, capture_output=True, encoding="utf-8", timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    verifier = Verifier([public], lambda _: True, SequenceStore())
    envelope = parse(zk.get(node)[0])
    verifier.check(node, b"", envelope)
    assert envelope is not None and envelope.sha256 == hashlib.sha256(b"v1\n").hexdigest()


@pytest.mark.timeout(90)
def test_the_signed_path_is_the_real_node_whatever_the_chroot(zk_server, zk, zk_path, keys, start_watcher, workdir):
    """A chroot is part of the node: a write through a chroot is accepted by a watcher without one (and back),
    and a version signed for /flags under another chroot (another environment) is refused as OtherPath."""
    private, public = keys
    zk.create(f"{zk_path}/flags", b"")
    zk.create(f"{zk_path}/staging/flags", b"", makepath=True)
    prod, staging = make_client(zk_server.address + zk_path), make_client(f"{zk_server.address}{zk_path}/staging")
    try:
        signed_write(prod, "/flags", b"through the chroot\n", private)
        dest = os.path.join(workdir, "flags")
        settings = {**base_settings(zk_server, trusted_keys=public, require_signatures="true"),
                    **node_settings("flags", f"{zk_path}/flags", dest)}  # fmt: skip
        watcher = start_watcher(settings)
        wait_for_content(dest, b"through the chroot\n")
        for _ in range(3):  # staging ahead of prod: a copy would not be refused as a replay
            signed_write(staging, "/flags", b"staging\n" * (_ + 1), private)
        zk.set(f"{zk_path}/flags", zk.get(f"{zk_path}/staging/flags")[0])
        watcher.wait_for_log(f"flags: cannot read {zk_path}/flags: OtherPath")
        assert read_bytes(dest) == b"through the chroot\n"
        watcher.stop()
        settings = {**base_settings(zk_server, trusted_keys=public, require_signatures="true"),
                    **node_settings("flags", "/flags", dest), "zookeeper.hosts": zk_server.address + zk_path}
        watcher = start_watcher(settings)
        watcher.wait_for_log("flags: cannot read /flags: OtherPath")  # the chrooted watcher refuses it too
        signed_write(zk, f"{zk_path}/flags", b"without a chroot\n", private)
        wait_for_content(dest, b"without a chroot\n")
    finally:
        for client in (prod, staging):
            client.stop()
            client.close()


@pytest.mark.timeout(60)
def test_sequences_a_forger_plants_do_not_steer_the_signers(zk, zk_path, keys):
    """The next sequence counts only what this key signed: a planted unsigned header with a huge sequence
    neither makes the writer sign it (a later wrap past any bound would freeze the node) nor crashes it."""
    import struct

    from livedata.payload import MAGIC, history_name

    private, _ = keys
    node = f"{zk_path}/flags"
    zk.create(node, b"")
    signed_write(zk, node, b"v1\n", private)
    inflated = restamp(stored_form("x", b"junk\n", "always", LIMIT, enveloped=True), {"seq": 10**18}, LIMIT)
    zk.set(node, inflated.node_data)
    zk.create(f"{node}/{history_name(9)}", inflated.node_data)
    signed_write(zk, node, b"v2\n", private)
    envelope = parse(zk.get(node)[0])
    assert envelope is not None and envelope.meta["seq"] == zk.exists(node).version
    header = b'{"codec":"identity","size":0,"sha256":"%s","stored":0,"chunks":[],"seq":%s}' % (
        hashlib.sha256(b"").hexdigest().encode(), b"9" * 4300)
    zk.set(node, MAGIC + struct.pack(">BI", 1, len(header)) + header)  # one digit short of Python's int limit
    signed_write(zk, node, b"v3\n", private)
    envelope = parse(zk.get(node)[0])
    assert envelope is not None and envelope.meta["seq"] == zk.exists(node).version


@pytest.mark.timeout(60)
def test_accepted_sequences_survive_a_full_disk_once_there_is_room_again(tiny_tmpfs):  # noqa: F811
    """An append to sequences.log that the full disk cut short (or refused) must not lose that sequence, or the
    next ones, for the next start: the log is rewritten whole once it can be."""
    from livedata.signing import SequenceStore

    state = os.path.join(tiny_tmpfs, "state")
    long_path = "/" + "a" * 5000  # a line longer than a page: the append needs a page the full disk lacks
    store = SequenceStore(state)
    store.accept(long_path, 1, "1" * 64)
    filler = fill(tiny_tmpfs)
    store.accept(long_path, 5, "5" * 64)  # short write or ENOSPC
    os.remove(filler)
    store.accept("/b", 1, "b" * 64)
    store.close()
    reloaded = SequenceStore(state)
    assert (reloaded.last(long_path), reloaded.last("/b")) == ((5, "5" * 64), (1, "b" * 64))
    reloaded.close()
