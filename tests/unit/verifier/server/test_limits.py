"""The limiter's bookkeeping: streams refused over a limit and counted again once closed;
in-flight messages wait for their caller's share, not for other callers; the anonymous
identity is limited per peer address only."""

from __future__ import annotations

import asyncio

import pytest

from verifier.access import ANONYMOUS
from verifier.config import LimitsConfig
from verifier.errors import ResourceExhaustedError
from verifier.server.limits import Limiter, peer_host

LIMITS = LimitsConfig(
    max_streams_per_identity=2,
    max_streams_per_peer=3,
    max_inflight_per_identity=1,
    max_inflight_per_peer=8,
    max_inflight_bytes_per_identity=100,
    max_inflight_bytes_per_peer=1_000,
)


def test_peer_host() -> None:
    assert peer_host("ipv4:10.0.0.7:51234") == "10.0.0.7"
    assert peer_host("ipv6:[::1]:5") == "::1"
    assert peer_host("unix:/tmp/s") == "unix:/tmp/s"


def test_streams_per_identity_and_per_peer() -> None:
    limiter = Limiter(LIMITS)
    a1 = limiter.open_stream("spiffe://a", "ipv4:10.0.0.1:1")
    limiter.open_stream("spiffe://a", "ipv4:10.0.0.1:2")
    with pytest.raises(ResourceExhaustedError, match="client identity already holds 2"):
        limiter.open_stream("spiffe://a", "ipv4:10.0.0.2:1")
    # Another identity on the same address: the address's limit (3) applies.
    limiter.open_stream("spiffe://b", "ipv4:10.0.0.1:3")
    with pytest.raises(ResourceExhaustedError, match="peer address already holds 3"):
        limiter.open_stream("spiffe://c", "ipv4:10.0.0.1:4")
    assert limiter.refused_streams == 2
    a1()
    limiter.open_stream("spiffe://a", "ipv4:10.0.0.9:1")  # a's slot is free again
    assert limiter.open_streams("spiffe://a") == 2


def test_anonymous_clients_are_limited_per_address_only() -> None:
    limiter = Limiter(LIMITS)
    for port in range(3):
        limiter.open_stream(ANONYMOUS, f"ipv4:10.0.0.1:{port}")
    with pytest.raises(ResourceExhaustedError, match="peer address"):
        limiter.open_stream(ANONYMOUS, "ipv4:10.0.0.1:9")
    # One address's flood does not use up what other anonymous clients share.
    limiter.open_stream(ANONYMOUS, "ipv4:10.0.0.2:1")


def test_in_flight_messages_wait_for_their_own_callers_share_only() -> None:
    async def scenario() -> list[str]:
        limiter = Limiter(LIMITS)
        order: list[str] = []
        release_first = asyncio.Event()

        async def hold(identity: str, name: str, size: int, until: asyncio.Event | None) -> None:
            async with limiter.admit(identity, f"ipv4:10.0.0.{len(name)}:1", size):
                order.append(name)
                if until is not None:
                    await until.wait()

        first = asyncio.create_task(hold("spiffe://a", "a1", 10, release_first))
        await asyncio.sleep(0)
        second = asyncio.create_task(hold("spiffe://a", "a2", 10, None))  # waits: a holds 1
        other = asyncio.create_task(hold("spiffe://b", "b1", 10, None))  # does not wait
        await asyncio.sleep(0.01)
        assert order == ["a1", "b1"]
        release_first.set()
        await asyncio.gather(first, second, other)
        return order

    assert asyncio.run(scenario()) == ["a1", "b1", "a2"]


def test_a_message_over_the_byte_share_goes_through_alone() -> None:
    async def scenario() -> None:
        limiter = Limiter(LIMITS)
        async with limiter.admit("spiffe://a", "ipv4:10.0.0.1:1", 500):  # > 100, but alone
            pass
        async with limiter.admit("spiffe://a", "ipv4:10.0.0.1:1", 500):
            pass

    asyncio.run(scenario())
