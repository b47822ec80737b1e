"""Site accounting: a facility's metered energy against the GPU energy its nodes attested.

    site = SiteParameters(site_id="dc1", lab_id="lab-a", name="DC 1", pue_ppm=1_300_000,
                          non_gpu_load_mw=40_000_000, tolerance_ppm=100_000,
                          node_ids=frozenset({node}), meter_ids=("main-1",))
    buckets = site_buckets(site, {"main-1": readings}, gpu_energy,
                           start_ns=t0, end_ns=t1, bucket_ns=3_600 * 10**9)
    [b.excess_mj for b in buckets]          # IT energy no attested GPU explains, past the slack

The one piece of evidence that does not come from the lab's nodes is the electricity its sites
draw. Per site and time bucket (pure integer arithmetic, no I/O; the verifier and the offline
auditor run the same code):

- **metered**: the site's meters' interval energy, pro-rated evenly over each interval (all an
  interval total says), summed over the site's meters. A bucket is *metered* only if every meter of
  the site has readings across all of it; otherwise its energy is unknown (a meter gap, reported),
  and no bound is drawn from it (a partial sum would under-state the site).
- **IT energy**: metered x 1,000,000 / declared PUE (ppm), less the declared non-GPU IT load x
  time; rounded so that the unexplained energy is never under-stated (IT up, non-GPU down).
- **attested GPU energy**: the GPU energy the site's nodes attested (window energy, and energy
  their counters show between windows), pro-rated into the bucket, rounded down.
- **unexplained** = IT - attested (at least 0); the **allowance** = tolerance (ppm) x IT is slack
  for the declared figures' error; the **excess** beyond it is a finding and bounds compute that no
  agent reported: excess (J) x the highest FLOP per joule of the GPU table, rounded up (an unknown
  GPU could be the most efficient one there is).

What it cannot see: compute within the allowance; GPUs at another, undeclared site; a site whose
declared PUE or non-GPU load is inflated to hide GPU energy (declarations are logged, so they can
be challenged, and a PUE far from the industry's 1.1-1.6 is itself a red flag).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import pairwise

from pausewatch.v1 import site_pb2

from attest import compute
from attest.meter import MeterReading, overlap_ns, prorated_mj

PPM = 1_000_000
NS_PER_MS = 1_000_000
MW_MS_PER_MJ = 1_000
"""mW x ms = uJ: divide by 1,000 for mJ."""
MJ_PER_J = 1_000


@dataclass(frozen=True, slots=True)
class SiteParameters:
    """A site as the regulator declared it (pausewatch.v1.SiteDeclaration, in force)."""

    site_id: str
    lab_id: str
    name: str
    pue_ppm: int
    non_gpu_load_mw: int
    tolerance_ppm: int
    node_ids: frozenset[bytes]
    meter_ids: tuple[str, ...]
    effective_from_ns: int = 0
    log_index: int = -1

    def __post_init__(self) -> None:
        if self.pue_ppm < PPM:
            raise ValueError(f"site {self.site_id}: pue_ppm {self.pue_ppm} is below 1,000,000")
        if not 0 <= self.tolerance_ppm <= PPM:
            raise ValueError(f"site {self.site_id}: tolerance_ppm must be 0 to 1,000,000")
        if self.non_gpu_load_mw < 0:
            raise ValueError(f"site {self.site_id}: non_gpu_load_mw is negative")
        if not self.meter_ids:
            raise ValueError(f"site {self.site_id} has no meter")


@dataclass(frozen=True, slots=True)
class EnergySpan:
    """GPU energy attested over [start_ns, end_ns) by one of the site's nodes."""

    start_ns: int
    end_ns: int
    energy_mj: int


@dataclass(frozen=True, slots=True)
class SiteBucket:
    """One site's figures over one bucket."""

    start_ns: int
    end_ns: int
    metered: bool
    """Every meter of the site has readings across the whole bucket."""
    metered_mj: int
    it_mj: int
    non_gpu_mj: int
    attested_gpu_mj: int
    unexplained_mj: int
    allowance_mj: int
    excess_mj: int
    bound_flop: int
    """Compute the excess energy could have done: excess (J) x the table's best FLOP per joule."""


@dataclass(frozen=True, slots=True)
class UnmeteredStretch:
    """A stretch in which a meter of the site has no reading: the site's energy is unknown."""

    meter_id: str
    start_ns: int
    end_ns: int


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def bound_flop_for_mj(energy_mj: int, flop_per_joule: Fraction | None = None) -> int:
    """FLOP that ``energy_mj`` could have done on the most efficient GPU of the table (rounded up).
    ``flop_per_joule`` overrides the table's best (for tests)."""
    if energy_mj <= 0:
        return 0
    best = compute.table_max_flop_per_joule() if flop_per_joule is None else flop_per_joule
    return _ceil_div(energy_mj * best.numerator, MJ_PER_J * best.denominator)


