from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from attest import note
from attest.errors import (
    KeyFileError,
    MalformedNoteError,
    NoteError,
    NoteSignatureError,
    NoVerifiedSignatureError,
)
from tests.testdata import TLOG

VECTORS = json.loads((TLOG / "signed-note" / "signed_note_vectors.json").read_text())
SIGN_CASE = VECTORS["sign_case"]
VALID_VKEYS = sorted({SIGN_CASE["vkey"], *(case["vkey"] for case in VECTORS["verify_cases"])})

# The golang TestOpen material: T is the text, S the PeterNeumann signature line.
T = SIGN_CASE["text"]
S = SIGN_CASE["want"][len(T) + 1 :]
PETER = note.parse_verifier_key(SIGN_CASE["vkey"])


def fixed_signer(name: str, label: str = "") -> note.Ed25519NoteSigner:
    seed = hashlib.sha256(f"pausewatch test key {name} {label}".encode()).digest()
    return note.Ed25519NoteSigner(name, Ed25519PrivateKey.from_private_bytes(seed))


LOG = fixed_signer("log.example/pause")
WITNESS = fixed_signer("witness.example/w1")


# --- Known answers ---------------------------------------------------------------------------


def test_sign_case_matches_byte_for_byte() -> None:
    signer = note.parse_signer_key(SIGN_CASE["skey"])
    assert note.sign_note(SIGN_CASE["text"], [signer]) == SIGN_CASE["want"]
    assert signer.verifier().to_vkey() == SIGN_CASE["vkey"]
    assert signer.to_skey() == SIGN_CASE["skey"]
    opened = note.open_note(SIGN_CASE["want"], [PETER])
    assert opened.text == SIGN_CASE["text"]
    assert [s.name for s in opened.verified] == ["PeterNeumann"]


@pytest.mark.parametrize("case", VECTORS["verify_cases"], ids=lambda c: c["desc"])
def test_verify_cases(case: dict[str, Any]) -> None:
    verifier = note.parse_verifier_key(case["vkey"])
    text, verified, unverified = note.open_note(case["note"], [verifier])
    assert case["note"].startswith(text)
    assert text.endswith("\n")
    assert [(s.name, s.key_hash) for s in verified] == [(verifier.name, verifier.key_hash)]
    lines = case["note"][len(text) + 1 :].splitlines(keepends=True)
    assert sorted(s.to_line() for s in (*verified, *unverified)) == sorted(lines)
    assert verifier.to_vkey() == case["vkey"]
    # The same note also opens from bytes.
    assert note.open_note(case["note"].encode(), [verifier]).text == text


def test_verify_case_with_every_signer_known() -> None:
    case = VECTORS["verify_cases"][0]
    verifiers = [note.parse_verifier_key(c["vkey"]) for c in VECTORS["verify_cases"][:2]]
    opened = note.open_note(case["note"], verifiers)
    assert [s.name for s in opened.verified] == ["PeterNeumann", "EnochRoot"]
    assert opened.unverified == ()


# --- Malformed notes -------------------------------------------------------------------------

