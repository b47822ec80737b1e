"""Why talking to the verifier failed, in kinds an operator can act on, and whether it heals.

    kind = classify_rpc_error("UNAVAILABLE", "failed to connect ...: Connection refused")
    kind is FailureKind.REFUSED; kind.heals is True; kind.fix names what to check

gRPC reports nearly every connection failure as UNAVAILABLE; its details say more (the C core's
own words). A wrong CA, a DNS typo and a closed port are different mistakes with different fixes,
and the first two do not heal by waiting: they are logged at error level, the others at warning
(they are what an outage looks like). The kinds are the ``kind`` label of
``pausewatch_agent_ship_errors_total`` and of the ``shipping failed`` log line.
"""

from __future__ import annotations

import logging
from enum import StrEnum

import grpc


class FailureKind(StrEnum):
    TLS = "tls"
    DNS = "dns"
    REFUSED = "refused"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    REJECTED = "rejected"
    CONFIG = "config"
    STREAM_CLOSED = "stream_closed"
    PROTOCOL = "protocol"

    @property
    def heals(self) -> bool:
        """Whether waiting (the verifier coming back) can fix it; if not, a person must."""
        return self not in _NEEDS_A_PERSON

    @property
    def log_level(self) -> int:
        return logging.WARNING if self.heals else logging.ERROR

    @property
    def fix(self) -> str:
        return _FIXES[self]


_NEEDS_A_PERSON = frozenset(
    {FailureKind.TLS, FailureKind.DNS, FailureKind.REJECTED, FailureKind.CONFIG}
)

_FIXES = {
    FailureKind.TLS: "the TLS handshake failed: check verifier.ca_cert is the CA that signed the "
    "verifier's certificate, server_name_override matches its name, and (mutual TLS) "
    "client_cert/client_key",
    FailureKind.DNS: "the verifier's host name does not resolve: check verifier.address for a "
    "typo and the node's DNS (resolv.conf)",
    FailureKind.REFUSED: "nothing listens at verifier.address: check the port, that the "
    "verifier runs, and firewalls; the agent keeps spooling and retries",
    FailureKind.UNAVAILABLE: "the verifier cannot be reached or is busy; the agent keeps "
    "spooling and retries",
    FailureKind.TIMEOUT: "the verifier did not answer in verifier.rpc_timeout_s; check the "
    "network path; the agent retries",
    FailureKind.REJECTED: "the verifier refused the node: is it enrolled with this key, for "
    "this lab, and not revoked? (pausewatch-agent status; the operator's records)",
    FailureKind.CONFIG: "fix the file named in the message (pausewatch-agent check)",
    FailureKind.STREAM_CLOSED: "the verifier closed the stream (a restart?); the agent retries",
    FailureKind.PROTOCOL: "the verifier answered out of protocol; report it to the regulator",
}

_REJECTING_CODES = frozenset(
    {
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "INVALID_ARGUMENT",
        "FAILED_PRECONDITION",
        "NOT_FOUND",
        "UNIMPLEMENTED",
    }
)
_TLS_WORDS = ("handshake failed", "ssl_error", "certificate", "tsi_")
_DNS_WORDS = ("dns resolution failed", "errors resolving", "domain name not found", "lookup")


def classify_rpc_error(code_name: str, details: str) -> FailureKind:
    """The kind of a failed call from its status code name and gRPC's details text."""
    if code_name in _REJECTING_CODES:
        return FailureKind.REJECTED
    if code_name in ("DEADLINE_EXCEEDED", "CANCELLED"):  # CANCELLED: our response timer fired
        return FailureKind.TIMEOUT
    text = details.lower()
    if any(word in text for word in _TLS_WORDS):
        return FailureKind.TLS
    if any(word in text for word in _DNS_WORDS):
        return FailureKind.DNS
    if "connection refused" in text:
        return FailureKind.REFUSED
    return FailureKind.UNAVAILABLE


def rpc_error_text(exc: grpc.RpcError) -> tuple[str, str]:
    """(status code name, details) of a failed call; grpc's own errors carry both."""
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    name = code().name if callable(code) else "UNKNOWN"
    text = details() if callable(details) else ""
    return str(name), str(text or "")
