"""Reports and bundles of TPM-rooted nodes, against a real verifier process and swtpm.

A policy that requires TPM-rooted nodes makes a node that sends no quotes UNACCOUNTED (its windows
are accepted, and counted as software-rooted), while a lab whose nodes all quote stays COMPLIANT;
the report says per node how its evidence is rooted; and an exported bundle carries what an
offline auditor needs to re-check every quote, so a verifier that drops a TPM finding is caught.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import bundle_pb2 as bpb
from pausewatch.v1 import findings_pb2 as fpb

from agent.tpm_quotes import ImaLog, WindowQuoter
from attest.envelope import PayloadType, parse_envelope, sign_envelope
from attest.keys import Ed25519Signer
from attest.note import Ed25519NoteSigner
from tests.builders import TestNode, fixed_private_key
from tests.integration.test_tpm_nodes import AGENT, AGENT_V1
from tests.tpm_setup import (
    Chain,
    RunningSwtpm,
    SwtpmCa,
    enroll_with_tpm,
    measure,
    require_swtpm,
    start_swtpm,
)
from tests.verifier_harness import (
    RunningVerifier,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)
from verifier.accounting.evaluation import render_text
from verifier.audit.bundle import verify_bundle
from verifier.audit.report_html import render_html

S = 10**9
MINUTE = 60 * S

TPM_POLICY = """
format_version = 1
policy_id = "tpm-required"
version = 1
lab_id = "lab-a"

