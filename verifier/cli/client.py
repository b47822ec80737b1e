"""What the regulator's command line needs to talk to a verifier: channels (TLS by default) and
times given the way people write them.

    channel = open_channel(VerifierTarget("verifier.example:7443", ca_cert=Path("ca.pem")))
    start_ns = parse_time("2026-11-01")          # or "2026-11-01T08:00:00Z", "now", "-2h"
"""

from __future__ import annotations

import datetime
import logging
import re
import socket
import ssl
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
_RELATIVE = re.compile(r"-(\d+)(s|m|h|d)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_FRACTION = re.compile(r"(.*T\d\d:\d\d:\d\d)\.(\d+)(Z|[+-]\d\d:\d\d)?")


@dataclass(frozen=True, slots=True)
class VerifierTarget:
    """Where a verifier is and how to reach it."""

    address: str
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None
    insecure_no_tls: bool = False


def open_channel(
    target: VerifierTarget, *, max_message_bytes: int = 64 * 1024 * 1024
) -> grpc.Channel:
    """A channel to the verifier: TLS (mutual if a client certificate is given) unless
    ``insecure_no_tls``."""
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if target.server_name:
        options.append(("grpc.ssl_target_name_override", target.server_name))
    if target.insecure_no_tls:
        log.warning("talking to the verifier WITHOUT TLS (--insecure-no-tls)")
        return grpc.insecure_channel(target.address, options=options)
    root = target.ca_cert.read_bytes() if target.ca_cert is not None else None
    key = target.client_key.read_bytes() if target.client_key is not None else None
    cert = target.client_cert.read_bytes() if target.client_cert is not None else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )
    return grpc.secure_channel(target.address, credentials, options=options)


# Times are ns since the epoch in a signed 64-bit integer (as the protocol carries them): from
# 1970-01-01 (nothing pausewatch records is older) to 2262-04-11T23:47:16.854775807Z.
MAX_TIME_NS = 2**63 - 1
_TIME_RANGE = "times go from 1970-01-01T00:00:00Z to 2262-04-11T23:47:16Z"


def parse_time(text: str, *, now_ns: int | None = None) -> int:
    """ns since the epoch from ``now``, ``-90s``/``-15m``/``-2h``/``-7d`` (before now), a date
    (``2026-11-01``, midnight UTC), or an ISO 8601 time (UTC unless it says otherwise) with up to
    nine digits of a second, as reports print it, between 1970 and 2262. Raises ValueError with a
    clear message."""
    value = _parse_time(text, now_ns)
    if value < 0:
        raise ValueError(f"{text!r} is before 1970-01-01T00:00:00Z; {_TIME_RANGE}")
    if value > MAX_TIME_NS:
        raise ValueError(f"{text!r} is after 2262-04-11T23:47:16Z; {_TIME_RANGE}")
    return value


def _parse_time(text: str, now_ns: int | None) -> int:
    value = text.strip()
    now = time.time_ns() if now_ns is None else now_ns
    if value == "now":
        return now
    relative = _RELATIVE.fullmatch(value)
    if relative is not None:
        return now - int(relative.group(1)) * _UNIT_S[relative.group(2)] * NS_PER_S
    fraction = _FRACTION.fullmatch(value)
    if fraction is not None:
        if len(fraction.group(2)) > 9:
            raise ValueError(f"{text!r} is not a time: at most nine digits of a second")
        whole = _parse_time(fraction.group(1) + (fraction.group(3) or ""), now)
        return whole + int(fraction.group(2).ljust(9, "0"))
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use now, -2h, 2026-11-01 or 2026-11-01T08:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    delta = parsed - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return (delta.days * 86_400 + delta.seconds) * NS_PER_S + delta.microseconds * 1000


def tls_file_problem(target: VerifierTarget) -> tuple[str, str] | None:
    """What is wrong with the TLS files ``target`` names, as (option, sentence naming the file),
    or None: a CA file with no PEM certificate, a client certificate or key that is not PEM (or
    an encrypted key), or a key that is not the certificate's. Checked before connecting, since
    gRPC reports any of them only as a failed connection."""
    if target.insecure_no_tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if target.ca_cert is not None:
        try:
            context.load_verify_locations(cafile=str(target.ca_cert))
        except OSError as exc:  # ssl.SSLError included
            if not isinstance(exc, ssl.SSLError):
                return "--ca-cert", f"cannot read {target.ca_cert}: {exc.strerror}"
            return "--ca-cert", f"{target.ca_cert} holds no PEM CA certificate"
    if target.client_cert is None or target.client_key is None:
        return None
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        cert_pem = target.client_cert.read_bytes()
        key_pem = target.client_key.read_bytes()
    except OSError as exc:
        return "--client-cert", f"cannot read {exc.filename}: {exc.strerror}"
    try:
        x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        return "--client-cert", f"{target.client_cert} holds no PEM certificate"
    try:
        serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        return "--client-key", f"{target.client_key} is encrypted; give the key unencrypted"
    except (ValueError, UnsupportedAlgorithm):
        return "--client-key", f"{target.client_key} holds no PEM private key"
    try:
        context.load_cert_chain(str(target.client_cert), str(target.client_key))
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in (exc.reason or "").upper():
            return (
                "--client-key",
                f"{target.client_key} is not the private key of the certificate in "
                f"{target.client_cert}",
            )
        return (
            "--client-cert",
            f"{target.client_cert} and {target.client_key} cannot be used together "
            f"({exc.reason or 'TLS refused them'})",
        )
    return None


