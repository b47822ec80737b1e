from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from attest import keys
from attest.errors import KeyFileError


def test_key_id_is_sha256_of_raw_public_key() -> None:
    private = keys.generate_private_key()
    raw = private.public_key().public_bytes_raw()
    import hashlib

    assert keys.key_id(private.public_key()) == hashlib.sha256(raw).digest()
    assert keys.key_id_from_raw(raw) == keys.key_id(private.public_key())


def test_save_private_key_uses_mode_0600_and_round_trips(tmp_path: Path) -> None:
    old = os.umask(0)  # a permissive umask must not widen the file's mode
    try:
        private = keys.generate_private_key()
        path = tmp_path / "node.key"
        keys.save_private_key(path, private)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = keys.load_private_key(path)
    assert keys.key_id(loaded.public_key()) == keys.key_id(private.public_key())
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_save_refuses_to_overwrite_and_keeps_the_old_key(tmp_path: Path) -> None:
    first = keys.generate_private_key()
    path = tmp_path / "node.key"
    keys.save_private_key(path, first)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        keys.save_private_key(path, keys.generate_private_key())
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o666, 0o620])
def test_load_refuses_a_private_key_others_can_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    keys.save_private_key(path, keys.generate_private_key())
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600") as info:
        keys.load_private_key(path)
    assert "PRIVATE KEY" not in info.value.diagnostics()


def test_load_missing_and_garbage_private_keys(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        keys.load_private_key(tmp_path / "absent.key")
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"not a key")
    bad.chmod(0o600)
    with pytest.raises(KeyFileError, match="not an unencrypted PEM"):
        keys.load_private_key(bad)


def test_load_refuses_non_ed25519_private_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.key"
    path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        keys.load_private_key(path)


def test_public_key_formats_round_trip(tmp_path: Path) -> None:
    public = keys.generate_private_key().public_key()
    raw = public.public_bytes_raw()
    for text in (
        keys.public_key_pem(public).decode(),
        keys.format_public_key(public),
        raw.hex(),
    ):
        assert keys.parse_public_key(text).public_bytes_raw() == raw
    path = tmp_path / "node.pub"
    keys.save_public_key(path, public)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert keys.load_public_key(path).public_bytes_raw() == raw


@pytest.mark.parametrize(
    "text", ["", "zz", "AAAA", "-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----"]
)
def test_parse_public_key_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match=r"not|bytes|PEM"):
        keys.parse_public_key(text)


def test_signer_repr_hides_key_material() -> None:
    signer = keys.Ed25519Signer.from_private_key(keys.generate_private_key())
    assert "PRIVATE" not in repr(signer)
    assert signer.key_id.hex()[:16] in repr(signer)
