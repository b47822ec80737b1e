"""Fold samples into windows, and windows into attestation bodies.

    windower = Windower(WindowSettings(window_ns=60 * NS_PER_S, sample_interval_ms=1000))
    for window in windower.add(sampler.poll(now_ns)):      # a window closes when a poll passes it
        body = build_body(window, context, seq, prev_digest, nonce)

**Alignment.** Windows are ``[k*W, (k+1)*W)`` in wall-clock (or recording) time. The first window
after a start is partial: it opens at the first poll and ends at the next multiple of W (or the
one after, if fewer than one sample interval or 100 ms would be left). A sample belongs to the
window that contains its timestamp. If whole windows pass without a poll (a suspended host, a
forward clock jump), the next window carries a CLOCK_JUMP event whose gap covers them; a poll
stamped before the end of the last closed window (the clock went back) is dropped and noted once.

**Arithmetic** (integers throughout; see docs/agent.md for a worked example):

- ``busy_ms`` = ceil(sum(utilization_pct x interval_ms) / 100) over the window's samples. Rounding
  up means the upper bound never loses a fraction of a millisecond of busy time.
- ``tensor_active_ms`` and ``sm_active_ms`` = ceil(sum(ppm x interval_ms) / 10^6), likewise.
- Each of these is at most the window plus one sample interval (what a verifier accepts). Only a
  replay, whose samples are credited up to 1.5 x its cadence, can reach that cap: the first sample
  of a window may be credited time since a poll in the window before.
- Energy is read at the window's edges: ``energy_start_mj`` is the window's first counter reading,
  ``energy_end_mj`` the reading of the poll that closed the window (the next window's first one),
  or the window's last reading where no later poll exists (shutdown, GPU lost, end of a replay).
  Consecutive windows thus tile the counter: no energy falls between two windows. A reading lower
  than the one before it marks the window RESET and adds a DRIVER_RELOAD event.
- ``mean_power_mw`` = sum of power samples // their number (integer division).

**Metric status** per GPU and window: SUPPORTED when every attempt read the metric, NOT_SUPPORTED
when no attempt did and every failure was "not supported", ERROR otherwise (``error_count`` and the
last error name say more). A metric read in a way other than a plain NVML read says how in
``last_error`` of a SUPPORTED status (replay: "integrated from power.draw").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pausewatch.v1 import attestation_pb2 as pb

from agent.clock import NS_PER_MS, align_down, align_up
from agent.sampler.base import (
    METRIC_FLAGS,
    Backend,
    EventKind,
    GpuIdentity,
    GpuReading,
    Metric,
    MetricFailure,
    MigMode,
    Poll,
    SamplerEvent,
)
from attest.attestation import FORMAT_VERSION, MAX_EVENTS, bounds_to_proto, window_compute
from attest.ids import NodeId
from attest.samples import Sample, SampleFlags, samples_root

log = logging.getLogger(__name__)

MIN_WINDOW_NS = 100_000_000
"""The shortest window a verifier accepts (docs/wire-format.md section 3)."""
MAX_EVENT_DETAIL = 200
MAX_ERROR_NAME = 64
MAX_WINDOW_EVENTS = MAX_EVENTS - 16
"""Sampler events kept per window; the rest of MAX_EVENTS is left for the daemon's own events."""

_BACKEND_PB = {
    Backend.NVML: pb.SAMPLER_BACKEND_NVML,
    Backend.SIM: pb.SAMPLER_BACKEND_SIM,
    Backend.REPLAY: pb.SAMPLER_BACKEND_REPLAY,
}
_METRIC_PB = {metric: pb.Metric.Value("METRIC_" + metric.name) for metric in Metric}
_EVENT_PB = {kind: pb.EventKind.Value("EVENT_KIND_" + kind.name) for kind in EventKind}
_MIG_PB = {mode: pb.MigMode.Value("MIG_MODE_" + mode.name) for mode in MigMode}


