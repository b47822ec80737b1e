"""C2SP signed notes (https://c2sp.org/signed-note): text signed by one or more named keys.

Log checkpoints are signed notes. A note is UTF-8 text ending in a newline, a blank line, then one
line per signature, ``— <key name> base64(4-byte key hash || signature)``::

    signer = parse_signer_key("PRIVATE+KEY+example.com/log+1a2b3c4d+AY...")
    note = sign_note("example.com/log\\n7\\nq1...=\\n", [signer])
    verifier = parse_verifier_key("example.com/log+1a2b3c4d+AR...")
    text, verified, unverified = open_note(note, [verifier])

:func:`open_note` follows the reference implementation (golang.org/x/mod/sumdb/note): a malformed
note raises :class:`~attest.errors.MalformedNoteError`, a bad signature from a known key
:class:`~attest.errors.NoteSignatureError`, and a note with no signature from a known key
:class:`~attest.errors.NoVerifiedSignatureError`. Signatures from unknown keys, including keys of
algorithms this module does not implement, are returned unverified and otherwise ignored.

Keys are text. A verifier key is ``<name>+<key hash, 8 hex>+base64(algorithm || public key)`` and
a signer key ``PRIVATE+KEY+<name>+<key hash>+base64(algorithm || seed)``, where the key hash is the
first four bytes of SHA-256(name || "\\n" || algorithm || public key). Only Ed25519 (algorithm
0x01) signs here; other algorithms (such as the witness cosignatures of :mod:`attest.checkpoint`)
plug in through the :class:`NoteSigner` and :class:`NoteVerifier` protocols.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from attest.errors import (
    KeyFileError,
    MalformedNoteError,
    NoteSignatureError,
    NoVerifiedSignatureError,
)

ALG_ED25519 = 0x01
"""Signature type byte of plain Ed25519 note signatures."""

MAX_SIGNATURES = 100
"""The most signature lines :func:`open_note` reads; a note with more is malformed."""

FOREIGN_KEY_ID_ALGORITHMS = {0x02: "ECDSA", 0x05: "RFC 6962 tree head signature"}
"""Signature types whose key ID is not derived from the key name (c2sp.org/signed-note): it is
a hash of the DER public key, so :meth:`VerifierKey.from_text` cannot check it."""

ED25519_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64

_SIGNATURE_PREFIX = "\u2014 "  # em dash, space
_PRIVATE_KEY_PREFIX = "PRIVATE+KEY+"
_KEY_HASH_TEXT = re.compile(r"[0-9a-f]{8}")
# ASCII control characters other than newline; the note format forbids them.
_FORBIDDEN_NOTE_CHARS = re.compile(r"[\x00-\x09\x0b-\x1f]")


def _is_name_char(char: str) -> bool:
    code = ord(char)
    return not (
        char.isspace()
        or char == "+"
        or code < 0x20
        or 0x7F <= code < 0xA0
        or 0xD800 <= code < 0xE000  # lone surrogates cannot be encoded
    )


def is_valid_key_name(name: str) -> bool:
    """Whether ``name`` can name a key: non-empty, no '+', no Unicode space, no control char."""
    return bool(name) and all(_is_name_char(char) for char in name)


def key_hash(name: str, key: bytes) -> int:
    """The 32-bit key hash of a key: SHA-256(name || "\\n" || key)[:4], big-endian.

    ``key`` is the algorithm byte followed by the public key.
    """
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + key).digest()
    return int.from_bytes(digest[:4], "big")


def _decode_base64(text: str) -> bytes | None:
    """Standard, padded, canonical base64 (the only form a signer produces), else None."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except ValueError:  # binascii.Error and UnicodeEncodeError are both ValueErrors
        return None
    if base64.b64encode(raw).decode("ascii") != text:
        return None
    return raw


