"""Ed25519 signatures over a node's data: the writer's signer, the readers' one verification step, keygen.

Why signatures, when ZooKeeper has ACLs: anyone holding a ZooKeeper write credential (or a compromised
ensemble member) can otherwise put any bytes into every host's file at once.  With ``require_signature``, a
reader only accepts data whose header (:mod:`livedata.provenance`) carries a valid signature, by a key it
trusts, made for this very node, with a sequence not lower than the last it accepted for the node.

The cryptography comes from the ``cryptography`` package, an optional extra (``pip install
'livedata[signing]'``): nothing imports it unless a configuration signs or verifies.

:class:`Verifier` is the whole verification step.  The watcher's read queue, :class:`~livedata.LiveNode` call
its :meth:`Verifier.check` with the decoded data's envelope (whose sha256 and size the payload module has just
checked against the bytes); a refusal is a :class:`SignatureRefused`, a
:class:`~livedata.payload.PayloadError` like any bad stored data: the version is not used, the old file or
value is kept, and the next version is read as usual.

The last sequence accepted per node is what refuses a replayed older version.  It is kept in memory and, with a
``state_dir``, in ``state_dir/sequences.log`` (a line appended per accepted change, before the data is handed on),
so a restart does not forget it; ``state_dir/refused.json`` lists the nodes whose current data is refused, for
``livedata-watcher --check``.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import quote, unquote

from livedata.payload import Envelope, PayloadError
from livedata.provenance import Provenance, real_path

log = logging.getLogger("livedata.signing")

KEY_SIZE = 32
INSTALL_HINT = "needs the cryptography package: pip install 'livedata[signing]'"
SEQUENCES_FILE = "sequences.log"
REFUSED_FILE = "refused.json"
REWRITE_RETRY = 5.0  # seconds between attempts to rewrite sequences.log after an append failed


class SigningUnavailable(Exception):
    """The ``cryptography`` package is not installed."""

    def __init__(self) -> None:
        super().__init__(INSTALL_HINT)


class KeyFormatError(ValueError):
    """A key that is not the standard base64 of 32 raw bytes."""


class SignatureRefused(PayloadError):
    """Data a node that requires signatures must not use; subclasses name the reason (metrics label them so)."""


class Unsigned(SignatureRefused):
    pass


class UntrustedKey(SignatureRefused):
    pass


class BadSignature(SignatureRefused):
    pass


class OtherPath(SignatureRefused):
    pass


class Replayed(SignatureRefused):
    pass


REFUSALS = ("Unsigned", "UntrustedKey", "BadSignature", "OtherPath", "Replayed")


def require_library() -> None:
    try:
        import cryptography.hazmat.primitives.asymmetric.ed25519  # noqa: F401
    except ImportError:
        raise SigningUnavailable() from None


def decode_key(text: str | bytes, what: str = "key") -> bytes:
    """The raw 32 bytes of a key given as standard base64 (or, from a secrets store, as the raw bytes)."""
    if isinstance(text, bytes) and len(text) == KEY_SIZE:
        return text
    raw_text = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    try:
        raw = base64.b64decode(raw_text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(f"{what} is not standard base64") from None
    if len(raw) != KEY_SIZE:
        raise KeyFormatError(f"{what} is {len(raw)} bytes once decoded, an Ed25519 key is {KEY_SIZE}")
    return raw


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def generate() -> tuple[str, str]:
    """A new key pair: (private, public), each the standard base64 of the raw 32 bytes."""
    require_library()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())  # fmt: skip
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b64(private), b64(public)


class Signer:
    """The writer's private key: signs :func:`livedata.provenance.signed_message` bytes."""

    def __init__(self, private: bytes) -> None:
        require_library()
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self._key = Ed25519PrivateKey.from_private_bytes(private)
        self.public = b64(self._key.public_key().public_bytes(serialization.Encoding.Raw,
                                                               serialization.PublicFormat.Raw))  # fmt: skip

    def sign(self, message: bytes) -> str:
        return b64(self._key.sign(message))

    def signed(self, path: str, envelope: Envelope) -> bool:
        """Whether ``envelope`` carries this key's valid signature made for ``path``: what the writer checks
        before signing a kept version's bytes again (a rollback), since history children are writable by
        anyone with ZooKeeper rights on the node."""
        from cryptography.exceptions import InvalidSignature

        record = Provenance.of(envelope)
        if record is None or record.key != self.public or record.path != path:
            return False
        try:
            self._key.public_key().verify(base64.b64decode(record.sig, validate=True), record.message_for(envelope))
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True


