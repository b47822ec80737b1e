"""A verifier left at the default ``ingest.accept_backends`` (nvml only) refuses correctly signed
windows from the sim and replay sampler backends, logs nothing of them, and accepts the same
node's nvml window."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pausewatch.v1 import attestation_pb2 as pb
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import registry_pb2 as rpb

from attest.envelope import envelope_digest
from attest.ids import ZERO_DIGEST
from tests.builders import TestNode
from tests.verifier_harness import Client, RunningVerifier, write_verifier_files

S = 10**9
MINUTE = 60 * S
HARNESS_BACKENDS = 'accept_backends = ["sim", "nvml", "replay"]\n'


@contextlib.contextmanager
def default_backends_verifier(directory: Path) -> Iterator[RunningVerifier]:
    """An in-process verifier whose config names no ``accept_backends`` (the harness's does)."""
    from verifier.config import load_config
    from verifier.server.server import VerifierServer

    files = write_verifier_files(directory)
    text = files.config.read_text(encoding="utf-8")
    assert text.count(HARNESS_BACKENDS) == 1
    files.config.write_text(text.replace(HARNESS_BACKENDS, ""), encoding="utf-8")
    config = load_config(files.config)
    assert config.ingest.accept_backends == ("nvml",)
    server = VerifierServer.from_config(config)
    port = server.start()
    try:
        yield RunningVerifier(files, f"127.0.0.1:{port}")
    finally:
        server.stop()


def window(node: TestNode, backend: int, seq: int = 0, prev: bytes = ZERO_DIGEST) -> bytes:
    body = node.body(seq, prev)
    body.sampler_backend = backend  # type: ignore[assignment]
    return node.sign_body(body)


def findings(client: Client) -> list[apb.LoggedFinding]:
    return list(client.audit.ListFindings(apb.ListFindingsRequest(lab_id="lab-a")).findings)


@pytest.mark.parametrize(
    ("backend", "name"),
    [(pb.SAMPLER_BACKEND_SIM, "sim"), (pb.SAMPLER_BACKEND_REPLAY, "replay")],
    ids=["sim", "replay"],
)
def test_sim_and_replay_windows_are_refused_by_default_and_nvml_accepted(
    tmp_path: Path, backend: int, name: str
) -> None:
    now = time.time_ns()
    t0 = now - now % MINUTE - 2 * 3600 * S
    node = TestNode.from_seed(61, t0_ns=t0)
    simulated = window(node, backend)
    honest = window(node, pb.SAMPLER_BACKEND_NVML)
    simulated_next = window(node, backend, seq=1, prev=envelope_digest(honest))
    with default_backends_verifier(tmp_path / "v") as v:
        client = v.client()
        client.enroll(node, created_at_ns=t0 - S)
        findings_before = findings(client)
        (refused,) = client.submit_batches([simulated])
        (receipt,) = refused.receipts
        assert (receipt.status, receipt.reason) == (
            spb.RECEIPT_STATUS_REJECTED,
            spb.REJECT_REASON_INVALID_BODY,
        )
        assert receipt.detail == f"sampler backend {name!r} is not accepted by this verifier"
        assert (receipt.has_seq, receipt.seq, receipt.log_index) == (True, 0, 0)
        info = client.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id)).node
        assert not info.has_head
        assert findings(client) == findings_before  # not even a finding about it
        # Control: the same node's window from real GPUs, otherwise the same, is accepted.
        (accepted,) = client.submit_batches([honest])
        (ok,) = accepted.receipts
        assert ok.status == spb.RECEIPT_STATUS_ACCEPTED, ok.detail
        assert ok.log_index == refused.tree_size  # the refused window took no index
        findings_accepted = findings(client)
        # Refused after an accepted window too: the chain stays at the nvml window.
        (again,) = client.submit_batches([simulated_next])
        assert (again.receipts[0].status, again.receipts[0].reason) == (
            spb.RECEIPT_STATUS_REJECTED,
            spb.REJECT_REASON_INVALID_BODY,
        )
        assert again.tree_size == accepted.tree_size
        info = client.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id)).node
        assert (info.head_seq, info.head_digest) == (0, envelope_digest(honest))
        assert findings(client) == findings_accepted
    with contextlib.closing(sqlite3.connect(v.files.store)) as db:
        logged = {bytes(row[0]) for row in db.execute("SELECT digest FROM log_entries").fetchall()}
        (attestations,) = db.execute("SELECT COUNT(*) FROM attestations").fetchone()
    assert envelope_digest(honest) in logged
    assert envelope_digest(simulated) not in logged
    assert envelope_digest(simulated_next) not in logged
    assert attestations == 1