@dataclass(frozen=True, slots=True)
class WindowSettings:
    """Window length and sampling interval.

    ``cadence_ns`` is a replay's measured cadence, exactly (the interval is that in whole ms,
    rounded down): a window then expects floor(length / cadence) samples, the polls the recording
    holds for that time, so a complete recording is never short of samples by rounding.
    """

    window_ns: int
    sample_interval_ms: int
    cadence_ns: int = 0

    def __post_init__(self) -> None:
        if self.window_ns < MIN_WINDOW_NS:
            raise ValueError(f"window_ns {self.window_ns} is below {MIN_WINDOW_NS}")
        if self.sample_interval_ms <= 0:
            raise ValueError("sample_interval_ms must be positive")

    @property
    def sample_interval_ns(self) -> int:
        return self.sample_interval_ms * NS_PER_MS


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A window's measurements, ready to become a body once it has a place in the chain."""

    start_ns: int
    end_ns: int
    gpus: tuple[pb.GpuWindow, ...] = field(repr=False)
    events: tuple[SamplerEvent, ...]
    samples: tuple[Sample, ...] = field(repr=False)
    """Every raw sample of the window, in (timestamp_ns, gpu_index) order."""
    driver_version: str = ""
    nvml_version: str = ""

    @property
    def samples_root(self) -> bytes:
        return samples_root(self.samples)


@dataclass(frozen=True, slots=True)
class BodyContext:
    """What every body of this agent run carries besides the window itself."""

    lab_id: str
    node_id: NodeId
    boot_id: str
    agent_version: str
    agent_digest: bytes
    backend: Backend
    sample_interval_ms: int


def event_to_proto(event: SamplerEvent) -> pb.SamplerEvent:
    return pb.SamplerEvent(
        kind=_EVENT_PB[event.kind],
        observed_at_ns=event.observed_at_ns,
        gpu_uuid=event.gpu_uuid,
        detail=event.detail[:MAX_EVENT_DETAIL],
        gap_start_ns=event.gap_start_ns,
        gap_end_ns=event.gap_end_ns,
    )


def build_body(
    window: ClosedWindow,
    context: BodyContext,
    *,
    seq: int,
    prev_digest: bytes,
    verifier_nonce: bytes,
    extra_events: tuple[SamplerEvent, ...] = (),
) -> pb.AttestationBody:
    """The attestation body for ``window`` at position ``seq`` of the chain.

    ``extra_events`` are the daemon's own (AGENT_START, SPOOL_FULL); they come first.
    """
    body = pb.AttestationBody(
        format_version=FORMAT_VERSION,
        lab_id=context.lab_id,
        node_id=context.node_id,
        boot_id=context.boot_id,
        agent_version=context.agent_version,
        agent_digest=context.agent_digest,
        seq=seq,
        prev_digest=prev_digest,
        window_start_ns=window.start_ns,
        window_end_ns=window.end_ns,
        verifier_nonce=verifier_nonce,
        sample_interval_ms=context.sample_interval_ms,
        sampler_backend=_BACKEND_PB[context.backend],
        driver_version=window.driver_version[:64],
        nvml_version=window.nvml_version[:64],
        samples_merkle_root=window.samples_root,
        samples_count=len(window.samples),
    )
    body.gpus.extend(window.gpus)
    events = list(extra_events) + list(window.events)
    body.events.extend(event_to_proto(event) for event in events[:MAX_EVENTS])
    return body


class _MetricTally:
    __slots__ = ("failures", "last_error", "not_supported_only", "note", "reads")

    def __init__(self) -> None:
        self.reads = 0
        self.failures = 0
        self.last_error = ""
        self.note = ""
        self.not_supported_only = True

    def state(self) -> int:
        if self.failures == 0:
            return pb.METRIC_STATE_SUPPORTED
        if self.reads == 0 and self.not_supported_only:
            return pb.METRIC_STATE_NOT_SUPPORTED
        return pb.METRIC_STATE_ERROR


