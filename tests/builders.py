"""Builders for test data: deterministic keys, attestation bodies and signed envelopes.

node = TestNode.from_seed(1)
raw = node.sign_body(node.body(seq=0))
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pausewatch.v1 import attestation_pb2 as pb

from attest.attestation import bounds_to_proto, window_compute
from attest.envelope import PayloadType, envelope_digest, sign_envelope
from attest.ids import ZERO_DIGEST, Digest
from attest.keys import Ed25519Signer

T0_NS = 1_764_403_200_000_000_000  # 2025-11-29T08:00:00Z
WINDOW_NS = 60_000_000_000


def fixed_private_key(seed: int) -> Ed25519PrivateKey:
    """A deterministic private key for tests (never for anything else)."""
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(b"pausewatch-test-%d" % seed).digest()
    )


def gpu_window(
    index: int = 0,
    *,
    model: str = "NVIDIA H100 80GB HBM3",
    busy_ms: int = 30_000,
    energy_start_mj: int = 1_000_000,
    energy_mj: int = 21_000_000,
    uuid: str | None = None,
) -> pb.GpuWindow:
    gpu = pb.GpuWindow(
        index=index,
        uuid=uuid or f"GPU-{index:08d}-0000-0000-0000-000000000000",
        serial=f"16520{index:08d}",
        board_part_number="692-2G520-0200-000",
        pci_bus_id=f"00000000:{index + 0x18:02X}:00.0",
        model=model,
        mig_mode=pb.MIG_MODE_DISABLED,
        presence=pb.GPU_PRESENCE_PRESENT,
        samples_expected=60,
        samples_taken=60,
        busy_ms=busy_ms,
        energy_start_mj=energy_start_mj,
        energy_end_mj=energy_start_mj + energy_mj,
        energy_counter_state=pb.ENERGY_COUNTER_STATE_OK,
        max_power_mw=420_000,
        mean_power_mw=350_000,
        max_memory_used_bytes=40 * 2**30,
        max_compute_processes=1,
    )
    for metric in (
        pb.METRIC_UTILIZATION,
        pb.METRIC_ENERGY,
        pb.METRIC_POWER,
        pb.METRIC_MEMORY_USED,
        pb.METRIC_COMPUTE_PROCESSES,
    ):
        gpu.metric_status.add(metric=metric, state=pb.METRIC_STATE_SUPPORTED)
    gpu.bounds.CopyFrom(bounds_to_proto(window_compute(gpu)))
    return gpu


@dataclass
class TestNode:
    """A node with a fixed key that can sign attestation bodies."""

    __test__ = False  # not a pytest class

    signer: Ed25519Signer
    lab_id: str = "lab-a"
    gpus: int = 2
    boot_id: str = "4b1c5a7e-0d3c-4f1a-9a57-0f2e8e3c1d00"
    t0_ns: int = T0_NS
    model: str = "NVIDIA H100 80GB HBM3"
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def from_seed(cls, seed: int, **kwargs: object) -> TestNode:
        return cls(signer=Ed25519Signer.from_private_key(fixed_private_key(seed)), **kwargs)  # type: ignore[arg-type]

    @property
    def node_id(self) -> bytes:
        return self.signer.key_id

    def gpu_uuid(self, index: int) -> str:
        """GPU UUIDs unique to this node, so that several test nodes never share a GPU."""
        return f"GPU-{self.node_id.hex()[:8]}-{index:04d}-0000-0000-000000000000"

    def body(
        self,
        seq: int,
        prev_digest: bytes | None = None,
        *,
        start_ns: int | None = None,
        window_ns: int = WINDOW_NS,
        busy_ms: int = 30_000,
        nonce: bytes = b"",
    ) -> pb.AttestationBody:
        start = self.t0_ns + seq * window_ns if start_ns is None else start_ns
        body = pb.AttestationBody(
            format_version=1,
            lab_id=self.lab_id,
            node_id=self.node_id,
            boot_id=self.boot_id,
            agent_version="0.1.0",
            agent_digest=hashlib.sha256(b"agent").digest(),
            seq=seq,
            prev_digest=prev_digest
            if prev_digest is not None
            else (ZERO_DIGEST if seq == 0 else b"\x11" * 32),
            window_start_ns=start,
            window_end_ns=start + window_ns,
            verifier_nonce=nonce,
            sample_interval_ms=1000,
            sampler_backend=pb.SAMPLER_BACKEND_SIM,
            samples_merkle_root=hashlib.sha256(b"samples").digest(),
            samples_count=60 * self.gpus,
        )
        for i in range(self.gpus):
            body.gpus.append(
                gpu_window(
                    i,
                    model=self.model,
                    busy_ms=busy_ms,
                    energy_start_mj=1_000_000 + seq * 21_000_000,
                    uuid=self.gpu_uuid(i),
                )
            )
        return body

    def sign_body(self, body: pb.AttestationBody) -> bytes:
        return sign_envelope(
            self.signer, PayloadType.ATTESTATION, body.SerializeToString(deterministic=True)
        )

    def chain(self, count: int, **kwargs: object) -> list[bytes]:
        """``count`` consecutive, correctly linked envelopes from seq 0."""
        out: list[bytes] = []
        prev: Digest = ZERO_DIGEST
        for seq in range(count):
            raw = self.sign_body(self.body(seq, prev, **kwargs))  # type: ignore[arg-type]
            out.append(raw)
            prev = envelope_digest(raw)
        return out
