"""TPM 2.0 structures in pure Python: quotes, attestation keys, credentials, PCRs, the IMA log.

The verifier has no TPM, so everything it does with one is here, over bytes the agent sends::

    ak = load_tpm_public(ak_public)                      # TPMT_PUBLIC of the attestation key
    credential = make_credential(ek_key, ak.name, secret)  # opens only in the EK's TPM, by the AK
    quote = verify_quote(ak, attest_raw, signature_raw)  # TPMS_ATTEST, checked against the AK
    verify_pcr_digest(quote, pcr_values)                 # the claimed PCR values are those quoted
    pcr10 = replay_ima_log(entries, start=pcr10_before)  # the IMA log ends at the quoted PCR 10

Sources: TCG "TPM 2.0 Library" Part 1 (Architecture) §11.4.9-§11.4.10 (KDFa, KDFe), §24
(Protected Storage: the outer wrapper) and §24.5-§24.6 / Part 3 §12.6 (MakeCredential /
ActivateCredential); Part 2 (Structures) for TPMT_PUBLIC, TPMS_ATTEST and TPMT_SIGNATURE; the
Linux kernel's IMA "ima-ng" template for the measurement list.

Only what pausewatch uses is parsed: RSA and ECC (NIST P-256/P-384) keys with SHA-256/384/512
name algorithms; RSASSA, RSAPSS and ECDSA signatures; quotes (TPM_ST_ATTEST_QUOTE). Everything
else is refused with a :class:`~attest.errors.TpmError` that says what it met. Nothing here talks
to a TPM (that is agent/tpm.py) and nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from attest.errors import TpmError

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
IMA_PCR = 10
MAX_TPM_STRUCTURE_SIZE = 4096


class TpmAlg(IntEnum):
    """TPM_ALG_ID values used here (Part 2, Table 9)."""

    RSA = 0x0001
    SHA1 = 0x0004
    HMAC = 0x0005
    AES = 0x0006
    KEYEDHASH = 0x0008
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D
    NULL = 0x0010
    RSASSA = 0x0014
    RSAES = 0x0015
    RSAPSS = 0x0016
    OAEP = 0x0017
    ECDSA = 0x0018
    ECDH = 0x0019
    ECC = 0x0023
    SYMCIPHER = 0x0025
    CFB = 0x0043


_HASHES: dict[int, tuple[str, type[hashes.HashAlgorithm]]] = {
    TpmAlg.SHA1: ("sha1", hashes.SHA1),
    TpmAlg.SHA256: ("sha256", hashes.SHA256),
    TpmAlg.SHA384: ("sha384", hashes.SHA384),
    TpmAlg.SHA512: ("sha512", hashes.SHA512),
}
_CURVES: dict[int, ec.EllipticCurve] = {0x0003: ec.SECP256R1(), 0x0004: ec.SECP384R1()}


def _hash_name(alg: int) -> str:
    try:
        return _HASHES[alg][0]
    except KeyError:
        raise TpmError(f"unsupported hash algorithm 0x{alg:04x}") from None


def _crypto_hash(alg: int) -> hashes.HashAlgorithm:
    try:
        return _HASHES[alg][1]()
    except KeyError:
        raise TpmError(f"unsupported hash algorithm 0x{alg:04x}") from None


class _Reader:
    """Big-endian reader over a TPM structure that refuses to run past the end."""

    __slots__ = ("_pos", "_raw", "_what")

    def __init__(self, raw: bytes, what: str) -> None:
        if len(raw) > MAX_TPM_STRUCTURE_SIZE:
            raise TpmError(f"{what} is larger than {MAX_TPM_STRUCTURE_SIZE} bytes")
        self._raw = raw
        self._pos = 0
        self._what = what

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._raw):
            raise TpmError(f"{self._what} is truncated")
        out = self._raw[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def tpm2b(self) -> bytes:
        return self.take(self.u16())

    def end(self) -> None:
        if self._pos != len(self._raw):
            raise TpmError(f"{self._what} has {len(self._raw) - self._pos} trailing bytes")


def _tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


# --- keys -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TpmPublic:
    """A parsed TPMT_PUBLIC: the key, its name algorithm and its TPM name."""

    raw: bytes
    """The TPMT_PUBLIC bytes exactly as received (the name is a hash of these)."""
    name_alg: int
    object_attributes: int
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey

    @property
    def name(self) -> bytes:
        """The TPM name: nameAlg (2 bytes) || H_nameAlg(TPMT_PUBLIC)."""
        return (
            struct.pack(">H", self.name_alg)
            + hashlib.new(_hash_name(self.name_alg), self.raw).digest()
        )


# TPMA_OBJECT bits (Part 2, §8.3).
TPMA_FIXED_TPM = 1 << 1
TPMA_FIXED_PARENT = 1 << 4
TPMA_SENSITIVE_DATA_ORIGIN = 1 << 5
TPMA_RESTRICTED = 1 << 16
TPMA_SIGN_ENCRYPT = 1 << 18
AK_REQUIRED_ATTRIBUTES = (
    TPMA_FIXED_TPM
    | TPMA_FIXED_PARENT
    | TPMA_SENSITIVE_DATA_ORIGIN
    | TPMA_RESTRICTED
    | TPMA_SIGN_ENCRYPT
)


def load_tpm_public(raw: bytes) -> TpmPublic:
    """Parse a TPMT_PUBLIC (RSA or ECC); raises TpmError on anything else."""
    r = _Reader(raw, "TPMT_PUBLIC")
    key_type = r.u16()
    name_alg = r.u16()
    _hash_name(name_alg)
    attributes = r.u32()
    r.tpm2b()  # authPolicy
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    if key_type == TpmAlg.RSA:
        _skip_sym_def(r)
        _skip_scheme(r)
        key_bits = r.u16()
        exponent = r.u32() or 65537
        modulus = r.tpm2b()
        if len(modulus) * 8 != key_bits:
            raise TpmError("TPMT_PUBLIC: the RSA modulus does not have keyBits bits")
        try:
            key = rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "big")).public_key()
        except ValueError:  # n or e out of range (a zero modulus, an exponent below 3)
            raise TpmError("TPMT_PUBLIC: the RSA modulus or exponent is not a valid key") from None
    elif key_type == TpmAlg.ECC:
        _skip_sym_def(r)
        _skip_scheme(r)
        curve_id = r.u16()
        kdf = r.u16()
        if kdf != TpmAlg.NULL:
            r.u16()
        x = r.tpm2b()
        y = r.tpm2b()
        curve = _CURVES.get(curve_id)
        if curve is None:
            raise TpmError(f"TPMT_PUBLIC: unsupported ECC curve 0x{curve_id:04x}")
        try:
            key = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
            ).public_key()
        except ValueError:
            raise TpmError("TPMT_PUBLIC: the ECC point is not on its curve") from None
    else:
        raise TpmError(f"TPMT_PUBLIC: unsupported key type 0x{key_type:04x}")
    r.end()
    return TpmPublic(raw=raw, name_alg=name_alg, object_attributes=attributes, key=key)


def _skip_sym_def(r: _Reader) -> None:
    alg = r.u16()
    if alg != TpmAlg.NULL:
        r.u16()  # keyBits
        r.u16()  # mode


def _skip_scheme(r: _Reader) -> None:
    scheme = r.u16()
    if scheme != TpmAlg.NULL:
        r.u16()  # hashAlg of the scheme


def verify_attestation_key(ak: TpmPublic) -> None:
    """Check that ``ak`` is a restricted signing key that cannot leave its TPM."""
    missing = AK_REQUIRED_ATTRIBUTES & ~ak.object_attributes
    if missing:
        raise TpmError(
            "the attestation key is not a restricted, fixedTPM signing key "
            f"(missing attribute bits 0x{missing:08x})"
        )


# --- quotes ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PcrSelection:
    """One bank's selected PCRs."""

    hash_alg: int
    pcrs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class QuoteInfo:
    """A TPMS_ATTEST of type quote, after its signature verified."""

    raw: bytes
    qualified_signer: bytes
    extra_data: bytes
    clock_ms: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    selections: tuple[PcrSelection, ...]
    pcr_digest: bytes


