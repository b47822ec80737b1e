"""The verifier's side of c2sp.org/tlog-witness: submit each new checkpoint to the configured
witnesses and collect their cosignatures.

    pool = WitnessPool.from_config(config.log.witnesses, log_verifier, timeout_s=5)
    cosigned_note = pool.cosign(note, proof_between)   # note plus every cosignature obtained

For each witness the pool remembers the size it last cosigned (starting from 0). A 409 answer
tells it the witness's size; it retries once with a consistency proof from that size. A witness
that is down, slow, or refuses (a 422 or a 409 at the same size means it holds a checkpoint this
log contradicts) adds no cosignature; the failure is logged, and the next checkpoint tries again.
Cosignatures are verified before they are kept.
"""

from __future__ import annotations

import http.client
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from attest.checkpoint import (
    CosignatureVerifier,
    parse_cosigner_key,
    verify_checkpoint,
    verify_cosignatures,
)
from attest.errors import NoteError
from attest.note import NoteVerifier, split_note
from attest.witness import (
    MAX_REQUEST_BYTES,
    AddCheckpointRequest,
    Status,
    parse_size_response,
)
from verifier.config import WitnessConfig

log = logging.getLogger(__name__)

ProofSource = Callable[[int, int], list[bytes]]
"""(old size, new size) -> the RFC 6962 consistency proof between them."""


@dataclass
class _Witness:
    url: str
    verifier: CosignatureVerifier
    known_size: int = 0


class WitnessPool:
    """The witnesses of one log."""

    def __init__(
        self, witnesses: Sequence[_Witness], log_verifier: NoteVerifier, timeout_s: float
    ) -> None:
        self._witnesses = list(witnesses)
        self._log_verifier = log_verifier
        self._timeout_s = timeout_s

    @classmethod
    def from_config(
        cls, configs: Sequence[WitnessConfig], log_verifier: NoteVerifier, timeout_s: float
    ) -> WitnessPool:
        return cls(
            [_Witness(c.url, parse_cosigner_key(c.verifier_key)) for c in configs],
            log_verifier,
            timeout_s,
        )

    def __len__(self) -> int:
        return len(self._witnesses)

    @property
    def verifiers(self) -> list[CosignatureVerifier]:
        return [w.verifier for w in self._witnesses]

    def missing(self, note: str) -> list[str]:
        """The names of the witnesses whose valid cosignature ``note`` lacks."""
        _, cosignatures = verify_cosignatures(note, self._log_verifier, self.verifiers)
        present = {(c.name, c.key_hash) for c in cosignatures}
        return [
            w.verifier.name
            for w in self._witnesses
            if (w.verifier.name, w.verifier.key_hash) not in present
        ]

    def cosign(self, note: str, proof_between: ProofSource) -> str:
        """``note`` with the cosignatures of every witness that gives one (and lacked one)."""
        checkpoint = verify_checkpoint(note, self._log_verifier)
        missing = set(self.missing(note))
        lines: list[str] = []
        for witness in self._witnesses:
            if witness.verifier.name not in missing:
                continue
            line = self._ask(witness, note, checkpoint.tree_size, proof_between)
            if line is not None:
                lines.append(line)
        return note + "".join(lines)  # each line verified by _cosignature_line

    def _ask(
        self, witness: _Witness, note: str, size: int, proof_between: ProofSource
    ) -> str | None:
        name = witness.verifier.name
        for _attempt in range(2):
            old = witness.known_size
            if old > size:
                log.error(
                    "witness %s has cosigned size %d, beyond this log's %d: the log was rolled "
                    "back or forked; it will not cosign",
                    name,
                    old,
                    size,
                )
                return None
            proof = proof_between(old, size) if 0 < old < size else []
            body = AddCheckpointRequest(old, tuple(proof), note).to_bytes()
            status, response = self._post(witness.url + "/add-checkpoint", body)
            if status == Status.OK:
                line = self._cosignature_line(witness, note, response)
                if line is not None:
                    witness.known_size = size
                return line
            if status == Status.CONFLICT:
                try:
                    their_size = parse_size_response(response)
                except ValueError:
                    log.warning("witness %s sent a malformed 409", name)
                    return None
                if their_size == old:
                    log.error(
                        "witness %s REFUSED the checkpoint of size %d: it cosigned another root "
                        "at size %d (fork)",
                        name,
                        size,
                        old,
                    )
                    return None
                witness.known_size = their_size
                continue
            if status == Status.UNPROCESSABLE:
                log.error(
                    "witness %s REFUSED the checkpoint of size %d: not consistent with the size "
                    "%d it cosigned (fork)",
                    name,
                    size,
                    old,
                )
            elif status is not None:
                log.warning("witness %s answered %d: %s", name, status, _excerpt(response))
            return None
        return None

    def _cosignature_line(self, witness: _Witness, note: str, response: bytes) -> str | None:
        try:
            text = response.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        for line in text.splitlines(keepends=True):
            candidate = note + line
            try:
                split_note(candidate)
                _, cosignatures = verify_cosignatures(
                    candidate, self._log_verifier, [witness.verifier]
                )
            except NoteError:
                continue
            if cosignatures:
                return line
        log.warning("witness %s answered 200 without a valid cosignature", witness.verifier.name)
        return None

    def _post(self, url: str, body: bytes) -> tuple[int | None, bytes]:
        # http(s) URLs only: the config refuses any other scheme.
        request = urllib.request.Request(  # noqa: S310
            url, data=body, method="POST", headers={"Content-Type": "text/plain"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310
                return int(response.status), response.read(MAX_REQUEST_BYTES)
        except urllib.error.HTTPError as exc:
            try:
                return int(exc.code), exc.read(MAX_REQUEST_BYTES)
            except (OSError, http.client.HTTPException):
                return int(exc.code), b""
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            log.warning("witness %s unreachable: %s", url, _unreachable_reason(exc))
            return None, b""


def _unreachable_reason(exc: BaseException) -> str:
    """Why a witness could not be reached, in words (the operating system's, where it gave some)."""
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    if isinstance(reason, http.client.HTTPException):
        return "the answer was not HTTP"
    if isinstance(reason, str) and reason:
        return reason
    return "no connection"


def _excerpt(body: bytes) -> str:
    return body[:200].decode("utf-8", errors="replace").strip()
