"""``pausewatch site``: the regulator's meter data into the verifier.

    pausewatch site import feed.csv --lab lab-a --site dc1 --key import.key --verifier v:7443
    pausewatch site head --lab lab-a --meter utility-feed --verifier v:7443

``import`` reads an interval file (:mod:`verifier.cli.meter_csv`), continues each meter's chain from
where the verifier has it (``GetMeterHead``), signs each interval with the regulator's import key
(the key the site file declares for that meter) and submits them, oldest first; an interval the
verifier already holds is skipped, so an import can be run again after a failure. It exits 0 when
every interval was accepted, 3 when the verifier refused any (each refusal printed with its reason).
"""

from __future__ import annotations

from pathlib import Path

import click
from pausewatch.v1 import site_pb2 as pb
from pausewatch.v1 import site_pb2_grpc as pb_grpc

from attest.envelope import envelope_digest
from attest.exitcodes import ExitCode
from attest.ids import ZERO_DIGEST
from attest.keys import Ed25519Signer, load_private_key
from attest.meter import reading_body, sign_reading
from verifier.cli.client import VerifierTarget, open_channel
from verifier.cli.common import emit, verifier_options
from verifier.cli.meter_csv import Interval, parse_interval_csv

BATCH = 500


@click.group()
def site() -> None:
    """Site power: meter readings for the site accounts (docs/site-power.md)."""


def _head(stub: pb_grpc.SiteServiceStub, lab_id: str, meter_id: str) -> pb.GetMeterHeadResponse:
    return stub.GetMeterHead(pb.GetMeterHeadRequest(lab_id=lab_id, meter_id=meter_id), timeout=30)


@site.command("head")
@verifier_options
@click.option("--lab", "lab_id", required=True, help="The lab.")
@click.option("--meter", "meter_id", required=True, help="The meter.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def head_command(target: VerifierTarget, lab_id: str, meter_id: str, as_json: bool) -> None:
    """Where a meter's chain stands at the verifier."""
    with open_channel(target) as channel:
        answer = _head(pb_grpc.SiteServiceStub(channel), lab_id, meter_id)
    result = {
        "lab_id": lab_id,
        "meter_id": meter_id,
        "has_head": answer.has_head,
        "seq": answer.seq,
        "digest": answer.digest.hex(),
        "interval_end_ns": answer.interval_end_ns,
    }
    text = (
        f"meter {meter_id}: seq {answer.seq}, interval ends {answer.interval_end_ns} ns"
        if answer.has_head
        else f"meter {meter_id}: no reading accepted yet"
    )
    emit(result, as_json, text)


@site.command("import")
@verifier_options
@click.argument("csv_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--lab", "lab_id", required=True, help="The lab whose site this is.")
@click.option("--site", "site_id", required=True, help="The site, as its site file names it.")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The regulator's import key (the public key the site file declares for these meters).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def import_command(
    ctx: click.Context,
    *,
    target: VerifierTarget,
    csv_file: Path,
    lab_id: str,
    site_id: str,
    key_path: Path,
    as_json: bool,
) -> None:
    """Import a file of meter intervals, signed with the regulator's import key."""
    intervals = parse_interval_csv(csv_file.read_text(encoding="utf-8-sig"), source=csv_file.name)
    signer = Ed25519Signer.from_private_key(load_private_key(key_path))
    by_meter: dict[str, list[Interval]] = {}
    for interval in intervals:
        by_meter.setdefault(interval.meter_id, []).append(interval)
    accepted = skipped = 0
    refused: list[dict[str, object]] = []
    with open_channel(target) as channel:
        stub = pb_grpc.SiteServiceStub(channel)
        for meter_id, rows in sorted(by_meter.items()):
            head = _head(stub, lab_id, meter_id)
            seq = head.seq + 1 if head.has_head else 0
            prev = bytes(head.digest) if head.has_head else ZERO_DIGEST
            pending: list[tuple[Interval, bytes]] = []
            for row in rows:
                if head.has_head and row.interval_start_ns < head.interval_end_ns:
                    skipped += 1  # the verifier holds this stretch already
                    continue
                body = reading_body(
                    lab_id=lab_id,
                    site_id=site_id,
                    meter_id=meter_id,
                    seq=seq,
                    prev_digest=prev,
                    interval_start_ns=row.interval_start_ns,
                    interval_end_ns=row.interval_end_ns,
                    energy_mj=row.energy_mj,
                    source=pb.METER_SOURCE_REGULATOR_IMPORT,
                    import_reference=row.reference,
                )
                raw = sign_reading(signer, body)
                pending.append((row, raw))
                prev = envelope_digest(raw)
                seq += 1
            for start in range(0, len(pending), BATCH):
                chunk = pending[start : start + BATCH]
                response = stub.SubmitMeterReadings(
                    pb.SubmitMeterReadingsRequest(envelopes=[raw for _, raw in chunk]), timeout=120
                )
                for (row, _), receipt in zip(chunk, response.receipts, strict=True):
                    if receipt.accepted:
                        accepted += 1
                    else:
                        refused.append(
                            {
                                "line": row.reference,
                                "reason": pb.MeterRejectReason.Name(receipt.reason),
                                "detail": receipt.detail,
                            }
                        )
                if any(not r.accepted for r in response.receipts):
                    break  # the chain is broken here: what follows would be refused too
    lines = [f"{accepted} intervals accepted, {skipped} already held, {len(refused)} refused"]
    lines += [f"  {r['line']}: {r['reason']}: {r['detail']}" for r in refused]
    emit(
        {"accepted": accepted, "skipped": skipped, "refused": refused},
        as_json,
        "\n".join(lines),
    )
    if refused:
        ctx.exit(ExitCode.VERIFICATION_FAILED)
