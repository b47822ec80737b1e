"""The verifier's gRPC server: lifecycle, TLS, health, reflection, checkpoints, metrics, shutdown.

    server = VerifierServer.from_config(config)
    port = server.start()          # health turns SERVING only once everything is ready
    server.wait()                  # until stop() (SIGTERM/SIGINT in the CLI)
    server.stop()                  # NOT_SERVING, in-flight calls finish, then storage closes

It serves with grpc.aio on an event loop in a thread of its own: an open stream is a coroutine
and costs memory, not a thread; blocking work runs in a pool of ``server.workers`` threads that
does not grow with the number of clients, and group commits on one writer thread of their own.
TLS is on unless the config says ``insecure_no_tls``; mutual TLS when a client CA is given, and
the client certificate then decides the caller's role (verifier/access.py). Prometheus metrics
on ``metrics.listen`` when set (verifier/server/metrics.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pausewatch.v1 import attestation_service_pb2, audit_pb2, registry_pb2, site_pb2

from attest.errors import ConfigError
from attest.keys import load_private_key
from verifier.access import Access
from verifier.audit.auditor import Auditor
from verifier.config import VerifierConfig
from verifier.server.ingest import Ingestor
from verifier.server.limits import Limiter
from verifier.server.meters import SiteRegistry
from verifier.server.metrics import VerifierMetrics
from verifier.server.monitor import PolicyMonitor
from verifier.server.registry import Registry
from verifier.server.servicers import (
    AttestationServicer,
    AuditServicer,
    RegistryServicer,
    Runtime,
    SiteServicer,
    add_service,
)
from verifier.server.tls import load_server_tls
from verifier.store.base import Store
from verifier.store.core import VerifierCore

T = TypeVar("T")

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    attestation_service_pb2.DESCRIPTOR.services_by_name["AttestationService"].full_name,
    registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    site_pb2.DESCRIPTOR.services_by_name["SiteService"].full_name,
)


def _service(module: Any, name: str) -> ServiceDescriptor:
    return module.DESCRIPTOR.services_by_name[name]  # type: ignore[no-any-return]


def open_store(config: VerifierConfig) -> Store:
    """The storage backend the config names."""
    if config.store.engine == "postgres":
        from verifier.store.postgres import PostgresStore

        return PostgresStore.open(config.store.dsn)
    from verifier.store.sqlite import SqliteStore

    return SqliteStore.open(config.store.path)


def server_credentials(config: VerifierConfig, now_ns: int) -> grpc.ServerCredentials | None:
    """The server's TLS credentials from the config (None with ``insecure_no_tls``): mutual TLS
    when a client CA is given."""
    server = config.server
    if server.insecure_no_tls:
        return None
    if server.tls_cert is None or server.tls_key is None:
        raise ConfigError("server.tls_cert and server.tls_key are not configured")
    material = load_server_tls(server.tls_cert, server.tls_key, server.client_ca, now_ns=now_ns)
    # A client CA means mutual TLS: without require_client_auth, gRPC would also accept
    # clients that present no certificate (or one from another CA).
    return grpc.ssl_server_credentials(
        [(material.key_pem, material.cert_pem)],
        root_certificates=material.client_ca_pem,
        require_client_auth=material.client_ca_pem is not None,
    )


def grpc_server_options(config: VerifierConfig) -> list[tuple[str, Any]]:
    """The gRPC server options the config sets (bench/bench_streams.py serves its bare gRPC
    baseline with the same ones)."""
    server, limits = config.server, config.limits
    return [
        ("grpc.max_receive_message_length", server.max_message_bytes),
        ("grpc.max_send_message_length", server.max_message_bytes),
        # Off unless the config asks: another process on the same port would get half the
        # connections. On, processes over one PostgreSQL store share an address (Fleets).
        ("grpc.so_reuseport", int(server.reuse_port)),
        # A ping per message received on each connection, to size flow-control windows
        # for bulk transfers: off unless the config asks (bench_streams, ADR 0012).
        ("grpc.http2.bdp_probe", int(server.http2_bdp_probe)),
        # The TLS record size, and so the buffer gRPC keeps per connection for it.
        ("grpc.tsi.max_frame_size", server.tls_max_frame_bytes),
        # Keepalive: the server pings every connection this often and drops it if the ping
        # goes unanswered; clients may ping no more often than min_client_ping_interval_s.
        ("grpc.keepalive_time_ms", limits.keepalive_time_s * 1000),
        ("grpc.keepalive_timeout_ms", limits.keepalive_timeout_s * 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            limits.min_client_ping_interval_s * 1000,
        ),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_connection_idle_ms", limits.max_connection_idle_s * 1000),
        ("grpc.max_concurrent_streams", limits.max_streams_per_connection),
        # gRPC's own default (1,000, hard limit 3,000) cancelled thousands of streams when a
        # fleet's agents connected at once (bench_streams, 10,000 agents, ADR 0012).
        ("grpc.server.max_pending_requests", limits.max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", limits.max_pending_calls),
    ]


class VerifierServer:
    """One verifier process."""

    def __init__(
        self, config: VerifierConfig, store: Store, clock_ns: Callable[[], int] = time.time_ns
    ) -> None:
        self.config = config
        self.store = store
        key = load_private_key(config.log.signing_key)
        # The TLS material is checked before anything is written: a start refused for an expired
        # certificate or an open key file must not have logged the labs and policies.
        self._credentials = server_credentials(config, clock_ns())
        self.core = VerifierCore(config, store, key, clock_ns)
        self.registry = Registry(self.core)
        self.registry.sync_labs(config.labs)
        self.sites = SiteRegistry(self.core)
        self.sites.sync(config.labs)
        self.ingestor = Ingestor(self.core)
        self.auditor = Auditor(self.core)
        self.monitor = PolicyMonitor(self.core, self.auditor)
        self.access = Access(config.access)
        self.limiter = Limiter(config.limits)
        self.metrics = VerifierMetrics(self._live_figures)
        self.ingestor.observe_stage_s = self.metrics.observe_stage
        self.core.observe_commit_s = self.metrics.observe_commit
        self.core.commit_failed = self.metrics.commit_failed
        self.pool = ThreadPoolExecutor(
            max_workers=config.server.workers, thread_name_prefix="verifier-work"
        )
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verifier-commit")
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._attestations: AttestationServicer | None = None
        self._checkpoints: threading.Thread | None = None
        self.port = 0
        self.metrics_port = 0

    @classmethod
    def from_config(cls, config: VerifierConfig) -> VerifierServer:
        store = open_store(config)
        try:
            return cls(config, store)
        except BaseException:
            store.close()  # a start that fails (a bad lab file, say) must not keep the store locked
            raise

    def _on_loop(self, coroutine: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    async def _serve(self) -> int:
        server_config = self.config.server
        server = grpc.aio.server(options=grpc_server_options(self.config))
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        runtime = Runtime(
            self.pool, self.writer, self.access, self.limiter, self.metrics, self._stopping
        )
        self._attestations = AttestationServicer(self.core, self.ingestor, runtime)
        add_service(
            server, _service(attestation_service_pb2, "AttestationService"), self._attestations
        )
        add_service(
            server,
            _service(registry_pb2, "RegistryService"),
            RegistryServicer(self.registry, runtime),
        )
        add_service(
            server,
            _service(audit_pb2, "AuditService"),
            AuditServicer(self.core, self.auditor, runtime),
        )
        add_service(server, _service(site_pb2, "SiteService"), SiteServicer(self.sites, runtime))
        if server_config.reflection:
            from grpc_reflection.v1alpha import reflection

            reflection.enable_server_reflection(
                (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
        credentials = self._credentials
        try:
            if credentials is None:
                log.warning("serving WITHOUT TLS (insecure_no_tls): for local tests only")
                port = server.add_insecure_port(server_config.listen)
            else:
                port = server.add_secure_port(server_config.listen, credentials)
        except RuntimeError:
            port = 0
        if port == 0:
            raise ConfigError(
                f"cannot listen on {server_config.listen} (in use, or not an address of this host)"
            )
        await server.start()
        self._server = server
        return port

    async def _set_health(self, status: Any) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    def start(self) -> int:
        """Bind, start serving, and turn health to SERVING. Returns the bound port."""
        if self.config.access.unauthenticated_role.value != "public":
            log.warning(
                "clients without a mapped certificate get the %s role "
                "(access.unauthenticated_role): for local tests only",
                self.config.access.unauthenticated_role.value,
            )
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="grpc-aio", daemon=True
        )
        self._loop_thread.start()
        try:
            self.port = self._on_loop(self._serve())
            if self.config.metrics.listen:
                self.metrics_port = self.metrics.serve(self.config.metrics.listen)
        except BaseException:
            self._close_loop()
            raise
        self.core.log.sign_checkpoint()
        self._checkpoints = threading.Thread(
            target=self._checkpoint_loop, name="checkpoints", daemon=True
        )
        self._checkpoints.start()
        self.monitor.start(self._stopping)
        self._on_loop(self._set_health(health_pb2.HealthCheckResponse.SERVING))
        tls = self._server is not None and not self.config.server.insecure_no_tls
        log.info("verifier serving on port %d (tls=%s)", self.port, tls)
        return self.port

    def _live_figures(self) -> dict[str, float]:
        latest = self.store.latest_checkpoint()
        now_ns = self.core.clock_ns()
        return {
            "log_size": float(self.store.tree_size()),
            "checkpoint_age": max(0, now_ns - latest.signed_at_ns) / 1e9 if latest else 0.0,
            "monitor_lag": self.monitor.lag_ns() / 1e9,
            "refused_streams": float(self.limiter.refused_streams),
            "waited_identity": float(self.limiter.waited["identity"]),
            "waited_peer": float(self.limiter.waited["peer"]),
        }

    def _checkpoint_loop(self) -> None:
        interval = self.config.log.checkpoint_interval_s
        while not self._stopping.wait(interval):
            try:
                self.core.log.sign_checkpoint()
            except Exception:  # keep signing later; a failure here must not stop the server
                self.metrics.checkpoint_failed()
                log.exception("signing a checkpoint failed")

    def wait(self) -> None:
        """Block until stopped. Wakes four times a second: a signal that the kernel delivers to
        one of gRPC's threads only runs its Python handler once the main thread runs bytecode,
        and a main thread asleep in an untimed wait would never get there."""
        while not self._stopped.wait(0.25):
            pass

    async def _drain(self, grace_s: float) -> None:
        await self.health.enter_graceful_shutdown()
        if self._attestations is not None:
            # Agents' streams between batches end now (UNAVAILABLE, saying why), not at the end
            # of the grace; a batch being ingested still commits and gets its receipts.
            self._attestations.idle.close_all()
        if self._server is not None:
            await self._server.stop(grace_s)

    def _close_loop(self) -> None:
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._loop_thread is not None:
            self._loop_thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()
        self._loop = None

    def stop(self) -> None:
        """Graceful shutdown: NOT_SERVING, refuse new calls, let in-flight ones finish (a batch
        being ingested commits and gets its receipts), then close storage."""
        if self._stopping.is_set():
            self._stopped.wait()
            return
        self._stopping.set()
        if self._loop is not None:
            grace = self.config.server.shutdown_grace_s
            try:
                self._on_loop(self._drain(grace), timeout_s=grace + 10)
            except TimeoutError:
                log.warning("some calls did not end within the shutdown grace; closing anyway")
        # Work a cancelled call left on the pool or the writer still finishes (and commits)
        # before storage closes.
        self.pool.shutdown(wait=True)
        self.writer.shutdown(wait=True)
        self._close_loop()
        if self._checkpoints is not None:
            self._checkpoints.join(timeout=5)
        self.monitor.join(timeout_s=30)
        try:
            self.core.log.sign_checkpoint()
        except Exception:
            log.exception("final checkpoint failed")
        self.metrics.close()
        self.ingestor.close()
        self.store.close()
        self._stopped.set()
        log.info("verifier stopped")