MALFORMED: dict[str, str | bytes] = {
    "text only": T,
    "text and blank line": T + "\n",
    "signature without final newline": T + "\n" + S[:-1],
    "control character": "\x01" + T + "\n" + S,
    "invalid utf-8": b"\xff" + (T + "\n" + S).encode(),
    "lone surrogate": "\ud800" + T + "\n" + S,
    "carriage return": T.replace("\n", "\r\n", 1) + "\n" + S,
    "space in key name": T + "\n" + S.replace("PeterNeumann", "Bad Name"),
    "unexpected line": T + "\n" + S + "Unexpected line.\n",
    "101 signature lines": T + "\n" + S * 101,
    "no key name": T + "\n" + "\u2014 " + S.split(" ")[2],
    "no signature": T + "\n" + "\u2014 PeterNeumann\n",
    "empty signature": T + "\n" + "\u2014 PeterNeumann \n",
    "short signature": T + "\n" + "\u2014 PeterNeumann AAAAAA==\n",
    "hyphen instead of em dash": T + "\n" + "- " + S[2:],
    "unpadded base64": T + "\n" + S.replace("=\n", "\n"),
    "non-canonical base64": T + "\n" + S.replace("M=\n", "N=\n"),
    "plus in key name": T + "\n" + S.replace("PeterNeumann", "Peter+Neumann"),
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_notes_are_rejected(raw: str | bytes) -> None:
    with pytest.raises(MalformedNoteError):
        note.open_note(raw, [PETER])


def test_one_hundred_signature_lines_are_accepted_once() -> None:
    opened = note.open_note(T + "\n" + S * 100, [PETER])
    assert len(opened.verified) == 1


def test_altered_signature_from_a_known_key_is_invalid() -> None:
    raw_s = S.encode()
    altered = (raw_s[:60] + b"ABCD" + raw_s[60:]).decode()
    with pytest.raises(NoteSignatureError):
        note.open_note(T + "\n" + altered, [PETER])
    # Also when a valid signature from the same key comes first.
    with pytest.raises(NoteSignatureError):
        note.open_note(T + "\n" + S + altered, [PETER])
    # A blank line among the signatures makes the lines above it text, which S did not sign.
    with pytest.raises(NoteSignatureError):
        note.open_note(T + "\n" + S + "\n" + S, [PETER])


def test_unknown_keys_only() -> None:
    with pytest.raises(NoVerifiedSignatureError):
        note.open_note(SIGN_CASE["want"], [])
    with pytest.raises(NoVerifiedSignatureError):
        note.open_note(SIGN_CASE["want"], [LOG.verifier()])
    # Same name, other key: unknown, not a bad signature.
    impostor = fixed_signer("PeterNeumann").verifier()
    with pytest.raises(NoVerifiedSignatureError):
        note.open_note(SIGN_CASE["want"], [impostor])


def test_same_key_hash_under_another_name_is_unknown() -> None:
    renamed = note.Signature("EnochRoot", PETER.key_hash, b"\x00" * 64).to_line()
    opened = note.open_note(T + "\n" + renamed + S, [PETER])
    assert [s.name for s in opened.unverified] == ["EnochRoot"]


def test_unknown_algorithm_lines_are_ignored_not_fatal() -> None:
    # A line whose key hash matches no verifier (e.g. a cosignature, or a future algorithm).
    odd = note.Signature("PeterNeumann", 0x04040404, b"\x04" * 200).to_line()
    opened = note.open_note(T + "\n" + odd + S + odd, [PETER])
    assert len(opened.verified) == 1
    assert len(opened.unverified) == 1


def test_ambiguous_verifiers_are_refused() -> None:
    class Fake:
        name = PETER.name
        key_hash = PETER.key_hash

        def verify(self, message: bytes, signature: bytes) -> bool:
            return True

    with pytest.raises(ValueError, match="ambiguous"):
        note.open_note(SIGN_CASE["want"], [PETER, Fake()])
    # The same verifier twice is fine.
    assert note.open_note(SIGN_CASE["want"], [PETER, PETER]).verified


@pytest.mark.parametrize("mask", [0x01, 0x20, 0x80])
def test_every_byte_flip_is_detected(mask: int) -> None:
    signed = note.sign_note("origin.example/x\n42\nsome text\n", [LOG]).encode()
    for at in range(len(signed)):
        tampered = bytearray(signed)
        tampered[at] ^= mask
        with pytest.raises(NoteError):
            note.open_note(bytes(tampered), [LOG.verifier()])


# --- Keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize("vkey", VECTORS["vkey_negative_cases"])
def test_vkey_negative_cases(vkey: str) -> None:
    with pytest.raises(KeyFileError):
        note.parse_verifier_key(vkey)


@pytest.mark.parametrize("vkey", VALID_VKEYS)
def test_every_strict_substring_of_a_vkey_is_rejected(vkey: str) -> None:
    note.parse_verifier_key(vkey)
    accepted = []
    for start in range(len(vkey)):
        for end in range(start + 1, len(vkey) + 1):
            if (start, end) == (0, len(vkey)):
                continue
            try:
                note.parse_verifier_key(vkey[start:end])
            except KeyFileError:
                continue
            accepted.append(vkey[start:end])
    assert accepted == []


@pytest.mark.parametrize("vkey", VALID_VKEYS)
def test_every_byte_increment_of_a_vkey_is_rejected(vkey: str) -> None:
    raw = vkey.encode()
    accepted = []
    for at in range(len(raw)):
        changed = bytearray(raw)
        changed[at] += 1
        try:
            note.parse_verifier_key(changed.decode())
        except KeyFileError:
            continue
        accepted.append(changed.decode())
    assert accepted == []


def test_every_byte_change_of_a_skey_is_rejected() -> None:
    skey = SIGN_CASE["skey"]
    accepted = []
    for at in range(len(skey)):
        for candidate in (
            skey[:at] + skey[at + 1 :],
            skey[:at] + chr(ord(skey[at]) + 1) + skey[at + 1 :],
        ):
            try:
                note.parse_signer_key(candidate)
            except KeyFileError:
                continue
            accepted.append(candidate)
    assert accepted == []


def _vkey_with(name: str, key: bytes) -> str:
    """A verifier key with a correct key hash over arbitrary key bytes (algorithm included)."""
    encoded = base64.b64encode(key).decode()
    return f"{name}+{note.key_hash(name, key):08x}+{encoded}"


def _upper_hash(vkey: str) -> str:
    name, hash_text, key_text = vkey.split("+", 2)
    return f"{name}+{hash_text.upper().replace('0', 'A')}+{key_text}"


@pytest.mark.parametrize(
    ("vkey", "reason"),
    [
        (_vkey_with("n", b"\x01" + b"\x07" * 31), "32"),
        (_vkey_with("n", b"\x01" + b"\x07" * 33), "32"),
        (_vkey_with("n", b"\x04" + b"\x07" * 32), "not Ed25519"),
        (_vkey_with("n", b"\x01"), "no key material"),
        ("n+00000000+", "no key material"),
        ("n+00000000+AQ", "base64"),
        (_vkey_with("n", b"\x01" + b"\x07" * 32).replace("n+", "n +", 1), "name"),
        (_upper_hash(_vkey_with("n", b"\x01" + b"\x07" * 32)), "hex"),
        ("n+c74f20a+ARpc", "hex"),
        ("n+-74f20a3+ARpc", "hex"),
        ("n+" + "0" * 8, "not <name>"),
        ("", "not <name>"),
    ],
)
def test_malformed_vkeys(vkey: str, reason: str) -> None:
    with pytest.raises(KeyFileError, match=reason):
        note.parse_verifier_key(vkey)


def test_verifier_key_of_another_algorithm_parses_generically() -> None:
    vkey = _vkey_with("witness.example/w", b"\x04" + b"\x09" * 32)
    parsed = note.VerifierKey.from_text(vkey)
    assert (parsed.name, parsed.algorithm, parsed.public_key) == (
        "witness.example/w",
        4,
        b"\x09" * 32,
    )
    assert parsed.to_text() == vkey


def test_signer_key_hash_must_match_the_public_key() -> None:
    seed = bytes(range(32))
    good = note.format_signer_key("k.example", seed)
    signer = note.parse_signer_key(good)
    assert (
        signer.public_key
        == Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    )
    private, key, name, key_hash_text, key_text = good.split("+", 4)
    wrong = f"{private}+{key}+{name}+{int(key_hash_text, 16) ^ 1:08x}+{key_text}"
    with pytest.raises(KeyFileError, match="hash"):
        note.parse_signer_key(wrong)
    with pytest.raises(KeyFileError, match="PRIVATE"):
        note.parse_signer_key(good.replace("PRIVATE+KEY+", "PUBLIC+KEY+"))
    assert repr(signer) == f"Ed25519NoteSigner(k.example+{key_hash_text})"
    assert key_text not in repr(signer)


def test_generated_keys_round_trip() -> None:
    skey, vkey = note.generate_signer_key("fresh.example/key")
    signer = note.parse_signer_key(skey)
    verifier = note.parse_verifier_key(vkey)
    assert signer.verifier() == verifier
    signed = note.sign_note("hello\n", [signer])
    assert note.open_note(signed, [verifier]).verified[0].name == "fresh.example/key"
    other_skey, _ = note.generate_signer_key("fresh.example/key")
    assert other_skey != skey


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("example.com/log", True),
        ("PeterNeumann", True),
        ("ünïcode/名前", True),
        ("", False),
        ("a b", False),
        ("a+b", False),
        ("a\tb", False),
        ("a\u00a0b", False),
        ("a\u2003b", False),
        ("a\u3000b", False),
        ("a\x7fb", False),
        ("a\x85b", False),
        ("a\ud800b", False),
    ],
)
def test_key_names(name: str, valid: bool) -> None:
    assert note.is_valid_key_name(name) is valid