def load_quote(raw: bytes) -> QuoteInfo:
    """Parse a TPMS_ATTEST that must be a quote made by a TPM (magic TPM_GENERATED)."""
    r = _Reader(raw, "TPMS_ATTEST")
    if r.u32() != TPM_GENERATED_VALUE:
        raise TpmError("TPMS_ATTEST: not TPM-generated (bad magic)")
    if r.u16() != TPM_ST_ATTEST_QUOTE:
        raise TpmError("TPMS_ATTEST: not a quote")
    signer = r.tpm2b()
    extra = r.tpm2b()
    clock_ms = r.u64()
    reset_count = r.u32()
    restart_count = r.u32()
    safe = r.u8()
    firmware = r.u64()
    selections = []
    for _ in range(r.u32()):
        alg = r.u16()
        bitmap = r.take(r.u8())
        pcrs = tuple(
            byte_i * 8 + bit
            for byte_i, byte in enumerate(bitmap)
            for bit in range(8)
            if byte & (1 << bit)
        )
        selections.append(PcrSelection(alg, pcrs))
    digest = r.tpm2b()
    r.end()
    return QuoteInfo(
        raw=raw,
        qualified_signer=signer,
        extra_data=extra,
        clock_ms=clock_ms,
        reset_count=reset_count,
        restart_count=restart_count,
        safe=safe != 0,
        firmware_version=firmware,
        selections=tuple(selections),
        pcr_digest=digest,
    )


