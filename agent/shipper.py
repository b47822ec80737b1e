"""Shipping: one long-lived gRPC stream to the verifier, fed from the spool, oldest first.

    shipper = Shipper(spool_path, node_id, config.verifier, clock=SystemClock())
    thread = threading.Thread(target=shipper.run, daemon=True); thread.start()
    shipper.notify()          # the daemon spooled a new envelope
    shipper.stop(); thread.join()

A session opens a channel (TLS unless ``insecure_no_tls``), fetches a challenge
(``GetChallenge``; stored in the spool, so the next window carries it, and refreshed every
``nonce_refresh_s``), and opens ``SubmitAttestations``. It then sends batches of pending
envelopes, oldest first, one batch in flight at a time, and waits for the matching response:
receipts in the same order, each matched to its envelope by digest. Receipts are stored before the
next batch goes out. Anything unexpected (the stream drops, a response times out, a receipt does
not match, the verifier answers UNAVAILABLE) ends the session; the next starts after a backoff
with full jitter (uniform in [0, min(max, initial x 2^attempt)]), reset by a successful batch.
Pending envelopes are simply sent again: the verifier answers DUPLICATE for those it already has.

The shipper runs in its own thread with its own spool connection: sampling never waits on the
network.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import grpc
from pausewatch.v1 import attestation_service_pb2 as api
from pausewatch.v1 import attestation_service_pb2_grpc as api_grpc
from pausewatch.v1 import findings_pb2 as fpb

from agent.clock import NS_PER_MS, NS_PER_S, Clock
from agent.config import VerifierConfig
from agent.failures import FailureKind, classify_rpc_error, rpc_error_text
from agent.metrics import AgentMetrics, reject_reason_label
from agent.spool import EnvelopeStatus, Nonce, ReceiptRecord, Spool, SpooledEnvelope
from attest.errors import ConfigError, PausewatchError
from attest.ids import NodeId

log = logging.getLogger(__name__)

KEEPALIVE_MS = 300_000
"""A ping every 5 minutes keeps a silent connection's NAT state and finds a dead one. A dead
verifier is found sooner by the reply deadline (``verifier.rpc_timeout_s``) on the next batch,
a minute away at most; a ping every 30 s cost the verifier 333 pings a second at 10,000 agents."""
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # No bandwidth-delay probe: it pings the verifier for every reply received, and replies
    # are a few hundred bytes.
    ("grpc.http2.bdp_probe", 0),
)
"""The agent's channel options (bench/bench_streams.py uses them too, to load the verifier as a
fleet of agents does)."""
IDLE_WAIT_NS = 1 * NS_PER_S
MIN_NONCE_REFRESH_NS = 1 * NS_PER_S
"""However short the verifier's nonce lifetime, no more than one challenge a second."""


