"""The verifier's own metrics, for Prometheus, on a listen address of their own.

    metrics = VerifierMetrics(core, limiter, monitor)
    port = metrics.serve("127.0.0.1:9464")      # GET /metrics
    metrics.observe_batch(receipts, seconds)

Names follow Prometheus conventions (``pausewatch_verifier_`` prefix, base units, ``_total`` for
counters, ``_seconds`` for durations); docs/verifier.md lists each one and the test that checks
it (tests/integration/test_verifier_metrics.py). The endpoint carries no lab's figures and no
identities: counts, sizes and latencies only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from http.server import ThreadingHTTPServer
from threading import Thread
from typing import Any

import grpc
from pausewatch.v1 import attestation_service_pb2 as spb
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector

from attest.errors import ConfigError

log = logging.getLogger(__name__)

PREFIX = "pausewatch_verifier"
_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip


def _label(enum_name: str, prefix: str) -> str:
    return enum_name.removeprefix(prefix).lower()


_STATUS: dict[int, str] = {
    int(value): _label(name, "RECEIPT_STATUS_") for name, value in spb.ReceiptStatus.items()
}
_REASON: dict[int, str] = {
    int(value): _label(name, "REJECT_REASON_") for name, value in spb.RejectReason.items()
}


class _Live(Collector):
    """Figures read when scraped: log size, checkpoint age, monitor lag, the limits' refusals
    and waits."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        values = self._read()
        yield GaugeMetricFamily(
            f"{PREFIX}_log_size_entries",
            "Entries in the transparency log (committed tree size, read from the store: with "
            "several processes on one store, the size all of them have committed).",
            value=values["log_size"],
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_checkpoint_age_seconds",
            "Seconds since the latest signed checkpoint was signed. One is signed only when the "
            "log has grown, so this grows on an idle log too; checkpoint_failures_total tells "
            "a failing signer apart.",
            value=values["checkpoint_age"],
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_monitor_lag_seconds",
            "Seconds since the policy monitor last finished a pass (since start if none yet; "
            "0 when the monitor is off).",
            value=values["monitor_lag"],
        )
        yield CounterMetricFamily(
            f"{PREFIX}_streams_refused_total",
            "Streams refused because the identity or peer address held its limit.",
            value=values["refused_streams"],
        )
        waited = CounterMetricFamily(
            f"{PREFIX}_inflight_waits_total",
            "Messages that waited because their client identity or peer address had its share "
            "in process, by the limit that held them.",
            labels=["limit"],
        )
        for limit in ("identity", "peer"):
            waited.add_metric([limit], values[f"waited_{limit}"])
        yield waited


class VerifierMetrics:
    """Counters, gauges and histograms of one verifier process, in a registry of its own."""

    def __init__(self, live: Callable[[], dict[str, float]] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.envelopes = Counter(
            f"{PREFIX}_envelopes_received", "Envelopes received in SubmitAttestations batches.",
            registry=r,
        )  # fmt: skip
        self.batches = Counter(
            f"{PREFIX}_batches", "SubmitAttestations batches answered.", registry=r
        )
        self.receipts = Counter(
            f"{PREFIX}_receipts",
            "Receipts sent, by status and reject reason (reason 'unspecified' unless rejected).",
            ["status", "reason"],
            registry=r,
        )
        self.open_streams = Gauge(
            f"{PREFIX}_open_streams", "Streams open now, by method.", ["method"], registry=r
        )
        self.stage = Histogram(
            f"{PREFIX}_stage_duration_seconds",
            "Ingest stages: batch (received to receipts, as the stream sees it), verify (a "
            "batch's stateless checks), commit (the serial stage and transaction of a group).",
            ["stage"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.store_commit = Histogram(
            f"{PREFIX}_store_commit_duration_seconds",
            "Log flush and store transaction commit of each write that was kept (failures: "
            "store_commit_failures_total).",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.rpc_errors = Counter(
            f"{PREFIX}_rpc_errors",
            "Calls and streams ended with an error status, by method and gRPC status code "
            "(a SubmitAttestations stream ended this way answers its last batch with no receipts).",
            ["method", "code"],
            registry=r,
        )
        self.checkpoint_failures = Counter(
            f"{PREFIX}_checkpoint_failures",
            "Checkpoints the verifier failed to sign (it tries again at the next interval).",
            registry=r,
        )
        self.store_commit_failures = Counter(
            f"{PREFIX}_store_commit_failures",
            "Writes whose log flush or transaction commit failed (nothing of them was kept).",
            registry=r,
        )
        self.rpc = Histogram(
            f"{PREFIX}_rpc_duration_seconds",
            "Unary calls, by method, admission and errors included.",
            ["method"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        # The children observed for every batch, looked up once (labels() takes a lock).
        self._batch_stage = self.stage.labels("batch")
        self._receipt_children: dict[tuple[int, int], Any] = {}
        if live is not None:
            r.register(_Live(live))
        self._http: ThreadingHTTPServer | None = None

    # -- observations (thread-safe: prometheus_client locks its own values) --------------------

    def observe_batch(self, receipts: Sequence[spb.Receipt], seconds: float) -> None:
        self.batches.inc()
        self.envelopes.inc(len(receipts))
        self._batch_stage.observe(seconds)
        counts: dict[tuple[int, int], int] = {}
        for receipt in receipts:
            key = (receipt.status, receipt.reason)
            counts[key] = counts.get(key, 0) + 1
        for pair, count in counts.items():
            child = self._receipt_children.get(pair)
            if child is None:
                status, reason = pair
                child = self._receipt_children[pair] = self.receipts.labels(
                    _STATUS.get(status, str(status)), _REASON.get(reason, str(reason))
                )
            child.inc(count)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(seconds)

    def observe_commit(self, seconds: float) -> None:
        self.store_commit.observe(seconds)

    def call_failed(self, method: str, code: grpc.StatusCode) -> None:
        self.rpc_errors.labels(method, code.name.lower()).inc()

    def commit_failed(self) -> None:
        self.store_commit_failures.inc()

    def checkpoint_failed(self) -> None:
        self.checkpoint_failures.inc()

    def observe_call(self, method: str, seconds: float) -> None:
        self.rpc.labels(method).observe(seconds)

    def stream_opened(self, method: str) -> None:
        self.open_streams.labels(method).inc()

    def stream_closed(self, method: str) -> None:
        self.open_streams.labels(method).dec()

    # -- the endpoint -------------------------------------------------------------------------

    def serve(self, listen: str) -> int:
        """Serve GET /metrics on ``listen`` (HOST:PORT; port 0 picks one); returns the port."""
        host, _, port_text = listen.rpartition(":")
        try:
            port = int(port_text)
            handler = MetricsHandler.factory(self.registry)
            self._http = ThreadingHTTPServer((host.strip("[]"), port), handler)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"metrics.listen: cannot listen on {listen!r}: {exc}") from None
        self._http.daemon_threads = True
        Thread(target=self._http.serve_forever, name="metrics", daemon=True).start()
        bound = int(self._http.server_address[1])
        log.info("metrics on %s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
