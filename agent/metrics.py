"""Prometheus metrics for the agent, served only when asked (``metrics.port``), on 127.0.0.1 by
default.

    metrics = AgentMetrics()
    metrics.samples.inc(8)
    server = metrics.serve(port=9464, address="127.0.0.1")   # later: server.shutdown()

Every metric lives in the agent's own registry (never the process-global one), so tests and the
benchmark can make as many as they like. Names follow Prometheus conventions with the
``pausewatch_agent_`` prefix; no label ever carries a key, a nonce or an envelope.
"""

from __future__ import annotations

import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server

log = logging.getLogger(__name__)


class AgentMetrics:
    """The agent's counters and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.samples = Counter(
            "pausewatch_agent_samples", "GPU samples taken (one per GPU per poll).", registry=r
        )
        self.polls = Counter("pausewatch_agent_polls", "Sampler polls.", registry=r)
        self.windows = Counter(
            "pausewatch_agent_windows", "Windows signed and spooled.", registry=r
        )
        self.windows_unattested = Counter(
            "pausewatch_agent_windows_unattested",
            "Windows not signed because the spool was full.",
            registry=r,
        )
        self.sampler_events = Counter(
            "pausewatch_agent_sampler_events",
            "Events recorded by the sampler and the agent, by kind.",
            ["kind"],
            registry=r,
        )
        self.spool_depth = Gauge(
            "pausewatch_agent_spool_depth", "Envelopes not yet acknowledged.", registry=r
        )
        self.spool_bytes = Gauge(
            "pausewatch_agent_spool_bytes", "Bytes of envelopes not yet acknowledged.", registry=r
        )
        self.head_seq = Gauge(
            "pausewatch_agent_chain_head_seq", "Seq of the chain head.", registry=r
        )
        self.ship_errors = Counter(
            "pausewatch_agent_ship_errors",
            "Failed shipping attempts (connection, stream, protocol), by kind.",
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

    def render(self) -> bytes:
        """The text exposition (what the endpoint serves)."""
        return generate_latest(self.registry)

    def serve(self, *, port: int, address: str) -> WSGIServer:
        """Serve the metrics over HTTP in a daemon thread; returns the server (``shutdown()``)."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        log.info("metrics endpoint address=%s port=%d", address, server.server_port)
        return server
