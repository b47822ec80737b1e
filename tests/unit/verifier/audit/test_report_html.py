from __future__ import annotations

import re
from collections.abc import Sequence
from html.parser import HTMLParser

import pytest
from pausewatch.v1 import audit_pb2 as pb
from pausewatch.v1 import findings_pb2 as fpb

from attest import compute
from attest.ids import NodeId
from tests.builders import T0_NS
from verifier.accounting.accounts import Bucket, GpuWindowFigures, accumulate
from verifier.accounting.evaluation import InMemoryEvidenceIndex, InventoryVersion, evaluate
from verifier.accounting.policy import load_policy_bytes
from verifier.audit.report_html import MAX_SERIES_ROWS, render_chart, render_html

S = 1_000_000_000
BUCKET = 60 * S
P0 = T0_NS  # a whole minute
HOSTILE = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>&amp;"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


# --- builders ------------------------------------------------------------------------------------


def series(
    values: Sequence[int], start_ns: int = P0, bucket_ns: int = BUCKET
) -> list[pb.SeriesPoint]:
    return [
        pb.SeriesPoint(
            bucket_start_ns=start_ns + i * bucket_ns,
            upper_bound_flop=str(value),
            central_estimate_flop=str(value // 3),
            energy_flop=str(value // 2),
            attested_gpu_ms=60_000,
            busy_gpu_ms=30_000,
            energy_mj=1_000,
        )
        for i, value in enumerate(values)
    ]


def rule(
    rule_id: str,
    kind: int,
    limit: int,
    *,
    outcome: int = pb.RULE_OUTCOME_PASS,
    measured: int = 0,
    stretch: tuple[int, int] = (0, 0),
    unit: str = "flop",
) -> pb.RuleResult:
    return pb.RuleResult(
        rule_id=rule_id,
        kind=kind,  # type: ignore[arg-type]
        outcome=outcome,  # type: ignore[arg-type]
        measured=str(measured),
        limit=str(limit),
        unit=unit,
        method="upper_bound",
        worst_start_ns=stretch[0],
        worst_end_ns=stretch[1],
        evidence_log_indices=[7, 3, 4, 5],
        summary=f"summary of {rule_id}",
    )


def gap(node: str, start_ns: int, end_ns: int, *, open_: bool = False) -> pb.GapReport:
    return pb.GapReport(
        node_id=b"\xaa" * 32,
        node_name=node,
        open=open_,
        gap=fpb.GapDetail(
            gap_start_ns=start_ns,
            gap_end_ns=end_ns,
            energy_bounded=not open_,
            energy_mj=5_000,
            energy_bound_flop="123456789012345678901",
            time_bound_flop="98765432109876543210987",
        ),
    )


def make_report(
    values: Sequence[int] = (10**18,) * 60,
    *,
    rules: Sequence[pb.RuleResult] = (),
    gaps: Sequence[pb.GapReport] = (),
    verdict: int = pb.VERDICT_COMPLIANT,
    period: tuple[int, int] | None = None,
    as_of_ns: int | None = None,
    bucket_ns: int = BUCKET,
) -> pb.ComplianceReport:
    start, end = period or (P0, P0 + max(1, len(values)) * bucket_ns)
    report = pb.ComplianceReport(
        lab_id="lab-a",
        period_start_ns=start,
        period_end_ns=end,
        as_of_ns=end if as_of_ns is None else as_of_ns,
        verdict=verdict,  # type: ignore[arg-type]
        bucket_ns=bucket_ns,
        policy_id="eu-ai-act",
        policy_version=3,
        policy_digest=bytes(range(32)),
        tree_size=4242,
        table_version=1,
        reasons=["COMPLIANT: all rules hold"],
        coverage=pb.Coverage(attested_gpu_ms=990, declared_gpu_ms=1000, ratio_ppm=990_000),
        totals=pb.ComputeTotals(
            upper_bound_flop=str(sum(values)),
            central_estimate_flop="0",
            energy_flop="0",
            upper_bound_method="peak x busy",
            central_estimate_method="assumed",
            energy_method="energy x flop per joule",
        ),
    )
    report.series.extend(series(values, start, bucket_ns))
    report.rules.extend(rules)
    report.gaps.extend(gaps)
    return report


# --- reading the page ----------------------------------------------------------------------------


class Elements(HTMLParser):
    """Every start tag with its attributes, and whether the tags balance."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def with_class(self, name: str) -> list[dict[str, str]]:
        return [a for _, a in self.elements if name in a.get("class", "").split()]

    def by_id(self, element_id: str) -> dict[str, str]:
        found = [a for _, a in self.elements if a.get("id") == element_id]
        assert len(found) == 1, element_id
        return found[0]


def parse(page: str) -> Elements:
    parser = Elements()
    parser.feed(page)
    parser.close()
    assert parser.errors == []
    assert parser.stack == [], f"unclosed: {parser.stack}"
    return parser


def plot_box(page: Elements) -> tuple[float, float, float, float]:
    area = page.by_id("plot-area")
    x, y = float(area["x"]), float(area["y"])
    return x, y, x + float(area["width"]), y + float(area["height"])


def path_ys(d: str) -> list[float]:
    return [float(v) for v in re.findall(r"V(-?[0-9.]+)", d)]


# --- the page as a whole -------------------------------------------------------------------------


def test_the_page_is_an_html5_document_with_the_basics() -> None:
    page = render_html(make_report())
    assert page.startswith("<!DOCTYPE html>\n")
    parsed = parse(page)
    assert parsed.elements[0] == ("html", {"lang": "en"})
    assert ("meta", {"charset": "utf-8"}) in parsed.elements
    assert [tag for tag, _ in parsed.elements].count("title") == 2  # the page's and the chart's
    assert "<title>pausewatch compliance report: lab-a, " in page
    ids = [attrs["id"] for _, attrs in parsed.elements if "id" in attrs]
    assert len(ids) == len(set(ids)), "ids must be unique"


def test_a_given_title_replaces_the_default() -> None:
    page = render_html(make_report(), title="November audit")
    assert "<title>November audit</title>" in page


def test_the_page_references_nothing_outside_itself() -> None:
    page = render_html(make_report(gaps=[gap("n", P0, P0 + BUCKET)], as_of_ns=P0 + 30 * BUCKET))
    lowered = page.lower()
    for needle in ("http:", "https:", "//", "<script", "<link", "<img", "<iframe", "@import"):
        assert needle not in lowered.replace("<!doctype", ""), needle
    parsed = parse(page)
    assert all("src" not in attrs and "href" not in attrs for _, attrs in parsed.elements)
    assert set(re.findall(r"url\(([^)]*)\)", page)) <= {"#hatch", "#plot-clip"}
    csp = [a for tag, a in parsed.elements if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and csp[0]["content"].startswith("default-src 'none';")


def test_header_shows_lab_period_policy_log_and_table() -> None:
    page = render_html(make_report())
    for text in (
        "lab-a",
        "2025-11-29T08:00:00Z to 2025-11-29T09:00:00Z",  # tests.builders.T0_NS
        "eu-ai-act version 3",
        bytes(range(32)).hex(),
        "4242",
        "GPU table version",
    ):
        assert text in page, text


@pytest.mark.parametrize(
    ("verdict", "word", "style"),
    [
        (pb.VERDICT_COMPLIANT, "COMPLIANT", "verdict-compliant"),
        (pb.VERDICT_VIOLATION, "VIOLATION", "verdict-violation"),
        (pb.VERDICT_UNACCOUNTED, "UNACCOUNTED", "verdict-unaccounted"),
        (pb.VERDICT_INVALID, "INVALID", "verdict-invalid"),
        (pb.VERDICT_UNSPECIFIED, "UNSPECIFIED", "verdict-unknown"),
        (99, "UNKNOWN (99)", "verdict-unknown"),
    ],
)
def test_the_verdict_element_says_the_verdict(verdict: int, word: str, style: str) -> None:
    report = make_report(verdict=verdict)
    report.reasons[:] = ["first reason", "second reason"]
    parsed = parse(render_html(report))
    element = parsed.by_id("verdict")
    assert element["data-verdict"] == word
    assert style in element["class"].split()
    text = "".join(parsed.text)
    assert word in text
    assert "first reason" in text and "second reason" in text


def test_every_rule_is_shown_with_exact_and_scientific_amounts() -> None:
    rules = [
        rule("cum", pb.RULE_KIND_CUMULATIVE_FLOP, 10**25, measured=10**25 + 1),
        rule("rate", pb.RULE_KIND_SUSTAINED_RATE, 2 * 10**15, unit="flop_per_s"),
        rule("cov", pb.RULE_KIND_COVERAGE, 990_000, measured=937_500, unit="ppm"),
        rule("gap", pb.RULE_KIND_MAX_GAP, 1_800_000, measured=3_600_000, unit="ms"),
    ]
    page = render_html(make_report(rules=rules))
    parsed = parse(page)
    rows = [a for tag, a in parsed.elements if tag == "tr" and "data-rule" in a]
    assert [r["data-rule"] for r in rows] == ["cum", "rate", "cov", "gap"]
    # Scientific notation first; the exact integer (1e25 + 1 is no float) on hover and in data.
    assert (
        '<span class="amount" data-exact="10000000000000000000000001" '
        'title="exactly 10000000000000000000000001 FLOP">1.00e25 FLOP</span>'
    ) in page
    assert 'title="exactly 2000000000000000 FLOP/s">2.00e15 FLOP/s</span>' in page
    assert "937500</span> ppm" in page and "(93.75%)" in page
    assert "3600000</span> ms" in page and "(1h)" in page
    assert "3\u20135, 7" in page  # evidence log indices as runs
    assert "summary of cov" in page


# --- the chart -----------------------------------------------------------------------------------


def test_one_gap_rect_per_gap_clipped_to_the_plot() -> None:
    end = P0 + 60 * BUCKET
    gaps = [
        gap("inside", P0 + 10 * BUCKET, P0 + 20 * BUCKET),
        gap("before", P0 - 100 * BUCKET, P0 + 5 * BUCKET),  # starts before the period
        gap("open", P0 + 50 * BUCKET, end + 30 * BUCKET, open_=True),  # runs past it
        gap("tiny", P0 + 30 * BUCKET, P0 + 30 * BUCKET + 1),  # a nanosecond: still 1 px
    ]
    parsed = parse(render_html(make_report(gaps=gaps)))
    left, _, right, _ = plot_box(parsed)
    rects = parsed.with_class("gap")
    assert len(rects) == len(gaps)
    for rect, item in zip(rects, gaps, strict=True):
        assert rect["data-node"] == item.node_name
        assert int(rect["data-start-ns"]) == item.gap.gap_start_ns
        assert int(rect["data-end-ns"]) == item.gap.gap_end_ns
        x, width = float(rect["x"]), float(rect["width"])
        assert left - 0.01 <= x and x + width <= right + 0.01, item.node_name
        assert width >= 1
    assert [r["data-late"] for r in rects] == ["false"] * 4
    inside, before, open_, _ = rects
    per_bucket = (right - left) / 60
    assert float(inside["x"]) == pytest.approx(left + 10 * per_bucket, abs=0.01)
    assert float(inside["width"]) == pytest.approx(10 * per_bucket, abs=0.02)
    assert float(before["x"]) == pytest.approx(left)
    assert float(before["width"]) == pytest.approx(5 * per_bucket, abs=0.02)
    assert float(open_["x"]) + float(open_["width"]) == pytest.approx(right)
    assert open_["data-open"] == "true"


def test_a_threshold_line_for_every_cumulative_and_rate_rule() -> None:
    rules = [
        rule("cum-30d", pb.RULE_KIND_CUMULATIVE_FLOP, 10**25),
        rule("cum-1h", pb.RULE_KIND_CUMULATIVE_FLOP, 3 * 10**19),
        rule("rate", pb.RULE_KIND_SUSTAINED_RATE, 10**16, unit="flop_per_s"),
        rule("cov", pb.RULE_KIND_COVERAGE, 990_000, unit="ppm"),
    ]
    parsed = parse(render_html(make_report(rules=rules)))
    lines = {line["data-rule"]: line for line in parsed.with_class("threshold")}
    assert set(lines) == {"cum-30d", "cum-1h", "rate"}
    assert lines["cum-30d"]["data-limit"] == str(10**25)
    assert lines["cum-30d"]["data-axis"] == "cumulative"
    assert lines["rate"]["data-limit"] == str(10**16)
    assert lines["rate"]["data-drawn-flop"] == str(10**16 * 60)  # FLOP/s x 60 s buckets
    assert lines["rate"]["data-axis"] == "rate"
    left, top, right, bottom = plot_box(parsed)
    for line in lines.values():
        assert line["y1"] == line["y2"]
        assert top <= float(line["y1"]) <= bottom
        assert (float(line["x1"]), float(line["x2"])) == (left, right)
    # Log scale: the higher limit is drawn higher up.
    assert float(lines["cum-30d"]["y1"]) < float(lines["cum-1h"]["y1"])


def test_a_limit_far_above_the_data_is_on_the_chart_and_the_data_stays_readable() -> None:
    # 6e16 FLOP in all, against a limit of 1e27: eleven powers of ten above.
    rules = [rule("eu", pb.RULE_KIND_CUMULATIVE_FLOP, 10**27)]
    parsed = parse(render_html(make_report([10**15] * 60, rules=rules)))
    _, top, _, bottom = plot_box(parsed)
    (line,) = parsed.with_class("threshold")
    assert top <= float(line["y1"]) <= bottom
    cumulative = parsed.with_class("series-cumulative")[0]["d"]
    ys = [float(y) for y in re.findall(r",(-?[0-9.]+)", cumulative)]
    first_bucket, highest = ys[1], min(ys)
    assert first_bucket < bottom - 10  # the data is off the baseline,
    assert first_bucket - highest > 30  # its growth is visible,
    assert highest > float(line["y1"]) + 100  # and the limit is far above it


def test_a_limit_below_the_data_is_on_the_chart() -> None:
    rules = [rule("low", pb.RULE_KIND_SUSTAINED_RATE, 1, unit="flop_per_s")]
    parsed = parse(render_html(make_report([10**20] * 10, rules=rules)))
    _, top, _, bottom = plot_box(parsed)
    (line,) = parsed.with_class("threshold")
    assert top <= float(line["y1"]) < bottom


@pytest.mark.parametrize(
    ("outcome", "highlighted"),
    [
        (pb.RULE_OUTCOME_VIOLATION, True),
        (pb.RULE_OUTCOME_PASS, False),
        (pb.RULE_OUTCOME_UNACCOUNTED, False),
    ],
)
def test_the_worst_stretch_is_highlighted_iff_the_rule_is_violated(
    outcome: int, highlighted: bool
) -> None:
    stretch = (P0 + 15 * BUCKET, P0 + 45 * BUCKET)
    rules = [
        rule("cum", pb.RULE_KIND_CUMULATIVE_FLOP, 10**19, outcome=outcome, stretch=stretch),
        rule("other", pb.RULE_KIND_COVERAGE, 1, stretch=stretch, unit="ppm"),
    ]
    parsed = parse(render_html(make_report(rules=rules)))
    found = parsed.with_class("violation")
    if not highlighted:
        assert found == []
        return
    (rect,) = found
    assert rect["data-rule"] == "cum"
    left, _, right, _ = plot_box(parsed)
    per_bucket = (right - left) / 60
    assert float(rect["x"]) == pytest.approx(left + 15 * per_bucket, abs=0.01)
    assert float(rect["width"]) == pytest.approx(30 * per_bucket, abs=0.02)


def test_hostile_strings_are_escaped_everywhere() -> None:
    report = make_report(
        rules=[rule(HOSTILE, pb.RULE_KIND_CUMULATIVE_FLOP, 10, outcome=pb.RULE_OUTCOME_VIOLATION)],
        gaps=[gap(HOSTILE, P0, P0 + BUCKET)],
    )
    report.lab_id = HOSTILE
    report.policy_id = HOSTILE
    report.reasons[:] = [HOSTILE]
    report.rules[0].summary = HOSTILE
    report.rules[0].method = HOSTILE
    report.nodes.add(node_id=b"\x01" * 32, node_name=HOSTILE, upper_bound_flop="5")
    report.findings.add(
        log_index=9, finding=fpb.Finding(kind=fpb.FINDING_KIND_GAP, summary=HOSTILE)
    )
    report.series[0].upper_bound_flop = HOSTILE  # not a number: shown as text, drawn as 0
    page = render_html(report, title=HOSTILE)
    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    parsed = parse(page)
    assert [a["data-node"] for a in parsed.with_class("gap")] == [HOSTILE]
    assert [a["data-rule"] for a in parsed.with_class("threshold")] == [HOSTILE]
    assert [a["data-rule"] for a in parsed.with_class("violation")] == [HOSTILE]
    assert parsed.by_id("verdict")["data-verdict"] == "COMPLIANT"
    assert all(not name.startswith("on") for _, attrs in parsed.elements for name in attrs)


@pytest.mark.parametrize("buckets", [0, 1, 2, 10_000])
def test_any_number_of_buckets_renders(buckets: int) -> None:
    values = [(i % 97 + 1) * 10**18 for i in range(buckets)]
    report = make_report(values, gaps=[gap("n", P0, P0 + BUCKET)])
    parsed = parse(render_html(report))
    svg = parsed.by_id("compute-chart")
    assert svg["data-buckets"] == str(buckets)
    left, top, right, bottom = plot_box(parsed)
    assert int(svg["data-columns"]) <= right - left
    bars = parsed.with_class("series-upper")[0]["d"]
    assert bars.count("M") == int(svg["data-columns"])
    assert all(top <= y <= bottom for y in path_ys(bars))
    # The exact figures stay in the accounts table, summed exactly when there are many buckets.
    table_rows = page_rows(parsed, "accounts")
    assert table_rows <= MAX_SERIES_ROWS
    if buckets:
        assert table_rows >= 1
        assert str(sum(values)) in render_html(report)


def page_rows(parsed: Elements, section: str) -> int:
    """Rows in a section's table body (counted between the section's start and the next)."""
    tags = parsed.elements
    start = next(i for i, (_, a) in enumerate(tags) if a.get("id") == section)
    rows = 0
    for tag, _ in tags[start + 1 :]:
        if tag == "section":
            break
        rows += tag == "tr"
    return max(0, rows - 1)  # less the header row


def test_many_buckets_keep_the_largest_per_pixel_column() -> None:
    values = [10**18] * 10_000
    flat = parse(render_chart(make_report(values)))
    values[5_123] = 10**22  # one spike among 10 000 buckets
    spiked = parse(render_chart(make_report(values)))
    flat_top = min(path_ys(flat.with_class("series-upper")[0]["d"]))
    spike_top = min(path_ys(spiked.with_class("series-upper")[0]["d"]))
    assert spike_top < flat_top - 50


def test_all_zero_and_empty_series_say_so() -> None:
    zero = render_html(make_report([0] * 30))
    assert "every bucket is 0 FLOP" in zero
    assert parse(zero).with_class("series-upper")[0]["d"] == ""
    empty = make_report([])
    empty.ClearField("series")
    page = render_html(empty)
    assert "no buckets in the period" in page
    assert "No buckets in the period." in page


def test_the_time_after_as_of_is_marked() -> None:
    with_as_of = parse(render_html(make_report(as_of_ns=P0 + 40 * BUCKET)))
    assert len(with_as_of.with_class("after-as-of")) == 1
    without = parse(render_html(make_report()))
    assert without.with_class("after-as-of") == []


def test_time_ticks_are_utc_and_flop_ticks_scientific() -> None:
    start = 1_795_000_000 * S - (1_795_000_000 * S) % (3_600 * S)  # 2026-11-18T11:00:00Z
    report = make_report([10**18] * 144, bucket_ns=300 * S, period=(start, start + 12 * 3_600 * S))
    text = "".join(parse(render_chart(report)).text)
    for label in ("12:00", "14:00", "22:00", "2026-11-18", "1e18", "time (UTC)"):
        assert label in text, label


def test_malformed_amounts_do_not_break_the_page() -> None:
    report = make_report(
        rules=[rule("r", pb.RULE_KIND_CUMULATIVE_FLOP, 1)],
        gaps=[gap("n", P0, P0 + BUCKET)],
    )
    report.rules[0].limit = "9" * 5_000  # beyond int()'s default digit limit
    report.rules[0].measured = "-12"
    report.totals.upper_bound_flop = "1e25"
    report.series[1].upper_bound_flop = ""
    report.gaps[0].gap.time_bound_flop = "NaN"
    parsed = parse(render_html(report))
    assert parsed.with_class("threshold") == []  # no number, no line
    assert "1e25" in "".join(parsed.text)


def test_a_report_from_evaluate_renders_its_violation() -> None:
    policy = load_policy_bytes(
        b'format_version = 1\npolicy_id = "p"\nversion = 7\nlab_id = "lab-a"\n'
        b'[[rules]]\nid = "cum"\nkind = "cumulative_flop"\nwindow = "3m"\nlimit_flop = "1e20"\n'
        b'[[rules]]\nid = "eu"\nkind = "cumulative_flop"\nwindow = "10m"\nlimit_flop = "1e25"\n'
        b'[[rules]]\nid = "rate"\nkind = "sustained_rate"\ninterval = "2m"\n'
        b'limit_flop_per_s = "1e18"\n'
    )
    node = NodeId(b"\xaa" * 32)
    figures = [
        GpuWindowFigures(
            log_index=10 + i,
            node_id=node,
            gpu_uuid="GPU-0",
            model="NVIDIA H100 80GB HBM3",
            window_start_ns=P0 + i * BUCKET,
            window_end_ns=P0 + (i + 1) * BUCKET,
            upper_bound_flop=(10**20 if i in (4, 5) else 10**17),
            central_estimate_flop=10**16,
            energy_flop=10**16,
            energy_mj=7,
            busy_ms=60_000,
            attested_ms=60_000,
            declared=True,
            assumed=False,
            unknown_model=False,
        )
        for i in range(10)
    ]
    buckets: dict[int, Bucket] = {}
    accumulate(buckets, figures, BUCKET)
    report = evaluate(
        policy,
        lab_id="lab-a",
        period_start_ns=P0,
        period_end_ns=P0 + 10 * BUCKET,
        as_of_ns=P0 + 10 * BUCKET,
        bucket_ns=BUCKET,
        buckets=buckets,
        inventory=[InventoryVersion(1, P0 - BUCKET, frozenset({"GPU-0"}))],
        nodes=[],
        findings=[],
        evidence=InMemoryEvidenceIndex(figures),
        tree_size=99,
        table_version=compute.TABLE_VERSION,
    )
    assert report.verdict == pb.VERDICT_VIOLATION
    parsed = parse(render_html(report))
    assert parsed.by_id("verdict")["data-verdict"] == "VIOLATION"
    assert {a["data-rule"] for a in parsed.with_class("violation")} == {"cum", "rate"}
    assert {a["data-rule"] for a in parsed.with_class("threshold")} == {"cum", "eu", "rate"}
    (cum,) = [a for a in parsed.with_class("violation") if a["data-rule"] == "cum"]
    assert int(cum["data-start-ns"]) == P0 + 3 * BUCKET  # the worst 3-minute run: buckets 3-5
    left, _, right, _ = plot_box(parsed)
    assert float(cum["x"]) == pytest.approx(left + 3 * (right - left) / 10, abs=0.01)


@pytest.mark.parametrize(("provisional", "words"), [(True, "provisional"), (False, "final")])
def test_the_verdict_says_whether_it_is_provisional_or_final(provisional: bool, words: str) -> None:
    report = make_report()
    report.provisional = provisional
    parsed = parse(render_html(report))
    assert parsed.by_id("verdict")["data-provisional"] == ("true" if provisional else "false")
    assert f"Verdict ({words}" in "".join(parsed.text)


# --- data quality and amounts in prose ------------------------------------------------------------


def test_amounts_in_reasons_and_summaries_show_scientific_first_exact_on_hover() -> None:
    rules = [rule("cum", pb.RULE_KIND_CUMULATIVE_FLOP, 10**19, measured=12345678901234567890)]
    report = make_report(rules=rules)
    report.reasons[:] = ["VIOLATION: over the limit of 10000000000000000000 (1.00e19) FLOP <b>"]
    report.rules[0].summary = "12345678901234567890 (1.23e19) FLOP in the worst run"
    page = render_html(report)
    assert 'title="exactly 10000000000000000000">1.00e19</span> FLOP &lt;b&gt;' in page
    assert 'title="exactly 12345678901234567890">1.23e19</span> FLOP in the worst run' in page
    assert "10000000000000000000 (1.00e19)" not in page


def test_the_data_quality_banner_sits_under_the_verdict_with_the_warnings() -> None:
    report = make_report()
    report.totals.unknown_model_gpu_windows = 3
    page = render_html(report, notes=("node7: 8 GPUs read from the rows' cycle",))
    parsed = parse(page)
    banner = parsed.by_id("data-quality")
    assert banner["data-warnings"] == "1"
    assert "quality-warn" in banner["class"].split()
    assert page.index('id="verdict"') < page.index('id="data-quality"') < page.index('id="chart"')
    assert "3 GPU-windows name a GPU model not in the compute table" in page
    assert "node7: 8 GPUs read from the rows&#x27; cycle" in page
    assert 'id="analysis-notice"' not in page  # only an analysis is marked so


def test_without_warnings_the_banner_says_so_quietly() -> None:
    report = make_report()
    report.totals.central_estimate_flop = "1"
    parsed = parse(render_html(report))
    banner = parsed.by_id("data-quality")
    assert banner["data-warnings"] == "0"
    assert "quality-ok" in banner["class"].split()


def test_an_analysis_page_is_marked_unattested_above_all_else() -> None:
    page = render_html(make_report(), analysis_notice="UNATTESTED ANALYSIS: not evidence")
    assert page.index('id="analysis-notice"') < page.index("<header>")
    assert "pausewatch what-if analysis (unattested)" in page
    assert "recorded data that no verifier received" in page


def test_a_detected_training_signature_never_shows_a_pass_badge() -> None:
    report = make_report()
    report.rules.add(
        rule_id="signature",
        kind=pb.RULE_KIND_TRAINING_SIGNATURE,
        outcome=pb.RULE_OUTCOME_DETECTED,
        measured="180000",
        limit="180000",
        unit="ms",
    )
    parsed = parse(render_html(report))
    rules_badges = [a["class"] for a in parsed.with_class("badge-detected")]
    assert rules_badges, "the detected rule has its own badge"
    assert "DETECTED" in "".join(parsed.text)
    report.rules[0].outcome = pb.RULE_OUTCOME_PASS  # the control
    assert not parse(render_html(report)).with_class("badge-detected")


def test_rules_with_the_same_limit_share_one_label_and_keep_their_lines() -> None:
    rules = [
        rule(name, pb.RULE_KIND_SUSTAINED_RATE, 2 * 10**15, unit="flop_per_s")
        for name in ("rate-a", "rate-b", "rate-c")
    ] + [rule("rate-d", pb.RULE_KIND_SUSTAINED_RATE, 3 * 10**15, unit="flop_per_s")]
    page = render_html(make_report(rules=rules))
    parsed = parse(page)
    assert [a["data-rule"] for a in parsed.with_class("threshold")] == [
        "rate-d",
        "rate-a",
        "rate-b",
        "rate-c",
    ]
    assert page.count('class="threshold-label threshold-label-rate"') == 2
    assert ">rate-a, rate-b, 1 more limit 2.00e15 FLOP/s" in page
    assert ">rate-d limit 3.00e15 FLOP/s" in page


@pytest.mark.parametrize(("limit", "broken"), [(4 * 10**19, False), (2 * 10**19, True)])
def test_the_line_is_the_sum_each_rolling_limit_is_compared_with(limit: int, broken: bool) -> None:
    # Ten minutes of 1e19 FLOP each, a 3-minute limit: every 3-minute sum is 3e19, while the sum
    # from the period's start reaches 1e20, above both limits. The line must cross a limit iff
    # its rule is broken.
    policy = load_policy_bytes(
        b'format_version = 1\npolicy_id = "p"\nversion = 1\nlab_id = "lab-a"\n'
        b'[[rules]]\nid = "cum3"\nkind = "cumulative_flop"\nwindow = "3m"\n'
        + f'limit_flop = "{limit}"\n'.encode()
    )
    figures = [
        GpuWindowFigures(
            log_index=10 + i,
            node_id=NodeId(b"\xaa" * 32),
            gpu_uuid="GPU-0",
            model="NVIDIA H100 80GB HBM3",
            window_start_ns=P0 + i * BUCKET,
            window_end_ns=P0 + (i + 1) * BUCKET,
            upper_bound_flop=10**19,
            central_estimate_flop=0,
            energy_flop=0,
            energy_mj=0,
            busy_ms=60_000,
            attested_ms=60_000,
            declared=True,
            assumed=False,
            unknown_model=False,
        )
        for i in range(10)
    ]
    buckets: dict[int, Bucket] = {}
    accumulate(buckets, figures, BUCKET)
    report = evaluate(
        policy,
        lab_id="lab-a",
        period_start_ns=P0,
        period_end_ns=P0 + 10 * BUCKET,
        as_of_ns=P0 + 10 * BUCKET,
        bucket_ns=BUCKET,
        buckets=buckets,
        inventory=[InventoryVersion(1, P0 - BUCKET, frozenset({"GPU-0"}))],
        nodes=[],
        findings=[],
        evidence=InMemoryEvidenceIndex(figures),
        tree_size=9,
        table_version=compute.TABLE_VERSION,
    )
    assert (report.rules[0].outcome == pb.RULE_OUTCOME_VIOLATION) is broken
    parsed = parse(render_html(report))
    [line] = parsed.with_class("series-cumulative")
    assert line["data-run-buckets"] == "3" and line["data-rules"] == "cum3"
    assert "trailing 3m" in line["aria-label"]
    ys = [float(y) for y in re.findall(r"L[0-9.]+,(-?[0-9.]+)", line["d"])]
    [threshold] = parsed.with_class("threshold-cumulative")
    limit_y = float(threshold["y1"])
    assert (min(ys) < limit_y) is broken  # smaller y is higher on the page
    text = "".join(parsed.text)
    assert "bars: upper-bound FLOP in each bucket (left axis)" in text


def test_a_late_stretch_is_shaded_and_badged_as_late_evidence() -> None:
    late = gap("late-node", P0 + 10 * BUCKET, P0 + 12 * BUCKET)
    late.late = True
    page = render_html(make_report(gaps=[late, gap("plain", P0 + 20 * BUCKET, P0 + 21 * BUCKET)]))
    parsed = parse(page)
    rects = parsed.with_class("gap")
    assert [r["data-late"] for r in rects] == ["true", "false"]
    assert "late evidence on node late-node" in page
    assert page.count('class="badge badge-late"') == 1


def test_flagged_windows_and_counted_gaps_are_shown() -> None:
    report = make_report(gaps=[gap("n", P0, P0 + BUCKET)], as_of_ns=P0 + 30 * BUCKET)
    report.flagged.add(
        flag=pb.WINDOW_FLAG_ENERGY_MISMATCH,
        node_id=b"\x01" * 32,
        node_name="gpu-node-7",
        gpu_uuid="GPU-lying-0001",
        gpu_windows=12,
        first_log_index=40,
        last_log_index=95,
        first_window_start_ns=P0,
        last_window_end_ns=P0 + 12 * BUCKET,
        extra_flop="123000000000000000",
    )
    page = render_html(report)
    section = page[page.index('<section id="flagged">') :]
    section = section[: section.index("</section>")]
    assert "Flagged GPU-windows (1)" in section
    assert "ENERGY MISMATCH" in section and "GPU-lying-0001" in section and "40..95" in section
    gaps = page[page.index('<section id="gaps">') :]
    assert "Counted" in gaps[: gaps.index("</section>")]
    empty = render_html(make_report())
    assert "No flagged GPU-windows." in empty
