"""TPM-rooted nodes on the verifier side: EK certificates, credentials, and the quotes on a chain.

    cred = issue_credential(core.nonces, settings, node_public_key, ek_der, ak_public)
    identity = verify_tpm_enrollment(core.nonces, settings, enrollment, now_ns)  # at EnrollNode
    outcome = check_window_quote(identity.ak, body, state, settings, allowlist)  # per window

Enrolment (docs/verifier.md, "TPM-rooted nodes"), in order: (1) the EK certificate chains to a
configured manufacturer CA; (2) the AK is a restricted, fixedTPM signing key; (3) the secret the
node sends is the one our credential for (EK, AK name) held, so the AK lives in that TPM; (4) the
enrolment quote verifies under the AK and (5) binds the node key and the nonce. The credential
secret is derived from the nonce by the nonce issuer's secret, so nothing is stored between
GetTpmCredential and EnrollNode.

A window's quote, in order: (1) it parses and its signature verifies under the node's enrolled AK
(else OTHER_TPM); (2) its qualifying data binds this body's nonce, prev_digest and seq, and the
TPM's clock moved forward since the last good quote (else REPLAYED); (3) the nonce was issued no
longer than ``quote_nonce_max_age_ns`` before the window ended (else STALE_NONCE); (4) the PCR
values hash to the quoted digest (else PCR_MISMATCH); (5) the IMA log, continuing from the last
good quote or from boot, replays to the quoted PCR 10 (else IMA_LOG_MISMATCH). A valid quote may
still measure files not in the lab's allowlist: those are returned as unknown measurements.
:func:`check_window_quote` is pure: the offline auditor runs it over a bundle too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pausewatch.v1 import attestation_pb2 as apb
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import findings_pb2 as fpb
from pausewatch.v1 import registry_pb2

from attest import tpm
from attest.errors import ConfigError, TpmError
from attest.keys import key_id_from_raw
from verifier.errors import InvalidRequestError
from verifier.nonce import NonceIssuer, NonceStatus

log = logging.getLogger(__name__)

S = 1_000_000_000
CREDENTIAL_LABEL = b"tpm-credential"
CREDENTIAL_SECRET_SIZE = 32
MAX_EK_CERT_BYTES = 4096
MAX_PCR_COUNT = 24


@dataclass(frozen=True, slots=True)
class TpmSettings:
    """The verifier's [tpm] settings."""

    manufacturer_cas: tuple[x509.Certificate, ...] = ()
    quote_nonce_max_age_ns: int = 600 * S
    max_windows_without_quote: int = 1


def load_manufacturer_cas(paths: Iterable[Path]) -> tuple[x509.Certificate, ...]:
    """Read PEM files of EK manufacturer CAs (roots and intermediates); raises ConfigError."""
    certs: list[x509.Certificate] = []
    for path in paths:
        try:
            certs.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except OSError as exc:
            raise ConfigError(f"tpm.manufacturer_cas: cannot read {path}: {exc.strerror}") from None
        except ValueError:
            raise ConfigError(f"tpm.manufacturer_cas: {path} holds no PEM certificate") from None
    return tuple(certs)


def verify_ek_certificate(
    der: bytes, cas: Sequence[x509.Certificate], now_ns: int
) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """The EK's public key, once its certificate chains to one of ``cas`` and is in date."""
    if not cas:
        raise ConfigError("no TPM manufacturer CA is configured (tpm.manufacturer_cas)")
    if not der or len(der) > MAX_EK_CERT_BYTES:
        raise InvalidRequestError(f"ek_certificate must be 1 to {MAX_EK_CERT_BYTES} bytes")
    try:
        cert = x509.load_der_x509_certificate(der)
        key = cert.public_key()
    except ValueError:
        raise InvalidRequestError("ek_certificate is not a DER X.509 certificate") from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise InvalidRequestError("the EK certificate's key is neither RSA nor ECC")
    now_s = now_ns // S
    issuer = _issuer_among(cert, cas)
    if issuer is None:
        raise TpmError("the EK certificate does not chain to a configured TPM manufacturer CA")
    for current in (cert, issuer):
        if not (
            current.not_valid_before_utc.timestamp()
            <= now_s
            <= current.not_valid_after_utc.timestamp()
        ):
            raise TpmError("the EK certificate or its CA is not valid at this time")
    return key


