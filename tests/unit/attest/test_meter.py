"""Meter readings: signing, the body rules, tamper evidence and the per-meter timeline."""

from __future__ import annotations

import pytest
from pausewatch.v1 import site_pb2 as pb

from attest import meter
from attest.envelope import PayloadType, envelope_digest, sign_envelope
from attest.errors import BodyError, PayloadTypeError, UnknownKeyError, VerificationError
from attest.ids import ZERO_DIGEST
from attest.keys import Ed25519Signer
from tests.builders import fixed_private_key

GATEWAY = Ed25519Signer.from_private_key(fixed_private_key(31))
OTHER = Ed25519Signer.from_private_key(fixed_private_key(32))
T0_NS = 1_800_000_000 * 10**9
MIN_NS = 60 * 10**9
KWH_MJ = meter.MJ_PER_KWH


def body(
    seq: int = 0, prev: bytes = ZERO_DIGEST, start_min: int = 0, **kw: object
) -> pb.MeterReadingBody:
    fields: dict[str, object] = {
        "lab_id": "lab-a",
        "site_id": "dc1",
        "meter_id": "main-1",
        "seq": seq,
        "prev_digest": prev,
        "interval_start_ns": T0_NS + start_min * MIN_NS,
        "interval_end_ns": T0_NS + (start_min + 15) * MIN_NS,
        "energy_mj": 250 * KWH_MJ,  # 250 kWh in 15 minutes: 1 MW
        "source": pb.METER_SOURCE_GATEWAY,
    }
    fields.update(kw)
    return meter.reading_body(**fields)  # type: ignore[arg-type]


def chain(count: int, start_mins: list[int] | None = None) -> list[meter.MeterReading]:
    out: list[meter.MeterReading] = []
    prev = ZERO_DIGEST
    for seq in range(count):
        start = start_mins[seq] if start_mins else 15 * seq
        raw = meter.sign_reading(GATEWAY, body(seq, prev, start))
        reading = meter.verify_reading(raw, GATEWAY.public_key)
        out.append(reading)
        prev = reading.digest
    return out


def test_a_signed_reading_verifies_with_its_figures() -> None:
    raw = meter.sign_reading(GATEWAY, body())
    reading = meter.verify_reading(raw, GATEWAY.public_key)
    assert reading.energy_mj == 250 * KWH_MJ
    assert reading.interval_ns == 15 * MIN_NS
    assert reading.digest == envelope_digest(raw)
    assert reading.raw == raw


def test_another_key_is_refused() -> None:
    raw = meter.sign_reading(OTHER, body())
    with pytest.raises(UnknownKeyError):
        meter.verify_reading(raw, GATEWAY.public_key)


def test_an_attestation_signature_cannot_pass_as_a_reading() -> None:
    raw = sign_envelope(GATEWAY, PayloadType.ATTESTATION, body().SerializeToString())
    with pytest.raises(PayloadTypeError):
        meter.verify_reading(raw, GATEWAY.public_key)


def test_every_flipped_byte_is_caught() -> None:
    raw = meter.sign_reading(GATEWAY, body())
    for i in range(len(raw)):
        tampered = bytearray(raw)
        tampered[i] ^= 0x01
        with pytest.raises(VerificationError):
            meter.verify_reading(bytes(tampered), GATEWAY.public_key)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"interval_end_ns": T0_NS}, "after interval_start_ns"),
        ({"interval_end_ns": T0_NS + 25 * 60 * MIN_NS}, "more than a day"),
        ({"energy_mj": 10**19}, "10 GW"),
        ({"source": pb.METER_SOURCE_UNSPECIFIED}, "source"),
        ({"import_reference": "file.csv:2"}, "import_reference"),
        ({"meter_id": "bad id"}, "meter_id"),
        ({"site_id": "DC1"}, "site_id"),
        ({"seq": 1}, "chain fields"),
    ],
)
def test_bad_bodies_are_refused_by_name(change: dict[str, object], message: str) -> None:
    with pytest.raises(BodyError, match=message):
        body(**change)  # type: ignore[arg-type]


def test_an_import_needs_its_reference() -> None:
    with pytest.raises(BodyError, match="import_reference"):
        body(source=pb.METER_SOURCE_REGULATOR_IMPORT)
    ok = body(source=pb.METER_SOURCE_REGULATOR_IMPORT, import_reference="jan.csv:2")
    assert ok.import_reference == "jan.csv:2"


def test_a_clean_chain_has_no_issue() -> None:
    report = meter.check_meter_sequence(chain(4))
    assert report.sound
    assert report.count == 4
    assert not report.gaps and not report.missing_seqs


def test_reordered_readings_still_check_but_a_swapped_link_is_a_fork() -> None:
    readings = chain(3)
    assert meter.check_meter_sequence(reversed(readings)).sound
    # A reading re-signed with the right seq but not linked to its predecessor.
    relinked = meter.verify_reading(
        meter.sign_reading(GATEWAY, body(2, readings[0].digest, 30)), GATEWAY.public_key
    )
    report = meter.check_meter_sequence([*readings[:2], relinked])
    assert report.forks == (2,)
    assert not report.sound


def test_overlaps_and_gaps_in_time() -> None:
    # Second reading starts 5 minutes early (overlap); third starts 30 minutes late (gap).
    readings = chain(3, start_mins=[0, 10, 55])
    report = meter.check_meter_sequence(readings)
    assert report.overlaps == (1,)
    assert [(g.start_ns, g.end_ns) for g in report.gaps] == [
        (T0_NS + 25 * MIN_NS, T0_NS + 55 * MIN_NS)
    ]


def test_missing_seqs_are_reported() -> None:
    readings = chain(4)
    report = meter.check_meter_sequence([readings[0], readings[3]])
    assert report.missing_seqs == ((1, 2),)
    assert [(g.start_ns, g.end_ns) for g in report.gaps] == [
        (T0_NS + 15 * MIN_NS, T0_NS + 45 * MIN_NS)
    ]


def test_prorating_is_exact_and_never_over_counts() -> None:
    # 100 mJ over 3 ns, asked for 1 ns of it: 33 (rounded down).
    assert meter.prorated_mj(100, 0, 3, 0, 1) == 33
    assert meter.prorated_mj(100, 0, 3, 0, 3) == 100
    assert meter.prorated_mj(100, 0, 3, 5, 9) == 0
    readings = chain(2)
    assert meter.total_mj(readings, T0_NS, T0_NS + 30 * MIN_NS) == 500 * KWH_MJ
    assert meter.total_mj(readings, T0_NS + 10 * MIN_NS, T0_NS + 20 * MIN_NS) == 500 * KWH_MJ // 3