[[rules]]
id = "tpm"
kind = "tpm_rooted"
"""


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SwtpmCa:
    require_swtpm()
    return SwtpmCa.create(tmp_path_factory.mktemp("tpm-ca"))


@pytest.fixture
def verifier(ca: SwtpmCa, tmp_path: Path) -> Iterator[RunningVerifier]:
    directory = tmp_path / "verifier"
    with start_swtpm(ca, tmp_path / "first-tpm"):
        pass  # swtpm-localca makes its CA with the first EK certificate it signs
    directory.mkdir()
    (directory / "ek-cas.pem").write_bytes(ca.root_pem + ca.intermediate_pem)
    (directory / "allowlist.txt").write_text(f"{AGENT_V1.hex()}  {AGENT}\n")
    files = write_verifier_files(
        directory,
        policy=TPM_POLICY,
        extra_config='[tpm]\nmanufacturer_cas = ["ek-cas.pem"]\n',
        extra_lab='ima_allowlist = "allowlist.txt"',
    )
    running = start_verifier_process(files, directory / "verifier.log")
    try:
        yield running
    finally:
        stop_process(running)


@pytest.fixture
def tpms(ca: SwtpmCa, tmp_path: Path) -> Iterator[tuple[RunningSwtpm, RunningSwtpm]]:
    with start_swtpm(ca, tmp_path / "a") as a, start_swtpm(ca, tmp_path / "b") as b:
        yield a, b


def _report(verifier: RunningVerifier, start: int, end: int) -> apb.ComplianceReport:
    return (
        verifier.client()
        .audit.GetComplianceReport(
            apb.GetComplianceReportRequest(
                lab_id="lab-a", period_start_ns=start, period_end_ns=end
            ),
            timeout=30,
        )
        .report
    )


def _bundle(verifier: RunningVerifier, start: int, end: int) -> bytes:
    chunks = verifier.client().audit.ExportBundle(
        apb.ExportBundleRequest(lab_id="lab-a", period_start_ns=start, period_end_ns=end),
        timeout=60,
    )
    return b"".join(chunk.data for chunk in chunks)


def _log_key() -> str:
    return Ed25519NoteSigner("test.example/verifier", fixed_private_key(101)).verifier().to_vkey()


def _past_node(seed: int) -> TestNode:
    now = time.time_ns()
    return TestNode.from_seed(seed, t0_ns=now - now % MINUTE - 20 * MINUTE)


def test_tpm_required_policy_bundles_and_offline_recheck(
    verifier: RunningVerifier, tpms: tuple[RunningSwtpm, RunningSwtpm], tmp_path: Path
) -> None:
    tpm_a, tpm_b = tpms
    quoting, silent = _past_node(1601), _past_node(1602)
    enroll_with_tpm(verifier, quoting, tpm_a)
    enroll_with_tpm(verifier, silent, tpm_b)
    ima_file = tmp_path / "ima"
    measure(tpm_a, ima_file, AGENT, AGENT_V1)
    chain = Chain(verifier, quoting, WindowQuoter(tpm_a.tools(), ImaLog(ima_file)))
    for _ in range(3):
        assert chain.send(chain.body()).tpm_quote == fpb.TPM_QUOTE_STATUS_OK
    start = quoting.t0_ns - MINUTE
    end = time.time_ns()

    # The honest control: every node that attested is TPM-rooted, every window quoted.
    report = _report(verifier, start, end)
    assert report.verdict == apb.VERDICT_COMPLIANT, list(report.reasons)
    rooting = {bytes(n.node_id): n for n in report.nodes}
    assert rooting[quoting.node_id].rooting == apb.EVIDENCE_ROOTING_TPM
    assert rooting[quoting.node_id].tpm_rooted_windows == 3
    assert rooting[quoting.node_id].tpm_id

    # The silent TPM node runs an agent that sends no quotes: its windows are accepted, and
    # under a TPM-required policy they are unattested.
    unquoted = Chain(verifier, silent, None)
    for _ in range(2):
        assert unquoted.send(unquoted.body()).tpm_quote == fpb.TPM_QUOTE_STATUS_MISSING
    report = _report(verifier, start, time.time_ns())
    assert report.verdict == apb.VERDICT_UNACCOUNTED
    [rule] = [r for r in report.rules if r.rule_id == "tpm"]
    assert rule.kind == apb.RULE_KIND_TPM_ROOTED
    assert rule.outcome == apb.RULE_OUTCOME_UNACCOUNTED
    assert (rule.measured, rule.limit) == ("3", "5")
    assert len(rule.evidence_log_indices) == 2
    rooting = {bytes(n.node_id): n for n in report.nodes}
    assert rooting[silent.node_id].rooting == apb.EVIDENCE_ROOTING_TPM_PARTIAL
    assert rooting[silent.node_id].tpm_rooted_windows == 0
    assert rooting[quoting.node_id].rooting == apb.EVIDENCE_ROOTING_TPM
    text = render_text(report)
    assert "TPM 3/3" in text and "TPM 0/2 (partial)" in text
    assert ">Rooted<" in render_html(report)

    # The bundle re-verifies offline, quotes included, and agrees with the server.
    data = _bundle(verifier, start, time.time_ns())
    checked = verify_bundle(data, pinned_log_key=_log_key())
    assert checked.ok, checked.failures + checked.differences
    assert checked.offline_report is not None
    offline = {bytes(n.node_id): n for n in checked.offline_report.nodes}
    assert offline[silent.node_id].rooting == apb.EVIDENCE_ROOTING_TPM_PARTIAL
    assert offline[quoting.node_id].tpm_rooted_windows == 3

    # A verifier that leaves out a missing-quote finding (and re-signs the bundle with its own
    # key, as it can) is caught by the offline re-check of the quotes.
    outer = parse_envelope(data)
    bundle = bpb.EvidenceBundle.FromString(outer.payload)
    kept = [
        entry
        for entry in bundle.entries
        if not _is_finding(entry.envelope, fpb.FINDING_KIND_TPM_QUOTE_MISSING)
    ]
    assert len(kept) == len(bundle.entries) - 2
    del bundle.entries[:]
    bundle.entries.extend(kept)
    forged = sign_envelope(
        Ed25519Signer.from_private_key(fixed_private_key(101)),
        PayloadType.BUNDLE,
        bundle.SerializeToString(deterministic=True),
    )
    caught = verify_bundle(forged, pinned_log_key=_log_key())
    assert not caught.ok
    assert any("MISSING" in f and "no finding says so" in f for f in caught.failures), (
        caught.failures
    )


def _is_finding(raw: bytes, kind: int) -> bool:
    envelope = parse_envelope(raw)
    if envelope.payload_type != PayloadType.FINDING:
        return False
    return fpb.Finding.FromString(envelope.payload).kind == kind


def test_a_software_node_fails_a_tpm_required_policy(verifier: RunningVerifier) -> None:
    node = _past_node(1603)
    verifier.client().enroll(node)
    chain = Chain(verifier, node, None)
    for _ in range(2):
        assert chain.send(chain.body()).tpm_quote == fpb.TPM_QUOTE_STATUS_UNSPECIFIED
    report = _report(verifier, node.t0_ns - MINUTE, time.time_ns())
    assert report.verdict == apb.VERDICT_UNACCOUNTED
    [summary] = report.nodes
    assert summary.rooting == apb.EVIDENCE_ROOTING_SOFTWARE
    assert not summary.tpm_id
    [rule] = report.rules
    assert "software-rooted nodes" in rule.summary
    assert " software " in render_text(report)
