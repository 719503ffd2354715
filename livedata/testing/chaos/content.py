"""The bytes operations install: every version of every node is unique, so a dest names the version it holds."""
from __future__ import annotations

import random
import string
import zlib

_LETTERS = string.ascii_letters + string.digits + " .,:-_"


def text(label: str, seq: int, size: int, salt: int) -> bytes:
    """Printable bytes, ``label#seq:`` then ``size`` random characters."""
    rng = random.Random(salt)
    return f"{label}#{seq}:".encode() + "".join(rng.choices(_LETTERS, k=size)).encode()


def chunked(label: str, seq: int, base: int, large: bool = False) -> bytes:
    """Incompressible data of several chunks; pushes of the same ``base`` differ only at the end, so a writer
    reuses every chunk but the last (the case where a reused chunk's ACL matters). ``large``: a dozen chunks,
    read for longer."""
    rng = random.Random(f"{label}/{base}")
    return rng.randbytes((200_000 if large else 40_000) + 7_000 * base) + f"#{label}#{seq}".encode()


def compressible(label: str, seq: int, base: int) -> bytes:
    """Text larger than one node that compresses into one: stored as an inline zlib envelope."""
    line = f"{label} base {base} version {seq}\n".encode()
    return line * (24_000 // len(line) + 1)


def inflate_bomb(salt: int) -> bytes:
    """A small zlib stream that inflates to 50 MB of zeros."""
    return zlib.compress(b"\0" * 50_000_000 + salt.to_bytes(4, "big"), 9)
