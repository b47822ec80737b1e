"""An independent pausewatch agent's writing side, written from the project's documentation alone.

What a lab with its own collector (in any language) has to reproduce to ship evidence: the raw
samples and their Merkle root, the attestation body with its chain linkage and nonce, the
canonical signed envelope, the ``SubmitAttestations`` stream, enrolment (the node's proof of
possession and the operator's authorisation of the same bytes) and the operator's inventory
declaration.

Written only from ``docs/wire-format.md``, ``docs/agent.md``, ``docs/verifier.md``,
``docs/policy.md``, ``docs/gpu-table.md`` and ``protos/pausewatch/v1`` (the .proto files and their
generated modules), with ``cryptography``, ``protobuf`` and ``grpcio``. It must never import (or be
changed by reading) the project's ``attest``, ``agent`` or ``verifier`` packages: it is the
evidence that the documents are enough to write an agent.
"""

from __future__ import annotations

import hashlib
import json
import queue
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import pairwise
from math import ceil, floor

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pausewatch.v1 import (
    attestation_pb2,
    attestation_service_pb2,
    attestation_service_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

# wire-format.md §2, "Payload types".
ATTESTATION_TYPE = "application/vnd.pausewatch.attestation.v1+protobuf"
ENROLLMENT_TYPE = "application/vnd.pausewatch.enrollment.v1+protobuf"
ENROLLMENT_AUTHORIZATION_TYPE = "application/vnd.pausewatch.enrollment-authorization.v1+protobuf"
INVENTORY_TYPE = "application/vnd.pausewatch.inventory.v1+protobuf"

ZERO_DIGEST = bytes(32)
MS = 1_000_000  # ns per ms


# --- keys (wire-format.md §1) -------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 key pair; its key id is SHA-256 of the raw 32-byte public key."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def raw_public(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def key_id(self) -> bytes:
        return hashlib.sha256(self.raw_public).digest()

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)


# --- the signed envelope (wire-format.md §2) ----------------------------------------------------


def varint(value: int) -> bytes:
    """Protobuf base-128 varint, minimal form."""
    if value < 0:
        raise ValueError("varint of a negative number")
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def pae(payload_type: str, payload: bytes) -> bytes:
    """``"PWSIGv1" SP LEN(type) SP type SP LEN(payload) SP payload``: what is signed."""
    kind = payload_type.encode("ascii")
    return b"PWSIGv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def encode_envelope(payload_type: str, payload: bytes, key_id: bytes, signature: bytes) -> bytes:
    """The canonical envelope bytes: the four fields in order, each once, minimal lengths."""
    kind = payload_type.encode("ascii")
    if not 1 <= len(kind) <= 128 or any(not 0x21 <= c <= 0x7E for c in kind):
        raise ValueError("payload_type must be 1-128 bytes of printable ASCII")
    if not payload:
        raise ValueError("empty payload")
    if len(key_id) != 32 or len(signature) != 64:
        raise ValueError("key_id is 32 bytes and signature 64")
    return b"".join(
        [
            b"\x0a" + varint(len(kind)) + kind,
            b"\x12" + varint(len(payload)) + payload,
            b"\x1a\x20" + key_id,
            b"\x22\x40" + signature,
        ]
    )


def sign_envelope(key: SigningKey, payload_type: str, payload: bytes) -> bytes:
    return encode_envelope(payload_type, payload, key.key_id, key.sign(pae(payload_type, payload)))


def envelope_digest(envelope: bytes) -> bytes:
    return hashlib.sha256(envelope).digest()


# --- raw samples and their Merkle root (wire-format.md §4) --------------------------------------

SAMPLE_FORMAT = ">BHHqBQIQIIIIB"
SAMPLE_BYTES = 51
assert struct.calcsize(SAMPLE_FORMAT) == SAMPLE_BYTES

FLAG_UTILIZATION = 1 << 0
FLAG_ENERGY = 1 << 1
FLAG_POWER = 1 << 2
FLAG_MEMORY_USED = 1 << 3
FLAG_COMPUTE_PROCESSES = 1 << 4
FLAG_TENSOR_ACTIVE = 1 << 5
FLAG_SM_ACTIVE = 1 << 6


