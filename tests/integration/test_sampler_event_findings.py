"""What the verifier makes of the agent's CLOCK_JUMP and DRIVER_RELOAD (docs/threat-model.md,
"Manipulate the clock" and "Reload the driver to reset the energy counters").

The windows are the real agent's: its daemon signs them over a simulated node with a fake clock
(a wall-clock step, a driver reload during a run, a driver reload while the agent was down); the
test enrols the agent's node key at an in-process verifier and submits them. Each test has a
steady agent beside the one the event happens to, over the same time at the same verifier.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pausewatch.v1 import attestation_pb2 as pb
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import findings_pb2 as fpb
from pausewatch.v1 import registry_pb2 as rpb

from agent.config import AgentConfig
from agent.daemon import Daemon, DaemonOptions, spool_path
from agent.enroll import authorize_enrollment, build_enrollment, sign_enrollment_request
from agent.sampler.sim import SimSampler, load_scenario
from agent.spool import Spool
from attest.attestation import parse_attestation_body
from attest.envelope import parse_envelope
from attest.keys import raw_public_key
from tests.agent_setup import SCENARIO, write_state_dir
from tests.fakes import FakeClock
from tests.unit.agent.test_daemon import StopAfter, signer
from tests.verifier_harness import Client, RunningVerifier, running_verifier

S = 10**9
MINUTE = 60 * S


@pytest.fixture
def verifier(tmp_path: Path) -> Iterator[RunningVerifier]:
    with running_verifier(tmp_path / "verifier") as v:
        yield v


def recent_t0() -> int:
    now = time.time_ns()
    return now - now % MINUTE - 3600 * S


@dataclass
class Agent:
    """One agent's state directory and simulated node (its own key and GPU UUIDs)."""

    config: AgentConfig
    sim_seed: int

    @classmethod
    def make(cls, root: Path, *, key_seed: int, sim_seed: int, t0: int, faults: str = "") -> Agent:
        config = write_state_dir(root, window_s="10", seed=key_seed)
        assert config.sim.scenario is not None
        config.sim.scenario.write_text(
            f"start_unix_s = {t0 // S}\n"
            + SCENARIO.replace("seed = 7", f"seed = {sim_seed}")
            + faults
        )
        return cls(config, sim_seed)

    def sampler(self, t0: int) -> SimSampler:
        assert self.config.sim.scenario is not None
        return SimSampler(
            load_scenario(self.config.sim.scenario),
            sample_interval_ms=self.config.sampling.sample_interval_ms,
            boot_time_ns=t0 - 3600 * S,
        )

    def run(
        self, clock: FakeClock, t0: int, polls: int, on_poll: Callable[[int], None] | None = None
    ) -> None:
        """Run the daemon (signing, not shipping) for ``polls`` one-second polls."""
        sampler = StopAfter(self.sampler(t0), polls, on_poll)
        daemon = Daemon(
            self.config,
            sampler,  # type: ignore[arg-type]
            signer(self.config),
            clock=clock,
            options=DaemonOptions(ship=False),
        )
        sampler.daemon = daemon
        daemon.run()

    def envelopes(self) -> list[bytes]:
        spool = Spool.open(spool_path(self.config))
        try:
            return [e.envelope for e in spool.envelopes()]
        finally:
            spool.close()

    def enrol(self, client: Client, t0: int) -> bytes:
        """Enrol this agent's node key with its simulated GPUs, as ``enroll`` does."""
        node = signer(self.config)
        nonce = client.attestation.GetChallenge(
            spb.GetChallengeRequest(node_id=node.key_id), timeout=10
        ).nonce
        payload = build_enrollment(
            lab_id="lab-a",
            node_public_key=raw_public_key(node.public_key),
            gpus=self.sampler(t0).inventory(),
            node_name=f"sim-{self.sim_seed}",
            agent_version="0.1.0",
            created_at_ns=t0 - S,
            verifier_nonce=nonce,
        )
        request = sign_enrollment_request(node, payload)
        client.registry.EnrollNode(
            rpb.EnrollNodeRequest(
                enrollment_envelope=request,
                authorization_envelope=authorize_enrollment(client.operator, request),
            ),
            timeout=10,
        )
        return node.key_id


def submit(client: Client, envelopes: list[bytes]) -> dict[int, int]:
    """Submit in order; every one is accepted. Returns seq -> log index."""
    receipts = client.submit(envelopes)
    assert [r.status for r in receipts] == [spb.RECEIPT_STATUS_ACCEPTED] * len(envelopes)
    return {r.seq: r.log_index for r in receipts}


def bodies(envelopes: list[bytes]) -> list[pb.AttestationBody]:
    return [parse_attestation_body(parse_envelope(raw).payload) for raw in envelopes]


def findings(client: Client, kind: int) -> list[fpb.Finding]:
    listed = client.audit.ListFindings(
        apb.ListFindingsRequest(lab_id="lab-a", kinds=[kind], page_size=1000), timeout=10
    ).findings
    return [f.finding for f in listed]


def with_event(items: list[pb.AttestationBody], kind: int) -> list[pb.AttestationBody]:
    return [b for b in items if any(e.kind == kind for e in b.events)]


