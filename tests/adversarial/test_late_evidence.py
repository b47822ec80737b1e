"""Attack 4 of issue 9 against a real verifier process: the lab stops its agent for a while, then
signs idle windows for that time afterwards with a nonce fetched before the stop. The windows are
accepted (the evidence is kept) but graded late, and a report over the stretch, or over any slice
of it, is not COMPLIANT and names it; an honest node over the same time stays COMPLIANT.

Time is compressed so that the test runs in real time: 2 s windows, late after 5 s, nonces live
6 s (the defaults are 60 s windows, 120 s and 900 s: docs/verifier.md).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pausewatch.v1 import attestation_pb2 as pb
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import findings_pb2 as fpb
from pausewatch.v1 import registry_pb2 as rpb

from agent.daemon import spool_path
from agent.spool import Spool
from attest.attestation import bounds_to_proto, validate_body, window_compute
from attest.envelope import PayloadType, envelope_digest, parse_envelope, sign_envelope
from attest.ids import KeyId
from attest.keys import Ed25519Signer, format_public_key, save_private_key
from tests.agent_process import AgentProcess, free_port, wait_until
from tests.agent_setup import write_state_dir
from tests.builders import TestNode, fixed_private_key
from tests.cli_runner import run_agent_cli
from tests.verifier_harness import (
    Client,
    RunningVerifier,
    pausewatch,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)

S = 10**9
WINDOW_NS = 2 * S
WINDOWS = 15
STOPPED = range(5, 11)  # the attacker's agent is stopped for windows 5 to 10 (12 s)

POLICY = """
format_version = 1
policy_id = "late-test"
version = 1
lab_id = "{lab}"

[[rules]]
id = "cumulative"
kind = "cumulative_flop"
window = "10s"
limit_flop = "1e21"

[[rules]]
id = "coverage"
kind = "coverage"
min_ratio = "90%"

