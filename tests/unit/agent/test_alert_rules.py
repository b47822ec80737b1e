"""The shipped alert rules (docs/alerts/pausewatch-agent.rules.yml), each on a scraped-series
story where it must fire and an honest control where it must not; the evaluator's semantics; and
``promtool check rules`` where promtool is installed. The outage itself, against a real agent
process, is tests/integration/test_agent_outage.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.prom_rules import (
    Labels,
    Series,
    evaluate_alerts,
    load_rules,
    parse_expr,
    promtool_test_file,
)
from tests.testdata import REPO_ROOT

RULES_PATH = REPO_ROOT / "docs" / "alerts" / "pausewatch-agent.rules.yml"
RULES = load_rules(RULES_PATH)
T0 = 1_764_403_200.0
STEP = 30.0


def healthy(t: float, i: int) -> dict[tuple[str, Labels], float]:
    return {
        ("pausewatch_agent_spool_depth", ()): 1.0,
        ("pausewatch_agent_connected", ()): 1.0,
        ("pausewatch_agent_oldest_unshipped_window_age_seconds", ()): 60.0,
        ("pausewatch_agent_last_signed_timestamp_seconds", ()): t - 30,
        ("pausewatch_agent_start_time_seconds", ()): T0 - 3600,
        ("pausewatch_agent_rejected_total", (("reason", "BAD_NONCE"),)): 0.0,
        ("pausewatch_agent_windows_unattested_total", ()): 0.0,
        ("pausewatch_agent_ship_errors_total", (("kind", "refused"),)): 0.0,
        ("pausewatch_agent_ship_errors_total", (("kind", "tls"),)): 0.0,
        ("pausewatch_agent_sampler_events_total", (("kind", "gpu_lost"),)): 0.0,
        ("pausewatch_agent_sampler_events_total", (("kind", "agent_start"),)): float(i // 20),
    }


def story(change=None, minutes: int = 60) -> dict[str, list[tuple[float, Labels]]]:  # type: ignore[no-untyped-def]
    series, times = story_series(change, minutes)
    return evaluate_alerts(RULES, series, times)


def story_series(change=None, minutes: int = 60) -> tuple[Series, list[float]]:  # type: ignore[no-untyped-def]
    series = Series()
    times = []
    for i in range(int(minutes * 60 / STEP)):
        t = T0 + i * STEP
        values: dict[tuple[str, Labels], float] | None = healthy(t, i)
        if change is not None:
            values = change(t, i, values)
        series.add_scrape(t, values, instance="node-1")
        times.append(t)
    return series, times


def fired(result: dict[str, list[tuple[float, Labels]]]) -> set[str]:
    return {name for name, hits in result.items() if hits}


def after(minute: int):  # type: ignore[no-untyped-def]
    def wrap(function):  # type: ignore[no-untyped-def]
        def change(t, i, values):  # type: ignore[no-untyped-def]
            return function(t, i, values) if t >= T0 + minute * 60 else values

        return change

    return wrap


def test_the_honest_control_fires_nothing() -> None:
    assert fired(story()) == set()


def test_every_rule_parses_and_has_severity_and_summary() -> None:
    assert len(RULES) >= 8
    for rule in RULES:
        parse_expr(rule.expr)
        assert rule.labels["severity"] in ("warning", "critical")
        assert rule.annotations["summary"]


@after(20)
def _down(t, i, values):  # type: ignore[no-untyped-def]
    return None


@after(20)
def _tls(t, i, values):  # type: ignore[no-untyped-def]
    values[("pausewatch_agent_ship_errors_total", (("kind", "tls"),))] = float(i)
    values[("pausewatch_agent_connected", ())] = 0.0
    return values


@after(20)
def _refused_briefly(t, i, values):  # type: ignore[no-untyped-def]
    if t < T0 + 22 * 60:  # a two-minute blip heals on its own
        values[("pausewatch_agent_ship_errors_total", (("kind", "refused"),))] = float(i)
        values[("pausewatch_agent_connected", ())] = 0.0
    else:
        values[("pausewatch_agent_ship_errors_total", (("kind", "refused"),))] = 5.0
    return values


@after(20)
def _stuck(t, i, values):  # type: ignore[no-untyped-def]
    values[("pausewatch_agent_last_signed_timestamp_seconds", ())] = T0 + 20 * 60
    return values


@after(20)
def _rejected(t, i, values):  # type: ignore[no-untyped-def]
    values[("pausewatch_agent_rejected_total", (("reason", "BAD_NONCE"),))] = 3.0
    return values


@after(20)
def _unattested(t, i, values):  # type: ignore[no-untyped-def]
    values[("pausewatch_agent_windows_unattested_total", ())] = 1.0
    return values


@after(20)
def _gpu_lost(t, i, values):  # type: ignore[no-untyped-def]
    values[("pausewatch_agent_sampler_events_total", (("kind", "gpu_lost"),))] = 1.0
    return values


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_down, {"PausewatchAgentDown"}),
        (_tls, {"PausewatchAgentMisconfigured"}),
        (_refused_briefly, set()),
        (_stuck, {"PausewatchAgentNotSigning"}),
        (_rejected, {"PausewatchAgentEvidenceRejected"}),
        (_unattested, {"PausewatchAgentWindowsUnattested"}),
        (_gpu_lost, {"PausewatchAgentGpusNotVisible"}),
    ],
)
def test_each_rule_fires_on_its_story(change, expected) -> None:  # type: ignore[no-untyped-def]
    assert fired(story(change)) == expected


def test_for_waits_and_a_counter_reset_is_not_an_increase() -> None:
    @after(20)
    def restart(t, i, values):  # type: ignore[no-untyped-def]
        # a restart resets every counter to 0: not an increase
        values[("pausewatch_agent_ship_errors_total", (("kind", "tls"),))] = 0.0
        return values

    def before_restart(t, i, values):  # type: ignore[no-untyped-def]
        if t < T0 + 20 * 60:
            values[("pausewatch_agent_rejected_total", (("reason", "BAD_NONCE"),))] = 0.0
        return restart(t, i, values)

    assert fired(story(before_restart)) == set()
    # NotSigning has for: 5m: a stall of 4 minutes (plus the 5 it needs to exceed) does not fire
    result = story(_stuck, minutes=29)
    assert fired(result) == set()


def test_an_unknown_expression_form_is_refused() -> None:
    with pytest.raises(ValueError, match=r"trailing tokens|not supported|unsupported"):
        parse_expr("rate(pausewatch_agent_samples_total[5m]) > 0 or vector(1)")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
@pytest.mark.parametrize(
    "change",
    [None, _down, _tls, _refused_briefly, _stuck, _rejected, _unattested, _gpu_lost],
)
def test_promtool_agrees_with_the_evaluator(change, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Prometheus' own rule engine fires exactly the alerts this evaluator fires, with the same
    labels and annotations, at the end of each story and in its middle."""
    series, times = story_series(change)
    steps = len(times)
    text = promtool_test_file(
        RULES_PATH, series, RULES, T0, STEP, steps, eval_steps=[steps // 2, steps - 1]
    )
    expected = [t for t in json.loads(text)["tests"][0]["alert_rule_test"] if t["exp_alerts"]]
    assert bool(expected) == (change not in (None, _refused_briefly))
    test_file = tmp_path / "rules.test.yml"
    test_file.write_text(text)
    result = subprocess.run(
        ["promtool", "test", "rules", str(test_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rule_file() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", str(RULES_PATH)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