def _encode_base64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# --- Keys ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A parsed verifier key of any algorithm: its name, algorithm byte and public key bytes."""

    name: str
    algorithm: int
    public_key: bytes

    def __post_init__(self) -> None:
        if not is_valid_key_name(self.name):
            raise ValueError(f"invalid key name {self.name!r}")
        if not 0 <= self.algorithm <= 0xFF:
            raise ValueError(f"algorithm must be one byte, got {self.algorithm}")
        if not self.public_key:
            raise ValueError("public key is empty")

    @property
    def key_hash(self) -> int:
        """The key hash that identifies this key in signature lines."""
        return key_hash(self.name, bytes([self.algorithm]) + self.public_key)

    def to_text(self) -> str:
        """The ``<name>+<hash>+<base64>`` form."""
        encoded = _encode_base64(bytes([self.algorithm]) + self.public_key)
        return f"{self.name}+{self.key_hash:08x}+{encoded}"

    @classmethod
    def from_text(cls, vkey: str) -> VerifierKey:
        """Parse a verifier key, checking its syntax and its key hash.

        Raises :class:`KeyFileError`: for ECDSA (0x02) and RFC 6962 (0x05) keys "unsupported
        algorithm" (their key ID follows another rule); for a key of any other algorithm whose
        hash is not SHA-256(name || "\\n" || algorithm || key)[:4], "hash does not match". The
        caller checks the algorithm it needs and the key's length.
        """
        # The base64 part may itself contain '+', so split at most twice.
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise KeyFileError("verifier key is not <name>+<hash>+<key>")
        name, hash_text, key_text = parts
        if not is_valid_key_name(name):
            raise KeyFileError("verifier key has an invalid key name")
        if not _KEY_HASH_TEXT.fullmatch(hash_text):
            raise KeyFileError("verifier key hash is not 8 lowercase hex digits")
        key = _decode_base64(key_text)
        if key is None:
            raise KeyFileError("verifier key material is not canonical base64")
        if len(key) < 2:
            raise KeyFileError("verifier key holds no key material")
        unsupported = FOREIGN_KEY_ID_ALGORITHMS.get(key[0])
        if unsupported is not None:
            # Their key ID is not SHA-256(name || "\n" || key)[:4], so the hash cannot be checked
            # here: the key may be valid, it is just not one this implementation can use.
            raise KeyFileError(
                f"unsupported algorithm 0x{key[0]:02x} ({unsupported}): this implementation "
                "verifies Ed25519 (0x01) and cosignature/v1 (0x04) keys only"
            )
        if key_hash(name, key) != int(hash_text, 16):
            raise KeyFileError("verifier key hash does not match its name and key")
        return cls(name=name, algorithm=key[0], public_key=key[1:])


class NoteVerifier(Protocol):
    """Checks one key's signatures on notes."""

    @property
    def name(self) -> str:
        """The key name in signature lines."""
        ...

    @property
    def key_hash(self) -> int:
        """The key hash in signature lines."""
        ...

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (without the key hash) is valid for the note text ``message``."""
        ...


class NoteSigner(Protocol):
    """Signs notes with one key."""

    @property
    def name(self) -> str:
        """The key name in signature lines."""
        ...

    @property
    def key_hash(self) -> int:
        """The key hash in signature lines."""
        ...

    def sign(self, message: bytes) -> bytes:
        """The signature (without the key hash) over the note text ``message``."""
        ...


@dataclass(frozen=True, slots=True)
class Ed25519NoteVerifier:
    """A :class:`NoteVerifier` for an Ed25519 (algorithm 0x01) key."""

    name: str
    public_key: bytes
    key_hash: int = field(init=False)
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not is_valid_key_name(self.name):
            raise ValueError(f"invalid key name {self.name!r}")
        if len(self.public_key) != ED25519_KEY_SIZE:
            raise ValueError(
                f"an Ed25519 public key is {ED25519_KEY_SIZE} bytes, got {len(self.public_key)}"
            )
        object.__setattr__(
            self, "key_hash", key_hash(self.name, bytes([ALG_ED25519]) + self.public_key)
        )
        object.__setattr__(self, "_key", Ed25519PublicKey.from_public_bytes(self.public_key))

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's Ed25519 signature over ``message``."""
        if len(signature) != ED25519_SIGNATURE_SIZE:
            return False
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def to_vkey(self) -> str:
        """The verifier key text."""
        return format_verifier_key(self.name, self.public_key)


