"""A transparency-log witness (c2sp.org/tlog-witness) over HTTP: ``pausewatch witness serve``.

    state = WitnessState.open(Path("witness-state"))
    server = WitnessServer(state, cosigner, {origin: log_verifier}, ("127.0.0.1", 0))
    port = server.start()      # POST /add-checkpoint, until stop()

For each log it knows, the witness keeps the latest checkpoint it cosigned, one file per origin in
the state directory, written durably (temporary file, fsync, rename, fsync of the directory)
*before* the cosignature is returned, under one lock with the check (the protocol's atomicity
rule). A restarted witness, even after SIGKILL, therefore never cosigns a checkpoint that does not
extend one it cosigned before. Requests it refuses although the log signed them (a fork or a
rollback: 409 or 422) are kept in ``<state>/refused/`` as evidence of the log's misbehaviour.

The witness is a separate party from the verifier: it shares no state with it, only the log's
public key.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from attest.checkpoint import Checkpoint, CosignatureSigner
from attest.errors import ConfigError, NoteError
from attest.note import NoteVerifier
from attest.witness import (
    MAX_REQUEST_BYTES,
    SIZE_CONTENT_TYPE,
    AddCheckpointRequest,
    Status,
    WitnessRefusedError,
    check_add_checkpoint,
    cosignature_lines,
    note_origin,
)

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0
"""How long a connection may stay silent (before or between requests) before it is dropped."""

MAX_CONNECTIONS = 64
"""Connections served at once; one more is closed at once, so idle or slow clients cannot take
every thread and all memory."""

_STATE_SUFFIX = ".checkpoint"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    _fsync_directory(path.parent)


class WitnessState:
    """The latest cosigned checkpoint of each log, on disk."""

    def __init__(self, directory: Path, latest: dict[str, Checkpoint]) -> None:
        self.directory = directory
        self._latest = latest
        self.lock = threading.Lock()

    @classmethod
    def open(cls, directory: Path) -> WitnessState:
        """Load the state directory (created if missing); :class:`ConfigError` if any state file
        is unreadable: a witness that cannot trust its memory must not cosign."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "refused").mkdir(exist_ok=True)
        latest: dict[str, Checkpoint] = {}
        for path in sorted(directory.glob(f"*{_STATE_SUFFIX}")):
            try:
                checkpoint = Checkpoint.from_text(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, NoteError) as exc:
                raise ConfigError(
                    f"witness state file {path} is unreadable or corrupt ({type(exc).__name__}); "
                    "restore it from a backup or retire this witness key"
                ) from None
            if path.name != cls._file_name(checkpoint.origin):
                raise ConfigError(f"witness state file {path} holds another log's checkpoint")
            latest[checkpoint.origin] = checkpoint
        return cls(directory, latest)

    @staticmethod
    def _file_name(origin: str) -> str:
        return hashlib.sha256(origin.encode("utf-8")).hexdigest() + _STATE_SUFFIX

    def latest(self, origin: str) -> Checkpoint | None:
        return self._latest.get(origin)

    def save(self, checkpoint: Checkpoint) -> None:
        """Persist a newly cosigned checkpoint (call with :attr:`lock` held)."""
        _write_durably(
            self.directory / self._file_name(checkpoint.origin),
            checkpoint.to_text().encode("utf-8"),
        )
        self._latest[checkpoint.origin] = checkpoint

    def keep_refused(self, body: bytes, status: Status) -> None:
        """Keep a log-signed request that was refused as a fork or rollback, as evidence."""
        name = f"{time.time_ns()}-{int(status)}-{hashlib.sha256(body).hexdigest()[:16]}.req"
        _write_durably(self.directory / "refused" / name, body)


class Witness:
    """The add-checkpoint logic over a :class:`WitnessState`, independent of HTTP."""

    def __init__(
        self,
        state: WitnessState,
        cosigner: CosignatureSigner,
        log_verifiers: Mapping[str, NoteVerifier],
    ) -> None:
        self.state = state
        self.cosigner = cosigner
        self.log_verifiers = dict(log_verifiers)

    def add_checkpoint(self, body: bytes) -> str:
        """Check a request and, if it passes, persist and return the cosignature line(s).

        Raises :class:`WitnessRefusedError`."""
        request = AddCheckpointRequest.from_bytes(body)
        origin = note_origin(request.note)
        with self.state.lock:
            try:
                checkpoint = check_add_checkpoint(
                    request, self.log_verifiers, self.state.latest(origin)
                )
            except WitnessRefusedError as refusal:
                if refusal.contradicts:
                    self._keep_evidence(body, refusal)
                raise
            previous = self.state.latest(origin)
            if previous is None or previous.tree_size != checkpoint.tree_size:
                self.state.save(checkpoint)
        log.info("cosigned origin=%s size=%d", origin, checkpoint.tree_size)
        return cosignature_lines(request.note, self.cosigner)

    def _keep_evidence(self, body: bytes, refusal: WitnessRefusedError) -> None:
        log.warning("REFUSED a checkpoint inconsistent with the one cosigned: %s", refusal.reason)
        try:
            self.state.keep_refused(body, refusal.status)
        except OSError:
            log.exception("could not keep the refused request as evidence")


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"
    server_version = "pausewatch-witness"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # Every read on this connection, the request line included, gives up after this.
        self.connection.settimeout(self.server.request_timeout_s)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(405 if self.path == "/add-checkpoint" else 404, b"use POST /add-checkpoint\n")

    def do_POST(self) -> None:
        if self.path != "/add-checkpoint":
            self._reply(404, b"not found\n")
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            self.close_connection = True
            self._reply(411, b"a Content-Length is required\n")
            return
        length = int(length_text)
        if length > MAX_REQUEST_BYTES:
            self.close_connection = True
            self._reply(413, b"request body is too large\n")
            return
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return
        try:
            lines = self.server.witness.add_checkpoint(body)
        except WitnessRefusedError as refusal:
            if refusal.status == Status.CONFLICT and refusal.latest_size is not None:
                self._reply(refusal.status, f"{refusal.latest_size}\n".encode(), SIZE_CONTENT_TYPE)
            else:
                self._reply(refusal.status, (refusal.reason + "\n").encode("utf-8"))
            return
        except Exception:  # the HTTP boundary: a peer never sees internal error text
            log.exception("add-checkpoint failed")
            self._reply(500, b"internal error\n")
            return
        self._reply(200, lines.encode("utf-8"))


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    witness: Witness
    request_timeout_s: float
    slots: threading.BoundedSemaphore

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A peer that hangs up mid-request is routine on a public endpoint: log it, no traceback
        # on stderr (socketserver's default).
        error = sys.exception()  # socketserver calls this inside its except block
        log.debug(
            "connection from %s ended with %s",
            client_address[0],
            type(error).__name__ if error is not None else "an error",
        )

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            log.warning("too many connections: closing one from %s", client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class WitnessServer:
    """The witness's HTTP server."""

    def __init__(
        self,
        witness: Witness,
        address: tuple[str, int],
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._http = _HttpServer(address, _Handler)
        self._http.witness = witness
        self._http.request_timeout_s = request_timeout_s
        self._http.slots = threading.BoundedSemaphore(max_connections)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def start(self) -> int:
        """Serve in a background thread; returns the bound port."""
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="witness-http", daemon=True
        )
        self._thread.start()
        return self.port

    def serve_forever(self) -> None:
        self._http.serve_forever(poll_interval=0.25)

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
