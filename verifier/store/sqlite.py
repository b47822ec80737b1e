"""SQLite storage: the embedded default. WAL mode, synchronous=FULL, one writer.

    store = SqliteStore.open(Path("verifier.db"))
    with store.transaction() as tx:
        tx.append_log(entries, nodes, now_ns)
    store.close()

A committed transaction is on disk (the WAL is fsynced at commit), so nothing a receipt reported
as accepted can be lost by a crash. Writes go through one connection under a lock; reads outside a
transaction use a connection per thread and see the last committed state.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from verifier.store.sql import (
    SCHEMA_TEMPLATE,
    SCHEMA_VERSION,
    SqlQueries,
    SqlTransaction,
    upgrade_schema,
)

log = logging.getLogger(__name__)

SCHEMA = SCHEMA_TEMPLATE.format(blob="BLOB", bigint="INTEGER", without_rowid="WITHOUT ROWID")


class SqliteStore(SqlQueries):
    """The SQLite backend."""

    shared = False  # one verifier process per file

    def __init__(self, path: Path) -> None:
        self.path = path
        self._closed = False
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._all_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._writer = self._connect()
        with self._write_lock:
            self._writer.executescript(SCHEMA)
            version = self._writer.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
            if version is None:
                self._writer.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION).encode(),),
                )
            elif (found := int(bytes(version[0]))) < SCHEMA_VERSION:
                log.info("upgrading %s from schema version %d to %d", path, found, SCHEMA_VERSION)
                self._writer.execute("BEGIN IMMEDIATE")
                try:
                    upgrade_schema(SqlTransaction(self._writer), found)
                except BaseException:
                    self._writer.execute("ROLLBACK")
                    raise
                self._writer.execute("COMMIT")
            elif found != SCHEMA_VERSION:
                raise RuntimeError(
                    f"{path} has schema version {found}; this verifier needs {SCHEMA_VERSION} "
                    "(a newer verifier wrote it)"
                )

    @classmethod
    def open(cls, path: Path) -> SqliteStore:
        return cls(path)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA busy_timeout = 30000")
        with self._conns_lock:
            self._all_conns.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("the store is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[SqlTransaction]:
        if self._closed:
            raise RuntimeError("the store is closed")
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield SqlTransaction(self._writer)
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[SqlTransaction]:
        """A consistent read-only view: every query inside sees the same committed state."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield SqlTransaction(conn)
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._write_lock:
            self._closed = True
            with self._conns_lock:
                for conn in self._all_conns:
                    conn.close()
                self._all_conns.clear()

    def stored_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            candidate = Path(str(self.path) + suffix)
            if candidate.exists():
                total += candidate.stat().st_size
        return total
