"""Attestation bodies: parse only after verification, and check what the body alone can tell.

    verified = verify_attestation(raw, keyring)       # signature first, then parse and validate
    verified.body.seq, verified.window_ms, verified.digest

:func:`validate_body` checks what needs no state: format version, ids and sizes, a sane
window, integer fields within what the window allows, unique GPUs. What needs the verifier's
state (enrolled GPUs, nonces, clock skew, the chain) is the verifier's job. Only
:func:`verify_attestation` and :func:`attestation_from_verified` make a
:class:`VerifiedAttestation`; storage, accounting and policy take nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from pausewatch.v1 import attestation_pb2 as pb

from attest import compute
from attest.chain import check_link_fields
from attest.envelope import (
    DEFAULT_MAX_ENVELOPE_BYTES,
    Keyring,
    PayloadType,
    VerifiedEnvelope,
    verify_envelope,
)
from attest.errors import BodyError, ChainError
from attest.ids import DIGEST_SIZE, Digest, KeyId, NodeId, is_valid_lab_id

FORMAT_VERSION = 1
MIN_WINDOW_NS = 100_000_000  # 100 ms: shorter windows are noise, not evidence
MAX_WINDOW_NS = 600_000_000_000  # 10 min: keeps every per-window FLOP figure below 2**64
MIN_SAMPLE_INTERVAL_MS = 10
MAX_SAMPLE_INTERVAL_MS = 60_000
MAX_GPUS = 256
MAX_EVENTS = 256
MAX_NONCE_BYTES = 64
MAX_TEXT = 256

# Enum value sets, computed once (EnumTypeWrapper.values() builds a new list on every call).
_BACKENDS = frozenset(pb.SamplerBackend.values()) - {pb.SAMPLER_BACKEND_UNSPECIFIED}
_EVENT_KINDS = frozenset(pb.EventKind.values()) - {pb.EVENT_KIND_UNSPECIFIED}
_PRESENCE = frozenset(pb.GpuPresence.values()) - {pb.GPU_PRESENCE_UNSPECIFIED}
_ENERGY_STATES = frozenset(pb.EnergyCounterState.values()) - {pb.ENERGY_COUNTER_STATE_UNSPECIFIED}
_METRICS = frozenset(pb.Metric.values()) - {pb.METRIC_UNSPECIFIED}
_METRIC_STATES = frozenset(pb.MetricState.values()) - {pb.METRIC_STATE_UNSPECIFIED}


@dataclass(frozen=True, slots=True)
class VerifiedAttestation:
    """An attestation whose envelope verified and whose body passed :func:`validate_body`."""

    envelope: VerifiedEnvelope
    body: pb.AttestationBody = field(repr=False)
    _token: object = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _VERIFIED:
            raise TypeError("VerifiedAttestation is made only by verify_attestation()")

    @property
    def node_id(self) -> NodeId:
        return NodeId(self.envelope.key_id)

    @property
    def digest(self) -> Digest:
        return self.envelope.digest

    @property
    def raw(self) -> bytes:
        return self.envelope.raw

    @property
    def seq(self) -> int:
        return self.body.seq

    @property
    def window_ms(self) -> int:
        return (self.body.window_end_ns - self.body.window_start_ns) // 1_000_000


_VERIFIED = object()


def parse_attestation_body(payload: bytes) -> pb.AttestationBody:
    """Parse an authenticated payload as an AttestationBody; raises :class:`BodyError`."""
    body = pb.AttestationBody()
    try:
        body.ParseFromString(payload)
    except DecodeError:
        raise BodyError("payload is not a valid AttestationBody") from None
    return body


def _text(value: str, name: str, *, required: bool = True, limit: int = MAX_TEXT) -> None:
    if required and not value:
        raise BodyError(f"{name} is empty")
    if len(value) > limit:
        raise BodyError(f"{name} is longer than {limit} characters")


def validate_body(body: pb.AttestationBody, key_id: KeyId) -> None:
    """Check everything the body alone can tell; raises :class:`BodyError` naming the field."""
    if body.format_version != FORMAT_VERSION:
        raise BodyError(f"format_version is {body.format_version}, expected {FORMAT_VERSION}")
    if not is_valid_lab_id(body.lab_id):
        raise BodyError("lab_id is not a valid lab id")
    if body.node_id != key_id:
        raise BodyError("node_id does not match the signing key's id")
    _text(body.boot_id, "boot_id", limit=64)
    _text(body.agent_version, "agent_version", limit=64)
    if len(body.agent_digest) != DIGEST_SIZE:
        raise BodyError(f"agent_digest is {len(body.agent_digest)} bytes, expected {DIGEST_SIZE}")
    try:
        check_link_fields(body.seq, body.prev_digest)
    except ChainError as exc:
        raise BodyError(str(exc)) from None
    if body.window_start_ns <= 0:
        raise BodyError("window_start_ns must be positive")
    window_ns = body.window_end_ns - body.window_start_ns
    if window_ns < MIN_WINDOW_NS:
        raise BodyError(f"window is {window_ns} ns long; the minimum is {MIN_WINDOW_NS}")
    if window_ns > MAX_WINDOW_NS:
        raise BodyError(f"window is {window_ns} ns long; the maximum is {MAX_WINDOW_NS}")
    if len(body.verifier_nonce) > MAX_NONCE_BYTES:
        raise BodyError(f"verifier_nonce is longer than {MAX_NONCE_BYTES} bytes")
    interval_ms = body.sample_interval_ms
    if not MIN_SAMPLE_INTERVAL_MS <= interval_ms <= MAX_SAMPLE_INTERVAL_MS:
        raise BodyError(
            f"sample_interval_ms is {interval_ms}; it must be in "
            f"[{MIN_SAMPLE_INTERVAL_MS}, {MAX_SAMPLE_INTERVAL_MS}]"
        )
    if body.sampler_backend not in _BACKENDS:
        raise BodyError(f"sampler_backend {body.sampler_backend} is not set or unknown")
    _text(body.driver_version, "driver_version", required=False, limit=64)
    _text(body.nvml_version, "nvml_version", required=False, limit=64)
    if len(body.samples_merkle_root) != DIGEST_SIZE:
        raise BodyError(
            f"samples_merkle_root is {len(body.samples_merkle_root)} bytes, expected {DIGEST_SIZE}"
        )
    if len(body.gpus) > MAX_GPUS:
        raise BodyError(f"more than {MAX_GPUS} GPUs")
    window_ms = window_ns // 1_000_000
    # A window of N samples at the interval can integrate up to one interval past its length.
    limit_ms = window_ms + interval_ms
    max_samples = window_ns // (interval_ms * 1_000_000) + 2
    uuids: set[str] = set()
    indices: set[int] = set()
    for gpu in body.gpus:
        _validate_gpu(gpu, limit_ms, max_samples)
        if gpu.uuid in uuids:
            raise BodyError(f"GPU {gpu.uuid} appears twice")
        if gpu.index in indices:
            raise BodyError(f"GPU index {gpu.index} appears twice")
        uuids.add(gpu.uuid)
        indices.add(gpu.index)
    if len(body.events) > MAX_EVENTS:
        raise BodyError(f"more than {MAX_EVENTS} events")
    for event in body.events:
        if event.kind not in _EVENT_KINDS:
            raise BodyError(f"event kind {event.kind} is not valid")
        _text(event.detail, "event detail", required=False)
        if event.gap_end_ns < event.gap_start_ns:
            raise BodyError("event gap_end_ns is before gap_start_ns")


def _validate_gpu(gpu: pb.GpuWindow, limit_ms: int, max_samples: int) -> None:
    # Hot path (every GPU of every attestation): build messages only on failure.
    uuid = gpu.uuid
    if not uuid or len(uuid) > 96:
        raise BodyError("GPU uuid is empty or longer than 96 characters")
    model = gpu.model
    if not model or len(model) > 96:
        raise BodyError(f"GPU {uuid} model is empty or longer than 96 characters")
    if len(gpu.serial) > 96 or len(gpu.board_part_number) > 96 or len(gpu.pci_bus_id) > 96:
        raise BodyError(f"GPU {uuid} serial, board_part_number or pci_bus_id is too long")
    if gpu.presence not in _PRESENCE:
        raise BodyError(f"GPU {uuid} presence is not set")
    expected = gpu.samples_expected
    if expected > max_samples:
        raise BodyError(f"GPU {uuid} samples_expected {expected} exceeds the window")
    if gpu.samples_taken > expected:
        raise BodyError(f"GPU {uuid} samples_taken exceeds samples_expected")
    if gpu.busy_ms > limit_ms:
        raise BodyError(f"GPU {uuid} busy_ms {gpu.busy_ms} exceeds the window")
    if gpu.tensor_active_ms > limit_ms:
        raise BodyError(f"GPU {uuid} tensor_active_ms {gpu.tensor_active_ms} exceeds the window")
    if gpu.sm_active_ms > limit_ms:
        raise BodyError(f"GPU {uuid} sm_active_ms {gpu.sm_active_ms} exceeds the window")
    state = gpu.energy_counter_state
    if state not in _ENERGY_STATES:
        raise BodyError(f"GPU {uuid} energy_counter_state is not set")
    if state == pb.ENERGY_COUNTER_STATE_OK and gpu.energy_end_mj < gpu.energy_start_mj:
        raise BodyError(f"GPU {uuid} energy counter is OK but decreased")
    if gpu.mean_power_mw > gpu.max_power_mw:
        raise BodyError(f"GPU {uuid} mean_power_mw exceeds max_power_mw")
    seen = 0
    for status in gpu.metric_status:
        metric = status.metric
        if metric not in _METRICS:
            raise BodyError(f"GPU {uuid} has a metric status for an invalid metric")
        if status.state not in _METRIC_STATES:
            raise BodyError(f"GPU {uuid} metric {metric} has no state")
        bit = 1 << metric
        if seen & bit:
            raise BodyError(f"GPU {uuid} metric {metric} is reported twice")
        seen |= bit
        if len(status.last_error) > 64:
            raise BodyError(f"GPU {uuid} last_error is longer than 64 characters")


def metric_supported(gpu: pb.GpuWindow, metric: int) -> bool:
    """Whether ``metric`` was read successfully throughout the window on this GPU."""
    return any(
        s.metric == metric and s.state == pb.METRIC_STATE_SUPPORTED for s in gpu.metric_status
    )


def _measured(gpu: pb.GpuWindow) -> tuple[int | None, int | None]:
    """Tensor-active ms where GPM reported it for the whole window, and the window's energy in mJ
    where the counter was read at both edges without a reset; else None."""
    tensor_active_ms = None
    for status in gpu.metric_status:
        if status.metric == pb.METRIC_GPM_TENSOR_ACTIVE:
            if status.state == pb.METRIC_STATE_SUPPORTED:
                tensor_active_ms = gpu.tensor_active_ms
            break
    energy_mj = (
        gpu.energy_end_mj - gpu.energy_start_mj
        if gpu.energy_counter_state == pb.ENERGY_COUNTER_STATE_OK
        else None
    )
    return tensor_active_ms, energy_mj


def window_energy_mj(body: pb.AttestationBody) -> int:
    """The GPU energy a window attests: the sum over its GPUs whose energy counter was read at both
    edges without a reset (the others' energy is unknown, never 0 by assumption: callers that
    bound compute treat those GPUs by their own rule)."""
    return sum(energy for gpu in body.gpus if (energy := _measured(gpu)[1]) is not None)


def window_compute(gpu: pb.GpuWindow) -> compute.WindowCompute:
    """The compute figures for one GPU-window, from its measured fields alone.

    Tensor-active time counts only where GPM reported it for the whole window; energy only where
    the counter was read at both edges without a reset. The agent signs these as its claim; the
    verifier and an offline auditor recompute them with their own table.
    """
    tensor_active_ms, energy_mj = _measured(gpu)
    return compute.compute_window(gpu.model, gpu.busy_ms, tensor_active_ms, energy_mj)


def window_flop(gpu: pb.GpuWindow) -> compute.WindowFlop:
    """:func:`window_compute`'s figures in their hot-path form (for a validated body)."""
    tensor_active_ms, energy_mj = _measured(gpu)
    return compute.window_flop(gpu.model, gpu.busy_ms, tensor_active_ms, energy_mj)


