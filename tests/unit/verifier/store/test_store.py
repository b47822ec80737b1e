"""The storage contract, run against every backend."""

from __future__ import annotations

import contextlib
import hashlib
import random
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from attest import merkle
from attest.errors import ConfigError
from tests.stores import make_store
from verifier.store.base import (
    AttestationRow,
    CheckpointRow,
    EntryKind,
    FindingRow,
    GapRow,
    InventoryRow,
    LabRow,
    NewEntry,
    NodeRow,
    Store,
)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = make_store(request.param, tmp_path)
    yield s
    s.close()


def entry(i: int, kind: EntryKind = EntryKind.ATTESTATION) -> NewEntry:
    raw = b"entry-%d" % i
    return NewEntry(
        entry=raw,
        leaf_hash=merkle.leaf_hash(raw),
        digest=hashlib.sha256(raw).digest(),
        kind=kind,
        lab_id="lab-a",
        node_id=b"\x01" * 32,
    )


def append(store: Store, items: list[NewEntry]) -> int:
    appender = merkle.TreeAppender.from_reader(_Reader(store), store.tree_size())
    nodes = []
    for item in items:
        nodes += appender.append(item.leaf_hash)
    with store.transaction() as tx:
        return tx.append_log(items, nodes, 123)


class _Reader:
    def __init__(self, store: Store) -> None:
        self.store = store

    def node(self, level: int, index: int) -> bytes:
        return self.store.node_hash(level, index)


def test_log_entries_nodes_and_proofs(store: Store) -> None:
    items = [entry(i) for i in range(13)]
    assert append(store, items[:5]) == 0
    assert append(store, items[5:]) == 5
    assert store.tree_size() == 13
    leaves = [e.leaf_hash for e in items]
    reader = _Reader(store)
    assert merkle.root_from(reader, 13) == merkle.root_from_leaf_hashes(leaves)
    assert merkle.inclusion_proof_from(reader, 6, 13) == merkle.inclusion_proof(6, leaves)
    got = store.get_entry(7)
    assert got is not None and got.entry == b"entry-7" and got.kind is EntryKind.ATTESTATION
    assert [e.index for e in store.entries([9, 2, 2])] == [2, 9]
    assert store.entry_index_by_digest(items[3].digest) == (3, EntryKind.ATTESTATION)
    assert store.entry_index_by_digest(b"\x00" * 32) is None


def test_failed_transaction_leaves_nothing(store: Store) -> None:
    append(store, [entry(0)])
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as tx:
        tx.append_log([entry(1)], [], 1)
        tx.put_lab(LabRow("lab-a", "A", b"\x02" * 32, 1))
        raise RuntimeError("boom")
    assert store.tree_size() == 1
    assert store.get_lab("lab-a") is None


@pytest.mark.parametrize("batch", [1, 4])
def test_each_envelope_once_in_the_log(store: Store, batch: int) -> None:
    """A digest already logged fails the whole insert, alone or among new entries (PostgreSQL
    takes a batch as one statement over arrays: it must fail as a whole, and roll back)."""
    append(store, [entry(0)])
    again = [entry(0)] + [entry(i) for i in range(10, 10 + batch - 1)]
    with pytest.raises(Exception), store.transaction() as tx:  # noqa: B017, PT011 - driver-specific
        tx.append_log(again, [], 1)
    assert store.tree_size() == 1
    assert [e.index for e in store.entries(range(5))] == [0]
    assert store.entry_index_by_digest(entry(10).digest) is None


def test_registry_rows(store: Store) -> None:
    node = NodeRow(
        node_id=b"\x01" * 32,
        lab_id="lab-a",
        public_key=b"\x03" * 32,
        name="gpu-01",
        state=1,
        enrolled_at_ns=10,
        enrollment_digest=b"\x04" * 32,
        enrollment_log_index=0,
        enrollment_payload=b"payload",
        revoked_at_ns=None,
        head_seq=None,
        head_digest=None,
        head_log_index=None,
        head_window_end_ns=None,
    )
    with store.transaction() as tx:
        tx.put_lab(LabRow("lab-a", "Lab A", b"\x02" * 32, 0))
        tx.insert_node(node, ["GPU-1", "GPU-2"])
        tx.put_inventory(InventoryRow("lab-a", 1, 5, ("GPU-1", "GPU-2"), 3))
        tx.set_node_heads([(node.node_id, 4, b"\x05" * 32, 9, 99)])
    assert store.gpu_owner("GPU-2") == node.node_id
    got = store.get_node(node.node_id)
    assert got is not None and (got.head_seq, got.head_log_index, got.head_window_end_ns) == (
        4,
        9,
        99,
    )
    with store.transaction() as tx:
        tx.set_node_state(node.node_id, 2, revoked_at_ns=77)
        tx.release_gpus(node.node_id)
    got = store.get_node(node.node_id)
    assert got is not None and (got.state, got.revoked_at_ns) == (2, 77)
    assert store.gpu_owner("GPU-1") is None
    assert store.inventory("lab-a")[0].gpu_uuids == ("GPU-1", "GPU-2")
    assert [lab.lab_id for lab in store.list_labs()] == ["lab-a"]


