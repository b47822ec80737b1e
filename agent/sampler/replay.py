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
a GPU repeats. Without either, rows of one poll are those within 200 ms of the poll's first row
(nvidia-smi prints every GPU at each loop), and GPUs are told apart by their order in the poll:
the n-th row is GPU n. Every row of a poll gets the poll's first timestamp.

**Energy.** From the energy column where there is one. Otherwise the counter is integrated from
``power.draw``: each row's power is held over the time since the GPU's previous row (the same rule
as utilisation), the counter starts at 0 mJ at the GPU's first row, and it is kept exactly in
mW x ms (= microjoules) and reported rounded down to mJ. Such a window's METRIC_ENERGY status says
``integrated from power.draw`` in its ``last_error`` field.

**Interval.** Unless given, the sample interval is the median time between consecutive polls.
"""

from __future__ import annotations

import calendar
import csv
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

GROUP_TOLERANCE_NS = 200 * NS_PER_MS
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
    path: Path, *, columns: tuple[str, ...] = (), sample_interval_ms: int | None = None
) -> Recording:
    """Parse a whole recording; raises RecordingError naming the line on bad input."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecordingError(f"recording {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"cannot read recording {path}: {exc}") from None
    return parse_recording(text, str(path), columns=columns, sample_interval_ms=sample_interval_ms)


def parse_recording(
    text: str,
    source: str = "<recording>",
    *,
    columns: tuple[str, ...] = (),
    sample_interval_ms: int | None = None,
) -> Recording:
    """Parse recording text (see the module docs)."""
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
    polls = _group(rows, has_identity, source)
    if sample_interval_ms is None:
        deltas = [
            (b.timestamp_ns - a.timestamp_ns) // NS_PER_MS for a, b in itertools.pairwise(polls)
        ]
        positive = [d for d in deltas if d > 0]
        inferred = int(statistics.median(positive)) if positive else 1000
    else:
        inferred = sample_interval_ms
    return Recording(
        polls=tuple(polls),
        has_power=power_col is not None,
        has_memory="memory.used" in position,
        has_energy=energy_col is not None,
        inferred_interval_ms=max(1, inferred),
    )


def _group(rows: list[Row], has_identity: bool, source: str) -> list[RecordedPoll]:
    polls: list[RecordedPoll] = []
    current: list[Row] = []
    seen: set[object] = set()

    def flush() -> None:
        if current:
            polls.append(RecordedPoll(timestamp_ns=current[0].timestamp_ns, rows=tuple(current)))

    for row in rows:
        key: object = row.uuid or row.index
        if current:
            if has_identity:
                starts_new = key in seen
            else:
                starts_new = row.timestamp_ns - current[0].timestamp_ns >= GROUP_TOLERANCE_NS
            if starts_new:
                flush()
                current = []
                seen = set()
        if current and row.timestamp_ns < current[0].timestamp_ns - GROUP_TOLERANCE_NS:
            raise RecordingError(f"{source}: line {row.line}: timestamps go backwards")
        if polls and row.timestamp_ns < polls[-1].timestamp_ns:
            raise RecordingError(f"{source}: line {row.line}: timestamps go backwards")
        current.append(row)
        seen.add(key)
    flush()
    return polls


def _take(metric: Metric, cell: Cell | None, failures: list[MetricFailure]) -> int | None:
    """A cell's value, or None (with a failure recorded when the column exists but is empty)."""
    if cell is None:
        return None
    if cell.value is None:
        failures.append(MetricFailure(metric, cell.missing[:64], not_supported=True))
    return cell.value


class ReplaySampler:
    """A :class:`~agent.sampler.base.Sampler` over a :class:`Recording`.

    Offline (the default) every ``poll`` returns the next recorded poll with its recorded
    timestamp, ignoring the clock; the daemon then runs as fast as it can. With ``realtime=True``
    the recording is laid out from the moment of ``open`` on, each poll returns the latest
    recorded poll that is due, stamped with the current time.
    """

    def __init__(
        self,
        recording: Recording,
        *,
        sample_interval_ms: int | None = None,
        realtime: bool = False,
    ) -> None:
        self._recording = recording
        self._interval_ms = sample_interval_ms or recording.inferred_interval_ms
        self._realtime = realtime
        self._intervals = IntervalTracker(self._interval_ms)
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
        uuid = row.uuid or f"REPLAY-GPU-{index}"
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
