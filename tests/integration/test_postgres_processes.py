"""Two verifier processes over one PostgreSQL database, as docs/verifier.md promises: one log,
sequenced under the database's lock, whichever process appends; each process sees what the
other enrolled and accepted (a chain continues across them, a resend is a duplicate with the
other's log index); the exported bundle re-verifies offline; a lab that sends each process a
different envelope for one seq is caught equivocating, as seen from either.

Uses the real PostgreSQL server at ``$PAUSEWATCH_TEST_POSTGRES``, in a database of its own.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import findings_pb2 as fpb
from pausewatch.v1 import registry_pb2 as rpb

from attest import merkle
from attest.envelope import envelope_digest
from tests.builders import TestNode
from tests.integration.test_audit_cli import pausewatch
from tests.stores import POSTGRES_DSN
from tests.verifier_harness import (
    Client,
    RunningVerifier,
    enroll_request,
    enrollment_for,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)

S = 10**9
MINUTE = 60 * S
WINDOWS = 40


@pytest.fixture
def database() -> Iterator[str]:
    name = f"pw_processes_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_DSN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def two_verifiers(tmp_path: Path, database: str) -> Iterator[tuple[RunningVerifier, ...]]:
    store = f'engine = "postgres"\ndsn = "{database}"'
    running: list[RunningVerifier] = []
    try:
        for name in (
            "a",
            "b",
        ):  # the same log key, origin and settings: one verifier, two processes
            files = write_verifier_files(tmp_path / name, store=store)
            running.append(start_verifier_process(files, tmp_path / f"{name}.log"))
        yield tuple(running)
    finally:
        for verifier in running:
            if verifier.process is not None and verifier.process.poll() is None:
                assert stop_process(verifier) == 0


def statuses(receipts: list[spb.Receipt]) -> set[int]:
    return {r.status for r in receipts}


@pytest.mark.slow
def test_two_processes_share_one_log_and_one_chain_per_node(
    two_verifiers: tuple[RunningVerifier, RunningVerifier], database: str, tmp_path: Path
) -> None:
    a, b = two_verifiers
    now = time.time_ns()
    t0 = now - now % MINUTE - 2 * WINDOWS * MINUTE
    nodes = [TestNode.from_seed(400 + i, t0_ns=t0) for i in range(4)]
    chains = [node.chain(WINDOWS) for node in nodes]
    client_a, client_b = a.client(), b.client()
    # Enrolled through A, known to B at once: B accepts their windows. Node 3's enrolment carries
    # a nonce that B issued (the nonce secret is shared through the database).
    for node in nodes[:3]:
        client_a.enroll(node, created_at_ns=t0 - S)
    enrollment = enrollment_for(nodes[3], nonce=client_b.nonce(nodes[3]), created_at_ns=t0 - S)
    client_a.registry.EnrollNode(enroll_request(enrollment, nodes[3], client_a.operator))

    # Nodes 0 and 1 stream to A while nodes 2 and 3 stream to B, at the same time; node 3's
    # chain starts on A and goes on on B, so B must extend a head that A wrote.
    first_half = client_a.submit(chains[3][: WINDOWS // 2], batch=7)
    assert statuses(first_half) == {spb.RECEIPT_STATUS_ACCEPTED}
    receipts: dict[int, list[spb.Receipt]] = {}
    errors: list[BaseException] = []

    def send(index: int, client: object, envelopes: list[bytes]) -> None:
        try:
            receipts[index] = client.submit(envelopes, batch=5)  # type: ignore[attr-defined]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=send, args=(0, a.client(), chains[0])),
        threading.Thread(target=send, args=(1, a.client(), chains[1])),
        threading.Thread(target=send, args=(2, b.client(), chains[2])),
        threading.Thread(target=send, args=(3, b.client(), chains[3][WINDOWS // 2 :])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    for index in range(4):
        got = receipts[index]
        assert statuses(got) == {spb.RECEIPT_STATUS_ACCEPTED}, [
            (r.seq, r.status, r.detail) for r in got if r.status != spb.RECEIPT_STATUS_ACCEPTED
        ]
        assert not any(r.gap_recorded for r in got)
    accepted = [r for got in receipts.values() for r in got] + first_half
    indices = sorted(r.log_index for r in accepted)
    assert len(set(indices)) == len(accepted) == 4 * WINDOWS

    # A resend to the other process is a duplicate carrying the first process's log index.
    again = client_b.submit(chains[0][:3])
    assert [(r.status, r.log_index) for r in again] == [
        (spb.RECEIPT_STATUS_DUPLICATE, r.log_index) for r in receipts[0][:3]
    ]

    # A key enrolled nowhere is still unknown after the look in the shared database, and leaves
    # nothing behind (the look caches only what it finds).
    stranger = TestNode.from_seed(499, t0_ns=t0)
    [refused] = client_b.submit(stranger.chain(1))
    assert (refused.status, refused.reason) == (
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_UNKNOWN_KEY,
    )

    # One log: indices 0..N-1 without a hole, each envelope once; the signed checkpoints of both
    # processes commit to the root recomputed from the stored leaves.
    with psycopg.connect(database) as db:
        rows = db.execute(
            "SELECT idx, leaf_hash, kind FROM pausewatch.log_entries ORDER BY idx"
        ).fetchall()
        kinds = {int(row[0]) for row in db.execute("SELECT kind FROM pausewatch.findings")}
    assert [row[0] for row in rows] == list(range(len(rows)))
    assert sum(row[2] == "attestation" for row in rows) == 4 * WINDOWS
    # Findings there are (the lab declared no inventory), but no gap and no equivocation.
    assert kinds == {fpb.FINDING_KIND_UNDECLARED_GPU}
    leaves = [bytes(row[1]) for row in rows]
    for verifier in (a, b):
        client = verifier.client()
        deadline = time.monotonic() + 20
        while True:  # checkpoints are signed every second; wait for one covering everything
            checkpoint = client.audit.GetCheckpoint(apb.GetCheckpointRequest(), timeout=10)
            if checkpoint.tree_size == len(leaves) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert checkpoint.tree_size == len(leaves)
        assert checkpoint.root_hash == merkle.root_from_leaf_hashes(leaves)

    # The evidence re-verifies offline from a bundle exported by B (which wrote half of it).
    bundle = tmp_path / "lab-a.pwbundle"
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 // S))
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((t0 + WINDOWS * MINUTE) // S))
    exported = pausewatch(
        "audit", "export", *b.cli_target(), "--lab", "lab-a", "--since", since, "--until", until,
        "--out", str(bundle),
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    key = json.loads(pausewatch("log", "checkpoint", *a.cli_target(), "--json").stdout)
    verified = pausewatch(
        "audit", "verify-bundle", str(bundle), "--log-key", key["verifier_key"], "--json"
    )
    result = json.loads(verified.stdout)
    assert result["ok"] and result["agrees_with_server"], verified.stdout
    assert result["attestations"] == 4 * WINDOWS


def test_an_equivocation_split_across_two_processes_is_caught_as_seen_from_either(
    two_verifiers: tuple[RunningVerifier, RunningVerifier], database: str
) -> None:
    """The lab shows each process another history: one envelope for a seq to A, a different,
    validly signed one for the same seq (same predecessor) to B. One node does it one after the
    other (B had cached the node's head before A moved it), one at the same moment. Either way
    the second is equivocation: an EQUIVOCATION finding, both envelopes in the one log, the node
    flagged and the lab's report INVALID, as seen from either process. Control: a node that
    alternates between the processes honestly is accepted throughout and is not flagged."""
    a, b = two_verifiers
    now = time.time_ns()
    t0 = now - now % MINUTE - 20 * MINUTE
    liar, racer, honest = (TestNode.from_seed(410 + i, t0_ns=t0) for i in range(3))
    client_a, client_b = a.client(), b.client()
    for node in (liar, racer, honest):
        client_a.enroll(node, created_at_ns=t0 - S)

    def second_version(node: TestNode, chain: list[bytes]) -> bytes:
        """Another envelope for seq 2 after the same seq 1: other utilisation, validly signed."""
        return node.sign_body(node.body(2, envelope_digest(chain[1]), busy_ms=1_000))

    # One after the other: B has the liar's head at seq 1 when A accepts seq 2.
    liar_chain = liar.chain(3)
    assert statuses(client_b.submit(liar_chain[:2])) == {spb.RECEIPT_STATUS_ACCEPTED}
    (liar_first,) = client_a.submit([liar_chain[2]])
    assert liar_first.status == spb.RECEIPT_STATUS_ACCEPTED, liar_first.detail
    liar_other = second_version(liar, liar_chain)
    (liar_fork,) = client_b.submit([liar_other])
    assert (liar_fork.status, liar_fork.reason) == (
        spb.RECEIPT_STATUS_REJECTED,
        spb.REJECT_REASON_FORK,
    ), liar_fork.detail
    # Each process answers the other's envelope for what it is on record as.
    (resent_fork,) = client_a.submit([liar_other])
    assert (resent_fork.reason, resent_fork.log_index) == (
        spb.REJECT_REASON_FORK,
        liar_fork.log_index,
    )
    (resent_first,) = client_b.submit([liar_chain[2]])
    assert (resent_first.status, resent_first.log_index) == (
        spb.RECEIPT_STATUS_DUPLICATE,
        liar_first.log_index,
    )

    # At the same moment: each process gets one of the two seq 2 envelopes.
    racer_chain = racer.chain(3)
    assert statuses(client_a.submit(racer_chain[:2])) == {spb.RECEIPT_STATUS_ACCEPTED}
    racer_other = second_version(racer, racer_chain)
    barrier = threading.Barrier(2)
    raced: dict[bytes, spb.Receipt] = {}
    errors: list[BaseException] = []

    def send(client: Client, raw: bytes) -> None:
        try:
            barrier.wait(timeout=30)
            (raced[raw],) = client.submit([raw])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=send, args=(a.client(), racer_chain[2])),
        threading.Thread(target=send, args=(b.client(), racer_other)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    outcomes = sorted((r.status, r.reason) for r in raced.values())
    assert outcomes == [
        (spb.RECEIPT_STATUS_ACCEPTED, spb.REJECT_REASON_UNSPECIFIED),
        (spb.RECEIPT_STATUS_REJECTED, spb.REJECT_REASON_FORK),
    ], [(r.status, r.reason, r.detail) for r in raced.values()]
    racer_kept = next(raw for raw, r in raced.items() if r.status == spb.RECEIPT_STATUS_ACCEPTED)
    racer_forked = racer_other if racer_kept == racer_chain[2] else racer_chain[2]

    # The control: an honest node alternating between the processes.
    honest_chain = honest.chain(4)
    honest_receipts = [
        receipt
        for seq, raw in enumerate(honest_chain)
        for receipt in (client_a if seq % 2 == 0 else client_b).submit([raw])
    ]
    assert statuses(honest_receipts) == {spb.RECEIPT_STATUS_ACCEPTED}
    assert not any(r.gap_recorded for r in honest_receipts)

    # Both envelopes of each equivocation are in the one log, as fork evidence beside the
    # accepted one.
    with psycopg.connect(database) as db:
        forks = db.execute(
            "SELECT node_id FROM pausewatch.log_entries WHERE kind = 'fork_evidence'"
        ).fetchall()
    assert sorted(bytes(row[0]) for row in forks) == sorted([liar.node_id, racer.node_id])
    expected = {
        liar.node_id: (liar_chain[2], liar_other),
        racer.node_id: (racer_kept, racer_forked),
    }
    for verifier in (a, b):
        client = verifier.client()
        found = client.audit.ListFindings(
            apb.ListFindingsRequest(lab_id="lab-a", kinds=[fpb.FINDING_KIND_EQUIVOCATION]),
            timeout=10,
        ).findings
        assert sorted(f.finding.node_id for f in found) == sorted(expected), verifier.address
        for item in found:
            kept, forked = expected[item.finding.node_id]
            evidence = list(item.finding.evidence_log_indices)
            assert len(evidence) == 2
            entries = [
                client.audit.GetLogEntry(apb.GetLogEntryRequest(index=i), timeout=10).entry
                for i in evidence
            ]
            assert entries == [kept, forked], verifier.address
        states = {
            node.node_id: client.registry.GetNode(
                rpb.GetNodeRequest(node_id=node.node_id), timeout=10
            ).node.state
            for node in (liar, racer, honest)
        }
        assert states == {
            liar.node_id: rpb.NODE_STATE_FLAGGED,
            racer.node_id: rpb.NODE_STATE_FLAGGED,
            honest.node_id: rpb.NODE_STATE_ACTIVE,
        }, verifier.address
        report = client.audit.GetComplianceReport(
            apb.GetComplianceReportRequest(
                lab_id="lab-a", period_start_ns=t0, period_end_ns=t0 + 4 * MINUTE
            ),
            timeout=30,
        ).report
        assert report.verdict == apb.VERDICT_INVALID, verifier.address
        assert {n.node_id: n.flagged for n in report.nodes} == {
            liar.node_id: True,
            racer.node_id: True,
            honest.node_id: False,
        }, verifier.address
        # The honest node's windows are all counted, and no finding names it but the lab's
        # missing inventory declaration.
        honest_summary = next(n for n in report.nodes if n.node_id == honest.node_id)
        assert honest_summary.attestations == 4
        named = {f.finding.kind for f in report.findings if f.finding.node_id == honest.node_id}
        assert named <= {fpb.FINDING_KIND_UNDECLARED_GPU}, named


AGENTS = 24


def test_processes_with_reuse_port_share_one_address(tmp_path: Path, database: str) -> None:
    """Two processes of one verifier (one config, one PostgreSQL store) listen on the same
    address with ``server.reuse_port``: the kernel gives each some of the agents' connections,
    every window is accepted once into one log, and each process serves its own metrics on the
    address ``--metrics-listen`` gives it."""
    import urllib.request

    from tests.agent_process import free_port

    files = write_verifier_files(tmp_path / "v", store=f'engine = "postgres"\ndsn = "{database}"')
    text = files.config.read_text()
    files.config.write_text(text.replace("workers = 8", "workers = 8\nreuse_port = true", 1))
    port = free_port()
    metrics_ports = [free_port(), free_port()]
    running = []
    try:
        for name, metrics_port in zip(("a", "b"), metrics_ports, strict=True):
            running.append(
                start_verifier_process(
                    files,
                    tmp_path / f"{name}.log",
                    extra_args=[
                        "--listen",
                        f"127.0.0.1:{port}",
                        "--metrics-listen",
                        f"127.0.0.1:{metrics_port}",
                    ],
                )
            )
        assert {verifier.address for verifier in running} == {f"127.0.0.1:{port}"}
        now = time.time_ns()
        t0 = now - now % MINUTE - 10 * MINUTE
        nodes = [TestNode.from_seed(700 + i, t0_ns=t0, gpus=1) for i in range(AGENTS)]
        regulator = running[0].client()
        for node in nodes:
            regulator.enroll(node, created_at_ns=t0 - S)
        receipts: dict[int, list[spb.Receipt]] = {}

        def agent(index: int) -> None:
            # A connection of its own (gRPC shares connections between channels unless told).
            channel = grpc.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            with channel:
                client = Client(channel, files.operator)
                receipts[index] = client.submit(nodes[index].chain(3), batch=1)

        threads = [threading.Thread(target=agent, args=(i,)) for i in range(AGENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        received = []
        log_sizes = []
        for metrics_port in metrics_ports:
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
            figures = {
                name: float(value)
                for name, _, value in (line.partition(" ") for line in text.splitlines())
                if name
                in (
                    "pausewatch_verifier_envelopes_received_total",
                    "pausewatch_verifier_log_size_entries",
                )
            }
            received.append(figures["pausewatch_verifier_envelopes_received_total"])
            log_sizes.append(figures["pausewatch_verifier_log_size_entries"])
    finally:
        for verifier in running:
            assert stop_process(verifier) == 0
    assert {i: statuses(got) for i, got in receipts.items()} == {
        i: {spb.RECEIPT_STATUS_ACCEPTED} for i in range(AGENTS)
    }
    # Both processes took part (24 connections all to one: a chance of 1 in 8 million).
    assert all(count > 0 for count in received), received
    assert sum(received) == 3 * AGENTS
    indices = [r.log_index for got in receipts.values() for r in got]
    assert len(set(indices)) == 3 * AGENTS
    # Each process's log size is the shared log's, whichever of them wrote last.
    assert all(size >= max(indices) + 1 for size in log_sizes), (log_sizes, max(indices))


def test_reuse_port_without_a_shared_store_is_refused(tmp_path: Path) -> None:
    """A second process on a SQLite store's address would serve half the agents from a store
    it cannot share: the config is refused, naming the setting."""
    files = write_verifier_files(tmp_path / "v")
    text = files.config.read_text()
    files.config.write_text(text.replace("workers = 8", "workers = 8\nreuse_port = true", 1))
    served = pausewatch("verifier", "serve", "--config", str(files.config))
    assert served.returncode == 2, served.stderr
    assert "server.reuse_port: needs store.engine = 'postgres'" in served.stderr
    assert not files.store.exists()  # refused before anything was created
