from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from attest import merkle
from attest.errors import ProofError
from tests.testdata import TLOG

PROBES = TLOG / "transparency-dev-merkle" / "testdata"
CT8 = json.loads((TLOG / "ct-leaves-8" / "ct_leaves_8.json").read_text())

CT8_LEAVES = [merkle.leaf_hash(bytes.fromhex(x)) for x in CT8["leaf_inputs_hex"]]

# One tree shared by the property tests; leaves are distinct.
BIG = 300
LEAVES = [merkle.leaf_hash(b"leaf-%d" % i) for i in range(BIG)]
TREE = merkle.MemoryTree.from_leaf_hashes(LEAVES)


def b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def probe_files(kind: str) -> list[Path]:
    files = sorted((PROBES / kind).rglob("*.json"))
    assert files, f"no {kind} probes under {PROBES}"
    return files


def probe_id(path: Path) -> str:
    return str(path.relative_to(PROBES))


class CountingReader:
    """A NodeReader over a MemoryTree that records every read."""

    def __init__(self, tree: merkle.MemoryTree) -> None:
        self.tree = tree
        self.calls: list[tuple[int, int]] = []

    def node(self, level: int, index: int) -> bytes:
        self.calls.append((level, index))
        return self.tree.node(level, index)


# --- Hashing and roots against the CT 8-leaf vectors ---------------------------------------------


def test_empty_root_and_hash_prefixes() -> None:
    assert merkle.EMPTY_ROOT.hex() == CT8["root_by_size_hex"][0]
    assert merkle.root_from_leaf_hashes([]) == merkle.EMPTY_ROOT
    assert [h.hex() for h in CT8_LEAVES] == CT8["node_hashes_hex"][0]
    assert merkle.node_hash(CT8_LEAVES[0], CT8_LEAVES[1]).hex() == CT8["node_hashes_hex"][1][0]


@pytest.mark.parametrize("size", range(9))
def test_roots_by_size(size: int) -> None:
    expected = CT8["root_by_size_hex"][size]
    assert merkle.root_from_leaf_hashes(CT8_LEAVES[:size]).hex() == expected
    tree = merkle.MemoryTree.from_leaf_hashes(CT8_LEAVES)
    assert tree.root(size).hex() == expected
    appender = merkle.TreeAppender()
    for digest in CT8_LEAVES[:size]:
        appender.append(digest)
    assert appender.root().hex() == expected


def test_memory_tree_holds_every_perfect_node() -> None:
    tree = merkle.MemoryTree.from_leaf_hashes(CT8_LEAVES)
    for level, row in enumerate(CT8["node_hashes_hex"]):
        assert [tree.node(level, i).hex() for i in range(len(row))] == row
        with pytest.raises(LookupError):
            tree.node(level, len(row))


@pytest.mark.parametrize("case", CT8["inclusion"], ids=lambda c: f"{c['index']}-of-{c['size']}")
def test_inclusion_proofs_match_ct_vectors(case: dict[str, Any]) -> None:
    index, size = case["index"], case["size"]
    listed = merkle.inclusion_proof(index, CT8_LEAVES[:size])
    assert [h.hex() for h in listed] == case["proof_hex"]
    tree = merkle.MemoryTree.from_leaf_hashes(CT8_LEAVES)
    assert merkle.inclusion_proof_from(tree, index, size) == listed
    merkle.verify_inclusion(index, size, CT8_LEAVES[index], listed, tree.root(size))


@pytest.mark.parametrize("case", CT8["consistency"], ids=lambda c: f"{c['size1']}-to-{c['size2']}")
def test_consistency_proofs_match_ct_vectors(case: dict[str, Any]) -> None:
    size1, size2 = case["size1"], case["size2"]
    listed = merkle.consistency_proof(size1, CT8_LEAVES[:size2])
    assert [h.hex() for h in listed] == case["proof_hex"]
    tree = merkle.MemoryTree.from_leaf_hashes(CT8_LEAVES)
    assert merkle.consistency_proof_from(tree, size1, size2) == listed
    merkle.verify_consistency(size1, size2, listed, tree.root(size1), tree.root(size2))


# --- The transparency-dev probes ----------------------------------------------------------------


@pytest.mark.parametrize("path", probe_files("inclusion"), ids=probe_id)
def test_inclusion_probe(path: Path) -> None:
    probe = json.loads(path.read_text())
    args = (
        probe["leafIdx"],
        probe["treeSize"],
        b64(probe["leafHash"]),
        [b64(p) for p in probe["proof"] or []],
        b64(probe["root"]),
    )
    if probe["wantErr"]:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(*args)
    else:
        merkle.verify_inclusion(*args)


