"""A fleet's worth of agent streams into one verifier process, then a hostile flood beside them.

    python bench/bench_streams.py [--agents 10000] [--interval-s 60] [--phase-s 120]
                                  [--hostile 1000] [--clients 4] [--plaintext] [--baseline]

One verifier process (SQLite, roles on, mutual TLS unless ``--plaintext``) and ``--clients``
agent processes holding ``--agents`` streams, one connection and one client certificate per
agent (a node agent identity each). Every agent sends one batch (one 8-GPU attestation) every
``--interval-s`` seconds, starting at a random offset; the windows' own timestamps are a minute
apart whatever the interval (a compressed timeline when it is below 60). Phase 1 measures, over
``--phase-s`` seconds of that steady state: the verifier's RSS and CPU (its own /proc figures),
the latency of health checks made every 50 ms by a separate client (p50, p99), and the
attestations accepted (the verifier's own metrics). Phase 2 adds ``--hostile`` idle streams
from one hostile node certificate and measures the same again; the honest figures should not
move. Goals (issue 12): RSS < 1 GB, CPU < 15 % of a core, health p99 < 100 ms.

``--baseline`` first runs the same agents, phases and hostile client against a bare gRPC server
(``--role bare``: grpc.aio with the verifier's own gRPC options and TLS credentials, a handler that
answers every batch ACCEPTED without looking at it, health, a receipts counter), then the
verifier, and prints the verifier's figures as ratios to the bare server's and what is left once
the bare server's share is taken off: how much of the cost is the verifier's own work and how much
gRPC's, on the same machine in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "protos"),
]

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from pausewatch.v1 import attestation_service_pb2 as spb  # noqa: E402
from pausewatch.v1 import attestation_service_pb2_grpc as spb_grpc  # noqa: E402
from pausewatch.v1 import registry_pb2_grpc as rpb_grpc  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from agent.shipper import CHANNEL_OPTIONS as AGENT_CHANNEL_OPTIONS  # noqa: E402
from tests.agent_process import free_port  # noqa: E402
from tests.builders import TestNode  # noqa: E402
from tests.verifier_harness import (  # noqa: E402
    RunningVerifier,
    VerifierFiles,
    all_gpu_uuids,
    enroll_request,
    enrollment_for,
    fleet_access,
    inventory_request,
    start_verifier_process,
    stop_process,
    wait_serving,
    write_verifier_files,
)
from verifier.server.tlsgen import issue_client_cert_pem, write_self_signed  # noqa: E402

S = 10**9
SPIFFE = "spiffe://bench.pausewatch"
SEED = 20_000
HOSTILE_SEED = 19_999
MAX_STREAM_ATTEMPTS = 6
# The real agent's options (keepalive, no bandwidth probe), and one connection per agent.
CHANNEL_OPTIONS = [*AGENT_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]


# -- the agents' side (each client process) --------------------------------------------------


def _credentials(tls: Path, cert: bytes, key: bytes) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(tls / "ca.pem").read_bytes(), private_key=key, certificate_chain=cert
    )


def _node_cert(tls: Path, node: TestNode) -> tuple[bytes, bytes]:
    return issue_client_cert_pem(
        (tls / "ca.pem").read_bytes(),
        (tls / "ca.key").read_bytes(),
        "agent",
        uri=f"{SPIFFE}/lab/lab-a/node/{node.node_id.hex()}",
    )


def _channel(address: str, tls: Path | None, node: TestNode) -> grpc.aio.Channel:
    # A channel argument of its own per agent: channels with equal arguments would share one
    # connection, and more streams than the server's max_streams_per_connection on one
    # connection are refused (the agents of a real fleet each have their own).
    options = [*CHANNEL_OPTIONS, ("pausewatch.bench.agent", node.node_id.hex())]
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options)
    cert, key = _node_cert(tls, node)
    return grpc.aio.secure_channel(address, _credentials(tls, cert, key), options=options)


def _answer(response: object) -> spb.SubmitAttestationsResponse:
    if response is grpc.aio.EOF:  # type: ignore[attr-defined]
        raise asyncio.InvalidStateError("the stream ended without an answer")
    assert isinstance(response, spb.SubmitAttestationsResponse)
    return response


async def _agent(
    address: str,
    tls: Path | None,
    node: TestNode,
    chain: list[bytes],
    start_at: float,
    interval_s: float,
    end_at: float,
    counts: dict[str, int],
    opened: asyncio.Event,
    total: int,
    failures: list[tuple[float, float]],
) -> None:
    async with _channel(address, tls, node) as channel:
        stub = spb_grpc.AttestationServiceStub(channel)
        for _attempt in range(5):  # a loaded machine may time out a handshake: try again
            try:
                await asyncio.wait_for(channel.channel_ready(), 60)
                break
            except TimeoutError:
                counts["open_retries"] += 1
        else:
            counts["failed_open"] += 1
            if counts["open"] + counts["failed_open"] == total:
                opened.set()
            return
        counts["open"] += 1
        if counts["open"] + counts["failed_open"] == total:
            opened.set()
        rng = random.Random(node.node_id)
        send_at = start_at + rng.uniform(0, interval_s)
        index = 0
        # As the agent's shipper does: a stream that fails is opened again (after a short jittered
        # pause), and the window not yet answered is sent again on it.
        for attempt in range(MAX_STREAM_ATTEMPTS):
            call = stub.SubmitAttestations(timeout=end_at - time.time() + 120)
            opened_at = time.time()
            ended = asyncio.Event()
            ended_at: list[float] = []

            def on_done(
                _call: object, ended: asyncio.Event = ended, at: list[float] = ended_at
            ) -> None:
                at.append(time.time())
                ended.set()

            call.add_done_callback(on_done)
            try:
                while index < len(chain) and send_at <= end_at:
                    delay = send_at - time.time()
                    if delay > 0:
                        # Sleep until the window is due, or until the stream ends under us.
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(ended.wait(), delay)
                    await call.write(spb.SubmitAttestationsRequest(envelopes=[chain[index]]))
                    response = _answer(await call.read())
                    counts["accepted"] += sum(
                        r.status == spb.RECEIPT_STATUS_ACCEPTED for r in response.receipts
                    )
                    counts["batches"] += 1
                    index += 1
                    send_at += interval_s
                await call.done_writing()
                await call.code()
                return
            except (grpc.RpcError, asyncio.InvalidStateError):
                code = await call.code()
                counts[f"ended_{code.name}"] = counts.get(f"ended_{code.name}", 0) + 1
                end = ended_at[0] if ended_at else time.time()
                failures.append((opened_at, end))
                if len(failures) == 1:
                    print(
                        f"first failed stream: {code.name} {await call.details()}, ended "
                        f"{end - opened_at:.1f} s after it opened, {index} windows answered; "
                        "opened again",
                        flush=True,
                    )
                if time.time() > end_at:
                    return
                counts["reopened"] += 1
                await asyncio.sleep(rng.uniform(0.0, 1.0) * 2**attempt)
        counts["failed"] += 1


async def _agents(args: argparse.Namespace) -> dict[str, int]:
    tls = None if args.plaintext else Path(args.tls)
    first, count = args.first, args.count
    nodes = [
        TestNode.from_seed(SEED + i, t0_ns=args.t0, gpus=8) for i in range(first, first + count)
    ]
    chains = [node.chain(args.windows) for node in nodes]
    counts = {
        "open": 0, "failed_open": 0, "open_retries": 0, "accepted": 0, "batches": 0,
        "reopened": 0, "failed": 0,
    }  # fmt: skip
    opened = asyncio.Event()
    failures: list[tuple[float, float]] = []
    Path(args.ready).write_text("built")
    tasks = [
        asyncio.create_task(
            _agent(
                args.address,
                tls,
                node,
                chain,
                args.start_at,
                args.interval_s,
                args.end_at,
                counts,
                opened,
                count,
                failures,
            )
        )
        for node, chain in zip(nodes, chains, strict=True)
    ]
    await asyncio.wait_for(opened.wait(), timeout=max(1.0, args.start_at - time.time() + 600))
    Path(args.ready + ".json").write_text(json.dumps(counts))
    Path(args.ready).write_text("open")
    await asyncio.gather(*tasks)
    if failures:
        ends = sorted(end for _, end in failures)
        lived = sorted(end - start for start, end in failures)
        print(
            f"{len(failures)} streams ended early (opened again); they ended between "
            f"{ends[0]:.1f} and {ends[-1]:.1f} "
            f"(median {ends[len(ends) // 2]:.1f}; sending began at {args.start_at:.1f}), "
            f"{lived[0]:.0f} to {lived[-1]:.0f} s after they opened",
            flush=True,
        )
    return counts


async def _hostile(args: argparse.Namespace) -> dict[str, int]:
    """``args.count`` streams on one connection with one node certificate, sending nothing."""
    tls = None if args.plaintext else Path(args.tls)
    node = TestNode.from_seed(HOSTILE_SEED, t0_ns=args.t0, gpus=8)
    async with _channel(args.address, tls, node) as channel:
        stub = spb_grpc.AttestationServiceStub(channel)
        calls = [stub.SubmitAttestations() for _ in range(args.count)]
        await asyncio.sleep(2)
        codes = {"held": 0, "refused": 0}
        done = [call for call in calls if call.done()]
        for call in done:
            if await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                codes["refused"] += 1
        codes["held"] = len(calls) - len(done)
        Path(args.ready).write_text(json.dumps(codes))
        await asyncio.sleep(max(0.0, args.end_at - time.time()))
        for call in calls:
            call.cancel()
        return codes


# -- the bare gRPC baseline (its own process) -------------------------------------------------


async def _bare(args: argparse.Namespace) -> None:
    """grpc.aio with the verifier's options and credentials, and nothing of the verifier: every
    batch is answered ACCEPTED unread. What gRPC alone costs for the same streams."""
    from grpc_health.v1 import health
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    from verifier.config import load_config
    from verifier.server.server import grpc_server_options, server_credentials

    config = load_config(Path(args.config))
    registry = CollectorRegistry()
    receipts = Counter(
        "pausewatch_verifier_receipts", "Receipts sent.", ["status"], registry=registry
    ).labels(status="accepted")
    metrics_host, metrics_port = (config.metrics.listen or "127.0.0.1:0").rsplit(":", 1)
    start_http_server(int(metrics_port), metrics_host, registry=registry)

    class Servicer(spb_grpc.AttestationServiceServicer):
        async def SubmitAttestations(  # type: ignore[override]  # noqa: N802
            self, request_iterator: object, context: grpc.aio.ServicerContext[object, object]
        ) -> object:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:  # type: ignore[attr-defined]
                    return
                assert isinstance(request, spb.SubmitAttestationsRequest)
                count = len(request.envelopes)
                del request
                receipts.inc(count)
                yield spb.SubmitAttestationsResponse(
                    receipts=[spb.Receipt(status=spb.RECEIPT_STATUS_ACCEPTED) for _ in range(count)]
                )

    server = grpc.aio.server(options=grpc_server_options(config))
    spb_grpc.add_AttestationServiceServicer_to_server(Servicer(), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    credentials = server_credentials(config, time.time_ns())
    if credentials is None:
        port = server.add_insecure_port(config.server.listen)
    else:
        port = server.add_secure_port(config.server.listen, credentials)
    await server.start()
    Path(args.ready + ".tmp").write_text(f"{port}\n")
    Path(args.ready + ".tmp").replace(args.ready)
    await server.wait_for_termination()


@dataclass(frozen=True)
class Setup:
    """A verifier's files for a bench: TLS material, config, and the regulator's credentials."""

    tmp: Path
    tls: Path
    files: VerifierFiles
    metrics_port: int
    regulator_creds: grpc.ChannelCredentials | None

    def regulator_channel(self, address: str) -> grpc.Channel:
        if self.regulator_creds is None:
            return grpc.insecure_channel(address)
        return grpc.secure_channel(address, self.regulator_creds)


def prepare(
    prefix: str,
    *,
    plaintext: bool,
    max_streams_per_peer: int,
    max_streams_per_identity: int,
    linger_ms: int = 250,
    keepalive_s: int | None = None,
) -> Setup:
    """A verifier config as a fleet would run it: SQLite, roles on (mutual TLS, node agents by
    SPIFFE URI, unless ``plaintext``), metrics on, the monitor off, production intervals."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    tls = tmp / "tls"
    files = write_self_signed(tls, ["127.0.0.1", "localhost"], keep_ca_key=True)
    regulator_cert, regulator_key = issue_client_cert_pem(
        files.ca_cert.read_bytes(), (tls / "ca.key").read_bytes(), "regulator",
        uri=f"{SPIFFE}/regulator",
    )  # fmt: skip
    metrics_port = free_port()
    verifier_files = write_verifier_files(
        tmp / "v",
        access='unauthenticated_role = "regulator"' if plaintext else fleet_access(SPIFFE),
        extra_config=f"""[limits]
max_streams_per_peer = {max_streams_per_peer}
max_streams_per_identity = {max_streams_per_identity}
{"" if keepalive_s is None else f"keepalive_time_s = {keepalive_s}"}

[metrics]
listen = "127.0.0.1:{metrics_port}"

[monitor]
interval_s = 0
""",
        extra_ingest=f"commit_linger_ms = {linger_ms}",
    )
    # The production defaults where the test harness shortens them.
    text = verifier_files.config.read_text()
    text = text.replace("checkpoint_interval_s = 1\n", "checkpoint_interval_s = 10\n")
    text = text.replace("workers = 8\n", "workers = 16\n")
    if not plaintext:
        text = text.replace(
            'insecure_no_tls = true\nlisten = "127.0.0.1:0"',
            f'listen = "127.0.0.1:0"\ntls_cert = "{files.server_cert}"\n'
            f'tls_key = "{files.server_key}"\nclient_ca = "{files.ca_cert}"',
        )
    verifier_files.config.write_text(text)
    creds = None if plaintext else _credentials(tls, regulator_cert, regulator_key)
    return Setup(tmp, tls, verifier_files, metrics_port, creds)


