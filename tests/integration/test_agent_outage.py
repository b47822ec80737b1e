"""A real agent process through a real outage: its metrics, its log, and the shipped alert rules.

The agent runs as ``python -m agent.cli run --backend sim`` with 0.4 s windows, shipping to a
verifier on loopback that the test stops and starts again on the same port. The metrics are
scraped over HTTP from the process every 0.2 s, and the rules in
docs/alerts/pausewatch-agent.rules.yml are evaluated over what was scraped (tests/prom_rules.py).

The rules' durations are written for production windows (60 s); this run's windows are 0.4 s, a
time-compressed agent (k = 150). The scraped series are mapped onto the production time scale
with that factor: scrape times and every ``*_timestamp_seconds``/``*_time_seconds`` value by
t0 + (t - t0) x k, every ``*_age_seconds`` value by x k; counts are left alone. So 14 s of real
outage evaluates as 35 minutes of production outage.

A second run loses a simulated GPU for 14 s (35 production minutes, longer than any ``increase``
window over its one GPU_LOST event): PausewatchAgentGpusNotVisible fires while it is lost and
clears once it answers again.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from attest import keys
from tests.agent_process import AgentProcess, free_port, wait_until
from tests.agent_setup import write_state_dir
from tests.cli_runner import run_agent_cli
from tests.fake_verifier import FakeVerifier
from tests.prom_rules import (
    Labels,
    Series,
    active_alerts,
    evaluate_alerts,
    load_rules,
    promtool_test_file,
    resample,
)
from tests.testdata import REPO_ROOT

RULES = REPO_ROOT / "docs" / "alerts" / "pausewatch-agent.rules.yml"
WINDOW_S = 0.4
SCALE = 60 / WINDOW_S
OUTAGE_ALERTS = {"PausewatchAgentNotShipping", "PausewatchAgentSpoolGrowing"}


@pytest.fixture
def operator(tmp_path: Path) -> tuple[Path, keys.Ed25519PublicKey]:  # type: ignore[name-defined]
    private = keys.generate_private_key()
    path = tmp_path / "operator.key"
    keys.save_private_key(path, private)
    return path, private.public_key()


@pytest.fixture
def verifier(operator: tuple[Path, object]) -> Iterator[FakeVerifier]:
    server = FakeVerifier(operator_keys={"lab-a": operator[1]})  # type: ignore[dict-item]
    server.start()
    yield server
    server.stop()


def scaled(values: dict[tuple[str, Labels], float], t0: float) -> dict[tuple[str, Labels], float]:
    out = {}
    for (name, labels), value in values.items():
        mapped = value
        if (name.endswith(("_timestamp_seconds", "_time_seconds"))) and value > 0:
            mapped = t0 + (value - t0) * SCALE
        elif name.endswith("_age_seconds"):
            mapped = value * SCALE
        out[(name, labels)] = mapped
    return out


class Scraper:
    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent
        self.series = Series()
        self.times: list[float] = []
        self.raw: list[tuple[float, dict[tuple[str, Labels], float] | None]] = []
        self.t0: float | None = None

    def scrape(self) -> dict[tuple[str, Labels], float] | None:
        now = time.time()
        values = self.agent.scrape()
        if self.t0 is None:
            self.t0 = now
        t = self.t0 + (now - self.t0) * SCALE
        self.series.add_scrape(
            t, None if values is None else scaled(values, self.t0), instance="node-1"
        )
        self.times.append(t)
        self.raw.append((now, values))
        return values

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.scrape()
            time.sleep(0.2)


def depth(values: dict[tuple[str, Labels], float] | None) -> float:
    assert values is not None
    return values[("pausewatch_agent_spool_depth", ())]


@pytest.mark.slow
def test_spool_gauge_rises_in_a_real_outage_and_the_alert_rules_fire(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    verifier: FakeVerifier,
    operator: tuple[Path, object],
) -> None:
    config = write_state_dir(
        tmp_path,
        address=verifier.address,
        window_s=str(WINDOW_S),
        interval_ms=100,
        extra="[logging]\nlevel = 'info'\n",
    )
    state = config.node.state_dir
    code, out, err = run_agent_cli(
        capsys, "enroll", "--state-dir", str(state), "--operator-key", str(operator[0])
    )
    assert code == 0, out + err
    rules = load_rules(RULES)
    agent = AgentProcess.start(state, tmp_path / "agent.log", metrics_port=free_port())
    try:
        scraper = Scraper(agent)
        wait_until(
            lambda: (scraper.scrape() or {}).get(("pausewatch_agent_connected", ())) == 1.0,
            30,
            "the agent connects",
        )
        wait_until(
            lambda: (scraper.scrape() or {}).get(("pausewatch_agent_receipts_total",
                                                   (("status", "accepted"),)), 0) >= 3,
            30,
            "receipts arrive",
        )  # fmt: skip
        # The honest control: a healthy agent for a while (10 production minutes).
        scraper.run_for(4.0)
        healthy_until = len(scraper.times)
        healthy = evaluate_alerts(rules, scraper.series, scraper.times)
        assert {name: hits for name, hits in healthy.items() if hits} == {}
        assert max(depth(v) for _, v in scraper.raw[-10:]) <= 3

        # The outage: the verifier goes away.
        port = verifier.port
        verifier.stop()
        scraper.run_for(14.0)
        outage = scraper.raw[healthy_until:]
        depths = [depth(v) for _, v in outage]
        assert depths[-1] >= depths[0] + 20, depths  # ~35 windows signed while disconnected
        assert all(b >= a for a, b in itertools.pairwise(depths)), depths
        last = outage[-1][1]
        assert last is not None
        assert last[("pausewatch_agent_connected", ())] == 0.0
        assert last[("pausewatch_agent_ship_errors_total", (("kind", "refused"),))] >= 1
        assert last[("pausewatch_agent_oldest_unshipped_window_age_seconds", ())] >= 10
        assert last[("pausewatch_agent_spool_bytes", ())] > 0
        assert last[("pausewatch_agent_ship_errors_total", (("kind", "tls"),))] == 0
        # The gauge and `status` read the same spool.
        code, out, err = run_agent_cli(capsys, "status", "--json", "--state-dir", str(state))
        after = agent.scrape()
        pending = json.loads(out)["spool"]["pending"]
        assert depth(last) <= pending <= depth(after)
        firing = evaluate_alerts(rules, scraper.series, scraper.times)
        fired = {name for name, hits in firing.items() if hits}
        assert fired == OUTAGE_ALERTS, firing
        assert active_alerts(rules, scraper.series, scraper.times[-1]) == OUTAGE_ALERTS
        # They fire only in the outage, not before it.
        first = {name: min(t for t, _ in hits) for name, hits in firing.items() if hits}
        assert min(first.values()) > scraper.times[healthy_until - 1]
        if shutil.which("promtool"):  # Prometheus' own engine agrees, on the same samples
            start, interval = scraper.times[0], 30.0
            steps = int((scraper.times[-1] - start) // interval) + 1
            grid = resample(scraper.series, start, interval, steps)
            healthy_step = int((scraper.times[healthy_until - 1] - start) // interval)
            text = promtool_test_file(
                RULES, grid, rules, start, interval, steps, eval_steps=[healthy_step, steps - 1]
            )
            checks = json.loads(text)["tests"][0]["alert_rule_test"]
            assert {c["alertname"] for c in checks if c["exp_alerts"]} == OUTAGE_ALERTS
            (tmp_path / "outage.test.yml").write_text(text)
            result = subprocess.run(
                ["promtool", "test", "rules", str(tmp_path / "outage.test.yml")],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]

        # The verifier comes back: the agent says so, ships the backlog, the alerts clear.
        verifier.start(port)
        wait_until(lambda: depth(scraper.scrape()) == 0, 40, "the backlog ships")
        scraper.run_for(1.0)
        log = agent.log()
        assert "reconnected to the verifier" in log
        assert "kind=refused heals=yes" in log
        assert active_alerts(rules, scraper.series, scraper.times[-1]) == set()
    finally:
        code = agent.stop()
    assert code == 0, agent.log()[-3000:]


@pytest.mark.slow
def test_a_real_agent_alerts_while_a_gpu_is_lost_and_clears_when_it_returns(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    verifier: FakeVerifier,
    operator: tuple[Path, object],
) -> None:
    config = write_state_dir(
        tmp_path, address=verifier.address, window_s=str(WINDOW_S), interval_ms=100
    )
    assert config.sim.scenario is not None
    with config.sim.scenario.open("a") as scenario:  # GPU 1 is lost 6 s after the agent opens
        scenario.write("[[fault]]\nat_s = 6\nkind = 'gpu_lost'\ngpu = 1\nduration_s = 14\n")
    state = config.node.state_dir
    code, out, err = run_agent_cli(
        capsys, "enroll", "--state-dir", str(state), "--operator-key", str(operator[0])
    )
    assert code == 0, out + err
    rules = load_rules(RULES)
    unreadable = ("pausewatch_agent_gpus_unreadable", ())
    agent = AgentProcess.start(state, tmp_path / "agent.log", metrics_port=free_port())
    try:
        scraper = Scraper(agent)
        wait_until(lambda: (scraper.scrape() or {}).get(unreadable) == 0.0, 30, "metrics")
        wait_until(lambda: (scraper.scrape() or {}).get(unreadable) == 1.0, 30, "the GPU is lost")
        lost_at = len(scraper.times) - 1
        healthy = evaluate_alerts(rules, scraper.series, scraper.times[:lost_at])
        assert {name for name, hits in healthy.items() if hits} == set()
        # 9 s = 22.5 production minutes: past the 15 minutes an increase() over the one
        # GPU_LOST event would have held the alert for
        scraper.run_for(9.0)
        assert all(v is not None and v[unreadable] == 1.0 for _, v in scraper.raw[lost_at:])
        last = scraper.raw[-1][1]
        assert last is not None
        assert last[("pausewatch_agent_sampler_events_total", (("kind", "gpu_lost"),))] == 1
        assert active_alerts(rules, scraper.series, scraper.times[-1]) == {
            "PausewatchAgentGpusNotVisible"
        }
        firing = evaluate_alerts(rules, scraper.series, scraper.times)
        hits = firing["PausewatchAgentGpusNotVisible"]
        assert hits and min(t for t, _ in hits) > scraper.times[lost_at]
        assert {name for name, hits in firing.items() if hits} == {"PausewatchAgentGpusNotVisible"}
        if shutil.which("promtool"):  # Prometheus' own engine agrees, on the same samples
            start, interval = scraper.times[0], 30.0
            steps = int((scraper.times[-1] - start) // interval) + 1
            grid = resample(scraper.series, start, interval, steps)
            text = promtool_test_file(
                RULES, grid, rules, start, interval, steps, eval_steps=[steps - 1]
            )
            checks = json.loads(text)["tests"][0]["alert_rule_test"]
            assert {c["alertname"] for c in checks if c["exp_alerts"]} == {
                "PausewatchAgentGpusNotVisible"
            }
            (tmp_path / "gpu.test.yml").write_text(text)
            result = subprocess.run(
                ["promtool", "test", "rules", str(tmp_path / "gpu.test.yml")],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]

        # The GPU answers again: the gauge drops to 0 and the alert clears.
        wait_until(lambda: (scraper.scrape() or {}).get(unreadable) == 0.0, 20, "the GPU returns")
        scraper.run_for(1.0)
        assert active_alerts(rules, scraper.series, scraper.times[-1]) == set()
    finally:
        code = agent.stop()
    assert code == 0, agent.log()[-3000:]
