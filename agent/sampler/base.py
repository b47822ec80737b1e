"""What every sampler backend produces: GPU identities, per-poll readings, and events.

    sampler.open()
    poll = sampler.poll(now_ns)            # one reading per GPU, plus anything that happened
    for reading in poll.readings:
        reading.sample.utilization_pct     # meaningful only if SampleFlags.UTILIZATION is set
        reading.failures                   # metrics tried and not read (NotSupported, errors)

A metric is *attempted* when it is either read (its flag is set in the sample) or listed among the
failures; anything else was not attempted. A GPU that stops answering gives a reading with
``lost=True`` and no sample. A poll with no readings and a node-level event (LIBRARY_NOT_FOUND,
LIBRARY_MISMATCH, NVML_ERROR) means the node is alive but blind.

Sample intervals: every sample carries the time since the previous sample of the same GPU, capped
at the configured interval (the first sample of a GPU gets the configured interval). A late sample
thus never stretches one reading over time it did not observe; the missing time shows as
``samples_taken`` below ``samples_expected``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from attest.samples import Sample, SampleFlags

NS_PER_MS = 1_000_000


class Backend(StrEnum):
    """Which sampler produced the measurements (the body's ``sampler_backend``)."""

    NVML = "nvml"
    SIM = "sim"
    REPLAY = "replay"


class Metric(StrEnum):
    """The metrics a sampler tries to read on every GPU (the proto's ``Metric``)."""

    UTILIZATION = "utilization"
    ENERGY = "energy"
    POWER = "power"
    MEMORY_USED = "memory_used"
    COMPUTE_PROCESSES = "compute_processes"
    GPM_TENSOR_ACTIVE = "gpm_tensor_active"
    GPM_SM_ACTIVE = "gpm_sm_active"


METRIC_FLAGS: dict[Metric, SampleFlags] = {
    Metric.UTILIZATION: SampleFlags.UTILIZATION,
    Metric.ENERGY: SampleFlags.ENERGY,
    Metric.POWER: SampleFlags.POWER,
    Metric.MEMORY_USED: SampleFlags.MEMORY_USED,
    Metric.COMPUTE_PROCESSES: SampleFlags.COMPUTE_PROCESSES,
    Metric.GPM_TENSOR_ACTIVE: SampleFlags.TENSOR_ACTIVE,
    Metric.GPM_SM_ACTIVE: SampleFlags.SM_ACTIVE,
}
"""The sample flag that says a metric was read."""


class MigMode(StrEnum):
    """MIG mode of a device (the proto's ``MigMode``)."""

    UNSPECIFIED = "unspecified"
    DISABLED = "disabled"
    ENABLED = "enabled"
    NOT_SUPPORTED = "not_supported"


class EventKind(StrEnum):
    """Something a reader of the evidence must know (the proto's ``EventKind``)."""

    DRIVER_RELOAD = "driver_reload"
    GPU_LOST = "gpu_lost"
    GPU_APPEARED = "gpu_appeared"
    LIBRARY_MISMATCH = "library_mismatch"
    LIBRARY_NOT_FOUND = "library_not_found"
    NVML_ERROR = "nvml_error"
    SPOOL_FULL = "spool_full"
    AGENT_START = "agent_start"
    CLOCK_JUMP = "clock_jump"


NODE_BLIND_EVENTS = frozenset(
    {EventKind.LIBRARY_MISMATCH, EventKind.LIBRARY_NOT_FOUND, EventKind.NVML_ERROR}
)
"""Event kinds that, on a poll without readings, mean the node could not be measured."""


@dataclass(frozen=True, slots=True)
class GpuIdentity:
    """Who a GPU is, as the sampler reports it."""

    index: int
    uuid: str
    model: str
    serial: str = ""
    board_part_number: str = ""
    pci_bus_id: str = ""
    mig_mode: MigMode = MigMode.UNSPECIFIED


@dataclass(frozen=True, slots=True)
class MetricFailure:
    """A metric that was tried and not read in one poll."""

    metric: Metric
    error_name: str
    """The NVML error name (``NVML_ERROR_NOT_SUPPORTED``) or, for replay, what was in the cell."""
    not_supported: bool
    """True when the GPU or driver does not offer the metric (as opposed to a failed read)."""


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One poll of one GPU."""

    identity: GpuIdentity
    sample: Sample | None
    """None when the GPU could not be read at all (lost)."""
    failures: tuple[MetricFailure, ...] = ()
    lost: bool = False
    notes: tuple[tuple[Metric, str], ...] = ()
    """How a metric that was read was obtained, where that is not a plain NVML read (for example
    replay's energy integrated from power.draw); it goes into MetricStatus.last_error."""


@dataclass(frozen=True, slots=True)
class SamplerEvent:
    """An event for the body's ``events`` list. Details never hold secrets."""

    kind: EventKind
    observed_at_ns: int
    gpu_uuid: str = ""
    detail: str = ""
    gap_start_ns: int = 0
    gap_end_ns: int = 0


@dataclass(frozen=True, slots=True)
class Poll:
    """Everything one sampling instant produced."""

    timestamp_ns: int
    readings: tuple[GpuReading, ...]
    events: tuple[SamplerEvent, ...] = ()
    driver_version: str = ""
    nvml_version: str = ""


class Sampler(Protocol):
    """A source of GPU readings. ``poll`` never raises for GPU or driver trouble: it records it."""

    @property
    def backend(self) -> Backend:
        """Which backend this is."""
        ...

    @property
    def sample_interval_ms(self) -> int:
        """The interval samples are taken at (and that caps each sample's interval)."""
        ...

    @property
    def realtime(self) -> bool:
        """True if polls follow the clock (the daemon sleeps between them); False for an offline
        replay, whose polls carry the recording's timestamps and run back to back."""
        ...

    def open(self, now_ns: int | None = None) -> None:
        """Prepare to sample (load the library, start the scenario or recording at ``now_ns``)."""
        ...

    def inventory(self) -> tuple[GpuIdentity, ...]:
        """The GPUs currently known, for enrolment and ``status``."""
        ...

    def poll(self, now_ns: int) -> Poll | None:
        """Read every GPU at ``now_ns``; None when the source is exhausted (end of a replay)."""
        ...

    def close(self) -> None:
        """Release what ``open`` took."""
        ...


class IntervalTracker:
    """Per-GPU sample intervals: time since the GPU's previous sample, capped at the configured
    interval (or at ``credit_cap_ms``: replay credits its measured cadence up to a bound); the
    configured interval for a GPU's first sample."""

    __slots__ = ("_cap_ms", "_interval_ms", "_last_ns")

    def __init__(self, sample_interval_ms: int, *, credit_cap_ms: int | None = None) -> None:
        self._interval_ms = sample_interval_ms
        self._cap_ms = sample_interval_ms if credit_cap_ms is None else credit_cap_ms
        self._last_ns: dict[str, int] = {}

    def interval_ms(self, gpu_uuid: str, timestamp_ns: int) -> int:
        """The interval of a sample of ``gpu_uuid`` taken at ``timestamp_ns`` (and remember it)."""
        last = self._last_ns.get(gpu_uuid)
        self._last_ns[gpu_uuid] = timestamp_ns
        if last is None:
            return self._interval_ms
        elapsed_ms = max(0, (timestamp_ns - last) // NS_PER_MS)
        return min(elapsed_ms, self._cap_ms)

    def forget(self, gpu_uuid: str) -> None:
        """Treat the GPU's next sample as its first (after it was lost, or after a reload)."""
        self._last_ns.pop(gpu_uuid, None)