class TlsDiagnosis(StrEnum):
    """Why a TLS connection to the verifier failed, as a probe handshake tells it."""

    CLIENT_CERTIFICATE_REFUSED = "client_certificate_refused"
    SERVER_CERTIFICATE_UNTRUSTED = "server_certificate_untrusted"
    NOT_TLS = "not_tls"
    UNREACHABLE = "unreachable"
    HANDSHAKE_OK = "handshake_ok"


# TLS alerts a server sends when it refuses the client's certificate (OpenSSL's reason names).
_CLIENT_REFUSALS = (
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_UNKNOWN",
    "CERTIFICATE_REVOKED",
    "UNSUPPORTED_CERTIFICATE",
    "ACCESS_DENIED",
    "HANDSHAKE_FAILURE",
)


def diagnose_tls(target: VerifierTarget, *, timeout_s: float = 5.0) -> tuple[TlsDiagnosis, str]:
    """Probe the verifier with one TLS handshake as ``target`` would make it, to say why gRPC
    could not connect: gRPC reports every TLS refusal as UNAVAILABLE, and under TLS 1.3 a server
    refuses a client certificate only after the handshake, so the client sees a closed socket.
    The probe reads the server's alert. Returns the diagnosis and the TLS library's reason."""
    host, _, port_text = target.address.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        return TlsDiagnosis.UNREACHABLE, "not a HOST:PORT address"
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if target.ca_cert is not None:
        context.load_verify_locations(cafile=str(target.ca_cert))
    if target.client_cert is not None and target.client_key is not None:
        context.load_cert_chain(str(target.client_cert), str(target.client_key))
    context.set_alpn_protocols(["h2"])
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        return TlsDiagnosis.UNREACHABLE, exc.strerror or type(exc).__name__
    try:
        with context.wrap_socket(raw, server_hostname=target.server_name or host) as tls:
            # A gRPC server answers the HTTP/2 preface with its settings. Under TLS 1.3 a server
            # that refuses the client's certificate does so after the handshake: it closes the
            # connection instead (with an alert, or with none).
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            try:
                answer = tls.recv(1)
            except TimeoutError:
                return TlsDiagnosis.HANDSHAKE_OK, ""
            except (ssl.SSLError, ConnectionError) as exc:
                return TlsDiagnosis.CLIENT_CERTIFICATE_REFUSED, _refusal(target, exc)
            if not answer:
                return TlsDiagnosis.CLIENT_CERTIFICATE_REFUSED, _refusal(target, None)
            return TlsDiagnosis.HANDSHAKE_OK, ""
    except ssl.SSLCertVerificationError as exc:
        return TlsDiagnosis.SERVER_CERTIFICATE_UNTRUSTED, exc.verify_message or exc.reason or ""
    except ssl.SSLError as exc:
        reason = exc.reason or ""
        if any(name in reason.upper() for name in _CLIENT_REFUSALS):
            return TlsDiagnosis.CLIENT_CERTIFICATE_REFUSED, _refusal(target, exc)
        if "WRONG_VERSION_NUMBER" in reason.upper() or "RECORD_LAYER" in reason.upper():
            return TlsDiagnosis.NOT_TLS, reason
        return TlsDiagnosis.HANDSHAKE_OK, reason
    except OSError as exc:
        return TlsDiagnosis.UNREACHABLE, exc.strerror or type(exc).__name__


def _refusal(target: VerifierTarget, exc: BaseException | None) -> str:
    reason = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else ""
    if target.client_cert is None:
        what = "no client certificate was given (--client-cert and --client-key)"
    else:
        what = (
            f"it did not accept {target.client_cert} (not from its client CA, expired, or revoked)"
        )
    return what + (f"; TLS says {reason}" if reason else "")
