"""Signed envelopes: sign exact payload bytes, verify before parsing, one error per failure.

    raw = sign_envelope(signer, PayloadType.ATTESTATION, body_bytes)   # bytes to spool and send
    verified = verify_envelope(raw, keyring, payload_type=PayloadType.ATTESTATION)
    body = AttestationBody.FromString(verified.payload)                # only after verification

The signature is Ed25519 over ``PAE(payload_type, payload)``::

    PAE(t, p) = b"PWSIGv1" SP LEN(t) SP t SP LEN(p) SP p

where SP is one space (0x20) and LEN is the byte length in ASCII decimal with no leading zeros
(DSSE's pre-authentication encoding, with our own prefix so that a signature made for another
DSSE-style system can never be replayed as ours).

The envelope's bytes are the canonical protobuf encoding of ``pausewatch.v1.Envelope``: fields 1
to 4 in order, each exactly once, lengths as minimal varints, nothing else. :func:`parse_envelope`
accepts exactly that and nothing else, so the digest of an envelope (SHA-256 of its bytes) cannot
be changed by anyone without changing what was signed. See docs/wire-format.md.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from attest.errors import (
    EnvelopeError,
    EnvelopeTooLargeError,
    PayloadTypeError,
    SignatureError,
    UnknownKeyError,
)
from attest.ids import Digest, KeyId
from attest.keys import SIGNATURE_SIZE, Signer, key_id

PAE_PREFIX = b"PWSIGv1"
KEY_ID_SIZE = 32
MAX_PAYLOAD_TYPE_BYTES = 128
DEFAULT_MAX_ENVELOPE_BYTES = 256 * 1024
"""Default size limit for an envelope (an attestation for 8 GPUs is about 2 KiB)."""

_PRINTABLE = re.compile(rb"[\x21-\x7e]+")
_TAG_PAYLOAD_TYPE = 0x0A  # field 1, wire type 2 (length-delimited)
_TAG_PAYLOAD = 0x12  # field 2, wire type 2
_TAG_KEY_ID = 0x1A  # field 3, wire type 2
_TAG_SIGNATURE = 0x22  # field 4, wire type 2


class PayloadType(StrEnum):
    """Every payload type pausewatch signs. The value is covered by the signature."""

    ATTESTATION = "application/vnd.pausewatch.attestation.v1+protobuf"
    ENROLLMENT = "application/vnd.pausewatch.enrollment.v1+protobuf"
    ENROLLMENT_AUTHORIZATION = "application/vnd.pausewatch.enrollment-authorization.v1+protobuf"
    INVENTORY = "application/vnd.pausewatch.inventory.v1+protobuf"
    REVOCATION = "application/vnd.pausewatch.revocation.v1+protobuf"
    FINDING = "application/vnd.pausewatch.finding.v1+protobuf"
    LAB = "application/vnd.pausewatch.lab.v1+protobuf"
    POLICY = "application/vnd.pausewatch.policy.v1+protobuf"
    POLICY_ACCEPTANCE = "application/vnd.pausewatch.policy-acceptance.v1+protobuf"
    BUNDLE = "application/vnd.pausewatch.bundle.v1+protobuf"
    METER_READING = "application/vnd.pausewatch.meter-reading.v1+protobuf"
    SITE = "application/vnd.pausewatch.site.v1+protobuf"


def pae(payload_type: bytes, payload: bytes) -> bytes:
    """The exact bytes that are signed for ``(payload_type, payload)``."""
    return b"%s %d %s %d %s" % (PAE_PREFIX, len(payload_type), payload_type, len(payload), payload)


def envelope_digest(raw: bytes) -> Digest:
    """SHA-256 of an envelope's bytes: what ``prev_digest`` and the chain refer to."""
    return Digest(hashlib.sha256(raw).digest())


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed, not yet verified, envelope. ``raw`` is the bytes it was parsed from."""

    payload_type: str
    payload: bytes
    key_id: KeyId
    signature: bytes
    raw: bytes = field(repr=False)
    digest: Digest


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_envelope(payload_type: str, payload: bytes, key_id_: bytes, signature: bytes) -> bytes:
    """The canonical encoding of an envelope. Fields must be non-empty (proto3 omits empty ones)."""
    type_bytes = payload_type.encode("utf-8")
    _check_fields(type_bytes, payload, key_id_, signature)
    return b"".join(
        (
            bytes((_TAG_PAYLOAD_TYPE,)),
            _varint(len(type_bytes)),
            type_bytes,
            bytes((_TAG_PAYLOAD,)),
            _varint(len(payload)),
            payload,
            bytes((_TAG_KEY_ID,)),
            _varint(len(key_id_)),
            key_id_,
            bytes((_TAG_SIGNATURE,)),
            _varint(len(signature)),
            signature,
        )
    )


def _check_fields(type_bytes: bytes, payload: bytes, key_id_: bytes, signature: bytes) -> None:
    if not type_bytes:
        raise EnvelopeError("envelope payload_type is empty")
    if len(type_bytes) > MAX_PAYLOAD_TYPE_BYTES:
        raise EnvelopeError(f"envelope payload_type is longer than {MAX_PAYLOAD_TYPE_BYTES} bytes")
    if _PRINTABLE.fullmatch(type_bytes) is None:
        raise EnvelopeError("envelope payload_type is not printable ASCII")
    if not payload:
        raise EnvelopeError("envelope payload is empty")
    if len(key_id_) != KEY_ID_SIZE:
        raise EnvelopeError(f"envelope key_id is {len(key_id_)} bytes, expected {KEY_ID_SIZE}")
    if len(signature) != SIGNATURE_SIZE:
        raise EnvelopeError(
            f"envelope signature is {len(signature)} bytes, expected {SIGNATURE_SIZE}"
        )


def _read_field(raw: bytes, pos: int, tag: int, name: str) -> tuple[bytes, int]:
    """Read one length-delimited field with the given tag at ``pos``; strict and minimal."""
    end = len(raw)
    if pos + 1 >= end:
        raise EnvelopeError(f"envelope is truncated before field {name}")
    if raw[pos] != tag:
        raise EnvelopeError(
            f"envelope is not canonical: expected field {name} (tag 0x{tag:02x}) at byte {pos}, "
            f"found 0x{raw[pos]:02x}"
        )
    length = raw[pos + 1]
    pos += 2
    if length >= 0x80:  # a multi-byte varint: decode the rest of it
        length &= 0x7F
        shift = 7
        while True:
            if pos >= end:
                raise EnvelopeError(f"envelope is truncated inside the length of field {name}")
            byte = raw[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                if byte == 0:
                    raise EnvelopeError(f"envelope length of field {name} is not a minimal varint")
                break
            shift += 7
            if shift > 28:  # lengths beyond 2**35 are nonsense for an envelope
                raise EnvelopeError(f"envelope length of field {name} is too long")
    if length > end - pos:
        raise EnvelopeError(f"envelope is truncated inside field {name}")
    return raw[pos : pos + length], pos + length


def parse_envelope(raw: bytes, *, max_size: int = DEFAULT_MAX_ENVELOPE_BYTES) -> Envelope:
    """Parse untrusted bytes as a canonical envelope. Checks structure only, not the signature.

    Raises :class:`EnvelopeTooLargeError` over ``max_size`` and :class:`EnvelopeError` for any
    other deviation from the canonical encoding.
    """
    if not isinstance(raw, bytes):
        raise EnvelopeError(f"envelope must be bytes, got {type(raw).__name__}")
    if len(raw) > max_size:
        raise EnvelopeTooLargeError(f"envelope is {len(raw)} bytes; the limit is {max_size}")
    type_bytes, pos = _read_field(raw, 0, _TAG_PAYLOAD_TYPE, "payload_type")
    payload, pos = _read_field(raw, pos, _TAG_PAYLOAD, "payload")
    kid, pos = _read_field(raw, pos, _TAG_KEY_ID, "key_id")
    signature, pos = _read_field(raw, pos, _TAG_SIGNATURE, "signature")
    if pos != len(raw):
        raise EnvelopeError(f"envelope has {len(raw) - pos} unexpected bytes after the signature")
    _check_fields(type_bytes, payload, kid, signature)
    return Envelope(
        payload_type=type_bytes.decode("ascii"),
        payload=payload,
        key_id=KeyId(kid),
        signature=signature,
        raw=raw,
        digest=envelope_digest(raw),
    )


def sign_envelope(signer: Signer, payload_type: str, payload: bytes) -> bytes:
    """Sign ``payload`` as ``payload_type`` and return the canonical envelope bytes."""
    type_bytes = payload_type.encode("utf-8")
    signature = signer.sign(pae(type_bytes, payload))
    return encode_envelope(payload_type, payload, signer.key_id, signature)


class Keyring(Protocol):
    """Where verification looks up public keys by key id."""

    def lookup(self, key_id: KeyId) -> Ed25519PublicKey | None:
        """The trusted public key with this id, or None."""
        ...


class StaticKeyring:
    """A fixed set of trusted keys, e.g. for offline verification of a bundle."""

    def __init__(self, keys: Mapping[KeyId, Ed25519PublicKey] | None = None) -> None:
        self._keys: dict[KeyId, Ed25519PublicKey] = dict(keys or {})

    def add(self, public_key: Ed25519PublicKey) -> KeyId:
        kid = key_id(public_key)
        self._keys[kid] = public_key
        return kid

    def lookup(self, key_id: KeyId) -> Ed25519PublicKey | None:
        return self._keys.get(key_id)

    def __len__(self) -> int:
        return len(self._keys)


_VERIFIED = object()


@dataclass(frozen=True, slots=True)
class VerifiedEnvelope:
    """An envelope whose signature verified under a trusted key. Only :func:`verify_envelope`
    (and :func:`verify_parsed_envelope`) make these."""

    envelope: Envelope
    public_key: Ed25519PublicKey = field(repr=False)
    _token: object = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _VERIFIED:
            raise TypeError("VerifiedEnvelope is made only by verify_envelope()")

    @property
    def payload(self) -> bytes:
        return self.envelope.payload

    @property
    def payload_type(self) -> str:
        return self.envelope.payload_type

    @property
    def key_id(self) -> KeyId:
        return self.envelope.key_id

    @property
    def digest(self) -> Digest:
        return self.envelope.digest

    @property
    def raw(self) -> bytes:
        return self.envelope.raw


def verify_parsed_envelope(
    envelope: Envelope,
    keyring: Keyring,
    *,
    payload_type: str | None = None,
) -> VerifiedEnvelope:
    """Steps 3 to 5 of :func:`verify_envelope`, for a caller that already parsed the bytes."""
    # Step 3: the payload type is the one expected.
    if payload_type is not None and envelope.payload_type != payload_type:
        raise PayloadTypeError(
            f"payload type is {envelope.payload_type!r}, expected {payload_type!r}"
        )
    # Step 4: the key is trusted.
    public_key = keyring.lookup(envelope.key_id)
    if public_key is None:
        raise UnknownKeyError(f"key {envelope.key_id.hex()} is not trusted here")
    # Step 5: the signature verifies over PAE of the received payload bytes.
    message = b"%s %d %s %d %s" % (
        PAE_PREFIX,
        len(envelope.payload_type),
        envelope.payload_type.encode("ascii"),
        len(envelope.payload),
        envelope.payload,
    )
    try:
        public_key.verify(envelope.signature, message)
    except InvalidSignature:
        raise SignatureError(
            f"signature by key {envelope.key_id.hex()[:16]}... does not verify"
        ) from None
    return VerifiedEnvelope(envelope=envelope, public_key=public_key, _token=_VERIFIED)


def verify_envelope(
    raw: bytes,
    keyring: Keyring,
    *,
    payload_type: str | None = None,
    max_size: int = DEFAULT_MAX_ENVELOPE_BYTES,
) -> VerifiedEnvelope:
    """Verify untrusted envelope bytes; the payload may be parsed only after this returns.

    1. size limit (:class:`EnvelopeTooLargeError`)
    2. canonical envelope structure (:class:`EnvelopeError`)
    3. payload type, if one is expected (:class:`PayloadTypeError`)
    4. the key id names a trusted key (:class:`UnknownKeyError`)
    5. the Ed25519 signature over PAE(payload_type, payload) (:class:`SignatureError`)
    """
    envelope = parse_envelope(raw, max_size=max_size)
    return verify_parsed_envelope(envelope, keyring, payload_type=payload_type)
