"""GPU check: run the agent's NVML sampler while a bf16 matmul loop of known FLOP count runs, and
compare the attested compute figures with the true count.

    PYTHONPATH=.:protos python3 bench/gpu_check.py [--gpu 0] [--seconds 20] [--window-s 5]
    PYTHONPATH=.:protos python3 bench/gpu_check.py --self-test     # no GPU: fake NVML, fake load

Prints the GPUs found, which metrics each supports, the windows covering the workload with their
upper bound and central estimate against the true FLOP count (2 n^3 per n x n matmul, counted by
the workload itself, warm-up included), the energy read, and the agent's CPU cost per GPU-sample
with the real NVML. Writes the same as JSON to $OUT/gpu_check.json when $OUT is set.

The workload runs in its own process (``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so CUDA and NVML number
the GPUs alike; the CUDA device UUID is checked against NVML's when torch reports it). It sizes
its three matrices to at most a quarter of the card's free memory (ordinary device memory, no
managed memory), and never more than 8192 x 8192.

Needs Python >= 3.10, nvidia-ml-py and torch; protobuf >= 7.35 and cryptography for the full
path (bodies built, signed and validated as the agent does). With an older protobuf it falls back
to the sampler and ``attest.compute`` alone and says so. Exit status: 0 if the upper bound is at
least the true FLOP count, 1 if not, 2 if the check could not run.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not hasattr(enum, "StrEnum"):  # Python 3.10: the project uses 3.11's StrEnum

    class _StrEnum(str, enum.Enum):  # noqa: UP042 - StrEnum itself is what is missing
        def __str__(self) -> str:
            return str(self.value)

    enum.StrEnum = _StrEnum  # type: ignore[attr-defined,misc]

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from agent.sampler.base import METRIC_FLAGS, Metric, Poll  # noqa: E402
from attest import compute  # noqa: E402
from attest.samples import SampleFlags  # noqa: E402

S = 1_000_000_000
MS = 1_000_000

WORKLOAD = textwrap.dedent(
    """
    import json, sys, time
    import torch
    device, seconds = int(sys.argv[1]), float(sys.argv[2])
    torch.cuda.set_device(device)
    free, total = torch.cuda.mem_get_info(device)
    n = 8192
    while n > 1024 and 3 * n * n * 2 > free // 4:
        n //= 2
    props = torch.cuda.get_device_properties(device)
    uuid = str(getattr(props, "uuid", ""))
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    start = time.time_ns()
    count = 0
    batch = 20
    while time.time_ns() - start < seconds * 1e9:
        for _ in range(batch):
            torch.matmul(a, b, out=c)
        count += batch
        torch.cuda.synchronize()
    end = time.time_ns()
    print(json.dumps({"n": n, "matmuls": count, "start_ns": start, "end_ns": end,
                      "uuid": uuid, "name": props.name, "free_bytes": free,
                      "total_bytes": total}), flush=True)
    """
)


@dataclass
class Tally:
    """The agent's integrals for one GPU over the whole run (the lite path)."""

    busy_pct_ms: int = 0
    tensor_ppm_ms: int = 0
    tensor_all: bool = True
    energy_first: int | None = None
    energy_last: int | None = None
    reads: dict[str, int] = field(default_factory=dict)
    fails: dict[str, str] = field(default_factory=dict)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--gpu", type=int, default=0, help="NVML/CUDA index (PCI bus order)")
    parser.add_argument("--seconds", type=float, default=20.0, help="matmul loop length")
    parser.add_argument("--window-s", type=int, default=5, help="attestation window length")
    parser.add_argument("--interval-ms", type=int, default=1000, help="sample interval")
    parser.add_argument("--lead-s", type=float, default=3.0, help="sampling before the load")
    parser.add_argument("--tail-s", type=float, default=4.0, help="sampling after the load")
    parser.add_argument("--python", default=sys.executable, help="interpreter with torch")
    parser.add_argument("--self-test", action="store_true", help="fake NVML and a fake load")
    parser.add_argument("--lite", action="store_true", help="skip building bodies (old protobuf)")
    return parser.parse_args()


def full_path_available() -> str:
    """'' if bodies can be built (protobuf new enough), else why not."""
    try:
        from agent import windows  # noqa: F401
        from attest import attestation  # noqa: F401
    except Exception as exc:  # any import failure means: use the lite path
        return f"{type(exc).__name__}: {exc}"
    return ""


