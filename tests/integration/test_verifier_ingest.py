"""The verifier over real gRPC: enrol, stream, restart, backfill, forks, replays, audits."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import findings_pb2 as fpb
from pausewatch.v1 import registry_pb2 as rpb

from attest import merkle
from attest.checkpoint import verify_checkpoint
from attest.envelope import envelope_digest
from attest.keys import Ed25519Signer, format_public_key
from attest.note import parse_verifier_key
from tests.builders import TestNode, fixed_private_key
from tests.verifier_harness import DEFAULT_POLICY, running_verifier

S = 10**9
MINUTE = 60 * S


def recent_t0() -> int:
    now = time.time_ns()
    return now - now % MINUTE - 2 * 3600 * S


def test_enrol_stream_restart_and_backfill_leave_no_gap(tmp_path: Path) -> None:
    t0 = recent_t0()
    node = TestNode.from_seed(1, t0_ns=t0)
    chain = node.chain(10)
    with running_verifier(tmp_path) as v:
        client = v.client()
        enrolled = client.enroll(node, created_at_ns=t0 - S)
        assert not enrolled.already_enrolled
        first = client.submit(chain[:5])
        assert [r.status for r in first] == [spb.RECEIPT_STATUS_ACCEPTED] * 5
    # The verifier restarts on the same store; the agent backfills from seq 3 (receipts lost).
    with running_verifier(tmp_path) as v:
        client = v.client()
        again = client.submit(chain[3:])
        assert [r.status for r in again[:2]] == [spb.RECEIPT_STATUS_DUPLICATE] * 2
        assert [r.log_index for r in again[:2]] == [r.log_index for r in first[3:5]]
        assert [r.status for r in again[2:]] == [spb.RECEIPT_STATUS_ACCEPTED] * 5
        assert not any(r.gap_recorded for r in again)
        info = client.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id)).node
        assert (info.has_head, info.head_seq) == (True, 9)
        assert info.head_digest == envelope_digest(chain[9])
        report = client.audit.GetComplianceReport(
            apb.GetComplianceReportRequest(
                lab_id="lab-a", period_start_ns=t0, period_end_ns=t0 + 10 * MINUTE
            )
        ).report
        assert list(report.gaps) == []
        assert report.nodes[0].attestations == 10
        kinds = {f.finding.kind for f in report.findings}
        assert fpb.FINDING_KIND_GAP not in kinds


def test_fork_and_replay_are_caught(tmp_path: Path) -> None:
    """Lab A's node equivocates; lab B's node, in the same run over the same time, does not:
    lab A's report is INVALID with its node flagged, lab B's stays COMPLIANT."""
    t0 = recent_t0()
    node = TestNode.from_seed(2, t0_ns=t0)
    chain = node.chain(4)
    honest = TestNode.from_seed(7, t0_ns=t0, lab_id="lab-b")
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "policy-b.toml").write_text(DEFAULT_POLICY.replace('"lab-a"', '"lab-b"'))
    operator = Ed25519Signer.from_private_key(fixed_private_key(100))
    lab_b = (
        '\n[[labs]]\nid = "lab-b"\nname = "Lab B"\n'
        f'operator_public_key = "{format_public_key(operator.public_key)}"\n'
        'policy = "policy-b.toml"\n'
    )
    with running_verifier(tmp_path, extra_lab=lab_b) as v:
        client = v.client()
        client.enroll(node, created_at_ns=t0 - S)
        client.enroll(honest, created_at_ns=t0 - S)
        client.declare_inventory(
            [honest.gpu_uuid(0), honest.gpu_uuid(1)], effective_from_ns=t0 - MINUTE, lab_id="lab-b"
        )
        honest_receipts = client.submit(honest.chain(4))
        assert [r.status for r in honest_receipts] == [spb.RECEIPT_STATUS_ACCEPTED] * 4
        accepted = client.submit(chain)
        # Equivocation: another envelope for seq 2, same predecessor, other content.
        forked = node.sign_body(node.body(2, envelope_digest(chain[1]), busy_ms=1_000))
        (fork,) = client.submit([forked])
        assert (fork.status, fork.reason) == (spb.RECEIPT_STATUS_REJECTED, spb.REJECT_REASON_FORK)
        # Resent, the fork is still a fork, not a new finding.
        (again,) = client.submit([forked])
        assert again.reason == spb.REJECT_REASON_FORK
        # A replay of an accepted envelope is an idempotent duplicate with its original index.
        (replay,) = client.submit([chain[2]])
        assert (replay.status, replay.log_index) == (
            spb.RECEIPT_STATUS_DUPLICATE,
            accepted[2].log_index,
        )
        findings = client.audit.ListFindings(apb.ListFindingsRequest(lab_id="lab-a")).findings
        equivocations = [f for f in findings if f.finding.kind == fpb.FINDING_KIND_EQUIVOCATION]
        assert len(equivocations) == 1
        evidence = list(equivocations[0].finding.evidence_log_indices)
        assert evidence[0] == accepted[2].log_index
        entry = client.audit.GetLogEntry(apb.GetLogEntryRequest(index=evidence[1]))
        assert entry.entry == forked
        # The FORK receipt names where the envelope was logged, the first time and when resent.
        assert fork.log_index == again.log_index == evidence[1] > accepted[-1].log_index
        info = client.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id)).node
        assert info.state == rpb.NODE_STATE_FLAGGED
        report = client.audit.GetComplianceReport(
            apb.GetComplianceReportRequest(
                lab_id="lab-a", period_start_ns=t0, period_end_ns=t0 + 4 * MINUTE
            )
        ).report
        assert report.verdict == apb.VERDICT_INVALID
        assert report.nodes[0].flagged
        # The honest control: lab B, same time, same verifier, no fork.
        control = client.audit.GetComplianceReport(
            apb.GetComplianceReportRequest(
                lab_id="lab-b", period_start_ns=t0, period_end_ns=t0 + 4 * MINUTE
            )
        ).report
        assert control.verdict == apb.VERDICT_COMPLIANT, list(control.reasons)
        assert [(n.node_id, n.flagged) for n in control.nodes] == [(honest.node_id, False)]
        honest_info = client.registry.GetNode(rpb.GetNodeRequest(node_id=honest.node_id)).node
        assert honest_info.state == rpb.NODE_STATE_ACTIVE
        control_findings = client.audit.ListFindings(
            apb.ListFindingsRequest(lab_id="lab-b", kinds=[fpb.FINDING_KIND_EQUIVOCATION])
        ).findings
        assert list(control_findings) == []


def test_a_successor_of_another_predecessor_is_a_fork(tmp_path: Path) -> None:
    t0 = recent_t0()
    node = TestNode.from_seed(3, t0_ns=t0)
    chain = node.chain(2)
    with running_verifier(tmp_path) as v:
        client = v.client()
        client.enroll(node, created_at_ns=t0 - S)
        client.submit(chain)
        wrong = node.sign_body(node.body(2, b"\x42" * 32))
        (receipt,) = client.submit([wrong])
        assert receipt.reason == spb.REJECT_REASON_FORK
        # Resent while the head is still at seq 1 (its seq is above the head): still a fork, and
        # the batch it travels in commits (the real seq 2 beside it is accepted).
        right = node.chain(3)[2]
        again, accepted = client.submit([wrong, right])
        assert again.reason == spb.REJECT_REASON_FORK
        assert again.log_index == receipt.log_index > 0
        logged = client.audit.GetLogEntry(apb.GetLogEntryRequest(index=receipt.log_index))
        assert logged.entry == wrong
        assert accepted.status == spb.RECEIPT_STATUS_ACCEPTED


def test_a_window_that_starts_before_the_previous_one_ended_is_refused(tmp_path: Path) -> None:
    """A node's clock goes back: its next window (next seq, chained to the head, validly signed)
    starts before the head window ended. Refused as TIMESTAMP_OUT_OF_RANGE and nothing of it is
    stored; so is a window that jumps seqs but goes back. The properly timed successor is then
    accepted, with no gap."""
    t0 = recent_t0()
    node = TestNode.from_seed(44, t0_ns=t0)
    chain = node.chain(2)
    head = envelope_digest(chain[0])
    with running_verifier(tmp_path) as v:
        client = v.client()
        client.enroll(node, created_at_ns=t0 - S)
        (first,) = client.submit_batches([chain[0]])
        assert first.receipts[0].status == spb.RECEIPT_STATUS_ACCEPTED
        findings_before = client.audit.ListFindings(apb.ListFindingsRequest(lab_id="lab-a"))
        back_in_time = [
            # Overlaps the head window by 30 s.
            node.sign_body(node.body(1, head, start_ns=t0 + 30 * S)),
            # Wholly before the head window.
            node.sign_body(node.body(1, head, start_ns=t0 - 2 * MINUTE)),
            # A seq jump (a gap link) that also goes back.
            node.sign_body(node.body(3, b"\x42" * 32, start_ns=t0 + 59 * S)),
        ]
        for raw in back_in_time:
            (response,) = client.submit_batches([raw])
            (receipt,) = response.receipts
            assert (receipt.status, receipt.reason) == (
                spb.RECEIPT_STATUS_REJECTED,
                spb.REJECT_REASON_TIMESTAMP_OUT_OF_RANGE,
            ), receipt.detail
            assert "starts before the node's previous window ended" in receipt.detail
            assert response.tree_size == first.tree_size  # nothing appended to the log
            assert not receipt.gap_recorded
        info = client.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id)).node
        assert (info.head_seq, info.head_digest) == (0, head)
        findings_after = client.audit.ListFindings(apb.ListFindingsRequest(lab_id="lab-a"))
        assert list(findings_after.findings) == list(findings_before.findings)
        # Control: the successor that starts where the head ended is accepted, no gap.
        (ok,) = client.submit([chain[1]])
        assert ok.status == spb.RECEIPT_STATUS_ACCEPTED, ok.detail
        assert not ok.gap_recorded
        info = client.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id)).node
        assert (info.head_seq, info.head_digest) == (1, envelope_digest(chain[1]))
        report = client.audit.GetComplianceReport(
            apb.GetComplianceReportRequest(
                lab_id="lab-a", period_start_ns=t0, period_end_ns=t0 + 2 * MINUTE
            )
        ).report
        assert report.nodes[0].attestations == 2
        assert list(report.gaps) == []


def test_gap_and_rollback(tmp_path: Path) -> None:
    t0 = recent_t0()
    node = TestNode.from_seed(4, t0_ns=t0)
    chain = node.chain(6)
    with running_verifier(tmp_path) as v:
        client = v.client()
        client.enroll(node, created_at_ns=t0 - S)
        (response,) = client.submit_batches([chain[0], chain[1], chain[4], chain[5]])
        receipts = response.receipts
        assert [r.status for r in receipts] == [spb.RECEIPT_STATUS_ACCEPTED] * 4
        assert receipts[2].gap_recorded
        # seq 2 arrives after the verifier moved past it: a rollback, rejected, not logged.
        (late_response,) = client.submit_batches([chain[2]])
        assert late_response.receipts[0].reason == spb.REJECT_REASON_ROLLBACK
        assert late_response.tree_size == response.tree_size
        findings = client.audit.ListFindings(
            apb.ListFindingsRequest(lab_id="lab-a", kinds=[fpb.FINDING_KIND_GAP])
        ).findings
        assert len(findings) == 1
        gap = findings[0].finding.gap
        assert (gap.gap_start_ns, gap.gap_end_ns) == (t0 + 2 * MINUTE, t0 + 4 * MINUTE)
        assert (gap.seq_before, gap.seq_after) == (1, 4)
        assert gap.energy_bounded


def test_checkpoint_and_proofs_verify_client_side(tmp_path: Path) -> None:
    t0 = recent_t0()
    node = TestNode.from_seed(5, t0_ns=t0)
    with running_verifier(tmp_path) as v:
        client = v.client()
        client.enroll(node, created_at_ns=t0 - S)
        receipts = client.submit(node.chain(7))
        time.sleep(1.5)
        checkpoint_response = client.audit.GetCheckpoint(apb.GetCheckpointRequest())
        verifier = parse_verifier_key(checkpoint_response.verifier_key)
        checkpoint = verify_checkpoint(checkpoint_response.signed_note, verifier)
        assert checkpoint.tree_size == checkpoint_response.tree_size >= receipts[-1].log_index + 1
        index = receipts[3].log_index
        proof = client.audit.GetInclusionProof(apb.GetInclusionProofRequest(leaf_index=index))
        assert proof.leaf_hash == merkle.leaf_hash(node.chain(7)[3])
        merkle.verify_inclusion(
            index, proof.tree_size, proof.leaf_hash, list(proof.proof), checkpoint.root_hash
        )
        consistency = client.audit.GetConsistencyProof(apb.GetConsistencyProofRequest(size1=3))
        merkle.verify_consistency(
            3,
            checkpoint.tree_size,
            list(consistency.proof),
            consistency.root1,
            checkpoint.root_hash,
        )
        with pytest.raises(grpc.RpcError) as info:
            client.audit.GetInclusionProof(apb.GetInclusionProofRequest(leaf_index=10**6))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_findings_are_paged_and_watched(tmp_path: Path) -> None:
    t0 = recent_t0()
    node = TestNode.from_seed(6, t0_ns=t0)
    chain = node.chain(12)
    with running_verifier(tmp_path) as v:
        client = v.client()
        client.enroll(node, created_at_ns=t0 - S)
        # Every other window missing: a gap finding each time.
        client.submit([chain[i] for i in range(0, 12, 2)])
        first = client.audit.ListFindings(apb.ListFindingsRequest(lab_id="lab-a", page_size=2))
        assert len(first.findings) == 2
        second = client.audit.ListFindings(
            apb.ListFindingsRequest(lab_id="lab-a", page_size=2, page_token=first.next_page_token)
        )
        assert second.findings[0].log_index > first.findings[-1].log_index
        stream = client.audit.WatchFindings(apb.WatchFindingsRequest(lab_id="lab-a"), timeout=20)
        time.sleep(0.3)
        later = node.chain(16)
        client.submit([later[15]])  # another seq jump: a new GAP finding while watching
        watched = next(stream)
        assert watched.finding.kind == fpb.FINDING_KIND_GAP
        assert watched.finding.gap.seq_after == 15
        stream.cancel()
        with pytest.raises(grpc.RpcError) as info:
            client.audit.ListFindings(apb.ListFindingsRequest(lab_id="no-such-lab"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_energy_that_utilisation_cannot_explain_is_a_finding(tmp_path: Path) -> None:
    """A sampler that reports idle GPUs while they draw full power: the energy cross-check."""
    t0 = recent_t0()
    node = TestNode.from_seed(9, t0_ns=t0)
    with running_verifier(tmp_path) as v:
        client = v.client()
        client.enroll(node, created_at_ns=t0 - S)
        honest = node.sign_body(node.body(0))
        body = node.body(1, envelope_digest(honest), busy_ms=0)
        body.gpus[0].energy_end_mj = body.gpus[0].energy_start_mj + 42_000_000  # 700 W x 60 s
        body.gpus[1].energy_end_mj = body.gpus[1].energy_start_mj + 4_200_000  # idle: 70 W x 60 s
        receipts = client.submit([honest, node.sign_body(body)])
        assert [r.status for r in receipts] == [spb.RECEIPT_STATUS_ACCEPTED] * 2
        findings = client.audit.ListFindings(
            apb.ListFindingsRequest(lab_id="lab-a", kinds=[fpb.FINDING_KIND_ENERGY_MISMATCH])
        ).findings
        assert [f.finding.gpu_uuid for f in findings] == [node.gpu_uuid(0)]
        assert findings[0].finding.evidence_log_indices == [receipts[1].log_index]


def test_a_small_batch_whose_checks_fail_is_refused_alone_and_lands_when_resent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small batch is checked in its group's commit job: a failure there (a bug, simulated)
    answers that batch UNAVAILABLE and stores none of it; other batches still commit, and the
    resent batch is accepted with no gap."""
    from verifier.server.ingest import Ingestor

    t0 = recent_t0()
    node, other = TestNode.from_seed(41, t0_ns=t0), TestNode.from_seed(42, t0_ns=t0)
    chain, other_chain = node.chain(3), other.chain(2)
    real_check_all = Ingestor._check_all
    poisoned = {chain[0]}

    def check_all(self: Ingestor, raws: list[bytes]) -> object:
        if poisoned & set(raws):
            raise RuntimeError("stage one failed")
        return real_check_all(self, raws)

    monkeypatch.setattr(Ingestor, "_check_all", check_all)
    with running_verifier(tmp_path) as v:
        client = v.client()
        for n in (node, other):
            client.enroll(n, created_at_ns=t0 - S)
        refused = client.submit(chain[:2])
        assert [r.status for r in refused] == [spb.RECEIPT_STATUS_REJECTED] * 2
        assert {r.reason for r in refused} == {spb.REJECT_REASON_UNAVAILABLE}
        assert [r.status for r in client.submit(other_chain)] == [spb.RECEIPT_STATUS_ACCEPTED] * 2
        info = client.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id)).node
        assert not info.has_head  # nothing of the refused batch was stored
        poisoned.clear()
        again = client.submit(chain)
        assert [r.status for r in again] == [spb.RECEIPT_STATUS_ACCEPTED] * 3
        assert not any(r.gap_recorded for r in again)


