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
        assert limiter.waited == {"identity": 1, "peer": 0}  # a2, once
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


def test_waiting_messages_go_through_in_the_order_they_arrived() -> None:
    async def scenario() -> list[str]:
        limiter = Limiter(LIMITS)
        order: list[str] = []
        gate = asyncio.Event()

        async def hold(name: str) -> None:
            async with limiter.admit("spiffe://a", "ipv4:10.0.0.1:1", 10):
                order.append(name)
                await gate.wait()

        tasks = []
        for name in ("a1", "a2", "a3", "a4"):
            tasks.append(asyncio.create_task(hold(name)))
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        assert order == ["a1"]  # a holds its one in-flight message
        gate.set()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["a1", "a2", "a3", "a4"]


def test_a_release_wakes_one_waiter_not_all_of_them() -> None:
    """Many messages waiting behind one full address: each release lets the next one in without
    waking the others to find the slot taken (the work grew with the square of the queue)."""

    async def scenario() -> int:
        limiter = Limiter(LimitsConfig(max_inflight_per_peer=1))
        checks = 0
        original = limiter._peers.fits

        def counting_fits(key: str, size_bytes: int) -> bool:
            nonlocal checks
            checks += 1
            return original(key, size_bytes)

        limiter._peers.fits = counting_fits  # type: ignore[method-assign]

        async def one(n: int) -> None:
            async with limiter.admit(f"spiffe://node-{n}", "ipv4:10.0.0.1:1", 10):
                await asyncio.sleep(0)

        await asyncio.gather(*(one(n) for n in range(200)))
        return checks

    checks = asyncio.run(scenario())
    assert checks < 200 * 5, f"{checks} limit checks for 200 messages"


def test_a_waiter_woken_for_a_slot_it_cannot_use_passes_it_on() -> None:
    async def scenario() -> list[str]:
        limiter = Limiter(LimitsConfig(max_inflight_per_peer=2, max_inflight_per_identity=1))
        order: list[str] = []
        gates = {name: asyncio.Event() for name in ("a1", "b1", "a2", "c1")}

        async def hold(identity: str, name: str) -> None:
            async with limiter.admit(identity, "ipv4:10.0.0.1:1", 10):
                order.append(name)
                await gates[name].wait()

        tasks = {}
        for identity, name in (("a", "a1"), ("b", "b1"), ("a", "a2"), ("c", "c1")):
            tasks[name] = asyncio.create_task(hold(f"spiffe://{identity}", name))
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        assert order == ["a1", "b1"]  # the address holds two; a2 and c1 wait for it, in order
        gates["b1"].set()  # frees one of the address's two: a2 is woken, but a is still full
        await asyncio.sleep(0.01)
        assert order == ["a1", "b1", "c1"], "c1 should get the slot a2 could not use"
        assert limiter.waited == {
            "identity": 0,
            "peer": 2,
        }  # a2 counted once, where it first waited
        for gate in gates.values():
            gate.set()
        await asyncio.gather(*tasks.values())
        return order

    assert asyncio.run(scenario()) == ["a1", "b1", "c1", "a2"]


def test_a_waiter_cancelled_after_it_was_woken_does_not_lose_the_slot() -> None:
    async def scenario() -> list[str]:
        limiter = Limiter(LIMITS)
        order: list[str] = []
        gate = asyncio.Event()

        async def hold(name: str, wait: bool) -> None:
            async with limiter.admit("spiffe://a", "ipv4:10.0.0.1:1", 10):
                order.append(name)
                if wait:
                    await gate.wait()

        first = asyncio.create_task(hold("a1", True))
        await asyncio.sleep(0)
        doomed = asyncio.create_task(hold("a2", False))
        await asyncio.sleep(0)
        queued_then_cancelled = asyncio.create_task(hold("a3", False))
        await asyncio.sleep(0)
        last = asyncio.create_task(hold("a4", False))
        await asyncio.sleep(0.01)
        queued_then_cancelled.cancel()  # cancelled while it waits in line
        await asyncio.sleep(0)

        # a1's release wakes a2; a2 is cancelled in the same step, before it can run.
        wake = limiter._identities.wake
        woken: list[str] = []

        def wake_then_cancel(key: str) -> None:
            before = len(limiter._identities.waiters.get(key, ()))
            wake(key)
            if not woken and len(limiter._identities.waiters.get(key, ())) < before:
                woken.append(key)
                doomed.cancel()

        limiter._identities.wake = wake_then_cancel  # type: ignore[method-assign]
        gate.set()
        await asyncio.wait_for(last, timeout=5)  # a4 still gets its turn
        await first
        for task in (doomed, queued_then_cancelled):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert woken == ["spiffe://a"]
        return order

    assert asyncio.run(scenario()) == ["a1", "a4"]
