"""The hostile-input corpus, sent through the real server: each item gets its documented receipt
or status, the server keeps serving, and the store holds exactly what it should.

Each case builds its input against a verifier where a node (seed 10) is enrolled with a chain of
three accepted windows, another (seed 11) is enrolled and revoked, and nonces are required. The
store is counted before and after (log size, attestations, findings), and after each case the
node's next real window must still be accepted.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import findings_pb2 as fpb
from pausewatch.v1 import registry_pb2 as rpb

from attest.envelope import (
    PayloadType,
    encode_envelope,
    envelope_digest,
    parse_envelope,
    sign_envelope,
)
from tests.builders import TestNode
from tests.verifier_harness import Client, RunningVerifier, running_verifier

S = 10**9
MINUTE = 60 * S


@dataclass
class World:
    verifier: RunningVerifier
    client: Client
    node: TestNode
    revoked: TestNode
    stranger: TestNode
    chain: list[bytes]
    nonce: bytes
    t0: int

    def body(self, seq: int, **kwargs: object) -> object:
        prev = envelope_digest(self.chain[seq - 1]) if 0 < seq <= len(self.chain) else None
        return self.node.body(seq, prev, nonce=self.nonce, **kwargs)  # type: ignore[arg-type]

    def next_raw(self, mutate: Callable[[object], None] | None = None) -> bytes:
        body = self.body(len(self.chain))
        if mutate is not None:
            mutate(body)
        return self.node.sign_body(body)  # type: ignore[arg-type]


def counts(v: RunningVerifier) -> tuple[int, int, int]:
    with sqlite3.connect(v.files.store) as db:
        return (
            db.execute("SELECT COUNT(*) FROM log_entries").fetchone()[0],
            db.execute("SELECT COUNT(*) FROM attestations").fetchone()[0],
            db.execute("SELECT COUNT(*) FROM findings").fetchone()[0],
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("hostile")
    now = time.time_ns()
    t0 = now - now % MINUTE - 10 * MINUTE
    with running_verifier(
        directory,
        require_nonce=True,
        max_clock_skew_s=3600,
        max_age_s=3 * 3600,
        extra_ingest="nonce_lifetime_s = 3600",
    ) as v:
        client = v.client()
        node = TestNode.from_seed(10, t0_ns=t0)
        revoked = TestNode.from_seed(11, t0_ns=t0)
        stranger = TestNode.from_seed(12, t0_ns=t0)
        client.enroll(node)
        client.enroll(revoked)
        nonce = client.nonce(node)
        # The nonce must not postdate the windows it is carried by (beyond the skew): use windows
        # that end after it was issued.
        t_start = now - now % MINUTE - 3 * MINUTE
        node.t0_ns = t_start
        revoked.t0_ns = t_start
        chain: list[bytes] = []
        prev = None
        for seq in range(3):
            raw = node.sign_body(node.body(seq, prev, nonce=nonce))
            chain.append(raw)
            prev = envelope_digest(raw)
        receipts = client.submit(chain)
        assert [r.status for r in receipts] == [spb.RECEIPT_STATUS_ACCEPTED] * 3
        revoked_nonce = client.nonce(revoked)
        revoked_chain = [revoked.sign_body(revoked.body(0, nonce=revoked_nonce))]
        assert client.submit(revoked_chain)[0].status == spb.RECEIPT_STATUS_ACCEPTED
        revocation = rpb.NodeRevocation(
            format_version=1,
            lab_id="lab-a",
            node_id=revoked.node_id,
            reason="decommissioned",
            created_at_ns=time.time_ns(),
        )
        client.registry.RevokeNode(
            rpb.RevokeNodeRequest(
                revocation_envelope=sign_envelope(
                    v.files.operator, PayloadType.REVOCATION, revocation.SerializeToString()
                )
            )
        )
        yield World(v, client, node, revoked, stranger, chain, nonce, t_start)


def flip(raw: bytes, position: int) -> bytes:
    out = bytearray(raw)
    out[position] ^= 0x01
    return bytes(out)


def _set(field: str, value: object) -> Callable[[object], None]:
    def mutate(body: object) -> None:
        setattr(body, field, value)

    return mutate


def _future(body: object) -> None:
    start = time.time_ns() + 3600 * S
    body.window_start_ns = start  # type: ignore[attr-defined]
    body.window_end_ns = start + MINUTE  # type: ignore[attr-defined]


def _past(body: object) -> None:
    start = time.time_ns() - 30 * 24 * 3600 * S
    body.window_start_ns = start  # type: ignore[attr-defined]
    body.window_end_ns = start + MINUTE  # type: ignore[attr-defined]


def _clock_went_back(body: object) -> None:
    """Next seq, chained to the head, but starting 30 s before the head window ended."""
    body.window_start_ns -= 30 * S  # type: ignore[attr-defined]
    body.window_end_ns -= 30 * S  # type: ignore[attr-defined]


def _unknown_gpu(body: object) -> None:
    body.gpus[0].uuid = "GPU-ffffffff-not-enrolled"  # type: ignore[attr-defined]


# name -> (build(world) -> envelope bytes, receipt status, reason, log delta, attestation delta,
#          findings delta)
CORPUS: dict[str, tuple[Callable[[World], bytes], int, int, int, int, int]] = {
    "empty bytes": (
        lambda w: b"",
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_MALFORMED_ENVELOPE,
        0,
        0,
        0,
    ),
    "truncated envelope": (
        lambda w: w.next_raw()[:-7],
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_MALFORMED_ENVELOPE,
        0,
        0,
        0,
    ),
    "trailing garbage": (
        lambda w: w.next_raw() + b"\x00",
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_MALFORMED_ENVELOPE,
        0,
        0,
        0,
    ),
    "bit-flipped payload": (
        lambda w: flip(w.next_raw(), 120),
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_BAD_SIGNATURE,
        1,
        0,
        1,
    ),
    "bit-flipped signature (again: no new finding)": (
        lambda w: flip(w.next_raw(), -3),
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_BAD_SIGNATURE,
        0,
        0,
        0,
    ),
    "wrong payload type": (
        lambda w: sign_envelope(w.node.signer, PayloadType.FINDING, w.body(3).SerializeToString()),  # type: ignore[attr-defined]
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_WRONG_PAYLOAD_TYPE,
        0,
        0,
        0,
    ),
    "oversize": (
        lambda w: sign_envelope(w.node.signer, PayloadType.ATTESTATION, b"\x00" * 300_000),
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_TOO_LARGE,
        0,
        0,
        0,
    ),
    "unknown key": (
        lambda w: w.stranger.sign_body(w.stranger.body(0, nonce=w.nonce)),
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_UNKNOWN_KEY,
        0,
        0,
        0,
    ),
    "revoked key": (
        lambda w: w.revoked.sign_body(w.revoked.body(1, b"\x01" * 32, nonce=w.nonce)),
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_REVOKED_KEY,
        1,
        0,
        1,
    ),
    "replay": (lambda w: w.chain[1], spb.RECEIPT_STATUS_DUPLICATE, 0, 0, 0, 0),
    "fork": (
        lambda w: w.node.sign_body(
            w.node.body(1, envelope_digest(w.chain[0]), busy_ms=7, nonce=w.nonce)
        ),
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_FORK,
        2,
        0,
        1,
    ),
    "far-future window": (
        lambda w: w.next_raw(_future),
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_TIMESTAMP_OUT_OF_RANGE,
        0,
        0,
        0,
    ),
    "far-past window": (
        lambda w: w.next_raw(_past),
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_TIMESTAMP_OUT_OF_RANGE,
        0,
        0,
        0,
    ),
    "window starting before the previous one ended": (
        lambda w: w.next_raw(_clock_went_back),
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_TIMESTAMP_OUT_OF_RANGE,
        0,
        0,
        0,
    ),
    "unknown GPU": (
        lambda w: w.next_raw(_unknown_gpu),
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_UNKNOWN_GPU,
        0,
        0,
        0,
    ),
    "forged nonce": (
        lambda w: w.next_raw(_set("verifier_nonce", b"\x00" * 24)),
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_BAD_NONCE,
        0,
        0,
        0,
    ),
    "missing nonce": (
        lambda w: w.next_raw(_set("verifier_nonce", b"")),
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_BAD_NONCE,
        0,
        0,
        0,
    ),
    "malformed body": (
        lambda w: sign_envelope(w.node.signer, PayloadType.ATTESTATION, b"\xff\xff\xff\xff"),
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_MALFORMED_BODY,
        0,
        0,
        0,
    ),
    "body of another node": (
        lambda w: w.next_raw(_set("node_id", b"\x07" * 32)),
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_INVALID_BODY,
        0,
        0,
        0,
    ),
    "body of another lab": (
        lambda w: w.next_raw(_set("lab_id", "lab-b")),
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_INVALID_BODY,
        0,
        0,
        0,
    ),
    "relabelled signature": (
        lambda w: encode_envelope(
            PayloadType.ATTESTATION,
            parse_envelope(w.chain[0]).payload + b"\x00",
            w.node.node_id,
            parse_envelope(w.chain[0]).signature,
        ),
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_BAD_SIGNATURE,
        0,
        0,
        0,
    ),
}


@pytest.mark.parametrize("case", list(CORPUS))
def test_corpus_item(world: World, case: str) -> None:
    build, status, reason, log_delta, att_delta, finding_delta = CORPUS[case]
    raw = build(world)
    before = counts(world.verifier)
    (receipt,) = world.client.submit([raw])
    assert (receipt.status, receipt.reason) == (status, reason), receipt.detail
    if status == spb.RECEIPT_STATUS_REJECTED:
        assert receipt.detail  # every rejection explains itself
        assert "Traceback" not in receipt.detail
    after = counts(world.verifier)
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (
        log_delta,
        att_delta,
        finding_delta,
    )
    # The server keeps serving: the next real window is still accepted, then undone from the world
    # by advancing it (so later cases build on the new head).
    good = world.next_raw()
    (ok,) = world.client.submit([good])
    assert ok.status == spb.RECEIPT_STATUS_ACCEPTED, ok.detail
    world.chain.append(good)


def test_a_stale_nonce_is_late_evidence_not_a_rejection(tmp_path: Path) -> None:
    """A nonce older than its lifetime at the window's end no longer rejects the window (that lost
    honest outage back-fill): the window is accepted and logged as late evidence, which reports
    count like a gap (tests/adversarial/test_late_evidence.py)."""
    with running_verifier(
        tmp_path, require_nonce=True, max_clock_skew_s=600, extra_ingest="nonce_lifetime_s = 1"
    ) as v:
        client = v.client()
        now = time.time_ns()
        node = TestNode.from_seed(13, t0_ns=now - now % MINUTE - MINUTE)
        client.enroll(node)
        nonce = client.nonce(node)
        # A window ending 30 s after the nonce was issued: past its 1 s lifetime.
        start = time.time_ns() - 30 * S
        raw = node.sign_body(node.body(0, start_ns=start, nonce=nonce))
        (receipt,) = client.submit([raw])
        assert receipt.status == spb.RECEIPT_STATUS_ACCEPTED
        late = client.audit.ListFindings(
            apb.ListFindingsRequest(lab_id="lab-a", kinds=[fpb.FINDING_KIND_LATE_EVIDENCE])
        ).findings
        assert len(late) == 1
        finding = late[0].finding
        assert list(finding.evidence_log_indices) == [receipt.log_index]
        assert finding.unit == "ms" and finding.limit == "1000"
        assert 29_000 <= int(finding.measured) <= 40_000
        assert "nonce issued" in finding.summary


def test_garbage_on_the_stream_and_oversized_batches(world: World) -> None:
    before = counts(world.verifier)
    channel = world.verifier.channel()
    raw_stream = channel.stream_stream(
        "/pausewatch.v1.AttestationService/SubmitAttestations",
        request_serializer=None,
        response_deserializer=None,
    )
    with pytest.raises(grpc.RpcError) as info:
        list(raw_stream(iter([b"\xff\xff\xff\xff\x0f"]), timeout=10))
    assert info.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    assert "Traceback" not in (info.value.details() or "")
    too_many = spb.SubmitAttestationsRequest(envelopes=[b"x"] * 5000)
    with pytest.raises(grpc.RpcError) as info:
        list(world.client.attestation.SubmitAttestations(iter([too_many]), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    unary_garbage = channel.unary_unary(
        "/pausewatch.v1.RegistryService/EnrollNode",
        request_serializer=None,
        response_deserializer=None,
    )
    with pytest.raises(grpc.RpcError):
        unary_garbage(b"\x0a\xff\xff\xff\xff\xff", timeout=10)
    assert counts(world.verifier) == before
    good = world.next_raw()
    (ok,) = world.client.submit([good])
    assert ok.status == spb.RECEIPT_STATUS_ACCEPTED
    world.chain.append(good)
