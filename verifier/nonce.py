"""Challenge nonces: stateless, bound to a node and an issue time, checked against a window.

    issuer = NonceIssuer(secret, clock_ns, lifetime_ns=86_400 * 10**9)
    nonce = issuer.issue(node_id)
    issuer.check(nonce, node_id, window_end_ns, skew_ns)   # NonceStatus.OK, BAD or EXPIRED

A nonce is ``issued_at_ns (8 bytes, big-endian) || HMAC-SHA256(secret, "pausewatch-nonce-v1" ||
node_id || issued_at_ns)[:16]`` (docs/wire-format.md §3). No table of issued nonces is kept; the
secret lives in the store so that every verifier process over one database accepts the same nonces.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from enum import StrEnum

NONCE_SIZE = 24
_DOMAIN = b"pausewatch-nonce-v1"
_TAG_SIZE = 16


class NonceStatus(StrEnum):
    OK = "ok"
    BAD = "bad"
    EXPIRED = "expired"


class NonceIssuer:
    """Issues and checks nonces under one secret."""

    def __init__(self, secret: bytes, clock_ns: Callable[[], int], lifetime_ns: int) -> None:
        if len(secret) < 32:
            raise ValueError("the nonce secret must be at least 32 bytes")
        self._secret = secret
        self._clock_ns = clock_ns
        self.lifetime_ns = lifetime_ns

    def _tag(self, node_id: bytes, issued_at: bytes) -> bytes:
        return hmac.new(self._secret, _DOMAIN + node_id + issued_at, hashlib.sha256).digest()[
            :_TAG_SIZE
        ]

    def derive(self, label: bytes, *parts: bytes) -> bytes:
        """A 32-byte value only this issuer can compute, for ``label`` and ``parts`` (each
        length-prefixed): how a TPM credential's secret is bound to its nonce without a table."""
        message = bytearray(_DOMAIN + b"/" + label)
        for part in parts:
            message += struct.pack(">I", len(part)) + part
        return hmac.new(self._secret, bytes(message), hashlib.sha256).digest()

    def issue(self, node_id: bytes) -> tuple[bytes, int]:
        """A fresh nonce for ``node_id`` and its issue time."""
        now = self._clock_ns()
        issued_at = struct.pack(">q", now)
        return issued_at + self._tag(node_id, issued_at), now

    def issued_at(self, nonce: bytes, node_id: bytes) -> int | None:
        """The issue time of a nonce this issuer made for ``node_id``, or None."""
        if len(nonce) != NONCE_SIZE:
            return None
        issued_at = nonce[:8]
        if not hmac.compare_digest(nonce[8:], self._tag(node_id, issued_at)):
            return None
        return int(struct.unpack(">q", issued_at)[0])

    def check(self, nonce: bytes, node_id: bytes, window_end_ns: int, skew_ns: int) -> NonceStatus:
        """Whether ``nonce`` may appear in a window of ``node_id`` ending at ``window_end_ns``:
        issued by us for this node, not after the window ended (give or take the skew), and not
        longer than the lifetime before it ended."""
        issued = self.issued_at(nonce, node_id)
        if issued is None or issued > window_end_ns + skew_ns:
            return NonceStatus.BAD
        if window_end_ns - issued > self.lifetime_ns:
            return NonceStatus.EXPIRED
        return NonceStatus.OK