class ShipError(PausewatchError):
    """A shipping session failed (the stream dropped, a receipt did not match, a timeout)."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Cancellable(Protocol):
    def cancel(self) -> object: ...


class ChannelFactory(Protocol):
    def __call__(self, config: VerifierConfig) -> grpc.Channel: ...


def _read_file(path: Path | None, key: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"verifier.{key}: cannot read {path}: {exc.strerror}") from None


def open_channel(config: VerifierConfig) -> grpc.Channel:
    """A channel to the verifier: TLS (optionally mutual) unless ``insecure_no_tls`` is set."""
    options: list[tuple[str, object]] = list(CHANNEL_OPTIONS)
    if config.insecure_no_tls:
        log.warning(
            "plaintext connection to the verifier address=%s (insecure_no_tls): "
            "anyone on the path can read and drop evidence; never use this in production",
            config.address,
        )
        return grpc.insecure_channel(config.address, options=options)
    if config.server_name_override:
        options.append(("grpc.ssl_target_name_override", config.server_name_override))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read_file(config.ca_cert, "ca_cert"),
        private_key=_read_file(config.client_key, "client_key"),
        certificate_chain=_read_file(config.client_cert, "client_cert"),
    )
    return grpc.secure_channel(config.address, credentials, options=options)


class Backoff:
    """Exponential backoff with full jitter, capped; ``reset`` after a success."""

    def __init__(self, initial_ms: int, max_ms: int, rng: random.Random) -> None:
        self._initial_ms = initial_ms
        self._max_ms = max_ms
        self._rng = rng
        self._attempt = 0

    @property
    def attempt(self) -> int:
        return self._attempt

    def next_delay_ns(self) -> int:
        ceiling_ms = min(self._max_ms, self._initial_ms * (1 << min(self._attempt, 40)))
        self._attempt += 1
        return int(self._rng.uniform(0, ceiling_ms) * NS_PER_MS)

    def reset(self) -> None:
        self._attempt = 0


def receipt_record(receipt: api.Receipt) -> ReceiptRecord:
    """The spool's view of one receipt."""
    if receipt.status == api.RECEIPT_STATUS_ACCEPTED:
        return ReceiptRecord(receipt.envelope_digest, EnvelopeStatus.ACCEPTED, receipt.log_index)
    if receipt.status == api.RECEIPT_STATUS_DUPLICATE:
        return ReceiptRecord(receipt.envelope_digest, EnvelopeStatus.DUPLICATE, receipt.log_index)
    reason = api.RejectReason.Name(receipt.reason).removeprefix("REJECT_REASON_")
    return ReceiptRecord(
        receipt.envelope_digest,
        EnvelopeStatus.REJECTED,
        reject_reason=reason,
        detail=receipt.detail[:200],
        retry=receipt.reason == api.REJECT_REASON_UNAVAILABLE
        or receipt.status != api.RECEIPT_STATUS_REJECTED,
    )


