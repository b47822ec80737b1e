"""The verifier's gRPC server: lifecycle, TLS, health, reflection, checkpoints, shutdown.

    server = VerifierServer.from_config(config)
    port = server.start()          # health turns SERVING only once everything is ready
    server.wait()                  # until stop() (SIGTERM/SIGINT in the CLI)
    server.stop()                  # NOT_SERVING, in-flight calls finish, then storage closes

TLS is on unless the config says ``insecure_no_tls``; mutual TLS when a client CA is given.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pausewatch.v1 import attestation_service_pb2, audit_pb2, registry_pb2

from attest.errors import ConfigError
from attest.keys import load_private_key
from verifier.audit import Auditor
from verifier.config import VerifierConfig
from verifier.core import VerifierCore
from verifier.ingest import Ingestor
from verifier.monitor import PolicyMonitor
from verifier.registry import Registry
from verifier.servicers import (
    AttestationServicer,
    AuditServicer,
    RegistryServicer,
    add_service,
)
from verifier.store.base import Store

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    attestation_service_pb2.DESCRIPTOR.services_by_name["AttestationService"].full_name,
    registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
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


def _read(path: Path | None, what: str) -> bytes:
    if path is None:
        raise ConfigError(f"{what} is not configured")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


class VerifierServer:
    """One verifier process."""

    def __init__(
        self, config: VerifierConfig, store: Store, clock_ns: Callable[[], int] = time.time_ns
    ) -> None:
        self.config = config
        self.store = store
        key = load_private_key(config.log.signing_key)
        self.core = VerifierCore(config, store, key, clock_ns)
        self.registry = Registry(self.core)
        self.registry.sync_labs(config.labs)
        self.ingestor = Ingestor(self.core)
        self.auditor = Auditor(self.core)
        self.monitor = PolicyMonitor(self.core, self.auditor)
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self.health = health.HealthServicer()
        self._server: grpc.Server | None = None
        self._checkpoints: threading.Thread | None = None
        self.port = 0

    @classmethod
    def from_config(cls, config: VerifierConfig) -> VerifierServer:
        return cls(config, open_store(config))

    def _credentials(self) -> grpc.ServerCredentials | None:
        server = self.config.server
        if server.insecure_no_tls:
            return None
        cert = _read(server.tls_cert, "server.tls_cert")
        key = _read(server.tls_key, "server.tls_key")
        client_ca = _read(server.client_ca, "server.client_ca") if server.client_ca else None
        # A client CA means mutual TLS: without require_client_auth, gRPC would also accept
        # clients that present no certificate (or one from another CA).
        return grpc.ssl_server_credentials(
            [(key, cert)],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    def start(self) -> int:
        """Bind, start serving, and turn health to SERVING. Returns the bound port."""
        server_config = self.config.server
        options = [
            ("grpc.max_receive_message_length", server_config.max_message_bytes),
            ("grpc.max_send_message_length", server_config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.server(
            ThreadPoolExecutor(max_workers=server_config.workers, thread_name_prefix="grpc"),
            options=options,
            maximum_concurrent_rpcs=server_config.workers * 8,
        )
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        add_service(
            server,
            _service(attestation_service_pb2, "AttestationService"),
            AttestationServicer(self.core, self.ingestor),
        )
        add_service(
            server, _service(registry_pb2, "RegistryService"), RegistryServicer(self.registry)
        )
        add_service(
            server,
            _service(audit_pb2, "AuditService"),
            AuditServicer(self.core, self.auditor, self._stopping),
        )
        if server_config.reflection:
            from grpc_reflection.v1alpha import reflection

            reflection.enable_server_reflection(
                (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
        credentials = self._credentials()
        try:
            if credentials is None:
                log.warning("serving WITHOUT TLS (insecure_no_tls): for local tests only")
                self.port = server.add_insecure_port(server_config.listen)
            else:
                self.port = server.add_secure_port(server_config.listen, credentials)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise ConfigError(
                f"cannot listen on {server_config.listen} (in use, or not an address of this host)"
            )
        server.start()
        self._server = server
        self.core.log.sign_checkpoint()
        self._checkpoints = threading.Thread(
            target=self._checkpoint_loop, name="checkpoints", daemon=True
        )
        self._checkpoints.start()
        self.monitor.start(self._stopping)
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("verifier serving on port %d (tls=%s)", self.port, credentials is not None)
        return self.port

    def _checkpoint_loop(self) -> None:
        interval = self.config.log.checkpoint_interval_s
        while not self._stopping.wait(interval):
            try:
                self.core.log.sign_checkpoint()
            except Exception:  # keep signing later; a failure here must not stop the server
                log.exception("signing a checkpoint failed")

    def wait(self) -> None:
        """Block until stopped. Wakes four times a second: a signal that the kernel delivers to
        one of gRPC's threads only runs its Python handler once the main thread runs bytecode,
        and a main thread asleep in an untimed wait would never get there."""
        while not self._stopped.wait(0.25):
            pass

    def stop(self) -> None:
        """Graceful shutdown: NOT_SERVING, refuse new calls, let in-flight ones finish, close."""
        if self._stopping.is_set():
            self._stopped.wait()
            return
        self._stopping.set()
        self.health.enter_graceful_shutdown()
        if self._server is not None:
            grace = self.config.server.shutdown_grace_s
            if not self._server.stop(grace).wait(timeout=grace + 10):
                log.warning("some calls did not end within the shutdown grace; closing anyway")
        if self._checkpoints is not None:
            self._checkpoints.join(timeout=5)
        self.monitor.join(timeout_s=30)
        try:
            self.core.log.sign_checkpoint()
        except Exception:
            log.exception("final checkpoint failed")
        self.ingestor.close()
        self.store.close()
        self._stopped.set()
        log.info("verifier stopped")
