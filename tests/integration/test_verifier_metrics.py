"""The verifier's Prometheus endpoint, scraped over HTTP from a real verifier process after a
known ingest: every documented name is there and the counts are those of the ingest."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from pausewatch.v1 import attestation_service_pb2 as spb
from prometheus_client.parser import text_string_to_metric_families

from tests.agent_process import free_port
from tests.builders import TestNode
from tests.verifier_harness import (
    Client,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)

S = 10**9
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_after_a_known_ingest(tmp_path: Path) -> None:
    port = free_port()
    files = write_verifier_files(
        tmp_path / "v", extra_config=f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )
    running = start_verifier_process(files, tmp_path / "verifier.log")
    try:
        before = scrape(port)
        assert before[("pausewatch_verifier_envelopes_received_total", ())] == 0
        logged_at_start = before[("pausewatch_verifier_log_size_entries", ())]  # labs, policy
        client = Client(running.channel(), files.operator)
        node = TestNode.from_seed(500, t0_ns=time.time_ns() // S * S - 3600 * S, gpus=2)
        client.enroll(node, created_at_ns=node.t0_ns - S)
        chain = node.chain(4)
        # 4 accepted, then in a second batch 2 duplicates and 1 malformed envelope.
        receipts = client.submit(chain, batch=4) + client.submit([*chain[:2], b"\x00junk"])
        assert [r.status for r in receipts].count(spb.RECEIPT_STATUS_ACCEPTED) == 4
        tree_size = client.submit_batches([chain[0]])[0].tree_size  # a third batch: duplicate
        # Two calls that end in an error status: a unary call, and a stream whose batch is over
        # the limit (it gets no receipts, so it counts as no batch and no envelope received).
        with pytest.raises(grpc.RpcError) as refused:
            client.attestation.GetChallenge(spb.GetChallengeRequest(node_id=b"abc"), timeout=10)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        oversized = spb.SubmitAttestationsRequest(envelopes=[b"x"] * 1025)
        with pytest.raises(grpc.RpcError) as aborted:
            list(client.attestation.SubmitAttestations(iter([oversized]), timeout=10))
        assert aborted.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        after = scrape(port)
    finally:
        assert stop_process(running) == 0

    def value(name: str, **labels: str) -> float:
        return after[(name, tuple(sorted(labels.items())))]

    assert value("pausewatch_verifier_envelopes_received_total") == 8
    assert value("pausewatch_verifier_batches_total") == 3
    assert value("pausewatch_verifier_receipts_total", status="accepted", reason="unspecified") == 4
    assert (
        value("pausewatch_verifier_receipts_total", status="duplicate", reason="unspecified") == 3
    )
    assert (
        value("pausewatch_verifier_receipts_total", status="rejected", reason="malformed_envelope")
        == 1
    )
    assert value("pausewatch_verifier_open_streams", method="SubmitAttestations") == 0
    assert value("pausewatch_verifier_log_size_entries") == tree_size
    assert tree_size >= logged_at_start + 5  # the enrolment and 4 windows (and any findings)
    assert 0 <= value("pausewatch_verifier_checkpoint_age_seconds") < 60
    assert value("pausewatch_verifier_monitor_lag_seconds") >= 0
    assert value("pausewatch_verifier_streams_refused_total") == 0
    for limit in ("identity", "peer"):
        assert value("pausewatch_verifier_inflight_waits_total", limit=limit) == 0
    for stage, batches in (("batch", 3), ("verify", 3)):
        assert value("pausewatch_verifier_stage_duration_seconds_count", stage=stage) == batches
    # Group commit: three batches sent one after another make 1 to 3 commits.
    assert 1 <= value("pausewatch_verifier_stage_duration_seconds_count", stage="commit") <= 3
    assert value("pausewatch_verifier_store_commit_duration_seconds_count") >= 4  # + enrolment
    assert value("pausewatch_verifier_rpc_duration_seconds_count", method="EnrollNode") == 1
    assert value("pausewatch_verifier_stage_duration_seconds_sum", stage="batch") > 0
    for method in ("GetChallenge", "SubmitAttestations"):
        assert (
            value("pausewatch_verifier_rpc_errors_total", method=method, code="invalid_argument")
            == 1
        )
    assert value("pausewatch_verifier_checkpoint_failures_total") == 0
    assert value("pausewatch_verifier_store_commit_failures_total") == 0


def test_a_commit_linger_groups_small_batches_of_many_streams(tmp_path: Path) -> None:
    """Eight agents each send one window at once; with a linger they share transactions (the
    commit count says so), and each still gets its own receipt, accepted."""
    import threading

    port = free_port()
    files = write_verifier_files(
        tmp_path / "v",
        extra_ingest="commit_linger_ms = 1500",
        extra_config=f'[metrics]\nlisten = "127.0.0.1:{port}"\n',
    )
    running = start_verifier_process(files, tmp_path / "verifier.log")
    try:
        client = Client(running.channel(), files.operator)
        t0 = time.time_ns() // S * S - 3600 * S
        nodes = [TestNode.from_seed(510 + i, t0_ns=t0, gpus=1) for i in range(8)]
        for node in nodes:
            client.enroll(node, created_at_ns=t0 - S)
        commits_before = scrape(port).get(
            ("pausewatch_verifier_stage_duration_seconds_count", (("stage", "commit"),)), 0.0
        )
        results: dict[int, list[spb.Receipt]] = {}
        barrier = threading.Barrier(len(nodes))

        def agent(i: int) -> None:
            own = Client(running.channel(), files.operator)
            barrier.wait()
            results[i] = own.submit(nodes[i].chain(1))

        threads = [threading.Thread(target=agent, args=(i,)) for i in range(len(nodes))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        after = scrape(port)
    finally:
        assert stop_process(running) == 0
    assert all([r.status for r in results[i]] == [spb.RECEIPT_STATUS_ACCEPTED] for i in range(8)), (
        results
    )
    commits = (
        after[("pausewatch_verifier_stage_duration_seconds_count", (("stage", "commit"),))]
        - commits_before
    )
    assert 1 <= commits <= 2  # without the linger: up to one per batch
