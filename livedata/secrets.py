"""A file-backed secrets store in the common ``secrets.json`` layout.

Credentials live in a JSON file maintained by some other agent (Vault's
fetcher, a config-management run...).  That agent rotates them in place, so
the file is watched and re-read whenever it changes on disk; and it is read
lazily, on the first lookup, so a program that needs no credentials never
waits for, or fails on, a secrets file it does not use.
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from livedata.config import Optional, absolute_path, parse_config, register

if TYPE_CHECKING:
    from livedata.file_watcher import FileWatcher

DEFAULT_SECRETS_PATH = "/var/local/secrets.json"


class SecretsError(Exception):
    """Base class: something about a secret or the secrets file keeps us from using it."""


class SecretsNotAvailableError(SecretsError):
    """The secrets file cannot be read or parsed, and no good copy of it was ever loaded."""

    def __init__(self, path: str, reason: object) -> None:
        super().__init__(f"{path}: secrets file is not available: {reason}")


class SecretNotFoundError(SecretsError):
    def __init__(self, secrets_file: str, name: str) -> None:
        super().__init__(f"{secrets_file}: no secret named {name!r}")


class CorruptSecretError(SecretsError):
    """The secret exists but is not what the caller asked for (wrong type, bad encoding, missing field)."""

    def __init__(self, secrets_file: str, name: str, problem: str) -> None:
        super().__init__(f"{secrets_file}: secret {name!r}: {problem}")


@dataclass(frozen=True)
class VersionedSecret:
    """A secret being rotated: accept any of the versions, emit ``current``."""

    current: bytes
    previous: bytes | None = None
    next: bytes | None = None

    @property
    def all_versions(self) -> tuple[bytes, ...]:
        return tuple(v for v in (self.current, self.previous, self.next) if v is not None)


@dataclass(frozen=True)
class CredentialSecret:
    username: str
    password: str


def _parse_secrets_file(f: IO[Any]) -> Mapping[str, Any]:
    """Accept only the documented shape, so a truncated or foreign file is an error, not an empty store."""
    document = json.load(f)
    if not isinstance(document, dict) or not isinstance(document.get("secrets"), dict):
        raise ValueError('expected a JSON object with a "secrets" object inside')
    secrets: Mapping[str, Any] = document["secrets"]
    return secrets


class SecretsStore:
    """Look up secrets by path in a ``secrets.json`` file, re-reading it when it changes."""

    def __init__(self, path: str, timeout: float | None = None) -> None:
        self.path = path
        self._timeout = timeout
        self._watcher: FileWatcher[Mapping[str, Any]] | None = None

    def _secrets(self) -> Mapping[str, Any]:
        # Here, not at the top: a watcher without zookeeper.credentials never needs a FileWatcher.
        from livedata.file_watcher import FileWatcher, WatchedFileNotAvailableError

        try:
            if self._watcher is None:
                self._watcher = FileWatcher(self.path, _parse_secrets_file, timeout=self._timeout)
            data: Mapping[str, Any] = self._watcher.get_data()
        except WatchedFileNotAvailableError as e:
            raise SecretsNotAvailableError(self.path, e.inner) from None
        return data

    def _entry(self, name: str, expected_type: str) -> Mapping[str, Any]:
        entry = self._secrets().get(name)
        if entry is None:
            raise SecretNotFoundError(self.path, name)
        if not isinstance(entry, dict):
            raise CorruptSecretError(self.path, name, "is not a JSON object")
        actual = entry.get("type")
        if actual != expected_type:
            raise CorruptSecretError(self.path, name, f"has type {actual!r}, expected {expected_type!r}")
        return entry

    def _decode(self, name: str, entry: Mapping[str, Any], field: str, required: bool = True) -> bytes | None:
        value = entry.get(field)
        if value is None:
            if required:
                raise CorruptSecretError(self.path, name, f"field {field!r} is missing")
            return None
        if not isinstance(value, str):
            raise CorruptSecretError(self.path, name, f"field {field!r} is not a string")
        encoding = entry.get("encoding", "identity")
        if encoding == "identity":
            return value.encode("utf-8")
        if encoding == "base64":
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise CorruptSecretError(self.path, name, f"field {field!r} is not valid base64") from None
        raise CorruptSecretError(self.path, name, f"unknown encoding {encoding!r} (use identity or base64)")

    def get_simple(self, name: str) -> bytes:
        """The bytes of a ``simple`` secret."""
        value = self._decode(name, self._entry(name, "simple"), "value")
        assert value is not None
        return value

    def get_versioned(self, name: str) -> VersionedSecret:
        """A ``versioned`` secret (``current`` and optional ``previous``/``next``)."""
        entry = self._entry(name, "versioned")
        current = self._decode(name, entry, "current")
        assert current is not None
        return VersionedSecret(
            current=current,
            previous=self._decode(name, entry, "previous", required=False),
            next=self._decode(name, entry, "next", required=False),
        )

    def get_credentials(self, name: str) -> CredentialSecret:
        """A ``credential`` secret: a username and a password, as text."""
        entry = self._entry(name, "credential")
        fields = {}
        for field in ("username", "password"):
            value = entry.get(field)
            if not isinstance(value, str):
                raise CorruptSecretError(self.path, name, f"field {field!r} is missing or not a string")
            fields[field] = value
        return CredentialSecret(**fields)


SECRETS_SPEC = register({"secrets": {"path": Optional(absolute_path, DEFAULT_SECRETS_PATH)}})


def secrets_store_from_config(config: Mapping[str, str], timeout: float | None = None) -> SecretsStore:
    """Build a store from ``secrets.path``; nothing is read until a secret is asked for."""
    parsed = parse_config(config, SECRETS_SPEC)
    return SecretsStore(parsed.secrets.path, timeout=timeout)
