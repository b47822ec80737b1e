"""No client can stall the others: a verifier process with only two worker threads holds a
flood of idle streams from one hostile node certificate (the lab holds its nodes' keys), refuses
the streams over that identity's limit, closes the idle ones after the idle timeout, and
meanwhile an honest agent's batches are accepted and the regulator's calls answer."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

import grpc
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import attestation_service_pb2_grpc as spb_grpc
from pausewatch.v1 import audit_pb2 as apb
from prometheus_client.parser import text_string_to_metric_families

from tests.agent_process import free_port
from tests.builders import TestNode
from tests.verifier_harness import (
    Client,
    fleet_access,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)
from verifier.server.tlsgen import issue_client_cert, write_self_signed

S = 10**9
SPIFFE = "spiffe://regulator.test"
HELD = 100  # limits.max_streams_per_identity
FLOOD = 150
IDLE_S = 10


def _credentials(tls: Path, who: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(tls / "ca.pem").read_bytes(),
        private_key=(tls / f"{who}.key").read_bytes(),
        certificate_chain=(tls / f"{who}.pem").read_bytes(),
    )


def _metric(port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    raise AssertionError(f"no {name} {labels}")


async def _flood(address: str, credentials: grpc.ChannelCredentials) -> list[grpc.StatusCode]:
    """FLOOD streams on one connection that never send a message; their final status codes."""
    async with grpc.aio.secure_channel(address, credentials) as channel:
        stub = spb_grpc.AttestationServiceStub(channel)
        calls = [stub.SubmitAttestations() for _ in range(FLOOD)]
        return list(await asyncio.gather(*(call.code() for call in calls)))


def test_an_idle_stream_flood_from_one_client_leaves_the_others_unaffected(
    tmp_path: Path,
) -> None:
    tls = tmp_path / "tls"
    files = write_self_signed(tls, ["127.0.0.1", "localhost"], keep_ca_key=True)
    t0 = time.time_ns() // (60 * S) * (60 * S) - 3600 * S
    honest, hostile = TestNode.from_seed(600, t0_ns=t0, gpus=2), TestNode.from_seed(601, t0_ns=t0)
    issue_client_cert(tls, "regulator", uri=f"{SPIFFE}/regulator")
    for name, node in (("honest", honest), ("hostile", hostile)):
        issue_client_cert(tls, name, uri=f"{SPIFFE}/lab/lab-a/node/{node.node_id.hex()}")
    metrics_port = free_port()
    access = fleet_access(SPIFFE)
    verifier_files = write_verifier_files(
        tmp_path / "v",
        access=access,
        extra_config=f"""[limits]
max_streams_per_identity = {HELD}
stream_idle_timeout_s = {IDLE_S}

[metrics]
listen = "127.0.0.1:{metrics_port}"
""",
    )
    text = verifier_files.config.read_text()
    verifier_files.config.write_text(
        text.replace(
            'insecure_no_tls = true\nlisten = "127.0.0.1:0"',
            f'listen = "127.0.0.1:0"\ntls_cert = "{files.server_cert}"\n'
            f'tls_key = "{files.server_key}"\nclient_ca = "{files.ca_cert}"',
        ).replace("workers = 8", "workers = 2")
    )
    running = start_verifier_process(
        verifier_files,
        tmp_path / "verifier.log",
        channel_for=lambda a: grpc.secure_channel(a, _credentials(tls, "regulator")),
    )
    try:
        address = running.address
        regulator = Client(
            grpc.secure_channel(address, _credentials(tls, "regulator")), verifier_files.operator
        )
        for node in (honest, hostile):
            regulator.enroll(node, created_at_ns=t0 - S)
        agent = Client(
            grpc.secure_channel(address, _credentials(tls, "honest")), verifier_files.operator
        )
        chain = honest.chain(6)
        assert {r.status for r in agent.submit(chain[:3])} == {spb.RECEIPT_STATUS_ACCEPTED}

        loop = asyncio.new_event_loop()
        flood = loop.create_task(_flood(address, _credentials(tls, "hostile")))
        loop.run_until_complete(asyncio.sleep(0.5))  # the flood is open (and idle)

        # While HELD hostile streams are open (more than 50 times the worker threads), the
        # honest agent's next batch is accepted and the regulator's calls answer.
        receipts = agent.submit(chain[3:])
        assert [r.status for r in receipts] == [spb.RECEIPT_STATUS_ACCEPTED] * 3
        checkpoint = regulator.audit.GetCheckpoint(apb.GetCheckpointRequest(), timeout=10)
        assert checkpoint.tree_size > 0
        report = regulator.audit.GetComplianceReport(
            apb.GetComplianceReportRequest(
                lab_id="lab-a", period_start_ns=t0, period_end_ns=t0 + 600 * S
            ),
            timeout=10,
        )
        assert report.report.lab_id == "lab-a"
        # All of that while the flood was held open (the honest streams have ended).
        assert _metric(metrics_port, "pausewatch_verifier_open_streams") == HELD
        assert _metric(metrics_port, "pausewatch_verifier_streams_refused_total") == FLOOD - HELD

        codes = loop.run_until_complete(asyncio.wait_for(flood, 60))
        loop.close()
    finally:
        assert stop_process(running) == 0
    # Over the identity's limit: refused at once. The rest: closed by the idle timeout.
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == FLOOD - HELD
    assert codes.count(grpc.StatusCode.UNAVAILABLE) == HELD


def test_agents_behind_one_address_queue_for_its_share_and_all_get_through(
    tmp_path: Path,
) -> None:
    """Twelve agents behind one address (a NAT; here loopback) send three one-window batches
    each, at once, to a verifier that lets that address have two messages in process and holds
    each group for 300 ms: the others queue, each finished message lets the next one in, and
    every window is accepted. The waits show in the metrics, by the limit that held them."""
    import threading

    metrics_port = free_port()
    files = write_verifier_files(
        tmp_path / "v",
        extra_ingest="commit_linger_ms = 300",
        extra_config=f"""[limits]
max_inflight_per_peer = 2

[metrics]
listen = "127.0.0.1:{metrics_port}"
""",
    )
    running = start_verifier_process(files, tmp_path / "verifier.log")
    t0 = time.time_ns() // (60 * S) * (60 * S) - 3600 * S
    nodes = [TestNode.from_seed(620 + i, t0_ns=t0, gpus=1) for i in range(12)]
    results: dict[int, list[int]] = {}
    try:
        regulator = Client(running.channel(), files.operator)
        for node in nodes:
            regulator.enroll(node, created_at_ns=t0 - S)
        barrier = threading.Barrier(len(nodes))

        def agent(i: int) -> None:
            channel = running.channel()
            grpc.channel_ready_future(channel).result(timeout=10)
            own = Client(channel, files.operator)
            barrier.wait()
            results[i] = [r.status for r in own.submit(nodes[i].chain(3), batch=1)]
            channel.close()

        threads = [threading.Thread(target=agent, args=(i,)) for i in range(len(nodes))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        waits = {
            limit: _metric(metrics_port, "pausewatch_verifier_inflight_waits_total", limit=limit)
            for limit in ("identity", "peer")
        }
        open_streams = _metric(
            metrics_port, "pausewatch_verifier_open_streams", method="SubmitAttestations"
        )
    finally:
        assert stop_process(running) == 0
    assert results == {i: [spb.RECEIPT_STATUS_ACCEPTED] * 3 for i in range(len(nodes))}
    # The address's share held some of them back; these clients have no certificate, so only
    # the per-address limits apply to them.
    assert waits["peer"] > 0
    assert waits["identity"] == 0
    assert open_streams == 0
