"""Thin gRPC servicers over the verifier's domain layer, and the one table from errors to status.

    server.add_generic_rpc_handlers(...)  # see verifier/server.py
    AttestationServicer(core, ingestor).SubmitAttestations(requests, context)

Servicers translate messages and nothing else. Every error a handler raises on purpose is a
:class:`~attest.errors.PausewatchError` whose ``diagnostics()`` is safe to send; anything else is
logged here with its traceback and the peer sees only ``INTERNAL: internal error``.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import attestation_service_pb2_grpc as spb_grpc
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import audit_pb2_grpc as apb_grpc
from pausewatch.v1 import registry_pb2 as rpb
from pausewatch.v1 import registry_pb2_grpc as rpb_grpc

from attest.errors import (
    BodyError,
    ChainError,
    ConfigError,
    EnvelopeError,
    PausewatchError,
    PayloadTypeError,
    ProofError,
    SignatureError,
    TpmError,
    UnknownKeyError,
)
from verifier import tpm
from verifier.audit import Auditor
from verifier.core import VerifierCore
from verifier.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from verifier.ingest import Ingestor
from verifier.registry import Registry

log = logging.getLogger(__name__)

# The one table from errors to gRPC status codes (first match wins).
STATUS_FOR_ERROR: tuple[tuple[type[PausewatchError], grpc.StatusCode], ...] = (
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (EnvelopeError, grpc.StatusCode.INVALID_ARGUMENT),
    (PayloadTypeError, grpc.StatusCode.INVALID_ARGUMENT),
    (BodyError, grpc.StatusCode.INVALID_ARGUMENT),
    (ChainError, grpc.StatusCode.INVALID_ARGUMENT),
    (ProofError, grpc.StatusCode.INVALID_ARGUMENT),
    (SignatureError, grpc.StatusCode.UNAUTHENTICATED),
    (TpmError, grpc.StatusCode.UNAUTHENTICATED),
    (UnknownKeyError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (ConflictError, grpc.StatusCode.ALREADY_EXISTS),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
)


class _Malformed:
    """Stands in for a request message that did not parse (see :func:`add_service`)."""

    __slots__ = ()


MALFORMED = _Malformed()


def _safe_parser(message_class: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError:
            return MALFORMED

    return parse


def add_service(server: grpc.Server, service: ServiceDescriptor, servicer: object) -> None:
    """Register ``servicer``'s methods for ``service`` with request parsing that never raises.

    grpcio's own registration raises inside the transport when a request does not parse, and a
    stream whose message did not parse can then leave its handler waiting for ever (and
    ``server.stop()`` with it). Here a bad message reaches the handler as :data:`MALFORMED`, which
    the handler wrappers turn into INVALID_ARGUMENT like any other malformed request.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_class = GetMessageClass(method.input_type)
        response_class = GetMessageClass(method.output_type)
        behaviour = getattr(servicer, method.name)
        kinds = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }
        make = kinds[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            behaviour,
            request_deserializer=_safe_parser(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


def _check_parsed(request: Any) -> None:
    if request is MALFORMED:
        raise InvalidRequestError("the request message is malformed")


def status_for(exc: PausewatchError) -> grpc.StatusCode:
    for kind, code in STATUS_FOR_ERROR:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


F = TypeVar("F", bound=Callable[..., Any])


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, PausewatchError):
        code = status_for(exc)
        if code is grpc.StatusCode.INTERNAL:
            log.error("%s failed: %s", method, exc.diagnostics())
        context.abort(code, exc.diagnostics())
    log.error("%s failed with an unexpected error", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, "internal error")


def unary(method: F) -> F:
    """Map errors of a unary handler to gRPC status codes."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            _check_parsed(request)
            return method(self, request, context)
        except Exception as exc:
            _abort(context, exc, method.__name__)
            raise  # unreachable: abort raises

    return wrapper  # type: ignore[return-value]


def streaming(method: F) -> F:
    """Map errors of a response-streaming handler to gRPC status codes."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            _check_parsed(request)
            yield from method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - the gRPC error-mapping layer
            _abort(context, exc, method.__name__)

    return wrapper  # type: ignore[return-value]


def _batch(request: spb.SubmitAttestationsRequest, limit: int) -> list[bytes]:
    _check_parsed(request)
    envelopes = list(request.envelopes)
    if len(envelopes) > limit:
        raise InvalidRequestError(f"a batch holds at most {limit} envelopes; got {len(envelopes)}")
    return envelopes


def _node_id(raw: bytes) -> bytes:
    if len(raw) != 32:
        raise InvalidRequestError("node_id must be 32 bytes")
    return raw


class AttestationServicer(spb_grpc.AttestationServiceServicer):
    def __init__(self, core: VerifierCore, ingestor: Ingestor) -> None:
        self.core = core
        self.ingestor = ingestor

    @unary
    def GetChallenge(
        self, request: spb.GetChallengeRequest, context: grpc.ServicerContext
    ) -> spb.GetChallengeResponse:
        node_id = _node_id(request.node_id)
        nonce, issued = self.core.nonces.issue(node_id)
        return spb.GetChallengeResponse(
            nonce=nonce,
            issued_at_ns=issued,
            expires_at_ns=issued + self.core.nonces.lifetime_ns,
            verifier_time_ns=self.core.clock_ns(),
        )

    @unary
    def GetTpmCredential(
        self, request: spb.GetTpmCredentialRequest, context: grpc.ServicerContext
    ) -> spb.GetTpmCredentialResponse:
        return tpm.issue_credential(
            self.core.nonces,
            self.core.tpm_settings,
            request,
            self.core.clock_ns(),
        )

    def SubmitAttestations(
        self,
        request_iterator: Iterator[spb.SubmitAttestationsRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[spb.SubmitAttestationsResponse]:
        limit = self.core.config.server.max_batch_envelopes
        try:
            for request in request_iterator:
                envelopes = _batch(request, limit)
                result = self.ingestor.submit(envelopes)
                yield spb.SubmitAttestationsResponse(
                    receipts=result.receipts, tree_size=result.tree_size
                )
        except grpc.RpcError:
            return  # the client went away mid-stream
        except Exception as exc:  # noqa: BLE001 - the gRPC error-mapping layer
            _abort(context, exc, "SubmitAttestations")


class RegistryServicer(rpb_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @unary
    def EnrollNode(
        self, request: rpb.EnrollNodeRequest, context: grpc.ServicerContext
    ) -> rpb.EnrollNodeResponse:
        result = self.registry.enroll(request.enrollment_envelope, request.authorization_envelope)
        return rpb.EnrollNodeResponse(
            node_id=result.node_id,
            already_enrolled=result.already_enrolled,
            log_index=result.log_index,
        )

    @unary
    def DeclareInventory(
        self, request: rpb.DeclareInventoryRequest, context: grpc.ServicerContext
    ) -> rpb.DeclareInventoryResponse:
        version, index = self.registry.declare_inventory(request.declaration_envelope)
        return rpb.DeclareInventoryResponse(version=version, log_index=index)

    @unary
    def RevokeNode(
        self, request: rpb.RevokeNodeRequest, context: grpc.ServicerContext
    ) -> rpb.RevokeNodeResponse:
        index, already = self.registry.revoke(request.revocation_envelope)
        return rpb.RevokeNodeResponse(log_index=index, already_revoked=already)

    @unary
    def GetNode(
        self, request: rpb.GetNodeRequest, context: grpc.ServicerContext
    ) -> rpb.GetNodeResponse:
        return rpb.GetNodeResponse(node=self.registry.node_info(_node_id(request.node_id)))

    @unary
    def ListNodes(
        self, request: rpb.ListNodesRequest, context: grpc.ServicerContext
    ) -> rpb.ListNodesResponse:
        return rpb.ListNodesResponse(nodes=self.registry.list_nodes(request.lab_id))


class AuditServicer(apb_grpc.AuditServiceServicer):
    def __init__(self, core: VerifierCore, auditor: Auditor, stopping: threading.Event) -> None:
        self.core = core
        self.auditor = auditor
        self.stopping = stopping

    @unary
    def GetComplianceReport(
        self, request: apb.GetComplianceReportRequest, context: grpc.ServicerContext
    ) -> apb.GetComplianceReportResponse:
        report = self.auditor.report(request.lab_id, request.period_start_ns, request.period_end_ns)
        return apb.GetComplianceReportResponse(report=report)

    @unary
    def ListFindings(
        self, request: apb.ListFindingsRequest, context: grpc.ServicerContext
    ) -> apb.ListFindingsResponse:
        page_size = request.page_size or 100
        if page_size > 1000:
            raise InvalidRequestError("page_size is at most 1000")
        findings = self.auditor.findings(
            request.lab_id,
            after_index=request.page_token - 1 if request.page_token else -1,
            kinds=list(request.kinds),
            since_ns=request.since_ns,
            until_ns=request.until_ns,
            limit=page_size + 1,
        )
        next_token = 0
        if len(findings) > page_size:
            findings = findings[:page_size]
            next_token = findings[-1].log_index + 1
        return apb.ListFindingsResponse(findings=findings, next_page_token=next_token)

    @streaming
    def WatchFindings(
        self, request: apb.WatchFindingsRequest, context: grpc.ServicerContext
    ) -> Iterator[apb.LoggedFinding]:
        lab_id = request.lab_id
        self.auditor.require_lab(lab_id)
        wake: queue.Queue[list[int]] = queue.Queue()
        remove = self.core.on_findings(wake.put)
        try:
            cursor = (
                request.from_log_index - 1 if request.from_log_index else self.core.log.size - 1
            )
            while context.is_active() and not self.stopping.is_set():
                for finding in self.auditor.findings(lab_id, after_index=cursor, limit=500):
                    cursor = finding.log_index
                    yield finding
                try:
                    wake.get(timeout=1.0)
                except queue.Empty:
                    continue
        finally:
            remove()

    @streaming
    def ExportBundle(
        self, request: apb.ExportBundleRequest, context: grpc.ServicerContext
    ) -> Iterator[apb.ExportBundleChunk]:
        data = self.auditor.export_bundle(
            request.lab_id, request.period_start_ns, request.period_end_ns
        )
        chunk = 1024 * 1024
        for offset in range(0, max(len(data), 1), chunk):
            yield apb.ExportBundleChunk(
                data=data[offset : offset + chunk], offset=offset, total_size=len(data)
            )

    @unary
    def GetCheckpoint(
        self, request: apb.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> apb.GetCheckpointResponse:
        row = self.core.log.latest_checkpoint()
        return apb.GetCheckpointResponse(
            signed_note=row.note,
            tree_size=row.tree_size,
            root_hash=row.root_hash,
            origin=self.core.log.origin,
            verifier_key=self.core.log.verifier_key,
        )

    def _size(self, requested: int) -> int:
        checkpoint = self.core.log.latest_checkpoint()
        size = requested or checkpoint.tree_size
        committed = self.core.store.tree_size()
        if size > committed:
            raise InvalidRequestError(f"tree_size {size} is beyond the log's size {committed}")
        return size

    @unary
    def GetInclusionProof(
        self, request: apb.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> apb.GetInclusionProofResponse:
        size = self._size(request.tree_size)
        if request.leaf_index >= size:
            raise InvalidRequestError(
                f"leaf_index {request.leaf_index} is not below tree_size {size}"
            )
        entry = self.core.store.get_entry(request.leaf_index)
        if entry is None:
            raise NotFoundError("no such entry")
        return apb.GetInclusionProofResponse(
            leaf_index=request.leaf_index,
            tree_size=size,
            proof=self.core.log.inclusion_proof(request.leaf_index, size),
            leaf_hash=entry.leaf_hash,
            entry=entry.entry,
            root_hash=self.core.log.root_at(size),
        )

    @unary
    def GetConsistencyProof(
        self, request: apb.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> apb.GetConsistencyProofResponse:
        size2 = self._size(request.size2)
        if not 1 <= request.size1 <= size2:
            raise InvalidRequestError(f"size1 must be in [1, {size2}]")
        return apb.GetConsistencyProofResponse(
            size1=request.size1,
            size2=size2,
            proof=self.core.log.consistency_proof(request.size1, size2),
            root1=self.core.log.root_at(request.size1),
            root2=self.core.log.root_at(size2),
        )

    @unary
    def GetLogEntry(
        self, request: apb.GetLogEntryRequest, context: grpc.ServicerContext
    ) -> apb.GetLogEntryResponse:
        entry = self.core.store.get_entry(request.index)
        if entry is None:
            raise NotFoundError(f"no entry at index {request.index}")
        return apb.GetLogEntryResponse(
            index=entry.index, entry=entry.entry, leaf_hash=entry.leaf_hash
        )
