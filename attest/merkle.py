"""The RFC 6962 / RFC 9162 Merkle tree behind the verifier's transparency log.

Leaves are hashed as SHA-256(0x00 || data), interior nodes as SHA-256(0x01 || left || right), and
the empty tree's root is SHA-256(""). A client checks that an envelope is in the log, and that a
later view of the log extends an earlier one, with the two ``verify_*`` functions; each returns
None on success and raises :class:`~attest.errors.ProofError`, naming the failed check, otherwise::

    leaves = [leaf_hash(envelope) for envelope in envelopes]
    root = root_from_leaf_hashes(leaves)
    verify_inclusion(3, len(leaves), leaves[3], inclusion_proof(3, leaves), root)
    verify_consistency(2, len(leaves), consistency_proof(2, leaves), old_root, root)

There are two ways to produce proofs. The list functions (:func:`root_from_leaf_hashes`,
:func:`inclusion_proof`, :func:`consistency_proof`) follow the RFC's recursive definitions over a
list of leaf hashes; they are the reference and suit small trees and tests. A log too large to hold
in memory stores the hashes of its *perfect* subtrees (2**level leaves each, level 0 being the leaf
hashes) and serves them through a :class:`NodeReader`; :func:`inclusion_proof_from`,
:func:`consistency_proof_from` and :func:`root_from` then read O(log n) nodes per call, for any
index and any earlier tree size. :class:`TreeAppender` keeps only the right edge of the tree
(a compact range): each :meth:`TreeAppender.append` returns the perfect nodes that the new leaf
completed, which is exactly what a store must persist for those readers to work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

from attest.errors import ProofError

HASH_SIZE = 32
"""Size of every hash in the tree, in bytes."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""The root hash of the tree with no leaves."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """The hash of a leaf whose content is ``data``: SHA-256(0x00 || data)."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: SHA-256(0x01 || left || right)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


# --- Reference implementation over a list of leaf hashes -----------------------------------------


def _split_point(size: int) -> int:
    """The largest power of two strictly smaller than ``size`` (for ``size`` >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


def _mth(leaf_hashes: Sequence[bytes], start: int, end: int) -> bytes:
    """MTH of ``leaf_hashes[start:end]``, bottom-up in linear time.

    Pairing neighbours level by level and carrying an unpaired last node up unchanged gives the
    same tree as the RFC's split at the largest power of two below the size.
    """
    if start == end:
        return EMPTY_ROOT
    level = list(leaf_hashes[start:end])
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash (MTH) of a list of leaf hashes; :data:`EMPTY_ROOT` for no leaves."""
    return _mth(leaf_hashes, 0, len(leaf_hashes))


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """The audit path (RFC 6962 PATH) for leaf ``index`` in the tree of all ``leaf_hashes``.

    Hashes are ordered from the leaf's sibling up to the child of the root. Raises ValueError
    when ``index`` is not a leaf of the tree.
    """
    size = len(leaf_hashes)
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    proof: list[bytes] = []

    def path(m: int, start: int, end: int) -> None:
        # PATH(m, D[start:end]): the path within the subtree, then the subtree's sibling.
        if end - start <= 1:
            return
        k = _split_point(end - start)
        if m < k:
            path(m, start, start + k)
            proof.append(_mth(leaf_hashes, start + k, end))
        else:
            path(m - k, start + k, end)
            proof.append(_mth(leaf_hashes, start, start + k))

    path(index, 0, size)
    return proof


def consistency_proof(size1: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """The consistency proof (RFC 6962 PROOF) from the tree's first ``size1`` leaves to all of them.

    Empty when ``size1`` equals the current size. Raises ValueError unless
    1 <= ``size1`` <= ``len(leaf_hashes)``: nothing can be proved about an empty tree.
    """
    size2 = len(leaf_hashes)
    if not 0 < size1 <= size2:
        raise ValueError(f"a consistency proof needs 0 < size1 <= {size2}, got size1={size1}")
    proof: list[bytes] = []

    def subproof(m: int, start: int, end: int, complete: bool) -> None:
        # SUBPROOF(m, D[start:end], complete): `complete` says whether D[start:end] is the whole
        # old tree, whose root the verifier already has.
        n = end - start
        if m == n:
            if not complete:
                proof.append(_mth(leaf_hashes, start, end))
            return
        k = _split_point(n)
        if m <= k:
            subproof(m, start, start + k, complete)
            proof.append(_mth(leaf_hashes, start + k, end))
        else:
            subproof(m - k, start + k, end, False)
            proof.append(_mth(leaf_hashes, start, start + k))

    subproof(size1, 0, size2, True)
    return proof


# --- Verification --------------------------------------------------------------------------------


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, expected {HASH_SIZE}")


def _check_proof_hashes(proof: Sequence[bytes]) -> None:
    for i, value in enumerate(proof):
        _check_hash(value, f"proof hash {i}")


def root_from_inclusion_proof(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root that ``proof`` implies for leaf ``index`` with hash ``leaf_hash`` in a tree of
    ``size`` leaves. Raises :class:`ProofError` when the proof cannot be one for that position
    (index out of range, wrong number of hashes, a hash that is not 32 bytes)."""
    if size <= 0:
        raise ProofError(f"no leaf can be included in a tree of size {size}")
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    _check_hash(leaf_hash, "leaf hash")
    _check_proof_hashes(proof)
    # Below level `inner` the leaf's path and the last leaf's path differ, so every ancestor has a
    # sibling; above it the leaf's ancestors lie on the tree's right edge and have a sibling (on
    # the left) only where the index has a 1 bit.
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    if len(proof) != inner + border:
        raise ProofError(
            f"inclusion proof has {len(proof)} hashes, expected {inner + border} "
            f"for leaf {index} in a tree of size {size}"
        )
    computed = leaf_hash
    for level in range(inner):
        if (index >> level) & 1:
            computed = node_hash(proof[level], computed)
        else:
            computed = node_hash(computed, proof[level])
    for sibling in proof[inner:]:
        computed = node_hash(sibling, computed)
    return computed


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    Returns None on success; raises :class:`ProofError` naming the failed check otherwise.
    """
    _check_hash(root, "root hash")
    computed = root_from_inclusion_proof(index, size, leaf_hash, proof)
    if computed != root:
        raise ProofError(
            f"inclusion proof for leaf {index} in a tree of size {size} "
            "leads to a root other than the expected one"
        )


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree of ``size2`` leaves with ``root2`` extends the one of ``size1`` leaves
    with ``root1``.

    Returns None on success; raises :class:`ProofError` naming the failed check otherwise.
    Policy: ``size1`` must be at least 1 (a proof from the empty tree proves nothing) and at most
    ``size2``; equal sizes need an empty proof and equal roots (compared as given, whatever their
    length, as the transparency-dev probes expect); otherwise both roots and every proof hash must
    be 32 bytes and the proof must have exactly the expected number of hashes.
    """
    if size1 < 0 or size2 < 0:
        raise ProofError(f"tree sizes must not be negative, got {size1} and {size2}")
    if size2 < size1:
        raise ProofError(f"size2 ({size2}) is smaller than size1 ({size1})")
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree (size1 = 0) proves nothing")
    if size1 == size2:
        if proof:
            raise ProofError(f"sizes are equal ({size1}) but the proof is not empty")
        if root1 != root2:
            raise ProofError(f"sizes are equal ({size1}) but the roots differ")
        return
    _check_hash(root1, "root1")
    _check_hash(root2, "root2")
    _check_proof_hashes(proof)

    # The old tree's rightmost perfect subtree has 2**shift leaves and is node `index` at level
    # `shift`. The proof is that node (omitted when it is the whole old tree, i.e. size1 is a power
    # of two) followed by its audit path in the new tree; the same path, less the hashes to its
    # right, rebuilds the old root.
    shift = (size1 & -size1).bit_length() - 1
    index = (size1 - 1) >> shift
    last = (size2 - 1) >> shift
    inner = (index ^ last).bit_length()
    border = (index >> inner).bit_count()
    seeded = index != 0
    expected = int(seeded) + inner + border
    if len(proof) != expected:
        raise ProofError(
            f"consistency proof has {len(proof)} hashes, expected {expected} "
            f"from size {size1} to size {size2}"
        )
    hash1 = hash2 = proof[0] if seeded else root1
    path = proof[1:] if seeded else proof
    for level in range(inner):
        if (index >> level) & 1:
            hash1 = node_hash(path[level], hash1)
            hash2 = node_hash(path[level], hash2)
        else:
            hash2 = node_hash(hash2, path[level])
    for sibling in path[inner:]:
        hash1 = node_hash(sibling, hash1)
        hash2 = node_hash(sibling, hash2)
    if hash1 != root1:
        raise ProofError(f"consistency proof does not rebuild root1 of the tree of size {size1}")
    if hash2 != root2:
        raise ProofError(f"consistency proof does not rebuild root2 of the tree of size {size2}")


# --- Proofs from stored perfect subtrees ---------------------------------------------------------


class NodeReader(Protocol):
    """Read access to the hashes of a tree's perfect subtrees."""

    def node(self, level: int, index: int) -> bytes:
        """The hash of the perfect subtree of 2**level leaves starting at leaf index * 2**level.

        Level 0 is the leaf hashes. Only complete subtrees are ever asked for.
        """
        ...


def range_hash(reader: NodeReader, start: int, end: int) -> bytes:
    """MTH of leaves [``start``, ``end``), read as at most log2(end - start) + 1 perfect subtrees.

    ``start`` must be a multiple of the largest power of two not above ``end - start``: true of
    every node of a Merkle tree, the only ranges a proof needs. An empty range is
    :data:`EMPTY_ROOT`.
    """
    width = end - start
    if start < 0 or width < 0:
        raise ValueError(f"invalid leaf range [{start}, {end})")
    if width == 0:
        return EMPTY_ROOT
    if start % (1 << (width.bit_length() - 1)):
        raise ValueError(f"leaf range [{start}, {end}) is not aligned to a subtree")
    # The range splits into perfect subtrees of decreasing size, one per 1 bit of its width;
    # its MTH folds them from the right.
    parts: list[bytes] = []
    offset = start
    for level in range(width.bit_length() - 1, -1, -1):
        if (width >> level) & 1:
            parts.append(reader.node(level, offset >> level))
            offset += 1 << level
    result = parts[-1]
    for part in reversed(parts[:-1]):
        result = node_hash(part, result)
    return result


def root_from(reader: NodeReader, size: int) -> bytes:
    """The root of the tree made of the first ``size`` leaves."""
    return range_hash(reader, 0, size)


def _path_from(reader: NodeReader, level: int, index: int, size: int) -> list[bytes]:
    """Audit path of node ``index`` at ``level`` in the tree of ``size`` leaves, up to the root."""
    last = (size - 1) >> level
    inner = (index ^ last).bit_length()
    proof: list[bytes] = []
    for height in range(inner):
        at = level + height
        sibling = (index >> height) ^ 1
        if sibling & 1:
            # A right sibling; only the highest one can extend past the end of the tree.
            proof.append(range_hash(reader, sibling << at, min((sibling + 1) << at, size)))
        else:
            proof.append(reader.node(at, sibling))
    for height in range(inner, last.bit_length()):
        if (index >> height) & 1:
            proof.append(reader.node(level + height, (index >> height) ^ 1))
    return proof


def inclusion_proof_from(reader: NodeReader, index: int, size: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of the first ``size`` leaves.

    Same result as :func:`inclusion_proof`; raises ValueError when ``index`` is not below ``size``.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    return _path_from(reader, 0, index, size)


def consistency_proof_from(reader: NodeReader, size1: int, size2: int) -> list[bytes]:
    """The consistency proof from the first ``size1`` leaves to the first ``size2``.

    Same result as :func:`consistency_proof`; raises ValueError unless 0 < size1 <= size2.
    """
    if not 0 < size1 <= size2:
        raise ValueError(f"a consistency proof needs 0 < size1 <= size2, got {size1}, {size2}")
    if size1 == size2:
        return []
    shift = (size1 & -size1).bit_length() - 1
    index = (size1 - 1) >> shift
    proof = [reader.node(shift, index)] if index else []
    proof.extend(_path_from(reader, shift, index, size2))
    return proof


class TreeAppender:
    """The right edge of a growing tree (a compact range): append leaves, get the root.

    Holds one hash per 1 bit of the size, so memory and :meth:`root` are O(log n)::

        appender = TreeAppender()
        for level, index, digest in appender.append(leaf_hash(envelope)):
            store.put_node(level, index, digest)
        checkpoint_root = appender.root()
    """

    __slots__ = ("_edge", "_size")

    def __init__(self) -> None:
        self._size = 0
        # Perfect subtrees covering [0, size), largest (leftmost) first.
        self._edge: list[bytes] = []

    @classmethod
    def from_reader(cls, reader: NodeReader, size: int) -> TreeAppender:
        """Resume at ``size`` leaves, reading only the right edge's perfect subtrees."""
        if size < 0:
            raise ValueError(f"tree size must not be negative, got {size}")
        appender = cls()
        offset = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if (size >> level) & 1:
                appender._edge.append(reader.node(level, offset >> level))
                offset += 1 << level
        appender._size = size
        return appender

    @property
    def size(self) -> int:
        """The number of leaves appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf; return the (level, index, hash) of every perfect node it completed.

        The leaf itself comes first (level 0), then each ancestor that it closed, upwards.
        """
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, got {len(leaf_hash)}")
        index = self._size
        completed = [(0, index, leaf_hash)]
        digest = leaf_hash
        level = 0
        edge = self._edge
        while index & 1:
            digest = node_hash(edge.pop(), digest)
            index >>= 1
            level += 1
            completed.append((level, index, digest))
        edge.append(digest)
        self._size += 1
        return completed

    def root(self) -> bytes:
        """The root of the tree of all leaves appended so far."""
        if not self._edge:
            return EMPTY_ROOT
        digest = self._edge[-1]
        for left in reversed(self._edge[:-1]):
            digest = node_hash(left, digest)
        return digest


class MemoryTree:
    """A :class:`NodeReader` that keeps every perfect subtree in memory.

    For tests and for offline verification of an evidence bundle::

        tree = MemoryTree.from_leaf_hashes(leaf_hash(e) for e in envelopes)
        proof = tree.inclusion_proof(5)
    """

    __slots__ = ("_appender", "_levels")

    def __init__(self) -> None:
        self._appender = TreeAppender()
        self._levels: list[list[bytes]] = []

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Iterable[bytes]) -> MemoryTree:
        """A tree holding ``leaf_hashes`` in order."""
        tree = cls()
        for digest in leaf_hashes:
            tree.append(digest)
        return tree

    @property
    def size(self) -> int:
        """The number of leaves."""
        return self._appender.size

    def append(self, leaf_hash: bytes) -> int:
        """Add a leaf by its hash; return its index."""
        levels = self._levels
        for level, _index, digest in self._appender.append(leaf_hash):
            if level == len(levels):
                levels.append([])
            levels[level].append(digest)
        return self.size - 1

    def append_data(self, data: bytes) -> int:
        """Add a leaf by its content; return its index."""
        return self.append(leaf_hash(data))

    def node(self, level: int, index: int) -> bytes:
        """The hash of a complete perfect subtree; LookupError if it is not complete yet."""
        if level < 0 or index < 0 or level >= len(self._levels):
            raise LookupError(f"no complete node at level {level}, index {index}")
        row = self._levels[level]
        if index >= len(row):
            raise LookupError(f"no complete node at level {level}, index {index}")
        return row[index]

    def root(self, size: int | None = None) -> bytes:
        """The root at ``size`` leaves (default: all of them)."""
        return root_from(self, self._size_or_all(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path of leaf ``index`` at ``size`` leaves (default: all of them)."""
        return inclusion_proof_from(self, index, self._size_or_all(size))

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """The consistency proof from ``size1`` to ``size2`` leaves (default: all of them)."""
        return consistency_proof_from(self, size1, self._size_or_all(size2))

    def _size_or_all(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} is outside 0..{self.size}")
        return size
