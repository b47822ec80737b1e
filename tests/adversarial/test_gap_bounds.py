"""Attack 5 of issue 9 against a real verifier process: a node stops attesting for three minutes
while its GPUs draw 320 W, then resumes. The counter spans the gap, so the gap's bound is its
energy (at the best FLOP per joule): 2.6e18 FLOP over three minutes, above the 8e17 a minute the
pause policy allows. Before, the report was UNACCOUNTED only, although the rule is on the upper
bound; now upper-bound rules count the gap at its bound, and the report says which gaps moved
which rule. A short honest gap of idle GPUs is counted too, and stays within every rule.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pausewatch.v1 import audit_pb2 as pb

from attest import compute
from tests.adversarial.dishonest_lab import (
    H100,
    LIMIT_PER_MINUTE_FLOP,
    Labs,
    Window,
    recent_t0,
    rule,
    signed_windows,
    verifier_with_labs,
)
from tests.builders import TestNode
from verifier.accounting.accounts import gap_counted_flop

GAP_SLICES = [(0, 20), (7, 12), (8, 12), (10, 13)]
"""Slices that hold the gap's end (minute 11). A slice ending inside the gap sees it only from the
node's last window + the open-gap grace (2 minutes here), at its time bound; one that starts
inside it sees the part after its start, unbounded by energy (the counter reading before it is
outside the slice), at its time bound."""


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Labs]:
    t0 = recent_t0(40)
    lab_ids = ["lab-a", "lab-gap", "lab-gap-honest"]
    with verifier_with_labs(tmp_path_factory.mktemp("gaps"), lab_ids, t0=t0) as labs:
        idle = Window(0, 70)
        plans = {
            "lab-a": [idle] * 20,
            # Minutes 0-7 idle, no windows for minutes 8-10 (320 W drawn), 11-19 idle.
            "lab-gap": [idle] * 8 + [Window(0, 70, gap_before_s=180, gap_power_w=320)] + [idle] * 8,
            # An honest agent restart: one minute without windows, GPUs idle.
            "lab-gap-honest": [idle] * 8
            + [Window(0, 70, gap_before_s=60, gap_power_w=70)]
            + [idle] * 10,
        }
        for seed, (lab_id, windows) in enumerate(plans.items(), start=400):
            node = labs.enroll(TestNode.from_seed(seed, lab_id=lab_id, gpus=8, t0_ns=t0))
            labs.declare(lab_id, node)
            labs.submit(signed_windows(node, windows))
        yield labs


@pytest.mark.parametrize(("start", "end"), GAP_SLICES)
def test_a_gap_counts_at_its_energy_bound_in_upper_bound_rules(
    labs: Labs, start: int, end: int
) -> None:
    report = labs.report("lab-gap", start, end)
    assert report.verdict == pb.VERDICT_VIOLATION, list(report.reasons)
    per_minute = rule(report, "per-minute")
    assert per_minute.outcome == pb.RULE_OUTCOME_VIOLATION
    assert int(per_minute.measured) > LIMIT_PER_MINUTE_FLOP
    assert int(per_minute.gap_flop) == int(per_minute.measured)  # the windows were idle
    assert "the gaps moved it" in per_minute.summary
    [gap] = report.gaps
    assert gap.counted_in_rule_ids == ["per-minute"]
    assert int(report.totals.gap_bound_flop) == int(gap.counted_flop)
    if start > 8:  # the slice starts inside the gap: its part, at peak x time
        assert not gap.gap.energy_bounded
        assert int(gap.counted_flop) == int(gap.gap.time_bound_flop)
        return
    assert gap.gap.energy_bounded  # the counter spans it
    energy_bound = int(gap.gap.energy_bound_flop)
    counted = energy_bound * compute.ENERGY_EFFICIENCY_MARGIN_PPM // compute.PPM
    assert int(gap.gap.time_bound_flop) > counted  # the energy, not the time, bounds it
    assert int(gap.counted_flop) >= counted


def test_the_gap_bound_is_what_the_counter_allows() -> None:
    """8 GPUs x 320 W x 180 s, at twice the datasheet FLOP per joule."""
    per_gpu = compute.energy_bound_flop(H100, 320 * 180 * 1_000)
    assert per_gpu * 8 * 2 < compute.time_bound_flop(H100, 8, 180_000)
    assert per_gpu * 8 * 2 > 3 * LIMIT_PER_MINUTE_FLOP  # spread over 3 minutes: over the limit


@pytest.mark.parametrize(("start", "end"), [(0, 20), (7, 11)])
def test_an_honest_idle_gap_is_counted_and_moves_nothing(labs: Labs, start: int, end: int) -> None:
    report = labs.report("lab-gap-honest", start, end)
    [gap] = report.gaps
    assert int(gap.counted_flop) > 0
    per_minute = rule(report, "per-minute")
    assert per_minute.outcome == pb.RULE_OUTCOME_PASS
    assert "moved" not in per_minute.summary
    if (start, end) == (0, 20):  # a one-minute gap in twenty: coverage 95 %
        assert report.verdict == pb.VERDICT_COMPLIANT, list(report.reasons)


@pytest.mark.parametrize(("start", "end"), GAP_SLICES)
def test_the_honest_control_stays_compliant(labs: Labs, start: int, end: int) -> None:
    report = labs.report("lab-a", start, end)
    assert report.verdict == pb.VERDICT_COMPLIANT, list(report.reasons)
    assert list(report.gaps) == []
    assert rule(report, "per-minute").gap_flop == "0"


@pytest.mark.parametrize("lab_id", ["lab-gap", "lab-gap-honest"])
def test_the_offline_auditor_counts_the_same_gaps(labs: Labs, lab_id: str) -> None:
    checked = labs.verify_offline(lab_id, 0, 20)
    assert checked.ok, checked.failures + checked.differences
    assert checked.offline_report is not None
    [gap] = checked.offline_report.gaps
    [served] = labs.report(lab_id, 0, 20).gaps
    assert int(gap.counted_flop) == int(served.counted_flop) > 0
    assert list(gap.counted_in_rule_ids) == list(served.counted_in_rule_ids)
    if lab_id == "lab-gap":
        assert list(gap.counted_in_rule_ids) == ["per-minute"]


def test_gap_counted_flop_is_the_time_bound_without_energy() -> None:
    from attest.ids import NodeId
    from verifier.accounting.accounts import Gap

    gap = Gap(NodeId(b"n" * 32), 0, 60 * 10**9, 1, 2, False, 0, 0, 123, False, 1, 2)
    assert gap_counted_flop(gap) == 123
    bounded = Gap(NodeId(b"n" * 32), 0, 60 * 10**9, 1, 2, True, 5, 100, 1_000, False, 1, 2)
    assert gap_counted_flop(bounded) == 200
    capped = Gap(NodeId(b"n" * 32), 0, 60 * 10**9, 1, 2, True, 5, 900, 1_000, False, 1, 2)
    assert gap_counted_flop(capped) == 1_000
