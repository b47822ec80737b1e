from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from attest import checkpoint as cp
from attest import merkle, note
from attest.errors import (
    ForkError,
    KeyFileError,
    MalformedNoteError,
    NoteError,
    NoteSignatureError,
    NoVerifiedSignatureError,
    RollbackError,
    WitnessQuorumError,
)

ORIGIN = "regulator.example/pausewatch"


def fixed_key(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


LOG = note.Ed25519NoteSigner(ORIGIN, fixed_key("log"))
OTHER_LOG = note.Ed25519NoteSigner(ORIGIN, fixed_key("other log"))
ROOT = merkle.root_from_leaf_hashes([merkle.leaf_hash(b"%d" % i) for i in range(7)])
ROOT_B64 = base64.b64encode(ROOT).decode()
CHECKPOINT = cp.Checkpoint(ORIGIN, 7, ROOT)


def witness(name: str = "witness.example/w1", clock_s: int = 1_700_000_000) -> cp.CosignatureSigner:
    return cp.CosignatureSigner(name, fixed_key(name), clock=lambda: clock_s)


# --- Body ------------------------------------------------------------------------------------


def test_to_text_layout() -> None:
    assert CHECKPOINT.to_text() == f"{ORIGIN}\n7\n{ROOT_B64}\n"
    extended = cp.Checkpoint(ORIGIN, 0, merkle.EMPTY_ROOT, ("ext one", "ext two"))
    empty_b64 = base64.b64encode(merkle.EMPTY_ROOT).decode()
    assert extended.to_text() == f"{ORIGIN}\n0\n{empty_b64}\next one\next two\n"
    assert cp.Checkpoint.from_text(extended.to_text()) == extended


def test_from_text_parses_fields() -> None:
    parsed = cp.Checkpoint.from_text(f"{ORIGIN}\n18446744073709551615\n{ROOT_B64}\nx\n")
    assert parsed.origin == ORIGIN
    assert parsed.tree_size == 2**64 - 1
    assert parsed.root_hash == ROOT
    assert parsed.extensions == ("x",)


URLSAFE_ROOT = base64.urlsafe_b64encode(bytes([0xFB]) * 32).decode()
BAD_BODIES = {
    "no final newline": f"{ORIGIN}\n7\n{ROOT_B64}",
    "two lines": f"{ORIGIN}\n7\n",
    "empty origin": f"\n7\n{ROOT_B64}\n",
    "leading zero": f"{ORIGIN}\n07\n{ROOT_B64}\n",
    "zero padded zero": f"{ORIGIN}\n00\n{ROOT_B64}\n",
    "plus sign": f"{ORIGIN}\n+7\n{ROOT_B64}\n",
    "negative": f"{ORIGIN}\n-1\n{ROOT_B64}\n",
    "space in size": f"{ORIGIN}\n 7\n{ROOT_B64}\n",
    "underscore": f"{ORIGIN}\n1_000\n{ROOT_B64}\n",
    "non-ascii digit": f"{ORIGIN}\n\u0667\n{ROOT_B64}\n",
    "hex size": f"{ORIGIN}\n0x7\n{ROOT_B64}\n",
    "empty size": f"{ORIGIN}\n\n{ROOT_B64}\n",
    "size 2**64": f"{ORIGIN}\n18446744073709551616\n{ROOT_B64}\n",
    "huge size": f"{ORIGIN}\n{'9' * 5000}\n{ROOT_B64}\n",
    "short root": f"{ORIGIN}\n7\n{base64.b64encode(ROOT[:31]).decode()}\n",
    "long root": f"{ORIGIN}\n7\n{base64.b64encode(ROOT + b'x').decode()}\n",
    "unpadded root": f"{ORIGIN}\n7\n{ROOT_B64.rstrip('=')}\n",
    "non-canonical root": f"{ORIGIN}\n7\n{ROOT_B64[:-2]}{chr(ord(ROOT_B64[-2]) ^ 1)}=\n",
    "urlsafe root": f"{ORIGIN}\n7\n{URLSAFE_ROOT}\n",
    "space in root": f"{ORIGIN}\n7\n {ROOT_B64}\n",
    "empty extension": f"{ORIGIN}\n7\n{ROOT_B64}\n\n",
    "empty middle extension": f"{ORIGIN}\n7\n{ROOT_B64}\na\n\nb\n",
    "control in origin": f"{ORIGIN}\x00\n7\n{ROOT_B64}\n",
    "carriage return": f"{ORIGIN}\r\n7\n{ROOT_B64}\n",
}


@pytest.mark.parametrize("text", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_from_text_rejects(text: str) -> None:
    with pytest.raises(NoteError):
        cp.Checkpoint.from_text(text)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"origin": "", "tree_size": 1, "root_hash": ROOT}, "origin is empty"),
        ({"origin": "a\nb", "tree_size": 1, "root_hash": ROOT}, "origin contains"),
        ({"origin": ORIGIN, "tree_size": -1, "root_hash": ROOT}, "tree size"),
        ({"origin": ORIGIN, "tree_size": 2**64, "root_hash": ROOT}, "tree size"),
        ({"origin": ORIGIN, "tree_size": True, "root_hash": ROOT}, "tree size"),
        ({"origin": ORIGIN, "tree_size": 1, "root_hash": ROOT[:31]}, "root hash"),
        ({"origin": ORIGIN, "tree_size": 1, "root_hash": ROOT, "extensions": ("",)}, "extension"),
        (
            {"origin": ORIGIN, "tree_size": 1, "root_hash": ROOT, "extensions": ("a\nb",)},
            "extension",
        ),
    ],
)
def test_constructor_validates(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cp.Checkpoint(**kwargs)  # type: ignore[arg-type]


# --- Signed checkpoints ----------------------------------------------------------------------


def test_sign_and_verify() -> None:
    signed = cp.sign_checkpoint(CHECKPOINT, LOG)
    assert signed.startswith(CHECKPOINT.to_text() + "\n\u2014 " + ORIGIN + " ")
    assert cp.verify_checkpoint(signed, LOG.verifier()) == CHECKPOINT
    assert cp.verify_checkpoint(signed.encode(), LOG.verifier()) == CHECKPOINT


def test_verify_refuses_other_keys_and_tampering() -> None:
    signed = cp.sign_checkpoint(CHECKPOINT, LOG)
    with pytest.raises(NoVerifiedSignatureError):
        cp.verify_checkpoint(signed, OTHER_LOG.verifier())
    tampered = signed.replace("\n7\n", "\n8\n", 1)
    with pytest.raises(NoteSignatureError):
        cp.verify_checkpoint(tampered, LOG.verifier())
    with pytest.raises(MalformedNoteError):
        cp.verify_checkpoint(CHECKPOINT.to_text(), LOG.verifier())


def test_origin_must_be_the_key_name() -> None:
    stranger = note.Ed25519NoteSigner("someone.else/log", fixed_key("log"))
    signed = note.sign_note(CHECKPOINT.to_text(), [stranger])
    with pytest.raises(NoteError, match="origin"):
        cp.verify_checkpoint(signed, stranger.verifier())
    with pytest.raises(ValueError, match="origin"):
        cp.sign_checkpoint(CHECKPOINT, stranger)


def test_signed_body_that_is_not_a_checkpoint() -> None:
    signed = note.sign_note(f"{ORIGIN}\nseven\n{ROOT_B64}\n", [LOG])
    with pytest.raises(NoteError, match="decimal"):
        cp.verify_checkpoint(signed, LOG.verifier())


checkpoints = st.builds(
    cp.Checkpoint,
    origin=st.just(ORIGIN),
    tree_size=st.integers(0, 2**64 - 1),
    root_hash=st.binary(min_size=32, max_size=32),
    extensions=st.lists(
        st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=30),
        max_size=3,
    ).map(tuple),
)


