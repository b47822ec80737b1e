"""Site accounting: metered IT energy against attested GPU energy, and the compute bound."""

from __future__ import annotations

from fractions import Fraction

import pytest
from pausewatch.v1 import site_pb2 as pb

from attest import compute, meter
from attest.ids import ZERO_DIGEST
from attest.keys import Ed25519Signer
from tests.builders import fixed_private_key
from verifier.accounting import site

GATEWAY = Ed25519Signer.from_private_key(fixed_private_key(31))
T0_NS = 1_800_000_000 * 10**9 // (3_600 * 10**9) * (3_600 * 10**9)
MIN_NS = 60 * 10**9
HOUR_NS = 60 * MIN_NS
KWH_MJ = meter.MJ_PER_KWH
NODE = b"\x01" * 32

SITE = site.SiteParameters(
    site_id="dc1",
    lab_id="lab-a",
    name="DC 1",
    pue_ppm=1_250_000,
    non_gpu_load_mw=100_000_000,  # 100 kW
    tolerance_ppm=50_000,  # 5 %
    node_ids=frozenset({NODE}),
    meter_ids=("main-1",),
)


def readings(kwh_per_quarter: list[int], meter_id: str = "main-1") -> list[meter.MeterReading]:
    out: list[meter.MeterReading] = []
    prev = ZERO_DIGEST
    for seq, kwh in enumerate(kwh_per_quarter):
        body = meter.reading_body(
            lab_id="lab-a",
            site_id="dc1",
            meter_id=meter_id,
            seq=seq,
            prev_digest=prev,
            interval_start_ns=T0_NS + 15 * seq * MIN_NS,
            interval_end_ns=T0_NS + 15 * (seq + 1) * MIN_NS,
            energy_mj=kwh * KWH_MJ,
            source=pb.METER_SOURCE_GATEWAY,
        )
        reading = meter.verify_reading(meter.sign_reading(GATEWAY, body), GATEWAY.public_key)
        out.append(reading)
        prev = reading.digest
    return out


