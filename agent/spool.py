"""The durable spool: the chain head, every signed envelope, its receipt, and the raw samples.

    spool = Spool.open(state_dir / "spool.db", node_id=node_id)
    stored = spool.append(lambda link: sign(build_body(window, seq=link.seq, ...)), window, ...)
    for item in spool.pending(limit=32, max_bytes=1 << 20):     # oldest first
        ...ship item.envelope...
    spool.record_receipts([ReceiptRecord(digest, ReceiptStatus.ACCEPTED, log_index=7)])

A SQLite database in WAL mode with ``synchronous=FULL``: a transaction is on disk when its commit
returns. :meth:`Spool.append` reads the head, builds and signs the next envelope, stores it with
its window times and samples, and advances the head, all in one ``BEGIN IMMEDIATE`` transaction;
the shipper only ever reads committed rows. So a crash before the commit loses nothing that
anyone has seen (the window's time becomes a gap, recorded by the next start), and a crash after
it loses nothing at all. No seq is ever signed twice with a stored predecessor other than the
head: the chain cannot fork.

Receipts: ACCEPTED and DUPLICATE acknowledge an envelope (it is kept, with its log index, until
``acked_retention_days``); REJECTED with reason UNAVAILABLE leaves it pending (resent later); any
other rejection is final: the envelope is kept, marked rejected, never resent, and counted as an
error. The size bound (``max_unacked_envelopes``, ``max_unacked_bytes``) counts pending envelopes
only; a full spool refuses to append (:meth:`has_room`), it never drops or overwrites anything.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from attest.chain import ChainHead, next_link
from attest.envelope import envelope_digest
from attest.errors import PausewatchError
from attest.ids import Digest, NodeId

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
NS_PER_DAY = 86_400 * 1_000_000_000
MAX_ERRORS_KEPT = 50

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS envelopes (
    seq INTEGER PRIMARY KEY,
    digest BLOB NOT NULL UNIQUE,
    envelope BLOB NOT NULL,
    window_start_ns INTEGER NOT NULL,
    window_end_ns INTEGER NOT NULL,
    created_at_ns INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'accepted', 'duplicate', 'rejected')),
    log_index INTEGER,
    reject_reason TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    acked_at_ns INTEGER
);
CREATE INDEX IF NOT EXISTS envelopes_by_status ON envelopes (status, seq);
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY,
    encoded BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ns INTEGER NOT NULL,
    source TEXT NOT NULL,
    message TEXT NOT NULL
);
"""


class SpoolError(PausewatchError):
    """The spool cannot be used (another node's spool, an inconsistent head, a broken file)."""


class EnvelopeStatus(StrEnum):
    """Where an envelope stands with the verifier."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"

    @property
    def acknowledged(self) -> bool:
        return self in (EnvelopeStatus.ACCEPTED, EnvelopeStatus.DUPLICATE)


@dataclass(frozen=True, slots=True)
class WindowTimes:
    """The window an envelope attests, as stored beside it."""

    start_ns: int
    end_ns: int


@dataclass(frozen=True, slots=True)
class SpooledEnvelope:
    """One row of the spool."""

    seq: int
    digest: Digest
    envelope: bytes
    window_start_ns: int
    window_end_ns: int
    status: EnvelopeStatus
    log_index: int | None = None
    reject_reason: str = ""
    detail: str = ""
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class ReceiptRecord:
    """What the verifier said about one envelope, matched by digest."""

    digest: bytes
    status: EnvelopeStatus
    log_index: int | None = None
    reject_reason: str = ""
    detail: str = ""
    retry: bool = False
    """A transient rejection (UNAVAILABLE): leave the envelope pending."""


@dataclass(frozen=True, slots=True)
class Nonce:
    """The latest verifier challenge."""

    nonce: bytes
    issued_at_ns: int
    expires_at_ns: int
    received_at_ns: int


@dataclass(frozen=True, slots=True)
class LastReceipt:
    seq: int
    status: EnvelopeStatus
    log_index: int | None
    at_ns: int


@dataclass(frozen=True, slots=True)
class SpoolBacklog:
    """What is not yet acknowledged: the spool's own count, bytes and oldest window."""

    count: int
    size_bytes: int
    oldest_window_start_ns: int | None


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """What ``status`` shows."""

    head: ChainHead | None
    pending_count: int
    pending_bytes: int
    oldest_pending_seq: int | None
    oldest_pending_window_start_ns: int | None
    acknowledged_count: int
    rejected_count: int
    last_receipt: LastReceipt | None
    nonce: Nonce | None
    last_errors: tuple[tuple[int, str, str], ...]


