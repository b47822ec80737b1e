"""The shipper against a real gRPC server on loopback: stream, receipts, nonce, outages, TLS."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from pausewatch.v1 import attestation_service_pb2 as api

from agent.clock import SystemClock
from agent.config import VerifierConfig
from agent.shipper import Shipper
from agent.spool import EnvelopeStatus, Spool, WindowTimes
from attest.attestation import parse_attestation_body
from attest.envelope import parse_envelope
from attest.ids import NodeId
from tests.agent_setup import verifier_config
from tests.builders import T0_NS, WINDOW_NS, TestNode
from tests.fake_verifier import FakeVerifier
from tests.tls import TestPki

NODE = TestNode.from_seed(5)
NODE_ID = NodeId(NODE.node_id)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def append(spool: Spool, count: int) -> None:
    def sign(seq: int, prev: bytes, nonce: bytes) -> bytes:
        return NODE.sign_body(NODE.body(seq, prev, nonce=nonce))

    for _ in range(count):
        head = spool.head()
        seq = 0 if head is None else head.seq + 1
        spool.append(
            sign,
            WindowTimes(T0_NS + seq * WINDOW_NS, T0_NS + (seq + 1) * WINDOW_NS),
            samples=b"",
            created_at_ns=T0_NS,
        )


class Running:
    """A shipper thread over a spool, stopped at the end of the test."""

    def __init__(self, tmp_path: Path, config: VerifierConfig) -> None:
        self.path = tmp_path / "spool.db"
        self.spool = Spool.open(self.path, node_id=NODE_ID)
        self.shipper = Shipper(self.path, NODE_ID, config, clock=SystemClock())
        self.thread = threading.Thread(target=self.shipper.run, daemon=True)

    def start(self) -> Running:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shipper.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()

    def pending(self) -> int:
        return self.spool.stats().pending_count


@pytest.fixture
def verifier() -> Iterator[FakeVerifier]:
    server = FakeVerifier()
    server.start()
    server.add_node(NODE.signer.public_key)
    yield server
    server.stop()


@pytest.fixture
def running(tmp_path: Path, verifier: FakeVerifier) -> Iterator[Running]:
    run = Running(tmp_path, verifier_config(address=verifier.address, backoff_initial_ms=10))
    yield run
    run.stop()


def test_everything_spooled_is_shipped_in_order_and_receipts_kept(
    running: Running, verifier: FakeVerifier
) -> None:
    append(running.spool, 20)
    running.start()
    wait_until(lambda: running.pending() == 0)
    stored = running.spool.envelopes()
    assert [e.status for e in stored] == [EnvelopeStatus.ACCEPTED] * 20
    accepted = verifier.accepted_in_order(NODE_ID)
    assert accepted == [e.envelope for e in stored]  # byte for byte, in seq order
    assert [e.log_index for e in stored] == [verifier.log.index(e.envelope) for e in stored]
    assert verifier.streams == 1  # one long-lived stream
    assert verifier.batches >= 3  # batch_max_envelopes = 8
    last = running.spool.stats().last_receipt
    assert last is not None
    assert last.seq == 19


def test_the_verifier_nonce_goes_into_the_next_window(
    running: Running, verifier: FakeVerifier
) -> None:
    running.start()
    wait_until(lambda: running.spool.nonce() is not None)
    nonce = running.spool.nonce()
    assert nonce is not None
    assert nonce.nonce in verifier.issued[NODE_ID]
    append(running.spool, 1)
    running.shipper.notify()
    wait_until(lambda: running.pending() == 0)
    envelope = running.spool.envelopes()[0]
    assert envelope.status is EnvelopeStatus.ACCEPTED
    body = parse_attestation_body(parse_envelope(envelope.envelope).payload)
    assert body.verifier_nonce == nonce.nonce


def test_a_short_nonce_lifetime_is_refreshed_within_it(
    running: Running, verifier: FakeVerifier
) -> None:
    """nonce_refresh_s is 60 s here, but the verifier's nonces live 3 s: the agent refreshes at
    least three times a lifetime, so no window it signs while connected carries a stale nonce."""
    verifier.nonce_lifetime_ns = 3 * 10**9
    running.start()
    wait_until(lambda: running.spool.nonce() is not None)
    first = running.spool.nonce()
    assert first is not None
    wait_until(lambda: len(verifier.issued.get(NODE_ID, ())) >= 3, timeout_s=10)
    latest = running.spool.nonce()
    assert latest is not None and latest.issued_at_ns > first.issued_at_ns
    assert latest.expires_at_ns - latest.issued_at_ns == 3 * 10**9


def test_a_final_rejection_is_kept_and_never_resent(
    running: Running, verifier: FakeVerifier
) -> None:
    verifier.reject_reason = api.REJECT_REASON_UNKNOWN_GPU
    append(running.spool, 1)
    running.start()
    wait_until(lambda: running.pending() == 0)
    verifier.reject_reason = None
    append(running.spool, 2)
    running.shipper.notify()
    wait_until(lambda: running.pending() == 0)
    stored = running.spool.envelopes()
    assert [e.status for e in stored] == [
        EnvelopeStatus.REJECTED,
        EnvelopeStatus.ACCEPTED,  # a gap for the verifier, accepted
        EnvelopeStatus.ACCEPTED,
    ]
    assert stored[0].reject_reason == "UNKNOWN_GPU"
    assert verifier.received.count(stored[0].envelope) == 1
    stats = running.spool.stats()
    assert stats.rejected_count == 1
    assert any("UNKNOWN_GPU" in message for _, _, message in stats.last_errors)
    assert verifier.node(NODE_ID).gaps == [(0, 1)]


def test_unavailable_is_retried_with_backoff(running: Running, verifier: FakeVerifier) -> None:
    verifier.unavailable_batches = 3
    append(running.spool, 4)
    running.start()
    wait_until(lambda: running.pending() == 0)
    assert [e.status for e in running.spool.envelopes()] == [EnvelopeStatus.ACCEPTED] * 4
    assert verifier.streams >= 4  # each UNAVAILABLE ends the session; a new stream after backoff
    assert any(e.attempts > 1 for e in running.spool.envelopes())


def test_a_dropped_stream_is_reopened_and_nothing_is_lost_or_forked(
    running: Running, verifier: FakeVerifier
) -> None:
    verifier.drop_after_batches = 1
    append(running.spool, 30)
    running.start()
    wait_until(lambda: running.pending() == 0)
    assert verifier.streams >= 2
    assert len(verifier.accepted_in_order(NODE_ID)) == 30
    assert verifier.node(NODE_ID).forks == []


def test_backfill_after_an_outage_is_oldest_first(tmp_path: Path) -> None:
    server = FakeVerifier()
    port = server.start()
    server.add_node(NODE.signer.public_key)
    run = Running(
        tmp_path, verifier_config(address=server.address, backoff_initial_ms=10, backoff_max_ms=50)
    )
    run.start()
    try:
        append(run.spool, 3)
        run.shipper.notify()
        wait_until(lambda: run.pending() == 0)
        server.stop()  # outage
        append(run.spool, 10)
        time.sleep(0.3)
        assert run.pending() == 10
        replacement = FakeVerifier()
        replacement.nodes = server.nodes  # the same verifier state, back on the same port
        replacement.log = server.log
        replacement.issued = server.issued
        replacement.start(port)
        wait_until(lambda: run.pending() == 0)
        backfilled = [
            parse_attestation_body(parse_envelope(raw).payload).seq for raw in replacement.received
        ]
        assert backfilled == sorted(backfilled)
        assert backfilled[0] == 3
        assert len(replacement.accepted_in_order(NODE_ID)) == 13
        replacement.stop()
    finally:
        run.stop()


def test_a_receipt_for_another_envelope_is_a_protocol_error(tmp_path: Path) -> None:
    class Liar(FakeVerifier):
        def SubmitAttestations(self, request_iterator, context):  # type: ignore[no-untyped-def]
            for request in request_iterator:
                yield api.SubmitAttestationsResponse(
                    receipts=[
                        api.Receipt(
                            envelope_digest=b"\x00" * 32,
                            status=api.RECEIPT_STATUS_ACCEPTED,
                            log_index=1,
                        )
                        for _ in request.envelopes
                    ]
                )

    server = Liar()
    server.start()
    run = Running(tmp_path, verifier_config(address=server.address))
    append(run.spool, 2)
    run.start()
    try:
        wait_until(lambda: bool(run.spool.stats().last_errors))
        assert "names another envelope" in run.spool.stats().last_errors[0][2]
        assert run.pending() == 2  # nothing recorded from a lying response
    finally:
        run.stop()
        server.stop()


@pytest.fixture(scope="module")
def pki() -> TestPki:
    return TestPki.create()


def tls_config(tmp_path: Path, pki: TestPki, address: str, **overrides: object) -> VerifierConfig:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca_pem)
    base = verifier_config(address=address, insecure_no_tls=False, ca_cert=ca)
    return replace(base, **overrides)  # type: ignore[arg-type]


def test_ships_over_tls(tmp_path: Path, pki: TestPki) -> None:
    server = FakeVerifier(tls=(pki.server_key_pem, pki.server_cert_pem))
    server.start()
    server.add_node(NODE.signer.public_key)
    config = tls_config(tmp_path, pki, f"localhost:{server.port}")
    run = Running(tmp_path, config)
    append(run.spool, 2)
    run.start()
    try:
        wait_until(lambda: run.pending() == 0)
        assert len(server.accepted_in_order(NODE_ID)) == 2
    finally:
        run.stop()
        server.stop()


def test_mutual_tls(tmp_path: Path, pki: TestPki) -> None:
    server = FakeVerifier(tls=(pki.server_key_pem, pki.server_cert_pem), client_ca=pki.ca_pem)
    server.start()
    server.add_node(NODE.signer.public_key)
    key = tmp_path / "client.key"
    cert = tmp_path / "client.pem"
    key.write_bytes(pki.client_key_pem)
    cert.write_bytes(pki.client_cert_pem)
    without = Running(tmp_path, tls_config(tmp_path, pki, f"localhost:{server.port}"))
    append(without.spool, 1)
    without.start()
    try:
        wait_until(lambda: bool(without.spool.stats().last_errors))
        assert without.pending() == 1  # no client certificate: refused
    finally:
        without.stop()
    config = tls_config(tmp_path, pki, f"localhost:{server.port}", client_cert=cert, client_key=key)
    run = Running(tmp_path, config)
    run.start()
    try:
        wait_until(lambda: run.pending() == 0)
    finally:
        run.stop()
        server.stop()


def test_tls_refuses_a_server_the_ca_did_not_sign(tmp_path: Path, pki: TestPki) -> None:
    other = TestPki.create()
    server = FakeVerifier(tls=(other.server_key_pem, other.server_cert_pem))
    server.start()
    server.add_node(NODE.signer.public_key)
    run = Running(tmp_path, tls_config(tmp_path, pki, f"localhost:{server.port}"))
    append(run.spool, 1)
    run.start()
    try:
        wait_until(lambda: bool(run.spool.stats().last_errors))
        assert run.pending() == 1
        assert server.received == []
    finally:
        run.stop()
        server.stop()


def test_plaintext_needs_the_explicit_flag(
    tmp_path: Path, verifier: FakeVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    # A TLS client (the default) cannot talk to a plaintext server.
    tls = Running(
        tmp_path, replace(verifier_config(address=verifier.address), insecure_no_tls=False)
    )
    append(tls.spool, 1)
    tls.start()
    try:
        wait_until(lambda: bool(tls.spool.stats().last_errors))
        assert verifier.received == []
    finally:
        tls.stop()
    # With insecure_no_tls it ships, and says loudly that it is insecure.
    with caplog.at_level(logging.WARNING, logger="agent.shipper"):
        plain = Running(tmp_path, verifier_config(address=verifier.address))
        plain.start()
        try:
            wait_until(lambda: plain.pending() == 0)
        finally:
            plain.stop()
    assert any("insecure_no_tls" in r.getMessage() for r in caplog.records)


def test_an_unreadable_ca_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    run = Running(
        tmp_path,
        replace(
            verifier_config(address="127.0.0.1:9"),
            insecure_no_tls=False,
            ca_cert=tmp_path / "missing.pem",
        ),
    )
    run.start()
    try:
        wait_until(lambda: bool(run.spool.stats().last_errors))
        assert "verifier.ca_cert" in run.spool.stats().last_errors[0][2]
    finally:
        run.stop()


def test_grpc_status_of_a_refused_connection_is_recorded(tmp_path: Path) -> None:
    run = Running(tmp_path, verifier_config(address="127.0.0.1:9", rpc_timeout_ms=300))
    run.start()
    try:
        wait_until(lambda: bool(run.spool.stats().last_errors))
        assert (
            run.spool.stats()
            .last_errors[0][2]
            .startswith("refused: " + grpc.StatusCode.UNAVAILABLE.name)
        )
    finally:
        run.stop()


def test_a_verifier_slower_than_the_timeout_is_retried(
    running: Running, verifier: FakeVerifier
) -> None:
    verifier.delay_s = 1.5  # rpc_timeout_ms is 1000
    append(running.spool, 2)
    running.start()
    wait_until(lambda: bool(running.spool.stats().last_errors))
    assert running.spool.stats().last_errors[0][2].startswith("timeout: CANCELLED")
    verifier.delay_s = 0.0
    wait_until(lambda: running.pending() == 0)
    assert len(verifier.accepted_in_order(NODE_ID)) == 2
