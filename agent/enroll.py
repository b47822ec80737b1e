"""Enrolment: the node proves possession of its key, the lab operator authorises it, the verifier
records it.

    payload = build_enrollment(lab_id="lab-a", node_public_key=raw, gpus=inventory, ...)
    request = sign_enrollment_request(node_signer, payload)        # PayloadType.ENROLLMENT
    authorization = authorize_enrollment(operator_signer, request)  # same payload bytes,
                                                                    # ENROLLMENT_AUTHORIZATION
    response = submit_enrollment(channel, request, authorization, timeout_s=10)

The payload is a ``NodeEnrollment`` (lab, node public key, GPU inventory from the sampler, node
name, agent version, creation time, and a nonce from ``GetChallenge`` binding it to this
verifier), serialized once; both signatures are over those exact bytes. Two steps are possible:
``enroll --prepare`` writes the node-signed request; the operator checks and signs it elsewhere
(``operator authorize``); ``enroll --authorization`` sends both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from pausewatch.v1 import attestation_service_pb2 as api
from pausewatch.v1 import attestation_service_pb2_grpc as api_grpc
from pausewatch.v1 import registry_pb2 as reg
from pausewatch.v1 import registry_pb2_grpc as reg_grpc

from agent.sampler.base import GpuIdentity
from agent.spool import Nonce
from attest.envelope import (
    PayloadType,
    StaticKeyring,
    parse_envelope,
    sign_envelope,
    verify_envelope,
)
from attest.errors import BodyError, SignatureError, UnknownKeyError, VerificationError
from attest.ids import NodeId
from attest.keys import Signer, key_id_from_raw, public_key_from_raw

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class EnrollmentRequest:
    """A node-signed enrolment request whose proof of possession verified."""

    envelope: bytes
    enrollment: reg.NodeEnrollment
    node_id: NodeId


def gpu_identity_to_proto(gpu: GpuIdentity) -> reg.GpuIdentity:
    return reg.GpuIdentity(
        uuid=gpu.uuid,
        serial=gpu.serial,
        model=gpu.model,
        pci_bus_id=gpu.pci_bus_id,
        board_part_number=gpu.board_part_number,
    )


def build_enrollment(
    *,
    lab_id: str,
    node_public_key: bytes,
    gpus: tuple[GpuIdentity, ...],
    node_name: str,
    agent_version: str,
    created_at_ns: int,
    verifier_nonce: bytes,
    tpm: reg.TpmEnrollment | None = None,
) -> bytes:
    """The NodeEnrollment payload bytes (deterministic serialization)."""
    message = reg.NodeEnrollment(
        format_version=FORMAT_VERSION,
        lab_id=lab_id,
        node_public_key=node_public_key,
        gpus=[gpu_identity_to_proto(g) for g in gpus],
        node_name=node_name,
        agent_version=agent_version,
        created_at_ns=created_at_ns,
        verifier_nonce=verifier_nonce,
    )
    if tpm is not None:
        message.tpm.CopyFrom(tpm)
    return message.SerializeToString(deterministic=True)


def sign_enrollment_request(node_signer: Signer, payload: bytes) -> bytes:
    """The node's proof of possession: the payload signed by the node key."""
    return sign_envelope(node_signer, PayloadType.ENROLLMENT, payload)


def verify_enrollment_request(raw: bytes) -> EnrollmentRequest:
    """Check a node-signed request: a NodeEnrollment signed by the key it names."""
    envelope = parse_envelope(raw)
    if envelope.payload_type != PayloadType.ENROLLMENT:
        raise BodyError(f"not an enrolment request (payload type {envelope.payload_type!r})")
    enrollment = reg.NodeEnrollment()
    try:
        enrollment.ParseFromString(envelope.payload)
        public_key = public_key_from_raw(enrollment.node_public_key)
    except (DecodeError, ValueError) as exc:
        raise BodyError(f"the enrolment payload is not valid: {type(exc).__name__}") from None
    ring = StaticKeyring()
    ring.add(public_key)
    try:
        verify_envelope(raw, ring, payload_type=PayloadType.ENROLLMENT)
    except (UnknownKeyError, SignatureError) as exc:
        raise type(exc)(
            "the request's proof of possession does not verify: it must be signed by the node "
            f"key it enrols ({exc})"
        ) from None
    return EnrollmentRequest(
        envelope=raw,
        enrollment=enrollment,
        node_id=NodeId(key_id_from_raw(enrollment.node_public_key)),
    )


