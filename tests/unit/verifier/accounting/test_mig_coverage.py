"""MIG, end to end through accounting (docs/threat-model.md, "Enable MIG"): NVML reports no
device utilisation for a GPU in MIG mode, so the agent takes no utilisation samples for it; the
verifier counts that GPU-time as unattested, and a policy with a ``coverage`` rule makes the report
UNACCOUNTED. The same windows with utilisation read are COMPLIANT.

The windows are the agent's own: the NVML sampler over the fake NVML library (tests/fake_nvml.py),
folded by the agent's windower into bodies, signed with a node key and verified as the verifier
does before accounting.
"""

from __future__ import annotations

import hashlib

import pynvml
import pytest
from pausewatch.v1 import attestation_pb2 as apb
from pausewatch.v1 import audit_pb2 as pb

from agent.sampler.base import Backend
from agent.sampler.nvml import NvmlSampler
from agent.windows import BodyContext, ClosedWindow, Windower, WindowSettings, build_body
from attest import compute
from attest.attestation import VerifiedAttestation, verify_attestation
from attest.envelope import StaticKeyring, envelope_digest
from attest.ids import ZERO_DIGEST, NodeId
from tests.builders import T0_NS, TestNode
from tests.fake_nvml import FakeGpu, FakeNvml
from verifier.accounting.accounts import Bucket, GpuWindowFigures, accumulate, gpu_window_figures
from verifier.accounting.evaluation import InMemoryEvidenceIndex, InventoryVersion, evaluate
from verifier.accounting.policy import load_policy_bytes

S = 1_000_000_000
MINUTE = 60 * S
P0 = T0_NS  # a whole minute
WINDOWS = 5
NODE = TestNode.from_seed(61)
POLICY = load_policy_bytes(
    b'format_version = 1\npolicy_id = "p"\nversion = 1\nlab_id = "lab-a"\n'
    b'[[rules]]\nid = "coverage"\nkind = "coverage"\nmin_ratio = "90%"\n',
    "p.toml",
)


def agent_windows(monkeypatch: pytest.MonkeyPatch, *, mig_on_gpu0: bool) -> list[ClosedWindow]:
    """Five one-minute windows of two H100s at 90 % and 500 W, sampled every second."""
    fake = FakeNvml([FakeGpu.h100(0), FakeGpu.h100(1)])
    fake.install(monkeypatch)
    if mig_on_gpu0:
        fake.gpus[0].mig_mode = pynvml.NVML_DEVICE_MIG_ENABLE
        fake.gpus[0].errors["nvmlDeviceGetUtilizationRates"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    sampler = NvmlSampler(sample_interval_ms=1000)
    sampler.open(P0)
    windower = Windower(WindowSettings(window_ns=MINUTE, sample_interval_ms=1000))
    windows: list[ClosedWindow] = []
    for i in range(WINDOWS * 60 + 1):  # the poll at the fifth minute closes the fifth window
        for gpu in fake.gpus:
            gpu.run(utilization_pct=90, seconds=1, power_mw=500_000)
        poll = sampler.poll(P0 + i * S)
        assert poll is not None
        windows += windower.add(poll)
    sampler.close()
    assert [(w.start_ns, w.end_ns) for w in windows] == [
        (P0 + k * MINUTE, P0 + (k + 1) * MINUTE) for k in range(WINDOWS)
    ]
    return windows


def signed_and_verified(windows: list[ClosedWindow]) -> list[VerifiedAttestation]:
    context = BodyContext(
        lab_id="lab-a",
        node_id=NodeId(NODE.node_id),
        boot_id="boot",
        agent_version="0.1.0",
        agent_digest=hashlib.sha256(b"agent").digest(),
        backend=Backend.NVML,
        sample_interval_ms=1000,
    )
    ring = StaticKeyring()
    ring.add(NODE.signer.public_key)
    out: list[VerifiedAttestation] = []
    prev = ZERO_DIGEST
    for seq, window in enumerate(windows):
        raw = NODE.sign_body(
            build_body(window, context, seq=seq, prev_digest=prev, verifier_nonce=b"")
        )
        out.append(verify_attestation(raw, ring))
        prev = envelope_digest(raw)
    return out


def coverage_report(
    attestations: list[VerifiedAttestation], declared: frozenset[str]
) -> tuple[pb.ComplianceReport, list[GpuWindowFigures]]:
    figures = [
        f
        for index, att in enumerate(attestations)
        for f in gpu_window_figures(att, index, declared)
    ]
    buckets: dict[int, Bucket] = {}
    accumulate(buckets, figures, MINUTE)
    end = P0 + WINDOWS * MINUTE
    report = evaluate(
        POLICY,
        lab_id="lab-a",
        period_start_ns=P0,
        period_end_ns=end,
        as_of_ns=end,
        bucket_ns=MINUTE,
        buckets=buckets,
        inventory=[InventoryVersion(1, P0 - MINUTE, declared)],
        nodes=(),
        findings=(),
        evidence=InMemoryEvidenceIndex(figures),
        tree_size=len(attestations),
        table_version=compute.TABLE_VERSION,
    )
    return report, figures


def test_a_mig_gpus_time_is_unattested_and_a_coverage_rule_is_unaccounted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mig = signed_and_verified(agent_windows(monkeypatch, mig_on_gpu0=True))
    gpu0, gpu1 = (g.uuid for g in mig[0].body.gpus)
    declared = frozenset({gpu0, gpu1})
    for att in mig:
        first = att.body.gpus[0]
        statuses = {st.metric: st.state for st in first.metric_status}
        assert first.mig_mode == apb.MIG_MODE_ENABLED
        assert statuses[apb.METRIC_UTILIZATION] == apb.METRIC_STATE_NOT_SUPPORTED
        assert first.samples_taken == 0
    report, figures = coverage_report(mig, declared)
    assert sorted(f.gpu_uuid for f in figures) == sorted([gpu0, gpu1] * WINDOWS)
    assert all(f.attested_ms == 0 for f in figures if f.gpu_uuid == gpu0)
    assert all(f.attested_ms == MINUTE // 10**6 for f in figures if f.gpu_uuid == gpu1)
    assert (report.coverage.attested_gpu_ms, report.coverage.declared_gpu_ms) == (
        WINDOWS * 60_000,
        2 * WINDOWS * 60_000,
    )
    assert report.coverage.ratio_ppm == 500_000
    (rule,) = report.rules
    assert (rule.rule_id, rule.outcome) == ("coverage", pb.RULE_OUTCOME_UNACCOUNTED)
    assert report.verdict == pb.VERDICT_UNACCOUNTED

    # Control: the same GPUs, load and windows, utilisation read on both.
    read = signed_and_verified(agent_windows(monkeypatch, mig_on_gpu0=False))
    assert [g.uuid for g in read[0].body.gpus] == [gpu0, gpu1]
    assert read[0].body.gpus[0].mig_mode == apb.MIG_MODE_DISABLED
    control, control_figures = coverage_report(read, declared)
    assert all(f.attested_ms == MINUTE // 10**6 for f in control_figures)
    assert control.coverage.ratio_ppm == 1_000_000
    (rule,) = control.rules
    assert (rule.rule_id, rule.outcome) == ("coverage", pb.RULE_OUTCOME_PASS)
    assert control.verdict == pb.VERDICT_COMPLIANT
