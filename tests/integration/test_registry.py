"""Enrolment, inventory declarations and revocation over gRPC, with their refusals."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import findings_pb2 as fpb
from pausewatch.v1 import registry_pb2 as rpb

from attest.envelope import PayloadType, sign_envelope
from attest.keys import Ed25519Signer
from tests.builders import TestNode, fixed_private_key
from tests.verifier_harness import (
    RunningVerifier,
    enroll_request,
    enrollment_for,
    inventory_request,
    running_verifier,
)

S = 10**9


@pytest.fixture
def verifier(tmp_path: Path) -> Iterator[RunningVerifier]:
    with running_verifier(tmp_path, require_nonce=True, max_clock_skew_s=300) as v:
        yield v


def log_size(v: RunningVerifier) -> int:
    with sqlite3.connect(v.files.store) as db:
        return int(db.execute("SELECT COUNT(*) FROM log_entries").fetchone()[0])


def code_of(call, *args) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=10)
    assert "Traceback" not in (info.value.details() or "")
    return info.value.code()  # type: ignore[no-any-return]


def test_enrol_is_idempotent_and_logged(verifier: RunningVerifier) -> None:
    client = verifier.client()
    node = TestNode.from_seed(30)
    request = enroll_request(enrollment_for(node, nonce=client.nonce(node)), node, client.operator)
    first = client.registry.EnrollNode(request)
    again = client.registry.EnrollNode(request)
    assert (first.already_enrolled, again.already_enrolled) == (False, True)
    assert first.log_index == again.log_index
    entry = client.audit.GetLogEntry(apb.GetLogEntryRequest(index=first.log_index))
    assert entry.entry == request.enrollment_envelope
    info = client.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id)).node
    assert info.state == rpb.NODE_STATE_ACTIVE
    assert [g.uuid for g in info.gpus] == [node.gpu_uuid(0), node.gpu_uuid(1)]
    nodes = client.registry.ListNodes(rpb.ListNodesRequest(lab_id="lab-a")).nodes
    assert [n.node_id for n in nodes] == [node.node_id]


def test_enrolment_refusals(verifier: RunningVerifier) -> None:
    client = verifier.client()
    node = TestNode.from_seed(31)
    nonce = client.nonce(node)
    enrollment = enrollment_for(node, nonce=nonce)
    stranger = Ed25519Signer.from_private_key(fixed_private_key(999))
    before = log_size(verifier)
    # Authorised by someone who is not the lab's operator.
    assert (
        code_of(client.registry.EnrollNode, enroll_request(enrollment, node, stranger))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    # Proof of possession by another key.
    other = TestNode.from_seed(32)
    bad_pop = enroll_request(enrollment, node, client.operator)
    bad_pop.enrollment_envelope = sign_envelope(
        other.signer, PayloadType.ENROLLMENT, enrollment.SerializeToString()
    )
    assert code_of(client.registry.EnrollNode, bad_pop) == grpc.StatusCode.INVALID_ARGUMENT
    # The two envelopes sign different bytes.
    mismatch = enroll_request(enrollment, node, client.operator)
    mismatch.authorization_envelope = sign_envelope(
        client.operator,
        PayloadType.ENROLLMENT_AUTHORIZATION,
        enrollment.SerializeToString() + b"\x00",
    )
    assert code_of(client.registry.EnrollNode, mismatch) == grpc.StatusCode.INVALID_ARGUMENT
    # An unknown lab, a stale creation time, a forged nonce, garbage.
    wrong_lab = enrollment_for(node, nonce=nonce)
    wrong_lab.lab_id = "lab-z"
    assert (
        code_of(client.registry.EnrollNode, enroll_request(wrong_lab, node, client.operator))
        == grpc.StatusCode.NOT_FOUND
    )
    stale = enrollment_for(node, nonce=nonce, created_at_ns=time.time_ns() - 3600 * S)
    assert (
        code_of(client.registry.EnrollNode, enroll_request(stale, node, client.operator))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    forged = enrollment_for(node, nonce=b"\x00" * 24)
    assert (
        code_of(client.registry.EnrollNode, enroll_request(forged, node, client.operator))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    garbage = rpb.EnrollNodeRequest(enrollment_envelope=b"\x01\x02", authorization_envelope=b"")
    assert code_of(client.registry.EnrollNode, garbage) == grpc.StatusCode.INVALID_ARGUMENT
    assert log_size(verifier) == before  # nothing was recorded for any of these
    assert (
        code_of(client.registry.GetNode, rpb.GetNodeRequest(node_id=node.node_id))
        == grpc.StatusCode.NOT_FOUND
    )


def test_a_gpu_enrolled_under_another_key_is_refused_and_recorded(
    verifier: RunningVerifier,
) -> None:
    client = verifier.client()
    first = TestNode.from_seed(33)
    client.enroll(first)
    thief = TestNode.from_seed(34)
    enrollment = enrollment_for(thief, nonce=client.nonce(thief))
    enrollment.gpus[1].uuid = first.gpu_uuid(0)  # claims a GPU the first node holds
    request = enroll_request(enrollment, thief, client.operator)
    assert code_of(client.registry.EnrollNode, request) == grpc.StatusCode.ALREADY_EXISTS
    findings = client.audit.ListFindings(
        apb.ListFindingsRequest(lab_id="lab-a", kinds=[fpb.FINDING_KIND_ENROLLMENT_CONFLICT])
    ).findings
    assert len(findings) == 1
    assert findings[0].finding.node_id == thief.node_id
    assert findings[0].finding.rejected_envelope == request.enrollment_envelope
    # Same attempt again: refused, not recorded twice.
    assert code_of(client.registry.EnrollNode, request) == grpc.StatusCode.ALREADY_EXISTS
    again = client.audit.ListFindings(
        apb.ListFindingsRequest(lab_id="lab-a", kinds=[fpb.FINDING_KIND_ENROLLMENT_CONFLICT])
    ).findings
    assert len(again) == 1


def _revoke(
    client, node: TestNode, operator: Ed25519Signer, reason: str = "retired"
) -> rpb.RevokeNodeResponse:  # type: ignore[no-untyped-def]
    revocation = rpb.NodeRevocation(
        format_version=1,
        lab_id="lab-a",
        node_id=node.node_id,
        reason=reason,
        created_at_ns=time.time_ns(),
    )
    raw = sign_envelope(operator, PayloadType.REVOCATION, revocation.SerializeToString())
    return client.registry.RevokeNode(rpb.RevokeNodeRequest(revocation_envelope=raw))  # type: ignore[no-any-return]


def test_revocation_stops_acceptance_keeps_the_past_and_frees_the_gpus(tmp_path: Path) -> None:
    now = time.time_ns()
    with running_verifier(tmp_path, max_clock_skew_s=300, max_age_s=7200) as v:
        client = v.client()
        node = TestNode.from_seed(35, t0_ns=now - 400 * S)
        client.enroll(node, created_at_ns=now - 200 * S)
        chain = node.chain(4)
        assert [r.status for r in client.submit(chain[:2])] == [spb.RECEIPT_STATUS_ACCEPTED] * 2
        stranger = Ed25519Signer.from_private_key(fixed_private_key(998))
        revocation = rpb.NodeRevocation(
            format_version=1, lab_id="lab-a", node_id=node.node_id, created_at_ns=time.time_ns()
        )
        forged = rpb.RevokeNodeRequest(
            revocation_envelope=sign_envelope(
                stranger, PayloadType.REVOCATION, revocation.SerializeToString()
            )
        )
        assert code_of(client.registry.RevokeNode, forged) == grpc.StatusCode.PERMISSION_DENIED
        first = _revoke(client, node, v.files.operator)
        assert not first.already_revoked
        assert _revoke(client, node, v.files.operator, "again").already_revoked
        (late,) = client.submit([chain[2]])
        assert late.reason == spb.REJECT_REASON_REVOKED_KEY
        # What was accepted before stays, at the same place.
        (old,) = client.submit([chain[1]])
        assert old.status == spb.RECEIPT_STATUS_DUPLICATE
        info = client.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id)).node
        assert (info.state, info.head_seq) == (rpb.NODE_STATE_REVOKED, 1)
        # Its GPUs may now be enrolled under a new key (a reinstall).
        reinstall = TestNode.from_seed(36)
        enrollment = enrollment_for(reinstall, nonce=client.nonce(reinstall))
        for i, gpu in enumerate(enrollment.gpus):
            gpu.uuid = node.gpu_uuid(i)
        response = client.registry.EnrollNode(
            enroll_request(enrollment, reinstall, client.operator)
        )
        assert not response.already_enrolled


def refusal(call, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    """The error ``call`` refuses ``request`` with."""
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    assert "Traceback" not in (info.value.details() or "")
    return info.value


def findings_count(v: RunningVerifier) -> int:
    with sqlite3.connect(v.files.store) as db:
        return int(db.execute("SELECT COUNT(*) FROM findings").fetchone()[0])


def test_a_revocation_created_outside_the_clock_skew_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    """A revocation cannot be back-dated (nor dated ahead) beyond ingest.max_clock_skew_s of the
    verifier's clock: refused INVALID_ARGUMENT naming created_at_ns, nothing logged, the node still
    active and accepting. Control: one created now revokes the node."""
    now = time.time_ns()
    with running_verifier(tmp_path, max_clock_skew_s=300, max_age_s=7200) as v:
        client = v.client()
        node = TestNode.from_seed(37, t0_ns=now - 400 * S)
        client.enroll(node, created_at_ns=now - 200 * S)
        chain = node.chain(4)
        assert [r.status for r in client.submit(chain[:2])] == [spb.RECEIPT_STATUS_ACCEPTED] * 2
        before = (log_size(v), findings_count(v))

        def revocation(created_at_ns: int) -> rpb.RevokeNodeRequest:
            message = rpb.NodeRevocation(
                format_version=1,
                lab_id="lab-a",
                node_id=node.node_id,
                reason="retired",
                created_at_ns=created_at_ns,
            )
            return rpb.RevokeNodeRequest(
                revocation_envelope=sign_envelope(
                    v.files.operator, PayloadType.REVOCATION, message.SerializeToString()
                )
            )

        for offset_s in (-3600, -330, 330, 3600):
            request = revocation(time.time_ns() + offset_s * S)
            for _ in range(2):  # resent, still refused (never taken for already on record)
                error = refusal(client.registry.RevokeNode, request)
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, offset_s
                assert (
                    "NodeRevocation created_at_ns is outside the accepted clock skew of 300 s"
                    in (error.details() or "")
                ), offset_s
            assert (log_size(v), findings_count(v)) == before, offset_s
            info = client.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id)).node
            assert info.state == rpb.NODE_STATE_ACTIVE, offset_s
        # The node still attests: its next window is accepted.
        (next_window,) = client.submit([chain[2]])
        assert next_window.status == spb.RECEIPT_STATUS_ACCEPTED, next_window.detail
        # Control: within the skew, the revocation is logged and takes effect.
        accepted = client.registry.RevokeNode(revocation(time.time_ns() - 60 * S), timeout=10)
        assert not accepted.already_revoked
        assert log_size(v) == before[0] + 2  # the window, then the revocation
        info = client.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id)).node
        assert info.state == rpb.NODE_STATE_REVOKED
        (refused,) = client.submit([chain[3]])
        assert refused.reason == spb.REJECT_REASON_REVOKED_KEY


def test_an_inventory_declaration_created_outside_the_clock_skew_is_refused(
    verifier: RunningVerifier,
) -> None:
    """An inventory declaration whose created_at_ns is beyond the clock skew (300 s here) from
    the verifier's clock, too old or too far ahead, is refused INVALID_ARGUMENT naming the field;
    nothing is logged or stored. Control: the same declaration created now is accepted."""
    client = verifier.client()
    before = (log_size(verifier), findings_count(verifier))
    effective = time.time_ns() + 60 * S
    for offset_s in (-3600, -330, 330, 3600):
        request = inventory_request(
            verifier.files.operator,
            ["GPU-a", "GPU-b"],
            effective_from_ns=effective,
            created_at_ns=time.time_ns() + offset_s * S,
        )
        error = refusal(client.registry.DeclareInventory, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, offset_s
        assert "InventoryDeclaration created_at_ns is outside the accepted clock skew of 300 s" in (
            error.details() or ""
        ), offset_s
        assert (log_size(verifier), findings_count(verifier)) == before, offset_s
        assert inventory_rows(verifier.files.store) == []
    accepted = client.declare_inventory(["GPU-a", "GPU-b"], effective_from_ns=effective)
    assert accepted.version == 1
    assert log_size(verifier) == before[0] + 1
    assert inventory_rows(verifier.files.store) == [("lab-a", 1, ["GPU-a", "GPU-b"])]


def _declaration(
    version: int, uuids: list[str], effective_from_ns: int, lab: str = "lab-a"
) -> bytes:
    declaration = rpb.InventoryDeclaration(
        format_version=1,
        lab_id=lab,
        version=version,
        gpus=[rpb.GpuIdentity(uuid=u, model="NVIDIA H100 80GB HBM3") for u in uuids],
        effective_from_ns=effective_from_ns,
        created_at_ns=time.time_ns(),
    )
    return declaration.SerializeToString()


def test_inventory_versions_must_increase_and_cannot_be_backdated(
    verifier: RunningVerifier,
) -> None:
    client = verifier.client()
    operator = verifier.files.operator
    now = time.time_ns()

    def declare(payload: bytes, signer: Ed25519Signer = operator) -> rpb.DeclareInventoryResponse:
        raw = sign_envelope(signer, PayloadType.INVENTORY, payload)
        return client.registry.DeclareInventory(
            rpb.DeclareInventoryRequest(declaration_envelope=raw)
        )  # type: ignore[no-any-return]

    first = declare(_declaration(1, ["GPU-a", "GPU-b"], now + S))
    assert first.version == 1
    payload = _declaration(2, ["GPU-a"], now + 2 * S)
    second = declare(payload)
    assert declare(payload).log_index == second.log_index  # idempotent
    for bad, code in (
        (_declaration(2, ["GPU-c"], now + 3 * S), grpc.StatusCode.ALREADY_EXISTS),
        (_declaration(3, ["GPU-c"], now - 3600 * S), grpc.StatusCode.INVALID_ARGUMENT),
        (_declaration(3, ["GPU-c", "GPU-c"], now + S), grpc.StatusCode.INVALID_ARGUMENT),
        (_declaration(3, [], now + S), grpc.StatusCode.INVALID_ARGUMENT),
        (_declaration(3, ["GPU-c"], now + S, lab="lab-q"), grpc.StatusCode.NOT_FOUND),
    ):
        raw = sign_envelope(operator, PayloadType.INVENTORY, bad)
        assert (
            code_of(
                client.registry.DeclareInventory,
                rpb.DeclareInventoryRequest(declaration_envelope=raw),
            )
            == code
        )
    stranger = Ed25519Signer.from_private_key(fixed_private_key(997))
    raw = sign_envelope(stranger, PayloadType.INVENTORY, _declaration(3, ["GPU-c"], now + S))
    assert (
        code_of(
            client.registry.DeclareInventory, rpb.DeclareInventoryRequest(declaration_envelope=raw)
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )


def inventory_rows(v_store: Path) -> list[tuple[str, int, list[str]]]:
    with sqlite3.connect(v_store) as db:
        return [
            (str(lab), int(version), json.loads(uuids))
            for lab, version, uuids in db.execute(
                "SELECT lab_id, version, gpu_uuids FROM inventory ORDER BY version"
            )
        ]


def test_inventory_declaration_files_from_the_operator_cli_load_at_start_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from attest.errors import ConfigError
    from attest.keys import save_private_key
    from tests.cli_runner import run_agent_cli

    operator_key = tmp_path / "operator.key"
    save_private_key(operator_key, fixed_private_key(100))  # the harness's lab-a operator
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        '[[gpu]]\nuuid = "GPU-A"\nmodel = "NVIDIA H100"\n[[gpu]]\nuuid = "GPU-B"\n'
    )
    directory = tmp_path / "v"
    directory.mkdir()
    declaration = directory / "inventory-v1.pwenv"
    args = ["operator", "declare-inventory", "--operator-key", str(operator_key), "--lab",
            "lab-a", "--inventory", str(inventory), "--version", "1"]  # fmt: skip
    code, out, err = run_agent_cli(capsys, *args, "--out", str(declaration), "--json")
    assert code == 0, err
    assert json.loads(out) == {"version": 1, "out": str(declaration), "gpus": 2}
    written = declaration.read_bytes()
    # Never replaced, and the CLI says why; --out and --verifier exclude each other.
    code, _, err = run_agent_cli(capsys, *args, "--out", str(declaration))
    assert (code, declaration.read_bytes()) == (2, written)
    assert "already exists" in err
    code, _, err = run_agent_cli(capsys, *args, "--out", str(tmp_path / "x"), "--verifier", "v:1")
    assert code == 2 and "leave out --verifier" in err
    assert not (tmp_path / "x").exists()
    code, _, err = run_agent_cli(capsys, *args)
    assert code == 2 and "--verifier is required" in err

    listed = 'inventory_declarations = ["inventory-v1.pwenv"]'
    with running_verifier(directory, extra_lab=listed) as v:
        assert inventory_rows(v.files.store) == [("lab-a", 1, ["GPU-A", "GPU-B"])]
        size = log_size(v)
    # A restart with the same file changes nothing: the declaration is on record already.
    with running_verifier(directory, extra_lab=listed) as v:
        assert inventory_rows(v.files.store) == [("lab-a", 1, ["GPU-A", "GPU-B"])]
        assert log_size(v) == size

    # A tampered file stops the start, naming the file, and leaves the store as it was.
    tampered = directory / "tampered.pwenv"
    tampered.write_bytes(written[:-1] + bytes([written[-1] ^ 1]))
    with (
        pytest.raises(ConfigError, match=r"tampered\.pwenv"),
        running_verifier(directory, extra_lab='inventory_declarations = ["tampered.pwenv"]'),
    ):
        pass  # pragma: no cover - the start fails
    with running_verifier(directory) as v:
        assert inventory_rows(v.files.store) == [("lab-a", 1, ["GPU-A", "GPU-B"])]
        assert log_size(v) == size


def test_a_fleet_sized_inventory_is_declared_in_one_envelope(verifier: RunningVerifier) -> None:
    """20,000 GPUs (about 1 MB of UUIDs, four times an attestation's envelope limit) declare in
    one signed envelope; one past the request size limit is refused whole, nothing logged."""
    client = verifier.client()
    now = time.time_ns()
    fleet = [f"GPU-{i:08d}-0000-0000-0000-000000000000" for i in range(20_000)]
    before = log_size(verifier)
    accepted = client.declare_inventory(fleet, effective_from_ns=now)
    assert accepted.version == 1
    assert log_size(verifier) == before + 1
    too_big = [f"GPU-{i:08d}-0000-0000-0000-{'0' * 12}" for i in range(200_000)]  # ~9 MB
    with pytest.raises(grpc.RpcError) as refused:
        client.declare_inventory(too_big, effective_from_ns=now + S, version=2)
    assert refused.value.code() in {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
    assert log_size(verifier) == before + 1