def test_a_clock_jump_the_agent_records_is_a_sampler_event_finding(
    tmp_path: Path, verifier: RunningVerifier
) -> None:
    t0 = recent_t0()
    jumping = Agent.make(tmp_path / "jumping", key_seed=71, sim_seed=71, t0=t0)
    steady = Agent.make(tmp_path / "steady", key_seed=72, sim_seed=72, t0=t0)
    clock = FakeClock(t0)

    def jump(count: int) -> None:
        if count == 15:
            clock.jump_wall(7 * S)

    jumping.run(clock, t0, polls=40, on_poll=jump)
    steady.run(FakeClock(t0), t0, polls=47)
    client = verifier.client()
    jumping_id, steady_id = jumping.enrol(client, t0), steady.enrol(client, t0)
    jumping_envelopes, steady_envelopes = jumping.envelopes(), steady.envelopes()
    (jumped,) = with_event(bodies(jumping_envelopes), pb.EVENT_KIND_CLOCK_JUMP)
    assert with_event(bodies(steady_envelopes), pb.EVENT_KIND_CLOCK_JUMP) == []
    log_index = submit(client, jumping_envelopes)
    submit(client, steady_envelopes)

    (finding,) = findings(client, fpb.FINDING_KIND_SAMPLER_EVENT)
    assert finding.node_id == jumping_id != steady_id
    assert (finding.period_start_ns, finding.period_end_ns) == (
        jumped.window_start_ns,
        jumped.window_end_ns,
    )
    assert list(finding.evidence_log_indices) == [log_index[jumped.seq]]
    assert finding.summary.startswith("EVENT_KIND_CLOCK_JUMP: ")
    assert "7000 ms" in finding.summary


def test_driver_reloads_are_driver_reload_findings(
    tmp_path: Path, verifier: RunningVerifier
) -> None:
    """During a run the agent marks the window RESET with a DRIVER_RELOAD event; while the agent
    was down it cannot, and the verifier sees the counter start lower than the previous window
    ended. Both are DRIVER_RELOAD findings naming the node and the windows; a steady node over the
    same time has none."""
    t0 = recent_t0()
    reloading = Agent.make(
        tmp_path / "reloading",
        key_seed=73,
        sim_seed=73,
        t0=t0,
        faults=(
            "[[fault]]\nat_s = 25\nkind = 'driver_reload'\n"  # during the first run
            "[[fault]]\nat_s = 50\nkind = 'driver_reload'\n"  # while the agent is down
        ),
    )
    steady = Agent.make(tmp_path / "steady", key_seed=74, sim_seed=74, t0=t0)
    clock = FakeClock(t0)
    reloading.run(clock, t0, polls=40)  # t0 .. t0 + 39 s
    clock.advance(21 * S)  # down across the second reload; back at t0 + 61 s
    reloading.run(clock, t0, polls=30)
    steady_clock = FakeClock(t0)
    steady.run(steady_clock, t0, polls=40)
    steady_clock.advance(21 * S)
    steady.run(steady_clock, t0, polls=30)  # the same restart, no reload
    client = verifier.client()
    reloading_id, steady_id = reloading.enrol(client, t0), steady.enrol(client, t0)
    envelopes = reloading.envelopes()
    chain = bodies(envelopes)
    (marked,) = with_event(chain, pb.EVENT_KIND_DRIVER_RELOAD)
    assert marked.window_start_ns <= t0 + 25 * S < marked.window_end_ns
    assert all(g.energy_counter_state == pb.ENERGY_COUNTER_STATE_RESET for g in marked.gpus)
    (restarted,) = [b for b in with_event(chain, pb.EVENT_KIND_AGENT_START) if b.seq > 0]
    before = chain[restarted.seq - 1]
    # The silent drop: no event, counters OK, each GPU starting below where it ended.
    assert with_event([restarted], pb.EVENT_KIND_DRIVER_RELOAD) == []
    for old, new in zip(before.gpus, restarted.gpus, strict=True):
        assert new.energy_counter_state == pb.ENERGY_COUNTER_STATE_OK
        assert new.energy_start_mj < old.energy_end_mj
    steady_chain = bodies(steady.envelopes())
    for a, b in itertools.pairwise(steady_chain):
        assert all(
            n.energy_start_mj >= o.energy_end_mj for o, n in zip(a.gpus, b.gpus, strict=True)
        )
    log_index = submit(client, envelopes)
    submit(client, steady.envelopes())

    reloads = findings(client, fpb.FINDING_KIND_DRIVER_RELOAD)
    assert all(f.node_id == reloading_id != steady_id for f in reloads)
    by_evidence = {tuple(f.evidence_log_indices): f for f in reloads}
    assert set(by_evidence) == {
        (log_index[marked.seq],),
        (log_index[before.seq], log_index[restarted.seq]),
    }
    during = by_evidence[(log_index[marked.seq],)]
    assert (during.period_start_ns, during.period_end_ns) == (
        marked.window_start_ns,
        marked.window_end_ns,
    )
    assert f"seq {marked.seq}" in during.summary
    across = by_evidence[(log_index[before.seq], log_index[restarted.seq])]
    assert (across.period_start_ns, across.period_end_ns) == (
        before.window_end_ns,
        restarted.window_start_ns,
    )
    assert across.gpu_uuid == restarted.gpus[0].uuid
    assert f"between seq {before.seq} and {restarted.seq}" in across.summary