class Ed25519NoteSigner:
    """A :class:`NoteSigner` holding an Ed25519 private key. Its repr shows no key material."""

    __slots__ = ("_key_hash", "_name", "_private_key", "_public_key")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not is_valid_key_name(name):
            raise ValueError(f"invalid key name {name!r}")
        self._name = name
        self._private_key = private_key
        self._public_key = private_key.public_key().public_bytes_raw()
        self._key_hash = key_hash(name, bytes([ALG_ED25519]) + self._public_key)

    @classmethod
    def generate(cls, name: str) -> Ed25519NoteSigner:
        """A signer with a fresh key from the operating system's CSPRNG."""
        return cls(name, Ed25519PrivateKey.generate())

    @property
    def name(self) -> str:
        """The key name."""
        return self._name

    @property
    def key_hash(self) -> int:
        """The key hash."""
        return self._key_hash

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key."""
        return self._public_key

    def verifier(self) -> Ed25519NoteVerifier:
        """The matching verifier."""
        return Ed25519NoteVerifier(self._name, self._public_key)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature over ``message``."""
        return self._private_key.sign(message)

    def to_skey(self) -> str:
        """The signer key text. It holds the private key: store it as a secret."""
        return format_signer_key(self._name, self._private_key.private_bytes_raw())

    def __repr__(self) -> str:
        return f"Ed25519NoteSigner({self._name}+{self._key_hash:08x})"


def parse_verifier_key(vkey: str) -> Ed25519NoteVerifier:
    """Parse an Ed25519 verifier key ``<name>+<hash>+<base64(0x01 || public key)>``.

    Raises :class:`KeyFileError` for anything else, an unknown algorithm included.
    """
    parsed = VerifierKey.from_text(vkey)
    if parsed.algorithm != ALG_ED25519:
        raise KeyFileError(f"verifier key algorithm 0x{parsed.algorithm:02x} is not Ed25519")
    if len(parsed.public_key) != ED25519_KEY_SIZE:
        raise KeyFileError(f"an Ed25519 verifier key must hold {ED25519_KEY_SIZE} bytes")
    try:
        return Ed25519NoteVerifier(parsed.name, parsed.public_key)
    except ValueError as exc:
        raise KeyFileError("verifier key is not a valid Ed25519 public key") from exc


def format_verifier_key(name: str, public_key: bytes) -> str:
    """The verifier key text for an Ed25519 public key; ValueError for a bad name or length."""
    if len(public_key) != ED25519_KEY_SIZE:
        raise ValueError(f"an Ed25519 public key is {ED25519_KEY_SIZE} bytes")
    return VerifierKey(name, ALG_ED25519, public_key).to_text()


def parse_signer_key(skey: str) -> Ed25519NoteSigner:
    """Parse ``PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>``; :class:`KeyFileError` if bad.

    The key hash is that of the *public* key derived from the seed. Messages never contain key
    material.
    """
    if not skey.startswith(_PRIVATE_KEY_PREFIX):
        raise KeyFileError("signer key does not start with PRIVATE+KEY+")
    parts = skey[len(_PRIVATE_KEY_PREFIX) :].split("+", 2)
    if len(parts) != 3:
        raise KeyFileError("signer key is not PRIVATE+KEY+<name>+<hash>+<key>")
    name, hash_text, key_text = parts
    if not is_valid_key_name(name):
        raise KeyFileError("signer key has an invalid key name")
    if not _KEY_HASH_TEXT.fullmatch(hash_text):
        raise KeyFileError("signer key hash is not 8 lowercase hex digits")
    key = _decode_base64(key_text)
    if not key:
        raise KeyFileError("signer key material is not canonical base64, or is empty")
    if key[0] != ALG_ED25519:
        raise KeyFileError(f"signer key algorithm 0x{key[0]:02x} is not Ed25519")
    if len(key) != 1 + ED25519_KEY_SIZE:
        raise KeyFileError(f"an Ed25519 signer key must hold a {ED25519_KEY_SIZE}-byte seed")
    signer = Ed25519NoteSigner(name, Ed25519PrivateKey.from_private_bytes(key[1:]))
    if signer.key_hash != int(hash_text, 16):
        raise KeyFileError("signer key hash does not match its name and public key")
    return signer


