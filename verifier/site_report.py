"""Site figures for a report, gathered from the store (the server's side of site power).

    summaries = site_summaries_from_store(view, "lab-a", period_start_ns, as_of_ns,
                                          bucket_ns=60 * 10**9, starts=bucket_starts)
    extra = site_bound_by_bucket(summaries)     # what upper-bound rules add, per bucket

For each site of the lab (the declaration in force at ``as_of``): its meters' readings over the
period, each re-verified under a key declared for its meter; the GPU energy its nodes attested
(every GPU's counter over each accepted window whose counter was usable, and the energy across
each energy-bounded gap), each attestation re-verified under its node's key; then the pure
accounting of :func:`verifier.site.summarize_site`, which the offline auditor runs over a bundle.
The cost is the readings and attestations of the period, not the buckets alone (a rollup per node
would make it cheaper; not done yet).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pausewatch.v1 import attestation_pb2 as apb
from pausewatch.v1 import site_pb2

from attest.attestation import verify_attestation
from attest.envelope import StaticKeyring
from attest.errors import VerificationError
from attest.keys import public_key_from_raw
from attest.meter import MeterReading, verify_reading
from verifier.policy import record_in_force
from verifier.site import EnergySpan, SiteParameters, summarize_site
from verifier.site_file import site_parameters
from verifier.store.base import ReadView

WINDOW_LOOKBACK_NS = 3_600 * 10**9
"""Attestations are looked up from this long before the period, so that a window that started
before it and reaches into it is counted (pro-rated)."""


@dataclass(frozen=True, slots=True)
class SiteInForce:
    """A site declaration in force, with its accounting parameters."""

    declaration: site_pb2.SiteDeclaration
    params: SiteParameters
    meter_keys: dict[str, list[Ed25519PublicKey]]
    """Every key each meter was ever declared with (a reading is checked against these)."""


def sites_in_force(
    versions: Iterable[tuple[site_pb2.SiteDeclaration, int]],
    *,
    lab_node_ids: frozenset[bytes],
    as_of_ns: int,
) -> list[SiteInForce]:
    """From every logged version of every site of a lab (declaration, log index), the version of
    each site in force at ``as_of_ns``, by site id."""
    by_site: dict[str, list[tuple[site_pb2.SiteDeclaration, int]]] = {}
    for declaration, index in versions:
        by_site.setdefault(declaration.site_id, []).append((declaration, index))
    out: list[SiteInForce] = []
    for site_id in sorted(by_site):
        history = by_site[site_id]
        current = record_in_force([(d.effective_from_ns, (d, i)) for d, i in history], as_of_ns)
        if current is None:
            continue
        declaration, index = current
        keys: dict[str, list[Ed25519PublicKey]] = {}
        for old, _ in history:
            for meter in old.meters:
                key = public_key_from_raw(bytes(meter.public_key))
                known = keys.setdefault(meter.meter_id, [])
                if all(k.public_bytes_raw() != key.public_bytes_raw() for k in known):
                    known.append(key)
        out.append(
            SiteInForce(
                declaration=declaration,
                params=site_parameters(declaration, lab_node_ids=lab_node_ids, log_index=index),
                meter_keys=keys,
            )
        )
    return out


def verify_meter_entry(raw: bytes, keys: Sequence[Ed25519PublicKey]) -> MeterReading:
    """A logged reading, verified under any key its meter was declared with."""
    error: VerificationError | None = None
    for key in keys:
        try:
            return verify_reading(raw, key)
        except VerificationError as exc:
            error = exc
    raise error if error is not None else VerificationError("the meter has no declared key")


def window_energy_span(body: apb.AttestationBody) -> EnergySpan:
    """The GPU energy an accepted window attests: every GPU whose counter was usable."""
    energy_mj = sum(
        gpu.energy_end_mj - gpu.energy_start_mj
        for gpu in body.gpus
        if gpu.energy_counter_state == apb.ENERGY_COUNTER_STATE_OK
    )
    return EnergySpan(body.window_start_ns, body.window_end_ns, energy_mj)


def summaries_for(
    sites: Sequence[SiteInForce],
    readings: dict[str, list[MeterReading]],
    reading_log_index: dict[bytes, int],
    energy_by_node: dict[bytes, list[EnergySpan]],
    *,
    starts: Sequence[int],
    bucket_ns: int,
    as_of_ns: int,
) -> list[site_pb2.SiteSummary]:
    """Every site's summary (the part the server and the offline auditor share)."""
    out: list[site_pb2.SiteSummary] = []
    for site in sites:
        spans = [
            span
            for node_id in sorted(site.params.node_ids)
            for span in energy_by_node.get(node_id, [])
        ]
        out.append(
            summarize_site(
                site.params,
                {m: readings.get(m, []) for m in site.params.meter_ids},
                spans,
                starts=starts,
                bucket_ns=bucket_ns,
                as_of_ns=as_of_ns,
                declaration_version=site.declaration.version,
                reading_log_index=reading_log_index,
            )
        )
    return out


def site_summaries_from_store(
    view: ReadView,
    lab_id: str,
    period_start_ns: int,
    as_of_ns: int,
    *,
    bucket_ns: int,
    starts: Sequence[int],
) -> list[site_pb2.SiteSummary]:
    """The lab's site summaries over the report's buckets, from one read view."""
    rows = view.sites(lab_id)
    if not rows:
        return []
    nodes = {node.node_id: node for node in view.list_nodes(lab_id)}
    sites = sites_in_force(
        ((site_pb2.SiteDeclaration.FromString(r.declaration), r.log_index) for r in rows),
        lab_node_ids=frozenset(nodes),
        as_of_ns=as_of_ns,
    )
    readings: dict[str, list[MeterReading]] = {}
    reading_log_index: dict[bytes, int] = {}
    for site in sites:
        for meter_id in site.params.meter_ids:
            meter_rows = view.meter_readings(lab_id, meter_id, period_start_ns, as_of_ns)
            for entry in view.entries([r.log_index for r in meter_rows]):
                reading = verify_meter_entry(entry.entry, site.meter_keys.get(meter_id, []))
                readings.setdefault(meter_id, []).append(reading)
                reading_log_index[reading.digest] = entry.index
    site_nodes = frozenset(n for site in sites for n in site.params.node_ids)
    energy_by_node: dict[bytes, list[EnergySpan]] = {}
    attestation_rows = [
        row
        for row in view.attestations_in(lab_id, period_start_ns - WINDOW_LOOKBACK_NS, as_of_ns)
        if row.node_id in site_nodes and row.window_end_ns > period_start_ns
    ]
    rings: dict[bytes, StaticKeyring] = {}
    for row, entry in zip(
        attestation_rows, view.entries([r.log_index for r in attestation_rows]), strict=True
    ):
        ring = rings.get(row.node_id)
        if ring is None:
            ring = rings[row.node_id] = StaticKeyring()
            ring.add(public_key_from_raw(nodes[row.node_id].public_key))
        verified = verify_attestation(entry.entry, ring)
        energy_by_node.setdefault(row.node_id, []).append(window_energy_span(verified.body))
    for node_id in site_nodes:
        for gap in view.gaps_overlapping(node_id, period_start_ns, as_of_ns):
            if gap.energy_bounded:
                energy_by_node.setdefault(node_id, []).append(
                    EnergySpan(gap.start_ns, gap.end_ns, gap.energy_mj)
                )
    return summaries_for(
        sites,
        readings,
        reading_log_index,
        energy_by_node,
        starts=starts,
        bucket_ns=bucket_ns,
        as_of_ns=as_of_ns,
    )
