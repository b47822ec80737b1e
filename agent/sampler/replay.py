"""Replay an ``nvidia-smi --query-gpu=... --format=csv`` recording as a sampler.

    recording = load_recording(Path("node7.csv"))            # read and check the whole file
    sampler = ReplaySampler(recording)                        # windows in recording time
    sampler = ReplaySampler(recording, realtime=True)         # or paced by the wall clock

What is read (header names as nvidia-smi prints them; other columns are ignored):

- ``timestamp`` (required): ``2024/05/01 12:00:00.123`` (nvidia-smi) or ISO 8601, read as UTC
  unless it names its zone (``Z``, ``+02:00``); time must never go back (a clock step, or a
  local-time log leaving daylight saving time, is refused naming both lines);
- ``utilization.gpu`` (required), ``power.draw`` (or ``power.draw.instant``/``.average``),
  ``memory.used``, ``index``, ``uuid``, ``name``, ``pci.bus_id``, ``serial``;
- a cumulative energy column if present (``total_energy_consumption`` or ``energy``; mJ, or J when
  the header or value says so).

Units may be in the header (``power.draw [W]``) or in the values (``250.12 W``), or absent
(``nounits``: the nvidia-smi defaults %, W, MiB are assumed). ``[N/A]`` and ``[Not Supported]``
mean the metric was not supported for that row; any other bracketed cell (``[Unknown Error]``,
``[GPU requires reset]``, ``[Insufficient Permissions]``, ...) is a failed read (an ERROR, with
the cell's text). Of several power columns, a row's power is the first that has a value. Without
a header, pass the column names (``columns=``, in ``--query-gpu`` order).

**The file.** Read as a stream, twice (:class:`RecordedPolls`): once to check it all and measure
its cadence, once as the polls are replayed, so memory does not grow with the recording, and a
pipe is refused. UTF-8 with or without a BOM, UTF-16 with a BOM, and gzip (by its content) are
read as they are. A line cut short by a killed recorder (the last, without its newline, or the
text before NUL bytes a power loss left) is left out with a warning; the header again (also glued
to a cut line) is a restart into the same file: the next row starts a new poll, and the last poll
before it may be short if its part held others (a part of one poll, as a shell loop writes, must
be whole). A header with other columns is refused.

**GPUs.** With an ``index``, ``uuid`` or ``pci.bus_id`` column a row belongs to that GPU, and a new
poll starts when a GPU repeats, at a restart, or after 50 ms without a row (so a GPU missing from a
poll never pulls the next poll's rows into this one). A GPU's row repeated at the same time is left
out; another row of it at the same time is refused. GPUs named without an index are numbered in
order of first appearance. Without any of these (``nvidia-smi
--query-gpu=timestamp,power.draw,utilization.gpu,...`` prints every GPU at each loop, one row each,
in a fixed order), the GPU count is read from the row cycle: rows less than 25 ms after a poll's
first row belong to that poll, every poll but the last (of the file, or before a restart) must then
have the same number of rows, and polls must lie at least 50 ms apart; the n-th row of a poll is GPU
n. A file where that does not hold is refused (:class:`RecordingError`) with the fix: ``gpus=N``
(``--gpus N``), which cuts the rows into polls of N in order and checks that each poll's rows lie
closer together than the next poll. A file never yields a guessed GPU count. Times without
milliseconds cannot tell two polls within a second apart: with polls a second apart or closer, the
row cycle is not read (``gpus`` is needed). Every row of a poll gets the poll's first timestamp.

**Names.** Without a ``name`` column every GPU's model is ``gpu_model`` (``--gpu-model NAME``), or
``unknown`` (bounded at the compute table's highest peak, and reported so). Without a ``uuid``
column, GPU n's UUID is derived from the node id (:func:`replay_gpu_uuid`), so two nodes replaying
the same kind of file never claim the same GPUs.

**Energy.** From the energy column where there is one. Otherwise the counter is integrated from
``power.draw``: each row's power is held over the whole time since the GPU's previous row (a
stall's too, as a real counter would have counted it: unlike utilisation's credit, it is not
capped), the counter starts at 0 mJ at the GPU's first row, and it is kept exactly in
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

import bz2
import calendar
import collections
import csv
import gzip
import hashlib
import io
import itertools
import logging
import lzma
import re
import stat
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TextIO, cast, overload

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
RECORD_COMMAND = (
    "nvidia-smi --query-gpu=timestamp,index,uuid,name,utilization.gpu,power.draw,memory.used "
    "--format=csv -l 1"
)
"""The recording the docs ask for (docs/agent.md, "Backends")."""
DOCS_HEADER = "timestamp, index, uuid, name, utilization.gpu [%], power.draw [W], memory.used [MiB]"
"""The header nvidia-smi prints for it."""
MAX_WARNINGS = 5
"""Lines left out that are logged one by one (then only that there were more)."""
MAX_GPUS = 4096
"""GPUs one recording may name (the command line's --gpus allows as many)."""
CACHE_LIMIT = 4096
"""Parsed cells remembered per column (values repeat); a full cache is emptied, so memory stays
bounded however long the recording."""

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
_FAST_TIMESTAMP = re.compile(
    r"^(\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}|\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2})"
    r"(?:\.(\d{1,6}))?$"
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
_NOT_SUPPORTED = frozenset(("N/A", "NOT SUPPORTED"))
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
    not_supported: bool = True
    """For a missing value: the driver does not offer the metric (``[N/A]``, ``[Not Supported]``),
    as opposed to a read that failed (``[Unknown Error]``, ``[GPU requires reset]``, ...)."""


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
    restart: bool = False
    """The first row after a repeated header: nvidia-smi was restarted into the same file."""


@dataclass(frozen=True, slots=True)
class RecordedPoll:
    timestamp_ns: int
    rows: tuple[Row, ...]


class RecordedPolls(Sequence[RecordedPoll]):
    """A recording's polls, read from the file again each time they are iterated: the parser holds
    one poll at a time, so memory does not grow with the recording. The first and last poll and
    the count are known from the first reading; other indices are reached by reading up to them
    (iterate instead)."""

    def __init__(self, reader: _Reader, survey: _Survey) -> None:
        self._reader = reader
        self._survey = survey

    def __len__(self) -> int:
        return self._survey.polls

    def __iter__(self) -> Iterator[RecordedPoll]:
        survey = self._survey
        count = 0
        last: RecordedPoll | None = None
        for poll in self._reader.polls(until_line=survey.last_line):
            count += 1
            last = poll
            yield poll
        if count != survey.polls or (last is not None and last != survey.last):
            raise RecordingError(
                f"{self._reader.source}: the file changed while it was read; replay a copy "
                "that nothing writes to"
            )

    @overload
    def __getitem__(self, index: int) -> RecordedPoll: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[RecordedPoll]: ...

    def __getitem__(self, index: int | slice) -> RecordedPoll | Sequence[RecordedPoll]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step < 0:
                return tuple(self)[index]
            return tuple(itertools.islice(self, start, stop, step))
        count = len(self)
        position = index + count if index < 0 else index
        if not 0 <= position < count:
            raise IndexError("poll index out of range")
        survey = self._survey
        if position == 0 and survey.first is not None:
            return survey.first
        if position == count - 1 and survey.last is not None:
            return survey.last
        return next(itertools.islice(self, position, None))


@dataclass(frozen=True, slots=True)
class Recording:
    """A whole recording: its polls in order and what it holds."""

    polls: Sequence[RecordedPoll]
    """The polls, in order (:class:`RecordedPolls` for a parsed file: iterate them)."""
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
        if self.gpu_model or not self.polls:
            return False
        return any(row.name for row in self.polls[0].rows)


def _split_header(cell: str) -> tuple[str, str]:
    match = _UNIT_IN_HEADER.match(cell)
    if match is None:
        return cell.strip().lower(), ""
    return match.group(1).strip().lower(), (match.group(2) or "").strip()


def _is_header(cells: list[str]) -> bool:
    return any(_split_header(c)[0] in _KNOWN for c in cells)


def parse_timestamp(text: str) -> int:
    """A recording timestamp in ns since the epoch: read as UTC, or in its own zone where it has
    one (ISO 8601 ``Z`` or ``+02:00``); raises ValueError."""
    text = text.strip()
    for fmt in _TIMESTAMP_FORMATS:
        try:
            moment = datetime.strptime(text, fmt)
        except ValueError:
            continue
        seconds = calendar.timegm(moment.timetuple())
        return seconds * 1_000_000_000 + moment.microsecond * 1000
    if "T" in text or " " in text:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if moment.tzinfo is not None:
                seconds = calendar.timegm(moment.utctimetuple())
                return seconds * 1_000_000_000 + moment.microsecond * 1000
    raise ValueError(
        f"timestamp {text!r} is not in a known format (nvidia-smi's 2024/05/01 12:00:00.123, or "
        "ISO 8601 such as 2024-05-01T12:00:00.123Z)"
    )


def _parse_number(
    text: str, header_unit: str, units: dict[str, int], default_unit: str, what: str
) -> Cell:
    """A cell as an integer in the base unit (rounded half up), or a Cell saying it is missing."""
    raw = text.strip()
    if not raw or raw.startswith("[") or raw.upper() in _NOT_SUPPORTED:
        return Cell(
            value=None,
            missing=raw or "empty",
            not_supported=not raw or raw.strip("[]").upper() in _NOT_SUPPORTED,
        )
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


def _parse_power(text: str, header_unit: str) -> Cell:
    return _parse_number(text, header_unit, _POWER_UNITS, "w", "power.draw")


def _parse_memory(text: str, header_unit: str) -> Cell:
    return _parse_number(text, header_unit, _MEMORY_UNITS, "mib", "memory.used")


def _parse_energy(text: str, header_unit: str) -> Cell:
    return _parse_number(text, header_unit, _ENERGY_UNITS, "mj", "energy")


Opener = Callable[[], TextIO]
"""Opens the recording's text afresh (each reading of the polls opens it again)."""


_NVSMI_MESSAGE = re.compile(
    r"(Unable to determine the device handle|No devices were found|NVIDIA-SMI has failed|"
    r"Failed to initialize NVML|Unable to query)"
)
"""Lines nvidia-smi writes instead of rows when it cannot read a GPU or the driver (a GPU fallen
off the bus, a driver reload): not data; the rows they stand for are missing, so a gap."""
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_COMPRESSED: tuple[tuple[bytes, Callable[[io.BufferedReader], object]], ...] = (
    (b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    (b"\xfd7zXZ\x00", lambda raw: lzma.LZMAFile(raw, mode="rb")),  # noqa: SIM115 - closed with the text
    (b"BZh", lambda raw: bz2.BZ2File(raw, mode="rb")),
)
"""Compressions read as they are (logrotate's gzip, or its xz and bzip2), by their magic bytes."""
_NOT_READ = (
    (
        b"\x28\xb5\x2f\xfd",
        "is zstd-compressed",
        "decompress it (zstd -d), or compress with gzip, xz or bzip2",
    ),
    (b"PK\x03\x04", "is a zip archive", "unzip it and replay the log inside"),
)
_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def _open_text(path: Path) -> TextIO:
    """The recording's text: compressed (gzip, xz, bzip2) or not, UTF-8 (with or without a BOM,
    as Windows editors save it) or UTF-16 with a BOM (as Windows PowerShell's ``>`` writes it)."""
    try:
        raw: io.BufferedReader = path.open("rb")
    except FileNotFoundError:
        raise RecordingError(f"{path}: the recording does not exist") from None
    except OSError as exc:
        raise RecordingError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        magic = raw.peek(8)[:8]
    except OSError as exc:
        raw.close()
        raise RecordingError(f"{path}: cannot read it: {exc}") from None
    refused = next(
        ((what, fix) for prefix, what, fix in _NOT_READ if magic.startswith(prefix)), None
    )
    if refused is not None:
        raw.close()
        raise RecordingError(f"{path}: {refused[0]}, which is not read: {refused[1]}")
    try:
        binary = raw
        for prefix, decompress in _COMPRESSED:
            if magic.startswith(prefix):
                binary = io.BufferedReader(cast("io.RawIOBase", decompress(raw)))
        head = binary.peek(3)[:3]
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raw.close()
        raise RecordingError(f"{path}: cannot read it: {exc}") from None
    encoding = next((name for bom, name in _BOMS if head.startswith(bom)), "utf-8")
    # Undecodable bytes are kept (as lone surrogates) so that the line holding them is named.
    errors = "strict" if encoding == "utf-16" else "surrogateescape"
    return io.TextIOWrapper(binary, encoding=encoding, errors=errors, newline="")


def load_recording(
    path: Path,
    *,
    columns: tuple[str, ...] = (),
    sample_interval_ms: int | None = None,
    gpus: int | None = None,
    gpu_model: str = "",
) -> Recording:
    """Read and check a whole recording (streamed: see :class:`RecordedPolls`); raises
    RecordingError naming the line on bad input."""

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise RecordingError(f"{path}: the recording does not exist") from None
    except OSError as exc:
        raise RecordingError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise RecordingError(f"{path}: is a directory, not a recording")
    if not stat.S_ISREG(mode):
        raise RecordingError(
            f"{path}: is not a regular file (a pipe or a device?): the replay reads the recording "
            "twice; save it to a file first (a gzip-compressed file is read as it is)"
        )

    def opener() -> TextIO:
        return _open_text(path)

    return _recording(
        opener,
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
    return _recording(
        lambda: io.StringIO(text, newline=""),
        source,
        columns=columns,
        sample_interval_ms=sample_interval_ms,
        gpus=gpus,
        gpu_model=gpu_model,
    )


def _recording(
    opener: Opener,
    source: str,
    *,
    columns: tuple[str, ...],
    sample_interval_ms: int | None,
    gpus: int | None,
    gpu_model: str,
) -> Recording:
    if gpus is not None and gpus < 1:
        raise RecordingError(f"{source}: --gpus must be at least 1, got {gpus}")
    gpu_model = gpu_model.strip()
    if len(gpu_model) > 96:
        raise RecordingError(f"{source}: --gpu-model is longer than 96 characters")
    reader = _Reader(opener, source, columns=columns, gpus=gpus, gpu_model=gpu_model)
    survey = reader.survey()
    spec = reader.spec
    interval_ms, cadence_ns, stalls = _cadence(survey.deltas, sample_interval_ms)
    credit_cap_ms = (
        interval_ms
        if sample_interval_ms is not None
        else interval_ms * CREDIT_BOUND_NUM // CREDIT_BOUND_DEN
    )
    return Recording(
        polls=RecordedPolls(reader, survey),
        has_power=bool(spec.power_cols),
        has_memory="memory.used" in spec.position,
        has_energy=spec.energy_col is not None,
        inferred_interval_ms=interval_ms,
        gpu_count=len(survey.first.rows) if survey.first is not None else 0,
        gpu_count_source=reader.count_source,
        gpu_model=gpu_model,
        stalls=stalls,
        credit_cap_ms=credit_cap_ms,
        cadence_ns=cadence_ns,
    )


@dataclass(slots=True)
class _Spec:
    """What the header says: the columns and their units."""

    cells: tuple[str, ...]
    line: int
    """The header's line (0 for column names given)."""
    names: tuple[tuple[str, str], ...]
    position: dict[str, int]
    unit: dict[str, str]
    power_cols: tuple[str, ...]
    energy_col: str | None
    has_identity: bool


def _spec(cells: list[str], line: int, source: str) -> _Spec:
    header = [_split_header(c) for c in cells]
    position = {name: i for i, (name, _) in enumerate(header)}
    for required in ("timestamp", "utilization.gpu"):
        if required not in position:
            where = f"the header (line {line})" if line else "the columns given"
            raise RecordingError(
                f"{source}: {where} has no {required} column: record with {RECORD_COMMAND}"
            )
    return _Spec(
        cells=tuple(cells),
        line=line,
        names=tuple(header),
        position=position,
        unit=dict(header),
        power_cols=tuple(n for n in _POWER_NAMES if n in position),
        energy_col=next((n for n in _ENERGY_NAMES if n in position), None),
        has_identity=any(n in position for n in ("index", "uuid", "pci.bus_id")),
    )


def _other_separator(cells: list[str]) -> str | None:
    """The separator of a header written with something other than commas, if it is one."""
    if len(cells) != 1:
        return None
    for separator in (";", "\t", "|"):
        if separator in cells[0] and _is_header(cells[0].split(separator)):
            return separator
    return None


def _cells(line: str) -> list[str]:
    """A CSV line's cells, stripped (nvidia-smi never quotes; a quoted cell is read as CSV)."""
    if '"' in line:
        return [c.strip() for c in next(csv.reader([line], skipinitialspace=True), [])]
    return [c.strip() for c in line.split(",")]


@dataclass(slots=True)
class _BucketDeltas:
    """Times between polls, counted per whole millisecond (count and exact sum): the cadence's
    median and mean without holding every delta."""

    buckets: dict[int, list[int]] = field(default_factory=dict)

    def add(self, delta_ns: int) -> None:
        if delta_ns <= 0:
            return
        bucket = self.buckets.setdefault(delta_ns // NS_PER_MS, [0, 0])
        bucket[0] += 1
        bucket[1] += delta_ns


@dataclass(slots=True)
class _Burst:
    first_line: int
    first_ns: int
    last_ns: int
    size: int = 1


@dataclass(slots=True)
class _CycleCheck:
    """The bursts of rows (a row POLL_SPREAD_NS or more after its burst's first starts one), kept
    as counts: what the row cycle says about the GPU count, checked once the file is read. The
    last burst before a restart (a repeated header) or the end may be short: the recorder was
    stopped mid-poll."""

    sizes: collections.Counter[int] = field(default_factory=collections.Counter)
    first_of_size: dict[int, int] = field(default_factory=dict)
    ends: dict[int, _Burst] = field(default_factory=dict)
    """Per size, the first burst cut short before a restart: the last of its part of the file,
    after at least one other (a part of one burst, as a shell loop of ``nvidia-smi`` writes,
    is a whole poll)."""
    starts: list[int] = field(default_factory=list)
    """The first two bursts' first lines (for messages)."""
    current: _Burst | None = None
    in_part: int = 0
    """Bursts before ``current`` since the last restart."""
    too_close: int = 0
    """The first line that starts a burst less than MIN_POLL_SPACING_NS after the one before."""
    closest_ns: int = 0
    """The shortest time from one burst's start to the next's (0: one burst)."""

    def add(self, row: Row) -> None:
        burst = self.current
        if burst is not None and row.timestamp_ns - burst.first_ns >= POLL_SPREAD_NS:
            since = row.timestamp_ns - burst.first_ns
            self.closest_ns = min(self.closest_ns, since) if self.closest_ns else since
        if burst is not None and row.restart:
            if self.in_part:
                self.ends.setdefault(burst.size, burst)
            else:
                self._whole(burst)
            self.in_part = 0
        elif burst is not None and row.timestamp_ns - burst.first_ns < POLL_SPREAD_NS:
            burst.size += 1
            burst.last_ns = row.timestamp_ns
            return
        elif burst is not None:
            self._whole(burst)
            self.in_part += 1
            if not self.too_close and row.timestamp_ns - burst.last_ns < MIN_POLL_SPACING_NS:
                self.too_close = row.line
        if len(self.starts) < 2:
            self.starts.append(row.line)
        self.current = _Burst(row.line, row.timestamp_ns, row.timestamp_ns)

    def _whole(self, burst: _Burst) -> None:
        self.sizes[burst.size] += 1
        self.first_of_size.setdefault(burst.size, burst.first_line)

    def check_cycle(self, source: str, *, milliseconds: bool) -> None:
        """Refuse a file whose bursts do not give one GPU count (module docs). Without
        ``milliseconds`` in its times, bursts a second apart or closer may each hold several
        polls (``-lms 500``): refused too."""
        assert self.current is not None
        if not milliseconds and 0 < self.closest_ns <= 1_000_000_000:
            raise RecordingError(
                f"{source}: cannot group rows into polls: the times have no milliseconds, so rows "
                "of two polls within a second cannot be told apart; pass the node's GPU count "
                "with --gpus N, or record with --query-gpu=timestamp,index,uuid,... (nvidia-smi "
                "prints milliseconds)"
            )
        ends = sorted([*self.ends.values(), self.current], key=lambda burst: burst.first_line)
        if not self.sizes:
            count = max(burst.size for burst in ends)
        else:
            count = self.sizes.most_common(1)[0][0]
            if len(self.sizes) > 1:
                # Where the size first changes: bursts of the first size, then another.
                (first, start), (line, size) = sorted(
                    (at, n) for n, at in self.first_of_size.items()
                )[:2]
                shown = ", ".join(f"{n} rows x{k}" for n, k in sorted(self.sizes.items()))
                raise RecordingError(
                    f"{source}: cannot group rows into polls: rows come in bursts of different "
                    f"sizes ({shown}; bursts of {start} from line {first}, then line {line} starts "
                    f"one of {size}); if a GPU left or joined, "
                    "rows without an index or uuid column cannot be matched to GPUs: record with "
                    "--query-gpu=timestamp,index,uuid,...; if not, pass the node's GPU count with "
                    "--gpus N"
                )
        big = next((burst for burst in ends if burst.size > count), None)
        if big is not None:
            which = "last" if big is self.current else "last before a restart"
            raise RecordingError(
                f"{source}: cannot group rows into polls: the {big.size} rows from line "
                f"{big.first_line} (the {which}) are one burst, the others have {count} rows; "
                f"{_FIX}"
            )
        if self.too_close:
            raise RecordingError(
                f"{source}: cannot group rows into polls: line {self.too_close} follows the row "
                f"before by less than {MIN_POLL_SPACING_NS // NS_PER_MS} ms, too close to tell "
                f"a new poll from the next GPU of the same poll; {_FIX}"
            )

    def check_count(self, gpus: int, source: str, *, milliseconds: bool) -> None:
        """Refuse --gpus N for a file whose clean row cycle has another size (never named for
        times without milliseconds a second apart: their bursts may hold several polls)."""
        if len(self.sizes) != 1 or gpus in self.sizes or self.too_close:
            return
        if not milliseconds and 0 < self.closest_ns <= 1_000_000_000:
            return
        (cycle,) = self.sizes
        raise RecordingError(
            f"{source}: --gpus {gpus} given, but every poll in the file has {cycle} "
            f"row{'s' if cycle != 1 else ''} "
            f"(polls start at line {self.starts[0]}, {self.starts[1]}, ...); "
            f"pass --gpus {cycle}, or leave it out"
        )


@dataclass(slots=True)
class _Survey:
    """What the first reading of a recording found."""

    polls: int = 0
    first: RecordedPoll | None = None
    last: RecordedPoll | None = None
    last_line: int = 0
    deltas: _BucketDeltas = field(default_factory=_BucketDeltas)


class _Reader:
    """Reads a recording's rows and polls, as often as asked (module docs)."""

    def __init__(
        self,
        opener: Opener,
        source: str,
        *,
        columns: tuple[str, ...],
        gpus: int | None,
        gpu_model: str,
    ) -> None:
        self._opener = opener
        self.source = source
        self._columns = columns
        self._gpus = gpus
        self._gpu_model = gpu_model
        self._spec: _Spec | None = None
        self._surveyed = False
        self._warnings = 0
        self._milliseconds = False
        """Whether any time had a fraction of a second."""
        self._caches: dict[str, dict[str, Cell]] = {}
        self._second: tuple[str, int] = ("", 0)
        """The last timestamp's whole seconds, as text and parsed (rows come in time order)."""

    @property
    def spec(self) -> _Spec:
        assert self._spec is not None
        return self._spec

    @property
    def count_source(self) -> str:
        if self.spec.has_identity:
            return "identity"
        return "--gpus" if self._gpus is not None else "row cycle"

    # -- lines and rows ---------------------------------------------------------------------

    def _lines(self) -> Iterator[tuple[int, list[str], bool]]:
        """The non-blank lines: number, cells, and whether the line is whole (False for a last
        line without its newline, and for the text before NUL bytes: a write cut short)."""
        source = self.source
        stream = self._opener()
        with stream:
            number = 0
            try:
                for number, line in enumerate(stream, start=1):
                    whole = line.endswith(("\n", "\r"))
                    text = line.rstrip("\r\n")
                    if "\x00" in text:
                        # A crash before the file system wrote the data back leaves NUL bytes:
                        # the text before them was cut short; text after them was appended later.
                        parts = text.split("\x00")
                        if parts[0].strip():
                            yield number, self._split(number, parts[0]), False
                        text = parts[-1]
                    if text.strip():
                        yield number, self._split(number, text), whole
            except UnicodeDecodeError as exc:
                raise RecordingError(
                    f"{source}: after line {number}: not UTF-16 text ({exc.reason}); was the "
                    "file converted or damaged?"
                ) from None
            except (EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
                raise RecordingError(
                    f"{source}: the compressed file is damaged or cut short after line {number} "
                    f"({exc}); decompress what it holds (for gzip: `zcat FILE > FILE.csv`) and "
                    "replay that"
                ) from None

    def _split(self, number: int, text: str) -> list[str]:
        undecodable = _UNDECODABLE.search(text)
        if undecodable is not None:
            raise RecordingError(
                f"{self.source}: line {number}: not UTF-8 text (byte "
                f"0x{ord(undecodable.group()) - 0xDC00:02x}); nvidia-smi writes UTF-8: was the "
                "file converted or damaged?"
            )
        try:
            return _cells(text)
        except csv.Error as exc:
            raise RecordingError(f"{self.source}: line {number}: {exc}") from None

    def _warn(self, line: int, what: str) -> None:
        """Say what was left out, on the first reading only, and the first few times only."""
        if self._surveyed:
            return
        self._warnings += 1
        if self._warnings <= MAX_WARNINGS:
            log.warning("%s: line %d: %s", self.source, line, what)
        if self._warnings == MAX_WARNINGS:
            log.warning("%s: further lines left out are not listed", self.source)

    def rows(self, until_line: int = 0) -> Iterator[Row]:
        """The rows after the header (up to ``until_line`` when given), parsed and checked; the
        header is read now."""
        source = self.source
        lines = self._lines()
        first = next(lines, None)
        while first is not None and _NVSMI_MESSAGE.match(first[1][0]):
            self._warn(first[0], f"nvidia-smi's message {', '.join(first[1])!r}: left out")
            first = next(lines, None)
        if first is None:
            raise RecordingError(f"{source}: the recording is empty")
        first_line, cells, _ = first
        if _is_header(cells):
            spec = _spec(cells, first_line, source)
        elif self._columns:
            spec = _spec(list(self._columns), 0, source)
            lines = itertools.chain([first], lines)
        elif (separator := _other_separator(cells)) is not None:
            raise RecordingError(
                f"{source}: line {first_line} separates its cells with {separator!r} (re-saved by "
                "a spreadsheet?): nvidia-smi writes commas; replay the original log, or save it "
                "again as CSV with commas"
            )
        elif cells[0].startswith("#"):
            raise RecordingError(
                f"{source}: line {first_line} looks like `nvidia-smi dmon` output, which is not "
                f"read: record with {RECORD_COMMAND}"
            )
        else:
            raise RecordingError(
                f"{source}: line {first_line} is not a header (--format=csv,noheader leaves it "
                "out): add the header line nvidia-smi prints for the --query-gpu fields, such as "
                f"'{DOCS_HEADER}', or give the column names (--replay-columns)"
            )
        if self._spec is None:
            self._spec = spec
        elif spec.cells != self._spec.cells:
            raise RecordingError(
                f"{source}: the file changed while it was read; replay a copy that nothing "
                "writes to"
            )
        return self._body(lines, spec, until_line)

    def _body(
        self, lines: Iterator[tuple[int, list[str], bool]], spec: _Spec, until_line: int
    ) -> Iterator[Row]:
        source = self.source
        width = len(spec.cells)
        at = spec.position["timestamp"]
        restart = False
        for line, cells, whole in lines:
            if until_line and line > until_line:
                return
            if len(cells) != width or not cells[at][:1].isdigit():
                # Not a plain row: a header again (a restart), half a row, nvidia-smi saying why it
                # has no row, or a bad line.
                if _NVSMI_MESSAGE.match(cells[0]):
                    self._warn(line, f"nvidia-smi's message {', '.join(cells)!r}: left out")
                    continue
                verdict = self._odd_line(line, cells, spec)
                if verdict == "restart":
                    restart = True
                    continue
                if verdict == "cut" or (not whole and len(cells) != width):
                    self._warn(line, "cut short (the recorder was stopped mid-line): left out")
                    restart = restart or verdict == "cut"
                    continue
                if len(cells) != width:
                    where = f"the header (line {spec.line})" if spec.line else "the columns given"
                    raise RecordingError(
                        f"{source}: line {line} has {len(cells)} columns, {where} has {width}: "
                        "a line cut short, or rows of another recording? delete it, or split the "
                        "file there"
                    )
            try:
                row = self._row(line, cells, spec, restart)
            except ValueError as exc:
                if not whole:
                    self._warn(line, "cut short (the recorder was stopped mid-line): left out")
                    continue
                raise RecordingError(f"{source}: line {line}: {exc}") from None
            restart = False
            yield row

    def _odd_line(self, line: int, cells: list[str], spec: _Spec) -> str:
        """``restart`` for the header again, ``cut`` for half a row with the header glued to it
        (killed mid-line, restarted with ``>>``), "" for anything else; a header with other
        columns is refused."""
        names = tuple(_split_header(c) for c in cells)
        if names == spec.names:
            return "restart"
        width = len(spec.names)
        extra = len(cells) - width
        if (
            extra > 0
            and names[extra + 1 :] == spec.names[1:]
            and names[extra][0].endswith(spec.names[0][0])
        ):
            return "cut"
        if _is_header(cells):
            first = f"line {spec.line}'s" if spec.line else "the columns given"
            raise RecordingError(
                f"{self.source}: line {line} is a header with other columns than {first}: the "
                f"file holds two recordings; split it at line {line} and replay each"
            )
        return ""

    def _timestamp_ns(self, text: str) -> int:
        match = _FAST_TIMESTAMP.match(text)
        if match is None:
            self._milliseconds = self._milliseconds or "." in text
            return parse_timestamp(text)
        whole, fraction = match.groups()
        self._milliseconds = self._milliseconds or fraction is not None
        known, seconds = self._second
        if whole != known:
            seconds = parse_timestamp(whole) // 1_000_000_000
            self._second = (whole, seconds)
        return seconds * 1_000_000_000 + (int(fraction.ljust(9, "0")) if fraction else 0)

    def _cell(self, column: str, text: str, parse: Callable[[str, str], Cell]) -> Cell:
        """``parse(text, header_unit)``, remembered per column."""
        cache = self._caches.setdefault(column, {})
        cell = cache.get(text)
        if cell is None:
            cell = parse(text, self.spec.unit[column])
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[text] = cell
        return cell

    def _row(self, line: int, cells: list[str], spec: _Spec, restart: bool) -> Row:
        position = spec.position

        def text(name: str) -> str:
            i = position.get(name)
            return "" if i is None else cells[i]

        power: Cell | None = None
        for column in spec.power_cols:  # the first with a value: power.draw, .instant, .average
            cell = self._cell(column, cells[position[column]], _parse_power)
            if power is None or (power.value is None and cell.value is not None):
                power = cell
        memory: Cell | None = None
        if "memory.used" in position:
            memory = self._cell("memory.used", cells[position["memory.used"]], _parse_memory)
        energy: Cell | None = None
        if spec.energy_col is not None:
            energy = self._cell(spec.energy_col, cells[position[spec.energy_col]], _parse_energy)
        index_text = text("index")
        if index_text and not index_text.isdigit():
            raise ValueError(f"index {index_text!r} is not a GPU index (0, 1, ...)")
        return Row(
            line=line,
            timestamp_ns=self._timestamp_ns(cells[position["timestamp"]]),
            index=int(index_text) if index_text else None,
            uuid=text("uuid"),
            name=text("name") or self._gpu_model,
            pci_bus_id=text("pci.bus_id"),
            serial=text("serial"),
            utilization_pct=self._cell(
                "utilization.gpu", cells[position["utilization.gpu"]], _parse_utilization
            ),
            power_mw=power,
            memory_used_bytes=memory,
            energy_mj=energy,
            restart=restart,
        )

    # -- polls ------------------------------------------------------------------------------

    def polls(
        self, until_line: int = 0, check: _CycleCheck | None = None
    ) -> Iterator[RecordedPoll]:
        """The rows grouped into polls (module docs, "GPUs"); ``check`` sees every row."""
        rows = self.rows(until_line)
        if check is not None:
            rows = _observed(rows, check)
        if self.spec.has_identity:
            return _identity_polls(rows, self.source, self._warn)
        if self._gpus is not None:
            return _count_polls(rows, self._gpus, self.source)
        return _burst_polls(rows, self.source)

    def survey(self) -> _Survey:
        """Read the whole recording once: check it, count its polls, measure its cadence."""
        source, gpus = self.source, self._gpus
        check = _CycleCheck()
        polls = self.polls(check=check)
        spec = self.spec
        survey = _Survey()
        chunk_problem = ""
        previous: RecordedPoll | None = None
        for poll in polls:
            if previous is None:
                survey.first = poll
            else:
                survey.deltas.add(poll.timestamp_ns - previous.timestamp_ns)
                restarted = poll.rows[0].restart
                if (
                    gpus is not None
                    and not spec.has_identity
                    and not chunk_problem
                    and not restarted
                ):
                    chunk_problem = _chunk_problem(previous, poll, gpus, source)
            survey.polls += 1
            survey.last = previous = poll
        if survey.first is None or survey.last is None:
            raise RecordingError(f"{source}: no samples: it has a header line and no rows")
        survey.last_line = max(row.line for row in survey.last.rows)
        if spec.has_identity:
            if gpus is not None and len(survey.first.rows) != gpus:
                raise RecordingError(
                    f"{source}: --gpus {gpus} given, but the file names "
                    f"{len(survey.first.rows)} GPUs in the first poll (line "
                    f"{survey.first.rows[0].line}); leave --gpus out for a file with an index "
                    "or uuid column"
                )
        elif gpus is not None:
            check.check_count(gpus, source, milliseconds=self._milliseconds)
            if chunk_problem:
                raise RecordingError(chunk_problem)
        else:
            check.check_cycle(source, milliseconds=self._milliseconds)
        if "name" in spec.position and self._gpu_model:
            raise RecordingError(
                f"{source}: --gpu-model given, but the file has a name column; leave --gpu-model "
                "out"
            )
        self._surveyed = True
        return survey


def _observed(rows: Iterator[Row], check: _CycleCheck) -> Iterator[Row]:
    for row in rows:
        check.add(row)
        yield row


def _cadence(deltas: _BucketDeltas, given_ms: int | None) -> tuple[int, int, int]:
    """The sample interval in ms (given, or the measured cadence rounded down), the cadence in ns
    (the mean time between polls leaving out stalls; 0 when given), and the number of stalls
    (times between polls longer than the credit bound)."""
    buckets = sorted(deltas.buckets.items())
    cadence_ns = 0
    if given_ms is not None:
        interval_ms = given_ms
    elif not buckets:
        interval_ms = 1000
    else:
        # A bucket's deltas are one whole millisecond apart at most, and equal for nvidia-smi's
        # millisecond timestamps: its mean stands for each of them.
        total = sum(count for _, (count, _) in buckets)
        middle: list[int] = []
        seen = 0
        for _, (count, sum_ns) in buckets:
            for wanted in ((total - 1) // 2, total // 2):
                if seen <= wanted < seen + count:
                    middle.append(sum_ns // count)
            seen += count
        median_twice = middle[0] + middle[-1]
        steady_count = steady_ns = 0
        for _, (count, sum_ns) in buckets:
            if sum_ns // count * CREDIT_BOUND_DEN * 2 <= median_twice * CREDIT_BOUND_NUM:
                steady_count += count
                steady_ns += sum_ns
        cadence_ns = max(NS_PER_MS, steady_ns // steady_count)
        interval_ms = cadence_ns // NS_PER_MS
    interval_ms = max(1, interval_ms)
    bound_ns = interval_ms * NS_PER_MS * CREDIT_BOUND_NUM // CREDIT_BOUND_DEN
    stalls = sum(count for _, (count, sum_ns) in buckets if sum_ns // count > bound_ns)
    return interval_ms, cadence_ns, stalls


def _backwards(row: Row, previous: Row | None, source: str) -> None:
    """Refuse time going back, saying why it does and what to do."""
    if previous is None or row.timestamp_ns >= previous.timestamp_ns:
        return
    back_ms = (previous.timestamp_ns - row.timestamp_ns) // NS_PER_MS
    before = _format_ns(previous.timestamp_ns)
    raise RecordingError(
        f"{source}: line {row.line}: the time goes back {back_ms // 1000}.{back_ms % 1000:03d} s, "
        f"to {_format_ns(row.timestamp_ns)} from {before} on line {previous.line}: the clock was "
        "stepped back (NTP), or the log is in local time and daylight saving time ended. The "
        "same time cannot be replayed twice: record with TZ=UTC (nvidia-smi prints local time); "
        f"for this file, delete the rows from line {row.line} on that are not later than "
        f"{before}, or convert its times to UTC"
    )


def _identity_polls(
    rows: Iterator[Row], source: str, warn: Callable[[int, str], None]
) -> Iterator[RecordedPoll]:
    """A new poll starts when a GPU (uuid, index or PCI bus id) repeats, at a restart, or after a
    pause between rows longer than a poll's spread (so that a GPU's missing row never makes the
    next poll's rows join this one). A GPU's row repeated at the same time is left out; with other
    values it is refused."""
    current: list[Row] = []
    seen: set[object] = set()
    previous: Row | None = None
    last: dict[object, Row] = {}
    for row in rows:
        _backwards(row, previous, source)
        key: object = row.uuid or (row.index if row.index is not None else row.pci_bus_id)
        before = last.get(key)
        if before is not None and before.timestamp_ns == row.timestamp_ns:
            if replace(row, line=before.line, restart=before.restart) != before:
                raise RecordingError(
                    f"{source}: line {row.line}: GPU {key} has a second row at "
                    f"{_format_ns(row.timestamp_ns)} (line {before.line}) with other values; rows "
                    "of one GPU need distinct times: are the milliseconds cut off, or were two "
                    "recordings merged?"
                )
            warn(row.line, f"repeats line {before.line}: left out")
            continue
        if current and (
            key in seen
            or row.restart
            or row.timestamp_ns - current[-1].timestamp_ns >= MIN_POLL_SPACING_NS
        ):
            yield RecordedPoll(current[0].timestamp_ns, tuple(current))
            current, seen = [], set()
        if before is None and len(last) >= MAX_GPUS:
            raise RecordingError(f"{source}: line {row.line}: more than {MAX_GPUS} GPUs")
        current.append(row)
        seen.add(key)
        last[key] = previous = row
    if current:
        yield RecordedPoll(current[0].timestamp_ns, tuple(current))


def _format_ns(timestamp_ns: int) -> str:
    """A time as nvidia-smi prints it (``2024/05/01 12:00:00.123``; the file's time, read as
    UTC)."""
    moment = datetime.fromtimestamp(timestamp_ns // 1_000_000_000, tz=UTC)
    return f"{moment:%Y/%m/%d %H:%M:%S}.{timestamp_ns // NS_PER_MS % 1000:03d}"


def _burst_polls(rows: Iterator[Row], source: str) -> Iterator[RecordedPoll]:
    """Bursts: a row POLL_SPREAD_NS or more after its burst's first starts one."""
    burst: list[Row] = []
    previous: Row | None = None
    for row in rows:
        _backwards(row, previous, source)
        if burst and (row.restart or row.timestamp_ns - burst[0].timestamp_ns >= POLL_SPREAD_NS):
            yield RecordedPoll(burst[0].timestamp_ns, tuple(burst))
            burst = []
        burst.append(row)
        previous = row
    if burst:
        yield RecordedPoll(burst[0].timestamp_ns, tuple(burst))


def _count_polls(rows: Iterator[Row], gpus: int, source: str) -> Iterator[RecordedPoll]:
    """Polls of ``gpus`` rows in order."""
    chunk: list[Row] = []
    previous: Row | None = None
    for row in rows:
        _backwards(row, previous, source)
        if chunk and row.restart:
            yield RecordedPoll(chunk[0].timestamp_ns, tuple(chunk))
            chunk = []
        chunk.append(row)
        previous = row
        if len(chunk) == gpus:
            yield RecordedPoll(chunk[0].timestamp_ns, tuple(chunk))
            chunk = []
    if chunk:
        yield RecordedPoll(chunk[0].timestamp_ns, tuple(chunk))


def _chunk_problem(chunk: RecordedPoll, following: RecordedPoll, gpus: int, source: str) -> str:
    """Why two polls of --gpus rows cannot be polls ("" if they can): each poll's rows must lie
    closer together than the gap to the next poll."""
    rows = chunk.rows
    spread = rows[-1].timestamp_ns - rows[0].timestamp_ns
    gap = following.rows[0].timestamp_ns - rows[-1].timestamp_ns
    if gap > spread:
        return ""
    return (
        f"{source}: cannot group rows into polls of {gpus}: the rows of lines "
        f"{rows[0].line}-{rows[-1].line} span {spread // NS_PER_MS} ms but the next "
        f"poll (line {following.rows[0].line}) follows {gap // NS_PER_MS} ms later; is "
        f"--gpus {gpus} the node's GPU count?"
    )


_FIX = (
    "the file has no index or uuid column, so pass the node's GPU count with --gpus N "
    "(or record with --query-gpu=timestamp,index,...)"
)


def _take(metric: Metric, cell: Cell | None, failures: list[MetricFailure]) -> int | None:
    """A cell's value, or None (with a failure recorded when the column exists but is empty)."""
    if cell is None:
        return None
    if cell.value is None:
        failures.append(MetricFailure(metric, cell.missing[:64], not_supported=cell.not_supported))
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
    recorded poll that is due, stamped with the current time. The recording is read once, in
    order, as the polls are asked for.

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
        self._polls: Iterator[RecordedPoll] | None = None
        self._ahead: RecordedPoll | None = None
        self._offset_ns = 0
        self._energy_uj: dict[str, int] = {}
        self._last_row_ns: dict[str, int] = {}
        self._identities: dict[tuple[int, str, str], GpuIdentity] = {}
        self._order: dict[str, int] = {}

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
        if not self._recording.polls:
            return ()
        first = self._recording.polls[0]
        return tuple(self._identity(row, position) for position, row in enumerate(first.rows))

    def _identity(self, row: Row, position: int) -> GpuIdentity:
        if row.index is not None:
            index = row.index
        elif row.uuid or row.pci_bus_id:
            # Named without an index: numbered in order of first appearance, so that a GPU
            # lost from the poll never shifts the others' indices.
            name = row.uuid or row.pci_bus_id
            index = self._order.setdefault(name, len(self._order))
        else:
            index = position
        key = (index, row.uuid, row.name)
        known = self._identities.get(key)
        if known is not None:
            return known
        if row.uuid:
            uuid = row.uuid
        elif self._node_id:
            uuid = replay_gpu_uuid(self._node_id, index)
        else:
            uuid = f"REPLAY-GPU-{index}"
        identity = GpuIdentity(
            index=index,
            uuid=uuid,
            model=row.name or "unknown",
            serial=row.serial if not row.serial.startswith("[") else "",
            pci_bus_id=row.pci_bus_id,
        )
        if len(self._identities) >= CACHE_LIMIT:
            self._identities.clear()
        self._identities[key] = identity
        return identity

    def _next(self) -> RecordedPoll | None:
        """The next recorded poll, read from the recording (None at its end)."""
        if self._ahead is not None:
            recorded, self._ahead = self._ahead, None
            return recorded
        if self._polls is None:
            self._polls = iter(self._recording.polls)
        return next(self._polls, None)

    def poll(self, now_ns: int) -> Poll | None:
        due = self._next()
        if due is None:
            return None
        if not self._realtime:
            return self._to_poll(due, due.timestamp_ns)
        if due.timestamp_ns + self._offset_ns > now_ns:
            self._ahead = due
            return Poll(timestamp_ns=now_ns, readings=())
        while (later := self._next()) is not None:
            if later.timestamp_ns + self._offset_ns > now_ns:
                self._ahead = later
                break
            self._integrate(due)  # keep the energy integral over skipped rows
            due = later
        return self._to_poll(due, now_ns)

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
            flags = 0
            if util is not None:
                flags |= _UTILIZATION
            if power is not None:
                flags |= _POWER
            if memory is not None:
                flags |= _MEMORY_USED
            if energy is not None:
                flags |= _ENERGY
            sample = Sample(
                gpu_index=identity.index,
                timestamp_ns=timestamp_ns,
                interval_ms=self._intervals.interval_ms(identity.uuid, timestamp_ns),
                flags=SampleFlags(flags),
                utilization_pct=util or 0,
                energy_mj=energy or 0,
                power_mw=power or 0,
                memory_used_bytes=memory or 0,
            )
            readings.append(
                GpuReading(identity=identity, sample=sample, failures=tuple(failures), notes=notes)
            )
        return Poll(timestamp_ns=timestamp_ns, readings=tuple(readings))


_UTILIZATION = int(SampleFlags.UTILIZATION)
_POWER = int(SampleFlags.POWER)
_MEMORY_USED = int(SampleFlags.MEMORY_USED)
_ENERGY = int(SampleFlags.ENERGY)