class SequenceStore:
    """The last accepted (sequence, sha256) of each node, and which nodes' data is refused now.

    In memory always; with ``directory``, also in ``directory/sequences.log``, so a restart keeps refusing
    replays: one line appended per accepted change (``seq sha256 path``, the path percent-quoted; a single
    ``write`` on a descriptor kept open, cheap enough for thousands of nodes at start-up), the last line of a
    node winning.  It is read, and rewritten compacted, when the store is created.  A file that cannot be
    written is logged once per reason and the memory goes on serving.
    """

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory
        self._last: dict[str, tuple[int, str]] = {}
        self.refused: dict[str, str] = {}  # path -> the reason its current data is refused
        self._problem: str | None = None
        self._log: int | None = None
        self._torn = False  # an append failed or was cut short: the next one rewrites the log whole
        self._retry_at = 0.0  # while torn, when the next rewrite may be tried
        if directory is not None:
            self._last = self._load()
            self._compact()
            self._save_refused()  # never leave an earlier run's refusals in force

    def last(self, path: str) -> tuple[int, str] | None:
        return self._last.get(path)

    def accept(self, path: str, seq: int, sha256: str) -> None:
        if self._last.get(path) != (seq, sha256):
            self._last[path] = (seq, sha256)
            self._append(f"{seq} {sha256} {quote(path, safe='/')}\n")
        if self.refused.pop(path, None) is not None:
            self._save_refused()

    def refuse(self, path: str, reason: str) -> None:
        if self.refused.get(path) != reason:
            self.refused[path] = reason
            self._save_refused()

    def close(self) -> None:
        if self._torn:  # a last try, so that what the failed appends held reaches the next start
            self._torn = False
            self._close_log()
            self._compact()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            os.close(self._log)
            self._log = None

    def _load(self) -> dict[str, tuple[int, str]]:
        assert self.directory is not None
        last: dict[str, tuple[int, str]] = {}
        try:
            with open(os.path.join(self.directory, SEQUENCES_FILE), encoding="ascii", errors="replace") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 3 and parts[0].isdigit() and line.endswith("\n"):  # a torn last line: skipped
                        last[unquote(parts[2])] = (int(parts[0]), parts[1])
        except FileNotFoundError:
            pass
        except OSError as e:
            self._report(f"cannot read {SEQUENCES_FILE} in {self.directory}: {e.strerror or e}")
        return last

    def _compact(self) -> None:
        lines = "".join(f"{seq} {sha256} {quote(path, safe='/')}\n" for path, (seq, sha256) in self._last.items())
        if self._write(SEQUENCES_FILE, lines):
            try:
                self._log = os.open(os.path.join(self.directory or "", SEQUENCES_FILE), os.O_WRONLY | os.O_APPEND)
            except OSError as e:
                self._report(f"cannot open {SEQUENCES_FILE}: {e.strerror or e}")

    def _append(self, line: str) -> None:
        """Append one line; after a failed or short write (a full disk), rewrite the whole log instead, once
        it can be: appending after a torn line would glue the next one to it, and what failed would be lost."""
        if self._torn:
            if time.monotonic() >= self._retry_at:  # not on every line: a rewrite costs every node's line
                self._close_log()
                self._compact()
                self._torn = self._log is None
                self._retry_at = time.monotonic() + REWRITE_RETRY
            return
        if self._log is None:
            return
        raw = line.encode("ascii")
        try:
            written = os.write(self._log, raw)
        except OSError as e:
            written = -1
            self._report(f"cannot append to {SEQUENCES_FILE}: {e.strerror or e}")
        if written != len(raw):
            if written >= 0:
                self._report(f"cannot append to {SEQUENCES_FILE}: short write (disk full?)")
            self._torn = True

    def _save_refused(self) -> None:
        self._write(REFUSED_FILE, json.dumps({"refused": self.refused}, sort_keys=True) + "\n")

    def _write(self, name: str, text: str) -> bool:
        if self.directory is None:
            return False
        target = os.path.join(self.directory, name)
        temp = f"{target}.tmp{os.getpid()}"
        try:
            os.makedirs(self.directory, exist_ok=True)
            with open(temp, "w", encoding="ascii") as f:
                f.write(text)
            os.replace(temp, target)
        except OSError as e:
            self._report(f"cannot write {target}: {e.strerror or e}")
            return False
        return True

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            log.error("%s; the last accepted sequences are kept in memory only", problem)
            self._problem = problem