[[rules]]
id = "max-gap"
kind = "max_gap"
max_gap = "6s"
"""


def honest_body(node: TestNode, seq: int, prev: bytes | None, t0: int, nonce: bytes) -> bytes:
    """A realistic window of ``node``: 2 s, half busy, 350 W per GPU, energy counters continuous
    from one window to the next."""
    body = node.body(seq, prev, start_ns=t0 + seq * WINDOW_NS, window_ns=WINDOW_NS, nonce=nonce)
    body.samples_count = 2 * len(body.gpus)
    for i, gpu in enumerate(body.gpus):
        gpu.samples_expected = gpu.samples_taken = 2
        gpu.busy_ms = 1_000
        gpu.energy_start_mj = 1_000_000 * (i + 1) + seq * 700_000
        gpu.energy_end_mj = gpu.energy_start_mj + 700_000
        gpu.bounds.CopyFrom(bounds_to_proto(window_compute(gpu)))
    return node.sign_body(body)


@dataclass
class Run:
    verifier: RunningVerifier
    client: Client
    t0: int
    honest: TestNode
    attacker: TestNode
    receipts: dict[str, list[spb.Receipt]]


def _declare(client: Client, lab: str, node: TestNode) -> None:
    declaration = rpb.InventoryDeclaration(
        format_version=1,
        lab_id=lab,
        version=1,
        gpus=[rpb.GpuIdentity(uuid=node.gpu_uuid(i)) for i in range(node.gpus)],
        effective_from_ns=time.time_ns(),
        created_at_ns=time.time_ns(),
    )
    client.registry.DeclareInventory(
        rpb.DeclareInventoryRequest(
            declaration_envelope=sign_envelope(
                client.operator, PayloadType.INVENTORY, declaration.SerializeToString()
            )
        )
    )


def _sleep_until(t_ns: int) -> None:
    delay = (t_ns - time.time_ns()) / S
    if delay > 0:
        time.sleep(delay)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    directory = tmp_path_factory.mktemp("late")
    (directory / "policy-b.toml").write_text(POLICY.format(lab="lab-b"))
    operator = Ed25519Signer.from_private_key(fixed_private_key(100))
    files = write_verifier_files(
        directory,
        policy=POLICY.format(lab="lab-a"),
        require_nonce=True,
        max_clock_skew_s=60,
        max_age_s=3600,
        late_after_s=5,
        bucket_ms=2_000,
        open_gap_grace_ms=2_000,
        extra_ingest="nonce_lifetime_s = 6",
        extra_lab=(
            '\n[[labs]]\nid = "lab-b"\nname = "Lab B"\n'
            f'operator_public_key = "{format_public_key(operator.public_key)}"\n'
            'policy = "policy-b.toml"\n'
        ),
    )
    verifier = start_verifier_process(files, directory / "verifier.log")
    try:
        client = Client(verifier.channel(), files.operator)
        attacker = TestNode.from_seed(950, lab_id="lab-a")
        honest = TestNode.from_seed(951, lab_id="lab-b")
        for lab, node in (("lab-a", attacker), ("lab-b", honest)):
            client.enroll(node)
            _declare(client, lab, node)
        now = time.time_ns()
        t0 = now - now % WINDOW_NS + 2 * WINDOW_NS
        prev: dict[str, bytes | None] = {"attacker": None, "honest": None}
        receipts: dict[str, list[spb.Receipt]] = {"attacker": [], "honest": []}
        held: list[bytes] = []
        nonce_before_stop = b""

        def submit(name: str, node: TestNode, seq: int, nonce: bytes) -> None:
            raw = honest_body(node, seq, prev[name], t0, nonce)
            prev[name] = envelope_digest(raw)
            receipts[name] += client.submit([raw])

        for seq in range(WINDOWS):
            _sleep_until(t0 + (seq + 1) * WINDOW_NS + S // 5)  # just after the window ends
            submit("honest", honest, seq, client.nonce(honest))
            if seq < STOPPED.start:
                nonce_before_stop = client.nonce(attacker)
                submit("attacker", attacker, seq, nonce_before_stop)
            elif seq == STOPPED.stop - 1:
                # Back on: sign the stopped stretch now, as idle, with the old nonce.
                for late_seq in STOPPED:
                    raw = honest_body(attacker, late_seq, prev["attacker"], t0, nonce_before_stop)
                    prev["attacker"] = envelope_digest(raw)
                    held.append(raw)
                receipts["attacker"] += client.submit(held)
            elif seq >= STOPPED.stop:
                submit("attacker", attacker, seq, client.nonce(attacker))
        time.sleep(2.5)  # the open-gap grace, and a checkpoint interval for the bundle
        yield Run(verifier, client, t0, honest, attacker, receipts)
    finally:
        stop_process(verifier)


def report(run: Run, lab: str, start: int, end: int) -> apb.ComplianceReport:
    """The report of ``lab`` over windows ``[start, end)`` of the run (window numbers)."""
    return run.client.audit.GetComplianceReport(
        apb.GetComplianceReportRequest(
            lab_id=lab,
            period_start_ns=run.t0 + start * WINDOW_NS,
            period_end_ns=run.t0 + end * WINDOW_NS,
        )
    ).report


def late_findings(rep: apb.ComplianceReport) -> list[fpb.Finding]:
    return [f.finding for f in rep.findings if f.finding.kind == fpb.FINDING_KIND_LATE_EVIDENCE]


def test_the_back_filled_windows_are_kept_but_logged_as_late(run: Run) -> None:
    assert [r.status for r in run.receipts["attacker"]] == [spb.RECEIPT_STATUS_ACCEPTED] * WINDOWS
    assert [r.status for r in run.receipts["honest"]] == [spb.RECEIPT_STATUS_ACCEPTED] * WINDOWS
    found = run.client.audit.ListFindings(
        apb.ListFindingsRequest(lab_id="lab-a", kinds=[fpb.FINDING_KIND_LATE_EVIDENCE])
    ).findings
    by_index = {r.log_index: r.seq for r in run.receipts["attacker"]}
    assert sorted(by_index[f.finding.evidence_log_indices[0]] for f in found) == list(STOPPED)
    for item in found:
        assert item.finding.node_id == run.attacker.node_id
        assert item.finding.unit == "ms"
        assert int(item.finding.measured) > int(item.finding.limit)
    honest = run.client.audit.ListFindings(
        apb.ListFindingsRequest(lab_id="lab-b", kinds=[fpb.FINDING_KIND_LATE_EVIDENCE])
    ).findings
    assert list(honest) == []


def _late_gap(rep: apb.ComplianceReport) -> apb.GapReport:
    late = [g for g in rep.gaps if g.late]
    assert len(late) == 1, rep.gaps
    return late[0]


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, WINDOWS), (STOPPED.start, STOPPED.stop), (6, 8), (9, 13), (4, 6)]
    + [(seq, seq + 1) for seq in STOPPED],
)
def test_a_report_over_the_stretch_or_any_slice_of_it_is_not_compliant(
    run: Run, start: int, end: int
) -> None:
    rep = report(run, "lab-a", start, end)
    assert rep.verdict == apb.VERDICT_UNACCOUNTED, (start, end, list(rep.reasons))
    assert (rep.verifier_settings.late_after_ns, rep.verifier_settings.nonce_lifetime_ns) == (
        5 * S,
        6 * S,
    )
    gap = _late_gap(rep)
    assert gap.node_id == run.attacker.node_id
    stretch_start = run.t0 + max(start, STOPPED.start) * WINDOW_NS
    stretch_end = run.t0 + min(end, STOPPED.stop) * WINDOW_NS
    assert (gap.gap.gap_start_ns, gap.gap.gap_end_ns) == (stretch_start, stretch_end)
    assert late_findings(rep)  # named, with their evidence
    coverage = next(r for r in rep.rules if r.rule_id == "coverage")
    assert coverage.outcome == apb.RULE_OUTCOME_UNACCOUNTED
    assert "late evidence not counted" in coverage.summary
    if end - start >= STOPPED.stop - STOPPED.start:
        max_gap = next(r for r in rep.rules if r.rule_id == "max-gap")
        assert max_gap.outcome == apb.RULE_OUTCOME_UNACCOUNTED
        assert "late evidence" in max_gap.summary
    # The honest lab over the same time: compliant, nothing late.
    control = report(run, "lab-b", start, end)
    assert control.verdict == apb.VERDICT_COMPLIANT, (start, end, list(control.reasons))
    assert not [g for g in control.gaps if g.late]
    assert late_findings(control) == []


def test_the_bundle_of_the_attack_recomputes_offline_to_the_same_verdict(
    run: Run, tmp_path: Path
) -> None:
    cli = pausewatch

    def utc(t_ns: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_ns // S))

    bundle = tmp_path / "attack.pwbundle"
    exported = cli(
        "audit", "export", *run.verifier.cli_target(), "--lab", "lab-a",
        "--since", utc(run.t0), "--until", utc(run.t0 + WINDOWS * WINDOW_NS),
        "--out", str(bundle),
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    log_key = json.loads(cli("log", "checkpoint", *run.verifier.cli_target(), "--json").stdout)[
        "verifier_key"
    ]
    verified = cli("audit", "verify-bundle", str(bundle), "--log-key", log_key, "--json")
    result = json.loads(verified.stdout)
    assert result["ok"] and result["agrees_with_server"], result
    assert result["verdict"] == "VERDICT_UNACCOUNTED"


def test_body_builder_is_valid() -> None:
    """The compressed windows are well-formed attestations (a guard on the builder above)."""
    node = TestNode.from_seed(952)
    raw = honest_body(node, 0, None, 1_764_403_200 * S, b"")
    body = pb.AttestationBody.FromString(parse_envelope(raw).payload)
    validate_body(body, KeyId(node.node_id))


def test_a_first_start_offline_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10: a node enrolled, then its agent's first run finds the verifier unreachable for a
    while. Every window it signs offline carries the nonce it kept at enrolment; once the verifier
    is back, every one is accepted (none rejected, none lost), graded late, and named so in the
    report. (Real verifier and agent processes, 0.4 s windows.)"""
    port = free_port()
    files = write_verifier_files(
        tmp_path / "v",
        require_nonce=True,
        late_after_s=2,
        extra_ingest="nonce_lifetime_s = 3",
    )
    files.config.write_text(
        files.config.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
    )
    log_path = tmp_path / "verifier.log"
    verifier = start_verifier_process(files, log_path)
    config = write_state_dir(
        tmp_path / "node", address=f"127.0.0.1:{port}", window_s="0.4", interval_ms=100, seed=953
    )
    state = str(config.node.state_dir)
    operator = tmp_path / "operator.key"
    save_private_key(operator, fixed_private_key(100))
    code, out, err = run_agent_cli(
        capsys, "enroll", "--state-dir", state, "--operator-key", str(operator), "--json"
    )
    assert code == 0, out + err
    node_id = bytes.fromhex(json.loads(out)["node_id"])
    _, out, _ = run_agent_cli(capsys, "status", "--json", "--state-dir", state)
    assert json.loads(out)["nonce"] is not None  # kept at enrolment, before any run
    assert stop_process(verifier) == 0

    agent = AgentProcess.start(config.node.state_dir, tmp_path / "agent.log")
    try:

        def status() -> dict[str, object]:
            _, text, _ = run_agent_cli(capsys, "status", "--json", "--state-dir", state)
            return json.loads(text)  # type: ignore[no-any-return]

        wait_until(lambda: (status()["head"] or {}).get("seq", -1) >= 12, 60, "windows offline")
        offline = status()
        assert offline["acknowledged"] == 0
        verifier = start_verifier_process(files, log_path)
        try:
            wait_until(
                lambda: (
                    status()["spool"]["pending"] == 0  # type: ignore[index]
                    and status()["acknowledged"] > offline["acknowledged"]
                ),  # type: ignore[operator]
                60,
                "the backlog ships",
            )
            assert agent.stop() == 0, agent.log()[-2000:]
            final = status()
            head_seq = final["head"]["seq"]  # type: ignore[index]
            assert final["rejected"] == 0
            assert final["spool"]["pending"] == 0  # type: ignore[index]
            client = Client(verifier.channel(), files.operator)
            with sqlite3.connect(files.store) as db:
                stored = db.execute(
                    "SELECT COUNT(*), MIN(seq), MAX(seq) FROM attestations WHERE node_id = ?",
                    (node_id,),
                ).fetchone()
            assert stored == (head_seq + 1, 0, head_seq)  # every window, once, in order
            late = client.audit.ListFindings(
                apb.ListFindingsRequest(
                    lab_id="lab-a", kinds=[fpb.FINDING_KIND_LATE_EVIDENCE], page_size=1000
                )
            ).findings
            assert len(late) >= offline["head"]["seq"]  # type: ignore[index]
            assert all(f.finding.node_id == node_id for f in late)
            now = time.time_ns()
            rep = client.audit.GetComplianceReport(
                apb.GetComplianceReportRequest(
                    lab_id="lab-a", period_start_ns=now - 600 * S, period_end_ns=now
                )
            ).report
            assert [g for g in rep.gaps if g.late and g.node_id == node_id]
        finally:
            stop_process(verifier)
    finally:
        agent.kill()