def authorize_enrollment(operator_signer: Signer, request: bytes) -> bytes:
    """The lab operator's authorisation: the very same payload bytes, signed by the operator.

    Refuses a request whose proof of possession does not verify."""
    verified = verify_enrollment_request(request)
    payload = parse_envelope(verified.envelope).payload
    return sign_envelope(operator_signer, PayloadType.ENROLLMENT_AUTHORIZATION, payload)


def check_authorization(request: bytes, authorization: bytes) -> None:
    """The authorisation must sign the request's payload bytes as an authorisation."""
    auth = parse_envelope(authorization)
    if auth.payload_type != PayloadType.ENROLLMENT_AUTHORIZATION:
        raise BodyError(f"not an enrolment authorisation (payload type {auth.payload_type!r})")
    if auth.payload != parse_envelope(request).payload:
        raise VerificationError("the authorisation signs a different enrolment payload")


def get_challenge(channel: grpc.Channel, node_id: NodeId, *, timeout_s: float) -> bytes:
    """A fresh nonce from the verifier, for the enrolment payload."""
    stub = api_grpc.AttestationServiceStub(channel)
    response = stub.GetChallenge(api.GetChallengeRequest(node_id=node_id), timeout=timeout_s)
    return bytes(response.nonce)


def first_nonce(
    channel: grpc.Channel, node_id: NodeId, request: bytes, *, timeout_s: float, now_ns: int
) -> Nonce:
    """The nonce a newly enrolled node keeps until its agent's first challenge: a fresh one from
    the verifier, else (the verifier stopped answering just after enrolling us) the one the
    enrolment carried. Windows signed before the agent first reaches the verifier carry it, so
    none is signed without a nonce (docs/wire-format.md, "Before the first challenge"); the
    verifier grades them late where they are, never rejects them for it."""
    try:
        stub = api_grpc.AttestationServiceStub(channel)
        response = stub.GetChallenge(api.GetChallengeRequest(node_id=node_id), timeout=timeout_s)
        return Nonce(
            nonce=bytes(response.nonce),
            issued_at_ns=response.issued_at_ns,
            expires_at_ns=response.expires_at_ns,
            received_at_ns=now_ns,
        )
    except grpc.RpcError as exc:
        log.warning(
            "no challenge after enrolling (%s): keeping the enrolment's nonce",
            exc.code().name if hasattr(exc, "code") else "error",
        )
    enrollment = reg.NodeEnrollment.FromString(parse_envelope(request).payload)
    return Nonce(
        nonce=bytes(enrollment.verifier_nonce),
        issued_at_ns=enrollment.created_at_ns,
        expires_at_ns=enrollment.created_at_ns,
        received_at_ns=now_ns,
    )


def submit_enrollment(
    channel: grpc.Channel, request: bytes, authorization: bytes, *, timeout_s: float
) -> reg.EnrollNodeResponse:
    """Call ``RegistryService.EnrollNode`` (idempotent for the same request)."""
    check_authorization(request, authorization)
    stub = reg_grpc.RegistryServiceStub(channel)
    response = stub.EnrollNode(
        reg.EnrollNodeRequest(enrollment_envelope=request, authorization_envelope=authorization),
        timeout=timeout_s,
    )
    log.info(
        "node enrolled node_id=%s log_index=%d already_enrolled=%s",
        response.node_id.hex()[:16],
        response.log_index,
        response.already_enrolled,
    )
    return response