def enroll_fleet(setup: Setup, address: str, nodes: list[TestNode], t0: int) -> None:
    """Enrol ``nodes`` and declare their GPUs, as a real lab does: undeclared GPUs would each
    make a finding on their first window (signed and logged), which is not the steady state."""
    operator = setup.files.operator
    asyncio.run(_enroll_all(address, (setup.regulator_creds,), nodes, operator, t0))
    with setup.regulator_channel(address) as channel:
        rpb_grpc.RegistryServiceStub(channel).DeclareInventory(
            inventory_request(operator, all_gpu_uuids(nodes), effective_from_ns=t0 - 60 * S),
            timeout=300,
        )


def _start_bare(
    args: argparse.Namespace,
    files: VerifierFiles,
    tmp: Path,
    channel_for: Callable[[str], grpc.Channel],
) -> RunningVerifier:
    ready = tmp / "bare.port"
    process = _spawn(
        args, "bare", ["--config", str(files.config), "--ready", str(ready)], tmp / "bare.log"
    )
    _wait_for(ready, None, 60, "the bare gRPC server did not start")
    address = f"127.0.0.1:{int(ready.read_text())}"
    wait_serving(address, channel_for=channel_for)
    return RunningVerifier(files, address, process)


# -- the measuring side ----------------------------------------------------------------------


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _thread_cpu_s(pid: int) -> dict[int, tuple[str, float]]:
    """Thread id -> (its name, CPU seconds so far), from /proc/<pid>/task."""
    threads: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            comm, rest = (task / "stat").read_text().split("(", 1)[1].rsplit(")", 1)
            fields = rest.split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            threads[int(task.name)] = (comm, cpu)
    return threads