class _GpuAccumulator:
    """One GPU over one window."""

    __slots__ = (
        "busy_pct_ms",
        "energy_end",
        "energy_first",
        "energy_last",
        "energy_reset",
        "identity",
        "lost",
        "max_memory",
        "max_power",
        "max_processes",
        "power_count",
        "power_sum",
        "samples_taken",
        "sm_ppm_ms",
        "tallies",
        "tensor_ppm_ms",
    )

    def __init__(self, identity: GpuIdentity) -> None:
        self.identity = identity
        self.busy_pct_ms = 0
        self.tensor_ppm_ms = 0
        self.sm_ppm_ms = 0
        self.samples_taken = 0
        self.energy_first: int | None = None
        self.energy_last: int | None = None
        self.energy_end: int | None = None
        self.energy_reset: tuple[int, int, int] | None = None  # (from_mj, to_mj, at_ns)
        self.power_sum = 0
        self.power_count = 0
        self.max_power = 0
        self.max_memory = 0
        self.max_processes = 0
        self.lost = False
        self.tallies: dict[Metric, _MetricTally] = {}

    def _tally(self, metric: Metric) -> _MetricTally:
        tally = self.tallies.get(metric)
        if tally is None:
            tally = self.tallies[metric] = _MetricTally()
        return tally

    def add(self, reading: GpuReading) -> None:
        self.identity = reading.identity
        if reading.lost:
            self.lost = True
        for failure in reading.failures:
            self._fail(failure)
        for metric, note in reading.notes:
            self._tally(metric).note = note[:MAX_ERROR_NAME]
        sample = reading.sample
        if sample is None:
            return
        flags = sample.flags
        for metric, flag in METRIC_FLAGS.items():
            if flags & flag:
                self._tally(metric).reads += 1
        interval = sample.interval_ms
        if flags & SampleFlags.UTILIZATION:
            self.samples_taken += 1
            self.busy_pct_ms += sample.utilization_pct * interval
        if flags & SampleFlags.TENSOR_ACTIVE:
            self.tensor_ppm_ms += sample.tensor_active_ppm * interval
        if flags & SampleFlags.SM_ACTIVE:
            self.sm_ppm_ms += sample.sm_active_ppm * interval
        if flags & SampleFlags.ENERGY:
            self._energy(sample.energy_mj, sample.timestamp_ns)
        if flags & SampleFlags.POWER:
            self.power_sum += sample.power_mw
            self.power_count += 1
            self.max_power = max(self.max_power, sample.power_mw)
        if flags & SampleFlags.MEMORY_USED:
            self.max_memory = max(self.max_memory, sample.memory_used_bytes)
        if flags & SampleFlags.COMPUTE_PROCESSES:
            self.max_processes = max(self.max_processes, sample.compute_processes)

    def _fail(self, failure: MetricFailure) -> None:
        tally = self._tally(failure.metric)
        tally.failures += 1
        tally.last_error = failure.error_name[:MAX_ERROR_NAME]
        if not failure.not_supported:
            tally.not_supported_only = False

    def _energy(self, energy_mj: int, timestamp_ns: int) -> None:
        if self.energy_first is None:
            self.energy_first = energy_mj
        elif self.energy_last is not None and energy_mj < self.energy_last:
            self.energy_reset = (self.energy_last, energy_mj, timestamp_ns)
        self.energy_last = energy_mj

    def close_edge(self, reading: GpuReading | None) -> None:
        """Take the end-edge energy reading from the poll that closed the window, if it has one."""
        if reading is None or reading.sample is None:
            return
        sample = reading.sample
        if not sample.flags & SampleFlags.ENERGY or self.energy_last is None:
            return
        if sample.energy_mj < self.energy_last:
            self.energy_reset = (self.energy_last, sample.energy_mj, sample.timestamp_ns)
        else:
            self.energy_end = sample.energy_mj

    def to_proto(self, samples_expected: int, appeared: bool, limit_ms: int) -> pb.GpuWindow:
        ident = self.identity
        energy_tally = self.tallies.get(Metric.ENERGY)
        start = self.energy_first or 0
        end = self.energy_end if self.energy_end is not None else (self.energy_last or 0)
        if self.energy_reset is not None:
            energy_state = pb.ENERGY_COUNTER_STATE_RESET
        elif self.energy_first is not None:
            energy_state = pb.ENERGY_COUNTER_STATE_OK
        elif energy_tally is not None and energy_tally.state() == pb.METRIC_STATE_NOT_SUPPORTED:
            energy_state = pb.ENERGY_COUNTER_STATE_NOT_SUPPORTED
        else:
            energy_state = pb.ENERGY_COUNTER_STATE_ERROR
        if self.lost:
            presence = pb.GPU_PRESENCE_LOST
        elif appeared:
            presence = pb.GPU_PRESENCE_APPEARED
        else:
            presence = pb.GPU_PRESENCE_PRESENT
        gpu = pb.GpuWindow(
            index=ident.index,
            uuid=ident.uuid,
            serial=ident.serial,
            board_part_number=ident.board_part_number,
            pci_bus_id=ident.pci_bus_id,
            model=ident.model,
            mig_mode=_MIG_PB[ident.mig_mode],
            presence=presence,
            samples_expected=max(samples_expected, self.samples_taken),
            samples_taken=self.samples_taken,
            busy_ms=min(limit_ms, _ceil_div(self.busy_pct_ms, 100)),
            energy_start_mj=start,
            energy_end_mj=end,
            energy_counter_state=energy_state,
            max_power_mw=self.max_power,
            mean_power_mw=self.power_sum // self.power_count if self.power_count else 0,
            tensor_active_ms=min(limit_ms, _ceil_div(self.tensor_ppm_ms, 1_000_000)),
            sm_active_ms=min(limit_ms, _ceil_div(self.sm_ppm_ms, 1_000_000)),
            max_memory_used_bytes=self.max_memory,
            max_compute_processes=self.max_processes,
        )
        for metric in Metric:  # a stable order: the enum's
            tally = self.tallies.get(metric)
            if tally is not None:
                gpu.metric_status.add(
                    metric=_METRIC_PB[metric],
                    state=tally.state(),
                    error_count=tally.failures,
                    last_error=tally.last_error or tally.note,
                )
        gpu.bounds.CopyFrom(bounds_to_proto(window_compute(gpu)))
        return gpu


