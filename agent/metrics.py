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
"""

from __future__ import annotations

import logging
import time
from wsgiref.simple_server import WSGIServer

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
from agent.identity import AGENT_VERSION
from agent.spool import SpoolBacklog

log = logging.getLogger(__name__)


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
            "Failed shipping sessions, by kind: tls, dns, refused, unavailable, timeout, "
            "rejected, config, stream_closed, protocol.",
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

    def render(self) -> bytes:
        """The text exposition (what the endpoint serves)."""
        return generate_latest(self.registry)

    def serve(self, *, port: int, address: str) -> WSGIServer:
        """Serve the metrics over HTTP in a daemon thread; returns the server (``shutdown()``)."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        log.info("metrics endpoint address=%s port=%d", address, server.server_port)
        return server
