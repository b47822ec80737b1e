"""Errors of the verifier's request handling, beyond the evidence errors of :mod:`attest.errors`.

Each maps to one gRPC status in :mod:`verifier.server.servicers` (the one table); their messages are
written for the remote peer and never carry internal detail.
"""

from __future__ import annotations

from attest.errors import PausewatchError

EXCERPT_CHARS = 48


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """A caller's string as a message may show it: escaped (no CR, LF, NUL or other control
    character reaches a status detail or a log line) and cut to ``limit`` characters, quoted."""
    cut = text[:limit]
    shown = repr(cut)
    return shown if len(text) <= limit else f"{shown[:-1]}...{shown[-1]} ({len(text)} characters)"


class RequestError(PausewatchError):
    """A request the verifier refuses."""


class InvalidRequestError(RequestError):
    """The request is malformed or its arguments are out of range."""


class NotFoundError(RequestError):
    """The lab, node or entry asked for does not exist."""


class ConflictError(RequestError):
    """The request conflicts with what is on record (an identity enrolled under another key)."""


class PermissionDeniedError(RequestError):
    """The signer is not allowed to do this (not the lab's operator key)."""


class UnavailableError(RequestError):
    """A transient failure: the request may be retried."""


class ResourceExhaustedError(RequestError):
    """The caller holds as many streams as its limits allow (docs/verifier.md, "Limits")."""


class IdleStreamError(UnavailableError):
    """A stream sent nothing for the idle timeout; the client may reconnect."""
