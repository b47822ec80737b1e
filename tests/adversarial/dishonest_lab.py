"""A real verifier process with several labs, and signed windows built the way a lab with root on
its nodes would build them: it holds the node keys, so it signs whatever bodies it likes.

    with verifier_with_labs(tmp_path, ["lab-a", "lab-energy"]) as lab:
        node = lab.enroll(TestNode.from_seed(1, lab_id="lab-energy", gpus=8, t0_ns=lab.t0))
        lab.declare("lab-energy", node)
        lab.submit(signed_windows(node, [Window(busy_ms=18_000, power_w=700)] * 20))
        report = lab.report("lab-energy", 0, 20)          # minutes after lab.t0
        checked = lab.verify_offline("lab-energy", 0, 20)  # bundle exported, re-verified offline

Each window is 60 s; the energy counter advances by ``power_w`` over the window (the real draw),
whatever the body claims about utilisation. The policy of every lab is one a pause would set and
honest reporting of a busy node breaks: at most 8e17 FLOP a minute (upper bound), with coverage
and max-gap rules.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pausewatch.v1 import attestation_pb2 as apb
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import audit_pb2 as pb
from pausewatch.v1 import registry_pb2 as rpb

from attest.attestation import bounds_to_proto, window_compute
from attest.envelope import PayloadType, envelope_digest, sign_envelope
from attest.keys import Ed25519Signer, format_public_key
from attest.note import Ed25519NoteSigner
from tests.builders import WINDOW_NS, TestNode, fixed_private_key
from tests.verifier_harness import (
    Client,
    RunningVerifier,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)
from verifier.audit.bundle import BundleVerification, verify_bundle

S = 10**9
MINUTE = 60 * S
WINDOW_MS = WINDOW_NS // 1_000_000
H100 = "NVIDIA H100 80GB HBM3"
LIMIT_PER_MINUTE_FLOP = 8 * 10**17
"""8 H100s flat out for a minute do 9.5e17 FLOP: over; half busy (4.7e17): within."""


def pause_policy(lab_id: str) -> str:
    return f"""
format_version = 1
policy_id = "pause-{lab_id}"
version = 1
lab_id = "{lab_id}"

[[rules]]
id = "per-minute"
kind = "cumulative_flop"
window = "1m"
limit_flop = "8e17"

[[rules]]
id = "coverage"
kind = "coverage"
min_ratio = "90%"

[[rules]]
id = "max-gap"
kind = "max_gap"
max_gap = "10m"
"""


@dataclass(frozen=True, slots=True)
class Window:
    """One window as the lab signs it, and what its GPUs really drew."""

    busy_ms: int
    """Claimed busy time of every GPU (the lie, where there is one)."""
    power_w: int
    """What every GPU really drew on average over the window: the counter moves by this."""
    counter_state: int = apb.ENERGY_COUNTER_STATE_OK
    """Claimed counter state; anything but OK reports the counter as 0 at both edges."""
    rise_before_mj: int = 0
    """Counter rise between the previous window's end and this one's start (per GPU)."""
    gap_before_s: int = 0
    """Seconds with no window before this one; the counter advances at ``gap_power_w``."""
    gap_power_w: int = 0


def signed_windows(node: TestNode, windows: Sequence[Window]) -> list[bytes]:
    """The node's chain from seq 0, starting at ``node.t0_ns``, signed with its key."""
    out: list[bytes] = []
    prev = None
    counter_mj = 1_000_000
    start_ns = node.t0_ns
    for seq, window in enumerate(windows):
        start_ns += window.gap_before_s * S
        counter_mj += window.gap_power_w * window.gap_before_s * 1_000 + window.rise_before_mj
        body = node.body(seq, prev, start_ns=start_ns, busy_ms=window.busy_ms)
        end_mj = counter_mj + window.power_w * WINDOW_MS
        for gpu in body.gpus:
            if window.counter_state == apb.ENERGY_COUNTER_STATE_OK:
                gpu.energy_start_mj, gpu.energy_end_mj = counter_mj, end_mj
            else:
                gpu.energy_start_mj = gpu.energy_end_mj = 0
            gpu.energy_counter_state = window.counter_state  # type: ignore[assignment]
            gpu.mean_power_mw = window.power_w * 1_000
            gpu.max_power_mw = window.power_w * 1_000
            gpu.bounds.CopyFrom(bounds_to_proto(window_compute(gpu)))
        raw = node.sign_body(body)
        out.append(raw)
        prev = envelope_digest(raw)
        counter_mj = end_mj
        start_ns += WINDOW_NS
    return out


