"""The verifier as a real process: SIGKILL in the middle of batches loses nothing accepted;
SIGTERM drains in-flight calls; health, TLS, mutual TLS and reflection behave as configured."""

from __future__ import annotations

import contextlib
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from pausewatch.v1 import attestation_service_pb2 as spb

from attest import merkle
from attest.envelope import envelope_digest
from tests.builders import TestNode
from tests.verifier_harness import (
    Client,
    start_verifier_process,
    stop_process,
    wait_serving,
    write_verifier_files,
)

S = 10**9
MINUTE = 60 * S


def recent_t0() -> int:
    now = time.time_ns()
    return now - now % MINUTE - 24 * 3600 * S


def test_sigkill_mid_batch_loses_nothing_accepted(tmp_path: Path) -> None:
    files = write_verifier_files(tmp_path / "v")
    log_path = tmp_path / "verifier.log"
    t0 = recent_t0()
    nodes = [TestNode.from_seed(100 + i, t0_ns=t0, gpus=4) for i in range(6)]
    chains = {node.node_id: node.chain(120) for node in nodes}
    # Interleave the nodes' chains: every batch holds windows of several nodes.
    envelopes = [chains[n.node_id][seq] for seq in range(120) for n in nodes]
    rng = random.Random(7)
    running = start_verifier_process(files, log_path)
    client = Client(running.channel(), files.operator)
    for node in nodes:
        client.enroll(node, created_at_ns=t0 - S)
    accepted: dict[bytes, int] = {}
    kills = 0
    position = 0
    while position < len(envelopes) and kills < 4:
        batch_size = 40
        requests = [
            spb.SubmitAttestationsRequest(envelopes=envelopes[i : i + batch_size])
            for i in range(position, len(envelopes), batch_size)
        ]
        kill_after_s = rng.uniform(0.05, 0.6)
        killer = threading.Timer(
            kill_after_s, lambda r=running: r.process.send_signal(signal.SIGKILL)
        )  # type: ignore[union-attr]
        killer.start()
        try:
            for response in client.attestation.SubmitAttestations(iter(requests), timeout=60):
                for receipt in response.receipts:
                    if receipt.status in (
                        spb.RECEIPT_STATUS_ACCEPTED,
                        spb.RECEIPT_STATUS_DUPLICATE,
                    ):
                        accepted[bytes(receipt.envelope_digest)] = receipt.log_index
        except grpc.RpcError:
            pass
        killer.cancel()
        if running.process is not None and running.process.poll() is None:
            running.process.send_signal(signal.SIGKILL)
        assert running.process is not None
        running.process.wait(timeout=30)
        kills += 1
        # Everything a receipt called accepted is in the store at the index it named.
        with sqlite3.connect(files.store) as db:
            for digest, index in accepted.items():
                row = db.execute(
                    "SELECT idx FROM log_entries WHERE digest = ?", (digest,)
                ).fetchone()
                assert row is not None, "an accepted envelope was lost"
                assert row[0] == index
        # Resume where the receipts say the agents were (they resend everything unacknowledged).
        position = 0
        while position < len(envelopes) and envelope_digest(envelopes[position]) in accepted:
            position += 1
        running = start_verifier_process(files, log_path)
        client = Client(running.channel(), files.operator)
    # Finish: resend everything; all of it ends up on record exactly once, in chain order.
    receipts = client.submit(envelopes, batch=100)
    assert all(
        r.status in (spb.RECEIPT_STATUS_ACCEPTED, spb.RECEIPT_STATUS_DUPLICATE) for r in receipts
    )
    assert not any(r.gap_recorded for r in receipts)
    stop_process(running)
    with sqlite3.connect(files.store) as db:
        leaves = [bytes(r[0]) for r in db.execute("SELECT leaf_hash FROM log_entries ORDER BY idx")]
        entries = [bytes(r[0]) for r in db.execute("SELECT entry FROM log_entries ORDER BY idx")]
        indices = [r[0] for r in db.execute("SELECT idx FROM log_entries ORDER BY idx")]
        assert indices == list(range(len(indices)))  # no hole in the log
        assert leaves == [merkle.leaf_hash(e) for e in entries]
        (count,) = db.execute("SELECT COUNT(*) FROM attestations").fetchone()
        assert count == len(envelopes)
        (gaps,) = db.execute("SELECT COUNT(*) FROM gaps").fetchone()
        assert gaps == 0
        checkpoint = db.execute(
            "SELECT tree_size, root_hash FROM checkpoints ORDER BY tree_size DESC LIMIT 1"
        ).fetchone()
        assert checkpoint[0] == len(leaves)
        assert bytes(checkpoint[1]) == merkle.root_from_leaf_hashes(leaves)
    assert kills >= 1


