"""Prometheus metrics for the agent, served only when asked (``metrics.port``), on 127.0.0.1 by
default.

    metrics = AgentMetrics(backend="sim")
    metrics.observe_backlog(SpoolBacklog(count=3, size_bytes=4096, oldest_window_start_ns=t))
    server = metrics.serve(port=9464, address="127.0.0.1")   # later: server.shutdown()

The gauges are read from the agent's own state, not from the verifier's answers: the signing loop
sets the spool backlog after every window it signs (so the depth rises during an outage, when no
stream is open), the shipper after every batch of receipts, and the oldest unshipped window's age
is computed at scrape time from the stored window start. Timestamps are Unix seconds
(``*_timestamp_seconds``) so alert rules can compare them with ``time()``.

Every metric lives in the agent's own registry (never the process-global one), so tests and the
benchmark can make as many as they like; the standard ``process_*`` metrics are in it too. Names
follow Prometheus conventions with the ``pausewatch_agent_`` prefix; no label ever carries a key,
a nonce or an envelope. docs/alerts/pausewatch-agent.rules.yml holds the alert rules over them.

Every labelled counter is exported from the start with each of its known label values at 0
(:data:`SAMPLER_EVENT_KINDS`, :data:`SHIP_ERROR_KINDS`, :data:`RECEIPT_STATUSES`,
:data:`REJECT_REASONS`). A series that appears only at its first increment first shows at 1, and
``increase()`` over it is 0: an alert on it would miss the first occurrence.
"""

from __future__ import annotations

import logging
import time
from wsgiref.simple_server import WSGIServer

from pausewatch.v1 import attestation_pb2 as pb
from pausewatch.v1 import attestation_service_pb2 as api
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

from agent.clock import NS_PER_S
from agent.failures import FailureKind
from agent.identity import AGENT_VERSION
from agent.sampler.base import Poll
from agent.spool import SpoolBacklog

log = logging.getLogger(__name__)

AGENT_ERROR_KIND = "agent_error"
"""The ``kind`` the daemon counts a failed tick under (not an evidence event)."""
SAMPLER_EVENT_KINDS: tuple[str, ...] = (
    *(
        name.removeprefix("EVENT_KIND_").lower()
        for name, _ in pb.EventKind.items()
        if name != "EVENT_KIND_UNSPECIFIED"
    ),
    AGENT_ERROR_KIND,
)
"""``sampler_events_total{kind}``: the proto's EventKind values, lower case, and agent_error."""
SHIP_ERROR_KINDS: tuple[str, ...] = tuple(kind.value for kind in FailureKind)
"""``ship_errors_total{kind}``: agent/failures.py's kinds."""
UNAVAILABLE_STATUS = "unavailable"
"""The agent's own receipt status: the verifier could not commit the envelope (REJECTED with
reason UNAVAILABLE, or a status it did not set); the envelope is sent again."""
RECEIPT_STATUSES: tuple[str, ...] = (
    *(
        name.removeprefix("RECEIPT_STATUS_").lower()
        for name, _ in api.ReceiptStatus.items()
        if name != "RECEIPT_STATUS_UNSPECIFIED"
    ),
    UNAVAILABLE_STATUS,
)
"""``receipts_total{status}``: accepted, duplicate, rejected (for good), unavailable."""
REJECT_REASONS: tuple[str, ...] = tuple(
    name.removeprefix("REJECT_REASON_").lower()
    for name, _ in api.RejectReason.items()
    if name != "REJECT_REASON_UNAVAILABLE"
)
"""``rejected_total{reason}``: the proto's RejectReason values in lower case, the names of the
verifier's ``pausewatch_verifier_receipts_total{reason}``; UNAVAILABLE is transient, counted as
``receipts_total{status="unavailable"}``, and ``unspecified`` is a rejection without a reason."""


def reject_reason_label(reason: str) -> str:
    """The ``reason`` label of a rejection stored as its proto name (``BAD_NONCE``)."""
    return reason.lower()


