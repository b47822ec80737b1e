"""A lab's acceptance of its policy: the lab operator signs the policy file's SHA-256, and the
verifier logs that signature beside the policy, so a report shows that the lab agreed to the
thresholds it is held to (or that it has not).

    raw = sign_acceptance(operator_signer, policy, accepted_at_ns=time.time_ns())   # the lab
    acceptance = verify_acceptance(raw, operator_public_key_raw, policy)            # the verifier

The lab signs with ``pausewatch policy accept``; the verifier reads the file named by the lab's
``policy_acceptance`` setting at start and refuses to start on one that does not verify under the
lab's operator key or is for other policy bytes.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError
from pausewatch.v1 import policy_pb2

from attest.envelope import (
    PayloadType,
    StaticKeyring,
    parse_envelope,
    sign_envelope,
    verify_parsed_envelope,
)
from attest.errors import ConfigError, PausewatchError
from attest.keys import Ed25519Signer, key_id_from_raw, public_key_from_raw
from verifier.accounting.policy import Policy


def sign_acceptance(signer: Ed25519Signer, policy: Policy, *, accepted_at_ns: int) -> bytes:
    """The operator's signed acceptance of ``policy`` (an envelope)."""
    body = policy_pb2.PolicyAcceptance(
        format_version=1,
        lab_id=policy.lab_id,
        policy_id=policy.policy_id,
        policy_version=policy.version,
        policy_sha256=policy.digest,
        accepted_at_ns=accepted_at_ns,
    )
    return sign_envelope(
        signer, PayloadType.POLICY_ACCEPTANCE, body.SerializeToString(deterministic=True)
    )


def parse_acceptance(payload: bytes) -> policy_pb2.PolicyAcceptance:
    body = policy_pb2.PolicyAcceptance()
    body.ParseFromString(payload)
    return body


def verify_acceptance(
    raw: bytes, operator_public_key: bytes, policy: Policy, *, source: str = "acceptance"
) -> policy_pb2.PolicyAcceptance:
    """The acceptance in ``raw``, checked: signed by the operator key, for this lab and exactly
    these policy bytes. Raises :class:`ConfigError` naming what does not match."""
    try:
        envelope = parse_envelope(raw)
    except PausewatchError as exc:
        raise ConfigError(f"{source}: {exc.diagnostics()}") from None
    operator_key_id = key_id_from_raw(operator_public_key)
    if envelope.key_id != operator_key_id:
        raise ConfigError(
            f"{source}: signed by key {envelope.key_id.hex()[:16]}, not the lab's operator "
            f"key {operator_key_id.hex()[:16]}"
        )
    ring = StaticKeyring()
    ring.add(public_key_from_raw(operator_public_key))
    try:
        verified = verify_parsed_envelope(
            envelope, ring, payload_type=PayloadType.POLICY_ACCEPTANCE
        )
        body = parse_acceptance(verified.payload)
    except PausewatchError as exc:
        raise ConfigError(f"{source}: {exc.diagnostics()}") from None
    except DecodeError:
        raise ConfigError(f"{source}: not a PolicyAcceptance") from None
    if body.lab_id != policy.lab_id:
        raise ConfigError(
            f"{source}: accepts a policy of lab {body.lab_id!r}, not {policy.lab_id!r}"
        )
    if bytes(body.policy_sha256) != policy.digest:
        raise ConfigError(
            f"{source}: accepts the policy file with sha256 {bytes(body.policy_sha256).hex()}, "
            f"but {policy.source} has sha256 {policy.digest.hex()}: the lab must accept this file"
        )
    if body.policy_version != policy.version or body.policy_id != policy.policy_id:
        raise ConfigError(f"{source}: accepts another policy id or version than {policy.source}")
    return body