@dataclass(frozen=True)
class Sample:
    """One poll of one GPU. ``None`` means the metric could not be read in this poll."""

    gpu_index: int
    timestamp_ns: int
    interval_ms: int
    utilization_pct: int | None = None
    energy_mj: int | None = None
    power_mw: int | None = None
    memory_used_bytes: int | None = None
    compute_processes: int | None = None
    tensor_active_ppm: int | None = None
    sm_active_ppm: int | None = None

    def _readings(self) -> list[tuple[int, int | None]]:
        return [
            (FLAG_UTILIZATION, self.utilization_pct),
            (FLAG_ENERGY, self.energy_mj),
            (FLAG_POWER, self.power_mw),
            (FLAG_MEMORY_USED, self.memory_used_bytes),
            (FLAG_COMPUTE_PROCESSES, self.compute_processes),
            (FLAG_TENSOR_ACTIVE, self.tensor_active_ppm),
            (FLAG_SM_ACTIVE, self.sm_active_ppm),
        ]

    @property
    def flags(self) -> int:
        return sum(bit for bit, value in self._readings() if value is not None)

    def encode(self) -> bytes:
        """The 51-byte big-endian structure; a field without its flag bit is written as 0."""
        return struct.pack(
            SAMPLE_FORMAT,
            1,
            self.gpu_index,
            self.flags,
            self.timestamp_ns,
            self.utilization_pct or 0,
            self.energy_mj or 0,
            self.power_mw or 0,
            self.memory_used_bytes or 0,
            self.compute_processes or 0,
            self.tensor_active_ppm or 0,
            self.sm_active_ppm or 0,
            self.interval_ms,
            0,
        )


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 root: leaf = SHA-256(0x00 || input), node = SHA-256(0x01 || left || right)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    split = 1 << ((len(leaves) - 1).bit_length() - 1)  # largest power of two below n
    return hashlib.sha256(
        b"\x01" + merkle_root(leaves[:split]) + merkle_root(leaves[split:])
    ).digest()


def samples_root(samples: Sequence[Sample]) -> tuple[bytes, int]:
    """The root over a window's samples ordered by (timestamp, GPU index), and their count."""
    ordered = sorted(samples, key=lambda s: (s.timestamp_ns, s.gpu_index))
    return merkle_root([s.encode() for s in ordered]), len(ordered)


# --- compute figures (wire-format.md §3 "Compute figures", gpu-table.md) ------------------------

TERA = 10**12


@dataclass(frozen=True)
class GpuModel:
    """A row of the published GPU table (dense peaks in FLOP/s, exact)."""

    key: str
    fastest_peak: Fraction
    bf16_peak: Fraction
    board_power_w: int
    name_tokens: frozenset[str]
    variants: tuple[frozenset[str], ...]

    @property
    def flop_per_joule(self) -> Fraction:
        return self.fastest_peak / self.board_power_w


def _row(
    key: str, fastest: str, bf16: str, watts: int, tokens: str, variants: str = ""
) -> GpuModel:
    return GpuModel(
        key=key,
        fastest_peak=Fraction(fastest) * TERA,
        bf16_peak=Fraction(bf16) * TERA,
        board_power_w=watts,
        name_tokens=frozenset(tokens.split()),
        variants=tuple(frozenset(v.split()) for v in variants.split(";") if v.strip()),
    )


# The rows this agent's fleet uses, copied from docs/gpu-table.md (table version 1).
TABLE_VERSION = 1
GPU_TABLE: tuple[GpuModel, ...] = (
    _row("a100-sxm", "624", "312", 400, "a100", "sxm4; sxm"),
    _row("a100-pcie-40gb", "624", "312", 250, "a100", "40gb pcie"),
    _row("a100-pcie-80gb", "624", "312", 300, "a100", "80gb pcie"),
    _row("h100-sxm", "1979", "989.5", 700, "h100", "sxm; sxm5; hbm3"),
    _row("h100-pcie", "1513", "756.5", 350, "h100", "pcie"),
    _row("h100-nvl", "1670.5", "835.5", 400, "h100", "nvl"),
)
# An unknown model is bounded with the whole table's highest peak and FLOP per joule.
TABLE_MAX_PEAK = Fraction(15_000) * TERA
TABLE_MAX_FLOP_PER_JOULE = Fraction(15_000 * TERA, 1400)