class Spool:
    """The spool database. One instance per thread (SQLite connections are not shared)."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self._path = path

    @classmethod
    def open(cls, path: Path, *, node_id: NodeId | None = None, create: bool = True) -> Spool:
        """Open (or create) the spool; refuses a spool that belongs to another node."""
        if not create and not path.exists():
            raise SpoolError(f"spool {path} does not exist (has the agent run yet?)")
        try:
            db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise SpoolError(f"cannot open spool {path}: {exc}") from None
        spool = cls(db, path)
        spool._check(node_id)
        return spool

    @classmethod
    def open_readonly(
        cls, path: Path, *, node_id: NodeId | None = None, writer_running: bool = True
    ) -> Spool:
        """Open an existing spool to read it only (``status``). Nothing is written, so it opens on
        a full disk and from a user who cannot write the state directory, where :meth:`open`
        fails. With no agent running and no write-ahead log beside the file (the agent closed it
        cleanly), the file is read as immutable: a read-only connection would otherwise have to
        create the shared-memory file beside it. Refuses another node's spool like :meth:`open`."""
        if not path.exists():
            raise SpoolError(f"spool {path} does not exist (has the agent run yet?)")
        wal = path.with_name(path.name + "-wal")
        immutable = not writer_running and not wal.exists()
        uri = path.resolve().as_uri() + ("?immutable=1" if immutable else "?mode=ro")
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30.0)
            db.execute("PRAGMA query_only=ON")
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            raise SpoolError(f"cannot read spool {path}: {exc}") from None
        spool = cls(db, path)
        try:
            spool._check_readable(node_id)
        except BaseException:
            db.close()
            raise
        return spool

    def _check_readable(self, node_id: NodeId | None) -> None:
        try:
            with self._transaction(immediate=False):
                version = self._int_meta("schema_version")
                stored = self._meta("node_id")
        except sqlite3.DatabaseError as exc:
            raise SpoolError(f"cannot read spool {self._path}: {exc}") from None
        self._refuse_another(version, stored, node_id)

    def _refuse_another(
        self, version: int | None, stored: bytes | None, node_id: NodeId | None
    ) -> None:
        """Refuse a spool of another schema version, or one that belongs to another node."""
        if version != SCHEMA_VERSION:
            raise SpoolError(f"spool schema version {version}; this agent reads {SCHEMA_VERSION}")
        if node_id is not None and stored is not None and stored != node_id:
            raise SpoolError(
                f"spool {self._path} belongs to node {stored.hex()[:16]}..., "
                f"not {bytes(node_id).hex()[:16]}..."
            )

    def close(self) -> None:
        self._db.close()

    @property
    def path(self) -> Path:
        return self._path

    # -- meta ---------------------------------------------------------------------------------

    def _meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def _set_meta(self, key: str, value: bytes) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _int_meta(self, key: str) -> int | None:
        value = self._meta(key)
        return None if value is None else int(value.decode("ascii"))

    def get_text(self, key: str) -> str | None:
        """A free-form setting kept with the spool (enrolment details)."""
        value = self._meta(f"text:{key}")
        return None if value is None else value.decode("utf-8")

    def set_text(self, key: str, value: str) -> None:
        with self._transaction():
            self._set_meta(f"text:{key}", value.encode("utf-8"))

    def _check(self, node_id: NodeId | None) -> None:
        with self._transaction():
            version = self._int_meta("schema_version")
            if version is None:
                self._set_meta("schema_version", str(SCHEMA_VERSION).encode())
                version = SCHEMA_VERSION
            stored = self._meta("node_id")
            self._refuse_another(version, stored, node_id)
            if node_id is not None and stored is None:
                self._set_meta("node_id", node_id)
            head = self._head()
            row = self._db.execute("SELECT MAX(seq) FROM envelopes").fetchone()
            max_seq = row[0]
            if (head is None) != (max_seq is None) or (head is not None and head.seq != max_seq):
                raise SpoolError(
                    f"spool {self._path} is inconsistent: head {None if head is None else head.seq}"
                    f" but highest stored seq {max_seq}; refusing to sign on it"
                )

    class _Tx:
        def __init__(self, db: sqlite3.Connection, immediate: bool) -> None:
            self._db = db
            self._immediate = immediate

        def __enter__(self) -> None:
            self._db.execute("BEGIN IMMEDIATE" if self._immediate else "BEGIN")

        def __exit__(self, kind: object, value: object, traceback: object) -> None:
            if kind is None:
                self._db.execute("COMMIT")
            else:
                self._db.execute("ROLLBACK")

    def _transaction(self, *, immediate: bool = True) -> Spool._Tx:
        return Spool._Tx(self._db, immediate)

    # -- the chain ------------------------------------------------------------------------------

    def _head(self) -> ChainHead | None:
        seq = self._int_meta("head_seq")
        if seq is None:
            return None
        digest = self._meta("head_digest")
        end = self._int_meta("head_window_end_ns")
        assert digest is not None
        return ChainHead(seq=seq, digest=Digest(digest), window_end_ns=end or 0)

    def head(self) -> ChainHead | None:
        """The last envelope in the chain (None before the first window)."""
        with self._transaction(immediate=False):
            return self._head()

    def _pending_totals(self) -> tuple[int, int]:
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(envelope)), 0) FROM envelopes "
            "WHERE status = 'pending'"
        ).fetchone()
        return int(row[0]), int(row[1])

    def backlog(self) -> SpoolBacklog:
        """What is not yet acknowledged: count, bytes, and the oldest window's start."""
        with self._transaction(immediate=False):
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(envelope)), 0), MIN(window_start_ns) "
                "FROM envelopes WHERE status = 'pending'"
            ).fetchone()
        return SpoolBacklog(
            count=int(row[0]),
            size_bytes=int(row[1]),
            oldest_window_start_ns=None if row[2] is None else int(row[2]),
        )

    def has_room(self, max_unacked_envelopes: int, max_unacked_bytes: int) -> bool:
        """Whether another envelope fits under the bound on unacknowledged envelopes."""
        count, size = self._pending_totals()
        return count < max_unacked_envelopes and size < max_unacked_bytes

    def append(
        self,
        sign: Callable[[int, bytes, bytes], bytes],
        window: WindowTimes,
        *,
        samples: bytes,
        created_at_ns: int,
    ) -> SpooledEnvelope:
        """Sign and store the next link, durably, in one transaction.

        ``sign(seq, prev_digest, verifier_nonce)`` returns the envelope bytes; it runs inside the
        transaction, with the head and nonce as stored. Nothing is stored if it raises.
        A database failure (disk full, I/O error) raises :class:`SpoolError`.
        """
        try:
            with self._transaction():
                head = self._head()
                if head is not None and window.start_ns < head.window_end_ns:
                    raise SpoolError(
                        f"window starting at {window.start_ns} overlaps the head's window "
                        f"(ends {head.window_end_ns})"
                    )
                seq, prev = next_link(head)
                nonce = self._meta("nonce") or b""
                raw = sign(seq, prev, nonce)
                digest = envelope_digest(raw)
                self._db.execute(
                    "INSERT INTO envelopes (seq, digest, envelope, window_start_ns, window_end_ns, "
                    "created_at_ns, status) VALUES (?, ?, ?, ?, ?, ?, 'pending')",
                    (seq, digest, raw, window.start_ns, window.end_ns, created_at_ns),
                )
                self._db.execute("INSERT INTO samples (seq, encoded) VALUES (?, ?)", (seq, samples))
                self._set_meta("head_seq", str(seq).encode())
                self._set_meta("head_digest", digest)
                self._set_meta("head_window_end_ns", str(window.end_ns).encode())
        except sqlite3.Error as exc:
            raise SpoolError(f"spool write failed: {exc}") from None
        return SpooledEnvelope(
            seq=seq,
            digest=digest,
            envelope=raw,
            window_start_ns=window.start_ns,
            window_end_ns=window.end_ns,
            status=EnvelopeStatus.PENDING,
        )

    # -- shipping -------------------------------------------------------------------------------

    def pending(self, *, limit: int, max_bytes: int) -> list[SpooledEnvelope]:
        """Unacknowledged envelopes, oldest first, at most ``limit`` and about ``max_bytes`` (at
        least one, however large)."""
        rows = self._db.execute(
            "SELECT seq, digest, envelope, window_start_ns, window_end_ns, status, log_index, "
            "reject_reason, detail, attempts FROM envelopes WHERE status = 'pending' "
            "ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()
        out: list[SpooledEnvelope] = []
        size = 0
        for row in rows:
            size += len(row[2])
            if out and size > max_bytes:
                break
            out.append(_row(row))
        return out

    def record_receipts(self, receipts: Iterable[ReceiptRecord], *, at_ns: int) -> None:
        """Store what the verifier said, in one transaction."""
        with self._transaction():
            for receipt in receipts:
                row = self._db.execute(
                    "SELECT seq FROM envelopes WHERE digest = ?", (receipt.digest,)
                ).fetchone()
                if row is None:
                    log.warning("receipt for an unknown envelope digest=%s", receipt.digest.hex())
                    continue
                seq = int(row[0])
                if receipt.retry:
                    self._db.execute(
                        "UPDATE envelopes SET attempts = attempts + 1, detail = ? WHERE seq = ?",
                        (receipt.detail, seq),
                    )
                    continue
                self._db.execute(
                    "UPDATE envelopes SET status = ?, log_index = ?, reject_reason = ?, "
                    "detail = ?, attempts = attempts + 1, acked_at_ns = ? "
                    "WHERE seq = ? AND status = 'pending'",
                    (
                        receipt.status.value,
                        receipt.log_index,
                        receipt.reject_reason,
                        receipt.detail,
                        at_ns,
                        seq,
                    ),
                )
                if receipt.status.acknowledged:
                    self._set_meta(
                        "last_receipt",
                        f"{seq} {receipt.status.value} {receipt.log_index} {at_ns}".encode(),
                    )

    def store_nonce(self, nonce: Nonce) -> None:
        """Keep the latest verifier nonce; every later window carries it."""
        with self._transaction():
            self._set_meta("nonce", nonce.nonce)
            self._set_meta(
                "nonce_times",
                f"{nonce.issued_at_ns} {nonce.expires_at_ns} {nonce.received_at_ns}".encode(),
            )

    def nonce(self) -> Nonce | None:
        value = self._meta("nonce")
        times = self._meta("nonce_times")
        if value is None or times is None:
            return None
        issued, expires, received = (int(t) for t in times.decode().split())
        return Nonce(value, issued, expires, received)

    def record_error(self, source: str, message: str, *, at_ns: int) -> None:
        """Keep an error for ``status`` (the last few are kept). Never pass secrets."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO errors (at_ns, source, message) VALUES (?, ?, ?)",
                (at_ns, source, message[:500]),
            )
            self._db.execute(
                "DELETE FROM errors WHERE id <= (SELECT MAX(id) FROM errors) - ?",
                (MAX_ERRORS_KEPT,),
            )

    # -- reading back -------------------------------------------------------------------------

    def envelopes(self) -> list[SpooledEnvelope]:
        """Every stored envelope, by seq."""
        rows = self._db.execute(
            "SELECT seq, digest, envelope, window_start_ns, window_end_ns, status, log_index, "
            "reject_reason, detail, attempts FROM envelopes ORDER BY seq"
        ).fetchall()
        return [_row(row) for row in rows]

    def samples(self, seq: int) -> bytes | None:
        """The encoded raw samples of a window (for an audit request), if still kept."""
        row = self._db.execute("SELECT encoded FROM samples WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else bytes(row[0])

    def stats(self) -> SpoolStats:
        with self._transaction(immediate=False):
            count, size = self._pending_totals()
            oldest = self._db.execute(
                "SELECT seq, window_start_ns FROM envelopes WHERE status = 'pending' "
                "ORDER BY seq LIMIT 1"
            ).fetchone()
            by_status = dict(
                self._db.execute("SELECT status, COUNT(*) FROM envelopes GROUP BY status")
            )
            last = self._meta("last_receipt")
            last_receipt = None
            if last is not None:
                seq, status, log_index, at = last.decode().split()
                last_receipt = LastReceipt(
                    seq=int(seq),
                    status=EnvelopeStatus(status),
                    log_index=None if log_index == "None" else int(log_index),
                    at_ns=int(at),
                )
            errors = tuple(
                (int(at), str(source), str(message))
                for at, source, message in self._db.execute(
                    "SELECT at_ns, source, message FROM errors ORDER BY id DESC LIMIT 5"
                )
            )
            return SpoolStats(
                head=self._head(),
                pending_count=count,
                pending_bytes=size,
                oldest_pending_seq=None if oldest is None else int(oldest[0]),
                oldest_pending_window_start_ns=None if oldest is None else int(oldest[1]),
                acknowledged_count=int(by_status.get("accepted", 0))
                + int(by_status.get("duplicate", 0)),
                rejected_count=int(by_status.get("rejected", 0)),
                last_receipt=last_receipt,
                nonce=self.nonce(),
                last_errors=errors,
            )

    def prune(self, *, now_ns: int, samples_retention_days: int, acked_retention_days: int) -> int:
        """Drop samples and acknowledged envelopes past their retention; never the head, never a
        pending or rejected envelope. Returns the number of envelopes dropped."""
        with self._transaction():
            head = self._head()
            keep_seq = -1 if head is None else head.seq
            self._db.execute(
                "DELETE FROM samples WHERE seq IN (SELECT seq FROM envelopes "
                "WHERE window_end_ns < ? AND seq != ?)",
                (now_ns - samples_retention_days * NS_PER_DAY, keep_seq),
            )
            cursor = self._db.execute(
                "DELETE FROM envelopes WHERE status IN ('accepted', 'duplicate') "
                "AND window_end_ns < ? AND seq != ?",
                (now_ns - acked_retention_days * NS_PER_DAY, keep_seq),
            )
            return cursor.rowcount


def _row(row: tuple[Any, ...]) -> SpooledEnvelope:
    seq, digest, raw, start, end, status, log_index, reason, detail, attempts = row
    return SpooledEnvelope(
        seq=int(seq),
        digest=Digest(bytes(digest)),
        envelope=bytes(raw),
        window_start_ns=int(start),
        window_end_ns=int(end),
        status=EnvelopeStatus(str(status)),
        log_index=None if log_index is None else int(log_index),
        reject_reason=str(reason),
        detail=str(detail),
        attempts=int(attempts),
    )
