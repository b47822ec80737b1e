"""Roles over real mutual TLS: a verifier process whose config maps client certificates (SAN URI,
a URI prefix for node agents, a pinned fingerprint) to roles, and a client per role making each
call. Every refusal is PERMISSION_DENIED and leaves the store as it was; the honest callers'
calls go through."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from grpc_health.v1 import health_pb2
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import registry_pb2 as rpb

from attest.envelope import PayloadType, sign_envelope
from attest.keys import Ed25519Signer, format_public_key
from tests.builders import TestNode, fixed_private_key
from tests.verifier_harness import (
    Client,
    RunningVerifier,
    enroll_request,
    enrollment_for,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)
from verifier.server.tlsgen import issue_client_cert, write_self_signed

S = 10**9
SPIFFE = "spiffe://regulator.test"
DENIED = grpc.StatusCode.PERMISSION_DENIED
OK = grpc.StatusCode.OK
ROLES = ("regulator", "auditor", "operator-a", "operator-b", "node-1", "node-2", "public")


@dataclass
class Fleet:
    running: RunningVerifier
    tls: Path
    lab_b_operator: Ed25519Signer
    node1: TestNode
    node2: TestNode
    node3: TestNode
    t0_ns: int

    def credentials(self, who: str) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=(self.tls / "ca.pem").read_bytes(),
            private_key=(self.tls / f"{who}.key").read_bytes(),
            certificate_chain=(self.tls / f"{who}.pem").read_bytes(),
        )

    def client(self, who: str) -> Client:
        channel = grpc.secure_channel(self.running.address, self.credentials(who))
        return Client(channel, self.running.files.operator)

    def regulator(self) -> Client:
        return self.client("regulator")


def _lab_b(operator: Ed25519Signer) -> str:
    return f"""
[[labs]]
id = "lab-b"
name = "Lab B"
operator_public_key = "{format_public_key(operator.public_key)}"
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("roles")
    tls = directory / "v" / "tls"
    files = write_self_signed(tls, ["127.0.0.1", "localhost"], keep_ca_key=True)
    t0 = time.time_ns() // (60 * S) * (60 * S) - 3600 * S
    node1, node2, node3 = (TestNode.from_seed(300 + i, t0_ns=t0, gpus=2) for i in range(3))
    issue_client_cert(tls, "regulator", uri=f"{SPIFFE}/regulator")
    auditor_pem, _ = issue_client_cert(tls, "auditor", uri="spiffe://elsewhere/unmapped")
    issue_client_cert(tls, "operator-a", uri=f"{SPIFFE}/lab/lab-a/operator")
    issue_client_cert(tls, "operator-b", uri=f"{SPIFFE}/lab/lab-b/operator")
    for name, node in (("node-1", node1), ("node-2", node2), ("node-3", node3)):
        issue_client_cert(tls, name, uri=f"{SPIFFE}/lab/lab-a/node/{node.node_id.hex()}")
    issue_client_cert(tls, "public", uri=f"{SPIFFE}/somebody")
    cert = x509.load_pem_x509_certificate(auditor_pem.read_bytes())
    fingerprint = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    access = f"""unauthenticated_role = "public"

[[access.identities]]
uri = "{SPIFFE}/regulator"
role = "regulator"

[[access.identities]]
fingerprint_sha256 = "{fingerprint}"
role = "auditor"

[[access.identities]]
uri = "{SPIFFE}/lab/lab-a/operator"
role = "lab_operator"
lab = "lab-a"

[[access.identities]]
uri = "{SPIFFE}/lab/lab-b/operator"
role = "lab_operator"
lab = "lab-b"

[[access.identities]]
uri_prefix = "{SPIFFE}/lab/lab-a/node/"
role = "node_agent"
lab = "lab-a"
"""
    lab_b_operator = Ed25519Signer.from_private_key(fixed_private_key(120))
    verifier_files = write_verifier_files(
        directory / "v", access=access, extra_lab=_lab_b(lab_b_operator)
    )
    text = verifier_files.config.read_text()
    verifier_files.config.write_text(
        text.replace(
            'insecure_no_tls = true\nlisten = "127.0.0.1:0"',
            f'listen = "127.0.0.1:0"\ntls_cert = "{files.server_cert}"\n'
            f'tls_key = "{files.server_key}"\nclient_ca = "{files.ca_cert}"',
        )
    )
    probe = Fleet(RunningVerifier(verifier_files, ""), tls, lab_b_operator, node1, node2, node3, t0)
    running = start_verifier_process(
        verifier_files,
        directory / "verifier.log",
        channel_for=lambda address: grpc.secure_channel(address, probe.credentials("public")),
    )
    fleet = Fleet(running, tls, lab_b_operator, node1, node2, node3, t0)
    regulator = fleet.regulator()
    for node in (node1, node2):
        enrollment = enrollment_for(node, created_at_ns=t0 - S)
        regulator.registry.EnrollNode(
            enroll_request(enrollment, node, files_operator(fleet)), timeout=10
        )
    receipts = regulator.submit(node1.chain(3))
    assert [r.status for r in receipts] == [spb.RECEIPT_STATUS_ACCEPTED] * 3
    try:
        yield fleet
    finally:
        assert stop_process(running) == 0