def read_refused(state_dir: str | None) -> dict[str, str]:
    """``--check``: path -> reason for every node whose current data the daemon refuses (empty without a file)."""
    if state_dir is None:
        return {}
    try:
        with open(os.path.join(state_dir, REFUSED_FILE), encoding="ascii") as f:
            content = json.load(f)
    except (OSError, ValueError):
        return {}
    refused = content.get("refused") if isinstance(content, dict) else None
    return {str(k): str(v) for k, v in refused.items()} if isinstance(refused, dict) else {}


class Verifier:
    """The one verification step: is this decoded version of ``path`` signed as it must be?

    ``required(path)`` says which nodes require a signature (trees' children never do).  ``trusted_keys`` are
    base64 public keys; replacing them (:meth:`set_keys`) revokes the ones left out.
    """

    def __init__(self, trusted_keys: Iterable[str], required: Callable[[str], bool],
                 store: SequenceStore | None = None, chroot: str | None = None) -> None:  # fmt: skip
        require_library()
        self.required = required
        self.chroot = chroot  # the session's chroot: a signature names the node from the ensemble's root
        self.store = store or SequenceStore()
        self._keys: dict[str, Any] = {}
        self.set_keys(trusted_keys)

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self._keys)

    def set_keys(self, trusted_keys: Iterable[str]) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        self._keys = {b64(decode_key(key)): Ed25519PublicKey.from_public_bytes(decode_key(key))
                      for key in trusted_keys}  # fmt: skip

    def check(self, path: str, data: bytes, envelope: Envelope | None) -> None:
        """Accept (and remember the sequence) or raise a :class:`SignatureRefused` naming the reason."""
        if not self.required(path):
            return
        try:
            record = self._verified(path, envelope)
        except SignatureRefused as e:
            self.store.refuse(path, f"{type(e).__name__}: {e}")
            raise
        assert envelope is not None
        self.store.accept(path, record.seq, envelope.sha256)

    def _verified(self, path: str, envelope: Envelope | None) -> Provenance:
        from cryptography.exceptions import InvalidSignature

        record = Provenance.of(envelope)
        if envelope is None or record is None or not record.sig:
            raise Unsigned("the data carries no signature and this node requires one")
        key = self._keys.get(record.key)
        if key is None:
            raise UntrustedKey(f"signed by key {record.key[:12]}..., which is not in watcher.trusted_keys")
        try:
            key.verify(base64.b64decode(record.sig, validate=True), record.message_for(envelope))
        except (InvalidSignature, binascii.Error, ValueError):
            raise BadSignature("the signature does not match the data and its header") from None
        if record.path != real_path(self.chroot, path):
            raise OtherPath(f"signed for {record.path}, not for this node ({real_path(self.chroot, path)})")
        last = self.store.last(path)
        if last is not None:
            seq, sha256 = last
            if record.seq < seq or (record.seq == seq and envelope.sha256 != sha256):
                raise Replayed(f"sequence {record.seq} is not above {seq}, the last accepted for this node "
                               "(an older version written again?)")  # fmt: skip
        return record


# --- livedata-keygen --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``livedata-keygen``: print a new Ed25519 key pair, ``private <base64>`` then ``public <base64>``."""
    from livedata.cli import EXIT_OK, EXIT_USAGE, ArgumentParser, fail, program_name

    prog = program_name("livedata.signing")
    parser = ArgumentParser(prog=prog, description="Print a new Ed25519 key pair for signing livedata writes: "
                            "put the private line's key in the writer's secrets store (writer.signing_key), the "
                            "public one in the watchers' watcher.trusted_keys.")  # fmt: skip
    parser.parse_args(argv)
    try:
        private, public = generate()
    except SigningUnavailable as e:
        return fail(prog, e, EXIT_USAGE)
    print(f"private {private}\npublic {public}")
    sys.stdout.flush()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