@settings(max_examples=100, deadline=None)
@given(checkpoints)
def test_property_checkpoints_round_trip(checkpoint: cp.Checkpoint) -> None:
    assert cp.Checkpoint.from_text(checkpoint.to_text()) == checkpoint
    signed = cp.sign_checkpoint(checkpoint, LOG)
    assert cp.verify_checkpoint(signed, LOG.verifier()) == checkpoint


# --- Cosignatures ----------------------------------------------------------------------------


def test_cosignature_message_layout() -> None:
    text = CHECKPOINT.to_text().encode()
    assert cp.cosignature_message(text, 1234) == b"cosignature/v1\ntime 1234\n" + text
    assert cp.cosignature_message(text, 0).startswith(b"cosignature/v1\ntime 0\n")
    with pytest.raises(ValueError, match="timestamp"):
        cp.cosignature_message(text, 2**63)
    with pytest.raises(ValueError, match="timestamp"):
        cp.cosignature_message(text, -1)


def test_cosign_and_verify_cosignatures() -> None:
    w1, w2 = witness(clock_s=1_700_000_001), witness("witness.example/w2", 1_700_000_002)
    signed = cp.sign_checkpoint(CHECKPOINT, LOG)
    cosigned = cp.cosign_checkpoint(signed, LOG.verifier(), w1)
    cosigned = cp.cosign_checkpoint(cosigned, LOG.verifier(), w2)
    assert cosigned.startswith(signed)
    # Plain checkpoint verification ignores the cosignatures.
    assert cp.verify_checkpoint(cosigned, LOG.verifier()) == CHECKPOINT
    checkpoint, cosignatures = cp.verify_cosignatures(
        cosigned, LOG.verifier(), [w1.verifier(), w2.verifier()]
    )
    assert checkpoint == CHECKPOINT
    assert [(c.name, c.key_hash, c.timestamp_s) for c in cosignatures] == [
        (w1.name, w1.key_hash, 1_700_000_001),
        (w2.name, w2.key_hash, 1_700_000_002),
    ]
    # An unknown witness is ignored, not an error.
    _, only_w2 = cp.verify_cosignatures(cosigned, LOG.verifier(), [w2.verifier()])
    assert [c.name for c in only_w2] == [w2.name]


