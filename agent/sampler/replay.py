"""Replay an ``nvidia-smi --query-gpu=... --format=csv`` recording as a sampler.

    recording = load_recording(Path("node7.csv"))            # parse and check the whole file
    sampler = ReplaySampler(recording)                        # windows in recording time
    sampler = ReplaySampler(recording, realtime=True)         # or paced by the wall clock

What is read (header names as nvidia-smi prints them; other columns are ignored):

- ``timestamp`` (required): ``2024/05/01 12:00:00.123`` (nvidia-smi) or ISO 8601, read as UTC;
- ``utilization.gpu`` (required), ``power.draw`` (or ``power.draw.instant``/``.average``),
  ``memory.used``, ``index``, ``uuid``, ``name``, ``pci.bus_id``, ``serial``;
- a cumulative energy column if present (``total_energy_consumption`` or ``energy``; mJ, or J when
  the header or value says so).

Units may be in the header (``power.draw [W]``) or in the values (``250.12 W``), or absent
(``nounits``: the nvidia-smi defaults %, W, MiB are assumed). ``[N/A]``, ``[Not Supported]`` and
similar cells mean the metric was not supported for that row. Without a header, pass the column
names (``columns=``, in ``--query-gpu`` order).

**GPUs.** With an ``index`` or ``uuid`` column a row belongs to that GPU, and a new poll starts when
a GPU repeats. Without either (``nvidia-smi --query-gpu=timestamp,power.draw,utilization.gpu,...``
prints every GPU at each loop, one row each, in a fixed order), the GPU count is read from the
row cycle: rows less than 25 ms after a poll's first row belong to that poll, every poll but the
last must then have the same number of rows, and polls must lie at least 50 ms apart; the n-th row
of a poll is GPU n. A file where that does not hold is refused (:class:`RecordingError`) with the
fix: ``gpus=N`` (``--gpus N``), which cuts the rows into polls of N in order and checks that each
poll's rows lie closer together than the next poll. A file never yields a guessed GPU count. Every
row of a poll gets the poll's first timestamp.

**Names.** Without a ``name`` column every GPU's model is ``gpu_model`` (``--gpu-model NAME``), or
``unknown`` (bounded at the compute table's highest peak, and reported so). Without a ``uuid``
column, GPU n's UUID is derived from the node id (:func:`replay_gpu_uuid`), so two nodes replaying
the same kind of file never claim the same GPUs.

**Energy.** From the energy column where there is one. Otherwise the counter is integrated from
``power.draw``: each row's power is held over the time since the GPU's previous row (the same rule
as utilisation), the counter starts at 0 mJ at the GPU's first row, and it is kept exactly in
mW x ms (= microjoules) and reported rounded down to mJ. Such a window's METRIC_ENERGY status says
``integrated from power.draw`` in its ``last_error`` field.

**Cadence.** Unless given, the sample interval is the measured cadence: the mean time between
consecutive polls, leaving out stalls (more than 1.5 x the median), in whole ms rounded down; a
window expects floor(length / cadence) samples (``WindowSettings.cadence_ns``). A sample is
credited the time since the GPU's previous sample, up to 1.5 x that interval
(:data:`CREDIT_BOUND_NUM` / :data:`CREDIT_BOUND_DEN`); so nvidia-smi's real ~102 ms loop at
``-lms 100`` with its jitter reads as fully covered, while a stall of seconds stays a gap (samples
taken fall short of those expected). With an explicit ``sample_interval_ms`` the credit is capped
at that interval (as NVML).
"""

from __future__ import annotations

import calendar
import collections
import csv
import hashlib
import io
import itertools
import logging
import re
import statistics
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from agent.clock import NS_PER_MS
from agent.sampler.base import (
    Backend,
    GpuIdentity,
    GpuReading,
    IntervalTracker,
    Metric,
    MetricFailure,
    Poll,
)
from attest.errors import ConfigError
from attest.samples import Sample, SampleFlags

log = logging.getLogger(__name__)

POLL_SPREAD_NS = 25 * NS_PER_MS
"""Rows of one poll follow each other by less than this (a row later than that starts a poll)."""
MIN_POLL_SPACING_NS = 2 * POLL_SPREAD_NS
"""Without --gpus, polls must lie at least this far apart to be told from the rows within them."""
CREDIT_BOUND_NUM, CREDIT_BOUND_DEN = 3, 2
"""A sample's credit is bounded by 3/2 of the measured cadence; longer is a stall (a gap)."""
ENERGY_INTEGRATED_NOTE = "integrated from power.draw"
MAX_ROWS = 10_000_000

