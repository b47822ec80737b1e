"""The ingest pipeline: every envelope of a batch verified, chained, logged and accounted, and a
receipt for each.

    ingestor = Ingestor(core)
    result = ingestor.submit(raw_envelopes)       # one transaction for the whole batch
    result.receipts[0].status, result.tree_size

Per envelope, in order: size limit, canonical envelope, payload type, enrolled key, signature
over the received bytes, body parse and validation — stateless, in the submitting stream's thread
(Ed25519 verification releases the GIL, so concurrent streams verify in parallel) — then, in one
serial pass under the write lock: seen before (an idempotent duplicate), revocation, the node's
lab, accepted sampler backend, timestamps within the clock skew, GPUs in the enrolled inventory,
the nonce, and the chain (next, gap, fork, rollback); then the log append, the accounts, gaps and
findings, among them LATE_EVIDENCE for a window that arrived late or with a stale nonce. All of a
batch's effects commit together or not at all (batches waiting for the write path share one
transaction: group commit); if the commit fails every envelope not already rejected gets
REJECT_REASON_UNAVAILABLE and may be resent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pausewatch.v1 import attestation_pb2 as apb
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import findings_pb2 as fpb

from attest.attestation import VerifiedAttestation, attestation_from_verified
from attest.chain import ChainHead, Link, classify
from attest.envelope import PayloadType, parse_envelope, verify_parsed_envelope
from attest.errors import (
    BodyError,
    EnvelopeError,
    EnvelopeTooLargeError,
    SignatureError,
    UnknownKeyError,
)
from attest.ids import Digest, NodeId
from verifier.accounting import accounts, late
from verifier.server.registry import flag_node
from verifier.store.base import AttestationRow, EntryKind, GapRow
from verifier.store.core import NodeHead, NodeState, VerifierCore, WriteContext
from verifier.store.log import PendingEntry
from verifier.tpm import QuoteState, check_window_quote, status_name, tpm_state_key

log = logging.getLogger(__name__)

HOUR_NS = 3_600 * 10**9
DAY_NS = 24 * HOUR_NS
_BACKEND_NAMES = {
    apb.SAMPLER_BACKEND_NVML: "nvml",
    apb.SAMPLER_BACKEND_SIM: "sim",
    apb.SAMPLER_BACKEND_REPLAY: "replay",
}
_SAMPLER_EVENT_KINDS = frozenset(
    {
        apb.EVENT_KIND_GPU_LOST,
        apb.EVENT_KIND_GPU_APPEARED,
        apb.EVENT_KIND_LIBRARY_MISMATCH,
        apb.EVENT_KIND_LIBRARY_NOT_FOUND,
        apb.EVENT_KIND_NVML_ERROR,
        apb.EVENT_KIND_CLOCK_JUMP,
    }
)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Stage-one outcome: the envelope is rejected (and maybe worth a finding)."""

    reason: int
    detail: str
    node_id: bytes = b""
    seq: int | None = None
    bad_signature: bool = False
    raw: bytes = b""


@dataclass(frozen=True, slots=True)
class Candidate:
    """Stage-one outcome: authentic and well-formed; the serial stage decides the rest."""

    attestation: VerifiedAttestation
    revoked: bool


@dataclass(slots=True)
class SubmitResult:
    receipts: list[spb.Receipt]
    tree_size: int


@dataclass
class _Job:
    """One submitted batch on its way through the group commit."""

    raws: Sequence[bytes]
    checked: list[Rejection | Candidate] | None
    """Stage one's outcomes; None until checked (a small batch is checked in its commit job)."""
    result: SubmitResult | None = None


CheckedBatch = _Job
"""A batch through stage one, waiting for :meth:`Ingestor.commit`; then ``result`` is set."""


@dataclass
class _Batch:
    """What the serial stage accumulates before writing it in bulk."""

    attestations: list[AttestationRow] = field(default_factory=list)
    gaps: list[GapRow] = field(default_factory=list)
    buckets: dict[str, dict[int, accounts.Bucket]] = field(default_factory=dict)
    inventories: dict[str, list[tuple[int, frozenset[str]]]] = field(default_factory=dict)
    """Per lab, its inventory versions in order: (effective from, the declared GPUs)."""
    digests: dict[bytes, int] = field(default_factory=dict)
    edges: dict[bytes, accounts.WindowEdge] = field(default_factory=dict)
    stored_at: dict[tuple[bytes, int], bytes] = field(default_factory=dict)
    claims: dict[str, int] = field(default_factory=dict)
    heads: dict[bytes, tuple[int, bytes, int, int]] = field(default_factory=dict)


def _outcomes(job: _Job) -> list[Rejection | Candidate]:
    if job.checked is None:
        raise RuntimeError("a batch reached the serial stage unchecked")
    return job.checked


def _ignore_stage(_stage: str, _seconds: float) -> None:
    return None


def _reject(reason: int, detail: str, **kwargs: object) -> Rejection:
    return Rejection(reason=reason, detail=detail, **kwargs)  # type: ignore[arg-type]