def _issuer_among(
    cert: x509.Certificate, cas: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    """The configured CA that signed ``cert`` (configured CAs are trust anchors), or None."""
    for ca in cas:
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return ca
    return None


def _load_ak(ak_public: bytes) -> tpm.TpmPublic:
    """The AK of a request; INVALID_ARGUMENT for one that does not parse, is not a valid key, or
    is not a restricted, fixedTPM signing key (an unsuitable AK is a malformed request, not a
    failed authentication)."""
    try:
        ak = tpm.load_tpm_public(ak_public)
        tpm.verify_attestation_key(ak)
    except TpmError as exc:
        raise InvalidRequestError(f"ak_public: {exc.diagnostics()}") from None
    except ValueError:  # a key the cryptography library refuses that the parser let through
        raise InvalidRequestError("ak_public: not a valid public key") from None
    return ak


def credential_secret(
    nonces: NonceIssuer, nonce: bytes, node_id: bytes, ak_name: bytes, tpm_id: bytes
) -> bytes:
    """The secret our credential for this (nonce, node, AK, TPM) holds."""
    return nonces.derive(CREDENTIAL_LABEL, nonce, node_id, ak_name, tpm_id)[:CREDENTIAL_SECRET_SIZE]


def issue_credential(
    nonces: NonceIssuer,
    settings: TpmSettings,
    request: spb.GetTpmCredentialRequest,
    now_ns: int,
) -> spb.GetTpmCredentialResponse:
    """GetTpmCredential: check the EK certificate and the AK, and make their credential."""
    node_public_key = request.node_public_key
    ek_certificate = request.ek_certificate
    ak_public = request.ak_public
    if len(node_public_key) != 32:
        raise InvalidRequestError("node_public_key must be a raw 32-byte Ed25519 key")
    ek_key = verify_ek_certificate(ek_certificate, settings.manufacturer_cas, now_ns)
    ak = _load_ak(ak_public)
    node_id = key_id_from_raw(node_public_key)
    nonce, issued = nonces.issue(node_id)
    secret = credential_secret(nonces, nonce, node_id, ak.name, tpm.tpm_id_of(ek_key))
    credential = tpm.make_credential(ek_key, ak.name, secret)
    return spb.GetTpmCredentialResponse(
        nonce=nonce,
        credential_blob=credential.credential_blob,
        encrypted_secret=credential.encrypted_secret,
        expires_at_ns=issued + nonces.lifetime_ns,
    )


@dataclass(frozen=True, slots=True)
class TpmIdentity:
    """A node's verified TPM: its id and its attestation key."""

    tpm_id: bytes
    ak: tpm.TpmPublic


def tpm_identity(enrollment: registry_pb2.NodeEnrollment) -> TpmIdentity | None:
    """The TPM of an enrolment already accepted (no checks: they were made at enrolment)."""
    if not enrollment.HasField("tpm"):
        return None
    cert = x509.load_der_x509_certificate(enrollment.tpm.ek_certificate)
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return TpmIdentity(tpm.tpm_id_of(key), tpm.load_tpm_public(enrollment.tpm.ak_public))


def verify_tpm_enrollment(
    nonces: NonceIssuer,
    settings: TpmSettings,
    enrollment: registry_pb2.NodeEnrollment,
    now_ns: int,
    skew_ns: int,
) -> TpmIdentity:
    """Steps (1) to (5) of the module docstring; raises TpmError naming the step that failed."""
    evidence = enrollment.tpm
    ek_key = verify_ek_certificate(evidence.ek_certificate, settings.manufacturer_cas, now_ns)
    ak = _load_ak(evidence.ak_public)
    tpm_id = tpm.tpm_id_of(ek_key)
    node_id = key_id_from_raw(enrollment.node_public_key)
    nonce = enrollment.verifier_nonce
    if nonces.check(nonce, node_id, now_ns, skew_ns) is not NonceStatus.OK:
        raise InvalidRequestError(
            "verifier_nonce is not a live nonce of GetTpmCredential for this node key"
        )
    expected = credential_secret(nonces, nonce, node_id, ak.name, tpm_id)
    if not hmac.compare_digest(expected, evidence.activated_secret):
        raise TpmError(
            "the activated secret is not the credential's: the AK is not in the TPM of this EK"
        )
    if len(evidence.pcr_values) > MAX_PCR_COUNT:
        raise InvalidRequestError("too many PCR values in the enrolment quote")
    quote = tpm.verify_quote(ak, evidence.quote_attest, evidence.quote_signature)
    tpm.verify_pcr_digest(quote, list(evidence.pcr_values))
    if quote.extra_data != tpm.enrollment_qualifying_data(enrollment.node_public_key, nonce):
        raise TpmError("the enrolment quote does not bind this node key and nonce")
    return TpmIdentity(tpm_id, ak)


# --- quotes on the chain --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuoteState:
    """What the verifier remembers of a node's last good quote."""

    reset_count: int
    clock_ms: int
    pcr10: bytes
    ima_count: int
    last_ok_seq: int

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "reset_count": self.reset_count,
                "clock_ms": self.clock_ms,
                "pcr10": self.pcr10.hex(),
                "ima_count": self.ima_count,
                "last_ok_seq": self.last_ok_seq,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> QuoteState | None:
        """The stored state, or None when the row does not parse (an edited store): the node is
        then held to a quote whose IMA log starts at boot, as if it had none."""
        try:
            data = json.loads(raw)
            return cls(
                reset_count=int(data["reset_count"]),
                clock_ms=int(data["clock_ms"]),
                pcr10=bytes.fromhex(data["pcr10"]),
                ima_count=int(data["ima_count"]),
                last_ok_seq=int(data["last_ok_seq"]),
            )
        except (ValueError, KeyError, TypeError):
            log.warning("a TPM quote state row does not parse; treating the node as having none")
            return None


def read_ima_allowlist(path: Path) -> frozenset[tuple[str, bytes]]:
    """Read a lab's allowlist file; raises ConfigError naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"ima_allowlist: cannot read {path} as UTF-8 text") from None
    return load_ima_allowlist(text, str(path))


def load_ima_allowlist(text: str, source: str = "ima_allowlist") -> frozenset[tuple[str, bytes]]:
    """A lab's allowlist, in sha256sum's format: "<64 hex>  <path>" per line, '#' comments."""
    allowed: set[tuple[str, bytes]] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        digest_hex, _, path = stripped.partition(" ")
        path = path.strip().removeprefix("*")
        try:
            digest = bytes.fromhex(digest_hex)
        except ValueError:
            digest = b""
        if len(digest) != 32 or not path:
            raise ConfigError(f"{source}: line {number}: expected '<sha256 hex>  <path>'")
        allowed.add((path, digest))
    return frozenset(allowed)


@dataclass(frozen=True, slots=True)
class QuoteOutcome:
    """What one window's quote (or its absence) came to."""

    status: int
    """A ``pausewatch.v1.TpmQuoteStatus``; UNSPECIFIED for a window the cadence lets go unquoted."""
    detail: str
    state: QuoteState | None
    """The node's quote state after this window (unchanged unless the quote was good)."""
    unknown: tuple[tpm.ImaEntry, ...] = field(default=())

    @property
    def refused(self) -> bool:
        return self.status not in (
            fpb.TPM_QUOTE_STATUS_OK,
            fpb.TPM_QUOTE_STATUS_UNSPECIFIED,
            UNCHECKED,
        )


UNCHECKED = -1
"""A :class:`QuoteOutcome` status outside the wire enum: offline, not decidable (see
:func:`check_window_quote`)."""


def tpm_state_key(node_id: bytes) -> str:
    """The store's meta row holding a TPM node's :class:`QuoteState`."""
    return f"tpm-quote-state:{node_id.hex()}"


def nonce_issued_at_ns(nonce: bytes) -> int | None:
    """The issue time written in a verifier nonce (its first 8 bytes; docs/wire-format.md §3)."""
    if len(nonce) < 8:
        return None
    return int(struct.unpack(">q", nonce[:8])[0])


def check_window_quote(
    ak: tpm.TpmPublic,
    body: apb.AttestationBody,
    state: QuoteState | None,
    settings: TpmSettings,
    allowlist: frozenset[tuple[str, bytes]] | None,
    *,
    history_known: bool = True,
) -> QuoteOutcome:
    """Check a TPM node's window (see the module docstring); never raises on bad evidence.

    ``history_known`` False (an offline auditor starting mid-chain, with no earlier quote): the
    first quote that continues an IMA log from before cannot be replayed, and a first window
    without a quote cannot be called missing; both come back UNCHECKED with what could be checked
    (signature, binding, nonce, PCR digest) done."""
    unchecked = state is None and not history_known
    if not body.HasField("tpm_quote"):
        if unchecked:
            return QuoteOutcome(UNCHECKED, "whether a quote was due is not known here", state)
        due = state is None or body.seq - state.last_ok_seq >= settings.max_windows_without_quote
        if due:
            return QuoteOutcome(
                fpb.TPM_QUOTE_STATUS_MISSING, "no TPM quote where one was due", state
            )
        return QuoteOutcome(fpb.TPM_QUOTE_STATUS_UNSPECIFIED, "", state)

    def refuse(status: int, detail: str) -> QuoteOutcome:
        return QuoteOutcome(status, detail, state)

    q = body.tpm_quote
    # (1) the signature, under the enrolled AK (a quote that does not even parse is malformed).
    try:
        tpm.load_quote(q.attest)
    except TpmError as exc:
        return refuse(fpb.TPM_QUOTE_STATUS_MALFORMED, exc.diagnostics())
    try:
        quote = tpm.verify_quote(ak, q.attest, q.signature)
    except TpmError as exc:
        if "does not verify" in str(exc):
            return refuse(fpb.TPM_QUOTE_STATUS_OTHER_TPM, exc.diagnostics())
        return refuse(fpb.TPM_QUOTE_STATUS_MALFORMED, exc.diagnostics())
    # (2) bound to this window, and newer than the last good quote.
    expected = tpm.window_qualifying_data(body.verifier_nonce, body.prev_digest, body.seq)
    if not hmac.compare_digest(quote.extra_data, expected):
        return refuse(
            fpb.TPM_QUOTE_STATUS_REPLAYED,
            "the quote's qualifying data binds another window, nonce or node",
        )
    if state is not None and (
        quote.reset_count < state.reset_count
        or (quote.reset_count == state.reset_count and quote.clock_ms <= state.clock_ms)
    ):
        return refuse(fpb.TPM_QUOTE_STATUS_REPLAYED, "the TPM's clock did not move forward")
    # (3) a fresh nonce.
    issued = nonce_issued_at_ns(body.verifier_nonce)
    if issued is None or body.window_end_ns - issued > settings.quote_nonce_max_age_ns:
        return refuse(
            fpb.TPM_QUOTE_STATUS_STALE_NONCE,
            "the quote binds a nonce older than the freshness bound",
        )
    # (4) the PCR values are the quoted ones, PCR 10 among them.
    if len(q.pcr_values) > MAX_PCR_COUNT:
        return refuse(fpb.TPM_QUOTE_STATUS_MALFORMED, "too many PCR values")
    try:
        tpm.verify_pcr_digest(quote, list(q.pcr_values))
    except TpmError as exc:
        return refuse(fpb.TPM_QUOTE_STATUS_PCR_MISMATCH, exc.diagnostics())
    selection = quote.selections[0]
    if selection.hash_alg != tpm.TpmAlg.SHA256 or tpm.IMA_PCR not in selection.pcrs:
        return refuse(fpb.TPM_QUOTE_STATUS_PCR_MISMATCH, "the quote must cover SHA-256 PCR 10")
    pcr10 = bytes(q.pcr_values[selection.pcrs.index(tpm.IMA_PCR)])
    # (5) the IMA log replays to PCR 10, continuing the last good quote's.
    try:
        entries = tpm.load_ima_log(q.ima_log)
    except TpmError as exc:
        return refuse(fpb.TPM_QUOTE_STATUS_IMA_LOG_MISMATCH, exc.diagnostics())
    if q.ima_log_start == 0:
        start = bytes(32)
    elif unchecked:
        return QuoteOutcome(
            UNCHECKED,
            "the IMA log continues one from before what is here",
            QuoteState(
                reset_count=quote.reset_count,
                clock_ms=quote.clock_ms,
                pcr10=pcr10,
                ima_count=q.ima_log_start + len(entries),
                last_ok_seq=body.seq,
            ),
        )
    elif (
        state is not None
        and state.reset_count == quote.reset_count
        and q.ima_log_start == state.ima_count
    ):
        start = state.pcr10
    else:
        return refuse(
            fpb.TPM_QUOTE_STATUS_IMA_LOG_MISMATCH,
            "the IMA log does not continue where the last good quote's ended",
        )
    if tpm.replay_ima_log(entries, start) != pcr10:
        return refuse(
            fpb.TPM_QUOTE_STATUS_IMA_LOG_MISMATCH,
            "the IMA log does not replay to the quoted PCR 10",
        )
    quoted = dict(zip(selection.pcrs, (bytes(v) for v in q.pcr_values), strict=True))
    if not all(boot_aggregate_matches(entry, quoted) for entry in entries):
        return refuse(
            fpb.TPM_QUOTE_STATUS_IMA_LOG_MISMATCH,
            "the IMA log's boot_aggregate does not match the quoted boot PCRs",
        )
    unknown: tuple[tpm.ImaEntry, ...] = ()
    if allowlist is not None:
        unknown = tuple(
            e for e in entries if e.is_violation or (e.path, e.file_digest) not in allowlist
        )
    new_state = QuoteState(
        reset_count=quote.reset_count,
        clock_ms=quote.clock_ms,
        pcr10=pcr10,
        ima_count=q.ima_log_start + len(entries),
        last_ok_seq=body.seq,
    )
    return QuoteOutcome(fpb.TPM_QUOTE_STATUS_OK, "", new_state, unknown)


BOOT_AGGREGATE = "boot_aggregate"


def boot_aggregate_matches(entry: tpm.ImaEntry, quoted: dict[int, bytes]) -> bool:
    """The kernel's first IMA entry, ``boot_aggregate``, is SHA-256 over the boot PCRs 0-7 (0-9 on
    kernels since 5.8): it must be one of those over the quoted values, so that an allowlisted
    boot_aggregate digest stands for an approved measured boot. Other entries, a violation, a
    non-SHA-256 aggregate or a quote without PCRs 0-7 pass (nothing to compare)."""
    if entry.path != BOOT_AGGREGATE or entry.is_violation or entry.file_hash_alg != "sha256":
        return True
    if any(i not in quoted for i in range(8)):
        return True
    candidates = [hashlib.sha256(b"".join(quoted[i] for i in range(8))).digest()]
    if 8 in quoted and 9 in quoted:
        candidates.append(hashlib.sha256(b"".join(quoted[i] for i in range(10))).digest())
    return entry.file_digest in candidates


def status_name(status: int) -> str:
    """The reason's short name, for summaries: "STALE_NONCE", "OTHER_TPM", ..."""
    return fpb.TpmQuoteStatus.Name(status).removeprefix("TPM_QUOTE_STATUS_")  # type: ignore[arg-type]
