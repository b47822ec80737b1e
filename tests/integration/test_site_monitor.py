"""The policy monitor logs a site whose meter sees energy its attested GPUs do not explain, once
an hour, and nothing for an honest site."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import findings_pb2 as fpb

from attest.keys import Ed25519Signer
from tests.builders import TestNode, fixed_private_key
from tests.meters import NON_GPU_W, QUARTER_NS, gateway_readings, site_file
from tests.verifier_harness import enroll_request, enrollment_for, write_verifier_files
from verifier.config import load_config
from verifier.server.server import VerifierServer

S = 10**9
MINUTE = 60 * S
GATEWAY = Ed25519Signer.from_private_key(fixed_private_key(311))

# No compute rule at all: the sites are monitored all the same.
POLICY = """
format_version = 1
policy_id = "coverage-only"
version = 1
lab_id = "lab-a"

[[rules]]
id = "coverage"
kind = "coverage"
min_ratio = "1%"
"""


@pytest.mark.parametrize(("hidden_w", "expected"), [(0, 0), (8 * 700, 1)])
def test_unexplained_site_energy_is_a_monitor_finding(
    tmp_path: Path, hidden_w: int, expected: int
) -> None:
    directory = tmp_path / "v"
    directory.mkdir()
    (directory / "dc1.toml").write_text(site_file(GATEWAY), encoding="utf-8")
    files = write_verifier_files(
        directory,
        policy=POLICY,
        extra_lab='sites = ["dc1.toml"]',
        extra_config="[monitor]\ninterval_s = 0\nlate_s = 3600\n",
    )
    server = VerifierServer.from_config(load_config(files.config))
    try:
        now = time.time_ns()
        t0 = now - now % QUARTER_NS - 2 * QUARTER_NS
        node = TestNode.from_seed(310, t0_ns=t0)
        operator = Ed25519Signer.from_private_key(fixed_private_key(100))
        request = enroll_request(enrollment_for(node, created_at_ns=t0 - S), node, operator)
        server.registry.enroll(request.enrollment_envelope, request.authorization_envelope)
        result = server.ingestor.submit(node.chain(15))
        assert {r.status for r in result.receipts} == {spb.RECEIPT_STATUS_ACCEPTED}
        receipts = server.sites.submit(
            gateway_readings(GATEWAY, t0, 2 * 350 + NON_GPU_W + hidden_w, quarters=1)
        )
        assert all(r.accepted for r in receipts)
        logged = server.monitor.check_all()
        rows = server.core.store.findings(
            "lab-a", kinds=[fpb.FINDING_KIND_SITE_ENERGY_UNEXPLAINED], limit=10
        )
        assert len(rows) == expected
        assert len(logged) == expected
        if expected:
            finding = fpb.Finding.FromString(rows[0].finding)
            assert finding.severity == fpb.SEVERITY_CRITICAL
            assert list(finding.evidence_log_indices) == [receipts[0].log_index]
            assert t0 <= finding.period_start_ns < finding.period_end_ns <= t0 + QUARTER_NS
            assert "dc1" in finding.summary
            assert server.monitor.check_all() == []  # once an hour, not every pass
    finally:
        server.stop()


def test_a_schema_2_store_gets_its_window_energy_rolled_up(tmp_path: Path) -> None:
    """A store written before site power (schema 2) is upgraded at start: the attestations get
    their energy column, filled from every stored window's envelope."""
    import sqlite3

    from verifier.store.sqlite import SqliteStore

    files = write_verifier_files(tmp_path / "v")
    server = VerifierServer.from_config(load_config(files.config))
    now = time.time_ns()
    t0 = now - now % MINUTE - 30 * MINUTE
    node = TestNode.from_seed(312, t0_ns=t0)
    operator = Ed25519Signer.from_private_key(fixed_private_key(100))
    request = enroll_request(enrollment_for(node, created_at_ns=t0 - S), node, operator)
    server.registry.enroll(request.enrollment_envelope, request.authorization_envelope)
    server.ingestor.submit(node.chain(5))
    server.stop()
    db_path = files.store
    with sqlite3.connect(db_path) as db:
        fresh = db.execute("SELECT energy_mj FROM attestations ORDER BY window_start_ns")
        energies = [row[0] for row in fresh.fetchall()]
        assert energies == [2 * 21_000_000] * 5  # two GPUs at 21 kJ a window, from ingest
        # As a schema-2 verifier left it: no energy column at all.
        db.execute("ALTER TABLE attestations DROP COLUMN energy_mj")
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (b"2",))
    store = SqliteStore.open(db_path)
    try:
        assert store.get_meta("schema_version") == b"3"
        rows = store.window_energy([node.node_id], 0, now)
        assert [energy for _, _, _, energy in rows] == energies
        assert [start for _, start, _, _ in rows] == [t0 + i * MINUTE for i in range(5)]
    finally:
        store.close()
