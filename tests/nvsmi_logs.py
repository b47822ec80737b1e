"""Generated recordings in the exact shape of a real ``nvidia-smi`` log, and their ground truth.

    log = generate_log(gpus=8, seconds=120, stall_at_s=50, stall_s=4)
    path.write_text(log.text)
    log.busy_gpu_ms(), log.energy_mj(), log.observed_ms()   # computed here, not by the replay

The shape is that of ``nvidia-smi --query-gpu=timestamp,power.draw,utilization.gpu,memory.used
--format=csv -lms 100``: a header ``timestamp, power.draw [W], utilization.gpu [%], memory.used
[MiB]``, no index, uuid or name column, one row per GPU per loop in a fixed order, every value with
its unit ("69.32 W", "45 %", "1234 MiB"), timestamps ``2026/12/06 01:02:03.456``. The loop sleeps
100 ms and takes ~2 ms to query the GPUs, so polls come every ~102 ms with a few ms of jitter; rows
of one poll are at most a few ms apart; a stall of seconds can be put anywhere.

The ground truth follows nvidia-smi's meaning: a row's utilisation is the share of the time since
the GPU's previous row that a kernel ran, and its power is held over that time. A stall's time is
not observed: no row describes it, so :meth:`GeneratedLog.busy_gpu_ms` leaves it out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime

NS_PER_MS = 1_000_000
HEADER = "timestamp, power.draw [W], utilization.gpu [%], memory.used [MiB]"
START_NS = 1_796_518_800 * 1_000_000_000  # 2026-12-06T01:00:00Z


def nvsmi_timestamp(timestamp_ns: int) -> str:
    """``2026/12/06 01:02:03.456`` (UTC, milliseconds), as nvidia-smi prints it."""
    moment = datetime.fromtimestamp(timestamp_ns // 1_000_000_000, tz=UTC)
    return f"{moment:%Y/%m/%d %H:%M:%S}.{timestamp_ns // NS_PER_MS % 1000:03d}"


@dataclass
class GeneratedLog:
    """A generated recording and what it says, row by row."""

    text: str
    gpus: int
    poll_ns: list[int] = field(default_factory=list)
    """Each poll's first row's time (ms resolution, as printed)."""
    util_pct: list[list[int]] = field(default_factory=list)
    """Per poll, per GPU."""
    power_cw: list[list[int]] = field(default_factory=list)
    """Per poll, per GPU, in centiwatts (the printed 2 decimals)."""
    stall_after_poll: int = -1

    def _spans_ms(self) -> list[int]:
        return [(b - a) // NS_PER_MS for a, b in zip(self.poll_ns, self.poll_ns[1:], strict=False)]

    def observed_ms(self) -> int:
        """Recorded time, first poll to last, less the stall."""
        spans = self._spans_ms()
        return sum(s for i, s in enumerate(spans) if i != self.stall_after_poll)

    def busy_gpu_ms(self) -> float:
        """GPU-ms busy over observed time, all GPUs (the stall's time is unobserved)."""
        total = 0.0
        for i, span in enumerate(self._spans_ms(), start=1):
            if i == self.stall_after_poll + 1:
                continue
            total += sum(u * span / 100 for u in self.util_pct[i])
        return total

    def energy_mj(self) -> float:
        """Energy of all GPUs over the whole recording, each row's power held since the last."""
        total = 0.0
        for i, span in enumerate(self._spans_ms(), start=1):
            total += sum(p * 10 * span / 1000 for p in self.power_cw[i])  # cW*ms = 10 uJ
        return total


def generate_log(
    *,
    gpus: int = 8,
    seconds: float = 60.0,
    busy_pct: tuple[int, int] = (0, 100),
    stall_at_s: float | None = None,
    stall_s: float = 4.0,
    seed: int = 14,
    start_ns: int = START_NS,
) -> GeneratedLog:
    """A recording of ``gpus`` GPUs for ``seconds``; utilisation uniform in ``busy_pct``."""
    rng = random.Random(seed)
    lines = [HEADER]
    log = GeneratedLog(text="", gpus=gpus)
    now_ns = start_ns
    end_ns = start_ns + int(seconds * 1e9)
    stalled = stall_at_s is None
    while now_ns < end_ns:
        poll_ms = now_ns // NS_PER_MS
        log.poll_ns.append(poll_ms * NS_PER_MS)
        utils: list[int] = []
        powers: list[int] = []
        row_ms = poll_ms
        for _gpu in range(gpus):
            util = rng.randint(*busy_pct)
            power_cw = 6_900 + util * 620 + rng.randint(0, 999)  # ~69 W idle, ~690 W flat out
            memory_mib = 500 + util * 790
            utils.append(util)
            powers.append(power_cw)
            lines.append(
                f"{nvsmi_timestamp(row_ms * NS_PER_MS)}, {power_cw // 100}.{power_cw % 100:02d} W, "
                f"{util} %, {memory_mib} MiB"
            )
            row_ms += rng.choice((0, 0, 0, 1))  # rows of one poll: the same or the next ms
        log.util_pct.append(utils)
        log.power_cw.append(powers)
        # nvidia-smi sleeps 100 ms after a loop that took ~2 ms: ~102 ms with jitter.
        now_ns = (row_ms + 100 + rng.randint(0, 5)) * NS_PER_MS + rng.randint(0, NS_PER_MS - 1)
        if not stalled and stall_at_s is not None and now_ns >= start_ns + int(stall_at_s * 1e9):
            now_ns += int(stall_s * 1e9)
            log.stall_after_poll = len(log.poll_ns) - 1
            stalled = True
    log.text = "\n".join(lines) + "\n"
    return log
