"""The compliance report as one self-contained HTML page for a regulator, with the lab's compute
drawn against its declared thresholds (the HTML form of ``pausewatch audit report``).

    from pathlib import Path
    from verifier.audit.report_html import render_chart, render_html

    page = render_html(report)          # report: a pausewatch.v1.ComplianceReport
    Path("lab-a-2026-11.html").write_text(page, encoding="utf-8")
    svg = render_chart(report)          # the chart alone, an inline <svg>

The page shows the header (lab, period, as-of time, policy id, version and digest, log tree size,
GPU table version), the verdict with its reasons, the data-quality banner right under it
(:mod:`verifier.accounting.data_quality`, and any notes the caller adds), the chart, each rule's
result (measured against limit, with its method, worst stretch and evidence), coverage, totals with
their methods, and the gaps, findings, nodes and per-bucket accounts as tables. Amounts show in
scientific notation (three significant digits, rounded down) with the exact integer on hover
(``title``) and in ``data-exact``, in the tables and in the reasons' and summaries' prose alike.
The rules table has fixed column widths, so long ids and methods wrap rather than widen the page.
An unattested what-if analysis (``pausewatch audit analyse``) passes ``analysis_notice``: a
banner above everything says so.

It is self-contained and inert: inline CSS, the chart as inline SVG drawn here, no script, no
external reference of any kind (no fonts, images, links or CDNs), and a Content-Security-Policy of
``default-src 'none'`` that would block one if it slipped in. Every string taken from the report
(lab ids, node names, finding summaries come from outside) goes through :func:`html.escape`.

The chart (``<svg id="compute-chart">``) plots, over the period in UTC, the upper-bound FLOP per
bucket as bars (left axis) and, as a line (right axis), for each ``cumulative_flop`` rule the
upper bound summed over the trailing run of buckets that rule measures (its window, or the whole
period when shorter): the very sum its limit is compared with, so the line crosses the limit where
the rule is broken and nowhere else. Rules with the same run share a line; without cumulative
rules, the line is the sum from the period's start and no limit is drawn against it. Both axes
are **logarithmic** (powers of ten), each spanning its data *and* the limits drawn on it, so a
limit many orders of magnitude above the data is still on the chart and the data still readable;
zero is drawn on the baseline. Drawn against them: each ``cumulative_flop`` limit as a
horizontal line on the cumulative axis, each ``sustained_rate`` limit converted to FLOP per bucket
(FLOP/s x bucket seconds) on the per-bucket axis, every gap shaded (clipped to the period; open gaps
too), each violated rule's worst stretch marked (dashed edges across the plot, unfilled, and a band
with the rule's label in a lane of its own at the top, up to five lanes and then "and N more"), and
the time after ``as_of`` hatched. With
more buckets than pixel columns, each column draws the largest bucket in it; the exact figures are
in the accounts table (consecutive buckets summed exactly when there are many). FLOP amounts are
Python ints; they become floats only as pixel positions, never as displayed numbers.

Stable hooks for tests and tools: ``id="verdict"`` with ``data-verdict``; ``id="plot-area"``;
``class="series-upper"`` and ``class="series-cumulative"`` paths; ``class="gap"`` rects with
``data-start-ns``, ``data-end-ns``, ``data-node``; ``class="threshold"`` lines with ``data-rule``,
``data-limit`` (the rule's limit as reported) and ``data-drawn-flop``; ``class="violation"`` rects
with ``data-rule`` (and ``violation-lane`` rects and ``violation-label`` texts with it);
``id="data-quality"`` with ``data-warnings``; ``id="analysis-notice"`` on an analysis.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf.descriptor import EnumDescriptor
from pausewatch.v1 import audit_pb2 as pb
from pausewatch.v1 import findings_pb2, site_pb2

from verifier.accounting.data_quality import data_quality_warnings
from verifier.accounting.evaluation import acceptance_text, format_time_ns, lab_title, rooting_text
from verifier.accounting.policy import format_duration_ns, format_ppm, scientific

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_S

CHART_WIDTH = 1100
CHART_HEIGHT = 520
PLOT_LEFT = 84.0
PLOT_RIGHT = CHART_WIDTH - 92.0
PLOT_TOP = 92.0
PLOT_BOTTOM = CHART_HEIGHT - 60.0
MAX_DECADES_BELOW_DATA = 12
"""A FLOP axis reaches at most this many powers of ten below its largest datum, unless a limit is
lower: smaller buckets are drawn 1 px high."""
MAX_VIOLATION_LANES = 5
"""Violated rules get a lane each at the top of the plot, up to this many (then "and N more")."""
LANE_HEIGHT = 16
LANE_TOP = 8
"""The lanes start this far below the plot's top edge (gaps stay visible along it)."""
MAX_SERIES_ROWS = 240
"""The accounts table sums consecutive buckets exactly so that it has at most this many rows."""
_MAX_DIGITS = 4_000
"""Longer digit strings are not amounts (and ``int()`` refuses them past 4300 digits)."""

_VERDICT_MEANING = {
    "COMPLIANT": "Every rule holds and the evidence covers the period.",
    "VIOLATION": "A rule is broken: see the rules below for the amount, limit and evidence.",
    "UNACCOUNTED": (
        "No rule is broken by what was attested, but coverage or gaps leave time unaccounted for."
    ),
    "INVALID": (
        "Evidence failed verification: equivocation, or a bad signature from an enrolled key."
    ),
}
_BADGES = frozenset(
    {"PASS", "VIOLATION", "UNACCOUNTED", "DETECTED", "INFO", "WARNING", "CRITICAL"}
    | {"NVML", "SIM", "REPLAY"}
    | {"OPEN", "CLOSED", "BOUNDED", "UNBOUNDED", "LATE"}
)
"""Words with a badge colour of their own (outcomes, severities, gap states)."""
_TIME_STEPS_NS = [
    seconds * NS_PER_S
    for seconds in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)
] + [hours * 3_600 * NS_PER_S for hours in (12, 24, 48, 168, 336, 672, 1344, 2184, 4368, 8736)]
_MAX_TIME_TICKS = 8
_MAX_FLOP_TICKS = 8

_CSS = """
:root { --ink: #1b1f24; --muted: #5b6470; --line: #d5dae1; --bg-soft: #f5f7fa;
  --ok: #1e7b34; --bad: #b3261e; --warn: #9a6700; --invalid: #6f42c1; }
* { box-sizing: border-box; }
html { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { margin: 0 auto; max-width: 1180px; padding: 24px 28px 48px; color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
h1 { font-size: 24px; margin: 2px 0 10px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid var(--line);
  padding-bottom: 4px; }
.stamp-box { margin: 12px 0; padding: 8px 12px; border-radius: 6px; border: 1px solid;
  overflow-wrap: anywhere; }
.stamp-server { color: var(--ink); background: var(--bg-soft); border-color: var(--muted); }
.stamp-verified { color: #0f4d20; background: #e6f4ea; border-color: var(--ok); }
.stamp-failed { color: #7a1610; background: #fdeceb; border-color: var(--bad); }
.kicker { margin: 0; color: var(--muted); text-transform: uppercase; letter-spacing: .06em;
  font-size: 12px; }
.mono, .exact, code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace;
  font-size: 12.5px; }
.exact, .nowrap { white-space: nowrap; }
.amount { font-weight: 600; white-space: nowrap; border-bottom: 1px dotted var(--muted);
  cursor: help; }
td { overflow-wrap: anywhere; }
table.rules { table-layout: fixed; }
table.rules .stamp { white-space: nowrap; font-size: 12px; }
table.rules .exact { white-space: normal; overflow-wrap: anywhere; }
.analysis-notice { margin: 0 0 14px; padding: 10px 14px; border: 2px dashed #6f42c1;
  border-radius: 6px; background: #f5f0fe; color: #3e1f7a; font-weight: 700; }
.analysis-notice small { display: block; font-weight: 400; }
.quality { margin: -8px 0 20px; padding: 10px 16px; border-radius: 6px; border: 1px solid;
  break-inside: avoid; }
.quality h2 { margin: 0 0 4px; padding: 0; border: none; font-size: 15px; }
.quality ul { margin: 0; padding-left: 20px; }
.quality li { overflow-wrap: anywhere; margin: 2px 0; }
.quality-warn { background: #fff5d6; border-color: var(--warn); color: #4a3200; }
.quality-ok { background: var(--bg-soft); border-color: var(--line); color: var(--muted); }
td .sci { display: block; }
.table-wrap { overflow-x: auto; }
.sci { color: var(--muted); white-space: nowrap; }
.muted { color: var(--muted); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 3px 18px; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.verdict { margin: 20px 0; padding: 14px 18px; border-radius: 6px; border: 2px solid;
  border-left-width: 12px; break-inside: avoid; }
.verdict .verdict-label { margin: 0; font-size: 12px; text-transform: uppercase;
  letter-spacing: .08em; }
.verdict .verdict-word { margin: 0; font-size: 34px; font-weight: 800; letter-spacing: .03em; }
.verdict .verdict-meaning { margin: 2px 0 8px; font-weight: 600; }
.verdict ul { margin: 0; padding-left: 20px; }
.verdict li { overflow-wrap: anywhere; }
.verdict-compliant { color: #0f4d20; background: #e6f4ea; border-color: var(--ok); }
.verdict-violation { color: #7a1610; background: #fdeceb; border-color: var(--bad); }
.verdict-unaccounted { color: #5c3d00; background: #fff5d6; border-color: var(--warn); }
.verdict-invalid { color: #3e1f7a; background: #f1eafd; border-color: var(--invalid); }
.verdict-unknown { color: var(--ink); background: var(--bg-soft); border-color: var(--muted); }
figure.chart { margin: 8px 0 0; break-inside: avoid; }
figure.chart svg { display: block; width: 100%; height: auto; border: 1px solid var(--line);
  border-radius: 4px; background: #fff; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 6px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 4px; font-size: 13px; }
th, td { text-align: left; vertical-align: top; padding: 4px 8px;
  border-bottom: 1px solid var(--line); }
th { background: var(--bg-soft); font-weight: 600; }
td.num, th.num { text-align: right; }
tr.rule-summary td { color: var(--muted); font-size: 12.5px; border-bottom-width: 2px;
  overflow-wrap: anywhere; }
tr.rule-row td { border-bottom: none; }
.evidence { font-family: "DejaVu Sans Mono", Menlo, monospace; font-size: 12px; color: var(--ink); }
td.text { overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 0 7px; border-radius: 10px; font-size: 12px;
  font-weight: 700; white-space: nowrap; border: 1px solid; }
.badge-nvml, .badge-pass, .badge-info, .badge-closed, .badge-bounded {
  color: var(--ok); background: #e6f4ea; }
.badge-violation, .badge-critical { color: var(--bad); background: #fdeceb; }
.badge-sim, .badge-replay, .badge-unaccounted, .badge-detected, .badge-warning, .badge-open,
.badge-unbounded, .badge-late {
  color: var(--warn); background: #fff5d6; }
.badge-unknown { color: var(--muted); background: var(--bg-soft); }
.meter { height: 10px; background: #f3d7d4; border-radius: 5px; max-width: 420px; overflow: hidden;
  margin: 4px 0; }
.meter span { display: block; height: 100%; background: var(--ok); }
.empty { color: var(--muted); font-style: italic; }
footer { margin-top: 32px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line);
  padding-top: 8px; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  h2 { break-after: avoid; }
  thead { display: table-header-group; }
  tr { break-inside: avoid; }
  figure.chart svg { border: none; }
  .exact, .nowrap { white-space: normal; overflow-wrap: anywhere; }
  .table-wrap { overflow: visible; }
}
svg.site-chart { display: block; width: 100%; height: auto; border: 1px solid var(--line); }
svg.site-chart text { font: 12px system-ui, "DejaVu Sans", sans-serif; fill: #3d4550; }
svg.site-chart .axis { stroke: #6b7480; stroke-width: 1; }
.site-metered { fill: none; stroke: #14285e; stroke-width: 2.5; stroke-linejoin: round; }
.site-attested { fill: none; stroke: #2f8f5b; stroke-width: 2; stroke-dasharray: 6 4; }
.site-excess { fill: #d7261e; fill-opacity: .18; }
.site-unmetered { fill: #9aa3ad; fill-opacity: .25; }
"""