def format_signer_key(name: str, seed: bytes) -> str:
    """The signer key text for a 32-byte Ed25519 seed. The result is a secret."""
    if len(seed) != ED25519_KEY_SIZE:
        raise ValueError(f"an Ed25519 seed is {ED25519_KEY_SIZE} bytes")
    signer = Ed25519NoteSigner(name, Ed25519PrivateKey.from_private_bytes(seed))
    encoded = _encode_base64(bytes([ALG_ED25519]) + seed)
    return f"{_PRIVATE_KEY_PREFIX}{name}+{signer.key_hash:08x}+{encoded}"


def generate_signer_key(name: str) -> tuple[str, str]:
    """A fresh Ed25519 key as (signer key text, verifier key text)."""
    signer = Ed25519NoteSigner.generate(name)
    return signer.to_skey(), signer.verifier().to_vkey()


# --- Notes ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signature:
    """One signature line of a note: key name, key hash, and the signature bytes after the hash."""

    name: str
    key_hash: int
    signature: bytes

    def to_line(self) -> str:
        """The signature line, newline included."""
        encoded = _encode_base64(self.key_hash.to_bytes(4, "big") + self.signature)
        return f"{_SIGNATURE_PREFIX}{self.name} {encoded}\n"


class OpenedNote(NamedTuple):
    """What :func:`open_note` returns: the text and its verified and unverified signatures."""

    text: str
    verified: tuple[Signature, ...]
    unverified: tuple[Signature, ...]


def _text_problem(text: str) -> str | None:
    if not text.endswith("\n"):
        return "note text does not end in a newline"
    if _FORBIDDEN_NOTE_CHARS.search(text):
        return "note text contains an ASCII control character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "note text is not valid Unicode"
    return None


def _make_line(text: bytes, signer: NoteSigner) -> str:
    if not is_valid_key_name(signer.name):
        raise ValueError(f"invalid signer name {signer.name!r}")
    return Signature(signer.name, signer.key_hash, signer.sign(text)).to_line()


def sign_note(text: str, signers: Iterable[NoteSigner]) -> str:
    """Sign ``text`` with each signer: the text, a blank line, one signature line per signer.

    ValueError if the text is not a valid note text (it must end in a newline and contain no ASCII
    control character but newline), if there is no signer, or if a key signs twice.
    """
    problem = _text_problem(text)
    if problem:
        raise ValueError(problem)
    message = text.encode("utf-8")
    lines: list[str] = []
    seen: set[tuple[str, int]] = set()
    for signer in signers:
        identity = (signer.name, signer.key_hash)
        if identity in seen:
            raise ValueError(f"duplicate signer {signer.name}+{signer.key_hash:08x}")
        seen.add(identity)
        lines.append(_make_line(message, signer))
    if not lines:
        raise ValueError("a note needs at least one signer")
    if len(lines) > MAX_SIGNATURES:
        raise ValueError(f"a note carries at most {MAX_SIGNATURES} signatures")
    return text + "\n" + "".join(lines)


