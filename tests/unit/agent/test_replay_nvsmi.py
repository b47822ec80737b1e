"""Replay of recordings in the exact shape nvidia-smi writes them (tests/nvsmi_logs.py).

No index, uuid or name column, eight GPUs interleaved, ~102 ms polls with jitter and a stall, units
in every value: the GPU count is read from the row cycle, the figures agree with the generator's
ground truth within 2 %, and a file whose rows cannot be grouped into polls is refused with the fix.
"""

from __future__ import annotations

import re

import pytest
from pausewatch.v1 import attestation_pb2 as pb

from agent.sampler.replay import (
    RecordingError,
    ReplaySampler,
    parse_recording,
    replay_gpu_uuid,
)
from agent.windows import ClosedWindow, Windower, WindowSettings
from tests.nvsmi_logs import HEADER, START_NS, generate_log, nvsmi_timestamp

S = 1_000_000_000
MS = 1_000_000
NODE_A = "a1" * 32
NODE_B = "b2" * 32


def replay(text: str, *, node_id: str = NODE_A, **parse: object) -> list[ClosedWindow]:
    recording = parse_recording(text, **parse)  # type: ignore[arg-type]
    sampler = ReplaySampler(recording, node_id=node_id)
    sampler.open(0)
    windower = Windower(
        WindowSettings(
            window_ns=60 * S,
            sample_interval_ms=sampler.sample_interval_ms,
            cadence_ns=sampler.cadence_ns,
        )
    )
    windows: list[ClosedWindow] = []
    last_ns = 0
    while (poll := sampler.poll(0)) is not None:
        windows.extend(windower.add(poll))
        last_ns = poll.timestamp_ns
    final = windower.flush(last_ns + sampler.sample_interval_ms * MS)
    if final is not None:
        windows.append(final)
    return windows


def attested_ms(window: ClosedWindow, gpu: pb.GpuWindow, interval_ms: int) -> int:
    """The verifier's rule (verifier/accounting/accounts.py): a complete window counts whole."""
    span_ms = (window.end_ns - window.start_ns) // MS
    if gpu.samples_expected <= gpu.samples_taken:
        return span_ms
    return min(span_ms, gpu.samples_taken * interval_ms)


def within(measured: float, truth: float, tolerance: float = 0.02) -> bool:
    return abs(measured - truth) <= tolerance * truth


def test_eight_interleaved_gpus_are_read_from_the_row_cycle_with_true_figures() -> None:
    log = generate_log(gpus=8, seconds=300, stall_at_s=130, stall_s=4)
    recording = parse_recording(log.text, gpu_model="NVIDIA H100 80GB HBM3")
    assert recording.gpu_count == 8
    assert recording.gpu_count_source == "row cycle"
    assert len(recording.polls) == len(log.poll_ns)
    assert 100 <= recording.inferred_interval_ms <= 106  # the measured cadence, not 100 nominal
    assert recording.stalls == 1

    windows = replay(log.text, gpu_model="NVIDIA H100 80GB HBM3")
    gpus = {g.uuid for w in windows for g in w.gpus}
    assert len(gpus) == 8
    assert all(g.model == "NVIDIA H100 80GB HBM3" for w in windows for g in w.gpus)
    busy = sum(g.busy_ms for w in windows for g in w.gpus)
    assert within(busy, log.busy_gpu_ms()), (busy, log.busy_gpu_ms())
    energy = sum(g.energy_end_mj - g.energy_start_mj for w in windows for g in w.gpus)
    assert within(energy, log.energy_mj()), (energy, log.energy_mj())
    interval = recording.inferred_interval_ms
    covered = sum(attested_ms(w, g, interval) for w in windows for g in w.gpus)
    assert within(covered, 8 * log.observed_ms()), (covered, 8 * log.observed_ms())
    # The stall is a gap: the window holding it is short of samples, by about the stall.
    stall_ns = START_NS + 130 * S
    stalled = next(w for w in windows if w.start_ns <= stall_ns < w.end_ns)
    short_ms = [
        (stalled.end_ns - stalled.start_ns) // MS - attested_ms(stalled, g, interval)
        for g in stalled.gpus
    ]
    assert all(3_500 <= s <= 4_500 for s in short_ms), short_ms


