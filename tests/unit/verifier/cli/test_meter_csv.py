"""Interval data files: exact energy, explicit time zones, errors that name the line."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from attest.errors import ConfigError
from verifier.cli.meter_csv import parse_interval_csv

HEADER = "meter_id,interval_start,interval_end,energy_kwh\n"


def ns(text: str) -> int:
    return int(datetime.fromisoformat(text).astimezone(UTC).timestamp()) * 10**9


def test_rows_are_read_exactly_with_their_line() -> None:
    text = (
        HEADER
        + "feed,2026-11-01T00:00:00Z,2026-11-01T00:15:00Z,312.5\n"
        + "\n"
        + "feed,2026-11-01T01:15:00+01:00,2026-11-01T01:30:00+01:00,0.000001\n"
    )
    first, second = parse_interval_csv(text, source="nov.csv")
    assert first.energy_mj == 312_500 * 3_600_000  # 312.5 kWh
    assert (first.interval_start_ns, first.interval_end_ns) == (
        ns("2026-11-01T00:00:00+00:00"),
        ns("2026-11-01T00:15:00+00:00"),
    )
    assert first.reference == "nov.csv:2"
    # +01:00 is the same instant as 00:15Z: the rows are contiguous.
    assert second.interval_start_ns == first.interval_end_ns
    assert second.energy_mj == 3_600  # a milliwatt-hour
    assert second.reference == "nov.csv:4"


def test_other_energy_units() -> None:
    text = "interval_start,interval_end,meter_id,energy_mj\n2026-11-01T00:00:00Z,2026-11-01T00:15:00Z,m,7\n"
    [row] = parse_interval_csv(text, source="f")
    assert (row.meter_id, row.energy_mj) == ("m", 7)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("meter_id,interval_start,energy_kwh\n", "no interval_end column"),
        ("meter_id,interval_start,interval_end\n", "exactly one of"),
        ("meter_id,interval_start,interval_end,energy_kwh,energy_wh\n", "exactly one of"),
        (HEADER, "no intervals"),
        (HEADER + "feed,2026-11-01T00:00:00,2026-11-01T00:15:00Z,1\n", "f:2: .* no UTC offset"),
        (HEADER + "feed,yesterday,2026-11-01T00:15:00Z,1\n", "f:2: .* not an RFC 3339"),
        (HEADER + "feed,2026-11-01T00:15:00Z,2026-11-01T00:00:00Z,1\n", "not after"),
        (HEADER + "feed,2026-11-01T00:00:00Z,2026-11-01T00:15:00Z,-1\n", "not negative"),
        (HEADER + "feed,2026-11-01T00:00:00Z,2026-11-01T00:15:00Z,NaN\n", "finite"),
        (HEADER + "feed,2026-11-01T00:00:00Z,2026-11-01T00:15:00Z,1e-13\n", "finer than"),
        (HEADER + "bad id,2026-11-01T00:00:00Z,2026-11-01T00:15:00Z,1\n", "meter id"),
        (HEADER + "feed,2026-11-01T00:00:00Z\n", "f:2: 2 columns"),
        (
            HEADER
            + "feed,2026-11-01T00:00:00Z,2026-11-01T00:15:00Z,1\n"
            + "feed,2026-11-01T00:10:00Z,2026-11-01T00:25:00Z,1\n",
            "f:3: .* before its previous one ends",
        ),
    ],
)
def test_bad_files_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_interval_csv(text, source="f")
