"""Typed identifiers, so a key id is never passed where a digest is expected.

    >>> key_id = KeyId(hashlib.sha256(raw_public_key).digest())
    >>> format_id(key_id)[:8]
    '3f1c9a0b'

All ids are raw bytes in signed data; :func:`format_id` gives the lowercase hex used in text.
"""

from __future__ import annotations

import re
from typing import NewType

KeyId = NewType("KeyId", bytes)
"""SHA-256 of a raw 32-byte Ed25519 public key."""

NodeId = NewType("NodeId", bytes)
"""A node's id: the key id of its node key."""

Digest = NewType("Digest", bytes)
"""SHA-256 of an envelope's bytes."""

LabId = NewType("LabId", str)
"""A lab's id: lowercase letters, digits, '-', '_', '.'; 1 to 64 characters."""

DIGEST_SIZE = 32
ZERO_DIGEST = Digest(bytes(DIGEST_SIZE))

_LAB_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def format_id(raw: bytes) -> str:
    """Lowercase hex of an id."""
    return raw.hex()


def parse_hex_id(text: str, what: str = "id") -> bytes:
    """Parse a 64-character hex id, raising ValueError that names ``what``."""
    cleaned = text.strip().lower()
    if len(cleaned) != 2 * DIGEST_SIZE:
        raise ValueError(f"{what} must be {2 * DIGEST_SIZE} hex characters, got {len(cleaned)}")
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise ValueError(f"{what} is not hexadecimal") from None


def is_valid_lab_id(text: str) -> bool:
    """Whether ``text`` is a well-formed lab id (a syntax check, not an authorisation)."""
    return _LAB_ID.fullmatch(text) is not None