def test_cosignature_bytes_follow_the_spec() -> None:
    w1 = witness(clock_s=42)
    cosigned = cp.cosign_checkpoint(cp.sign_checkpoint(CHECKPOINT, LOG), LOG.verifier(), w1)
    line = cosigned.splitlines()[-1]
    dash, name, encoded = line.split(" ")
    assert (dash, name) == ("\u2014", w1.name)
    raw = base64.b64decode(encoded)
    public = fixed_key(w1.name).public_key()
    key_id = hashlib.sha256(name.encode() + b"\n\x04" + public.public_bytes_raw()).digest()[:4]
    assert raw[:4] == key_id
    assert raw[4:12] == (42).to_bytes(8, "big")
    message = b"cosignature/v1\ntime 42\n" + CHECKPOINT.to_text().encode()
    public.verify(raw[12:], message)  # raises if the signed message differs


def test_tampered_cosignature_timestamp_is_a_bad_signature() -> None:
    w1 = witness(clock_s=42)
    cosigned = cp.cosign_checkpoint(cp.sign_checkpoint(CHECKPOINT, LOG), LOG.verifier(), w1)
    head, line = cosigned[:-1].rsplit("\n", 1)
    dash, name, encoded = line.split(" ")
    raw = bytearray(base64.b64decode(encoded))
    raw[11] ^= 1  # timestamp 42 -> 43
    forged = f"{head}\n{dash} {name} {base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(NoteSignatureError):
        cp.verify_cosignatures(forged, LOG.verifier(), [w1.verifier()])
    raw[4] |= 0x80  # timestamp beyond 2**63 - 1
    forged = f"{head}\n{dash} {name} {base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(NoteSignatureError):
        cp.verify_cosignatures(forged, LOG.verifier(), [w1.verifier()])


def test_cosignatures_need_the_log_signature() -> None:
    w1 = witness()
    only_witness = note.sign_note(CHECKPOINT.to_text(), [w1])
    with pytest.raises(NoVerifiedSignatureError, match="log"):
        cp.verify_cosignatures(only_witness, LOG.verifier(), [w1.verifier()])
    with pytest.raises(NoVerifiedSignatureError):
        cp.cosign_checkpoint(only_witness, LOG.verifier(), w1)


def test_witness_refuses_a_checkpoint_the_log_did_not_sign() -> None:
    signed = cp.sign_checkpoint(CHECKPOINT, OTHER_LOG)
    with pytest.raises(NoVerifiedSignatureError):
        cp.cosign_checkpoint(signed, LOG.verifier(), witness())