@pytest.mark.parametrize("path", probe_files("consistency"), ids=probe_id)
def test_consistency_probe(path: Path) -> None:
    probe = json.loads(path.read_text())
    args = (
        probe["size1"],
        probe["size2"],
        [b64(p) for p in probe["proof"] or []],
        b64(probe["root1"]),
        b64(probe["root2"]),
    )
    if probe["wantErr"]:
        with pytest.raises(ProofError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)


# --- Policy edges ------------------------------------------------------------------------------


def test_verify_consistency_edges() -> None:
    root1, root2 = TREE.root(1), TREE.root(2)
    with pytest.raises(ProofError, match="empty tree"):
        merkle.verify_consistency(0, 0, [], merkle.EMPTY_ROOT, merkle.EMPTY_ROOT)
    with pytest.raises(ProofError, match="empty tree"):
        merkle.verify_consistency(0, 2, [], merkle.EMPTY_ROOT, root2)
    with pytest.raises(ProofError, match="smaller"):
        merkle.verify_consistency(2, 1, [], root2, root1)
    with pytest.raises(ProofError, match="negative"):
        merkle.verify_consistency(-1, 2, [], root1, root2)
    with pytest.raises(ProofError, match="not empty"):
        merkle.verify_consistency(1, 1, [root1], root1, root1)
    with pytest.raises(ProofError, match="roots differ"):
        merkle.verify_consistency(2, 2, [], root1, root2)
    merkle.verify_consistency(2, 2, [], root2, root2)
    with pytest.raises(ProofError, match="32"):
        merkle.verify_consistency(1, 2, [LEAVES[1][:31]], root1, root2)


def test_verify_inclusion_edges() -> None:
    root = TREE.root(3)
    proof = merkle.inclusion_proof(2, LEAVES[:3])
    with pytest.raises(ProofError, match="size 0"):
        merkle.verify_inclusion(0, 0, LEAVES[0], [], merkle.EMPTY_ROOT)
    with pytest.raises(ProofError, match="outside"):
        merkle.verify_inclusion(3, 3, LEAVES[2], proof, root)
    with pytest.raises(ProofError, match="outside"):
        merkle.verify_inclusion(-1, 3, LEAVES[2], proof, root)
    with pytest.raises(ProofError, match="leaf hash"):
        merkle.verify_inclusion(2, 3, LEAVES[2] + b"\x00", proof, root)
    with pytest.raises(ProofError, match="root hash"):
        merkle.verify_inclusion(2, 3, LEAVES[2], proof, root[:16])
    with pytest.raises(ProofError, match="expected 1"):
        merkle.verify_inclusion(2, 3, LEAVES[2], [*proof, proof[0]], root)
    assert merkle.root_from_inclusion_proof(2, 3, LEAVES[2], proof) == root


def test_generators_reject_impossible_requests() -> None:
    with pytest.raises(ValueError, match="outside"):
        merkle.inclusion_proof(3, LEAVES[:3])
    with pytest.raises(ValueError, match="outside"):
        merkle.inclusion_proof_from(TREE, 0, 0)
    with pytest.raises(ValueError, match="size1"):
        merkle.consistency_proof(0, LEAVES[:3])
    with pytest.raises(ValueError, match="size1"):
        merkle.consistency_proof(4, LEAVES[:3])
    with pytest.raises(ValueError, match="size1"):
        merkle.consistency_proof_from(TREE, 5, 4)
    with pytest.raises(ValueError, match="aligned"):
        merkle.range_hash(TREE, 1, 3)
    with pytest.raises(ValueError, match="outside"):
        TREE.root(BIG + 1)
    with pytest.raises(ValueError, match="32"):
        merkle.TreeAppender().append(b"short")


# --- Reader-based functions against the list-based reference ------------------------------------


@pytest.mark.parametrize("size", range(1, 66))
def test_reader_proofs_equal_list_proofs_for_every_position(size: int) -> None:
    leaves = LEAVES[:size]
    root = merkle.root_from_leaf_hashes(leaves)
    assert merkle.root_from(TREE, size) == root
    for index in range(size):
        listed = merkle.inclusion_proof(index, leaves)
        assert merkle.inclusion_proof_from(TREE, index, size) == listed
        merkle.verify_inclusion(index, size, leaves[index], listed, root)
    for size1 in range(1, size + 1):
        listed = merkle.consistency_proof(size1, leaves)
        assert merkle.consistency_proof_from(TREE, size1, size) == listed
        merkle.verify_consistency(size1, size, listed, TREE.root(size1), root)


