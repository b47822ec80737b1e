"""The NVML backend under the real pynvml binding, with a fake NVML library behind it."""

from __future__ import annotations

import pynvml
import pytest
from pausewatch.v1 import attestation_pb2 as pb

from agent.sampler.base import EventKind, Metric, MigMode, Poll
from agent.sampler.nvml import LIBRARY_MISMATCH_NAME, NvmlSampler, nvml_error_name
from agent.windows import ClosedWindow, Windower, WindowSettings
from attest.samples import SampleFlags
from tests.builders import T0_NS
from tests.fake_nvml import FakeGpu, FakeNvml, install_missing_library

S = 1_000_000_000


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    nvml = FakeNvml([FakeGpu.h100(0), FakeGpu.h100(1)])
    nvml.install(monkeypatch)
    return nvml


def sampler() -> NvmlSampler:
    return NvmlSampler(sample_interval_ms=1000, retry_initial_ms=1000, retry_max_ms=8000)


def poll(s: NvmlSampler, t_ns: int) -> Poll:
    result = s.poll(t_ns)
    assert result is not None
    return result


def windows_of(polls: list[Poll]) -> list[ClosedWindow]:
    w = Windower(WindowSettings(window_ns=10 * S, sample_interval_ms=1000))
    out: list[ClosedWindow] = []
    for p in polls:
        out += w.add(p)
    final = w.flush(polls[-1].timestamp_ns + S)
    if final is not None:
        out.append(final)
    return out


def test_identity_and_every_metric(fake: FakeNvml) -> None:
    fake.gpus[0].mig_mode = 1
    for gpu in fake.gpus:
        gpu.utilization_pct, gpu.power_mw, gpu.memory_used_bytes = 87, 612_000, 40 * 2**30
        gpu.processes, gpu.tensor_active_pct, gpu.sm_active_pct = 2, 55.5, 91.25
    s = sampler()
    s.open(T0_NS)
    inventory = s.inventory()
    assert [g.uuid for g in inventory] == [g.uuid for g in fake.gpus]
    first = inventory[0]
    assert first.model == "NVIDIA H100 80GB HBM3"
    assert first.serial == fake.gpus[0].serial
    assert first.board_part_number == "692-2G520-0200-000"
    assert first.pci_bus_id == "00000000:18:00.0"
    assert first.mig_mode is MigMode.ENABLED
    assert inventory[1].mig_mode is MigMode.DISABLED
    p = poll(s, T0_NS)
    assert p.driver_version == "550.54.15"
    assert p.nvml_version == "12.550.54.15"
    assert p.events == ()
    reading = p.readings[0]
    assert reading.failures == ()
    sample = reading.sample
    assert sample is not None
    assert sample.flags == SampleFlags(0x7F)
    assert sample.utilization_pct == 87
    assert sample.energy_mj == 1_000_000
    assert sample.power_mw == 612_000
    assert sample.memory_used_bytes == 40 * 2**30
    assert sample.compute_processes == 2
    assert sample.tensor_active_ppm == 555_000
    assert sample.sm_active_ppm == 912_500


def test_window_from_nvml_polls(fake: FakeNvml) -> None:
    s = sampler()
    s.open(T0_NS)
    polls = []
    for i in range(10):
        for gpu in fake.gpus:
            gpu.tensor_active_pct = 40.0
            gpu.run(utilization_pct=100, seconds=1, power_mw=700_000)
        polls.append(poll(s, T0_NS + i * S))
    window = windows_of(polls)[0]
    gpu0 = window.gpus[0]
    assert gpu0.busy_ms == 10_000
    assert gpu0.tensor_active_ms == 4000
    assert gpu0.energy_counter_state == pb.ENERGY_COUNTER_STATE_OK
    assert gpu0.energy_end_mj - gpu0.energy_start_mj == 9 * 700_000
    assert all(st.state == pb.METRIC_STATE_SUPPORTED for st in gpu0.metric_status)
    assert len(gpu0.metric_status) == 7
    assert gpu0.bounds.central_estimate_method == pb.CENTRAL_ESTIMATE_METHOD_TENSOR_ACTIVE