def test_an_inventory_declared_while_windows_arrive_decides_the_windows_after_it(
    tmp_path: Path,
) -> None:
    """The verifier keeps the declared GPU sets between batches; a new version must still decide
    the windows that start after it takes effect (and the old one those before)."""
    t0 = recent_t0()
    node = TestNode.from_seed(43, t0_ns=t0, gpus=2)
    chain = node.chain(14)
    effective = t0 + 12 * MINUTE  # in the past, within the test config's very wide clock skew
    with running_verifier(tmp_path) as v:
        client = v.client()
        client.enroll(node, created_at_ns=t0 - S)
        client.declare_inventory([node.gpu_uuid(0)], effective_from_ns=t0 - MINUTE)
        first = client.submit(chain[:3])
        client.declare_inventory(
            [node.gpu_uuid(0), node.gpu_uuid(1)], effective_from_ns=effective, version=2
        )
        rest = client.submit(chain[3:])
        assert [r.status for r in first + rest] == [spb.RECEIPT_STATUS_ACCEPTED] * 14
        report = client.audit.GetComplianceReport(
            apb.GetComplianceReportRequest(
                lab_id="lab-a", period_start_ns=t0, period_end_ns=t0 + 14 * MINUTE
            )
        ).report
    undeclared = [f for f in report.flagged if f.flag == apb.WINDOW_FLAG_UNDECLARED_GPU]
    assert [(f.gpu_uuid, f.gpu_windows) for f in undeclared] == [(node.gpu_uuid(1), 12)]
    assert undeclared[0].last_window_end_ns == effective


