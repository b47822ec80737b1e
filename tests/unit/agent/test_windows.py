"""Folding polls into windows and windows into attestation bodies."""

from __future__ import annotations

import hashlib

import pytest
from pausewatch.v1 import attestation_pb2 as pb

from agent.sampler.base import (
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
from agent.windows import BodyContext, Windower, WindowSettings, build_body
from attest.attestation import validate_body
from attest.ids import ZERO_DIGEST, NodeId
from attest.samples import Sample, SampleFlags, samples_root
from tests.builders import T0_NS

S = 1_000_000_000
MS = 1_000_000
ALL = (
    SampleFlags.UTILIZATION
    | SampleFlags.ENERGY
    | SampleFlags.POWER
    | SampleFlags.MEMORY_USED
    | SampleFlags.COMPUTE_PROCESSES
)
GPU0 = GpuIdentity(index=0, uuid="GPU-0", model="NVIDIA H100 80GB HBM3", mig_mode=MigMode.DISABLED)
GPU1 = GpuIdentity(index=1, uuid="GPU-1", model="NVIDIA H100 80GB HBM3", mig_mode=MigMode.DISABLED)
NODE = NodeId(hashlib.sha256(b"node").digest())
CONTEXT = BodyContext(
    lab_id="lab-a",
    node_id=NODE,
    boot_id="boot",
    agent_version="0.1.0",
    agent_digest=hashlib.sha256(b"agent").digest(),
    backend=Backend.SIM,
    sample_interval_ms=1000,
)


def reading(
    identity: GpuIdentity,
    t_ns: int,
    *,
    util: int = 50,
    energy_mj: int = 0,
    power_mw: int = 300_000,
    flags: SampleFlags = ALL,
    failures: tuple[MetricFailure, ...] = (),
    interval_ms: int = 1000,
) -> GpuReading:
    sample = Sample(
        gpu_index=identity.index,
        timestamp_ns=t_ns,
        interval_ms=interval_ms,
        flags=flags,
        utilization_pct=util,
        energy_mj=energy_mj,
        power_mw=power_mw,
        memory_used_bytes=1 << 30,
        compute_processes=1,
    )
    return GpuReading(identity=identity, sample=sample, failures=failures)


def windower(window_s: int = 10) -> Windower:
    return Windower(WindowSettings(window_ns=window_s * S, sample_interval_ms=1000))


def test_windows_align_to_multiples_and_the_first_is_partial() -> None:
    w = windower(10)
    closed = []
    for second in range(3, 25):  # agent starts at T0 + 3 s
        t = T0_NS + second * S
        closed += w.add(Poll(t, (reading(GPU0, t, energy_mj=second * 100),)))
    assert [(c.start_ns - T0_NS, c.end_ns - T0_NS) for c in closed] == [
        (3 * S, 10 * S),
        (10 * S, 20 * S),
    ]
    first, second = closed
    g = first.gpus[0]
    assert (g.samples_expected, g.samples_taken) == (7, 7)
    assert g.busy_ms == 7 * 500
    # Energy edges: the first reading (3 s) and the reading that closed the window (10 s).
    assert (g.energy_start_mj, g.energy_end_mj) == (300, 1000)
    assert second.gpus[0].energy_start_mj == 1000  # windows tile the counter
    assert second.gpus[0].energy_end_mj == 2000


def test_a_start_just_before_a_boundary_extends_the_first_window() -> None:
    w = windower(10)
    t = T0_NS + 9 * S + 950 * MS
    assert w.add(Poll(t, (reading(GPU0, t),))) == []
    assert w.open_end_ns == T0_NS + 20 * S


def test_busy_time_rounds_up_and_samples_root_covers_every_sample() -> None:
    w = windower(10)
    polls = []
    for i, (util, interval) in enumerate([(33, 1000), (1, 999), (7, 3)]):
        t = T0_NS + i * S
        polls.append(Poll(t, (reading(GPU0, t, util=util, interval_ms=interval), reading(GPU1, t))))
        w.add(polls[-1])
    window = w.flush(T0_NS + 3 * S)
    assert window is not None
    # (33 x 1000 + 1 x 999 + 7 x 3) / 100 = 340.2 -> 341
    assert window.gpus[0].busy_ms == 341
    expected = sorted(
        (r.sample for p in polls for r in p.readings if r.sample),
        key=lambda s: (s.timestamp_ns, s.gpu_index),
    )
    assert list(window.samples) == expected
    assert window.samples_root == samples_root(expected)


def test_energy_drop_is_a_reset_with_a_driver_reload_event() -> None:
    w = windower(10)
    energies = [5000, 6000, 7000, 100, 200]
    for i, energy in enumerate(energies):
        t = T0_NS + i * S
        w.add(Poll(t, (reading(GPU0, t, energy_mj=energy),)))
    window = w.flush(T0_NS + 5 * S)
    assert window is not None
    assert window.gpus[0].energy_counter_state == pb.ENERGY_COUNTER_STATE_RESET
    assert window.gpus[0].bounds.energy_method == pb.ENERGY_METHOD_UNAVAILABLE
    reloads = [e for e in window.events if e.kind is EventKind.DRIVER_RELOAD]
    assert len(reloads) == 1
    assert "7000 mJ to 100 mJ" in reloads[0].detail


def test_energy_drop_at_the_boundary_resets_the_closing_window() -> None:
    w = windower(10)
    closed = []
    for i, energy in enumerate([100, 200, 300, 5, 6]):
        t = T0_NS + (8 + i) * S
        closed += w.add(Poll(t, (reading(GPU0, t, energy_mj=energy),)))
    # Window [0, 10) is closed by the reading at 10 s (energy 300 -> fine); [10, 20) has 300, 5.
    window = w.flush(T0_NS + 13 * S)
    assert closed[0].gpus[0].energy_counter_state == pb.ENERGY_COUNTER_STATE_OK
    assert window is not None
    assert window.gpus[0].energy_counter_state == pb.ENERGY_COUNTER_STATE_RESET


def test_metric_status_supported_not_supported_and_error() -> None:
    w = windower(10)
    ns = MetricFailure(Metric.GPM_TENSOR_ACTIVE, "NVML_ERROR_NOT_SUPPORTED", not_supported=True)
    bad = MetricFailure(Metric.POWER, "NVML_ERROR_UNKNOWN", not_supported=False)
    for i in range(3):
        t = T0_NS + i * S
        failures = (ns, bad) if i == 1 else (ns,)
        flags = ALL & ~SampleFlags.POWER if i == 1 else ALL
        w.add(Poll(t, (reading(GPU0, t, failures=failures, flags=flags),)))
    window = w.flush(T0_NS + 3 * S)
    assert window is not None
    status = {s.metric: s for s in window.gpus[0].metric_status}
    assert status[pb.METRIC_UTILIZATION].state == pb.METRIC_STATE_SUPPORTED
    assert status[pb.METRIC_GPM_TENSOR_ACTIVE].state == pb.METRIC_STATE_NOT_SUPPORTED
    assert status[pb.METRIC_GPM_TENSOR_ACTIVE].error_count == 3
    assert status[pb.METRIC_POWER].state == pb.METRIC_STATE_ERROR
    assert status[pb.METRIC_POWER].error_count == 1
    assert status[pb.METRIC_POWER].last_error == "NVML_ERROR_UNKNOWN"
    assert pb.METRIC_GPM_SM_ACTIVE not in status  # never attempted
    # No GPM: the central estimate falls back to the assumed utilisation.
    bounds = window.gpus[0].bounds
    assert bounds.central_estimate_method == pb.CENTRAL_ESTIMATE_METHOD_ASSUMED_UTILIZATION


def test_tensor_active_time_drives_the_central_estimate() -> None:
    w = windower(10)
    flags = ALL | SampleFlags.TENSOR_ACTIVE | SampleFlags.SM_ACTIVE
    for i in range(4):
        t = T0_NS + i * S
        sample = Sample(
            gpu_index=0,
            timestamp_ns=t,
            interval_ms=1000,
            flags=flags,
            utilization_pct=100,
            tensor_active_ppm=600_000,
            sm_active_ppm=900_000,
        )
        w.add(Poll(t, (GpuReading(identity=GPU0, sample=sample),)))
    window = w.flush(T0_NS + 4 * S)
    assert window is not None
    gpu = window.gpus[0]
    assert (gpu.tensor_active_ms, gpu.sm_active_ms, gpu.busy_ms) == (2400, 3600, 4000)
    assert gpu.bounds.central_estimate_method == pb.CENTRAL_ESTIMATE_METHOD_TENSOR_ACTIVE
    assert gpu.bounds.upper_bound_flop >= gpu.bounds.central_estimate_flop


def test_lost_gpu_is_listed_as_lost_and_others_go_on() -> None:
    w = windower(10)
    for i in range(4):
        t = T0_NS + i * S
        lost = i >= 2
        readings = (
            GpuReading(identity=GPU0, sample=None, lost=True) if lost else reading(GPU0, t),
            reading(GPU1, t),
        )
        events = (SamplerEvent(EventKind.GPU_LOST, t, "GPU-0", "NVML_ERROR_GPU_IS_LOST"),)
        w.add(Poll(t, readings, events=events if i == 2 else ()))
    window = w.flush(T0_NS + 4 * S)
    assert window is not None
    g0, g1 = window.gpus
    assert g0.presence == pb.GPU_PRESENCE_LOST
    assert g0.samples_taken == 2
    assert g1.presence == pb.GPU_PRESENCE_PRESENT
    assert g1.samples_taken == 4
    assert [e.kind for e in window.events] == [EventKind.GPU_LOST]


def test_a_blind_node_gives_a_window_with_no_gpus_and_the_event() -> None:
    w = windower(10)
    for i in range(3):
        t = T0_NS + i * S
        event = SamplerEvent(EventKind.LIBRARY_NOT_FOUND, t, detail="NVML_ERROR_LIBRARY_NOT_FOUND")
        w.add(Poll(t, (), events=(event,)))
    window = w.flush(T0_NS + 3 * S)
    assert window is not None
    assert window.gpus == ()
    assert len(window.events) == 1  # the same event on every poll is kept once per window
    body = build_body(window, CONTEXT, seq=0, prev_digest=ZERO_DIGEST, verifier_nonce=b"")
    validate_body(body, NODE)
    assert body.events[0].kind == pb.EVENT_KIND_LIBRARY_NOT_FOUND


def test_whole_windows_without_polls_are_a_clock_jump_gap() -> None:
    w = windower(10)
    t = T0_NS + 5 * S
    w.add(Poll(t, (reading(GPU0, t),)))
    later = T0_NS + 47 * S
    closed = w.add(Poll(later, (reading(GPU0, later),)))
    assert [(c.start_ns, c.end_ns) for c in closed] == [(t, T0_NS + 10 * S)]
    window = w.flush(later + S)
    assert window is not None
    assert window.start_ns == T0_NS + 40 * S
    jump = next(e for e in window.events if e.kind is EventKind.CLOCK_JUMP)
    assert (jump.gap_start_ns, jump.gap_end_ns) == (T0_NS + 10 * S, T0_NS + 40 * S)


def test_polls_before_the_last_attested_window_end_are_dropped_once_noted() -> None:
    w = Windower(WindowSettings(window_ns=10 * S, sample_interval_ms=1000), not_before_ns=T0_NS)
    for i in range(3):
        t = T0_NS - (3 - i) * S
        assert w.add(Poll(t, (reading(GPU0, t),))) == []
    w.add(Poll(T0_NS, (reading(GPU0, T0_NS),)))
    window = w.flush(T0_NS + S)
    assert window is not None
    assert window.start_ns == T0_NS
    assert window.gpus[0].samples_taken == 1
    jumps = [e for e in window.events if e.kind is EventKind.CLOCK_JUMP]
    assert len(jumps) == 1


def test_flush_refuses_a_window_too_short_to_sign() -> None:
    w = windower(10)
    w.add(Poll(T0_NS, (reading(GPU0, T0_NS),)))
    assert w.flush(T0_NS + 50 * MS) is None


def test_built_body_is_valid_and_carries_extra_events_first() -> None:
    w = windower(10)
    for i in range(10):
        t = T0_NS + i * S
        w.add(Poll(t, (reading(GPU0, t), reading(GPU1, t)), driver_version="550.54.15"))
    window = w.flush(T0_NS + 10 * S)
    assert window is not None
    start = SamplerEvent(
        EventKind.AGENT_START, T0_NS, detail="restart", gap_start_ns=T0_NS - S, gap_end_ns=T0_NS
    )
    body = build_body(
        window,
        CONTEXT,
        seq=3,
        prev_digest=b"\x01" * 32,
        verifier_nonce=b"nonce",
        extra_events=(start,),
    )
    validate_body(body, NODE)
    assert body.seq == 3
    assert body.verifier_nonce == b"nonce"
    assert body.driver_version == "550.54.15"
    assert body.events[0].kind == pb.EVENT_KIND_AGENT_START
    assert body.samples_count == 20
    assert len(body.gpus) == 2
    assert body.gpus[0].bounds.upper_bound_flop > 0


def test_window_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="window_ns"):
        WindowSettings(window_ns=MS, sample_interval_ms=1000)
