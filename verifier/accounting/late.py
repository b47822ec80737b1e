"""Late evidence: windows that reached the verifier long after they ended, or whose nonce is too old
to show they were signed near their time. Ingest grades each accepted window and logs a
LATE_EVIDENCE finding for every late one; reports count them as the policy says (by default like
a gap: not covered, part of the node's gaps, bounded by the energy their counters show).

    lateness = grade(now_ns, body.window_end_ns, nonce_stale_ms, ingest)    # None: on time
    finding = late_finding(lab_id=..., att=..., log_index=..., ...)        # logged at ingest
    stretches = late_stretches(findings, period_start_ns, as_of_ns)         # in a report

Why both tests: a nonce shows the window was signed after the nonce was issued, and an agent that
is connected refreshes its nonce every few minutes, so a window whose nonce is older than the
nonce lifetime at its end was signed by a node out of touch with the verifier; a window that
arrives long after its end may have been signed at any time before it arrived. Neither shows when
a window was really signed, so neither kind is trusted like evidence that arrived in time. The
verifier decides lateness on arrival only: a bundle carries the findings (signed by the log key),
not the arrival times, so auditors take the grading on the verifier's word, as they take its
freshness checks (docs/threat-model.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from pausewatch.v1 import attestation_pb2 as apb
from pausewatch.v1 import audit_pb2
from pausewatch.v1 import findings_pb2 as fpb

from attest import compute
from attest.attestation import VerifiedAttestation
from attest.ids import NodeId
from verifier.accounting import accounts
from verifier.accounting.accounts import Gap

NS_PER_MS = 1_000_000


class LateLimits(Protocol):
    """The two limits grading reads (the verifier's ``[ingest]`` settings, ``IngestConfig``, have
    them), named here so that this pure module does not import the config, which imports the
    accounts."""

    @property
    def late_after_ns(self) -> int: ...

    @property
    def nonce_lifetime_ns(self) -> int: ...


class LateReason(StrEnum):
    """Why a window is late evidence."""

    ARRIVED_LATE = "arrived_late"
    """It reached the verifier more than ``late_after_s`` after its end."""
    STALE_NONCE = "stale_nonce"
    """Its nonce was issued more than ``nonce_lifetime_s`` before its end."""


@dataclass(frozen=True, slots=True)
class Lateness:
    """How late one accepted window is: the reason that decides the finding's figures, how late
    by that measure, and the limit it passed (ms)."""

    reason: LateReason
    late_ms: int
    limit_ms: int
    arrival_ms: int
    """Arrival time minus the window's end, whatever the reason (negative: early, by the skew)."""


def grade(
    now_ns: int, window_end_ns: int, nonce_age_ns: int | None, ingest: LateLimits
) -> Lateness | None:
    """The lateness of a window accepted at ``now_ns``, or ``None`` if it is on time.

    ``nonce_age_ns`` is the window's end minus its nonce's issue time (``None`` without a nonce).
    Arrival decides first: it is what an honest outage's back-fill shows."""
    arrival_ns = now_ns - window_end_ns
    arrival_ms = arrival_ns // NS_PER_MS
    if arrival_ns > ingest.late_after_ns:
        return Lateness(
            LateReason.ARRIVED_LATE, arrival_ms, ingest.late_after_ns // NS_PER_MS, arrival_ms
        )
    if nonce_age_ns is not None and nonce_age_ns > ingest.nonce_lifetime_ns:
        return Lateness(
            LateReason.STALE_NONCE,
            nonce_age_ns // NS_PER_MS,
            ingest.nonce_lifetime_ns // NS_PER_MS,
            arrival_ms,
        )
    return None


def late_finding(
    *,
    lab_id: str,
    att: VerifiedAttestation,
    log_index: int,
    declared_uuids: frozenset[str],
    lateness: Lateness,
    now_ns: int,
) -> fpb.Finding:
    """The LATE_EVIDENCE finding of one accepted window: its time as a gap (energy-bounded when
    every GPU's counter was usable and did not restart in it), the GPU-ms it attests for
    declared GPUs, and how late it was."""
    body = att.body
    figures = accounts.gpu_window_figures(att, log_index, declared_uuids)
    bounded = bool(body.gpus) and all(
        gpu.energy_counter_state == apb.ENERGY_COUNTER_STATE_OK for gpu in body.gpus
    )
    energy_mj = sum(f.energy_mj for f in figures) if bounded else 0
    energy_flop = (
        sum(compute.energy_bound_flop(f.model, f.energy_mj) for f in figures) if bounded else 0
    )
    window_ns = body.window_end_ns - body.window_start_ns
    time_flop = accounts.time_bound_for([f.model for f in figures], window_ns)
    attested_ms = sum(f.attested_ms for f in figures if f.declared)
    if lateness.reason is LateReason.ARRIVED_LATE:
        why = (
            f"arrived {lateness.late_ms // 1000} s after its window ended "
            f"(late after {lateness.limit_ms // 1000} s)"
        )
    else:
        why = (
            f"carries a nonce issued {lateness.late_ms // 1000} s before its window ended "
            f"(nonce lifetime {lateness.limit_ms // 1000} s)"
        )
    return fpb.Finding(
        kind=fpb.FINDING_KIND_LATE_EVIDENCE,
        severity=fpb.SEVERITY_WARNING,
        lab_id=lab_id,
        node_id=bytes(att.node_id),
        detected_at_ns=now_ns,
        period_start_ns=body.window_start_ns,
        period_end_ns=body.window_end_ns,
        evidence_log_indices=[log_index],
        summary=f"late evidence: seq {body.seq} {why}",
        gap=fpb.GapDetail(
            gap_start_ns=body.window_start_ns,
            gap_end_ns=body.window_end_ns,
            seq_before=body.seq,
            seq_after=body.seq,
            energy_bounded=bounded,
            energy_mj=energy_mj,
            energy_bound_flop=str(energy_flop),
            time_bound_flop=str(time_flop),
            attested_gpu_ms=attested_ms,
        ),
        measured=str(lateness.late_ms),
        limit=str(lateness.limit_ms),
        unit="ms",
    )


