from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pausewatch.v1 import audit_pb2 as pb
from pausewatch.v1 import findings_pb2 as fpb

from attest import compute
from attest.errors import ConfigError
from attest.ids import NodeId
from tests.builders import T0_NS
from verifier.accounting.accounts import (
    Bucket,
    Figure,
    GpuEdge,
    GpuWindowFigures,
    WindowEdge,
    accumulate,
    node_gaps_from_windows,
)
from verifier.accounting.evaluation import (
    MAX_EVIDENCE,
    InMemoryEvidenceIndex,
    InventoryVersion,
    NodeTimeline,
    declared_gpu_ns,
    evaluate,
    format_time_ns,
    inventory_in_force,
    render_text,
)
from verifier.accounting.policy import Policy, load_policy_bytes

S = 1_000_000_000
BUCKET = 60 * S
P0 = T0_NS  # a whole minute
NODE_A = NodeId(b"\xaa" * 32)
NODE_B = NodeId(b"\xbb" * 32)
H100 = "NVIDIA H100 80GB HBM3"
GPUS = frozenset({"GPU-0", "GPU-1"})


def policy(rules: str) -> Policy:
    header = 'format_version = 1\npolicy_id = "p"\nversion = 7\nlab_id = "lab-a"\n'
    return load_policy_bytes((header + rules).encode(), "p.toml")


def cumulative(window: str, limit: str, figure: str = "upper_bound") -> str:
    return (
        f'[[rules]]\nid = "cumulative"\nkind = "cumulative_flop"\nwindow = "{window}"\n'
        f'limit_flop = "{limit}"\nfigure = "{figure}"\n'
    )


def rate(interval: str, limit: str) -> str:
    return (
        f'[[rules]]\nid = "rate"\nkind = "sustained_rate"\ninterval = "{interval}"\n'
        f'limit_flop_per_s = "{limit}"\n'
    )


def coverage(ratio: str) -> str:
    return f'[[rules]]\nid = "coverage"\nkind = "coverage"\nmin_ratio = "{ratio}"\n'


def max_gap(gap: str) -> str:
    return f'[[rules]]\nid = "gap"\nkind = "max_gap"\nmax_gap = "{gap}"\n'


def signature(gpus: int, percent: int, duration: str, on_detect: str = "violation") -> str:
    return (
        f'[[rules]]\nid = "signature"\nkind = "training_signature"\nmin_gpus = {gpus}\n'
        f'min_busy_percent = {percent}\nmin_duration = "{duration}"\non_detect = "{on_detect}"\n'
    )


def fig(
    log_index: int,
    bucket: int,
    *,
    upper: int = 0,
    central: int = 0,
    energy: int = 0,
    busy_ms: int = 0,
    attested_ms: int = 60_000,
    declared: bool = True,
    assumed: bool = False,
    unknown_model: bool = False,
    uuid: str = "GPU-0",
    offset_ns: int = 0,
    node: NodeId = NODE_A,
) -> GpuWindowFigures:
    start = P0 + bucket * BUCKET + offset_ns
    return GpuWindowFigures(
        log_index=log_index,
        node_id=node,
        gpu_uuid=uuid,
        model=H100,
        window_start_ns=start,
        window_end_ns=start + 60 * S,
        upper_bound_flop=upper,
        central_estimate_flop=central,
        energy_flop=energy,
        energy_mj=7,
        busy_ms=busy_ms,
        attested_ms=attested_ms,
        declared=declared,
        assumed=assumed,
        unknown_model=unknown_model,
    )


def timeline(node_id: NodeId = NODE_A, **change: object) -> NodeTimeline:
    values: dict[str, object] = {
        "node_id": node_id,
        "node_name": f"node-{node_id[:1].hex()}",
        "enrolled_at_ns": P0 - 3_600 * S,
        "revoked_at_ns": None,
        "flagged": False,
        "revoked": False,
        "attestations": 10,
        "first_seq": 4,
        "last_seq": 13,
        "upper_bound_flop": 10**20,
        "gaps": (),
    }
    values |= change
    return NodeTimeline(**values)  # type: ignore[arg-type]


def logged(log_index: int, kind: int, **change: object) -> pb.LoggedFinding:
    finding = fpb.Finding(
        format_version=1, kind=kind, lab_id="lab-a", summary=f"finding {log_index}", **change
    )  # type: ignore[arg-type]
    return pb.LoggedFinding(log_index=log_index, finding=finding)


def report(
    the_policy: Policy,
    figures: Sequence[GpuWindowFigures] = (),
    *,
    buckets: int = 10,
    as_of_ns: int | None = None,
    inventory: Sequence[InventoryVersion] | None = None,
    nodes: Sequence[NodeTimeline] = (),
    findings: Sequence[pb.LoggedFinding] = (),
    period_start_ns: int = P0,
) -> pb.ComplianceReport:
    accounts: dict[int, Bucket] = {}
    accumulate(accounts, figures, BUCKET)
    end = P0 + buckets * BUCKET
    return evaluate(
        the_policy,
        lab_id="lab-a",
        period_start_ns=period_start_ns,
        period_end_ns=end,
        as_of_ns=end if as_of_ns is None else as_of_ns,
        bucket_ns=BUCKET,
        buckets=accounts,
        inventory=[InventoryVersion(1, P0 - BUCKET, GPUS)] if inventory is None else inventory,
        nodes=nodes,
        findings=findings,
        evidence=InMemoryEvidenceIndex(figures),
        tree_size=4_242,
        table_version=compute.TABLE_VERSION,
    )


def only_rule(result: pb.ComplianceReport) -> pb.RuleResult:
    assert len(result.rules) == 1
    return result.rules[0]


# --- cumulative_flop -----------------------------------------------------------------------------

LIMIT = 10**25  # 10^25 + 1 and 10^25 are the same float: the comparison must be in integers


