"""The verifier's side of site power: site declarations logged at start, meter readings in.

    sites = SiteRegistry(core)
    sites.sync(config.labs)                     # log each changed site file, signed by the log key
    receipts = sites.submit([raw_reading, ...])  # verify, chain, log, in one transaction

A site is declared by the regulator in a site file named by its lab in the verifier's config
(:mod:`verifier.accounting.site_file`); a changed file must carry a higher ``version``, and is
logged, signed by the log key, effective from the moment it is logged. A reading is authorised by
the key declared for its meter, nothing else (a gateway's key, or the regulator's import key).

Per reading, in order: 1. size, 2. canonical envelope and payload type, 3. a meter declared with
this key, 4. signature, 5. body rules, 6. the body names that meter of that site and lab with its
declared source, 7. not in the future, 8. the chain (a resend is answered with its log index; a
second reading for a seq, or a broken link, is refused and recorded as a METER_FORK finding; a
lower seq is refused; a jump is accepted with a METER_GAP finding), 9. no overlap with the
previous reading (a later start is accepted with a METER_GAP finding for the time between), then
the log append. All of a batch's accepted readings commit together.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pausewatch.v1 import findings_pb2 as fpb
from pausewatch.v1 import site_pb2 as pb

from attest.chain import ChainHead, Link, classify
from attest.envelope import PayloadType, parse_envelope, sign_envelope
from attest.errors import ConfigError, SignatureError, VerificationError
from attest.ids import Digest
from attest.keys import key_id_from_raw, public_key_from_raw
from attest.meter import MeterReading, verify_reading
from verifier.accounting.site_file import load_site_file, same_declaration
from verifier.config import LabConfig
from verifier.errors import NotFoundError, excerpt
from verifier.store.base import EntryKind, MeterReadingRow, SiteRow
from verifier.store.core import VerifierCore, WriteContext
from verifier.store.log import PendingEntry

log = logging.getLogger(__name__)

MAX_READINGS_PER_REQUEST = 1_000


@dataclass(frozen=True, slots=True)
class DeclaredMeter:
    """A meter of a site declaration in force."""

    lab_id: str
    site_id: str
    meter_id: str
    source: int
    public_key: bytes


class SiteRegistry:
    """Site declarations and meter readings over the core's write path."""

    def __init__(self, core: VerifierCore) -> None:
        self.core = core
        self._by_key: dict[bytes, list[DeclaredMeter]] = {}
        self.reload()

    # -- declarations -----------------------------------------------------------------------

    def reload(self) -> None:
        """Rebuild the key -> meters index from the latest declaration of every site."""
        index: dict[bytes, list[DeclaredMeter]] = {}
        for lab in self.core.store.list_labs():
            latest: dict[str, SiteRow] = {}
            for row in self.core.store.sites(lab.lab_id):
                latest[row.site_id] = row
            for row in latest.values():
                declaration = pb.SiteDeclaration.FromString(row.declaration)
                for meter in declaration.meters:
                    declared = DeclaredMeter(
                        lab_id=declaration.lab_id,
                        site_id=declaration.site_id,
                        meter_id=meter.meter_id,
                        source=meter.source,
                        public_key=bytes(meter.public_key),
                    )
                    index.setdefault(key_id_from_raw(declared.public_key), []).append(declared)
        self._by_key = index

    def sync(self, labs: Sequence[LabConfig]) -> None:
        """Log every site file of the config whose content the log does not hold yet."""
        for lab in labs:
            declared_meters: dict[str, str] = {}
            for path in lab.site_files:
                declaration = load_site_file(path, lab_id=lab.lab_id)
                for meter in declaration.meters:
                    other = declared_meters.setdefault(meter.meter_id, declaration.site_id)
                    if other != declaration.site_id:
                        raise ConfigError(
                            f"{path}: meter {meter.meter_id!r} is declared for sites "
                            f"{other!r} and {declaration.site_id!r} of lab {lab.lab_id}"
                        )
                self._log_declaration(declaration, str(path))
        self.reload()

    def _log_declaration(self, declaration: pb.SiteDeclaration, source: str) -> None:
        with self.core.write() as w:
            versions = [
                r for r in w.tx.sites(declaration.lab_id) if r.site_id == declaration.site_id
            ]
            latest = versions[-1] if versions else None
            if latest is not None:
                logged = pb.SiteDeclaration.FromString(latest.declaration)
                if same_declaration(logged, declaration):
                    return
                if declaration.version <= latest.version:
                    raise ConfigError(
                        f"{source}: the site changed but its version {declaration.version} is "
                        f"not above the logged version {latest.version}; bump version"
                    )
            declaration.effective_from_ns = w.now_ns
            payload = declaration.SerializeToString(deterministic=True)
            raw = sign_envelope(self.core.envelope_signer, PayloadType.SITE, payload)
            index = w.append(PendingEntry(raw, EntryKind.SITE, declaration.lab_id))
            w.tx.put_site(
                SiteRow(
                    lab_id=declaration.lab_id,
                    site_id=declaration.site_id,
                    version=declaration.version,
                    effective_from_ns=w.now_ns,
                    declaration=payload,
                    log_index=index,
                )
            )
            log.info(
                "logged site lab=%s site=%s version=%d index=%d",
                declaration.lab_id,
                declaration.site_id,
                declaration.version,
                index,
            )

    # -- readings ---------------------------------------------------------------------------

    def head(self, lab_id: str, meter_id: str) -> MeterReadingRow | None:
        """Where a meter's chain stands: None for a declared meter with no reading yet;
        NotFoundError for a lab that is not registered or a meter none of its sites declares
        (an answer of "no reading yet" would have a gateway start a chain that is refused)."""
        if self.core.store.get_lab(lab_id) is None:
            raise NotFoundError(f"lab {lab_id!r} is not registered with this verifier")
        declared = any(
            meter.lab_id == lab_id and meter.meter_id == meter_id
            for meters in self._by_key.values()
            for meter in meters
        )
        if not declared:
            raise NotFoundError(
                f"meter {excerpt(meter_id)} is not declared for a site of lab {lab_id}"
            )
        return self.core.store.meter_head(lab_id, meter_id)

    def submit(self, raws: Sequence[bytes]) -> list[pb.MeterReceipt]:
        """Check and log a batch of readings; one receipt each, in order."""
        checked = [self._check(raw) for raw in raws]
        try:
            with self.core.write() as w:
                receipts = [
                    item if isinstance(item, pb.MeterReceipt) else self._serial(w, item)
                    for item in checked
                ]
        except Exception:  # the store failed: nothing of the batch was written
            log.exception("meter batch of %d failed to commit", len(raws))
            return [
                item
                if isinstance(item, pb.MeterReceipt)
                else _rejected(
                    item.reading.digest, pb.METER_REJECT_REASON_UNAVAILABLE, "resend later"
                )
                for item in checked
            ]
        return receipts

    def _check(self, raw: bytes) -> pb.MeterReceipt | _Checked:
        """Steps 1 to 6, stateless."""
        max_size = self.core.config.server.max_envelope_bytes
        if not raw or len(raw) > max_size:
            return _rejected(b"", pb.METER_REJECT_REASON_MALFORMED, "empty or too large")
        try:
            envelope = parse_envelope(raw, max_size=max_size)
        except VerificationError as exc:
            return _rejected(b"", pb.METER_REJECT_REASON_MALFORMED, exc.diagnostics())
        if envelope.payload_type != PayloadType.METER_READING:
            return _rejected(
                envelope.digest, pb.METER_REJECT_REASON_MALFORMED, "not a meter reading"
            )
        candidates = self._by_key.get(envelope.key_id, [])
        if not candidates:
            return _rejected(
                envelope.digest,
                pb.METER_REJECT_REASON_UNKNOWN_METER,
                "no meter is declared with this key",
            )
        try:
            reading = verify_reading(raw, public_key_from_raw(candidates[0].public_key))
        except VerificationError as exc:
            reason = (
                pb.METER_REJECT_REASON_BAD_SIGNATURE
                if isinstance(exc, SignatureError)
                else pb.METER_REJECT_REASON_MALFORMED
            )
            return _rejected(envelope.digest, reason, exc.diagnostics())
        for meter in candidates:
            if (meter.lab_id, meter.site_id, meter.meter_id) == (
                reading.lab_id,
                reading.site_id,
                reading.meter_id,
            ):
                if meter.source != reading.source:
                    return _rejected(
                        reading.digest,
                        pb.METER_REJECT_REASON_UNKNOWN_METER,
                        "the reading's source is not the meter's declared source",
                    )
                return _Checked(reading, meter)
        return _rejected(
            reading.digest,
            pb.METER_REJECT_REASON_UNKNOWN_METER,
            "this key is not declared for that lab, site and meter",
        )

    def _serial(self, w: WriteContext, item: _Checked) -> pb.MeterReceipt:
        """Steps 7 to 9 and the log append, inside the batch's transaction."""
        reading = item.reading
        skew = self.core.config.ingest.max_clock_skew_ns
        if reading.interval_end_ns > w.now_ns + skew:
            return _rejected(
                reading.digest, pb.METER_REJECT_REASON_TIME, "the interval ends in the future"
            )
        stored = w.tx.meter_reading_at(reading.lab_id, reading.meter_id, reading.seq)
        head_row = w.tx.meter_head(reading.lab_id, reading.meter_id)
        head = (
            None
            if head_row is None
            else ChainHead(head_row.seq, Digest(head_row.digest), head_row.interval_end_ns)
        )
        link = classify(
            head,
            reading.seq,
            reading.prev_digest,
            reading.digest,
            None if stored is None else stored.digest,
        )
        if link is Link.DUPLICATE:
            assert stored is not None
            return pb.MeterReceipt(digest=reading.digest, accepted=True, log_index=stored.log_index)
        if link is Link.FORK:
            w.add_finding(
                fpb.Finding(
                    kind=fpb.FINDING_KIND_METER_FORK,
                    severity=fpb.SEVERITY_CRITICAL,
                    lab_id=reading.lab_id,
                    period_start_ns=reading.interval_start_ns,
                    period_end_ns=reading.interval_end_ns,
                    evidence_log_indices=[] if stored is None else [stored.log_index],
                    summary=(
                        f"meter {reading.meter_id} of site {reading.site_id}: a second reading "
                        f"for seq {reading.seq}, or one not linked to its predecessor"
                    ),
                    rejected_envelope=reading.raw,
                )
            )
            return _rejected(
                reading.digest,
                pb.METER_REJECT_REASON_CHAIN,
                f"seq {reading.seq} does not extend the meter's chain",
            )
        if link is Link.ROLLBACK:
            return _rejected(
                reading.digest,
                pb.METER_REJECT_REASON_CHAIN,
                f"seq {reading.seq} is below the meter's head",
            )
        gap_from_ns = None
        if head_row is not None:
            if reading.interval_start_ns < head_row.interval_end_ns:
                return _rejected(
                    reading.digest,
                    pb.METER_REJECT_REASON_OVERLAP,
                    "the interval starts before the previous reading's ends",
                )
            if reading.interval_start_ns > head_row.interval_end_ns or link is Link.GAP:
                gap_from_ns = head_row.interval_end_ns
        index = w.append(PendingEntry(reading.raw, EntryKind.METER_READING, reading.lab_id))
        w.tx.insert_meter_reading(
            MeterReadingRow(
                lab_id=reading.lab_id,
                meter_id=reading.meter_id,
                seq=reading.seq,
                digest=reading.digest,
                log_index=index,
                site_id=reading.site_id,
                interval_start_ns=reading.interval_start_ns,
                interval_end_ns=reading.interval_end_ns,
                energy_mj=reading.energy_mj,
            )
        )
        if gap_from_ns is not None and head_row is not None:
            w.add_finding(
                fpb.Finding(
                    kind=fpb.FINDING_KIND_METER_GAP,
                    severity=fpb.SEVERITY_WARNING,
                    lab_id=reading.lab_id,
                    period_start_ns=gap_from_ns,
                    period_end_ns=reading.interval_start_ns,
                    evidence_log_indices=[head_row.log_index, index],
                    summary=(
                        f"meter {reading.meter_id} of site {reading.site_id} has no reading "
                        f"between seq {head_row.seq} and seq {reading.seq}"
                    ),
                )
            )
        return pb.MeterReceipt(digest=reading.digest, accepted=True, log_index=index)


@dataclass(frozen=True, slots=True)
class _Checked:
    reading: MeterReading
    meter: DeclaredMeter


def _rejected(digest: bytes, reason: int, detail: str) -> pb.MeterReceipt:
    return pb.MeterReceipt(digest=digest, accepted=False, reason=reason, detail=detail)  # type: ignore[arg-type]
