"""C2SP log checkpoints (https://c2sp.org/tlog-checkpoint) and witness cosignatures.

A checkpoint is the signed statement "the log named <origin> has <tree size> leaves and this root
hash", as the body of a signed note whose key name is the origin::

    checkpoint = Checkpoint("regulator.example/pausewatch", tree_size=7, root_hash=root)
    note = sign_checkpoint(checkpoint, log_signer)
    assert verify_checkpoint(note, log_signer.verifier()) == checkpoint

Witnesses cosign checkpoints (https://c2sp.org/tlog-cosignature, Ed25519, signature type 0x04):
a cosignature signs "cosignature/v1\\ntime <t>\\n" followed by the checkpoint text, and carries the
8-byte timestamp before the signature. :func:`cosign_checkpoint` adds one to a verified note and
:func:`verify_cosignatures` reports the ones from known witnesses, so that the caller can apply its
quorum policy.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from attest.errors import (
    ForkError,
    KeyFileError,
    NoteError,
    NoVerifiedSignatureError,
    ProofError,
    RollbackError,
    WitnessQuorumError,
)
from attest.merkle import verify_consistency
from attest.note import (
    ED25519_KEY_SIZE,
    ED25519_SIGNATURE_SIZE,
    NoteSigner,
    NoteVerifier,
    VerifierKey,
    add_signatures,
    is_valid_key_name,
    key_hash,
    open_note,
    sign_note,
)

ROOT_HASH_SIZE = 32
MAX_TREE_SIZE = 2**64 - 1
"""Tree sizes are unsigned 64-bit integers."""

ALG_COSIGNATURE_V1 = 0x04
"""Signature type byte of timestamped Ed25519 witness cosignatures."""

MAX_TIMESTAMP_S = 2**63 - 1

_COSIGNATURE_HEADER = b"cosignature/v1\n"
_TIMESTAMP_SIZE = 8
_TREE_SIZE_TEXT = re.compile(r"0|[1-9][0-9]{0,19}")
_FORBIDDEN_LINE_CHARS = re.compile(r"[\x00-\x1f]")


def _line_problem(line: str, what: str) -> str | None:
    if not line:
        return f"{what} is empty"
    if _FORBIDDEN_LINE_CHARS.search(line):
        return f"{what} contains a newline or an ASCII control character"
    return None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: origin, tree size and root hash, plus optional extension lines.

    The constructor checks every field (ValueError), so :meth:`to_text` always yields a valid body.
    """

    origin: str
    tree_size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problem = _line_problem(self.origin, "origin")
        if problem:
            raise ValueError(problem)
        if isinstance(self.tree_size, bool) or not 0 <= self.tree_size <= MAX_TREE_SIZE:
            raise ValueError(f"tree size must be in 0..2**64-1, got {self.tree_size!r}")
        if len(self.root_hash) != ROOT_HASH_SIZE:
            raise ValueError(f"root hash is {len(self.root_hash)} bytes, expected {ROOT_HASH_SIZE}")
        # Accept any sequence of lines, keep an immutable (hashable) tuple.
        object.__setattr__(self, "extensions", tuple(self.extensions))
        for i, line in enumerate(self.extensions):
            problem = _line_problem(line, f"extension line {i}")
            if problem:
                raise ValueError(problem)

    def to_text(self) -> str:
        """The note text: origin, decimal size, base64 root, extension lines, each ending "\\n"."""
        lines = [
            self.origin,
            str(self.tree_size),
            base64.b64encode(self.root_hash).decode("ascii"),
            *self.extensions,
        ]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body strictly; raises :class:`NoteError`.

        Only authenticated text should reach this: see :func:`verify_checkpoint`.
        """
        if not text.endswith("\n"):
            raise NoteError("checkpoint text does not end in a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError("checkpoint text has fewer than three lines")
        origin, size_text, root_text, *extensions = lines
        if not _TREE_SIZE_TEXT.fullmatch(size_text):
            raise NoteError("checkpoint tree size is not a decimal without leading zeros")
        try:
            root_hash = base64.b64decode(root_text.encode("ascii"), validate=True)
        except ValueError:
            raise NoteError("checkpoint root hash is not base64") from None
        if base64.b64encode(root_hash).decode("ascii") != root_text:
            raise NoteError("checkpoint root hash is not canonical base64")
        try:
            return cls(origin, int(size_text), root_hash, tuple(extensions))
        except ValueError as exc:
            raise NoteError(f"invalid checkpoint: {exc}") from None


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> str:
    """The checkpoint as a note signed by the log's key, whose name must be the origin."""
    if signer.name != checkpoint.origin:
        raise ValueError(
            f"log key name {signer.name!r} differs from the checkpoint origin {checkpoint.origin!r}"
        )
    return sign_note(checkpoint.to_text(), [signer])


