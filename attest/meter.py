"""Site meter readings: signed interval energy of a facility, chained per meter.

    body = reading_body(lab_id="lab-a", site_id="dc1", meter_id="main-1", seq=0,
                        prev_digest=ZERO_DIGEST, interval_start_ns=t0,
                        interval_end_ns=t0 + 15 * MIN_NS, energy_mj=3_600_000_000_000,
                        source=pb.METER_SOURCE_GATEWAY)
    raw = sign_reading(gateway_signer, body)                      # an Envelope, like an attestation
    reading = verify_reading(raw, gateway_public_key)             # raises on any failure
    report = check_meter_sequence([reading, ...])                 # forks, overlaps and gaps

A reading says how much energy a site drew through one meter over one interval (utility meters
record 15-minute intervals). It is signed either by the meter gateway's own key, declared by the
regulator with the meter, or, for interval data the regulator imports from its own files, by the
verifier's log key. Readings of a meter form a hash chain (seq from 0, ``prev_digest`` the SHA-256
of the previous reading's envelope), so none can be dropped, re-ordered or replaced without it
showing. Payload type: :data:`attest.envelope.PayloadType.METER_READING`; body:
``pausewatch.v1.MeterReadingBody`` (protos/pausewatch/v1/site.proto). Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError
from pausewatch.v1 import site_pb2 as pb

from attest.chain import ChainItem, Link, check_link_fields, check_sequence
from attest.envelope import (
    PayloadType,
    StaticKeyring,
    sign_envelope,
    verify_envelope,
)
from attest.errors import BodyError, ChainError
from attest.ids import Digest
from attest.keys import Signer

FORMAT_VERSION = 1
NS_PER_MS = 1_000_000
MAX_INTERVAL_NS = 24 * 3_600 * 10**9
"""A reading covers at most a day (utility interval data is 5 to 60 minutes)."""
MAX_SITE_POWER_MW = 10 * 10**12
"""10 GW in mW: no site draws more; a reading implying more is malformed (and cannot overflow)."""
MJ_PER_KWH = 3_600_000_000

_METER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SITE_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SOURCES = frozenset({pb.METER_SOURCE_GATEWAY, pb.METER_SOURCE_REGULATOR_IMPORT})


def is_meter_id(text: str) -> bool:
    """Whether ``text`` is a well-formed meter id (not a security decision: a syntax check)."""
    return _METER_ID.fullmatch(text) is not None


def is_site_id(text: str) -> bool:
    """Whether ``text`` is a well-formed site id."""
    return _SITE_ID.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class MeterReading:
    """A reading whose envelope signature has been verified and whose body follows the rules.

    Only :func:`verify_reading` (and :func:`reading_from_verified_parts`, for a store that kept
    readings it verified before) make one."""

    lab_id: str
    site_id: str
    meter_id: str
    seq: int
    prev_digest: bytes
    interval_start_ns: int
    interval_end_ns: int
    energy_mj: int
    source: int
    import_reference: str
    digest: Digest
    raw: bytes

    @property
    def interval_ns(self) -> int:
        return self.interval_end_ns - self.interval_start_ns

    def chain_item(self) -> ChainItem:
        return ChainItem(seq=self.seq, prev_digest=self.prev_digest, digest=self.digest)


def reading_body(
    *,
    lab_id: str,
    site_id: str,
    meter_id: str,
    seq: int,
    prev_digest: bytes,
    interval_start_ns: int,
    interval_end_ns: int,
    energy_mj: int,
    source: int,
    import_reference: str = "",
) -> pb.MeterReadingBody:
    """A reading body, checked by :func:`validate_reading_body` (raises :class:`BodyError`)."""
    body = pb.MeterReadingBody(
        format_version=FORMAT_VERSION,
        lab_id=lab_id,
        site_id=site_id,
        meter_id=meter_id,
        seq=seq,
        prev_digest=prev_digest,
        interval_start_ns=interval_start_ns,
        interval_end_ns=interval_end_ns,
        energy_mj=energy_mj,
        source=source,  # type: ignore[arg-type]
        import_reference=import_reference,
    )
    validate_reading_body(body)
    return body


def validate_reading_body(body: pb.MeterReadingBody) -> None:
    """The rules every reading body meets; raises :class:`BodyError` naming the field.

    format_version is 1; ids are well-formed; seq/prev_digest follow the chain's structural rules;
    the interval is positive and at most :data:`MAX_INTERVAL_NS`; the energy implies at most
    :data:`MAX_SITE_POWER_MW`; the source is set; ``import_reference`` is set only for imports.
    """
    if body.format_version != FORMAT_VERSION:
        raise BodyError(f"format_version is {body.format_version}, expected {FORMAT_VERSION}")
    if not _SITE_ID.fullmatch(body.lab_id):
        raise BodyError("lab_id is not a valid lab id")
    if not _SITE_ID.fullmatch(body.site_id):
        raise BodyError("site_id is not a valid site id")
    if not _METER_ID.fullmatch(body.meter_id):
        raise BodyError("meter_id is not a valid meter id")
    try:
        check_link_fields(body.seq, body.prev_digest)
    except ChainError as exc:
        raise BodyError(f"chain fields: {exc}") from None
    interval_ns = body.interval_end_ns - body.interval_start_ns
    if body.interval_start_ns <= 0 or interval_ns <= 0:
        raise BodyError("interval_end_ns must be after interval_start_ns, both after the epoch")
    if interval_ns > MAX_INTERVAL_NS:
        raise BodyError(f"the interval is {interval_ns} ns, more than a day")
    # energy_mj / interval_ms <= MAX mW  <=>  energy_mj x NS_PER_MS <= MAX x interval_ns
    if body.energy_mj * NS_PER_MS > MAX_SITE_POWER_MW * interval_ns:
        raise BodyError("energy_mj implies more than 10 GW over the interval")
    if body.source not in _SOURCES:
        raise BodyError("source is not set")
    is_import = body.source == pb.METER_SOURCE_REGULATOR_IMPORT
    if bool(body.import_reference) != is_import:
        raise BodyError("import_reference is set exactly on regulator imports")
    if len(body.import_reference) > 512:
        raise BodyError("import_reference is longer than 512 characters")


def sign_reading(signer: Signer, body: pb.MeterReadingBody) -> bytes:
    """The envelope bytes of a reading signed by ``signer`` (a gateway key or the log key)."""
    validate_reading_body(body)
    return sign_envelope(signer, PayloadType.METER_READING, body.SerializeToString())


def verify_reading(raw: bytes, public_key: Ed25519PublicKey) -> MeterReading:
    """Verify a reading's envelope under ``public_key``, then parse and check its body.

    1. envelope size and canonical encoding, 2. payload type, 3. key id, 4. signature
    (all :func:`attest.envelope.verify_envelope`), 5. body parse, 6. body rules
    (:func:`validate_reading_body`). Raises the :class:`~attest.errors.VerificationError` of the
    first step that fails.
    """
    keyring = StaticKeyring()
    keyring.add(public_key)
    verified = verify_envelope(raw, keyring, payload_type=PayloadType.METER_READING)
    body = pb.MeterReadingBody()
    try:
        body.ParseFromString(verified.payload)
    except DecodeError:
        raise BodyError("the reading body does not parse") from None
    validate_reading_body(body)
    return MeterReading(
        lab_id=body.lab_id,
        site_id=body.site_id,
        meter_id=body.meter_id,
        seq=body.seq,
        prev_digest=body.prev_digest,
        interval_start_ns=body.interval_start_ns,
        interval_end_ns=body.interval_end_ns,
        energy_mj=body.energy_mj,
        source=body.source,
        import_reference=body.import_reference,
        digest=verified.digest,
        raw=verified.raw,
    )


@dataclass(frozen=True, slots=True)
class MeterGap:
    """A stretch of a meter's time with no reading: the site's energy there is unknown."""

    meter_id: str
    start_ns: int
    end_ns: int
    after_seq: int


@dataclass(frozen=True, slots=True)
class MeterSequenceReport:
    """What :func:`check_meter_sequence` found in one meter's readings."""

    meter_id: str
    count: int
    forks: tuple[int, ...]
    """Seqs at which the chain forks (two readings for one seq, or a broken prev_digest link)."""
    overlaps: tuple[int, ...]
    """Seqs whose interval starts before the previous reading's ends."""
    missing_seqs: tuple[tuple[int, int], ...]
    """Runs of seqs with no reading (first, last)."""
    gaps: tuple[MeterGap, ...]
    """Time between consecutive readings with no reading, including missing seqs' time."""

    @property
    def sound(self) -> bool:
        """No fork and no overlap: the readings can be added up."""
        return not self.forks and not self.overlaps