class AgentMetrics:
    """The agent's counters and gauges."""

    def __init__(self, *, backend: str = "", process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        if process:
            ProcessCollector(registry=r)
        self.build_info = Info(
            "pausewatch_agent_build", "The agent's version and sampler backend.", registry=r
        )
        self.build_info.info({"version": AGENT_VERSION, "backend": backend})
        self.samples = Counter(
            "pausewatch_agent_samples", "GPU samples taken (one per GPU per poll).", registry=r
        )
        self.polls = Counter("pausewatch_agent_polls", "Sampler polls.", registry=r)
        self.windows = Counter(
            "pausewatch_agent_windows", "Windows signed and spooled.", registry=r
        )
        self.windows_unattested = Counter(
            "pausewatch_agent_windows_unattested",
            "Windows not signed because the spool was full or could not be written.",
            registry=r,
        )
        self.sampler_events = Counter(
            "pausewatch_agent_sampler_events",
            "Events recorded by the sampler and the agent, by kind.",
            ["kind"],
            registry=r,
        )
        self._gpus_seen: set[str] = set()
        self.gpus_unreadable = Gauge(
            "pausewatch_agent_gpus_unreadable",
            "GPUs this agent process has read or seen lost since it started that its last poll "
            "could not read (lost, gone from NVML's device list, or NVML unusable).",
            registry=r,
        )
        self.spool_depth = Gauge(
            "pausewatch_agent_spool_depth",
            "Envelopes signed and not yet acknowledged by the verifier.",
            registry=r,
        )
        self.spool_bytes = Gauge(
            "pausewatch_agent_spool_bytes",
            "Bytes of envelopes signed and not yet acknowledged.",
            registry=r,
        )
        self._oldest_unshipped_ns: int | None = None
        self.oldest_unshipped_age = Gauge(
            "pausewatch_agent_oldest_unshipped_window_age_seconds",
            "Age of the start of the oldest window not yet acknowledged (0 when none).",
            registry=r,
        )
        self.oldest_unshipped_age.set_function(self._oldest_unshipped_age_s)
        self.head_seq = Gauge(
            "pausewatch_agent_chain_head_seq", "Seq of the chain head (-1 before any).", registry=r
        )
        self.last_signed = Gauge(
            "pausewatch_agent_last_signed_timestamp_seconds",
            "When the agent last signed and spooled a window (0: not since it started).",
            registry=r,
        )
        self.last_receipt = Gauge(
            "pausewatch_agent_last_receipt_timestamp_seconds",
            "When the agent last stored a receipt from the verifier (0: not since it started).",
            registry=r,
        )
        self.connected = Gauge(
            "pausewatch_agent_connected",
            "1 while an attestation stream to the verifier is open, else 0.",
            registry=r,
        )
        self.ship_errors = Counter(
            "pausewatch_agent_ship_errors",
            "Failed shipping sessions, by kind: " + ", ".join(SHIP_ERROR_KINDS) + ".",
            ["kind"],
            registry=r,
        )
        self.receipts = Counter(
            "pausewatch_agent_receipts", "Receipts received, by status.", ["status"], registry=r
        )
        self.rejected = Counter(
            "pausewatch_agent_rejected",
            "Envelopes rejected for good by the verifier, by reason.",
            ["reason"],
            registry=r,
        )
        self.nonce_refreshes = Counter(
            "pausewatch_agent_nonce_refreshes", "Challenges fetched from the verifier.", registry=r
        )
        self.start_time = Gauge(
            "pausewatch_agent_start_time_seconds", "When this agent process started.", registry=r
        )
        self.start_time.set(time.time())
        for counter, label, values in (
            (self.sampler_events, "kind", SAMPLER_EVENT_KINDS),
            (self.ship_errors, "kind", SHIP_ERROR_KINDS),
            (self.receipts, "status", RECEIPT_STATUSES),
            (self.rejected, "reason", REJECT_REASONS),
        ):
            for value in values:
                counter.labels(**{label: value})  # exported at 0 until the first inc()

    def _oldest_unshipped_age_s(self) -> float:
        oldest = self._oldest_unshipped_ns
        if oldest is None:
            return 0.0
        return max(0.0, (time.time_ns() - oldest) / NS_PER_S)

    def observe_backlog(self, backlog: SpoolBacklog) -> None:
        """Set the spool gauges from the spool's own count (signing loop and shipper)."""
        self.spool_depth.set(backlog.count)
        self.spool_bytes.set(backlog.size_bytes)
        self._oldest_unshipped_ns = backlog.oldest_window_start_ns

    def observe_poll(self, poll: Poll) -> None:
        """Count one sampler poll (the signing loop): samples, events, and the GPUs seen since
        the start that this poll could not read. A poll with neither readings nor events tried
        nothing (a realtime replay between recorded rows) and leaves the gauge as it was."""
        self.polls.inc()
        self.samples.inc(sum(1 for r in poll.readings if r.sample is not None))
        read = {r.identity.uuid for r in poll.readings if r.sample is not None}
        for event in poll.events:
            self.sampler_events.labels(kind=event.kind.value).inc()
        self._gpus_seen.update(r.identity.uuid for r in poll.readings)
        if poll.readings or poll.events:
            self.gpus_unreadable.set(len(self._gpus_seen - read))

    def render(self) -> bytes:
        """The text exposition (what the endpoint serves)."""
        return generate_latest(self.registry)

    def serve(self, *, port: int, address: str) -> WSGIServer:
        """Serve the metrics over HTTP in a daemon thread; returns the server (``shutdown()``)."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        log.info("metrics endpoint address=%s port=%d", address, server.server_port)
        return server