# --- in reports ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LateWindow:
    """One late window as a report sees it (from its LATE_EVIDENCE finding)."""

    node_id: NodeId
    seq: int
    log_index: int
    start_ns: int
    end_ns: int
    energy_bounded: bool
    energy_mj: int
    energy_bound_flop: int
    time_bound_flop: int
    attested_gpu_ms: int


def late_windows(findings: Iterable[audit_pb2.LoggedFinding]) -> list[LateWindow]:
    """The late windows named by ``findings`` (others are ignored), once each."""
    out: dict[tuple[bytes, int], LateWindow] = {}
    for item in findings:
        finding = item.finding
        if finding.kind != fpb.FINDING_KIND_LATE_EVIDENCE or not finding.evidence_log_indices:
            continue
        detail = finding.gap
        if detail.gap_end_ns <= detail.gap_start_ns:
            continue
        key = (bytes(finding.node_id), detail.seq_after)
        out.setdefault(
            key,
            LateWindow(
                node_id=NodeId(bytes(finding.node_id)),
                seq=detail.seq_after,
                log_index=finding.evidence_log_indices[0],
                start_ns=detail.gap_start_ns,
                end_ns=detail.gap_end_ns,
                energy_bounded=detail.energy_bounded,
                energy_mj=detail.energy_mj,
                energy_bound_flop=int(detail.energy_bound_flop or "0"),
                time_bound_flop=int(detail.time_bound_flop or "0"),
                attested_gpu_ms=detail.attested_gpu_ms,
            ),
        )
    return sorted(out.values(), key=lambda w: (bytes(w.node_id), w.start_ns))


def late_gap(window: LateWindow, span_start_ns: int, span_end_ns: int) -> Gap | None:
    """A late window as a gap of its node, cut to ``[span_start_ns, span_end_ns)``; a cut
    window keeps only its part of the time bound (rounded up) and no energy bound."""
    start = max(window.start_ns, span_start_ns)
    end = min(window.end_ns, span_end_ns)
    if end <= start:
        return None
    whole = (start, end) == (window.start_ns, window.end_ns)
    bounded = window.energy_bounded and whole
    duration = window.end_ns - window.start_ns
    time_flop = (
        window.time_bound_flop if whole else -(-window.time_bound_flop * (end - start) // duration)
    )
    return Gap(
        node_id=window.node_id,
        start_ns=start,
        end_ns=end,
        seq_before=window.seq,
        seq_after=window.seq,
        energy_bounded=bounded,
        energy_mj=window.energy_mj if bounded else 0,
        energy_bound_flop=window.energy_bound_flop if bounded else 0,
        time_bound_flop=time_flop,
        open=False,
        log_index_before=window.log_index,
        log_index_after=window.log_index,
        late=True,
    )


def join_touching(gaps: Sequence[Gap]) -> list[Gap]:
    """One node's gaps with those that touch (one ends where the next starts, as consecutive late
    windows, or a late window and the gap before it, do) joined into one stretch: reports list
    late windows joined, and the max-gap rule measures a late stretch with the gaps it touches."""
    out: list[Gap] = []
    for gap in sorted(gaps, key=lambda g: (g.start_ns, g.end_ns)):
        if out and gap.start_ns <= out[-1].end_ns:
            last = out[-1]
            bounded = last.energy_bounded and gap.energy_bounded
            out[-1] = Gap(
                node_id=last.node_id,
                start_ns=last.start_ns,
                end_ns=max(last.end_ns, gap.end_ns),
                seq_before=last.seq_before,
                seq_after=gap.seq_after,
                energy_bounded=bounded,
                energy_mj=last.energy_mj + gap.energy_mj if bounded else 0,
                energy_bound_flop=last.energy_bound_flop + gap.energy_bound_flop if bounded else 0,
                time_bound_flop=last.time_bound_flop + gap.time_bound_flop,
                open=gap.open,
                log_index_before=last.log_index_before,
                log_index_after=gap.log_index_after,
                gpu_models_before=last.gpu_models_before,
                late=last.late or gap.late,
            )
        else:
            out.append(gap)
    return out


def late_attested_ms_by_bucket(
    windows: Iterable[LateWindow], starts: Sequence[int], bucket_ns: int
) -> dict[int, int]:
    """The declared GPU-ms late windows attest, by the report bucket their window starts in (a
    window counts in the bucket of its start, as in the accounts)."""
    wanted = set(starts)
    out: dict[int, int] = {}
    for window in windows:
        key = accounts.bucket_start(window.start_ns, bucket_ns)
        if key in wanted:
            out[key] = out.get(key, 0) + window.attested_gpu_ms
    return out