def verify_checkpoint(note: str | bytes, verifier: NoteVerifier) -> Checkpoint:
    """Verify the log's signature on a checkpoint note and parse its body.

    Raises the :func:`~attest.note.open_note` errors, or :class:`NoteError` for a body that is not
    a checkpoint or whose origin is not the log key's name. Other signatures are ignored.
    """
    opened = open_note(note, [verifier])
    checkpoint = Checkpoint.from_text(opened.text)
    if checkpoint.origin != verifier.name:
        raise NoteError(
            f"checkpoint origin {checkpoint.origin!r} is not the log key name {verifier.name!r}"
        )
    return checkpoint


# --- Witness cosignatures (tlog-cosignature, Ed25519) --------------------------------------------


def cosignature_message(checkpoint_text: bytes, timestamp_s: int) -> bytes:
    """The bytes an Ed25519 cosignature signs for a checkpoint text at a POSIX time."""
    if not 0 <= timestamp_s <= MAX_TIMESTAMP_S:
        raise ValueError(f"cosignature timestamp {timestamp_s} is outside 0..2**63-1")
    return _COSIGNATURE_HEADER + b"time %d\n" % timestamp_s + checkpoint_text


def _cosigner_key_hash(name: str, public_key: bytes) -> int:
    return key_hash(name, bytes([ALG_COSIGNATURE_V1]) + public_key)


@dataclass(frozen=True, slots=True)
class CosignatureVerifier:
    """A :class:`~attest.note.NoteVerifier` for a witness's Ed25519 cosignatures."""

    name: str
    public_key: bytes
    key_hash: int = field(init=False)
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not is_valid_key_name(self.name):
            raise ValueError(f"invalid key name {self.name!r}")
        if len(self.public_key) != ED25519_KEY_SIZE:
            raise ValueError(f"an Ed25519 public key is {ED25519_KEY_SIZE} bytes")
        object.__setattr__(self, "key_hash", _cosigner_key_hash(self.name, self.public_key))
        object.__setattr__(self, "_key", Ed25519PublicKey.from_public_bytes(self.public_key))

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (timestamp || Ed25519 signature) cosigns ``message``."""
        if len(signature) != _TIMESTAMP_SIZE + ED25519_SIGNATURE_SIZE:
            return False
        timestamp_s = int.from_bytes(signature[:_TIMESTAMP_SIZE], "big")
        if timestamp_s > MAX_TIMESTAMP_S:
            return False
        try:
            self._key.verify(signature[_TIMESTAMP_SIZE:], cosignature_message(message, timestamp_s))
        except InvalidSignature:
            return False
        return True

    def to_vkey(self) -> str:
        """The verifier key text, with signature type 0x04."""
        return VerifierKey(self.name, ALG_COSIGNATURE_V1, self.public_key).to_text()


def parse_cosigner_key(vkey: str) -> CosignatureVerifier:
    """Parse a witness verifier key ``<name>+<hash>+<base64(0x04 || public key)>``.

    Raises :class:`KeyFileError`.
    """
    parsed = VerifierKey.from_text(vkey)
    if parsed.algorithm != ALG_COSIGNATURE_V1:
        raise KeyFileError(f"key algorithm 0x{parsed.algorithm:02x} is not a cosignature/v1 key")
    if len(parsed.public_key) != ED25519_KEY_SIZE:
        raise KeyFileError(f"a cosigner key must hold {ED25519_KEY_SIZE} bytes")
    try:
        return CosignatureVerifier(parsed.name, parsed.public_key)
    except ValueError as exc:
        raise KeyFileError("cosigner key is not a valid Ed25519 public key") from exc


def _now_s() -> int:
    return int(time.time())


class CosignatureSigner:
    """A :class:`~attest.note.NoteSigner` that makes timestamped witness cosignatures.

    ``clock`` gives the POSIX time in seconds written into each cosignature.
    """

    __slots__ = ("_clock", "_key_hash", "_name", "_private_key", "_public_key")

    def __init__(
        self, name: str, private_key: Ed25519PrivateKey, clock: Callable[[], int] = _now_s
    ) -> None:
        if not is_valid_key_name(name):
            raise ValueError(f"invalid key name {name!r}")
        self._name = name
        self._private_key = private_key
        self._public_key = private_key.public_key().public_bytes_raw()
        self._key_hash = _cosigner_key_hash(name, self._public_key)
        self._clock = clock

    @property
    def name(self) -> str:
        """The witness's key name."""
        return self._name

    @property
    def key_hash(self) -> int:
        """The key hash (over signature type 0x04)."""
        return self._key_hash

    def verifier(self) -> CosignatureVerifier:
        """The matching verifier."""
        return CosignatureVerifier(self._name, self._public_key)

    def sign(self, message: bytes) -> bytes:
        """Timestamp (8 bytes, big-endian) || Ed25519 signature over the cosigned message."""
        timestamp_s = self._clock()
        signature = self._private_key.sign(cosignature_message(message, timestamp_s))
        return timestamp_s.to_bytes(_TIMESTAMP_SIZE, "big") + signature

    def __repr__(self) -> str:
        return f"CosignatureSigner({self._name}+{self._key_hash:08x})"


