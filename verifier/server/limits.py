"""Per-client limits, so that no client can stall the others: open streams, and messages and
bytes being processed at once, counted per client identity and per peer address.

    limiter = Limiter(config.limits)
    release = limiter.open_stream(identity, peer)     # ResourceExhaustedError when over
    async with limiter.admit(identity, peer, size_bytes=len(batch)):
        ...                                           # waits while the caller is over its share

Streams over the limit are refused (RESOURCE_EXHAUSTED); messages over the in-flight limit wait
(the caller's own stream is not read meanwhile, so HTTP/2 flow control pushes back on it alone).
The anonymous identity is shared by every client without a mapped certificate, so only the
per-peer limits apply to it: one anonymous client cannot use up a limit the others share.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from verifier.access import ANONYMOUS
from verifier.config import LimitsConfig
from verifier.errors import ResourceExhaustedError


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string: ``ipv4:10.0.0.7:51234`` -> ``10.0.0.7``,
    ``ipv6:[::1]:5`` -> ``::1``; anything else as given."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[None]
    size_bytes: int


@dataclass(slots=True)
class _Usage:
    streams: int = 0
    inflight: int = 0
    inflight_bytes: int = 0
    waiting: int = 0


class _Counter:
    """Usage per key (an identity or a peer address), with the messages waiting for it in the
    order they arrived."""

    def __init__(self, max_streams: int, max_inflight: int, max_bytes: int) -> None:
        self.max_streams = max_streams
        self.max_inflight = max_inflight
        self.max_bytes = max_bytes
        self.usage: dict[str, _Usage] = {}
        self.waiters: dict[str, deque[_Waiter]] = {}

    def _get(self, key: str) -> _Usage:
        found = self.usage.get(key)
        if found is None:
            found = self.usage[key] = _Usage()
        return found

    def _forget(self, key: str) -> None:
        usage = self.usage.get(key)
        if usage is not None and usage == _Usage():
            del self.usage[key]
            self.waiters.pop(key, None)

    def fits(self, key: str, size_bytes: int) -> bool:
        usage = self._get(key)
        if usage.inflight == 0:
            return True  # one message always goes through (size is capped by the transport)
        return (
            usage.inflight < self.max_inflight
            and usage.inflight_bytes + size_bytes <= self.max_bytes
        )

    def wake(self, key: str) -> None:
        """Wake the oldest message waiting on ``key`` if it fits now; it checks again when it
        runs, and wakes the next in turn once it is admitted (one at a time: a release wakes one
        waiter, never all of them to find that one fits)."""
        queue = self.waiters.get(key)
        while queue:
            waiter = queue[0]
            if waiter.future.done():  # cancelled while it waited
                queue.popleft()
                continue
            if self.fits(key, waiter.size_bytes):
                queue.popleft()
                waiter.future.set_result(None)
            return


class Limiter:
    """The verifier's limits; used from the server's event loop only (no locks needed)."""

    def __init__(self, config: LimitsConfig) -> None:
        self.config = config
        self._identities = _Counter(
            config.max_streams_per_identity,
            config.max_inflight_per_identity,
            config.max_inflight_bytes_per_identity,
        )
        self._peers = _Counter(
            config.max_streams_per_peer,
            config.max_inflight_per_peer,
            config.max_inflight_bytes_per_peer,
        )
        self.refused_streams = 0
        self.waited = {"identity": 0, "peer": 0}
        """Messages that had to wait, by the limit that first held them (each counted once)."""

    def _counters(self, identity: str, peer: str) -> list[tuple[_Counter, str]]:
        pairs = [(self._peers, peer_host(peer))]
        if identity != ANONYMOUS:
            pairs.append((self._identities, identity))
        return pairs

    def open_streams(self, identity: str) -> int:
        usage = self._identities.usage.get(identity)
        return usage.streams if usage is not None else 0

    def open_stream(self, identity: str, peer: str) -> Callable[[], None]:
        """Count one more open stream; raise when the identity or peer holds its maximum.
        Returns the function that closes it (call it exactly once)."""
        pairs = self._counters(identity, peer)
        for counter, key in pairs:
            if counter._get(key).streams >= counter.max_streams:
                counter._forget(key)
                self.refused_streams += 1
                who = "client identity" if counter is self._identities else "peer address"
                raise ResourceExhaustedError(
                    f"this {who} already holds {counter.max_streams} streams, its limit"
                )
        for counter, key in pairs:
            counter._get(key).streams += 1

        def release() -> None:
            for counter, key in pairs:
                counter._get(key).streams -= 1
                counter._forget(key)

        return release

    @asynccontextmanager
    async def admit(self, identity: str, peer: str, size_bytes: int) -> AsyncIterator[None]:
        """Hold one in-flight message of ``size_bytes``; wait while the caller is over."""
        pairs = self._counters(identity, peer)
        woken_by: tuple[_Counter, str] | None = None
        while True:
            blocked = next(((c, k) for c, k in pairs if not c.fits(k, size_bytes)), None)
            if blocked is None:
                break
            counter, key = blocked
            if woken_by is None:
                self.waited["identity" if counter is self._identities else "peer"] += 1
            elif woken_by != blocked:
                # Woken for a slot this message cannot use after all (another of its limits is
                # full now): the next message waiting for that slot gets it instead.
                woken_by[0].wake(woken_by[1])
            waiter = _Waiter(asyncio.get_running_loop().create_future(), size_bytes)
            queue = counter.waiters.setdefault(key, deque())
            if woken_by == blocked:
                queue.appendleft(waiter)  # it keeps its place: it was first in line
            else:
                queue.append(waiter)
            counter._get(key).waiting += 1
            try:
                await waiter.future
            except asyncio.CancelledError:
                if not waiter.future.cancelled():
                    counter.wake(key)  # woken, then cancelled before it ran: pass the slot on
                raise
            finally:
                counter._get(key).waiting -= 1
                counter._forget(key)
            woken_by = blocked
        # No await between the last check and these increments: the event loop is one thread.
        for counter, key in pairs:
            usage = counter._get(key)
            usage.inflight += 1
            usage.inflight_bytes += size_bytes
        for counter, key in pairs:
            counter.wake(key)  # the next in line may fit beside this one
        try:
            yield
        finally:
            for counter, key in pairs:
                usage = counter._get(key)
                usage.inflight -= 1
                usage.inflight_bytes -= size_bytes
                counter.wake(key)
                counter._forget(key)
