"""Hostile conditions around security: ACLs and credentials, planted symlinks, temp file modes, TLS to ZooKeeper.

Everything runs against real servers and the real daemon.  TLS certificates are made by the test with the
``openssl`` command; the TLS server is ZooKeeper's Netty connection factory with PEM key and trust stores.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kazoo.client import KazooClient
from kazoo.security import make_digest_acl

from livedata import files
from livedata.testing.watcher_process import node_settings, read_bytes, wait_for_content, write_ini
from livedata.testing.zookeeper import ZooKeeperServer, free_ports, start_standalone, wait_for
from tests.test_metrics import Endpoint

pytestmark = pytest.mark.timeout(60)




def base(hosts: str) -> dict:
    return {"zookeeper.hosts": hosts, "zookeeper.timeout": "3 seconds"}


def write_secrets(path: str, secrets: dict) -> None:
    """Replace the secrets file atomically, as a secrets agent would."""
    with open(f"{path}.new", "w") as f:
        json.dump({"secrets": secrets}, f)
    os.rename(f"{path}.new", path)


# --- 10. ACLs and credentials ------------------------------------------------------------------------------------

READER = ("reader", "right-password")


@dataclass
class Protected:
    root: str
    names: tuple[str, ...] = ("p1", "p2")


@pytest.fixture
def protected(zk: KazooClient, zk_path: str) -> Protected:
    """Two nodes only ``reader`` may read (and the test's admin may write), and one public node."""
    zk.add_auth("digest", "admin:admin-password")
    acl = [make_digest_acl(*READER, read=True), make_digest_acl("admin", "admin-password", all=True)]
    for name in Protected(zk_path).names:
        zk.create(f"{zk_path}/{name}", f"secret {name}".encode(), acl=acl)
    zk.create(f"{zk_path}/public", b"public")
    return Protected(zk_path)


def acl_settings(hosts: str, protected: Protected, workdir: str) -> dict:
    settings = base(hosts)
    settings.update({"zookeeper.credentials": "secret/zk", "secrets.path": f"{workdir}/secrets.json"})
    for name in (*protected.names, "public"):
        settings.update(node_settings(name, f"{protected.root}/{name}", f"{workdir}/out/{name}"))
    return settings


def test_right_credentials_sync_protected_nodes(zk_server, zk, protected, workdir, start_watcher):
    write_secrets(f"{workdir}/secrets.json", {"secret/zk": {"type": "simple", "value": ":".join(READER)}})
    start_watcher(acl_settings(zk_server.address, protected, workdir))
    for name in protected.names:
        wait_for_content(f"{workdir}/out/{name}", f"secret {name}".encode())
    zk.set(f"{protected.root}/p1", b"changed")
    wait_for_content(f"{workdir}/out/p1", b"changed")


BAD_SECRETS = {
    "wrong-password": ({"secret/zk": {"type": "simple", "value": "reader:wrong-password"}}, None),
    "unknown-user": ({"secret/zk": {"type": "simple", "value": "stranger:right-password"}}, None),
    "secret-missing": ({"other": {"type": "simple", "value": "x:y"}}, "no secret named 'secret/zk'"),
    "not-user-colon-password": ({"secret/zk": {"type": "simple", "value": "nocolon"}}, "username:password"),
    "file-missing": (None, "secrets file is not available"),
}


@pytest.mark.parametrize(("secrets", "complaint"), BAD_SECRETS.values(), ids=BAD_SECRETS.keys())
def test_refused_nodes_are_kept_logged_and_recovered_once_the_secrets_file_is_fixed(
    zk_server, zk, protected, workdir, start_watcher, secrets, complaint
):
    secrets_path = f"{workdir}/secrets.json"
    if secrets is not None:
        write_secrets(secrets_path, secrets)
    os.makedirs(f"{workdir}/out")
    for name in protected.names:
        with open(f"{workdir}/out/{name}", "wb") as f:
            f.write(b"from an earlier run")
    watcher = start_watcher(acl_settings(zk_server.address, protected, workdir))

    wait_for_content(f"{workdir}/out/public", b"public")  # what needs no credentials is served meanwhile
    for name in protected.names:  # one clear line per node
        watcher.wait_for_log(f"{name}: cannot read {protected.root}/{name}: not allowed to read the node")
    if complaint:
        watcher.wait_for_log(complaint)
    watcher.wait_for_log("initial sync of 3 nodes done")
    assert watcher.alive()
    for name in protected.names:
        assert read_bytes(f"{workdir}/out/{name}") == b"from an earlier run"

    write_secrets(secrets_path, {"secret/zk": {"type": "simple", "value": ":".join(READER)}})
    for name in protected.names:
        wait_for_content(f"{workdir}/out/{name}", f"secret {name}".encode())
        watcher.wait_for_log(f"{name}: recovered")
    zk.set(f"{protected.root}/p2", b"changed after recovery")  # watches were set with the new credentials
    wait_for_content(f"{workdir}/out/p2", b"changed after recovery")
    assert "Traceback" not in watcher.output()


def test_a_credentials_problem_never_claims_credentials_that_were_not_applied(tmp_path, caplog):
    """Started without credentials (bad secrets file), a later re-read does not say it keeps credentials in use."""
    from livedata.secrets import secrets_store_from_config
    from livedata.zookeeper import credentials_refresher, zookeeper_client_from_config

    config = {"zookeeper.hosts": "127.0.0.1:1", "zookeeper.credentials": "secret/zk",
              "secrets.path": str(tmp_path / "absent.json")}  # fmt: skip
    secrets = secrets_store_from_config(config)
    with caplog.at_level("ERROR", logger="livedata.zookeeper"):
        client = zookeeper_client_from_config(secrets, config, credentials_required=False)
        refresher = credentials_refresher(client, secrets, config)
        assert refresher is not None and refresher.refresh() is False
    first, second = (record.getMessage() for record in caplog.records)
    assert first.endswith("; connecting without credentials until the secrets file is fixed")
    assert second.endswith("; still connecting without credentials")
    client.close()


def test_rotated_credentials_are_followed(zk_server, zk, protected, workdir, start_watcher):
    """Credentials move to a new identity and the ACL follows: the watcher keeps reading without a restart."""
    secrets_path = f"{workdir}/secrets.json"
    write_secrets(secrets_path, {"secret/zk": {"type": "simple", "value": ":".join(READER)}})
    watcher = start_watcher(acl_settings(zk_server.address, protected, workdir))
    wait_for_content(f"{workdir}/out/p1", b"secret p1")

    write_secrets(secrets_path, {"secret/zk": {"type": "simple", "value": "reader2:new-password"}})
    watcher.wait_for_log("zookeeper.credentials changed")  # the secrets agent's part is done before the ACLs move
    new_acl = [make_digest_acl("reader2", "new-password", read=True), make_digest_acl("admin", "admin-password",
                                                                                     all=True)]
    for name in protected.names:
        zk.set_acls(f"{protected.root}/{name}", new_acl)
    zk.set(f"{protected.root}/p1", b"after rotation")
    wait_for_content(f"{workdir}/out/p1", b"after rotation")
    assert watcher.alive()


# --- 11. file safety ---------------------------------------------------------------------------------------------


def test_planted_symlinks_are_replaced_never_followed(zk_server, zk, zk_path, workdir, start_watcher):
    victim = f"{workdir}/victim"
    with open(victim, "wb") as f:
        f.write(b"victim content")
    os.chmod(victim, 0o600)
    victim_mode = 0o600
    os.makedirs(f"{workdir}/out")
    zk.create(f"{zk_path}/a", b"node a")
    zk.create(f"{zk_path}/same", b"victim content")  # equal bytes behind the link must not pass for "in sync"
    zk.create(f"{zk_path}/dangling", b"node dangling")
    os.symlink(victim, f"{workdir}/out/a")
    os.symlink(victim, f"{workdir}/out/same")
    os.symlink(f"{workdir}/would-be-created", f"{workdir}/out/dangling")
    settings = base(zk_server.address)
    for name in ("a", "same", "dangling"):
        settings.update(node_settings(name, f"{zk_path}/{name}", f"{workdir}/out/{name}", mode="0644"))
    start_watcher(settings)

    def regular_with(path: str, content: bytes) -> bool:
        return not os.path.islink(path) and read_bytes(path) == content

    wait_for(lambda: regular_with(f"{workdir}/out/a", b"node a"), 20, "the symlink at a to be replaced")
    wait_for(lambda: regular_with(f"{workdir}/out/same", b"victim content"), 20, "the symlink at same to be replaced")
    wait_for(lambda: regular_with(f"{workdir}/out/dangling", b"node dangling"), 20, "the dangling symlink replaced")
    assert read_bytes(victim) == b"victim content"
    assert os.stat(victim).st_mode & 0o7777 == victim_mode, "the link's target must not get the node's mode"
    assert not os.path.exists(f"{workdir}/would-be-created")

    # Planted while running: the next change replaces it too.
    os.unlink(f"{workdir}/out/a")
    os.symlink(victim, f"{workdir}/out/a")
    zk.set(f"{zk_path}/a", b"node a, second version")
    wait_for(lambda: regular_with(f"{workdir}/out/a", b"node a, second version"), 20, "the new symlink to be replaced")
    assert read_bytes(victim) == b"victim content"


TEMP_OPEN = re.compile(
    r'^(\d+) +openat\(AT_FDCWD, "(?P<path>[^"]+)", (?P<flags>[A-Z_|]+), (?P<mode>0\d+)\) += (?P<fd>\d+)'
)
FD_CALL = re.compile(r"^(\d+) +(?P<call>fchown|fchmod|write)\((?P<fd>\d+), (?P<args>.*)\) += ")


def traced_children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def test_temp_file_is_owner_only_until_its_owner_and_group_are_set(zk_server, zk, zk_path, workdir):
    """Trace the daemon's own syscalls: a temp is created 0600 (whatever the umask), chowned, only then given the
    configured mode (here group-readable), and only then written to."""
    if os.geteuid() != 0:
        pytest.skip("setting an owner needs root")
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    source, dest = f"{zk_path}/secret", f"{workdir}/out/secret"
    zk.create(source, b"v0")
    settings = base(zk_server.address)
    settings.update(node_settings("secret", source, dest, owner=65534, group=65534, mode="0440"))
    config = write_ini(workdir, settings)
    trace = f"{workdir}/trace"
    process = subprocess.Popen(
        ["strace", "-f", "-qq", "-o", trace, "-e", "trace=openat,fchown,fchmod,write", "-e", "signal=none",
         sys.executable, "-m", "livedata.watcher", config],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=lambda: os.umask(0),
    )  # fmt: skip
    try:
        wait_for_content(dest, b"v0", timeout=30)
        for i in range(1, 4):
            zk.set(source, f"v{i}".encode())
            wait_for_content(dest, f"v{i}".encode())
    finally:
        for pid in traced_children(process.pid):  # strace itself ignores SIGTERM while its command runs
            os.kill(pid, signal.SIGTERM)
        process.wait(10)

    sequences: list[list[str]] = []  # per temp: its syscalls from creation to its first data write
    open_temps: dict[tuple[str, str], list[str]] = {}  # (thread id, fd) -> that temp's sequence so far
    with open(trace) as f:
        for line in f:
            opened = TEMP_OPEN.match(line)
            if opened and files.is_temp_name(opened["path"]):
                assert "O_EXCL" in opened["flags"] and "O_NOFOLLOW" in opened["flags"], line
                assert int(opened["mode"], 8) & 0o077 == 0, f"temp created readable by others: {line}"
                sequences.append([f"open {opened['mode']}"])
                open_temps[(opened[1], opened["fd"])] = sequences[-1]
                continue
            call = FD_CALL.match(line)
            if call and (call[1], call["fd"]) in open_temps:
                sequence = open_temps[(call[1], call["fd"])]
                sequence.append(f"{call['call']} {call['args'] if call['call'] != 'write' else ''}".strip())
                if call["call"] == "write":
                    del open_temps[(call[1], call["fd"])]
    assert len(sequences) >= 4, f"expected a temp per write, saw {sequences}"
    for sequence in sequences:
        assert sequence[1:4] == ["fchown 65534, 65534", "fchmod 0440", "write"], sequence
    status = os.stat(dest)
    assert (status.st_uid, status.st_gid, status.st_mode & 0o7777) == (65534, 65534, 0o440)


def test_directories_it_makes_are_never_chmodded_or_chowned_by_path(zk_server, zk, zk_path, workdir):
    """A symlink swapped in between our mkdir and a chmod by path would redirect the chmod: only fds are used."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    source, dest = f"{zk_path}/deep", f"{workdir}/made/for/us/deep"
    zk.create(source, b"v0")
    settings = base(zk_server.address)
    settings.update(node_settings("deep", source, dest, owner=65534, group=65534))
    config = write_ini(workdir, settings)
    trace = f"{workdir}/trace"
    process = subprocess.Popen(
        ["strace", "-f", "-qq", "-o", trace, "-e", "trace=chmod,fchmodat,chown,fchownat,lchown,mkdir,mkdirat",
         "-e", "signal=none", sys.executable, "-m", "livedata.watcher", config],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_content(dest, b"v0", timeout=30)
    finally:
        for pid in traced_children(process.pid):
            os.kill(pid, signal.SIGTERM)
        process.wait(10)
    with open(trace) as f:
        calls = [line for line in f if "resumed" not in line]
    made = [line for line in calls if "mkdir" in line and f"{workdir}/made" in line]
    assert made, "the test must see the directories being made"
    by_path = [line for line in calls if re.search(r"\b(chmod|fchmodat|chown|fchownat|lchown)\(", line)]
    assert by_path == []
    assert (os.stat(f"{workdir}/made").st_uid, os.stat(f"{workdir}/made").st_gid) == (65534, 65534)


# --- 12. TLS -----------------------------------------------------------------------------------------------------

@dataclass
class Pki:
    directory: str

    def path(self, name: str) -> str:
        return f"{self.directory}/{name}"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def make_ca(pki: Pki, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", pki.path(f"{name}.key"), "-out", pki.path(f"{name}.pem"), "-days", "2",
            "-subj", f"/CN={name}")  # fmt: skip


def make_leaf(pki: Pki, name: str, ca: str) -> None:
    """A key and a certificate signed by ``ca``, plus ``<name>.keystore.pem`` (key and certificate) for Java."""
    with open(pki.path(f"{name}.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", pki.path(f"{name}.key"), "-out", pki.path(f"{name}.csr"), "-subj", f"/CN={name}")  # fmt: skip
    openssl("x509", "-req", "-in", pki.path(f"{name}.csr"), "-CA", pki.path(f"{ca}.pem"),
            "-CAkey", pki.path(f"{ca}.key"), "-CAcreateserial", "-out", pki.path(f"{name}.pem"), "-days", "2",
            "-extfile", pki.path(f"{name}.ext"))  # fmt: skip
    with open(pki.path(f"{name}.keystore.pem"), "w") as keystore:
        for part in (f"{name}.key", f"{name}.pem"):
            with open(pki.path(part)) as f:
                keystore.write(f.read())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Our CA with a server and a client certificate, and a rogue CA with a server certificate of its own."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    pki = Pki(str(tmp_path_factory.mktemp("pki")))
    make_ca(pki, "ca")
    make_ca(pki, "rogue-ca")
    make_leaf(pki, "server", "ca")
    make_leaf(pki, "client", "ca")
    make_leaf(pki, "rogue-server", "rogue-ca")
    return pki


def start_tls_server(pki: Pki, keystore: str) -> tuple[ZooKeeperServer, int]:
    """A standalone server with a plain port (for the test's own client) and a TLS port trusting our CA's clients."""
    (secure_port,) = free_ports(1)
    settings = {
        "serverCnxnFactory": "org.apache.zookeeper.server.NettyServerCnxnFactory",
        "secureClientPort": str(secure_port),
        "secureClientPortAddress": "127.0.0.1",
        "ssl.keyStore.location": pki.path(f"{keystore}.keystore.pem"),
        "ssl.keyStore.type": "PEM",
        "ssl.trustStore.location": pki.path("ca.pem"),
        "ssl.trustStore.type": "PEM",
    }
    return start_standalone(extra_config=settings), secure_port


def serve_tls(pki: Pki, keystore: str) -> Iterator[tuple[ZooKeeperServer, int]]:
    server, port = start_tls_server(pki, keystore)
    yield server, port
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[tuple[ZooKeeperServer, int]]:
    yield from serve_tls(pki, "server")


@pytest.fixture(scope="module")
def rogue_tls_server(pki: Pki) -> Iterator[tuple[ZooKeeperServer, int]]:
    """Signed by a CA of its own, which the watcher does not trust."""
    yield from serve_tls(pki, "rogue-server")


def tls_settings(pki: Pki, port: int, **extra: str) -> dict:
    settings = base(f"127.0.0.1:{port}")
    settings.update({
        "zookeeper.tls.ca": pki.path("ca.pem"),
        "zookeeper.tls.cert": pki.path("client.pem"),
        "zookeeper.tls.key": pki.path("client.key"),
    })  # fmt: skip
    settings.update({f"zookeeper.tls.{key}": value for key, value in extra.items()})
    return settings


def plain_client(server: ZooKeeperServer) -> KazooClient:
    from tests.conftest import make_client

    return make_client(server.address)


def test_watcher_syncs_over_tls(pki, tls_server, workdir, start_watcher):
    server, port = tls_server
    admin = plain_client(server)
    try:
        admin.create("/tls/a", b"over tls", makepath=True)
        settings = tls_settings(pki, port)
        settings.update(node_settings("a", "/tls/a", f"{workdir}/a"))
        watcher = start_watcher(settings)
        wait_for_content(f"{workdir}/a", b"over tls")
        admin.set("/tls/a", b"changed over tls")
        wait_for_content(f"{workdir}/a", b"changed over tls")
        assert watcher.alive()
    finally:
        admin.delete("/tls", recursive=True)
        admin.stop()


def test_server_certificate_not_signed_by_the_ca_is_refused(pki, rogue_tls_server, workdir, start_watcher):
    server, port = rogue_tls_server
    admin = plain_client(server)
    try:
        admin.create("/rogue/a", b"from an impostor", makepath=True)
    finally:
        admin.stop()
    with open(f"{workdir}/a", "wb") as f:
        f.write(b"from an earlier run")
    settings = tls_settings(pki, port)
    settings.update(node_settings("a", "/rogue/a", f"{workdir}/a"))
    watcher = start_watcher(settings)
    watcher.wait_for_log("CERTIFICATE_VERIFY_FAILED", count=2)  # refused, and refused again on retry
    assert watcher.alive()
    assert read_bytes(f"{workdir}/a") == b"from an earlier run"


def test_verify_off_accepts_an_unknown_server_certificate(pki, rogue_tls_server, workdir, start_watcher):
    """The refusal above is the CA check and nothing else: with ``tls.verify = false`` the same server is used."""
    server, port = rogue_tls_server
    admin = plain_client(server)
    try:
        admin.ensure_path("/unverified")
        admin.set("/unverified", b"accepted without verification")
    finally:
        admin.stop()
    settings = tls_settings(pki, port, verify="false")
    settings.update(node_settings("u", "/unverified", f"{workdir}/u"))
    start_watcher(settings)
    wait_for_content(f"{workdir}/u", b"accepted without verification")


def test_writer_over_tls(pki, tls_server, workdir):
    server, port = tls_server
    admin = plain_client(server)
    try:
        admin.create("/tls-writer", b"old")
        with open(f"{workdir}/new", "wb") as f:
            f.write(b"written over tls")
        config = write_ini(workdir, tls_settings(pki, port))
        result = subprocess.run(
            [sys.executable, "-m", "livedata.writer", config, f"{workdir}/new", "/tls-writer"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert admin.get("/tls-writer")[0] == b"written over tls"
    finally:
        admin.delete("/tls-writer", recursive=True)  # its kept versions are children
        admin.stop()


@pytest.mark.timeout(60)
def test_an_unreadable_node_has_one_retry_chain_whatever_the_resyncs(
    zk_server, zk, protected, workdir, start_watcher
):
    """Resyncs each read an unreadable node once; they never start retry chains of their own that pile up."""
    port = free_ports(1)[0]
    settings = base(zk_server.address)  # no credentials: the protected nodes are unreadable
    for name in protected.names:
        settings.update(node_settings(name, f"{protected.root}/{name}", f"{workdir}/out/{name}"))
    settings.update({"watcher.resync_interval": "200 milliseconds", "watcher.metrics_address": f"127.0.0.1:{port}"})
    start_watcher(settings)
    metrics = Endpoint(port)
    metrics.wait_at_least("livedata_resyncs_total", 20)
    failures = metrics.value("livedata_read_failures_total", reason="NoAuthError") or 0
    resyncs = metrics.value("livedata_resyncs_total") or 0
    metrics.wait_at_least("livedata_resyncs_total", resyncs + 15)
    more_failures = (metrics.value("livedata_read_failures_total", reason="NoAuthError") or 0) - failures
    more_resyncs = (metrics.value("livedata_resyncs_total") or 0) - resyncs
    nodes = len(protected.names)
    # One read per node per resync, plus what one backoff chain per node (0.1 s, doubling) adds meanwhile.
    assert more_failures <= nodes * (more_resyncs + 1 + 6), (more_failures, more_resyncs)
