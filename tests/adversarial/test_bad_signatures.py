"""Bad signatures prove nothing about their sender, against a real verifier process.

Whoever may submit envelopes naming a node (its agent's certificate, wherever it is used; the
regulator's client; any client of a verifier run without roles) can send one with a broken
signature. Each is rejected with ``BAD_SIGNATURE`` and recorded as a finding, but it must not
decide the lab's verdict: otherwise whoever could send one could turn the lab's report INVALID.
Here copies of the lab's next windows arrive first, one with a flipped signature byte and one
with a flipped payload byte; the real windows that follow are accepted, and the report over the
finding's time names it and stays COMPLIANT, offline too.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import audit_pb2 as pb
from pausewatch.v1 import findings_pb2 as fpb

from tests.adversarial.dishonest_lab import (
    Labs,
    Window,
    findings_of,
    recent_t0,
    signed_windows,
    verifier_with_labs,
)
from tests.builders import TestNode


def _flip(raw: bytes, position: int) -> bytes:
    out = bytearray(raw)
    out[position] ^= 0x01
    return bytes(out)


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Labs]:
    # Windows from 14 minutes ago to 3 or 4 ahead (within the clock skew): the forgeries are
    # made now, so reports over the lab's windows cover the findings' time.
    t0 = recent_t0(14)
    with verifier_with_labs(tmp_path_factory.mktemp("badsig"), ["lab-a", "lab-b"], t0=t0) as labs:
        target = labs.enroll(TestNode.from_seed(801, gpus=4, t0_ns=t0))
        labs.declare("lab-a", target)
        control = labs.enroll(TestNode.from_seed(802, lab_id="lab-b", gpus=4, t0_ns=t0))
        labs.declare("lab-b", control)
        honest = signed_windows(target, [Window(0, 70)] * 18)
        labs.submit(honest[:10])
        # The forgeries of windows 10 and 11 arrive before the real ones.
        for forged in (_flip(honest[10], -3), _flip(honest[11], 120)):
            [receipt] = labs.client.submit([forged])
            assert receipt.status == spb.RECEIPT_STATUS_REJECTED, receipt.detail
            assert receipt.reason == spb.REJECT_REASON_BAD_SIGNATURE, receipt.detail
        labs.submit(honest[10:])  # the real windows after them: all accepted
        labs.submit(signed_windows(control, [Window(0, 70)] * 18))
        yield labs


def _bad_signature_findings(labs: Labs, lab_id: str) -> list[pb.LoggedFinding]:
    request = pb.ListFindingsRequest(lab_id=lab_id, kinds=[fpb.FINDING_KIND_BAD_SIGNATURE])
    return list(labs.client.audit.ListFindings(request, timeout=10).findings)


def test_the_bad_signature_is_a_logged_finding_of_the_named_lab(labs: Labs) -> None:
    # One finding: they are rate-limited per node, the second forgery adds none.
    [logged] = _bad_signature_findings(labs, "lab-a")
    assert logged.finding.severity == fpb.SEVERITY_WARNING
    assert logged.finding.rejected_envelope  # the forgery is kept as evidence
    assert _bad_signature_findings(labs, "lab-b") == []


@pytest.mark.parametrize(("start", "end"), [(0, 18), (9, 12), (10, 11)])
def test_the_lab_stays_compliant_in_every_slice(labs: Labs, start: int, end: int) -> None:
    report = labs.report("lab-a", start, end)
    if (start, end) == (0, 18):  # the report over the finding's time names it
        assert findings_of(report, fpb.FINDING_KIND_BAD_SIGNATURE)
    assert report.verdict == pb.VERDICT_COMPLIANT, list(report.reasons)
    assert list(report.gaps) == []  # the real windows 10 and 11 were taken after the forgeries


def test_the_control_lab_is_compliant_too(labs: Labs) -> None:
    report = labs.report("lab-b", 0, 18)
    assert report.verdict == pb.VERDICT_COMPLIANT, list(report.reasons)


def test_the_offline_auditor_agrees(labs: Labs) -> None:
    checked = labs.verify_offline("lab-a", 0, 18)
    assert checked.ok, checked.failures + checked.differences
    assert checked.offline_report is not None
    assert checked.offline_report.verdict == pb.VERDICT_COMPLIANT