def _thread_split(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], wall: float
) -> str:
    """The CPU of gRPC's own threads (named by gRPC), of the busiest Python thread (the event
    loop's, at these rates) and of the other Python threads (the workers), in % of a core."""
    grpc_s, python = 0.0, []
    for tid, (comm, cpu) in after.items():
        spent = cpu - before.get(tid, (comm, 0.0))[1]
        if comm.startswith("python"):
            python.append(spent)
        else:
            grpc_s += spent
    python.sort(reverse=True)
    busiest = python[0] if python else 0.0
    named = len(after) - len(python)
    return (
        f"{named} gRPC threads {100 * grpc_s / wall:.1f}, busiest Python thread "
        f"{100 * busiest / wall:.1f}, {len(python) - 1} other Python threads "
        f"{100 * sum(python[1:]) / wall:.1f}"
    )


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _scrape(metrics_port: int) -> dict[tuple[str, str], float]:
    """(name, the stage or status label) -> value, from the verifier's /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = sample.labels.get("stage") or sample.labels.get("status") or ""
            key = (sample.name, label)
            values[key] = values.get(key, 0.0) + sample.value
    return values


def _accepted(metrics_port: int) -> float:
    return _scrape(metrics_port).get(("pausewatch_verifier_receipts_total", "accepted"), 0.0)


def _stages(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> str:
    parts = []
    for stage in ("batch", "verify", "commit"):
        count = after.get(("pausewatch_verifier_stage_duration_seconds_count", stage), 0) - (
            before.get(("pausewatch_verifier_stage_duration_seconds_count", stage), 0)
        )
        total = after.get(("pausewatch_verifier_stage_duration_seconds_sum", stage), 0) - (
            before.get(("pausewatch_verifier_stage_duration_seconds_sum", stage), 0)
        )
        if count:
            parts.append(f"{stage} {count:.0f} x {1000 * total / count:.2f} ms")
    return ", ".join(parts)


class HealthProbe:
    """Health checks every 50 ms from a client of its own; latencies in ms."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = health_pb2_grpc.HealthStub(channel)
        self.latencies_ms: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            started = time.perf_counter()
            try:
                self.stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
            except grpc.RpcError:
                self.failures += 1

    def start(self) -> HealthProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def _phase(
    name: str, pid: int, metrics_port: int, seconds: float, channel: grpc.Channel
) -> dict[str, float]:
    scraped_before = _scrape(metrics_port)
    accepted_before = scraped_before.get(("pausewatch_verifier_receipts_total", "accepted"), 0.0)
    cpu_before, threads_before, started = _cpu_s(pid), _thread_cpu_s(pid), time.monotonic()
    probe = HealthProbe(channel).start()
    peak_rss = 0.0
    while time.monotonic() - started < seconds:
        peak_rss = max(peak_rss, _rss_mib(pid))
        time.sleep(1)
    probe.stop()
    wall = time.monotonic() - started
    cpu = (_cpu_s(pid) - cpu_before) / wall
    split = _thread_split(threads_before, _thread_cpu_s(pid), wall)
    scraped_after = _scrape(metrics_port)
    accepted = (
        scraped_after.get(("pausewatch_verifier_receipts_total", "accepted"), 0.0) - accepted_before
    )
    result = {
        "rss_mib": peak_rss,
        "cpu_core_fraction": cpu,
        "health_p50_ms": _percentile(probe.latencies_ms, 0.50),
        "health_p99_ms": _percentile(probe.latencies_ms, 0.99),
        "health_checks": len(probe.latencies_ms),
        "health_failures": probe.failures,
        "accepted": accepted,
        "accepted_per_s": accepted / wall,
    }
    print(
        f"{name}: RSS {peak_rss:.0f} MiB (goal < 1024), CPU {100 * cpu:.1f} % of a core "
        f"(goal < 15), health p50 {result['health_p50_ms']:.1f} ms p99 "
        f"{result['health_p99_ms']:.1f} ms (goal < 100; {len(probe.latencies_ms)} checks, "
        f"{probe.failures} failed), accepted {accepted:.0f} ({accepted / wall:.1f}/s)",
        flush=True,
    )
    print(f"  CPU by thread, % of a core: {split}", flush=True)
    print(f"  stages (wall time, mean): {_stages(scraped_before, scraped_after)}", flush=True)
    return result


