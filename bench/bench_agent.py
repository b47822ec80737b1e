"""Agent CPU cost: per GPU-sample (NVML backend over a fake NVML) and per signed window.

    python bench/bench_agent.py [--gpus 8] [--windows 5] [--rounds 5]

Both sampler backends are measured: NVML (over a fake NVML) and sim (the scenario backend that
``init --backend sim`` sets up), each with the same signing cost per window.

What is measured, in CPU time of this process (``time.process_time``), median over rounds:

- **per GPU-sample**: ``NvmlSampler.poll`` through the real pynvml binding (the fake library is
  C-callable function pointers, see tests/fake_nvml.py) plus ``Windower.add``, which also closes
  windows (integrals, metric status, compute bounds): everything the agent does for one reading
  of one GPU, the window's closing amortised over its samples.
- **per signed window** (8 GPUs x 60 samples by default): the RFC 6962 root over the raw
  samples, building and serialising the body, the Ed25519 signature, encoding the samples, the
  backlog query (the spool bound and the metrics) and the SQLite transaction that stores it all
  (WAL, synchronous=FULL; the fsync wait is I/O, not CPU, and is not counted).

From these: the agent's share of one core at N GPUs x 1 Hz with 60 s windows (goal < 1 %), and
each cost as a ratio to a baseline measured in the same run, one raw Ed25519 signature, so the
figures can be compared across machines. A real libnvidia-ml answers in the driver (ioctls),
which this fake does not model; bench/gpu_check.sh reports the per-sample cost with real NVML.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "protos"),
]

from agent.sampler.base import Backend  # noqa: E402
from agent.sampler.nvml import NvmlSampler  # noqa: E402
from agent.sampler.sim import SimSampler, load_scenario  # noqa: E402
from agent.spool import Spool, WindowTimes  # noqa: E402
from agent.windows import (  # noqa: E402
    BodyContext,
    ClosedWindow,
    Windower,
    WindowSettings,
    build_body,
)
from attest.envelope import PayloadType, sign_envelope  # noqa: E402
from attest.ids import NodeId  # noqa: E402
from attest.keys import Ed25519Signer, generate_private_key  # noqa: E402
from attest.samples import encode_sample  # noqa: E402
from tests.fake_nvml import FakeGpu, FakeNvml  # noqa: E402

S = 1_000_000_000
T0_NS = 1_764_403_200_000_000_000
WINDOW_S = 60
GOAL_FRACTION = 0.01


def cpu(fn: object, rounds: int) -> float:
    """Median CPU seconds of ``fn()`` over ``rounds``."""
    timings = []
    for _ in range(rounds):
        start = time.process_time()
        fn()  # type: ignore[operator]
        timings.append(time.process_time() - start)
    return statistics.median(timings)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--windows", type=int, default=5, help="windows per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    fake = FakeNvml(
        [FakeGpu.h100(i, utilization_pct=90, power_mw=650_000) for i in range(args.gpus)]
    )
    fake.install_globally()
    sampler = NvmlSampler(sample_interval_ms=1000)
    sampler.open(T0_NS)
    assert len(sampler.inventory()) == args.gpus, "the fake NVML did not enumerate"
    signer = Ed25519Signer.from_private_key(generate_private_key())
    context = BodyContext(
        lab_id="lab-bench",
        node_id=NodeId(signer.key_id),
        boot_id="bench",
        agent_version="bench",
        agent_digest=bytes(32),
        backend=Backend.NVML,
        sample_interval_ms=1000,
    )
    settings = WindowSettings(window_ns=WINDOW_S * S, sample_interval_ms=1000)
    polls_per_round = args.windows * WINDOW_S
    clock = {"t": T0_NS}
    closed: list[ClosedWindow] = []

    def sampling_round() -> None:
        windower = Windower(settings)
        for _ in range(polls_per_round):
            for gpu in fake.gpus:
                gpu.energy_mj += 650_000
            poll = sampler.poll(clock["t"])
            assert poll is not None
            closed.extend(windower.add(poll))
            clock["t"] += S

    sample_s = cpu(sampling_round, args.rounds) / (polls_per_round * args.gpus)

    with tempfile.TemporaryDirectory() as scratch:
        scenario = Path(scratch) / "scenario.toml"
        scenario.write_text(
            f'seed = 1\ngpu_model = "NVIDIA H100 80GB HBM3"\ngpu_count = {args.gpus}\n'
            "gpm = true\n[[phase]]\nfrom_s = 0\nbusy_gpus = 2\n"
        )
        sim = SimSampler(
            load_scenario(scenario), sample_interval_ms=1000, boot_time_ns=T0_NS - 3600 * S
        )
    sim.open(T0_NS)
    sim_clock = {"t": T0_NS}

    def sim_round() -> None:
        windower = Windower(settings)
        for _ in range(polls_per_round):
            poll = sim.poll(sim_clock["t"])
            assert poll is not None
            windower.add(poll)
            sim_clock["t"] += S

    sim_sample_s = cpu(sim_round, args.rounds) / (polls_per_round * args.gpus)
    windows = [w for w in closed if len(w.samples) == WINDOW_S * args.gpus]
    assert windows, "no full window was produced"
    gpu_samples_per_window = len(windows[0].samples)

    with tempfile.TemporaryDirectory() as scratch:
        spool = Spool.open(Path(scratch) / "spool.db", node_id=NodeId(signer.key_id))
        start_ns = [T0_NS]

        def signing_round() -> None:
            for window in windows[: args.windows]:

                def sign(
                    seq: int, prev: bytes, nonce: bytes, window: ClosedWindow = window
                ) -> bytes:
                    body = build_body(
                        window, context, seq=seq, prev_digest=prev, verifier_nonce=nonce
                    )
                    payload = body.SerializeToString(deterministic=True)
                    return sign_envelope(signer, PayloadType.ATTESTATION, payload)

                samples = b"".join(encode_sample(s) for s in window.samples)
                start_ns[0] += WINDOW_S * S
                spool.backlog()  # the daemon reads the backlog once per window (bound, gauges)
                spool.append(
                    sign,
                    WindowTimes(start_ns[0], start_ns[0] + WINDOW_S * S),
                    samples=samples,
                    created_at_ns=start_ns[0],
                )

        window_s = cpu(signing_round, args.rounds) / min(args.windows, len(windows))
        spool.close()

    message = b"x" * 1500

    def ed25519_round() -> None:
        for _ in range(1000):
            signer.sign(message)

    sign_s = cpu(ed25519_round, args.rounds) / 1000

    per_second = args.gpus * sample_s + window_s / WINDOW_S
    fraction = per_second / 1.0
    sim_fraction = args.gpus * sim_sample_s + window_s / WINDOW_S
    print(f"fake NVML, {args.gpus} GPUs, 1 Hz, {WINDOW_S} s windows, {args.rounds} rounds (median)")
    print(f"baseline: one raw Ed25519 signature            {sign_s * 1e6:9.1f} us CPU")
    print(
        f"per GPU-sample (poll + fold):                  {sample_s * 1e6:9.1f} us CPU"
        f"  = {sample_s / sign_s:6.2f} x Ed25519 sign"
    )
    print(
        f"per signed window ({gpu_samples_per_window} samples, spooled):     "
        f"{window_s * 1e3:9.2f} ms CPU  = {window_s / sign_s:6.1f} x Ed25519 sign"
    )
    print(
        f"per GPU-sample, sim backend (poll + fold):     {sim_sample_s * 1e6:9.1f} us CPU"
        f"  = {sim_sample_s / sign_s:6.2f} x Ed25519 sign"
    )
    print(
        f"agent share of one core at {args.gpus} GPUs x 1 Hz, NVML: {fraction * 100:9.3f} %"
        f"  (goal < {GOAL_FRACTION * 100:.0f} %)"
    )
    print(
        f"agent share of one core at {args.gpus} GPUs x 1 Hz, sim:  {sim_fraction * 100:9.3f} %"
        f"  (goal < {GOAL_FRACTION * 100:.0f} %)"
    )
    return 0 if max(fraction, sim_fraction) < GOAL_FRACTION else 1


if __name__ == "__main__":
    sys.exit(main())