_SVG_CSS = """
#compute-chart text { font: 12px system-ui, "DejaVu Sans", sans-serif; fill: #1b1f24; }
#compute-chart .axis-title { font-weight: 600; }
#compute-chart .tick-label { fill: #3d4550; }
#compute-chart .tick-label-upper { fill: #2f6aa3; }
#compute-chart .tick-label-cumulative { fill: #14285e; }
#compute-chart .grid { stroke: #e6e9ee; stroke-width: 1; }
#compute-chart .axis { stroke: #6b7480; stroke-width: 1; }
.series-upper, .swatch-upper { fill: #8db5e2; stroke: none; }
.series-upper-outline { fill: none; stroke: #3f78b5; stroke-width: 1; }
.series-cumulative, .swatch-cumulative { fill: none; stroke: #14285e; stroke-width: 2.5;
  stroke-linejoin: round; }
.gap, .swatch-gap { fill: #f0a500; fill-opacity: .22; stroke: #c98a00; stroke-opacity: .6;
  stroke-width: .75; }
.violation { fill: none; stroke: #d7261e; stroke-width: 1.25; stroke-dasharray: 5 3; }
.violation-lane, .swatch-violation { fill: #d7261e; fill-opacity: .22; stroke: #d7261e;
  stroke-width: 1; }
#compute-chart .violation-label { fill: #a1150f; font-weight: 700; paint-order: stroke;
  stroke: #fff; stroke-width: 3px; }
.threshold-cumulative, .swatch-threshold-cumulative { stroke: #c0211a; stroke-width: 2;
  stroke-dasharray: 10 5; fill: none; }
.threshold-rate, .swatch-threshold-rate { stroke: #d2691e; stroke-width: 2;
  stroke-dasharray: 3 3; fill: none; }
#compute-chart .threshold-label { font-weight: 700; paint-order: stroke; stroke: #fff;
  stroke-width: 3px; }
#compute-chart .threshold-label-cumulative { fill: #c0211a; }
#compute-chart .threshold-label-rate { fill: #a9500f; }
.after-as-of, .swatch-after-as-of { fill: url(#hatch); }
#compute-chart .as-of { stroke: #5b6470; stroke-width: 1.5; stroke-dasharray: 2 3; }
#compute-chart .note { fill: #5b6470; font-style: italic; }
"""


# --- small helpers -------------------------------------------------------------------------------


def _e(text: object) -> str:
    """``text`` escaped for HTML text and double-quoted attribute values."""
    return html.escape(str(text), quote=True)


def _int(text: str) -> int | None:
    """A decimal amount from the report, or ``None`` when the field is not one."""
    if not text or len(text) > _MAX_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def _px(value: float) -> str:
    """A pixel coordinate as SVG text."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _enum_word(enum: EnumDescriptor, value: int, prefix: str) -> str:
    """An enum value's name without its prefix; a value this build does not know says so."""
    known = enum.values_by_number.get(value)
    return known.name.removeprefix(prefix) if known is not None else f"UNKNOWN ({value})"


def _node_label(name: str, node_id: bytes) -> str:
    return name or node_id.hex()[:16] or "(unnamed)"


def _decade(amount: int) -> int:
    """The power of ten of the leading digit of a positive ``amount``: floor(log10(amount))."""
    return len(str(amount)) - 1


def _utc(timestamp_ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=timestamp_ns // 1_000)


# --- cells ---------------------------------------------------------------------------------------


def _flop_html(amount: int | None, raw: str = "", unit: str = "FLOP") -> str:
    """An amount in scientific notation first (three significant digits, rounded down), the exact
    integer on hover (``title``) and in ``data-exact``; below 1000, the exact integer alone."""
    if amount is None:
        return f'<span class="exact">{_e(raw or "-")}</span>'
    if amount < 1000:
        return f'<span class="exact" data-exact="{amount}">{amount}</span> {unit}'
    return (
        f'<span class="amount" data-exact="{amount}" title="exactly {amount} {unit}">'
        f"{_e(scientific(amount))} {unit}</span>"
    )


def _amount_html(value: str, unit: str) -> str:
    """A rule's measured amount or limit, exact, with a reading aid for its unit."""
    amount = _int(value)
    if amount is None:
        return f'<span class="exact">{_e(value or "-")}</span>'
    match unit:
        case "flop":
            return _flop_html(amount)
        case "flop_per_s":
            return _flop_html(amount, unit="FLOP/s")
        case "ppm":
            return (
                f'<span class="exact">{amount}</span> ppm '
                f'<span class="sci">({_e(format_ppm(amount))})</span>'
            )
        case "ms":
            return (
                f'<span class="exact">{amount}</span> ms '
                f'<span class="sci">({_e(format_duration_ns(amount * NS_PER_MS))})</span>'
            )
        case _:
            sci = f' <span class="sci">({_e(scientific(amount))})</span>' if amount >= 1000 else ""
            return f'<span class="exact">{amount}</span> {_e(unit)}{sci}'


_EXACT_THEN_SCIENTIFIC = re.compile(r"\b(\d{4,}) \((\d\.\d\de\d+)\)")
"""An exact amount followed by its scientific notation, as the evaluation's prose writes them."""


def _prose_html(text: str) -> str:
    """Reasons and summaries escaped, with each "<exact> (<scientific>)" amount shown the page's
    way: scientific first, the exact integer on hover."""
    return _EXACT_THEN_SCIENTIFIC.sub(
        lambda m: f'<span class="amount" data-exact="{m[1]}" title="exactly {m[1]}">{m[2]}</span>',
        _e(text),
    )


def _time_html(timestamp_ns: int) -> str:
    return f'<span class="nowrap">{_e(format_time_ns(timestamp_ns))}</span>'


def _badge(word: str) -> str:
    kind = word.lower() if word in _BADGES else "unknown"
    return f'<span class="badge badge-{kind}">{_e(word)}</span>'


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Collection[int] = ()
) -> str:
    """A table from pre-escaped cell HTML."""
    align = [' class="num"' if i in numeric else "" for i in range(len(headers))]
    head = "".join(f'<th{a} scope="col">{_e(h)}</th>' for a, h in zip(align, headers, strict=True))
    body = "\n".join(
        "<tr>"
        + "".join(f"<td{a}>{cell}</td>" for a, cell in zip(align, row, strict=True))
        + "</tr>"
        for row in rows
    )
    return (
        f'<div class="table-wrap"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
        "</tbody>\n</table></div>"
    )


