"""Times on the regulator's command line: the forms people write, and the exact times reports
print (nine digits of a second), which --expect-period must read back to the nanosecond."""

from __future__ import annotations

import pytest

from verifier.accounting.evaluation import format_time_ns
from verifier.cli.client import parse_time

S = 10**9
NOW = 1_796_519_504_116_814_353


@pytest.mark.parametrize(
    "timestamp_ns", [NOW, NOW - NOW % S, NOW - NOW % (S // 10), 0, 1, 10**18 + 7]
)
def test_a_printed_time_reads_back_to_the_nanosecond(timestamp_ns: int) -> None:
    assert parse_time(format_time_ns(timestamp_ns)) == timestamp_ns


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("-90s", NOW - 90 * S),
        ("2026-11-01", 1_793_491_200 * S),
        ("2026-11-01T00:00:00.5+01:00", 1_793_487_600 * S + S // 2),
        ("2026-11-01T00:00:00.000000001Z", 1_793_491_200 * S + 1),
    ],
)
def test_the_forms_people_write(text: str, expected: int) -> None:
    assert parse_time(text, now_ns=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-11-01T00:00:00.1234567890Z", "-5y", ""])
def test_what_is_not_a_time_says_so(text: str) -> None:
    with pytest.raises(ValueError, match="is not a time"):
        parse_time(text, now_ns=NOW)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("0001-01-01", "is before 1970-01-01T00:00:00Z"),
        ("1969-12-31T23:59:59.999999999Z", "is before 1970-01-01T00:00:00Z"),
        ("-99999999d", "is before 1970-01-01T00:00:00Z"),
        ("9999-12-31", "is after 2262-04-11T23:47:16Z"),
        ("2262-04-11T23:47:16.854775808Z", "is after 2262-04-11T23:47:16Z"),
    ],
)
def test_a_time_outside_what_the_protocol_carries_is_refused(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_time(text, now_ns=NOW)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1970-01-01", 0), ("2262-04-11T23:47:16.854775807Z", 2**63 - 1), ("-1s", NOW - S)],
)
def test_the_edges_of_the_range_are_times(text: str, expected: int) -> None:
    assert parse_time(text, now_ns=NOW) == expected
