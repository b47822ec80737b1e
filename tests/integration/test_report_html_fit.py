"""The HTML report of ``audit analyse`` laid out by headless Chromium on a 1280 px-wide page.

The page is the one ``pausewatch audit analyse`` writes for a generated nvidia-smi log (eight GPUs
interleaved, no index, uuid or name column) under a policy that several rules break, with long
rule ids: the chart and every table must fit the page (no horizontal scroll, nothing cut off in a
table), the data-quality banner must be visible on the first screen next to the verdict, and each
violated rule's label must sit in its own lane, overlapping no other. The browser helpers and the
skip rules are those of tests/integration/test_report_html_browser.py.
"""

from __future__ import annotations

import html
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_report_html_browser import Browser, decode_png, start_browser
from tests.nvsmi_logs import generate_log

WIDTH, HEIGHT = 1280, 2000
CSP_META = (
    '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
    "style-src 'unsafe-inline'; img-src data:\">"
)
RULES_BROKEN = (
    "cumulative-one-hour-upper-bound-ceiling",
    "sustained-rate-of-the-whole-fleet",
    "training-signature-eight-gpus",
    "max-gap",
)
POLICY = """\
format_version = 1
policy_id = "fit-check"
version = 1
lab_id = "lab-a"
description = "Several rules broken at once"

[[rules]]
id = "cumulative-one-hour-upper-bound-ceiling"
kind = "cumulative_flop"
window = "1h"
limit_flop = "10^18"

[[rules]]
id = "sustained-rate-of-the-whole-fleet"
kind = "sustained_rate"
interval = "2m"
limit_flop_per_s = "10^15"

[[rules]]
id = "coverage"
kind = "coverage"
min_ratio = "90%"

[[rules]]
id = "max-gap"
kind = "max_gap"
max_gap = "1s"

[[rules]]
id = "training-signature-eight-gpus"
kind = "training_signature"
min_gpus = 8
min_busy_percent = 90
min_duration = "3m"
"""
LAYOUT_SCRIPT = """
<pre id="layout"></pre>
<script>
addEventListener("load", () => {
  const box = (e) => {
    const r = e.getBoundingClientRect();
    return {x: r.left, y: r.top, w: r.width, h: r.height};
  };
  const all = (selector) => Array.from(document.querySelectorAll(selector));
  const banner = document.getElementById("data-quality");
  document.getElementById("layout").textContent = JSON.stringify({
    viewport: document.documentElement.clientWidth,
    pageWidth: document.documentElement.scrollWidth,
    bodyWidth: document.body.scrollWidth,
    verdict: box(document.getElementById("verdict")),
    banner: {...box(banner), background: getComputedStyle(banner).backgroundColor,
             visibility: getComputedStyle(banner).visibility, text: banner.textContent},
    chart: box(document.getElementById("compute-chart")),
    tables: all(".table-wrap").map((e) => ({...box(e), scroll: e.scrollWidth,
      client: e.clientWidth, id: e.closest("section").id})),
    labels: all("#compute-chart text.violation-label[data-rule]").map((e) => ({...box(e),
      rule: e.dataset.rule})),
    lanes: all("#compute-chart rect.violation-lane").map((e) => ({...box(e),
      rule: e.dataset.rule})),
  });
});
</script>
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Browser:
    return start_browser(tmp_path_factory, (WIDTH, HEIGHT))


@pytest.fixture(scope="module")
def page_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("analyse")
    log = generate_log(gpus=8, seconds=540, busy_pct=(86, 100), stall_at_s=200, stall_s=3)
    (folder / "node-with-a-rather-long-name-07.csv").write_text(log.text, encoding="utf-8")
    (folder / "policy.toml").write_text(POLICY, encoding="utf-8")
    page = folder / "what-if.html"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "verifier.cli",
            "audit",
            "analyse",
            str(folder / "node-with-a-rather-long-name-07.csv"),
            "--policy",
            str(folder / "policy.toml"),
            "--html",
            str(page),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    for rule_id in RULES_BROKEN:
        assert f"VIOLATION: rule {rule_id}" in done.stdout or rule_id == "max-gap", rule_id
    return page


@pytest.fixture(scope="module")
def layout(browser: Browser, page_path: Path) -> dict[str, Any]:
    page = page_path.read_text(encoding="utf-8")
    assert CSP_META in page
    probe = page_path.with_name("what-if-layout.html")
    probe.write_text(
        page.replace(CSP_META, "").replace("</body>", LAYOUT_SCRIPT + "</body>"), encoding="utf-8"
    )
    result = browser.run("--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="layout">(.*?)</pre>', result.stdout, re.DOTALL)
    assert found is not None and found.group(1), f"no layout in the DOM: {result.stderr[-800:]}"
    data: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return data


def test_the_page_fits_1280_px_without_horizontal_scroll(layout: dict[str, Any]) -> None:
    assert layout["viewport"] <= WIDTH
    assert layout["pageWidth"] <= layout["viewport"], layout["pageWidth"]
    assert layout["bodyWidth"] <= layout["viewport"]
    chart = layout["chart"]
    assert chart["x"] >= 0 and chart["x"] + chart["w"] <= layout["viewport"]
    assert chart["w"] > 900  # scaled to the page, still large


def test_every_table_fits_its_box_nothing_cut_off(layout: dict[str, Any]) -> None:
    tables = {t["id"]: t for t in layout["tables"]}
    assert "rules" in tables
    for name, table in tables.items():
        assert table["scroll"] <= table["client"] + 1, (name, table["scroll"], table["client"])
        assert table["x"] + table["w"] <= layout["viewport"], name


def test_the_data_quality_banner_is_visible_by_the_verdict(layout: dict[str, Any]) -> None:
    banner, verdict = layout["banner"], layout["verdict"]
    assert banner["visibility"] == "visible"
    assert banner["w"] > 800 and banner["h"] > 40
    assert banner["y"] + banner["h"] <= HEIGHT / 2  # on the first screen
    assert 0 <= banner["y"] - (verdict["y"] + verdict["h"]) <= 40  # right under the verdict
    assert banner["y"] < layout["chart"]["y"]
    red, green, blue = map(int, re.findall(r"\d+", banner["background"])[:3])
    assert (red, green, blue) != (255, 255, 255)
    assert "not in the compute table" in banner["text"]  # no --gpu-model: unknown models
    assert "8 GPUs read from the rows' cycle" in banner["text"]


def test_each_violated_rule_has_a_lane_and_no_label_overlaps_another(
    layout: dict[str, Any],
) -> None:
    labels = layout["labels"]
    lanes = layout["lanes"]
    broken = {rule for rule in RULES_BROKEN if rule != "max-gap"}
    assert broken <= {label["rule"] for label in labels}
    assert {lane["rule"] for lane in lanes} == {label["rule"] for label in labels}
    chart = layout["chart"]
    for i, a in enumerate(labels):
        assert chart["x"] <= a["x"] and a["x"] + a["w"] <= chart["x"] + chart["w"], a["rule"]
        for b in labels[i + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, (a, b)
    ys = sorted(lane["y"] for lane in lanes)
    assert all(later - earlier >= 10 for earlier, later in itertools.pairwise(ys))


def test_the_screenshot_at_1280_px_is_not_tinted_by_the_overlays(
    browser: Browser, page_path: Path, layout: dict[str, Any]
) -> None:
    png = page_path.with_name("what-if.png")
    browser.run(f"--screenshot={png}", page_path.as_uri())
    image = decode_png(png.read_bytes())
    assert (image.width, image.height) == (WIDTH, HEIGHT)
    chart = layout["chart"]
    # Below the lanes, between the bars, the plot stays white however many rules are violated
    # over the same stretch (the old overlays stacked pink there).
    pinkish = 0
    samples = 0
    y = chart["y"] + chart["h"] * 0.55
    for x in range(int(chart["x"] + chart["w"] * 0.12), int(chart["x"] + chart["w"] * 0.88), 2):
        red, green, blue = image.pixel(x, y)
        samples += 1
        if red > 200 and red - green > 40 and red - blue > 40:
            pinkish += 1
    assert pinkish < samples * 0.05, (pinkish, samples)