def test_a_full_spool_is_a_gap_and_what_was_spooled_arrives_as_late_evidence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/threat-model.md, "Fill the agent's spool": the verifier is unreachable until the
    agent's spool bound (5 windows) is reached and for a while after. Once it is back, the five
    spooled windows are accepted and graded late; the time the agent did not sign is a gap
    (a GAP finding and a report gap, not late), ending at the window that carries SPOOL_FULL;
    nothing is rejected or lost. (Real verifier and agent processes, 0.4 s windows.)"""
    bound = 5
    port = free_port()
    files = write_verifier_files(
        tmp_path / "v",
        require_nonce=True,
        late_after_s=2,
        extra_ingest="nonce_lifetime_s = 3",
    )
    # Time is compressed (0.4 s windows): the gap tolerance with it (5 s in the harness).
    files.config.write_text(
        files.config.read_text()
        .replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
        .replace("gap_tolerance_ms = 5000", "gap_tolerance_ms = 500")
    )
    log_path = tmp_path / "verifier.log"
    verifier = start_verifier_process(files, log_path)
    config = write_state_dir(
        tmp_path / "node",
        address=f"127.0.0.1:{port}",
        window_s="0.4",
        interval_ms=100,
        seed=954,
        extra=f"[spool]\nmax_unacked_envelopes = {bound}\n",
    )
    state = str(config.node.state_dir)
    operator = tmp_path / "operator.key"
    save_private_key(operator, fixed_private_key(100))
    code, out, err = run_agent_cli(
        capsys, "enroll", "--state-dir", state, "--operator-key", str(operator), "--json"
    )
    assert code == 0, out + err
    node_id = bytes.fromhex(json.loads(out)["node_id"])
    assert stop_process(verifier) == 0

    def status() -> dict[str, Any]:
        _, text, _ = run_agent_cli(capsys, "status", "--json", "--state-dir", state)
        return json.loads(text)  # type: ignore[no-any-return]

    agent = AgentProcess.start(config.node.state_dir, tmp_path / "agent.log")
    try:
        wait_until(lambda: "window not attested" in agent.log(), 60, "the spool fills")
        time.sleep(2.5)  # several windows past the bound, and the spooled ones past late_after
        full = status()
        assert full["head"]["seq"] == bound - 1  # nothing signed past the bound
        assert full["acknowledged"] == 0
        verifier = start_verifier_process(files, log_path)
        try:
            wait_until(
                lambda: (
                    (status()["head"] or {}).get("seq", -1) >= bound + 3
                    and status()["spool"]["pending"] == 0
                ),
                60,
                "the backlog ships and signing resumes",
            )
            assert agent.stop() == 0, agent.log()[-2000:]
            final = status()
            assert final["rejected"] == 0
            assert final["spool"]["pending"] == 0
            head_seq = final["head"]["seq"]
            spool = Spool.open(spool_path(config))
            try:
                chain = [
                    pb.AttestationBody.FromString(parse_envelope(e.envelope).payload)
                    for e in spool.envelopes()
                ]
            finally:
                spool.close()
            assert [b.seq for b in chain] == list(range(head_seq + 1))
            with sqlite3.connect(files.store) as db:
                log_index = dict(
                    db.execute(
                        "SELECT seq, log_index FROM attestations WHERE node_id = ?", (node_id,)
                    ).fetchall()
                )
            assert sorted(log_index) == list(range(head_seq + 1))  # every window, once
            seq_of = {index: seq for seq, index in log_index.items()}

            # The first window signed once there was room carries SPOOL_FULL over the unsigned
            # time: from the end of the last spooled window to its own start.
            last_spooled, resumed = chain[bound - 1], chain[bound]
            (event,) = [e for e in resumed.events if e.kind == pb.EVENT_KIND_SPOOL_FULL]
            assert (event.gap_start_ns, event.gap_end_ns) == (
                last_spooled.window_end_ns,
                resumed.window_start_ns,
            )
            assert resumed.window_start_ns - last_spooled.window_end_ns >= 2 * S
            assert all(
                not any(e.kind == pb.EVENT_KIND_SPOOL_FULL for e in b.events)
                for b in chain
                if b.seq != bound
            )

            client = Client(verifier.channel(), files.operator)

            def listed(kind: int) -> list[fpb.Finding]:
                found = client.audit.ListFindings(
                    apb.ListFindingsRequest(lab_id="lab-a", kinds=[kind], page_size=1000)
                ).findings
                return [f.finding for f in found if f.finding.node_id == node_id]

            late_seqs = sorted(
                seq_of[f.evidence_log_indices[0]] for f in listed(fpb.FINDING_KIND_LATE_EVIDENCE)
            )
            assert late_seqs[:bound] == list(range(bound))  # every spooled window is late
            gaps = [f.gap for f in listed(fpb.FINDING_KIND_GAP)]
            assert [(g.seq_before, g.seq_after) for g in gaps] == [(bound - 1, bound)]
            assert (gaps[0].gap_start_ns, gaps[0].gap_end_ns) == (
                last_spooled.window_end_ns,
                resumed.window_start_ns,
            )
            now = time.time_ns()
            rep = client.audit.GetComplianceReport(
                apb.GetComplianceReportRequest(
                    lab_id="lab-a", period_start_ns=now - 600 * S, period_end_ns=now
                )
            ).report
            mine = [g for g in rep.gaps if g.node_id == node_id]
            spool_gap = [
                g
                for g in mine
                if (g.gap.gap_start_ns, g.gap.gap_end_ns)
                == (last_spooled.window_end_ns, resumed.window_start_ns)
            ]
            assert len(spool_gap) == 1 and not spool_gap[0].late
            late_gaps = [g for g in mine if g.late]
            assert late_gaps
            assert (
                min(g.gap.gap_start_ns for g in late_gaps),
                max(g.gap.gap_end_ns for g in late_gaps),
            ) == (chain[0].window_start_ns, last_spooled.window_end_ns)
        finally:
            stop_process(verifier)
    finally:
        agent.kill()
