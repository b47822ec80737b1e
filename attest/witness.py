"""The C2SP tlog-witness protocol (https://c2sp.org/tlog-witness): the add-checkpoint request and
the witness's decision, without any I/O.

A log asks a witness to cosign its new checkpoint, proving that it extends the last checkpoint
the witness cosigned for that log::

    body = AddCheckpointRequest(old_size=5, proof=(h1, h2), note=note).to_bytes()
    # the witness, holding its last cosigned checkpoint of the origin (None if never):
    request = AddCheckpointRequest.from_bytes(body)
    checkpoint = check_add_checkpoint(request, log_verifiers, last_cosigned)  # or refused
    # persist checkpoint, then answer with cosignature_lines(request.note, cosigner)

A request body is ``old <size>\\n``, at most 63 base64 proof lines, an empty line, then the
checkpoint note. Refusals carry the HTTP status the protocol assigns: 400 malformed or an old size
above the checkpoint's, 403 no signature from a trusted log key, 404 unknown origin, 409 an old
size other than the witness's (with the witness's size) or a root other than the one it cosigned
at the same size, 422 a consistency proof that does not verify.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from attest.checkpoint import Checkpoint, CosignatureSigner, verify_checkpoint
from attest.errors import (
    NoteError,
    NoteSignatureError,
    NoVerifiedSignatureError,
    PausewatchError,
    ProofError,
)
from attest.merkle import verify_consistency
from attest.note import NoteVerifier, Signature, split_note

MAX_PROOF_LINES = 63
"""The most consistency proof lines a request may carry."""

MAX_REQUEST_BYTES = 64 * 1024
"""The largest request body a witness reads (a checkpoint with 100 signatures fits easily)."""

SIZE_CONTENT_TYPE = "text/x.tlog.size"
"""The content type of a 409 response, whose body is the witness's latest size and a newline."""

_SIZE_TEXT = re.compile(r"0|[1-9][0-9]{0,19}")
_OLD_LINE = re.compile(r"old (0|[1-9][0-9]{0,19})")


class Status(IntEnum):
    """The HTTP statuses of add-checkpoint."""

    OK = 200
    BAD_REQUEST = 400
    FORBIDDEN = 403
    NOT_FOUND = 404
    CONFLICT = 409
    UNPROCESSABLE = 422