def verify_quote(ak: TpmPublic, attest_raw: bytes, signature_raw: bytes) -> QuoteInfo:
    """Verify a TPMT_SIGNATURE by ``ak`` over ``attest_raw``; return the parsed quote."""
    r = _Reader(signature_raw, "TPMT_SIGNATURE")
    scheme = r.u16()
    hash_alg = r.u16()
    digest_alg = _crypto_hash(hash_alg)
    try:
        if scheme in (TpmAlg.RSASSA, TpmAlg.RSAPSS):
            sig = r.tpm2b()
            r.end()
            if not isinstance(ak.key, rsa.RSAPublicKey):
                raise TpmError("an RSA signature from a key that is not RSA")
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if scheme == TpmAlg.RSASSA
                else padding.PSS(padding.MGF1(digest_alg), padding.PSS.AUTO)
            )
            ak.key.verify(sig, attest_raw, pad, digest_alg)
        elif scheme == TpmAlg.ECDSA:
            sig_r = int.from_bytes(r.tpm2b(), "big")
            sig_s = int.from_bytes(r.tpm2b(), "big")
            r.end()
            if not isinstance(ak.key, ec.EllipticCurvePublicKey):
                raise TpmError("an ECDSA signature from a key that is not ECC")
            ak.key.verify(encode_dss_signature(sig_r, sig_s), attest_raw, ec.ECDSA(digest_alg))
        else:
            raise TpmError(f"unsupported signature scheme 0x{scheme:04x}")
    except InvalidSignature:
        raise TpmError("the quote's signature does not verify under the attestation key") from None
    quote = load_quote(attest_raw)
    if quote.qualified_signer and quote.qualified_signer[:2] != ak.name[:2]:
        raise TpmError("the quote's signer uses another name algorithm than the attestation key")
    return quote


def pcr_digest(hash_alg: int, values: Sequence[bytes]) -> bytes:
    """The quote's pcrDigest: H(values concatenated in selection order)."""
    return hashlib.new(_hash_name(hash_alg), b"".join(values)).digest()


def verify_pcr_digest(quote: QuoteInfo, values: Sequence[bytes]) -> None:
    """Check that ``values`` (one per selected PCR, selection order) are what the TPM quoted."""
    if len(quote.selections) != 1:
        raise TpmError("the quote must select exactly one PCR bank")
    selection = quote.selections[0]
    if len(values) != len(selection.pcrs):
        raise TpmError(f"{len(values)} PCR values for {len(selection.pcrs)} quoted PCRs")
    size = hashlib.new(_hash_name(selection.hash_alg)).digest_size
    if any(len(v) != size for v in values):
        raise TpmError("a PCR value has the wrong size for its bank")
    expected = pcr_digest(selection.hash_alg, values)
    if not hmac.compare_digest(expected, quote.pcr_digest):
        raise TpmError("the PCR values do not hash to the quoted PCR digest")


# --- credential protection (MakeCredential) -------------------------------------------------


