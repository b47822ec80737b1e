"""The tlog-witness request format and the witness's decision (attest/witness.py), one status
per check, in the order c2sp.org/tlog-witness gives them."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from attest import checkpoint as cp
from attest import merkle, note
from attest import witness as wt

ORIGIN = "log.example/a"


def key(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


LOG = note.Ed25519NoteSigner(ORIGIN, key("log"))
IMPOSTOR = note.Ed25519NoteSigner(ORIGIN, key("impostor"))
WITNESS = cp.CosignatureSigner("witness.example/w", key("w"), clock=lambda: 1_800_000_000)
KNOWN = {ORIGIN: LOG.verifier()}
TREE = merkle.MemoryTree()
for _i in range(40):
    TREE.append_data(b"leaf %d" % _i)
FORK = merkle.MemoryTree()
for _i in range(40):
    FORK.append_data(b"other %d" % _i)


def at(size: int, tree: merkle.MemoryTree = TREE) -> cp.Checkpoint:
    return cp.Checkpoint(ORIGIN, size, tree.root(size))


def request(old: int, size: int, *, tree: merkle.MemoryTree = TREE, signer: object = LOG) -> bytes:
    proof = tuple(tree.consistency_proof(old, size)) if 0 < old < size else ()
    note_text = cp.sign_checkpoint(at(size, tree), signer)  # type: ignore[arg-type]
    return wt.AddCheckpointRequest(old, proof, note_text).to_bytes()


def decide(body: bytes, last: cp.Checkpoint | None) -> cp.Checkpoint:
    return wt.check_add_checkpoint(wt.AddCheckpointRequest.from_bytes(body), KNOWN, last)


def test_request_layout_follows_the_spec() -> None:
    body = request(5, 9)
    lines = body.decode().split("\n")
    assert lines[0] == "old 5"
    proof = TREE.consistency_proof(5, 9)
    assert lines[1 : 1 + len(proof)] == [base64.b64encode(h).decode() for h in proof]
    assert lines[1 + len(proof)] == ""
    assert lines[2 + len(proof)] == ORIGIN
    parsed = wt.AddCheckpointRequest.from_bytes(body)
    assert parsed.old_size == 5 and list(parsed.proof) == proof
    assert parsed.to_bytes() == body


def test_first_and_extending_checkpoints_are_cosigned() -> None:
    assert decide(request(0, 10), None) == at(10)
    assert decide(request(10, 25), at(10)) == at(25)
    assert decide(request(25, 25), at(25)) == at(25)  # same checkpoint again: cosigned again


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "no empty line"),
        (b"old 1\n", "no empty line"),
        (b"new 1\n\nx", "first line is not 'old <size>'"),
        (b"old 01\n\nx", "first line"),
        (b"old -1\n\nx", "first line"),
        (b"old 99999999999999999999\n\nx", "beyond 2\\*\\*64-1"),
        (b"old 1\nnot base64!\n\nx", "proof line 0 is not base64"),
        (b"old 1\nAAAA\n\nx", "32-byte hash"),
        (b"old 1\n" + b"\n".join([base64.b64encode(b"\x00" * 32)] * 64) + b"\n\nx", "63"),
        (b"\xff\xfe\n\n", "not UTF-8"),
        (b"old 0\n\n" + b"x" * wt.MAX_REQUEST_BYTES, "too large"),
    ],
)
def test_malformed_requests_are_400(body: bytes, reason: str) -> None:
    with pytest.raises(wt.WitnessRefusedError, match=reason) as refused:
        wt.AddCheckpointRequest.from_bytes(body)
    assert refused.value.status == wt.Status.BAD_REQUEST


def refusal(body: bytes, last: cp.Checkpoint | None) -> wt.WitnessRefusedError:
    with pytest.raises(wt.WitnessRefusedError) as refused:
        decide(body, last)
    return refused.value


def test_each_refusal_has_the_spec_status() -> None:
    other = note.Ed25519NoteSigner("log.example/b", key("b"))
    unknown = wt.AddCheckpointRequest(
        0, (), cp.sign_checkpoint(cp.Checkpoint("log.example/b", 1, TREE.root(1)), other)
    ).to_bytes()
    assert refusal(unknown, None).status == wt.Status.NOT_FOUND
    assert refusal(request(0, 10, signer=IMPOSTOR), None).status == wt.Status.FORBIDDEN
    assert refusal(b"old 0\n\nnot a note", None).status == wt.Status.BAD_REQUEST
    above = refusal(request(0, 10).replace(b"old 0", b"old 11"), None)
    assert above.status == wt.Status.BAD_REQUEST
    stale = refusal(request(0, 30), at(10))
    assert (stale.status, stale.latest_size, stale.contradicts) == (wt.Status.CONFLICT, 10, False)
    assert refusal(request(5, 30), at(10)).latest_size == 10
    # Rollback: a smaller tree than the one cosigned can never be cosigned.
    assert refusal(request(0, 8), at(10)).status == wt.Status.CONFLICT
    assert refusal(request(10, 8), at(10)).status == wt.Status.BAD_REQUEST
    # Fork at the same size: 409; fork beyond: the proof fails, 422. Both are evidence.
    same = refusal(request(10, 10, tree=FORK), at(10))
    assert (same.status, same.contradicts) == (wt.Status.CONFLICT, True)
    beyond = refusal(request(10, 30, tree=FORK), at(10))
    assert (beyond.status, beyond.contradicts) == (wt.Status.UNPROCESSABLE, True)
    # A proof from size 0, or between equal sizes, must be empty.
    padded = wt.AddCheckpointRequest(
        10, (TREE.root(3),), cp.sign_checkpoint(at(10), LOG)
    ).to_bytes()
    assert refusal(padded, at(10)).status == wt.Status.UNPROCESSABLE
    from_zero = wt.AddCheckpointRequest(0, (TREE.root(3),), cp.sign_checkpoint(at(10), LOG))
    assert refusal(from_zero.to_bytes(), None).status == wt.Status.UNPROCESSABLE


def test_cosignature_line_verifies_as_cosignature_v1() -> None:
    note_text = cp.sign_checkpoint(at(10), LOG)
    line = wt.cosignature_lines(note_text, WITNESS)
    assert line.startswith("\u2014 witness.example/w ") and line.endswith("\n")
    _, cosignatures = cp.verify_cosignatures(note_text + line, LOG.verifier(), [WITNESS.verifier()])
    assert cosignatures == (cp.Cosignature("witness.example/w", WITNESS.key_hash, 1_800_000_000),)


@pytest.mark.parametrize(
    ("body", "size"), [(b"10\n", 10), (b"0\n", 0), (b"10", None), (b"010\n", None), (b"x\n", None)]
)
def test_size_response(body: bytes, size: int | None) -> None:
    if size is None:
        with pytest.raises(ValueError, match="409"):
            wt.parse_size_response(body)
    else:
        assert wt.parse_size_response(body) == size
