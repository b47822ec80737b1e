"""The verifier's side of the enrolment proof of possession (docs/threat-model.md, "Fake or replay
attestations"): a NodeEnrollment whose envelope is not signed by the node key it names is refused,
even when the lab's operator authorised those very bytes, and nothing is logged; the honest
request over the same verifier is enrolled.

tests/integration/test_registry.py::test_enrolment_refusals sends one such request, signed by
another key under that key's own id (refused before the signature is checked). These send the
two that reach the signature check itself: the node's key id over another key's signature, and
the node's signature over a payload with one byte changed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pausewatch.v1 import envelope_pb2
from pausewatch.v1 import registry_pb2 as rpb

from attest.envelope import PayloadType, sign_envelope
from attest.keys import Ed25519Signer
from tests.builders import TestNode, fixed_private_key
from tests.verifier_harness import (
    Client,
    RunningVerifier,
    enroll_request,
    enrollment_for,
    running_verifier,
)


@pytest.fixture
def verifier(tmp_path: Path) -> Iterator[RunningVerifier]:
    with running_verifier(tmp_path, require_nonce=True, max_clock_skew_s=300) as v:
        yield v


def log_size(v: RunningVerifier) -> int:
    with sqlite3.connect(v.files.store) as db:
        return int(db.execute("SELECT COUNT(*) FROM log_entries").fetchone()[0])


def refusal(call, request) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    details = info.value.details() or ""
    assert "Traceback" not in details
    return info.value.code(), details


def authorised(client: Client, enrollment_envelope: bytes, payload: bytes) -> rpb.EnrollNodeRequest:
    """``enrollment_envelope`` with the lab operator's authorisation of ``payload``."""
    return rpb.EnrollNodeRequest(
        enrollment_envelope=enrollment_envelope,
        authorization_envelope=sign_envelope(
            client.operator, PayloadType.ENROLLMENT_AUTHORIZATION, payload
        ),
    )


def test_an_enrolment_without_the_node_keys_signature_is_refused_and_not_logged(
    verifier: RunningVerifier,
) -> None:
    client = verifier.client()
    node = TestNode.from_seed(40)
    honest = enroll_request(enrollment_for(node, nonce=client.nonce(node)), node, client.operator)
    pop = envelope_pb2.Envelope.FromString(honest.enrollment_envelope)
    assert pop.key_id == node.node_id
    other = Ed25519Signer.from_private_key(fixed_private_key(41))
    by_other = envelope_pb2.Envelope.FromString(
        sign_envelope(other, PayloadType.ENROLLMENT, pop.payload)
    )
    before = log_size(verifier)

    # Another key's signature under that key's own id: not the key the request names.
    code, details = refusal(
        client.registry.EnrollNode, authorised(client, by_other.SerializeToString(), pop.payload)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not signed by the enrolling node key" in details

    # The node's key id over another key's signature, the operator authorising the same bytes.
    forged = envelope_pb2.Envelope()
    forged.CopyFrom(pop)
    forged.signature = by_other.signature
    code, details = refusal(
        client.registry.EnrollNode, authorised(client, forged.SerializeToString(), pop.payload)
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert f"signature by key {node.node_id.hex()[:16]}... does not verify" in details

    # The node's signature, one byte of the payload changed (the node name), the operator
    # authorising the changed bytes.
    at = pop.payload.index(b"node-")
    changed = pop.payload[:at] + b"N" + pop.payload[at + 1 :]
    assert rpb.NodeEnrollment.FromString(changed).node_name.startswith("Node-")
    altered = envelope_pb2.Envelope()
    altered.CopyFrom(pop)
    altered.payload = changed
    code, details = refusal(
        client.registry.EnrollNode, authorised(client, altered.SerializeToString(), changed)
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert f"signature by key {node.node_id.hex()[:16]}... does not verify" in details

    assert log_size(verifier) == before  # none of them was recorded
    code, _ = refusal(client.registry.GetNode, rpb.GetNodeRequest(node_id=node.node_id))
    assert code == grpc.StatusCode.NOT_FOUND

    # Control: the honest request, same payload, same verifier: enrolled and logged.
    response = client.registry.EnrollNode(honest, timeout=10)
    assert response.node_id == node.node_id
    assert not response.already_enrolled
    assert log_size(verifier) > before
    info = client.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id), timeout=10).node
    assert info.state == rpb.NODE_STATE_ACTIVE
