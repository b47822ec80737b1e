"""Attacks 1-3 of issue 9 against a real verifier process: a lab with root on its nodes signs
windows whose utilisation or energy readings lie while the GPUs really draw power.

1. Every window claims 30 % (or 0 %) utilisation while each GPU draws 700 W.
2. Every window claims the energy counter is in ERROR (utilisation 30 %, 700 W drawn).
3. Each window shows idle energy inside it, while the counter jumps between one window's end and
   the next one's start (the busy energy moved outside the windows).

Each is evaluated by reports over the whole attack and over slices of it (the verdict must never
be COMPLIANT, and the flagged windows must be named from the stored data, never from rate-limited
findings); the offline auditor, re-verifying the exported bundle, recomputes the same. An honest
lab over the same time, with workloads from idle to 80 % busy at powers its GPUs can draw, stays
COMPLIANT.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pausewatch.v1 import attestation_pb2 as apb
from pausewatch.v1 import audit_pb2 as pb
from pausewatch.v1 import findings_pb2 as fpb

from attest import compute
from tests.adversarial.dishonest_lab import (
    H100,
    LIMIT_PER_MINUTE_FLOP,
    Labs,
    Window,
    findings_of,
    flagged,
    recent_t0,
    rule,
    signed_windows,
    verifier_with_labs,
)
from tests.builders import TestNode

MINUTES = 20
SLICES = [(0, MINUTES), (7, 9), (13, 14), (19, 20)]
"""The attack period and slices of it (minutes after t0); the first window (minute 0) of attack
3 has nothing before it, so slices start later."""
PEAK_MINUTE_FLOP = compute.time_bound_flop(H100, 1, 60_000)
"""One H100 flat out for a minute: 1.187e17 FLOP; 8 of them are over the 8e17 limit."""
HONEST_CYCLE = [Window(0, 70), Window(12_000, 190), Window(30_000, 380), Window(48_000, 570)]
"""An honest GPU idling at 70 W and drawing up to 700 W while busy: idle, 20, 50 and 80 % busy."""


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Labs]:
    t0 = recent_t0(40)
    lab_ids = ["lab-a", "lab-thirty", "lab-zero", "lab-error", "lab-outside"]
    with verifier_with_labs(tmp_path_factory.mktemp("energy"), lab_ids, t0=t0) as labs:
        plans = {
            # The honest control: two nodes, one cycling through honest loads, one idle.
            "lab-a": [
                [HONEST_CYCLE[i % 4] for i in range(MINUTES)],
                [Window(0, 70)] * MINUTES,
            ],
            "lab-thirty": [[Window(18_000, 700)] * MINUTES],
            "lab-zero": [[Window(0, 700)] * MINUTES],
            "lab-error": [
                [Window(18_000, 700, counter_state=apb.ENERGY_COUNTER_STATE_ERROR)] * MINUTES
            ],
            "lab-outside": [
                [Window(0, 70)]
                + [Window(0, 70, rise_before_mj=(700 - 70) * 60_000)] * (MINUTES - 1)
            ],
        }
        seed = 300
        for lab_id, nodes in plans.items():
            built = []
            for windows in nodes:
                seed += 1
                node = labs.enroll(
                    TestNode.from_seed(seed, lab_id=lab_id, gpus=8, t0_ns=t0, model=H100)
                )
                built.append((node, windows))
            labs.declare(lab_id, *(node for node, _ in built))
            for node, windows in built:
                labs.submit(signed_windows(node, windows))
        yield labs


@pytest.mark.parametrize(("start", "end"), SLICES)
def test_the_honest_lab_stays_compliant_in_every_slice(labs: Labs, start: int, end: int) -> None:
    report = labs.report("lab-a", start, end)
    assert report.verdict == pb.VERDICT_COMPLIANT, list(report.reasons)
    assert list(report.flagged) == []
    assert report.totals.raised_flop == "0"
    assert not findings_of(report, fpb.FINDING_KIND_ENERGY_MISMATCH)
    assert int(rule(report, "per-minute").measured) < LIMIT_PER_MINUTE_FLOP


@pytest.mark.parametrize("lab_id", ["lab-thirty", "lab-zero"])
@pytest.mark.parametrize(("start", "end"), SLICES)
def test_utilisation_lies_are_evaluated_at_what_the_energy_allows(
    labs: Labs, lab_id: str, start: int, end: int
) -> None:
    """Attack 1: 700 W drawn, 30 % or 0 % claimed. Before, only the first window got a
    (rate-limited) finding and every later slice was COMPLIANT and silent."""
    report = labs.report(lab_id, start, end)
    assert report.verdict == pb.VERDICT_VIOLATION, list(report.reasons)
    per_minute = rule(report, "per-minute")
    assert per_minute.outcome == pb.RULE_OUTCOME_VIOLATION
    # Every GPU-window counts at what 700 W allows, capped at peak x wall time.
    assert int(per_minute.measured) == 8 * PEAK_MINUTE_FLOP
    mismatches = flagged(report, pb.WINDOW_FLAG_ENERGY_MISMATCH)
    assert len(mismatches) == 8  # every GPU of the node, named
    assert {item.gpu_windows for item in mismatches} == {end - start}
    assert all(int(item.extra_flop) > 0 for item in mismatches)
    assert any(reason.startswith("UNACCOUNTED: energy contradicts") for reason in report.reasons)
    # A finding per window, never rate-limited: its evidence is the window.
    windows = findings_of(report, fpb.FINDING_KIND_ENERGY_MISMATCH)
    assert len(windows) >= end - start
    assert {m.first_log_index for m in mismatches} <= {
        i for f in windows for i in f.finding.evidence_log_indices
    }


@pytest.mark.parametrize(("start", "end"), SLICES)
def test_a_counter_claimed_in_error_counts_at_its_time_bound(
    labs: Labs, start: int, end: int
) -> None:
    """Attack 2: ERROR on every window used to skip the energy check entirely (ADR 0003)."""
    report = labs.report("lab-error", start, end)
    assert report.verdict == pb.VERDICT_VIOLATION, list(report.reasons)
    assert int(rule(report, "per-minute").measured) == 8 * PEAK_MINUTE_FLOP
    unusable = flagged(report, pb.WINDOW_FLAG_ENERGY_COUNTER_UNUSABLE)
    assert len(unusable) == 8
    assert {item.gpu_windows for item in unusable} == {end - start}


@pytest.mark.parametrize(("start", "end"), [*SLICES[:1], (1, 3), (13, 14), (19, 20)])
def test_energy_between_back_to_back_windows_is_counted(labs: Labs, start: int, end: int) -> None:
    """Attack 3: idle energy inside each window, the busy energy between windows."""
    report = labs.report("lab-outside", start, end)
    assert report.verdict == pb.VERDICT_VIOLATION, list(report.reasons)
    assert int(rule(report, "per-minute").measured) > LIMIT_PER_MINUTE_FLOP
    outside = flagged(report, pb.WINDOW_FLAG_ENERGY_OUTSIDE_WINDOWS)
    assert len(outside) == 8
    rises = end - start - (1 if start == 0 else 0)  # seq 0 has no window before it
    assert {item.gpu_windows for item in outside} == {rises}
    assert any("rose outside any window" in reason for reason in report.reasons)
    findings = findings_of(report, fpb.FINDING_KIND_ENERGY_OUTSIDE_WINDOWS)
    assert len(findings) >= rises
    assert all(len(f.finding.evidence_log_indices) == 2 for f in findings)
    # Counted in the node's figures as well.
    [node] = report.nodes
    assert int(node.upper_bound_flop) > 0


@pytest.mark.parametrize("lab_id", ["lab-a", "lab-thirty", "lab-error", "lab-outside"])
@pytest.mark.parametrize(("start", "end"), [(0, MINUTES), (13, 14)])
def test_the_offline_auditor_recomputes_the_same_from_the_bundle(
    labs: Labs, lab_id: str, start: int, end: int
) -> None:
    checked = labs.verify_offline(lab_id, start, end)
    assert checked.ok, checked.failures + checked.differences
    assert checked.offline_report is not None and checked.server_report is not None
    assert list(checked.offline_report.flagged) == list(checked.server_report.flagged)
    assert checked.offline_report.verdict == checked.server_report.verdict


def test_reports_state_the_energy_settings_and_a_bundle_must_match_them(labs: Labs) -> None:
    """A verifier operator who exports a bundle with laxer energy settings than its report
    states (so that the offline replay flags nothing) is caught offline."""
    from pausewatch.v1 import bundle_pb2

    from attest.envelope import PayloadType, parse_envelope, sign_envelope
    from attest.keys import Ed25519Signer
    from tests.builders import fixed_private_key
    from verifier.audit.bundle import verify_bundle

    report = labs.report("lab-thirty", 0, MINUTES)
    settings = report.verifier_settings
    assert (settings.energy_mismatch_factor_ppm, settings.idle_power_fraction_ppm) == (
        1_250_000,
        300_000,
    )
    start, end = labs.period(0, MINUTES)
    data = b"".join(
        chunk.data
        for chunk in labs.client.audit.ExportBundle(
            pb.ExportBundleRequest(lab_id="lab-thirty", period_start_ns=start, period_end_ns=end),
            timeout=60,
        )
    )
    bundle = bundle_pb2.EvidenceBundle.FromString(parse_envelope(data).payload)
    assert bundle.energy_mismatch_factor_ppm == 1_250_000
    bundle.energy_mismatch_factor_ppm = 100_000_000  # nothing would be a mismatch
    log_key = Ed25519Signer.from_private_key(fixed_private_key(101))  # the harness's log key
    forged = sign_envelope(
        log_key, PayloadType.BUNDLE, bundle.SerializeToString(deterministic=True)
    )
    checked = verify_bundle(forged, pinned_log_key=labs.log_key)
    assert not checked.ok
    assert any("energy_mismatch_factor_ppm" in failure for failure in checked.failures)
    control = verify_bundle(data, pinned_log_key=labs.log_key)
    assert control.ok, control.failures + control.differences
