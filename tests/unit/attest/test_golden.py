"""The golden vectors are current, verify, and are what docs/wire-format.md quotes."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from attest import merkle
from attest.checkpoint import verify_checkpoint
from attest.envelope import StaticKeyring, envelope_digest, verify_envelope
from attest.keys import public_key_from_raw
from attest.note import parse_verifier_key
from tests.generated_data import generate_golden

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = json.loads(generate_golden.GOLDEN.read_text(encoding="utf-8"))


def test_golden_file_is_current() -> None:
    assert generate_golden.render(generate_golden.generate()) == generate_golden.GOLDEN.read_text(
        encoding="utf-8"
    ), "run: python -m tests.generated_data.generate_golden"


def test_golden_envelopes_verify_and_chain() -> None:
    ring = StaticKeyring()
    ring.add(public_key_from_raw(bytes.fromhex(GOLDEN["node_public_key_hex"])))
    first, second = (bytes.fromhex(e["envelope_hex"]) for e in GOLDEN["envelopes"])
    for raw in (first, second):
        assert verify_envelope(raw, ring, payload_type=GOLDEN["payload_type"]).raw == raw
    assert envelope_digest(first).hex() == GOLDEN["envelopes"][0]["digest_hex"]
    # seq 1's payload carries seq 0's digest as prev_digest.
    assert bytes.fromhex(GOLDEN["envelopes"][0]["digest_hex"]) in bytes.fromhex(
        GOLDEN["envelopes"][1]["payload_hex"]
    )


def test_golden_log_checkpoint_and_proof_verify() -> None:
    log = GOLDEN["log"]
    verifier = parse_verifier_key(log["verifier_key"])
    checkpoint = verify_checkpoint(log["checkpoint_note"], verifier)
    assert checkpoint.tree_size == 2
    assert checkpoint.root_hash.hex() == log["root_hex"]
    merkle.verify_inclusion(
        0,
        2,
        bytes.fromhex(GOLDEN["envelopes"][0]["leaf_hash_hex"]),
        [bytes.fromhex(h) for h in log["inclusion_proof_0_hex"]],
        checkpoint.root_hash,
    )


def _doc_text() -> str:
    text = (ROOT / "docs" / "wire-format.md").read_text(encoding="utf-8")
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize(
    "key",
    ["node_seed_hex", "node_public_key_hex", "node_key_id_hex"],
)
def test_doc_quotes_the_golden_keys(key: str) -> None:
    assert GOLDEN[key] in _doc_text()


@pytest.mark.parametrize(
    "key", ["payload_hex", "signature_hex", "envelope_hex", "digest_hex", "leaf_hash_hex"]
)
def test_doc_quotes_the_golden_envelope(key: str) -> None:
    assert GOLDEN["envelopes"][0][key] in _doc_text()


def test_doc_quotes_the_golden_log() -> None:
    doc = _doc_text()
    log = GOLDEN["log"]
    for value in (log["root_hex"], log["verifier_key"], re.sub(r"\s+", "", log["checkpoint_note"])):
        assert value in doc
    assert GOLDEN["envelopes"][1]["digest_hex"] in doc


def test_doc_quotes_the_second_window_body() -> None:
    second = GOLDEN["envelopes"][1]
    assert second["seq"] == "1"
    assert second["payload_hex"] in _doc_text()
    assert second["leaf_hash_hex"] in _doc_text()


def test_samples_vector_is_the_samples_root_and_the_doc_quotes_it() -> None:
    from attest.samples import decode_sample, samples_root

    vector = GOLDEN["samples"]
    encoded = [bytes.fromhex(h) for h in vector["encoded_hex"]]
    # The leaf input is the 51-byte encoding itself, behind the 0x00 domain byte.
    assert [hashlib.sha256(b"\x00" + e).hexdigest() for e in encoded] == vector["leaf_hash_hex"]
    leaves = [bytes.fromhex(h) for h in vector["leaf_hash_hex"]]
    node01 = hashlib.sha256(b"\x01" + leaves[0] + leaves[1]).digest()
    assert node01.hex() == vector["node_01_hex"]
    root = hashlib.sha256(b"\x01" + node01 + leaves[2]).hexdigest()
    assert root == vector["root_hex"]
    assert samples_root([decode_sample(e) for e in encoded]).hex() == root
    assert vector["empty_root_hex"] == hashlib.sha256(b"").hexdigest()
    doc = _doc_text()
    for value in [*vector["encoded_hex"], *vector["leaf_hash_hex"], vector["node_01_hex"], root]:
        assert value in doc