def covered_ns(readings: Iterable[MeterReading], lo_ns: int, hi_ns: int) -> int:
    """Time of [lo, hi) that ``readings`` (one meter's, without overlaps) cover."""
    return sum(overlap_ns(r.interval_start_ns, r.interval_end_ns, lo_ns, hi_ns) for r in readings)


def unmetered_stretches(
    site: SiteParameters,
    readings_by_meter: Mapping[str, Sequence[MeterReading]],
    start_ns: int,
    end_ns: int,
) -> list[UnmeteredStretch]:
    """For each meter of the site, the parts of [start, end) its readings do not cover."""
    out: list[UnmeteredStretch] = []
    for meter_id in site.meter_ids:
        cursor = start_ns
        ordered = sorted(readings_by_meter.get(meter_id, ()), key=lambda r: r.interval_start_ns)
        for reading in ordered:
            if reading.interval_end_ns <= cursor:
                continue
            if reading.interval_start_ns >= end_ns:
                break
            if reading.interval_start_ns > cursor:
                out.append(UnmeteredStretch(meter_id, cursor, reading.interval_start_ns))
            cursor = max(cursor, reading.interval_end_ns)
        if cursor < end_ns:
            out.append(UnmeteredStretch(meter_id, cursor, end_ns))
    return out


def site_bucket(
    site: SiteParameters,
    readings_by_meter: Mapping[str, Sequence[MeterReading]],
    gpu_energy: Sequence[EnergySpan],
    lo_ns: int,
    hi_ns: int,
    *,
    flop_per_joule: Fraction | None = None,
) -> SiteBucket:
    """The site's figures over [lo, hi)."""
    length_ns = hi_ns - lo_ns
    if length_ns <= 0:
        raise ValueError("a bucket must have a positive length")
    metered = all(
        covered_ns(readings_by_meter.get(m, ()), lo_ns, hi_ns) == length_ns for m in site.meter_ids
    )
    metered_mj = sum(
        prorated_mj(r.energy_mj, r.interval_start_ns, r.interval_end_ns, lo_ns, hi_ns)
        for m in site.meter_ids
        for r in readings_by_meter.get(m, ())
    )
    attested_mj = sum(
        prorated_mj(s.energy_mj, s.start_ns, s.end_ns, lo_ns, hi_ns) for s in gpu_energy
    )
    non_gpu_mj = site.non_gpu_load_mw * length_ns // NS_PER_MS // MW_MS_PER_MJ
    it_mj = max(0, _ceil_div(metered_mj * PPM, site.pue_ppm) - non_gpu_mj)
    unexplained_mj = max(0, it_mj - attested_mj)
    allowance_mj = site.tolerance_ppm * it_mj // PPM
    excess_mj = max(0, unexplained_mj - allowance_mj) if metered else 0
    return SiteBucket(
        start_ns=lo_ns,
        end_ns=hi_ns,
        metered=metered,
        metered_mj=metered_mj,
        it_mj=it_mj,
        non_gpu_mj=non_gpu_mj,
        attested_gpu_mj=attested_mj,
        unexplained_mj=unexplained_mj,
        allowance_mj=allowance_mj,
        excess_mj=excess_mj,
        bound_flop=bound_flop_for_mj(excess_mj, flop_per_joule),
    )


def accounting_spans(
    site: SiteParameters,
    readings_by_meter: Mapping[str, Sequence[MeterReading]],
    gpu_energy: Sequence[EnergySpan],
    lo_ns: int,
    hi_ns: int,
    *,
    flop_per_joule: Fraction | None = None,
) -> list[SiteBucket]:
    """The site's figures over each stretch between two meter-interval boundaries in [lo, hi).

    The comparison is made over the meters' own intervals, where both sides are known: a reading
    says nothing about how power varied inside its interval, so comparing a 15-minute reading with
    minute-by-minute GPU energy would find "unexplained" energy in every quiet minute of a busy
    quarter. (Meters whose intervals are not aligned split each other's intervals; their energy
    is then spread evenly inside them, and the tolerance has to absorb the difference.)"""
    cuts = {lo_ns, hi_ns}
    for meter_id in site.meter_ids:
        for reading in readings_by_meter.get(meter_id, ()):
            for edge in (reading.interval_start_ns, reading.interval_end_ns):
                if lo_ns < edge < hi_ns:
                    cuts.add(edge)
    edges = sorted(cuts)
    return [
        site_bucket(site, readings_by_meter, gpu_energy, a, b, flop_per_joule=flop_per_joule)
        for a, b in pairwise(edges)
        if b > a
    ]


