"""zookeeper_client_from_config against a real server: hosts, chroot, digest auth, handler choice, reconnects."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from kazoo.exceptions import NoAuthError
from kazoo.handlers.threading import SequentialThreadingHandler
from kazoo.security import make_digest_acl

from livedata import zookeeper_client_from_config
from livedata.config import ConfigError, RawConfig
from livedata.secrets import SecretsStore
from livedata.testing.zookeeper import wait_for
from livedata.zookeeper import CredentialsError

pytestmark = pytest.mark.timeout(60)


def secrets_file(tmp_path, secrets: dict) -> SecretsStore:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"secrets": secrets}))
    return SecretsStore(str(path))


def simple(value: str) -> dict:
    return {"type": "simple", "value": value}


def started(client):
    client.start(timeout=20)
    return client


def test_plain_client_reads_and_uses_defaults(zk_server, zk, zk_path):
    zk.create(f"{zk_path}/node", b"hello")
    client = started(zookeeper_client_from_config(None, {"zookeeper.hosts": zk_server.address}))
    try:
        assert client.get(f"{zk_path}/node")[0] == b"hello"
        assert isinstance(client.handler, SequentialThreadingHandler)
        assert client._session_timeout == 5000
        assert client._conn_retry.max_tries == -1
    finally:
        client.stop()


def test_chroot_in_hosts(zk_server, zk, zk_path):
    config = {"zookeeper.hosts": f"{zk_server.address}{zk_path}", "zookeeper.timeout": "3 seconds"}
    client = started(zookeeper_client_from_config(None, config))
    try:
        client.create("/inside", b"chrooted")
        assert zk.get(f"{zk_path}/inside")[0] == b"chrooted"
        assert client._session_timeout == 3000
    finally:
        client.stop()


@pytest.fixture
def protected_node(zk, zk_path):
    path = f"{zk_path}/secret-node"
    acl = make_digest_acl("reader", "right-password", all=True)
    zk.create(path, b"protected bytes", acl=[acl])
    return path


def test_digest_auth_with_right_credentials(zk_server, tmp_path, protected_node):
    secrets = secrets_file(tmp_path, {"secret/zk": simple("reader:right-password")})
    config = {"zookeeper.hosts": zk_server.address, "zookeeper.credentials": "secret/zk"}
    client = started(zookeeper_client_from_config(secrets, config))
    try:
        assert client.get(protected_node)[0] == b"protected bytes"
    finally:
        client.stop()


def test_digest_auth_with_wrong_credentials_is_refused(zk_server, tmp_path, protected_node):
    secrets = secrets_file(tmp_path, {"secret/zk": simple("reader:wrong-password")})
    config = {"zookeeper.hosts": zk_server.address, "zookeeper.credentials": "secret/zk"}
    client = started(zookeeper_client_from_config(secrets, config))
    try:
        with pytest.raises(NoAuthError):
            client.get(protected_node)
    finally:
        client.stop()


def test_several_credentials(zk_server, zk, zk_path, tmp_path):
    path = f"{zk_path}/two-acls"
    zk.create(path, b"x", acl=[make_digest_acl("second", "pw2", all=True)])
    secrets = secrets_file(tmp_path, {"a": simple("first:pw1"), "b": simple("second:pw2")})
    config = {"zookeeper.hosts": zk_server.address, "zookeeper.credentials": "a, b"}
    client = started(zookeeper_client_from_config(secrets, config))
    try:
        assert client.get(path)[0] == b"x"
    finally:
        client.stop()


@pytest.mark.parametrize(
    ("secrets", "pattern"),
    [
        ({}, r"zookeeper.credentials: .*no secret named 'secret/zk'"),
        ({"secret/zk": simple("no-colon")}, r"must look like 'username:password'"),
        ({"secret/zk": {"type": "versioned", "current": "a:b"}}, r"has type 'versioned', expected 'simple'"),
    ],
)
def test_credential_errors(tmp_path, secrets, pattern):
    store = secrets_file(tmp_path, secrets)
    with pytest.raises(CredentialsError, match=pattern):
        zookeeper_client_from_config(store, {"zookeeper.hosts": "127.0.0.1:1", "zookeeper.credentials": "secret/zk"})


def test_missing_secrets_file_only_matters_with_credentials(tmp_path):
    missing = SecretsStore(str(tmp_path / "nope.json"))
    zookeeper_client_from_config(missing, {"zookeeper.hosts": "127.0.0.1:1"})  # never touches the file
    with pytest.raises(CredentialsError, match=r"nope.json: secrets file is not available"):
        zookeeper_client_from_config(missing, {"zookeeper.hosts": "127.0.0.1:1", "zookeeper.credentials": "x"})
    with pytest.raises(CredentialsError, match="no secrets store was given"):
        zookeeper_client_from_config(None, {"zookeeper.hosts": "127.0.0.1:1", "zookeeper.credentials": "x"})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "app.ini: zookeeper.hosts: required key is missing"),
        ({"zookeeper.hosts": "h:1", "zookeeper.timeout": "5"}, "app.ini: zookeeper.timeout: '5' is not a time span"),
        ({"zookeeper.hosts": "h:1", "zookeeper.timeout": "0 seconds"}, "app.ini: zookeeper.timeout: must be greater"),
        ({"zookeeper.hosts": "h:1", "zookeeper.tls.cert": "/c.pem"}, "app.ini: zookeeper.tls.cert: tls.cert and"),
        ({"zookeeper.hosts": "h:1", "zookeeper.tls.verify": "maybe"}, "app.ini: zookeeper.tls.verify: 'maybe' is not"),
    ],
)
def test_config_errors(config, message):
    with pytest.raises(ConfigError) as info:
        zookeeper_client_from_config(None, RawConfig(config, source="app.ini"))
    assert str(info.value).startswith(message)


def test_reconnects_after_the_server_restarts(private_zk_server, zk_path):
    client = started(zookeeper_client_from_config(None, {"zookeeper.hosts": private_zk_server.address}))
    try:
        client.ensure_path("/reconnect")
        private_zk_server.stop()
        wait_for(lambda: not client.connected, 20, "the client to notice the server is gone")
        private_zk_server.start()
        wait_for(lambda: client.connected, 30, "the client to reconnect by itself")
        assert client.exists("/reconnect") is not None
    finally:
        client.stop()


GEVENT_PROGRAM = """
from gevent import monkey; monkey.patch_all()
import sys
from livedata import zookeeper_client_from_config
client = zookeeper_client_from_config(None, {"zookeeper.hosts": sys.argv[1]})
client.start(timeout=20)
from kazoo.handlers.gevent import SequentialGeventHandler
assert isinstance(client.handler, SequentialGeventHandler)
print(type(client.handler).__name__, client.get(sys.argv[2])[0].decode())
client.stop()
"""


def test_gevent_patched_process_gets_the_gevent_handler(zk_server, zk, zk_path):
    zk.create(f"{zk_path}/g", b"from-gevent")
    out = subprocess.run(
        [sys.executable, "-c", GEVENT_PROGRAM, zk_server.address, f"{zk_path}/g"],
        capture_output=True, text=True, timeout=40, check=True,
    )  # fmt: skip
    assert out.stdout.split() == ["GeventHandler", "from-gevent"]


@pytest.mark.parametrize(
    ("hosts", "problem"),
    [
        ("127.0.0.1:abc", "port 'abc' is not a number from 1 to 65535"),
        ("zk01:2181 ; a comment that was not stripped", "is not a number"),
        ("zk01:2181,", "has an empty entry"),
        ("", "must not be empty"),
    ],
)
def test_a_bad_host_list_is_a_config_error_in_the_library(hosts, problem):
    from livedata.config import ConfigError, RawConfig
    from livedata.zookeeper import zookeeper_client_from_config

    with pytest.raises(ConfigError) as info:
        zookeeper_client_from_config(None, RawConfig({"zookeeper.hosts": hosts}, source="app.ini"))
    assert str(info.value).startswith("app.ini: zookeeper.hosts: ")
    assert problem in str(info.value)


def test_good_host_lists_are_accepted_as_written():
    from livedata.zookeeper import zookeeper_hosts

    for hosts in ("zk01", "zk01:2181,zk02:2182/chroot/x", "[::1]:2181", "10.0.0.1:65535/", "zk-1.example.com:1"):
        assert zookeeper_hosts(hosts) == hosts
