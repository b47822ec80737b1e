"""Hash chains of attestations: link a window to its predecessor, and check a sequence.

Each node's attestations form a chain: ``seq`` counts up from 0 at enrolment and ``prev_digest`` is
the SHA-256 of the previous envelope's bytes (32 zero bytes for seq 0)::

    seq, prev = next_link(head)                # what the agent puts in the next body
    link = classify(head, seq, prev, digest, stored_digest_at(seq))
    if link is Link.NEXT: ...                  # the verifier appends it

:func:`classify` tells apart the five cases a verifier must treat differently: the next link, a
duplicate of something already on record, a fork (equivocation), a gap (missing windows) and a
rollback (a seq the verifier has already passed). :func:`check_sequence` does the same for a whole
sequence offline, e.g. when re-verifying an evidence bundle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from attest.errors import ChainError
from attest.ids import ZERO_DIGEST, Digest


class Link(StrEnum):
    """How an attestation relates to the chain on record."""

    NEXT = "next"
    """seq is head + 1 (or 0 on an empty chain) and prev_digest is the head's digest."""
    DUPLICATE = "duplicate"
    """The very same envelope is already on record."""
    FORK = "fork"
    """A different envelope is on record for this seq, or it extends a different predecessor."""
    GAP = "gap"
    """seq jumps past head + 1: windows in between are missing; the link cannot be checked."""
    ROLLBACK = "rollback"
    """seq is at or below the head and nothing is on record for it."""


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The latest accepted link of a node's chain."""

    seq: int
    digest: Digest
    window_end_ns: int = 0


def next_link(head: ChainHead | None) -> tuple[int, Digest]:
    """``(seq, prev_digest)`` for the attestation that follows ``head`` (None: the first one)."""
    if head is None:
        return 0, ZERO_DIGEST
    return head.seq + 1, head.digest


def check_link_fields(seq: int, prev_digest: bytes) -> None:
    """Structural rules every body must meet: seq is non-negative, prev_digest is 32 bytes, and it
    is all zero exactly when seq is 0. Raises :class:`ChainError`."""
    if seq < 0:
        raise ChainError(f"seq {seq} is negative")
    if len(prev_digest) != len(ZERO_DIGEST):
        raise ChainError(f"prev_digest is {len(prev_digest)} bytes, expected {len(ZERO_DIGEST)}")
    if seq == 0 and prev_digest != ZERO_DIGEST:
        raise ChainError("seq 0 must have an all-zero prev_digest")
    if seq != 0 and prev_digest == ZERO_DIGEST:
        raise ChainError(f"seq {seq} has an all-zero prev_digest; only seq 0 may")


def classify(
    head: ChainHead | None,
    seq: int,
    prev_digest: bytes,
    digest: bytes,
    stored_digest_at_seq: bytes | None,
) -> Link:
    """Classify an attestation against the chain on record.

    ``head`` is the highest accepted link (None if none yet); ``stored_digest_at_seq`` is the
    digest on record for ``seq``, if any.
    """
    if stored_digest_at_seq is not None:
        return Link.DUPLICATE if stored_digest_at_seq == digest else Link.FORK
    expected_seq, expected_prev = next_link(head)
    if seq == expected_seq:
        return Link.NEXT if prev_digest == expected_prev else Link.FORK
    if seq > expected_seq:
        return Link.GAP
    return Link.ROLLBACK


@dataclass(frozen=True, slots=True)
class ChainItem:
    """One attestation of a chain, as :func:`check_sequence` needs it."""

    seq: int
    prev_digest: bytes
    digest: bytes


@dataclass(frozen=True, slots=True)
class SequenceIssue:
    """Something :func:`check_sequence` found between two items."""

    link: Link
    seq: int
    detail: str
    missing_from_seq: int = 0
    missing_to_seq: int = 0


@dataclass(frozen=True, slots=True)
class SequenceReport:
    """The outcome of checking one node's chain."""

    count: int
    first_seq: int | None
    last_seq: int | None
    issues: tuple[SequenceIssue, ...]

    @property
    def forks(self) -> tuple[SequenceIssue, ...]:
        return tuple(i for i in self.issues if i.link is Link.FORK)

    @property
    def gaps(self) -> tuple[SequenceIssue, ...]:
        return tuple(i for i in self.issues if i.link is Link.GAP)

    @property
    def duplicates(self) -> tuple[SequenceIssue, ...]:
        return tuple(i for i in self.issues if i.link is Link.DUPLICATE)


def check_sequence(
    items: Iterable[ChainItem],
    *,
    anchor: ChainHead | None = None,
) -> SequenceReport:
    """Check a node's attestations, given in any order, as a chain.

    ``anchor`` is a link known to precede the items (None: the items should start at seq 0, and a
    first seq above 0 is reported as a gap). Two different digests for one seq are a fork; the
    same digest twice is a duplicate; a missing seq is a gap; a link whose prev_digest is not its
    predecessor's digest is a fork.
    """
    by_seq: dict[int, ChainItem] = {}
    issues: list[SequenceIssue] = []
    for item in items:
        check_link_fields(item.seq, item.prev_digest)
        seen = by_seq.get(item.seq)
        if seen is None:
            by_seq[item.seq] = item
        elif seen.digest == item.digest:
            issues.append(SequenceIssue(Link.DUPLICATE, item.seq, "the same envelope twice"))
        else:
            issues.append(
                SequenceIssue(Link.FORK, item.seq, "two different envelopes for the same seq")
            )
    ordered = sorted(by_seq)
    previous: ChainHead | None = anchor
    for seq in ordered:
        item = by_seq[seq]
        expected_seq, expected_prev = next_link(previous)
        if previous is not None and seq <= previous.seq:
            issues.append(SequenceIssue(Link.ROLLBACK, seq, "seq at or below the anchor"))
            continue
        if seq > expected_seq:
            issues.append(
                SequenceIssue(
                    Link.GAP,
                    seq,
                    f"seq {expected_seq} to {seq - 1} missing",
                    missing_from_seq=expected_seq,
                    missing_to_seq=seq - 1,
                )
            )
        elif item.prev_digest != expected_prev:
            issues.append(
                SequenceIssue(Link.FORK, seq, "prev_digest is not the previous envelope's digest")
            )
        previous = ChainHead(seq=seq, digest=Digest(item.digest))
    return SequenceReport(
        count=len(ordered),
        first_seq=ordered[0] if ordered else None,
        last_seq=ordered[-1] if ordered else None,
        issues=tuple(sorted(issues, key=lambda i: (i.seq, i.link.value))),
    )


def verify_chain(items: Iterable[ChainItem], *, anchor: ChainHead | None = None) -> SequenceReport:
    """Like :func:`check_sequence` but raise :class:`ChainError` on a fork or rollback.

    Gaps and duplicates are facts to report, not failures of the chain itself.
    """
    report = check_sequence(items, anchor=anchor)
    for issue in report.issues:
        if issue.link in (Link.FORK, Link.ROLLBACK):
            raise ChainError(f"chain {issue.link.value} at seq {issue.seq}: {issue.detail}")
    return report
