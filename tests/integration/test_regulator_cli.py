"""The regulator's commands against a real verifier over TLS: --version, labs, nodes, one node's
drill-down, log entries decoded, the log key printed again, CSV accounts, a report on every lab,
two periods compared, health, times in a named zone; and `audit findings --follow` surviving a
verifier restart without skipping or repeating a finding, and resuming from a log index."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from attest.envelope import PayloadType, envelope_digest
from attest.keys import Ed25519Signer, format_public_key, save_public_key
from tests.builders import TestNode, fixed_private_key
from tests.integration.test_audit_cli import pausewatch
from tests.verifier_harness import (
    REPO,
    RunningVerifier,
    running_verifier,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)
from verifier.accounting.evaluation import format_time_ns

S = 10**9
MINUTE = 60 * S
POLICY_A = """
format_version = 1
policy_id = "pause-a"
version = 1
lab_id = "lab-a"

[[rules]]
id = "five-minutes"
kind = "cumulative_flop"
window = "5m"
limit_flop = "1e18"

[[rules]]
id = "coverage"
kind = "coverage"
min_ratio = "90%"
"""
POLICY_B = POLICY_A.replace('"lab-a"', '"lab-b"').replace('"pause-a"', '"pause-b"')
OPERATOR_B = Ed25519Signer.from_private_key(fixed_private_key(102))


@dataclass
class Labs:
    verifier: RunningVerifier
    t0: int
    node: TestNode
    directory: Path

    def period(self, start_min: int, end_min: int) -> list[str]:
        return [
            "--since",
            format_time_ns(self.t0 + start_min * MINUTE),
            "--until",
            format_time_ns(self.t0 + end_min * MINUTE),
        ]


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Labs]:
    directory = tmp_path_factory.mktemp("regulator")
    (directory / "v").mkdir()
    (directory / "v" / "policy-b.toml").write_text(POLICY_B, encoding="utf-8")
    lab_b = (
        '\n[[labs]]\nid = "lab-b"\nname = "Lab B"\n'
        f'operator_public_key = "{format_public_key(OPERATOR_B.public_key)}"\n'
        'policy = "policy-b.toml"\n'
    )
    now = time.time_ns()
    t0 = now - now % MINUTE - 60 * MINUTE
    with running_verifier(directory / "v", policy=POLICY_A, tls=True, extra_config=lab_b) as v:
        client = v.client()
        node = TestNode.from_seed(120, t0_ns=t0)
        client.enroll(node, created_at_ns=t0 - S)
        client.declare_inventory(
            [node.gpu_uuid(i) for i in range(2)], effective_from_ns=t0 - MINUTE
        )
        # Minutes 0-9 half busy (compliant); 10-19 fully busy (over 1e18 in 5 minutes).
        chain: list[bytes] = []
        prev = None
        for seq in range(20):
            raw = node.sign_body(node.body(seq, prev, busy_ms=30_000 if seq < 10 else 60_000))
            chain.append(raw)
            prev = envelope_digest(raw)
        assert all(r.status == 1 for r in client.submit(chain))
        time.sleep(1.5)  # a checkpoint
        yield Labs(v, t0, node, directory)


def run(labs: Labs, *args: str) -> subprocess.CompletedProcess[str]:
    return pausewatch(*args[:2], *labs.verifier.cli_target(), *args[2:])


def test_version() -> None:
    result = pausewatch("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("pausewatch 0.1.0 (GPU table version ")


def test_labs_lists_every_lab_with_its_name_policy_and_nodes(labs: Labs) -> None:
    result = pausewatch("labs", *labs.verifier.cli_target(), "--json")
    assert result.returncode == 0, result.stderr
    listed = {lab["lab_id"]: lab for lab in json.loads(result.stdout)["labs"]}
    assert set(listed) == {"lab-a", "lab-b"}
    assert listed["lab-a"]["name"] == "Lab A" and listed["lab-b"]["name"] == "Lab B"
    assert listed["lab-a"]["policy_id"] == "pause-a" and listed["lab-b"]["policy_id"] == "pause-b"
    assert listed["lab-a"]["nodes"] == "1" and "nodes" not in listed["lab-b"]  # 0 is left out
    text = pausewatch("labs", *labs.verifier.cli_target())
    assert "Lab A" in text.stdout and "pause-b v1" in text.stdout


def test_nodes_and_one_nodes_drill_down(labs: Labs) -> None:
    name = f"node-{labs.node.node_id.hex()[:8]}"
    listed = pausewatch("nodes", *labs.verifier.cli_target(), "--lab", "lab-a", "--json")
    assert listed.returncode == 0, listed.stderr
    [node] = json.loads(listed.stdout)["nodes"]
    assert node["node_name"] == name and node["head_seq"] == "19"
    drill = pausewatch(
        "node", *labs.verifier.cli_target(), name, "--lab", "lab-a", *labs.period(0, 30)
    )
    assert drill.returncode == 0, drill.stderr
    assert f"id          {labs.node.node_id.hex()}" in drill.stdout
    assert "attestations 20, seq 0..19" in drill.stdout
    assert labs.node.gpu_uuid(0) in drill.stdout
    assert "gaps (1)" in drill.stdout  # minutes 20-30 are unattested: one open gap
    by_prefix = pausewatch(
        "node", *labs.verifier.cli_target(), labs.node.node_id.hex()[:10], "--lab", "lab-a"
    )
    assert by_prefix.returncode == 0 and name in by_prefix.stdout
    unknown = pausewatch("node", *labs.verifier.cli_target(), "nobody", "--lab", "lab-a")
    assert unknown.returncode == 2 and "no node of the lab" in unknown.stderr
    no_lab = pausewatch("nodes", *labs.verifier.cli_target(), "--lab", "no-such-lab")
    assert no_lab.returncode == 2, no_lab.stderr


def test_log_entry_is_decoded_and_checked_against_its_leaf(labs: Labs) -> None:
    receipts_start = None
    for index in range(40):
        result = pausewatch(
            "log", "entry", *labs.verifier.cli_target(), "--index", str(index), "--json"
        )
        assert result.returncode == 0, result.stderr
        entry = json.loads(result.stdout)
        if entry["payload_type"] == PayloadType.ATTESTATION:
            receipts_start = index
            break
    assert receipts_start is not None
    assert entry["payload_message"] == "AttestationBody"
    assert entry["payload"]["lab_id"] == "lab-a" and entry["key_id"] == labs.node.node_id.hex()
    text = pausewatch("log", "entry", *labs.verifier.cli_target(), "--index", "0")
    assert "payload       LabRecord" in text.stdout
    beyond = pausewatch("log", "entry", *labs.verifier.cli_target(), "--index", "100000")
    assert beyond.returncode == 2 and "NOT_FOUND" in beyond.stderr


def test_the_log_key_is_printed_again_from_log_pub_or_the_config(labs: Labs) -> None:
    served = json.loads(
        pausewatch("log", "checkpoint", *labs.verifier.cli_target(), "--json").stdout
    )
    pub = labs.directory / "log.pub"
    if not pub.exists():
        save_public_key(pub, fixed_private_key(101).public_key())  # the harness's log key
    from_pub = pausewatch(
        "log", "key", "--public-key", str(pub), "--origin", "test.example/verifier", "--json"
    )
    assert from_pub.returncode == 0, from_pub.stderr
    assert json.loads(from_pub.stdout)["note_verifier_key"] == served["verifier_key"]
    from_config = pausewatch("log", "key", "--config", str(labs.verifier.files.config))
    assert from_config.stdout.splitlines()[0] == served["verifier_key"]
    other = pausewatch("log", "key", "--public-key", str(pub), "--origin", "other.example/log")
    assert other.stdout.splitlines()[0] != served["verifier_key"]  # the origin is part of it
    both = pausewatch("log", "key", "--config", str(labs.verifier.files.config), "--origin", "x")
    assert both.returncode == 2


def test_csv_accounts_hold_every_bucket_exactly(labs: Labs) -> None:
    path = labs.directory / "accounts.csv"
    result = run(
        labs, "audit", "report", "--lab", "lab-a", *labs.period(0, 20), "--csv", str(path), "--json"
    )
    assert result.returncode == 1  # minutes 10-19 are over the limit
    report = json.loads(result.stdout)
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(report["series"]) == 20
    assert [r["upper_bound_flop"] for r in rows] == [
        p["upper_bound_flop"] for p in report["series"]
    ]
    assert sum(int(r["upper_bound_flop"]) for r in rows) == int(
        report["totals"]["upper_bound_flop"]
    )
    assert rows[0]["bucket_start_utc"] == format_time_ns(labs.t0)


def test_a_report_on_every_lab_exits_with_the_worst_verdict(labs: Labs) -> None:
    result = run(labs, "audit", "report", "--all-labs", *labs.period(0, 20), "--json")
    reports = {r["lab_id"]: r for r in json.loads(result.stdout)["reports"]}
    assert set(reports) == {"lab-a", "lab-b"}
    assert reports["lab-a"]["verdict"] == "VERDICT_VIOLATION"
    assert reports["lab-b"]["verdict"] == "VERDICT_UNACCOUNTED"  # nothing declared or attested
    assert result.returncode == 1
    text = run(labs, "audit", "report", "--all-labs", *labs.period(0, 10))
    assert "Lab A (lab-a): COMPLIANT" in text.stdout and "Lab B (lab-b): UNACCOUNTED" in text.stdout
    neither = run(labs, "audit", "report", *labs.period(0, 10))
    assert neither.returncode == 2 and "--all-labs" in neither.stderr


def test_two_periods_compared(labs: Labs) -> None:
    first, second = labs.period(0, 10), labs.period(10, 20)
    result = run(
        labs,
        "audit",
        "compare",
        "--lab",
        "lab-a",
        "--first",
        first[1],
        first[3],
        "--second",
        second[1],
        second[3],
        "--json",
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    changes = {row["what"]: row for row in body["changes"]}
    assert (changes["verdict"]["first"], changes["verdict"]["second"]) == ("COMPLIANT", "VIOLATION")
    upper = changes["upper bound FLOP"]
    assert int(upper["second"]) == 2 * int(upper["first"])
    assert upper["change"] == f"+{int(upper['second']) - int(upper['first'])}"
    assert changes["rule five-minutes outcome"]["second"] == "VIOLATION"


def test_health_and_an_unreachable_verifier(labs: Labs) -> None:
    up = pausewatch("health", *labs.verifier.cli_target(), "--json")
    assert up.returncode == 0 and json.loads(up.stdout)["status"] == "SERVING"
    down = pausewatch("health", "--verifier", "127.0.0.1:1", "--insecure-no-tls")
    assert down.returncode == 4 and "cannot reach the verifier" in down.stderr


def test_times_in_a_named_zone(labs: Labs) -> None:
    paris = run(
        labs, "audit", "report", "--lab", "lab-a", *labs.period(0, 10), "--tz", "Europe/Paris"
    )
    utc = run(labs, "audit", "report", "--lab", "lab-a", *labs.period(0, 10))
    start = time.gmtime(labs.t0 // S)
    offset = "+01:00" if start.tm_mon in (1, 2, 3, 11, 12) else "+02:00"
    assert f"{offset} to " in paris.stdout.splitlines()[1]
    assert paris.stdout.splitlines()[1] != utc.stdout.splitlines()[1]
    assert "Z to " in utc.stdout.splitlines()[1]
    bad = run(labs, "audit", "report", "--lab", "lab-a", "--tz", "Mars/Olympus")
    assert bad.returncode == 2 and "is not a time zone" in bad.stderr


# --- findings --follow across a restart ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _gap_window(node: TestNode, seq: int, prev: bytes, start_ns: int) -> bytes:
    return node.sign_body(node.body(seq, prev, start_ns=start_ns))


def _read_line(process: subprocess.Popen[str], timeout_s: float = 60) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            line = process.stdout.readline()
            if line:
                return line
        if process.poll() is not None:
            raise AssertionError(f"findings --follow exited with {process.returncode}")
    raise TimeoutError("no finding arrived")


def test_follow_reconnects_after_a_restart_and_a_run_resumes_from_an_index(tmp_path: Path) -> None:
    files = write_verifier_files(tmp_path / "v")
    port = _free_port()
    files.config.write_text(
        files.config.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
    )
    verifier = start_verifier_process(files, tmp_path / "v1.log")
    now = time.time_ns()
    t0 = now - now % MINUTE - 120 * MINUTE
    node = TestNode.from_seed(121, t0_ns=t0)
    client = verifier.client()
    client.enroll(node, created_at_ns=t0 - S)
    chain = node.chain(2)
    gap_a = _gap_window(node, 2, envelope_digest(chain[1]), t0 + 10 * MINUTE)
    assert all(r.status == 1 for r in client.submit([*chain, gap_a]))
    target = ["--verifier", verifier.address, "--insecure-no-tls"]
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "verifier.cli",
            "audit",
            "findings",
            *target,
            "--lab",
            "lab-a",
            "--kind",
            "gap",
            "--follow",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": f"{REPO}:{REPO / 'protos'}", "PATH": "/usr/bin:/bin"},
    )
    try:
        first = json.loads(_read_line(follower))
        assert first["finding"]["kind"] == "FINDING_KIND_GAP"
        stop_process(verifier)
        time.sleep(1.0)  # the follower finds the verifier gone and retries
        verifier = start_verifier_process(files, tmp_path / "v2.log")
        gap_b = _gap_window(node, 3, envelope_digest(gap_a), t0 + 20 * MINUTE)
        assert [r.status for r in verifier.client().submit([gap_b])] == [1]
        second = json.loads(_read_line(follower))
        assert second["finding"]["kind"] == "FINDING_KIND_GAP"
        assert int(second["log_index"]) > int(first["log_index"])
    finally:
        follower.terminate()
        _, stderr = follower.communicate(timeout=30)
        if verifier.process is not None and verifier.process.poll() is None:
            stop_process(verifier)
    assert "reconnecting, resuming at log index" in stderr
    # Resume: from the second finding's index, only it is listed (and nothing before it).
    again = start_verifier_process(files, tmp_path / "v3.log")
    try:
        resumed = pausewatch(
            "audit",
            "findings",
            *["--verifier", again.address, "--insecure-no-tls"],
            "--lab",
            "lab-a",
            "--kind",
            "gap",
            "--from-index",
            str(second["log_index"]),
            "--json",
        )
        lines = [json.loads(line) for line in resumed.stdout.splitlines()]
        assert [line["log_index"] for line in lines] == [second["log_index"]]
        everything = pausewatch(
            "audit",
            "findings",
            "--verifier",
            again.address,
            "--insecure-no-tls",
            "--lab",
            "lab-a",
            "--kind",
            "gap",
            "--json",
        )
        indices = [json.loads(line)["log_index"] for line in everything.stdout.splitlines()]
        assert indices == [first["log_index"], second["log_index"]]
    finally:
        stop_process(again)
