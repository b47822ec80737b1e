"""The simulated node: scenarios, determinism, traces and faults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pausewatch.v1 import attestation_pb2 as pb

from agent.sampler.base import EventKind
from agent.sampler.sim import SimSampler, load_scenario
from agent.windows import ClosedWindow, Windower, WindowSettings
from attest.errors import ConfigError
from tests.builders import T0_NS
from tests.testdata import TRACES

S = 1_000_000_000
MS = 1_000_000
BOOT_NS = T0_NS - 3600 * S


def write(tmp_path: Path, text: str, name: str = "scenario.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run(sampler: SimSampler, start_ns: int, seconds: int, window_s: int = 10) -> list[ClosedWindow]:
    windower = Windower(WindowSettings(window_ns=window_s * S, sample_interval_ms=1000))
    sampler.open(start_ns)
    out: list[ClosedWindow] = []
    for i in range(seconds):
        poll = sampler.poll(start_ns + i * S)
        assert poll is not None
        out += windower.add(poll)
    final = windower.flush(start_ns + seconds * S)
    if final is not None:
        out.append(final)
    return out


BASIC = """
seed = 11
gpu_model = "NVIDIA H100 80GB HBM3"
gpu_count = 4
[power]
idle_w = 70
max_w = 700
[utilization]
busy_pct = 90
jitter_pct = 5
tensor_active_fraction = 0.5
[[phase]]
from_s = 0
busy_gpus = 2
[[phase]]
from_s = 20
utilization_pct = 0
"""


def test_same_seed_same_samples(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, BASIC))
    a = SimSampler(scenario, sample_interval_ms=1000, boot_time_ns=BOOT_NS)
    b = SimSampler(scenario, sample_interval_ms=1000, boot_time_ns=BOOT_NS)
    a.open(T0_NS)
    b.open(T0_NS)
    for i in range(30):
        assert a.poll(T0_NS + i * S) == b.poll(T0_NS + i * S)
    other = load_scenario(write(tmp_path, BASIC.replace("seed = 11", "seed = 12"), "b.toml"))
    c = SimSampler(other, sample_interval_ms=1000, boot_time_ns=BOOT_NS)
    assert [g.uuid for g in c.inventory()] != [g.uuid for g in a.inventory()]


def test_phases_decide_which_gpus_are_busy(tmp_path: Path) -> None:
    sampler = SimSampler(
        load_scenario(write(tmp_path, BASIC)), sample_interval_ms=1000, boot_time_ns=BOOT_NS
    )
    windows = run(sampler, T0_NS, 30)
    first = windows[0]
    busy = [g.busy_ms for g in first.gpus]
    assert all(b >= 10 * 850 for b in busy[:2])  # 90 % +/- 5 over 10 s
    assert busy[2:] == [0, 0]
    assert all(g.busy_ms == 0 for g in windows[2].gpus)  # from 20 s on: idle
    g0 = first.gpus[0]
    assert g0.tensor_active_ms == pytest.approx(g0.busy_ms / 2, abs=10)
    assert g0.bounds.central_estimate_method == pb.CENTRAL_ESTIMATE_METHOD_TENSOR_ACTIVE
    # Linear power model: a 90 % busy GPU draws about 70 + 630 x 0.9 W.
    assert 600_000 < g0.mean_power_mw < 680_000
    energy_j = (g0.energy_end_mj - g0.energy_start_mj) / 1000
    assert 6000 < energy_j < 6800


def test_a_modified_sampler_under_reports_utilisation_while_the_energy_stays_real(
    tmp_path: Path,
) -> None:
    """``reported_fraction`` plays a dishonest lab's sampler (the demo's lying node)."""
    text = BASIC.replace(
        "tensor_active_fraction = 0.5", "tensor_active_fraction = 0.5\nreported_fraction = 0.3"
    )
    honest = run(
        SimSampler(
            load_scenario(write(tmp_path, BASIC)), sample_interval_ms=1000, boot_time_ns=BOOT_NS
        ),
        T0_NS,
        10,
    )
    lying = run(
        SimSampler(
            load_scenario(write(tmp_path, text, "lie.toml")),
            sample_interval_ms=1000,
            boot_time_ns=BOOT_NS,
        ),
        T0_NS,
        10,
    )
    real, told = honest[0].gpus[0], lying[0].gpus[0]
    assert told.busy_ms <= real.busy_ms * 3 // 10 + 10
    assert told.busy_ms > 0
    assert told.energy_end_mj - told.energy_start_mj == real.energy_end_mj - real.energy_start_mj
    assert told.mean_power_mw == real.mean_power_mw


def test_energy_never_goes_back_across_a_restart(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, BASIC))
    first = SimSampler(scenario, sample_interval_ms=1000, boot_time_ns=BOOT_NS)
    first.open(T0_NS)
    last = None
    for i in range(15):
        last = first.poll(T0_NS + i * S)
    assert last is not None
    before = [r.sample.energy_mj for r in last.readings if r.sample]
    again = SimSampler(scenario, sample_interval_ms=1000, boot_time_ns=BOOT_NS)
    restart = T0_NS + 16 * S
    again.open(restart)
    poll = again.poll(restart)
    assert poll is not None
    after = [r.sample.energy_mj for r in poll.readings if r.sample]
    assert all(b <= a for b, a in zip(before, after, strict=True))


def test_trace_drives_the_number_of_busy_gpus(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("time,running_gpu_num,total_gpu_num\nt0,8,8\nt1,4,8\nt2,1,8\nt3,0,8\n")
    text = f"""
