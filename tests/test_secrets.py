"""The secrets.json store: each secret type, each error, re-reading on change, laziness."""
from __future__ import annotations

import base64
import json
import os

import pytest

from livedata.config import ConfigError, RawConfig
from livedata.secrets import (
    DEFAULT_SECRETS_PATH,
    CorruptSecretError,
    CredentialSecret,
    SecretNotFoundError,
    SecretsNotAvailableError,
    SecretsStore,
    secrets_store_from_config,
)

pytestmark = pytest.mark.timeout(10)

DOCUMENT = {
    "secrets": {
        "plain": {"type": "simple", "value": "hunter2"},
        "explicit": {"type": "simple", "value": "hunter2", "encoding": "identity"},
        "encoded": {"type": "simple", "value": base64.b64encode(b"\x00\xffbinary").decode(), "encoding": "base64"},
        "bad-b64": {"type": "simple", "value": "!!!not base64", "encoding": "base64"},
        "odd-encoding": {"type": "simple", "value": "x", "encoding": "rot13"},
        "no-value": {"type": "simple"},
        "rotating": {"type": "versioned", "current": "new", "previous": "old"},
        "rotating-b64": {
            "type": "versioned",
            "current": base64.b64encode(b"c").decode(),
            "next": base64.b64encode(b"n").decode(),
            "encoding": "base64",
        },
        "login": {"type": "credential", "username": "svc", "password": "pw"},
        "half-login": {"type": "credential", "username": "svc"},
    },
    "vault": {"url": "ignored", "token": "ignored"},
}


@pytest.fixture
def store(tmp_path) -> SecretsStore:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps(DOCUMENT))
    return SecretsStore(str(path))


def test_simple_secrets(store):
    assert store.get_simple("plain") == b"hunter2"
    assert store.get_simple("explicit") == b"hunter2"
    assert store.get_simple("encoded") == b"\x00\xffbinary"


def test_versioned_secrets(store):
    rotating = store.get_versioned("rotating")
    assert (rotating.current, rotating.previous, rotating.next) == (b"new", b"old", None)
    assert rotating.all_versions == (b"new", b"old")
    encoded = store.get_versioned("rotating-b64")
    assert encoded.all_versions == (b"c", b"n")


def test_credentials(store):
    assert store.get_credentials("login") == CredentialSecret("svc", "pw")


@pytest.mark.parametrize(
    ("call", "name", "error", "pattern"),
    [
        ("get_simple", "absent", SecretNotFoundError, "no secret named 'absent'"),
        ("get_simple", "rotating", CorruptSecretError, "has type 'versioned', expected 'simple'"),
        ("get_versioned", "plain", CorruptSecretError, "has type 'simple', expected 'versioned'"),
        ("get_credentials", "plain", CorruptSecretError, "has type 'simple', expected 'credential'"),
        ("get_simple", "bad-b64", CorruptSecretError, "'value' is not valid base64"),
        ("get_simple", "odd-encoding", CorruptSecretError, "unknown encoding 'rot13'"),
        ("get_simple", "no-value", CorruptSecretError, "'value' is missing"),
        ("get_credentials", "half-login", CorruptSecretError, "'password' is missing or not a string"),
    ],
)
def test_secret_errors(store, call, name, error, pattern):
    with pytest.raises(error, match=pattern) as info:
        getattr(store, call)(name)
    assert store.path in str(info.value)


def test_missing_file(tmp_path):
    store = SecretsStore(str(tmp_path / "absent.json"))
    with pytest.raises(SecretsNotAvailableError, match=r"absent.json: secrets file is not available"):
        store.get_simple("plain")


@pytest.mark.parametrize("content", ["{not json", '{"no-secrets-key": {}}', "[]"])
def test_unparseable_file(tmp_path, content):
    path = tmp_path / "secrets.json"
    path.write_text(content)
    with pytest.raises(SecretsNotAvailableError, match="secrets file is not available"):
        SecretsStore(str(path)).get_simple("plain")


def test_unreadable_file_as_directory(tmp_path):
    with pytest.raises(SecretsNotAvailableError):
        SecretsStore(str(tmp_path)).get_simple("plain")


def test_file_is_reread_when_it_changes(tmp_path):
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"secrets": {"k": {"type": "simple", "value": "first"}}}))
    store = SecretsStore(str(path))
    assert store.get_simple("k") == b"first"
    replacement = tmp_path / "secrets.json.new"
    replacement.write_text(json.dumps({"secrets": {"k": {"type": "simple", "value": "second"}}}))
    os.replace(replacement, path)
    assert store.get_simple("k") == b"second"


def test_store_is_lazy_and_configurable(tmp_path):
    store = secrets_store_from_config(RawConfig({}, "x.ini"))
    assert store.path == DEFAULT_SECRETS_PATH
    store = secrets_store_from_config({"secrets.path": str(tmp_path / "never-created.json")})
    assert store.path.endswith("never-created.json")  # constructing it read nothing
    with pytest.raises(ConfigError, match=r"x\.ini: secrets\.path: 'relative.json' is not an absolute path"):
        secrets_store_from_config(RawConfig({"secrets.path": "relative.json"}, "x.ini"))
