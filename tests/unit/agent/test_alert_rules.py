"""The shipped alert rules (docs/alerts/pausewatch-agent.rules.yml), each on a scraped-series
story where it must fire and an honest control where it must not; the same on series rendered by
a real AgentMetrics (the first rejection, TLS failure, NVML error or lost GPU fires its alert;
a lost GPU holds its alert until it returns); the evaluator's semantics; and ``promtool check
rules`` where promtool is installed. The outage itself, against a real agent process, is
tests/integration/test_agent_outage.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.failures import FailureKind
from agent.metrics import AgentMetrics, reject_reason_label
from agent.sampler.base import EventKind, GpuIdentity, GpuReading, Poll, SamplerEvent
from tests.fakes import gpu_reading
from tests.prom_rules import (
    Labels,
    Series,
    evaluate_alerts,
    load_rules,
    parse_exposition,
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
        ("pausewatch_agent_rejected_total", (("reason", "bad_nonce"),)): 0.0,
        ("pausewatch_agent_windows_unattested_total", ()): 0.0,
        ("pausewatch_agent_ship_errors_total", (("kind", "refused"),)): 0.0,
        ("pausewatch_agent_ship_errors_total", (("kind", "tls"),)): 0.0,
        ("pausewatch_agent_sampler_events_total", (("kind", "gpu_lost"),)): 0.0,
        ("pausewatch_agent_sampler_events_total", (("kind", "library_not_found"),)): 0.0,
        ("pausewatch_agent_gpus_unreadable", ()): 0.0,
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
    values[("pausewatch_agent_rejected_total", (("reason", "bad_nonce"),))] = 3.0
    return values


@after(20)
def _unattested(t, i, values):  # type: ignore[no-untyped-def]
    values[("pausewatch_agent_windows_unattested_total", ())] = 1.0
    return values


@after(20)
def _gpu_lost(t, i, values):  # type: ignore[no-untyped-def]
    values[("pausewatch_agent_sampler_events_total", (("kind", "gpu_lost"),))] = 1.0
    values[("pausewatch_agent_gpus_unreadable", ())] = 1.0
    return values


@after(20)
def _nvml_blind(t, i, values):  # type: ignore[no-untyped-def]
    # no library: an event at every poll (the node was blind from the start, no GPU ever seen)
    values[("pausewatch_agent_sampler_events_total", (("kind", "library_not_found"),))] = float(i)
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
        (_nvml_blind, {"PausewatchAgentNvmlUnusable"}),
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
            values[("pausewatch_agent_rejected_total", (("reason", "bad_nonce"),))] = 0.0
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
    [None, _down, _tls, _refused_briefly, _stuck, _rejected, _unattested, _gpu_lost, _nvml_blind],
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


# -- stories scraped from a real AgentMetrics ----------------------------------------------------

GPUS = tuple(GpuIdentity(index=i, uuid=f"GPU-{i}", model="H100") for i in range(2))


def reading(gpu: GpuIdentity, t: float, *, lost: bool = False) -> GpuReading:
    return gpu_reading(gpu, int(t * 1e9), lost=lost, utilization_pct=90)


def healthy_poll(t: float) -> Poll:
    return Poll(timestamp_ns=int(t * 1e9), readings=tuple(reading(g, t) for g in GPUS))


Happening = Callable[[AgentMetrics, float], None]


def scraped_story(happening: Happening | None, minutes: int = 60) -> tuple[Series, list[float]]:
    """An agent's metrics as Prometheus scrapes them: each step renders a real AgentMetrics (as
    the endpoint serves it) and parses the text; ``happening`` acts on the metrics first, as the
    daemon and the shipper do. Healthy otherwise: connected, signing, one poll per step."""
    metrics = AgentMetrics(process=False)
    metrics.start_time.set(T0 - 3600)
    metrics.connected.set(1)
    series = Series()
    times = []
    for i in range(int(minutes * 60 / STEP)):
        t = T0 + i * STEP
        metrics.last_signed.set(t - 30)
        if happening is None:
            metrics.observe_poll(healthy_poll(t))
        else:
            happening(metrics, t)
        series.add_scrape(t, parse_exposition(metrics.render().decode()), instance="node-1")
        times.append(t)
    return series, times


def once_at(minute: int, act: Happening) -> Happening:
    """A healthy agent to which ``act`` happens once, in the step at ``minute``."""

    def happening(metrics: AgentMetrics, t: float) -> None:
        metrics.observe_poll(healthy_poll(t))
        if t == T0 + minute * 60:
            act(metrics, t)

    return happening


def _one_rejection(metrics: AgentMetrics, t: float) -> None:
    # what the shipper counts for one REJECTED receipt (test_metrics.py drives the shipper)
    metrics.receipts.labels(status="rejected").inc()
    metrics.rejected.labels(reason=reject_reason_label("BAD_NONCE")).inc()


def _one_tls_failure(metrics: AgentMetrics, t: float) -> None:
    metrics.ship_errors.labels(kind=FailureKind.TLS.value).inc()


def _one_unidentified_gpu(metrics: AgentMetrics, t: float) -> None:
    # NVML could not identify one device while enumerating: one NVML_ERROR event, once
    event = SamplerEvent(kind=EventKind.NVML_ERROR, observed_at_ns=int(t * 1e9))
    metrics.observe_poll(Poll(timestamp_ns=int(t * 1e9), readings=(), events=(event,)))


def gpu_lost_between(start_minute: int, end_minute: int) -> Happening:
    """GPU-1 stops answering at ``start_minute`` (one GPU_LOST event, then a lost reading at
    every poll, as agent/sampler/nvml.py reports it) and answers again at ``end_minute``."""

    def happening(metrics: AgentMetrics, t: float) -> None:
        lost = T0 + start_minute * 60 <= t < T0 + end_minute * 60
        events = ()
        if t == T0 + start_minute * 60:
            events = (SamplerEvent(kind=EventKind.GPU_LOST, observed_at_ns=int(t * 1e9)),)
        elif t == T0 + end_minute * 60:
            events = (SamplerEvent(kind=EventKind.GPU_APPEARED, observed_at_ns=int(t * 1e9)),)
        readings = (reading(GPUS[0], t), reading(GPUS[1], t, lost=lost))
        metrics.observe_poll(Poll(timestamp_ns=int(t * 1e9), readings=readings, events=events))

    return happening


def first_fired(series: Series, times: list[float]) -> dict[str, float]:
    result = evaluate_alerts(RULES, series, times)
    return {name: min(t for t, _ in hits) for name, hits in result.items() if hits}


def test_a_real_agents_metrics_fire_nothing_while_healthy() -> None:
    series, times = scraped_story(None)
    assert first_fired(series, times) == {}
    # every metric a rule reads is in what the agent serves (up comes from Prometheus)
    served = {name for name, _ in series.data} | {"up"}
    for rule in RULES:
        for name in re.findall(r"\b(pausewatch_agent_\w+|up)\b", rule.expr):
            assert name in served, (rule.alert, name)


@pytest.mark.parametrize(
    ("act", "alert", "delay_min"),
    [
        (_one_rejection, "PausewatchAgentEvidenceRejected", 0),
        (_one_tls_failure, "PausewatchAgentMisconfigured", 0),
        (_one_unidentified_gpu, "PausewatchAgentNvmlUnusable", 0),
        (gpu_lost_between(20, 60), "PausewatchAgentGpusNotVisible", 1),
    ],
)
def test_the_first_occurrence_fires_its_alert_from_a_real_agents_metrics(
    act: Happening, alert: str, delay_min: int
) -> None:
    """The agent exports each label value at 0 from its start, so the first increment is an
    increase (a series born at 1 is not); the alert fires at the first evaluation that can see
    it, plus the rule's for:."""
    series, times = scraped_story(once_at(20, act) if delay_min == 0 else act)
    assert first_fired(series, times) == {alert: T0 + (20 + delay_min) * 60}