def files_operator(fleet: Fleet) -> Ed25519Signer:
    return fleet.running.files.operator


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ByteSize"):
            list(result)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return OK


def log_size(fleet: Fleet) -> int:
    """Entries committed to the log, read from the verifier's database."""
    with sqlite3.connect(f"file:{fleet.running.files.store}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM log_entries").fetchone()[0])


# The calls and who may make them. Reads of lab-a's evidence: regulator, auditor and lab-a's
# operator; a node agent reads and attests for its own node only; everyone reads checkpoints
# and proofs.
READ_LAB_A = {"regulator", "auditor", "operator-a"}
EVERYONE = set(ROLES)


def _calls(fleet: Fleet, c: Client) -> dict[str, tuple[Callable[[], Any], set[str]]]:
    period = {"period_start_ns": fleet.t0_ns, "period_end_ns": fleet.t0_ns + 3600 * S}
    n1 = fleet.node1.node_id
    return {
        "health": (
            lambda: c.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10),
            EVERYONE,
        ),
        "checkpoint": (
            lambda: c.audit.GetCheckpoint(apb.GetCheckpointRequest(), timeout=10),
            EVERYONE,
        ),
        "inclusion proof": (
            lambda: c.audit.GetInclusionProof(
                apb.GetInclusionProofRequest(leaf_index=0), timeout=10
            ),
            EVERYONE,
        ),
        "consistency proof": (
            lambda: c.audit.GetConsistencyProof(
                apb.GetConsistencyProofRequest(size1=1), timeout=10
            ),
            EVERYONE,
        ),
        "report lab-a": (
            lambda: c.audit.GetComplianceReport(
                apb.GetComplianceReportRequest(lab_id="lab-a", **period), timeout=30
            ),
            READ_LAB_A,
        ),
        "findings lab-a": (
            lambda: c.audit.ListFindings(apb.ListFindingsRequest(lab_id="lab-a"), timeout=10),
            READ_LAB_A,
        ),
        "bundle lab-a": (
            lambda: c.audit.ExportBundle(
                apb.ExportBundleRequest(lab_id="lab-a", **period), timeout=60
            ),
            READ_LAB_A,
        ),
        "list nodes lab-a": (
            lambda: c.registry.ListNodes(rpb.ListNodesRequest(lab_id="lab-a"), timeout=10),
            READ_LAB_A,
        ),
        "node-1's record": (
            lambda: c.registry.GetNode(rpb.GetNodeRequest(node_id=n1), timeout=10),
            READ_LAB_A | {"node-1"},
        ),
        "log entry": (
            lambda: c.audit.GetLogEntry(apb.GetLogEntryRequest(index=0), timeout=10),
            {"regulator", "auditor"},
        ),
        "challenge for node-1": (
            lambda: c.attestation.GetChallenge(spb.GetChallengeRequest(node_id=n1), timeout=10),
            {"regulator", "operator-a", "operator-b", "node-1"},
        ),
        "submit node-1's attestations": (
            lambda: c.submit(fleet.node1.chain(3)),
            {"regulator", "node-1"},
        ),
    }