def _tokens(name: str) -> set[str]:
    out, word = set(), []
    for ch in name.lower():
        if ch.isalnum():
            word.append(ch)
        elif word:
            out.add("".join(word))
            word = []
    if word:
        out.add("".join(word))
    return out


def lookup_model(nvml_name: str) -> GpuModel | None:
    """Token match as gpu-table.md describes: candidates, a matching variant wins, ties: top peak."""
    tokens = _tokens(nvml_name)
    candidates = [row for row in GPU_TABLE if row.name_tokens <= tokens]
    if not candidates:
        return None
    with_variant = [row for row in candidates if any(v <= tokens for v in row.variants)]
    pool = with_variant or candidates
    return max(pool, key=lambda row: row.fastest_peak)


ASSUMED_UTILIZATION_PPM = 400_000


def compute_bounds(
    model_name: str,
    busy_ms: int,
    *,
    tensor_active_ms: int | None = None,
    energy_delta_mj: int | None = None,
) -> attestation_pb2.ComputeBounds:
    """The agent's claimed figures for one GPU-window (the verifier recomputes its own)."""
    pb = attestation_pb2
    model = lookup_model(model_name)
    bounds = pb.ComputeBounds(table_version=TABLE_VERSION)
    if model is None:
        peak, bf16, per_joule = TABLE_MAX_PEAK, TABLE_MAX_PEAK, TABLE_MAX_FLOP_PER_JOULE
        bounds.upper_bound_method = pb.UPPER_BOUND_METHOD_UNKNOWN_MODEL_TABLE_MAX
    else:
        peak, bf16, per_joule = model.fastest_peak, model.bf16_peak, model.flop_per_joule
        bounds.upper_bound_method = pb.UPPER_BOUND_METHOD_PEAK_TIMES_BUSY
        bounds.table_model_key = model.key
    bounds.upper_bound_flop = ceil(peak * busy_ms / 1000)
    if tensor_active_ms is not None:
        bounds.central_estimate_flop = floor(bf16 * tensor_active_ms / 1000)
        bounds.central_estimate_method = pb.CENTRAL_ESTIMATE_METHOD_TENSOR_ACTIVE
    else:
        bounds.central_estimate_flop = floor(
            bf16 * busy_ms / 1000 * ASSUMED_UTILIZATION_PPM / 1_000_000
        )
        bounds.central_estimate_method = pb.CENTRAL_ESTIMATE_METHOD_ASSUMED_UTILIZATION
        bounds.assumed_utilization_ppm = ASSUMED_UTILIZATION_PPM
    if energy_delta_mj is not None:
        bounds.energy_flop = ceil(Fraction(energy_delta_mj, 1000) * per_joule)
        bounds.energy_method = pb.ENERGY_METHOD_FLOP_PER_JOULE_AT_PEAK
    else:
        bounds.energy_method = pb.ENERGY_METHOD_UNAVAILABLE
    return bounds


# --- one GPU over one window (agent.md "What a window holds") -----------------------------------


@dataclass(frozen=True)
class Gpu:
    """A GPU's identity as NVML reports it."""

    index: int
    uuid: str
    model: str
    serial: str = ""
    pci_bus_id: str = ""
    board_part_number: str = ""

    def identity(self) -> registry_pb2.GpuIdentity:
        return registry_pb2.GpuIdentity(
            uuid=self.uuid,
            serial=self.serial,
            model=self.model,
            pci_bus_id=self.pci_bus_id,
            board_part_number=self.board_part_number,
        )


