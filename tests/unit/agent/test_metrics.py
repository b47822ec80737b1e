"""The agent's metrics: every label value exported at 0 from the start, the label values the
shipper and the daemon use, and the unreadable-GPU gauge. The alert rules over them are
test_alert_rules.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from pausewatch.v1 import attestation_service_pb2 as api

from agent.failures import FailureKind
from agent.metrics import (
    RECEIPT_STATUSES,
    REJECT_REASONS,
    SAMPLER_EVENT_KINDS,
    SHIP_ERROR_KINDS,
    AgentMetrics,
)
from agent.sampler.base import EventKind, GpuIdentity, GpuReading, Poll, SamplerEvent
from agent.shipper import ShipError, Shipper
from agent.spool import Spool, WindowTimes
from attest.ids import NodeId
from tests.agent_setup import verifier_config
from tests.builders import T0_NS, WINDOW_NS, TestNode
from tests.fakes import FakeClock, gpu_reading
from tests.prom_rules import parse_exposition
from tests.testdata import REPO_ROOT
from verifier.server.metrics import _REASON as VERIFIER_REASONS

NODE = TestNode.from_seed(5)
NODE_ID = NodeId(NODE.node_id)


def values(metrics: AgentMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return parse_exposition(metrics.render().decode())


def label_values(metrics: AgentMetrics, name: str, label: str) -> dict[str, float]:
    return {
        dict(labels)[label]: value
        for (sample, labels), value in values(metrics).items()
        if sample == name
    }


LABELLED = [
    ("pausewatch_agent_sampler_events_total", "kind", SAMPLER_EVENT_KINDS),
    ("pausewatch_agent_ship_errors_total", "kind", SHIP_ERROR_KINDS),
    ("pausewatch_agent_receipts_total", "status", RECEIPT_STATUSES),
    ("pausewatch_agent_rejected_total", "reason", REJECT_REASONS),
]
"""Every labelled agent metric, its label and the label's values."""


@pytest.mark.parametrize(("name", "label", "expected"), LABELLED)
def test_every_label_value_is_served_at_zero_before_anything_happened(
    name: str, label: str, expected: tuple[str, ...]
) -> None:
    assert label_values(AgentMetrics(process=False), name, label) == dict.fromkeys(expected, 0.0)


@pytest.mark.parametrize(("name", "label", "expected"), LABELLED)
def test_docs_list_every_label_value_in_the_metrics_table(
    name: str, label: str, expected: tuple[str, ...]
) -> None:
    rows = [
        line
        for line in (REPO_ROOT / "docs" / "agent.md").read_text().splitlines()
        if line.startswith(f"| `{name}{{{label}}}` |")
    ]
    assert len(rows) == 1, name
    assert {value for value in expected if f"`{value}`" not in rows[0]} == set()


def test_the_label_values_are_the_sources_of_truth() -> None:
    # every event the sampler or the daemon records, and the daemon's failed tick
    assert set(SAMPLER_EVENT_KINDS) == {k.value for k in EventKind} | {"agent_error"}
    assert set(SHIP_ERROR_KINDS) == {k.value for k in FailureKind}
    assert set(RECEIPT_STATUSES) == {"accepted", "duplicate", "rejected", "unavailable"}
    # the verifier's own reason labels; UNAVAILABLE is transient (receipts{status="unavailable"})
    assert set(REJECT_REASONS) == set(VERIFIER_REASONS.values()) - {"unavailable"}
    assert "bad_nonce" in REJECT_REASONS


def one_pending(tmp_path: Path) -> tuple[Spool, Shipper, AgentMetrics]:
    path = tmp_path / "spool.db"
    spool = Spool.open(path, node_id=NODE_ID)
    spool.append(
        lambda seq, prev, nonce: NODE.sign_body(NODE.body(seq, prev, nonce=nonce)),
        WindowTimes(T0_NS, T0_NS + WINDOW_NS),
        samples=b"",
        created_at_ns=T0_NS,
    )
    metrics = AgentMetrics(process=False)
    shipper = Shipper(path, NODE_ID, verifier_config(), clock=FakeClock(T0_NS), metrics=metrics)
    return spool, shipper, metrics