seed = 1
gpu_count = 8
[utilization]
busy_pct = 100
[trace]
file = "{trace.name}"
running_column = "running_gpu_num"
total_column = "total_gpu_num"
seconds_per_row = 10
"""
    sampler = SimSampler(
        load_scenario(write(tmp_path, text)), sample_interval_ms=1000, boot_time_ns=BOOT_NS
    )
    windows = run(sampler, T0_NS, 40)
    busy_counts = [sum(1 for g in w.gpus if g.busy_ms > 0) for w in windows]
    assert busy_counts == [8, 4, 1, 0]


def test_real_helios_trace_excerpt_loads(tmp_path: Path) -> None:
    trace = TRACES / "helios" / "vc6YE_cluster_sequence_vc_excerpt.csv"
    text = f"""
seed = 3
gpu_count = 8
[trace]
file = "{trace}"
running_column = "running_gpu_num"
total_column = "total_gpu_num"
seconds_per_row = 0.5
start_row = 0
"""
    scenario = load_scenario(write(tmp_path, text))
    assert scenario.trace is not None
    # Row 0 of vc6YE: 162 of 208 GPUs running -> 8 x 162 / 208 = 6.2 -> 6 busy GPUs.
    assert scenario.trace.busy_gpus(0, 8) == 6
    # Row 2: 170 of 208 -> 6.5 -> 7 (rounded half up).
    assert scenario.trace.busy_gpus(1 * S, 8) == 7


def test_driver_reload_fault_resets_the_counter(tmp_path: Path) -> None:
    text = BASIC + '\n[[fault]]\nat_s = 5\nkind = "driver_reload"\n'
    sampler = SimSampler(
        load_scenario(write(tmp_path, text)), sample_interval_ms=1000, boot_time_ns=BOOT_NS
    )
    windows = run(sampler, T0_NS, 20)
    assert windows[0].gpus[0].energy_counter_state == pb.ENERGY_COUNTER_STATE_RESET
    assert any(e.kind is EventKind.DRIVER_RELOAD for e in windows[0].events)
    assert windows[1].gpus[0].energy_counter_state == pb.ENERGY_COUNTER_STATE_OK


def test_gpu_lost_fault_and_return(tmp_path: Path) -> None:
    text = BASIC + '\n[[fault]]\nat_s = 3\nkind = "gpu_lost"\ngpu = 1\nduration_s = 10\n'
    sampler = SimSampler(
        load_scenario(write(tmp_path, text)), sample_interval_ms=1000, boot_time_ns=BOOT_NS
    )
    windows = run(sampler, T0_NS, 30)
    lost_uuid = sampler.inventory()[1].uuid
    g1 = next(g for g in windows[0].gpus if g.uuid == lost_uuid)
    assert g1.presence == pb.GPU_PRESENCE_LOST
    assert g1.samples_taken == 3
    assert [e.kind for e in windows[0].events] == [EventKind.GPU_LOST]
    assert next(g for g in windows[1].gpus if g.uuid == lost_uuid).presence == (
        pb.GPU_PRESENCE_LOST
    )
    assert [e.kind for e in windows[1].events] == [EventKind.GPU_APPEARED]
    assert next(g for g in windows[2].gpus if g.uuid == lost_uuid).presence == (
        pb.GPU_PRESENCE_PRESENT
    )


def test_library_mismatch_fault_blinds_the_node(tmp_path: Path) -> None:
    text = BASIC + '\n[[fault]]\nat_s = 10\nkind = "library_mismatch"\nduration_s = 10\n'
    sampler = SimSampler(
        load_scenario(write(tmp_path, text)), sample_interval_ms=1000, boot_time_ns=BOOT_NS
    )
    windows = run(sampler, T0_NS, 30)
    assert windows[1].gpus == ()
    assert [e.kind for e in windows[1].events] == [EventKind.LIBRARY_MISMATCH]
    assert len(windows[2].gpus) == 4


def test_fast_windows_and_sub_second_samples(tmp_path: Path) -> None:
    sampler = SimSampler(
        load_scenario(write(tmp_path, BASIC)), sample_interval_ms=200, boot_time_ns=BOOT_NS
    )
    windower = Windower(WindowSettings(window_ns=2 * S, sample_interval_ms=200))
    sampler.open(T0_NS)
    closed = []
    for i in range(25):
        poll = sampler.poll(T0_NS + i * 200 * MS)
        assert poll is not None
        closed += windower.add(poll)
    assert [(w.end_ns - w.start_ns) for w in closed] == [2 * S, 2 * S]
    assert closed[0].gpus[0].samples_taken == 10


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("gpu_count = -1", "gpu_count"),
        ("gpu_count = 'eight'", "gpu_count"),
        ("[power]\nidle_w = 100\nmax_w = 50", "power.max_w"),
        ("[[phase]]\nfrom_s = 0", "phase[0].busy_gpus"),
        ("[[phase]]\nfrom_s = 0\nbusy_gpus = 99", "phase[0].busy_gpus"),
        ("[[fault]]\nat_s = 1\nkind = 'meteor'", "fault[0].kind"),
        ("[utilization]\nbusy_pc = 90", "utilization.busy_pc"),
        ("[trace]\nfile = 'nope.csv'\nbusy_fraction_column = 'x'", "trace.file"),
        ("[trace]\nfile = 'nope.csv'", "trace.busy_fraction_column"),
        ("colour = 'blue'", "colour"),
        ("seed = ", "not valid TOML"),
    ],
)
def test_scenario_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_scenario(write(tmp_path, text))


def test_trace_with_a_missing_column_names_the_line(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("time,active,total\nx,1,2\n")
    text = f'[trace]\nfile = "{trace}"\nrunning_column = "running"\ntotal_column = "total"\n'
    with pytest.raises(ConfigError, match="line 2: no column 'running'"):
        load_scenario(write(tmp_path, text))
