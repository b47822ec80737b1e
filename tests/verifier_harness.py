"""A real verifier for tests: keys, config and policy in a temp dir, served in-process or as a
separate process on 127.0.0.1 port 0, plus a client that enrols test nodes and submits batches.

    with running_verifier(tmp_path) as v:            # in-process VerifierServer
        client = v.client()
        client.enroll(node)
        receipts = client.submit(node.chain(3))
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import attestation_service_pb2_grpc as spb_grpc
from pausewatch.v1 import audit_pb2_grpc as apb_grpc
from pausewatch.v1 import registry_pb2 as rpb
from pausewatch.v1 import registry_pb2_grpc as rpb_grpc

from attest.envelope import PayloadType, sign_envelope
from attest.keys import Ed25519Signer, format_public_key, save_private_key
from tests.builders import TestNode, fixed_private_key

REPO = Path(__file__).resolve().parents[1]


def pausewatch(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``pausewatch`` CLI (the verifier's and the auditor's) in a process of its own."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "protos")]))
    return subprocess.run(
        [sys.executable, "-m", "verifier.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


S = 10**9

DEFAULT_POLICY = """
format_version = 1
policy_id = "test-policy"
version = 1
lab_id = "lab-a"

[[rules]]
id = "cumulative"
kind = "cumulative_flop"
window = "1h"
limit_flop = "1e21"

[[rules]]
id = "coverage"
kind = "coverage"
min_ratio = "90%"

[[rules]]
id = "max-gap"
kind = "max_gap"
max_gap = "10m"
"""


@dataclass
class VerifierFiles:
    directory: Path
    config: Path
    operator: Ed25519Signer
    store: Path


def fleet_access(spiffe: str) -> str:
    """An ``[access]`` section for a mutual-TLS fleet: the regulator at ``<spiffe>/regulator``,
    lab-a's node agents under ``<spiffe>/lab/lab-a/node/``, everyone else public."""
    return f"""unauthenticated_role = "public"
[[access.identities]]
uri = "{spiffe}/regulator"
role = "regulator"
[[access.identities]]
uri_prefix = "{spiffe}/lab/lab-a/node/"
role = "node_agent"
lab = "lab-a"
"""


def write_verifier_files(
    directory: Path,
    *,
    policy: str = DEFAULT_POLICY,
    extra_ingest: str = "",
    require_nonce: bool = False,
    max_clock_skew_s: int = 3_000_000_000,
    max_age_s: int = 3_000_000_000,
    late_after_s: int = 3_000_000_000,
    bucket_ms: int = 60_000,
    open_gap_grace_ms: int = 120_000,
    tls: bool = False,
    extra_server: str = "",
    extra_lab: str = "",
    store: str = 'path = "verifier.db"',
    extra_config: str = "",
    access: str = 'unauthenticated_role = "regulator"',
) -> VerifierFiles:
    """Keys, a policy and a config for lab ``lab-a`` (operator key seed 100, log key seed 101).

    Clock skew, age and lateness limits default to very wide so that the fixed test timestamps
    of ``tests.builders`` are accepted on time; tests of those limits pass their own values.
    Clients without a certificate get the regulator role (``access``), as a local test setup
    may; the role tests (tests/integration/test_roles.py) pass their own ``[access]``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    operator = Ed25519Signer.from_private_key(fixed_private_key(100))
    if not (directory / "log.key").exists():  # a restart reuses the verifier's files
        save_private_key(directory / "log.key", fixed_private_key(101))
    (directory / "policy.toml").write_text(policy, encoding="utf-8")
    server = 'insecure_no_tls = true\nlisten = "127.0.0.1:0"'
    if tls:
        from verifier.server.tlsgen import write_self_signed

        files = write_self_signed(directory / "tls", ["127.0.0.1", "localhost"])
        server = (
            f'listen = "127.0.0.1:0"\ntls_cert = "{files.server_cert}"\n'
            f'tls_key = "{files.server_key}"'
        )
    config = directory / "verifier.toml"
    config.write_text(
        f"""
