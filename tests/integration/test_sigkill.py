"""Crash safety: SIGKILL the real agent process at random moments, restart it, and check that the
chain never forks, no window is lost or duplicated, and every restart is a recorded gap.

The agent runs as ``python -m agent.cli run --backend sim`` with 0.4 s windows and 100 ms samples,
shipping to a fake verifier in this process. It is killed 30 times at random moments
(seeded, so a failure can be replayed: PAUSEWATCH_SIGKILL_SEED), then run once more and stopped
cleanly, after which everything it ever spooled must have been acknowledged.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pausewatch.v1 import attestation_pb2 as pb

from agent.daemon import spool_path
from agent.spool import EnvelopeStatus, Spool
from attest import keys
from attest.attestation import parse_attestation_body
from attest.chain import ChainItem, verify_chain
from attest.envelope import envelope_digest, parse_envelope
from tests.agent_setup import write_state_dir
from tests.cli_runner import run_agent_cli
from tests.fake_verifier import FakeVerifier
from tests.testdata import REPO_ROOT

KILLS = 30
GAP_EVENTS = (pb.EVENT_KIND_AGENT_START, pb.EVENT_KIND_SPOOL_FULL, pb.EVENT_KIND_CLOCK_JUMP)


@pytest.fixture
def operator(tmp_path: Path) -> tuple[Path, keys.Ed25519PublicKey]:  # type: ignore[name-defined]
    private = keys.generate_private_key()
    path = tmp_path / "operator.key"
    keys.save_private_key(path, private)
    return path, private.public_key()


@pytest.fixture
def verifier(operator: tuple[Path, object]) -> Iterator[FakeVerifier]:
    server = FakeVerifier(operator_keys={"lab-a": operator[1]})  # type: ignore[dict-item]
    server.start()
    yield server
    server.stop()


def start_agent(state_dir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "protos")]))
    log = log_path.open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "--log-format", "kv", "run", "--state-dir",
             str(state_dir)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )  # fmt: skip
    finally:
        log.close()


def bodies_and_envelopes(spool: Spool) -> list[tuple[pb.AttestationBody, bytes, EnvelopeStatus]]:
    return [
        (parse_attestation_body(parse_envelope(e.envelope).payload), e.envelope, e.status)
        for e in spool.envelopes()
    ]


@pytest.mark.slow
def test_sigkill_at_random_moments_never_forks_loses_or_duplicates(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    verifier: FakeVerifier,
    operator: tuple[Path, object],
) -> None:
    config = write_state_dir(
        tmp_path,
        address=verifier.address,
        window_s="0.4",
        interval_ms=100,
        extra="[logging]\nlevel = 'info'\n",
    )
    state = config.node.state_dir
    code, out, err = run_agent_cli(
        capsys, "enroll", "--state-dir", str(state), "--operator-key", str(operator[0])
    )
    assert code == 0, out + err
    seed = int(
        os.environ.get("PAUSEWATCH_SIGKILL_SEED", str(random.SystemRandom().randrange(10**6)))
    )
    rng = random.Random(seed)

    # Run 0 shows how long this machine takes from exec to the first signed window; it is
    # killed right then, and later kills fall between well before and well after that moment.
    log_path = tmp_path / "run-0.log"
    process = start_agent(state, log_path)
    launched = time.monotonic()
    while b"window signed" not in log_path.read_bytes():
        assert process.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() - launched < 30, "the agent signed nothing in 30 s"
        time.sleep(0.01)
    first_window_s = time.monotonic() - launched
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    kills = 1
    runs_that_signed = 1
    deadline = time.monotonic() + KILLS * (first_window_s + 1.3) + 30
    while kills < KILLS:
        assert time.monotonic() < deadline, f"too slow (seed {seed}, {kills} kills)"
        log_path = tmp_path / f"run-{kills}.log"
        process = start_agent(state, log_path)
        time.sleep(rng.uniform(0.3 * first_window_s, first_window_s + 1.2))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        kills += 1
        if b"window signed" in log_path.read_bytes():
            runs_that_signed += 1

    # One last run, stopped cleanly once everything is acknowledged.
    final_log = tmp_path / "final.log"
    process = start_agent(state, final_log)
    spool = Spool.open(spool_path(config))
    try:
        settle = time.monotonic() + 30
        while time.monotonic() < settle:
            # Wait for a window of this run's own (its start can take longer than a window on a
            # loaded machine), then for everything in the spool to be acknowledged.
            assert process.poll() is None, final_log.read_text()[-3000:]
            signed_here = b"window signed" in final_log.read_bytes()
            if signed_here and spool.stats().pending_count == 0:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the final run did not sign and ship in 30 s (seed {seed})")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, final_log.read_text()[-3000:]
        runs_that_signed += 1
        records = bodies_and_envelopes(spool)
    finally:
        spool.close()

    context = f"(seed {seed}; {kills} kills, {runs_that_signed} runs signed windows)"
    bodies = [b for b, _, _ in records]
    raws = [raw for _, raw, _ in records]
    assert len(bodies) >= 10, context

    # 1. A contiguous chain from seq 0 whose prev_digest links hold; one envelope per seq.
    assert [b.seq for b in bodies] == list(range(len(bodies))), context
    report = verify_chain(
        ChainItem(b.seq, b.prev_digest, envelope_digest(raw))
        for b, raw in zip(bodies, raws, strict=True)
    )
    assert report.issues == (), context
    assert len({envelope_digest(raw) for raw in raws}) == len(raws)

    # 2. Everything the verifier accepted is in the spool, byte for byte, and nothing else was
    #    ever sent: the verifier saw no fork, no gap, no two digests for one seq.
    node = verifier.node(bytes(config_node_id(config)))
    accepted = verifier.accepted_in_order(node.node_id)
    assert accepted == raws, context
    assert node.forks == [], context
    assert node.gaps == [], context
    digests_by_seq: dict[int, set[bytes]] = {}
    for raw in verifier.received:
        body = parse_attestation_body(parse_envelope(raw).payload)
        digests_by_seq.setdefault(body.seq, set()).add(envelope_digest(raw))
    assert all(len(d) == 1 for d in digests_by_seq.values()), context

    # 3. No loss: every spooled envelope was acknowledged by the end.
    assert all(status.acknowledged for _, _, status in records), context

    # 4. No silent hole: windows never overlap, and wherever one window does not start where the
    #    previous ended, the later one records the gap exactly.
    for previous, current in itertools.pairwise(bodies):
        assert current.window_start_ns >= previous.window_end_ns, context
        if current.window_start_ns != previous.window_end_ns:
            gaps = [(e.gap_start_ns, e.gap_end_ns) for e in current.events if e.kind in GAP_EVENTS]
            assert (previous.window_end_ns, current.window_start_ns) in gaps, context

    # 5. Every restart that signed a window is an AGENT_START, with the gap since the last window.
    starts = [b for b in bodies if any(e.kind == pb.EVENT_KIND_AGENT_START for e in b.events)]
    assert bodies[0] in starts
    assert runs_that_signed <= len(starts) <= kills + 1, context
    assert len(starts) >= 5, context
    for body in starts[1:]:
        event = next(e for e in body.events if e.kind == pb.EVENT_KIND_AGENT_START)
        previous = bodies[body.seq - 1]
        assert (event.gap_start_ns, event.gap_end_ns) == (
            previous.window_end_ns,
            body.window_start_ns,
        ), context


def config_node_id(config: object) -> bytes:
    public = keys.load_public_key(config.node.key_file.with_suffix(".pub"))  # type: ignore[attr-defined]
    return bytes(keys.key_id(public))
