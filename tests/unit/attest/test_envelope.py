from __future__ import annotations

import pytest
from pausewatch.v1 import envelope_pb2

from attest import envelope as env
from attest.errors import (
    EnvelopeError,
    EnvelopeTooLargeError,
    PayloadTypeError,
    SignatureError,
    UnknownKeyError,
    VerificationError,
)
from attest.keys import Ed25519Signer
from tests.builders import fixed_private_key

SIGNER = Ed25519Signer.from_private_key(fixed_private_key(1))
OTHER = Ed25519Signer.from_private_key(fixed_private_key(2))


def keyring(*signers: Ed25519Signer) -> env.StaticKeyring:
    ring = env.StaticKeyring()
    for signer in signers:
        ring.add(signer.public_key)
    return ring


def test_pae_matches_the_documented_layout() -> None:
    assert env.pae(b"t/x", b"hello") == b"PWSIGv1 3 t/x 5 hello"
    assert env.pae(b"t", b"") == b"PWSIGv1 1 t 0 "


def test_sign_then_verify_round_trip() -> None:
    raw = env.sign_envelope(SIGNER, env.PayloadType.ATTESTATION, b"payload-bytes")
    verified = env.verify_envelope(raw, keyring(SIGNER), payload_type=env.PayloadType.ATTESTATION)
    assert verified.payload == b"payload-bytes"
    assert verified.key_id == SIGNER.key_id
    assert verified.raw == raw
    assert verified.digest == env.envelope_digest(raw)


def test_our_encoding_is_protobufs_canonical_encoding() -> None:
    raw = env.sign_envelope(SIGNER, env.PayloadType.FINDING, b"\x00" * 300)
    message = envelope_pb2.Envelope.FromString(raw)
    assert message.payload_type == env.PayloadType.FINDING
    assert message.key_id == SIGNER.key_id
    assert message.SerializeToString(deterministic=True) == raw


def test_verified_envelope_cannot_be_built_outside_verification() -> None:
    parsed = env.parse_envelope(env.sign_envelope(SIGNER, "a/b", b"x"))
    with pytest.raises(TypeError):
        env.VerifiedEnvelope(envelope=parsed, public_key=SIGNER.public_key, _token=object())


def test_each_failure_kind_has_its_own_error() -> None:
    raw = env.sign_envelope(SIGNER, env.PayloadType.ATTESTATION, b"p")
    with pytest.raises(EnvelopeTooLargeError):
        env.verify_envelope(raw, keyring(SIGNER), max_size=len(raw) - 1)
    with pytest.raises(PayloadTypeError):
        env.verify_envelope(raw, keyring(SIGNER), payload_type=env.PayloadType.FINDING)
    with pytest.raises(UnknownKeyError):
        env.verify_envelope(raw, keyring(OTHER))
    forged = env.encode_envelope(
        env.PayloadType.ATTESTATION, b"q", SIGNER.key_id, env.parse_envelope(raw).signature
    )
    with pytest.raises(SignatureError):
        env.verify_envelope(forged, keyring(SIGNER))
    with pytest.raises(EnvelopeError):
        env.verify_envelope(raw[:-1], keyring(SIGNER))


def test_signature_over_another_payload_type_does_not_verify() -> None:
    """The payload type is signed: re-labelling a payload breaks the signature."""
    raw = env.sign_envelope(SIGNER, env.PayloadType.FINDING, b"p")
    parsed = env.parse_envelope(raw)
    relabelled = env.encode_envelope(
        env.PayloadType.ATTESTATION, parsed.payload, parsed.key_id, parsed.signature
    )
    with pytest.raises(SignatureError):
        env.verify_envelope(relabelled, keyring(SIGNER))


def test_tamper_every_byte() -> None:
    """Flipping any bit pattern in any byte of a signed envelope makes verification fail."""
    raw = env.sign_envelope(SIGNER, env.PayloadType.ATTESTATION, bytes(range(200)))
    ring = keyring(SIGNER)
    env.verify_envelope(raw, ring)
    for position in range(len(raw)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = bytearray(raw)
            tampered[position] ^= mask
            with pytest.raises(VerificationError):
                env.verify_envelope(bytes(tampered), ring)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("empty", b""),
        ("not bytes-ish garbage", b"\xff" * 40),
        ("unknown trailing field", None),
        ("fields out of order", None),
        ("duplicate field", None),
        ("non-minimal varint", None),
        ("empty payload", None),
        ("short key id", None),
        ("long signature", None),
        ("non-printable payload type", None),
    ],
)
def test_non_canonical_encodings_are_rejected(name: str, raw: bytes | None) -> None:
    good = env.sign_envelope(SIGNER, "a/b", b"payload")
    p = env.parse_envelope(good)

    def field(tag: int, value: bytes, length: bytes | None = None) -> bytes:
        return bytes([tag]) + (length if length is not None else bytes([len(value)])) + value

    t, pl, k, s = (
        field(0x0A, b"a/b"),
        field(0x12, p.payload),
        field(0x1A, p.key_id),
        field(0x22, p.signature),
    )
    cases = {
        "unknown trailing field": good + field(0x2A, b"x"),
        "fields out of order": pl + t + k + s,
        "duplicate field": t + t + pl + k + s,
        "non-minimal varint": field(0x0A, b"a/b", b"\x83\x00") + pl + k + s,
        "empty payload": t + field(0x12, b"") + k + s,
        "short key id": t + pl + field(0x1A, p.key_id[:31]) + s,
        "long signature": t + pl + k + field(0x22, p.signature + b"\x00"),
        "non-printable payload type": field(0x0A, b"a b") + pl + k + s,
    }
    data = raw if raw is not None else cases[name]
    with pytest.raises(EnvelopeError):
        env.parse_envelope(data)


def test_encode_refuses_fields_a_verifier_would_reject() -> None:
    with pytest.raises(EnvelopeError):
        env.encode_envelope("", b"p", SIGNER.key_id, b"\x00" * 64)
    with pytest.raises(EnvelopeError):
        env.encode_envelope("a/b", b"p", b"short", b"\x00" * 64)


def test_large_payload_uses_multibyte_varints() -> None:
    payload = b"z" * 70_000
    raw = env.sign_envelope(SIGNER, "a/b", payload)
    assert env.verify_envelope(raw, keyring(SIGNER)).payload == payload
    assert envelope_pb2.Envelope.FromString(raw).payload == payload
