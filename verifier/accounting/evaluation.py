"""Evaluation: from buckets, node timelines, the declared inventory and logged findings to a
``pausewatch.v1.ComplianceReport``, deterministically (ADR 0001, "Rules" and "Verdict").

    report = evaluate(
        policy, lab_id="lab-a", period_start_ns=start, period_end_ns=end, as_of_ns=as_of,
        bucket_ns=60_000_000_000, buckets=buckets, inventory=versions, nodes=timelines,
        findings=logged, evidence=InMemoryEvidenceIndex(figures), tree_size=size,
        table_version=compute.TABLE_VERSION,
    )
    report.verdict                  # VERDICT_COMPLIANT, _VIOLATION, _UNACCOUNTED or _INVALID
    print(render_text(report))      # the terminal table the audit CLI prints

The verifier calls :func:`evaluate` on rows from its store; the offline auditor on buckets, gaps and
an evidence index it rebuilt from a bundle's envelopes with :mod:`verifier.accounting.accounts`. The
same inputs give byte-identical reports (``SerializeToString(deterministic=True)``): nothing here
reads a clock, iterates an unordered set, or touches a float. A verdict is data, not an exception;
only arguments that contradict each other raise ``ValueError``, naming the argument.

The report covers the buckets whose start lies in ``[period_start_ns, as_of_ns)``: time after
``as_of`` is neither attested nor a gap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Protocol

from pausewatch.v1 import audit_pb2 as pb
from pausewatch.v1 import findings_pb2, site_pb2

from attest import compute
from attest.ids import NodeId
from verifier.accounting import late
from verifier.accounting.accounts import (
    BUSY_STEP_PERCENT,
    Bucket,
    Figure,
    FlagTally,
    Gap,
    GpuWindowFigures,
    WindowEdge,
    WindowFlagKind,
    backend_name,
    gap_counted_flop,
    gap_report,
    node_active_span,
)
from verifier.accounting.data_quality import data_quality_warnings
from verifier.accounting.policy import (
    FIGURE_WORDS,
    CoverageRule,
    CumulativeFlopRule,
    LateEvidence,
    MaxGapRule,
    OnDetect,
    Policy,
    Rule,
    RuleKind,
    SustainedRateRule,
    TpmRootedRule,
    TrainingSignatureRule,
    format_duration_ns,
    format_flop,
    format_ppm,
    validate_for_buckets,
)
from verifier.accounting.site import EnergySpan, SiteInputs, site_bound_by_bucket, summarize_sites

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
MJ_PER_J = 1_000
PPM = 1_000_000
MAX_EVIDENCE = 100
"""At most this many log indices of evidence per rule."""

_RULE_KINDS = {
    RuleKind.CUMULATIVE_FLOP: pb.RULE_KIND_CUMULATIVE_FLOP,
    RuleKind.SUSTAINED_RATE: pb.RULE_KIND_SUSTAINED_RATE,
    RuleKind.COVERAGE: pb.RULE_KIND_COVERAGE,
    RuleKind.MAX_GAP: pb.RULE_KIND_MAX_GAP,
    RuleKind.TRAINING_SIGNATURE: pb.RULE_KIND_TRAINING_SIGNATURE,
    RuleKind.TPM_ROOTED: pb.RULE_KIND_TPM_ROOTED,
}
# Only evidence the node itself signed can invalidate its lab's record: an equivocation is two
# valid signatures by the node's key. A bad signature proves nothing about who sent it (anyone who
# can reach the verifier can name a node's public key id), so BAD_SIGNATURE findings are reported
# but never decide the verdict; otherwise any outsider could turn any lab's report INVALID.
_INVALIDATING = (findings_pb2.FINDING_KIND_EQUIVOCATION,)

_WINDOW_FLAGS = {
    WindowFlagKind.ENERGY_MISMATCH: pb.WINDOW_FLAG_ENERGY_MISMATCH,
    WindowFlagKind.ENERGY_COUNTER_UNUSABLE: pb.WINDOW_FLAG_ENERGY_COUNTER_UNUSABLE,
    WindowFlagKind.ENERGY_OUTSIDE_WINDOWS: pb.WINDOW_FLAG_ENERGY_OUTSIDE_WINDOWS,
    WindowFlagKind.UNDECLARED_GPU: pb.WINDOW_FLAG_UNDECLARED_GPU,
}
# Flags whose evidence contradicts itself or the declaration: the report cannot be COMPLIANT
# (at least UNACCOUNTED). An unusable counter is not among them: its windows are counted at their
# time bound instead (ADR 0003), and the figures then decide.
_UNACCOUNTED_FLAGS = frozenset(
    {
        WindowFlagKind.ENERGY_MISMATCH,
        WindowFlagKind.ENERGY_OUTSIDE_WINDOWS,
        WindowFlagKind.UNDECLARED_GPU,
    }
)
_FLAG_WORDS = {
    WindowFlagKind.ENERGY_MISMATCH: "energy contradicts the attested utilisation",
    WindowFlagKind.ENERGY_COUNTER_UNUSABLE: "energy counter claimed unusable",
    WindowFlagKind.ENERGY_OUTSIDE_WINDOWS: "energy counter rose outside any window",
    WindowFlagKind.UNDECLARED_GPU: "GPU not in the declared inventory",
}


@dataclass(frozen=True, slots=True)
class InventoryVersion:
    """One version of a lab's declared GPU inventory; it applies from ``effective_from_ns`` until a
    higher version takes effect."""

    version: int
    effective_from_ns: int
    gpu_uuids: frozenset[str]


@dataclass(frozen=True, slots=True)
class NodeTimeline:
    """A node's part in a report: identity, state, its attestations in the period and its gaps in
    its active span (from :func:`verifier.accounting.accounts.node_gaps_from_windows` or
    ``_from_summary``).

    ``first_seq``/``last_seq`` mean nothing when ``attestations`` is 0."""

    node_id: NodeId
    node_name: str
    enrolled_at_ns: int
    revoked_at_ns: int | None
    flagged: bool
    revoked: bool
    attestations: int
    first_seq: int
    last_seq: int
    upper_bound_flop: int
    gaps: tuple[Gap, ...]
    tpm_id: bytes = b""
    provenance: tuple[WindowEdge, ...] = ()
    """The node's first and last window in its span
    (:func:`verifier.accounting.accounts.span_edges`)."""
    """The node's TPM (SHA-256 of its EK's SubjectPublicKeyInfo); empty for a software-rooted
    node."""
    enrolled_gpus: int = 0
    """GPUs the node enrolled with (a data-quality warning when more than a server holds)."""


class EvidenceIndex(Protocol):
    """Finds the attestations behind an amount."""

    def top_contributors(self, start_ns: int, end_ns: int, figure: Figure, limit: int) -> list[int]:
        """Log indices of the attestations whose window starts in ``[start_ns, end_ns)``, with the
        largest ``figure`` (summed over their GPUs) first, then the lowest log index; attestations
        whose figure is 0 contribute nothing and are left out; at most ``limit``."""
        ...


class InMemoryEvidenceIndex:
    """An :class:`EvidenceIndex` over GPU-window figures held in memory (the auditor's)."""

    def __init__(self, figures: Iterable[GpuWindowFigures]) -> None:
        starts: dict[int, int] = {}
        sums: dict[int, list[int]] = {}
        for item in figures:
            known = starts.setdefault(item.log_index, item.window_start_ns)
            if known != item.window_start_ns:
                raise ValueError(f"log index {item.log_index} has two window starts")
            totals = sums.setdefault(item.log_index, [0, 0, 0])
            totals[0] += item.upper_bound_flop
            totals[1] += item.central_estimate_flop
            totals[2] += item.energy_flop
        self._entries = sorted((starts[index], index, *sums[index]) for index in starts)

    @classmethod
    def from_totals(cls, totals: Iterable[tuple[int, int, int, int, int]]) -> InMemoryEvidenceIndex:
        """From per-attestation ``(log_index, window_start_ns, upper, central, energy)`` sums."""
        index = cls(())
        index._entries = sorted(
            (start, log_index, upper, central, energy)
            for log_index, start, upper, central, energy in totals
        )
        return index

    def top_contributors(self, start_ns: int, end_ns: int, figure: Figure, limit: int) -> list[int]:
        column = {Figure.UPPER_BOUND: 2, Figure.CENTRAL_ESTIMATE: 3, Figure.ENERGY: 4}[figure]
        ranked = sorted(
            (-entry[column], entry[1])
            for entry in self._entries
            if start_ns <= entry[0] < end_ns and entry[column] > 0
        )
        return [index for _, index in ranked[: max(0, limit)]]


# --- inventory -----------------------------------------------------------------------------------


def inventory_in_force(
    inventory: Sequence[InventoryVersion], at_ns: int
) -> InventoryVersion | None:
    """The declaration in force at ``at_ns``: the highest version whose effective time has come."""
    current: InventoryVersion | None = None
    for item in inventory:
        if item.effective_from_ns <= at_ns and (current is None or item.version > current.version):
            current = item
    return current


def declared_gpu_ns(inventory: Sequence[InventoryVersion], start_ns: int, end_ns: int) -> int:
    """Declared GPU-time in ``[start_ns, end_ns)``: each version's GPUs x its time in force."""
    if end_ns <= start_ns:
        return 0
    edges = sorted(
        {start_ns, end_ns}
        | {v.effective_from_ns for v in inventory if start_ns < v.effective_from_ns < end_ns}
    )
    total = 0
    for lo, hi in pairwise(edges):
        version = inventory_in_force(inventory, lo)
        if version is not None:
            total += len(version.gpu_uuids) * (hi - lo)
    return total


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


# --- evaluation ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Run:
    """The worst run of buckets for a rule: its sum and its bucket range."""

    amount: int
    first: int
    count: int


def _worst_run(values: Sequence[int], length: int) -> _Run:
    """The earliest run of ``length`` consecutive values with the largest sum; all the values as
    one run when there are fewer."""
    if not values:
        return _Run(0, 0, 0)
    if length >= len(values):
        return _Run(sum(values), 0, len(values))
    window = sum(values[:length])
    best = _Run(window, 0, length)
    for end in range(length, len(values)):
        window += values[end] - values[end - length]
        if window > best.amount:
            best = _Run(window, end - length + 1, length)
    return best


@dataclass(frozen=True, slots=True)
class _Context:
    """What every rule evaluation reads."""

    period_start_ns: int
    as_of_ns: int
    coverage_from_ns: int
    coverage_until_ns: int
    provisional: bool
    bucket_ns: int
    starts: tuple[int, ...]
    buckets: tuple[Bucket, ...]
    coverage: pb.Coverage
    gaps: tuple[tuple[Gap, str], ...]
    evidence: EvidenceIndex
    gap_parts: tuple[dict[int, int], ...]
    """Per gap (in ``gaps`` order): bucket position -> FLOP of its counted bound there."""
    gap_series: tuple[int, ...]
    """Per bucket: the gaps' counted FLOP (upper-bound rules add it)."""
    rooting: tuple[NodeRooting, ...] = ()
    sites: tuple[site_pb2.SiteSummary, ...] = ()
    site_series: tuple[int, ...] = ()
    """Per bucket: the sites' compute bound of unexplained energy (empty: no site)."""
    late_gpu_ms: int = 0
    """Declared GPU-ms attested by late windows and not counted as covered."""
    late_log_indices: tuple[int, ...] = ()

    def amounts(self, figure: Figure) -> list[int]:
        """A compute rule's per-bucket amounts: upper-bound rules include the sites' bound of
        energy nothing attested explains and the report's gaps at their bound (ADR 0003);
        ``site_energy`` rules measure the sites' bound alone."""
        site = self.site_series or (0,) * len(self.buckets)
        if figure is Figure.SITE_ENERGY:
            return list(site)
        if figure is Figure.UPPER_BOUND:
            gaps = self.gap_series or (0,) * len(self.buckets)
            return [
                b.upper_bound_flop + s + g for b, s, g in zip(self.buckets, site, gaps, strict=True)
            ]
        return [bucket.flop(figure) for bucket in self.buckets]

    def evidence_for(self, start_ns: int, end_ns: int, figure: Figure) -> list[int]:
        """The log indices a compute rule's stretch rests on: the top windows, and the meter
        readings of sites whose unexplained energy counts in it."""
        found = [] if figure is Figure.SITE_ENERGY else self.top(start_ns, end_ns, figure)
        if figure in (Figure.UPPER_BOUND, Figure.SITE_ENERGY):
            for summary in self.sites:
                if any(
                    p.excess_mj and start_ns <= p.bucket_start_ns < end_ns for p in summary.series
                ):
                    found += [i for i in summary.reading_log_indices if i not in found]
        return found[:MAX_EVIDENCE]

    def gaps_in(self, run: _Run) -> tuple[int, list[int]]:
        """The gaps' FLOP in ``run`` and the positions (in ``gaps``) of the gaps that gave it."""
        positions = range(run.first, run.first + run.count)
        total = sum(self.gap_series[i] for i in positions)
        which = [
            n for n, parts in enumerate(self.gap_parts) if any(parts.get(i) for i in positions)
        ]
        return total, which

    def evidence_with_gaps(
        self, start_ns: int, end_ns: int, figure: Figure, run: _Run
    ) -> list[int]:
        """:meth:`evidence_for`, then (upper bound) the windows on either side of the gaps
        counted in ``run``: a stretch that only gaps fill still names its evidence."""
        found = self.evidence_for(start_ns, end_ns, figure)
        if figure is Figure.UPPER_BOUND:
            for position in self.gaps_in(run)[1]:
                gap = self.gaps[position][0]
                for index in (gap.log_index_before, gap.log_index_after):
                    if index is not None and index not in found:
                        found.append(index)
        return found[:MAX_EVIDENCE]

    def stretch(self, run: _Run) -> tuple[int, int]:
        if run.count == 0:
            return self.period_start_ns, self.period_start_ns
        start = self.starts[run.first]
        return start, start + run.count * self.bucket_ns

    def top(self, start_ns: int, end_ns: int, figure: Figure) -> list[int]:
        found = self.evidence.top_contributors(start_ns, end_ns, figure, MAX_EVIDENCE)
        return list(found[:MAX_EVIDENCE])


_UNROOTED_KINDS = frozenset(
    {findings_pb2.FINDING_KIND_TPM_QUOTE_REFUSED, findings_pb2.FINDING_KIND_TPM_QUOTE_MISSING}
)


@dataclass(frozen=True, slots=True)
class NodeRooting:
    """How one node's evidence in the period is rooted."""

    node: NodeTimeline
    rooting: pb.EvidenceRooting.ValueType
    tpm_rooted_windows: int
    unrooted_findings: tuple[int, ...]
    """Log indices of the TPM_QUOTE_REFUSED / _MISSING findings (one per window) in the period."""


def node_rooting(node: NodeTimeline, findings: Sequence[pb.LoggedFinding]) -> NodeRooting:
    """A TPM node's windows are TPM-rooted except those with a refused or missing quote (the
    verifier logs one finding per such window); a node without a TPM is software-rooted."""
    if not node.tpm_id:
        return NodeRooting(node, pb.EVIDENCE_ROOTING_SOFTWARE, 0, ())
    unrooted = tuple(
        item.log_index
        for item in findings
        if item.finding.kind in _UNROOTED_KINDS and item.finding.node_id == bytes(node.node_id)
    )
    rooted = max(0, node.attestations - len(unrooted))
    rooting = pb.EVIDENCE_ROOTING_TPM if not unrooted else pb.EVIDENCE_ROOTING_TPM_PARTIAL
    return NodeRooting(node, rooting, rooted, unrooted)


def evaluate(
    policy: Policy,
    *,
    lab_id: str,
    period_start_ns: int,
    period_end_ns: int,
    as_of_ns: int,
    bucket_ns: int,
    buckets: Mapping[int, Bucket],
    inventory: Sequence[InventoryVersion],
    nodes: Sequence[NodeTimeline],
    findings: Sequence[pb.LoggedFinding],
    evidence: EvidenceIndex,
    tree_size: int,
    table_version: int,
    verifier_settings: pb.VerifierSettings | None = None,
    policy_acceptance_log_index: int | None = None,
    evaluated_at_ns: int | None = None,
    open_gap_grace_ns: int = 0,
    lab_name: str = "",
    site_inputs: SiteInputs | None = None,
) -> pb.ComplianceReport:
    """The compliance report of ``lab_id`` over ``[period_start_ns, period_end_ns)`` as of
    ``as_of_ns``, under ``policy``.

    ``evaluated_at_ns`` (the clock reading the report was made at; ``as_of_ns`` when None) and
    ``open_gap_grace_ns`` decide whether the report is provisional, and how far coverage counts:
    see :func:`coverage_horizon`.

    ``site_inputs`` (the lab's sites, their readings and the nodes' window energy) adds each
    site's summary; the compute bound of a site's unexplained energy counts in upper-bound rules
    and is what ``site_energy`` rules measure (docs/site-power.md).

    ``buckets`` maps bucket start to bucket (others than the report's are ignored, missing ones are
    zero); ``nodes`` are the lab's nodes (those enrolled at or after ``as_of`` or revoked before the
    period are left out); ``findings`` the logged findings about the lab in the period.
    """
    _check_arguments(
        policy,
        lab_id=lab_id,
        period_start_ns=period_start_ns,
        period_end_ns=period_end_ns,
        as_of_ns=as_of_ns,
        bucket_ns=bucket_ns,
        buckets=buckets,
        inventory=inventory,
    )
    if tree_size < 0:
        raise ValueError(f"tree_size must not be negative, got {tree_size}")
    if table_version < 0:
        raise ValueError(f"table_version must not be negative, got {table_version}")
    if open_gap_grace_ns < 0:
        raise ValueError(f"open_gap_grace_ns must not be negative, got {open_gap_grace_ns}")
    evaluated_at = as_of_ns if evaluated_at_ns is None else evaluated_at_ns
    if evaluated_at < as_of_ns:
        raise ValueError(f"evaluated_at_ns ({evaluated_at}) is before as_of_ns ({as_of_ns})")
    provisional, until = coverage_horizon(
        period_start_ns, period_end_ns, as_of_ns, evaluated_at, open_gap_grace_ns
    )
    logged = sorted(findings, key=lambda item: item.log_index)

    first_start = _ceil_div(period_start_ns, bucket_ns) * bucket_ns
    starts = tuple(range(first_start, as_of_ns, bucket_ns))
    series_buckets = tuple(buckets.get(start) or Bucket(bucket_start_ns=start) for start in starts)
    # Coverage counts whole buckets, from the first that starts in the period to the last that
    # ends by the horizon: agents align their windows to multiples of their length, so for
    # buckets a multiple of the window an honest lab's count is exact at both edges.
    horizon = max(first_start, until - until % bucket_ns)

    # Late evidence counted like a gap (the policy's default): its GPU-time is not covered, and
    # late windows are listed with their node's gaps as late stretches
    # (verifier/accounting/late.py).
    late_windows = late.late_windows(logged) if policy.late_evidence is LateEvidence.GAP else []
    late_ms = late.late_attested_ms_by_bucket(late_windows, starts, bucket_ns)
    attested_by_bucket = [
        max(0, bucket.attested_gpu_ms - late_ms.get(start, 0))
        for start, bucket in zip(starts, series_buckets, strict=True)
    ]
    # The window in progress (and one still on its way) is neither attested nor missing.
    attested_ms = sum(
        attested
        for start, attested in zip(starts, attested_by_bucket, strict=True)
        if start < horizon
    )
    declared_ms = _ceil_div(declared_gpu_ns(inventory, first_start, horizon), NS_PER_MS)
    coverage = pb.Coverage(
        attested_gpu_ms=attested_ms,
        declared_gpu_ms=declared_ms,
        ratio_ppm=min(PPM, attested_ms * PPM // declared_ms) if declared_ms else 0,
    )

    active = sorted(
        (
            node
            for node in nodes
            if node_active_span(period_start_ns, as_of_ns, node.enrolled_at_ns, node.revoked_at_ns)
            is not None
        ),
        key=lambda node: bytes(node.node_id),
    )
    late_by_node: dict[bytes, list[Gap]] = {}
    for node in active:
        span = node_active_span(period_start_ns, as_of_ns, node.enrolled_at_ns, node.revoked_at_ns)
        assert span is not None
        for window in late_windows:
            if bytes(window.node_id) == bytes(node.node_id):
                piece = late.late_gap(window, span[0], span[1])
                if piece is not None:
                    late_by_node.setdefault(bytes(node.node_id), []).append(piece)
    # The node's gaps, then its late stretches (late windows joined, marked late): kept apart so
    # that nothing counts a late window's time or energy as a gap's (its compute is in the
    # buckets already); the max-gap rule joins the touching ones itself.
    gaps = tuple(
        (gap, node.node_name)
        for node in active
        for gap in sorted(
            [*node.gaps, *late.join_touching(late_by_node.get(bytes(node.node_id), []))],
            key=lambda gap: (gap.start_ns, gap.end_ns),
        )
    )
    sites: tuple[site_pb2.SiteSummary, ...] = ()
    if site_inputs is not None:
        gap_energy: dict[bytes, list[EnergySpan]] = {}
        # Not late stretches: their windows' energy is in the attested GPU energy.
        for gap, _ in gaps:
            if gap.energy_bounded and gap.energy_mj and not gap.late:
                gap_energy.setdefault(bytes(gap.node_id), []).append(
                    EnergySpan(gap.start_ns, gap.end_ns, gap.energy_mj)
                )
        sites = tuple(
            summarize_sites(
                site_inputs, gap_energy, starts=starts, bucket_ns=bucket_ns, as_of_ns=as_of_ns
            )
        )
    site_bounds = site_bound_by_bucket(sites)
    gap_parts = tuple(
        _spread_gap(gap, first_start, len(starts), bucket_ns, period_start_ns, as_of_ns)
        for gap, _ in gaps
    )
    gap_series = [0] * len(starts)
    for parts in gap_parts:
        for position, flop in parts.items():
            gap_series[position] += flop
    context = _Context(
        period_start_ns=period_start_ns,
        as_of_ns=as_of_ns,
        coverage_from_ns=first_start,
        coverage_until_ns=horizon,
        provisional=provisional,
        bucket_ns=bucket_ns,
        starts=starts,
        buckets=series_buckets,
        coverage=coverage,
        gaps=gaps,
        evidence=evidence,
        rooting=tuple(node_rooting(node, logged) for node in active),
        sites=sites,
        site_series=tuple(site_bounds.get(start, 0) for start in starts),
        late_gpu_ms=sum(ms for start, ms in late_ms.items() if start < horizon),
        late_log_indices=tuple(sorted(w.log_index for w in late_windows)[:MAX_EVIDENCE]),
        gap_parts=gap_parts,
        gap_series=tuple(gap_series),
    )

    report = pb.ComplianceReport(
        lab_id=lab_id,
        lab_name=lab_name,
        verifier_settings=verifier_settings,
        policy_accepted=policy_acceptance_log_index is not None,
        policy_acceptance_log_index=policy_acceptance_log_index or 0,
        period_start_ns=period_start_ns,
        period_end_ns=period_end_ns,
        as_of_ns=as_of_ns,
        bucket_ns=bucket_ns,
        policy_id=policy.policy_id,
        policy_version=policy.version,
        policy_digest=policy.digest,
        tree_size=tree_size,
        table_version=table_version,
        coverage=coverage,
        evaluated_at_ns=evaluated_at,
        provisional=provisional,
        coverage_until_ns=horizon,
        coverage_from_ns=first_start,
    )
    results = [_evaluate_rule(rule, context) for rule in policy.rules]
    report.rules.extend(results)

    gap_findings: dict[tuple[bytes, int, int], int] = {}
    for item in logged:
        finding = item.finding
        if finding.kind == findings_pb2.FINDING_KIND_GAP:
            key = (finding.node_id, finding.gap.seq_before, finding.gap.seq_after)
            gap_findings.setdefault(key, item.log_index)
    counted_in: dict[int, list[str]] = {}
    for rule, result in zip(policy.rules, results, strict=True):
        for position in _rule_gaps(rule, result, context):
            counted_in.setdefault(position, []).append(rule.rule_id)
    for position, (gap, node_name) in enumerate(gaps):
        finding_index = None
        if gap.seq_before is not None and gap.seq_after is not None:
            finding_index = gap_findings.get((bytes(gap.node_id), gap.seq_before, gap.seq_after))
        gap_item = gap_report(gap, node_name, finding_index)
        gap_item.counted_flop = str(sum(gap_parts[position].values()))
        gap_item.counted_in_rule_ids.extend(counted_in.get(position, []))
        report.gaps.append(gap_item)
    names = {bytes(node.node_id).hex(): node.node_name for node in nodes}
    flagged = _flagged(series_buckets, names)
    report.flagged.extend(flagged)

    for item in logged:
        report.findings.add().CopyFrom(item)
    report.totals.CopyFrom(_totals(series_buckets, table_version))
    report.totals.gap_bound_flop = str(sum(gap_series))
    for start, bucket, attested_bucket_ms in zip(
        starts, series_buckets, attested_by_bucket, strict=True
    ):
        declared_bucket_ms = _ceil_div(
            declared_gpu_ns(inventory, start, min(start + bucket_ns, horizon)), NS_PER_MS
        )
        report.series.append(
            pb.SeriesPoint(
                bucket_start_ns=start,
                upper_bound_flop=str(bucket.upper_bound_flop),
                central_estimate_flop=str(bucket.central_estimate_flop),
                energy_flop=str(bucket.energy_flop),
                attested_gpu_ms=attested_bucket_ms,
                busy_gpu_ms=bucket.busy_gpu_ms,
                energy_mj=bucket.energy_mj,
                unattested_gpu_ms=max(0, declared_bucket_ms - attested_bucket_ms),
            )
        )
    for node, rooted in zip(active, context.rooting, strict=True):
        report.nodes.append(
            pb.NodeSummary(
                node_id=bytes(node.node_id),
                node_name=node.node_name,
                attestations=node.attestations,
                first_seq=node.first_seq if node.attestations else 0,
                last_seq=node.last_seq if node.attestations else 0,
                upper_bound_flop=str(node.upper_bound_flop),
                flagged=node.flagged,
                revoked=node.revoked,
                rooting=rooted.rooting,
                tpm_rooted_windows=rooted.tpm_rooted_windows,
                tpm_id=node.tpm_id,
                sampler_backends=sorted({backend_name(e.sampler_backend) for e in node.provenance}),
                agent_digests=sorted({e.agent_digest for e in node.provenance}),
                agent_versions=sorted({e.agent_version for e in node.provenance}),
                enrolled_gpus=node.enrolled_gpus,
            )
        )
    report.sites.extend(sites)
    report.verdict, reasons = _verdict(results, logged, flagged)
    report.reasons.extend(reasons)
    _site_reasons(report, policy)
    if provisional:
        report.reasons.append(
            f"PROVISIONAL: evidence up to {format_time_ns(as_of_ns)}; the verdict may change "
            f"until {format_time_ns(period_end_ns + open_gap_grace_ns)} (the period's end plus "
            f"the {format_duration_ns(open_gap_grace_ns)} grace for windows still on their way); "
            f"coverage counted from {format_time_ns(first_start)} to {format_time_ns(horizon)}"
        )
    return report


def coverage_horizon(
    period_start_ns: int,
    period_end_ns: int,
    as_of_ns: int,
    evaluated_at_ns: int,
    open_gap_grace_ns: int,
) -> tuple[bool, int]:
    """Whether a report made at ``evaluated_at_ns`` is provisional, and the time coverage counts
    up to (before :func:`evaluate` rounds it down to a bucket start).

    A report is final once ``evaluated_at_ns`` reaches the period's end plus the open-gap grace:
    every window of the period has then had the time the open-gap rule allows it to arrive, and
    coverage counts the whole period. Before that, the report is provisional and coverage counts
    up to ``evaluated_at_ns - open_gap_grace_ns`` (the same grace an open gap gets), never before
    the period's start nor after ``as_of_ns``: the window in progress is not unattested time.
    """
    if evaluated_at_ns >= period_end_ns + open_gap_grace_ns:
        return False, period_end_ns
    horizon = max(period_start_ns, min(as_of_ns, evaluated_at_ns - open_gap_grace_ns))
    return True, horizon


def _check_arguments(
    policy: Policy,
    *,
    lab_id: str,
    period_start_ns: int,
    period_end_ns: int,
    as_of_ns: int,
    bucket_ns: int,
    buckets: Mapping[int, Bucket],
    inventory: Sequence[InventoryVersion],
) -> None:
    if bucket_ns <= 0:
        raise ValueError(f"bucket_ns must be positive, got {bucket_ns}")
    if period_end_ns <= period_start_ns:
        raise ValueError(
            f"period_end_ns ({period_end_ns}) must be after period_start_ns ({period_start_ns})"
        )
    if not period_start_ns <= as_of_ns <= period_end_ns:
        raise ValueError(
            f"as_of_ns ({as_of_ns}) must lie within the period [{period_start_ns}, {period_end_ns}]"
        )
    if lab_id != policy.lab_id:
        raise ValueError(f"lab_id {lab_id!r} is not the policy's lab ({policy.lab_id!r})")
    problems = validate_for_buckets(policy, bucket_ns)
    if problems:
        raise ValueError(f"bucket_ns {bucket_ns} does not suit the policy: {'; '.join(problems)}")
    for start, bucket in buckets.items():
        if bucket.bucket_start_ns != start or start % bucket_ns:
            raise ValueError(
                f"buckets: the bucket at key {start} is not a bucket of {bucket_ns} ns"
            )
    versions = [item.version for item in inventory]
    if len(set(versions)) != len(versions):
        raise ValueError("inventory has two declarations with the same version")


def _evaluate_rule(rule: Rule, context: _Context) -> pb.RuleResult:
    match rule:
        case CumulativeFlopRule():
            return _cumulative(rule, context)
        case SustainedRateRule():
            return _sustained(rule, context)
        case CoverageRule():
            return _coverage(rule, context)
        case MaxGapRule():
            return _max_gap(rule, context)
        case TrainingSignatureRule():
            return _training_signature(rule, context)
        case TpmRootedRule():
            return _tpm_rooted(rule, context)


def _result(
    rule: Rule,
    outcome: pb.RuleOutcome.ValueType,
    *,
    measured: int,
    limit: int,
    unit: str,
    method: str,
    stretch: tuple[int, int],
    summary: str,
    evidence: Sequence[int] = (),
    gap_flop: int = 0,
) -> pb.RuleResult:
    return pb.RuleResult(
        gap_flop=str(gap_flop),
        rule_id=rule.rule_id,
        kind=_RULE_KINDS[rule.kind],
        outcome=outcome,
        measured=str(measured),
        limit=str(limit),
        unit=unit,
        method=method,
        worst_start_ns=stretch[0],
        worst_end_ns=stretch[1],
        evidence_log_indices=evidence,
        summary=summary,
    )


def _gap_words(
    rule: CumulativeFlopRule | SustainedRateRule, context: _Context, run: _Run, length: int
) -> tuple[int, str, str]:
    """The gaps' FLOP in an upper-bound rule's worst run, words for its summary, and words for
    when the gaps decide the outcome (the rule would hold without them)."""
    if rule.figure is not Figure.UPPER_BOUND:
        return 0, "", ""
    flop, which = context.gaps_in(run)
    if not flop:
        return 0, "", ""
    without = _worst_run(
        [a - g for a, g in zip(context.amounts(rule.figure), context.gap_series, strict=True)],
        length,
    )
    allowed = (
        rule.limit_flop
        if isinstance(rule, CumulativeFlopRule)
        else rule.limit_flop_per_s * (rule.interval_ns // NS_PER_S)
    )
    moved = (
        "; the gaps moved it: without them it would hold"
        if run.amount > allowed >= without.amount
        else ""
    )
    return (
        flop,
        f" (of which {format_flop(flop)} FLOP is {len(which)} gap(s) counted at their bound)",
        moved,
    )


def _cumulative(rule: CumulativeFlopRule, context: _Context) -> pb.RuleResult:
    length = rule.window_ns // context.bucket_ns
    run = _worst_run(context.amounts(rule.figure), length)
    gap_flop, gap_words, moved = _gap_words(rule, context, run, length)
    start, end = context.stretch(run)
    over = run.amount > rule.limit_flop
    short = (
        " (the period is shorter than the window: one run)"
        if run.count < (rule.window_ns // context.bucket_ns)
        else ""
    )
    summary = (
        f"{format_flop(run.amount)} FLOP ({FIGURE_WORDS[rule.figure]}){gap_words} in the worst "
        f"{format_duration_ns(rule.window_ns)} run, {_span(start, end)}{short}; "
        f"{'over' if over else 'within'} the limit of {format_flop(rule.limit_flop)} FLOP{moved}"
    )
    return _result(
        rule,
        pb.RULE_OUTCOME_VIOLATION if over else pb.RULE_OUTCOME_PASS,
        measured=run.amount,
        limit=rule.limit_flop,
        unit="flop",
        method=rule.figure.value,
        stretch=(start, end),
        evidence=context.evidence_with_gaps(start, end, rule.figure, run),
        summary=summary,
        gap_flop=gap_flop,
    )


def _sustained(rule: SustainedRateRule, context: _Context) -> pb.RuleResult:
    interval_s = rule.interval_ns // NS_PER_S
    length = rule.interval_ns // context.bucket_ns
    run = _worst_run(context.amounts(rule.figure), length)
    gap_flop, gap_words, moved = _gap_words(rule, context, run, length)
    start, end = context.stretch(run)
    allowed = rule.limit_flop_per_s * interval_s
    over = run.amount > allowed
    summary = (
        f"{format_flop(run.amount)} FLOP ({FIGURE_WORDS[rule.figure]}){gap_words} in the worst "
        f"{format_duration_ns(rule.interval_ns)} run, {_span(start, end)}: "
        f"{format_flop(run.amount // interval_s)} FLOP/s on average; "
        f"{'over' if over else 'within'} the limit of {format_flop(rule.limit_flop_per_s)} FLOP/s "
        f"({format_flop(allowed)} FLOP per {format_duration_ns(rule.interval_ns)}){moved}"
    )
    return _result(
        rule,
        pb.RULE_OUTCOME_VIOLATION if over else pb.RULE_OUTCOME_PASS,
        measured=run.amount // interval_s,
        limit=rule.limit_flop_per_s,
        unit="flop_per_s",
        method=rule.figure.value,
        stretch=(start, end),
        evidence=context.evidence_with_gaps(start, end, rule.figure, run),
        summary=summary,
        gap_flop=gap_flop,
    )


def _coverage(rule: CoverageRule, context: _Context) -> pb.RuleResult:
    coverage = context.coverage
    if context.provisional and context.coverage_until_ns <= context.coverage_from_ns:
        outcome = pb.RULE_OUTCOME_PASS
        summary = (
            "the period began less than the open-gap grace ago: no stretch of it is old enough "
            "to count yet (provisional)"
        )
    elif coverage.declared_gpu_ms == 0:
        outcome = pb.RULE_OUTCOME_UNACCOUNTED
        summary = (
            "no declared GPU-time in the period (no inventory declaration in force): coverage "
            f"cannot be shown; {coverage.attested_gpu_ms} GPU-ms attested"
        )
    else:
        below = coverage.ratio_ppm < rule.min_ratio_ppm
        outcome = pb.RULE_OUTCOME_UNACCOUNTED if below else pb.RULE_OUTCOME_PASS
        summary = (
            f"{coverage.attested_gpu_ms} of {coverage.declared_gpu_ms} declared GPU-ms attested "
            f"({format_ppm(coverage.ratio_ppm)}); {'below' if below else 'at or above'} the "
            f"minimum of {format_ppm(rule.min_ratio_ppm)}"
        )
    if context.late_gpu_ms:
        summary += (
            f"; {context.late_gpu_ms} GPU-ms of late evidence not counted (the policy counts "
            "late evidence like a gap)"
        )
    return _result(
        rule,
        outcome,
        measured=coverage.ratio_ppm,
        limit=rule.min_ratio_ppm,
        unit="ppm",
        method="attested GPU-time of declared GPUs / declared GPUs x time in force",
        stretch=(context.coverage_from_ns, context.coverage_until_ns),
        evidence=list(context.late_log_indices),
        summary=summary,
    )


def _tpm_rooted(rule: TpmRootedRule, context: _Context) -> pb.RuleResult:
    windows = sum(r.node.attestations for r in context.rooting)
    rooted = sum(r.tpm_rooted_windows for r in context.rooting)
    software = [
        r.node.node_name for r in context.rooting if r.node.attestations and not r.node.tpm_id
    ]
    evidence = sorted(i for r in context.rooting for i in r.unrooted_findings)
    ok = rooted == windows
    parts = [f"{rooted} of {windows} windows covered by a valid TPM quote"]
    if software:
        parts.append(f"software-rooted nodes: {', '.join(sorted(software)[:5])}")
    if evidence:
        parts.append(f"{len(evidence)} windows with a refused or missing quote")
    return _result(
        rule,
        pb.RULE_OUTCOME_PASS if ok else pb.RULE_OUTCOME_UNACCOUNTED,
        measured=rooted,
        limit=windows,
        unit="windows",
        method="windows of TPM-enrolled nodes less those with a TPM_QUOTE_REFUSED or "
        "TPM_QUOTE_MISSING finding",
        stretch=(context.period_start_ns, context.as_of_ns),
        summary="; ".join(parts),
        evidence=evidence[:MAX_EVIDENCE],
    )


def _max_gap(rule: MaxGapRule, context: _Context) -> pb.RuleResult:
    longest: tuple[Gap, str] | None = None
    by_node: dict[bytes, list[Gap]] = {}
    names: dict[bytes, str] = {}
    for gap, name in context.gaps:
        by_node.setdefault(bytes(gap.node_id), []).append(gap)
        names[bytes(gap.node_id)] = name
    # A gap and the late stretch it touches are one unattested stretch.
    stretches = [
        (stretch, names[node_id])
        for node_id, node_gaps in by_node.items()
        for stretch in late.join_touching(node_gaps)
    ]
    for gap, name in stretches:
        if longest is None or gap.duration_ns > longest[0].duration_ns:
            longest = (gap, name)
    if longest is None:
        return _result(
            rule,
            pb.RULE_OUTCOME_PASS,
            measured=0,
            limit=_ceil_div(rule.max_gap_ns, NS_PER_MS),
            unit="ms",
            method="longest unattested stretch of any node",
            stretch=(context.period_start_ns, context.period_start_ns),
            summary=f"no gaps; at most {format_duration_ns(rule.max_gap_ns)} allowed",
        )
    gap, name = longest
    over = gap.duration_ns > rule.max_gap_ns
    evidence = [i for i in (gap.log_index_before, gap.log_index_after) if i is not None]
    summary = (
        f"longest gap {format_duration_ns(gap.duration_ns)} on node {name or '(unnamed)'}, "
        f"{_span(gap.start_ns, gap.end_ns)}{' (open)' if gap.open else ''}"
        f"{' (late evidence counted as a gap)' if gap.late else ''}; "
        f"{'longer than' if over else 'within'} the {format_duration_ns(rule.max_gap_ns)} allowed"
    )
    return _result(
        rule,
        pb.RULE_OUTCOME_UNACCOUNTED if over else pb.RULE_OUTCOME_PASS,
        measured=_ceil_div(gap.duration_ns, NS_PER_MS),
        limit=_ceil_div(rule.max_gap_ns, NS_PER_MS),
        unit="ms",
        method="longest unattested stretch of any node",
        stretch=(gap.start_ns, gap.end_ns),
        evidence=evidence,
        summary=summary,
    )


def _training_signature(rule: TrainingSignatureRule, context: _Context) -> pb.RuleResult:
    """Runs of buckets with at least ``min_gpus`` GPUs counted busy (TrainingSignatureRule): a
    GPU counts for ``100 - tolerance_percent`` % of the bucket's GPU-time at the busy level, so
    sampling loss of a few percent (a late poll, a lost sample) never hides a GPU."""
    step = rule.min_busy_percent // BUSY_STEP_PERCENT - 1
    share = 100 - rule.tolerance_percent
    per_gpu_ns = context.bucket_ns * share  # x 1/100: the GPU-time that counts as one GPU
    best = _Run(0, 0, 0)
    current = 0
    fewest = 0
    run_fewest = 0
    for i, bucket in enumerate(context.buckets):
        counted_gpus = bucket.busy_at_least_ms[step] * NS_PER_MS * 100 // per_gpu_ns
        if counted_gpus >= rule.min_gpus:
            current += 1
            run_fewest = counted_gpus if current == 1 else min(run_fewest, counted_gpus)
            if current > best.count:
                best = _Run(current * context.bucket_ns, i - current + 1, current)
                fewest = run_fewest
        else:
            current = 0
    start, end = context.stretch(best)
    detected = best.count > 0 and best.amount >= rule.min_duration_ns
    counted = detected and rule.on_detect is OnDetect.VIOLATION
    what = f"{rule.min_gpus} or more GPUs at least {rule.min_busy_percent}% busy in every bucket"
    if best.count == 0:
        summary = f"no bucket had {what.replace(' in every bucket', '')}"
    else:
        summary = (
            f"longest run with {what}: {format_duration_ns(best.amount)}, {_span(start, end)} "
            f"(at least {fewest} GPUs counted in each bucket)"
        )
    if detected:
        effect = "a violation" if counted else "reported as a finding, not counted (on_detect)"
        summary += (
            f"; training signature detected ({format_duration_ns(rule.min_duration_ns)} or "
            f"longer): {effect}"
        )
    else:
        summary += f"; shorter than {format_duration_ns(rule.min_duration_ns)}: not detected"
    if counted:
        outcome = pb.RULE_OUTCOME_VIOLATION
    elif detected:
        outcome = pb.RULE_OUTCOME_DETECTED  # seen, not counted: never a PASS
    else:
        outcome = pb.RULE_OUTCOME_PASS
    return _result(
        rule,
        outcome,
        measured=best.amount // NS_PER_MS,
        limit=rule.min_duration_ns // NS_PER_MS,
        unit="ms",
        method=(
            f"buckets with at least {rule.min_gpus} GPUs at >= {rule.min_busy_percent}% busy; a "
            f"GPU counts for {share}% of the bucket's GPU-time at that level (tolerance "
            f"{rule.tolerance_percent}%)"
        ),
        stretch=(start, end),
        evidence=context.top(start, end, Figure.UPPER_BOUND) if best.count else [],
        summary=summary,
    )


def _totals(buckets: Sequence[Bucket], table_version: int) -> pb.ComputeTotals:
    windows = sum(bucket.gpu_windows for bucket in buckets)
    assumed = sum(bucket.assumed_gpu_windows for bucket in buckets)
    unknown = sum(bucket.unknown_model_gpu_windows for bucket in buckets)
    if unknown:
        unknown_words = (
            f"{unknown} of {windows} GPU-windows had a model not in the table and were bounded "
            "with the table's highest peak"
        )
    else:
        unknown_words = f"every one of the {windows} GPU-windows had a model in the table"
    assumed_words = format_ppm(compute.ASSUMED_UTILIZATION_PPM)
    return pb.ComputeTotals(
        upper_bound_flop=str(sum(bucket.upper_bound_flop for bucket in buckets)),
        central_estimate_flop=str(sum(bucket.central_estimate_flop for bucket in buckets)),
        energy_flop=str(sum(bucket.energy_flop for bucket in buckets)),
        energy_mj=sum(bucket.energy_mj for bucket in buckets),
        busy_gpu_ms=sum(bucket.busy_gpu_ms for bucket in buckets),
        upper_bound_method=(
            "peak dense FLOP/s at each GPU's fastest precision x busy seconds "
            f"(GPU table version {table_version}); {unknown_words}; raised where the energy "
            "contradicts the utilisation (to what the energy allows), where the counter was "
            "unusable (to peak x window) and by energy outside windows"
        ),
        central_estimate_method=(
            f"measured for {windows - assumed} of {windows} GPU-windows: GPM tensor-active "
            f"seconds x peak bf16 (fp16 where no bf16); assumed for the other {assumed}: busy "
            f"seconds x peak bf16 x an assumed utilisation of {assumed_words} (Epoch AI's "
            "typical figure), as they had no tensor-active reading"
        ),
        energy_method=(
            "energy counter (J) x each model's FLOP per joule at peak; GPU-windows whose counter "
            "was unusable count 0. A cross-check, not a sound bound"
        ),
        assumed_gpu_windows=assumed,
        unknown_model_gpu_windows=unknown,
        raised_flop=str(sum(bucket.raised_flop for bucket in buckets)),
    )


def rooting_text(node: pb.NodeSummary) -> str:
    """How a node's evidence is rooted, in words: "software", "TPM 3/3", "TPM 1/3 (partial)"."""
    match node.rooting:
        case pb.EVIDENCE_ROOTING_TPM:
            return f"TPM {node.tpm_rooted_windows}/{node.attestations}"
        case pb.EVIDENCE_ROOTING_TPM_PARTIAL:
            return f"TPM {node.tpm_rooted_windows}/{node.attestations} (partial)"
        case pb.EVIDENCE_ROOTING_SOFTWARE:
            return "software"
        case _:
            return "-"


def _verdict(
    results: Sequence[pb.RuleResult],
    logged: Sequence[pb.LoggedFinding],
    flagged: Sequence[pb.FlaggedWindows] = (),
) -> tuple[pb.Verdict.ValueType, list[str]]:
    unaccounted_flags = {_WINDOW_FLAGS[kind] for kind in _UNACCOUNTED_FLAGS}
    contradictions = [item for item in flagged if item.flag in unaccounted_flags]
    flag_reasons = [
        f"UNACCOUNTED: {_flag_text(item)}" if item.flag in unaccounted_flags else _flag_text(item)
        for item in flagged
    ]
    violations = [r for r in results if r.outcome == pb.RULE_OUTCOME_VIOLATION]
    invalid = [item for item in logged if item.finding.kind in _INVALIDATING]
    unaccounted = [r for r in results if r.outcome == pb.RULE_OUTCOME_UNACCOUNTED]
    reasons = [f"VIOLATION: rule {r.rule_id}: {r.summary}" for r in violations]
    reasons += [
        f"INVALID: {findings_pb2.FindingKind.Name(item.finding.kind).removeprefix('FINDING_KIND_')}"
        f" finding at log index {item.log_index}: {item.finding.summary or '(no summary)'}"
        for item in invalid
    ]
    reasons += [f"UNACCOUNTED: rule {r.rule_id}: {r.summary}" for r in unaccounted]
    detected = [r for r in results if r.outcome == pb.RULE_OUTCOME_DETECTED]
    reasons += [
        f"DETECTED (reported, not counted): rule {r.rule_id}: {r.summary}" for r in detected
    ]
    reasons += flag_reasons
    if violations:
        return pb.VERDICT_VIOLATION, reasons
    if invalid:
        return pb.VERDICT_INVALID, reasons
    if unaccounted or contradictions:
        return pb.VERDICT_UNACCOUNTED, reasons
    if detected:
        return pb.VERDICT_COMPLIANT, [
            f"COMPLIANT: no rule is broken and no evidence failed verification, but "
            f"{len(detected)} training signature(s) were detected (the policy reports them "
            "without counting them)",
            *reasons,
        ]
    return pb.VERDICT_COMPLIANT, [
        f"COMPLIANT: all {len(results)} rules hold and no evidence failed verification",
        *flag_reasons,
    ]


def _site_reasons(report: pb.ComplianceReport, policy: Policy) -> None:
    """A site whose metered energy its attested GPUs do not explain contradicts the evidence: the
    report cannot be COMPLIANT (at least UNACCOUNTED), whatever the rules say. Unmetered time does
    so too where a rule measures ``site_energy`` (the lab agreed to be checked by its meters)."""
    measures_site = any(
        getattr(rule, "figure", None) is Figure.SITE_ENERGY for rule in policy.rules
    )
    problems: list[str] = []
    for summary in report.sites:
        if summary.excess_mj:
            problems.append(
                f"UNACCOUNTED: site {summary.site_id}: {summary.unexplained_mj // MJ_PER_J} J of "
                f"IT energy that no attested GPU explains ({summary.excess_mj // MJ_PER_J} J past "
                f"the declared tolerance), enough for {format_flop(int(summary.bound_flop))} FLOP"
            )
        if measures_site and summary.unmetered_ns:
            problems.append(
                f"UNACCOUNTED: site {summary.site_id}: {summary.unmetered_ns // NS_PER_S} s "
                "without a reading from every meter: the site's energy there is unknown"
            )
    if not problems:
        return
    if report.verdict == pb.VERDICT_COMPLIANT:
        report.verdict = pb.VERDICT_UNACCOUNTED
        del report.reasons[:]
    report.reasons.extend(problems)


def _flag_text(item: pb.FlaggedWindows) -> str:
    kind = next(k for k, v in _WINDOW_FLAGS.items() if v == item.flag)
    raised = f"; {format_flop(int(item.extra_flop))} FLOP added" if item.extra_flop != "0" else ""
    return (
        f"{_FLAG_WORDS[kind]}: GPU {item.gpu_uuid} of node "
        f"{item.node_name or item.node_id.hex()[:16]}, {item.gpu_windows} GPU-window(s) "
        f"{_span(item.first_window_start_ns, item.last_window_end_ns)}, log indices "
        f"{item.first_log_index}..{item.last_log_index}{raised}"
    )


def _flagged(buckets: Sequence[Bucket], names: Mapping[str, str]) -> list[pb.FlaggedWindows]:
    """The buckets' flags summed by kind, node and GPU, in that order."""
    tallies: dict[tuple[str, str, str], FlagTally] = {}
    for bucket in buckets:
        for key, tally in bucket.flags.items():
            mine = tallies.get(key)
            if mine is None:
                tallies[key] = FlagTally(*tally.as_tuple())
            else:
                mine.merge(tally)
    out: list[pb.FlaggedWindows] = []
    for (kind, node_hex, uuid), tally in sorted(tallies.items()):
        flag = _WINDOW_FLAGS.get(WindowFlagKind(kind)) if kind in _KNOWN_FLAGS else None
        if flag is None:
            raise ValueError(f"buckets: unknown window flag {kind!r}")
        out.append(
            pb.FlaggedWindows(
                flag=flag,
                node_id=bytes.fromhex(node_hex),
                node_name=names.get(node_hex, ""),
                gpu_uuid=uuid,
                gpu_windows=tally.gpu_windows,
                first_log_index=tally.first_log_index,
                last_log_index=tally.last_log_index,
                first_window_start_ns=tally.first_window_start_ns,
                last_window_end_ns=tally.last_window_end_ns,
                extra_flop=str(tally.extra_flop),
            )
        )
    return out


_KNOWN_FLAGS = frozenset(kind.value for kind in WindowFlagKind)


def _spread_gap(  # noqa: PLR0917
    gap: Gap, first_start_ns: int, count: int, bucket_ns: int, period_start_ns: int, as_of_ns: int
) -> dict[int, int]:
    """A gap's counted FLOP (:func:`verifier.accounting.accounts.gap_counted_flop`) spread over the
    report's buckets in proportion to its time in each (rounded up), by bucket position. Time before
    the first whole bucket counts in the first. Late stretches count nothing here."""
    lo, hi = max(gap.start_ns, period_start_ns), min(gap.end_ns, as_of_ns)
    if count == 0 or hi <= lo or gap.late:
        # A late stretch's windows are in the buckets already (their energy with them): counting
        # its bound too would count that compute twice.
        return {}
    total = gap_counted_flop(gap)
    duration = gap.end_ns - gap.start_ns
    parts: dict[int, int] = {}
    position = max(0, (lo - first_start_ns) // bucket_ns)
    while position < count:
        edge_lo = lo if position == 0 else max(lo, first_start_ns + position * bucket_ns)
        edge_hi = min(hi, first_start_ns + (position + 1) * bucket_ns)
        if position == count - 1:
            edge_hi = hi
        if edge_hi > edge_lo:
            parts[position] = parts.get(position, 0) + _ceil_div(
                total * (edge_hi - edge_lo), duration
            )
        if edge_hi >= hi:
            break
        position += 1
    return {position: flop for position, flop in parts.items() if flop}


def _rule_gaps(rule: Rule, result: pb.RuleResult, context: _Context) -> list[int]:
    """Positions of the gaps an upper-bound compute rule counted in its worst stretch."""
    if not isinstance(rule, CumulativeFlopRule | SustainedRateRule):
        return []
    if rule.figure is not Figure.UPPER_BOUND or not context.starts:
        return []
    first = (result.worst_start_ns - context.starts[0]) // context.bucket_ns
    count = (result.worst_end_ns - result.worst_start_ns) // context.bucket_ns
    return context.gaps_in(_Run(0, first, count))[1]


# --- text ----------------------------------------------------------------------------------------


def format_time_ns(timestamp_ns: int) -> str:
    """UTC ISO 8601 with a Z, with the fraction of a second only where there is one."""
    seconds, fraction = divmod(timestamp_ns, NS_PER_S)
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += f".{fraction:09d}".rstrip("0")
    return text + "Z"


def _span(start_ns: int, end_ns: int) -> str:
    return f"{format_time_ns(start_ns)} to {format_time_ns(end_ns)}"


def _amount(value: str, unit: str) -> str:
    """A measured amount or limit with its unit, for reading."""
    if not value.isdigit():
        return f"{value} {unit}"
    number = int(value)
    match unit:
        case "flop":
            return f"{format_flop(number)} FLOP"
        case "flop_per_s":
            return f"{format_flop(number)} FLOP/s"
        case "ppm":
            return f"{format_ppm(number)} ({number} ppm)"
        case "ms":
            return format_duration_ns(number * NS_PER_MS)
        case _:
            return f"{number} {unit}"


def _enum_name(name: str, prefix: str) -> str:
    return name.removeprefix(prefix)


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent
        + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def lab_title(report: pb.ComplianceReport) -> str:
    """The lab as a reader knows it: its name, then its id; the id alone when it has no name."""
    if report.lab_name and report.lab_name != report.lab_id:
        return f"{report.lab_name} ({report.lab_id})"
    return report.lab_id


def acceptance_text(report: pb.ComplianceReport) -> str:
    """Whether the lab countersigned the policy in force, in words."""
    if report.policy_accepted:
        return (
            f"accepted by the lab's operator key (log index {report.policy_acceptance_log_index})"
        )
    return "NOT countersigned by the lab (no acceptance by its operator key is logged)"


def _settings_lines(report: pb.ComplianceReport) -> list[str]:
    if not report.HasField("verifier_settings"):
        return []
    settings = report.verifier_settings
    lines = [
        f"verifier  {settings.software_version}; accepts backends "
        f"{', '.join(settings.accept_backends) or '(none)'}; nonce "
        f"{'required' if settings.require_nonce else 'NOT required'} (lifetime "
        f"{format_duration_ns(settings.nonce_lifetime_ns)}); late after "
        f"{format_duration_ns(settings.late_after_ns)}; windows up to "
        f"{format_duration_ns(settings.max_age_ns)} old; energy contradicts utilisation beyond "
        f"{format_ppm(settings.energy_mismatch_factor_ppm)} of the upper bound, over an idle "
        f"allowance of {format_ppm(settings.idle_power_fraction_ppm)} of board power"
    ]
    simulated = [b for b in settings.accept_backends if b != "nvml"]
    if simulated:
        lines.append(
            f"WARNING   this verifier accepts {', '.join(simulated)} evidence (not real GPUs): see "
            "each node's BACKEND"
        )
    return lines


def _finality(report: pb.ComplianceReport) -> str:
    if report.provisional:
        return "PROVISIONAL: the period is open or its last evidence may still arrive"
    return "final: the period has closed and its evidence had the grace to arrive"


def render_text(
    report: pb.ComplianceReport, *, show_time: Callable[[int], str] = format_time_ns
) -> str:
    """The report as a terminal table: verdict and reasons, each rule (measured against limit,
    outcome, evidence), coverage, gaps, totals with their methods, findings and nodes. FLOP
    figures are exact, followed by scientific notation rounded down. ``show_time`` prints the
    period and the gaps' times (UTC by default); reasons and rule summaries are the report's own
    words and stay in UTC."""
    verdict = _enum_name(pb.Verdict.Name(report.verdict), "VERDICT_")
    lines = [
        f"pausewatch compliance report for lab {lab_title(report)}",
        f"period    {show_time(report.period_start_ns)} to {show_time(report.period_end_ns)} "
        f"(evidence up to {show_time(report.as_of_ns)})",
        f"policy    {report.policy_id} version {report.policy_version} "
        f"(sha256 {report.policy_digest.hex()}); {acceptance_text(report)}",
        f"log size  {report.tree_size}; GPU table version {report.table_version}; buckets of "
        f"{format_duration_ns(report.bucket_ns)}",
        *_settings_lines(report),
        "",
        f"VERDICT   {verdict} ({_finality(report)})",
    ]
    lines += [f"  - {reason}" for reason in report.reasons]
    warnings = data_quality_warnings(report)
    if warnings:
        lines += ["", "DATA QUALITY"] + [f"  ! {warning}" for warning in warnings]

    lines += ["", f"rules ({len(report.rules)})"]
    if report.rules:
        rows = [["RULE", "KIND", "MEASURED", "LIMIT", "OUTCOME"]]
        for result in report.rules:
            rows.append(
                [
                    result.rule_id,
                    _enum_name(pb.RuleKind.Name(result.kind), "RULE_KIND_").lower(),
                    _amount(result.measured, result.unit),
                    _amount(result.limit, result.unit),
                    _enum_name(pb.RuleOutcome.Name(result.outcome), "RULE_OUTCOME_"),
                ]
            )
        lines += _table(rows)
        for result in report.rules:
            lines.append(f"  {result.rule_id}: {result.summary}")
            if result.evidence_log_indices:
                shown = ", ".join(str(i) for i in result.evidence_log_indices[:10])
                more = len(result.evidence_log_indices) - 10
                lines.append(
                    f"    evidence (log indices): {shown}{f' and {more} more' if more > 0 else ''}"
                )

    coverage = report.coverage
    lines += [
        "",
        f"coverage  {coverage.attested_gpu_ms} of {coverage.declared_gpu_ms} declared GPU-ms "
        f"attested ({format_ppm(coverage.ratio_ppm)})",
    ]

    lines += ["", f"gaps ({len(report.gaps)})"]
    if report.gaps:
        rows = [
            [
                "NODE",
                "FROM",
                "TO",
                "LENGTH",
                "STATE",
                "ENERGY BOUND",
                "TIME BOUND",
                "COUNTED",
                "IN RULES",
                "FINDING",
            ]
        ]
        for item in report.gaps:
            gap = item.gap
            bound = (
                f"{format_flop(int(gap.energy_bound_flop))} FLOP ({gap.energy_mj} mJ)"
                if gap.energy_bounded
                else "unbounded"
            )
            rows.append(
                [
                    item.node_name or item.node_id.hex()[:16],
                    show_time(gap.gap_start_ns),
                    show_time(gap.gap_end_ns),
                    format_duration_ns(gap.gap_end_ns - gap.gap_start_ns),
                    ("open" if item.open else "closed") + (", late evidence" if item.late else ""),
                    bound,
                    f"{format_flop(int(gap.time_bound_flop))} FLOP",
                    f"{format_flop(int(item.counted_flop or '0'))} FLOP",
                    ", ".join(item.counted_in_rule_ids) or "-",
                    str(item.finding_log_index) if item.has_finding else "-",
                ]
            )
        lines += _table(rows)

    lines += ["", f"flagged GPU-windows ({len(report.flagged)})"]
    if report.flagged:
        rows = [["FLAG", "NODE", "GPU", "WINDOWS", "FROM", "TO", "LOG INDICES", "ADDED"]]
        for flagged in report.flagged:
            rows.append(
                [
                    _enum_name(pb.WindowFlag.Name(flagged.flag), "WINDOW_FLAG_").lower(),
                    flagged.node_name or flagged.node_id.hex()[:16],
                    flagged.gpu_uuid,
                    str(flagged.gpu_windows),
                    format_time_ns(flagged.first_window_start_ns),
                    format_time_ns(flagged.last_window_end_ns),
                    f"{flagged.first_log_index}..{flagged.last_log_index}",
                    f"{format_flop(int(flagged.extra_flop or '0'))} FLOP",
                ]
            )
        lines += _table(rows)

    totals = report.totals
    lines += [
        "",
        "totals",
        f"  upper bound       {format_flop(int(totals.upper_bound_flop or '0'))} FLOP",
        f"    {totals.upper_bound_method}",
        f"  central estimate  {format_flop(int(totals.central_estimate_flop or '0'))} FLOP",
        f"    {totals.central_estimate_method}",
        f"  energy            {format_flop(int(totals.energy_flop or '0'))} FLOP",
        f"    {totals.energy_method}",
        f"  energy used {totals.energy_mj} mJ; busy {totals.busy_gpu_ms} GPU-ms",
        f"  of the upper bound, {format_flop(int(totals.raised_flop or '0'))} FLOP raised by "
        f"energy evidence; gaps counted at their bound add "
        f"{format_flop(int(totals.gap_bound_flop or '0'))} FLOP in upper-bound rules",
    ]

    lines += ["", f"findings ({len(report.findings)})"]
    for logged_finding in report.findings:
        finding = logged_finding.finding
        kind = _enum_name(findings_pb2.FindingKind.Name(finding.kind), "FINDING_KIND_")
        severity = _enum_name(findings_pb2.Severity.Name(finding.severity), "SEVERITY_")
        lines.append(f"  #{logged_finding.log_index} {kind} {severity}: {finding.summary}")

    lines += ["", f"nodes ({len(report.nodes)})"]
    if report.nodes:
        headers = ["NODE", "ID", "ATTESTATIONS", "SEQ", "UPPER BOUND", "ROOTED", "BACKEND"]
        rows = [[*headers, "AGENT", "STATE"]]
        for node in report.nodes:
            state = ", ".join(
                word for word, on in (("flagged", node.flagged), ("revoked", node.revoked)) if on
            )
            rows.append(
                [
                    node.node_name,
                    node.node_id.hex()[:16],
                    str(node.attestations),
                    f"{node.first_seq}..{node.last_seq}" if node.attestations else "-",
                    f"{format_flop(int(node.upper_bound_flop or '0'))} FLOP",
                    rooting_text(node),
                    ",".join(node.sampler_backends) or "-",
                    ",".join(
                        f"{version or '?'}@{digest.hex()[:12]}"
                        for version, digest in zip(
                            node.agent_versions, node.agent_digests, strict=False
                        )
                    )
                    or "-",
                    state or "active",
                ]
            )
        lines += _table(rows)
    if report.sites:
        lines += ["", f"sites ({len(report.sites)})"]
        rows = [["SITE", "METERED", "IT", "ATTESTED GPU", "UNEXPLAINED", "PAST SLACK", "BOUND"]]
        for site in report.sites:
            rows.append(
                [
                    site.site_id,
                    _kwh(site.metered_mj),
                    _kwh(site.it_mj),
                    _kwh(site.attested_gpu_mj),
                    f"{_kwh(site.unexplained_mj)} ({site.unexplained_ppm / 10_000:.3g} %)",
                    _kwh(site.excess_mj),
                    f"{format_flop(int(site.bound_flop or '0'))} FLOP",
                ]
            )
        lines += _table(rows)
        for site in report.sites:
            if site.unmetered_ns:
                lines.append(
                    f"  {site.site_id}: {format_duration_ns(site.unmetered_ns)} without a reading "
                    "from every meter (no bound drawn there)"
                )
    return "\n".join(lines) + "\n"


def _kwh(energy_mj: int) -> str:
    return f"{energy_mj / 3_600_000_000:.6g} kWh"
