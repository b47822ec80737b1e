"""Fakes for the agent's injected boundaries: a clock tests drive by hand, and what a sampler's
poll returns for one GPU.

clock = FakeClock(start_ns=T0_NS)
clock.sleep(1_000_000_000)     # advances the fake time, returns at once
gpu_reading(gpu, T0_NS)        # read, 50 % busy; gpu_reading(gpu, T0_NS, lost=True): lost
"""

from __future__ import annotations

import threading

from agent.sampler.base import GpuIdentity, GpuReading
from attest.samples import Sample, SampleFlags


def gpu_reading(
    gpu: GpuIdentity, timestamp_ns: int, *, lost: bool = False, utilization_pct: int = 50
) -> GpuReading:
    """One GPU's reading in a poll: a utilisation sample, or lost (no sample)."""
    if lost:
        return GpuReading(identity=gpu, sample=None, lost=True)
    sample = Sample(
        gpu_index=gpu.index,
        timestamp_ns=timestamp_ns,
        interval_ms=1000,
        flags=SampleFlags.UTILIZATION,
        utilization_pct=utilization_pct,
        energy_mj=0,
        power_mw=0,
        memory_used_bytes=0,
    )
    return GpuReading(identity=gpu, sample=sample)


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