def test_a_complete_recording_reads_as_fully_covered() -> None:
    log = generate_log(gpus=8, seconds=240)
    recording = parse_recording(log.text)
    windows = replay(log.text)
    interval = recording.inferred_interval_ms
    whole = list(windows[1:-1])  # full 60 s windows, away from the recording's ends
    assert whole
    for window in whole:
        for gpu in window.gpus:
            ratio = attested_ms(window, gpu, interval) / ((window.end_ns - window.start_ns) // MS)
            assert ratio >= 0.995, (ratio, gpu.samples_taken, gpu.samples_expected)
            assert gpu.busy_ms <= (window.end_ns - window.start_ns) // MS + interval


def test_gpu_uuids_come_from_the_node_so_two_nodes_never_collide() -> None:
    log = generate_log(gpus=8, seconds=5)
    uuids_a = {g.uuid for w in replay(log.text, node_id=NODE_A) for g in w.gpus}
    uuids_b = {g.uuid for w in replay(log.text, node_id=NODE_B) for g in w.gpus}
    again = {g.uuid for w in replay(log.text, node_id=NODE_A) for g in w.gpus}
    assert len(uuids_a) == len(uuids_b) == 8
    assert not uuids_a & uuids_b
    assert uuids_a == again
    assert replay_gpu_uuid(NODE_A, 3) in uuids_a
    assert all(re.fullmatch(r"GPU-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", u) for u in uuids_a)


def test_without_a_name_column_or_gpu_model_the_model_is_unknown() -> None:
    log = generate_log(gpus=2, seconds=3)
    assert {g.model for w in replay(log.text) for g in w.gpus} == {"unknown"}


def test_gpu_model_is_refused_for_a_file_that_names_its_gpus() -> None:
    text = "timestamp, name, utilization.gpu [%]\n2026/12/06 01:00:00.000, NVIDIA A100, 5 %\n"
    with pytest.raises(RecordingError, match="has a name column; leave --gpu-model out"):
        parse_recording(text, gpu_model="NVIDIA H100 80GB HBM3")


def test_given_gpus_groups_rows_in_order_and_matches_the_cycle() -> None:
    log = generate_log(gpus=8, seconds=10)
    recording = parse_recording(log.text, gpus=8)
    assert recording.gpu_count == 8
    assert recording.gpu_count_source == "--gpus"
    assert len(recording.polls) == len(log.poll_ns)


@pytest.mark.parametrize("wrong", [4, 16])
def test_a_wrong_gpus_is_refused_naming_the_right_count(wrong: int) -> None:
    log = generate_log(gpus=8, seconds=10)
    with pytest.raises(RecordingError, match=r"every poll in the file has 8 rows.*--gpus 8"):
        parse_recording(log.text, gpus=wrong)


def _slow_polls(polls: int, gpus: int, row_step_ms: int, poll_step_ms: int) -> str:
    """Each GPU's row ``row_step_ms`` after the previous one; a poll every ``poll_step_ms``."""
    lines = [HEADER]
    for poll in range(polls):
        for gpu in range(gpus):
            at_ns = START_NS + (poll * poll_step_ms + gpu * row_step_ms) * MS
            lines.append(f"{nvsmi_timestamp(at_ns)}, 70.00 W, 5 %, 100 MiB")
    return "\n".join(lines) + "\n"


def test_rows_that_cannot_be_grouped_into_polls_are_refused_with_the_fix() -> None:
    # A slow query: each GPU's row 13 ms after the previous one, so the rows of a poll do not
    # come as one burst, and the GPU count cannot be read from the timestamps.
    slow = _slow_polls(16, 4, 13, 140)
    with pytest.raises(RecordingError, match=r"cannot group rows into polls.*--gpus N"):
        parse_recording(slow)
    # With --gpus the rows are cut in order, and each poll's rows must precede the next poll.
    recording = parse_recording(slow, gpus=4)
    assert recording.gpu_count == 4 and len(recording.polls) == 16
    assert all(len(p.rows) == 4 for p in recording.polls)
    # Rows 40 ms apart throughout: polls of 8 would run into each other.
    with pytest.raises(RecordingError, match=r"cannot group rows into polls of 8.*--gpus 8"):
        parse_recording(_slow_polls(8, 8, 40, 320), gpus=8)
    # Rows 100 ms apart throughout read as one GPU; --gpus 8 is refused naming that.
    with pytest.raises(RecordingError, match=r"every poll in the file has 1 row .*--gpus 1"):
        parse_recording(_slow_polls(8, 8, 100, 800), gpus=8)


def test_bursts_of_different_sizes_are_refused_not_guessed() -> None:
    log = generate_log(gpus=8, seconds=3)
    lines = log.text.splitlines()
    del lines[20]  # one GPU's row missing from the third poll
    with pytest.raises(RecordingError, match=r"bursts of different sizes.*--gpus N"):
        parse_recording("\n".join(lines) + "\n")


def test_a_truncated_last_poll_is_kept_with_the_gpus_it_has() -> None:
    log = generate_log(gpus=8, seconds=3)
    lines = log.text.splitlines()[:-3]
    recording = parse_recording("\n".join(lines) + "\n")
    assert recording.gpu_count == 8
    assert len(recording.polls[-1].rows) == 5
    assert sum(len(p.rows) for p in recording.polls) == len(lines) - 1


def test_gpus_that_disagrees_with_an_index_column_is_refused() -> None:
    text = (
        "timestamp, index, utilization.gpu [%]\n"
        "2026/12/06 01:00:00.000, 0, 5 %\n2026/12/06 01:00:00.000, 1, 5 %\n"
    )
    with pytest.raises(RecordingError, match="names 2 GPUs"):
        parse_recording(text, gpus=8)
