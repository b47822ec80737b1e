"""Two verifier processes over one PostgreSQL database, as docs/verifier.md promises: one log,
sequenced under the database's lock, whichever process appends; each process sees what the
other enrolled and accepted (a chain continues across them, a resend is a duplicate with the
other's log index); the exported bundle re-verifies offline.

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

from attest import merkle
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
        for metrics_port in metrics_ports:
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
            [line] = [
                line
                for line in text.splitlines()
                if line.startswith("pausewatch_verifier_envelopes_received_total ")
            ]
            received.append(float(line.split()[1]))
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