class Ingestor:
    """Verifies and records batches of attestation envelopes."""

    def __init__(self, core: VerifierCore) -> None:
        self.core = core
        self.config = core.config
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, core.config.ingest.verify_threads), thread_name_prefix="verify"
        )
        self._edges: dict[bytes, accounts.WindowEdge] = {}
        self._inventories: dict[str, tuple[int, list[tuple[int, frozenset[str]]]]] = {}
        self._pending: list[_Job] = []
        self._pending_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        # Finding rate limits already claimed in the store, so a flood of identical findings is
        # refused without a database round trip per GPU-window.
        self._claims: dict[str, int] = {}
        self.observe_stage_s: Callable[[str, float], None] = _ignore_stage
        """Told each stage's duration: "verify" (a batch's stateless checks) and "commit" (the
        serial stage and the transaction of a group of batches). The server's metrics."""
        self._energy_check = core.config.ingest.energy_check

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # -- stage one: stateless checks, in parallel ---------------------------------------------

    def _check_one(self, raw: bytes) -> Rejection | Candidate:
        max_size = self.config.server.max_envelope_bytes
        if len(raw) > max_size:
            return _reject(
                spb.REJECT_REASON_TOO_LARGE, f"envelope is {len(raw)} bytes; limit {max_size}"
            )
        try:
            envelope = parse_envelope(raw, max_size=max_size)
        except EnvelopeTooLargeError as exc:
            return _reject(spb.REJECT_REASON_TOO_LARGE, exc.diagnostics())
        except EnvelopeError as exc:
            return _reject(spb.REJECT_REASON_MALFORMED_ENVELOPE, exc.diagnostics())
        if envelope.payload_type != PayloadType.ATTESTATION:
            return _reject(
                spb.REJECT_REASON_WRONG_PAYLOAD_TYPE,
                f"payload type {envelope.payload_type!r} is not an attestation",
            )
        node = self.core.nodes.get(envelope.key_id) or self.core.node_enrolled_elsewhere(
            bytes(envelope.key_id)
        )
        if node is None:
            return _reject(spb.REJECT_REASON_UNKNOWN_KEY, "the key is not an enrolled node")
        try:
            verified = verify_parsed_envelope(envelope, self.core.keyring)
        except UnknownKeyError:
            return _reject(spb.REJECT_REASON_UNKNOWN_KEY, "the key is not an enrolled node")
        except SignatureError:
            return _reject(
                spb.REJECT_REASON_BAD_SIGNATURE,
                "the signature does not verify",
                node_id=bytes(envelope.key_id),
                bad_signature=True,
                raw=raw,
            )
        try:
            attestation = attestation_from_verified(verified)
        except BodyError as exc:
            reason = (
                spb.REJECT_REASON_MALFORMED_BODY
                if "not a valid AttestationBody" in str(exc)
                else spb.REJECT_REASON_INVALID_BODY
            )
            return _reject(reason, exc.diagnostics(), node_id=bytes(envelope.key_id))
        return Candidate(attestation=attestation, revoked=node.revoked)

    def _check_all(self, raws: Sequence[bytes]) -> list[Rejection | Candidate]:
        threads = self.config.ingest.verify_threads
        if threads <= 1 or len(raws) < 8:
            return [self._check_one(raw) for raw in raws]
        size = -(-len(raws) // threads)
        chunks = [raws[i : i + size] for i in range(0, len(raws), size)]
        results: list[Rejection | Candidate] = []
        for part in self._pool.map(lambda chunk: [self._check_one(r) for r in chunk], chunks):
            results.extend(part)
        return results

    # -- the batch ----------------------------------------------------------------------------

    def submit(self, raws: Sequence[bytes]) -> SubmitResult:
        """Process one batch and return a receipt per envelope, in order.

        Group commit: batches that finish their stateless checks while another batch is being
        committed wait for the write path together, and the next committer takes them all into
        one transaction (one fsync), each keeping its own receipts in order."""
        job = self.check(raws)
        with self._pending_lock:
            self._pending.append(job)
        with self._commit_lock:
            if job.result is None:
                with self._pending_lock:
                    jobs, self._pending = self._pending, []
                self._timed_commit(jobs)
        assert job.result is not None
        return job.result

    def check(self, raws: Sequence[bytes]) -> CheckedBatch:
        """Stage one of a batch alone (for a caller that groups commits itself: the server's
        event loop, which holds no thread while a batch waits for its transaction)."""
        started = time.perf_counter()
        job = _Job(raws=raws, checked=self._check_all(raws))
        self.observe_stage_s("verify", time.perf_counter() - started)
        return job

    @staticmethod
    def unchecked(raws: Sequence[bytes]) -> CheckedBatch:
        """A batch whose stage one :meth:`commit` runs, in the same job as its transaction: for
        a batch of a few envelopes (a fleet's agents send one window a minute) the hand-off of
        a job of its own to a thread costs more than the checks."""
        return _Job(raws=raws, checked=None)

    def commit(self, batches: list[CheckedBatch]) -> None:
        """The serial stage of checked batches, in one transaction; each gets its ``result``.
        Batches from :meth:`unchecked` are checked first."""
        for job in batches:
            if job.checked is not None:
                continue
            started = time.perf_counter()
            try:
                job.checked = self._check_all(job.raws)
            except Exception:  # a bug in stage one: this batch fails, not its group
                log.exception("a batch of %d envelopes could not be checked", len(job.raws))
                job.result = SubmitResult(
                    receipts=[
                        self._rejected(
                            raw,
                            spb.REJECT_REASON_UNAVAILABLE,
                            "the verifier could not check the batch; resend",
                        )
                        for raw in job.raws
                    ],
                    tree_size=self.core.log.size,
                )
            self.observe_stage_s("verify", time.perf_counter() - started)
        batches = [job for job in batches if job.result is None]
        if batches:
            with self._commit_lock:
                self._timed_commit(batches)

    def _timed_commit(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        self._commit(jobs)
        self.observe_stage_s("commit", time.perf_counter() - started)

    def _commit(self, jobs: list[_Job]) -> None:
        """Run the serial stage of ``jobs`` in one transaction and give each its receipts."""
        all_receipts: list[list[spb.Receipt | None]] = []
        for job in jobs:
            receipts: list[spb.Receipt | None] = [None] * len(job.raws)
            for i, outcome in enumerate(_outcomes(job)):
                if isinstance(outcome, Rejection) and not outcome.bad_signature:
                    receipts[i] = self._rejected(job.raws[i], outcome.reason, outcome.detail)
            all_receipts.append(receipts)
        batch = _Batch()
        try:
            with self.core.write() as w:
                for job, receipts in zip(jobs, all_receipts, strict=True):
                    for i, outcome in enumerate(_outcomes(job)):
                        if receipts[i] is not None:
                            continue
                        if isinstance(outcome, Rejection):
                            receipts[i] = self._bad_signature(w, job.raws[i], outcome)
                        else:
                            receipts[i] = self._serial(w, batch, outcome)
                self._flush(w, batch)
        except Exception:
            log.exception("%d batches could not be committed", len(jobs))
            for job, receipts in zip(jobs, all_receipts, strict=True):
                for i, outcome in enumerate(_outcomes(job)):
                    if (
                        isinstance(outcome, Candidate)
                        or (isinstance(outcome, Rejection) and outcome.bad_signature)
                        or receipts[i] is None
                    ):
                        receipts[i] = self._rejected(
                            job.raws[i],
                            spb.REJECT_REASON_UNAVAILABLE,
                            "the verifier could not commit; resend",
                        )
        else:
            self._edges.update(batch.edges)
            self._claims.update(batch.claims)
            if len(self._claims) > 100_000:
                now = self.core.clock_ns()
                self._claims = {k: v for k, v in self._claims.items() if v > now}
        tree_size = self.core.log.size
        for job, receipts in zip(jobs, all_receipts, strict=True):
            final = [r for r in receipts if r is not None]
            assert len(final) == len(job.raws)
            job.result = SubmitResult(receipts=final, tree_size=tree_size)

    @staticmethod
    def _rejected(
        raw: bytes, reason: int, detail: str, seq: int | None = None, log_index: int = 0
    ) -> spb.Receipt:
        """A REJECTED receipt; ``log_index`` only for a FORK whose envelope is logged as
        evidence (the index of that entry)."""
        from attest.envelope import envelope_digest

        receipt = spb.Receipt(
            envelope_digest=envelope_digest(raw),
            status=spb.RECEIPT_STATUS_REJECTED,
            reason=reason,  # type: ignore[arg-type]
            detail=detail[:300],
            log_index=log_index,
        )
        if seq is not None:
            receipt.seq = seq
            receipt.has_seq = True
        return receipt

    def _bad_signature(self, w: WriteContext, raw: bytes, outcome: Rejection) -> spb.Receipt:
        """A bad signature naming an enrolled key is evidence: record it (once an hour a node)."""
        node = w.node(outcome.node_id)
        if node is not None and w.tx.claim_once(
            f"bad-signature:{node.node_id.hex()}", w.now_ns + HOUR_NS, w.now_ns
        ):
            w.add_finding(
                fpb.Finding(
                    kind=fpb.FINDING_KIND_BAD_SIGNATURE,
                    severity=fpb.SEVERITY_WARNING,
                    lab_id=node.lab_id,
                    node_id=node.node_id,
                    period_start_ns=w.now_ns,
                    period_end_ns=w.now_ns,
                    summary="an envelope naming this node's key failed signature verification",
                    rejected_envelope=raw,
                )
            )
        return self._rejected(raw, spb.REJECT_REASON_BAD_SIGNATURE, outcome.detail)

    def _claim(self, w: WriteContext, batch: _Batch, key: str, period_ns: int) -> bool:
        """True if a finding keyed ``key`` may be made now (once per ``period_ns``)."""
        now = w.now_ns
        if self._claims.get(key, 0) > now or batch.claims.get(key, 0) > now:
            return False
        claimed = w.tx.claim_once(key, now + period_ns, now)
        # Claimed now, or claimed earlier (by us before a restart, or by another process):
        # either way nothing more is needed until the period is over.
        batch.claims[key] = now + period_ns
        return claimed

    def _inventory_at(
        self, w: WriteContext, batch: _Batch, lab_id: str, t_ns: int
    ) -> frozenset[str] | None:
        versions = batch.inventories.get(lab_id)
        if versions is None:
            # A declared version never changes (versions only increase), so the sets are kept
            # between batches: a fleet's declaration holds tens of thousands of GPUs, too many to
            # read and build a set of per window. Another process may have added a version.
            latest = w.tx.inventory_version(lab_id)
            cached = self._inventories.get(lab_id)
            if cached is None or cached[0] != latest:
                rows = w.tx.inventory(lab_id)
                cached = (
                    rows[-1].version if rows else 0,
                    [(row.effective_from_ns, frozenset(row.gpu_uuids)) for row in rows],
                )
                self._inventories[lab_id] = cached
            versions = batch.inventories[lab_id] = cached[1]
        current: frozenset[str] | None = None
        for effective_from_ns, uuids in versions:
            if effective_from_ns <= t_ns:
                current = uuids
        return current

    def _previous_edge(
        self, w: WriteContext, batch: _Batch, node: NodeState
    ) -> accounts.WindowEdge | None:
        if node.head is None:
            return None
        edge = batch.edges.get(node.node_id) or self._edges.get(node.node_id)
        if edge is not None and edge.seq == node.head.seq:
            return edge
        entry = w.tx.get_entry(node.head.log_index)
        if entry is None:
            return None
        from attest.attestation import verify_attestation
        from attest.envelope import StaticKeyring

        ring = StaticKeyring()
        ring.add(node.public_key)
        return accounts.window_edge(verify_attestation(entry.entry, ring), node.head.log_index)

    def _serial(self, w: WriteContext, batch: _Batch, candidate: Candidate) -> spb.Receipt:
        att = candidate.attestation
        body = att.body
        raw = att.raw
        digest = bytes(att.digest)
        seq = body.seq
        ingest = self.config.ingest

        node = w.node(att.node_id)
        if node is None:  # enrolled and then... cannot happen; be safe
            return self._rejected(
                raw, spb.REJECT_REASON_UNKNOWN_KEY, "the key is not enrolled", seq
            )
        # Seen before: an idempotent duplicate, whatever has changed since (nonce age, skew).
        # Anything on record for this node has a seq at or below its head (a fork beyond the head
        # is caught in _fork), so only those need a look in the store.
        seen_index = batch.digests.get(digest)
        if seen_index is None and node.head is not None and seq <= node.head.seq:
            seen = w.tx.entry_index_by_digest(digest)
            if seen is not None:
                if seen[1] == EntryKind.FORK_EVIDENCE:
                    return self._rejected(
                        raw,
                        spb.REJECT_REASON_FORK,
                        "already on record as equivocation",
                        seq,
                        log_index=seen[0],
                    )
                seen_index = seen[0]
        if seen_index is not None:
            return spb.Receipt(
                envelope_digest=digest,
                status=spb.RECEIPT_STATUS_DUPLICATE,
                log_index=seen_index,
                seq=seq,
                has_seq=True,
            )
        if node.revoked:
            if w.tx.claim_once(f"revoked:{node.node_id.hex()}", w.now_ns + HOUR_NS, w.now_ns):
                w.add_finding(
                    fpb.Finding(
                        kind=fpb.FINDING_KIND_REVOKED_NODE_SUBMISSION,
                        severity=fpb.SEVERITY_WARNING,
                        lab_id=node.lab_id,
                        node_id=node.node_id,
                        period_start_ns=body.window_start_ns,
                        period_end_ns=body.window_end_ns,
                        summary=f"revoked node submitted seq {seq}",
                        rejected_envelope=raw,
                    )
                )
            return self._rejected(raw, spb.REJECT_REASON_REVOKED_KEY, "the node is revoked", seq)
        if body.lab_id != node.lab_id:
            return self._rejected(
                raw, spb.REJECT_REASON_INVALID_BODY, "lab_id is not the node's lab", seq
            )
        backend = _BACKEND_NAMES.get(body.sampler_backend, "")
        if backend not in ingest.accept_backends:
            return self._rejected(
                raw,
                spb.REJECT_REASON_INVALID_BODY,
                f"sampler backend {backend!r} is not accepted by this verifier",
                seq,
            )
        now = w.now_ns
        skew = ingest.max_clock_skew_ns
        if body.window_end_ns > now + skew:
            return self._rejected(
                raw, spb.REJECT_REASON_TIMESTAMP_OUT_OF_RANGE, "the window ends in the future", seq
            )
        if body.window_end_ns < now - ingest.max_age_ns:
            return self._rejected(
                raw,
                spb.REJECT_REASON_TIMESTAMP_OUT_OF_RANGE,
                "the window is older than the verifier accepts",
                seq,
            )
        if body.window_start_ns < node.enrolled_at_ns - skew:
            return self._rejected(
                raw,
                spb.REJECT_REASON_TIMESTAMP_OUT_OF_RANGE,
                "the window starts before the node was enrolled",
                seq,
            )
        for gpu in body.gpus:
            if gpu.uuid not in node.gpu_uuids:
                return self._rejected(
                    raw,
                    spb.REJECT_REASON_UNKNOWN_GPU,
                    f"GPU {gpu.uuid} is not in the node's enrolled inventory",
                    seq,
                )
        nonce_age_ns: int | None = None
        if ingest.require_nonce or body.verifier_nonce:
            issued = self.core.nonces.issued_at(body.verifier_nonce, node.node_id)
            if issued is None or issued > body.window_end_ns + skew:
                return self._rejected(
                    raw, spb.REJECT_REASON_BAD_NONCE, "the nonce was not issued to this node", seq
                )
            # A nonce older than its lifetime no longer rejects the window: it is late evidence
            # (verifier/accounting/late.py), kept and graded, so that an honest outage's back-fill
            # lands.
            nonce_age_ns = body.window_end_ns - issued

        head = node.head
        if head is not None and seq > head.seq and body.window_start_ns < head.window_end_ns:
            return self._rejected(
                raw,
                spb.REJECT_REASON_TIMESTAMP_OUT_OF_RANGE,
                "the window starts before the node's previous window ended (clock went back)",
                seq,
            )
        chain_head = (
            None if head is None else ChainHead(head.seq, Digest(head.digest), head.window_end_ns)
        )
        stored: bytes | None = None
        if head is not None and seq <= head.seq:
            stored = batch.stored_at.get((node.node_id, seq))
            if stored is None:
                stored = w.tx.attestation_digest_at(node.node_id, seq)
        link = classify(chain_head, seq, body.prev_digest, digest, stored)
        if link is Link.DUPLICATE:  # same digest at seq: found above already; keep it safe
            return spb.Receipt(
                envelope_digest=digest, status=spb.RECEIPT_STATUS_DUPLICATE, seq=seq, has_seq=True
            )
        if link is Link.ROLLBACK:
            return self._rejected(
                raw, spb.REJECT_REASON_ROLLBACK, f"seq {seq} is at or below the node's head", seq
            )
        if link is Link.FORK:
            return self._fork(w, batch, node, att, stored)

        # NEXT or GAP: accept.
        index = w.append(
            PendingEntry(raw, EntryKind.ATTESTATION, node.lab_id, node.node_id, digest)
        )
        batch.digests[digest] = index
        batch.stored_at[(node.node_id, seq)] = digest
        inventory = self._inventory_at(w, batch, node.lab_id, body.window_start_ns)
        declared = inventory or frozenset()
        lab_buckets = batch.buckets.setdefault(node.lab_id, {})
        previous = self._previous_edge(w, batch, node)
        fold = accounts.fold_attestation(
            att,
            index,
            declared,
            lab_buckets,
            ingest.bucket_ns,
            energy=self._energy_check,
            previous=previous,
            declaration_in_force=inventory is not None,
        )
        batch.attestations.append(
            AttestationRow(
                node_id=node.node_id,
                seq=seq,
                digest=digest,
                log_index=index,
                lab_id=node.lab_id,
                window_start_ns=body.window_start_ns,
                window_end_ns=body.window_end_ns,
                upper_bound_flop=fold.upper_bound_flop,
                central_estimate_flop=fold.central_estimate_flop,
                energy_flop=fold.energy_flop,
                energy_mj=fold.energy_mj,
            )
        )
        edge = fold.edge
        gap_recorded = False
        if previous is not None:
            gap = accounts.gap_between(
                NodeId(node.node_id), previous, edge, ingest.gap_tolerance_ns
            )
            if gap is not None or link is Link.GAP:
                gap_recorded = True
                self._record_gap(
                    w, batch=batch, node=node, previous=previous, edge=edge, gap=gap, link=link
                )
            self._check_reload_between(w, node, previous, edge)
        elif link is Link.GAP:
            gap_recorded = True
            w.add_finding(
                fpb.Finding(
                    kind=fpb.FINDING_KIND_GAP,
                    severity=fpb.SEVERITY_WARNING,
                    lab_id=node.lab_id,
                    node_id=node.node_id,
                    period_start_ns=node.enrolled_at_ns,
                    period_end_ns=body.window_start_ns,
                    evidence_log_indices=[index],
                    summary=(
                        f"the first accepted attestation has seq {seq}; seq 0 to {seq - 1} missing"
                    ),
                )
            )
        batch.edges[node.node_id] = edge
        self._window_findings(
            w,
            batch,
            node=node,
            att=att,
            index=index,
            fold=fold,
            previous=previous,
        )
        lateness = late.grade(now, body.window_end_ns, nonce_age_ns, ingest)
        if lateness is not None:
            w.add_finding(
                late.late_finding(
                    lab_id=node.lab_id,
                    att=att,
                    log_index=index,
                    declared_uuids=declared,
                    lateness=lateness,
                    now_ns=now,
                )
            )
        tpm_status = self._check_tpm_quote(w, node, att, index)
        new_node = self.core.with_head(
            node,
            NodeHead(seq=seq, digest=digest, log_index=index, window_end_ns=body.window_end_ns),
        )
        w.stage_node(new_node)
        batch.heads[node.node_id] = (seq, digest, index, body.window_end_ns)
        return spb.Receipt(
            envelope_digest=digest,
            status=spb.RECEIPT_STATUS_ACCEPTED,
            log_index=index,
            seq=seq,
            has_seq=True,
            gap_recorded=gap_recorded,
            tpm_quote=tpm_status,  # type: ignore[arg-type]
        )

    def _check_tpm_quote(
        self, w: WriteContext, node: NodeState, att: VerifiedAttestation, index: int
    ) -> int:
        """A TPM node's quote (verifier/tpm.py); a refused or missing one, or a measurement not
        in the lab's allowlist, is a finding. The window is accepted either way."""
        if node.tpm is None:
            return fpb.TPM_QUOTE_STATUS_UNSPECIFIED
        body = att.body
        key = tpm_state_key(node.node_id)
        stored = w.tx.get_meta(key)
        state = QuoteState.from_bytes(stored) if stored is not None else None
        outcome = check_window_quote(
            node.tpm.ak,
            body,
            state,
            self.core.tpm_settings,
            self.core.ima_allowlists.get(node.lab_id),
        )
        if outcome.state is not None and outcome.state != state:
            w.tx.set_meta(key, outcome.state.to_bytes())

        def finding(kind: int, severity: int, summary: str, measured: str = "") -> None:
            w.add_finding(
                fpb.Finding(
                    kind=kind,  # type: ignore[arg-type]
                    severity=severity,  # type: ignore[arg-type]
                    lab_id=node.lab_id,
                    node_id=node.node_id,
                    period_start_ns=body.window_start_ns,
                    period_end_ns=body.window_end_ns,
                    evidence_log_indices=[index],
                    summary=summary,
                    measured=measured,
                    tpm_quote_status=outcome.status,  # type: ignore[arg-type]
                )
            )

        if outcome.status == fpb.TPM_QUOTE_STATUS_MISSING:
            finding(
                fpb.FINDING_KIND_TPM_QUOTE_MISSING,
                fpb.SEVERITY_WARNING,
                f"seq {body.seq}: no TPM quote where one was due; the window is software-rooted",
            )
        elif outcome.refused:
            finding(
                fpb.FINDING_KIND_TPM_QUOTE_REFUSED,
                fpb.SEVERITY_WARNING,
                f"seq {body.seq}: TPM quote refused ({status_name(outcome.status)}): "
                f"{outcome.detail}; the window is software-rooted",
            )
        if outcome.unknown:
            shown = outcome.unknown[:8]
            finding(
                fpb.FINDING_KIND_UNKNOWN_MEASUREMENT,
                fpb.SEVERITY_CRITICAL,
                f"seq {body.seq}: {len(outcome.unknown)} IMA measurement(s) not in the lab's "
                f"allowlist, first {shown[0].path}",
                "; ".join(f"{e.path} {e.file_hash_alg}:{e.file_digest.hex()}" for e in shown),
            )
        return outcome.status

    def _fork(
        self,
        w: WriteContext,
        batch: _Batch,
        node: NodeState,
        att: VerifiedAttestation,
        stored: bytes | None,
    ) -> spb.Receipt:
        """Equivocation: keep the envelope as evidence, log a finding, flag the node."""
        seq = att.body.seq
        on_record = w.tx.entry_index_by_digest(bytes(att.digest))
        if on_record is not None:
            return self._rejected(
                att.raw,
                spb.REJECT_REASON_FORK,
                "already on record as equivocation",
                seq,
                log_index=on_record[0],
            )
        index = w.append(
            PendingEntry(
                att.raw, EntryKind.FORK_EVIDENCE, node.lab_id, node.node_id, bytes(att.digest)
            )
        )
        w.tx.insert_fork_evidence(node.node_id, seq, bytes(att.digest), index)
        batch.digests[bytes(att.digest)] = index
        evidence = [index]
        other: int | None = None
        if stored is not None:
            found = w.tx.entry_index_by_digest(stored)
            if found is None:
                found_index = batch.digests.get(stored)
                other = found_index
            else:
                other = found[0]
        elif node.head is not None:
            other = node.head.log_index  # a successor of a different predecessor
        if other is not None:
            evidence.insert(0, other)
        w.add_finding(
            fpb.Finding(
                kind=fpb.FINDING_KIND_EQUIVOCATION,
                severity=fpb.SEVERITY_CRITICAL,
                lab_id=node.lab_id,
                node_id=node.node_id,
                period_start_ns=att.body.window_start_ns,
                period_end_ns=att.body.window_end_ns,
                evidence_log_indices=evidence,
                summary=(
                    f"node signed two different envelopes for seq {seq}"
                    if stored is not None
                    else f"seq {seq} does not extend the node's chain"
                ),
            )
        )
        flag_node(w, node)
        return self._rejected(
            att.raw,
            spb.REJECT_REASON_FORK,
            "conflicts with the node's chain; kept as evidence of equivocation",
            seq,
            log_index=index,
        )

    def _record_gap(
        self,
        w: WriteContext,
        *,
        batch: _Batch,
        node: NodeState,
        previous: accounts.WindowEdge,
        edge: accounts.WindowEdge,
        gap: accounts.Gap | None,
        link: Link,
    ) -> None:
        seq_note = f"; seq {previous.seq + 1} to {edge.seq - 1} missing" if link is Link.GAP else ""
        finding = fpb.Finding(
            kind=fpb.FINDING_KIND_GAP,
            severity=fpb.SEVERITY_WARNING,
            lab_id=node.lab_id,
            node_id=node.node_id,
            period_start_ns=previous.window_end_ns,
            period_end_ns=edge.window_start_ns,
            evidence_log_indices=[previous.log_index, edge.log_index],
        )
        if gap is not None:
            finding.gap.CopyFrom(accounts.gap_detail(gap))
            bounded = (
                f"energy-bounded at {gap.energy_bound_flop} FLOP"
                if gap.energy_bounded
                else "not bounded by energy"
            )
            seconds = (gap.end_ns - gap.start_ns) // 10**9
            finding.summary = (
                f"{seconds} s unattested between seq {previous.seq} and {edge.seq}, "
                f"{bounded}{seq_note}"
            )
        else:
            finding.summary = f"seq jump between {previous.seq} and {edge.seq}{seq_note}"
        finding_index = w.add_finding(finding)
        if gap is not None:
            batch.gaps.append(
                GapRow(
                    node_id=node.node_id,
                    start_ns=gap.start_ns,
                    end_ns=gap.end_ns,
                    seq_before=previous.seq,
                    seq_after=edge.seq,
                    before_log_index=previous.log_index,
                    after_log_index=edge.log_index,
                    energy_bounded=gap.energy_bounded,
                    energy_mj=gap.energy_mj,
                    energy_bound_flop=gap.energy_bound_flop,
                    time_bound_flop=gap.time_bound_flop,
                    finding_log_index=finding_index,
                    gpu_models=gap.gpu_models_before,
                )
            )

    def _check_reload_between(
        self,
        w: WriteContext,
        node: NodeState,
        previous: accounts.WindowEdge,
        edge: accounts.WindowEdge,
    ) -> None:
        """An energy counter that dropped between two windows means a driver reload."""
        before = {g.uuid: g for g in previous.gpus}
        for gpu in edge.gpus:
            old = before.get(gpu.uuid)
            if (
                old is not None
                and old.energy_ok
                and gpu.energy_ok
                and gpu.energy_start_mj < old.energy_end_mj
            ):
                w.add_finding(
                    fpb.Finding(
                        kind=fpb.FINDING_KIND_DRIVER_RELOAD,
                        severity=fpb.SEVERITY_WARNING,
                        lab_id=node.lab_id,
                        node_id=node.node_id,
                        gpu_uuid=gpu.uuid,
                        period_start_ns=previous.window_end_ns,
                        period_end_ns=edge.window_start_ns,
                        evidence_log_indices=[previous.log_index, edge.log_index],
                        summary=(
                            f"GPU {gpu.uuid}'s energy counter dropped between seq "
                            f"{previous.seq} and {edge.seq}"
                        ),
                    )
                )
                return

    def _window_findings(
        self,
        w: WriteContext,
        batch: _Batch,
        *,
        node: NodeState,
        att: VerifiedAttestation,
        index: int,
        fold: accounts.AttestationFold,
        previous: accounts.WindowEdge | None,
    ) -> None:
        body = att.body

        def finding(kind: int, severity: int, summary: str, gpu_uuid: str = "") -> fpb.Finding:
            return fpb.Finding(
                kind=kind,  # type: ignore[arg-type]
                severity=severity,  # type: ignore[arg-type]
                lab_id=node.lab_id,
                node_id=node.node_id,
                gpu_uuid=gpu_uuid,
                period_start_ns=body.window_start_ns,
                period_end_ns=body.window_end_ns,
                evidence_log_indices=[index],
                summary=summary,
            )

        events = body.events
        reloaded = fold.counter_reset or any(e.kind == apb.EVENT_KIND_DRIVER_RELOAD for e in events)
        if reloaded:
            w.add_finding(
                finding(
                    fpb.FINDING_KIND_DRIVER_RELOAD,
                    fpb.SEVERITY_WARNING,
                    f"driver reload in seq {body.seq}: the energy counter restarted",
                )
            )
        for event in events:
            if event.kind in _SAMPLER_EVENT_KINDS and self._claim(
                w, batch, f"event:{node.node_id.hex()}:{event.kind}", HOUR_NS
            ):
                w.add_finding(
                    finding(
                        fpb.FINDING_KIND_SAMPLER_EVENT,
                        fpb.SEVERITY_WARNING,
                        f"{apb.EventKind.Name(event.kind)}: {event.detail[:120]}",
                        event.gpu_uuid,
                    )
                )
        mismatched: list[accounts.GpuFold] = []
        unusable: list[accounts.GpuFold] = []
        for folded in fold.gpus:
            uuid = folded.uuid
            if not folded.declared and self._claim(
                w, batch, f"undeclared:{node.lab_id}:{uuid}", DAY_NS
            ):
                w.add_finding(
                    finding(
                        fpb.FINDING_KIND_UNDECLARED_GPU,
                        fpb.SEVERITY_WARNING,
                        f"GPU {uuid} is not in lab {node.lab_id}'s declared inventory",
                        uuid,
                    )
                )
            if folded.flag is accounts.WindowFlagKind.ENERGY_MISMATCH:
                mismatched.append(folded)
            elif folded.flag is accounts.WindowFlagKind.ENERGY_COUNTER_UNUSABLE:
                unusable.append(folded)
        if mismatched:
            # One finding per window, never rate-limited: its evidence is the window.
            first = mismatched[0]
            w.add_finding(
                finding(
                    fpb.FINDING_KIND_ENERGY_MISMATCH,
                    fpb.SEVERITY_CRITICAL,
                    f"seq {body.seq}: the energy of {len(mismatched)} GPU(s) contradicts the "
                    f"attested utilisation (GPU {first.uuid}: energy for {first.energy_flop} "
                    f"FLOP at datasheet efficiency, utilisation bounding it at "
                    f"{first.upper_bound_flop} FLOP); evaluated at "
                    f"{sum(g.evaluated_flop for g in mismatched)} FLOP instead of "
                    f"{sum(g.upper_bound_flop for g in mismatched)}",
                    first.uuid if len(mismatched) == 1 else "",
                )
            )
        if unusable and self._claim(w, batch, f"unusable:{node.node_id.hex()}", HOUR_NS):
            w.add_finding(
                finding(
                    fpb.FINDING_KIND_ENERGY_COUNTER_UNUSABLE,
                    fpb.SEVERITY_WARNING,
                    f"seq {body.seq}: {len(unusable)} GPU(s) claim an unusable energy counter "
                    f"(GPU {unusable[0].uuid}); evaluated at peak x window (at most one such "
                    "finding an hour per node; every report names all such windows)",
                    unusable[0].uuid if len(unusable) == 1 else "",
                )
            )
        if fold.jumps and previous is not None:
            rose_mj = sum(jump.energy_mj for jump in fold.jumps)
            outside = finding(
                fpb.FINDING_KIND_ENERGY_OUTSIDE_WINDOWS,
                fpb.SEVERITY_CRITICAL,
                f"{len(fold.jumps)} GPU(s)' energy counters rose by {rose_mj} mJ between seq "
                f"{previous.seq} and {body.seq}, outside any window; counted as "
                f"{sum(jump.flop for jump in fold.jumps)} FLOP in seq {body.seq}",
                fold.jumps[0].uuid if len(fold.jumps) == 1 else "",
            )
            outside.period_start_ns = previous.window_end_ns
            outside.evidence_log_indices[:] = [previous.log_index, index]
            w.add_finding(outside)
        for gpu, folded in zip(body.gpus, fold.gpus, strict=True):
            uuid = folded.uuid
            claimed = gpu.bounds.upper_bound_flop
            if claimed < folded.upper_bound_flop and self._claim(
                w, batch, f"bounds:{node.node_id.hex()}", DAY_NS
            ):
                w.add_finding(
                    finding(
                        fpb.FINDING_KIND_BOUNDS_MISMATCH,
                        fpb.SEVERITY_INFO,
                        f"GPU {uuid}: the agent claimed an upper bound of {claimed} FLOP; "
                        f"the verifier computes {folded.upper_bound_flop}",
                        uuid,
                    )
                )

    def _flush(self, w: WriteContext, batch: _Batch) -> None:
        w.tx.set_node_heads([(node_id, *head) for node_id, head in batch.heads.items()])
        w.tx.insert_attestations(batch.attestations)
        w.tx.insert_gaps(batch.gaps)
        for lab_id, new in batch.buckets.items():
            if not new:
                continue
            starts = sorted(new)
            stored = w.tx.buckets(lab_id, starts[0], starts[-1] + 1)
            merged: dict[int, dict[str, object]] = {}
            for start, bucket in new.items():
                row = stored.get(start)
                total = bucket
                if row is not None:
                    total = accounts.Bucket.from_row(row)
                    total.merge(bucket)
                merged[start] = dict(total.to_row())
            w.tx.put_buckets(lab_id, merged)
