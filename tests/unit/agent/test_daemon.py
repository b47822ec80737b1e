"""The daemon's loop with a fake clock: restarts, a full spool, nonces, clock jumps, bad ticks."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest
from pausewatch.v1 import attestation_pb2 as pb
from pausewatch.v1 import envelope_pb2

from agent.config import AgentConfig
from agent.daemon import AgentLockedError, Daemon, DaemonOptions, StateLock, spool_path
from agent.identity import agent_digest
from agent.metrics import AgentMetrics
from agent.sampler.base import GpuIdentity, Poll
from agent.sampler.replay import ReplaySampler, parse_recording
from agent.sampler.sim import SimSampler, load_scenario
from agent.spool import EnvelopeStatus, Nonce, ReceiptRecord, Spool
from attest import keys
from attest.attestation import parse_attestation_body
from attest.chain import ChainItem, verify_chain
from attest.envelope import PayloadType, StaticKeyring, parse_envelope, verify_envelope
from attest.errors import SignatureError
from attest.samples import SAMPLE_SIZE, decode_sample, samples_root
from tests.agent_setup import write_state_dir
from tests.builders import T0_NS
from tests.fakes import FakeClock
from tests.prom_rules import parse_exposition
from tests.testdata import REPO_ROOT
from tests.unit.agent.test_replay import HAND_CSV

S = 1_000_000_000


class StopAfter:
    """Wraps a sampler; stops the daemon after ``polls`` polls (and can misbehave)."""

    def __init__(self, inner: SimSampler, polls: int, on_poll=None) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.polls = polls
        self.count = 0
        self.daemon: Daemon | None = None
        self.on_poll = on_poll

    backend = property(lambda self: self.inner.backend)
    sample_interval_ms = property(lambda self: self.inner.sample_interval_ms)
    realtime = property(lambda self: self.inner.realtime)

    def open(self, now_ns: int | None = None) -> None:
        self.inner.open(now_ns)

    def inventory(self) -> tuple[GpuIdentity, ...]:
        return self.inner.inventory()

    def close(self) -> None:
        self.inner.close()

    def poll(self, now_ns: int) -> Poll | None:
        self.count += 1
        if self.on_poll is not None:
            self.on_poll(self.count)
        if self.count >= self.polls and self.daemon is not None:
            self.daemon.stop()
        return self.inner.poll(now_ns)


def signer(config: AgentConfig) -> keys.Ed25519Signer:
    return keys.Ed25519Signer.from_private_key(keys.load_private_key(config.node.key_file))


def run_daemon(
    config: AgentConfig,
    clock: FakeClock,
    polls: int,
    on_poll=None,  # type: ignore[no-untyped-def]
) -> Daemon:
    assert config.sim.scenario is not None
    sim = SimSampler(
        load_scenario(config.sim.scenario),
        sample_interval_ms=config.sampling.sample_interval_ms,
        boot_time_ns=T0_NS - 3600 * S,
    )
    sampler = StopAfter(sim, polls, on_poll)
    daemon = Daemon(config, sampler, signer(config), clock=clock, options=DaemonOptions(ship=False))
    sampler.daemon = daemon
    daemon.run()
    return daemon


def bodies(config: AgentConfig) -> list[pb.AttestationBody]:
    spool = Spool.open(spool_path(config))
    try:
        return [
            parse_attestation_body(parse_envelope(e.envelope).payload) for e in spool.envelopes()
        ]
    finally:
        spool.close()


def events(body: pb.AttestationBody, kind: int) -> list[pb.SamplerEvent]:
    return [e for e in body.events if e.kind == kind]


def test_windows_chain_and_restarts_are_gaps(tmp_path: Path) -> None:
    config = write_state_dir(tmp_path, window_s="10")
    clock = FakeClock(T0_NS + 3 * S)
    run_daemon(config, clock, polls=35)  # 3 s .. 37 s: windows [3,10) [10,20) [20,30) [30,38)
    clock.advance(25 * S)  # down for a while
    run_daemon(config, clock, polls=20)
    all_bodies = bodies(config)
    spool = Spool.open(spool_path(config))
    envelopes = spool.envelopes()
    verify_chain(
        ChainItem(b.seq, b.prev_digest, e.digest)
        for b, e in zip(all_bodies, envelopes, strict=True)
    )
    assert [b.seq for b in all_bodies] == list(range(len(all_bodies)))
    starts = [b for b in all_bodies if events(b, pb.EVENT_KIND_AGENT_START)]
    assert [b.seq for b in starts] == [0, 4]
    first = events(starts[0], pb.EVENT_KIND_AGENT_START)[0]
    assert first.gap_start_ns == first.gap_end_ns == all_bodies[0].window_start_ns
    restart = events(starts[1], pb.EVENT_KIND_AGENT_START)[0]
    assert restart.gap_start_ns == all_bodies[3].window_end_ns
    assert restart.gap_end_ns == all_bodies[4].window_start_ns
    assert restart.gap_end_ns > restart.gap_start_ns
    for a, b in itertools.pairwise(all_bodies):
        assert b.window_start_ns >= a.window_end_ns
    # Every body carries the samples root of the samples kept for it.
    for body, envelope in zip(all_bodies, envelopes, strict=True):
        blob = spool.samples(envelope.seq)
        assert blob is not None
        samples = [
            decode_sample(blob[i : i + SAMPLE_SIZE]) for i in range(0, len(blob), SAMPLE_SIZE)
        ]
        assert samples_root(samples) == body.samples_merkle_root
        assert len(samples) == body.samples_count
    assert all(b.sampler_backend == pb.SAMPLER_BACKEND_SIM for b in all_bodies)
    assert all(len(b.agent_digest) == 32 for b in all_bodies)


def test_a_full_spool_becomes_a_recorded_gap_and_nothing_is_dropped(tmp_path: Path) -> None:
    config = write_state_dir(tmp_path, window_s="10", extra="[spool]\nmax_unacked_envelopes = 2\n")
    clock = FakeClock(T0_NS)
    run_daemon(config, clock, polls=60)  # 6 windows' worth; only 2 fit
    spool = Spool.open(spool_path(config))
    assert [e.seq for e in spool.envelopes()] == [0, 1]
    first_two = [e.envelope for e in spool.envelopes()]
    # The verifier acknowledges them: room again.
    spool.record_receipts(
        [
            ReceiptRecord(e.digest, EnvelopeStatus.ACCEPTED, log_index=i)
            for i, e in enumerate(spool.envelopes())
        ],
        at_ns=clock.time_ns(),
    )
    run_daemon(config, clock, polls=25)
    assert [e.envelope for e in spool.envelopes()][:2] == first_two  # never dropped or rewritten
    all_bodies = bodies(config)
    gap_body = all_bodies[2]
    full = events(gap_body, pb.EVENT_KIND_SPOOL_FULL)
    restart = events(gap_body, pb.EVENT_KIND_AGENT_START)
    assert len(restart) == 1
    # The first run could not sign windows [20, 30) .. [50, 60): the restart's gap starts at the
    # end of seq 1, so it covers them too.
    assert restart[0].gap_start_ns == all_bodies[1].window_end_ns == T0_NS + 20 * S
    assert full == []  # the full spool was in the previous run: the restart gap covers it


def test_spool_full_within_one_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="agent.daemon")
    config = write_state_dir(tmp_path, window_s="10", extra="[spool]\nmax_unacked_envelopes = 1\n")
    clock = FakeClock(T0_NS)
    path = spool_path(config)

    def acknowledge_at(count: int) -> None:
        if count == 45:  # during window [40, 50): the verifier catches up
            spool = Spool.open(path)
            for e in spool.envelopes():
                spool.record_receipts(
                    [ReceiptRecord(e.digest, EnvelopeStatus.ACCEPTED, log_index=e.seq)], at_ns=0
                )
            spool.close()

    run_daemon(config, clock, polls=62, on_poll=acknowledge_at)
    all_bodies = bodies(config)
    # seq 0 = [0, 10); [10, 20) .. [30, 40) not signed (spool full); seq 1 = [40, 50); then the
    # spool is full again (seq 1 is not acknowledged) and [50, 60) is not signed either.
    assert [b.seq for b in all_bodies] == [0, 1]
    assert all_bodies[1].window_start_ns == T0_NS + 40 * S
    full = events(all_bodies[1], pb.EVENT_KIND_SPOOL_FULL)
    assert len(full) == 1
    assert (full[0].gap_start_ns, full[0].gap_end_ns) == (T0_NS + 10 * S, T0_NS + 40 * S)
    messages = [r.getMessage() for r in caplog.records]
    stopped = [m for m in messages if m.startswith("window not attested")]
    resumed = [m for m in messages if m.startswith("spool writable again")]
    assert len(stopped) == 2  # once per gap, not once per window
    assert resumed == [
        f"spool writable again seq=1: signing resumed; the gap since "
        f"start_ns={T0_NS + 10 * S} is recorded as a SPOOL_FULL event"
    ]


def test_the_latest_nonce_goes_into_every_window(tmp_path: Path) -> None:
    config = write_state_dir(tmp_path, window_s="10")
    spool = Spool.open(spool_path(config))
    spool.store_nonce(Nonce(b"N" * 24, 1, 2, 3))
    spool.close()
    run_daemon(config, FakeClock(T0_NS), polls=25)
    assert {b.verifier_nonce for b in bodies(config)} == {b"N" * 24}


def test_a_wall_clock_jump_is_recorded(tmp_path: Path) -> None:
    config = write_state_dir(tmp_path, window_s="10")
    clock = FakeClock(T0_NS)

    def jump(count: int) -> None:
        if count == 5:
            clock.jump_wall(7 * S)

    run_daemon(config, clock, polls=30, on_poll=jump)
    jumps = [e for b in bodies(config) for e in events(b, pb.EVENT_KIND_CLOCK_JUMP)]
    assert jumps
    assert "7000 ms" in jumps[0].detail


def test_a_failing_tick_is_recorded_and_the_loop_goes_on(tmp_path: Path) -> None:
    config = write_state_dir(tmp_path, window_s="10")

    def explode(count: int) -> None:
        if count == 3:
            raise RuntimeError("something odd")

    daemon = run_daemon(config, FakeClock(T0_NS), polls=25, on_poll=explode)
    assert daemon.windows_signed >= 2
    spool = Spool.open(spool_path(config))
    assert spool.stats().last_errors[0][1:] == ("agent", "RuntimeError")


def test_offline_replay_through_the_daemon(tmp_path: Path) -> None:
    config = write_state_dir(tmp_path, window_s="2")
    recording = parse_recording(HAND_CSV)
    sampler = ReplaySampler(recording, sample_interval_ms=1000)
    daemon = Daemon(
        config,
        sampler,
        signer(config),
        clock=FakeClock(T0_NS + 10**6 * S),
        options=DaemonOptions(ship=False),
    )
    daemon.run()
    all_bodies = bodies(config)
    assert [(b.window_start_ns - T0_NS) // S for b in all_bodies] == [0, 2, 4]
    assert all_bodies[1].gpus[0].busy_ms == 765  # the hand computation in test_replay.py
    assert all(b.sampler_backend == pb.SAMPLER_BACKEND_REPLAY for b in all_bodies)


def test_one_agent_per_state_directory(tmp_path: Path) -> None:
    config = write_state_dir(tmp_path)
    lock = StateLock(config.node.state_dir)
    lock.acquire()
    try:
        assert StateLock(config.node.state_dir).held_by_other()
        with pytest.raises(AgentLockedError, match="another pausewatch-agent"):
            run_daemon(config, FakeClock(T0_NS), polls=2)
    finally:
        lock.release()
    assert not StateLock(config.node.state_dir).held_by_other()


def test_a_clock_step_back_does_not_stall_polling_and_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_state_dir(tmp_path, window_s="10")
    clock = FakeClock(T0_NS)

    def step_back(count: int) -> None:
        if count == 12:
            clock.jump_wall(-96 * S)

    caplog.set_level("WARNING", logger="agent.daemon")
    run_daemon(config, clock, polls=30, on_poll=step_back)
    # The loop never waits for the old time to come back: no sleep longer than two intervals.
    assert max(clock.sleeps) <= 2 * S
    assert any("wall clock stepped back" in r.getMessage() for r in caplog.records)
    jumps = [e for b in bodies(config) for e in events(b, pb.EVENT_KIND_CLOCK_JUMP)]
    assert jumps
    assert "-96" in jumps[0].detail


def test_the_signing_loop_sets_the_spool_gauges_without_a_shipper(tmp_path: Path) -> None:
    config = write_state_dir(tmp_path, window_s="2")
    clock = FakeClock(T0_NS)
    metrics = AgentMetrics(process=False)
    sim = SimSampler(
        load_scenario(config.sim.scenario),  # type: ignore[arg-type]
        sample_interval_ms=1000,
        boot_time_ns=T0_NS - 3600 * S,
    )
    sampler = StopAfter(sim, 9)
    daemon = Daemon(
        config, sampler, signer(config), clock=clock, metrics=metrics,
        options=DaemonOptions(ship=False),
    )  # fmt: skip
    sampler.daemon = daemon
    daemon.run()
    spool = Spool.open(spool_path(config))
    backlog = spool.backlog()
    spool.close()
    assert backlog.count == daemon.windows_signed >= 3
    values = parse_exposition(metrics.render().decode())
    assert values[("pausewatch_agent_spool_depth", ())] == backlog.count
    assert values[("pausewatch_agent_spool_bytes", ())] == backlog.size_bytes
    assert values[("pausewatch_agent_last_signed_timestamp_seconds", ())] > T0_NS / S
    assert values[("pausewatch_agent_chain_head_seq", ())] == backlog.count - 1
    build = [k for k in values if k[0] == "pausewatch_agent_build_info"]
    assert build and ("backend", "sim") in build[0][1]


def test_the_signing_loop_counts_a_lost_gpu_as_unreadable_until_it_answers(
    tmp_path: Path,
) -> None:
    config = write_state_dir(tmp_path, window_s="2")
    assert config.sim.scenario is not None
    with config.sim.scenario.open("a") as scenario:
        scenario.write("[[fault]]\nat_s = 3\nkind = 'gpu_lost'\ngpu = 1\nduration_s = 4\n")
    metrics = AgentMetrics(process=False)
    gauge: list[float] = []  # before each poll: what the previous poll left

    def on_poll(count: int) -> None:
        gauge.append(parse_exposition(metrics.render().decode())[GPUS_UNREADABLE])

    sim = SimSampler(
        load_scenario(config.sim.scenario), sample_interval_ms=1000, boot_time_ns=T0_NS - 3600 * S
    )
    sampler = StopAfter(sim, 12, on_poll)
    daemon = Daemon(
        config, sampler, signer(config), clock=FakeClock(T0_NS), metrics=metrics,
        options=DaemonOptions(ship=False),
    )  # fmt: skip
    sampler.daemon = daemon
    daemon.run()
    gauge.append(parse_exposition(metrics.render().decode())[GPUS_UNREADABLE])
    # unreadable for the four polls of the fault, from the poll that found it lost
    assert [value for value, _ in itertools.groupby(gauge)] == [0.0, 1.0, 0.0]
    assert gauge.count(1.0) == 4


GPUS_UNREADABLE = ("pausewatch_agent_gpus_unreadable", ())


def test_spool_bytes_per_window_and_gpu_match_the_sizing_guidance(tmp_path: Path) -> None:
    """docs/agent.md, 'Disk sizing': raw samples are 51 B per GPU per sample, and the samples,
    not the envelope, dominate (bench/bench_spool_size.py measures the whole file)."""
    config = write_state_dir(tmp_path, window_s="10")
    run_daemon(config, FakeClock(T0_NS), polls=61)
    spool = Spool.open(spool_path(config))
    try:
        full = [e for e in spool.envelopes() if e.seq > 0][:-1]  # whole 10 s windows
        samples = [spool.samples(e.seq) for e in full]
    finally:
        spool.close()
    assert len(full) >= 4
    gpus = 2
    assert all(s is not None and len(s) == SAMPLE_SIZE * 10 * gpus for s in samples)
    sizes = [len(e.envelope) for e in full]
    assert all(600 < size < 1024 for size in sizes), sizes  # ~2.3 KB for 8 GPUs


def documented_agent_digest(config_json: bytes) -> bytes:
    """The agent digest as docs/wire-format.md section 3 and agent/identity.py define it, built
    here from the files themselves: SHA-256 of a header, one line per .py file of the agent and
    attest packages (sorted by '/'-separated path), and the SHA-256 of the canonical config."""
    files = sorted(
        (path.relative_to(REPO_ROOT).as_posix(), path)
        for package in ("agent", "attest")
        for path in (REPO_ROOT / package).rglob("*.py")
    )
    text = "pausewatch-agent-digest-v1\n"
    text += "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()} {name}\n" for name, p in files)
    text += f"config {hashlib.sha256(config_json).hexdigest()}\n"
    return hashlib.sha256(text.encode()).digest()


def signed_digests(config: AgentConfig) -> list[bytes]:
    """The agent_digest of every window in the spool, read only after the envelope verified under
    the node's public key (so the digest is under the node's signature)."""
    ring = StaticKeyring()
    ring.add(keys.load_public_key(config.node.state_dir / "node.pub"))
    spool = Spool.open(spool_path(config))
    try:
        raws = [e.envelope for e in spool.envelopes()]
    finally:
        spool.close()
    out = []
    for raw in raws:
        verified = verify_envelope(raw, ring, payload_type=PayloadType.ATTESTATION)
        out.append(parse_attestation_body(verified.envelope.payload).agent_digest)
    return out


def test_every_signed_window_carries_the_digest_of_the_agents_code_and_config(
    tmp_path: Path,
) -> None:
    config = write_state_dir(tmp_path, window_s="10")
    clock = FakeClock(T0_NS)
    run_daemon(config, clock, polls=25)
    expected = agent_digest(config.canonical_json())
    assert expected == documented_agent_digest(config.canonical_json())
    first_run = signed_digests(config)
    assert len(first_run) >= 3
    assert set(first_run) == {expected}

    # The digest is under the signature: a window with one byte of its digest changed no longer
    # verifies under the node key.
    spool = Spool.open(spool_path(config))
    raw = spool.envelopes()[0].envelope
    spool.close()
    envelope = envelope_pb2.Envelope.FromString(raw)
    at = envelope.payload.index(expected)
    envelope.payload = (
        envelope.payload[:at] + bytes([envelope.payload[at] ^ 1]) + envelope.payload[at + 1 :]
    )
    ring = StaticKeyring()
    ring.add(keys.load_public_key(config.node.state_dir / "node.pub"))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_envelope(envelope.SerializeToString(), ring, payload_type=PayloadType.ATTESTATION)

    # The same agent restarted with one setting changed signs another digest, the one of its new
    # config; the windows signed before keep theirs.
    changed = write_state_dir(
        tmp_path, window_s="10", extra="[spool]\nmax_unacked_envelopes = 50000\n"
    )
    assert changed.canonical_json() != config.canonical_json()
    clock.advance(5 * S)
    run_daemon(changed, clock, polls=25)
    both_runs = signed_digests(changed)
    new = agent_digest(changed.canonical_json())
    assert new == documented_agent_digest(changed.canonical_json())
    assert new != expected
    assert both_runs[: len(first_run)] == first_run
    assert set(both_runs[len(first_run) :]) == {new}
