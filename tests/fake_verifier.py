"""A small verifier for tests: AttestationService and RegistryService over real gRPC on loopback.

    server = FakeVerifier(operator_keys={"lab-a": operator_public_key})
    port = server.start()                          # 127.0.0.1, port 0 -> the port it got
    server.unavailable_batches = 2                 # the next two batches: REJECTED UNAVAILABLE
    server.drop_after_batches = 1                  # abort the stream after one more response
    server.stop()

It checks what a verifier must check, with attest: envelopes verify under the enrolled node key,
bodies validate, nonces are ones it issued to that node, and each node's chain links up (next,
duplicate, fork, gap, rollback, with attest.chain.classify). It keeps everything it received,
so tests can look for forks and duplicates. Not a production verifier: no log proofs, no policy.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pausewatch.v1 import attestation_service_pb2 as api
from pausewatch.v1 import attestation_service_pb2_grpc as api_grpc
from pausewatch.v1 import registry_pb2 as reg
from pausewatch.v1 import registry_pb2_grpc as reg_grpc

from attest import chain
from attest.attestation import verify_attestation
from attest.envelope import (
    PayloadType,
    StaticKeyring,
    envelope_digest,
    parse_envelope,
    verify_envelope,
)
from attest.errors import (
    BodyError,
    EnvelopeError,
    EnvelopeTooLargeError,
    PayloadTypeError,
    SignatureError,
    UnknownKeyError,
    VerificationError,
)
from attest.keys import key_id, public_key_from_raw

NONCE_LIFETIME_NS = 3600 * 10**9


@dataclass
class NodeRecord:
    node_id: bytes
    lab_id: str
    public_key: Ed25519PublicKey
    gpus: list[str]
    enrollment: bytes
    log_index: int
    head: chain.ChainHead | None = None
    by_seq: dict[int, bytes] = field(default_factory=dict)
    """seq -> digest of the envelope accepted at that seq."""
    envelopes: dict[bytes, bytes] = field(default_factory=dict)
    """digest -> envelope bytes, of every accepted envelope."""
    log_index_of: dict[bytes, int] = field(default_factory=dict)
    gaps: list[tuple[int, int]] = field(default_factory=list)
    forks: list[tuple[int, bytes]] = field(default_factory=list)
    revoked: bool = False


class FakeVerifier(api_grpc.AttestationServiceServicer, reg_grpc.RegistryServiceServicer):
    """See the module docs."""

    def __init__(
        self,
        *,
        operator_keys: dict[str, Ed25519PublicKey] | None = None,
        tls: tuple[bytes, bytes] | None = None,
        client_ca: bytes | None = None,
        check_nonces: bool = True,
    ) -> None:
        self.operator_keys = dict(operator_keys or {})
        self._tls = tls
        self._client_ca = client_ca
        self.check_nonces = check_nonces
        self.nonce_lifetime_ns = NONCE_LIFETIME_NS
        self.lock = threading.RLock()
        self.nodes: dict[bytes, NodeRecord] = {}
        self.log: list[bytes] = []
        self.issued: dict[bytes, set[bytes]] = {}
        self.received: list[bytes] = []
        """Every envelope submitted, in arrival order (duplicates included)."""
        self.batches = 0
        self.challenges = 0
        self.streams = 0
        self.inventory_versions: dict[str, int] = {}
        # Faults, set by tests.
        self.unavailable_batches = 0
        self.drop_after_batches: int | None = None
        self.delay_s = 0.0
        self.reject_reason: int | None = None
        self._server: grpc.Server | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, port: int = 0) -> int:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        api_grpc.add_AttestationServiceServicer_to_server(self, server)
        reg_grpc.add_RegistryServiceServicer_to_server(self, server)
        address = f"127.0.0.1:{port}"
        if self._tls is None:
            self.port = server.add_insecure_port(address)
        else:
            key, cert = self._tls
            credentials = grpc.ssl_server_credentials(
                [(key, cert)],
                root_certificates=self._client_ca,
                require_client_auth=self._client_ca is not None,
            )
            self.port = server.add_secure_port(address, credentials)
        server.start()
        self._server = server
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None)
            self._server = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- setup and queries for tests ---------------------------------------------------------

    def add_node(self, public_key: Ed25519PublicKey, lab_id: str = "lab-a") -> bytes:
        """Enrol a node directly (for tests that are not about enrolment)."""
        node_id = bytes(key_id(public_key))
        with self.lock:
            self.nodes[node_id] = NodeRecord(
                node_id=node_id,
                lab_id=lab_id,
                public_key=public_key,
                gpus=[],
                enrollment=b"",
                log_index=len(self.log),
            )
            self.log.append(b"enrolment of " + node_id)
        return node_id

    def node(self, node_id: bytes) -> NodeRecord:
        with self.lock:
            return self.nodes[node_id]

    def accepted_in_order(self, node_id: bytes) -> list[bytes]:
        with self.lock:
            record = self.nodes[node_id]
            return [record.envelopes[record.by_seq[s]] for s in sorted(record.by_seq)]

    # -- AttestationService -------------------------------------------------------------------

    def GetChallenge(
        self, request: api.GetChallengeRequest, context: grpc.ServicerContext
    ) -> api.GetChallengeResponse:
        now = time.time_ns()
        nonce = now.to_bytes(8, "big") + secrets.token_bytes(16)
        with self.lock:
            self.challenges += 1
            self.issued.setdefault(bytes(request.node_id), set()).add(nonce)
        return api.GetChallengeResponse(
            nonce=nonce,
            issued_at_ns=now,
            expires_at_ns=now + self.nonce_lifetime_ns,
            verifier_time_ns=now,
        )

    def SubmitAttestations(
        self,
        request_iterator: Iterator[api.SubmitAttestationsRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[api.SubmitAttestationsResponse]:
        with self.lock:
            self.streams += 1
        for request in request_iterator:
            if self.delay_s:
                time.sleep(self.delay_s)
            with self.lock:
                if self.drop_after_batches is not None:
                    if self.drop_after_batches <= 0:
                        self.drop_after_batches = None
                        context.abort(grpc.StatusCode.UNAVAILABLE, "stream dropped (test fault)")
                    self.drop_after_batches -= 1
                self.batches += 1
                if self.unavailable_batches > 0:
                    self.unavailable_batches -= 1
                    receipts = [
                        api.Receipt(
                            envelope_digest=envelope_digest(raw),
                            status=api.RECEIPT_STATUS_REJECTED,
                            reason=api.REJECT_REASON_UNAVAILABLE,
                            detail="try again later",
                        )
                        for raw in request.envelopes
                    ]
                else:
                    receipts = [self._ingest(bytes(raw)) for raw in request.envelopes]
                response = api.SubmitAttestationsResponse(
                    receipts=receipts, tree_size=len(self.log)
                )
            yield response

    def _keyring(self) -> StaticKeyring:
        ring = StaticKeyring()
        for record in self.nodes.values():
            ring.add(record.public_key)
        return ring

    def _ingest(self, raw: bytes) -> api.Receipt:
        self.received.append(raw)
        digest = envelope_digest(raw)

        def reject(reason: int, detail: str, seq: int | None = None) -> api.Receipt:
            return api.Receipt(
                envelope_digest=digest,
                status=api.RECEIPT_STATUS_REJECTED,
                reason=reason,
                detail=detail,
                seq=seq or 0,
                has_seq=seq is not None,
            )

        try:
            verified = verify_attestation(raw, self._keyring())
        except EnvelopeTooLargeError:
            return reject(api.REJECT_REASON_TOO_LARGE, "too large")
        except EnvelopeError:
            return reject(api.REJECT_REASON_MALFORMED_ENVELOPE, "malformed envelope")
        except PayloadTypeError:
            return reject(api.REJECT_REASON_WRONG_PAYLOAD_TYPE, "not an attestation")
        except UnknownKeyError:
            return reject(api.REJECT_REASON_UNKNOWN_KEY, "unknown node")
        except SignatureError:
            return reject(api.REJECT_REASON_BAD_SIGNATURE, "bad signature")
        except BodyError as exc:
            return reject(api.REJECT_REASON_INVALID_BODY, exc.diagnostics())
        body = verified.body
        record = self.nodes[bytes(verified.node_id)]
        if record.revoked:
            return reject(api.REJECT_REASON_REVOKED_KEY, "revoked", body.seq)
        if body.lab_id != record.lab_id:
            return reject(api.REJECT_REASON_INVALID_BODY, "wrong lab", body.seq)
        if self.reject_reason is not None:
            return reject(self.reject_reason, "rejected (test fault)", body.seq)
        for gpu in body.gpus:
            if record.gpus and gpu.uuid not in record.gpus:
                return reject(api.REJECT_REASON_UNKNOWN_GPU, gpu.uuid, body.seq)
        if (
            self.check_nonces
            and body.verifier_nonce
            and body.verifier_nonce not in self.issued.get(record.node_id, set())
        ):
            return reject(api.REJECT_REASON_BAD_NONCE, "nonce not issued here", body.seq)
        link = chain.classify(
            record.head, body.seq, body.prev_digest, digest, record.by_seq.get(body.seq)
        )
        if link is chain.Link.DUPLICATE:
            return api.Receipt(
                envelope_digest=digest,
                status=api.RECEIPT_STATUS_DUPLICATE,
                log_index=record.log_index_of[digest],
                seq=body.seq,
                has_seq=True,
            )
        if link is chain.Link.FORK:
            record.forks.append((body.seq, digest))
            return reject(api.REJECT_REASON_FORK, "fork", body.seq)
        if link is chain.Link.ROLLBACK:
            return reject(api.REJECT_REASON_ROLLBACK, "rollback", body.seq)
        gap = link is chain.Link.GAP
        if gap:
            expected = 0 if record.head is None else record.head.seq + 1
            record.gaps.append((expected, body.seq))
        index = len(self.log)
        self.log.append(raw)
        record.by_seq[body.seq] = digest
        record.envelopes[digest] = raw
        record.log_index_of[digest] = index
        record.head = chain.ChainHead(body.seq, digest, body.window_end_ns)
        return api.Receipt(
            envelope_digest=digest,
            status=api.RECEIPT_STATUS_ACCEPTED,
            log_index=index,
            seq=body.seq,
            has_seq=True,
            gap_recorded=gap,
        )

    # -- RegistryService ----------------------------------------------------------------------

    def _operator_envelope(
        self, raw: bytes, payload_type: PayloadType, lab_id: str, context: grpc.ServicerContext
    ) -> bytes:
        key = self.operator_keys.get(lab_id)
        if key is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown lab {lab_id}")
        ring = StaticKeyring()
        ring.add(key)
        try:
            return verify_envelope(raw, ring, payload_type=payload_type).payload
        except UnknownKeyError:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "not the lab's operator key")
        except VerificationError:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "operator signature does not verify")
        raise AssertionError("unreachable")

    def EnrollNode(
        self, request: reg.EnrollNodeRequest, context: grpc.ServicerContext
    ) -> reg.EnrollNodeResponse:
        try:
            node_env = parse_envelope(request.enrollment_envelope)
            auth_env = parse_envelope(request.authorization_envelope)
        except EnvelopeError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed envelope")
        if node_env.payload != auth_env.payload:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the envelopes sign different bytes")
        enrollment = reg.NodeEnrollment.FromString(node_env.payload)
        try:
            public_key = public_key_from_raw(enrollment.node_public_key)
        except ValueError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad node public key")
        ring = StaticKeyring()
        ring.add(public_key)
        try:
            verify_envelope(request.enrollment_envelope, ring, payload_type=PayloadType.ENROLLMENT)
        except VerificationError:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no proof of possession")
        self._operator_envelope(
            request.authorization_envelope,
            PayloadType.ENROLLMENT_AUTHORIZATION,
            enrollment.lab_id,
            context,
        )
        node_id = bytes(key_id(public_key))
        if self.check_nonces and enrollment.verifier_nonce not in self.issued.get(node_id, set()):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "enrolment nonce not issued here")
        with self.lock:
            existing = self.nodes.get(node_id)
            if existing is not None:
                if existing.enrollment == request.enrollment_envelope:
                    return reg.EnrollNodeResponse(
                        node_id=node_id, already_enrolled=True, log_index=existing.log_index
                    )
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "node enrolled differently")
            index = len(self.log)
            self.log.append(request.authorization_envelope)
            self.nodes[node_id] = NodeRecord(
                node_id=node_id,
                lab_id=enrollment.lab_id,
                public_key=public_key,
                gpus=[g.uuid for g in enrollment.gpus],
                enrollment=request.enrollment_envelope,
                log_index=index,
            )
        return reg.EnrollNodeResponse(node_id=node_id, already_enrolled=False, log_index=index)

    def DeclareInventory(
        self, request: reg.DeclareInventoryRequest, context: grpc.ServicerContext
    ) -> reg.DeclareInventoryResponse:
        try:
            envelope = parse_envelope(request.declaration_envelope)
        except EnvelopeError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed envelope")
        declaration = reg.InventoryDeclaration.FromString(envelope.payload)
        self._operator_envelope(
            request.declaration_envelope, PayloadType.INVENTORY, declaration.lab_id, context
        )
        with self.lock:
            if declaration.version <= self.inventory_versions.get(declaration.lab_id, 0):
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "version not increasing")
            self.inventory_versions[declaration.lab_id] = declaration.version
            self.log.append(request.declaration_envelope)
            return reg.DeclareInventoryResponse(
                version=declaration.version, log_index=len(self.log) - 1
            )

    def RevokeNode(
        self, request: reg.RevokeNodeRequest, context: grpc.ServicerContext
    ) -> reg.RevokeNodeResponse:
        try:
            envelope = parse_envelope(request.revocation_envelope)
        except EnvelopeError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed envelope")
        revocation = reg.NodeRevocation.FromString(envelope.payload)
        self._operator_envelope(
            request.revocation_envelope, PayloadType.REVOCATION, revocation.lab_id, context
        )
        with self.lock:
            record = self.nodes.get(bytes(revocation.node_id))
            if record is None:
                context.abort(grpc.StatusCode.NOT_FOUND, "unknown node")
            already = record.revoked
            record.revoked = True
            self.log.append(request.revocation_envelope)
            return reg.RevokeNodeResponse(log_index=len(self.log) - 1, already_revoked=already)


def main() -> None:
    """Run a fake verifier in the foreground (for manual tries): prints its address."""
    server = FakeVerifier(check_nonces=True)
    port = server.start(int(os.environ.get("PORT", "0")))
    print(f"fake verifier on 127.0.0.1:{port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