class Shipper:
    """Ships the spool to the verifier until stopped. See the module docs."""

    def __init__(
        self,
        spool_path: Path,
        node_id: NodeId,
        config: VerifierConfig,
        *,
        clock: Clock,
        channel_factory: ChannelFactory = open_channel,
        rng: random.Random | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self._spool_path = spool_path
        self._node_id = node_id
        self._config = config
        self._clock = clock
        self._channel_factory = channel_factory
        self._backoff = Backoff(
            config.backoff_initial_ms, config.backoff_max_ms, rng or random.SystemRandom()
        )
        self._metrics = metrics or AgentMetrics()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._call_lock = threading.Lock()
        self._call: _Cancellable | None = None
        self._nonce_due_ns = 0
        self._failures_in_a_row = 0
        self._failing_since_ns: int | None = None
        self.connected = threading.Event()
        """Set while a session is up (for status and tests)."""

    def notify(self) -> None:
        """New envelopes are in the spool."""
        self._wake.set()

    def stop(self) -> None:
        """Stop after the current exchange; cuts a blocked wait short."""
        self._stop.set()
        self._wake.set()
        wake = getattr(self._clock, "wake", None)
        if callable(wake):
            wake()  # cut a backoff sleep short
        with self._call_lock:
            if self._call is not None:
                self._call.cancel()

    def run(self) -> None:
        """The thread's body: sessions, with backoff between them, until ``stop``."""
        spool = Spool.open(self._spool_path, node_id=self._node_id)
        try:
            while not self._stop.is_set():
                try:
                    self._session(spool)
                except ShipError as exc:
                    self._failed(spool, exc.kind, exc.diagnostics())
                except grpc.RpcError as exc:
                    name, details = rpc_error_text(exc)
                    kind = classify_rpc_error(name, details)
                    self._failed(spool, kind, f"{name}: {details[:300]}")
                except ConfigError as exc:
                    self._failed(spool, FailureKind.CONFIG, exc.diagnostics())
                if self._stop.is_set():
                    break
                delay_ns = self._backoff.next_delay_ns()
                log.info(
                    "shipping again after backoff delay_ms=%d attempt=%d",
                    delay_ns // NS_PER_MS,
                    self._backoff.attempt,
                )
                self._clock.sleep(delay_ns)
        finally:
            spool.close()

    def _failed(self, spool: Spool, kind: FailureKind, message: str) -> None:
        self.connected.clear()
        self._metrics.connected.set(0)
        if self._stop.is_set():
            return
        self._failures_in_a_row += 1
        if self._failing_since_ns is None:
            self._failing_since_ns = self._clock.time_ns()
        self._metrics.ship_errors.labels(kind=kind.value).inc()
        log.log(
            kind.log_level,
            "shipping failed kind=%s heals=%s attempt=%d error=%r fix=%r",
            kind.value,
            "yes" if kind.heals else "no",
            self._failures_in_a_row,
            message,
            kind.fix,
        )
        spool.record_error("ship", f"{kind.value}: {message}", at_ns=self._clock.time_ns())

    def _refresh_nonce(self, stub: api_grpc.AttestationServiceStub, spool: Spool) -> None:
        response = stub.GetChallenge(
            api.GetChallengeRequest(node_id=self._node_id),
            timeout=self._config.rpc_timeout_ms / 1000,
        )
        spool.store_nonce(
            Nonce(
                nonce=response.nonce,
                issued_at_ns=response.issued_at_ns,
                expires_at_ns=response.expires_at_ns,
                received_at_ns=self._clock.time_ns(),
            )
        )
        # Refresh every nonce_refresh_s, and at least three times in the nonce's lifetime: a
        # window whose nonce outlived it is late evidence at the verifier.
        refresh_ns = self._config.nonce_refresh_ms * NS_PER_MS
        lifetime_ns = response.expires_at_ns - response.issued_at_ns
        if lifetime_ns > 0:
            refresh_ns = max(min(refresh_ns, lifetime_ns // 3), MIN_NONCE_REFRESH_NS)
        self._nonce_due_ns = self._clock.monotonic_ns() + refresh_ns
        self._metrics.nonce_refreshes.inc()
        skew_ms = (self._clock.time_ns() - response.verifier_time_ns) // NS_PER_MS
        log.info("challenge received nonce_bytes=%d clock_skew_ms=%d", len(response.nonce), skew_ms)

    def _session(self, spool: Spool) -> None:
        channel = self._channel_factory(self._config)
        requests: queue.Queue[api.SubmitAttestationsRequest | None] = queue.Queue()
        try:
            stub = api_grpc.AttestationServiceStub(channel)
            self._refresh_nonce(stub, spool)
            call = stub.SubmitAttestations(iter(requests.get, None))
            with self._call_lock:
                self._call = call
            if self._stop.is_set():
                return
            self.connected.set()
            self._metrics.connected.set(1)
            if self._failures_in_a_row:
                backlog = spool.backlog()
                down_ms = (self._clock.time_ns() - (self._failing_since_ns or 0)) // NS_PER_MS
                log.warning(
                    "reconnected to the verifier address=%s failed_attempts=%d outage_ms=%d "
                    "pending=%d",
                    self._config.address,
                    self._failures_in_a_row,
                    down_ms,
                    backlog.count,
                )
            else:
                log.info("attestation stream open address=%s", self._config.address)
            self._failures_in_a_row = 0
            self._failing_since_ns = None
            self._stream(stub, spool, requests, iter(call))
        finally:
            requests.put(None)
            with self._call_lock:
                current: _Cancellable | None = self._call
                self._call = None
            if current is not None:
                current.cancel()
            channel.close()
            self.connected.clear()
            self._metrics.connected.set(0)

    def _stream(
        self,
        stub: api_grpc.AttestationServiceStub,
        spool: Spool,
        requests: queue.Queue[api.SubmitAttestationsRequest | None],
        responses: Iterator[api.SubmitAttestationsResponse],
    ) -> None:
        while not self._stop.is_set():
            if self._clock.monotonic_ns() >= self._nonce_due_ns:
                self._refresh_nonce(stub, spool)
            batch = spool.pending(
                limit=self._config.batch_max_envelopes, max_bytes=self._config.batch_max_bytes
            )
            self._report_depth(spool)
            if not batch:
                self._wake.wait(IDLE_WAIT_NS / NS_PER_S)
                self._wake.clear()
                continue
            requests.put(api.SubmitAttestationsRequest(envelopes=[e.envelope for e in batch]))
            response = self._next_response(responses)
            self._record(spool, batch, response)

    def _next_response(
        self, responses: Iterator[api.SubmitAttestationsResponse]
    ) -> api.SubmitAttestationsResponse:
        with self._call_lock:
            call = self._call
        timer = threading.Timer(
            self._config.rpc_timeout_ms / 1000, lambda: call.cancel() if call else None
        )
        timer.daemon = True
        timer.start()
        try:
            return next(responses)
        except StopIteration:
            raise ShipError(FailureKind.STREAM_CLOSED, "the verifier closed the stream") from None
        finally:
            timer.cancel()

    def _record(
        self,
        spool: Spool,
        batch: list[SpooledEnvelope],
        response: api.SubmitAttestationsResponse,
    ) -> None:
        receipts = list(response.receipts)
        if len(receipts) != len(batch):
            raise ShipError(
                FailureKind.PROTOCOL,
                f"{len(receipts)} receipts for a batch of {len(batch)} envelopes",
            )
        for sent, receipt in zip(batch, receipts, strict=True):
            if receipt.envelope_digest != sent.digest:
                raise ShipError(
                    FailureKind.PROTOCOL, f"receipt for seq {sent.seq} names another envelope"
                )
        records = [receipt_record(r) for r in receipts]
        spool.record_receipts(records, at_ns=self._clock.time_ns())
        self._metrics.last_receipt.set(self._clock.time_ns() / NS_PER_S)
        retry = False
        for sent, record in zip(batch, records, strict=True):
            label = "unavailable" if record.retry else record.status.value
            self._metrics.receipts.labels(status=label).inc()
            if record.retry:
                retry = True
            elif record.status is EnvelopeStatus.REJECTED:
                self._metrics.rejected.labels(
                    reason=reject_reason_label(record.reject_reason)
                ).inc()
                message = f"seq {sent.seq} rejected: {record.reject_reason} {record.detail}"
                log.error(
                    "envelope rejected seq=%d reason=%s detail=%r",
                    sent.seq,
                    record.reject_reason,
                    record.detail,
                )
                spool.record_error("verifier", message.strip(), at_ns=self._clock.time_ns())
        for sent, receipt in zip(batch, receipts, strict=True):
            if receipt.tpm_quote not in (
                fpb.TPM_QUOTE_STATUS_UNSPECIFIED,
                fpb.TPM_QUOTE_STATUS_OK,
            ):
                # The window counts, software-rooted; the verifier logged why (a finding).
                log.warning(
                    "TPM quote not accepted seq=%d status=%s",
                    sent.seq,
                    fpb.TpmQuoteStatus.Name(receipt.tpm_quote).removeprefix("TPM_QUOTE_STATUS_"),
                )
        acknowledged = [s.seq for s, r in zip(batch, records, strict=True) if r.status.acknowledged]
        if acknowledged:
            log.info(
                "receipts first_seq=%d last_seq=%d tree_size=%d",
                acknowledged[0],
                acknowledged[-1],
                response.tree_size,
            )
        self._report_depth(spool)
        if retry:
            raise ShipError(
                FailureKind.UNAVAILABLE, "the verifier could not commit the batch; resending"
            )
        self._backoff.reset()

    def _report_depth(self, spool: Spool) -> None:
        self._metrics.observe_backlog(spool.backlog())