@dataclass(frozen=True, slots=True)
class Cosignature:
    """A verified witness cosignature: who, and the time it states."""

    name: str
    key_hash: int
    timestamp_s: int


def cosign_checkpoint(note: str, log_verifier: NoteVerifier, cosigner: CosignatureSigner) -> str:
    """Verify the log's signature on a checkpoint note, then add ``cosigner``'s cosignature.

    A witness must also check consistency with the last checkpoint it cosigned; that is the
    caller's job (it needs the witness's state and a consistency proof).
    """
    verify_checkpoint(note, log_verifier)
    return add_signatures(note, [cosigner])


def verify_cosignatures(
    note: str | bytes, log_verifier: NoteVerifier, cosigners: Iterable[CosignatureVerifier]
) -> tuple[Checkpoint, tuple[Cosignature, ...]]:
    """Verify a checkpoint's log signature and the cosignatures of known witnesses.

    Returns the checkpoint and one :class:`Cosignature` per known witness that cosigned it
    (possibly none: the quorum is the caller's policy). A bad cosignature from a known witness
    raises :class:`~attest.errors.NoteSignatureError`; a note without the log's signature raises
    :class:`NoVerifiedSignatureError`.
    """
    witnesses = list(cosigners)
    opened = open_note(note, [log_verifier, *witnesses])
    log_identity = (log_verifier.name, log_verifier.key_hash)
    if all((sig.name, sig.key_hash) != log_identity for sig in opened.verified):
        raise NoVerifiedSignatureError("checkpoint has no signature from the log's key")
    checkpoint = Checkpoint.from_text(opened.text)
    if checkpoint.origin != log_verifier.name:
        raise NoteError(
            f"checkpoint origin {checkpoint.origin!r} is not the log key name {log_verifier.name!r}"
        )
    witness_identities = {(w.name, w.key_hash) for w in witnesses}
    cosignatures = tuple(
        Cosignature(sig.name, sig.key_hash, int.from_bytes(sig.signature[:_TIMESTAMP_SIZE], "big"))
        for sig in opened.verified
        if (sig.name, sig.key_hash) in witness_identities
    )
    return checkpoint, cosignatures


def verify_witness_quorum(
    note: str | bytes,
    log_verifier: NoteVerifier,
    witnesses: Sequence[CosignatureVerifier],
    threshold: int,
) -> tuple[Checkpoint, tuple[Cosignature, ...]]:
    """Verify a checkpoint and require valid cosignatures from at least ``threshold`` of
    ``witnesses``; raises :class:`WitnessQuorumError` naming the witnesses that did not cosign.

    ``threshold`` 0 with no witnesses checks the log signature only.
    """
    if not 0 <= threshold <= len(witnesses):
        raise ValueError(f"witness threshold {threshold} is not in 0..{len(witnesses)}")
    checkpoint, cosignatures = verify_cosignatures(note, log_verifier, witnesses)
    if len(cosignatures) < threshold:
        present = {(c.name, c.key_hash) for c in cosignatures}
        missing = [w.name for w in witnesses if (w.name, w.key_hash) not in present]
        raise WitnessQuorumError(
            f"checkpoint of tree size {checkpoint.tree_size} has {len(cosignatures)} of the "
            f"{threshold} witness cosignatures required; missing: {', '.join(missing)}"
        )
    return checkpoint, cosignatures


def verify_extends(saved: Checkpoint, current: Checkpoint, proof: Sequence[bytes]) -> None:
    """Check that ``current`` extends ``saved`` (an earlier checkpoint of the same log) with an
    RFC 6962 consistency proof between them.

    Raises :class:`RollbackError` if ``current`` is smaller, :class:`ForkError` if the origins
    differ, the sizes are equal but the roots are not, or the proof does not join the saved root
    to the current one. Each message names both sizes and roots.
    """
    old = f"size {saved.tree_size} (root {saved.root_hash.hex()})"
    new = f"size {current.tree_size} (root {current.root_hash.hex()})"
    if saved.origin != current.origin:
        raise ForkError(
            f"the checkpoints are of different logs: {saved.origin!r} and {current.origin!r}"
        )
    if current.tree_size < saved.tree_size:
        raise RollbackError(
            f"ROLLBACK: the log is at {new}, smaller than the saved checkpoint of {old}: "
            f"{saved.tree_size - current.tree_size} entries have disappeared"
        )
    if current.tree_size == saved.tree_size:
        if current.root_hash != saved.root_hash:
            raise ForkError(
                f"FORK: two checkpoints of tree size {saved.tree_size} with different roots: "
                f"saved {saved.root_hash.hex()}, now {current.root_hash.hex()}"
            )
        return
    if saved.tree_size == 0:
        return  # the empty tree is a prefix of every tree
    try:
        verify_consistency(
            saved.tree_size, current.tree_size, proof, saved.root_hash, current.root_hash
        )
    except ProofError as exc:
        raise ForkError(
            f"FORK: the log at {new} does not extend the saved checkpoint of {old}: "
            f"{exc.diagnostics()}"
        ) from None
