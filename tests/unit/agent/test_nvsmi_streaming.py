"""A long nvidia-smi log is read as a stream: memory does not grow with the file.

A week at 1 s of eight GPUs is 4.8 million rows; held in memory as parsed rows that is gigabytes.
The replay reads the file twice instead (once to check it and measure its cadence, once to
replay it), holding one poll at a time.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from agent.sampler.replay import ReplaySampler, load_recording
from tests.nvsmi_logs import generate_log


def _peak_bytes(path: Path) -> tuple[int, int]:
    """Peak traced memory of loading and replaying ``path`` to its end, and the polls replayed."""
    gc.collect()
    tracemalloc.start()
    try:
        recording = load_recording(path, gpu_model="NVIDIA H100 80GB HBM3")
        sampler = ReplaySampler(recording, node_id="ab" * 32)
        sampler.open(0)
        polls = 0
        while sampler.poll(0) is not None:
            polls += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, polls


def test_memory_does_not_grow_with_the_length_of_the_log(tmp_path: Path) -> None:
    short, long = tmp_path / "short.csv", tmp_path / "long.csv"
    short_log = generate_log(gpus=8, seconds=60, seed=3)
    short.write_text(short_log.text, encoding="utf-8")
    long_log = generate_log(gpus=8, seconds=240, seed=3)
    long.write_text(long_log.text, encoding="utf-8")
    short_polls, long_polls = len(short_log.poll_ns), len(long_log.poll_ns)
    del short_log, long_log

    short_peak, replayed_short = _peak_bytes(short)
    long_peak, replayed_long = _peak_bytes(long)
    assert (replayed_short, replayed_long) == (short_polls, long_polls)
    # Four times the rows (18 800 against 4 700): the peak stays that of one poll and the
    # parser's bounded caches, not four times a whole file's rows.
    assert long_peak < short_peak * 1.3 + 256 * 1024, (short_peak, long_peak)
