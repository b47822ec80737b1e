"""Thin asynchronous gRPC servicers over the verifier's domain layer: who may call, how much a
caller may hold, and the one table from errors to status.

    runtime = Runtime(pool, writer, Access(config.access), Limiter(config.limits), metrics, stop)
    add_service(server, descriptor, AttestationServicer(core, ingestor, runtime))

Servicers run on the server's event loop (grpc.aio): an open stream is a coroutine waiting for
its next message and holds no thread. Blocking work (verification, storage, audits) runs in the
runtime's thread pool, one message at a time per stream, and group commits on its writer thread.
Every call first resolves the caller's principal from its client certificate
(verifier/access.py) and is refused PERMISSION_DENIED outside its role; streams and in-flight
messages are counted per identity and per peer (verifier/server/limits.py).

Servicers translate messages and nothing else. Every error a handler raises on purpose is a
:class:`~attest.errors.PausewatchError` whose ``diagnostics()`` is safe to send; anything else is
logged here with its traceback and the peer sees only ``INTERNAL: internal error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import registry_pb2 as rpb
from pausewatch.v1 import site_pb2

from attest.envelope import PayloadType, parse_envelope
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
from attest.ids import is_valid_lab_id
from attest.keys import key_id_from_raw
from verifier import tpm
from verifier.access import Access, Principal, Role
from verifier.audit.auditor import Auditor
from verifier.errors import (
    ConflictError,
    IdleStreamError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
)
from verifier.server.ingest import CheckedBatch, Ingestor, SubmitResult
from verifier.server.limits import Limiter
from verifier.server.meters import MAX_READINGS_PER_REQUEST, SiteRegistry
from verifier.server.metrics import VerifierMetrics
from verifier.server.registry import Registry, inventory_envelope_limit
from verifier.store.core import VerifierCore

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
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
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


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object) -> None:
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


FINDING_OVERHEAD_BYTES = 8
"""A finding's framing in a ListFindingsResponse (its tag and length), at most."""

MAX_LOG_INDEX = 2**63 - 1
"""The largest index the store can be asked about (a signed 64-bit integer in SQLite and
PostgreSQL); a uint64 index or page token above it lies past the end of any log, and is answered
as such without asking the store (asked, the store's driver overflows)."""