def test_reader_proofs_on_a_larger_tree_read_few_nodes() -> None:
    size = 5000
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    tree = merkle.MemoryTree.from_leaf_hashes(leaves)
    root = merkle.root_from_leaf_hashes(leaves)
    bound = 3 * size.bit_length() + 1
    for index in (0, 1, 2047, 2048, 4095, 4096, 4999, 3333):
        reader = CountingReader(tree)
        proof = merkle.inclusion_proof_from(reader, index, size)
        assert len(reader.calls) <= bound
        assert proof == merkle.inclusion_proof(index, leaves)
        merkle.verify_inclusion(index, size, leaves[index], proof, root)
    for size1 in (1, 2, 3, 1000, 1024, 4097, 4999):
        reader = CountingReader(tree)
        proof = merkle.consistency_proof_from(reader, size1, size)
        assert len(reader.calls) <= bound
        assert proof == merkle.consistency_proof(size1, leaves)
    reader = CountingReader(tree)
    assert merkle.root_from(reader, 4999) == merkle.root_from_leaf_hashes(leaves[:4999])
    assert len(reader.calls) == (4999).bit_count()


def test_append_reports_exactly_the_nodes_it_completes() -> None:
    appender = merkle.TreeAppender()
    tree = merkle.MemoryTree()
    for index, digest in enumerate(LEAVES[:130]):
        completed = appender.append(digest)
        tree.append(digest)
        new_size = index + 1
        expected = [
            (level, (new_size >> level) - 1)
            for level in range(new_size.bit_length())
            if new_size % (1 << level) == 0
        ]
        assert [(level, i) for level, i, _ in completed] == expected
        for level, i, value in completed:
            assert value == merkle.range_hash(tree, i << level, (i + 1) << level)
        assert appender.size == new_size
        assert appender.root() == merkle.root_from_leaf_hashes(LEAVES[:new_size])


@pytest.mark.parametrize("size", [0, 1, 2, 3, 7, 8, 100, 255, 256, 299])
def test_appender_resumes_from_the_right_edge(size: int) -> None:
    reader = CountingReader(TREE)
    appender = merkle.TreeAppender.from_reader(reader, size)
    assert len(reader.calls) == size.bit_count()
    assert appender.size == size
    assert appender.root() == merkle.root_from_leaf_hashes(LEAVES[:size])
    for digest in LEAVES[size:]:
        appender.append(digest)
    assert appender.root() == TREE.root()


# --- Property tests: valid proofs verify, altered ones do not -----------------------------------


def _ranges_path(index: int, start: int, end: int) -> list[tuple[int, int]]:
    """RFC 6962 PATH as the leaf ranges of its hashes (an oracle independent of merkle.py)."""
    if end - start <= 1:
        return []
    k = 1
    while k * 2 < end - start:
        k *= 2
    if index < start + k:
        return [*_ranges_path(index, start, start + k), (start + k, end)]
    return [*_ranges_path(index, start + k, end), (start, start + k)]


def _ranges_subproof(m: int, start: int, end: int, complete: bool) -> list[tuple[int, int]]:
    """RFC 6962 SUBPROOF as leaf ranges."""
    if m == end - start:
        return [] if complete else [(start, end)]
    k = 1
    while k * 2 < end - start:
        k *= 2
    if m <= k:
        return [*_ranges_subproof(m, start, start + k, complete), (start + k, end)]
    return [*_ranges_subproof(m - k, start + k, end, False), (start, start + k)]


def _expression(start: int, end: int, atoms: dict[tuple[int, int], str]) -> object:
    """How the MTH of [start, end) is built from the atoms (proof positions), per the RFC."""
    if (start, end) in atoms:
        return atoms[(start, end)]
    if end - start <= 1:
        return ("leaf", start)  # a hash the verifier would not have: never equal across claims
    k = 1
    while k * 2 < end - start:
        k *= 2
    return (_expression(start, start + k, atoms), _expression(start + k, end, atoms))