@pytest.mark.parametrize("who", ROLES)
def test_each_role_makes_exactly_its_calls(fleet: Fleet, who: str) -> None:
    client = fleet.client(who)
    outcomes = {name: code_of(call) for name, (call, allowed) in _calls(fleet, client).items()}
    expected = {
        name: OK if who in allowed else DENIED
        for name, (_, allowed) in _calls(fleet, client).items()
    }
    assert outcomes == expected


def test_a_lab_reading_another_lab_is_refused(fleet: Fleet) -> None:
    operator_b = fleet.client("operator-b")
    period = {"period_start_ns": fleet.t0_ns, "period_end_ns": fleet.t0_ns + 3600 * S}
    with pytest.raises(grpc.RpcError) as refused:
        operator_b.audit.GetComplianceReport(
            apb.GetComplianceReportRequest(lab_id="lab-a", **period), timeout=10
        )
    assert refused.value.code() is DENIED
    assert "lab-a" in (refused.value.details() or "")
    # Its own lab is readable (the control): lab-b has no nodes, so no policy figures, but
    # the call is not refused for who makes it.
    own = code_of(
        lambda: operator_b.registry.ListNodes(rpb.ListNodesRequest(lab_id="lab-b"), timeout=10)
    )
    assert own is OK


def test_an_agent_submitting_for_another_node_is_refused_and_nothing_is_stored(
    fleet: Fleet,
) -> None:
    node2 = fleet.client("node-2")
    before = log_size(fleet)
    head_before = fleet.regulator().registry.GetNode(
        rpb.GetNodeRequest(node_id=fleet.node1.node_id), timeout=10
    )
    # node-2's own first window and node-1's next one in the same batch: the whole batch is
    # refused, its own envelope included, before anything is verified or stored.
    mixed = [fleet.node2.chain(1)[0], fleet.node1.chain(4)[3]]
    with pytest.raises(grpc.RpcError) as refused:
        node2.submit(mixed)
    assert refused.value.code() is DENIED
    assert log_size(fleet) == before
    head_after = fleet.regulator().registry.GetNode(
        rpb.GetNodeRequest(node_id=fleet.node1.node_id), timeout=10
    )
    assert head_after == head_before
    # The honest control: node-2's own window alone is accepted.
    receipts = node2.submit(fleet.node2.chain(1))
    assert [r.status for r in receipts] == [spb.RECEIPT_STATUS_ACCEPTED]
    assert log_size(fleet) > before  # the window (and any findings it brings)


def test_enrolment_is_for_ones_own_lab_or_node(fleet: Fleet) -> None:
    node3 = fleet.node3
    request = enroll_request(
        enrollment_for(node3, created_at_ns=fleet.t0_ns), node3, files_operator(fleet)
    )
    before = log_size(fleet)
    # Lab B's operator cannot enrol into lab A, nor can node-1 enrol node-3, nor the public.
    for who in ("operator-b", "node-1", "auditor", "public"):
        assert code_of(lambda w=who: fleet.client(w).registry.EnrollNode(request, timeout=10)) is (
            DENIED
        ), who
    assert log_size(fleet) == before
    with pytest.raises(grpc.RpcError) as missing:
        fleet.regulator().registry.GetNode(rpb.GetNodeRequest(node_id=node3.node_id), timeout=10)
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    # node-3 enrols itself (with lab A's operator signature); lab A's operator may too.
    first = fleet.client("node-3").registry.EnrollNode(request, timeout=10)
    assert not first.already_enrolled
    again = fleet.client("operator-a").registry.EnrollNode(request, timeout=10)
    assert again.already_enrolled


def test_inventory_declarations_are_for_ones_own_lab(fleet: Fleet) -> None:
    declaration = rpb.InventoryDeclaration(
        format_version=1,
        lab_id="lab-a",
        version=1,
        gpus=[rpb.GpuIdentity(uuid=fleet.node1.gpu_uuid(0), model="NVIDIA H100 80GB HBM3")],
        effective_from_ns=time.time_ns() + S,
        created_at_ns=time.time_ns(),
    )
    raw = sign_envelope(
        files_operator(fleet), PayloadType.INVENTORY, declaration.SerializeToString()
    )
    request = rpb.DeclareInventoryRequest(declaration_envelope=raw)
    before = log_size(fleet)
    for who in ("operator-b", "node-1", "auditor", "public"):
        code = code_of(lambda w=who: fleet.client(w).registry.DeclareInventory(request, timeout=10))
        assert code is DENIED, who
    assert log_size(fleet) == before
    accepted = fleet.client("operator-a").registry.DeclareInventory(request, timeout=10)
    assert accepted.version == 1