class WitnessRefusedError(PausewatchError):
    """A witness's refusal to cosign: the HTTP status, a line for its operator, for a 409 the
    size of the latest checkpoint it cosigned, and whether the request (signed by the log) is
    evidence that the log contradicts what was cosigned (a fork)."""

    def __init__(
        self,
        status: Status,
        reason: str,
        latest_size: int | None = None,
        *,
        contradicts: bool = False,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.latest_size = latest_size
        self.contradicts = contradicts


@dataclass(frozen=True, slots=True)
class AddCheckpointRequest:
    """An add-checkpoint request: the size the client believes the witness holds, a consistency
    proof from it, and the checkpoint note (signatures included)."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str

    def to_bytes(self) -> bytes:
        lines = [f"old {self.old_size}", *(base64.b64encode(h).decode() for h in self.proof), ""]
        return ("\n".join(lines) + "\n" + self.note).encode("utf-8")

    @classmethod
    def from_bytes(cls, body: bytes) -> AddCheckpointRequest:
        """Parse a request body strictly; raises :class:`WitnessRefusedError` 400 if malformed."""
        if len(body) > MAX_REQUEST_BYTES:
            raise WitnessRefusedError(Status.BAD_REQUEST, "request body is too large")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise WitnessRefusedError(Status.BAD_REQUEST, "request body is not UTF-8") from None
        head, blank, note = text.partition("\n\n")
        if not blank:
            raise WitnessRefusedError(
                Status.BAD_REQUEST, "request has no empty line before the note"
            )
        lines = head.split("\n")
        match = _OLD_LINE.fullmatch(lines[0])
        if match is None:
            raise WitnessRefusedError(
                Status.BAD_REQUEST, "first line is not 'old <size>' (decimal, no leading zeros)"
            )
        old_size = int(match.group(1))
        if old_size > 2**64 - 1:
            raise WitnessRefusedError(Status.BAD_REQUEST, "old size is beyond 2**64-1")
        proof_lines = lines[1:]
        if len(proof_lines) > MAX_PROOF_LINES:
            raise WitnessRefusedError(
                Status.BAD_REQUEST, f"more than {MAX_PROOF_LINES} consistency proof lines"
            )
        proof: list[bytes] = []
        for i, line in enumerate(proof_lines):
            try:
                digest = base64.b64decode(line.encode("ascii"), validate=True)
            except (ValueError, UnicodeEncodeError):
                raise WitnessRefusedError(
                    Status.BAD_REQUEST, f"proof line {i} is not base64"
                ) from None
            if len(digest) != 32 or base64.b64encode(digest).decode() != line:
                raise WitnessRefusedError(
                    Status.BAD_REQUEST, f"proof line {i} is not the base64 of a 32-byte hash"
                )
            proof.append(digest)
        return cls(old_size, tuple(proof), note)


def note_origin(note: str) -> str:
    """The first line of a note's text (unauthenticated: only to pick the key to verify with).

    Raises :class:`WitnessRefusedError` 400 for a malformed note."""
    try:
        text, _ = split_note(note)
    except NoteError as exc:
        raise WitnessRefusedError(Status.BAD_REQUEST, f"checkpoint: {exc.diagnostics()}") from None
    return text.split("\n", 1)[0]


def check_add_checkpoint(
    request: AddCheckpointRequest,
    log_verifiers: Mapping[str, NoteVerifier],
    last_cosigned: Checkpoint | None,
) -> Checkpoint:
    """The witness's checks, in the protocol's order; returns the checkpoint to cosign.

    ``log_verifiers`` maps each known origin to its log key; ``last_cosigned`` is the latest
    checkpoint this witness cosigned for the request's origin (None if none). The caller must
    make this check and the persisting of its result one atomic step. Raises
    :class:`WitnessRefusedError`.
    """
    origin = note_origin(request.note)
    verifier = log_verifiers.get(origin)
    if verifier is None:
        raise WitnessRefusedError(Status.NOT_FOUND, f"unknown log origin {origin!r}")
    try:
        checkpoint = verify_checkpoint(request.note, verifier)
    except (NoVerifiedSignatureError, NoteSignatureError):
        raise WitnessRefusedError(
            Status.FORBIDDEN, "the checkpoint has no valid signature from the log's key"
        ) from None
    except NoteError as exc:
        raise WitnessRefusedError(Status.BAD_REQUEST, f"checkpoint: {exc.diagnostics()}") from None
    if request.old_size > checkpoint.tree_size:
        raise WitnessRefusedError(
            Status.BAD_REQUEST,
            f"old size {request.old_size} is above the checkpoint's size {checkpoint.tree_size}",
        )
    latest_size = 0 if last_cosigned is None else last_cosigned.tree_size
    if request.old_size != latest_size:
        raise WitnessRefusedError(
            Status.CONFLICT,
            f"old size {request.old_size} is not the size {latest_size} last cosigned",
            latest_size,
        )
    if last_cosigned is None or latest_size == 0:
        if request.proof:
            raise WitnessRefusedError(Status.UNPROCESSABLE, "the proof from size 0 must be empty")
        return checkpoint
    if latest_size == checkpoint.tree_size:
        if request.proof:
            raise WitnessRefusedError(
                Status.UNPROCESSABLE, "the proof between equal sizes must be empty"
            )
        if checkpoint.root_hash != last_cosigned.root_hash:
            raise WitnessRefusedError(
                Status.CONFLICT,
                f"a checkpoint of size {latest_size} with another root was cosigned (fork)",
                latest_size,
                contradicts=True,
            )
        return checkpoint
    try:
        verify_consistency(
            latest_size,
            checkpoint.tree_size,
            request.proof,
            last_cosigned.root_hash,
            checkpoint.root_hash,
        )
    except ProofError as exc:
        raise WitnessRefusedError(
            Status.UNPROCESSABLE,
            f"the checkpoint of size {checkpoint.tree_size} does not extend the one of size "
            f"{latest_size} last cosigned: {exc.diagnostics()}",
            contradicts=True,
        ) from None
    return checkpoint


def cosignature_lines(note: str, cosigner: CosignatureSigner) -> str:
    """The response body of a cosigned request: the witness's signature line(s)."""
    text, _ = split_note(note)
    signature = cosigner.sign(text.encode("utf-8"))
    return Signature(cosigner.name, cosigner.key_hash, signature).to_line()


def parse_size_response(body: bytes) -> int:
    """The witness's size from a 409 response body; ValueError if it is not ``<decimal>\\n``."""
    text = body.decode("ascii", errors="replace")
    if not text.endswith("\n") or not _SIZE_TEXT.fullmatch(text[:-1]):
        raise ValueError("a 409 response body is not a decimal size and a newline")
    return int(text[:-1])