# --- chart: scales -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TimeScale:
    """Maps ns since the epoch in ``[start_ns, end_ns]`` to x pixels (clamped to the plot)."""

    start_ns: int
    end_ns: int

    def x(self, timestamp_ns: int) -> float:
        span = max(1, self.end_ns - self.start_ns)
        offset = min(max(timestamp_ns - self.start_ns, 0), span)
        return PLOT_LEFT + offset / span * (PLOT_RIGHT - PLOT_LEFT)


@dataclass(frozen=True, slots=True)
class _LogScale:
    """Maps FLOP to y pixels on a log10 axis from 10**low to 10**high; 0 sits on the baseline."""

    low: int
    high: int
    top: float = PLOT_TOP
    """The y pixel of 10**high (below the plot's top when a lane for labels is kept above)."""
    empty: bool = False
    """Nothing positive to show: the axis has only its baseline, 0."""

    def y(self, amount: int) -> float:
        if amount <= 0:
            return PLOT_BOTTOM
        fraction = (math.log10(amount) - self.low) / (self.high - self.low)
        fraction = min(max(fraction, 0.0), 1.0)
        return PLOT_BOTTOM - fraction * (PLOT_BOTTOM - self.top)

    def ticks(self) -> list[tuple[int, str]]:
        """Tick amounts and their labels: powers of ten (every k-th when there are many), with
        2x and 5x between them when the axis spans few decades."""
        if self.empty:
            return [(0, "0")]
        span = self.high - self.low
        step = max(1, math.ceil(span / _MAX_FLOP_TICKS))
        ticks = [(10**k, f"1e{k}") for k in range(self.low, self.high + 1, step)]
        if span <= 2:
            ticks += [(m * 10**k, f"{m}e{k}") for k in range(self.low, self.high) for m in (2, 5)]
        return sorted(ticks)


def _log_scale(data: Sequence[int], limits: Sequence[int], top: float) -> _LogScale:
    """A log axis that shows the data and every limit: from one power of ten below the smallest
    positive datum (so that the smallest bar has height; but at most ``MAX_DECADES_BELOW_DATA``
    below the largest datum, so that one tiny bucket cannot squash the rest) or below the
    smallest limit, whichever is lower, up to the power of ten above the largest of them all."""
    positive_data = [amount for amount in data if amount > 0]
    positive_limits = [amount for amount in limits if amount > 0]
    if not positive_data and not positive_limits:
        return _LogScale(0, 1, top, empty=True)
    high = _decade(max(positive_data + positive_limits)) + 1
    if positive_data:
        low = max(
            _decade(min(positive_data)) - 1, _decade(max(positive_data)) - MAX_DECADES_BELOW_DATA
        )
    else:
        low = high - 3
    if positive_limits:
        low = min(low, _decade(min(positive_limits)) - 1)
    return _LogScale(min(low, high - 1), high, top)


