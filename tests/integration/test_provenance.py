"""Provenance in every report and bundle: each node's sampler backend and agent, the verifier's
ingest settings and software; simulated evidence never passes for production. A verifier operator
who restarts the verifier claiming it accepts only NVML cannot pass off the simulated windows it
already logged: the offline check names each one."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from pausewatch.v1 import audit_pb2 as apb

from tests.builders import TestNode
from tests.verifier_harness import enroll_request, enrollment_for, write_verifier_files
from verifier.bundle import export_bundle, verify_bundle
from verifier.config import load_config
from verifier.evaluation import render_text
from verifier.server import VerifierServer

S = 10**9
MINUTE = 60 * S


def test_reports_and_bundles_carry_provenance_and_a_relabelled_verifier_is_caught(
    tmp_path: Path,
) -> None:
    files = write_verifier_files(tmp_path / "v")  # accepts sim, nvml and replay
    server = VerifierServer.from_config(load_config(files.config))
    now = time.time_ns()
    t0 = now - now % MINUTE - 30 * MINUTE
    start, end = t0, t0 + 20 * MINUTE
    node = TestNode.from_seed(130, t0_ns=t0)  # a simulated node (SAMPLER_BACKEND_SIM)
    try:
        request = enroll_request(enrollment_for(node, created_at_ns=t0 - S), node, files.operator)
        server.registry.enroll(request.enrollment_envelope, request.authorization_envelope)
        assert {r.status for r in server.ingestor.submit(node.chain(10)).receipts} == {1}
        report = server.auditor.report("lab-a", start, end)
        settings = report.verifier_settings
        assert list(settings.accept_backends) == ["nvml", "replay", "sim"]
        assert settings.software_version.startswith("pausewatch ")
        assert settings.max_age_ns == 3_000_000_000 * S and not settings.require_nonce
        [summary] = report.nodes
        assert list(summary.sampler_backends) == ["sim"]
        assert list(summary.agent_digests) == [hashlib.sha256(b"agent").digest()]
        assert list(summary.agent_versions) == ["0.1.0"]
        assert summary.rooting == apb.EVIDENCE_ROOTING_SOFTWARE
        text = render_text(report)
        assert "WARNING   this verifier accepts replay, sim evidence (not real GPUs)" in text
        assert "  sim  " in text or " sim " in text

        honest = verify_bundle(
            export_bundle(server.auditor, "lab-a", start, end),
            pinned_log_key=server.core.note_signer.verifier().to_vkey(),
        )
        assert honest.ok, honest.failures + honest.differences
        assert any("not real GPUs" in w for w in honest.warnings)
        assert honest.offline_report is not None
        assert list(honest.offline_report.nodes[0].sampler_backends) == ["sim"]
    finally:
        server.stop()

    # The operator restarts the verifier saying it accepts NVML only, and exports again.
    files.config.write_text(
        files.config.read_text().replace(
            'accept_backends = ["sim", "nvml", "replay"]', 'accept_backends = ["nvml"]'
        )
    )
    relabelled = VerifierServer.from_config(load_config(files.config))
    try:
        report = relabelled.auditor.report("lab-a", start, end)
        assert list(report.verifier_settings.accept_backends) == ["nvml"]
        assert list(report.nodes[0].sampler_backends) == ["sim"]  # the windows say what they are
        checked = verify_bundle(
            export_bundle(relabelled.auditor, "lab-a", start, end),
            pinned_log_key=relabelled.core.note_signer.verifier().to_vkey(),
        )
        assert not checked.ok
        named = [f for f in checked.failures if "'sim' sampler backend" in f]
        assert len(named) == 10, checked.failures
        assert all("which the verifier says it does not accept (nvml)" in f for f in named)
    finally:
        relabelled.stop()