@dataclass
class Labs:
    """A verifier process serving several labs, all with :func:`pause_policy`."""

    verifier: RunningVerifier
    client: Client
    t0: int
    log_key: str

    def enroll(self, node: TestNode) -> TestNode:
        self.client.enroll(node, created_at_ns=self.t0 - S)
        return node

    def declare(self, lab_id: str, *nodes: TestNode, gpus: int | None = None) -> None:
        """Declare the nodes' GPUs (the first ``gpus`` of each, or all) from before ``t0``."""
        declaration = rpb.InventoryDeclaration(
            format_version=1,
            lab_id=lab_id,
            version=1,
            gpus=[
                rpb.GpuIdentity(uuid=node.gpu_uuid(i))
                for node in nodes
                for i in range(node.gpus if gpus is None else gpus)
            ],
            effective_from_ns=self.t0 - MINUTE,
            created_at_ns=time.time_ns(),
        )
        self.client.registry.DeclareInventory(
            rpb.DeclareInventoryRequest(
                declaration_envelope=sign_envelope(
                    self.verifier.files.operator,
                    PayloadType.INVENTORY,
                    declaration.SerializeToString(),
                )
            ),
            timeout=10,
        )

    def submit(self, envelopes: Sequence[bytes]) -> None:
        receipts = self.client.submit(envelopes)
        statuses = {r.status for r in receipts}
        assert statuses == {spb.RECEIPT_STATUS_ACCEPTED}, [r.detail for r in receipts]

    def period(self, start_min: int, end_min: int) -> tuple[int, int]:
        return self.t0 + start_min * MINUTE, self.t0 + end_min * MINUTE

    def report(self, lab_id: str, start_min: int, end_min: int) -> pb.ComplianceReport:
        start, end = self.period(start_min, end_min)
        return self.client.audit.GetComplianceReport(
            pb.GetComplianceReportRequest(lab_id=lab_id, period_start_ns=start, period_end_ns=end),
            timeout=30,
        ).report

    def verify_offline(self, lab_id: str, start_min: int, end_min: int) -> BundleVerification:
        """Export the bundle over gRPC and re-verify it offline, pinning the log key."""
        start, end = self.period(start_min, end_min)
        data = b"".join(
            chunk.data
            for chunk in self.client.audit.ExportBundle(
                pb.ExportBundleRequest(lab_id=lab_id, period_start_ns=start, period_end_ns=end),
                timeout=60,
            )
        )
        return verify_bundle(data, pinned_log_key=self.log_key)


@contextmanager
def verifier_with_labs(directory: Path, lab_ids: Sequence[str], *, t0: int) -> Iterator[Labs]:
    """A verifier process serving ``lab_ids`` (the first must be ``lab-a``), stopped after."""
    assert lab_ids[0] == "lab-a"
    directory.mkdir(parents=True, exist_ok=True)
    operator_key = format_public_key(
        Ed25519Signer.from_private_key(fixed_private_key(100)).public_key
    )
    extra: list[str] = []
    for lab_id in lab_ids[1:]:
        (directory / f"{lab_id}.toml").write_text(pause_policy(lab_id), encoding="utf-8")
        extra.append(
            f'[[labs]]\nid = "{lab_id}"\nname = "{lab_id}"\n'
            f'operator_public_key = "{operator_key}"\npolicy = "{lab_id}.toml"\n'
        )
    files = write_verifier_files(
        directory, policy=pause_policy("lab-a"), extra_config="\n".join(extra)
    )
    running = start_verifier_process(files, directory / "verifier.log")
    log_key = Ed25519NoteSigner("test.example/verifier", fixed_private_key(101)).verifier()
    try:
        yield Labs(running, running.client(), t0, log_key.to_vkey())
    finally:
        stop_process(running)


def recent_t0(minutes_ago: int) -> int:
    """A minute boundary ``minutes_ago`` minutes back (reports end before now)."""
    now = time.time_ns()
    return now - now % MINUTE - minutes_ago * MINUTE


def flagged(report: pb.ComplianceReport, flag: int) -> list[pb.FlaggedWindows]:
    return [item for item in report.flagged if item.flag == flag]


def rule(report: pb.ComplianceReport, rule_id: str) -> pb.RuleResult:
    [result] = [r for r in report.rules if r.rule_id == rule_id]
    return result


def findings_of(report: pb.ComplianceReport, kind: int) -> list[pb.LoggedFinding]:
    return [item for item in report.findings if item.finding.kind == kind]
