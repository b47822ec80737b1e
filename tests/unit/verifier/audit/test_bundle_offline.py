"""Offline bundle verification against bundles a dishonest verifier could make: every record is
validly signed and included in a validly signed checkpoint, yet the evidence is inconsistent."""

from __future__ import annotations

import time

from pausewatch.v1 import bundle_pb2 as bpb
from pausewatch.v1 import policy_pb2 as ppb
from pausewatch.v1 import registry_pb2 as rpb

from attest import merkle
from attest.checkpoint import Checkpoint, sign_checkpoint
from attest.envelope import PayloadType, envelope_digest, sign_envelope
from attest.keys import Ed25519Signer
from attest.note import Ed25519NoteSigner
from tests.builders import TestNode, fixed_private_key
from tests.verifier_harness import DEFAULT_POLICY, enrollment_for
from verifier.audit.bundle import verify_bundle

S = 10**9
ORIGIN = "test.example/verifier"
LOG = Ed25519Signer.from_private_key(fixed_private_key(101))
NOTE = Ed25519NoteSigner(ORIGIN, fixed_private_key(101))
OPERATOR = Ed25519Signer.from_private_key(fixed_private_key(100))


def lab_entries(node: TestNode, now: int) -> list[bytes]:
    lab = ppb.LabRecord(
        format_version=1,
        lab_id="lab-a",
        name="A",
        operator_public_key=OPERATOR.public_key.public_bytes_raw(),
        recorded_at_ns=now,
    )
    policy = ppb.PolicyRecord(
        format_version=1,
        lab_id="lab-a",
        policy_id="test-policy",
        policy_version=1,
        policy_toml=DEFAULT_POLICY.encode(),
        effective_from_ns=now,
        recorded_at_ns=now,
    )
    enrollment = enrollment_for(node, created_at_ns=node.t0_ns - S).SerializeToString()
    return [
        sign_envelope(LOG, PayloadType.LAB, lab.SerializeToString()),
        sign_envelope(LOG, PayloadType.POLICY, policy.SerializeToString()),
        sign_envelope(node.signer, PayloadType.ENROLLMENT, enrollment),
        sign_envelope(OPERATOR, PayloadType.ENROLLMENT_AUTHORIZATION, enrollment),
    ]


def make_bundle(entries: list[bytes], t0: int) -> bytes:
    tree = merkle.MemoryTree()
    for entry in entries:
        tree.append_data(entry)
    size = len(entries)
    checkpoint = sign_checkpoint(Checkpoint(ORIGIN, size, tree.root()), NOTE)
    bundle = bpb.EvidenceBundle(
        format_version=1,
        lab_id="lab-a",
        period_start_ns=t0,
        period_end_ns=t0 + 600 * S,
        created_at_ns=time.time_ns(),
        log_verifier_key=NOTE.verifier().to_vkey(),
        checkpoint_note=checkpoint,
        bucket_ns=60 * S,
        gap_tolerance_ns=5 * S,
        open_gap_grace_ns=120 * S,
        energy_mismatch_factor_ppm=1_250_000,
        idle_power_fraction_ppm=200_000,
    )
    bundle.server_report.tree_size = size
    bundle.server_report.bucket_ns = 60 * S
    bundle.server_report.as_of_ns = t0 + 600 * S
    for index, entry in enumerate(entries):
        bundle.entries.add(
            log_index=index, envelope=entry, inclusion_proof=tree.inclusion_proof(index, size)
        )
    return sign_envelope(LOG, PayloadType.BUNDLE, bundle.SerializeToString())


def failures_of(entries: list[bytes], t0: int) -> list[str]:
    result = verify_bundle(make_bundle(entries, t0), pinned_log_key=NOTE.verifier().to_vkey())
    return result.failures


def test_a_consistent_forged_log_passes_the_structural_checks() -> None:
    """The harness itself: a well-formed log yields no failures (only report differences, since
    the 'server report' here is empty)."""
    node = TestNode.from_seed(80)
    entries = lab_entries(node, node.t0_ns) + node.chain(3)
    assert failures_of(entries, node.t0_ns) == []


def test_an_attestation_logged_after_revocation_fails() -> None:
    node = TestNode.from_seed(81)
    chain = node.chain(3)
    revocation = rpb.NodeRevocation(
        format_version=1, lab_id="lab-a", node_id=node.node_id, created_at_ns=node.t0_ns + 90 * S
    )
    entries = [
        *lab_entries(node, node.t0_ns),
        chain[0],
        sign_envelope(OPERATOR, PayloadType.REVOCATION, revocation.SerializeToString()),
        chain[1],
    ]
    failures = failures_of(entries, node.t0_ns)
    assert any("after the node's revocation" in f for f in failures), failures


def test_an_attestation_naming_a_gpu_never_enrolled_fails() -> None:
    node = TestNode.from_seed(82)
    entries = lab_entries(node, node.t0_ns)
    body = node.body(0)
    body.gpus[1].uuid = "GPU-smuggled-in"
    entries.append(node.sign_body(body))
    failures = failures_of(entries, node.t0_ns)
    assert any("not enrolled: GPU-smuggled-in" in f for f in failures), failures


def test_records_of_another_lab_signed_by_this_operator_fail() -> None:
    node = TestNode.from_seed(83)
    declaration = rpb.InventoryDeclaration(
        format_version=1, lab_id="lab-b", version=1, gpus=[rpb.GpuIdentity(uuid="GPU-x")]
    )
    entries = [
        *lab_entries(node, node.t0_ns),
        sign_envelope(OPERATOR, PayloadType.INVENTORY, declaration.SerializeToString()),
    ]
    failures = failures_of(entries, node.t0_ns)
    assert any("inventory declaration of another lab" in f for f in failures), failures


def test_an_unreported_equivocation_fails() -> None:
    node = TestNode.from_seed(84)
    chain = node.chain(2)
    fork = node.sign_body(node.body(1, envelope_digest(chain[0]), busy_ms=1))
    entries = [*lab_entries(node, node.t0_ns), *chain, fork]
    failures = failures_of(entries, node.t0_ns)
    assert any("equivocation" in f and "not reported" in f for f in failures), failures
