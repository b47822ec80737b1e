"""Which rule results the policy monitor turns into findings, and how serious they are."""

from __future__ import annotations

from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import findings_pb2 as fpb

from verifier.accounting.accounts import Figure
from verifier.accounting.policy import (
    CoverageRule,
    CumulativeFlopRule,
    OnDetect,
    SustainedRateRule,
    TrainingSignatureRule,
)
from verifier.server.monitor import finding_for, rule_window_ns

S = 10**9
CUMULATIVE = CumulativeFlopRule("c", 300 * S, 10**15, Figure.UPPER_BOUND)
SUSTAINED = SustainedRateRule("r", 600 * S, 10**12, Figure.UPPER_BOUND)
SHAPE = TrainingSignatureRule("t", 8, 50, 180 * S, OnDetect.VIOLATION)
SHAPE_INFORM = TrainingSignatureRule("t", 8, 50, 180 * S, OnDetect.FINDING)
COVERAGE = CoverageRule("cov", 900_000)


def result(outcome: int, measured: str = "0", limit: str = "0") -> apb.RuleResult:
    return apb.RuleResult(
        rule_id="x",
        outcome=outcome,  # type: ignore[arg-type]
        measured=measured,
        limit=limit,
        worst_start_ns=10 * S,
        worst_end_ns=70 * S,
        evidence_log_indices=[7, 3],
        summary="the rule's own words",
    )


def test_broken_compute_rules_are_critical_threshold_findings() -> None:
    for rule in (CUMULATIVE, SUSTAINED):
        finding = finding_for(rule, result(apb.RULE_OUTCOME_VIOLATION), "lab-a")
        assert finding is not None
        assert (finding.kind, finding.severity) == (
            fpb.FINDING_KIND_THRESHOLD_EXCEEDED,
            fpb.SEVERITY_CRITICAL,
        )
        assert (finding.lab_id, finding.period_start_ns, finding.period_end_ns) == (
            "lab-a",
            10 * S,
            70 * S,
        )
        assert list(finding.evidence_log_indices) == [7, 3]
        assert finding.summary == f"rule {rule.rule_id}: the rule's own words"
        assert finding_for(rule, result(apb.RULE_OUTCOME_PASS), "lab-a") is None


def test_a_detected_training_signature_is_critical_only_when_it_counts() -> None:
    detected = result(apb.RULE_OUTCOME_VIOLATION, measured="180000", limit="180000")
    counted = finding_for(SHAPE, detected, "lab-a")
    assert counted is not None
    assert (counted.kind, counted.severity) == (
        fpb.FINDING_KIND_TRAINING_SIGNATURE,
        fpb.SEVERITY_CRITICAL,
    )
    informed = finding_for(
        SHAPE_INFORM, result(apb.RULE_OUTCOME_PASS, measured="240000", limit="180000"), "lab-a"
    )
    assert informed is not None and informed.severity == fpb.SEVERITY_WARNING
    # A run shorter than the rule's duration, or none at all, is no finding.
    assert finding_for(SHAPE, result(apb.RULE_OUTCOME_PASS, "179999", "180000"), "lab-a") is None
    assert finding_for(SHAPE, result(apb.RULE_OUTCOME_PASS, "0", "0"), "lab-a") is None


def test_coverage_and_gap_rules_are_left_to_reports() -> None:
    assert finding_for(COVERAGE, result(apb.RULE_OUTCOME_UNACCOUNTED), "lab-a") is None
    assert rule_window_ns(COVERAGE) == 0
    assert [rule_window_ns(r) for r in (CUMULATIVE, SUSTAINED, SHAPE)] == [
        300 * S,
        600 * S,
        180 * S,
    ]
