from __future__ import annotations

import pytest

from verifier.nonce import NONCE_SIZE, NonceIssuer, NonceStatus

S = 10**9
NODE = b"\x01" * 32
OTHER = b"\x02" * 32


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def issuer(clock: Clock, secret: bytes = b"s" * 32) -> NonceIssuer:
    return NonceIssuer(secret, clock, lifetime_ns=3600 * S)


def test_nonce_is_bound_to_node_and_time() -> None:
    clock = Clock(1_000 * S)
    nonces = issuer(clock)
    nonce, issued = nonces.issue(NODE)
    assert len(nonce) == NONCE_SIZE
    assert issued == 1_000 * S
    assert nonces.issued_at(nonce, NODE) == issued
    assert nonces.issued_at(nonce, OTHER) is None
    assert nonces.check(nonce, NODE, 1_060 * S, 5 * S) is NonceStatus.OK


def test_expired_and_future_and_forged() -> None:
    clock = Clock(1_000 * S)
    nonces = issuer(clock)
    nonce, _ = nonces.issue(NODE)
    assert nonces.check(nonce, NODE, (1_000 + 3_600) * S, 0) is NonceStatus.OK
    assert nonces.check(nonce, NODE, (1_000 + 3_601) * S, 0) is NonceStatus.EXPIRED
    # A window that ended before the nonce existed cannot carry it (beyond the skew).
    assert nonces.check(nonce, NODE, 990 * S, 5 * S) is NonceStatus.BAD
    assert nonces.check(nonce, NODE, 996 * S, 5 * S) is NonceStatus.OK
    forged = nonce[:-1] + bytes([nonce[-1] ^ 1])
    assert nonces.check(forged, NODE, 1_060 * S, 5 * S) is NonceStatus.BAD
    assert nonces.check(b"", NODE, 1_060 * S, 5 * S) is NonceStatus.BAD
    other_secret = issuer(clock, b"t" * 32)
    assert other_secret.check(nonce, NODE, 1_060 * S, 5 * S) is NonceStatus.BAD


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        NonceIssuer(b"short", Clock(0), 1)
