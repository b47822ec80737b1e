"""SQLite storage: the embedded default. WAL mode, synchronous=FULL, one writer.

    store = SqliteStore.open(Path("verifier.db"))
    with store.transaction() as tx:
        tx.append_log(entries, nodes, now_ns)
    store.close()

The database holds the nonce secret and every lab's data: it is created 0600 in a directory made
0700 (SQLite gives its -wal and -shm files the database's mode). An existing store that others can
read is tightened, with a warning; one in a directory others can write (or a shared, sticky one
such as /tmp), or one owned by another user, is refused with a ConfigError that says what to do.

One verifier process writes a store: it holds an exclusive lock on ``<store>.lock`` (``flock``,
released by the kernel when the process ends, however it ends) and writes its pid, host and start
time there. A second process that opens the same store is refused with a ConfigError that names
the first. (Two writers would each keep their own log size and chain heads in memory and assign
the same log index twice.)

A committed transaction is on disk (the WAL is fsynced at commit), so nothing a receipt reported
as accepted can be lost by a crash. Writes go through one connection under a lock; reads outside a
transaction use a connection per thread and see the last committed state.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from attest.errors import ConfigError
from verifier.store.sql import (
    SCHEMA_TEMPLATE,
    SCHEMA_VERSION,
    SqlQueries,
    SqlTransaction,
    upgrade_schema,
)

log = logging.getLogger(__name__)

SCHEMA = SCHEMA_TEMPLATE.format(blob="BLOB", bigint="INTEGER", without_rowid="WITHOUT ROWID")

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
_SIDE_FILES = ("", "-wal", "-shm", "-journal", ".lock")


def _tighten(path: Path, mode: int, what: str) -> None:
    """Make ``path`` (ours) exactly ``mode``, warning when it was more open; refuse another
    user's file rather than change it."""
    info = path.stat()
    found = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"the store {what} {path} is mode {found:04o} and owned by another user (uid "
            f"{info.st_uid}): that user could read the nonce secret and every lab's data, or "
            f"replace them; chown it to the verifier's user and chmod {mode:o} it"
        )
    if found & 0o077 == 0:
        return
    os.chmod(path, mode)
    log.warning("the store %s %s was mode %04o; set to %04o", what, path, found, mode)


def secure_store_files(path: Path) -> None:
    """Create or tighten the store's directory (0700) and files (0600) before SQLite opens them.

    Raises :class:`ConfigError` for a directory that other users may write to (they could swap the
    database) or that belongs to another user."""
    directory = path.parent
    if not directory.exists():
        directory.mkdir(parents=True, mode=DIRECTORY_MODE)
        os.chmod(directory, DIRECTORY_MODE)  # mkdir's mode is masked by the umask
    info = directory.stat()
    found = stat.S_IMODE(info.st_mode)
    if found & (stat.S_IWGRP | stat.S_IWOTH | stat.S_ISVTX):
        raise ConfigError(
            f"the store directory {directory} is mode {found:04o}: other users can replace the "
            "database there; give the store a directory of its own (mkdir -m 700) and set "
            "store.path to a file in it"
        )
    _tighten(directory, DIRECTORY_MODE, "directory")
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
        os.close(fd)
    for suffix in _SIDE_FILES:
        candidate = Path(str(path) + suffix)
        if candidate.exists():
            _tighten(candidate, FILE_MODE, "file")


def lock_path(path: Path) -> Path:
    """The lock file of the store at ``path``."""
    return Path(str(path) + ".lock")


def acquire_writer_lock(path: Path) -> int:
    """Take the store's writer lock; the open file descriptor holds it until closed.

    Raises :class:`ConfigError` naming the process that holds it."""
    where = lock_path(path)
    fd = os.open(where, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "a process"
        os.close(fd)
        raise ConfigError(
            f"the store {path} is in use by another verifier ({holder}; lock {where}): one "
            "process writes a SQLite store. Stop that verifier, or give this one its own "
            "store.path (several verifiers can share a PostgreSQL store)"
        ) from None
    except OSError:
        os.close(fd)
        raise
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, text, 0)
    return fd


class SqliteStore(SqlQueries):
    """The SQLite backend."""

    shared = False  # one verifier process per file (held by the writer lock)

    def __init__(self, path: Path) -> None:
        secure_store_files(path)
        self._lock_fd: int | None = acquire_writer_lock(path)
        try:
            self._open(path)
        except BaseException:
            for conn in getattr(self, "_all_conns", []):
                conn.close()  # a refused store (a newer schema) is left as it was found
            self._release_lock()
            raise

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _open(self, path: Path) -> None:
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
                raise ConfigError(
                    f"the store {path} has schema version {found}; this verifier needs "
                    f"{SCHEMA_VERSION} (a newer verifier wrote it): run that newer verifier, or "
                    "restore the backup taken before the upgrade; the store was not changed"
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
            self._release_lock()

    def stored_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            candidate = Path(str(self.path) + suffix)
            if candidate.exists():
                total += candidate.stat().st_size
        return total