def kdfa(
    hash_alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes, *, bits: int
) -> bytes:
    """KDFa (Part 1, §11.4.10.2): SP 800-108 counter-mode HMAC KDF."""
    name = _hash_name(hash_alg)
    out = b""
    counter = 1
    label_z = label + b"\x00"
    while len(out) * 8 < bits:
        out += hmac.new(
            key,
            struct.pack(">I", counter) + label_z + context_u + context_v + struct.pack(">I", bits),
            name,
        ).digest()
        counter += 1
    out = out[: (bits + 7) // 8]
    if bits % 8:
        out = bytes([out[0] & ((1 << (bits % 8)) - 1)]) + out[1:]
    return out


def kdfe(
    hash_alg: int, z: bytes, label: bytes, party_u: bytes, party_v: bytes, *, bits: int
) -> bytes:
    """KDFe (Part 1, §11.4.10.3): SP 800-56A concatenation KDF over an ECDH secret."""
    name = _hash_name(hash_alg)
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        out += hashlib.new(
            name, struct.pack(">I", counter) + z + label + b"\x00" + party_u + party_v
        ).digest()
        counter += 1
    return out[: (bits + 7) // 8]


@dataclass(frozen=True, slots=True)
class Credential:
    """What MakeCredential produces: the TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET."""

    credential_blob: bytes
    encrypted_secret: bytes

    def tpm2_tools_file(self) -> bytes:
        """The file tpm2_activatecredential reads (-i): magic, version, blob, secret."""
        return struct.pack(">II", 0xBADCC0DE, 1) + self.credential_blob + self.encrypted_secret


def make_credential(
    ek_public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    object_name: bytes,
    secret: bytes,
    *,
    name_alg: int = TpmAlg.SHA256,
    sym_key_bits: int = 128,
    seed: bytes | None = None,
) -> Credential:
    """TPM2_MakeCredential in software, for an EK with the TCG default templates.

    The default EK templates (TCG EK Credential Profile, templates L-1 and L-2) use SHA-256 as
    name algorithm and AES-128-CFB as symmetric cipher; the RSA EK takes the seed by OAEP with
    label "IDENTITY", the ECC EK by ECDH (KDFe). Only the TPM holding the EK's private key, and
    holding an object of name ``object_name``, can recover ``secret`` (ActivateCredential).
    """
    hash_name = _hash_name(name_alg)
    digest_size = hashlib.new(hash_name).digest_size
    if not 0 < len(secret) <= digest_size:
        raise TpmError(f"the credential secret must be 1 to {digest_size} bytes")
    if isinstance(ek_public_key, rsa.RSAPublicKey):
        seed = os.urandom(digest_size) if seed is None else seed
        encrypted = ek_public_key.encrypt(
            seed,
            padding.OAEP(
                mgf=padding.MGF1(_crypto_hash(name_alg)),
                algorithm=_crypto_hash(name_alg),
                label=b"IDENTITY\x00",
            ),
        )
        encrypted_secret = _tpm2b(encrypted)
    else:
        ephemeral = ec.generate_private_key(ek_public_key.curve)
        z = ephemeral.exchange(ec.ECDH(), ek_public_key)
        point = ephemeral.public_key().public_numbers()
        size = (ek_public_key.curve.key_size + 7) // 8
        ephemeral_x = point.x.to_bytes(size, "big")
        ek_x = ek_public_key.public_numbers().x.to_bytes(size, "big")
        seed = kdfe(name_alg, z, b"IDENTITY", ephemeral_x, ek_x, bits=digest_size * 8)
        encrypted_secret = _tpm2b(_tpm2b(ephemeral_x) + _tpm2b(point.y.to_bytes(size, "big")))
    sym_key = kdfa(name_alg, seed, b"STORAGE", object_name, b"", bits=sym_key_bits)
    encryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(_tpm2b(secret)) + encryptor.finalize()
    hmac_key = kdfa(name_alg, seed, b"INTEGRITY", b"", b"", bits=digest_size * 8)
    outer_hmac = hmac.new(hmac_key, enc_identity + object_name, hash_name).digest()
    return Credential(
        credential_blob=_tpm2b(_tpm2b(outer_hmac) + enc_identity),
        encrypted_secret=encrypted_secret,
    )


# --- the IMA measurement list ---------------------------------------------------------------

_IMA_LINE = re.compile(
    r"(?P<pcr>\d+) (?P<template_hash>[0-9a-f]{40}|[0-9a-f]{64}) ima-ng "
    r"(?P<alg>sha1|sha256|sha384|sha512):(?P<digest>[0-9a-f]+) (?P<path>\S.*)"
)
MAX_IMA_PATH_BYTES = 4096


@dataclass(frozen=True, slots=True)
class ImaEntry:
    """One line of the kernel's ascii_runtime_measurements (template ima-ng)."""

    pcr: int
    template_hash: bytes
    file_hash_alg: str
    file_digest: bytes
    path: str

    @property
    def is_violation(self) -> bool:
        """The kernel writes an all-zero template hash for a measurement violation."""
        return not any(self.template_hash)

    def template_data(self) -> bytes:
        """The ima-ng template data: d-ng and n-ng fields, each length-prefixed (little-endian)."""
        d_ng = self.file_hash_alg.encode() + b":\x00" + self.file_digest
        n_ng = self.path.encode() + b"\x00"
        return struct.pack("<I", len(d_ng)) + d_ng + struct.pack("<I", len(n_ng)) + n_ng

    def line(self) -> str:
        """The entry as the kernel prints it."""
        return (
            f"{self.pcr} {self.template_hash.hex()} ima-ng "
            f"{self.file_hash_alg}:{self.file_digest.hex()} {self.path}"
        )


def ima_entry(path: str, file_digest: bytes, file_hash_alg: str = "sha256") -> ImaEntry:
    """The entry the kernel would log for a file with this digest (its SHA-1 template hash)."""
    draft = ImaEntry(IMA_PCR, bytes(20), file_hash_alg, file_digest, path)
    return ImaEntry(
        IMA_PCR,
        hashlib.sha1(draft.template_data(), usedforsecurity=False).digest(),
        file_hash_alg,
        file_digest,
        path,
    )


def load_ima_log(text: str) -> list[ImaEntry]:
    """Parse ascii_runtime_measurements lines; raises TpmError naming the first bad line."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line:
            continue
        m = _IMA_LINE.fullmatch(line)
        if m is None:
            raise TpmError(f"IMA log line {number} is not an ima-ng entry")
        digest = bytes.fromhex(m["digest"])
        if len(digest) != hashlib.new(m["alg"]).digest_size:
            raise TpmError(f"IMA log line {number}: the file digest has the wrong size")
        if len(m["path"].encode()) > MAX_IMA_PATH_BYTES:
            raise TpmError(f"IMA log line {number}: the path is too long")
        entry = ImaEntry(
            int(m["pcr"]), bytes.fromhex(m["template_hash"]), m["alg"], digest, m["path"]
        )
        if entry.pcr != IMA_PCR:
            raise TpmError(f"IMA log line {number} extends PCR {entry.pcr}, not {IMA_PCR}")
        if (
            not entry.is_violation
            and len(entry.template_hash) == 20
            and entry.template_hash
            != hashlib.sha1(entry.template_data(), usedforsecurity=False).digest()
        ):
            raise TpmError(f"IMA log line {number}: the template hash does not match its data")
        entries.append(entry)
    return entries


def ima_extend_digest(entry: ImaEntry, hash_alg: int = TpmAlg.SHA256) -> bytes:
    """What the kernel extends into PCR 10's ``hash_alg`` bank for this entry."""
    name = _hash_name(hash_alg)
    if entry.is_violation:
        return b"\xff" * hashlib.new(name).digest_size
    return hashlib.new(name, entry.template_data()).digest()


def replay_ima_log(
    entries: Iterable[ImaEntry], start: bytes, hash_alg: int = TpmAlg.SHA256
) -> bytes:
    """PCR 10 after extending ``start`` with each entry in order."""
    name = _hash_name(hash_alg)
    value = start
    for entry in entries:
        value = hashlib.new(name, value + ima_extend_digest(entry, hash_alg)).digest()
    return value


# --- what pausewatch binds into qualifying data ---------------------------------------------

ENROLL_QUOTE_DOMAIN = b"pausewatch-tpm-enroll-v1\x00"
WINDOW_QUOTE_DOMAIN = b"pausewatch-tpm-quote-v1\x00"


def enrollment_qualifying_data(node_public_key: bytes, verifier_nonce: bytes) -> bytes:
    """extraData of the enrolment quote: binds the node key to the verifier's nonce."""
    return hashlib.sha256(ENROLL_QUOTE_DOMAIN + node_public_key + verifier_nonce).digest()


def window_qualifying_data(verifier_nonce: bytes, prev_digest: bytes, seq: int) -> bytes:
    """extraData of a window's quote: binds the nonce, the chain so far and the window's seq."""
    return hashlib.sha256(
        WINDOW_QUOTE_DOMAIN + verifier_nonce + prev_digest + struct.pack(">Q", seq)
    ).digest()


def tpm_id_of(ek_public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> bytes:
    """A TPM's id: SHA-256 of its EK's SubjectPublicKeyInfo (DER)."""
    spki = ek_public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()
