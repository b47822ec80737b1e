"""PostgreSQL storage: for a regulator that outgrows one machine (several verifier processes over
one database).

    store = PostgresStore.open("postgresql://verifier@db.internal/pausewatch", schema="pausewatch")

The same SQL as the SQLite backend (:mod:`verifier.store.sql`). Every write transaction first takes
a transaction-scoped advisory lock, so appends to the log are sequenced under a database lock even
with several writers; a verifier process that finds the log grew under it resynchronises its
in-memory tree (:meth:`verifier.store.log.TransparencyLog.resync`).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from attest.errors import ConfigError, PausewatchError
from verifier.store.sql import (
    SCHEMA_TEMPLATE,
    SCHEMA_VERSION,
    SqlQueries,
    SqlTransaction,
    upgrade_schema,
)

log = logging.getLogger(__name__)

SCHEMA = SCHEMA_TEMPLATE.format(blob="BYTEA", bigint="BIGINT", without_rowid="")
LOG_LOCK_ID = 0x7077_6C6F_6701  # "pwlog" + version: the advisory lock that sequences the log
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_URI_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:]*):[^/@]*@", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password replaced by ``***`` (URI or ``key=value`` form), to show in
    messages: a DSN's password never reaches an error or a log."""
    text = _URI_PASSWORD.sub(r"\g<head>:***@", dsn)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", text, flags=re.I)


def _scrub(message: str, dsn: str) -> str:
    """A libpq message with the DSN's password (and the DSN itself) taken out. For a DSN that does
    not parse, where the password cannot be told apart, every quoted token but an option name."""
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        options = {o.keyword.decode() for o in psycopg.pq.Conninfo.get_defaults()}
        message = re.sub(
            r'"([^"]*)"',
            lambda m: (
                m.group(0) if m.group(1) in options or not re.search(r"\w", m.group(1)) else '"***"'
            ),
            message,
        )
        password = None
    for secret in (dsn, password):
        if secret:
            message = message.replace(str(secret), "***")
    return " ".join(message.split())


def connect(dsn: str) -> psycopg.Connection[Any]:
    """An autocommit connection, or an error that names ``store.dsn`` (its password redacted)
    and what libpq said: :class:`ConfigError` for a DSN that does not parse, else
    :class:`PausewatchError` (the database cannot be reached, or refused us)."""
    try:
        return psycopg.connect(dsn, autocommit=True)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(
            f"store.dsn: not a PostgreSQL connection string: {_scrub(str(exc), dsn)}"
        ) from None
    except psycopg.Error as exc:
        raise PausewatchError(
            f"cannot connect to the PostgreSQL store (store.dsn {redact_dsn(dsn)!r}): "
            f"{_scrub(str(exc), dsn)}"
        ) from None


class PostgresStore(SqlQueries):
    """The PostgreSQL backend."""

    shared = True  # several verifier processes over one database

    _placeholder = "%s"

    def __init__(
        self, dsn: str, schema: str = "pausewatch", *, drop_on_close: bool = False
    ) -> None:
        if _SCHEMA_NAME.fullmatch(schema) is None:
            raise ValueError(f"schema name {schema!r} is not a plain lowercase identifier")
        self.dsn = dsn
        self.schema = schema
        self._drop_on_close = drop_on_close
        self._closed = False
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._all_conns: list[psycopg.Connection[Any]] = []
        self._conns_lock = threading.Lock()
        setup = connect(dsn)
        try:
            setup.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            setup.execute(f"SET search_path TO {schema}")
            with setup.transaction():
                setup.execute("SELECT pg_advisory_xact_lock(%s)", (LOG_LOCK_ID,))
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        setup.execute(statement)
                row = setup.execute(
                    "SELECT value FROM meta WHERE key = 'schema_version'"
                ).fetchone()
                if row is None:
                    setup.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', %s)",
                        (str(SCHEMA_VERSION).encode(),),
                    )
                elif (found := int(bytes(row[0]))) < SCHEMA_VERSION:
                    log.info(
                        "upgrading schema %s from version %d to %d", schema, found, SCHEMA_VERSION
                    )
                    upgrade_schema(SqlTransaction(setup, self._placeholder), found)
                elif found != SCHEMA_VERSION:
                    raise ConfigError(
                        f"the store's schema {schema} has version {found}; this verifier needs "
                        f"{SCHEMA_VERSION} (a newer verifier wrote it): run that newer verifier, "
                        "or restore the backup taken before the upgrade; the store was not changed"
                    )
        finally:
            setup.close()
        self._writer = self._connect()

    @classmethod
    def open(
        cls, dsn: str, schema: str = "pausewatch", *, drop_on_close: bool = False
    ) -> PostgresStore:
        return cls(dsn, schema, drop_on_close=drop_on_close)

    def _connect(self) -> psycopg.Connection[Any]:
        conn = connect(self.dsn)
        conn.execute(f"SET search_path TO {self.schema}")
        with self._conns_lock:
            self._all_conns.append(conn)
        return conn

    def _conn(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise RuntimeError("the store is closed")
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[SqlTransaction]:
        if self._closed:
            raise RuntimeError("the store is closed")
        with self._write_lock, self._writer.transaction():
            self._writer.execute("SELECT pg_advisory_xact_lock(%s)", (LOG_LOCK_ID,))
            yield SqlTransaction(self._writer, "%s", array_inserts=True)

    @contextmanager
    def snapshot(self) -> Iterator[SqlTransaction]:
        """A consistent read-only view (REPEATABLE READ)."""
        conn = self._conn()
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield SqlTransaction(conn, "%s")

    def close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            with self._conns_lock:
                for conn in self._all_conns:
                    conn.close()
                self._all_conns.clear()
            if self._drop_on_close:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")

    def stored_bytes(self) -> int:
        row = self._one(
            "SELECT COALESCE(SUM(pg_total_relation_size("
            "quote_ident(schemaname) || '.' || quote_ident(tablename))), 0) "
            "FROM pg_tables WHERE schemaname = ?",
            (self.schema,),
        )
        return int(row[0])