def test_cosigner_keys() -> None:
    w1 = witness()
    vkey = w1.verifier().to_vkey()
    assert cp.parse_cosigner_key(vkey) == w1.verifier()
    assert note.VerifierKey.from_text(vkey).algorithm == cp.ALG_COSIGNATURE_V1
    with pytest.raises(KeyFileError, match="cosignature"):
        cp.parse_cosigner_key(LOG.verifier().to_vkey())
    with pytest.raises(KeyFileError, match="not Ed25519"):
        note.parse_verifier_key(vkey)
    # The same key pair under the two algorithms has different key hashes.
    same_key = note.Ed25519NoteSigner(w1.name, fixed_key(w1.name))
    assert same_key.key_hash != w1.key_hash


# --- History: does a checkpoint extend one saved before? ------------------------------------------


def _tree(count: int, tag: bytes = b"") -> merkle.MemoryTree:
    tree = merkle.MemoryTree()
    for i in range(count):
        tree.append_data(tag + b"%d" % i)
    return tree


def test_verify_extends_accepts_a_grown_log_and_equal_checkpoints() -> None:
    tree = _tree(20)
    old = cp.Checkpoint(ORIGIN, 7, tree.root(7))
    new = cp.Checkpoint(ORIGIN, 20, tree.root(20))
    cp.verify_extends(old, new, tree.consistency_proof(7, 20))
    cp.verify_extends(new, new, [])
    cp.verify_extends(cp.Checkpoint(ORIGIN, 0, merkle.EMPTY_ROOT), new, [])


def test_verify_extends_names_a_rollback() -> None:
    tree = _tree(20)
    with pytest.raises(RollbackError, match=r"ROLLBACK.*13 entries have disappeared"):
        cp.verify_extends(
            cp.Checkpoint(ORIGIN, 20, tree.root(20)), cp.Checkpoint(ORIGIN, 7, tree.root(7)), []
        )


def test_verify_extends_names_a_fork() -> None:
    honest, rewritten = _tree(20), _tree(20, b"x")
    saved = cp.Checkpoint(ORIGIN, 7, honest.root(7))
    with pytest.raises(ForkError, match="different roots") as same:
        cp.verify_extends(saved, cp.Checkpoint(ORIGIN, 7, rewritten.root(7)), [])
    assert honest.root(7).hex() in same.value.diagnostics()
    forked = cp.Checkpoint(ORIGIN, 20, rewritten.root(20))
    # The rewritten log's own proof joins its own old root, never the saved one.
    with pytest.raises(ForkError, match=r"FORK: the log at size 20 .* does not extend"):
        cp.verify_extends(saved, forked, rewritten.consistency_proof(7, 20))
    with pytest.raises(ForkError, match="different logs"):
        cp.verify_extends(saved, cp.Checkpoint("other.example/log", 20, honest.root(20)), [])


def test_witness_quorum() -> None:
    w1, w2, w3 = witness("w.example/1"), witness("w.example/2"), witness("w.example/3")
    signed = cp.sign_checkpoint(CHECKPOINT, LOG)
    two = cp.cosign_checkpoint(cp.cosign_checkpoint(signed, LOG.verifier(), w1), LOG.verifier(), w2)
    named = [w1.verifier(), w2.verifier(), w3.verifier()]
    checkpoint, cosignatures = cp.verify_witness_quorum(two, LOG.verifier(), named, 2)
    assert checkpoint == CHECKPOINT and {c.name for c in cosignatures} == {
        "w.example/1",
        "w.example/2",
    }
    with pytest.raises(WitnessQuorumError, match=r"2 of the 3 .* missing: w\.example/3"):
        cp.verify_witness_quorum(two, LOG.verifier(), named, 3)
    with pytest.raises(WitnessQuorumError, match="0 of the 1"):
        cp.verify_witness_quorum(signed, LOG.verifier(), named, 1)
    cp.verify_witness_quorum(signed, LOG.verifier(), [], 0)
    with pytest.raises(ValueError, match="threshold"):
        cp.verify_witness_quorum(signed, LOG.verifier(), named, 4)
    # A cosignature of another checkpoint moved onto this one is a bad signature, not a vote.
    other = cp.cosign_checkpoint(
        cp.sign_checkpoint(cp.Checkpoint(ORIGIN, 8, ROOT), LOG), LOG.verifier(), w3
    )
    moved = signed + other.split("\n\n")[1].split("\n")[1] + "\n"
    with pytest.raises(NoteSignatureError):
        cp.verify_witness_quorum(moved, LOG.verifier(), named, 1)
