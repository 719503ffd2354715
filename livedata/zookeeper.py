"""Building a kazoo client from ``zookeeper.*`` settings and a secrets store.

One place decides how every livedata program talks to ZooKeeper: which
servers, which session timeout, which credentials, TLS, the reconnect policy
(forever, with capped, jittered exponential backoff) and the async handler.
The handler follows the process: a gevent-patched program (the watcher, a
gevent web app) gets kazoo's gevent handler so that watches are greenlets of
the same hub; anything else gets kazoo's default threaded handler.
"""
from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kazoo.client import KazooClient
from kazoo.hosts import collect_hosts
from kazoo.retry import KazooRetry

from livedata.config import (
    ConfigError,
    ConfigNamespace,
    Optional,
    absolute_path,
    boolean,
    comma_list,
    integer,
    parse_config,
    register,
    source_of,
    string,
    timespan,
    znode_path,
)

if TYPE_CHECKING:
    from livedata.secrets import SecretsStore

log = logging.getLogger("livedata.zookeeper")

DEFAULT_SESSION_TIMEOUT = 5.0
DEFAULT_MAX_NODE_SIZE = 1024 * 1024 - 1024  # jute.maxbuffer (1 MiB) less room for the request's own framing

# Reconnect forever; start fast (a flapping server is back within milliseconds)
# but cap the wait so a host rejoins within seconds of an outage ending.
RECONNECT_DELAY = 0.1
RECONNECT_BACKOFF = 2.0
RECONNECT_MAX_DELAY = 10.0
RECONNECT_JITTER = 0.4

_HOST_PORT = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+))(?::(?P<port>.*))?")
MAX_PORT = 65535


def zookeeper_hosts(text: str) -> str:
    """``host[:port],...[/chroot]``, checked entry by entry before connecting.

    kazoo parses the list only when the client is built, and then either
    raises a bare ``ValueError`` or, for a host name that cannot exist, retries
    it forever.  Checking here turns every such typo into one config error.
    """
    hosts = string(text)
    host_list, slash, chroot = hosts.partition("/")
    if slash:
        try:
            znode_path("/" + chroot)
        except ValueError:
            raise ValueError(f"chroot '/{chroot}' is not a valid ZooKeeper path") from None
    for entry in host_list.split(","):
        _check_host_port(entry.strip(), hosts)
    try:
        collect_hosts(hosts)  # the parser the client will use must agree
    except ValueError as e:
        raise ValueError(f"{hosts!r} is not a valid host list: {e}") from None
    return hosts


def _check_host_port(entry: str, hosts: str) -> None:
    if not entry:
        raise ValueError(f"{hosts!r} has an empty entry (expected host:port,host:port[/chroot])")
    match = _HOST_PORT.fullmatch(entry)
    if not match:
        raise ValueError(f"{entry!r} is not host:port (IPv6 addresses go in brackets: [::1]:2181)")
    port = match.group("port")
    if port is not None and not (port.isdigit() and port.isascii() and 1 <= int(port) <= MAX_PORT):
        raise ValueError(f"{entry!r}: port {port!r} is not a number from 1 to {MAX_PORT}")


ZOOKEEPER_SPEC = register({
    "zookeeper": {
        "hosts": zookeeper_hosts,
        "credentials": Optional(comma_list(string), []),
        "timeout": Optional(timespan, DEFAULT_SESSION_TIMEOUT),
        "max_node_size": Optional(integer, DEFAULT_MAX_NODE_SIZE),
        "tls": {
            "ca": Optional(absolute_path),
            "cert": Optional(absolute_path),
            "key": Optional(absolute_path),
            "verify": Optional(boolean, True),
        },
    }
})  # fmt: skip


class CredentialsError(Exception):
    """A configured ZooKeeper credential could not be loaded or is malformed."""


def parse_zookeeper_config(app_config: Mapping[str, str]) -> ConfigNamespace:
    """The typed ``zookeeper.*`` settings; raises :class:`ConfigError` naming the bad key."""
    parsed: ConfigNamespace = parse_config(app_config, ZOOKEEPER_SPEC).zookeeper
    if parsed.timeout <= 0:
        raise ConfigError(source_of(app_config), "zookeeper.timeout", "must be greater than zero")
    tls = parsed.tls
    if (tls.cert is None) != (tls.key is None):
        raise ConfigError(source_of(app_config), "zookeeper.tls.cert", "tls.cert and tls.key must be set together")
    return parsed


