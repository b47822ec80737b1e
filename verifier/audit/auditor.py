"""Audits on the server: compliance reports from the stored rollups, findings, and the inputs of an
evidence bundle, all read from one consistent snapshot of the store.

    auditor = Auditor(core)
    report = auditor.report("lab-a", period_start_ns, period_end_ns)
    findings = auditor.findings("lab-a", after_index=-1)

A report costs time in proportion to the buckets of the period, the lab's nodes and their gaps,
not to the attestations stored: compute totals and rolling rules come from the buckets written at
ingest, gaps from the gap rows plus two window look-ups per node (ADR 0001), and each node's
figures from its hourly rollups plus the rows of the two partial hours at the period's edges
(``bench/bench_audit.py`` measures it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pausewatch.v1 import audit_pb2 as pb
from pausewatch.v1 import findings_pb2 as fpb
from pausewatch.v1 import registry_pb2 as rpb

from attest import __version__, compute
from attest.attestation import verify_attestation
from attest.envelope import StaticKeyring, parse_envelope
from attest.errors import ConfigError
from attest.ids import NodeId, is_valid_lab_id
from attest.keys import key_id_from_raw, public_key_from_raw
from verifier.accounting import accounts, evaluation
from verifier.accounting.accounts import Bucket, Figure, Gap, WindowEdge
from verifier.accounting.policy import Policy, load_policy_bytes, record_in_force
from verifier.accounting.policy_acceptance import parse_acceptance
from verifier.audit.bundle import export_bundle
from verifier.audit.site_report import site_inputs_from_store
from verifier.config import IngestConfig
from verifier.errors import InvalidRequestError, NotFoundError
from verifier.store.base import AttestationRow, EntryKind, GapRow, LabRow, NodeRow, ReadView
from verifier.store.core import VerifierCore
from verifier.tpm import tpm_identity

log = logging.getLogger(__name__)

MAX_PERIOD_NS = 400 * 86_400 * 10**9
LATEST_PERIOD_END_NS = 7_258_118_400 * 10**9
"""2200-01-01T00:00:00Z: a period must end by then. A report's times are signed 64-bit
nanoseconds (they end in 2262), and its buckets and edges are rounded up from the period's."""
FINDINGS_PAGE = 10_000


class StoreEvidence:
    """An :class:`~verifier.accounting.evaluation.EvidenceIndex` over the store's attestation
    rows."""

    def __init__(self, view: ReadView, lab_id: str) -> None:
        self._view = view
        self._lab_id = lab_id

    def top_contributors(self, start_ns: int, end_ns: int, figure: Figure, limit: int) -> list[int]:
        return self._view.top_contributors(self._lab_id, start_ns, end_ns, figure.value, limit)


def acceptance_index(view: ReadView, lab_id: str, policy_digest: bytes) -> int | None:
    """Log index of the lab operator's first logged acceptance of the policy with this digest
    (each was checked against the operator key when logged), or None."""
    for entry in view.entries_of_kind_for_lab(
        lab_id, [EntryKind.POLICY_ACCEPTANCE], view.tree_size()
    ):
        body = parse_acceptance(parse_envelope(entry.entry).payload)
        if body.lab_id == lab_id and bytes(body.policy_sha256) == policy_digest:
            return entry.index
    return None


def verifier_settings(ingest: IngestConfig) -> pb.VerifierSettings:
    """What this verifier requires of evidence, for every report and bundle."""
    return pb.VerifierSettings(
        accept_backends=sorted(ingest.accept_backends),
        require_nonce=ingest.require_nonce,
        nonce_lifetime_ns=ingest.nonce_lifetime_ns,
        late_after_ns=ingest.late_after_ns,
        max_age_ns=ingest.max_age_ns,
        max_clock_skew_ns=ingest.max_clock_skew_ns,
        gap_tolerance_ns=ingest.gap_tolerance_ns,
        open_gap_grace_ns=ingest.open_gap_grace_ns,
        software_version=f"pausewatch {__version__}",
        table_version=compute.TABLE_VERSION,
        energy_mismatch_factor_ppm=ingest.energy_mismatch_factor_ppm,
        idle_power_fraction_ppm=ingest.idle_power_fraction_ppm,
    )