[server]
{server}
{extra_server}
workers = 8
shutdown_grace_s = 2

[log]
origin = "test.example/verifier"
signing_key = "log.key"
checkpoint_interval_s = 1

[store]
{store}

[ingest]
accept_backends = ["sim", "nvml", "replay"]
require_nonce = {"true" if require_nonce else "false"}
max_clock_skew_s = {max_clock_skew_s}
max_age_s = {max_age_s}
late_after_s = {late_after_s}
bucket_ms = {bucket_ms}
gap_tolerance_ms = 5000
open_gap_grace_ms = {open_gap_grace_ms}
{extra_ingest}

[access]
{access}

{extra_config}

[[labs]]
id = "lab-a"
name = "Lab A"
operator_public_key = "{format_public_key(operator.public_key)}"
policy = "policy.toml"
{extra_lab}
""",
        encoding="utf-8",
    )
    return VerifierFiles(directory, config, operator, directory / "verifier.db")


def enrollment_for(
    node: TestNode, *, nonce: bytes = b"", created_at_ns: int | None = None
) -> rpb.NodeEnrollment:
    body = node.body(0)
    return rpb.NodeEnrollment(
        format_version=1,
        lab_id=node.lab_id,
        node_public_key=node.signer.public_key.public_bytes_raw(),
        gpus=[
            rpb.GpuIdentity(uuid=g.uuid, serial=g.serial, model=g.model, pci_bus_id=g.pci_bus_id)
            for g in body.gpus
        ],
        node_name=f"node-{node.node_id.hex()[:8]}",
        agent_version="0.1.0",
        created_at_ns=created_at_ns if created_at_ns is not None else time.time_ns(),
        verifier_nonce=nonce,
    )


def enroll_request(
    enrollment: rpb.NodeEnrollment, node: TestNode, operator: Ed25519Signer
) -> rpb.EnrollNodeRequest:
    payload = enrollment.SerializeToString(deterministic=True)
    return rpb.EnrollNodeRequest(
        enrollment_envelope=sign_envelope(node.signer, PayloadType.ENROLLMENT, payload),
        authorization_envelope=sign_envelope(
            operator, PayloadType.ENROLLMENT_AUTHORIZATION, payload
        ),
    )


def inventory_request(
    operator: Ed25519Signer,
    uuids: Sequence[str],
    *,
    effective_from_ns: int,
    version: int = 1,
    lab_id: str = "lab-a",
    created_at_ns: int | None = None,
) -> rpb.DeclareInventoryRequest:
    """A lab's inventory declaration of ``uuids``, signed by its operator key."""
    declaration = rpb.InventoryDeclaration(
        format_version=1,
        lab_id=lab_id,
        version=version,
        gpus=[rpb.GpuIdentity(uuid=uuid) for uuid in uuids],
        effective_from_ns=effective_from_ns,
        created_at_ns=created_at_ns if created_at_ns is not None else time.time_ns(),
    )
    return rpb.DeclareInventoryRequest(
        declaration_envelope=sign_envelope(
            operator, PayloadType.INVENTORY, declaration.SerializeToString()
        )
    )


def all_gpu_uuids(nodes: Sequence[TestNode]) -> list[str]:
    """Every GPU of ``nodes``, as their attestations name them."""
    return [gpu.uuid for node in nodes for gpu in node.body(0).gpus]