def test_attestations_windows_and_contributors(store: Store) -> None:
    node = b"\x01" * 32
    rows = [
        AttestationRow(
            node, seq, b"%032d" % seq, 10 + seq, "lab-a", seq * 100, seq * 100 + 100, flop, 0, 0
        )
        for seq, flop in enumerate([5, 2**70, 7, 2**70 + 1, 0])
    ]
    with store.transaction() as tx:
        tx.insert_attestations(rows)
    assert store.top_contributors("lab-a", 0, 1000, "upper_bound", 2) == [13, 11]
    # Attestations that contribute nothing are no evidence.
    assert store.top_contributors("lab-a", 0, 1000, "upper_bound", 10) == [13, 11, 12, 10]
    assert store.attestation_digest_at(node, 3) == b"%032d" % 3
    first = store.first_window_ending_after(node, 150)
    assert first is not None and first.seq == 1
    last = store.last_window_starting_before(node, 250)
    assert last is not None and last.seq == 2
    count, lo, hi, total = store.node_attestation_stats(node, 100, 400)
    assert (count, lo, hi, total) == (3, 1, 3, 2**70 + 7 + 2**70 + 1)


def test_findings_gaps_buckets_claims_meta(store: Store) -> None:
    node = b"\x01" * 32
    with store.transaction() as tx:
        tx.insert_findings(
            [
                FindingRow(i, "lab-a", node, 1 if i % 2 else 2, i * 10, i * 10 + 5, b"f%d" % i)
                for i in range(6)
            ]
        )
        tx.insert_gaps(
            [GapRow(node, 100, 200, 1, 2, 5, 6, True, 42, 2**66, 2**67, 3, ("NVIDIA H100",))]
        )
        tx.put_buckets("lab-a", {0: {"a": "1"}, 60: {"a": "2"}})
        tx.put_buckets("lab-a", {60: {"a": "3"}})
        assert tx.claim_once("k", 100, 0)
        assert not tx.claim_once("k", 200, 50)
        assert tx.claim_once("k", 300, 150)
        tx.set_meta("secret", b"xyz")
        tx.save_checkpoint(CheckpointRow(3, b"\x00" * 32, "note", 9))
    assert [f.log_index for f in store.findings("lab-a", after_index=1, kinds=[1])] == [3, 5]
    assert [f.log_index for f in store.findings("lab-a", since_ns=25, until_ns=45)] == [2, 3, 4]
    gaps = store.gaps_overlapping(node, 150, 160)
    assert len(gaps) == 1 and gaps[0].energy_bound_flop == 2**66 and gaps[0].energy_bounded
    assert gaps[0].gpu_models == ("NVIDIA H100",)
    assert store.gaps_overlapping(node, 200, 300) == []
    assert store.buckets("lab-a", 0, 100) == {0: {"a": "1"}, 60: {"a": "3"}}
    assert store.get_meta("secret") == b"xyz"
    checkpoint = store.latest_checkpoint()
    assert checkpoint is not None and checkpoint.tree_size == 3


def test_stored_bytes_and_snapshot(store: Store) -> None:
    append(store, [entry(i) for i in range(20)])
    assert store.stored_bytes() > 0
    with store.snapshot() as view:
        size = view.tree_size()
        append(store, [entry(100)])  # a commit after the snapshot began
        assert view.tree_size() == size
    assert store.tree_size() == size + 1


HOUR_NS = 3_600 * 10**9


def _random_rows(seed: int) -> list[AttestationRow]:
    """Two nodes' chains over about six hours: windows of 10 s to 10 min, some gaps and seq
    jumps, FLOP figures up to 2**66 (above what one column of SQL integers holds)."""
    rng = random.Random(seed)
    rows = []
    for n, node in enumerate((b"\x01" * 32, b"\x02" * 32)):
        t = 5 * HOUR_NS + rng.randrange(HOUR_NS)  # not on an hour boundary
        seq = 0
        while t < 11 * HOUR_NS:
            length = rng.randrange(10, 600) * 10**9
            upper = rng.choice([0, rng.randrange(2**66), 2**64 - 1, rng.randrange(10**15)])
            rows.append(
                AttestationRow(
                    node,
                    seq,
                    b"%d-%032d" % (n, seq),
                    len(rows),
                    "lab-a",
                    t,
                    t + length,
                    upper,
                    0,
                    0,
                )
            )
            t += length + rng.choice([0, 0, 0, rng.randrange(1, 3_000) * 10**9])
            seq += rng.choice([1, 1, 1, 1, 3])
    return rows