def _integral_ms(parts_per: int, samples: Sequence[tuple[int, int]]) -> int:
    """ceil(sum of value / parts_per x interval_ms) over (value, interval_ms) pairs."""
    return -(-sum(value * interval for value, interval in samples) // parts_per)


def gpu_window(
    gpu: Gpu,
    samples: Sequence[Sample],
    *,
    window_ns: int,
    sample_interval_ms: int,
    closing_energy_mj: int | None,
) -> attestation_pb2.GpuWindow:
    """A GPU's figures over one window, from its samples in it.

    ``closing_energy_mj`` is the reading that closed the window (the next window's first), so that
    consecutive windows tile the energy counter.
    """
    pb = attestation_pb2
    mine = sorted((s for s in samples if s.gpu_index == gpu.index), key=lambda s: s.timestamp_ns)
    util = [(s.utilization_pct, s.interval_ms) for s in mine if s.utilization_pct is not None]
    tensor = [(s.tensor_active_ppm, s.interval_ms) for s in mine if s.tensor_active_ppm is not None]
    sm = [(s.sm_active_ppm, s.interval_ms) for s in mine if s.sm_active_ppm is not None]
    power = [s.power_mw for s in mine if s.power_mw is not None]
    memory = [s.memory_used_bytes for s in mine if s.memory_used_bytes is not None]
    procs = [s.compute_processes for s in mine if s.compute_processes is not None]
    energy = [s.energy_mj for s in mine if s.energy_mj is not None]

    out = pb.GpuWindow(
        index=gpu.index,
        uuid=gpu.uuid,
        serial=gpu.serial,
        board_part_number=gpu.board_part_number,
        pci_bus_id=gpu.pci_bus_id,
        model=gpu.model,
        mig_mode=pb.MIG_MODE_DISABLED,
        presence=pb.GPU_PRESENCE_PRESENT,
        samples_expected=window_ns // (sample_interval_ms * MS),
        samples_taken=len(util),
        busy_ms=_integral_ms(100, util),
        max_power_mw=max(power, default=0),
        mean_power_mw=sum(power) // len(power) if power else 0,
        max_memory_used_bytes=max(memory, default=0),
        max_compute_processes=max(procs, default=0),
    )
    full_window = len(tensor) == len(mine) and bool(mine)
    if tensor:
        out.tensor_active_ms = _integral_ms(1_000_000, tensor)
    if sm:
        out.sm_active_ms = _integral_ms(1_000_000, sm)
    energy_delta: int | None = None
    if energy and closing_energy_mj is not None:
        out.energy_start_mj, out.energy_end_mj = energy[0], closing_energy_mj
        readings = [*energy, closing_energy_mj]
        if all(later >= earlier for earlier, later in pairwise(readings)):
            out.energy_counter_state = pb.ENERGY_COUNTER_STATE_OK
            energy_delta = closing_energy_mj - energy[0]
        else:
            out.energy_counter_state = pb.ENERGY_COUNTER_STATE_RESET
    else:
        out.energy_counter_state = pb.ENERGY_COUNTER_STATE_ERROR
    for metric, read in [
        (pb.METRIC_UTILIZATION, len(util)),
        (pb.METRIC_ENERGY, len(energy)),
        (pb.METRIC_POWER, len(power)),
        (pb.METRIC_MEMORY_USED, len(memory)),
        (pb.METRIC_COMPUTE_PROCESSES, len(procs)),
        (pb.METRIC_GPM_TENSOR_ACTIVE, len(tensor)),
        (pb.METRIC_GPM_SM_ACTIVE, len(sm)),
    ]:
        if read == len(mine) and mine:
            out.metric_status.add(metric=metric, state=pb.METRIC_STATE_SUPPORTED)
        elif metric in (pb.METRIC_GPM_TENSOR_ACTIVE, pb.METRIC_GPM_SM_ACTIVE) and read == 0:
            out.metric_status.add(metric=metric, state=pb.METRIC_STATE_NOT_SUPPORTED)
        else:
            out.metric_status.add(
                metric=metric, state=pb.METRIC_STATE_ERROR, error_count=len(mine) - read
            )
    out.bounds.CopyFrom(
        compute_bounds(
            gpu.model,
            out.busy_ms,
            tensor_active_ms=out.tensor_active_ms if full_window else None,
            energy_delta_mj=energy_delta,
        )
    )
    return out


# --- the attestation body and the chain (wire-format.md §3) -------------------------------------


def agent_digest(files: Mapping[str, bytes], config: Mapping[str, object]) -> bytes:
    """SHA-256 of the digest text: a header, one line per code file (sorted), the config line."""
    lines = ["pausewatch-agent-digest-v1\n"]
    lines += [f"{hashlib.sha256(files[p]).hexdigest()} {p}\n" for p in sorted(files)]
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    lines.append(f"config {hashlib.sha256(canonical.encode('utf-8')).hexdigest()}\n")
    return hashlib.sha256("".join(lines).encode("utf-8")).digest()


@dataclass(frozen=True)
class NodeIdentity:
    """What every body of a node states about the node and its software."""

    lab_id: str
    key: SigningKey
    boot_id: str
    agent_version: str
    agent_digest: bytes
    sample_interval_ms: int = 1000
    sampler_backend: int = attestation_pb2.SAMPLER_BACKEND_NVML
    driver_version: str = ""
    nvml_version: str = ""

    @property
    def node_id(self) -> bytes:
        return self.key.key_id


def build_body(
    node: NodeIdentity,
    *,
    seq: int,
    prev_digest: bytes,
    window_start_ns: int,
    window_end_ns: int,
    nonce: bytes,
    gpus: Sequence[attestation_pb2.GpuWindow],
    samples: Sequence[Sample],
    events: Sequence[attestation_pb2.SamplerEvent] = (),
) -> attestation_pb2.AttestationBody:
    root, count = samples_root(samples)
    return attestation_pb2.AttestationBody(
        format_version=1,
        lab_id=node.lab_id,
        node_id=node.node_id,
        boot_id=node.boot_id,
        agent_version=node.agent_version,
        agent_digest=node.agent_digest,
        seq=seq,
        prev_digest=prev_digest,
        window_start_ns=window_start_ns,
        window_end_ns=window_end_ns,
        verifier_nonce=nonce,
        sample_interval_ms=node.sample_interval_ms,
        sampler_backend=node.sampler_backend,  # type: ignore[arg-type]
        driver_version=node.driver_version,
        nvml_version=node.nvml_version,
        gpus=list(gpus),
        samples_merkle_root=root,
        samples_count=count,
        events=list(events),
    )


@dataclass(frozen=True)
class SignedWindow:
    seq: int
    body: attestation_pb2.AttestationBody
    payload: bytes
    envelope: bytes

    @property
    def digest(self) -> bytes:
        return envelope_digest(self.envelope)


def sign_body(key: SigningKey, body: attestation_pb2.AttestationBody) -> SignedWindow:
    payload = body.SerializeToString(deterministic=True)
    return SignedWindow(body.seq, body, payload, sign_envelope(key, ATTESTATION_TYPE, payload))


@dataclass
class ChainWriter:
    """Signs a node's consecutive windows: seq from 0, each linked to the previous envelope."""

    node: NodeIdentity
    gpus: Sequence[Gpu]
    nonce: bytes = b""
    seq: int = 0
    prev_digest: bytes = ZERO_DIGEST
    signed: list[SignedWindow] = field(default_factory=list)

    def body(
        self,
        window_start_ns: int,
        window_end_ns: int,
        samples: Sequence[Sample],
        closing_energy_mj: Mapping[int, int],
    ) -> attestation_pb2.AttestationBody:
        """The next window's body over the current head, not signed and not committed."""
        windows = [
            gpu_window(
                gpu,
                samples,
                window_ns=window_end_ns - window_start_ns,
                sample_interval_ms=self.node.sample_interval_ms,
                closing_energy_mj=closing_energy_mj.get(gpu.index),
            )
            for gpu in self.gpus
        ]
        return build_body(
            self.node,
            seq=self.seq,
            prev_digest=self.prev_digest,
            window_start_ns=window_start_ns,
            window_end_ns=window_end_ns,
            nonce=self.nonce,
            gpus=windows,
            samples=samples,
        )

    def sign_next(
        self,
        window_start_ns: int,
        window_end_ns: int,
        samples: Sequence[Sample],
        closing_energy_mj: Mapping[int, int],
    ) -> SignedWindow:
        """Signs the next window and advances the head (the head is only ever what was signed)."""
        window = sign_body(
            self.node.key,
            self.body(window_start_ns, window_end_ns, samples, closing_energy_mj),
        )
        self.seq += 1
        self.prev_digest = window.digest
        self.signed.append(window)
        return window


# --- enrolment and inventory (agent.md "Enrol it", registry.proto) ------------------------------


def build_enrollment(
    node_key: SigningKey,
    operator_key: SigningKey,
    *,
    lab_id: str,
    gpus: Sequence[Gpu],
    node_name: str,
    agent_version: str,
    created_at_ns: int,
    nonce: bytes,
) -> registry_pb2.EnrollNodeRequest:
    """The node's proof of possession and the operator's authorisation, over the same bytes."""
    payload = registry_pb2.NodeEnrollment(
        format_version=1,
        lab_id=lab_id,
        node_public_key=node_key.raw_public,
        gpus=[g.identity() for g in gpus],
        node_name=node_name,
        agent_version=agent_version,
        created_at_ns=created_at_ns,
        verifier_nonce=nonce,
    ).SerializeToString(deterministic=True)
    return registry_pb2.EnrollNodeRequest(
        enrollment_envelope=sign_envelope(node_key, ENROLLMENT_TYPE, payload),
        authorization_envelope=sign_envelope(operator_key, ENROLLMENT_AUTHORIZATION_TYPE, payload),
    )


def build_inventory_declaration(
    operator_key: SigningKey,
    *,
    lab_id: str,
    version: int,
    gpus: Sequence[Gpu],
    effective_from_ns: int,
    created_at_ns: int,
) -> bytes:
    payload = registry_pb2.InventoryDeclaration(
        format_version=1,
        lab_id=lab_id,
        version=version,
        gpus=[g.identity() for g in gpus],
        effective_from_ns=effective_from_ns,
        created_at_ns=created_at_ns,
    ).SerializeToString(deterministic=True)
    return sign_envelope(operator_key, INVENTORY_TYPE, payload)


# --- talking to the verifier (agent.md "Shipping", attestation_service.proto) -------------------


class ReceiptMismatchError(RuntimeError):
    """The verifier answered with receipts that do not name the envelopes sent."""


class Client:
    """The agent's and the operator's calls over one gRPC channel."""

    def __init__(self, channel: grpc.Channel, timeout_s: float = 30.0) -> None:
        self.attestation = attestation_service_pb2_grpc.AttestationServiceStub(channel)
        self.registry = registry_pb2_grpc.RegistryServiceStub(channel)
        self.timeout_s = timeout_s

    def challenge(self, node_id: bytes) -> attestation_service_pb2.GetChallengeResponse:
        return self.attestation.GetChallenge(
            attestation_service_pb2.GetChallengeRequest(node_id=node_id), timeout=self.timeout_s
        )

    def enroll(self, request: registry_pb2.EnrollNodeRequest) -> registry_pb2.EnrollNodeResponse:
        return self.registry.EnrollNode(request, timeout=self.timeout_s)

    def declare_inventory(self, envelope: bytes) -> registry_pb2.DeclareInventoryResponse:
        return self.registry.DeclareInventory(
            registry_pb2.DeclareInventoryRequest(declaration_envelope=envelope),
            timeout=self.timeout_s,
        )

    def submit(
        self, batches: Sequence[Sequence[bytes]]
    ) -> list[list[attestation_service_pb2.Receipt]]:
        """Sends the batches over one stream, one in flight, each answered before the next goes.

        Returns each batch's receipts, checked to name its envelopes in order.
        """
        outbox: queue.Queue[attestation_service_pb2.SubmitAttestationsRequest | None]
        outbox = queue.Queue()

        def requests() -> Iterator[attestation_service_pb2.SubmitAttestationsRequest]:
            while (item := outbox.get()) is not None:
                yield item

        call = self.attestation.SubmitAttestations(requests(), timeout=self.timeout_s)
        responses = iter(call)
        answers: list[list[attestation_service_pb2.Receipt]] = []
        try:
            for batch in batches:
                outbox.put(attestation_service_pb2.SubmitAttestationsRequest(envelopes=batch))
                response = next(responses)
                receipts = list(response.receipts)
                if [r.envelope_digest for r in receipts] != [envelope_digest(e) for e in batch]:
                    raise ReceiptMismatchError("the receipts do not name the envelopes sent")
                answers.append(receipts)
        except BaseException:
            outbox.put(None)
            call.cancel()  # type: ignore[no-untyped-call]
            raise
        outbox.put(None)  # half-close: the verifier ends the stream with OK
        for _ in responses:
            raise ReceiptMismatchError("a response with no batch to answer")
        return answers

    def submit_one(self, envelope: bytes) -> attestation_service_pb2.Receipt:
        return self.submit([[envelope]])[0][0]