def gap_from_row(row: GapRow) -> Gap:
    """The :class:`~verifier.accounting.accounts.Gap` a stored gap row stands for."""
    return Gap(
        node_id=NodeId(row.node_id),
        start_ns=row.start_ns,
        end_ns=row.end_ns,
        seq_before=row.seq_before,
        seq_after=row.seq_after,
        energy_bounded=row.energy_bounded,
        energy_mj=row.energy_mj if row.energy_bounded else 0,
        energy_bound_flop=row.energy_bound_flop if row.energy_bounded else 0,
        time_bound_flop=row.time_bound_flop,
        open=False,
        log_index_before=row.before_log_index,
        log_index_after=row.after_log_index,
        gpu_models_before=row.gpu_models,
    )


def enrolled_gpu_models(enrollment_payload: bytes) -> tuple[str, ...]:
    """The GPU models a node enrolled with (its ``NodeEnrollment``, as logged)."""
    return tuple(g.model for g in rpb.NodeEnrollment.FromString(enrollment_payload).gpus)


def check_period(period_start_ns: int, period_end_ns: int) -> None:
    """INVALID_ARGUMENT for a period no report or bundle can be made of, before anything is read."""
    if period_start_ns <= 0 or period_end_ns <= period_start_ns:
        raise InvalidRequestError("the period must have a positive start and end after its start")
    if period_end_ns > LATEST_PERIOD_END_NS:
        raise InvalidRequestError(
            f"the period must end by 2200-01-01T00:00:00Z (period_end_ns at most "
            f"{LATEST_PERIOD_END_NS})"
        )
    if period_end_ns - period_start_ns > MAX_PERIOD_NS:
        raise InvalidRequestError("the period is longer than 400 days; ask for it in parts")