def status_for(exc: PausewatchError) -> grpc.StatusCode:
    for kind, code in STATUS_FOR_ERROR:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Runtime:
    """What every servicer shares: the pool for blocking work, the writer thread for group
    commits, access rules, limits, metrics."""

    pool: ThreadPoolExecutor
    writer: ThreadPoolExecutor
    """One thread: every group commit runs on it, so the store connection it writes with (one per
    thread) keeps its page cache from one commit to the next. Commits are one at a time anyway;
    on the pool, each went to whichever thread was free, whose connection had to read its pages
    again after the other connections' commits (5 % of the CPU at a fleet's rate, ADR 0012)."""
    access: Access
    limiter: Limiter
    metrics: VerifierMetrics
    stopping: threading.Event

    async def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` on the pool, without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(function, *args, **kwargs))

    async def write(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on the writer thread, without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.writer, functools.partial(function, *args))

    def caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        pem = context.auth_context().get("x509_pem_cert")
        return self.access.principal(next(iter(pem), None) if pem else None)


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any],
    exc: BaseException,
    method: str,
    metrics: VerifierMetrics,
) -> None:
    if isinstance(exc, PausewatchError):
        code = status_for(exc)
        metrics.call_failed(method, code)
        if code is grpc.StatusCode.INTERNAL:
            # Not an error the table maps (a NoteError, say): its text is for the log only.
            log.error("%s failed: %s", method, exc.diagnostics())
            await context.abort(code, "internal error")
        await context.abort(code, exc.diagnostics())
    metrics.call_failed(method, grpc.StatusCode.INTERNAL)
    log.error("%s failed with an unexpected error", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def _size(request: Any) -> int:
    return 0 if request is MALFORMED else int(request.ByteSize())


def unary(method: F) -> F:
    """A unary handler: the caller resolved, its in-flight share held, errors mapped."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        runtime: Runtime = self.runtime
        started = time.perf_counter()
        try:
            caller = runtime.caller(context)
            _check_parsed(request)
            async with runtime.limiter.admit(caller.identity, context.peer(), _size(request)):
                return await method(self, request, caller)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - the gRPC error-mapping layer
            await _abort(context, exc, method.__name__, runtime.metrics)
        finally:
            runtime.metrics.observe_call(method.__name__, time.perf_counter() - started)

    return wrapper  # type: ignore[return-value]


def streaming(method: F) -> F:
    """A response-streaming handler: counted as an open stream of its caller, errors mapped."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        runtime: Runtime = self.runtime
        release: Callable[[], None] | None = None
        try:
            caller = runtime.caller(context)
            _check_parsed(request)
            release = runtime.limiter.open_stream(caller.identity, context.peer())
            runtime.metrics.stream_opened(method.__name__)
            async for item in method(self, request, caller):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - the gRPC error-mapping layer
            await _abort(context, exc, method.__name__, runtime.metrics)
        finally:
            if release is not None:
                release()
                runtime.metrics.stream_closed(method.__name__)

    return wrapper  # type: ignore[return-value]


def _took_back(cancelled: set[asyncio.Task[Any]], task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is one this module cancelled (listed in ``cancelled``); if so, the
    cancellation is taken back, so that the stream can end with a status of its own."""
    if task not in cancelled:
        return False
    cancelled.discard(task)
    task.uncancel()
    return True


class IdleStreams:
    """Ends streams that send nothing for ``idle_s``, with one timer for all of them: the stream
    least recently heard from is first in line, and the timer is set for when it expires. A
    timer per read (``asyncio.timeout``) put a handle into the event loop's heap for every message
    of every stream, and the heap held one per open stream. Used from the event loop only."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self._heard: OrderedDict[asyncio.Task[Any], float] = OrderedDict()
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._closed: set[asyncio.Task[Any]] = set()

    def waiting(self, task: asyncio.Task[Any]) -> None:
        """``task`` is about to wait for its stream's next message; call :meth:`forget` when
        the wait ends. Only the wait for a message is timed, not the work on one."""
        if self._closing:  # a batch answered during the shutdown: its stream ends now
            self._closed.add(task)
            task.cancel()
            return
        loop = task.get_loop()
        self._heard[task] = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(loop.time() + self.idle_s, self._sweep, loop)

    def forget(self, task: asyncio.Task[Any]) -> None:
        self._heard.pop(task, None)
        self._expired.discard(task)

    def close_all(self) -> None:
        """The verifier is stopping: end every stream that waits for its next message now, and
        every other one once its batch is answered, instead of holding them to the end of the
        shutdown grace (a batch in flight still commits and gets its receipts)."""
        self._closing = True
        waiting, self._heard = list(self._heard), OrderedDict()
        for task in waiting:
            self._closed.add(task)
            task.cancel()

    def closed(self, task: asyncio.Task[Any]) -> bool:
        """Whether ``task`` was cancelled by :meth:`close_all` (and so, now, it is not)."""
        return _took_back(self._closed, task)

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """Whether ``task`` was cancelled by this for its silence (and so, now, it is not)."""
        return _took_back(self._expired, task)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        while self._heard:
            task, heard_at = next(iter(self._heard.items()))
            if now - heard_at < self.idle_s:
                self._timer = loop.call_at(heard_at + self.idle_s, self._sweep, loop)
                return
            del self._heard[task]
            self._expired.add(task)
            task.cancel()


SMALL_BATCH_ENVELOPES = 4
"""A batch of at most this many envelopes is checked in its group's commit job, not in a job of
its own first: a fleet's agents send one window a minute, and two thread hand-offs per batch
cost more than its checks."""


class GroupCommitter:
    """Group commit on the event loop: each batch's stateless checks run on the pool (a small
    batch's in its group's commit job); the batches wait here, holding no thread, and one drain
    task commits everything that is waiting in one transaction (on the writer thread), then the
    next group. With ``linger_ns`` a
    group waits that long for company (or until ``full_envelopes`` are waiting), so that a
    fleet's one-window batches share transactions. A stream that goes away while its batch
    waits does not stop the commit: the batch is committed and its receipts are dropped, and
    the agent's resend is a duplicate."""

    def __init__(
        self, ingestor: Ingestor, runtime: Runtime, linger_ns: int, full_envelopes: int
    ) -> None:
        self.ingestor = ingestor
        self.runtime = runtime
        self.linger_s = linger_ns / 1e9
        self.full_envelopes = full_envelopes
        self._waiting: list[tuple[CheckedBatch, asyncio.Future[SubmitResult]]] = []
        self._waiting_envelopes = 0
        self._full: asyncio.Event | None = None
        self._drain: asyncio.Task[None] | None = None

    async def submit(self, raws: list[bytes]) -> SubmitResult:
        if len(raws) <= SMALL_BATCH_ENVELOPES:
            batch = self.ingestor.unchecked(raws)
        else:
            batch = await self.runtime.run(self.ingestor.check, raws)
        done: asyncio.Future[SubmitResult] = asyncio.get_running_loop().create_future()
        self._waiting.append((batch, done))
        self._waiting_envelopes += len(raws)
        if self._full is None:
            self._full = asyncio.Event()
        if self._waiting_envelopes >= self.full_envelopes:
            self._full.set()
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._run())
        # Cancelled with its stream, ``done`` is left alone by the drain: the batch still commits.
        return await done

    async def _run(self) -> None:
        assert self._full is not None
        while self._waiting:
            if self.linger_s > 0 and not self._full.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.linger_s)
            group, self._waiting, self._waiting_envelopes = self._waiting, [], 0
            self._full.clear()
            try:
                await self.runtime.write(self.ingestor.commit, [batch for batch, _ in group])
            except Exception as exc:  # noqa: BLE001 - handed to each waiting stream
                for _, done in group:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for batch, done in group:
                if not done.done() and batch.result is not None:
                    done.set_result(batch.result)


def _batch(request: spb.SubmitAttestationsRequest, limit: int) -> list[bytes]:
    _check_parsed(request)
    envelopes = list(request.envelopes)
    if len(envelopes) > limit:
        raise InvalidRequestError(f"a batch holds at most {limit} envelopes; got {len(envelopes)}")
    return envelopes


M = TypeVar("M", bound=Message)


def _fitting(response: M, limit: int, what: str, remedy: str) -> M:
    """``response``, if it fits in one message of ``server.max_message_bytes``; else
    RESOURCE_EXHAUSTED saying so (gRPC's own refusal, "Sent message larger than max", names
    neither the limit's setting nor what to do)."""
    size = response.ByteSize()
    if size > limit:
        raise ResourceExhaustedError(
            f"{what} is {size} bytes, more than this verifier's server.max_message_bytes "
            f"({limit}); {remedy}"
        )
    return response


def _lab_id(lab_id: str) -> str:
    """A lab id from the caller, checked before any access check or look-up (both would otherwise
    name it in their answer)."""
    if not is_valid_lab_id(lab_id):
        raise InvalidRequestError("lab_id is not a valid lab id")
    return lab_id


def _node_id(raw: bytes) -> bytes:
    if len(raw) != 32:
        raise InvalidRequestError("node_id must be 32 bytes")
    return raw


def _require_own_envelopes(caller: Principal, envelopes: list[bytes], max_size: int) -> None:
    """A node agent submits its own node's envelopes only. One that does not parse is left to
    ingest, which rejects it with a receipt (the same parser decides there)."""
    if caller.role is Role.REGULATOR:
        return
    for raw in envelopes:
        try:
            key_id = parse_envelope(raw, max_size=max_size).key_id
        except EnvelopeError:
            continue
        caller.require_node(bytes(key_id), "submit attestations")


def _signed_payload(raw: bytes, payload_type: PayloadType, what: str, max_size: int) -> Any:
    try:
        envelope = parse_envelope(raw, max_size=max_size)
    except EnvelopeError as exc:
        raise InvalidRequestError(f"{what}: {exc.diagnostics()}") from None
    if envelope.payload_type != payload_type:
        raise InvalidRequestError(f"{what} payload type is not {payload_type}")
    return envelope


def _parse_payload(message: Any, payload: bytes, what: str) -> Any:
    try:
        return message.FromString(payload)
    except DecodeError:
        raise InvalidRequestError(f"the payload is not a valid {what}") from None


class AttestationServicer:
    def __init__(self, core: VerifierCore, ingestor: Ingestor, runtime: Runtime) -> None:
        self.core = core
        self.ingestor = ingestor
        self.runtime = runtime
        self.committer = GroupCommitter(
            ingestor,
            runtime,
            core.config.ingest.commit_linger_ns,
            core.config.server.max_batch_envelopes,
        )
        self.idle = IdleStreams(core.config.limits.stream_idle_timeout_s)

    @unary
    async def GetChallenge(
        self, request: spb.GetChallengeRequest, caller: Principal
    ) -> spb.GetChallengeResponse:
        node_id = _node_id(request.node_id)
        if caller.role is not Role.LAB_OPERATOR:  # an operator enrols its lab's new nodes
            caller.require_node(node_id, "get a challenge")
        nonce, issued = self.core.nonces.issue(node_id)
        return spb.GetChallengeResponse(
            nonce=nonce,
            issued_at_ns=issued,
            expires_at_ns=issued + self.core.nonces.lifetime_ns,
            verifier_time_ns=self.core.clock_ns(),
        )

    @unary
    async def GetTpmCredential(
        self, request: spb.GetTpmCredentialRequest, caller: Principal
    ) -> spb.GetTpmCredentialResponse:
        if caller.role is not Role.LAB_OPERATOR:  # as GetChallenge: enrolment of a new node
            if len(request.node_public_key) != 32:
                raise InvalidRequestError("node_public_key must be 32 bytes")
            caller.require_node(key_id_from_raw(request.node_public_key), "get a TPM credential")
        return await self.runtime.run(
            tpm.issue_credential,
            self.core.nonces,
            self.core.tpm_settings,
            request,
            self.core.clock_ns(),
        )

    async def SubmitAttestations(
        self,
        request_iterator: AsyncIterator[spb.SubmitAttestationsRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[spb.SubmitAttestationsResponse]:
        """One batch at a time: read, check the caller may submit it, ingest on the pool (group
        commit with the other streams' batches), answer with the receipts after the commit."""
        runtime = self.runtime
        idle = self.idle
        task = asyncio.current_task()
        assert task is not None
        release: Callable[[], None] | None = None
        try:
            caller = runtime.caller(context)
            caller.require(Role.NODE_AGENT, what="submit attestations")
            peer = context.peer()
            release = runtime.limiter.open_stream(caller.identity, peer)
            runtime.metrics.stream_opened("SubmitAttestations")
            while True:
                idle.waiting(task)
                try:
                    request = await context.read()
                except asyncio.CancelledError:
                    if idle.closed(task):
                        raise UnavailableError(
                            "the verifier is shutting down: resend what has no receipt to it, "
                            "or to another of its processes"
                        ) from None
                    if not idle.expired(task):
                        raise
                    raise IdleStreamError(
                        f"the stream sent nothing for {idle.idle_s:g} s; reconnect when there "
                        "is more"
                    ) from None
                finally:
                    idle.forget(task)
                if request is grpc.aio.EOF:  # type: ignore[attr-defined]
                    return
                answer = self._answer(caller, peer, request)
                # The stream now waits a minute for its next message: nothing of this one may
                # stay in its frame meanwhile (10,000 streams' last batches).
                del request
                yield await answer
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - the gRPC error-mapping layer
            await _abort(context, exc, "SubmitAttestations", runtime.metrics)
        finally:
            if release is not None:
                release()
                runtime.metrics.stream_closed("SubmitAttestations")

    async def _answer(
        self, caller: Principal, peer: str, request: spb.SubmitAttestationsRequest
    ) -> spb.SubmitAttestationsResponse:
        """One batch: check the caller may submit it, ingest it (group commit with the other
        streams' batches), and the receipts once committed."""
        runtime = self.runtime
        server = self.core.config.server
        envelopes = _batch(request, server.max_batch_envelopes)
        _require_own_envelopes(caller, envelopes, server.max_envelope_bytes)
        size = sum(len(raw) for raw in envelopes)
        started = time.perf_counter()
        async with runtime.limiter.admit(caller.identity, peer, size):
            result = await self.committer.submit(envelopes)
        runtime.metrics.observe_batch(result.receipts, time.perf_counter() - started)
        return spb.SubmitAttestationsResponse(receipts=result.receipts, tree_size=result.tree_size)


class SiteServicer:
    """Meter readings in, where a meter's chain stands out (docs/site-power.md)."""

    def __init__(self, sites: SiteRegistry, runtime: Runtime) -> None:
        self.sites = sites
        self.runtime = runtime

    @unary
    async def SubmitMeterReadings(
        self, request: site_pb2.SubmitMeterReadingsRequest, caller: Principal
    ) -> site_pb2.SubmitMeterReadingsResponse:
        # A reading is authorised by the key declared for its meter; the role only says who may
        # ask: the regulator (imports) and meter gateways.
        caller.require(Role.METER_GATEWAY, what="submit meter readings")
        envelopes = list(request.envelopes)
        if len(envelopes) > MAX_READINGS_PER_REQUEST:
            raise InvalidRequestError(
                f"a request holds at most {MAX_READINGS_PER_REQUEST} readings; got {len(envelopes)}"
            )
        receipts = await self.runtime.run(self.sites.submit, envelopes)
        return site_pb2.SubmitMeterReadingsResponse(receipts=receipts)

    @unary
    async def GetMeterHead(
        self, request: site_pb2.GetMeterHeadRequest, caller: Principal
    ) -> site_pb2.GetMeterHeadResponse:
        _lab_id(request.lab_id)
        if caller.role is not Role.METER_GATEWAY:
            caller.require_lab_read(request.lab_id)
        head = await self.runtime.run(self.sites.head, request.lab_id, request.meter_id)
        if head is None:
            return site_pb2.GetMeterHeadResponse(has_head=False)
        return site_pb2.GetMeterHeadResponse(
            has_head=True, seq=head.seq, digest=head.digest, interval_end_ns=head.interval_end_ns
        )


class RegistryServicer:
    def __init__(self, registry: Registry, runtime: Runtime) -> None:
        self.registry = registry
        self.runtime = runtime
        self.max_size = registry.core.config.server.max_envelope_bytes

    @unary
    async def EnrollNode(
        self, request: rpb.EnrollNodeRequest, caller: Principal
    ) -> rpb.EnrollNodeResponse:
        if caller.role is not Role.REGULATOR:
            envelope = _signed_payload(
                request.enrollment_envelope,
                PayloadType.ENROLLMENT,
                "enrollment_envelope",
                self.max_size,
            )
            enrollment = _parse_payload(rpb.NodeEnrollment, envelope.payload, "NodeEnrollment")
            _lab_id(enrollment.lab_id)
            if caller.role is Role.NODE_AGENT:
                caller.require_node(key_id_from_raw(enrollment.node_public_key), "enrol")
                if enrollment.lab_id != caller.lab_id:
                    raise PermissionDeniedError(
                        f"this node agent belongs to lab {caller.lab_id}, not {enrollment.lab_id}"
                    )
            else:
                caller.require_lab_write(enrollment.lab_id)
        result = await self.runtime.run(
            self.registry.enroll, request.enrollment_envelope, request.authorization_envelope
        )
        return rpb.EnrollNodeResponse(
            node_id=result.node_id,
            already_enrolled=result.already_enrolled,
            log_index=result.log_index,
        )

    @unary
    async def DeclareInventory(
        self, request: rpb.DeclareInventoryRequest, caller: Principal
    ) -> rpb.DeclareInventoryResponse:
        if caller.role is not Role.REGULATOR:
            envelope = _signed_payload(
                request.declaration_envelope,
                PayloadType.INVENTORY,
                "declaration_envelope",
                inventory_envelope_limit(self.registry.core.config.server),
            )
            declaration = _parse_payload(
                rpb.InventoryDeclaration, envelope.payload, "InventoryDeclaration"
            )
            caller.require_lab_write(_lab_id(declaration.lab_id))
        version, index = await self.runtime.run(
            self.registry.declare_inventory, request.declaration_envelope
        )
        return rpb.DeclareInventoryResponse(version=version, log_index=index)

    @unary
    async def RevokeNode(
        self, request: rpb.RevokeNodeRequest, caller: Principal
    ) -> rpb.RevokeNodeResponse:
        if caller.role is not Role.REGULATOR:
            envelope = _signed_payload(
                request.revocation_envelope,
                PayloadType.REVOCATION,
                "revocation_envelope",
                self.max_size,
            )
            revocation = _parse_payload(rpb.NodeRevocation, envelope.payload, "NodeRevocation")
            caller.require_lab_write(_lab_id(revocation.lab_id))
        index, already = await self.runtime.run(self.registry.revoke, request.revocation_envelope)
        return rpb.RevokeNodeResponse(log_index=index, already_revoked=already)

    @unary
    async def GetNode(self, request: rpb.GetNodeRequest, caller: Principal) -> rpb.GetNodeResponse:
        node_id = _node_id(request.node_id)
        if caller.role is Role.NODE_AGENT:
            caller.require_node(node_id, "read the registry")
        else:
            caller.require(Role.AUDITOR, Role.LAB_OPERATOR, what="read the registry")
        node = await self.runtime.run(self.registry.node_info, node_id)
        if caller.role is Role.LAB_OPERATOR:
            caller.require_lab_read(node.lab_id)
        return rpb.GetNodeResponse(node=node)

    @unary
    async def ListNodes(
        self, request: rpb.ListNodesRequest, caller: Principal
    ) -> rpb.ListNodesResponse:
        lab_id = _lab_id(request.lab_id)
        caller.require_lab_read(lab_id)
        nodes = await self.runtime.run(self.registry.list_nodes, lab_id)
        return _fitting(
            rpb.ListNodesResponse(nodes=nodes),
            self.registry.core.config.server.max_message_bytes,
            "the lab's node list",
            "raise server.max_message_bytes, or read the nodes one by one with GetNode",
        )


class AuditServicer:
    def __init__(self, core: VerifierCore, auditor: Auditor, runtime: Runtime) -> None:
        self.core = core
        self.auditor = auditor
        self.runtime = runtime

    @unary
    async def GetComplianceReport(
        self, request: apb.GetComplianceReportRequest, caller: Principal
    ) -> apb.GetComplianceReportResponse:
        lab_id = _lab_id(request.lab_id)
        caller.require_lab_read(lab_id)
        report = await self.runtime.run(
            self.auditor.report, lab_id, request.period_start_ns, request.period_end_ns
        )
        return _fitting(
            apb.GetComplianceReportResponse(report=report),
            self.core.config.server.max_message_bytes,
            "the report",
            "ask for a shorter period, in parts, or raise server.max_message_bytes",
        )

    @unary
    async def ListFindings(
        self, request: apb.ListFindingsRequest, caller: Principal
    ) -> apb.ListFindingsResponse:
        caller.require_lab_read(_lab_id(request.lab_id))
        page_size = request.page_size or 100
        if page_size > 1000:
            raise InvalidRequestError("page_size is at most 1000")
        findings = await self.runtime.run(
            self.auditor.findings,
            request.lab_id,
            after_index=min(request.page_token, MAX_LOG_INDEX) - 1 if request.page_token else -1,
            kinds=list(request.kinds),
            since_ns=request.since_ns,
            until_ns=request.until_ns,
            limit=page_size + 1,
        )
        # A page also ends before its byte budget: a finding may carry a rejected envelope of up
        # to max_envelope_bytes, and a thousand of them would not fit in one message.
        budget = self.core.config.server.max_message_bytes // 2
        kept = 0
        size = 0
        for finding in findings[:page_size]:
            size += finding.ByteSize() + FINDING_OVERHEAD_BYTES
            if kept and size > budget:
                break
            kept += 1
        next_token = findings[kept - 1].log_index + 1 if kept < len(findings) else 0
        return apb.ListFindingsResponse(findings=findings[:kept], next_page_token=next_token)

    @streaming
    async def WatchFindings(
        self, request: apb.WatchFindingsRequest, caller: Principal
    ) -> AsyncIterator[apb.LoggedFinding]:
        lab_id = _lab_id(request.lab_id)
        caller.require_lab_read(lab_id)
        await self.runtime.run(self.auditor.require_lab, lab_id)
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def on_findings(_indices: list[int]) -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: the server is gone
                loop.call_soon_threadsafe(wake.set)

        remove = self.core.on_findings(on_findings)
        try:
            cursor = (
                min(request.from_log_index, MAX_LOG_INDEX) - 1
                if request.from_log_index
                else self.core.log.size - 1
            )
            while not self.runtime.stopping.is_set():
                wake.clear()
                found = await self.runtime.run(
                    self.auditor.findings, lab_id, after_index=cursor, limit=500
                )
                for finding in found:
                    cursor = finding.log_index
                    yield finding
                if len(found) == 500:
                    continue
                try:
                    await asyncio.wait_for(wake.wait(), 1.0)
                except TimeoutError:
                    continue
        finally:
            remove()
        # Not OK: a watcher must not take the verifier's shutdown for the end of its findings.
        raise UnavailableError(
            "the verifier is shutting down: reconnect with from_log_index = "
            f"{cursor + 1} (the last log index received + 1)"
        )

    @streaming
    async def ExportBundle(
        self, request: apb.ExportBundleRequest, caller: Principal
    ) -> AsyncIterator[apb.ExportBundleChunk]:
        caller.require_lab_read(_lab_id(request.lab_id))
        data = await self.runtime.run(
            self.auditor.export_bundle,
            request.lab_id,
            request.period_start_ns,
            request.period_end_ns,
        )
        chunk = 1024 * 1024
        for offset in range(0, max(len(data), 1), chunk):
            yield apb.ExportBundleChunk(
                data=data[offset : offset + chunk], offset=offset, total_size=len(data)
            )

    @unary
    async def GetCheckpoint(
        self, request: apb.GetCheckpointRequest, caller: Principal
    ) -> apb.GetCheckpointResponse:
        row = await self.runtime.run(self.core.log.latest_checkpoint)
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
    async def GetInclusionProof(
        self, request: apb.GetInclusionProofRequest, caller: Principal
    ) -> apb.GetInclusionProofResponse:
        return await self.runtime.run(self._inclusion, request)

    def _inclusion(self, request: apb.GetInclusionProofRequest) -> apb.GetInclusionProofResponse:
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
    async def GetConsistencyProof(
        self, request: apb.GetConsistencyProofRequest, caller: Principal
    ) -> apb.GetConsistencyProofResponse:
        return await self.runtime.run(self._consistency, request)

    def _consistency(
        self, request: apb.GetConsistencyProofRequest
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
    async def ListLabs(
        self, request: apb.ListLabsRequest, caller: Principal
    ) -> apb.ListLabsResponse:
        if caller.role is Role.LAB_OPERATOR:
            only: list[str] | None = [caller.lab_id]
        else:
            caller.require(Role.AUDITOR, what="list the labs")
            only = None
        labs = await self.runtime.run(self.auditor.list_labs, only)
        return apb.ListLabsResponse(labs=labs)

    @unary
    async def GetLogEntry(
        self, request: apb.GetLogEntryRequest, caller: Principal
    ) -> apb.GetLogEntryResponse:
        caller.require(Role.AUDITOR, what="read log entries")
        if request.index > MAX_LOG_INDEX:
            raise NotFoundError(f"no entry at index {request.index}")
        entry = await self.runtime.run(self.core.store.get_entry, request.index)
        if entry is None:
            raise NotFoundError(f"no entry at index {request.index}")
        return apb.GetLogEntryResponse(
            index=entry.index, entry=entry.entry, leaf_hash=entry.leaf_hash
        )