def test_the_shipper_labels_a_rejection_as_the_verifier_does(tmp_path: Path) -> None:
    spool, shipper, metrics = one_pending(tmp_path)
    try:
        batch = spool.pending(limit=10, max_bytes=1 << 20)
        receipt = api.Receipt(
            envelope_digest=batch[0].digest,
            status=api.RECEIPT_STATUS_REJECTED,
            reason=api.REJECT_REASON_BAD_NONCE,
            detail="nonce not issued here",
        )
        shipper._record(spool, batch, api.SubmitAttestationsResponse(receipts=[receipt]))
        assert spool.envelopes()[0].reject_reason == "BAD_NONCE"  # the spool keeps the proto name
    finally:
        spool.close()
    rejected = label_values(metrics, "pausewatch_agent_rejected_total", "reason")
    assert rejected["bad_nonce"] == 1.0
    assert sum(rejected.values()) == 1.0
    assert label_values(metrics, "pausewatch_agent_receipts_total", "status")["rejected"] == 1.0


def test_a_transient_answer_counts_as_unavailable_and_not_as_a_rejection(tmp_path: Path) -> None:
    spool, shipper, metrics = one_pending(tmp_path)
    try:
        batch = spool.pending(limit=10, max_bytes=1 << 20)
        receipt = api.Receipt(
            envelope_digest=batch[0].digest,
            status=api.RECEIPT_STATUS_REJECTED,
            reason=api.REJECT_REASON_UNAVAILABLE,
        )
        with pytest.raises(ShipError):
            shipper._record(spool, batch, api.SubmitAttestationsResponse(receipts=[receipt]))
    finally:
        spool.close()
    receipts = label_values(metrics, "pausewatch_agent_receipts_total", "status")
    assert receipts == {"accepted": 0.0, "duplicate": 0.0, "rejected": 0.0, "unavailable": 1.0}
    assert sum(label_values(metrics, "pausewatch_agent_rejected_total", "reason").values()) == 0


GPUS = tuple(GpuIdentity(index=i, uuid=f"GPU-{i}", model="H100") for i in range(3))


def read(gpu: GpuIdentity) -> GpuReading:
    return gpu_reading(gpu, T0_NS)


def lost(gpu: GpuIdentity) -> GpuReading:
    return gpu_reading(gpu, T0_NS, lost=True)


def event(kind: EventKind) -> SamplerEvent:
    return SamplerEvent(kind=kind, observed_at_ns=T0_NS)


def test_gpus_unreadable_counts_the_gpus_seen_that_the_last_poll_could_not_read() -> None:
    metrics = AgentMetrics(process=False)

    def after(readings: tuple[GpuReading, ...], *events: SamplerEvent) -> float:
        metrics.observe_poll(Poll(timestamp_ns=T0_NS, readings=readings, events=events))
        return values(metrics)[("pausewatch_agent_gpus_unreadable", ())]

    assert values(metrics)[("pausewatch_agent_gpus_unreadable", ())] == 0
    a, b, c = GPUS
    assert after((read(a), read(b), read(c))) == 0
    # NVML_ERROR_GPU_IS_LOST: a lost reading, the event only once
    assert after((read(a), lost(b), read(c)), event(EventKind.GPU_LOST)) == 1
    assert after((read(a), lost(b), read(c))) == 1
    # after a re-init, b is still gone and c left NVML's device list: no reading for either
    assert after((read(a),), event(EventKind.GPU_LOST)) == 2
    # NVML unusable: no readings, a node-level event at every poll
    assert after((), event(EventKind.NVML_ERROR)) == 3
    # a poll that tried nothing (a realtime replay between recorded rows) changes nothing
    assert after(()) == 3
    assert after((read(a), read(b), read(c)), event(EventKind.GPU_APPEARED)) == 0
    counted = values(metrics)
    assert counted[("pausewatch_agent_samples_total", ())] == 3 + 2 + 2 + 1 + 3
    assert counted[("pausewatch_agent_polls_total", ())] == 7
    assert counted[("pausewatch_agent_sampler_events_total", (("kind", "gpu_lost"),))] == 2
