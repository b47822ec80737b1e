"""End-to-end ingest over loopback gRPC with durable commit, against raw Ed25519 verification.

    python bench/bench_ingest.py [--nodes 16] [--windows 200] [--gpus 8] [--batch 100]

Many agents' pre-signed envelopes (8-GPU attestations) stream into a real verifier (SQLite, WAL,
synchronous=FULL, one transaction per batch) over loopback gRPC, all in one process: client
streams, server, ingest and storage. The baseline, measured in the same run, is `cryptography`'s
Ed25519 verification of the same messages on one core in a tight loop. The goal is a ratio of
at least 0.70. Also printed: bytes stored per attestation (log entry, tree nodes, indexes, rows).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "protos"),
]

import grpc  # noqa: E402
from pausewatch.v1 import attestation_service_pb2 as spb  # noqa: E402
from pausewatch.v1 import attestation_service_pb2_grpc as spb_grpc  # noqa: E402

from attest import envelope  # noqa: E402
from tests.builders import TestNode  # noqa: E402
from tests.verifier_harness import running_verifier  # noqa: E402

S = 10**9


def raw_verify_rate(items: list[tuple[object, bytes, bytes]], rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for public_key, signature, message in items:
            public_key.verify(signature, message)  # type: ignore[attr-defined]
        best = max(best, len(items) / (time.perf_counter() - start))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--streams", type=int, default=4)
    args = parser.parse_args()

    now = time.time_ns()
    t0 = now - now % (60 * S) - 30 * 24 * 3600 * S
    nodes = [TestNode.from_seed(1000 + i, t0_ns=t0, gpus=args.gpus) for i in range(args.nodes)]
    print(f"signing {args.nodes} x {args.windows} attestations of {args.gpus} GPUs ...", flush=True)
    chains = [node.chain(args.windows) for node in nodes]
    total = args.nodes * args.windows
    baseline_items = []
    for node, chain in zip(nodes, chains, strict=True):
        for raw in chain[: max(1, 2000 // args.nodes)]:
            parsed = envelope.parse_envelope(raw)
            baseline_items.append(
                (
                    node.signer.public_key,
                    parsed.signature,
                    envelope.pae(parsed.payload_type.encode(), parsed.payload),
                )
            )

    with tempfile.TemporaryDirectory() as tmp, running_verifier(Path(tmp)) as verifier:
        client = verifier.client()
        for node in nodes:
            client.enroll(node, created_at_ns=t0 - S)
        db_path = verifier.files.store
        with sqlite3.connect(db_path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        bytes_before = db_path.stat().st_size

        # Each stream carries the chains of some nodes, interleaved, in batches.
        per_stream: list[list[bytes]] = [[] for _ in range(args.streams)]
        for i, chain in enumerate(chains):
            per_stream[i % args.streams].append(chain)  # type: ignore[arg-type]
        streams: list[list[bytes]] = []
        for group in per_stream:
            interleaved = [c[seq] for seq in range(args.windows) for c in group]  # type: ignore[index]
            streams.append(interleaved)
        accepted = [0] * args.streams
        errors: list[BaseException] = []

        def run(index: int) -> None:
            channel = grpc.insecure_channel(verifier.address)
            stub = spb_grpc.AttestationServiceStub(channel)
            items = streams[index]
            requests = (
                spb.SubmitAttestationsRequest(envelopes=items[i : i + args.batch])
                for i in range(0, len(items), args.batch)
            )
            try:
                for response in stub.SubmitAttestations(requests, timeout=600):
                    accepted[index] += sum(
                        r.status == spb.RECEIPT_STATUS_ACCEPTED for r in response.receipts
                    )
            except BaseException as exc:  # report below
                errors.append(exc)
            finally:
                channel.close()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(args.streams)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        if errors:
            raise errors[0]
        with sqlite3.connect(db_path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        bytes_after = db_path.stat().st_size

    raw_rate = raw_verify_rate(baseline_items, rounds=3)
    ingest_rate = sum(accepted) / elapsed
    envelope_bytes = sum(len(r) for chain in chains for r in chain) / total
    print(f"accepted {sum(accepted)} of {total} in {elapsed:.2f} s over {args.streams} streams")
    print(f"end-to-end ingest:            {ingest_rate:10.0f} attestations/s")
    print(f"raw Ed25519 verify, one core: {raw_rate:10.0f} /s")
    ratio = ingest_rate / raw_rate
    print(f"ratio ingest / raw Ed25519 verify: {ratio:.3f} (goal >= 0.70)")
    stored = (bytes_after - bytes_before) / total
    print(
        f"bytes stored per attestation: {stored:.0f} (envelope itself {envelope_bytes:.0f}; "
        f"ratio {stored / envelope_bytes:.2f})"
    )
    return 0 if ratio >= 0.70 and sum(accepted) == total else 1


if __name__ == "__main__":
    sys.exit(main())
