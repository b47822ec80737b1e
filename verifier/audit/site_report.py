"""Site figures for a report, gathered from the store (the server's side of site power).

    inputs = site_inputs_from_store(view, "lab-a", first_bucket_ns, as_of_ns)
    report = evaluation.evaluate(..., site_inputs=inputs)     # the sites' summaries and bounds

For each site of the lab (the declaration in force at ``as_of``): its meters' readings over the
period, each re-verified under a key declared for its meter; the GPU energy its nodes attested
(every GPU's counter over each accepted window whose counter was usable, rolled up per window at
ingest, and the energy across each energy-bounded gap, which the evaluation adds). The
evaluation then runs the pure accounting of :func:`verifier.accounting.site.summarize_sites`, as the
offline auditor does over a bundle. The cost is the readings and the site nodes' windows of the
period (one small row each), not their envelopes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pausewatch.v1 import attestation_pb2 as apb
from pausewatch.v1 import site_pb2

from attest.attestation import window_energy_mj
from attest.errors import VerificationError
from attest.keys import public_key_from_raw
from attest.meter import MeterReading, verify_reading
from verifier.accounting.policy import record_in_force
from verifier.accounting.site import EnergySpan, SiteInputs, SiteParameters
from verifier.accounting.site_file import site_parameters
from verifier.store.base import ReadView


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
    return EnergySpan(body.window_start_ns, body.window_end_ns, window_energy_mj(body))


def site_inputs_from_store(
    view: ReadView, lab_id: str, first_bucket_ns: int, as_of_ns: int
) -> SiteInputs | None:
    """What the evaluation needs for the lab's sites, from one read view; ``None`` if the lab
    has no site. Windows are those that start in ``[first_bucket_ns, as_of_ns)``, the ones a
    bundle of the same report carries."""
    rows = view.sites(lab_id)
    if not rows:
        return None
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
            meter_rows = view.meter_readings(lab_id, meter_id, first_bucket_ns, as_of_ns)
            for entry in view.entries([r.log_index for r in meter_rows]):
                reading = verify_meter_entry(entry.entry, site.meter_keys.get(meter_id, []))
                readings.setdefault(meter_id, []).append(reading)
                reading_log_index[reading.digest] = entry.index
    site_nodes = sorted({n for site in sites for n in site.params.node_ids})
    window_energy: dict[bytes, list[EnergySpan]] = {}
    # Each accepted window's energy was rolled up at ingest (the store's own verified rows).
    for node_id, start_ns, end_ns, energy_mj in view.window_energy(
        site_nodes, first_bucket_ns, as_of_ns
    ):
        window_energy.setdefault(node_id, []).append(EnergySpan(start_ns, end_ns, energy_mj))
    return SiteInputs(
        sites=tuple((s.params, s.declaration.version) for s in sites),
        readings=readings,
        reading_log_index=reading_log_index,
        window_energy=window_energy,
    )