def test_gpus_not_visible_holds_while_the_gpu_is_lost_and_clears_when_it_returns() -> None:
    """A GPU lost for 30 minutes, longer than any increase() window over its one GPU_LOST
    event: the alert fires from a minute after the loss to the poll where the GPU answers."""
    series, times = scraped_story(gpu_lost_between(10, 40))
    result = evaluate_alerts(RULES, series, times)
    firing = sorted({t for t, _ in result["PausewatchAgentGpusNotVisible"]})
    expected = [t for t in times if T0 + 11 * 60 <= t < T0 + 40 * 60]
    assert firing == expected
    assert {name for name, hits in result.items() if hits} == {"PausewatchAgentGpusNotVisible"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
@pytest.mark.parametrize(
    "happening",
    [
        None,
        once_at(20, _one_rejection),
        once_at(20, _one_tls_failure),
        once_at(20, _one_unidentified_gpu),
        gpu_lost_between(10, 40),
    ],
    ids=["healthy", "rejection", "tls", "nvml_error", "gpu_lost"],
)
def test_promtool_agrees_on_a_real_agents_metrics(
    happening: Happening | None, tmp_path: Path
) -> None:
    """Prometheus fires the first occurrence too (its increase() extrapolates, the evaluator's
    does not), and holds GpusNotVisible while the GPU is lost: checked at the first occurrence,
    during the loss and after the GPU returned."""
    series, times = scraped_story(happening)
    steps = len(times)
    eval_steps = [40, 42, 70, 79, 81, steps - 1]  # minutes 20, 21, 35, 39.5, 40.5, end
    text = promtool_test_file(RULES_PATH, series, RULES, T0, STEP, steps, eval_steps)
    expected = [t for t in json.loads(text)["tests"][0]["alert_rule_test"] if t["exp_alerts"]]
    assert bool(expected) == (happening is not None)
    test_file = tmp_path / "rules.test.yml"
    test_file.write_text(text)
    result = subprocess.run(
        ["promtool", "test", "rules", str(test_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
