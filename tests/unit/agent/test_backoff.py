"""Backoff with full jitter, and the shipper's use of it between failed sessions."""

from __future__ import annotations

import random
from pathlib import Path

import grpc

from agent.config import VerifierConfig
from agent.shipper import Backoff, Shipper
from agent.spool import Spool
from attest.ids import NodeId
from tests.agent_setup import verifier_config
from tests.builders import T0_NS
from tests.fakes import FakeClock

MS = 1_000_000


def test_full_jitter_delays_stay_under_a_doubling_capped_ceiling() -> None:
    backoff = Backoff(100, 1000, random.Random(7))
    reference = random.Random(7)
    delays = [backoff.next_delay_ns() for _ in range(8)]
    ceilings = [100, 200, 400, 800, 1000, 1000, 1000, 1000]
    assert delays == [int(reference.uniform(0, c) * MS) for c in ceilings]
    assert all(0 <= d <= c * MS for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered, not a fixed schedule
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay_ns() <= 100 * MS


def test_the_shipper_backs_off_between_failed_sessions(tmp_path: Path) -> None:
    node_id = NodeId(b"\x01" * 32)
    Spool.open(tmp_path / "spool.db", node_id=node_id).close()
    clock = FakeClock(T0_NS)
    attempts: list[int] = []
    shipper: Shipper

    def unreachable(config: VerifierConfig) -> grpc.Channel:
        attempts.append(clock.time_ns())
        if len(attempts) == 6:
            shipper.stop()
        raise grpc.RpcError("connection refused")

    shipper = Shipper(
        tmp_path / "spool.db",
        node_id,
        verifier_config(),
        clock=clock,
        channel_factory=unreachable,
        rng=random.Random(3),
    )
    shipper.run()  # returns once stop() was called, after the sixth attempt
    reference = Backoff(100, 1000, random.Random(3))
    assert clock.sleeps == [reference.next_delay_ns() for _ in range(5)]
    spool = Spool.open(tmp_path / "spool.db", node_id=node_id)
    errors = spool.stats().last_errors
    assert len(errors) == 5
    assert all(source == "ship" for _, source, _ in errors)
