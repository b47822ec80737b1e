"""The agent's view of time, behind a Protocol so tests can drive it with a fake clock.

    clock = SystemClock()
    now_ns = clock.time_ns()                 # wall clock: what windows and bodies are stamped with
    clock.sleep(250_000_000)                 # 250 ms, returns early if ``wake()`` is called

Windows are stamped with the wall clock (the verifier compares them with its own), while
``monotonic_ns`` lets the daemon notice when the wall clock jumps.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


class Clock(Protocol):
    """Where the agent gets the time and how it waits."""

    def time_ns(self) -> int:
        """Wall-clock time, ns since the Unix epoch."""
        ...

    def monotonic_ns(self) -> int:
        """A clock that never goes backwards, ns from an arbitrary origin."""
        ...

    def sleep(self, duration_ns: int) -> None:
        """Wait ``duration_ns`` (or less, if woken); a negative or zero duration returns at once."""
        ...


class SystemClock:
    """The real clock. ``sleep`` waits on an event so ``wake()`` (a stop signal) cuts it short."""

    def __init__(self) -> None:
        self._wake = threading.Event()

    def time_ns(self) -> int:
        return time.time_ns()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def sleep(self, duration_ns: int) -> None:
        if duration_ns > 0:
            self._wake.wait(duration_ns / NS_PER_S)

    def wake(self) -> None:
        """Make the current and every later ``sleep`` return at once (used when stopping)."""
        self._wake.set()


def align_down(timestamp_ns: int, period_ns: int) -> int:
    """The largest multiple of ``period_ns`` at or below ``timestamp_ns``."""
    return timestamp_ns - timestamp_ns % period_ns


def align_up(timestamp_ns: int, period_ns: int) -> int:
    """The smallest multiple of ``period_ns`` at or above ``timestamp_ns``."""
    return -(-timestamp_ns // period_ns) * period_ns