def check_meter_sequence(readings: Iterable[MeterReading]) -> MeterSequenceReport:
    """Check one meter's readings (any order) as a chain and as a timeline.

    Raises :class:`BodyError` if the readings are of more than one meter."""
    items = list(readings)
    meter_ids = {r.meter_id for r in items}
    if len(meter_ids) > 1:
        raise BodyError(f"readings of {len(meter_ids)} meters given as one meter's")
    meter_id = next(iter(meter_ids), "")
    chain = check_sequence(r.chain_item() for r in items)
    forks = tuple(i.seq for i in chain.issues if i.link in (Link.FORK, Link.ROLLBACK))
    missing = tuple(
        (i.missing_from_seq, i.missing_to_seq)
        for i in chain.issues
        if i.link is Link.GAP and i.missing_from_seq is not None and i.missing_to_seq is not None
    )
    by_seq: dict[int, MeterReading] = {}
    for reading in items:
        by_seq.setdefault(reading.seq, reading)
    ordered = [by_seq[s] for s in sorted(by_seq)]
    overlaps: list[int] = []
    gaps: list[MeterGap] = []
    for previous, current in pairwise(ordered):
        if current.interval_start_ns < previous.interval_end_ns:
            overlaps.append(current.seq)
        elif current.interval_start_ns > previous.interval_end_ns:
            gaps.append(
                MeterGap(
                    meter_id, previous.interval_end_ns, current.interval_start_ns, previous.seq
                )
            )
    return MeterSequenceReport(
        meter_id=meter_id,
        count=len(ordered),
        forks=forks,
        overlaps=tuple(overlaps),
        missing_seqs=missing,
        gaps=tuple(gaps),
    )


def overlap_ns(start_ns: int, end_ns: int, lo_ns: int, hi_ns: int) -> int:
    """Length of the intersection of [start, end) and [lo, hi), 0 if none."""
    return max(0, min(end_ns, hi_ns) - max(start_ns, lo_ns))


def prorated_mj(energy_mj: int, start_ns: int, end_ns: int, lo_ns: int, hi_ns: int) -> int:
    """The share of ``energy_mj`` spent over [start, end) that falls in [lo, hi), assuming even
    power across the interval (all a meter's interval total says), rounded down."""
    span = end_ns - start_ns
    if span <= 0:
        return 0
    return energy_mj * overlap_ns(start_ns, end_ns, lo_ns, hi_ns) // span


def total_mj(readings: Sequence[MeterReading], lo_ns: int, hi_ns: int) -> int:
    """Energy of ``readings`` pro-rated to [lo, hi)."""
    return sum(
        prorated_mj(r.energy_mj, r.interval_start_ns, r.interval_end_ns, lo_ns, hi_ns)
        for r in readings
    )
