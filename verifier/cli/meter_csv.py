"""The regulator's interval data files (CSV), read exactly, for ``pausewatch site import``.

    intervals = parse_interval_csv(Path("feed-2026-11.csv").read_text(), source="feed-2026-11.csv")
    intervals[0].energy_mj, intervals[0].reference          # 1125000000000, "feed-2026-11.csv:2"

The format (docs/site-power.md): a header row, then one row per interval::

    meter_id,interval_start,interval_end,energy_kwh
    utility-feed,2026-11-01T00:00:00Z,2026-11-01T00:15:00Z,312.5

- ``interval_start`` / ``interval_end``: RFC 3339 timestamps with an explicit offset (``Z`` or
  ``+01:00``). A timestamp without an offset is refused: local time is ambiguous at a DST change.
- exactly one energy column: ``energy_kwh``, ``energy_wh`` or ``energy_mj``; decimals are read
  exactly and must come to a whole number of millijoules.
- rows of one meter in time order, without overlaps (a hole is allowed: it becomes a METER_GAP).
Every error names the file and line. Green Button (ESPI) XML is not read: convert it to this form.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

from attest.errors import ConfigError
from attest.meter import is_meter_id

_ENERGY_COLUMNS = {"energy_kwh": 3_600_000_000, "energy_wh": 3_600_000, "energy_mj": 1}
_REQUIRED = ("meter_id", "interval_start", "interval_end")
MAX_ROWS = 1_000_000


@dataclass(frozen=True, slots=True)
class Interval:
    """One row of an interval file."""

    meter_id: str
    interval_start_ns: int
    interval_end_ns: int
    energy_mj: int
    reference: str
    """``file:line``, carried into the signed reading as its import_reference."""


def _timestamp_ns(text: str, where: str) -> int:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not an RFC 3339 timestamp") from None
    if moment.tzinfo is None:
        raise ConfigError(
            f"{where}: {text!r} has no UTC offset (write Z or +hh:mm: local time is ambiguous)"
        )
    seconds = int(moment.timestamp())
    return seconds * 10**9 + moment.microsecond * 1_000


def _energy_mj(text: str, scale: int, where: str) -> int:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ConfigError(f"{where}: {text!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise ConfigError(f"{where}: energy must be a finite number, not negative")
    scaled = value * scale
    if scaled != scaled.to_integral_value():
        raise ConfigError(f"{where}: {text!r} is finer than a millijoule")
    return int(scaled)


def parse_interval_csv(text: str, *, source: str) -> list[Interval]:
    """Every interval of a file, in file order; raises :class:`ConfigError` naming the line."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise ConfigError(f"{source}: the file is empty (it needs a header row)") from None
    missing = [name for name in _REQUIRED if name not in header]
    if missing:
        raise ConfigError(f"{source}:1: the header has no {missing[0]} column")
    energy = [name for name in header if name in _ENERGY_COLUMNS]
    if len(energy) != 1:
        raise ConfigError(
            f"{source}:1: the header needs exactly one of energy_kwh, energy_wh, energy_mj"
        )
    column = {name: header.index(name) for name in (*_REQUIRED, energy[0])}
    scale = _ENERGY_COLUMNS[energy[0]]
    out: list[Interval] = []
    last_end: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        where = f"{source}:{line}"
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ConfigError(f"{where}: {len(row)} columns, the header has {len(header)}")
        if len(out) >= MAX_ROWS:
            raise ConfigError(f"{source}: more than {MAX_ROWS} rows; split the file")
        meter_id = row[column["meter_id"]].strip()
        if not is_meter_id(meter_id):
            raise ConfigError(f"{where}: {meter_id!r} is not a valid meter id")
        start_ns = _timestamp_ns(row[column["interval_start"]], where)
        end_ns = _timestamp_ns(row[column["interval_end"]], where)
        if end_ns <= start_ns:
            raise ConfigError(f"{where}: interval_end is not after interval_start")
        if start_ns < last_end.get(meter_id, 0):
            raise ConfigError(
                f"{where}: meter {meter_id}'s interval starts before its previous one ends "
                "(rows of a meter must be in time order, without overlaps)"
            )
        last_end[meter_id] = end_ns
        out.append(
            Interval(
                meter_id=meter_id,
                interval_start_ns=start_ns,
                interval_end_ns=end_ns,
                energy_mj=_energy_mj(row[column[energy[0]]], scale, where),
                reference=f"{source}:{line}",
            )
        )
    if not out:
        raise ConfigError(f"{source}: no intervals after the header")
    return out
