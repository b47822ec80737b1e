"""Fakes for the agent's injected boundaries: a clock tests drive by hand.

clock = FakeClock(start_ns=T0_NS)
clock.sleep(1_000_000_000)     # advances the fake time, returns at once
"""

from __future__ import annotations

import threading


class FakeClock:
    """A wall clock and a monotonic clock that move only when told (``sleep`` or ``advance``)."""

    def __init__(self, start_ns: int, *, monotonic_start_ns: int = 10**12) -> None:
        self._wall_ns = start_ns
        self._mono_ns = monotonic_start_ns
        self._lock = threading.Lock()
        self.sleeps: list[int] = []

    def time_ns(self) -> int:
        with self._lock:
            return self._wall_ns

    def monotonic_ns(self) -> int:
        with self._lock:
            return self._mono_ns

    def sleep(self, duration_ns: int) -> None:
        self.sleeps.append(duration_ns)
        if duration_ns > 0:
            self.advance(duration_ns)

    def advance(self, duration_ns: int) -> None:
        with self._lock:
            self._wall_ns += duration_ns
            self._mono_ns += duration_ns

    def jump_wall(self, delta_ns: int) -> None:
        """Move only the wall clock (an NTP step, a suspended VM)."""
        with self._lock:
            self._wall_ns += delta_ns
