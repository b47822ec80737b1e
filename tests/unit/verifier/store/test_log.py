from __future__ import annotations

from pathlib import Path

import pytest

from attest import merkle
from attest.checkpoint import verify_checkpoint
from attest.note import Ed25519NoteSigner
from tests.builders import fixed_private_key
from verifier.store.base import EntryKind
from verifier.store.log import PendingEntry, TransparencyLog
from verifier.store.sqlite import SqliteStore


def make(tmp_path: Path) -> tuple[SqliteStore, TransparencyLog]:
    store = SqliteStore.open(tmp_path / "log.db")
    signer = Ed25519NoteSigner("example.org/log", fixed_private_key(9))
    return store, TransparencyLog(store, signer, lambda: 1_000)


def add(store: SqliteStore, log: TransparencyLog, items: list[bytes]) -> int:
    with store.transaction() as tx:
        log.begin(tx)
        first = log.append([PendingEntry(i, EntryKind.ATTESTATION) for i in items])
        log.flush(tx, 5)
    log.commit_succeeded()
    return first


def test_append_prove_checkpoint_and_reopen(tmp_path: Path) -> None:
    store, log = make(tmp_path)
    items = [b"e%d" % i for i in range(11)]
    assert add(store, log, items[:4]) == 0
    assert add(store, log, items[4:]) == 4
    leaves = [merkle.leaf_hash(i) for i in items]
    assert log.root() == merkle.root_from_leaf_hashes(leaves)
    checkpoint = log.sign_checkpoint()
    parsed = verify_checkpoint(checkpoint.note, log.signer.verifier())
    assert (parsed.tree_size, parsed.root_hash) == (11, log.root())
    merkle.verify_inclusion(7, 11, leaves[7], log.inclusion_proof(7, 11), parsed.root_hash)
    merkle.verify_consistency(5, 11, log.consistency_proof(5, 11), log.root_at(5), parsed.root_hash)
    assert log.sign_checkpoint() == checkpoint  # no growth, no new checkpoint
    store.close()
    store2, log2 = make(tmp_path)
    assert log2.size == 11
    assert log2.root() == parsed.root_hash
    add(store2, log2, [b"later"])
    assert log2.root() == merkle.root_from_leaf_hashes([*leaves, merkle.leaf_hash(b"later")])


def test_rollback_restores_the_tree(tmp_path: Path) -> None:
    store, log = make(tmp_path)
    add(store, log, [b"a", b"b"])
    root = log.root()
    with pytest.raises(RuntimeError), store.transaction() as tx:
        log.begin(tx)
        log.append([PendingEntry(b"c", EntryKind.ATTESTATION)])
        log.flush(tx, 5)
        raise RuntimeError("commit fails")
    log.rollback()
    assert (log.size, log.root()) == (2, root)
    assert store.tree_size() == 2
    add(store, log, [b"c"])
    assert log.root() == merkle.root_from_leaf_hashes(
        [merkle.leaf_hash(x) for x in (b"a", b"b", b"c")]
    )
