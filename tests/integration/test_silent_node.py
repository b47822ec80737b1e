"""A node that enrols and never attests: the whole of its span is one open gap, bounded in time by
the GPUs it enrolled with, and the server and an offline re-verification agree on it."""

from __future__ import annotations

import time
from pathlib import Path

from pausewatch.v1 import attestation_service_pb2 as spb

from attest import compute
from attest.keys import Ed25519Signer
from tests.builders import TestNode, fixed_private_key
from tests.verifier_harness import enroll_request, enrollment_for, write_verifier_files
from verifier.audit.bundle import export_bundle, verify_bundle
from verifier.config import load_config
from verifier.server.server import VerifierServer

S = 10**9
MINUTE = 60 * S


def test_a_silent_node_is_bounded_by_its_enrolled_gpus_on_server_and_offline(
    tmp_path: Path,
) -> None:
    server = VerifierServer.from_config(load_config(write_verifier_files(tmp_path / "v").config))
    operator = Ed25519Signer.from_private_key(fixed_private_key(100))
    try:
        now = time.time_ns()
        t0 = now - now % MINUTE - 30 * MINUTE
        talker = TestNode.from_seed(81, t0_ns=t0)
        silent = TestNode.from_seed(82, t0_ns=t0, gpus=4)
        for node in (talker, silent):
            request = enroll_request(enrollment_for(node, created_at_ns=t0 - S), node, operator)
            server.registry.enroll(request.enrollment_envelope, request.authorization_envelope)
        result = server.ingestor.submit(talker.chain(10))
        assert {r.status for r in result.receipts} == {spb.RECEIPT_STATUS_ACCEPTED}

        start, end = t0, t0 + 20 * MINUTE
        report = server.auditor.report("lab-a", start, end)
        [gap] = [g for g in report.gaps if bytes(g.node_id) == silent.node_id]
        span_ns = gap.gap.gap_end_ns - gap.gap.gap_start_ns
        assert span_ns >= 19 * MINUTE
        per_gpu = compute.time_bound_flop(silent.model, 1, span_ns // 1_000_000)
        assert int(gap.gap.time_bound_flop) == 4 * per_gpu > 0
        assert not gap.gap.energy_bounded

        checked = verify_bundle(
            export_bundle(server.auditor, "lab-a", start, end),
            pinned_log_key=server.core.note_signer.verifier().to_vkey(),
        )
        assert checked.ok, checked.failures + checked.differences
        assert checked.offline_report is not None
        [offline] = [g for g in checked.offline_report.gaps if bytes(g.node_id) == silent.node_id]
        assert offline.gap.time_bound_flop == gap.gap.time_bound_flop
    finally:
        server.stop()
