"""Replay of nvidia-smi CSV recordings: parsing, and windows that match a hand computation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pausewatch.v1 import attestation_pb2 as pb

from agent.sampler.base import Backend, Metric
from agent.sampler.replay import (
    ENERGY_INTEGRATED_NOTE,
    RecordingError,
    ReplaySampler,
    load_recording,
    parse_recording,
    parse_timestamp,
)
from agent.windows import ClosedWindow, Windower, WindowSettings
from tests.builders import T0_NS

S = 1_000_000_000
MS = 1_000_000

# Two GPUs interleaved, 2-second windows, 1000 ms interval. T0 is 2025-11-29T08:00:00Z.
# GPU 1 has no power reading ([N/A]) on its rows.
HAND_CSV = """\
timestamp, index, uuid, name, utilization.gpu [%], power.draw [W], memory.used [MiB]
2025/11/29 08:00:00.000, 0, GPU-aaaa, NVIDIA H100 80GB HBM3, 50 %, 300.00 W, 1000 MiB
2025/11/29 08:00:00.000, 1, GPU-bbbb, NVIDIA H100 80GB HBM3, 0 %, [N/A], 0 MiB
2025/11/29 08:00:01.000, 0, GPU-aaaa, NVIDIA H100 80GB HBM3, 100 %, 500.00 W, 2000 MiB
2025/11/29 08:00:01.000, 1, GPU-bbbb, NVIDIA H100 80GB HBM3, 10 %, [N/A], 0 MiB
2025/11/29 08:00:02.000, 0, GPU-aaaa, NVIDIA H100 80GB HBM3, 30 %, 200.25 W, 2000 MiB
2025/11/29 08:00:02.000, 1, GPU-bbbb, NVIDIA H100 80GB HBM3, 0 %, [N/A], 0 MiB
2025/11/29 08:00:02.500, 0, GPU-aaaa, NVIDIA H100 80GB HBM3, 7 %, 100.00 W, 2000 MiB
2025/11/29 08:00:03.000, 0, GPU-aaaa, NVIDIA H100 80GB HBM3, 20 %, 150.50 W, 2000 MiB
2025/11/29 08:00:03.999, 0, GPU-aaaa, NVIDIA H100 80GB HBM3, 33 %, 400.001 W, 4000 MiB
2025/11/29 08:00:04.000, 0, GPU-aaaa, NVIDIA H100 80GB HBM3, 0 %, 80.00 W, 0 MiB
"""


def run_replay(text: str, *, columns: tuple[str, ...] = ()) -> list[ClosedWindow]:
    recording = parse_recording(text, columns=columns)
    sampler = ReplaySampler(recording, sample_interval_ms=1000)
    sampler.open(0)
    windower = Windower(WindowSettings(window_ns=2 * S, sample_interval_ms=1000))
    windows: list[ClosedWindow] = []
    last_ns = 0
    while (poll := sampler.poll(0)) is not None:
        windows.extend(windower.add(poll))
        last_ns = poll.timestamp_ns
    final = windower.flush(last_ns + 1000 * MS)
    if final is not None:
        windows.append(final)
    return windows


def gpu(window: ClosedWindow, uuid: str) -> pb.GpuWindow:
    return next(g for g in window.gpus if g.uuid == uuid)


def test_replayed_windows_match_the_hand_computation() -> None:
    windows = run_replay(HAND_CSV)
    assert [(w.start_ns - T0_NS, w.end_ns - T0_NS) for w in windows] == [
        (0, 2 * S),  # the first poll is on a window boundary: a full first window
        (2 * S, 4 * S),
        (4 * S, 5 * S),  # flushed at the end of the recording: last poll + one interval
    ]
    first, second, _last = windows

    # Window [0 s, 2 s), GPU 0: samples at 0.0 (first sample: the configured 1000 ms) and 1.0.
    #   busy = ceil((50 x 1000 + 100 x 1000) / 100) = 1500 ms
    # Energy is integrated from power.draw, each row's power held over the time since the GPU's
    # previous row, counted in mW x ms (= uJ) and reported in whole mJ:
    #   row 0.0: 0 (the counter starts at the GPU's first row)
    #   row 1.0: 500_000 mW x 1000 ms = 500_000_000 uJ            -> 500_000 mJ
    #   row 2.0: + 200_250 mW x 1000 ms = 700_250_000 uJ          -> 700_250 mJ
    # The window is closed by the row at 2.0, its end edge: energy 0 -> 700_250 mJ.
    g0 = gpu(first, "GPU-aaaa")
    assert g0.busy_ms == 1500
    assert (g0.energy_start_mj, g0.energy_end_mj) == (0, 700_250)
    assert g0.energy_counter_state == pb.ENERGY_COUNTER_STATE_OK
    assert (g0.samples_expected, g0.samples_taken) == (2, 2)
    assert (g0.max_power_mw, g0.mean_power_mw) == (500_000, 400_000)
    assert g0.max_memory_used_bytes == 2000 * 2**20

    # Window [2 s, 4 s), GPU 0: samples at 2.0, 2.5, 3.0 and 3.999; intervals 1000 (since 1.0),
    # 500, 500 and 999 ms.
    #   busy = ceil((30 x 1000 + 7 x 500 + 20 x 500 + 33 x 999) / 100)
    #        = ceil((30_000 + 3_500 + 10_000 + 32_967) / 100) = ceil(764.67) = 765 ms
    #   row 2.5:   + 100_000 mW x 500 ms = 750_250_000 uJ
    #   row 3.0:   + 150_500 mW x 500 ms = 825_500_000 uJ
    #   row 3.999: + 400_001 mW x 999 ms = 1_225_100_999 uJ   -> 1_225_100 mJ (rounded down)
    #   row 4.0:   +  80_000 mW x   1 ms = 1_225_180_999 uJ   -> 1_225_180 mJ (the end edge)
    #   energy = 1_225_180 - 700_250 = 524_930 mJ
    #   mean power = (200_250 + 100_000 + 150_500 + 400_001) // 4 = 850_751 // 4 = 212_687 mW
    g0 = gpu(second, "GPU-aaaa")
    assert g0.busy_ms == 765
    assert (g0.energy_start_mj, g0.energy_end_mj) == (700_250, 1_225_180)
    assert g0.energy_end_mj - g0.energy_start_mj == 524_930
    assert (g0.max_power_mw, g0.mean_power_mw) == (400_001, 212_687)
    # Four rows where the interval allows two ticks: samples_expected is raised to samples_taken
    # (the body may not claim more samples taken than expected).
    assert (g0.samples_expected, g0.samples_taken) == (4, 4)

    # Energy was integrated, and the body says so.
    energy = next(s for s in g0.metric_status if s.metric == pb.METRIC_ENERGY)
    assert energy.state == pb.METRIC_STATE_SUPPORTED
    assert energy.last_error == ENERGY_INTEGRATED_NOTE

    # GPU 1 in window [0, 2): busy = ceil((0 x 1000 + 10 x 1000) / 100) = 100 ms; no power, so no
    # energy either: power NOT_SUPPORTED, energy ERROR (it could not be integrated).
    g1 = gpu(first, "GPU-bbbb")
    assert g1.busy_ms == 100
    status = {s.metric: s for s in g1.metric_status}
    assert status[pb.METRIC_POWER].state == pb.METRIC_STATE_NOT_SUPPORTED
    assert status[pb.METRIC_POWER].last_error == "[N/A]"
    assert status[pb.METRIC_ENERGY].state == pb.METRIC_STATE_ERROR
    assert g1.energy_counter_state == pb.ENERGY_COUNTER_STATE_ERROR


def test_the_same_recording_without_index_or_uuid_gives_the_same_figures() -> None:
    # The rows of both GPUs at 0.0, 1.0 and 2.0 s: without index or uuid, the n-th row of each
    # poll is GPU n.
    lines = HAND_CSV.splitlines()[:7]
    stripped = []
    for line in lines:
        cells = [c.strip() for c in line.split(",")]
        stripped.append(", ".join([cells[0], *cells[3:]]))
    windows = run_replay("\n".join(stripped) + "\n")
    g0 = gpu(windows[0], "REPLAY-GPU-0")
    assert g0.busy_ms == 1500
    assert (g0.energy_start_mj, g0.energy_end_mj) == (0, 700_250)
    assert gpu(windows[0], "REPLAY-GPU-1").busy_ms == 100


def test_noheader_nounits_recording_with_given_columns() -> None:
    text = (
        "2025/11/29 08:00:00.000, 0, 50, 300\n"
        "2025/11/29 08:00:01.000, 0, 100, 500\n"
        "2025/11/29 08:00:02.000, 0, 30, 200.25\n"
    )
    columns = ("timestamp", "index", "utilization.gpu [%]", "power.draw [W]")
    windows = run_replay(text, columns=columns)
    g0 = gpu(windows[0], "REPLAY-GPU-0")
    assert g0.busy_ms == 1500
    assert g0.energy_end_mj == 700_250


def test_a_cumulative_energy_column_is_used_as_the_counter() -> None:
    text = (
        "timestamp, index, utilization.gpu [%], power.draw [W], total_energy_consumption [J]\n"
        "2025/11/29 08:00:00.000, 0, 50, 300, 1000.5\n"
        "2025/11/29 08:00:01.000, 0, 50, 300, 1300.5\n"
        "2025/11/29 08:00:02.000, 0, 50, 300, 1600.5\n"
    )
    windows = run_replay(text)
    g0 = windows[0].gpus[0]
    assert (g0.energy_start_mj, g0.energy_end_mj) == (1_000_500, 1_600_500)
    energy = next(s for s in g0.metric_status if s.metric == pb.METRIC_ENERGY)
    assert energy.last_error == ""  # read, not integrated


def test_realtime_mode_stamps_polls_with_the_clock() -> None:
    recording = parse_recording(HAND_CSV)
    sampler = ReplaySampler(recording, sample_interval_ms=1000, realtime=True)
    assert sampler.realtime
    start = 10_000 * S
    sampler.open(start)
    poll = sampler.poll(start)
    assert poll is not None
    assert poll.timestamp_ns == start
    assert len(poll.readings) == 2
    early = sampler.poll(start + 500 * MS)  # nothing due yet
    assert early is not None
    assert early.readings == ()
    later = sampler.poll(start + 2 * S)  # the 1.0 s poll is skipped, the 2.0 s one is due
    assert later is not None
    assert later.timestamp_ns == start + 2 * S
    utils = [r.sample.utilization_pct for r in later.readings if r.sample]
    assert utils == [30, 0]


def test_backend_and_inferred_interval() -> None:
    text = "timestamp, utilization.gpu [%]\n" + "".join(
        f"2025/11/29 08:00:{s:02d}.000, 10 %\n" for s in range(0, 20, 5)
    )
    recording = parse_recording(text)
    assert recording.inferred_interval_ms == 5000
    sampler = ReplaySampler(recording)
    assert sampler.backend is Backend.REPLAY
    assert sampler.sample_interval_ms == 5000


def test_timestamps_in_iso_and_nvidia_smi_forms() -> None:
    assert parse_timestamp("2025/11/29 08:00:00.123") == T0_NS + 123 * MS
    assert parse_timestamp("2025-11-29T08:00:01") == T0_NS + S
    with pytest.raises(ValueError, match="not in a known format"):
        parse_timestamp("yesterday")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("2025/11/29 08:00:00.000, 50\n", "not a header"),
        ("timestamp, power.draw [W]\n2025/11/29 08:00:00, 1 W\n", "no utilization.gpu column"),
        ("timestamp, utilization.gpu\n2025/11/29 08:00:00, 50, 7\n", "line 2 has 3 columns"),
        ("timestamp, utilization.gpu\n2025/11/29 08:00:00, fifty\n", "line 2: utilization.gpu"),
        ("timestamp, utilization.gpu\n2025/11/29 08:00:00, 150 %\n", "over 100"),
        ("timestamp, utilization.gpu\nnot a time, 5\n", "line 2: timestamp"),
        (
            "timestamp, utilization.gpu, power.draw\n2025/11/29 08:00:00, 5, 3 W 2\n",
            "not a number",
        ),
        (
            "timestamp, utilization.gpu, power.draw\n2025/11/29 08:00:00, 5, 3 kW\n",
            "unit 'kw'",
        ),
        (
            "timestamp, index, utilization.gpu\n"
            "2025/11/29 08:00:05, 0, 5\n2025/11/29 08:00:01, 0, 5\n",
            "line 3: the time goes back 4.000 s",
        ),
    ],
)
def test_bad_recordings_are_refused_with_the_line(text: str, message: str) -> None:
    with pytest.raises(RecordingError, match=message):
        parse_recording(text)


def test_missing_recording_file(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="does not exist"):
        load_recording(tmp_path / "nope.csv")


def test_not_supported_cells_are_failures_not_zeros() -> None:
    text = (
        "timestamp, index, utilization.gpu [%], memory.used [MiB]\n"
        "2025/11/29 08:00:00.000, 0, [Not Supported], [N/A]\n"
    )
    sampler = ReplaySampler(parse_recording(text), sample_interval_ms=1000)
    poll = sampler.poll(0)
    assert poll is not None
    reading = poll.readings[0]
    assert reading.sample is not None
    assert int(reading.sample.flags) == 0
    assert {f.metric for f in reading.failures} == {Metric.UTILIZATION, Metric.MEMORY_USED}
    assert all(f.not_supported for f in reading.failures)
