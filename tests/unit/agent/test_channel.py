from __future__ import annotations

from typing import Any

import grpc
import pytest

from agent import shipper
from agent.config import VerifierConfig
from verifier.config import LimitsConfig


def test_the_agent_channel_carries_its_keepalive_and_no_bandwidth_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[dict[str, Any]] = []

    def insecure_channel(address: str, options: list[tuple[str, Any]]) -> str:
        seen.append(dict(options))
        return address

    monkeypatch.setattr(grpc, "insecure_channel", insecure_channel)
    config = VerifierConfig(
        address="127.0.0.1:1",
        ca_cert=None,
        client_cert=None,
        client_key=None,
        server_name_override="",
        insecure_no_tls=True,
        rpc_timeout_ms=10_000,
        nonce_refresh_ms=60_000,
        batch_max_envelopes=64,
        batch_max_bytes=1 << 20,
        backoff_initial_ms=1_000,
        backoff_max_ms=60_000,
    )
    shipper.open_channel(config)

    assert seen == [dict(shipper.CHANNEL_OPTIONS)]
    assert seen[0]["grpc.keepalive_time_ms"] == shipper.KEEPALIVE_MS
    assert seen[0]["grpc.http2.bdp_probe"] == 0


def test_the_agent_pings_no_more_often_than_the_verifier_allows() -> None:
    """A client that pings more often than min_client_ping_interval_s gets GOAWAY after two
    strikes: every agent of a fleet would lose its stream."""
    assert LimitsConfig().min_client_ping_interval_s * 1000 <= shipper.KEEPALIVE_MS