def _inclusion_shape(index: int, size: int) -> object:
    ranges = _ranges_path(index, 0, size)
    atoms = {r: f"p{i}" for i, r in enumerate(ranges)}
    atoms[(index, index + 1)] = "leaf"
    return len(ranges), _expression(0, size, atoms)


def _consistency_shape(size1: int, size2: int) -> object:
    ranges = _ranges_subproof(size1, 0, size2, True)
    atoms = {r: f"p{i}" for i, r in enumerate(ranges)}
    if size1 & (size1 - 1) == 0:
        # The old tree is a perfect subtree of the new one: the verifier starts from root1.
        return len(ranges), "root1", _expression(0, size2, {**atoms, (0, size1): "root1"})
    return len(ranges), _expression(0, size1, atoms), _expression(0, size2, atoms)


def _flip_bit(value: bytes, bit: int) -> bytes:
    bit %= 8 * len(value)
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@st.composite
def inclusion_cases(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, BIG))
    return draw(st.integers(0, size - 1)), size


@st.composite
def consistency_cases(draw: st.DrawFn) -> tuple[int, int]:
    size2 = draw(st.integers(1, BIG))
    return draw(st.integers(1, size2)), size2


@settings(max_examples=150, deadline=None)
@given(inclusion_cases())
def test_property_inclusion_proofs_verify(case: tuple[int, int]) -> None:
    index, size = case
    proof = merkle.inclusion_proof_from(TREE, index, size)
    assert proof == merkle.inclusion_proof(index, LEAVES[:size])
    merkle.verify_inclusion(index, size, LEAVES[index], proof, TREE.root(size))


@settings(max_examples=150, deadline=None)
@given(inclusion_cases(), st.data())
def test_property_altered_inclusion_proofs_fail(case: tuple[int, int], data: st.DataObject) -> None:
    index, size = case
    proof = merkle.inclusion_proof_from(TREE, index, size)
    leaf, root = LEAVES[index], TREE.root(size)
    bit = data.draw(st.integers(0, 255), label="bit")
    alteration = data.draw(
        st.sampled_from(["flip-proof", "flip-leaf", "flip-root", "drop", "add", "index", "root"]),
        label="alteration",
    )
    altered = list(proof)
    if alteration == "flip-proof":
        assume(proof)
        at = data.draw(st.integers(0, len(proof) - 1), label="at")
        altered[at] = _flip_bit(proof[at], bit)
    elif alteration == "flip-leaf":
        leaf = _flip_bit(leaf, bit)
    elif alteration == "flip-root":
        root = _flip_bit(root, bit)
    elif alteration == "drop":
        assume(proof)
        del altered[data.draw(st.integers(0, len(proof) - 1), label="at")]
    elif alteration == "add":
        altered.insert(data.draw(st.integers(0, len(proof)), label="at"), LEAVES[bit % BIG])
    elif alteration == "index":
        index = data.draw(st.integers(-2, size + 2).filter(lambda i: i != case[0]), label="i")
    else:
        other = data.draw(st.integers(0, BIG).filter(lambda s: s != size), label="size")
        root = TREE.root(other)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(index, size, leaf, altered, root)


@settings(max_examples=100, deadline=None)
@given(inclusion_cases(), st.integers(-1, BIG + 1))
def test_property_inclusion_under_a_wrong_size(case: tuple[int, int], claimed: int) -> None:
    """A proof binds the size only through the shape of the tree it implies.

    Under another size it must fail, unless that size gives the same shape (the same proof length
    and the same way of combining the hashes), which RFC 6962 proofs cannot tell apart: the size is
    bound by the signed checkpoint, not by the proof.
    """
    index, size = case
    assume(claimed != size)
    proof = merkle.inclusion_proof_from(TREE, index, size)
    same_shape = 0 <= index < claimed and _inclusion_shape(index, claimed) == _inclusion_shape(
        index, size
    )
    if same_shape:
        merkle.verify_inclusion(index, claimed, LEAVES[index], proof, TREE.root(size))
    else:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(index, claimed, LEAVES[index], proof, TREE.root(size))


@settings(max_examples=150, deadline=None)
@given(consistency_cases())
def test_property_consistency_proofs_verify(case: tuple[int, int]) -> None:
    size1, size2 = case
    proof = merkle.consistency_proof_from(TREE, size1, size2)
    assert proof == merkle.consistency_proof(size1, LEAVES[:size2])
    merkle.verify_consistency(size1, size2, proof, TREE.root(size1), TREE.root(size2))


