"""Each way the verifier can be out of reach, against real sockets, gets its own failure kind: the
metric label, the log level (error when waiting will not fix it) and the fix in the log line."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from agent.clock import SystemClock
from agent.config import VerifierConfig
from agent.failures import FailureKind, classify_rpc_error
from agent.metrics import AgentMetrics
from agent.shipper import Shipper
from agent.spool import Spool
from attest.ids import NodeId
from tests.agent_process import free_port, wait_until
from tests.agent_setup import verifier_config
from tests.builders import TestNode
from tests.fake_verifier import FakeVerifier
from tests.integration.test_shipping import append
from tests.prom_rules import parse_exposition
from tests.tls import TestPki

NODE = TestNode.from_seed(5)
NODE_ID = NodeId(NODE.node_id)


def ship_until_failed(
    tmp_path: Path, config: VerifierConfig, caplog: pytest.LogCaptureFixture
) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], list[logging.LogRecord], int]:
    path = tmp_path / "spool.db"
    spool = Spool.open(path, node_id=NODE_ID)
    append(spool, 2)
    metrics = AgentMetrics(process=False)
    shipper = Shipper(path, NODE_ID, config, clock=SystemClock(), metrics=metrics)
    thread = threading.Thread(target=shipper.run, daemon=True)
    caplog.set_level(logging.INFO, logger="agent.shipper")
    thread.start()
    try:
        wait_until(lambda: any("shipping failed" in r.getMessage() for r in caplog.records), 20)
    finally:
        shipper.stop()
        thread.join(10)
    pending = spool.backlog().count
    spool.close()
    failures = [r for r in caplog.records if "shipping failed" in r.getMessage()]
    return parse_exposition(metrics.render().decode()), failures, pending


def kinds(values: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    return {
        dict(labels)["kind"]
        for (name, labels), value in values.items()
        if name == "pausewatch_agent_ship_errors_total" and value > 0
    }


def test_a_closed_port_is_refused_and_heals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = verifier_config(address=f"127.0.0.1:{free_port()}", backoff_initial_ms=10)
    values, failures, pending = ship_until_failed(tmp_path, config, caplog)
    assert kinds(values) == {"refused"}
    assert failures[0].levelno == logging.WARNING
    assert "heals=yes" in failures[0].getMessage()
    assert pending == 2  # nothing lost
    assert values[("pausewatch_agent_connected", ())] == 0


def test_a_dns_typo_is_dns_at_error_level(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = verifier_config(address="verifier.no-such-host.invalid:443", backoff_initial_ms=10)
    values, failures, pending = ship_until_failed(tmp_path, config, caplog)
    assert kinds(values) == {"dns"}
    assert failures[0].levelno == logging.ERROR
    assert "verifier.address" in failures[0].getMessage()  # the fix names the key
    assert pending == 2


def test_a_wrong_ca_is_tls_at_error_level(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pki, other = TestPki.create(), TestPki.create()
    server = FakeVerifier(tls=(other.server_key_pem, other.server_cert_pem))
    server.start()
    server.add_node(NODE.signer.public_key)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca_pem)
    config = replace(
        verifier_config(address=f"localhost:{server.port}", backoff_initial_ms=10),
        insecure_no_tls=False,
        ca_cert=ca,
    )
    try:
        values, failures, pending = ship_until_failed(tmp_path, config, caplog)
    finally:
        server.stop()
    assert kinds(values) == {"tls"}
    assert failures[0].levelno == logging.ERROR
    assert "verifier.ca_cert" in failures[0].getMessage()
    assert server.received == [] and pending == 2


def test_the_honest_control_ships_and_counts_no_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = FakeVerifier()
    server.start()
    server.add_node(NODE.signer.public_key)
    path = tmp_path / "spool.db"
    spool = Spool.open(path, node_id=NODE_ID)
    append(spool, 3)
    metrics = AgentMetrics(process=False)
    shipper = Shipper(
        path, NODE_ID, verifier_config(address=server.address), clock=SystemClock(),
        metrics=metrics,
    )  # fmt: skip
    thread = threading.Thread(target=shipper.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: spool.backlog().count == 0, 20)
        values = parse_exposition(metrics.render().decode())
    finally:
        shipper.stop()
        thread.join(10)
        server.stop()
        spool.close()
    assert kinds(values) == set()
    assert values[("pausewatch_agent_connected", ())] == 1
    assert values[("pausewatch_agent_last_receipt_timestamp_seconds", ())] > 0
    assert values[("pausewatch_agent_spool_depth", ())] == 0


@pytest.mark.parametrize(
    ("code", "details", "kind"),
    [
        ("UNAVAILABLE", "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1:"
         " Failed to connect to remote host: Connection refused", FailureKind.REFUSED),
        ("UNAVAILABLE", "errors resolving x.invalid:443: [field:hostname lookup error:address "
         "lookup failed for x.invalid:443: Domain name not found]", FailureKind.DNS),
        ("UNAVAILABLE", "DNS resolution failed for x.invalid:443: C-ares status is not ARES_SUCCESS",
         FailureKind.DNS),
        ("UNAVAILABLE", "last error: UNKNOWN: ipv4:127.0.0.1:1: Tls handshake failed "
         "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: CERTIFICATE_VERIFY_FAILED", FailureKind.TLS),
        ("UNAVAILABLE", "last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed",
         FailureKind.UNAVAILABLE),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", FailureKind.TIMEOUT),
        ("PERMISSION_DENIED", "not this lab's node", FailureKind.REJECTED),
        ("UNAUTHENTICATED", "", FailureKind.REJECTED),
    ],
)  # fmt: skip
def test_classification(code: str, details: str, kind: FailureKind) -> None:
    assert classify_rpc_error(code, details) is kind


def test_only_outage_kinds_heal() -> None:
    heal: Callable[[FailureKind], bool] = lambda k: k.heals  # noqa: E731
    assert {k for k in FailureKind if not heal(k)} == {
        FailureKind.TLS,
        FailureKind.DNS,
        FailureKind.REJECTED,
        FailureKind.CONFIG,
    }
