"""Ed25519 keys: generate, save, load, and derive key ids.

    private = generate_private_key()
    save_private_key(state_dir / "node.key", private)      # mode 0600, never overwrites
    save_public_key(state_dir / "node.pub", private.public_key())
    key_id(private.public_key()).hex()                      # SHA-256 of the raw public key

A private key file that group or others can read is refused on load: a node key that other users
of the host can read is not evidence of anything. Files are PEM (PKCS#8 for private keys,
SubjectPublicKeyInfo for public keys), so standard tools can inspect them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from attest.errors import KeyFileError, OutputFileError
from attest.files import write_new_file
from attest.ids import KeyId

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
PRIVATE_KEY_MODE = 0o600
PUBLIC_KEY_MODE = 0o644


def generate_private_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key from the operating system's CSPRNG."""
    return Ed25519PrivateKey.generate()


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    """The 32-byte raw encoding of a public key."""
    return public_key.public_bytes_raw()


def key_id(public_key: Ed25519PublicKey) -> KeyId:
    """SHA-256 of the raw 32-byte public key."""
    return key_id_from_raw(public_key.public_bytes_raw())


def key_id_from_raw(raw: bytes) -> KeyId:
    """SHA-256 of a raw 32-byte public key; raises ValueError on a wrong length."""
    if len(raw) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes, got {len(raw)}")
    return KeyId(hashlib.sha256(raw).digest())


def public_key_from_raw(raw: bytes) -> Ed25519PublicKey:
    """Parse a raw 32-byte public key; raises ValueError on a wrong length."""
    if len(raw) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


class Signer(Protocol):
    """Anything that can sign on behalf of one key id (a file key today, a TPM key later)."""

    @property
    def key_id(self) -> KeyId:
        """The signer's key id."""
        ...

    def sign(self, message: bytes) -> bytes:
        """An Ed25519 signature over ``message``."""
        ...


@dataclass(frozen=True, slots=True)
class Ed25519Signer:
    """A :class:`Signer` over an in-memory Ed25519 private key."""

    private_key: Ed25519PrivateKey
    key_id: KeyId

    @classmethod
    def from_private_key(cls, private_key: Ed25519PrivateKey) -> Ed25519Signer:
        return cls(private_key=private_key, key_id=key_id(private_key.public_key()))

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def __repr__(self) -> str:  # never print key material
        return f"Ed25519Signer(key_id={self.key_id.hex()[:16]}...)"


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Write a key file whole or not at all, never replacing one (:func:`write_new_file`)."""
    try:
        write_new_file(path, data, mode=mode)
    except OutputFileError as exc:
        raise KeyFileError(f"{exc}; keys are never overwritten") from None


def private_key_pem(private_key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM of a private key (unencrypted: protect the file, not the bytes)."""
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of a public key."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def save_private_key(path: Path | str, private_key: Ed25519PrivateKey) -> None:
    """Write a private key file with mode 0600. Never overwrites an existing file."""
    _write_new_file(Path(path), private_key_pem(private_key), PRIVATE_KEY_MODE)


def save_public_key(path: Path | str, public_key: Ed25519PublicKey) -> None:
    """Write a public key file with mode 0644. Never overwrites an existing file."""
    _write_new_file(Path(path), public_key_pem(public_key), PUBLIC_KEY_MODE)


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """Load a PEM private key, refusing a file that group or others can read or write."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"private key file {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read private key file {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"private key file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise KeyFileError(
            f"private key file {path} has mode {stat.S_IMODE(info.st_mode):04o}; "
            f"others can read it. Run: chmod 600 {path}"
        )
    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """Load a public key file: PEM, or the raw key in base64 or hex on one line."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"public key file {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read public key file {path}: {exc.strerror}") from exc
    try:
        return parse_public_key(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(
            f"{path} is not an Ed25519 public key (PEM, or 32 raw bytes in base64 or hex)"
        ) from None


def parse_public_key(text: str) -> Ed25519PublicKey:
    """Parse a public key given as PEM, or as 32 raw bytes in base64 or hex.

    Raises ValueError if it is none of those.
    """
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped.encode("ascii"))
        except (ValueError, UnsupportedAlgorithm):
            raise ValueError("not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"PEM holds a {type(key).__name__}, not an Ed25519 key")
        return key
    if len(stripped) == 2 * PUBLIC_KEY_SIZE:
        try:
            return public_key_from_raw(bytes.fromhex(stripped))
        except ValueError:
            pass
    try:
        raw = base64.b64decode(stripped, validate=True)
    except binascii.Error:
        raise ValueError("not PEM, hex or base64") from None
    return public_key_from_raw(raw)


def format_public_key(public_key: Ed25519PublicKey) -> str:
    """The raw public key in standard base64, the form used in config files."""
    return base64.b64encode(public_key.public_bytes_raw()).decode("ascii")