def test_a_waiting_stream_keeps_nothing_of_its_last_batch(tmp_path: Path) -> None:
    """A fleet's stream answers a batch and then waits a minute for the next: 10,000 streams
    holding their last batch meanwhile cost the verifier memory for nothing."""
    import gc
    import queue
    from collections.abc import Iterator

    t0 = recent_t0()
    node = TestNode.from_seed(4242, t0_ns=t0, gpus=2)
    with running_verifier(tmp_path / "v") as verifier:
        client = verifier.client()
        client.enroll(node, created_at_ns=t0 - 10**9)
        raw = node.chain(1)[0]
        outbox: queue.Queue[spb.SubmitAttestationsRequest | None] = queue.Queue()

        def requests() -> Iterator[spb.SubmitAttestationsRequest]:
            while (request := outbox.get()) is not None:
                yield request

        responses = client.attestation.SubmitAttestations(requests(), timeout=60)
        outbox.put(spb.SubmitAttestationsRequest(envelopes=[raw]))
        answer = next(responses)
        assert answer.receipts[0].status == spb.RECEIPT_STATUS_ACCEPTED
        time.sleep(0.2)  # the handler is back waiting for the stream's next message
        gc.collect()
        kept = [o for o in gc.get_objects() if isinstance(o, list) and len(o) == 1 and o[0] == raw]
        outbox.put(None)
        list(responses)
    assert kept == []