def _shares(value: int, span: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> list[int]:
    """``value`` spread over ``buckets`` in proportion to their overlap with ``span``, in whole
    units that add up to ``value`` exactly (the remainder goes to the largest overlaps)."""
    length = span[1] - span[0]
    overlaps = [overlap_ns(span[0], span[1], b0, b1) for b0, b1 in buckets]
    parts = [value * o // length for o in overlaps]
    left = value - sum(parts)
    for i in sorted(range(len(buckets)), key=lambda i: -overlaps[i])[:left]:
        parts[i] += 1
    return parts


def spread_to_buckets(
    spans: Sequence[SiteBucket], buckets: Sequence[tuple[int, int]]
) -> list[SiteBucket]:
    """The spans' figures on the report's buckets: each spread by time, exactly; a bucket is
    metered when every span it touches is."""
    fields = (
        "metered_mj",
        "it_mj",
        "non_gpu_mj",
        "attested_gpu_mj",
        "unexplained_mj",
        "allowance_mj",
        "excess_mj",
        "bound_flop",
    )
    sums = [dict.fromkeys(fields, 0) for _ in buckets]
    metered = [True] * len(buckets)
    for span in spans:
        window = (span.start_ns, span.end_ns)
        touched = [i for i, (b0, b1) in enumerate(buckets) if overlap_ns(*window, b0, b1) > 0]
        if not touched:
            continue
        for name in fields:
            for i, part in zip(
                touched,
                _shares(getattr(span, name), window, [buckets[i] for i in touched]),
                strict=True,
            ):
                sums[i][name] += part
        if not span.metered:
            for i in touched:
                metered[i] = False
    return [
        SiteBucket(start_ns=b0, end_ns=b1, metered=metered[i], **sums[i])
        for i, (b0, b1) in enumerate(buckets)
    ]


def site_buckets(
    site: SiteParameters,
    readings_by_meter: Mapping[str, Sequence[MeterReading]],
    gpu_energy: Sequence[EnergySpan],
    *,
    start_ns: int,
    end_ns: int,
    bucket_ns: int,
    flop_per_joule: Fraction | None = None,
) -> list[SiteBucket]:
    """The site's figures per bucket of ``bucket_ns`` from ``start_ns`` (bucket-aligned by the
    caller) to ``end_ns`` (the last bucket may be shorter), compared over the meters' intervals
    (:func:`accounting_spans`) and spread onto the buckets."""
    if bucket_ns <= 0:
        raise ValueError("bucket_ns must be positive")
    buckets = [(b, min(b + bucket_ns, end_ns)) for b in range(start_ns, end_ns, bucket_ns)]
    spans = accounting_spans(
        site, readings_by_meter, gpu_energy, start_ns, end_ns, flop_per_joule=flop_per_joule
    )
    return spread_to_buckets(spans, buckets)


@dataclass(frozen=True, slots=True)
class SiteTotals:
    """A site's figures summed over a period."""

    metered_mj: int
    it_mj: int
    attested_gpu_mj: int
    unexplained_mj: int
    excess_mj: int
    bound_flop: int
    metered_ns: int
    unmetered_ns: int

    @property
    def unexplained_ppm(self) -> int:
        """Unexplained IT energy as a share of IT energy (ppm; 0 when nothing was metered)."""
        return self.unexplained_mj * PPM // self.it_mj if self.it_mj else 0


def site_totals(buckets: Sequence[SiteBucket]) -> SiteTotals:
    """Sums over metered stretches (unmetered ones count only as unmetered time); pass the
    accounting spans for exact figures."""
    metered = [b for b in buckets if b.metered]
    return SiteTotals(
        metered_mj=sum(b.metered_mj for b in metered),
        it_mj=sum(b.it_mj for b in metered),
        attested_gpu_mj=sum(b.attested_gpu_mj for b in metered),
        unexplained_mj=sum(b.unexplained_mj for b in metered),
        excess_mj=sum(b.excess_mj for b in metered),
        bound_flop=sum(b.bound_flop for b in metered),
        metered_ns=sum(b.end_ns - b.start_ns for b in metered),
        unmetered_ns=sum(b.end_ns - b.start_ns for b in buckets if not b.metered),
    )


def summarize_site(
    site: SiteParameters,
    readings_by_meter: Mapping[str, Sequence[MeterReading]],
    gpu_energy: Sequence[EnergySpan],
    *,
    starts: Sequence[int],
    bucket_ns: int,
    as_of_ns: int,
    declaration_version: int,
    reading_log_index: Mapping[bytes, int],
) -> site_pb2.SiteSummary:
    """A site's summary over the report's buckets (``starts``, each ``bucket_ns`` long, the last
    cut at ``as_of_ns``): the one computation the server and the offline auditor both run.
    ``reading_log_index`` maps a reading's digest to its log index (the evidence cited)."""
    edges = [(start, min(start + bucket_ns, as_of_ns)) for start in starts if start < as_of_ns]
    spans = (
        accounting_spans(site, readings_by_meter, gpu_energy, edges[0][0], edges[-1][1])
        if edges
        else []
    )
    buckets = spread_to_buckets(spans, edges)
    totals = site_totals(spans)
    summary = site_pb2.SiteSummary(
        site_id=site.site_id,
        name=site.name,
        declaration_version=declaration_version,
        declaration_log_index=max(site.log_index, 0),
        pue_ppm=site.pue_ppm,
        non_gpu_load_mw=site.non_gpu_load_mw,
        tolerance_ppm=site.tolerance_ppm,
        node_ids=sorted(site.node_ids),
        meter_ids=list(site.meter_ids),
        metered_mj=totals.metered_mj,
        it_mj=totals.it_mj,
        attested_gpu_mj=totals.attested_gpu_mj,
        unexplained_mj=totals.unexplained_mj,
        excess_mj=totals.excess_mj,
        bound_flop=str(totals.bound_flop),
        unexplained_ppm=totals.unexplained_ppm,
        metered_ns=totals.metered_ns,
        unmetered_ns=totals.unmetered_ns,
    )
    for b in buckets:
        summary.series.append(
            site_pb2.SiteSeriesPoint(
                bucket_start_ns=b.start_ns,
                bucket_end_ns=b.end_ns,
                metered=b.metered,
                metered_mj=b.metered_mj,
                it_mj=b.it_mj,
                attested_gpu_mj=b.attested_gpu_mj,
                unexplained_mj=b.unexplained_mj,
                allowance_mj=b.allowance_mj,
                excess_mj=b.excess_mj,
                bound_flop=str(b.bound_flop),
            )
        )
    if buckets:
        for stretch in unmetered_stretches(
            site, readings_by_meter, buckets[0].start_ns, buckets[-1].end_ns
        ):
            summary.unmetered.append(
                site_pb2.SiteUnmetered(
                    meter_id=stretch.meter_id, start_ns=stretch.start_ns, end_ns=stretch.end_ns
                )
            )
        lo, hi = buckets[0].start_ns, buckets[-1].end_ns
        summary.reading_log_indices.extend(
            sorted(
                {
                    reading_log_index[reading.digest]
                    for meter_id in site.meter_ids
                    for reading in readings_by_meter.get(meter_id, ())
                    if overlap_ns(reading.interval_start_ns, reading.interval_end_ns, lo, hi) > 0
                    and reading.digest in reading_log_index
                }
            )
        )
    return summary


def site_bound_by_bucket(summaries: Sequence[site_pb2.SiteSummary]) -> dict[int, int]:
    """The sites' compute bounds summed per bucket start: what upper-bound rules add."""
    out: dict[int, int] = {}
    for summary in summaries:
        for point in summary.series:
            bound = int(point.bound_flop or "0")
            if bound:
                out[point.bucket_start_ns] = out.get(point.bucket_start_ns, 0) + bound
    return out


@dataclass(frozen=True, slots=True)
class SiteInputs:
    """What a report needs for a lab's sites, gathered from the store or from a bundle.

    ``window_energy`` holds each node's attested window energy (windows that start in the report's
    buckets); the evaluation adds the energy of the node's energy-bounded gaps itself, from the
    gaps it computes, so that server and auditor count the same."""

    sites: tuple[tuple[SiteParameters, int], ...]
    """(parameters, declaration version) of each site in force, by site id."""
    readings: Mapping[str, Sequence[MeterReading]]
    reading_log_index: Mapping[bytes, int]
    window_energy: Mapping[bytes, Sequence[EnergySpan]]


def summarize_sites(
    inputs: SiteInputs,
    gap_energy: Mapping[bytes, Sequence[EnergySpan]],
    *,
    starts: Sequence[int],
    bucket_ns: int,
    as_of_ns: int,
) -> list[site_pb2.SiteSummary]:
    """Every site's summary: its nodes' window energy and gap energy against its meters."""
    out: list[site_pb2.SiteSummary] = []
    for params, version in inputs.sites:
        spans = [
            span
            for node_id in sorted(params.node_ids)
            for source in (inputs.window_energy, gap_energy)
            for span in source.get(node_id, ())
        ]
        out.append(
            summarize_site(
                params,
                {m: inputs.readings.get(m, ()) for m in params.meter_ids},
                spans,
                starts=starts,
                bucket_ns=bucket_ns,
                as_of_ns=as_of_ns,
                declaration_version=version,
                reading_log_index=inputs.reading_log_index,
            )
        )
    return out