def _brute_stats(
    rows: list[AttestationRow], node: bytes, start: int, end: int
) -> tuple[int, int | None, int | None, int]:
    inside = [r for r in rows if r.node_id == node and start <= r.window_start_ns < end]
    seqs = [r.seq for r in inside]
    return (
        len(inside),
        min(seqs) if seqs else None,
        max(seqs) if seqs else None,
        sum(r.upper_bound_flop for r in inside),
    )


def _insert_in_pieces(store: Store, rows: list[AttestationRow], seed: int) -> None:
    rng = random.Random(seed)
    i = 0
    while i < len(rows):  # several transactions, so hour rollups are merged across them
        size = rng.randrange(1, 40)
        with store.transaction() as tx:
            tx.insert_attestations(rows[i : i + size])
        i += size


def test_node_stats_from_hour_rollups_agree_with_the_rows(store: Store) -> None:
    rows = _random_rows(7)
    _insert_in_pieces(store, rows, 8)
    rng = random.Random(9)
    periods = [(0, 24 * HOUR_NS), (6 * HOUR_NS, 9 * HOUR_NS), (6 * HOUR_NS, 6 * HOUR_NS + 1)]
    for _ in range(150):
        start = rng.randrange(4 * HOUR_NS, 12 * HOUR_NS)
        periods.append((start, start + rng.choice([1, HOUR_NS, rng.randrange(1, 5 * HOUR_NS)])))
    for node in (b"\x01" * 32, b"\x02" * 32, b"\x03" * 32):
        for start, end in periods:
            expected = _brute_stats(rows, node, start, end)
            assert store.node_attestation_stats(node, start, end) == expected, (start, end)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_schema_1_store_is_upgraded_and_a_newer_one_refused(kind: str, tmp_path: Path) -> None:
    from tests.stores import POSTGRES_DSN
    from verifier.store.postgres import PostgresStore
    from verifier.store.sqlite import SqliteStore

    schema = f"pw_test_{uuid.uuid4().hex[:12]}"

    def open_store() -> Store:
        if kind == "sqlite":
            return SqliteStore.open(tmp_path / "old.db")
        return PostgresStore.open(POSTGRES_DSN, schema=schema)

    rows = _random_rows(11)
    node = rows[0].node_id
    try:
        store = open_store()
        _insert_in_pieces(store, rows, 12)
        with store.transaction() as tx:  # as a first-release verifier left it
            tx.set_meta("schema_version", b"1")
            tx._exec("DELETE FROM node_hours")  # type: ignore[attr-defined]
        store.close()

        store = open_store()
        assert store.get_meta("schema_version") == b"3"
        assert store.node_attestation_stats(node, 0, 24 * HOUR_NS) == _brute_stats(
            rows, node, 0, 24 * HOUR_NS
        )
        assert store.node_attestation_stats(node, 6 * HOUR_NS, 9 * HOUR_NS) == _brute_stats(
            rows, node, 6 * HOUR_NS, 9 * HOUR_NS
        )
        with store.transaction() as tx:  # as a future verifier would leave it
            tx.set_meta("schema_version", b"4")
        store.close()
        # A ConfigError (serve: exit 2, the message in words), not an internal error.
        with pytest.raises(ConfigError, match="newer verifier"):
            open_store()
        with store_connection(kind, tmp_path / "old.db", schema) as db:
            assert db.execute("SELECT COUNT(*) FROM attestations").fetchone()[0] == len(rows)
            version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            assert bytes(version[0]) == b"4"
    finally:
        if kind == "postgres":
            import psycopg

            with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
                admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@contextlib.contextmanager
def store_connection(kind: str, path: Path, schema: str) -> Iterator[Any]:
    """A plain connection to a store's tables, past the store's own checks."""
    if kind == "sqlite":
        with contextlib.closing(sqlite3.connect(path)) as db:
            yield db
        return
    import psycopg

    from tests.stores import POSTGRES_DSN

    with psycopg.connect(POSTGRES_DSN) as db:
        db.execute(f"SET search_path TO {schema}")
        yield db
