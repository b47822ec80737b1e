"""Three defects of issue 9, each against a real verifier process: an honest bundle exported for a
period after an equivocation verifies offline; a retried ``pausewatch-agent enroll`` is answered
``already_enrolled`` (while an enrolment that changes anything else is still a conflict); the
store is 0700/0600, and a too-open store is tightened or refused with a clear message.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import bundle_pb2 as bpb
from pausewatch.v1 import findings_pb2 as fpb
from pausewatch.v1 import registry_pb2 as rpb

from attest import keys
from attest.envelope import PayloadType, envelope_digest, parse_envelope
from tests.agent_setup import write_state_dir
from tests.builders import TestNode, fixed_private_key
from tests.cli_runner import run_agent_cli
from tests.verifier_harness import (
    REPO,
    Client,
    RunningVerifier,
    enroll_request,
    enrollment_for,
    pausewatch,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)
from verifier.audit.bundle import MAX_BUNDLE_BYTES

S = 10**9
MINUTE = 60 * S


@pytest.fixture
def verifier(tmp_path: Path) -> Iterator[RunningVerifier]:
    files = write_verifier_files(tmp_path / "v", require_nonce=True)
    running = start_verifier_process(files, tmp_path / "verifier.log")
    try:
        yield running
    finally:
        stop_process(running)


def minute_utc(t_ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_ns // S))


def test_a_bundle_for_a_period_after_an_equivocation_verifies(
    verifier: RunningVerifier, tmp_path: Path
) -> None:
    """The bundle carries every FORK_EVIDENCE entry of the lab, so it must carry their
    EQUIVOCATION findings too, even for a period that ends before or starts after the fork."""
    client = Client(verifier.channel(), verifier.files.operator)
    now = time.time_ns()
    t0 = now - now % MINUTE - 40 * MINUTE
    node = TestNode.from_seed(901, t0_ns=t0)
    client.enroll(node, created_at_ns=t0 - S)
    nonce = client.nonce(node)
    chain: list[bytes] = []
    prev: bytes | None = None
    for seq in range(30):
        raw = node.sign_body(node.body(seq, prev, nonce=nonce))
        chain.append(raw)
        prev = envelope_digest(raw)
    receipts = client.submit(chain)
    assert all(r.status == spb.RECEIPT_STATUS_ACCEPTED for r in receipts)
    # The lab's node signs a second, different seq 3: equivocation at minutes 3-4.
    fork = node.sign_body(node.body(3, envelope_digest(chain[2]), busy_ms=1, nonce=nonce))
    (rejected,) = client.submit([fork])
    assert rejected.reason == spb.REJECT_REASON_FORK
    equivocations = client.audit.ListFindings(
        apb.ListFindingsRequest(lab_id="lab-a", kinds=[fpb.FINDING_KIND_EQUIVOCATION])
    ).findings
    assert len(equivocations) == 1
    time.sleep(1.5)  # a checkpoint interval
    checkpoint = pausewatch("log", "checkpoint", *verifier.cli_target(), "--json")
    log_key = json.loads(checkpoint.stdout)["verifier_key"]
    for name, start, end in (("after", 20, 30), ("during", 0, 10), ("whole", 0, 30)):
        bundle = tmp_path / f"{name}.pwbundle"
        exported = pausewatch(
            "audit", "export", *verifier.cli_target(), "--lab", "lab-a",
            "--since", minute_utc(t0 + start * MINUTE), "--until", minute_utc(t0 + end * MINUTE),
            "--out", str(bundle),
        )  # fmt: skip
        assert exported.returncode == 0, exported.stderr
        verified = pausewatch("audit", "verify-bundle", str(bundle), "--log-key", log_key, "--json")
        result = json.loads(verified.stdout)
        assert result["ok"], (name, result)
        assert result["agrees_with_server"], (name, result)
        assert "not reported" not in verified.stdout
        # Whatever the period, the bundle holds the fork evidence (the second seq 3, as sent),
        # the accepted seq 3 it conflicts with, and the EQUIVOCATION finding citing both.
        held = bundle_entries(bundle)
        assert held.get(rejected.log_index) == fork, name
        assert held.get(receipts[3].log_index) == chain[3], name
        logged = held.get(equivocations[0].log_index)
        assert logged is not None, name
        envelope = parse_envelope(logged)
        assert envelope.payload_type == PayloadType.FINDING, name
        finding = fpb.Finding.FromString(envelope.payload)
        assert finding.kind == fpb.FINDING_KIND_EQUIVOCATION, name
        assert finding.node_id == node.node_id, name
        assert {receipts[3].log_index, rejected.log_index} <= set(finding.evidence_log_indices)
        if start < 4:  # a period holding the equivocation is INVALID
            assert result["verdict"] == "VERDICT_INVALID", (name, result["verdict"])


def bundle_entries(path: Path) -> dict[int, bytes]:
    """The entries of an exported bundle file, by log index (the file is the log-key-signed
    envelope of an EvidenceBundle; docs/bundle-format.md)."""
    outer = parse_envelope(path.read_bytes(), max_size=MAX_BUNDLE_BYTES)
    assert outer.payload_type == PayloadType.BUNDLE
    bundle = bpb.EvidenceBundle.FromString(outer.payload)
    return {entry.log_index: entry.envelope for entry in bundle.entries}


def _operator_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "operator.key"
    keys.save_private_key(path, fixed_private_key(100))  # the harness's lab-a operator
    return path


def _log_size(verifier: RunningVerifier) -> int:
    with sqlite3.connect(verifier.files.store) as db:
        return int(db.execute("SELECT COUNT(*) FROM log_entries").fetchone()[0])


def test_a_retried_enrolment_is_already_enrolled_not_a_conflict(
    verifier: RunningVerifier, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = Client(verifier.channel(), verifier.files.operator)
    config = write_state_dir(tmp_path / "agent", address=verifier.address, seed=902)
    state = str(config.node.state_dir)
    operator = str(_operator_key_file(tmp_path))
    code, out, err = run_agent_cli(
        capsys, "enroll", "--state-dir", state, "--operator-key", operator, "--json"
    )
    assert code == 0, err
    first = json.loads(out)
    assert first["already_enrolled"] is False
    size = _log_size(verifier)
    time.sleep(0.01)  # a new creation time
    code, out, err = run_agent_cli(
        capsys, "enroll", "--state-dir", state, "--operator-key", operator, "--json"
    )
    assert code == 0, err
    again = json.loads(out)
    assert again["already_enrolled"] is True
    assert again["log_index"] == first["log_index"]
    assert _log_size(verifier) == size  # nothing more logged
    conflicts = client.audit.ListFindings(
        apb.ListFindingsRequest(lab_id="lab-a", kinds=[fpb.FINDING_KIND_ENROLLMENT_CONFLICT])
    ).findings
    assert list(conflicts) == []
    node_id = bytes.fromhex(first["node_id"])
    info = client.registry.GetNode(rpb.GetNodeRequest(node_id=node_id)).node
    assert info.state == rpb.NODE_STATE_ACTIVE


def test_an_enrolment_that_changes_more_than_time_and_nonce_is_still_a_conflict(
    verifier: RunningVerifier,
) -> None:
    """The lab cannot use the retry path to change an enrolled node: another GPU set or another
    name under the same key is refused and recorded, and the node keeps its first enrolment."""
    client = Client(verifier.channel(), verifier.files.operator)
    node = TestNode.from_seed(903)
    first = client.enroll(node)
    retry = client.enroll(node, created_at_ns=time.time_ns() + 1)
    assert (first.already_enrolled, retry.already_enrolled) == (False, True)
    assert retry.log_index == first.log_index
    size = _log_size(verifier)
    more_gpus = enrollment_for(node, nonce=client.nonce(node))
    more_gpus.gpus.add(uuid="GPU-ffffffff-0000-0000-0000-000000000000", model="NVIDIA H100")
    renamed = enrollment_for(node, nonce=client.nonce(node))
    renamed.node_name = "another-name"
    for changed in (more_gpus, renamed):
        with pytest.raises(grpc.RpcError) as info:
            client.registry.EnrollNode(enroll_request(changed, node, client.operator))
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    conflicts = client.audit.ListFindings(
        apb.ListFindingsRequest(lab_id="lab-a", kinds=[fpb.FINDING_KIND_ENROLLMENT_CONFLICT])
    ).findings
    assert len(conflicts) == 2
    assert _log_size(verifier) == size + 2  # the two findings, no enrolment
    info_node = client.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id)).node
    assert [g.uuid for g in info_node.gpus] == [node.gpu_uuid(0), node.gpu_uuid(1)]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _store_state(store: Path) -> tuple[int, bytes]:
    with sqlite3.connect(store) as db:
        size = db.execute("SELECT COUNT(*) FROM log_entries").fetchone()[0]
        secret = db.execute("SELECT value FROM meta WHERE key = 'nonce_secret'").fetchone()[0]
    return int(size), bytes(secret)


def test_the_store_is_private_and_a_too_open_one_is_tightened_or_refused(tmp_path: Path) -> None:
    files = write_verifier_files(tmp_path / "v", store='path = "store/verifier.db"')
    store = files.directory / "store" / "verifier.db"
    log_path = tmp_path / "verifier.log"
    running = start_verifier_process(files, log_path)
    client = Client(running.channel(), files.operator)
    node = TestNode.from_seed(904)
    client.enroll(node)
    assert all(r.status == spb.RECEIPT_STATUS_ACCEPTED for r in client.submit(node.chain(3)))
    # A new store: its directory 0700, the database and SQLite's side files 0600.
    assert _mode(store.parent) == 0o700
    assert _mode(store) == 0o600
    wal = Path(str(store) + "-wal")
    assert wal.exists() and _mode(wal) == 0o600
    assert stop_process(running) == 0
    before = _store_state(store)

    # A store left readable by others (as the verifier made it before): tightened at start,
    # with a warning naming what changed, and nothing lost.
    store.parent.chmod(0o755)
    store.chmod(0o644)
    running = start_verifier_process(files, log_path)
    assert (_mode(store.parent), _mode(store)) == (0o700, 0o600)
    text = log_path.read_text()
    assert "was mode 0755; set to 0700" in text
    assert "was mode 0644; set to 0600" in text
    client = Client(running.channel(), files.operator)
    assert client.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id)).node.node_id
    assert stop_process(running) == 0
    assert _store_state(store) == before

    # A directory others can write to (they could swap the database): refused, exit 2, the
    # fix named, and the store untouched (not even its modes).
    store.parent.chmod(0o777)
    store.chmod(0o644)
    refused = subprocess.run(
        [sys.executable, "-m", "verifier.cli", "verifier", "serve", "--config", str(files.config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "protos")])),
    )
    assert refused.returncode == 2, refused.stderr
    assert f"the store directory {store.parent} is mode 0777" in refused.stderr
    assert "mkdir -m 700" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (_mode(store.parent), _mode(store)) == (0o777, 0o644)
    store.parent.chmod(0o700)
    assert _store_state(store) == before
