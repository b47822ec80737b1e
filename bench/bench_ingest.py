"""End-to-end ingest over loopback gRPC with durable commit, against raw Ed25519 verification.

    python bench/bench_ingest.py [--nodes 16] [--windows 200] [--gpus 8] [--batch 100]
    python bench/bench_ingest.py --processes 1 2 --store postgres

Many agents' pre-signed envelopes (8-GPU attestations) stream into a real verifier (SQLite, WAL,
synchronous=FULL, one transaction per batch) over loopback gRPC. The verifier (server, ingest,
storage) runs in this process; the agents' streams come from a second process, as real agents
would (``--in-process-clients`` puts them in this process too, where they compete for its GIL).
The baseline, measured in the same run (before and after the ingest, averaged), is `cryptography`'s
Ed25519 verification of the same messages on one core in a tight loop. The goal is a ratio of at
least 0.35 (ADR 0002: the GIL-held Python of the serial stage bounds one process). Also printed:
bytes stored per attestation (log entry, tree nodes, indexes, rows).

``--processes N [N ...]`` runs each verifier as a process of its own instead, N of them over one
store (``--store postgres``: a fresh database on ``$PAUSEWATCH_TEST_POSTGRES``; ``sqlite``: one
process only), the agents' streams spread over them from a client process. For each N it prints
the aggregate rate, its ratio to raw one-core verify, and the CPU time per attestation of the
whole system: the verifier processes and the PostgreSQL server processes that served them (the
backends of the bench's database, plus the WAL writer, checkpointer and background writer, which
other users of the same server also use). With postgres it also runs one SQLite process the
same way, for the comparison. Goals (issue 12): 2 processes >= 1.4x one; whole-system CPU per
attestation on PostgreSQL within 1.3x of SQLite's.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
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
from tests.verifier_harness import (  # noqa: E402
    RunningVerifier,
    running_verifier,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)
from verifier.server.process import tune_garbage_collector  # noqa: E402

S = 10**9


def raw_verify_rate(items: list[tuple[object, bytes, bytes]], rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for public_key, signature, message in items:
            public_key.verify(signature, message)  # type: ignore[attr-defined]
        best = max(best, len(items) / (time.perf_counter() - start))
    return best


def stream_all(addresses: list[str], streams: list[list[bytes]], batch: int) -> tuple[int, float]:
    """Send every stream's envelopes on its own gRPC stream; (accepted, seconds)."""
    accepted = [0] * len(streams)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        channel = grpc.insecure_channel(addresses[index % len(addresses)])
        stub = spb_grpc.AttestationServiceStub(channel)
        items = streams[index]
        requests = (
            spb.SubmitAttestationsRequest(envelopes=items[i : i + batch])
            for i in range(0, len(items), batch)
        )
        try:
            for response in stub.SubmitAttestations(requests, timeout=600):
                accepted[index] += sum(
                    r.status == spb.RECEIPT_STATUS_ACCEPTED for r in response.receipts
                )
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            channel.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(streams))]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(accepted), elapsed