def gevent_is_active() -> bool:
    """True when gevent has monkey-patched sockets, i.e. kazoo must not use real threads."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("socket"))


def make_handler() -> Any:
    if gevent_is_active():
        from livedata.handler import GeventHandler

        return GeventHandler()
    from kazoo.handlers.threading import SequentialThreadingHandler

    return SequentialThreadingHandler()


def digest_auth_data(secrets: SecretsStore, paths: list[str]) -> list[tuple[str, str]]:
    """Turn ``username:password`` simple secrets into kazoo ``auth_data`` for digest authentication."""
    from livedata.secrets import SecretsError

    auth = []
    for path in paths:
        try:
            raw = secrets.get_simple(path)
        except SecretsError as e:
            raise CredentialsError(f"zookeeper.credentials: {e}") from None
        try:
            credential = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CredentialsError(f"zookeeper.credentials: secret {path!r} is not UTF-8 text") from None
        if ":" not in credential:
            raise CredentialsError(f"zookeeper.credentials: secret {path!r} must look like 'username:password'")
        auth.append(("digest", credential))
    return auth


def zookeeper_client_from_config(
    secrets: SecretsStore | None,
    app_config: Mapping[str, str],
    read_only: bool | None = None,
    credentials_required: bool = True,
) -> KazooClient:
    """Configure (but do not start) a kazoo client that reconnects forever.

    ``secrets`` is only consulted when ``zookeeper.credentials`` is set, so
    callers without credentials may pass ``None``.  ``read_only`` lets the
    client accept read-only servers (a partitioned minority with
    ``readonlymode.enabled``), which is what a mirror wants: stale but
    available beats nothing.

    A credential that cannot be loaded raises :class:`CredentialsError`,
    unless ``credentials_required`` is False: then the problem is logged and
    the client starts without it.  That is for daemons that pick credentials
    up later with :class:`CredentialsRefresher` (the secrets file may simply
    not have been delivered yet when the host boots).
    """
    zk = parse_zookeeper_config(app_config)
    auth_data: list[tuple[str, str]] = []
    if zk.credentials:
        if secrets is None:
            raise CredentialsError("zookeeper.credentials is set but no secrets store was given")
        try:
            auth_data = digest_auth_data(secrets, zk.credentials)
        except CredentialsError as e:
            if credentials_required:
                raise
            log.error("%s; connecting without credentials until the secrets file is fixed", e)
    handler = make_handler()
    connection_retry = KazooRetry(
        max_tries=-1,
        delay=RECONNECT_DELAY,
        backoff=RECONNECT_BACKOFF,
        max_jitter=RECONNECT_JITTER,
        max_delay=RECONNECT_MAX_DELAY,
        sleep_func=handler.sleep_func,
    )
    command_retry = KazooRetry(max_tries=3, delay=0.1, max_delay=1.0, sleep_func=handler.sleep_func)
    client = KazooClient(
        hosts=zk.hosts,
        timeout=zk.timeout,
        handler=handler,
        auth_data=auth_data or None,
        read_only=bool(read_only),
        connection_retry=connection_retry,
        command_retry=command_retry,
        **_tls_arguments(zk.tls),
    )
    if gevent_is_active():
        from livedata.pipelining import pipeline_requests

        pipeline_requests(client)  # see livedata.pipelining: safe only where greenlets share the client
    return client


def _tls_arguments(tls: ConfigNamespace) -> dict[str, Any]:
    if tls.ca is None and tls.cert is None:
        return {}
    return {
        "use_ssl": True,
        "ca": tls.ca,
        "certfile": tls.cert,
        "keyfile": tls.key,
        "verify_certs": tls.verify,
    }


def session_timeout(client: KazooClient) -> float:
    """The session timeout in seconds: the one the server granted once connected, else the one asked for."""
    return float(client._session_timeout) / 1000.0  # kazoo keeps the negotiated value only here


class CredentialsRefresher:
    """Keep a client's digest credentials equal to what the secrets file says now.

    :meth:`refresh` only replaces the client's ``auth_data``, which kazoo
    sends at the start of every session; the caller then starts a new
    session (:meth:`livedata.session.SessionKeeper.renew`) to put them to
    use.  Adding them to the live session instead is not safe: ZooKeeper
    answers an authentication ahead of the requests sent before it, kazoo
    pairs that answer with its oldest pending request and its connection
    dies on the next reply ("xids do not match").  A new session also drops
    the old identity at once, so revoking the old credential in the ACLs
    after the secrets file changed has nothing left to revoke.
    """

    def __init__(self, client: KazooClient, secrets: SecretsStore, paths: list[str]) -> None:
        self.client = client
        self.secrets = secrets
        self.paths = paths
        self.applied: set[tuple[str, str]] = set(client.auth_data)
        self.problem: str | None = None

    def refresh(self) -> bool:
        """Re-read the credentials; return True if they changed (the next session carries the new ones)."""
        try:
            wanted = set(digest_auth_data(self.secrets, self.paths))
        except CredentialsError as e:
            if str(e) != self.problem:
                # Without credentials applied there are none to keep: say what the session does instead.
                kept = "keeping the credentials in use" if self.applied else "still connecting without credentials"
                log.error("%s; %s", e, kept)
            self.problem = str(e)
            return False
        self.problem = None
        if wanted == self.applied:
            return False
        self.client.auth_data = set(wanted)
        self.applied = wanted
        log.info("zookeeper.credentials changed in %s: a new session will carry them", self.secrets.path)
        return True


def credentials_refresher(
    client: KazooClient, secrets: SecretsStore | None, app_config: Mapping[str, str]
) -> CredentialsRefresher | None:
    """A refresher for the client built from the same settings; None when no credentials are configured."""
    zk = parse_zookeeper_config(app_config)
    if not zk.credentials or secrets is None:
        return None
    return CredentialsRefresher(client, secrets, list(zk.credentials))