def test_key_hash_definition() -> None:
    key = b"\x01" + bytes(range(32))
    digest = hashlib.sha256(b"name.example\n" + key).digest()
    assert note.key_hash("name.example", key) == int.from_bytes(digest[:4], "big")


# --- Signing ---------------------------------------------------------------------------------


def test_sign_with_several_keys_and_add_signatures() -> None:
    text = "a\n\nwith a blank line\n"
    signed = note.sign_note(text, [LOG])
    both = note.add_signatures(signed, [WITNESS])
    assert both.startswith(signed)
    opened = note.open_note(both, [LOG.verifier(), WITNESS.verifier()])
    assert opened.text == text
    assert [s.name for s in opened.verified] == [LOG.name, WITNESS.name]
    assert note.sign_note(text, [LOG, WITNESS]) == both  # Ed25519 is deterministic
    with pytest.raises(ValueError, match="already signed"):
        note.add_signatures(both, [LOG])
    with pytest.raises(MalformedNoteError):
        note.add_signatures(text, [LOG])


@pytest.mark.parametrize(
    ("text", "signers", "match"),
    [
        ("no newline", [LOG], "newline"),
        ("bell\x07\n", [LOG], "control"),
        ("cr\r\n", [LOG], "control"),
        ("surrogate\ud800\n", [LOG], "Unicode"),
        ("ok\n", [], "at least one"),
        ("ok\n", [LOG, LOG], "duplicate"),
    ],
)
def test_sign_note_refuses(text: str, signers: list[note.NoteSigner], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        note.sign_note(text, signers)


note_texts = st.text(
    alphabet=st.characters(
        blacklist_categories=["Cs"], blacklist_characters=[chr(c) for c in range(0x20) if c != 0x0A]
    ),
    max_size=200,
).map(lambda s: s + "\n")


@settings(max_examples=100, deadline=None)
@given(note_texts)
def test_property_sign_then_open_round_trips(text: str) -> None:
    signed = note.sign_note(text, [LOG, WITNESS])
    opened = note.open_note(signed, [WITNESS.verifier()])
    assert opened.text == text
    assert [s.name for s in opened.unverified] == [LOG.name]
    with pytest.raises(NoteSignatureError):
        note.open_note(signed.replace(text, text + "x\n", 1), [WITNESS.verifier()])


def _foreign_vkey(name: str, algorithm: int, spki_der: bytes) -> str:
    """A verifier key as c2sp.org/signed-note defines it for ECDSA (0x02) and RFC 6962 (0x05):
    the key ID is SHA-256 of the DER SubjectPublicKeyInfo, truncated to four bytes."""
    key_id = hashlib.sha256(spki_der).digest()[:4].hex()
    encoded = base64.b64encode(bytes([algorithm]) + spki_der).decode()
    return f"{name}+{key_id}+{encoded}"


@pytest.mark.parametrize(("algorithm", "what"), [(0x02, "ECDSA"), (0x05, "RFC 6962")])
def test_valid_keys_of_foreign_key_id_algorithms_are_unsupported_not_mismatched(
    algorithm: int, what: str
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.derive_private_key(12345, ec.SECP256R1())
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    vkey = _foreign_vkey("ct.example/log", algorithm, spki)
    with pytest.raises(KeyFileError, match=f"unsupported algorithm 0x{algorithm:02x} \\({what}"):
        note.VerifierKey.from_text(vkey)
    with pytest.raises(KeyFileError, match="unsupported algorithm"):
        note.parse_verifier_key(vkey)


def test_an_ed25519_key_with_a_wrong_hash_still_says_so() -> None:
    good = note.Ed25519NoteSigner.generate("k.example").verifier().to_vkey()
    name, hash_text, key = good.split("+", 2)
    wrong = f"{name}+{int(hash_text, 16) ^ 1:08x}+{key}"
    with pytest.raises(KeyFileError, match="hash does not match"):
        note.VerifierKey.from_text(wrong)