def client_main(path: Path, address: str, batch: int) -> int:
    """The agents' side, in a process of its own: stream the envelopes in ``path`` (to several
    verifiers when ``address`` lists several, comma-separated: stream i to the i-th mod n)."""
    request = spb.SubmitAttestationsRequest()
    streams: list[list[bytes]] = []
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
        size = int.from_bytes(data[offset : offset + 8], "big")
        request.ParseFromString(data[offset + 8 : offset + 8 + size])
        streams.append(list(request.envelopes))
        offset += 8 + size
    accepted, elapsed = stream_all(address.split(","), streams, batch)
    print(json.dumps({"accepted": accepted, "seconds": elapsed}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--in-process-clients", action="store_true")
    parser.add_argument(
        "--verify-threads", type=int, default=1, help="the verifier's ingest.verify_threads"
    )
    parser.add_argument("--processes", type=int, nargs="+", help="verifier processes per run")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--client", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client is not None:
        return client_main(args.client, args.address, args.batch)

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
    # Each stream carries the chains of some nodes, interleaved, oldest first.
    groups: list[list[list[bytes]]] = [[] for _ in range(args.streams)]
    for i, chain in enumerate(chains):
        groups[i % args.streams].append(chain)
    streams = [[c[seq] for seq in range(args.windows) for c in group] for group in groups]

    if args.processes:
        return processes_main(args, nodes, streams, baseline_items, t0, total)

    # The collector as `pausewatch verifier serve` sets it (the processes above get it from there).
    tune_garbage_collector()
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_verifier(
            Path(tmp) / "v", extra_ingest=f"verify_threads = {args.verify_threads}"
        ) as verifier,
    ):
        client = verifier.client()
        for node in nodes:
            client.enroll(node, created_at_ns=t0 - S)
        db_path = verifier.files.store
        with sqlite3.connect(db_path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        bytes_before = db_path.stat().st_size
        raw_before = raw_verify_rate(baseline_items, rounds=3)
        if args.in_process_clients:
            accepted, elapsed = stream_all([verifier.address], streams, args.batch)
        else:
            file = Path(tmp) / "envelopes.bin"
            _write_streams(file, streams)
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path[:2]))
            run = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--client",
                    str(file),
                    "--address",
                    verifier.address,
                    "--batch",
                    str(args.batch),
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=900,
                check=True,
            )
            result = json.loads(run.stdout.strip().splitlines()[-1])
            accepted, elapsed = int(result["accepted"]), float(result["seconds"])
        raw_after = raw_verify_rate(baseline_items, rounds=3)
        with sqlite3.connect(db_path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        bytes_after = db_path.stat().st_size

    raw_rate = (raw_before + raw_after) / 2
    ingest_rate = accepted / elapsed
    envelope_bytes = sum(len(r) for chain in chains for r in chain) / total
    where = "this process" if args.in_process_clients else "a second process"
    print(
        f"accepted {accepted} of {total} in {elapsed:.2f} s over {args.streams} streams "
        f"(batches of {args.batch}; clients in {where})"
    )
    print(f"end-to-end ingest:            {ingest_rate:10.0f} attestations/s")
    print(
        f"raw Ed25519 verify, one core: {raw_rate:10.0f} /s "
        f"(before {raw_before:.0f}, after {raw_after:.0f})"
    )
    ratio = ingest_rate / raw_rate
    print(f"ratio ingest / raw Ed25519 verify: {ratio:.3f} (goal >= 0.35)")
    stored = (bytes_after - bytes_before) / total
    print(
        f"bytes stored per attestation: {stored:.0f} (envelope itself {envelope_bytes:.0f}; "
        f"ratio {stored / envelope_bytes:.2f})"
    )
    return 0 if ratio >= 0.35 and accepted == total else 1


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # gone
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _postgres_pids(dsn: str, database: str) -> set[int]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE (datname = %s AND pid <> pg_backend_pid()) "
            "OR backend_type IN ('walwriter', 'checkpointer', 'background writer')",
            (database,),
        ).fetchall()
    return {int(row[0]) for row in rows}


def _write_streams(path: Path, streams: list[list[bytes]]) -> None:
    with path.open("wb") as out:
        for items in streams:
            blob = spb.SubmitAttestationsRequest(envelopes=items).SerializeToString()
            out.write(len(blob).to_bytes(8, "big") + blob)