def bounds_to_proto(figures: compute.WindowCompute) -> pb.ComputeBounds:
    """The wire form of a GPU-window's compute figures."""
    return pb.ComputeBounds(
        upper_bound_flop=figures.upper_bound_flop,
        upper_bound_method=pb.UpperBoundMethod.Value(
            "UPPER_BOUND_METHOD_" + figures.upper_bound_method.value.upper()
        ),
        central_estimate_flop=figures.central_estimate_flop,
        central_estimate_method=pb.CentralEstimateMethod.Value(
            "CENTRAL_ESTIMATE_METHOD_" + figures.central_estimate_method.value.upper()
        ),
        assumed_utilization_ppm=figures.assumed_utilization_ppm,
        energy_flop=figures.energy_flop,
        energy_method=pb.EnergyMethod.Value("ENERGY_METHOD_" + figures.energy_method.value.upper()),
        table_model_key=figures.table_model_key,
        table_version=figures.table_version,
    )


def attestation_from_verified(verified: VerifiedEnvelope) -> VerifiedAttestation:
    """Parse and validate the payload of an envelope that has already verified."""
    if verified.payload_type != PayloadType.ATTESTATION:
        raise BodyError(f"payload type {verified.payload_type!r} is not an attestation")
    body = parse_attestation_body(verified.payload)
    validate_body(body, verified.key_id)
    return VerifiedAttestation(envelope=verified, body=body, _token=_VERIFIED)


def verify_attestation(
    raw: bytes, keyring: Keyring, *, max_size: int = DEFAULT_MAX_ENVELOPE_BYTES
) -> VerifiedAttestation:
    """Verify an attestation envelope, then parse and validate its body."""
    verified = verify_envelope(
        raw, keyring, payload_type=PayloadType.ATTESTATION, max_size=max_size
    )
    return attestation_from_verified(verified)
