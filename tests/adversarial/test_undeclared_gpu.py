"""Attack 6 of issue 9 against a real verifier process: a node attests a GPU outside the lab's
declared inventory. Before, one UNDECLARED_GPU warning a day and later reports said nothing; now
every report over any slice of its windows names the GPU from the stored buckets (never from
rate-limited findings) and cannot be COMPLIANT, on the server and offline alike.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pausewatch.v1 import audit_pb2 as pb
from pausewatch.v1 import findings_pb2 as fpb

from tests.adversarial.dishonest_lab import (
    Labs,
    Window,
    findings_of,
    flagged,
    recent_t0,
    signed_windows,
    verifier_with_labs,
)
from tests.builders import TestNode

SLICES = [(0, 20), (5, 6), (12, 17), (19, 20)]


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Labs]:
    t0 = recent_t0(40)
    with verifier_with_labs(
        tmp_path_factory.mktemp("undeclared"), ["lab-a", "lab-hidden"], t0=t0
    ) as labs:
        honest = labs.enroll(TestNode.from_seed(501, gpus=3, t0_ns=t0))
        labs.declare("lab-a", honest)
        hiding = labs.enroll(TestNode.from_seed(502, lab_id="lab-hidden", gpus=3, t0_ns=t0))
        labs.declare("lab-hidden", hiding, gpus=2)  # the third GPU is not declared
        for node in (honest, hiding):
            labs.submit(signed_windows(node, [Window(30_000, 380)] * 20))
        labs.hidden_uuid = hiding.gpu_uuid(2)  # type: ignore[attr-defined]
        yield labs


@pytest.mark.parametrize(("start", "end"), SLICES)
def test_every_report_names_the_undeclared_gpu(labs: Labs, start: int, end: int) -> None:
    report = labs.report("lab-hidden", start, end)
    assert report.verdict == pb.VERDICT_UNACCOUNTED, list(report.reasons)
    [item] = flagged(report, pb.WINDOW_FLAG_UNDECLARED_GPU)
    assert item.gpu_uuid == labs.hidden_uuid  # type: ignore[attr-defined]
    assert item.gpu_windows == end - start
    assert item.node_name.startswith("node-")
    assert any("GPU not in the declared inventory" in reason for reason in report.reasons)
    # The finding is rate-limited (a day): only the first slice holds it; the flag is in all.
    findings = findings_of(report, fpb.FINDING_KIND_UNDECLARED_GPU)
    assert len(findings) == (1 if start == 0 else 0)
    # Its compute still counts (compute is compute); its time is not declared coverage.
    assert report.coverage.ratio_ppm == 1_000_000


@pytest.mark.parametrize(("start", "end"), SLICES)
def test_the_honest_control_stays_compliant(labs: Labs, start: int, end: int) -> None:
    report = labs.report("lab-a", start, end)
    assert report.verdict == pb.VERDICT_COMPLIANT, list(report.reasons)
    assert list(report.flagged) == []


@pytest.mark.parametrize(("start", "end"), [(0, 20), (12, 17)])
def test_the_offline_auditor_names_it_too(labs: Labs, start: int, end: int) -> None:
    checked = labs.verify_offline("lab-hidden", start, end)
    assert checked.ok, checked.failures + checked.differences
    assert checked.offline_report is not None
    [item] = flagged(checked.offline_report, pb.WINDOW_FLAG_UNDECLARED_GPU)
    assert item.gpu_uuid == labs.hidden_uuid  # type: ignore[attr-defined]
    assert checked.offline_report.verdict == pb.VERDICT_UNACCOUNTED