class Client:
    """gRPC stubs for one verifier."""

    def __init__(self, channel: grpc.Channel, operator: Ed25519Signer) -> None:
        self.channel = channel
        self.operator = operator
        self.attestation = spb_grpc.AttestationServiceStub(channel)
        self.registry = rpb_grpc.RegistryServiceStub(channel)
        self.audit = apb_grpc.AuditServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    def nonce(self, node: TestNode) -> bytes:
        return self.attestation.GetChallenge(
            spb.GetChallengeRequest(node_id=node.node_id), timeout=10
        ).nonce

    def enroll(self, node: TestNode, **kwargs: object) -> rpb.EnrollNodeResponse:
        enrollment = enrollment_for(node, nonce=self.nonce(node), **kwargs)  # type: ignore[arg-type]
        return self.registry.EnrollNode(enroll_request(enrollment, node, self.operator), timeout=10)

    def declare_inventory(
        self, uuids: Sequence[str], *, effective_from_ns: int, **kwargs: object
    ) -> rpb.DeclareInventoryResponse:
        """Declare the lab's inventory (:func:`inventory_request` takes the other arguments)."""
        request = inventory_request(
            self.operator,
            uuids,
            effective_from_ns=effective_from_ns,
            **kwargs,  # type: ignore[arg-type]
        )
        return self.registry.DeclareInventory(request, timeout=60)

    def submit(self, envelopes: Sequence[bytes], batch: int = 64) -> list[spb.Receipt]:
        return [r for response in self.submit_batches(envelopes, batch) for r in response.receipts]

    def submit_batches(
        self, envelopes: Sequence[bytes], batch: int = 64
    ) -> list[spb.SubmitAttestationsResponse]:
        requests = [
            spb.SubmitAttestationsRequest(envelopes=list(envelopes[i : i + batch]))
            for i in range(0, len(envelopes), batch)
        ]
        return list(self.attestation.SubmitAttestations(iter(requests), timeout=60))


@dataclass
class RunningVerifier:
    files: VerifierFiles
    address: str
    process: subprocess.Popen[bytes] | None = None

    def channel(self) -> grpc.Channel:
        ca = self.files.directory / "tls" / "ca.pem"
        if ca.exists():
            return grpc.secure_channel(
                self.address, grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
            )
        return grpc.insecure_channel(self.address)

    def cli_target(self) -> list[str]:
        """The pausewatch CLI's options to reach this verifier."""
        ca = self.files.directory / "tls" / "ca.pem"
        if ca.exists():
            return ["--verifier", self.address, "--ca-cert", str(ca)]
        return ["--verifier", self.address, "--insecure-no-tls"]

    def client(self) -> Client:
        return Client(self.channel(), self.files.operator)


def wait_serving(
    address: str,
    timeout_s: float = 30.0,
    channel_for: Callable[[str], grpc.Channel] = grpc.insecure_channel,
) -> None:
    deadline = time.monotonic() + timeout_s
    with channel_for(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"verifier at {address} did not become SERVING")
            time.sleep(0.05)


@contextmanager
def running_verifier(directory: Path, **kwargs: object) -> Iterator[RunningVerifier]:
    """An in-process verifier on a free port."""
    from verifier.config import load_config
    from verifier.server.server import VerifierServer

    files = write_verifier_files(directory, **kwargs)  # type: ignore[arg-type]
    server = VerifierServer.from_config(load_config(files.config))
    port = server.start()
    try:
        yield RunningVerifier(files, f"127.0.0.1:{port}")
    finally:
        server.stop()


def start_verifier_process(
    files: VerifierFiles,
    log_path: Path,
    channel_for: Callable[[str], grpc.Channel] = grpc.insecure_channel,
    *,
    wait_health: bool = True,
    extra_args: Sequence[str] = (),
) -> RunningVerifier:
    """The verifier as a real process (for SIGKILL and shutdown tests); ``channel_for`` opens
    the channel its health is polled on (TLS servers need their own); ``wait_health=False``
    waits for the port file only; ``extra_args`` go to ``verifier serve``."""
    port_file = files.directory / "port"
    port_file.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "protos")]))
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "verifier.cli",
                "verifier",
                "serve",
                "--config",
                str(files.config),
                "--port-file",
                str(port_file),
                *extra_args,
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if process.poll() is not None:
            raise RuntimeError(
                f"verifier exited with {process.returncode}: {log_path.read_text()[-2000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError("verifier did not start")
        time.sleep(0.05)
    address = f"127.0.0.1:{int(port_file.read_text())}"
    if wait_health:
        wait_serving(address, channel_for=channel_for)
    return RunningVerifier(files, address, process)


def stop_process(running: RunningVerifier, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
    assert running.process is not None
    running.process.send_signal(sig)
    return running.process.wait(timeout=timeout_s)
