"""Who wrote a node's data, when and why, and the per-node sequence signatures are ordered by.

Standard library only.  The writer records each write in the envelope's header (:mod:`livedata.payload` keeps
these keys as :attr:`~livedata.payload.Envelope.meta`; readers that predate them ignore them):

=========== =====================================================================================
``author``  who wrote it: ``--author``, else ``$LIVEDATA_AUTHOR``, else ``user@host``
``time``    when, UTC, RFC 3339 to the second (``2026-11-26T03:12:05Z``)
``message`` why (``-m``); empty when none was given
``path``    the node written, chroot included (:func:`real_path`): the same node whatever chroot a reader uses
``seq``     the node's sequence: grows by at least one with every write, see :func:`next_sequence`
``key``     signed writes: the signer's Ed25519 public key (standard base64 of the raw 32 bytes)
``sig``     signed writes: the signature (standard base64) of :func:`signed_message`
=========== =====================================================================================

The signature covers :func:`signed_message`: a fixed label, then a canonical JSON object of the path, the decoded
data's sha256 and size, the time, author, message and sequence.  Anything else in the header (codec, chunk
names) only says how to get the bytes back, and the bytes are checked against the signed sha256 and size.
"""
from __future__ import annotations

import datetime
import getpass
import json
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from livedata.payload import Envelope

__all__ = ["Provenance", "default_author", "next_sequence", "now_utc", "real_path", "signed_message"]

SIGNATURE_LABEL = b"livedata-signature-v1\n"  # a signature over one kind of message is never valid as another
MAX_MESSAGE = 4096  # characters: a reason, not a document (every host reads it with every change)
AUTHOR_VARIABLE = "LIVEDATA_AUTHOR"
MAX_SEQUENCE = 2**63 - 1  # a signed 64-bit integer: any language's reader holds it, and a header cannot grow it


def default_author() -> str:
    """``$LIVEDATA_AUTHOR``, else ``user@host``: a CI job sets the variable once for all its writes."""
    author = os.environ.get(AUTHOR_VARIABLE, "").strip()
    if author:
        return author
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container): the number still says who
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def real_path(chroot: str | None, path: str) -> str:
    """The node's path from the ensemble's root: what a signature names, so that a version signed for ``/flags``
    under one chroot (say another environment's) is never valid for ``/flags`` under another, and a reader
    with a chroot and one without agree on the same node."""
    if not chroot:
        return path
    return chroot if path == "/" else chroot + path


def now_utc() -> str:
    """The current time as the header records it: UTC, to the second, RFC 3339."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def next_sequence(current: Envelope | None, kept: Iterable[Envelope], new_version: int) -> int:
    """The sequence of the write that the compare-and-set will turn into znode version ``new_version``.

    One more than the highest sequence in the data being replaced and in the kept history, and never below
    ``new_version``: the znode version only grows while the node exists, so even a node whose data and
    history were wiped (by someone holding ZooKeeper rights but no key) gets a sequence that its last
    signed write did not reach, unless the node itself was deleted and created again.  Two writers racing
    from the same version compute the same sequence, but the compare-and-set lets exactly one of them
    publish: a sequence is only ever published with one content.
    """
    seen = [_sequence(envelope) for envelope in (current, *kept) if envelope is not None]
    return max([new_version, *(seq + 1 for seq in seen if seq is not None)])


def _sequence(envelope: Envelope) -> int | None:
    seq = envelope.meta.get("seq")
    return seq if type(seq) is int and 0 <= seq <= MAX_SEQUENCE else None


def signed_message(path: str, sha256: str, size: int, time: str, author: str, message: str, seq: int) -> bytes:
    """The exact bytes a signature covers (canonical JSON: sorted keys, no spaces, ASCII only)."""
    fields = {"path": path, "sha256": sha256, "size": size, "time": time, "author": author, "message": message,
              "seq": seq}  # fmt: skip
    return SIGNATURE_LABEL + json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class Provenance:
    """What one write records besides the data; :meth:`of` reads it back from an envelope."""

    author: str
    time: str
    message: str
    path: str
    seq: int
    key: str = ""  # base64 public key, signed writes only
    sig: str = ""  # base64 signature, signed writes only

    def header(self) -> dict[str, Any]:
        """The header keys (``meta``) for :func:`livedata.payload.restamp`."""
        keys: dict[str, Any] = {"author": self.author, "time": self.time, "message": self.message,
                                "path": self.path, "seq": self.seq}  # fmt: skip
        if self.sig:
            keys.update(key=self.key, sig=self.sig)
        return keys

    def message_for(self, envelope: Envelope) -> bytes:
        """What the signature of this record over ``envelope``'s data covers."""
        return signed_message(self.path, envelope.sha256, envelope.size, self.time, self.author, self.message,
                              self.seq)  # fmt: skip

    @classmethod
    def of(cls, envelope: Envelope | None) -> Provenance | None:
        """The record in an envelope's header; ``None`` when there is none (plain data, older writers) or it is
        malformed (a record that does not parse is treated as no record: for a signed node, unsigned)."""
        if envelope is None:
            return None
        return cls.from_meta(envelope.meta)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Provenance | None:
        strings = [meta.get(key, "") for key in ("author", "time", "message", "path", "key", "sig")]
        seq = meta.get("seq")
        if not all(isinstance(value, str) for value in strings) or type(seq) is not int or not 0 <= seq <= MAX_SEQUENCE:
            return None
        author, time, message, path, key, sig = strings
        return cls(author, time, message, path, seq, key, sig)


def one_line(text: str) -> str:
    """A message or author as one line of a listing: newlines and other control characters escaped."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
