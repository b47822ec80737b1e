"""The verifier's transparency log: an RFC 6962 Merkle tree over every accepted record, with
signed C2SP checkpoints and proofs for any index and size.

    log = TransparencyLog.open(store, signer, origin)
    indices = log.append(tx, entries)         # inside the batch's transaction
    log.commit_succeeded() / log.rollback()   # keep the in-memory tree in step with the store
    note = log.sign_checkpoint()              # at the configured interval

Leaves are SHA-256(0x00 || envelope bytes). The store keeps every perfect subtree's hash, so
proofs read O(log n) nodes; the in-memory :class:`~attest.merkle.TreeAppender` holds only the
tree's right edge.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from attest import merkle
from attest.checkpoint import Checkpoint, sign_checkpoint
from attest.envelope import envelope_digest
from attest.errors import VerificationError
from attest.note import Ed25519NoteSigner
from verifier.store.base import CheckpointRow, EntryKind, NewEntry, ReadView, Store, Transaction
from verifier.witness.pool import WitnessPool

log = logging.getLogger(__name__)


class _StoreReader:
    def __init__(self, view: ReadView) -> None:
        self._view = view

    def node(self, level: int, index: int) -> bytes:
        return self._view.node_hash(level, index)


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """An entry to append: its bytes and what it is."""

    entry: bytes
    kind: EntryKind
    lab_id: str = ""
    node_id: bytes = b""
    digest: bytes = b""
    """SHA-256 of ``entry`` if the caller has it already (else it is computed)."""


class TransparencyLog:
    """Appends, checkpoints and proofs over a :class:`~verifier.store.base.Store`."""

    def __init__(
        self,
        store: Store,
        signer: Ed25519NoteSigner,
        clock_ns: Callable[[], int],
        witnesses: WitnessPool | None = None,
        witness_retry_ns: int = 10 * 10**9,
    ) -> None:
        self._store = store
        self._signer = signer
        self._clock_ns = clock_ns
        self._witnesses = witnesses if witnesses is not None and len(witnesses) else None
        self._witness_retry_ns = witness_retry_ns
        self._witness_retry_at_ns = 0
        size = store.tree_size()
        self._appender = merkle.TreeAppender.from_reader(_StoreReader(store), size)
        self._saved: merkle.TreeAppender | None = None
        # Appends of the open transaction, written in one statement by flush().
        self._pending: list[NewEntry] = []
        self._pending_nodes: list[tuple[int, int, bytes]] = []
        self._pending_first = 0
        self._checkpoint_lock = threading.Lock()

    @property
    def origin(self) -> str:
        return self._signer.name

    @property
    def signer(self) -> Ed25519NoteSigner:
        return self._signer

    @property
    def verifier_key(self) -> str:
        return self._signer.verifier().to_vkey()

    @property
    def size(self) -> int:
        return self._appender.size

    def begin(self, tx: Transaction) -> bool:
        """At the start of a transaction: remember the tree's state, and resynchronise with the
        store if another process appended since (several verifiers over one PostgreSQL database;
        the transaction holds the log lock). Returns True if it had to resynchronise."""
        size = tx.tree_size()
        moved = size != self._appender.size
        if moved:
            self._appender = merkle.TreeAppender.from_reader(_StoreReader(tx), size)
        self._saved = copy.deepcopy(self._appender)
        self._pending.clear()
        self._pending_nodes.clear()
        self._pending_first = size
        return moved

    def rollback(self) -> None:
        """Forget the appends of a transaction that did not commit."""
        self._pending.clear()
        self._pending_nodes.clear()
        if self._saved is not None:
            self._appender = self._saved
            self._saved = None

    def commit_succeeded(self) -> None:
        self._saved = None

    def append(self, entries: Sequence[PendingEntry]) -> int:
        """Append entries in order to the open transaction's log; returns the first one's index.

        The rows are written by :meth:`flush` (one statement for a whole batch), so a reader in
        the same transaction does not see them before that; the index is final at once."""
        first = self._appender.size
        for item in entries:
            leaf = merkle.leaf_hash(item.entry)
            self._pending_nodes.extend(self._appender.append(leaf))
            self._pending.append(
                NewEntry(
                    entry=item.entry,
                    leaf_hash=leaf,
                    digest=item.digest or envelope_digest(item.entry),
                    kind=item.kind,
                    lab_id=item.lab_id,
                    node_id=item.node_id,
                )
            )
        return first

    def flush(self, tx: Transaction, now_ns: int) -> None:
        """Write the pending appends into ``tx`` (before it commits)."""
        if self._pending:
            tx.append_log(self._pending, self._pending_nodes, now_ns, self._pending_first)
            self._pending_first += len(self._pending)
            self._pending.clear()
            self._pending_nodes.clear()

    def root(self) -> bytes:
        return self._appender.root()

    def sign_checkpoint(self) -> CheckpointRow:
        """Sign a checkpoint of the committed tree if it grew since the last one, and have the
        configured witnesses cosign it (or, at most once a retry interval, the latest one if some
        witness's cosignature is still missing)."""
        with self._checkpoint_lock:
            latest = self._store.latest_checkpoint()
            size = self._store.tree_size()
            if latest is not None and latest.tree_size == size:
                return self._cosign_again(latest)
            root = merkle.root_from(_StoreReader(self._store), size)
            note = sign_checkpoint(
                Checkpoint(origin=self._signer.name, tree_size=size, root_hash=root), self._signer
            )
            if self._witnesses is not None:
                self._witness_retry_at_ns = self._clock_ns() + self._witness_retry_ns
                note = self._witnesses.cosign(note, self.consistency_proof)
            row = CheckpointRow(
                tree_size=size, root_hash=root, note=note, signed_at_ns=self._clock_ns()
            )
            with self._store.transaction() as tx:
                tx.save_checkpoint(row)
            log.info("signed checkpoint size=%d", size)
            return row

    def _cosign_again(self, latest: CheckpointRow) -> CheckpointRow:
        if self._witnesses is None or self._clock_ns() < self._witness_retry_at_ns:
            return latest
        self._witness_retry_at_ns = self._clock_ns() + self._witness_retry_ns
        try:
            if not self._witnesses.missing(latest.note):
                return latest
        except VerificationError:
            log.exception("the saved checkpoint of size %d does not verify", latest.tree_size)
            return latest
        note = self._witnesses.cosign(latest.note, self.consistency_proof)
        if note == latest.note:
            return latest
        with self._store.transaction() as tx:
            tx.update_checkpoint_note(latest.tree_size, note)
        return dataclasses.replace(latest, note=note)

    def latest_checkpoint(self) -> CheckpointRow:
        row = self._store.latest_checkpoint()
        return row if row is not None else self.sign_checkpoint()

    def root_at(self, size: int) -> bytes:
        return merkle.root_from(_StoreReader(self._store), size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return merkle.inclusion_proof_from(_StoreReader(self._store), index, size)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        return merkle.consistency_proof_from(_StoreReader(self._store), size1, size2)