class SelfTestLoad:
    """For --self-test: a thread that makes fake GPU 0 look busy, as a matmul would."""

    def __init__(self, fake: Any, gpu: int, seconds: float) -> None:
        self.fake = fake
        self.gpu = gpu
        self.seconds = seconds
        self.result: dict[str, Any] = {}

    def run(self) -> None:
        gpu = self.fake.gpus[self.gpu]
        n = 1024
        rate_flop_per_s = 200e12
        start = time.time_ns()
        while time.time_ns() - start < self.seconds * S:
            gpu.utilization_pct, gpu.tensor_active_pct, gpu.power_mw = 100, 72.0, 650_000
            gpu.energy_mj += 65_000  # 650 W for 0.1 s
            time.sleep(0.1)
        end = time.time_ns()
        gpu.utilization_pct, gpu.tensor_active_pct, gpu.power_mw = 0, 0.0, 90_000
        matmuls = int(rate_flop_per_s * (end - start) / S / (2 * n**3))
        self.result = {"n": n, "matmuls": matmuls, "start_ns": start, "end_ns": end,
                       "uuid": "", "name": gpu.name}  # fmt: skip


def main() -> int:
    args = parse_args()
    fake = None
    if args.self_test:
        from tests.fake_nvml import FakeGpu, FakeNvml

        fake = FakeNvml([FakeGpu.h100(0, gpm=True), FakeGpu.h100(1, gpm=False)])
        fake.install_globally()
    try:
        import pynvml  # noqa: F401
    except ImportError:
        print("gpu check: nvidia-ml-py is not installed (pip install nvidia-ml-py)")
        return 2
    from agent.sampler.nvml import NvmlSampler

    why_lite = "asked for with --lite" if args.lite else full_path_available()
    sampler = NvmlSampler(sample_interval_ms=args.interval_ms, retry_initial_ms=1000)
    sampler.open(time.time_ns())
    inventory = sampler.inventory()
    print(f"== pausewatch GPU check ({'SELF-TEST, fake NVML' if fake else 'real NVML'})")
    if not inventory:
        poll = sampler.poll(time.time_ns())
        reason = "; ".join(e.detail for e in poll.events) if poll else "unknown"
        print(f"no GPU found through NVML: {reason}")
        return 2
    print(f"driver {sampler.driver_version or '?'}; {len(inventory)} GPU(s) found:")
    for g in inventory:
        print(f"  [{g.index}] {g.uuid}  {g.model}  serial {g.serial or '-'}  "
              f"pci {g.pci_bus_id or '-'}  mig {g.mig_mode.value}")  # fmt: skip
    if args.gpu >= len(inventory):
        print(f"--gpu {args.gpu}: there are only {len(inventory)} GPUs")
        return 2
    target = inventory[args.gpu]

    # The workload, in its own process.
    load: SelfTestLoad | None = None
    process: subprocess.Popen[str] | None = None
    polls: list[Poll] = []
    cpu_s = 0.0
    interval_ns = args.interval_ms * MS
    started = time.time_ns()
    launch_at = started + int(args.lead_s * S)
    next_tick = -(-started // interval_ns) * interval_ns
    load_done_at: int | None = None
    while True:
        now = time.time_ns()
        if now < next_tick:
            time.sleep((next_tick - now) / S)
        before = time.thread_time()
        poll = sampler.poll(time.time_ns())
        cpu_s += time.thread_time() - before
        if poll is not None:
            polls.append(poll)
        next_tick += interval_ns
        now = time.time_ns()
        if load is None and process is None and now >= launch_at:
            if fake is not None:
                load = SelfTestLoad(fake, args.gpu, args.seconds)
                threading.Thread(target=load.run, daemon=True).start()
            else:
                env = dict(os.environ, CUDA_DEVICE_ORDER="PCI_BUS_ID")
                process = subprocess.Popen(
                    [args.python, "-c", WORKLOAD, str(args.gpu), str(args.seconds)],
                    stdout=subprocess.PIPE,
                    text=True,
                    env=env,
                )
        finished = (load is not None and load.result) or (
            process is not None and process.poll() is not None
        )
        if finished and load_done_at is None:
            load_done_at = now
        if load_done_at is not None and now >= load_done_at + args.tail_s * S:
            break
        if now - started > 240 * S:
            print("the workload did not finish within 4 minutes")
            return 2
    sampler.close()

    if process is not None:
        out, _ = process.communicate()
        if process.returncode != 0 or not out.strip():
            probe = f"{args.python} -c 'import torch; print(torch.cuda.is_available())'"
            print(
                f"the matmul workload failed (exit {process.returncode}); "
                f"is torch installed with CUDA? try: {probe}"
            )
            return 2
        result = json.loads(out.strip().splitlines()[-1])
    else:
        assert load is not None
        result = load.result
    n = int(result["n"])
    true_flop = int(result["matmuls"]) * 2 * n**3
    seconds = (result["end_ns"] - result["start_ns"]) / S
    cuda_uuid = str(result.get("uuid", "")).lower().removeprefix("gpu-")
    nvml_uuid = target.uuid.lower().removeprefix("gpu-")
    mapping = "matches" if cuda_uuid and cuda_uuid == nvml_uuid else (
        "not reported by torch; PCI bus order assumed" if not cuda_uuid else "DOES NOT MATCH"
    )  # fmt: skip
    achieved = true_flop / seconds / 1e12
    print(
        f"workload: bf16 matmul n={n} on GPU {args.gpu} ({result.get('name', '?')}), "
        f"{result['matmuls']} matmuls in {seconds:.2f} s = {true_flop:.4e} FLOP "
        f"({achieved:.1f} TFLOP/s achieved); CUDA/NVML uuid {mapping}"
    )

    # Metrics supported on each GPU.
    tallies: dict[str, Tally] = {g.uuid: Tally() for g in inventory}
    for poll in polls:
        for reading in poll.readings:
            tally = tallies.setdefault(reading.identity.uuid, Tally())
            for failure in reading.failures:
                tally.fails[failure.metric.value] = failure.error_name
            sample = reading.sample
            if sample is None:
                continue
            for metric, flag in METRIC_FLAGS.items():
                if sample.flags & flag:
                    tally.reads[metric.value] = tally.reads.get(metric.value, 0) + 1
    print("metrics supported:")
    for g in inventory:
        tally = tallies[g.uuid]
        parts = []
        for metric in Metric:
            if metric.value in tally.fails and metric.value not in tally.reads:
                parts.append(f"{metric.value}=NO ({tally.fails[metric.value]})")
            elif metric.value in tally.fails:
                parts.append(f"{metric.value}=partly ({tally.fails[metric.value]})")
            else:
                parts.append(f"{metric.value}=yes")
        print(f"  [{g.index}] " + ", ".join(parts))

    summary: dict[str, Any] = {
        "gpus": [{"index": g.index, "uuid": g.uuid, "model": g.model} for g in inventory],
        "driver_version": sampler.driver_version,
        "workload": {**result, "true_flop": true_flop, "seconds": seconds, "gpu": args.gpu},
        "self_test": fake is not None,
    }
    if why_lite:
        print(f"full path unavailable ({why_lite}); using the sampler and attest.compute only")
        figures = lite_figures(polls, target.uuid, target.model)
    else:
        figures = full_figures(polls, target.uuid, args)
    upper, central, central_method, energy_mj, lines = figures
    for line in lines:
        print(line)
    ok = upper >= true_flop
    verdict = "PASS" if ok else "FAIL"
    relation = ">=" if ok else "<"
    print(
        f"upper bound  {upper:.4e} FLOP  vs true {true_flop:.4e}: "
        f"{relation} true ({upper / true_flop:.2f} x)  -> {verdict}"
    )
    print(f"central est. {central:.4e} FLOP  ({central_method}) = {central / true_flop:.3f} x "
          f"true ({(central - true_flop) / true_flop * 100:+.1f} %)")  # fmt: skip
    energy_text = "not available" if energy_mj is None else f"{energy_mj / 1000:.1f} J"
    print(f"energy read  {energy_text} (cumulative counter, window edges)")
    per_sample_us = cpu_s / max(1, sum(len(p.readings) for p in polls)) * 1e6
    share = per_sample_us * 8 / 1e6 * 100
    print(f"agent CPU    {per_sample_us:.0f} us per GPU-sample with this NVML "
          f"({share:.3f} % of a core for 8 GPUs at 1 Hz, sampling only)")  # fmt: skip
    summary.update(
        {
            "upper_bound_flop": upper,
            "central_estimate_flop": central,
            "central_method": central_method,
            "central_over_true": central / true_flop,
            "upper_over_true": upper / true_flop,
            "energy_mj": energy_mj,
            "cpu_us_per_gpu_sample": per_sample_us,
            "pass": ok,
            "path": "lite" if why_lite else "full",
        }
    )
    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir, "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str))
    return 0 if ok else 1


def full_figures(
    polls: list[Poll], uuid: str, args: argparse.Namespace
) -> tuple[int, int, str, int | None, list[str]]:
    """Windows exactly as the agent makes them, bodies built, signed and validated."""
    from pausewatch.v1 import attestation_pb2 as pb

    from agent.sampler.base import Backend
    from agent.windows import BodyContext, Windower, WindowSettings, build_body
    from attest.attestation import validate_body
    from attest.envelope import (
        PayloadType,
        StaticKeyring,
        envelope_digest,
        sign_envelope,
        verify_envelope,
    )
    from attest.ids import ZERO_DIGEST, Digest, NodeId
    from attest.keys import Ed25519Signer, generate_private_key

    windower = Windower(
        WindowSettings(window_ns=args.window_s * S, sample_interval_ms=args.interval_ms)
    )
    windows = []
    for poll in polls:
        windows += windower.add(poll)
    final = windower.flush(polls[-1].timestamp_ns + args.interval_ms * MS)
    if final is not None:
        windows.append(final)
    signer = Ed25519Signer.from_private_key(generate_private_key())
    ring = StaticKeyring()
    ring.add(signer.public_key)
    context = BodyContext(
        lab_id="gpu-check",
        node_id=NodeId(signer.key_id),
        boot_id="gpu-check",
        agent_version="gpu-check",
        agent_digest=bytes(32),
        backend=Backend.NVML,
        sample_interval_ms=args.interval_ms,
    )
    upper = central = 0
    energy: int | None = 0
    methods: set[str] = set()
    lines = [f"windows ({args.window_s} s, {args.interval_ms} ms samples), GPU {uuid[:20]}...:"]
    prev: Digest = ZERO_DIGEST
    for seq, window in enumerate(windows):
        body = build_body(window, context, seq=seq, prev_digest=prev, verifier_nonce=b"")
        validate_body(body, signer.key_id)
        raw = sign_envelope(
            signer, PayloadType.ATTESTATION, body.SerializeToString(deterministic=True)
        )
        verify_envelope(raw, ring, payload_type=PayloadType.ATTESTATION)
        prev = envelope_digest(raw)
        gpu = next((g for g in window.gpus if g.uuid == uuid), None)
        if gpu is None:
            continue
        b = gpu.bounds
        upper += b.upper_bound_flop
        central += b.central_estimate_flop
        methods.add(
            pb.CentralEstimateMethod.Name(b.central_estimate_method)
            .removeprefix("CENTRAL_ESTIMATE_METHOD_")
            .lower()
        )
        if gpu.energy_counter_state == pb.ENERGY_COUNTER_STATE_OK and energy is not None:
            energy += gpu.energy_end_mj - gpu.energy_start_mj
        else:
            energy = None
        length_s = (window.end_ns - window.start_ns) / S
        energy_j = (gpu.energy_end_mj - gpu.energy_start_mj) / 1000
        lines.append(
            f"  seq {seq:2d} {length_s:5.1f} s  busy {gpu.busy_ms:6d} ms  "
            f"tensor {gpu.tensor_active_ms:6d} ms  "
            f"samples {gpu.samples_taken}/{gpu.samples_expected}  energy {energy_j:8.1f} J  "
            f"upper {b.upper_bound_flop:.3e}  central {b.central_estimate_flop:.3e}"
        )
    lines.append(f"{len(windows)} bodies built, validated, signed and verified")
    return upper, central, "+".join(sorted(methods)), energy, lines


def lite_figures(
    polls: list[Poll], uuid: str, model: str
) -> tuple[int, int, str, int | None, list[str]]:
    """One span over the whole run, with the agent's arithmetic
    (busy = ceil(sum of utilization x interval / 100))."""
    tally = Tally()
    for poll in polls:
        for reading in poll.readings:
            if reading.identity.uuid != uuid or reading.sample is None:
                continue
            s = reading.sample
            if s.flags & SampleFlags.UTILIZATION:
                tally.busy_pct_ms += s.utilization_pct * s.interval_ms
            if s.flags & SampleFlags.TENSOR_ACTIVE:
                tally.tensor_ppm_ms += s.tensor_active_ppm * s.interval_ms
            else:
                tally.tensor_all = False
            if s.flags & SampleFlags.ENERGY:
                if tally.energy_first is None:
                    tally.energy_first = s.energy_mj
                tally.energy_last = s.energy_mj
    busy_ms = -(-tally.busy_pct_ms // 100)
    tensor_ms = -(-tally.tensor_ppm_ms // 1_000_000) if tally.tensor_all else None
    energy = (
        None
        if tally.energy_first is None or tally.energy_last is None
        else tally.energy_last - tally.energy_first
    )
    figures = compute.compute_window(model, busy_ms, tensor_ms, energy)
    lines = [f"whole run: busy {busy_ms} ms, tensor-active {tensor_ms} ms"]
    return (
        figures.upper_bound_flop,
        figures.central_estimate_flop,
        figures.central_estimate_method.value,
        energy,
        lines,
    )


if __name__ == "__main__":
    sys.exit(main())
