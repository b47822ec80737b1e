"""The HTML compliance report rendered in a real browser (headless Chromium), checked as laid out.

Two runs of Debian's ``chromium`` (installed by ``scripts/ensure_chromium.sh`` when missing, where
root and apt are available): ``--dump-dom`` on a copy of the page with a small script that writes
the geometry of the verdict, the plot, the gap rectangles, the limit lines and the violation
highlight into ``<pre id="layout">`` once the page has loaded (the copy drops the page's
Content-Security-Policy, which forbids scripts, so that any resource the page referred to would
really be fetched and show up in the resource timings); and ``--screenshot`` of the page exactly as
rendered, decoded here with zlib and struct to check that the chart has been painted. The tests
skip only when chromium can be neither found nor installed, or does not start on this machine.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pausewatch.v1 import audit_pb2 as pb
from pausewatch.v1 import findings_pb2 as fpb

from verifier.audit.report_html import render_html

ROOT = Path(__file__).resolve().parents[2]
ENSURE_CHROMIUM = ROOT / "scripts" / "ensure_chromium.sh"
WINDOW = (1400, 2000)
S = 1_000_000_000
BUCKET = 300 * S
P0 = 1_795_000_000 * S - (1_795_000_000 * S) % (3_600 * S)  # 2026-11-18T11:00:00Z
P1 = P0 + 48 * BUCKET  # four hours
HOSTILE_NODE = "node-b <script>alert(1)</script>"
CSP_META = (
    '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
    "style-src 'unsafe-inline'; img-src data:\">"
)
LAYOUT_SCRIPT = """
<pre id="layout"></pre>
<script>
addEventListener("load", () => {
  const box = (e) => {
    const r = e.getBoundingClientRect();
    return {x: r.left, y: r.top, w: r.width, h: r.height};
  };
  const all = (selector) => Array.from(document.querySelectorAll(selector));
  const verdict = document.getElementById("verdict");
  const word = verdict.querySelector(".verdict-word");
  document.getElementById("layout").textContent = JSON.stringify({
    verdict: {...box(verdict), verdict: verdict.dataset.verdict,
              background: getComputedStyle(verdict).backgroundColor,
              fontSize: parseFloat(getComputedStyle(word).fontSize)},
    chart: box(document.getElementById("compute-chart")),
    plot: box(document.getElementById("plot-area")),
    cumulative: box(document.querySelector("#compute-chart .series-cumulative")),
    upper: box(document.querySelector("#compute-chart .series-upper")),
    gaps: all("#compute-chart rect.gap").map((e) => ({...box(e), start: e.dataset.startNs,
      end: e.dataset.endNs, node: e.dataset.node})),
    thresholds: all("#compute-chart line.threshold").map((e) => ({...box(e),
      rule: e.dataset.rule, limit: e.dataset.limit, axis: e.dataset.axis})),
    violations: all("#compute-chart rect.violation").map((e) => ({...box(e),
      rule: e.dataset.rule})),
    resources: performance.getEntriesByType("resource").map((e) => e.name),
    scripts: document.scripts.length,
    title: document.title,
  });
});
</script>
"""


# --- the report ----------------------------------------------------------------------------------


def _rule(
    rule_id: str, kind: int, limit: int, outcome: int, stretch: tuple[int, int], unit: str = "flop"
) -> pb.RuleResult:
    return pb.RuleResult(
        rule_id=rule_id,
        kind=kind,  # type: ignore[arg-type]
        outcome=outcome,  # type: ignore[arg-type]
        measured="0",
        limit=str(limit),
        unit=unit,
        method="upper_bound",
        worst_start_ns=stretch[0],
        worst_end_ns=stretch[1],
        summary=f"{rule_id}: see the chart",
    )


def _gap(name: str, start_ns: int, end_ns: int, *, open_: bool = False) -> pb.GapReport:
    return pb.GapReport(
        node_id=name.encode()[:32].ljust(32, b"\0"),
        node_name=name,
        open=open_,
        gap=fpb.GapDetail(gap_start_ns=start_ns, gap_end_ns=end_ns, time_bound_flop="1"),
    )


def build_report() -> pb.ComplianceReport:
    """Four hours in 5-minute buckets: 3e17 FLOP a bucket, 1e19 in a burst (buckets 18-29)."""
    values = [10**19 if 18 <= i < 30 else 3 * 10**17 for i in range(48)]
    report = pb.ComplianceReport(
        lab_id="example-lab",
        period_start_ns=P0,
        period_end_ns=P1,
        as_of_ns=P1,
        verdict=pb.VERDICT_VIOLATION,
        bucket_ns=BUCKET,
        policy_id="eu-ai-act-pause",
        policy_version=3,
        policy_digest=bytes(range(32)),
        tree_size=1412,
        table_version=1,
        reasons=["VIOLATION: rule cumulative-4h: over the limit"],
    )
    for i, value in enumerate(values):
        report.series.add(bucket_start_ns=P0 + i * BUCKET, upper_bound_flop=str(value))
    report.rules.extend(
        [
            # 1.308e20 FLOP in all: over 1e20, far under 1e25.
            _rule("cumulative-4h", 1, 10**20, pb.RULE_OUTCOME_VIOLATION, (P0, P1)),
            _rule("eu-ai-act", 1, 10**25, pb.RULE_OUTCOME_PASS, (P0, P1)),
            _rule(
                "sustained-1h",
                2,
                2 * 10**15,
                pb.RULE_OUTCOME_VIOLATION,
                (P0 + 18 * BUCKET, P0 + 30 * BUCKET),
                unit="flop_per_s",
            ),
            _rule("coverage", 3, 990_000, pb.RULE_OUTCOME_UNACCOUNTED, (P0, P1), unit="ppm"),
        ]
    )
    report.gaps.extend(
        [
            _gap(HOSTILE_NODE, P0 + 6 * BUCKET, P0 + 12 * BUCKET),
            _gap("node-c", P0 - 3_600 * S, P0 + 2 * BUCKET),  # began before the period
            _gap("node-a", P0 + 42 * BUCKET, P1, open_=True),
        ]
    )
    return report


# --- driving chromium ----------------------------------------------------------------------------


def _find_chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


@dataclass(frozen=True)
class Browser:
    executable: str
    profile: Path
    window: tuple[int, int] = WINDOW

    def run(self, *arguments: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        """One headless run with no network, in its own process group (killed on timeout)."""
        command = [
            self.executable,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
            "--mute-audio",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={self.profile}",
            f"--window-size={self.window[0]},{self.window[1]}",
            *arguments,
        ]
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Browser:
    return start_browser(tmp_path_factory)


def start_browser(
    tmp_path_factory: pytest.TempPathFactory, window: tuple[int, int] = WINDOW
) -> Browser:
    """A Browser that starts on this machine, or a pytest skip saying why not."""
    executable = _find_chromium()
    if executable is None:
        try:
            installed = subprocess.run(
                ["bash", str(ENSURE_CHROMIUM)],
                check=False,
                capture_output=True,
                text=True,
                timeout=280,
            )
            why = installed.stderr.strip()[-400:] or f"exit status {installed.returncode}"
        except subprocess.TimeoutExpired:
            why = "it did not finish within 280 s"
        executable = _find_chromium()
        if executable is None:
            pytest.skip(
                f"chromium is not installed and scripts/ensure_chromium.sh could not install it: "
                f"{why}"
            )
    browser = Browser(executable, tmp_path_factory.mktemp("chromium-profile"), window)
    probe = tmp_path_factory.mktemp("probe") / "probe.html"
    probe.write_text('<!DOCTYPE html><p id="probe">ok</p>', encoding="utf-8")
    try:
        started = browser.run("--dump-dom", probe.as_uri())
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"chromium ({executable}) does not start on this machine: {exc}")
    if 'id="probe"' not in started.stdout:
        pytest.skip(
            f"chromium ({executable}) does not start on this machine (exit status "
            f"{started.returncode}): {started.stderr.strip()[-400:]}"
        )
    return browser


@pytest.fixture(scope="module")
def report() -> pb.ComplianceReport:
    return build_report()


@pytest.fixture(scope="module")
def page_path(report: pb.ComplianceReport, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("page") / "report.html"
    path.write_text(render_html(report), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def layout(browser: Browser, page_path: Path) -> dict[str, Any]:
    page = page_path.read_text(encoding="utf-8")
    assert CSP_META in page
    probe_copy = page_path.with_name("report-layout.html")
    probe_copy.write_text(
        page.replace(CSP_META, "").replace("</body>", LAYOUT_SCRIPT + "</body>"), encoding="utf-8"
    )
    result = browser.run("--dump-dom", probe_copy.as_uri())
    found = re.search(r'<pre id="layout">(.*?)</pre>', result.stdout, re.DOTALL)
    assert found is not None and found.group(1), f"no layout in the DOM: {result.stderr[-800:]}"
    data: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return data


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    channels: int
    rows: list[bytes]

    def pixel(self, x: float, y: float) -> tuple[int, int, int]:
        row, at = self.rows[int(y)], int(x) * self.channels
        return row[at], row[at + 1], row[at + 2]

    def colours(self, box: dict[str, float]) -> set[tuple[int, int, int]]:
        x0, x1 = int(box["x"]) + 1, int(box["x"] + box["w"]) - 1
        return {
            self.pixel(x, y)
            for y in range(int(box["y"]) + 1, int(box["y"] + box["h"]) - 1)
            for x in range(x0, x1)
        }


def decode_png(data: bytes) -> Image:
    """An 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes), unfiltered row by row."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, compressed = 8, []
    width = height = channels = 0
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert (depth, interlace) == (8, 0) and colour in (2, 6), (depth, colour, interlace)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"IEND":
            break
    raw = zlib.decompress(b"".join(compressed))
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        filter_type, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if filter_type == 1:  # Sub
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 0xFF
        elif filter_type == 2:  # Up
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
        elif filter_type == 3:  # Average
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif filter_type == 4:  # Paeth
            for i in range(stride):
                a = line[i - channels] if i >= channels else 0
                b = previous[i]
                c = previous[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        else:
            assert filter_type == 0, f"unknown PNG filter {filter_type}"
        rows.append(bytes(line))
        previous = line
    return Image(width, height, channels, rows)


@pytest.fixture(scope="module")
def screenshot(browser: Browser, page_path: Path) -> Image:
    png = page_path.with_name("report.png")
    browser.run(f"--screenshot={png}", page_path.as_uri())
    assert png.exists(), "chromium wrote no screenshot"
    return decode_png(png.read_bytes())


# --- the checks ----------------------------------------------------------------------------------


def _x_of(layout: dict[str, Any], timestamp_ns: int) -> float:
    plot = layout["plot"]
    clipped = min(max(timestamp_ns, P0), P1)
    return float(plot["x"] + (clipped - P0) / (P1 - P0) * plot["w"])


def test_the_verdict_is_shown_first_and_large(layout: dict[str, Any]) -> None:
    verdict = layout["verdict"]
    assert verdict["verdict"] == "VIOLATION"
    assert verdict["w"] > 800 and verdict["h"] > 80
    assert verdict["y"] + verdict["h"] <= layout["chart"]["y"]  # above the chart
    assert verdict["y"] < WINDOW[1] / 3  # near the top of the first screen
    assert verdict["fontSize"] >= 28
    red, green, blue = map(int, re.findall(r"\d+", verdict["background"])[:3])
    assert red > green + 10 and red > blue + 10, verdict["background"]
    assert layout["title"].startswith("pausewatch compliance report: example-lab")


def test_the_chart_is_laid_out_with_its_plot_and_data(layout: dict[str, Any]) -> None:
    chart, plot = layout["chart"], layout["plot"]
    assert chart["w"] > 1000 and chart["h"] > 400
    assert chart["x"] <= plot["x"] and plot["x"] + plot["w"] <= chart["x"] + chart["w"]
    assert plot["w"] > 800 and plot["h"] > 300
    for series in ("upper", "cumulative"):
        box = layout[series]
        assert box["w"] > plot["w"] * 0.9, series
        assert box["h"] > 20, series
        assert plot["y"] <= box["y"] and box["y"] + box["h"] <= plot["y"] + plot["h"] + 1.5


def test_every_gap_is_shaded_over_its_time(
    layout: dict[str, Any], report: pb.ComplianceReport
) -> None:
    plot = layout["plot"]
    gaps = layout["gaps"]
    assert [g["node"] for g in gaps] == [item.node_name for item in report.gaps]
    assert gaps[0]["node"] == HOSTILE_NODE  # the markup in the name stayed text
    for found, item in zip(gaps, report.gaps, strict=True):
        assert int(found["start"]) == item.gap.gap_start_ns
        assert int(found["end"]) == item.gap.gap_end_ns
        assert found["x"] == pytest.approx(_x_of(layout, item.gap.gap_start_ns), abs=1.5)
        right = found["x"] + found["w"]
        assert right == pytest.approx(_x_of(layout, item.gap.gap_end_ns), abs=1.5)
        assert plot["x"] - 1 <= found["x"] and right <= plot["x"] + plot["w"] + 1
        assert found["h"] == pytest.approx(plot["h"], abs=1.5)


def test_every_compute_limit_is_a_line_across_the_plot(
    layout: dict[str, Any], report: pb.ComplianceReport
) -> None:
    plot, cumulative = layout["plot"], layout["cumulative"]
    lines = {line["rule"]: line for line in layout["thresholds"]}
    assert set(lines) == {"cumulative-4h", "eu-ai-act", "sustained-1h"}
    for line in lines.values():
        assert line["h"] < 3  # horizontal
        assert line["w"] == pytest.approx(plot["w"], abs=1.5)
        assert plot["y"] <= line["y"] <= plot["y"] + plot["h"]
    assert lines["eu-ai-act"]["limit"] == str(10**25)
    assert lines["sustained-1h"]["axis"] == "rate"
    # The cumulative line crosses the 1e20 limit it broke and stays far below 1e25.
    assert cumulative["y"] < lines["cumulative-4h"]["y"] < cumulative["y"] + cumulative["h"]
    assert lines["eu-ai-act"]["y"] < cumulative["y"] - 50


def test_each_violated_rule_has_its_worst_stretch_highlighted(
    layout: dict[str, Any], report: pb.ComplianceReport
) -> None:
    violated = {r.rule_id: r for r in report.rules if r.outcome == pb.RULE_OUTCOME_VIOLATION}
    found = {v["rule"]: v for v in layout["violations"]}
    assert set(found) == set(violated) == {"cumulative-4h", "sustained-1h"}
    for rule_id, box in found.items():
        rule = violated[rule_id]
        assert box["x"] == pytest.approx(_x_of(layout, rule.worst_start_ns), abs=1.5)
        right = _x_of(layout, rule.worst_end_ns)
        assert box["x"] + box["w"] == pytest.approx(right, abs=1.5)
        assert box["h"] == pytest.approx(layout["plot"]["h"], abs=1.5)


def test_the_page_loads_nothing_and_runs_no_script_of_its_own(layout: dict[str, Any]) -> None:
    assert layout["resources"] == []
    assert layout["scripts"] == 1  # the test's own


def test_the_screenshot_shows_the_painted_chart(
    screenshot: Image, layout: dict[str, Any], report: pb.ComplianceReport
) -> None:
    assert (screenshot.width, screenshot.height) == WINDOW
    plot = layout["plot"]
    assert len(screenshot.colours(plot)) >= 12  # bars, line, gaps, limits, highlights: not blank

    def amber(pixel: tuple[int, int, int]) -> bool:
        red, green, blue = pixel
        return red > 200 and green > 150 and red - blue > 40

    # Just under the plot's top edge, above the data: amber inside each gap, not between them.
    lane_y = plot["y"] + 3
    for box in layout["gaps"]:
        assert amber(screenshot.pixel(box["x"] + box["w"] / 2, lane_y)), box["node"]
    between = _x_of(layout, P0 + 36 * BUCKET)
    assert not amber(screenshot.pixel(between, lane_y))
    # The broken cumulative limit is painted red along its line.
    (line,) = [t for t in layout["thresholds"] if t["rule"] == "cumulative-4h"]
    reds = [
        screenshot.pixel(x, line["y"] + dy)
        for x in range(int(plot["x"]) + 200, int(plot["x"] + plot["w"]) - 10, 3)
        for dy in (-1, 0, 1)
    ]
    assert sum(1 for r, g, b in reds if r > 150 and g < 100 and b < 100) > 20
    # The verdict's red background is painted (the page's own styles survived its CSP).
    verdict = layout["verdict"]
    assert screenshot.pixel(verdict["x"] + verdict["w"] - 20, verdict["y"] + 8) == (253, 236, 235)