def add_signatures(note: str, signers: Iterable[NoteSigner]) -> str:
    """Append signatures over a note's text, keeping its existing lines (for witnesses).

    Checks the note's structure, not its existing signatures; raises
    :class:`MalformedNoteError` for a malformed note and ValueError if a signer already signed it.
    """
    text, existing = split_note(note)
    message = text.encode("utf-8")
    seen = {(sig.name, sig.key_hash) for sig in existing}
    lines: list[str] = []
    for signer in signers:
        identity = (signer.name, signer.key_hash)
        if identity in seen:
            raise ValueError(f"note is already signed by {signer.name}+{signer.key_hash:08x}")
        seen.add(identity)
        lines.append(_make_line(message, signer))
    if len(existing) + len(lines) > MAX_SIGNATURES:
        raise ValueError(f"a note carries at most {MAX_SIGNATURES} signatures")
    return text + "\n" + "".join(sig.to_line() for sig in existing) + "".join(lines)


def _as_text(note: str | bytes) -> str:
    if isinstance(note, bytes):
        try:
            return note.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedNoteError("note is not valid UTF-8") from None
    try:
        note.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedNoteError("note is not valid UTF-8") from None
    return note


def _parse_signature_line(line: str) -> Signature:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise MalformedNoteError("a line after the blank line is not a signature line")
    name, space, encoded = line[len(_SIGNATURE_PREFIX) :].partition(" ")
    if not space or not is_valid_key_name(name):
        raise MalformedNoteError("signature line has no valid key name")
    raw = _decode_base64(encoded)
    if raw is None or len(raw) < 5:
        raise MalformedNoteError("signature is not canonical base64 of a key hash and signature")
    return Signature(name, int.from_bytes(raw[:4], "big"), raw[4:])


def split_note(note: str | bytes) -> tuple[str, tuple[Signature, ...]]:
    """Split a note into its text and signature lines, checking structure but no signature.

    The text ends at the *last* blank line. Raises :class:`MalformedNoteError`. Trust nothing in
    the text until :func:`open_note` has verified a signature over it.
    """
    text = _as_text(note)
    if _FORBIDDEN_NOTE_CHARS.search(text):
        raise MalformedNoteError("note contains an ASCII control character other than newline")
    split = text.rfind("\n\n")
    if split < 0:
        raise MalformedNoteError("note has no blank line before its signatures")
    body, block = text[: split + 1], text[split + 2 :]
    if not block.endswith("\n"):
        raise MalformedNoteError("note has no signature lines, or they do not end in a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNoteError(f"note has more than {MAX_SIGNATURES} signature lines")
    return body, tuple(_parse_signature_line(line) for line in lines)


def open_note(note: str | bytes, verifiers: Iterable[NoteVerifier]) -> OpenedNote:
    """Check a note's structure and signatures against known keys.

    Returns the text with its verified signatures (at least one) and the signatures from unknown
    keys. Every signature from a known key is checked: one that fails raises
    :class:`NoteSignatureError`; no signature from a known key raises
    :class:`NoVerifiedSignatureError`; structure problems raise :class:`MalformedNoteError`
    (checked first, for the whole note). Repeated signatures are reported once. ValueError if two
    different verifiers claim the same key name and key hash.
    """
    known: dict[tuple[str, int], NoteVerifier] = {}
    for verifier in verifiers:
        identity = (verifier.name, verifier.key_hash)
        if known.setdefault(identity, verifier) != verifier:
            raise ValueError(f"ambiguous verifiers for {verifier.name}+{verifier.key_hash:08x}")
    text, signatures = split_note(note)
    message = text.encode("utf-8")
    verified: list[Signature] = []
    unverified: list[Signature] = []
    for sig in signatures:
        checker = known.get((sig.name, sig.key_hash))
        if checker is None:
            if sig not in unverified:
                unverified.append(sig)
            continue
        if not checker.verify(message, sig.signature):
            raise NoteSignatureError(
                f"signature by {sig.name}+{sig.key_hash:08x} does not verify over the note text"
            )
        if all((seen.name, seen.key_hash) != (sig.name, sig.key_hash) for seen in verified):
            verified.append(sig)
    if not verified:
        raise NoVerifiedSignatureError("note has no signature from a known key")
    return OpenedNote(text, tuple(verified), tuple(unverified))
