"""What the lab agreed to: the lab's operator countersigns its policy file; reports and bundles
show it (and show a lab that has not signed as such). The verifier refuses to start on an
acceptance signed by any other key or for other policy bytes, and an offline check refuses an
acceptance in a bundle that the lab's operator key did not sign."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from attest.envelope import PayloadType, sign_envelope
from attest.keys import Ed25519Signer, save_private_key
from tests.builders import TestNode, fixed_private_key
from tests.integration.test_audit_cli import pausewatch
from tests.verifier_harness import (
    DEFAULT_POLICY,
    REPO,
    VerifierFiles,
    enroll_request,
    enrollment_for,
    write_verifier_files,
)
from verifier.accounting.evaluation import render_text
from verifier.audit.bundle import export_bundle, verify_bundle
from verifier.config import load_config
from verifier.server.server import VerifierServer

S = 10**9
MINUTE = 60 * S


def lab_files(
    directory: Path, accept_with_seed: int | None, policy: str = DEFAULT_POLICY
) -> VerifierFiles:
    extra = 'policy_acceptance = "accept.sig"' if accept_with_seed is not None else ""
    files = write_verifier_files(directory, extra_lab=extra, policy=policy)
    if accept_with_seed is not None:
        key = directory / f"signer-{accept_with_seed}.key"
        save_private_key(key, fixed_private_key(accept_with_seed))
        signed = pausewatch(
            "policy",
            "accept",
            str(directory / "policy.toml"),
            "--operator-key",
            str(key),
            "--out",
            str(directory / "accept.sig"),
        )
        assert signed.returncode == 0, signed.stderr
    return files


def serve(files: VerifierFiles) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "verifier.cli", "verifier", "serve", "--config", str(files.config)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "protos")])),
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("accepted", [True, False])
def test_reports_and_bundles_show_whether_the_lab_accepted_its_policy(
    tmp_path: Path, accepted: bool
) -> None:
    files = lab_files(tmp_path / "v", 100 if accepted else None)  # seed 100: the lab's operator
    server = VerifierServer.from_config(load_config(files.config))
    try:
        now = time.time_ns()
        t0 = now - now % MINUTE - 30 * MINUTE
        node = TestNode.from_seed(140, t0_ns=t0)
        request = enroll_request(enrollment_for(node, created_at_ns=t0 - S), node, files.operator)
        server.registry.enroll(request.enrollment_envelope, request.authorization_envelope)
        server.ingestor.submit(node.chain(5))
        report = server.auditor.report("lab-a", t0, t0 + 10 * MINUTE)
        assert report.policy_accepted is accepted
        text = render_text(report)
        if accepted:
            assert report.policy_acceptance_log_index > 0
            assert "accepted by the lab's operator key (log index" in text
        else:
            assert "NOT countersigned by the lab" in text
        checked = verify_bundle(
            export_bundle(server.auditor, "lab-a", t0, t0 + 10 * MINUTE),
            pinned_log_key=server.core.note_signer.verifier().to_vkey(),
        )
        assert checked.ok, checked.failures + checked.differences
        assert checked.offline_report is not None
        assert checked.offline_report.policy_accepted is accepted
    finally:
        server.stop()
    # Restarting logs nothing twice.
    again = VerifierServer.from_config(load_config(files.config))
    try:
        size = again.core.log.size
        assert again.auditor.report("lab-a", t0, t0 + 10 * MINUTE).policy_accepted is accepted
    finally:
        again.stop()
    assert size == again.core.log.size


def test_the_verifier_refuses_an_acceptance_by_another_key_or_of_other_bytes(
    tmp_path: Path,
) -> None:
    forged = lab_files(tmp_path / "forged", 101)  # signed with the regulator's own log key
    run = serve(forged)
    assert run.returncode == 2
    assert "not the lab's operator key" in run.stderr and "accept.sig" in run.stderr
    # The lab accepted one policy; the regulator's config holds another.
    stale = lab_files(tmp_path / "stale", 100)
    (tmp_path / "stale" / "policy.toml").write_text(
        DEFAULT_POLICY.replace('limit_flop = "1e21"', 'limit_flop = "1e22"')
    )
    run = serve(stale)
    assert run.returncode == 2
    assert "accepts the policy file with sha256" in run.stderr
    assert "Traceback" not in run.stderr
    # The lab's tool never overwrites an acceptance.
    again = pausewatch(
        "policy",
        "accept",
        str(tmp_path / "stale" / "policy.toml"),
        "--operator-key",
        str(tmp_path / "stale" / "signer-100.key"),
        "--out",
        str(tmp_path / "stale" / "accept.sig"),
    )
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


def test_an_acceptance_the_operator_did_not_sign_fails_offline() -> None:
    from pausewatch.v1 import policy_pb2

    from tests.unit.verifier.audit.test_bundle_offline import LOG, lab_entries, make_bundle
    from verifier.accounting.policy import load_policy_bytes

    now = time.time_ns()
    node = TestNode.from_seed(141, t0_ns=now - 20 * MINUTE)
    policy = load_policy_bytes(DEFAULT_POLICY.encode(), "policy.toml")
    body = policy_pb2.PolicyAcceptance(
        format_version=1,
        lab_id="lab-a",
        policy_id=policy.policy_id,
        policy_version=policy.version,
        policy_sha256=policy.digest,
        accepted_at_ns=now,
    )
    entries = lab_entries(node, now)
    honest = sign_envelope(
        Ed25519Signer.from_private_key(fixed_private_key(100)),
        PayloadType.POLICY_ACCEPTANCE,
        body.SerializeToString(),
    )
    forged = sign_envelope(LOG, PayloadType.POLICY_ACCEPTANCE, body.SerializeToString())
    good = verify_bundle(make_bundle([*entries, honest], node.t0_ns))
    assert not [f for f in good.failures if "acceptance" in f]
    bad = verify_bundle(make_bundle([*entries, forged], node.t0_ns))
    assert [
        f for f in bad.failures if "policy acceptance not signed by the lab's operator key" in f
    ]