def test_an_honest_site_is_within_tolerance() -> None:
    # 1.25 MW metered for an hour; PUE 1.25 -> 1 MW IT; 100 kW non-GPU -> 900 kWh of GPU energy.
    metered = readings([312_500 // 1000] * 4)  # 312.5 kWh rounded down: 312 kWh a quarter
    gpu = [site.EnergySpan(T0_NS, T0_NS + HOUR_NS, 880 * KWH_MJ)]
    [bucket] = site.site_buckets(
        SITE, {"main-1": metered}, gpu, start_ns=T0_NS, end_ns=T0_NS + HOUR_NS, bucket_ns=HOUR_NS
    )
    metered_mj = 4 * 312 * KWH_MJ
    it_mj = -(-metered_mj * 1_000_000 // 1_250_000) - 100 * KWH_MJ
    assert bucket.metered
    assert bucket.metered_mj == metered_mj
    assert bucket.it_mj == it_mj
    assert bucket.unexplained_mj == it_mj - 880 * KWH_MJ
    assert bucket.unexplained_mj <= bucket.allowance_mj
    assert bucket.excess_mj == 0
    assert bucket.bound_flop == 0


def test_hidden_gpus_drawing_power_give_an_excess_and_a_bound() -> None:
    # The site draws 500 kWh more per hour than the attested GPUs explain.
    metered = readings([(312 + 125) for _ in range(4)])
    gpu = [site.EnergySpan(T0_NS, T0_NS + HOUR_NS, 880 * KWH_MJ)]
    [bucket] = site.site_buckets(
        SITE, {"main-1": metered}, gpu, start_ns=T0_NS, end_ns=T0_NS + HOUR_NS, bucket_ns=HOUR_NS
    )
    it_mj = -(-(4 * 437 * KWH_MJ) * 1_000_000 // 1_250_000) - 100 * KWH_MJ
    unexplained = it_mj - 880 * KWH_MJ
    allowance = 50_000 * it_mj // 1_000_000
    assert bucket.excess_mj == unexplained - allowance
    best = compute.table_max_flop_per_joule()
    expected_flop = -(-bucket.excess_mj * best.numerator // (1000 * best.denominator))
    assert bucket.bound_flop == expected_flop
    # About 1.3 GJ at the best efficiency in the table: far above zero, far below nonsense.
    assert 10**20 < bucket.bound_flop < 10**23


def test_a_meter_gap_makes_the_bucket_unmetered_and_is_listed() -> None:
    metered = readings([300, 300, 300, 300])
    without_third = [r for r in metered if r.seq != 2]
    buckets = site.site_buckets(
        SITE,
        {"main-1": without_third},
        [],
        start_ns=T0_NS,
        end_ns=T0_NS + HOUR_NS,
        bucket_ns=15 * MIN_NS,
    )
    assert [b.metered for b in buckets] == [True, True, False, True]
    assert buckets[2].excess_mj == 0  # no bound from a partial sum
    stretches = site.unmetered_stretches(SITE, {"main-1": without_third}, T0_NS, T0_NS + HOUR_NS)
    assert stretches == [site.UnmeteredStretch("main-1", T0_NS + 30 * MIN_NS, T0_NS + 45 * MIN_NS)]
    totals = site.site_totals(buckets)
    assert totals.unmetered_ns == 15 * MIN_NS
    assert totals.metered_ns == 45 * MIN_NS


def test_every_meter_must_cover_the_bucket() -> None:
    two = site.SiteParameters(
        site_id="dc1",
        lab_id="lab-a",
        name="DC 1",
        pue_ppm=1_000_000,
        non_gpu_load_mw=0,
        tolerance_ppm=0,
        node_ids=frozenset(),
        meter_ids=("main-1", "main-2"),
    )
    buckets = site.site_buckets(
        two,
        {"main-1": readings([10, 10, 10, 10])},
        [],
        start_ns=T0_NS,
        end_ns=T0_NS + HOUR_NS,
        bucket_ns=HOUR_NS,
    )
    assert not buckets[0].metered
    assert (
        len(site.unmetered_stretches(two, {"main-1": readings([10] * 4)}, T0_NS, T0_NS + HOUR_NS))
        == 1
    )


def test_bound_rounds_up_and_takes_an_override() -> None:
    assert site.bound_flop_for_mj(1, Fraction(3, 1)) == 1  # 0.003 FLOP rounds up to 1
    assert site.bound_flop_for_mj(1000, Fraction(3, 1)) == 3
    assert site.bound_flop_for_mj(0) == 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("pue_ppm", 900_000, "below"),
        ("tolerance_ppm", 2_000_000, "tolerance"),
        ("non_gpu_load_mw", -1, "negative"),
        ("meter_ids", (), "no meter"),
    ],
)
def test_bad_site_parameters_are_refused(field: str, value: object, message: str) -> None:
    args: dict[str, object] = {
        "site_id": "dc1",
        "lab_id": "lab-a",
        "name": "x",
        "pue_ppm": 1_200_000,
        "non_gpu_load_mw": 0,
        "tolerance_ppm": 0,
        "node_ids": frozenset(),
        "meter_ids": ("m",),
    }
    args[field] = value
    with pytest.raises(ValueError, match=message):
        site.SiteParameters(**args)  # type: ignore[arg-type]


def test_summary_cites_its_readings_and_lists_unmetered_time() -> None:
    metered = readings([300, 300, 300, 300])
    without_last = metered[:3]
    gpu = [site.EnergySpan(T0_NS, T0_NS + HOUR_NS, 880 * KWH_MJ)]
    index = {r.digest: 100 + r.seq for r in metered}
    summary = site.summarize_site(
        SITE,
        {"main-1": without_last},
        gpu,
        starts=[T0_NS + i * 15 * MIN_NS for i in range(4)],
        bucket_ns=15 * MIN_NS,
        as_of_ns=T0_NS + HOUR_NS,
        declaration_version=2,
        reading_log_index=index,
    )
    assert list(summary.reading_log_indices) == [100, 101, 102]
    assert [p.metered for p in summary.series] == [True, True, True, False]
    assert [(u.meter_id, u.start_ns, u.end_ns) for u in summary.unmetered] == [
        ("main-1", T0_NS + 45 * MIN_NS, T0_NS + HOUR_NS)
    ]
    assert summary.metered_ns == 45 * MIN_NS
    assert summary.declaration_version == 2
    assert summary.metered_mj == 900 * KWH_MJ
    assert int(summary.bound_flop) == sum(int(p.bound_flop) for p in summary.series)


def test_site_bounds_add_up_per_bucket() -> None:
    metered = readings([437] * 4)
    gpu = [site.EnergySpan(T0_NS, T0_NS + HOUR_NS, 880 * KWH_MJ)]
    args = {
        "starts": [T0_NS, T0_NS + 30 * MIN_NS],
        "bucket_ns": 30 * MIN_NS,
        "as_of_ns": T0_NS + HOUR_NS,
        "declaration_version": 1,
        "reading_log_index": {},
    }
    one = site.summarize_site(SITE, {"main-1": metered}, gpu, **args)  # type: ignore[arg-type]
    per_bucket = site.site_bound_by_bucket([one, one])
    assert set(per_bucket) == {T0_NS, T0_NS + 30 * MIN_NS}
    assert per_bucket[T0_NS] == 2 * int(one.series[0].bound_flop) > 0


def test_a_busy_start_of_a_quarter_is_not_unexplained_in_its_quiet_minutes() -> None:
    # An honest quarter: the GPUs draw 900 kWh-equivalent... in its first five minutes only, and
    # the meter's one reading covers the quarter. Minute by minute the meter's even spread would
    # look unexplained in minutes 6 to 15; over the meter's interval it is exactly explained.
    quarter = readings([312])  # 312 kWh metered: IT 249.6 kWh less 25 kWh of non-GPU load
    it_mj = -(-(312 * KWH_MJ) * 1_000_000 // 1_250_000) - 25 * KWH_MJ
    gpu = [site.EnergySpan(T0_NS, T0_NS + 5 * MIN_NS, it_mj)]
    buckets = site.site_buckets(
        SITE, {"main-1": quarter}, gpu, start_ns=T0_NS, end_ns=T0_NS + 15 * MIN_NS, bucket_ns=MIN_NS
    )
    assert len(buckets) == 15
    assert all(b.metered for b in buckets)
    assert sum(b.excess_mj for b in buckets) == 0
    assert sum(b.unexplained_mj for b in buckets) == 0
    assert sum(b.it_mj for b in buckets) == it_mj  # spread exactly, nothing lost to rounding


def test_hidden_energy_is_spread_exactly_over_the_buckets() -> None:
    quarter = readings([500])
    buckets = site.site_buckets(
        SITE,
        {"main-1": quarter},
        [],
        start_ns=T0_NS,
        end_ns=T0_NS + 15 * MIN_NS,
        bucket_ns=7 * MIN_NS,
    )
    [span] = site.accounting_spans(SITE, {"main-1": quarter}, [], T0_NS, T0_NS + 15 * MIN_NS)
    assert [b.end_ns - b.start_ns for b in buckets] == [7 * MIN_NS, 7 * MIN_NS, MIN_NS]
    assert sum(b.excess_mj for b in buckets) == span.excess_mj > 0
    assert sum(b.bound_flop for b in buckets) == span.bound_flop
    assert buckets[0].excess_mj >= buckets[2].excess_mj * 7 - 7