def test_cumulative_at_the_limit_passes() -> None:
    figures = [
        fig(1, 0, upper=LIMIT // 2),
        fig(2, 1, upper=LIMIT // 4),
        fig(3, 2, upper=LIMIT // 4),  # buckets 0-2: exactly the limit
        fig(4, 3, upper=LIMIT // 4 - 1),  # buckets 1-3: one FLOP less
    ]
    result = only_rule(report(policy(cumulative("3m", "1e25")), figures))
    assert result.outcome == pb.RULE_OUTCOME_PASS
    assert result.measured == str(LIMIT)
    assert result.limit == str(LIMIT)
    assert (result.unit, result.method) == ("flop", "upper_bound")
    assert (result.worst_start_ns, result.worst_end_ns) == (P0, P0 + 3 * BUCKET)
    assert list(result.evidence_log_indices) == [1, 2, 3]
    assert result.kind == pb.RULE_KIND_CUMULATIVE_FLOP


def test_cumulative_one_flop_over_the_limit_is_a_violation() -> None:
    figures = [
        fig(1, 0, upper=LIMIT // 2),
        fig(2, 1, upper=LIMIT // 4),
        fig(3, 2, upper=LIMIT // 4),
        fig(4, 3, upper=LIMIT // 2 + 1),  # buckets 1-3: 10^25 + 1
    ]
    result = report(policy(cumulative("3m", "1e25")), figures)
    rule = only_rule(result)
    assert rule.outcome == pb.RULE_OUTCOME_VIOLATION
    assert rule.measured == str(LIMIT + 1)
    assert (rule.worst_start_ns, rule.worst_end_ns) == (P0 + BUCKET, P0 + 4 * BUCKET)
    assert list(rule.evidence_log_indices) == [4, 2, 3]  # largest first, then lowest index
    assert result.verdict == pb.VERDICT_VIOLATION


def test_cumulative_uses_the_rules_figure() -> None:
    figures = [fig(1, 0, upper=10**30, central=5, energy=10**30)]
    assert only_rule(
        report(policy(cumulative("1m", "5", "central_estimate")), figures)
    ).outcome == (pb.RULE_OUTCOME_PASS)
    assert only_rule(report(policy(cumulative("1m", "5", "energy")), figures)).outcome == (
        pb.RULE_OUTCOME_VIOLATION
    )


def test_a_period_shorter_than_the_window_is_one_run() -> None:
    figures = [fig(1, 0, upper=3), fig(2, 4, upper=4)]
    rule = only_rule(report(policy(cumulative("30d", "6")), figures, buckets=5))
    assert rule.outcome == pb.RULE_OUTCOME_VIOLATION
    assert rule.measured == "7"
    assert (rule.worst_start_ns, rule.worst_end_ns) == (P0, P0 + 5 * BUCKET)
    assert "one run" in rule.summary


@settings(max_examples=200, deadline=None)
@given(
    starts=st.lists(st.tuples(st.integers(-3 * 60, 14 * 60), st.integers(0, 10**22)), max_size=25),
    period_buckets=st.integers(1, 12),
    as_of_s=st.integers(0, 12 * 60),
    window_buckets=st.integers(1, 14),
)
def test_cumulative_measured_is_the_brute_force_maximum_over_all_windows(
    starts: list[tuple[int, int]], period_buckets: int, as_of_s: int, window_buckets: int
) -> None:
    figures = [
        fig(i, 0, upper=flop, offset_ns=start_s * S) for i, (start_s, flop) in enumerate(starts)
    ]
    end = P0 + period_buckets * BUCKET
    as_of = min(end, P0 + as_of_s * S)
    rule = only_rule(
        report(
            policy(cumulative(f"{window_buckets}m", "1e30")),
            figures,
            buckets=period_buckets,
            as_of_ns=as_of,
        )
    )
    # Brute force, from the windows' own start times: every W-long stretch that starts on a
    # bucket edge and lies within the buckets the report covers ([P0, as_of) rounded up to a
    # bucket); a stretch shorter than W when the report covers less.
    covered_end = P0 + -(-(as_of - P0) // BUCKET) * BUCKET
    width = window_buckets * BUCKET
    candidates = [(t, t + width) for t in range(P0, covered_end - width + 1, BUCKET)] or [
        (P0, covered_end)
    ]
    best = max(
        sum(f.upper_bound_flop for f in figures if lo <= f.window_start_ns < hi)
        for lo, hi in candidates
    )
    assert int(rule.measured) == best
    lo, hi = rule.worst_start_ns, rule.worst_end_ns
    assert sum(f.upper_bound_flop for f in figures if lo <= f.window_start_ns < hi) == best
    in_run = {f.log_index for f in figures if lo <= f.window_start_ns < hi and f.upper_bound_flop}
    assert set(rule.evidence_log_indices) <= in_run


# --- sustained_rate ------------------------------------------------------------------------------


def test_sustained_rate_exactly_at_the_limit_passes() -> None:
    # 10^18 FLOP/s over 120 s: at most 1.2 x 10^20 FLOP in any two buckets.
    figures = [fig(1, 3, upper=6 * 10**19), fig(2, 4, upper=6 * 10**19)]
    rule = only_rule(report(policy(rate("2m", "1e18")), figures))
    assert rule.outcome == pb.RULE_OUTCOME_PASS
    assert (rule.measured, rule.limit, rule.unit) == (str(10**18), str(10**18), "flop_per_s")
    assert (rule.worst_start_ns, rule.worst_end_ns) == (P0 + 3 * BUCKET, P0 + 5 * BUCKET)


def test_sustained_rate_one_flop_over_is_a_violation_though_the_rate_rounds_to_the_limit() -> None:
    figures = [fig(1, 3, upper=6 * 10**19), fig(2, 4, upper=6 * 10**19 + 1)]
    rule = only_rule(report(policy(rate("2m", "1e18")), figures))
    assert rule.outcome == pb.RULE_OUTCOME_VIOLATION
    assert rule.measured == str(10**18)  # floor(sum / 120 s): the comparison is sum > R x I
    assert "120000000000000000001" in rule.summary
    assert list(rule.evidence_log_indices) == [2, 1]


# --- coverage ------------------------------------------------------------------------------------

TWO_VERSIONS = [
    InventoryVersion(1, P0 - BUCKET, frozenset({"GPU-0", "GPU-1"})),
    InventoryVersion(2, P0 + 5 * BUCKET, frozenset({"GPU-0", "GPU-1", "GPU-2", "GPU-3"})),
]


def coverage_figures(total_ms: int) -> list[GpuWindowFigures]:
    # Spread over the ten buckets, declared; the remainder in the last.
    per = total_ms // 10
    out = [fig(i, i, attested_ms=per) for i in range(9)]
    return [*out, fig(9, 9, attested_ms=total_ms - 9 * per)]


def test_declared_time_follows_the_version_in_force() -> None:
    # 2 GPUs x 300 s, then 4 GPUs x 300 s
    assert declared_gpu_ns(TWO_VERSIONS, P0, P0 + 10 * BUCKET) == (2 * 300 + 4 * 300) * S
    assert inventory_in_force(TWO_VERSIONS, P0 + 5 * BUCKET - 1) == TWO_VERSIONS[0]
    assert inventory_in_force(TWO_VERSIONS, P0 + 5 * BUCKET) == TWO_VERSIONS[1]
    assert inventory_in_force(TWO_VERSIONS, P0 - BUCKET - 1) is None
    # A higher version wins from its effective time even if declared with an earlier one.
    late = [InventoryVersion(3, P0, frozenset({"GPU-9"})), *TWO_VERSIONS]
    assert inventory_in_force(late, P0 + 9 * BUCKET) == late[0]


def test_coverage_at_the_minimum_passes() -> None:
    result = report(policy(coverage("50%")), coverage_figures(900_000), inventory=TWO_VERSIONS)
    assert (result.coverage.attested_gpu_ms, result.coverage.declared_gpu_ms) == (
        900_000,
        1_800_000,
    )
    assert result.coverage.ratio_ppm == 500_000
    rule = only_rule(result)
    assert rule.outcome == pb.RULE_OUTCOME_PASS
    assert (rule.measured, rule.limit, rule.unit) == ("500000", "500000", "ppm")
    assert result.verdict == pb.VERDICT_COMPLIANT


def test_coverage_one_ms_short_is_unaccounted() -> None:
    result = report(policy(coverage("50%")), coverage_figures(899_999), inventory=TWO_VERSIONS)
    assert result.coverage.ratio_ppm == 499_999
    assert only_rule(result).outcome == pb.RULE_OUTCOME_UNACCOUNTED
    assert result.verdict == pb.VERDICT_UNACCOUNTED


def test_undeclared_gpus_do_not_cover_declared_time() -> None:
    figures = [fig(i, i, uuid="GPU-X", declared=False) for i in range(10)]
    result = report(policy(coverage("1%")), figures)
    assert result.coverage.attested_gpu_ms == 0
    assert only_rule(result).outcome == pb.RULE_OUTCOME_UNACCOUNTED


def test_coverage_without_a_declaration_is_unaccounted() -> None:
    result = report(policy(coverage("0%")), coverage_figures(600_000), inventory=[])
    assert result.coverage.declared_gpu_ms == 0
    assert result.coverage.ratio_ppm == 0
    rule = only_rule(result)
    assert rule.outcome == pb.RULE_OUTCOME_UNACCOUNTED
    assert "no declared GPU-time" in rule.summary


def test_coverage_is_capped_and_counts_only_up_to_as_of() -> None:
    figures = [fig(i, i, attested_ms=200_000) for i in range(10)]
    result = report(policy(coverage("100%")), figures, as_of_ns=P0 + 3 * BUCKET)
    # 2 GPUs x 180 s declared; buckets 0-2 attested 600 s
    assert (result.coverage.attested_gpu_ms, result.coverage.declared_gpu_ms) == (
        600_000,
        360_000,
    )
    assert result.coverage.ratio_ppm == 1_000_000
    assert only_rule(result).outcome == pb.RULE_OUTCOME_PASS


# --- max_gap -------------------------------------------------------------------------------------


def windows_then_silence(node_id: NodeId, until_s: int, grace_s: int = 0) -> NodeTimeline:
    """Windows every minute for the first five minutes, then nothing: an open gap."""
    edges = [
        WindowEdge(
            seq=i,
            window_start_ns=P0 + i * BUCKET,
            window_end_ns=P0 + (i + 1) * BUCKET,
            boot_id="b",
            log_index=10 + i,
            gpus=(GpuEdge("GPU-0", H100, i, i, True),),
        )
        for i in range(5)
    ]
    gaps = node_gaps_from_windows(
        node_id,
        P0,
        P0 + until_s * S,
        edges,
        tolerance_ns=0,
        grace_ns=grace_s * S,
        enrolled_gpu_models=(),
    )
    return timeline(node_id, gaps=tuple(gaps))


def test_max_gap_counts_an_open_gap() -> None:
    node = windows_then_silence(NODE_A, 600)
    within = report(policy(max_gap("5m")), nodes=[node])
    rule = only_rule(within)
    assert rule.outcome == pb.RULE_OUTCOME_PASS
    assert (rule.measured, rule.limit, rule.unit) == ("300000", "300000", "ms")
    over = report(policy(max_gap("4m")), nodes=[node])
    rule = only_rule(over)
    assert rule.outcome == pb.RULE_OUTCOME_UNACCOUNTED
    assert (rule.worst_start_ns, rule.worst_end_ns) == (P0 + 300 * S, P0 + 600 * S)
    assert list(rule.evidence_log_indices) == [14]
    assert "(open)" in rule.summary
    assert over.verdict == pb.VERDICT_UNACCOUNTED
    assert len(over.gaps) == 1
    assert over.gaps[0].open
    assert over.gaps[0].node_name == "node-aa"


def test_max_gap_one_ns_over_is_unaccounted() -> None:
    node = windows_then_silence(NODE_A, 600)
    gap = node.gaps[0]
    longer = timeline(gaps=(type(gap)(**{**_fields(gap), "end_ns": gap.end_ns + 1}),))
    rule = only_rule(report(policy(max_gap("5m")), nodes=[longer], as_of_ns=P0 + 10 * BUCKET))
    assert rule.outcome == pb.RULE_OUTCOME_UNACCOUNTED
    assert rule.measured == "300001"  # rounded up, so it reads as over


def _fields(gap: object) -> dict[str, object]:
    return {name: getattr(gap, name) for name in gap.__slots__}  # type: ignore[attr-defined]


def test_no_gaps_passes() -> None:
    rule = only_rule(report(policy(max_gap("0s")), nodes=[timeline()]))
    assert rule.outcome == pb.RULE_OUTCOME_PASS
    assert rule.measured == "0"


def test_without_coverage_and_max_gap_rules_missing_evidence_is_never_unaccounted() -> None:
    """The operator's advice in the docs: a policy of compute rules alone lets a node stop
    attesting for half the period without the report saying more than COMPLIANT. The same
    evidence under a coverage or a max-gap rule is UNACCOUNTED."""
    silent = windows_then_silence(NODE_A, 600)  # five minutes of windows, five without
    # Only the first five minutes of one declared GPU were attested: 25 % coverage.
    attested = [fig(1 + i, i, upper=10**15, attested_ms=60_000) for i in range(5)]
    compute_only = report(policy(cumulative("3m", "1e25")), attested, nodes=[silent])
    assert compute_only.verdict == pb.VERDICT_COMPLIANT, list(compute_only.reasons)
    assert len(compute_only.gaps) == 1 and compute_only.gaps[0].open  # it is reported, though
    for rule in (coverage("90%"), max_gap("1m")):
        guarded = report(policy(cumulative("3m", "1e25") + rule), attested, nodes=[silent])
        assert guarded.verdict == pb.VERDICT_UNACCOUNTED, rule


def late(log_index: int, bucket: int, seq: int, attested_gpu_ms: int = 120_000) -> pb.LoggedFinding:
    """The LATE_EVIDENCE finding ingest logs for NODE_A's window in ``bucket``."""
    start = P0 + bucket * BUCKET
    return logged(
        log_index,
        fpb.FINDING_KIND_LATE_EVIDENCE,
        node_id=bytes(NODE_A),
        period_start_ns=start,
        period_end_ns=start + BUCKET,
        evidence_log_indices=[log_index - 1],
        gap=fpb.GapDetail(
            gap_start_ns=start,
            gap_end_ns=start + BUCKET,
            seq_before=seq,
            seq_after=seq,
            energy_bounded=True,
            energy_mj=1_000,
            energy_bound_flop="7",
            time_bound_flop="11",
            attested_gpu_ms=attested_gpu_ms,
        ),
        measured="600000",
        limit="120000",
        unit="ms",
    )


def test_late_evidence_counts_like_a_gap_unless_the_policy_says_attested() -> None:
    """Two late windows (buckets 3 and 4) after a 30 s gap: by default their GPU-time is not
    covered and they join the gap into one 150 s stretch, marked late; with late_evidence =
    "attested" they count as covered and only the 30 s gap remains; the findings name them
    either way."""
    figures = [fig(10 * b + g, b, uuid=f"GPU-{g}") for b in range(10) for g in range(2)]
    gap = windows_then_silence(NODE_A, 600).gaps[0]
    before = type(gap)(
        **{
            **_fields(gap),
            "start_ns": P0 + 150 * S,
            "end_ns": P0 + 180 * S,
            "open": False,
            "seq_after": 3,
            "log_index_after": 30,
        }
    )
    node = timeline(gaps=(before,))
    findings = [late(31, 3, 3), late(41, 4, 4)]
    rules = coverage("90%") + max_gap("2m")
    as_gap = report(policy(rules), figures, nodes=[node], findings=findings)
    assert (as_gap.coverage.attested_gpu_ms, as_gap.coverage.declared_gpu_ms) == (
        960_000,
        1_200_000,
    )
    assert [r.outcome for r in as_gap.rules] == [pb.RULE_OUTCOME_UNACCOUNTED] * 2
    assert "240000 GPU-ms of late evidence not counted" in as_gap.rules[0].summary
    assert list(as_gap.rules[0].evidence_log_indices) == [30, 40]
    assert (as_gap.rules[1].worst_start_ns, as_gap.rules[1].worst_end_ns) == (
        P0 + 150 * S,
        P0 + 300 * S,
    )
    assert "late evidence counted as a gap" in as_gap.rules[1].summary
    # In the report the gap and the late stretch stay apart (nothing counts a late window's
    # energy or time as a gap's); the max-gap rule above joined them.
    plain, stretch = as_gap.gaps
    assert not plain.late and (plain.gap.gap_start_ns, plain.gap.gap_end_ns) == (
        P0 + 150 * S,
        P0 + 180 * S,
    )
    assert stretch.late and not stretch.open
    assert (stretch.gap.gap_start_ns, stretch.gap.gap_end_ns) == (P0 + 180 * S, P0 + 300 * S)
    assert (stretch.gap.seq_before, stretch.gap.seq_after) == (3, 4)
    assert stretch.gap.energy_bounded and stretch.gap.energy_mj == 2_000
    assert stretch.gap.time_bound_flop == "22"
    assert [p.attested_gpu_ms for p in as_gap.series[2:6]] == [120_000, 0, 0, 120_000]
    assert as_gap.verdict == pb.VERDICT_UNACCOUNTED
    assert "closed, late evidence" in render_text(as_gap)

    attested = policy('[defaults]\nlate_evidence = "attested"\n' + rules)
    as_attested = report(attested, figures, nodes=[node], findings=findings)
    assert as_attested.coverage.attested_gpu_ms == 1_200_000
    assert [r.outcome for r in as_attested.rules] == [pb.RULE_OUTCOME_PASS] * 2
    assert [g.late for g in as_attested.gaps] == [False]
    assert as_attested.verdict == pb.VERDICT_COMPLIANT
    assert [f.log_index for f in as_attested.findings] == [31, 41]

    # A slice starting inside the late window of bucket 3: only its part, with no energy bound.
    sliced = report(
        policy(rules), figures, nodes=[node], findings=findings, period_start_ns=P0 + 200 * S
    )
    late_gaps = [g for g in sliced.gaps if g.late]
    assert [(g.gap.gap_start_ns, g.gap.gap_end_ns) for g in late_gaps] == [
        (P0 + 200 * S, P0 + 300 * S)
    ]
    assert not late_gaps[0].gap.energy_bounded


def test_an_unknown_late_evidence_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"defaults\.late_evidence"):
        policy('[defaults]\nlate_evidence = "ignore"\n' + coverage("90%"))


# --- training_signature --------------------------------------------------------------------------


def busy_buckets(buckets: Sequence[int], gpus: int, busy_ms: int) -> list[GpuWindowFigures]:
    return [
        fig(100 * b + g, b, upper=10**18 * (g + 1), busy_ms=busy_ms, uuid=f"GPU-{g}")
        for b in buckets
        for g in range(gpus)
    ]


def test_training_signature_detected_is_a_violation_by_default() -> None:
    figures = busy_buckets([2, 3, 4], gpus=2, busy_ms=30_000) + busy_buckets([5], 1, 60_000)
    result = report(policy(signature(2, 50, "3m")), figures)
    rule = only_rule(result)
    assert rule.outcome == pb.RULE_OUTCOME_VIOLATION
    assert (rule.measured, rule.limit, rule.unit) == ("180000", "180000", "ms")
    assert (rule.worst_start_ns, rule.worst_end_ns) == (P0 + 2 * BUCKET, P0 + 5 * BUCKET)
    assert list(rule.evidence_log_indices) == [201, 301, 401, 200, 300, 400]
    assert "detected" in rule.summary
    assert result.verdict == pb.VERDICT_VIOLATION


def test_training_signature_as_a_finding_does_not_count() -> None:
    figures = busy_buckets([2, 3, 4], gpus=2, busy_ms=30_000)
    result = report(policy(signature(2, 50, "3m", on_detect="finding")), figures)
    rule = only_rule(result)
    assert rule.outcome == pb.RULE_OUTCOME_DETECTED  # seen: never shown as a PASS
    assert "detected" in rule.summary
    assert "not counted" in rule.summary
    assert len(rule.evidence_log_indices) == 6
    assert result.verdict == pb.VERDICT_COMPLIANT
    assert "training signature(s) were detected" in result.reasons[0]
    assert any(
        r.startswith("DETECTED (reported, not counted): rule signature") for r in result.reasons
    )
    text = render_text(result)
    assert "DETECTED" in text and "PASS" not in text.split("VERDICT")[1].split("coverage")[0]
    # The control: one bucket short of the duration is not detected, and passes.
    short = only_rule(
        report(
            policy(signature(2, 50, "3m", on_detect="finding")),
            busy_buckets([2, 3], gpus=2, busy_ms=30_000),
        )
    )
    assert short.outcome == pb.RULE_OUTCOME_PASS


@pytest.mark.parametrize(
    ("buckets", "gpus", "busy_ms"),
    [
        ([2, 3], 2, 30_000),  # one bucket too short
        ([2, 3, 4], 1, 30_000),  # one GPU too few
        ([2, 3, 4], 2, 29_999),  # just under 50 % busy
        ([2, 3, 5], 2, 30_000),  # not consecutive
    ],
)
def test_training_signature_not_detected(buckets: list[int], gpus: int, busy_ms: int) -> None:
    rule = only_rule(report(policy(signature(2, 50, "3m")), busy_buckets(buckets, gpus, busy_ms)))
    assert rule.outcome == pb.RULE_OUTCOME_PASS
    assert "not detected" in rule.summary


def busy_buckets_attested(
    buckets: Sequence[int], gpus: int, attested_ms: int
) -> list[GpuWindowFigures]:
    """GPUs 95 % busy whose windows attest ``attested_ms`` of the 60 s bucket (lost samples)."""
    return [
        fig(100 * b + g, b, busy_ms=57_000, attested_ms=attested_ms, uuid=f"GPU-{g}")
        for b in buckets
        for g in range(gpus)
    ]


def test_training_signature_counts_gpus_despite_a_few_lost_samples() -> None:
    # 8 GPUs at 95 % busy whose windows attest 97.8 % of each bucket (nvidia-smi's late polls):
    # 8 GPUs' worth of GPU-time is just missed, yet 8 GPUs are busy: within the 10 % tolerance.
    figures = busy_buckets_attested([2, 3, 4], gpus=8, attested_ms=58_680)
    rule = only_rule(report(policy(signature(8, 90, "3m")), figures))
    assert rule.outcome == pb.RULE_OUTCOME_VIOLATION
    assert "at least 8 GPUs counted" in rule.summary
    assert "tolerance 10%" in rule.method


@pytest.mark.parametrize(
    ("gpus", "attested_ms", "tolerance", "detected"),
    [
        (8, 54_000, 10, True),  # exactly 90 % of the bucket still counts
        (8, 53_999, 10, False),  # less than 90 % of the bucket: not a whole GPU
        (8, 58_680, 0, False),  # no tolerance: exact GPU-time again
        (7, 60_000, 10, False),  # 7 GPUs flat out are not 8, whatever the tolerance
        (9, 50_000, 10, True),  # 9 GPUs at 83 % coverage: 8.3 GPUs counted
    ],
)
def test_training_signature_tolerance_is_stated_and_bounded(
    gpus: int, attested_ms: int, tolerance: int, detected: bool
) -> None:
    text = signature(8, 90, "3m") + f"tolerance_percent = {tolerance}\n"
    figures = busy_buckets_attested([2, 3, 4], gpus=gpus, attested_ms=attested_ms)
    rule = only_rule(report(policy(text), figures))
    assert (rule.outcome == pb.RULE_OUTCOME_VIOLATION) is detected
    assert f"tolerance {tolerance}%" in rule.method


# --- verdict -------------------------------------------------------------------------------------

VERDICT_POLICY = cumulative("10m", "1000") + coverage("99%")


def verdict_case(*, violation: bool, invalid: bool, unaccounted: bool) -> pb.ComplianceReport:
    flop = 1_001 if violation else 1_000
    attested = 1_000_000 if unaccounted else 1_200_000  # of 2 GPUs x 600 s declared
    figures = [fig(1, 0, upper=flop, attested_ms=attested)]
    findings = [logged(50, fpb.FINDING_KIND_GAP)]
    if invalid:
        findings += [
            logged(60, fpb.FINDING_KIND_EQUIVOCATION),
            logged(55, fpb.FINDING_KIND_BAD_SIGNATURE),
        ]
    return report(policy(VERDICT_POLICY), figures, findings=findings)


def reason_kinds(result: pb.ComplianceReport) -> list[str]:
    return [reason.split(":")[0] for reason in result.reasons]


def test_violation_outranks_invalid_and_unaccounted_and_all_reasons_are_listed() -> None:
    result = verdict_case(violation=True, invalid=True, unaccounted=True)
    assert result.verdict == pb.VERDICT_VIOLATION
    assert reason_kinds(result) == ["VIOLATION", "INVALID", "UNACCOUNTED"]
    assert "log index 60" in result.reasons[1]
    assert "EQUIVOCATION" in result.reasons[1]


def test_invalid_outranks_unaccounted() -> None:
    result = verdict_case(violation=False, invalid=True, unaccounted=True)
    assert result.verdict == pb.VERDICT_INVALID
    assert reason_kinds(result) == ["INVALID", "UNACCOUNTED"]


def test_a_bad_signature_alone_does_not_invalidate_the_record() -> None:
    """Anyone can send an envelope naming a node's key id with a wrong signature: reported as a
    finding, but never the verdict (else any outsider could make any lab's report INVALID)."""
    figures = [fig(1, 0, upper=1_000, attested_ms=1_200_000)]
    findings = [logged(55, fpb.FINDING_KIND_BAD_SIGNATURE)]
    result = report(policy(VERDICT_POLICY), figures, findings=findings)
    assert result.verdict == pb.VERDICT_COMPLIANT
    assert [f.log_index for f in result.findings] == [55]


def test_unaccounted_outranks_compliant() -> None:
    result = verdict_case(violation=False, invalid=False, unaccounted=True)
    assert result.verdict == pb.VERDICT_UNACCOUNTED
    assert reason_kinds(result) == ["UNACCOUNTED"]


def test_compliant_when_nothing_is_wrong() -> None:
    result = verdict_case(violation=False, invalid=False, unaccounted=False)
    assert result.verdict == pb.VERDICT_COMPLIANT
    assert reason_kinds(result) == ["COMPLIANT"]


def test_violation_alone() -> None:
    result = verdict_case(violation=True, invalid=False, unaccounted=False)
    assert result.verdict == pb.VERDICT_VIOLATION
    assert reason_kinds(result) == ["VIOLATION"]


# --- the whole report ----------------------------------------------------------------------------

FULL_POLICY = (
    cumulative("5m", "1e25")
    + rate("2m", "1e20")
    + coverage("99%")
    + max_gap("1m")
    + signature(2, 50, "2m")
)


def full_inputs() -> dict[str, object]:
    figures = [
        *busy_buckets([0, 1, 2], gpus=2, busy_ms=45_000),
        fig(900, 6, upper=7, assumed=True, unknown_model=True, node=NODE_B),
        fig(901, 7, upper=9, assumed=True, node=NODE_B, uuid="GPU-1"),
    ]
    nodes = [
        windows_then_silence(NODE_B, 600, grace_s=30),
        windows_then_silence(NODE_A, 600),
        timeline(NodeId(b"\xcc" * 32), enrolled_at_ns=P0 + 10 * BUCKET),  # after as_of
        timeline(NodeId(b"\xdd" * 32), revoked_at_ns=P0 - 1),  # revoked before the period
    ]
    gap_finding = fpb.GapDetail(seq_before=4, seq_after=0)
    findings = [
        logged(77, fpb.FINDING_KIND_UNDECLARED_GPU, node_id=bytes(NODE_B)),
        logged(12, fpb.FINDING_KIND_GAP, node_id=bytes(NODE_A), gap=gap_finding),
    ]
    return {"figures": figures, "nodes": nodes, "findings": findings}


def full_report(reverse: bool = False) -> pb.ComplianceReport:
    inputs = full_inputs()
    figures = list(inputs["figures"])  # type: ignore[call-overload]
    nodes = list(inputs["nodes"])  # type: ignore[call-overload]
    findings = list(inputs["findings"])  # type: ignore[call-overload]
    if reverse:
        figures.reverse()
        nodes.reverse()
        findings.reverse()
    return report(policy(FULL_POLICY), figures, nodes=nodes, findings=findings)


def test_evaluation_is_deterministic_whatever_the_input_order() -> None:
    first = full_report().SerializeToString(deterministic=True)
    assert full_report().SerializeToString(deterministic=True) == first
    assert full_report(reverse=True).SerializeToString(deterministic=True) == first


def test_report_header_nodes_gaps_and_findings() -> None:
    result = full_report()
    the_policy = policy(FULL_POLICY)
    assert (result.lab_id, result.policy_id, result.policy_version) == ("lab-a", "p", 7)
    assert result.policy_digest == the_policy.digest
    assert (result.tree_size, result.table_version, result.bucket_ns) == (4_242, 1, BUCKET)
    assert (result.period_start_ns, result.period_end_ns, result.as_of_ns) == (
        P0,
        P0 + 10 * BUCKET,
        P0 + 10 * BUCKET,
    )
    # Nodes enrolled after as_of or revoked before the period are left out; by node id.
    assert [bytes(n.node_id) for n in result.nodes] == [bytes(NODE_A), bytes(NODE_B)]
    assert result.nodes[0].upper_bound_flop == str(10**20)
    assert (result.nodes[0].first_seq, result.nodes[0].last_seq) == (4, 13)
    # Gaps by node then time; the open gap of node B starts after its grace.
    assert [(bytes(g.node_id), g.gap.gap_start_ns) for g in result.gaps] == [
        (bytes(NODE_A), P0 + 300 * S),
        (bytes(NODE_B), P0 + 330 * S),
    ]
    assert not result.gaps[0].has_finding  # an open gap has no GAP finding
    # Findings by log index.
    assert [f.log_index for f in result.findings] == [12, 77]


def test_gap_reports_point_to_their_logged_finding() -> None:
    edges = [
        WindowEdge(0, P0, P0 + BUCKET, "b", 10, ()),
        WindowEdge(3, P0 + 4 * BUCKET, P0 + 10 * BUCKET, "b", 11, ()),
    ]
    gaps = node_gaps_from_windows(
        NODE_A, P0, P0 + 10 * BUCKET, edges, tolerance_ns=0, grace_ns=0, enrolled_gpu_models=()
    )
    findings = [
        logged(
            31,
            fpb.FINDING_KIND_GAP,
            node_id=bytes(NODE_A),
            gap=fpb.GapDetail(seq_before=0, seq_after=3),
        ),
        logged(
            30,
            fpb.FINDING_KIND_GAP,
            node_id=bytes(NODE_B),
            gap=fpb.GapDetail(seq_before=0, seq_after=3),
        ),
    ]
    result = report(policy(max_gap("1h")), nodes=[timeline(gaps=tuple(gaps))], findings=findings)
    assert len(result.gaps) == 1
    assert result.gaps[0].has_finding
    assert result.gaps[0].finding_log_index == 31


def test_series_has_one_point_per_bucket_up_to_as_of() -> None:
    figures = [
        fig(1, 1, upper=5, central=3, energy=4, busy_ms=20_000),
        fig(2, 1, upper=5, attested_ms=60_000, uuid="GPU-1"),
        fig(3, 2, upper=1, attested_ms=200_000),  # more than declared: unattested floors at 0
    ]
    result = report(policy(cumulative("1m", "100")), figures, as_of_ns=P0 + 3 * BUCKET + 1)
    assert [p.bucket_start_ns for p in result.series] == [P0 + i * BUCKET for i in range(4)]
    zero, one, two, last = result.series
    assert (zero.upper_bound_flop, zero.attested_gpu_ms, zero.unattested_gpu_ms) == (
        "0",
        0,
        120_000,
    )
    assert (one.upper_bound_flop, one.central_estimate_flop, one.energy_flop) == ("10", "3", "4")
    assert (one.attested_gpu_ms, one.busy_gpu_ms, one.unattested_gpu_ms) == (120_000, 20_000, 0)
    assert one.energy_mj == 14
    assert two.unattested_gpu_ms == 0
    # The last bucket is not whole at as_of: coverage does not judge it yet (provisional).
    assert last.unattested_gpu_ms == 0
    assert result.provisional and result.coverage_until_ns == P0 + 3 * BUCKET


def test_an_unaligned_period_start_skips_the_bucket_that_starts_before_it() -> None:
    figures = [fig(1, 0, upper=100), fig(2, 1, upper=1)]
    result = report(policy(cumulative("10m", "1")), figures, period_start_ns=P0 + 1)
    assert result.series[0].bucket_start_ns == P0 + BUCKET
    assert result.rules[0].measured == "1"


def test_totals_say_how_each_figure_was_obtained() -> None:
    result = full_report()
    totals = result.totals
    assert totals.upper_bound_flop == str(3 * (10**18 + 2 * 10**18) + 16)
    assert (totals.assumed_gpu_windows, totals.unknown_model_gpu_windows) == (2, 1)
    assert "GPU table version 1" in totals.upper_bound_method
    assert "1 of 8 GPU-windows had a model not in the table" in totals.upper_bound_method
    assert "measured for 6 of 8 GPU-windows" in totals.central_estimate_method
    assert "assumed for the other 2" in totals.central_estimate_method
    assert "40%" in totals.central_estimate_method
    assert "unusable count 0" in totals.energy_method
    assert totals.busy_gpu_ms == 6 * 45_000
    assert totals.energy_mj == 8 * 7


# --- evidence ------------------------------------------------------------------------------------


def test_evidence_is_at_most_100_largest_first_then_lowest_index() -> None:
    # 150 attestations in bucket 0 with many ties, two GPUs each; 5 bigger ones in bucket 1.
    figures = [
        fig(i, 0, upper=(i % 7) * 10**15, uuid=f"GPU-{g}") for i in range(150) for g in range(2)
    ]
    figures += [fig(1_000 + i, 1, upper=10**20) for i in range(5)]
    rule = only_rule(report(policy(cumulative("1m", "0")), figures))
    assert rule.worst_start_ns == P0 + BUCKET
    assert list(rule.evidence_log_indices) == [1_000, 1_001, 1_002, 1_003, 1_004]
    index = InMemoryEvidenceIndex(figures)
    top = index.top_contributors(P0, P0 + BUCKET, Figure.UPPER_BOUND, MAX_EVIDENCE)
    expected = sorted((i for i in range(150) if i % 7), key=lambda i: (-(i % 7), i))[:100]
    assert top == expected
    assert len(top) == MAX_EVIDENCE
    assert top[:3] == [6, 13, 20]
    rule = only_rule(report(policy(cumulative("1m", "0")), figures[:300]))
    assert list(rule.evidence_log_indices) == expected


def test_evidence_index_refuses_contradictory_figures() -> None:
    with pytest.raises(ValueError, match="two window starts"):
        InMemoryEvidenceIndex([fig(1, 0), fig(1, 1)])


# --- arguments -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"period_end_ns": P0}, "period_end_ns"),
        ({"as_of_ns": P0 - 1}, "as_of_ns"),
        ({"as_of_ns": P0 + 10 * BUCKET + 1}, "as_of_ns"),
        ({"bucket_ns": 0}, "bucket_ns must be positive"),
        ({"bucket_ns": 7 * S}, "bucket_ns 7000000000 does not suit the policy"),
        ({"lab_id": "lab-b"}, "lab_id"),
        ({"tree_size": -1}, "tree_size"),
        ({"buckets": {P0 + 1: Bucket(bucket_start_ns=P0 + 1)}}, "buckets"),
        ({"buckets": {P0: Bucket(bucket_start_ns=P0 + BUCKET)}}, "buckets"),
        (
            {"inventory": [InventoryVersion(1, P0, GPUS), InventoryVersion(1, P0 + 1, GPUS)]},
            "inventory",
        ),
    ],
)
def test_contradictory_arguments_raise_naming_the_argument(
    change: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {
        "lab_id": "lab-a",
        "period_start_ns": P0,
        "period_end_ns": P0 + 10 * BUCKET,
        "as_of_ns": P0 + 10 * BUCKET,
        "bucket_ns": BUCKET,
        "buckets": {},
        "inventory": [],
        "nodes": [],
        "findings": [],
        "evidence": InMemoryEvidenceIndex([]),
        "tree_size": 0,
        "table_version": 1,
    }
    arguments |= change
    with pytest.raises(ValueError, match=message):
        evaluate(policy(cumulative("1m", "1")), **arguments)  # type: ignore[arg-type]


def test_as_of_at_the_period_start_gives_an_empty_provisional_report() -> None:
    result = report(policy(cumulative("1m", "1") + coverage("99%")), as_of_ns=P0)
    assert list(result.series) == []
    assert result.rules[0].measured == "0"
    assert result.rules[0].outcome == pb.RULE_OUTCOME_PASS
    # Nothing of the period is old enough to judge: not missing, and said to be provisional.
    assert result.rules[1].outcome == pb.RULE_OUTCOME_PASS
    assert "provisional" in result.rules[1].summary
    assert result.provisional and result.coverage_until_ns == P0


def test_coverage_counts_whole_buckets_from_the_first_that_starts_in_the_period() -> None:
    # A period that starts 20 s into a bucket: the partial bucket is judged by neither side.
    figures = [f for f in honest_figures(10) if f.window_start_ns >= P0 + BUCKET]
    result = report(policy(coverage("99%")), figures, period_start_ns=P0 + 20 * S)
    assert result.coverage_from_ns == P0 + BUCKET
    assert result.coverage.declared_gpu_ms == result.coverage.attested_gpu_ms == 2 * 9 * 60_000
    assert result.rules[0].outcome == pb.RULE_OUTCOME_PASS


# --- open periods --------------------------------------------------------------------------------

GRACE = 120 * S


def open_report(
    the_policy: Policy,
    figures: Sequence[GpuWindowFigures],
    evaluated_at_ns: int,
    as_of_ns: int | None = None,
) -> pb.ComplianceReport:
    accounts: dict[int, Bucket] = {}
    accumulate(accounts, figures, BUCKET)
    end = P0 + 10 * BUCKET
    return evaluate(
        the_policy,
        lab_id="lab-a",
        period_start_ns=P0,
        period_end_ns=end,
        as_of_ns=min(end, evaluated_at_ns) if as_of_ns is None else as_of_ns,
        bucket_ns=BUCKET,
        buckets=accounts,
        inventory=[InventoryVersion(1, P0 - BUCKET, GPUS)],
        nodes=(),
        findings=(),
        evidence=InMemoryEvidenceIndex(figures),
        tree_size=5,
        table_version=1,
        evaluated_at_ns=evaluated_at_ns,
        open_gap_grace_ns=GRACE,
    )


def honest_figures(minutes: int) -> list[GpuWindowFigures]:
    return [
        fig(m * 2 + i, m, uuid=uuid, busy_ms=1)
        for m in range(minutes)
        for i, uuid in enumerate(sorted(GPUS))
    ]


@pytest.mark.parametrize("seconds_into_minute", [0, 1, 30, 59])
def test_an_open_period_never_counts_the_window_in_progress_as_missing(
    seconds_into_minute: int,
) -> None:
    # Both GPUs attested every whole minute that has ended; the minute in progress has no window.
    for minutes in range(1, 10):
        now = P0 + minutes * BUCKET + seconds_into_minute * S
        result = open_report(policy(coverage("99%")), honest_figures(minutes), now)
        assert result.provisional
        horizon = now - GRACE
        assert result.coverage_until_ns == max(P0, horizon - horizon % BUCKET)
        assert result.coverage_from_ns == P0
        assert result.rules[0].outcome == pb.RULE_OUTCOME_PASS, result.rules[0].summary
        assert result.verdict == pb.VERDICT_COMPLIANT
        assert any(reason.startswith("PROVISIONAL: ") for reason in result.reasons)
        assert "PROVISIONAL" in render_text(result)


def test_an_open_period_still_counts_a_node_silent_for_longer_than_the_grace() -> None:
    # The GPUs attested minutes 0-3 only; at minute 9 minutes 4-6 are past the grace: missing.
    now = P0 + 9 * BUCKET
    result = open_report(policy(coverage("99%")), honest_figures(4), now)
    assert result.provisional
    assert result.rules[0].outcome == pb.RULE_OUTCOME_UNACCOUNTED
    assert result.coverage.declared_gpu_ms == 2 * (7 * 60_000)
    assert result.coverage.attested_gpu_ms == 2 * (4 * 60_000)
    assert result.verdict == pb.VERDICT_UNACCOUNTED


def test_a_window_attested_after_the_horizon_does_not_cover_time_before_it() -> None:
    # Minutes 0-3 are old enough to count and none was attested; only the last minutes were.
    late = [f for f in honest_figures(6) if f.window_start_ns >= P0 + 4 * BUCKET]
    result = open_report(policy(coverage("50%")), late, P0 + 6 * BUCKET)
    assert result.coverage_until_ns == P0 + 4 * BUCKET
    assert result.coverage.attested_gpu_ms == 0
    assert result.rules[0].outcome == pb.RULE_OUTCOME_UNACCOUNTED


def test_a_closed_period_is_final_once_the_grace_has_passed_and_counts_all_of_it() -> None:
    end = P0 + 10 * BUCKET
    figures = honest_figures(10)
    just_closed = open_report(policy(coverage("99%")), figures, end + S)
    assert just_closed.provisional  # the last windows may still be on their way
    final = open_report(policy(coverage("99%")), figures, end + GRACE)
    later = open_report(policy(coverage("99%")), figures, end + 10 * GRACE)
    assert not final.provisional and final.coverage_until_ns == end
    assert final.coverage.declared_gpu_ms == 2 * 600_000
    assert final.verdict == pb.VERDICT_COMPLIANT
    assert "final" in render_text(final)
    assert not any(reason.startswith("PROVISIONAL") for reason in final.reasons)
    # Reproducible: the same evidence gives the same report, whenever asked but for the clock.
    later.evaluated_at_ns = final.evaluated_at_ns
    assert later.SerializeToString(deterministic=True) == final.SerializeToString(
        deterministic=True
    )
    # And a final report does count a missing last minute.
    short = open_report(policy(coverage("99%")), honest_figures(9), end + GRACE)
    assert short.verdict == pb.VERDICT_UNACCOUNTED


def test_evaluated_at_before_as_of_is_refused() -> None:
    with pytest.raises(ValueError, match="evaluated_at_ns"):
        open_report(policy(coverage("99%")), [], P0 + S, as_of_ns=P0 + 2 * S)


# --- text ----------------------------------------------------------------------------------------


def test_render_text_shows_verdict_rules_coverage_gaps_totals_and_findings() -> None:
    text = render_text(full_report())
    assert "VERDICT   VIOLATION" in text  # the training signature
    assert "pausewatch compliance report for lab lab-a" in text
    assert format_time_ns(P0) == "2025-11-29T08:00:00Z"
    assert "2025-11-29T08:00:00Z to 2025-11-29T08:10:00Z" in text
    for rule_id in ("cumulative", "rate", "coverage", "gap", "signature"):
        assert f"  {rule_id}: " in text
    assert "10000000000000000000000000 (1.00e25) FLOP" in text  # the limit, exact and readable
    assert "coverage  " in text
    assert "gaps (2)" in text
    assert "open" in text
    assert "findings (2)" in text
    assert "#77 UNDECLARED_GPU" in text
    assert "upper bound       9000000000000000016 (9.00e18) FLOP" in text
    assert "nodes (2)" in text
    assert text.endswith("\n")


def test_format_time_keeps_fractions_exactly() -> None:
    assert format_time_ns(P0 + 1) == "2025-11-29T08:00:00.000000001Z"
    assert format_time_ns(P0 + 500_000_000) == "2025-11-29T08:00:00.5Z"


def test_of_equal_runs_the_earliest_is_the_worst_stretch() -> None:
    figures = [fig(1, 1, upper=5), fig(2, 6, upper=5)]
    rule = only_rule(report(policy(cumulative("2m", "100")), figures))
    assert (rule.worst_start_ns, rule.worst_end_ns) == (P0, P0 + 2 * BUCKET)
    assert list(rule.evidence_log_indices) == [1]


def test_of_equal_gaps_the_first_node_then_time_is_the_longest() -> None:
    b = windows_then_silence(NODE_B, 600)
    a = windows_then_silence(NODE_A, 600)
    rule = only_rule(report(policy(max_gap("1m")), nodes=[b, a]))
    assert "node-aa" in rule.summary


# --- tpm_rooted and rooting ----------------------------------------------------------------------

TPM_RULE = '[[rules]]\nid = "tpm"\nkind = "tpm_rooted"\n'


def test_tpm_rooted_passes_when_every_window_of_every_node_is_quoted() -> None:
    result = report(
        policy(TPM_RULE),
        nodes=[timeline(NODE_A, tpm_id=b"\x01" * 32), timeline(NODE_B, tpm_id=b"\x02" * 32)],
    )
    rule = only_rule(result)
    assert rule.kind == pb.RULE_KIND_TPM_ROOTED
    assert rule.outcome == pb.RULE_OUTCOME_PASS
    assert (rule.measured, rule.limit, rule.unit) == ("20", "20", "windows")
    assert result.verdict == pb.VERDICT_COMPLIANT
    assert {n.rooting for n in result.nodes} == {pb.EVIDENCE_ROOTING_TPM}
    assert [n.tpm_rooted_windows for n in result.nodes] == [10, 10]


def test_refused_and_missing_quotes_and_software_nodes_leave_windows_unattested() -> None:
    findings = [
        logged(50, fpb.FINDING_KIND_TPM_QUOTE_REFUSED, node_id=NODE_A),
        logged(51, fpb.FINDING_KIND_TPM_QUOTE_MISSING, node_id=NODE_A),
        logged(52, fpb.FINDING_KIND_UNKNOWN_MEASUREMENT, node_id=NODE_A),  # quote was good
    ]
    result = report(
        policy(TPM_RULE),
        nodes=[timeline(NODE_A, tpm_id=b"\x01" * 32), timeline(NODE_B)],
        findings=findings,
    )
    rule = only_rule(result)
    assert rule.outcome == pb.RULE_OUTCOME_UNACCOUNTED
    assert (rule.measured, rule.limit) == ("8", "20")
    assert list(rule.evidence_log_indices) == [50, 51]
    assert "software-rooted nodes: node-bb" in rule.summary
    assert result.verdict == pb.VERDICT_UNACCOUNTED
    a, b = result.nodes
    assert (a.rooting, a.tpm_rooted_windows, a.tpm_id) == (
        pb.EVIDENCE_ROOTING_TPM_PARTIAL,
        8,
        b"\x01" * 32,
    )
    assert (b.rooting, b.tpm_rooted_windows, b.tpm_id) == (pb.EVIDENCE_ROOTING_SOFTWARE, 0, b"")


def test_without_a_tpm_rule_rooting_is_reported_but_decides_nothing() -> None:
    result = report(policy(cumulative("3m", "1e25")), nodes=[timeline(NODE_B)])
    assert result.verdict == pb.VERDICT_COMPLIANT
    assert result.nodes[0].rooting == pb.EVIDENCE_ROOTING_SOFTWARE