class Auditor:
    """Answers audits from the store."""

    def __init__(self, core: VerifierCore) -> None:
        self.core = core

    def require_lab(self, lab_id: str) -> LabRow:
        if not is_valid_lab_id(lab_id):
            raise InvalidRequestError("lab_id is not a valid lab id")
        lab = self.core.store.get_lab(lab_id)
        if lab is None:
            raise NotFoundError(f"lab {lab_id!r} is not registered with this verifier")
        return lab

    def report(self, lab_id: str, period_start_ns: int, period_end_ns: int) -> pb.ComplianceReport:
        """The compliance report of a lab for ``[period_start_ns, period_end_ns)``."""
        self.require_lab(lab_id)
        check_period(period_start_ns, period_end_ns)
        now = self.core.clock_ns()
        with self.core.store.snapshot() as view:
            return self.report_from(view, lab_id, period_start_ns, period_end_ns, now)

    def report_from(
        self,
        view: ReadView,
        lab_id: str,
        period_start_ns: int,
        period_end_ns: int,
        now_ns: int,
        *,
        compute_rules_only: bool = False,
    ) -> pb.ComplianceReport:
        """The report computed from one read view (the bundle export uses the same view).

        ``compute_rules_only`` leaves out the findings, which only the verdict needs: the policy
        monitor's cheaper form, whose compute-rule results are the full report's (the nodes stay:
        their gaps count in upper-bound rules)."""
        ingest = self.core.config.ingest
        as_of = max(period_start_ns, min(period_end_ns, now_ns))
        if as_of == period_start_ns:
            as_of = period_start_ns + 1  # a period that starts in the future: nothing to count
        policy = self.policy(view, lab_id, as_of)
        bucket_ns = ingest.bucket_ns
        first_bucket = accounts.bucket_start(period_start_ns, bucket_ns)
        buckets = {
            start: Bucket.from_row(row)
            for start, row in view.buckets(lab_id, first_bucket, period_end_ns).items()
        }
        inventory = [
            evaluation.InventoryVersion(
                version=row.version,
                effective_from_ns=row.effective_from_ns,
                gpu_uuids=frozenset(row.gpu_uuids),
            )
            for row in view.inventory(lab_id)
        ]
        # Nodes even for the compute rules: their gaps count in upper-bound rules at their bound.
        nodes = [
            timeline
            for node in view.list_nodes(lab_id)
            if (timeline := self._timeline(view, node, period_start_ns, as_of)) is not None
        ]
        findings = (
            []
            if compute_rules_only
            else self.findings_from(view, lab_id, since_ns=period_start_ns, until_ns=period_end_ns)
        )
        return evaluation.evaluate(
            policy,
            lab_id=lab_id,
            period_start_ns=period_start_ns,
            period_end_ns=period_end_ns,
            as_of_ns=as_of,
            bucket_ns=bucket_ns,
            buckets=buckets,
            inventory=inventory,
            nodes=nodes,
            findings=findings,
            evidence=StoreEvidence(view, lab_id),
            tree_size=view.tree_size(),
            table_version=compute.TABLE_VERSION,
            verifier_settings=verifier_settings(self.core.config.ingest),
            policy_acceptance_log_index=acceptance_index(view, lab_id, policy.digest),
            evaluated_at_ns=max(now_ns, as_of),
            open_gap_grace_ns=ingest.open_gap_grace_ns,
            lab_name=lab.name if (lab := view.get_lab(lab_id)) is not None else "",
            site_inputs=site_inputs_from_store(view, lab_id, first_bucket, as_of),
        )

    def policy(self, view: ReadView, lab_id: str, at_ns: int) -> Policy:
        rows = view.policies(lab_id)
        row = record_in_force([(r.effective_from_ns, r) for r in rows], at_ns)
        if row is None:
            raise NotFoundError(f"no policy is registered for lab {lab_id!r}")
        try:
            return load_policy_bytes(row.policy_toml, f"policy {row.policy_id} v{row.version}")
        except ConfigError:  # it was valid when logged; a newer parser must not silently differ
            log.exception("logged policy %s v%d no longer loads", row.policy_id, row.version)
            raise

    def _edge(self, view: ReadView, row: AttestationRow | None, node: NodeRow) -> WindowEdge | None:
        if row is None:
            return None
        entry = view.get_entry(row.log_index)
        if entry is None:
            raise RuntimeError(f"attestation row points at missing log entry {row.log_index}")
        ring = StaticKeyring()
        ring.add(public_key_from_raw(node.public_key))
        return accounts.window_edge(verify_attestation(entry.entry, ring), row.log_index)

    def _timeline(
        self, view: ReadView, node: NodeRow, period_start_ns: int, as_of_ns: int
    ) -> evaluation.NodeTimeline | None:
        span = accounts.node_active_span(
            period_start_ns, as_of_ns, node.enrolled_at_ns, node.revoked_at_ns
        )
        if span is None:
            return None
        span_start, span_end = span
        ingest = self.core.config.ingest
        node_id = NodeId(node.node_id)
        interior = [
            gap_from_row(r) for r in view.gaps_overlapping(node.node_id, span_start, span_end)
        ]
        first = self._edge(view, view.first_window_ending_after(node.node_id, span_start), node)
        last = self._edge(view, view.last_window_starting_before(node.node_id, span_end), node)
        gaps = accounts.node_gaps_from_summary(
            node_id,
            span_start,
            span_end,
            interior,
            first_window_ending_after_start=first,
            last_window_starting_before_end=last,
            tolerance_ns=ingest.gap_tolerance_ns,
            grace_ns=ingest.open_gap_grace_ns,
            enrolled_gpu_models=enrolled_gpu_models(node.enrollment_payload),
        )
        count, first_seq, last_seq, upper = view.node_attestation_stats(
            node.node_id, period_start_ns, as_of_ns
        )
        return evaluation.NodeTimeline(
            node_id=node_id,
            node_name=node.name,
            enrolled_at_ns=node.enrolled_at_ns,
            revoked_at_ns=node.revoked_at_ns,
            flagged=node.state == rpb.NODE_STATE_FLAGGED
            or view.fork_evidence_count(node.node_id) > 0,
            revoked=node.state == rpb.NODE_STATE_REVOKED,
            attestations=count,
            first_seq=first_seq or 0,
            last_seq=last_seq or 0,
            upper_bound_flop=upper,
            gaps=tuple(gaps),
            tpm_id=_tpm_id(node.enrollment_payload),
            provenance=accounts.edges_in_span(first, last, span_start, span_end),
            enrolled_gpus=len(enrolled_gpu_models(node.enrollment_payload)),
        )

    def findings(
        self,
        lab_id: str,
        *,
        after_index: int = -1,
        kinds: Sequence[int] = (),
        since_ns: int = 0,
        until_ns: int = 0,
        limit: int = 100,
    ) -> list[pb.LoggedFinding]:
        self.require_lab(lab_id)
        return self.findings_from(
            self.core.store,
            lab_id,
            after_index=after_index,
            kinds=kinds,
            since_ns=since_ns,
            until_ns=until_ns,
            limit=limit,
        )

    @staticmethod
    def findings_from(
        view: ReadView,
        lab_id: str,
        *,
        after_index: int = -1,
        kinds: Sequence[int] = (),
        since_ns: int = 0,
        until_ns: int = 0,
        limit: int | None = None,
    ) -> list[pb.LoggedFinding]:
        """Findings about a lab by log index; all of them when ``limit`` is None."""
        out: list[pb.LoggedFinding] = []
        cursor = after_index
        while True:
            page = FINDINGS_PAGE if limit is None else min(FINDINGS_PAGE, limit - len(out))
            rows = view.findings(
                lab_id,
                after_index=cursor,
                kinds=kinds,
                since_ns=since_ns,
                until_ns=until_ns,
                limit=page,
            )
            out += [
                pb.LoggedFinding(log_index=r.log_index, finding=fpb.Finding.FromString(r.finding))
                for r in rows
            ]
            if len(rows) < page or (limit is not None and len(out) >= limit):
                return out
            cursor = rows[-1].log_index

    def list_labs(self, lab_ids: Sequence[str] | None = None) -> list[pb.LabSummary]:
        """Every registered lab (or those of ``lab_ids``), with the policy in force now."""
        now = self.core.clock_ns()
        out: list[pb.LabSummary] = []
        with self.core.store.snapshot() as view:
            for lab in sorted(view.list_labs(), key=lambda row: row.lab_id):
                if lab_ids is not None and lab.lab_id not in lab_ids:
                    continue
                rows = view.policies(lab.lab_id)
                policy = record_in_force([(r.effective_from_ns, r) for r in rows], now)
                out.append(
                    pb.LabSummary(
                        lab_id=lab.lab_id,
                        name=lab.name,
                        operator_key_id=key_id_from_raw(lab.operator_public_key),
                        record_log_index=lab.record_log_index,
                        policy_id=policy.policy_id if policy is not None else "",
                        policy_version=policy.version if policy is not None else 0,
                        policy_digest=policy.digest if policy is not None else b"",
                        nodes=len(view.list_nodes(lab.lab_id)),
                    )
                )
        return out

    def export_bundle(self, lab_id: str, period_start_ns: int, period_end_ns: int) -> bytes:
        self.require_lab(lab_id)
        check_period(period_start_ns, period_end_ns)
        return export_bundle(self, lab_id, period_start_ns, period_end_ns)


def _tpm_id(enrollment_payload: bytes) -> bytes:
    identity = tpm_identity(rpb.NodeEnrollment.FromString(enrollment_payload))
    return identity.tpm_id if identity is not None else b""