_UNIT_IN_HEADER = re.compile(r"^\s*([^\[]+?)\s*(?:\[([^\]]*)\])?\s*$")
_NUMBER = re.compile(r"^([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*([A-Za-z%]*)$")
_TIMESTAMP_FORMATS = (
    "%Y/%m/%d %H:%M:%S.%f",
    "%Y/%m/%d %H:%M:%S",
    "%Y-%m-%d %H:%M:%S.%f",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S.%f",
    "%Y-%m-%dT%H:%M:%S",
)
_POWER_NAMES = ("power.draw", "power.draw.instant", "power.draw.average")
_ENERGY_NAMES = ("total_energy_consumption", "energy", "energy.total")
_KNOWN = frozenset(
    (
        "timestamp",
        "index",
        "uuid",
        "name",
        "pci.bus_id",
        "serial",
        "utilization.gpu",
        "memory.used",
        *_POWER_NAMES,
        *_ENERGY_NAMES,
    )
)
_MEMORY_UNITS = {"b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10**3, "mb": 10**6}
_POWER_UNITS = {"w": 1000, "mw": 1}
_ENERGY_UNITS = {"mj": 1, "j": 1000}


class RecordingError(ConfigError):
    """The recording cannot be read; the message names the line and column."""


@dataclass(frozen=True, slots=True)
class Cell:
    """One parsed metric cell: a value in the metric's base unit, or why there is none."""

    value: int | None
    missing: str = ""


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the recording, parsed."""

    line: int
    timestamp_ns: int
    index: int | None
    uuid: str
    name: str
    pci_bus_id: str
    serial: str
    utilization_pct: Cell
    power_mw: Cell | None
    memory_used_bytes: Cell | None
    energy_mj: Cell | None


@dataclass(frozen=True, slots=True)
class RecordedPoll:
    timestamp_ns: int
    rows: tuple[Row, ...]


@dataclass(frozen=True, slots=True)
class Recording:
    """A whole recording: its polls in order and what it holds."""

    polls: tuple[RecordedPoll, ...]
    has_power: bool
    has_memory: bool
    has_energy: bool
    inferred_interval_ms: int
    """The measured cadence (module docs), or the interval given to the parser."""
    gpu_count: int = 0
    """GPUs per poll: the first poll's rows."""
    gpu_count_source: str = "identity"
    """How polls were told apart: ``identity`` (index/uuid column), ``row cycle`` (inferred from
    the timestamps) or ``--gpus`` (given)."""
    gpu_model: str = ""
    """The model given for a file without a name column ("" if none was given)."""
    stalls: int = 0
    """Times between polls longer than the credit bound: gaps in the recording."""
    credit_cap_ms: int = 0
    """The most a sample is credited (module docs, "Cadence"); 0 means the interval."""
    cadence_ns: int = 0
    """The measured cadence exactly (0 when the interval was given)."""

    @property
    def has_names(self) -> bool:
        """Whether the file names its GPUs (a name column); names given with --gpu-model, which
        a file with a name column refuses, do not count."""
        return not self.gpu_model and any(row.name for poll in self.polls[:1] for row in poll.rows)


def _split_header(cell: str) -> tuple[str, str]:
    match = _UNIT_IN_HEADER.match(cell)
    if match is None:
        return cell.strip().lower(), ""
    return match.group(1).strip().lower(), (match.group(2) or "").strip()


def _is_header(cells: list[str]) -> bool:
    return any(_split_header(c)[0] in _KNOWN for c in cells)


def parse_timestamp(text: str) -> int:
    """A recording timestamp (read as UTC) in ns since the epoch; raises ValueError."""
    text = text.strip()
    for fmt in _TIMESTAMP_FORMATS:
        try:
            moment = datetime.strptime(text, fmt)
        except ValueError:
            continue
        seconds = calendar.timegm(moment.timetuple())
        return seconds * 1_000_000_000 + moment.microsecond * 1000
    raise ValueError(f"timestamp {text!r} is not in a known format")


def _parse_number(
    text: str, header_unit: str, units: dict[str, int], default_unit: str, what: str
) -> Cell:
    """A cell as an integer in the base unit (rounded half up), or a Cell saying it is missing."""
    raw = text.strip()
    if not raw or raw.startswith("[") or raw.upper() in ("N/A", "NOT SUPPORTED"):
        return Cell(value=None, missing=raw or "empty")
    match = _NUMBER.match(raw)
    if match is None:
        raise ValueError(f"{what} {raw!r} is not a number")
    number_text, value_unit = match.groups()
    unit = (value_unit or header_unit or default_unit).lower()
    if unit not in units:
        raise ValueError(f"{what} unit {unit!r} is not one of {', '.join(units)}")
    try:
        number = Decimal(number_text) * units[unit]
    except InvalidOperation:
        raise ValueError(f"{what} {raw!r} is not a number") from None
    if number < 0:
        raise ValueError(f"{what} {raw!r} is negative")
    return Cell(value=int(number + Decimal("0.5")))


def _parse_utilization(text: str, header_unit: str) -> Cell:
    cell = _parse_number(text, header_unit, {"%": 1}, "%", "utilization.gpu")
    if cell.value is not None and cell.value > 100:
        raise ValueError(f"utilization.gpu {text.strip()!r} is over 100 %")
    return cell


def load_recording(
    path: Path,
    *,
    columns: tuple[str, ...] = (),
    sample_interval_ms: int | None = None,
    gpus: int | None = None,
    gpu_model: str = "",
) -> Recording:
    """Parse a whole recording; raises RecordingError naming the line on bad input."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecordingError(f"recording {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"cannot read recording {path}: {exc}") from None
    return parse_recording(
        text,
        str(path),
        columns=columns,
        sample_interval_ms=sample_interval_ms,
        gpus=gpus,
        gpu_model=gpu_model,
    )


def parse_recording(
    text: str,
    source: str = "<recording>",
    *,
    columns: tuple[str, ...] = (),
    sample_interval_ms: int | None = None,
    gpus: int | None = None,
    gpu_model: str = "",
) -> Recording:
    """Parse recording text (see the module docs).

    ``gpus`` is the number of GPUs per poll of a file without index or uuid column (checked
    against the file where it has one); ``gpu_model`` names the GPUs of a file without a name
    column.
    """
    if gpus is not None and gpus < 1:
        raise RecordingError(f"{source}: --gpus must be at least 1, got {gpus}")
    gpu_model = gpu_model.strip()
    if len(gpu_model) > 96:
        raise RecordingError(f"{source}: --gpu-model is longer than 96 characters")
    lines = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    numbered = [(n, row) for n, row in enumerate(lines, start=1) if any(c.strip() for c in row)]
    if not numbered:
        raise RecordingError(f"{source}: the recording is empty")
    first_line, first = numbered[0]
    if _is_header(first):
        header = [_split_header(c) for c in first]
        body = numbered[1:]
    elif columns:
        header = [_split_header(c) for c in columns]
        body = numbered
    else:
        raise RecordingError(
            f"{source}: line {first_line} is not a header; give the column names "
            "(--replay-columns or replay.columns, in --query-gpu order)"
        )
    if len(body) > MAX_ROWS:
        raise RecordingError(f"{source}: more than {MAX_ROWS} rows")
    position = {name: i for i, (name, _) in enumerate(header)}
    unit = dict(header)
    for required in ("timestamp", "utilization.gpu"):
        if required not in position:
            raise RecordingError(f"{source}: the recording has no {required} column")
    power_col = next((n for n in _POWER_NAMES if n in position), None)
    energy_col = next((n for n in _ENERGY_NAMES if n in position), None)
    has_identity = "index" in position or "uuid" in position

    def cell(row: list[str], name: str | None) -> str | None:
        if name is None or name not in position:
            return None
        i = position[name]
        return row[i] if i < len(row) else ""

    rows: list[Row] = []
    for line, raw in body:
        if len(raw) != len(header):
            raise RecordingError(
                f"{source}: line {line} has {len(raw)} columns, the header has {len(header)}"
            )
        try:
            index_text = cell(raw, "index")
            power_text = cell(raw, power_col)
            memory_text = cell(raw, "memory.used")
            energy_text = cell(raw, energy_col)
            rows.append(
                Row(
                    line=line,
                    timestamp_ns=parse_timestamp(raw[position["timestamp"]]),
                    index=int(index_text) if index_text not in (None, "") else None,
                    uuid=(cell(raw, "uuid") or "").strip(),
                    name=(cell(raw, "name") or "").strip(),
                    pci_bus_id=(cell(raw, "pci.bus_id") or "").strip(),
                    serial=(cell(raw, "serial") or "").strip(),
                    utilization_pct=_parse_utilization(
                        raw[position["utilization.gpu"]], unit["utilization.gpu"]
                    ),
                    power_mw=None
                    if power_text is None
                    else _parse_number(
                        power_text, unit[power_col or ""], _POWER_UNITS, "w", "power.draw"
                    ),
                    memory_used_bytes=None
                    if memory_text is None
                    else _parse_number(
                        memory_text, unit["memory.used"], _MEMORY_UNITS, "mib", "memory.used"
                    ),
                    energy_mj=None
                    if energy_text is None
                    else _parse_number(
                        energy_text, unit[energy_col or ""], _ENERGY_UNITS, "mj", "energy"
                    ),
                )
            )
        except ValueError as exc:
            raise RecordingError(f"{source}: line {line}: {exc}") from None
    if not rows:
        raise RecordingError(f"{source}: no samples: it has a header line and no rows")
    if has_identity:
        polls = _group_by_identity(rows, source)
        count_source = "identity"
        if gpus is not None and polls and len(polls[0].rows) != gpus:
            raise RecordingError(
                f"{source}: --gpus {gpus} given, but the index/uuid column names "
                f"{len(polls[0].rows)} GPUs in the first poll (line {polls[0].rows[0].line}); "
                "leave --gpus out for a file with an index or uuid column"
            )
    elif gpus is not None:
        polls = _group_by_count(rows, gpus, source)
        count_source = "--gpus"
    else:
        polls = _group_by_cycle(rows, source)
        count_source = "row cycle"
    if "name" in position and gpu_model:
        raise RecordingError(
            f"{source}: --gpu-model given, but the file has a name column; leave --gpu-model out"
        )
    deltas_ns = [b.timestamp_ns - a.timestamp_ns for a, b in itertools.pairwise(polls)]
    interval_ms, cadence_ns, stalls = _cadence(deltas_ns, sample_interval_ms)
    credit_cap_ms = (
        interval_ms
        if sample_interval_ms is not None
        else interval_ms * CREDIT_BOUND_NUM // CREDIT_BOUND_DEN
    )
    if gpu_model:
        polls = [
            RecordedPoll(p.timestamp_ns, tuple(_named(r, gpu_model) for r in p.rows)) for p in polls
        ]
    return Recording(
        polls=tuple(polls),
        has_power=power_col is not None,
        has_memory="memory.used" in position,
        has_energy=energy_col is not None,
        inferred_interval_ms=interval_ms,
        gpu_count=len(polls[0].rows) if polls else 0,
        gpu_count_source=count_source,
        gpu_model=gpu_model,
        stalls=stalls,
        credit_cap_ms=credit_cap_ms,
        cadence_ns=cadence_ns,
    )


def _named(row: Row, model: str) -> Row:
    return Row(
        line=row.line,
        timestamp_ns=row.timestamp_ns,
        index=row.index,
        uuid=row.uuid,
        name=model,
        pci_bus_id=row.pci_bus_id,
        serial=row.serial,
        utilization_pct=row.utilization_pct,
        power_mw=row.power_mw,
        memory_used_bytes=row.memory_used_bytes,
        energy_mj=row.energy_mj,
    )


def _cadence(deltas_ns: list[int], given_ms: int | None) -> tuple[int, int, int]:
    """The sample interval in ms (given, or the measured cadence rounded down), the cadence in ns
    (the mean time between polls leaving out stalls; 0 when given), and the number of stalls
    (times between polls longer than the credit bound)."""
    positive = [d for d in deltas_ns if d > 0]
    cadence_ns = 0
    if given_ms is not None:
        interval_ms = given_ms
    elif not positive:
        interval_ms = 1000
    else:
        median_ns = statistics.median(positive)
        steady = [d for d in positive if d * CREDIT_BOUND_DEN <= median_ns * CREDIT_BOUND_NUM]
        cadence_ns = max(NS_PER_MS, sum(steady) // len(steady))
        interval_ms = cadence_ns // NS_PER_MS
    interval_ms = max(1, interval_ms)
    bound_ns = interval_ms * NS_PER_MS * CREDIT_BOUND_NUM // CREDIT_BOUND_DEN
    return interval_ms, cadence_ns, sum(1 for d in positive if d > bound_ns)


def _check_order(polls: list[RecordedPoll], row: Row, source: str) -> None:
    if polls and row.timestamp_ns < polls[-1].rows[-1].timestamp_ns:
        raise RecordingError(f"{source}: line {row.line}: timestamps go backwards")


def _group_by_identity(rows: list[Row], source: str) -> list[RecordedPoll]:
    """A new poll starts when a GPU (index or uuid) repeats."""
    polls: list[RecordedPoll] = []
    current: list[Row] = []
    seen: set[object] = set()
    for row in rows:
        key: object = row.uuid or row.index
        if current and key in seen:
            polls.append(RecordedPoll(current[0].timestamp_ns, tuple(current)))
            current, seen = [], set()
        if current and row.timestamp_ns < current[-1].timestamp_ns:
            raise RecordingError(f"{source}: line {row.line}: timestamps go backwards")
        _check_order(polls, row, source)
        current.append(row)
        seen.add(key)
    if current:
        polls.append(RecordedPoll(current[0].timestamp_ns, tuple(current)))
    return polls


def _bursts(rows: list[Row], source: str) -> list[list[Row]]:
    """Rows split into bursts: a row POLL_SPREAD_NS or more after its burst's first starts one."""
    bursts: list[list[Row]] = []
    for row in rows:
        if bursts and row.timestamp_ns < bursts[-1][-1].timestamp_ns:
            raise RecordingError(f"{source}: line {row.line}: timestamps go backwards")
        if bursts and row.timestamp_ns - bursts[-1][0].timestamp_ns < POLL_SPREAD_NS:
            bursts[-1].append(row)
        else:
            bursts.append([row])
    return bursts


_FIX = (
    "the file has no index or uuid column, so pass the node's GPU count with --gpus N "
    "(or record with --query-gpu=timestamp,index,...)"
)


def _group_by_cycle(rows: list[Row], source: str) -> list[RecordedPoll]:
    """Polls from the row cycle (module docs), or a RecordingError naming the fix."""
    bursts = _bursts(rows, source)
    sizes = collections.Counter(len(b) for b in bursts[:-1])
    if not sizes:
        count = len(bursts[0])
    else:
        count = sizes.most_common(1)[0][0]
        odd = next((b for b in bursts[:-1] if len(b) != count), None)
        if odd is not None:
            shown = ", ".join(f"{n} rows x{k}" for n, k in sorted(sizes.items()))
            raise RecordingError(
                f"{source}: cannot group rows into polls: rows come in bursts of different sizes "
                f"({shown}; line {odd[0].line} starts one of {len(odd)}); {_FIX}"
            )
    if len(bursts[-1]) > count:
        raise RecordingError(
            f"{source}: cannot group rows into polls: the last {len(bursts[-1])} rows (from line "
            f"{bursts[-1][0].line}) are one burst, the others have {count} rows; {_FIX}"
        )
    for before, after in itertools.pairwise(bursts):
        if after[0].timestamp_ns - before[-1].timestamp_ns < MIN_POLL_SPACING_NS:
            raise RecordingError(
                f"{source}: cannot group rows into polls: line {after[0].line} follows the row "
                f"before by less than {MIN_POLL_SPACING_NS // NS_PER_MS} ms, too close to tell "
                f"a new poll from the next GPU of the same poll; {_FIX}"
            )
    return [RecordedPoll(b[0].timestamp_ns, tuple(b)) for b in bursts]


def _group_by_count(rows: list[Row], gpus: int, source: str) -> list[RecordedPoll]:
    """Polls of ``gpus`` rows in order; each poll's rows must lie closer together than the gap to
    the next poll, and a clean row cycle of another size is refused."""
    bursts = _bursts(rows, source)
    sizes = {len(b) for b in bursts[:-1]}
    if len(sizes) == 1 and gpus not in sizes:
        (cycle,) = sizes
        spaced = all(
            b[0].timestamp_ns - a[-1].timestamp_ns >= MIN_POLL_SPACING_NS
            for a, b in itertools.pairwise(bursts)
        )
        if spaced:
            raise RecordingError(
                f"{source}: --gpus {gpus} given, but every poll in the file has {cycle} "
                f"row{'s' if cycle != 1 else ''} "
                f"(polls start at line {bursts[0][0].line}, {bursts[1][0].line}, ...); "
                f"pass --gpus {cycle}, or leave it out"
            )
    chunks = [rows[i : i + gpus] for i in range(0, len(rows), gpus)]
    for chunk, following in itertools.pairwise(chunks):
        spread = chunk[-1].timestamp_ns - chunk[0].timestamp_ns
        gap = following[0].timestamp_ns - chunk[-1].timestamp_ns
        if gap <= spread:
            raise RecordingError(
                f"{source}: cannot group rows into polls of {gpus}: the rows of lines "
                f"{chunk[0].line}-{chunk[-1].line} span {spread // NS_PER_MS} ms but the next "
                f"poll (line {following[0].line}) follows {gap // NS_PER_MS} ms later; is "
                f"--gpus {gpus} the node's GPU count?"
            )
    return [RecordedPoll(c[0].timestamp_ns, tuple(c)) for c in chunks]


def _take(metric: Metric, cell: Cell | None, failures: list[MetricFailure]) -> int | None:
    """A cell's value, or None (with a failure recorded when the column exists but is empty)."""
    if cell is None:
        return None
    if cell.value is None:
        failures.append(MetricFailure(metric, cell.missing[:64], not_supported=True))
    return cell.value


def replay_gpu_uuid(node_id: str, index: int) -> str:
    """The UUID of GPU ``index`` of a recording without a uuid column, replayed as ``node_id``:
    ``GPU-`` and a UUID-shaped hex string from SHA-256 of both, so that nodes never collide."""
    digest = hashlib.sha256(f"pausewatch replay gpu\x00{node_id}\x00{index}".encode()).hexdigest()
    return f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


class ReplaySampler:
    """A :class:`~agent.sampler.base.Sampler` over a :class:`Recording`.

    Offline (the default) every ``poll`` returns the next recorded poll with its recorded
    timestamp, ignoring the clock; the daemon then runs as fast as it can. With ``realtime=True``
    the recording is laid out from the moment of ``open`` on, each poll returns the latest
    recorded poll that is due, stamped with the current time.

    ``node_id`` (the node's key id, hex) seeds the UUIDs of GPUs the file does not name
    (:func:`replay_gpu_uuid`); without it they are ``REPLAY-GPU-n``, fit only for one node.
    """

    def __init__(
        self,
        recording: Recording,
        *,
        sample_interval_ms: int | None = None,
        realtime: bool = False,
        node_id: str = "",
    ) -> None:
        self._recording = recording
        self._interval_ms = sample_interval_ms or recording.inferred_interval_ms
        self._realtime = realtime
        self._node_id = node_id
        cap_ms = self._interval_ms
        if sample_interval_ms is None and recording.credit_cap_ms:
            cap_ms = recording.credit_cap_ms
        self._intervals = IntervalTracker(self._interval_ms, credit_cap_ms=cap_ms)
        self._next = 0
        self._offset_ns = 0
        self._energy_uj: dict[str, int] = {}
        self._last_row_ns: dict[str, int] = {}
        self._identities: dict[str, GpuIdentity] = {}

    @property
    def backend(self) -> Backend:
        return Backend.REPLAY

    @property
    def sample_interval_ms(self) -> int:
        return self._interval_ms

    @property
    def cadence_ns(self) -> int:
        """The measured cadence exactly, for :class:`~agent.windows.WindowSettings` (0 when the
        interval was given)."""
        return (
            0
            if self._interval_ms != self._recording.inferred_interval_ms
            else (self._recording.cadence_ns)
        )

    @property
    def realtime(self) -> bool:
        return self._realtime

    def open(self, now_ns: int | None = None) -> None:
        if self._recording.polls:
            now = time.time_ns() if now_ns is None else now_ns
            self._offset_ns = now - self._recording.polls[0].timestamp_ns
        log.info(
            "replay opened polls=%d interval_ms=%d realtime=%s",
            len(self._recording.polls),
            self._interval_ms,
            self._realtime,
        )

    def close(self) -> None:
        """Nothing to release."""

    def inventory(self) -> tuple[GpuIdentity, ...]:
        first = self._recording.polls[0] if self._recording.polls else None
        if first is None:
            return ()
        return tuple(self._identity(row, position) for position, row in enumerate(first.rows))

    def _identity(self, row: Row, position: int) -> GpuIdentity:
        index = row.index if row.index is not None else position
        if row.uuid:
            uuid = row.uuid
        elif self._node_id:
            uuid = replay_gpu_uuid(self._node_id, index)
        else:
            uuid = f"REPLAY-GPU-{index}"
        known = self._identities.get(uuid)
        if known is not None and known.index == index and (row.name in ("", known.model)):
            return known
        identity = GpuIdentity(
            index=index,
            uuid=uuid,
            model=row.name or "unknown",
            serial=row.serial if not row.serial.startswith("[") else "",
            pci_bus_id=row.pci_bus_id,
        )
        self._identities[uuid] = identity
        return identity

    def poll(self, now_ns: int) -> Poll | None:
        polls = self._recording.polls
        if self._next >= len(polls):
            return None
        if not self._realtime:
            recorded = polls[self._next]
            self._next += 1
            return self._to_poll(recorded, recorded.timestamp_ns)
        due = self._next
        while due + 1 < len(polls) and polls[due + 1].timestamp_ns + self._offset_ns <= now_ns:
            due += 1
        if polls[due].timestamp_ns + self._offset_ns > now_ns:
            return Poll(timestamp_ns=now_ns, readings=())
        for skipped in polls[self._next : due]:
            self._integrate(skipped)  # keep the energy integral over skipped rows
        self._next = due + 1
        return self._to_poll(polls[due], now_ns)

    def _integrate(self, recorded: RecordedPoll) -> None:
        for position, row in enumerate(recorded.rows):
            self._energy_mj(self._identity(row, position).uuid, row, recorded.timestamp_ns)

    def _energy_mj(self, uuid: str, row: Row, recorded_ns: int) -> int | None:
        """The integrated counter after this row, or None if this row's power is missing."""
        last = self._last_row_ns.get(uuid)
        self._last_row_ns[uuid] = recorded_ns
        total = self._energy_uj.setdefault(uuid, 0)
        power = row.power_mw
        if power is None or power.value is None:
            return None
        if last is not None:
            total += power.value * max(0, (recorded_ns - last) // NS_PER_MS)
            self._energy_uj[uuid] = total
        return total // 1000

    def _to_poll(self, recorded: RecordedPoll, timestamp_ns: int) -> Poll:
        readings: list[GpuReading] = []
        recording = self._recording
        for position, row in enumerate(recorded.rows):
            identity = self._identity(row, position)
            failures: list[MetricFailure] = []
            notes: tuple[tuple[Metric, str], ...] = ()
            util = _take(Metric.UTILIZATION, row.utilization_pct, failures)
            power = _take(Metric.POWER, row.power_mw, failures)
            memory = _take(Metric.MEMORY_USED, row.memory_used_bytes, failures)
            energy: int | None = None
            if recording.has_energy:
                energy = _take(Metric.ENERGY, row.energy_mj, failures)
            elif recording.has_power:
                energy = self._energy_mj(identity.uuid, row, recorded.timestamp_ns)
                if energy is None:
                    failures.append(
                        MetricFailure(Metric.ENERGY, "power.draw missing", not_supported=False)
                    )
                else:
                    notes = ((Metric.ENERGY, ENERGY_INTEGRATED_NOTE),)
            flags = SampleFlags.NONE
            for value, flag in (
                (util, SampleFlags.UTILIZATION),
                (power, SampleFlags.POWER),
                (memory, SampleFlags.MEMORY_USED),
                (energy, SampleFlags.ENERGY),
            ):
                if value is not None:
                    flags |= flag
            sample = Sample(
                gpu_index=identity.index,
                timestamp_ns=timestamp_ns,
                interval_ms=self._intervals.interval_ms(identity.uuid, timestamp_ns),
                flags=flags,
                utilization_pct=util or 0,
                energy_mj=energy or 0,
                power_mw=power or 0,
                memory_used_bytes=memory or 0,
            )
            readings.append(
                GpuReading(identity=identity, sample=sample, failures=tuple(failures), notes=notes)
            )
        return Poll(timestamp_ns=timestamp_ns, readings=tuple(readings))
