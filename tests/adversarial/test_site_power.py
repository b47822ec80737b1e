"""Site power against a real verifier process: a lab that runs GPUs with no agent and never
declares them leaves no attestation, but its site meter still sees their energy.

The lab: one node of two H100s attesting honestly (350 W each), a declared non-GPU load of 2 kW,
a declared PUE of 1.25, a 10 % tolerance, and a meter gateway signing 15-minute readings. The
honest control's meter reads exactly what that explains; the dishonest lab's meter also carries
eight hidden H100s at 700 W. Reports over the hour and over a slice of it, and a bundle re-verified
offline, must say COMPLIANT for the first and VIOLATION (with the site's unexplained energy and its
compute bound) for the second. The meter's own evidence is checked too: forged, forked and
re-ordered readings are refused, and a missing reading is reported.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pausewatch.v1 import registry_pb2 as rpb
from pausewatch.v1 import site_pb2 as pb
from pausewatch.v1 import site_pb2_grpc as pb_grpc

from attest import meter
from attest.envelope import PayloadType, sign_envelope
from attest.ids import ZERO_DIGEST
from attest.keys import Ed25519Signer
from tests.builders import TestNode, fixed_private_key
from tests.meters import NON_GPU_W, QUARTER_NS, gateway_readings, site_file
from tests.verifier_harness import (
    Client,
    RunningVerifier,
    pausewatch,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)

S = 10**9
MINUTE = 60 * S
QUARTER = QUARTER_NS
GATEWAY = Ed25519Signer.from_private_key(fixed_private_key(301))
STRANGER = Ed25519Signer.from_private_key(fixed_private_key(302))
HONEST_W = 2 * 350 + NON_GPU_W  # the node's GPUs and the declared non-GPU load: IT power
HIDDEN_W = 8 * 700  # eight H100s at board power, no agent, never declared

POLICY = """
format_version = 1
policy_id = "pause"
version = 1
lab_id = "lab-a"

[[rules]]
id = "pause"
kind = "cumulative_flop"
window = "1h"
limit_flop = "1e19"