def test_a_certificate_from_another_ca_claiming_the_regulator_uri_is_refused(
    fleet: Fleet, tmp_path: Path
) -> None:
    rogue = tmp_path / "rogue"
    write_self_signed(rogue, ["127.0.0.1"], keep_ca_key=True)
    issue_client_cert(rogue, "regulator", uri=f"{SPIFFE}/regulator")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(fleet.tls / "ca.pem").read_bytes(),
        private_key=(rogue / "regulator.key").read_bytes(),
        certificate_chain=(rogue / "regulator.pem").read_bytes(),
    )
    client = Client(grpc.secure_channel(fleet.running.address, credentials), files_operator(fleet))
    code = code_of(lambda: client.audit.GetCheckpoint(apb.GetCheckpointRequest(), timeout=5))
    assert code is grpc.StatusCode.UNAVAILABLE  # the handshake fails: no call is made


def test_plaintext_clients_are_public_unless_the_config_says_otherwise(tmp_path: Path) -> None:
    from tests.verifier_harness import running_verifier

    node = TestNode.from_seed(310, gpus=1)
    with running_verifier(tmp_path / "public", access="") as v:
        client = v.client()
        assert code_of(lambda: client.audit.GetCheckpoint(apb.GetCheckpointRequest())) is OK
        for refused in (
            lambda: client.audit.ListFindings(apb.ListFindingsRequest(lab_id="lab-a")),
            lambda: client.enroll(node),
            lambda: client.submit(node.chain(1)),
        ):
            assert code_of(refused) is DENIED
    with running_verifier(tmp_path / "local") as v:  # unauthenticated_role = "regulator"
        client = v.client()
        assert code_of(lambda: client.enroll(node)) is OK
        assert [r.status for r in client.submit(node.chain(1))] == [spb.RECEIPT_STATUS_ACCEPTED]


def test_list_labs_shows_each_role_only_what_it_may_read(fleet: Fleet) -> None:
    def labs_of(who: str) -> list[str]:
        response = fleet.client(who).audit.ListLabs(apb.ListLabsRequest(), timeout=10)
        return [lab.lab_id for lab in response.labs]

    assert labs_of("regulator") == labs_of("auditor") == ["lab-a", "lab-b"]
    assert labs_of("operator-a") == ["lab-a"]
    assert labs_of("operator-b") == ["lab-b"]
    for who in ("node-1", "public"):
        assert code_of(lambda who=who: labs_of(who)) is DENIED


def test_a_declaration_of_megabytes_crosses_the_verifiers_small_tls_records(fleet: Fleet) -> None:
    """The verifier makes TLS records of at most 4 KiB (server.tls_max_frame_bytes): a lab's
    declaration of 20,000 GPUs, some 1.5 MB, still arrives whole over mutual TLS."""
    gpus = [f"GPU-{i:08d}-0000-0000-0000-00000000000b" for i in range(20_000)]
    declaration = rpb.InventoryDeclaration(
        format_version=1,
        lab_id="lab-b",
        version=1,
        gpus=[rpb.GpuIdentity(uuid=uuid, model="NVIDIA H100 80GB HBM3") for uuid in gpus],
        effective_from_ns=time.time_ns() + S,
        created_at_ns=time.time_ns(),
    )
    raw = sign_envelope(
        fleet.lab_b_operator, PayloadType.INVENTORY, declaration.SerializeToString()
    )
    assert len(raw) > 1_000_000
    request = rpb.DeclareInventoryRequest(declaration_envelope=raw)
    before = log_size(fleet)
    accepted = fleet.client("operator-b").registry.DeclareInventory(request, timeout=60)
    assert accepted.version == 1
    assert log_size(fleet) == before + 1
