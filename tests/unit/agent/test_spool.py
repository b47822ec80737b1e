"""The spool: one transaction per link, receipts, bounds, nonce, retention."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from agent.spool import (
    EnvelopeStatus,
    Nonce,
    ReceiptRecord,
    Spool,
    SpoolError,
    WindowTimes,
)
from attest.envelope import envelope_digest
from attest.ids import ZERO_DIGEST, NodeId
from tests.builders import T0_NS, WINDOW_NS, TestNode

NODE = TestNode.from_seed(1)
NODE_ID = NodeId(NODE.node_id)
DAY = 86_400 * 10**9


def signer(nonces: list[bytes] | None = None):  # type: ignore[no-untyped-def]
    def sign(seq: int, prev: bytes, nonce: bytes) -> bytes:
        if nonces is not None:
            nonces.append(nonce)
        return NODE.sign_body(NODE.body(seq, prev, nonce=nonce))

    return sign


def window(seq: int) -> WindowTimes:
    return WindowTimes(T0_NS + seq * WINDOW_NS, T0_NS + (seq + 1) * WINDOW_NS)


def fill(spool: Spool, count: int) -> None:
    for seq in range(count):
        spool.append(signer(), window(seq), samples=b"s%d" % seq, created_at_ns=T0_NS)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool.open(tmp_path / "spool.db", node_id=NODE_ID)


def test_append_links_the_chain_and_moves_the_head(spool: Spool) -> None:
    assert spool.head() is None
    first = spool.append(signer(), window(0), samples=b"x", created_at_ns=T0_NS)
    second = spool.append(signer(), window(1), samples=b"y", created_at_ns=T0_NS)
    assert (first.seq, second.seq) == (0, 1)
    assert first.digest == envelope_digest(first.envelope)
    head = spool.head()
    assert head is not None
    assert (head.seq, head.digest, head.window_end_ns) == (1, second.digest, window(1).end_ns)
    body = NODE.body(1, first.digest)  # the same body the signer built
    assert NODE.sign_body(body) == second.envelope
    assert spool.samples(0) == b"x"


def test_a_failure_while_signing_stores_nothing(spool: Spool) -> None:
    fill(spool, 2)

    def broken(seq: int, prev: bytes, nonce: bytes) -> bytes:
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        spool.append(broken, window(2), samples=b"", created_at_ns=T0_NS)
    head = spool.head()
    assert head is not None
    assert head.seq == 1
    assert [e.seq for e in spool.envelopes()] == [0, 1]
    third = spool.append(signer(), window(2), samples=b"", created_at_ns=T0_NS)
    assert third.seq == 2


def test_an_overlapping_window_is_refused(spool: Spool) -> None:
    fill(spool, 1)
    overlapping = WindowTimes(window(0).end_ns - 1, window(1).end_ns)
    with pytest.raises(SpoolError, match="overlaps"):
        spool.append(signer(), overlapping, samples=b"", created_at_ns=T0_NS)
    assert len(spool.envelopes()) == 1


def test_pending_is_oldest_first_and_bounded(spool: Spool) -> None:
    fill(spool, 5)
    assert [e.seq for e in spool.pending(limit=3, max_bytes=1 << 20)] == [0, 1, 2]
    sizes = [len(e.envelope) for e in spool.envelopes()]
    assert [e.seq for e in spool.pending(limit=10, max_bytes=sizes[0] + sizes[1])] == [0, 1]
    assert [e.seq for e in spool.pending(limit=10, max_bytes=1)] == [0]  # at least one


def test_receipts(spool: Spool) -> None:
    fill(spool, 4)
    e = spool.envelopes()
    spool.record_receipts(
        [
            ReceiptRecord(e[0].digest, EnvelopeStatus.ACCEPTED, log_index=10),
            ReceiptRecord(e[1].digest, EnvelopeStatus.DUPLICATE, log_index=11),
            ReceiptRecord(e[2].digest, EnvelopeStatus.REJECTED, reject_reason="BAD_NONCE"),
            ReceiptRecord(e[3].digest, EnvelopeStatus.REJECTED, retry=True, detail="busy"),
            ReceiptRecord(b"\x00" * 32, EnvelopeStatus.ACCEPTED, log_index=99),  # unknown
        ],
        at_ns=T0_NS,
    )
    after = {x.seq: x for x in spool.envelopes()}
    assert (after[0].status, after[0].log_index) == (EnvelopeStatus.ACCEPTED, 10)
    assert (after[1].status, after[1].log_index) == (EnvelopeStatus.DUPLICATE, 11)
    assert (after[2].status, after[2].reject_reason) == (EnvelopeStatus.REJECTED, "BAD_NONCE")
    assert (after[3].status, after[3].attempts) == (EnvelopeStatus.PENDING, 1)
    assert [x.seq for x in spool.pending(limit=10, max_bytes=1 << 20)] == [3]
    stats = spool.stats()
    assert stats.pending_count == 1
    assert stats.oldest_pending_seq == 3
    assert stats.rejected_count == 1
    assert stats.acknowledged_count == 2
    assert stats.last_receipt is not None
    assert (stats.last_receipt.seq, stats.last_receipt.log_index) == (1, 11)


def test_a_final_receipt_is_never_overwritten(spool: Spool) -> None:
    fill(spool, 1)
    digest = spool.envelopes()[0].digest
    spool.record_receipts(
        [ReceiptRecord(digest, EnvelopeStatus.REJECTED, reject_reason="FORK")], at_ns=1
    )
    spool.record_receipts([ReceiptRecord(digest, EnvelopeStatus.ACCEPTED, log_index=3)], at_ns=2)
    assert spool.envelopes()[0].status is EnvelopeStatus.REJECTED


def test_has_room_counts_only_unacknowledged(spool: Spool) -> None:
    fill(spool, 3)
    assert not spool.has_room(3, 1 << 30)
    assert spool.has_room(4, 1 << 30)
    size = sum(len(e.envelope) for e in spool.envelopes())
    assert not spool.has_room(100, size)
    first = spool.envelopes()[0]
    spool.record_receipts(
        [ReceiptRecord(first.digest, EnvelopeStatus.ACCEPTED, log_index=0)], at_ns=1
    )
    assert spool.has_room(3, 1 << 30)


def test_the_stored_nonce_goes_into_the_next_link(spool: Spool) -> None:
    seen: list[bytes] = []
    spool.append(signer(seen), window(0), samples=b"", created_at_ns=T0_NS)
    spool.store_nonce(Nonce(b"n" * 24, issued_at_ns=5, expires_at_ns=6, received_at_ns=7))
    spool.append(signer(seen), window(1), samples=b"", created_at_ns=T0_NS)
    assert seen == [b"", b"n" * 24]
    assert spool.nonce() == Nonce(b"n" * 24, 5, 6, 7)


def test_reopening_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool.open(path, node_id=NODE_ID)
    fill(spool, 3)
    head = spool.head()
    spool.close()
    again = Spool.open(path, node_id=NODE_ID)
    assert again.head() == head
    assert len(again.envelopes()) == 3


def test_another_nodes_spool_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    Spool.open(path, node_id=NODE_ID).close()
    other = NodeId(hashlib.sha256(b"other").digest())
    with pytest.raises(SpoolError, match="belongs to node"):
        Spool.open(path, node_id=other)


def test_an_inconsistent_head_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool.open(path, node_id=NODE_ID)
    fill(spool, 2)
    spool.close()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM meta WHERE key = 'head_seq'")
    db.commit()
    db.close()
    with pytest.raises(SpoolError, match="inconsistent"):
        Spool.open(path, node_id=NODE_ID)


def test_a_missing_spool_is_not_created_when_asked_not_to(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="does not exist"):
        Spool.open(tmp_path / "none.db", create=False)
    assert not (tmp_path / "none.db").exists()


def test_a_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolError, match="cannot open spool"):
        Spool.open(path)
    assert path.read_bytes() == b"this is not a database" * 100


def test_prune_keeps_the_head_pending_and_rejected(spool: Spool) -> None:
    fill(spool, 4)
    e = spool.envelopes()
    spool.record_receipts(
        [
            ReceiptRecord(e[0].digest, EnvelopeStatus.ACCEPTED, log_index=0),
            ReceiptRecord(e[1].digest, EnvelopeStatus.REJECTED, reject_reason="X"),
            ReceiptRecord(e[3].digest, EnvelopeStatus.ACCEPTED, log_index=1),
        ],
        at_ns=1,
    )
    dropped = spool.prune(
        now_ns=T0_NS + 100 * DAY, samples_retention_days=1, acked_retention_days=1
    )
    assert dropped == 1
    assert [x.seq for x in spool.envelopes()] == [1, 2, 3]  # 3 is the head
    assert spool.samples(2) is None
    assert spool.samples(3) == b"s3"


def test_errors_are_kept_for_status(spool: Spool) -> None:
    for i in range(60):
        spool.record_error("ship", f"error {i}", at_ns=i)
    errors = spool.stats().last_errors
    assert [m for _, _, m in errors] == ["error 59", "error 58", "error 57", "error 56", "error 55"]


def test_first_link_has_zero_prev(spool: Spool) -> None:
    captured: list[bytes] = []

    def sign(seq: int, prev: bytes, nonce: bytes) -> bytes:
        captured.append(prev)
        return NODE.sign_body(NODE.body(seq, prev))

    spool.append(sign, window(0), samples=b"", created_at_ns=0)
    assert captured == [ZERO_DIGEST]


def test_a_read_only_open_reads_what_was_written_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    writer = Spool.open(path, node_id=NODE_ID)
    fill(writer, 3)
    head = writer.head()
    # While the writer is open (a running agent): read through its write-ahead log.
    reader = Spool.open_readonly(path, node_id=NODE_ID, writer_running=True)
    try:
        assert reader.stats().head == head
        with pytest.raises(sqlite3.OperationalError, match=r"readonly|read-only|query_only"):
            reader.set_text("enrollment", "{}")
    finally:
        reader.close()
    writer.close()
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    # A stopped agent: the file alone, read as it is.
    reader = Spool.open_readonly(path, node_id=NODE_ID, writer_running=False)
    try:
        assert reader.stats().head == head
        assert reader.stats().pending_count == 3
    finally:
        reader.close()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_a_read_only_open_refuses_what_open_refuses(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with pytest.raises(SpoolError, match="does not exist"):
        Spool.open_readonly(path, writer_running=False)
    assert not path.exists()
    Spool.open(path, node_id=NODE_ID).close()
    other = NodeId(b"\x07" * 32)
    with pytest.raises(SpoolError, match="belongs to node"):
        Spool.open_readonly(path, node_id=other, writer_running=False)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolError, match="cannot read spool"):
        Spool.open_readonly(garbage, writer_running=False)
    assert garbage.read_bytes() == b"this is not a database" * 100
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB)").close()
    with pytest.raises(SpoolError, match="schema version None"):
        Spool.open_readonly(empty, writer_running=False)