def run_processes(
    args: argparse.Namespace,
    nodes: list[TestNode],
    streams: list[list[bytes]],
    t0: int,
    store_kind: str,
    count: int,
) -> tuple[int, float, float]:
    """(accepted, seconds, whole-system CPU seconds) for ``count`` verifier processes."""
    import uuid

    import psycopg

    from tests.stores import POSTGRES_DSN

    database = f"pw_bench_{uuid.uuid4().hex[:12]}"
    dsn = POSTGRES_DSN.rsplit("/", 1)[0] + "/" + database
    if store_kind == "postgres":
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{database}"')
        store = f'engine = "postgres"\ndsn = "{dsn}"'
    else:
        store = 'path = "verifier.db"'
    running: list[RunningVerifier] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for k in range(count):
                files = write_verifier_files(
                    Path(tmp) / f"v{k}",
                    store=store,
                    extra_ingest=f"verify_threads = {args.verify_threads}",
                )
                text = files.config.read_text().replace(
                    "checkpoint_interval_s = 1\n", "checkpoint_interval_s = 10\n"
                )
                files.config.write_text(text.replace("workers = 8\n", "workers = 16\n"))
                running.append(start_verifier_process(files, Path(tmp) / f"v{k}.log"))
            client = running[0].client()
            for node in nodes:
                client.enroll(node, created_at_ns=t0 - S)
            file = Path(tmp) / "envelopes.bin"
            _write_streams(file, streams)
            pids = {r.process.pid for r in running if r.process is not None}
            db_pids = _postgres_pids(POSTGRES_DSN, database) if store_kind == "postgres" else set()
            cpu_before = {pid: _cpu_s(pid) for pid in pids | db_pids}
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path[:2]))
            run = subprocess.run(
                [
                    sys.executable, __file__, "--client", str(file),
                    "--address", ",".join(r.address for r in running), "--batch", str(args.batch),
                ],
                capture_output=True, text=True, env=env, timeout=1800, check=True,
            )  # fmt: skip
            if store_kind == "postgres":
                db_pids |= _postgres_pids(POSTGRES_DSN, database)
            cpu = sum(_cpu_s(pid) - cpu_before.get(pid, 0.0) for pid in pids | db_pids)
            result = json.loads(run.stdout.strip().splitlines()[-1])
            for r in running:
                stop_process(r)
            running.clear()
    finally:
        for r in running:
            if r.process is not None and r.process.poll() is None:
                r.process.kill()
        if store_kind == "postgres":
            with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return int(result["accepted"]), float(result["seconds"]), cpu


def processes_main(
    args: argparse.Namespace,
    nodes: list[TestNode],
    streams: list[list[bytes]],
    baseline_items: list[tuple[object, bytes, bytes]],
    t0: int,
    total: int,
) -> int:
    if args.store == "sqlite" and any(n != 1 for n in args.processes):
        print("SQLite serves one verifier process; use --store postgres for more")
        return 2
    raw_rate = raw_verify_rate(baseline_items, rounds=3)
    print(f"raw Ed25519 verify, one core: {raw_rate:.0f} /s", flush=True)
    runs = [(args.store, n) for n in args.processes]
    if args.store == "postgres":
        runs.append(("sqlite", 1))
    figures: dict[tuple[str, int], tuple[float, float]] = {}
    ok = True
    for store_kind, count in runs:
        accepted, seconds, cpu = run_processes(args, nodes, streams, t0, store_kind, count)
        rate = accepted / seconds
        per_att_ms = 1000 * cpu / max(accepted, 1)
        figures[(store_kind, count)] = (rate, per_att_ms)
        ok = ok and accepted == total
        print(
            f"{store_kind}, {count} verifier process(es): accepted {accepted} of {total} in "
            f"{seconds:.2f} s = {rate:.0f}/s, ratio to raw {rate / raw_rate:.3f}; whole-system "
            f"CPU {per_att_ms:.3f} ms per attestation ({cpu:.1f} s)",
            flush=True,
        )
    raw_after = raw_verify_rate(baseline_items, rounds=3)
    print(f"raw Ed25519 verify again: {raw_after:.0f} /s")
    if ("postgres", 1) in figures and ("postgres", 2) in figures:
        speedup = figures[("postgres", 2)][0] / figures[("postgres", 1)][0]
        print(f"2 processes / 1 process on PostgreSQL: {speedup:.2f}x (goal >= 1.4)")
    if ("postgres", 1) in figures and ("sqlite", 1) in figures:
        cost = figures[("postgres", 1)][1] / figures[("sqlite", 1)][1]
        print(f"CPU per attestation, PostgreSQL / SQLite (1 process): {cost:.2f} (goal <= 1.3)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
