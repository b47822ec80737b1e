from __future__ import annotations

from collections.abc import Callable

import pytest
from pausewatch.v1 import attestation_pb2 as pb

from attest import attestation
from attest.envelope import PayloadType, StaticKeyring, sign_envelope
from attest.errors import BodyError, PayloadTypeError
from tests.builders import TestNode

NODE = TestNode.from_seed(7)


def ring() -> StaticKeyring:
    keys = StaticKeyring()
    keys.add(NODE.signer.public_key)
    return keys


def test_verify_attestation_accepts_a_good_body() -> None:
    raw = NODE.sign_body(NODE.body(0))
    verified = attestation.verify_attestation(raw, ring())
    assert verified.seq == 0
    assert verified.node_id == NODE.node_id
    assert verified.window_ms == 60_000
    assert len(verified.body.gpus) == 2


def test_payload_must_be_an_attestation() -> None:
    raw = sign_envelope(NODE.signer, PayloadType.FINDING, NODE.body(0).SerializeToString())
    with pytest.raises(PayloadTypeError):
        attestation.verify_attestation(raw, ring())


def test_garbage_payload_is_a_body_error() -> None:
    raw = sign_envelope(NODE.signer, PayloadType.ATTESTATION, b"\xff\xff\xff\xff")
    with pytest.raises(BodyError, match="not a valid AttestationBody"):
        attestation.verify_attestation(raw, ring())


def _set(path: str, value: object) -> Callable[[pb.AttestationBody], None]:
    def mutate(body: pb.AttestationBody) -> None:
        target: object = body
        parts = path.split(".")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else getattr(target, part)  # type: ignore[index]
        if isinstance(value, list):
            getattr(target, parts[-1]).extend(value)
        else:
            setattr(target, parts[-1], value)

    return mutate


BAD_BODIES: dict[str, tuple[Callable[[pb.AttestationBody], None], str]] = {
    "format version": (_set("format_version", 2), "format_version"),
    "lab id": (_set("lab_id", "Bad Lab!"), "lab_id"),
    "node id": (_set("node_id", b"\x01" * 32), "node_id"),
    "boot id": (_set("boot_id", ""), "boot_id"),
    "agent digest": (_set("agent_digest", b"short"), "agent_digest"),
    "prev digest for seq 0": (_set("prev_digest", b"\x01" * 32), "seq 0"),
    "reversed window": (_set("window_end_ns", 1), "window"),
    "window too long": (_set("window_end_ns", 2_000_000_000_000_000_000), "maximum"),
    "sample interval": (_set("sample_interval_ms", 0), "sample_interval_ms"),
    "backend": (_set("sampler_backend", pb.SAMPLER_BACKEND_UNSPECIFIED), "sampler_backend"),
    "samples root": (_set("samples_merkle_root", b""), "samples_merkle_root"),
    "busy over window": (_set("gpus.0.busy_ms", 10_000_000), "busy_ms"),
    "tensor over window": (_set("gpus.0.tensor_active_ms", 10_000_000), "tensor_active_ms"),
    "samples taken": (_set("gpus.0.samples_taken", 61), "samples_taken"),
    "energy decreased": (_set("gpus.0.energy_end_mj", 0), "decreased"),
    "mean over max power": (_set("gpus.0.mean_power_mw", 10**9), "mean_power_mw"),
    "duplicate uuid": (_set("gpus.1.uuid", NODE.gpu_uuid(0)), "twice"),
    "presence": (_set("gpus.0.presence", pb.GPU_PRESENCE_UNSPECIFIED), "presence"),
    "energy state": (_set("gpus.0.energy_counter_state", 0), "energy_counter_state"),
    "event kind": (_set("events", [pb.SamplerEvent(kind=pb.EVENT_KIND_UNSPECIFIED)]), "event kind"),
    "metric twice": (
        _set(
            "gpus.0.metric_status",
            [pb.MetricStatus(metric=pb.METRIC_UTILIZATION, state=pb.METRIC_STATE_SUPPORTED)],
        ),
        "twice",
    ),
    "empty model": (_set("gpus.0.model", ""), "model"),
    "window too short": (_set("window_end_ns", NODE.t0_ns + 99_999_999), "minimum"),
    "window start": (_set("window_start_ns", 0), "window_start_ns must be positive"),
    "sample interval too long": (_set("sample_interval_ms", 60_001), "sample_interval_ms"),
    "nonce too long": (_set("verifier_nonce", b"n" * 65), "verifier_nonce"),
    "samples expected over window": (_set("gpus.0.samples_expected", 1_000), "samples_expected"),
    "sm active over window": (_set("gpus.0.sm_active_ms", 10_000_000), "sm_active_ms"),
    "duplicate gpu index": (_set("gpus.1.index", 0), "index 0 appears twice"),
    "gap end before start": (
        _set(
            "events",
            [pb.SamplerEvent(kind=pb.EVENT_KIND_DRIVER_RELOAD, gap_start_ns=2, gap_end_ns=1)],
        ),
        "gap_end_ns",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_invalid_bodies_are_rejected_naming_the_field(case: str) -> None:
    mutate, message = BAD_BODIES[case]
    body = NODE.body(0)
    mutate(body)
    raw = NODE.sign_body(body)
    with pytest.raises(BodyError, match=message):
        attestation.verify_attestation(raw, ring())


def test_metric_supported() -> None:
    gpu = NODE.body(0).gpus[0]
    assert attestation.metric_supported(gpu, pb.METRIC_UTILIZATION)
    assert not attestation.metric_supported(gpu, pb.METRIC_GPM_TENSOR_ACTIVE)


def test_window_compute_uses_only_usable_measurements() -> None:
    gpu = NODE.body(0).gpus[0]
    figures = attestation.window_compute(gpu)
    # H100 SXM: fastest dense precision fp8 at 1,979 TFLOP/s x 30 s busy.
    assert figures.upper_bound_flop == 1_979_000_000_000_000 * 30
    assert figures.central_estimate_method == "assumed_utilization"
    assert figures.energy_method == "flop_per_joule_at_peak"
    gpu.energy_counter_state = pb.ENERGY_COUNTER_STATE_RESET
    gpu.tensor_active_ms = 12_000
    gpu.metric_status.add(metric=pb.METRIC_GPM_TENSOR_ACTIVE, state=pb.METRIC_STATE_SUPPORTED)
    figures = attestation.window_compute(gpu)
    assert figures.energy_method == "unavailable"
    assert figures.energy_flop == 0
    assert figures.central_estimate_method == "tensor_active"
    # 12 s of tensor activity at the bf16 peak of 989.5 TFLOP/s.
    assert figures.central_estimate_flop == 989_500_000_000_000 * 12


def test_bounds_to_proto_maps_every_method() -> None:
    gpu = NODE.body(0).gpus[0]
    gpu.model = "Some Future Accelerator"
    proto = attestation.bounds_to_proto(attestation.window_compute(gpu))
    assert proto.upper_bound_method == pb.UPPER_BOUND_METHOD_UNKNOWN_MODEL_TABLE_MAX
    assert proto.central_estimate_method == pb.CENTRAL_ESTIMATE_METHOD_ASSUMED_UTILIZATION
    assert proto.assumed_utilization_ppm == 400_000
    assert proto.energy_method == pb.ENERGY_METHOD_FLOP_PER_JOULE_AT_PEAK
    assert proto.table_model_key == ""