def _spawn(
    args: argparse.Namespace, role: str, extra: list[str], log: Path
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path[:2]))
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, __file__, "--role", role, *extra],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_for(path: Path, content: str | None, timeout_s: float, what: str) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text()
            if content is None or text == content:
                return text
        time.sleep(0.5)
    raise TimeoutError(what)


async def _enroll_all(
    address: str, channel_args: tuple[object, ...], nodes: list[TestNode], operator: object, t0: int
) -> None:
    creds = channel_args[0]
    async with (
        grpc.aio.secure_channel(address, creds)  # type: ignore[arg-type]
        if creds is not None
        else grpc.aio.insecure_channel(address)
    ) as channel:
        stub = rpb_grpc.RegistryServiceStub(channel)
        semaphore = asyncio.Semaphore(64)

        async def one(node: TestNode) -> None:
            async with semaphore:
                request = enroll_request(enrollment_for(node, created_at_ns=t0 - S), node, operator)  # type: ignore[arg-type]
                await stub.EnrollNode(request, timeout=120)

        await asyncio.gather(*(one(node) for node in nodes))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--interval-s", type=float, default=60.0)
    parser.add_argument("--phase-s", type=float, default=120.0)
    parser.add_argument("--hostile", type=int, default=1_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--plaintext", action="store_true")
    parser.add_argument(
        "--linger-ms",
        type=int,
        default=250,
        help="the verifier's ingest.commit_linger_ms (250: what docs/verifier.md advises a fleet)",
    )
    parser.add_argument(
        "--keepalive-s",
        type=int,
        default=None,
        help="the verifier's limits.keepalive_time_s (default: the verifier's own default)",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="first run the same against a bare gRPC server, and print the verifier's figures "
        "against it",
    )
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)
    for hidden in ("--address", "--tls", "--ready", "--config"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    for hidden in ("--first", "--count", "--windows", "--t0"):
        parser.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    for hidden in ("--start-at", "--end-at"):
        parser.add_argument(hidden, type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "agents":
        print(json.dumps(asyncio.run(_agents(args))), flush=True)
        return 0
    if args.role == "hostile":
        print(json.dumps(asyncio.run(_hostile(args))), flush=True)
        return 0
    if args.role == "bare":
        asyncio.run(_bare(args))
        return 0
    results = {
        kind: _run(args, kind)
        for kind in (("bare", "verifier") if args.baseline else ("verifier",))
    }
    if args.baseline:
        _compare(results["bare"], results["verifier"])
    verifier = results["verifier"]
    print(json.dumps(verifier if not args.baseline else results))
    ok = all(
        p["rss_mib"] < 1024 and p["cpu_core_fraction"] < 0.15 and p["health_p99_ms"] < 100
        for p in (verifier["phase1"], verifier["phase2"])
    )
    return 0 if ok else 1


def _compare(bare: dict[str, Any], verifier: dict[str, Any]) -> None:
    """The verifier's figures against the bare gRPC server's, phase by phase."""
    print("verifier against bare gRPC (the same agents, options and TLS):", flush=True)
    for phase in ("phase1", "phase2"):
        b, v = bare[phase], verifier[phase]
        extra_mib = v["rss_mib"] - b["rss_mib"]
        extra_cpu = v["cpu_core_fraction"] - b["cpu_core_fraction"]
        print(
            f"  {phase}: RSS {v['rss_mib']:.0f} / {b['rss_mib']:.0f} MiB = "
            f"{v['rss_mib'] / b['rss_mib']:.2f}x (the verifier's own: {extra_mib:.0f} MiB); "
            f"CPU {100 * v['cpu_core_fraction']:.1f} / {100 * b['cpu_core_fraction']:.1f} % = "
            f"{v['cpu_core_fraction'] / max(b['cpu_core_fraction'], 1e-9):.2f}x "
            f"(the verifier's own: {100 * extra_cpu:.1f} % of a core); health p99 "
            f"{v['health_p99_ms']:.1f} / {b['health_p99_ms']:.1f} ms",
            flush=True,
        )
    streams = verifier["streams"]
    print(
        f"  per open stream, before any message: verifier {verifier['kib_per_stream']:.0f} KiB, "
        f"bare gRPC {bare['kib_per_stream']:.0f} KiB ({streams} streams)",
        flush=True,
    )


def _run(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """One whole run (open the streams, idle, phase 1, the hostile client, phase 2) against
    ``kind``: "verifier" or "bare" (gRPC alone)."""

    setup = prepare(
        "bench-streams-",
        plaintext=args.plaintext,
        max_streams_per_peer=args.agents + args.hostile + 100,
        max_streams_per_identity=args.hostile,
        linger_ms=args.linger_ms,
        keepalive_s=args.keepalive_s,
    )
    tmp, tls, verifier_files = setup.tmp, setup.tls, setup.files
    regulator_channel = setup.regulator_channel
    if kind == "bare":
        running = _start_bare(args, verifier_files, tmp, regulator_channel)
    else:
        running = start_verifier_process(verifier_files, tmp / "verifier.log", regulator_channel)
    assert running.process is not None
    pid = running.process.pid
    what = (
        "bare gRPC server (the verifier's gRPC options, nothing of the verifier)"
        if kind == "bare"
        else f"verifier (roles on; commit_linger_ms {args.linger_ms})"
    )
    print(
        f"{what}: pid {pid} on {running.address}, "
        f"{'plaintext' if args.plaintext else 'mTLS'}; {args.agents} agents in {args.clients} "
        f"processes; log in {tmp}",
        flush=True,
    )
    clients: list[subprocess.Popen[bytes]] = []
    try:
        now = time.time_ns()
        t0 = now - now % (60 * S) - 24 * 3600 * S
        started = time.monotonic()
        if kind == "verifier":
            nodes = [TestNode.from_seed(SEED + i, t0_ns=t0, gpus=8) for i in range(args.agents)]
            nodes.append(TestNode.from_seed(HOSTILE_SEED, t0_ns=t0, gpus=8))
            enroll_fleet(setup, running.address, nodes, t0)
            print(
                f"enrolled {len(nodes)} nodes and declared their GPUs in "
                f"{time.monotonic() - started:.0f} s",
                flush=True,
            )
        rss_idle = _rss_mib(pid)

        settle_s = 30.0
        open_budget_s = 60.0 + args.agents / (200 if args.plaintext else 100)
        start_at = time.time() + open_budget_s
        end_at = start_at + settle_s + 2 * args.phase_s + args.interval_s
        windows = int((end_at - start_at) / args.interval_s) + 2
        per = -(-args.agents // args.clients)
        readies = []
        common = [
            "--address", running.address, "--tls", str(tls), "--t0", str(t0),
            "--windows", str(windows), "--start-at", str(start_at), "--end-at", str(end_at),
            "--interval-s", str(args.interval_s),
        ]  # fmt: skip
        if args.plaintext:
            common.append("--plaintext")
        for k in range(args.clients):
            first, count = k * per, min(per, args.agents - k * per)
            if count <= 0:
                break
            ready = tmp / f"client-{k}.ready"
            readies.append(ready)
            clients.append(
                _spawn(
                    args, "agents",
                    [*common, "--first", str(first), "--count", str(count), "--ready", str(ready)],
                    tmp / f"client-{k}.log",
                )
            )  # fmt: skip
        for ready in readies:
            _wait_for(ready, "open", open_budget_s + 300, f"{ready.name}: streams did not open")
        opened = time.monotonic() - started
        failed_open = sum(
            json.loads(Path(f"{ready}.json").read_text())["failed_open"] for ready in readies
        )
        streams = args.agents - failed_open
        kib_per_stream = (_rss_mib(pid) - rss_idle) * 1024 / max(1, streams)
        print(
            f"{args.agents - failed_open} streams open, {failed_open} could not connect "
            f"({opened:.0f} s after start); RSS {_rss_mib(pid):.0f} "
            f"MiB (before streams: {rss_idle:.0f} MiB)",
            flush=True,
        )
        # Between the last stream opening and the first window: what open, silent streams cost
        # (keepalive, timers, polling), apart from what their messages cost.
        idle_s = start_at - time.time() - 5
        if idle_s >= 10:
            cpu_before, threads_before = _cpu_s(pid), _thread_cpu_s(pid)
            idle_from = time.monotonic()
            time.sleep(idle_s)
            wall = time.monotonic() - idle_from
            print(
                f"idle (streams open, none sending, {wall:.0f} s): CPU "
                f"{100 * (_cpu_s(pid) - cpu_before) / wall:.1f} % of a core "
                f"({_thread_split(threads_before, _thread_cpu_s(pid), wall)})",
                flush=True,
            )
        time.sleep(max(0.0, start_at - time.time()) + settle_s)
        with regulator_channel(running.address) as channel:
            phase1 = _phase("phase 1 (agents only)", pid, setup.metrics_port, args.phase_s, channel)
            hostile_ready = tmp / "hostile.ready"
            hostile = _spawn(
                args, "hostile",
                [*common, "--count", str(args.hostile), "--ready", str(hostile_ready)],
                tmp / "hostile.log",
            )  # fmt: skip
            clients.append(hostile)
            codes = json.loads(_wait_for(hostile_ready, None, 120, "the hostile client"))
            print(
                f"hostile client: {args.hostile} idle streams on one connection, one node "
                f"certificate: {codes['held']} held, {codes['refused']} refused",
                flush=True,
            )
            phase2 = _phase("phase 2 (+ hostile)", pid, setup.metrics_port, args.phase_s, channel)
        for client in clients:
            client.wait(timeout=args.interval_s + 300)
        totals: dict[str, int] = {}
        for k in range(len(readies)):
            lines = (tmp / f"client-{k}.log").read_text().strip().splitlines()
            for key, value in json.loads(lines[-1]).items():
                totals[key] = totals.get(key, 0) + int(value)
        ends = ", ".join(f"{k[6:]} {v}" for k, v in sorted(totals.items()) if k[:6] == "ended_")
        print(
            f"agents: {totals.get('batches', 0)} windows answered, {totals.get('reopened', 0)} "
            f"streams opened again after ending early ({ends or 'none'}), "
            f"{totals.get('failed', 0)} agents gave up",
            flush=True,
        )
        return {
            "phase1": phase1,
            "phase2": phase2,
            "hostile": codes,
            "agents": totals,
            "streams": streams,
            "kib_per_stream": kib_per_stream,
        }
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
        stop_process(running, timeout_s=60)


if __name__ == "__main__":
    sys.exit(main())