def test_sigterm_drains_in_flight_calls_and_goes_not_serving(tmp_path: Path) -> None:
    files = write_verifier_files(tmp_path / "v")
    running = start_verifier_process(files, tmp_path / "verifier.log")
    client = Client(running.channel(), files.operator)
    t0 = recent_t0()
    node = TestNode.from_seed(120, t0_ns=t0)
    client.enroll(node, created_at_ns=t0 - S)
    chain = node.chain(30)
    sent = threading.Event()
    received: list[spb.SubmitAttestationsResponse] = []

    def slow_requests():  # type: ignore[no-untyped-def]
        for i in range(0, 30, 10):
            yield spb.SubmitAttestationsRequest(envelopes=chain[i : i + 10])
            if i == 0:
                sent.set()
                time.sleep(0.5)

    def run() -> None:
        with contextlib.suppress(grpc.RpcError):
            received.extend(client.attestation.SubmitAttestations(slow_requests(), timeout=30))

    worker = threading.Thread(target=run)
    worker.start()
    assert sent.wait(10)
    time.sleep(0.1)
    assert running.process is not None
    running.process.send_signal(signal.SIGTERM)
    # Health turns NOT_SERVING (or the port closes) promptly after SIGTERM.
    deadline = time.monotonic() + 5
    status = None
    while time.monotonic() < deadline:
        try:
            status = client.health.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            ).status
        except grpc.RpcError:
            status = "gone"
        if status != health_pb2.HealthCheckResponse.SERVING:
            break
        time.sleep(0.02)
    assert status != health_pb2.HealthCheckResponse.SERVING, (
        tmp_path / "verifier.log"
    ).read_text()[-3000:]
    worker.join(timeout=30)
    assert running.process.wait(timeout=30) == 0
    # The batch in flight when SIGTERM came was answered, and everything answered is on record.
    assert received
    answered = [r for response in received for r in response.receipts]
    assert all(r.status == spb.RECEIPT_STATUS_ACCEPTED for r in answered)
    with sqlite3.connect(files.store) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM attestations").fetchone()
    assert count == len(answered)


def test_sigterm_ends_agent_streams_waiting_between_batches_saying_why(tmp_path: Path) -> None:
    """An agent's stream that waits for its next window is ended at once on SIGTERM with
    UNAVAILABLE naming the shutdown (it was held to the end of the grace, then cut with gRPC's
    own 'Cancelling all calls'); what it sent before was answered and kept."""
    files = write_verifier_files(tmp_path / "v")
    running = start_verifier_process(files, tmp_path / "verifier.log")
    client = Client(running.channel(), files.operator)
    t0 = recent_t0()
    node = TestNode.from_seed(121, t0_ns=t0)
    client.enroll(node, created_at_ns=t0 - S)
    chain = node.chain(3)
    answered = threading.Event()
    never = threading.Event()

    def one_batch_then_wait():  # type: ignore[no-untyped-def]
        yield spb.SubmitAttestationsRequest(envelopes=chain)
        assert answered.wait(30)
        never.wait(60)  # the agent's next window is a minute away

    received: list[spb.SubmitAttestationsResponse] = []
    ended: list[grpc.RpcError] = []

    def run() -> None:
        try:
            for response in client.attestation.SubmitAttestations(
                one_batch_then_wait(), timeout=60
            ):
                received.append(response)
                answered.set()
        except grpc.RpcError as exc:
            ended.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert answered.wait(30)
    time.sleep(0.2)  # the stream is back to waiting for its next message
    assert running.process is not None
    running.process.send_signal(signal.SIGTERM)
    worker.join(timeout=30)
    never.set()
    assert running.process.wait(timeout=30) == 0
    [error] = ended
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert "the verifier is shutting down" in (error.details() or ""), error.details()
    [response] = received
    assert [r.status for r in response.receipts] == [spb.RECEIPT_STATUS_ACCEPTED] * 3
    with sqlite3.connect(files.store) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM attestations").fetchone()
    assert count == 3