def test_not_supported_is_recorded_per_metric(fake: FakeNvml) -> None:
    old = fake.gpus[1]
    old.gpm = False
    old.serial = None
    old.board_part_number = None
    old.mig_mode = None
    old.errors["nvmlDeviceGetPowerUsage"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    s = sampler()
    s.open(T0_NS)
    identity = s.inventory()[1]
    assert (identity.serial, identity.board_part_number) == ("", "")
    assert identity.mig_mode is MigMode.NOT_SUPPORTED
    polls = [poll(s, T0_NS + i * S) for i in range(3)]
    failures = {f.metric: f for f in polls[0].readings[1].failures}
    assert set(failures) == {Metric.POWER, Metric.GPM_TENSOR_ACTIVE, Metric.GPM_SM_ACTIVE}
    assert all(f.not_supported for f in failures.values())
    assert failures[Metric.POWER].error_name == "NVML_ERROR_NOT_SUPPORTED"
    gpu1 = windows_of(polls)[0].gpus[1]
    status = {st.metric: st.state for st in gpu1.metric_status}
    assert status[pb.METRIC_POWER] == pb.METRIC_STATE_NOT_SUPPORTED
    assert status[pb.METRIC_GPM_TENSOR_ACTIVE] == pb.METRIC_STATE_NOT_SUPPORTED
    assert status[pb.METRIC_UTILIZATION] == pb.METRIC_STATE_SUPPORTED
    assert gpu1.mig_mode == pb.MIG_MODE_NOT_SUPPORTED
    assert gpu1.bounds.central_estimate_method == pb.CENTRAL_ESTIMATE_METHOD_ASSUMED_UTILIZATION


def test_a_mig_gpu_reads_no_utilisation_and_its_window_says_so(fake: FakeNvml) -> None:
    """MIG mode on GPU 0: NVML answers NOT_SUPPORTED for device utilisation. No utilisation
    sample is taken for it, its window says the metric is not supported and MIG is enabled, and
    nothing counts it busy; GPU 1 (MIG off, same load) is read as usual."""
    mig = fake.gpus[0]
    mig.mig_mode = pynvml.NVML_DEVICE_MIG_ENABLE
    mig.errors["nvmlDeviceGetUtilizationRates"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    s = sampler()
    s.open(T0_NS)
    assert [g.mig_mode for g in s.inventory()] == [MigMode.ENABLED, MigMode.DISABLED]
    polls = []
    for i in range(10):
        for gpu in fake.gpus:
            gpu.run(utilization_pct=90, seconds=1, power_mw=500_000)
        polls.append(poll(s, T0_NS + i * S))
    failures = [f for p in polls for f in p.readings[0].failures]
    assert [(f.metric, f.not_supported, f.error_name) for f in failures] == [
        (Metric.UTILIZATION, True, "NVML_ERROR_NOT_SUPPORTED")
    ] * 10
    samples = [p.readings[0].sample for p in polls]
    assert all(x is not None and not x.flags & SampleFlags.UTILIZATION for x in samples)
    assert all(p.readings[1].failures == () for p in polls)
    window = windows_of(polls)[0]
    gpu0, gpu1 = window.gpus
    status0 = {st.metric: st.state for st in gpu0.metric_status}
    assert gpu0.mig_mode == pb.MIG_MODE_ENABLED
    assert status0[pb.METRIC_UTILIZATION] == pb.METRIC_STATE_NOT_SUPPORTED
    assert (gpu0.samples_expected, gpu0.samples_taken, gpu0.busy_ms) == (10, 0, 0)
    # Energy is still read: the window keeps the energy evidence, only utilisation is missing.
    assert status0[pb.METRIC_ENERGY] == pb.METRIC_STATE_SUPPORTED
    assert gpu0.energy_counter_state == pb.ENERGY_COUNTER_STATE_OK
    # Control: the GPU without MIG, under the same load.
    status1 = {st.metric: st.state for st in gpu1.metric_status}
    assert gpu1.mig_mode == pb.MIG_MODE_DISABLED
    assert status1[pb.METRIC_UTILIZATION] == pb.METRIC_STATE_SUPPORTED
    assert (gpu1.samples_expected, gpu1.samples_taken, gpu1.busy_ms) == (10, 10, 9000)


def test_a_lost_gpu_is_recorded_and_the_others_go_on(fake: FakeNvml) -> None:
    s = sampler()
    s.open(T0_NS)
    polls = [poll(s, T0_NS)]
    fake.gpus[1].lost = True
    polls += [poll(s, T0_NS + i * S) for i in range(1, 4)]
    lost_events = [e for p in polls for e in p.events if e.kind is EventKind.GPU_LOST]
    assert len(lost_events) == 1
    assert lost_events[0].gpu_uuid == fake.gpus[1].uuid
    assert lost_events[0].detail == "NVML_ERROR_GPU_IS_LOST"
    assert polls[2].readings[1].lost
    assert polls[2].readings[0].sample is not None
    fake.gpus[1].lost = False
    back = poll(s, T0_NS + 4 * S)
    assert [e.kind for e in back.events] == [EventKind.GPU_APPEARED]
    window = windows_of([*polls, back])[0]
    assert window.gpus[1].presence == pb.GPU_PRESENCE_LOST
    assert window.gpus[1].samples_taken == 2
    assert window.gpus[0].samples_taken == 5


def test_driver_reload_reinitialises_and_is_recorded(fake: FakeNvml) -> None:
    s = sampler()
    s.open(T0_NS)
    polls = [poll(s, T0_NS + i * S) for i in range(3)]
    fake.reload_driver("560.28.03")
    gone = poll(s, T0_NS + 3 * S)
    assert gone.readings == ()
    assert [e.kind for e in gone.events] == [EventKind.DRIVER_RELOAD]
    assert "NVML_ERROR_UNINITIALIZED" in gone.events[0].detail
    again = poll(s, T0_NS + 4 * S)
    assert len(again.readings) == 2
    assert again.driver_version == "560.28.03"
    assert any(
        e.kind is EventKind.DRIVER_RELOAD and "550.54.15 -> 560.28.03" in e.detail
        for e in again.events
    )
    window = windows_of([*polls, gone, again])[0]
    assert window.gpus[0].energy_counter_state == pb.ENERGY_COUNTER_STATE_RESET


def test_a_silent_counter_drop_is_a_reset_and_nvml_starts_afresh(fake: FakeNvml) -> None:
    s = sampler()
    s.open(T0_NS)
    polls = [poll(s, T0_NS + i * S) for i in range(2)]
    for gpu in fake.gpus:
        gpu.energy_mj = 5  # reloaded between two polls, without any call failing
    polls.append(poll(s, T0_NS + 2 * S))
    inits = fake.calls["nvmlInitWithFlags"]
    polls.append(poll(s, T0_NS + 3 * S))
    assert fake.calls["nvmlInitWithFlags"] == inits + 1
    window = windows_of(polls)[0]
    assert window.gpus[0].energy_counter_state == pb.ENERGY_COUNTER_STATE_RESET
    assert any(e.kind is EventKind.DRIVER_RELOAD for e in window.events)


def test_library_mismatch_on_a_metric_is_recorded_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeNvml([FakeGpu.h100(0)])
    fake.missing.add("nvmlDeviceGetComputeRunningProcesses_v3")  # an older libnvidia-ml
    fake.install(monkeypatch)
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLLibraryMismatchError):  # what pynvml itself does
        pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    pynvml.nvmlShutdown()
    assert not issubclass(pynvml.NVMLLibraryMismatchError, pynvml.NVMLError)
    s = sampler()
    s.open(T0_NS)
    polls = [poll(s, T0_NS + i * S) for i in range(3)]
    mismatch = [e for p in polls for e in p.events if e.kind is EventKind.LIBRARY_MISMATCH]
    assert len(mismatch) == 1
    gpu = windows_of(polls)[0].gpus[0]
    status = {st.metric: st for st in gpu.metric_status}
    assert status[pb.METRIC_COMPUTE_PROCESSES].state == pb.METRIC_STATE_ERROR
    assert status[pb.METRIC_COMPUTE_PROCESSES].last_error == LIBRARY_MISMATCH_NAME
    assert status[pb.METRIC_COMPUTE_PROCESSES].error_count == 3
    assert status[pb.METRIC_UTILIZATION].state == pb.METRIC_STATE_SUPPORTED
    assert gpu.samples_taken == 3


def test_driver_library_version_mismatch_at_init_blinds_and_retries_with_backoff(
    fake: FakeNvml,
) -> None:
    fake.init_error = pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH
    s = sampler()
    s.open(T0_NS)
    polls = [poll(s, T0_NS + i * S) for i in range(8)]
    # open at 0 failed (retry after 1 s), poll at 1 s failed (2 s), at 3 s failed (4 s) -> 7 s
    assert fake.calls["nvmlInitWithFlags"] == 4
    assert all(p.readings == () for p in polls)
    assert all([e.kind for e in p.events] == [EventKind.LIBRARY_MISMATCH] for p in polls)
    assert "NVML_ERROR_LIB_RM_VERSION_MISMATCH" in polls[0].events[0].detail
    window = windows_of(polls)[0]
    assert window.gpus == ()
    fake.init_error = None
    back = poll(s, T0_NS + 15 * S)
    assert len(back.readings) == 2


def test_missing_library_is_a_blind_node_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    install_missing_library(monkeypatch)
    s = sampler()
    s.open(T0_NS)
    assert not s.initialized
    assert s.inventory() == ()
    p = poll(s, T0_NS)
    assert p.readings == ()
    assert [e.kind for e in p.events] == [EventKind.LIBRARY_NOT_FOUND]
    assert "NVML_ERROR_LIBRARY_NOT_FOUND" in p.events[0].detail


def test_other_init_failures_are_nvml_errors(fake: FakeNvml) -> None:
    fake.init_error = pynvml.NVML_ERROR_NO_PERMISSION
    s = sampler()
    s.open(T0_NS)
    p = poll(s, T0_NS)
    assert [e.kind for e in p.events] == [EventKind.NVML_ERROR]
    assert "NVML_ERROR_NO_PERMISSION" in p.events[0].detail


def test_a_gpu_that_vanishes_after_a_reload_is_lost_and_indices_stay(fake: FakeNvml) -> None:
    fake.gpus.append(FakeGpu.h100(2))
    s = sampler()
    s.open(T0_NS)
    third = fake.gpus[2].uuid
    poll(s, T0_NS)
    del fake.gpus[1]  # GPU 1 fell off the bus; the driver renumbers
    fake.reload_driver()
    poll(s, T0_NS + S)  # UNINITIALIZED: re-initialise next time
    p = poll(s, T0_NS + 2 * S)
    lost = [e for e in p.events if e.kind is EventKind.GPU_LOST]
    assert len(lost) == 1
    assert "no longer in NVML's device list" in lost[0].detail
    indices = {r.identity.uuid: r.identity.index for r in p.readings}
    assert indices[third] == 2  # not renumbered to 1


def test_an_unexpected_error_is_a_metric_error(fake: FakeNvml) -> None:
    fake.gpus[0].errors["nvmlDeviceGetUtilizationRates"] = pynvml.NVML_ERROR_UNKNOWN
    s = sampler()
    s.open(T0_NS)
    p = poll(s, T0_NS)
    failure = p.readings[0].failures[0]
    assert (failure.metric, failure.error_name, failure.not_supported) == (
        Metric.UTILIZATION,
        "NVML_ERROR_UNKNOWN",
        False,
    )
    assert p.readings[0].sample is not None
    assert not p.readings[0].sample.flags & SampleFlags.UTILIZATION


def test_error_names() -> None:
    assert nvml_error_name(pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)) == (
        "NVML_ERROR_GPU_IS_LOST"
    )
    assert nvml_error_name(pynvml.NVMLLibraryMismatchError("x")) == LIBRARY_MISMATCH_NAME
    assert nvml_error_name(ValueError()) == "ValueError"


def test_a_gpu_that_cannot_be_identified_does_not_blind_the_node(fake: FakeNvml) -> None:
    fake.gpus[0].errors["nvmlDeviceGetUUID"] = pynvml.NVML_ERROR_GPU_IS_LOST
    s = sampler()
    s.open(T0_NS)
    assert [g.uuid for g in s.inventory()] == [fake.gpus[1].uuid]
    p = poll(s, T0_NS)
    assert len(p.readings) == 1
    assert [e.kind for e in p.events] == [EventKind.NVML_ERROR]
    assert "device 0 could not be identified: NVML_ERROR_GPU_IS_LOST" in p.events[0].detail
