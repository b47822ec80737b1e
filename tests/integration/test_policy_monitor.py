"""The policy monitor: breaches logged as findings as they happen, matching what a report says,
once per rule and period, and nothing for a lab that keeps within its policy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import findings_pb2 as fpb

from attest.keys import Ed25519Signer
from tests.builders import TestNode, fixed_private_key
from tests.verifier_harness import enroll_request, enrollment_for, write_verifier_files
from verifier.config import load_config
from verifier.server.server import VerifierServer

S = 10**9
MINUTE = 60 * S

# The test node: two H100s, 50 % busy in every one-minute window. Their upper bound is of the order
# of 10^17 FLOP a window: far above a limit of 1e15 in 5 minutes, far below 1e30.
POLICY = """
format_version = 1
policy_id = "monitor-test"
version = 1
lab_id = "lab-a"

[[rules]]
id = "five-minutes"
kind = "cumulative_flop"
window = "5m"
limit_flop = "{limit}"

[[rules]]
id = "shape"
kind = "training_signature"
min_gpus = 2
min_busy_percent = 40
min_duration = "3m"
on_detect = "finding"

[[rules]]
id = "coverage"
kind = "coverage"
min_ratio = "50%"
"""


def lab_server(directory: Path, limit: str, monitor: str = "interval_s = 0") -> VerifierServer:
    files = write_verifier_files(
        directory, policy=POLICY.format(limit=limit), extra_config=f"[monitor]\n{monitor}\n"
    )
    return VerifierServer.from_config(load_config(files.config))


def run_lab(server: VerifierServer, windows: int = 10) -> tuple[TestNode, list[spb.Receipt]]:
    now = time.time_ns()
    t0 = now - now % MINUTE - 20 * MINUTE
    node = TestNode.from_seed(60, t0_ns=t0)
    request = enroll_request(enrollment_for(node, created_at_ns=t0 - S), node, _operator())
    server.registry.enroll(request.enrollment_envelope, request.authorization_envelope)
    result = server.ingestor.submit(node.chain(windows))
    assert {r.status for r in result.receipts} == {spb.RECEIPT_STATUS_ACCEPTED}
    return node, result.receipts


def _operator() -> Ed25519Signer:
    return Ed25519Signer.from_private_key(fixed_private_key(100))  # the harness's lab operator


def findings_of(server: VerifierServer, kind: int) -> list[fpb.Finding]:
    rows = server.core.store.findings("lab-a", kinds=[kind], limit=1000)
    return [fpb.Finding.FromString(row.finding) for row in rows]


@pytest.fixture
def breaching(tmp_path: Path) -> Iterator[VerifierServer]:
    server = lab_server(tmp_path / "v", limit="1e15")
    yield server
    server.stop()


def test_a_breach_is_logged_once_with_the_reports_evidence(breaching: VerifierServer) -> None:
    server = breaching
    _, receipts = run_lab(server)
    accepted = {r.log_index for r in receipts}

    logged = server.monitor.check_all()
    assert len(logged) == 2
    [exceeded] = findings_of(server, fpb.FINDING_KIND_THRESHOLD_EXCEEDED)
    [signature] = findings_of(server, fpb.FINDING_KIND_TRAINING_SIGNATURE)
    assert exceeded.severity == fpb.SEVERITY_CRITICAL
    assert signature.severity == fpb.SEVERITY_WARNING  # on_detect = "finding": not counted
    assert exceeded.summary.startswith("rule five-minutes: ")
    assert set(exceeded.evidence_log_indices) <= accepted and exceeded.evidence_log_indices
    assert set(signature.evidence_log_indices) <= accepted and signature.evidence_log_indices

    # The same figures as a report over the same stretch: the monitor is the report's evaluation.
    end = time.time_ns()
    start = end - 5 * MINUTE - server.config.monitor.late_ns
    report = server.auditor.report("lab-a", start, end)
    rule = next(r for r in report.rules if r.rule_id == "five-minutes")
    assert list(exceeded.evidence_log_indices) == list(rule.evidence_log_indices)
    assert (exceeded.period_start_ns, exceeded.period_end_ns) == (
        rule.worst_start_ns,
        rule.worst_end_ns,
    )

    # Once per rule and period: a second pass logs nothing, and neither does a restart.
    assert server.monitor.check_all() == []
    size = server.core.log.size
    directory = server.config.source
    server.stop()
    again = VerifierServer.from_config(load_config(Path(directory)))
    try:
        assert again.monitor.check_all() == []
        assert again.core.log.size == size
    finally:
        again.stop()


def test_a_lab_within_its_policy_gets_no_monitor_finding(tmp_path: Path) -> None:
    server = lab_server(tmp_path / "v", limit="1e30")
    try:
        run_lab(server, windows=2)  # too short for the training signature's 3 minutes
        before = server.core.log.size
        assert server.monitor.check_all() == []
        assert server.core.log.size == before
        assert findings_of(server, fpb.FINDING_KIND_THRESHOLD_EXCEEDED) == []
    finally:
        server.stop()


def test_a_failing_pass_is_logged_and_the_next_one_works(
    breaching: VerifierServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = breaching
    run_lab(server)
    before = server.core.log.size

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    with monkeypatch.context() as patch:
        patch.setattr(server.auditor, "report_from", broken)
        assert server.monitor.check_all() == []
    assert "lab lab-a could not be checked" in caplog.text
    assert server.core.log.size == before  # nothing half-written
    assert len(server.monitor.check_all()) == 2


@pytest.mark.slow
def test_the_background_monitor_finds_the_breach_by_itself(tmp_path: Path) -> None:
    server = lab_server(tmp_path / "v", limit="1e15", monitor="interval_s = 1")
    server.start()
    try:
        run_lab(server)
        deadline = time.monotonic() + 20
        while not findings_of(server, fpb.FINDING_KIND_THRESHOLD_EXCEEDED):
            assert time.monotonic() < deadline, "the monitor logged nothing in 20 s"
            time.sleep(0.1)
    finally:
        server.stop()