def _time_ticks(start_ns: int, end_ns: int) -> tuple[int, list[int]]:
    """A round step (from 1 s to a year) giving at most ``_MAX_TIME_TICKS`` ticks in the period,
    and the ticks: multiples of the step since the epoch (so UTC midnights for whole days)."""
    span = max(1, end_ns - start_ns)
    step = next((s for s in _TIME_STEPS_NS if span // s <= _MAX_TIME_TICKS), 0)
    if step == 0:
        step = math.ceil(span / _MAX_TIME_TICKS / NS_PER_DAY) * NS_PER_DAY
    first = -(-start_ns // step) * step
    return step, list(range(first, end_ns + 1, step))


# --- chart: drawing ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Column:
    """One drawn bar: a bucket, or every bucket in one pixel column when there are many."""

    x0: float
    x1: float
    upper_flop: int
    """The largest bucket in the column (max per pixel column)."""
    end_ns: int
    cumulative_flop: int
    """The cumulative upper bound at the end of the column's last bucket."""


@dataclass(frozen=True, slots=True)
class _Threshold:
    rule_id: str
    limit: str
    drawn_flop: int
    axis: str
    label: str


def _bucket_width_ns(report: pb.ComplianceReport) -> int:
    if report.bucket_ns > 0:
        return report.bucket_ns
    return max(1, (report.period_end_ns - report.period_start_ns) // max(1, len(report.series)))


def _columns(report: pb.ComplianceReport, time: _TimeScale) -> list[_Column]:
    """The series as bars: one per bucket while each gets at least 2 px, else one per pixel column
    holding the largest bucket in it."""
    width_ns = _bucket_width_ns(report)
    points = sorted(
        (point.bucket_start_ns, _int(point.upper_bound_flop) or 0) for point in report.series
    )
    plot_px = int(PLOT_RIGHT - PLOT_LEFT)
    per_bucket = len(points) * 2 <= plot_px
    columns: list[_Column] = []
    cumulative = 0
    for start_ns, upper in points:
        cumulative += upper
        end_ns = start_ns + width_ns
        x0, x1 = time.x(start_ns), time.x(end_ns)
        if per_bucket:
            columns.append(_Column(x0, x1, upper, end_ns, cumulative))
            continue
        left = PLOT_LEFT + min(int(x0 - PLOT_LEFT), plot_px - 1)
        if columns and columns[-1].x0 == left:
            last = columns[-1]
            columns[-1] = _Column(left, left + 1, max(last.upper_flop, upper), end_ns, cumulative)
        else:
            columns.append(_Column(left, left + 1, upper, end_ns, cumulative))
    return columns


@dataclass(frozen=True, slots=True)
class _Line:
    """The line on the right axis: the upper bound summed over a trailing run of ``buckets``
    buckets, as the cumulative rules with that run measure it; per column, the largest value."""

    buckets: int
    rules: tuple[str, ...]
    values: tuple[int, ...]
    """One per column."""

    @property
    def from_start(self) -> bool:
        return not self.rules


def _rule_run_buckets(report: pb.ComplianceReport, rule: pb.RuleResult) -> int:
    """How many buckets a cumulative rule sums: its worst run's length (its window, or the whole
    period when that is shorter)."""
    width = _bucket_width_ns(report)
    run = (rule.worst_end_ns - rule.worst_start_ns) // width
    return run if run > 0 else max(1, len(report.series))


def _lines(report: pb.ComplianceReport, columns: Sequence[_Column]) -> list[_Line]:
    """One line per distinct run length of the cumulative rules (each is what its limit is
    compared with); without cumulative rules, the cumulative sum from the period's start."""
    uppers = [
        _int(point.upper_bound_flop) or 0
        for point in sorted(report.series, key=lambda p: p.bucket_start_ns)
    ]
    ends = sorted(point.bucket_start_ns for point in report.series)
    width = _bucket_width_ns(report)
    runs: dict[int, list[str]] = {}
    for rule in report.rules:
        if rule.kind == pb.RULE_KIND_CUMULATIVE_FLOP and _int(rule.limit) is not None:
            runs.setdefault(min(_rule_run_buckets(report, rule), len(uppers) or 1), []).append(
                rule.rule_id
            )
    wanted = sorted(runs.items()) or [(len(uppers) or 1, [])]
    lines: list[_Line] = []
    for buckets, rules in wanted:
        sums: list[int] = []
        total = 0
        for i, upper in enumerate(uppers):
            total += upper
            if rules and i >= buckets:
                total -= uppers[i - buckets]
            sums.append(total)
        values: list[int] = []
        position = 0
        for column in columns:
            best = 0
            while position < len(sums) and ends[position] + width <= column.end_ns:
                best = max(best, sums[position]) if rules else sums[position]
                position += 1
            values.append(best if rules else (values[-1] if values and best == 0 else best))
        lines.append(_Line(buckets, tuple(rules), tuple(values)))
    return lines


def _line_words(report: pb.ComplianceReport, line: _Line) -> str:
    if line.from_start:
        return "upper bound summed from the period's start (no limit applies to it)"
    window = format_duration_ns(line.buckets * _bucket_width_ns(report))
    return f"upper bound summed over the trailing {window}: what {', '.join(line.rules)} limit"


def _thresholds(report: pb.ComplianceReport) -> list[_Threshold]:
    found: list[_Threshold] = []
    bucket_ns = _bucket_width_ns(report)
    for rule in report.rules:
        limit = _int(rule.limit)
        if limit is None:
            continue
        figure = "" if rule.method in ("", "upper_bound") else f", {rule.method.replace('_', ' ')}"
        if rule.kind == pb.RULE_KIND_CUMULATIVE_FLOP:
            label = f"{rule.rule_id} limit {scientific(limit)} FLOP{figure}"
            found.append(_Threshold(rule.rule_id, rule.limit, limit, "cumulative", label))
        elif rule.kind == pb.RULE_KIND_SUSTAINED_RATE:
            per_bucket = limit * bucket_ns // NS_PER_S
            label = (
                f"{rule.rule_id} limit {scientific(limit)} FLOP/s = {scientific(per_bucket)} "
                f"FLOP per {format_duration_ns(bucket_ns)} bucket{figure}"
            )
            found.append(_Threshold(rule.rule_id, rule.limit, per_bucket, "rate", label))
    return found


def _legend(items: Sequence[tuple[str, str]]) -> str:
    """Swatches and words in rows above the plot; ``items`` are (swatch SVG at 0,0, words)."""
    parts = ['<g class="legend">']
    x, y = PLOT_LEFT, 18.0
    for swatch, words in items:
        width = 30 + len(words) * 6.4 + 22
        if x + width > CHART_WIDTH - 12 and x > PLOT_LEFT:
            x, y = PLOT_LEFT, y + 20
        parts.append(
            f'<g transform="translate({_px(x)},{_px(y)})">{swatch}'
            f'<text x="30" y="4">{_e(words)}</text></g>'
        )
        x += width
    parts.append("</g>")
    return "".join(parts)


def _legend_items(
    has_rate: bool, has_after_as_of: bool, line_words: Sequence[str] = ()
) -> list[tuple[str, str]]:
    items = [
        ('<rect x="0" y="-6" width="22" height="12" class="swatch-upper"/>',
         "bars: upper-bound FLOP in each bucket (left axis)"),
    ]  # fmt: skip
    items += [
        ('<line x1="0" y1="0" x2="22" y2="0" class="swatch-cumulative"/>',
         f"line: {words} (right axis)")
        for words in line_words or ["cumulative upper bound from the period's start"]
    ]  # fmt: skip
    items.append(
        (
            '<line x1="0" y1="0" x2="22" y2="0" class="swatch-threshold-cumulative"/>',
            "cumulative_flop limit, compared with its line (right axis)",
        )
    )
    if has_rate:
        items.append(
            (
                '<line x1="0" y1="0" x2="22" y2="0" class="swatch-threshold-rate"/>',
                "sustained_rate limit x bucket seconds (left axis)",
            )
        )
    items += [
        ('<rect x="0" y="-6" width="22" height="12" class="swatch-gap"/>',
         "gap: unattested node time (darker where several nodes)"),
        ('<rect x="0" y="-6" width="22" height="12" class="swatch-violation"/>',
         "violated rule: worst stretch (its lane at the top, dashed edges)"),
    ]  # fmt: skip
    if has_after_as_of:
        items.append(
            (
                '<rect x="0" y="-6" width="22" height="12" class="swatch-after-as-of"/>',
                "after the as-of time: no evidence yet",
            )
        )
    return items


def _spread_labels(wanted: Sequence[float], top: float, gap: float = 14.0) -> list[float]:
    """Label baselines near ``wanted`` (ascending y) at least ``gap`` apart, below ``top``."""
    placed: list[float] = []
    for want in wanted:
        y = max(want, top + 12)
        if placed and y < placed[-1] + gap:
            y = placed[-1] + gap
        placed.append(y)
    overflow = placed[-1] - (PLOT_BOTTOM - 4) if placed else 0.0
    if overflow > 0:
        placed = [y - overflow for y in placed]
    return placed


def render_chart(report: pb.ComplianceReport) -> str:
    """The chart alone, as an inline ``<svg id="compute-chart">`` (see the module docstring)."""
    time = _TimeScale(report.period_start_ns, max(report.period_end_ns, report.period_start_ns + 1))
    columns = _columns(report, time)
    thresholds = _thresholds(report)
    violated = [rule for rule in report.rules if rule.outcome == pb.RULE_OUTCOME_VIOLATION]
    # A lane per violated rule at the top of the plot, above the data (a last one says how many
    # more there are when they do not all fit).
    lanes = min(len(violated), MAX_VIOLATION_LANES) + (len(violated) > MAX_VIOLATION_LANES)
    data_top = PLOT_TOP + LANE_TOP + 6 + LANE_HEIGHT * max(lanes, 1)
    upper = _log_scale(
        [c.upper_flop for c in columns],
        [t.drawn_flop for t in thresholds if t.axis == "rate"],
        data_top,
    )
    lines = _lines(report, columns)
    cumulative = _log_scale(
        [value for line in lines for value in line.values],
        [t.drawn_flop for t in thresholds if t.axis == "cumulative"],
        data_top,
    )
    after_as_of = report.period_start_ns <= report.as_of_ns < report.period_end_ns
    plot_w, plot_h = PLOT_RIGHT - PLOT_LEFT, PLOT_BOTTOM - PLOT_TOP
    full_height = f'y="{_px(PLOT_TOP)}" height="{_px(plot_h)}"'
    out: list[str] = [
        f'<svg id="compute-chart" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" '
        f'width="{CHART_WIDTH}" height="{CHART_HEIGHT}" role="img" '
        'aria-labelledby="chart-title chart-desc" data-y-scale="log10" '
        f'data-buckets="{len(report.series)}" data-columns="{len(columns)}" '
        f'data-upper-decades="{upper.low}..{upper.high}" '
        f'data-cumulative-decades="{cumulative.low}..{cumulative.high}">',
        '<title id="chart-title">Upper-bound compute over the period against the declared '
        "limits</title>",
        f'<desc id="chart-desc">{len(report.series)} buckets of '
        f"{_e(format_duration_ns(_bucket_width_ns(report)))}, {len(report.gaps)} gaps, "
        f"{len(thresholds)} limits drawn; logarithmic FLOP axes.</desc>",
        f"<style>{_SVG_CSS}</style>",
        '<defs><pattern id="hatch" width="8" height="8" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="8" height="8" fill="#f2f3f5"/>'
        '<line x1="0" y1="0" x2="0" y2="8" stroke="#b8bec6" stroke-width="3"/></pattern>'
        f'<clipPath id="plot-clip"><rect x="{_px(PLOT_LEFT)}" {full_height} '
        f'width="{_px(plot_w)}"/></clipPath></defs>',
        _legend(
            _legend_items(
                any(t.axis == "rate" for t in thresholds),
                after_as_of,
                [_line_words(report, line) for line in lines],
            )
        ),
        f'<rect id="plot-area" x="{_px(PLOT_LEFT)}" {full_height} width="{_px(plot_w)}" '
        'fill="#fff" stroke="none"/>',
    ]
    out += _axes(report, time, upper, cumulative)

    # Behind the data: the time after as-of.
    if after_as_of:
        x = time.x(report.as_of_ns)
        out.append(
            f'<rect class="after-as-of" x="{_px(x)}" {full_height} width="{_px(PLOT_RIGHT - x)}">'
            f"<title>after the as-of time {_e(format_time_ns(report.as_of_ns))}: no evidence "
            "yet, neither attested nor a gap</title></rect>"
            f'<line class="as-of" x1="{_px(x)}" x2="{_px(x)}" y1="{_px(PLOT_TOP)}" '
            f'y2="{_px(PLOT_BOTTOM)}"/>'
        )

    # The per-bucket bars.
    bars = "".join(
        f"M{_px(c.x0 + _bar_inset(c))},{_px(PLOT_BOTTOM)}"
        f"V{_px(min(upper.y(c.upper_flop), PLOT_BOTTOM - 1))}"
        f"H{_px(max(c.x1 - _bar_inset(c), c.x0 + _bar_inset(c) + 0.5))}V{_px(PLOT_BOTTOM)}Z"
        for c in columns
        if c.upper_flop > 0
    )
    out.append(f'<path class="series-upper" clip-path="url(#plot-clip)" d="{bars}"/>')
    if len(columns) < len(report.series):
        # One-pixel columns are faint: outline their tops so that a lone spike shows.
        tops = "".join(
            f"{'M' if i == 0 else 'L'}{_px(c.x0)},{_px(upper.y(c.upper_flop))}H{_px(c.x1)}"
            for i, c in enumerate(columns)
        )
        out.append(f'<path class="series-upper-outline" clip-path="url(#plot-clip)" d="{tops}"/>')

    # Over the bars, translucent: gaps and the violated rules' worst stretches.
    for item in report.gaps:
        gap = item.gap
        x0, x1 = _span_px(time, gap.gap_start_ns, gap.gap_end_ns)
        name = _node_label(item.node_name, item.node_id)
        out.append(
            f'<rect class="gap" data-start-ns="{gap.gap_start_ns}" '
            f'data-end-ns="{gap.gap_end_ns}" data-node="{_e(name)}" '
            f'data-open="{"true" if item.open else "false"}" '
            f'data-late="{"true" if item.late else "false"}" x="{_px(x0)}" {full_height} '
            f'width="{_px(x1 - x0)}"><title>{"late evidence" if item.late else "gap"} on node '
            f"{_e(name)}: "
            f"{_e(format_time_ns(gap.gap_start_ns))} to {_e(format_time_ns(gap.gap_end_ns))} "
            f"({_e(format_duration_ns(gap.gap_end_ns - gap.gap_start_ns))})"
            f"{', open' if item.open else ''}</title></rect>"
        )
    for index, rule in enumerate(violated):
        x0, x1 = _span_px(time, rule.worst_start_ns, rule.worst_end_ns)
        # The stretch's edges, dashed, across the plot (no fill: several never tint the chart);
        # a band and the rule's label in its own lane.
        out.append(
            f'<rect class="violation" data-rule="{_e(rule.rule_id)}" '
            f'data-start-ns="{rule.worst_start_ns}" data-end-ns="{rule.worst_end_ns}" '
            f'x="{_px(x0)}" {full_height} width="{_px(x1 - x0)}">'
            f"<title>{_e(rule.rule_id)}: worst stretch, "
            f"{_e(format_time_ns(rule.worst_start_ns))} to "
            f"{_e(format_time_ns(rule.worst_end_ns))}</title></rect>"
        )
        if index >= MAX_VIOLATION_LANES:
            continue
        band_y = PLOT_TOP + LANE_TOP + LANE_HEIGHT * index
        text = f"VIOLATION {rule.rule_id}"
        width = 7.2 * len(text)
        if x1 + 6 + width <= PLOT_RIGHT:
            anchor, label_x = "start", x1 + 6
        elif x0 - 6 - width >= PLOT_LEFT:
            anchor, label_x = "end", x0 - 6
        else:
            anchor, label_x = "start", max(PLOT_LEFT + 4, x0 + 4)
        out.append(
            f'<rect class="violation-lane" data-rule="{_e(rule.rule_id)}" x="{_px(x0)}" '
            f'y="{_px(band_y)}" width="{_px(max(x1 - x0, 2.0))}" height="{_px(LANE_HEIGHT - 5)}">'
            f"<title>{_e(rule.rule_id)}: worst stretch</title></rect>"
            f'<text class="violation-label" data-rule="{_e(rule.rule_id)}" x="{_px(label_x)}" '
            f'y="{_px(band_y + LANE_HEIGHT - 7)}" text-anchor="{anchor}">{_e(text)}</text>'
        )
    if len(violated) > MAX_VIOLATION_LANES:
        more = len(violated) - MAX_VIOLATION_LANES
        out.append(
            f'<text class="violation-label" x="{_px(PLOT_LEFT + 4)}" '
            f'y="{_px(PLOT_TOP + LANE_TOP + LANE_HEIGHT * (MAX_VIOLATION_LANES + 1) - 7)}">'
            f"and {more} more violated rule{'s' if more > 1 else ''}: see the rules table</text>"
        )

    # The lines over them: each the sum its cumulative limits are compared with.
    for drawn_line in lines:
        path = f"M{_px(columns[0].x0)},{_px(PLOT_BOTTOM)}" if columns else ""
        path += "".join(
            f"L{_px(c.x1)},{_px(cumulative.y(value))}"
            for c, value in zip(columns, drawn_line.values, strict=True)
        )
        out.append(
            f'<path class="series-cumulative" data-run-buckets="{drawn_line.buckets}" '
            f'data-rules="{_e(" ".join(drawn_line.rules))}" clip-path="url(#plot-clip)" '
            f'aria-label="{_e(_line_words(report, drawn_line))}" d="{path}"/>'
        )
    if not columns:
        message = "no buckets in the period: nothing attested to draw"
    elif not any(c.upper_flop for c in columns):
        message = "every bucket is 0 FLOP"
    else:
        message = ""
    if message:
        out.append(
            f'<text class="note" x="{_px((PLOT_LEFT + PLOT_RIGHT) / 2)}" '
            f'y="{_px((data_top + PLOT_BOTTOM) / 2)}" text-anchor="middle">{message}</text>'
        )

    # On top: the limits; cumulative ones labelled at the left end of the plot (where the
    # cumulative line is lowest), rate ones at the right end.
    for axis, label_x, anchor in (
        ("cumulative", PLOT_LEFT + 6, "start"),
        ("rate", PLOT_RIGHT - 6, "end"),
    ):
        scale = cumulative if axis == "cumulative" else upper
        drawn = sorted(
            ((scale.y(t.drawn_flop), i, t) for i, t in enumerate(thresholds) if t.axis == axis)
        )
        for y, _, threshold in drawn:
            out.append(
                f'<line class="threshold threshold-{axis}" '
                f'data-rule="{_e(threshold.rule_id)}" data-limit="{_e(threshold.limit)}" '
                f'data-drawn-flop="{threshold.drawn_flop}" data-axis="{axis}" '
                f'x1="{_px(PLOT_LEFT)}" x2="{_px(PLOT_RIGHT)}" y1="{_px(y)}" y2="{_px(y)}">'
                f"<title>{_e(threshold.label)}</title></line>"
            )
        # One label per drawn limit: rules with the same limit share it, so several never stack.
        groups: dict[tuple[int, str], list[_Threshold]] = {}
        for _, _, threshold in drawn:
            suffix = threshold.label[len(threshold.rule_id) :]
            groups.setdefault((threshold.drawn_flop, suffix), []).append(threshold)
        placed = [(scale.y(flop), suffix, items) for (flop, suffix), items in groups.items()]
        label_ys = _spread_labels([y - 5 for y, _, _ in placed], data_top)
        for (_, suffix, items), label_y in zip(placed, label_ys, strict=True):
            names = [t.rule_id for t in items[:2]]
            if len(items) > 2:
                names.append(f"{len(items) - 2} more")
            label = ", ".join(names) + suffix
            out.append(
                f'<text class="threshold-label threshold-label-{axis}" x="{_px(label_x)}" '
                f'y="{_px(label_y)}" text-anchor="{anchor}">{_e(label)}</text>'
            )
    out.append("</svg>")
    return "\n".join(out)


def _axes(
    report: pb.ComplianceReport, time: _TimeScale, upper: _LogScale, cumulative: _LogScale
) -> list[str]:
    """Grid, the three axes with their ticks and titles."""
    out: list[str] = []
    for amount, label in upper.ticks():
        y = upper.y(amount)
        out.append(
            f'<line class="grid" x1="{_px(PLOT_LEFT)}" x2="{_px(PLOT_RIGHT)}" '
            f'y1="{_px(y)}" y2="{_px(y)}"/>'
            f'<text class="tick-label tick-label-upper" x="{_px(PLOT_LEFT - 8)}" '
            f'y="{_px(y + 4)}" text-anchor="end">{label}</text>'
        )
    for amount, label in cumulative.ticks():
        y = cumulative.y(amount)
        out.append(
            f'<line class="axis" x1="{_px(PLOT_RIGHT)}" x2="{_px(PLOT_RIGHT + 5)}" '
            f'y1="{_px(y)}" y2="{_px(y)}"/>'
            f'<text class="tick-label tick-label-cumulative" x="{_px(PLOT_RIGHT + 8)}" '
            f'y="{_px(y + 4)}">{label}</text>'
        )
    step_ns, ticks = _time_ticks(time.start_ns, time.end_ns)
    previous_date = ""
    for tick in ticks:
        x = time.x(tick)
        moment = _utc(tick)
        date = moment.strftime("%Y-%m-%d")
        if step_ns % NS_PER_DAY == 0:
            first, second = date, ""
        else:
            first = moment.strftime("%H:%M" if step_ns % (60 * NS_PER_S) == 0 else "%H:%M:%S")
            second = date if date != previous_date else ""
        previous_date = date
        out.append(
            f'<line class="axis" x1="{_px(x)}" x2="{_px(x)}" y1="{_px(PLOT_BOTTOM)}" '
            f'y2="{_px(PLOT_BOTTOM + 5)}"/>'
            f'<text class="tick-label" x="{_px(x)}" y="{_px(PLOT_BOTTOM + 18)}" '
            f'text-anchor="middle">{first}</text>'
        )
        if second:
            out.append(
                f'<text class="tick-label" x="{_px(x)}" y="{_px(PLOT_BOTTOM + 32)}" '
                f'text-anchor="middle">{second}</text>'
            )
    middle_y = _px((PLOT_TOP + PLOT_BOTTOM) / 2)
    out += [
        f'<line class="axis" x1="{_px(PLOT_LEFT)}" x2="{_px(PLOT_LEFT)}" y1="{_px(PLOT_TOP)}" '
        f'y2="{_px(PLOT_BOTTOM)}"/>',
        f'<line class="axis" x1="{_px(PLOT_RIGHT)}" x2="{_px(PLOT_RIGHT)}" y1="{_px(PLOT_TOP)}" '
        f'y2="{_px(PLOT_BOTTOM)}"/>',
        f'<line class="axis" x1="{_px(PLOT_LEFT)}" x2="{_px(PLOT_RIGHT)}" '
        f'y1="{_px(PLOT_BOTTOM)}" y2="{_px(PLOT_BOTTOM)}"/>',
        f'<text class="axis-title" x="{_px((PLOT_LEFT + PLOT_RIGHT) / 2)}" '
        f'y="{CHART_HEIGHT - 8}" text-anchor="middle">time (UTC)</text>',
        f'<text class="axis-title tick-label-upper" transform="translate(16,{middle_y}) '
        'rotate(-90)" text-anchor="middle">bars: FLOP in each bucket (log scale)</text>',
        f'<text class="axis-title tick-label-cumulative" transform="translate('
        f'{CHART_WIDTH - 14},{middle_y}) rotate(90)" text-anchor="middle">'
        "line: FLOP summed over each limit's window (log scale)</text>",
    ]
    return out


def _bar_inset(column: _Column) -> float:
    width = column.x1 - column.x0
    return width * 0.12 if width >= 4 else 0.0


def _span_px(time: _TimeScale, start_ns: int, end_ns: int) -> tuple[float, float]:
    """``[start_ns, end_ns)`` clipped to the plot, at least 1 px wide so that it shows."""
    x0, x1 = time.x(start_ns), time.x(max(end_ns, start_ns))
    if x1 - x0 < 1:
        x0 = min(x0, PLOT_RIGHT - 1)
        x1 = x0 + 1
    return x0, x1


# --- page sections -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OfflineStamp:
    """Where an offline-recomputed report came from, for the page's stamp."""

    bundle_sha256: str
    log_key: str
    checkpoint_tree_size: int
    checkpoint_root_hex: str
    verified: bool
    problems: int
    """Failures and differences found re-verifying the bundle (0 when ``verified``)."""
    log_key_pinned: bool = True


def _stamp(stamp: OfflineStamp | None) -> str:
    if stamp is None:
        return (
            '<section id="provenance-stamp" class="stamp-box stamp-server" data-verified="server">'
            "<strong>The verifier's own report</strong>, not re-verified here. To check it "
            "without trusting the verifier: <code>pausewatch audit export</code> a bundle and "
            "<code>pausewatch audit verify-bundle --html</code> it.</section>"
        )
    where = (
        f'bundle sha256 <span class="mono">{_e(stamp.bundle_sha256)}</span> under log key '
        f'<span class="mono">{_e(stamp.log_key)}</span>'
        + ("" if stamp.log_key_pinned else " (taken from the bundle itself, not pinned)")
        + f" at checkpoint {stamp.checkpoint_tree_size} (root "
        f'<span class="mono">{_e(stamp.checkpoint_root_hex)}</span>)'
    )
    if stamp.verified:
        return (
            '<section id="provenance-stamp" class="stamp-box stamp-verified" '
            f'data-verified="true"><strong>Verified offline</strong>: verified from {where}; the '
            "report below was recomputed from the bundle's signed evidence and agrees with the "
            "verifier's figure for figure.</section>"
        )
    return (
        '<section id="provenance-stamp" class="stamp-box stamp-failed" data-verified="false">'
        f"<strong>NOT VERIFIED</strong>: {stamp.problems} problem(s) re-verifying {where}. Do not "
        "rely on this page; see the verify-bundle output.</section>"
    )


def _header(report: pb.ComplianceReport, kicker: str = "") -> str:
    as_of = _e(format_time_ns(report.as_of_ns))
    if report.as_of_ns < report.period_end_ns:
        as_of += (
            ' <span class="muted">(before the period ends: later time is neither attested nor a '
            "gap)</span>"
        )
    facts = [
        ("Lab", f'<span class="mono">{_e(report.lab_id)}</span>'),
        (
            "Period (UTC)",
            f"{_e(format_time_ns(report.period_start_ns))} to "
            f"{_e(format_time_ns(report.period_end_ns))} "
            f'<span class="muted">('
            f"{_e(format_duration_ns(report.period_end_ns - report.period_start_ns))}, "
            "end exclusive)</span>",
        ),
        ("Evidence as of", as_of),
        ("Policy", f"{_e(report.policy_id)} version {report.policy_version}"),
        ("Policy digest (SHA-256)", f'<span class="mono">{report.policy_digest.hex()}</span>'),
        (
            "Accepted by the lab",
            f'<span id="policy-acceptance" data-accepted="{str(report.policy_accepted).lower()}">'
            f"{_e(acceptance_text(report))}</span>",
        ),
        (
            "Log tree size",
            f'{report.tree_size} <span class="muted">(every entry the report used is below this '
            "index)</span>",
        ),
        ("GPU table version", str(report.table_version)),
        ("Bucket width", _e(format_duration_ns(report.bucket_ns))),
    ]
    rows = "\n".join(f"<dt>{_e(name)}</dt><dd>{value}</dd>" for name, value in facts)
    return (
        f'<header>\n<p class="kicker">{_e(kicker or "pausewatch compliance report")}</p>\n'
        f"<h1>{_e(lab_title(report))}</h1>\n"
        f'<dl class="facts">\n{rows}\n</dl>\n</header>'
    )


def _verdict(report: pb.ComplianceReport) -> str:
    word = _enum_word(pb.Verdict.DESCRIPTOR, report.verdict, "VERDICT_")
    style = word.lower() if word in _VERDICT_MEANING else "unknown"
    meaning = _VERDICT_MEANING.get(word, "The report carries no verdict this page knows.")
    reasons = "\n".join(f"<li>{_prose_html(reason)}</li>" for reason in report.reasons)
    finality = (
        "provisional: the period is open or its last evidence may still arrive"
        if report.provisional
        else "final"
    )
    return (
        f'<section id="verdict" class="verdict verdict-{style}" data-verdict="{_e(word)}" '
        f'data-provisional="{"true" if report.provisional else "false"}" aria-label="Verdict">\n'
        f'<p class="verdict-label">Verdict ({_e(finality)})</p>\n'
        f'<p class="verdict-word">{_e(word)}</p>\n'
        f'<p class="verdict-meaning">{_e(meaning)}</p>\n'
        f"<ul>\n{reasons or '<li>(no reasons given)</li>'}\n</ul>\n</section>"
    )


def _data_quality(report: pb.ComplianceReport, notes: Sequence[str]) -> str:
    """The data-quality banner, right under the verdict: what the figures rest on."""
    warnings = data_quality_warnings(report)
    items = [*warnings, *notes]
    style = "quality-warn" if warnings else "quality-ok"
    heading = (
        f"Data quality: {len(warnings)} warning{'s' if len(warnings) != 1 else ''}"
        if warnings
        else "Data quality: no warnings"
    )
    listed = "\n".join(f"<li>{_e(item)}</li>" for item in items) or (
        "<li>Every GPU model is in the compute table, the energy drawn supports the upper bound, "
        "and tensor activity was measured.</li>"
    )
    return (
        f'<aside id="data-quality" class="quality {style}" data-warnings="{len(warnings)}" '
        f'aria-label="Data quality">\n<h2>{_e(heading)}</h2>\n<ul>\n{listed}\n</ul>\n</aside>'
    )


def _analysis_notice(notice: str) -> str:
    return (
        f'<div id="analysis-notice" class="analysis-notice" role="note">{_e(notice)}'
        "<small>The verdict below is what the policy would say of this data, had it been "
        "attested; it is not a finding about the lab.</small></div>"
    )


def _chart_section(report: pb.ComplianceReport) -> str:
    n = len(report.series)
    columns = _columns(
        report,
        _TimeScale(report.period_start_ns, max(report.period_end_ns, report.period_start_ns + 1)),
    )
    drawn = (
        f"{n} buckets are drawn as {len(columns)} pixel columns, each showing the largest bucket "
        "in it; the exact figures are in the accounts table below."
        if n > len(columns)
        else "Exact figures are in the accounts table below."
    )
    return (
        '<section id="chart">\n<h2>Compute over the period against the declared limits</h2>\n'
        f'<figure class="chart">\n{render_chart(report)}\n<figcaption>'
        "Both FLOP axes are logarithmic (powers of ten), and each spans its data and the limits "
        "drawn on it, so a limit far above the data still shows; zero sits on the baseline. "
        "The cumulative line sums the upper bound from the period's start: a cumulative_flop rule "
        "whose window is shorter than the period compares its worst window-long run instead "
        "(highlighted when violated). A sustained_rate limit is drawn per bucket (FLOP/s x bucket "
        "seconds); the rule compares the average over its interval. Limits on another figure "
        "than the upper bound say which. "
        f"{_e(drawn)}</figcaption>\n</figure>\n</section>"
    )


def _index_ranges(indices: Sequence[int]) -> str:
    """Log indices as sorted runs: [7, 3, 4, 5, 9] -> "3-5, 7, 9"."""
    ordered = sorted(set(indices))
    runs: list[str] = []
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            first, last = ordered[start], ordered[i - 1]
            runs.append(str(first) if first == last else f"{first}\u2013{last}")
            start = i
    return ", ".join(runs)


_RULE_COLUMN_PERCENT = (13, 14, 10, 11, 11, 6, 19, 16)
"""Rule, kind, outcome, measured, limit, unit, method, worst stretch."""


def _rules(report: pb.ComplianceReport) -> str:
    if not report.rules:
        return '<section id="rules">\n<h2>Rules</h2>\n<p class="empty">No rules.</p>\n</section>'
    headers = ["Rule", "Kind", "Outcome", "Measured", "Limit", "Unit", "Method", "Worst stretch"]
    body: list[str] = []
    for rule in report.rules:
        outcome = _enum_word(pb.RuleOutcome.DESCRIPTOR, rule.outcome, "RULE_OUTCOME_")
        kind = _enum_word(pb.RuleKind.DESCRIPTOR, rule.kind, "RULE_KIND_").lower()
        stretch = (
            f'<span class="stamp">{_e(format_time_ns(rule.worst_start_ns))}</span> to<br>'
            f'<span class="stamp">{_e(format_time_ns(rule.worst_end_ns))}</span>'
            if rule.worst_end_ns > rule.worst_start_ns
            else "-"
        )
        cells = [
            f'<span class="mono">{_e(rule.rule_id)}</span>',
            _e(kind),
            _badge(outcome),
            _amount_html(rule.measured, rule.unit),
            _amount_html(rule.limit, rule.unit),
            _e(rule.unit),
            _e(rule.method),
            stretch,
        ]
        body.append(
            f'<tr class="rule-row" data-rule="{_e(rule.rule_id)}" data-outcome="{_e(outcome)}">'
            + "".join(f"<td>{cell}</td>" for cell in cells)
            + "</tr>"
        )
        indices = list(rule.evidence_log_indices)
        evidence = (
            f"<br>Evidence, {len(indices)} log {'index' if len(indices) == 1 else 'indices'}: "
            f'<span class="evidence" data-evidence="{" ".join(map(str, indices))}">'
            f"{_index_ranges(indices)}</span>"
            + (
                f' <span class="muted">(largest first: {", ".join(map(str, indices[:5]))}'
                f"{', ...' if len(indices) > 5 else ''})</span>"
                if len(indices) > 1
                else ""
            )
            if indices
            else ""
        )
        body.append(
            f'<tr class="rule-summary"><td colspan="{len(headers)}">{_prose_html(rule.summary)}'
            f"{evidence}</td></tr>"
        )
    head = "".join(f'<th scope="col">{_e(h)}</th>' for h in headers)
    # Fixed column widths (percent of the page): long ids, methods and times wrap, never widen
    # the table past the page.
    cols = "".join(f'<col style="width:{w}%">' for w in _RULE_COLUMN_PERCENT)
    return (
        f'<section id="rules">\n<h2>Rules ({len(report.rules)})</h2>\n'
        f'<div class="table-wrap"><table class="rules">\n<colgroup>{cols}</colgroup>\n'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(body)
        + "\n</tbody>\n</table></div>\n</section>"
    )


def _coverage_and_totals(report: pb.ComplianceReport) -> str:
    coverage = report.coverage
    percent = min(100.0, coverage.ratio_ppm / 10_000)
    totals = report.totals
    rows = [
        [
            "Upper bound",
            _flop_html(_int(totals.upper_bound_flop or "0"), totals.upper_bound_flop),
            _e(totals.upper_bound_method),
        ],
        [
            "Central estimate",
            _flop_html(_int(totals.central_estimate_flop or "0"), totals.central_estimate_flop),
            _e(totals.central_estimate_method),
        ],
        [
            "Energy cross-check",
            _flop_html(_int(totals.energy_flop or "0"), totals.energy_flop),
            _e(totals.energy_method),
        ],
        [
            "Energy used",
            f'<span class="exact">{totals.energy_mj}</span> mJ',
            "energy counters of the attested GPUs",
        ],
        [
            "Busy GPU time",
            f'<span class="exact">{totals.busy_gpu_ms}</span> ms '
            f'<span class="sci">({_e(format_duration_ns(totals.busy_gpu_ms * NS_PER_MS))})</span>',
            "integral of utilisation over the attested windows",
        ],
        [
            "GPU-windows with assumed utilisation",
            str(totals.assumed_gpu_windows),
            "their central estimate used the assumed utilisation",
        ],
        [
            "GPU-windows of a model not in the table",
            str(totals.unknown_model_gpu_windows),
            "bounded with the table's highest peak",
        ],
    ]
    return (
        '<section id="coverage">\n<h2>Coverage</h2>\n'
        f'<p><span class="exact">{coverage.attested_gpu_ms}</span> of '
        f'<span class="exact">{coverage.declared_gpu_ms}</span> declared GPU-ms attested: '
        f"<strong>{_e(format_ppm(coverage.ratio_ppm))}</strong> "
        f'<span class="muted">({coverage.ratio_ppm} ppm)</span></p>\n'
        f'<div class="meter" role="img" aria-label="coverage {_e(format_ppm(coverage.ratio_ppm))}">'
        f'<span style="width:{percent:.2f}%"></span></div>\n</section>\n'
        '<section id="totals">\n<h2>Totals over the period</h2>\n'
        + _table(["Figure", "Amount", "Method"], rows)
        + "\n</section>"
    )


def _gaps(report: pb.ComplianceReport) -> str:
    rows: list[list[str]] = []
    for item in report.gaps:
        gap = item.gap
        if gap.energy_bounded:
            bound = (
                f"{_badge('BOUNDED')} {gap.energy_mj} mJ, at most "
                f"{_flop_html(_int(gap.energy_bound_flop), gap.energy_bound_flop)}"
            )
        else:
            bound = _badge("UNBOUNDED")
        rows.append(
            [
                _e(_node_label(item.node_name, item.node_id)),
                _time_html(gap.gap_start_ns),
                _time_html(gap.gap_end_ns),
                _e(format_duration_ns(gap.gap_end_ns - gap.gap_start_ns)),
                _badge("OPEN" if item.open else "CLOSED")
                + (f" {_badge('LATE')}" if item.late else ""),
                bound,
                _flop_html(_int(gap.time_bound_flop), gap.time_bound_flop),
                _flop_html(_int(item.counted_flop or "0"), item.counted_flop or "0"),
                _e(", ".join(item.counted_in_rule_ids) or "-"),
                str(item.finding_log_index) if item.has_finding else "-",
            ]
        )
    table = (
        _table(
            [
                "Node",
                "Start (UTC)",
                "End (UTC)",
                "Duration",
                "State",
                "Energy bound",
                "Time bound",
                "Counted",
                "In rules",
                "Finding (log index)",
            ],
            rows,
            numeric=(9,),
        )
        if rows
        else '<p class="empty">No gaps: every active node attested the whole period.</p>'
    )
    return (
        f'<section id="gaps">\n<h2>Gaps ({len(report.gaps)})</h2>\n<p class="muted">Unattested '
        "time on a node counts as unknown, never as paused. A gap is energy-bounded when every "
        "GPU's energy counter spans it without a reset. Upper-bound compute rules count each gap "
        "at its bound (Counted), in the rules named.</p>\n"
        f"{table}\n</section>"
    )


_FLAG_LABELS = {
    pb.WINDOW_FLAG_ENERGY_MISMATCH: "ENERGY MISMATCH",
    pb.WINDOW_FLAG_ENERGY_COUNTER_UNUSABLE: "COUNTER UNUSABLE",
    pb.WINDOW_FLAG_ENERGY_OUTSIDE_WINDOWS: "ENERGY OUTSIDE WINDOWS",
    pb.WINDOW_FLAG_UNDECLARED_GPU: "UNDECLARED GPU",
}


def _flagged(report: pb.ComplianceReport) -> str:
    rows = [
        [
            _badge(_FLAG_LABELS.get(item.flag, "FLAGGED")),
            _e(_node_label(item.node_name, item.node_id)),
            _e(item.gpu_uuid),
            str(item.gpu_windows),
            _time_html(item.first_window_start_ns),
            _time_html(item.last_window_end_ns),
            _e(f"{item.first_log_index}..{item.last_log_index}"),
            _flop_html(_int(item.extra_flop or "0"), item.extra_flop or "0"),
        ]
        for item in report.flagged
    ]
    table = (
        _table(
            [
                "Flag",
                "Node",
                "GPU",
                "GPU-windows",
                "First (UTC)",
                "Last (UTC)",
                "Log indices",
                "Added to the upper bound",
            ],
            rows,
            numeric=(3,),
        )
        if rows
        else '<p class="empty">No flagged GPU-windows.</p>'
    )
    return (
        f'<section id="flagged">\n<h2>Flagged GPU-windows ({len(report.flagged)})</h2>\n'
        '<p class="muted">From the stored accounts, for every window in the period: energy that '
        "contradicts the attested utilisation, counters claimed unusable, energy outside any "
        "window, GPUs outside the declared inventory (ADR 0003).</p>\n"
        f"{table}\n</section>"
    )


def _findings(report: pb.ComplianceReport) -> str:
    rows = []
    for item in report.findings:
        finding = item.finding
        rows.append(
            [
                str(item.log_index),
                _e(_enum_word(findings_pb2.FindingKind.DESCRIPTOR, finding.kind, "FINDING_KIND_")),
                _badge(_enum_word(findings_pb2.Severity.DESCRIPTOR, finding.severity, "SEVERITY_")),
                f"{_time_html(finding.period_start_ns)} to<br>{_time_html(finding.period_end_ns)}",
                f'<span class="text">{_e(finding.summary or "(no summary)")}</span>',
            ]
        )
    table = (
        _table(["Log index", "Kind", "Severity", "Period (UTC)", "Summary"], rows, numeric=(0,))
        if rows
        else '<p class="empty">No findings in the period.</p>'
    )
    return f'<section id="findings">\n<h2>Findings ({len(rows)})</h2>\n{table}\n</section>'


_NODE_HEADERS = (
    "Node",
    "Id",
    "GPUs",
    "Attestations",
    "Seq",
    "Upper bound",
    "Rooted",
    "Backend",
    "Agent",
)


def _nodes(report: pb.ComplianceReport) -> str:
    rows = []
    for node in report.nodes:
        state = [word for word, on in (("flagged", node.flagged), ("revoked", node.revoked)) if on]
        rows.append(
            [
                _e(node.node_name or "(unnamed)"),
                f'<span class="mono" title="{node.node_id.hex()}">{node.node_id.hex()[:16]}</span>',
                str(node.enrolled_gpus) if node.enrolled_gpus else "-",
                str(node.attestations),
                f"{node.first_seq}..{node.last_seq}" if node.attestations else "-",
                _flop_html(_int(node.upper_bound_flop or "0"), node.upper_bound_flop),
                _e(rooting_text(node)),
                " ".join(_badge(b.upper()) for b in node.sampler_backends) or "-",
                "<br>".join(
                    f'{_e(version or "?")} <span class="mono" title="{digest.hex()}">'
                    f"{digest.hex()[:12]}</span>"
                    for version, digest in zip(
                        node.agent_versions, node.agent_digests, strict=False
                    )
                )
                or "-",
                _e(", ".join(state) or "active"),
            ]
        )
    table = (
        _table(
            [*_NODE_HEADERS, "State"],
            rows,
            numeric=(2, 3, 4),
        )
        if rows
        else '<p class="empty">No nodes were active in the period.</p>'
    )
    return f'<section id="nodes">\n<h2>Nodes ({len(rows)})</h2>\n{table}\n</section>'


SITE_CHART_HEIGHT = 240
SITE_PLOT_TOP = 24.0
SITE_PLOT_BOTTOM = SITE_CHART_HEIGHT - 36.0


def _site_chart(site: site_pb2.SiteSummary, index: int) -> str:
    """Metered IT energy and attested GPU energy per bucket, one line each, on a linear axis;
    buckets with unexplained energy past the tolerance shaded, unmetered ones hatched."""
    points = list(site.series)
    if not points:
        return ""
    time = _TimeScale(points[0].bucket_start_ns, points[-1].bucket_end_ns)
    top = max(1, *(p.it_mj for p in points), *(p.attested_gpu_mj for p in points))

    def y(amount_mj: int) -> float:
        return SITE_PLOT_BOTTOM - amount_mj / top * (SITE_PLOT_BOTTOM - SITE_PLOT_TOP)

    def line(values: Sequence[int], css: str, label: str) -> str:
        coords = " ".join(
            f"{_px(time.x(start))},{_px(y(v))} {_px(time.x(end))},{_px(y(v))}"
            for start, end, v in zip(
                [p.bucket_start_ns for p in points],
                [p.bucket_end_ns for p in points],
                values,
                strict=True,
            )
        )
        return f'<polyline class="{css}" points="{coords}"><title>{_e(label)}</title></polyline>'

    shades = []
    for p in points:
        x0, x1 = time.x(p.bucket_start_ns), time.x(p.bucket_end_ns)
        height = SITE_PLOT_BOTTOM - SITE_PLOT_TOP
        if not p.metered:
            shades.append(
                f'<rect class="site-unmetered" x="{_px(x0)}" y="{_px(SITE_PLOT_TOP)}" '
                f'width="{_px(max(x1 - x0, 1.0))}" height="{_px(height)}"><title>no reading from '
                "every meter</title></rect>"
            )
        elif p.excess_mj:
            shades.append(
                f'<rect class="site-excess" x="{_px(x0)}" y="{_px(SITE_PLOT_TOP)}" '
                f'width="{_px(max(x1 - x0, 1.0))}" height="{_px(height)}"><title>'
                f"{p.excess_mj // 1000} J unexplained past the tolerance</title></rect>"
            )
    kwh = top / 3_600_000_000
    return (
        f'<svg class="site-chart" id="site-chart-{index}" viewBox="0 0 {CHART_WIDTH} '
        f'{SITE_CHART_HEIGHT}" role="img" aria-label="Site {_e(site.site_id)}: metered IT energy '
        'against attested GPU energy per bucket">'
        + "".join(shades)
        + f'<line class="axis" x1="{PLOT_LEFT}" y1="{SITE_PLOT_BOTTOM}" x2="{PLOT_RIGHT}" '
        f'y2="{SITE_PLOT_BOTTOM}"/>'
        + f'<text class="tick" x="{PLOT_LEFT - 6}" y="{SITE_PLOT_TOP + 4}" text-anchor="end">'
        f"{kwh:.3g} kWh</text>"
        + f'<text class="tick" x="{PLOT_LEFT}" y="{SITE_PLOT_TOP - 8}">per bucket of '
        f"{_e(format_duration_ns(points[0].bucket_end_ns - points[0].bucket_start_ns))}</text>"
        + f'<text class="tick" x="{PLOT_LEFT}" y="{SITE_PLOT_BOTTOM + 16}">'
        f"{_e(format_time_ns(points[0].bucket_start_ns))}</text>"
        + f'<text class="tick" x="{PLOT_RIGHT}" y="{SITE_PLOT_BOTTOM + 16}" text-anchor="end">'
        f"{_e(format_time_ns(points[-1].bucket_end_ns))}</text>"
        + f'<text class="tick" x="{PLOT_LEFT - 6}" y="{SITE_PLOT_BOTTOM}" '
        'text-anchor="end">0</text>'
        + line(
            [p.it_mj for p in points],
            "site-metered",
            "metered IT energy (metered / PUE, less the declared non-GPU load)",
        )
        + line([p.attested_gpu_mj for p in points], "site-attested", "attested GPU energy")
        + f'<text class="legend-text" x="{PLOT_LEFT}" y="{SITE_CHART_HEIGHT - 4}">'
        "solid: metered IT energy; dashed: attested GPU energy; shaded: unexplained past the "
        "tolerance; grey: unmetered</text></svg>"
    )


def _sites(report: pb.ComplianceReport) -> str:
    """The lab's sites: metered energy against attested GPU energy (docs/site-power.md)."""
    if not report.sites:
        return ""
    parts = ['<section id="sites">\n<h2>Sites: metered energy against attested GPU energy</h2>']
    for index, site in enumerate(report.sites):
        share = site.unexplained_ppm / 10_000
        rows = [
            [
                "Declared PUE, non-GPU load, tolerance",
                _e(
                    f"{site.pue_ppm / 1_000_000:g}, {site.non_gpu_load_mw / 1_000_000:g} kW, "
                    f"{site.tolerance_ppm / 10_000:g} %"
                ),
            ],
            ["Metered energy", _e(f"{site.metered_mj / 3_600_000_000:.6g} kWh")],
            [
                "IT energy (metered / PUE less non-GPU load)",
                _e(f"{site.it_mj / 3_600_000_000:.6g} kWh"),
            ],
            ["Attested GPU energy", _e(f"{site.attested_gpu_mj / 3_600_000_000:.6g} kWh")],
            [
                "Unexplained",
                _e(f"{site.unexplained_mj / 3_600_000_000:.6g} kWh ({share:.3g} % of IT)"),
            ],
            ["Past the tolerance", _e(f"{site.excess_mj / 3_600_000_000:.6g} kWh")],
            [
                "Compute it could have done",
                _flop_html(_int(site.bound_flop or "0"), site.bound_flop),
            ],
            [
                "Unmetered time",
                _e(format_duration_ns(site.unmetered_ns) if site.unmetered_ns else "none"),
            ],
            ["Readings (log indices)", _e(_index_ranges(list(site.reading_log_indices)) or "none")],
        ]
        verdict = "UNACCOUNTED" if site.excess_mj else "PASS"
        parts.append(
            f'<h3>{_e(site.name or site.site_id)} <span class="mono">({_e(site.site_id)})</span> '
            f"{_badge(verdict)}</h3>\n"
            f'<figure class="chart">{_site_chart(site, index)}</figure>\n'
            + _table(["Figure", "Value"], rows)
        )
    parts.append("</section>")
    return "\n".join(parts)


def _accounts(report: pb.ComplianceReport) -> str:
    points = sorted(report.series, key=lambda point: point.bucket_start_ns)
    if not points:
        return (
            '<section id="accounts">\n<h2>Accounts by bucket</h2>\n'
            '<p class="empty">No buckets in the period.</p>\n</section>'
        )
    per_row = -(-len(points) // MAX_SERIES_ROWS)
    width_ns = _bucket_width_ns(report)
    when = ["Bucket start (UTC)"] if per_row == 1 else ["From (UTC)", "To (UTC)"]
    rows = []
    for first in range(0, len(points), per_row):
        group = points[first : first + per_row]
        sums = [
            sum(_int(getattr(p, name)) or 0 for p in group)
            for name in ("upper_bound_flop", "central_estimate_flop", "energy_flop")
        ]
        times = [_time_html(group[0].bucket_start_ns)]
        if per_row > 1:
            times.append(_time_html(group[-1].bucket_start_ns + width_ns))
        rows.append(
            [
                *times,
                *(_flop_html(amount) for amount in sums),
                str(sum(p.attested_gpu_ms for p in group)),
                str(sum(p.busy_gpu_ms for p in group)),
                str(sum(p.energy_mj for p in group)),
                str(sum(p.unattested_gpu_ms for p in group)),
            ]
        )
    note = (
        f"Each row sums {per_row} consecutive buckets of "
        f"{_e(format_duration_ns(width_ns))} exactly ({len(points)} buckets in all)."
        if per_row > 1
        else f"One row per bucket of {_e(format_duration_ns(width_ns))}."
    )
    headers = [
        *when,
        "Upper bound",
        "Central estimate",
        "Energy cross-check",
        "Attested GPU-ms",
        "Busy GPU-ms",
        "Energy mJ",
        "Unattested GPU-ms",
    ]
    return (
        '<section id="accounts">\n<h2>Accounts by bucket</h2>\n'
        f'<p class="muted">{note}</p>\n'
        + _table(headers, rows, numeric=range(len(when) + 3, len(headers)))
        + "\n</section>"
    )


def render_html(
    report: pb.ComplianceReport,
    *,
    title: str | None = None,
    analysis_notice: str = "",
    notes: Sequence[str] = (),
    stamp: OfflineStamp | None = None,
) -> str:
    """The whole report as one self-contained HTML5 page (see the module docstring).

    ``title`` replaces the default page title, "pausewatch compliance report: <lab name> (<lab
    id>), <period>". ``stamp`` says the report was recomputed offline from a bundle (which, under
    which log key, at which checkpoint, and whether it verified); without one, the page says it
    shows the verifier's own report, not re-verified.
    ``analysis_notice`` marks the page as an unattested what-if analysis (a banner above all
    else); ``notes`` join the data-quality banner under the verdict.
    """
    if title is None:
        title = (
            f"pausewatch compliance report: {lab_title(report)}, "
            f"{format_time_ns(report.period_start_ns)} to {format_time_ns(report.period_end_ns)}"
        )
    sections = [
        _analysis_notice(analysis_notice) if analysis_notice else "",
        _header(report, "pausewatch what-if analysis (unattested)" if analysis_notice else ""),
        "" if analysis_notice else _stamp(stamp),
        "<main>",
        _verdict(report),
        _data_quality(report, notes),
        _chart_section(report),
        _rules(report),
        _coverage_and_totals(report),
        _gaps(report),
        _flagged(report),
        _findings(report),
        _nodes(report),
        _sites(report),
        _accounts(report),
        "</main>",
        "<footer>Generated by pausewatch from "
        + (
            "recorded data that no verifier received (an unattested analysis). "
            if analysis_notice
            else "the signed, logged evidence summarised in the compliance report. "
        )
        + "Amounts show in scientific notation with three significant digits, rounded down; "
        "hover over one for the exact integer (the JSON report carries them all). This page is "
        "self-contained: it loads nothing and runs no script.</footer>",
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">\n"
        '<meta name="generator" content="pausewatch">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