def _tls_client(address: str, files: Path, *, with_client_cert: bool) -> grpc.Channel:
    ca = (files / "ca.pem").read_bytes()
    key = cert = None
    if with_client_cert:
        key = (files / "client.key").read_bytes()
        cert = (files / "client.pem").read_bytes()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    return grpc.secure_channel(address, credentials)


def test_tls_mutual_tls_and_plaintext_refusal(tmp_path: Path) -> None:
    from verifier.config import load_config
    from verifier.server.server import VerifierServer
    from verifier.server.tlsgen import write_self_signed

    directory = tmp_path / "v"
    files = write_verifier_files(directory)
    tls = write_self_signed(directory / "tls", ["127.0.0.1", "localhost"], client_name="agent-1")
    text = files.config.read_text()
    text = text.replace(
        'insecure_no_tls = true\nlisten = "127.0.0.1:0"',
        f'listen = "127.0.0.1:0"\ntls_cert = "{tls.server_cert}"\ntls_key = "{tls.server_key}"\n'
        f'client_ca = "{tls.ca_cert}"\nrequire_client_cert = true',
    )
    files.config.write_text(text)
    server = VerifierServer.from_config(load_config(files.config))
    port = server.start()
    address = f"127.0.0.1:{port}"
    request = spb.GetChallengeRequest(node_id=b"\x01" * 32)
    try:
        with _tls_client(address, directory / "tls", with_client_cert=True) as channel:
            Client(channel, files.operator).attestation.GetChallenge(request, timeout=10)
        with (
            _tls_client(address, directory / "tls", with_client_cert=False) as channel,
            pytest.raises(grpc.RpcError) as info,
        ):
            Client(channel, files.operator).attestation.GetChallenge(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as info:
            Client(channel, files.operator).attestation.GetChallenge(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_plaintext_needs_the_explicit_setting(tmp_path: Path) -> None:
    from attest.errors import ConfigError
    from verifier.config import load_config

    files = write_verifier_files(tmp_path / "v")
    files.config.write_text(files.config.read_text().replace("insecure_no_tls = true\n", ""))
    with pytest.raises(ConfigError, match="tls_cert"):
        load_config(files.config)


@pytest.mark.parametrize("enabled", [False, True])
def test_reflection_only_when_asked_for(tmp_path: Path, enabled: bool) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from verifier.config import load_config
    from verifier.server.server import VerifierServer

    files = write_verifier_files(tmp_path / "v")
    if enabled:
        files.config.write_text(
            files.config.read_text().replace("workers = 8", "workers = 8\nreflection = true")
        )
    server = VerifierServer.from_config(load_config(files.config))
    port = server.start()
    try:
        wait_serving(f"127.0.0.1:{port}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            if enabled:
                response = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
                names = {s.name for s in response.list_services_response.service}
                assert "pausewatch.v1.AuditService" in names
            else:
                with pytest.raises(grpc.RpcError) as info:
                    next(stub.ServerReflectionInfo(iter([request]), timeout=5))
                assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop()


def test_a_policy_that_does_not_fit_the_buckets_is_refused_at_start(tmp_path: Path) -> None:
    from attest.errors import ConfigError
    from verifier.config import load_config
    from verifier.server.server import VerifierServer

    files = write_verifier_files(
        tmp_path / "v",
        policy='format_version = 1\npolicy_id = "p"\nversion = 1\nlab_id = "lab-a"\n'
        '[[rules]]\nid = "r"\nkind = "cumulative_flop"\nwindow = "90s"\nlimit_flop = 1\n',
    )
    with pytest.raises(ConfigError, match=r"90s|bucket"):
        VerifierServer.from_config(load_config(files.config))


def test_a_port_in_use_is_a_clear_configuration_error(tmp_path: Path) -> None:
    import socket

    from attest.errors import ConfigError
    from verifier.config import load_config
    from verifier.server.server import VerifierServer

    files = write_verifier_files(tmp_path / "v")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        files.config.write_text(
            files.config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}")
        )
        server = VerifierServer.from_config(load_config(files.config))
        try:
            with pytest.raises(ConfigError, match="cannot listen"):
                server.start()
        finally:
            server.store.close()


def test_metrics_listen_on_the_command_line_overrides_the_config(tmp_path: Path) -> None:
    """``serve --metrics-listen`` is what the process binds (each of several processes sharing a
    config needs its own); an address in use stops the start with the setting named."""
    import socket

    from tests.integration.test_audit_cli import pausewatch

    files = write_verifier_files(tmp_path / "v", extra_config='[metrics]\nlisten = "127.0.0.1:0"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        served = pausewatch(
            "verifier", "serve", "--config", str(files.config),
            "--metrics-listen", f"127.0.0.1:{port}",
        )  # fmt: skip
    assert served.returncode == 2, served.stderr
    assert f"metrics.listen: cannot listen on '127.0.0.1:{port}'" in served.stderr


def _store_dump(store: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(store)) as db:
        return list(db.iterdump())


def test_another_bucket_width_on_an_existing_store_is_refused_and_the_store_kept(
    tmp_path: Path,
) -> None:
    """A verifier made a store with 60 s buckets; restarted with 30 s (a width the policy would
    allow) it exits 2 naming the setting and both values, and the store is byte for byte what it
    was; restarted with 60 s again it serves the same log and the same accounts."""
    from pausewatch.v1 import audit_pb2 as apb
    from pausewatch.v1 import registry_pb2 as rpb

    from tests.integration.test_audit_cli import pausewatch

    directory = tmp_path / "v"
    files = write_verifier_files(directory)
    t0 = recent_t0()
    node = TestNode.from_seed(130, t0_ns=t0)
    chain = node.chain(6)
    running = start_verifier_process(files, tmp_path / "verifier.log")
    client = Client(running.channel(), files.operator)
    client.enroll(node, created_at_ns=t0 - S)
    assert [r.status for r in client.submit(chain)] == [spb.RECEIPT_STATUS_ACCEPTED] * 6
    period = apb.GetComplianceReportRequest(
        lab_id="lab-a", period_start_ns=t0, period_end_ns=t0 + 6 * MINUTE
    )
    before = client.audit.GetComplianceReport(period).report
    assert stop_process(running) == 0
    dump = _store_dump(files.store)
    with contextlib.closing(sqlite3.connect(files.store)) as db:
        recorded = db.execute("SELECT value FROM meta WHERE key = 'ingest.bucket_ms'").fetchone()
    assert bytes(recorded[0]) == b"60000"

    write_verifier_files(directory, bucket_ms=30_000)
    refused = pausewatch("verifier", "serve", "--config", str(files.config))
    assert refused.returncode == 2, refused.stderr
    assert (
        f"error: {files.config}: ingest.bucket_ms: the store records 60000, this config says "
        "30000: the store's accounting buckets were made with ingest.bucket_ms = 60000, and read as "
        "buckets of another width every report would be wrong. Set ingest.bucket_ms = 60000 again, or give "
        "the new value a new store; the store was not changed"
    ) in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _store_dump(files.store) == dump

    write_verifier_files(directory)  # the width the store was made with
    running = start_verifier_process(files, tmp_path / "verifier.log")
    try:
        client = Client(running.channel(), files.operator)
        info = client.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id)).node
        assert (info.head_seq, info.head_digest) == (5, envelope_digest(chain[5]))
        again = client.submit(chain)
        assert [r.status for r in again] == [spb.RECEIPT_STATUS_DUPLICATE] * 6
        after = client.audit.GetComplianceReport(period).report
        assert after.tree_size == before.tree_size
        assert after.nodes[0].attestations == before.nodes[0].attestations == 6
        assert after.totals == before.totals
        assert int(before.totals.upper_bound_flop) > 0
        assert list(after.series) == list(before.series)
    finally:
        stop_process(running)