@settings(max_examples=150, deadline=None)
@given(consistency_cases(), st.data())
def test_property_altered_consistency_proofs_fail(
    case: tuple[int, int], data: st.DataObject
) -> None:
    size1, size2 = case
    proof = merkle.consistency_proof_from(TREE, size1, size2)
    root1, root2 = TREE.root(size1), TREE.root(size2)
    bit = data.draw(st.integers(0, 255), label="bit")
    alteration = data.draw(
        st.sampled_from(["flip-proof", "flip-root1", "flip-root2", "drop", "add", "roots"]),
        label="alteration",
    )
    altered = list(proof)
    if alteration == "flip-proof":
        assume(proof)
        at = data.draw(st.integers(0, len(proof) - 1), label="at")
        altered[at] = _flip_bit(proof[at], bit)
    elif alteration == "flip-root1":
        # With a power-of-two size1 and size2 > size1, root1 is the seed: flipping it still breaks
        # the rebuilt root2.
        root1 = _flip_bit(root1, bit)
    elif alteration == "flip-root2":
        root2 = _flip_bit(root2, bit)
    elif alteration == "drop":
        assume(proof)
        del altered[data.draw(st.integers(0, len(proof) - 1), label="at")]
    elif alteration == "add":
        altered.insert(data.draw(st.integers(0, len(proof)), label="at"), LEAVES[bit % BIG])
    else:
        assume(size1 != size2)
        root1, root2 = root2, root1
    with pytest.raises(ProofError):
        merkle.verify_consistency(size1, size2, altered, root1, root2)


@settings(max_examples=150, deadline=None)
@given(consistency_cases(), st.integers(-1, BIG + 1), st.integers(-1, BIG + 1), st.booleans())
def test_property_consistency_under_wrong_sizes(
    case: tuple[int, int], other1: int, other2: int, change_both: bool
) -> None:
    """Claimed sizes other than the real ones fail unless they imply the same shape."""
    size1, size2 = case
    claimed1 = other1
    claimed2 = other2 if change_both else size2
    assume((claimed1, claimed2) != (size1, size2))
    proof = merkle.consistency_proof_from(TREE, size1, size2)
    root1, root2 = TREE.root(size1), TREE.root(size2)
    if size1 == size2:
        # An empty proof between equal roots holds for any pair of equal sizes.
        same_shape = 0 < claimed1 == claimed2
    else:
        same_shape = 0 < claimed1 < claimed2 and _consistency_shape(
            claimed1, claimed2
        ) == _consistency_shape(size1, size2)
    if same_shape:
        merkle.verify_consistency(claimed1, claimed2, proof, root1, root2)
    else:
        with pytest.raises(ProofError):
            merkle.verify_consistency(claimed1, claimed2, proof, root1, root2)


def test_small_trees_exhaustively_accept_exactly_the_same_shapes() -> None:
    """Every (real, claimed) pair of positions up to 12 leaves: accept iff the shapes agree."""
    limit = 12
    for size in range(1, limit + 1):
        root = TREE.root(size)
        for index in range(size):
            proof = merkle.inclusion_proof_from(TREE, index, size)
            for claimed_index in range(limit + 1):
                for claimed_size in range(limit + 1):
                    ok = claimed_index < claimed_size and (
                        _inclusion_shape(claimed_index, claimed_size)
                        == _inclusion_shape(index, size)
                    )
                    # Another index of the same size never has the same shape.
                    assert not ok or claimed_size != size or claimed_index == index
                    try:
                        merkle.verify_inclusion(
                            claimed_index, claimed_size, LEAVES[index], proof, root
                        )
                    except ProofError:
                        assert not ok, (index, size, claimed_index, claimed_size)
                    else:
                        assert ok, (index, size, claimed_index, claimed_size)
    for size2 in range(2, limit + 1):
        for size1 in range(1, size2):
            proof = merkle.consistency_proof_from(TREE, size1, size2)
            roots = TREE.root(size1), TREE.root(size2)
            for claimed2 in range(limit + 1):
                for claimed1 in range(claimed2 + 1):
                    ok = 0 < claimed1 < claimed2 and _consistency_shape(
                        claimed1, claimed2
                    ) == _consistency_shape(size1, size2)
                    try:
                        merkle.verify_consistency(claimed1, claimed2, proof, *roots)
                    except ProofError:
                        assert not ok, (size1, size2, claimed1, claimed2)
                    else:
                        assert ok, (size1, size2, claimed1, claimed2)
