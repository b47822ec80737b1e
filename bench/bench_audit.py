"""What a compliance report costs: in proportion to the buckets asked for, not the attestations.

    python bench/bench_audit.py [--nodes 16] [--hours 6] [--rounds 5]

Two verifiers (SQLite, the real ingest) hold the same lab over the same hours with the same
60-second buckets: in one every node attests once a minute, in the other every 10 seconds, six
times the attestations. The same report is asked of both, alternating, and the median times are
compared. The goal is a ratio (dense / sparse) of at most 1.5: the lab's totals and rules come
from the buckets, each node's figures from hourly rollups plus the two partial hours at the
period's edges. For scale, the line after it times the per-attestation scan a report would need
without the rollups (every one of the dense store's rows, summed in Python).
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

from attest.attestation import bounds_to_proto, window_compute  # noqa: E402
from attest.envelope import envelope_digest  # noqa: E402
from attest.ids import ZERO_DIGEST  # noqa: E402
from tests.builders import TestNode  # noqa: E402
from tests.verifier_harness import enroll_request, enrollment_for, write_verifier_files  # noqa: E402
from verifier.audit.auditor import Auditor  # noqa: E402
from verifier.config import load_config  # noqa: E402
from verifier.server.server import VerifierServer  # noqa: E402

S = 10**9
HOUR_NS = 3_600 * S


def chain(node: TestNode, count: int, window_s: int) -> list[bytes]:
    """``count`` linked 1-GPU windows of ``window_s`` seconds from the node's t0, half busy."""
    out: list[bytes] = []
    prev = ZERO_DIGEST
    for seq in range(count):
        body = node.body(seq, prev, window_ns=window_s * S, busy_ms=window_s * 500)
        for gpu in body.gpus:
            gpu.samples_expected = gpu.samples_taken = window_s
            gpu.energy_start_mj = 1_000_000 + seq * window_s * 350_000
            gpu.energy_end_mj = gpu.energy_start_mj + window_s * 350_000
            gpu.bounds.CopyFrom(bounds_to_proto(window_compute(gpu)))
        body.samples_count = window_s
        raw = node.sign_body(body)
        out.append(raw)
        prev = envelope_digest(raw)
    return out


def build(directory: Path, nodes: int, hours: int, window_s: int, t0: int) -> VerifierServer:
    files = write_verifier_files(directory)
    server = VerifierServer.from_config(load_config(files.config))
    lab = [TestNode.from_seed(500 + i, t0_ns=t0, gpus=1) for i in range(nodes)]
    for node in lab:
        request = enroll_request(enrollment_for(node, created_at_ns=t0 - S), node, files.operator)
        server.registry.enroll(request.enrollment_envelope, request.authorization_envelope)
    count = hours * 3_600 // window_s
    chains = [chain(node, count, window_s) for node in lab]
    interleaved = [c[seq] for seq in range(count) for c in chains]
    for i in range(0, len(interleaved), 500):
        result = server.ingestor.submit(interleaved[i : i + 500])
        assert all(r.status == 1 for r in result.receipts), result.receipts[0]
    return server


def time_report(server: VerifierServer, t0: int, hours: int) -> float:
    auditor = Auditor(server.core)
    start = time.perf_counter()
    auditor.report("lab-a", t0, t0 + hours * HOUR_NS)
    return time.perf_counter() - start


def scan_rows(server: VerifierServer) -> tuple[float, int]:
    """The old way: every attestation row of every node, summed in Python."""
    store = server.core.store
    start = time.perf_counter()
    rows = 0
    for node in store.list_nodes("lab-a"):
        found = store._all(  # type: ignore[attr-defined]
            "SELECT upper_key FROM attestations WHERE node_id = ?", (node.node_id,)
        )
        rows += len(found)
        sum(int(r[0]) for r in found)
    return time.perf_counter() - start, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--hours", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    now = time.time_ns()
    t0 = now - now % HOUR_NS - 10 * 24 * HOUR_NS
    with tempfile.TemporaryDirectory() as tmp:
        print(f"ingesting {args.nodes} nodes x {args.hours} h at 60 s and at 10 s windows ...")
        sparse = build(Path(tmp) / "sparse", args.nodes, args.hours, 60, t0)
        dense = build(Path(tmp) / "dense", args.nodes, args.hours, 10, t0)
        times: dict[str, list[float]] = {"sparse": [], "dense": []}
        for _ in range(args.rounds):
            times["sparse"].append(time_report(sparse, t0, args.hours))
            times["dense"].append(time_report(dense, t0, args.hours))
        scan_s, rows = scan_rows(dense)
        sparse.stop()
        dense.stop()
    sparse_s = statistics.median(times["sparse"])
    dense_s = statistics.median(times["dense"])
    buckets = args.hours * 60
    print(
        f"report, {buckets} buckets, {args.nodes * args.hours * 60} attestations: "
        f"{sparse_s * 1000:8.1f} ms"
    )
    print(
        f"report, {buckets} buckets, {args.nodes * args.hours * 360} attestations: "
        f"{dense_s * 1000:8.1f} ms"
    )
    ratio = dense_s / sparse_s
    print(f"ratio dense / sparse: {ratio:.2f} (goal <= 1.5; the attestations grew 6x)")
    print(f"for scale: scanning the dense store's {rows} rows in Python: {scan_s * 1000:.1f} ms")
    return 0 if ratio <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
