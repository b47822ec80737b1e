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
from verifier.accounting.evaluation import render_text
from verifier.audit.bundle import export_bundle, verify_bundle
from verifier.config import load_config
from verifier.server.server import VerifierServer

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


def test_bundles_carry_logging_times_and_a_back_dated_one_fails(tmp_path: Path) -> None:
    from pausewatch.v1 import attestation_pb2 as attpb
    from pausewatch.v1 import bundle_pb2 as bpb

    from attest.envelope import PayloadType, parse_envelope, sign_envelope

    files = write_verifier_files(tmp_path / "v")
    server = VerifierServer.from_config(load_config(files.config))
    now = time.time_ns()
    t0 = now - now % MINUTE - 30 * MINUTE
    node = TestNode.from_seed(131, t0_ns=t0)
    try:
        request = enroll_request(enrollment_for(node, created_at_ns=t0 - S), node, files.operator)
        server.registry.enroll(request.enrollment_envelope, request.authorization_envelope)
        before = time.time_ns()
        server.ingestor.submit(node.chain(5))
        after = time.time_ns()
        key = server.core.note_signer.verifier().to_vkey()
        data = export_bundle(server.auditor, "lab-a", t0, t0 + 20 * MINUTE)
        honest = verify_bundle(data, pinned_log_key=key)
        assert honest.ok, honest.failures
        bundle = bpb.EvidenceBundle.FromString(parse_envelope(data, max_size=1 << 30).payload)
        attestations = [
            e
            for e in bundle.entries
            if parse_envelope(e.envelope).payload_type == PayloadType.ATTESTATION
        ]
        assert len(attestations) == 5
        assert all(before <= e.logged_at_ns <= after for e in attestations)

        def resigned(change: object) -> bytes:
            copy = bpb.EvidenceBundle()
            copy.CopyFrom(bundle)
            change(copy)  # type: ignore[operator]
            return sign_envelope(
                server.core.envelope_signer,
                PayloadType.BUNDLE,
                copy.SerializeToString(deterministic=True),
            )

        def back_date(copy: bpb.EvidenceBundle) -> None:
            entry = next(e for e in copy.entries if e.log_index == attestations[-1].log_index)
            body = attpb.AttestationBody.FromString(parse_envelope(entry.envelope).payload)
            entry.logged_at_ns = body.window_end_ns - copy.max_clock_skew_ns - S
            for earlier in copy.entries:  # keep the order plausible: only the window gives it away
                if earlier.log_index < entry.log_index:
                    earlier.logged_at_ns = min(earlier.logged_at_ns, entry.logged_at_ns)

        failed = verify_bundle(resigned(back_date), pinned_log_key=key)
        assert any("before its window ended" in f for f in failed.failures), failed.failures

        def reorder(copy: bpb.EvidenceBundle) -> None:
            first, second = (
                next(e for e in copy.entries if e.log_index == a.log_index)
                for a in attestations[:2]
            )
            first.logged_at_ns = second.logged_at_ns + S

        failed = verify_bundle(resigned(reorder), pinned_log_key=key)
        assert any("logging times go back" in f for f in failed.failures), failed.failures
    finally:
        server.stop()