[[rules]]
id = "site-energy"
kind = "cumulative_flop"
window = "1h"
limit_flop = "1e19"
figure = "site_energy"
"""


@dataclass
class Lab:
    verifier: RunningVerifier
    client: Client
    sites: pb_grpc.SiteServiceStub
    t0: int
    directory: Path


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    directory = tmp_path / "v"
    directory.mkdir()
    (directory / "dc1.toml").write_text(site_file(GATEWAY), encoding="utf-8")
    files = write_verifier_files(directory, policy=POLICY, extra_lab='sites = ["dc1.toml"]')
    running = start_verifier_process(files, tmp_path / "verifier.log")
    try:
        now = time.time_ns()
        t0 = now - now % QUARTER - 8 * QUARTER
        channel = running.channel()
        client = Client(channel, files.operator)
        node = TestNode.from_seed(300, t0_ns=t0)
        client.enroll(node, created_at_ns=t0 - S)
        declaration = rpb.InventoryDeclaration(
            format_version=1,
            lab_id="lab-a",
            version=1,
            gpus=[rpb.GpuIdentity(uuid=node.gpu_uuid(i)) for i in range(2)],
            effective_from_ns=t0 - MINUTE,
            created_at_ns=time.time_ns(),
        )
        client.registry.DeclareInventory(
            rpb.DeclareInventoryRequest(
                declaration_envelope=sign_envelope(
                    files.operator, PayloadType.INVENTORY, declaration.SerializeToString()
                )
            )
        )
        receipts = client.submit(node.chain(60))  # an hour of 60 s windows, 350 W a GPU
        assert all(r.status == 1 for r in receipts)
        yield Lab(running, client, pb_grpc.SiteServiceStub(channel), t0, tmp_path)
    finally:
        stop_process(running)


def readings(t0: int, watts: int, quarters: int = 4, skip: int | None = None) -> list[bytes]:
    return gateway_readings(GATEWAY, t0, watts, quarters, skip)


def submit(lab: Lab, raws: list[bytes]) -> list[pb.MeterReceipt]:
    response = lab.sites.SubmitMeterReadings(
        pb.SubmitMeterReadingsRequest(envelopes=raws), timeout=30
    )
    return list(response.receipts)


def span(lab: Lab, start_min: int, end_min: int) -> list[str]:
    def utc(t: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t // S))

    return [
        "--lab",
        "lab-a",
        "--since",
        utc(lab.t0 + start_min * MINUTE),
        "--until",
        utc(lab.t0 + end_min * MINUTE),
    ]


def report(lab: Lab, start_min: int, end_min: int) -> tuple[int, dict[str, object]]:
    run = pausewatch(
        "audit", "report", *lab.verifier.cli_target(), *span(lab, start_min, end_min), "--json"
    )
    assert run.returncode in (0, 1), run.stderr
    return run.returncode, json.loads(run.stdout)


def site_of(result: dict[str, object]) -> dict[str, object]:
    [site] = result["sites"]  # type: ignore[misc]
    return site  # type: ignore[no-any-return]


def rule(result: dict[str, object], rule_id: str) -> dict[str, object]:
    [found] = [r for r in result["rules"] if r["rule_id"] == rule_id]  # type: ignore[attr-defined]
    return found  # type: ignore[no-any-return]


def verify_bundle(lab: Lab, start_min: int, end_min: int) -> dict[str, object]:
    bundle = lab.directory / f"bundle-{start_min}-{end_min}.pwbundle"
    exported = pausewatch(
        "audit",
        "export",
        *lab.verifier.cli_target(),
        *span(lab, start_min, end_min),
        "--out",
        str(bundle),
    )
    assert exported.returncode == 0, exported.stderr
    checkpoint = pausewatch("log", "checkpoint", *lab.verifier.cli_target(), "--json")
    log_key = json.loads(checkpoint.stdout)["verifier_key"]
    verified = pausewatch("audit", "verify-bundle", str(bundle), "--log-key", log_key, "--json")
    result: dict[str, object] = json.loads(verified.stdout)
    assert result["ok"], verified.stdout
    assert result["agrees_with_server"], verified.stdout
    return result


def test_an_honest_site_within_tolerance_is_compliant(lab: Lab) -> None:
    assert all(r.accepted for r in submit(lab, readings(lab.t0, HONEST_W)))
    for start_min, end_min in ((0, 60), (15, 30)):
        code, result = report(lab, start_min, end_min)
        assert (code, result["verdict"]) == (0, "VERDICT_COMPLIANT"), result.get("reasons")
        site = site_of(result)
        assert int(site["metered_mj"]) > 0
        assert int(site.get("excess_mj", 0)) == 0
        assert int(site.get("unexplained_mj", 0)) == 0  # the meter says what the agents say
        assert rule(result, "site-energy")["outcome"] == "RULE_OUTCOME_PASS"
    assert verify_bundle(lab, 0, 60)["verdict"] == "VERDICT_COMPLIANT"


def test_hidden_gpus_drawing_power_are_a_violation(lab: Lab) -> None:
    assert all(r.accepted for r in submit(lab, readings(lab.t0, HONEST_W + HIDDEN_W)))
    for start_min, end_min in ((0, 60), (15, 30), (40, 45)):
        code, result = report(lab, start_min, end_min)
        assert (code, result["verdict"]) == (1, "VERDICT_VIOLATION"), (start_min, end_min)
        site = site_of(result)
        minutes = end_min - start_min
        # 5.6 kW of IT power nothing attested explains, less the 10 % slack of the IT energy
        # (IT: the GPUs, attested and hidden; the declared 2 kW non-GPU load is not IT energy
        # that GPUs must explain).
        it_w = HONEST_W + HIDDEN_W - NON_GPU_W
        expected_excess_mj = (HIDDEN_W - it_w // 10) * 60 * minutes * 1000
        assert abs(int(site["excess_mj"]) - expected_excess_mj) <= minutes * 1000
        assert int(site["bound_flop"]) > 10**19
        assert rule(result, "pause")["outcome"] == "RULE_OUTCOME_VIOLATION"
        assert rule(result, "site-energy")["outcome"] == "RULE_OUTCOME_VIOLATION"
        assert site["reading_log_indices"], "the readings are the evidence"
    assert verify_bundle(lab, 0, 60)["verdict"] == "VERDICT_VIOLATION"
    # The person reading the report sees the site, in text and on the page.
    html = lab.directory / "report.html"
    text = pausewatch(
        "audit", "report", *lab.verifier.cli_target(), *span(lab, 0, 60), "--html", str(html)
    )
    assert text.returncode == 1
    assert "sites (1)" in text.stdout and "dc1" in text.stdout
    page = html.read_text(encoding="utf-8")
    assert 'id="sites"' in page and 'id="site-chart-0"' in page
    assert 'class="site-excess"' in page  # the buckets with unexplained energy are shaded
    assert "badge-unaccounted" in page


def test_forged_forked_and_reordered_readings_are_refused(lab: Lab) -> None:
    honest = readings(lab.t0, HONEST_W)
    # A reading signed by a key no meter is declared with.
    forged = meter.sign_reading(
        STRANGER,
        meter.reading_body(
            lab_id="lab-a",
            site_id="dc1",
            meter_id="main-1",
            seq=0,
            prev_digest=ZERO_DIGEST,
            interval_start_ns=lab.t0,
            interval_end_ns=lab.t0 + QUARTER,
            energy_mj=1,
            source=pb.METER_SOURCE_GATEWAY,
        ),
    )
    [r_forged] = submit(lab, [forged])
    assert (r_forged.accepted, r_forged.reason) == (False, pb.METER_REJECT_REASON_UNKNOWN_METER)
    # Re-ordered: the third reading first jumps the chain (accepted, a gap on record), and the
    # second then arrives behind the head and is refused.
    first, second, third = submit(lab, [honest[0], honest[2], honest[1]])
    assert first.accepted and second.accepted
    assert (third.accepted, third.reason) == (False, pb.METER_REJECT_REASON_CHAIN)
    # Forked: another reading for an accepted seq (a lower one, to hide energy).
    lower = readings(lab.t0, 100)[0]
    [r_fork] = submit(lab, [lower])
    assert (r_fork.accepted, r_fork.reason) == (False, pb.METER_REJECT_REASON_CHAIN)
    _code, result = report(lab, 0, 60)
    kinds = {f["finding"]["kind"] for f in result["findings"]}  # type: ignore[attr-defined]
    assert "FINDING_KIND_METER_FORK" in kinds
    assert "FINDING_KIND_METER_GAP" in kinds
    site = site_of(result)
    # The missing second quarter and the unread last one are unmetered; no bound from them.
    unmetered = [(u["start_ns"], u["end_ns"]) for u in site["unmetered"]]  # type: ignore[attr-defined]
    assert (str(lab.t0 + QUARTER), str(lab.t0 + 2 * QUARTER)) in unmetered
    assert int(site["unmetered_ns"]) == 2 * QUARTER
