"""Reports on a period that is still open: an honest lab whose real agent attests in 2 s windows
reads COMPLIANT, marked provisional, every second for a minute (the window in progress is never
counted as missing); a lab whose agent stops is UNACCOUNTED once the grace has passed.

The verifier and the agent are real processes; the policy is the EU example policy
(docs/policies/eu-ai-act.toml, 99 % coverage) for the test lab.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import registry_pb2 as rpb

from attest.envelope import PayloadType, sign_envelope
from attest.keys import save_private_key
from tests.agent_setup import write_state_dir
from tests.builders import fixed_private_key
from tests.verifier_harness import (
    REPO,
    RunningVerifier,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)

S = 10**9
GRACE_MS = 15_000
EU_POLICY = (REPO / "docs" / "policies" / "eu-ai-act.toml").read_text(encoding="utf-8")


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "protos")]))


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
        check=False,
    )


def _declare_inventory(verifier: RunningVerifier, node_id: bytes) -> None:
    client = verifier.client()
    info = client.registry.GetNode(rpb.GetNodeRequest(node_id=node_id), timeout=10).node
    declaration = rpb.InventoryDeclaration(
        format_version=1,
        lab_id="lab-a",
        version=1,
        gpus=[rpb.GpuIdentity(uuid=gpu.uuid, model=gpu.model) for gpu in info.gpus],
        effective_from_ns=time.time_ns() - 3600 * S,
        created_at_ns=time.time_ns(),
    )
    client.registry.DeclareInventory(
        rpb.DeclareInventoryRequest(
            declaration_envelope=sign_envelope(
                verifier.files.operator, PayloadType.INVENTORY, declaration.SerializeToString()
            )
        ),
        timeout=10,
    )


def _report(verifier: RunningVerifier, start_ns: int, end_ns: int) -> apb.ComplianceReport:
    return (
        verifier.client()
        .audit.GetComplianceReport(
            apb.GetComplianceReportRequest(
                lab_id="lab-a", period_start_ns=start_ns, period_end_ns=end_ns
            ),
            timeout=30,
        )
        .report
    )


@pytest.fixture
def honest_lab(tmp_path: Path) -> Iterator[tuple[RunningVerifier, subprocess.Popen[bytes]]]:
    files = write_verifier_files(
        tmp_path / "v",
        policy=EU_POLICY.replace('lab_id = "example-lab"', 'lab_id = "lab-a"'),
        bucket_ms=2000,  # a multiple of the agent's 2 s windows
        open_gap_grace_ms=GRACE_MS,
    )
    verifier = start_verifier_process(files, tmp_path / "verifier.log")
    agent: subprocess.Popen[bytes] | None = None
    try:
        operator_key = tmp_path / "operator.key"
        save_private_key(operator_key, fixed_private_key(100))
        config = write_state_dir(
            tmp_path / "agent", address=verifier.address, window_s="2", interval_ms=200
        )
        state = str(config.node.state_dir)
        enrolled = _agent(
            "enroll", "--state-dir", state, "--operator-key", str(operator_key), "--json"
        )
        assert enrolled.returncode == 0, enrolled.stderr
        _declare_inventory(verifier, bytes.fromhex(json.loads(enrolled.stdout)["node_id"]))
        with (tmp_path / "agent.log").open("ab") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", "--state-dir", state],
                env=_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        yield verifier, agent
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(timeout=30)
        stop_process(verifier, timeout_s=60)


def _wait_for_windows(verifier: RunningVerifier, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        nodes = verifier.client().registry.ListNodes(
            rpb.ListNodesRequest(lab_id="lab-a"), timeout=10
        )
        if nodes.nodes and nodes.nodes[0].has_head and nodes.nodes[0].head_seq + 1 >= count:
            return
        time.sleep(0.2)
    raise TimeoutError(f"the agent did not get {count} windows accepted")


def test_an_open_period_of_an_honest_lab_stays_compliant_and_provisional_for_a_minute(
    honest_lab: tuple[RunningVerifier, subprocess.Popen[bytes]],
) -> None:
    verifier, _ = honest_lab
    _wait_for_windows(verifier, 2)
    start = time.time_ns() - 2 * S  # the lab was attesting when the period began
    end = start + 86_400 * S  # open for a day
    seen: list[apb.ComplianceReport] = []
    began = time.monotonic()
    while time.monotonic() - began < 60:
        report = _report(verifier, start, end)
        seen.append(report)
        assert report.provisional
        assert report.verdict == apb.VERDICT_COMPLIANT, list(report.reasons)
        assert any(reason.startswith("PROVISIONAL: ") for reason in report.reasons)
        time.sleep(max(0.0, len(seen) - (time.monotonic() - began)))
    assert len(seen) >= 30  # one a second, fewer only if the machine is very busy
    # Past the grace, coverage was judged on real time, the window in progress left out.
    judged = [r for r in seen if r.coverage_until_ns > r.coverage_from_ns]
    assert len(judged) >= len(seen) // 2  # all but the first grace (15 s)
    for r in judged:
        horizon = r.evaluated_at_ns - GRACE_MS * 10**6
        assert r.coverage_until_ns == horizon - horizon % (2 * S)
    assert all(r.coverage.declared_gpu_ms > 0 for r in judged)
    assert all(r.coverage.ratio_ppm >= 990_000 for r in judged)


def test_an_open_period_of_a_lab_that_stops_attesting_turns_unaccounted(
    honest_lab: tuple[RunningVerifier, subprocess.Popen[bytes]],
) -> None:
    verifier, agent = honest_lab
    _wait_for_windows(verifier, 3)
    start = time.time_ns() - 4 * S
    end = start + 86_400 * S
    agent.send_signal(signal.SIGKILL)  # the lab goes dark mid-period
    agent.wait(timeout=30)
    assert _report(verifier, start, end).verdict == apb.VERDICT_COMPLIANT  # within the grace
    deadline = time.monotonic() + 60
    while True:
        report = _report(verifier, start, end)
        assert report.provisional
        if report.verdict == apb.VERDICT_UNACCOUNTED:
            break
        assert time.monotonic() < deadline, list(report.reasons)
        time.sleep(1)
    coverage = next(r for r in report.rules if r.rule_id == "coverage")
    assert coverage.outcome == apb.RULE_OUTCOME_UNACCOUNTED
    assert report.coverage.ratio_ppm < 990_000
