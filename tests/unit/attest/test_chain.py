from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attest import chain
from attest.chain import ChainHead, ChainItem, Link
from attest.errors import ChainError
from attest.ids import ZERO_DIGEST, Digest


def d(n: int) -> Digest:
    return Digest(hashlib.sha256(b"%d" % n).digest())


def linked(count: int, start: int = 0) -> list[ChainItem]:
    items = []
    prev = ZERO_DIGEST if start == 0 else d(start - 1)
    for seq in range(start, start + count):
        items.append(ChainItem(seq=seq, prev_digest=prev, digest=d(seq)))
        prev = d(seq)
    return items


def test_next_link_starts_at_zero_with_zero_digest() -> None:
    assert chain.next_link(None) == (0, ZERO_DIGEST)
    assert chain.next_link(ChainHead(seq=4, digest=d(4))) == (5, d(4))


@pytest.mark.parametrize(
    ("head", "seq", "prev", "digest", "stored", "expected"),
    [
        (None, 0, ZERO_DIGEST, d(0), None, Link.NEXT),
        (ChainHead(3, d(3)), 4, d(3), d(4), None, Link.NEXT),
        (ChainHead(3, d(3)), 4, d(99), d(4), None, Link.FORK),
        (ChainHead(3, d(3)), 3, d(2), d(3), d(3), Link.DUPLICATE),
        (ChainHead(3, d(3)), 2, d(1), d(77), d(2), Link.FORK),
        (ChainHead(3, d(3)), 9, d(8), d(9), None, Link.GAP),
        (None, 5, d(4), d(5), None, Link.GAP),
        (ChainHead(3, d(3)), 1, d(0), d(1), None, Link.ROLLBACK),
    ],
)
def test_classify_tells_the_five_cases_apart(head, seq, prev, digest, stored, expected) -> None:  # type: ignore[no-untyped-def]
    assert chain.classify(head, seq, prev, digest, stored) is expected


@pytest.mark.parametrize(
    ("seq", "prev", "message"),
    [
        (-1, ZERO_DIGEST, "negative"),
        (0, d(1), "all-zero"),
        (3, ZERO_DIGEST, "only seq 0"),
        (1, b"\x00" * 31, "32"),
    ],
)
def test_link_fields_structural_rules(seq: int, prev: bytes, message: str) -> None:
    with pytest.raises(ChainError, match=message):
        chain.check_link_fields(seq, prev)


def test_check_sequence_clean_chain_in_any_order() -> None:
    items = linked(10)
    report = chain.verify_chain(reversed(items))
    assert report.count == 10
    assert (report.first_seq, report.last_seq) == (0, 9)
    assert report.issues == ()


def test_check_sequence_reports_gap_fork_duplicate() -> None:
    items = linked(10)
    del items[4:6]  # seq 4 and 5 missing
    items.append(items[0])  # duplicate
    items.append(ChainItem(seq=2, prev_digest=d(1), digest=d(1000)))  # equivocation at seq 2
    report = chain.check_sequence(items)
    assert [(i.link, i.seq) for i in report.gaps] == [(Link.GAP, 6)]
    assert (report.gaps[0].missing_from_seq, report.gaps[0].missing_to_seq) == (4, 5)
    assert [i.seq for i in report.duplicates] == [0]
    assert [i.seq for i in report.forks] == [2]
    with pytest.raises(ChainError, match="fork at seq 2"):
        chain.verify_chain(items)


def test_check_sequence_with_anchor() -> None:
    items = linked(3, start=5)
    assert chain.check_sequence(items, anchor=ChainHead(4, d(4))).issues == ()
    wrong = chain.check_sequence(items, anchor=ChainHead(4, d(123)))
    assert [i.link for i in wrong.issues] == [Link.FORK]
    unanchored = chain.check_sequence(items)
    assert [i.link for i in unanchored.issues] == [Link.GAP]


def test_broken_link_is_a_fork() -> None:
    items = linked(5)
    items[3] = ChainItem(seq=3, prev_digest=d(42), digest=d(3))
    report = chain.check_sequence(items)
    assert [(i.link, i.seq) for i in report.issues] == [(Link.FORK, 3)]


@given(count=st.integers(1, 40), data=st.data())
def test_property_removing_any_items_yields_exactly_those_gaps(
    count: int, data: st.DataObject
) -> None:
    items = linked(count)
    keep = data.draw(st.lists(st.booleans(), min_size=count, max_size=count))
    kept = [item for item, k in zip(items, keep, strict=True) if k]
    report = chain.check_sequence(kept)
    missing = {item.seq for item, k in zip(items, keep, strict=True) if not k}
    reported = set()
    for gap in report.gaps:
        reported.update(range(gap.missing_from_seq, gap.missing_to_seq + 1))
    # Missing items at the end cannot be seen; everything before the last kept item is reported.
    last = max((i.seq for i in kept), default=-1)
    assert reported == {s for s in missing if s < last}
    assert not report.forks


@given(count=st.integers(2, 30), data=st.data())
def test_property_any_changed_prev_digest_is_a_fork(count: int, data: st.DataObject) -> None:
    items = linked(count)
    at = data.draw(st.integers(1, count - 1))
    items[at] = ChainItem(seq=at, prev_digest=d(10_000 + at), digest=items[at].digest)
    report = chain.check_sequence(items)
    assert [i.seq for i in report.forks] == [at]
