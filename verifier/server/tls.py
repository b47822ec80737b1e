"""The verifier's own TLS material, checked before it serves: a certificate in its validity period
that matches its key, and a key file nobody else can read.

    material = load_server_tls(Path("server.pem"), Path("server.key"), None, now_ns=time.time_ns())
    grpc.ssl_server_credentials([(material.key_pem, material.cert_pem)], ...)

A verifier that served on an expired certificate would answer health checks while every careful
client refused it; one whose TLS key others can read has given its identity away. Both are
refused at start with the file named and the fix said (``ConfigError``: ``serve`` exits 2), as
the log key's mode already is.
"""

from __future__ import annotations

import datetime
import logging
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from attest.errors import ConfigError

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
EXPIRY_WARNING_NS = 14 * 86_400 * NS_PER_S
"""A certificate that expires sooner than this is logged as a warning at start."""


@dataclass(frozen=True, slots=True)
class ServerTls:
    """PEM bytes for ``grpc.ssl_server_credentials``, checked."""

    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None
    not_valid_after_ns: int


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None


def _utc_words(timestamp_ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp_ns // NS_PER_S, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _to_ns(moment: datetime.datetime) -> int:
    return int(moment.timestamp()) * NS_PER_S


def check_key_file_mode(path: Path, setting: str) -> None:
    """Refuse a private key file that group or others can read or write, or that is not a file."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{setting}: {path} is not a regular file")
    if info.st_mode & 0o077:
        raise ConfigError(
            f"{setting}: the TLS private key {path} has mode {stat.S_IMODE(info.st_mode):04o}; "
            f"others can read it. Run: chmod 600 {path}"
        )


def load_server_tls(
    cert_path: Path, key_path: Path, client_ca_path: Path | None, *, now_ns: int
) -> ServerTls:
    """The server's certificate chain, key and client CA, or ``ConfigError`` naming the file:
    a key readable by others, a certificate that has expired or is not yet valid, a certificate
    that is not for this key, or a file that is not PEM."""
    check_key_file_mode(key_path, "server.tls_key")
    key_pem = _read(key_path, "server.tls_key")
    cert_pem = _read(cert_path, "server.tls_cert")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ConfigError(f"server.tls_cert: {cert_path} holds no PEM certificate") from None
    leaf = chain[0]
    not_before = _to_ns(leaf.not_valid_before_utc)
    not_after = _to_ns(leaf.not_valid_after_utc)
    if now_ns >= not_after:
        raise ConfigError(
            f"server.tls_cert: the certificate in {cert_path} expired at "
            f"{_utc_words(not_after)}; clients would refuse it. Renew it before serving"
        )
    if now_ns < not_before:
        raise ConfigError(
            f"server.tls_cert: the certificate in {cert_path} is not valid until "
            f"{_utc_words(not_before)} (check this machine's clock)"
        )
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            f"server.tls_key: {key_path} is not an unencrypted PEM private key"
        ) from None
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    if key.public_key().public_bytes(pem, raw) != leaf.public_key().public_bytes(pem, raw):
        raise ConfigError(
            f"server.tls_cert: the certificate in {cert_path} is not for the key in {key_path}"
        )
    if not_after - now_ns < EXPIRY_WARNING_NS:
        log.warning("the server TLS certificate expires at %s", _utc_words(not_after))
    client_ca = _read(client_ca_path, "server.client_ca") if client_ca_path else None
    return ServerTls(cert_pem, key_pem, client_ca, not_after)