class _OpenWindow:
    __slots__ = (
        "driver_version",
        "end_ns",
        "events",
        "gpus",
        "nvml_version",
        "samples",
        "start_ns",
    )

    def __init__(self, start_ns: int, end_ns: int) -> None:
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.gpus: dict[str, _GpuAccumulator] = {}
        self.events: dict[tuple[EventKind, str, str], SamplerEvent] = {}
        self.samples: list[Sample] = []
        self.driver_version = ""
        self.nvml_version = ""

    def add_event(self, event: SamplerEvent) -> None:
        key = (event.kind, event.gpu_uuid, event.detail)
        if key not in self.events and len(self.events) < MAX_WINDOW_EVENTS:
            self.events[key] = event
        elif key not in self.events:
            log.warning("event dropped: window event limit reached kind=%s", event.kind.value)

    def add(self, poll: Poll) -> None:
        if poll.driver_version:
            self.driver_version = poll.driver_version
        if poll.nvml_version:
            self.nvml_version = poll.nvml_version
        for event in poll.events:
            self.add_event(event)
        for reading in poll.readings:
            uuid = reading.identity.uuid
            acc = self.gpus.get(uuid)
            if acc is None:
                acc = self.gpus[uuid] = _GpuAccumulator(reading.identity)
            acc.add(reading)
            if reading.sample is not None:
                self.samples.append(reading.sample)

    def close(self, settings: WindowSettings, closing: Poll | None) -> ClosedWindow:
        closing_by_uuid = (
            {r.identity.uuid: r for r in closing.readings} if closing is not None else {}
        )
        appeared = {e.gpu_uuid for e in self.events.values() if e.kind is EventKind.GPU_APPEARED}
        if settings.cadence_ns:
            expected = max(1, (self.end_ns - self.start_ns) // settings.cadence_ns)
        else:
            expected = _ceil_div(self.end_ns - self.start_ns, settings.sample_interval_ns)
        limit_ms = (self.end_ns - self.start_ns) // NS_PER_MS + settings.sample_interval_ms
        gpus: list[pb.GpuWindow] = []
        for uuid, acc in self.gpus.items():
            acc.close_edge(closing_by_uuid.get(uuid))
            if acc.energy_reset is not None:
                before, after, at_ns = acc.energy_reset
                self.add_event(
                    SamplerEvent(
                        kind=EventKind.DRIVER_RELOAD,
                        observed_at_ns=at_ns,
                        gpu_uuid=uuid,
                        detail=f"energy counter dropped from {before} mJ to {after} mJ",
                    )
                )
            gpus.append(acc.to_proto(expected, uuid in appeared, limit_ms))
        gpus.sort(key=lambda g: (g.index, g.uuid))
        _dedupe_indices(gpus)
        self.samples.sort(key=lambda s: (s.timestamp_ns, s.gpu_index))
        return ClosedWindow(
            start_ns=self.start_ns,
            end_ns=self.end_ns,
            gpus=tuple(gpus),
            events=tuple(self.events.values()),
            samples=tuple(self.samples),
            driver_version=self.driver_version,
            nvml_version=self.nvml_version,
        )


def _dedupe_indices(gpus: list[pb.GpuWindow]) -> None:
    """Two GPUs with one index in a window (a lost GPU's index reused after re-enumeration) would
    make the body invalid; give the later one the next free index and say so in the log."""
    used: set[int] = set()
    for gpu in gpus:
        if gpu.index in used:
            new_index = max(used | {g.index for g in gpus}) + 1
            log.warning("gpu index reused in one window uuid=%s index=%d", gpu.uuid, gpu.index)
            gpu.index = new_index
        used.add(gpu.index)


class Windower:
    """Turns a stream of polls into closed windows.

    ``not_before_ns`` is the end of the last window already in the chain (after a restart):
    nothing earlier may be attested again.
    """

    def __init__(self, settings: WindowSettings, *, not_before_ns: int = 0) -> None:
        self._settings = settings
        self._not_before_ns = not_before_ns
        self._open: _OpenWindow | None = None
        self._pending_events: list[SamplerEvent] = []
        self._reported_backwards = False

    @property
    def open_start_ns(self) -> int | None:
        """Start of the window being filled, if any."""
        return None if self._open is None else self._open.start_ns

    @property
    def open_end_ns(self) -> int | None:
        """End of the window being filled, if any."""
        return None if self._open is None else self._open.end_ns

    def add_event(self, event: SamplerEvent) -> None:
        """Record an event in the window being filled (or the next one to open)."""
        if self._open is None:
            self._pending_events.append(event)
        else:
            self._open.add_event(event)

    def add(self, poll: Poll) -> list[ClosedWindow]:
        """Add one poll; returns the window it closed, if it closed one."""
        ts = poll.timestamp_ns
        if ts < self._not_before_ns:
            if not self._reported_backwards:
                self._reported_backwards = True
                self.add_event(
                    SamplerEvent(
                        kind=EventKind.CLOCK_JUMP,
                        observed_at_ns=ts,
                        detail=(
                            f"clock is {(self._not_before_ns - ts) // NS_PER_MS} ms before the "
                            "last attested window end; samples dropped until it catches up"
                        ),
                    )
                )
            return []
        self._reported_backwards = False
        closed: list[ClosedWindow] = []
        window_ns = self._settings.window_ns
        if self._open is not None and ts >= self._open.end_ns:
            previous_end = self._open.end_ns
            closed.append(self._open.close(self._settings, poll))
            self._not_before_ns = previous_end
            if ts < previous_end + window_ns:
                self._open = _OpenWindow(previous_end, previous_end + window_ns)
            else:
                start = align_down(ts, window_ns)
                self._open = _OpenWindow(start, start + window_ns)
                self._open.add_event(
                    SamplerEvent(
                        kind=EventKind.CLOCK_JUMP,
                        observed_at_ns=ts,
                        detail="no samples for a whole window (clock jump or stalled agent)",
                        gap_start_ns=previous_end,
                        gap_end_ns=start,
                    )
                )
        if self._open is None:
            end = align_up(ts + 1, window_ns)
            if end - ts < max(MIN_WINDOW_NS, self._settings.sample_interval_ns):
                end += window_ns
            self._open = _OpenWindow(ts, end)
        for event in self._pending_events:
            self._open.add_event(event)
        self._pending_events.clear()
        self._open.add(poll)
        return closed

    def flush(self, end_ns: int) -> ClosedWindow | None:
        """Close the window being filled at ``end_ns`` (clamped to its aligned end), when stopping
        or at the end of a replay. None if no window is open or it would be too short to sign."""
        window = self._open
        if window is None:
            return None
        self._open = None
        last_ns = max((s.timestamp_ns for s in window.samples), default=window.start_ns)
        end = min(window.end_ns, max(end_ns, last_ns + 1))
        if end - window.start_ns < MIN_WINDOW_NS:
            log.info("partial window too short to sign start_ns=%d end_ns=%d", window.start_ns, end)
            return None
        window.end_ns = end
        self._not_before_ns = end
        return window.close(self._settings, None)


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)
