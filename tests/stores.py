"""Test stores for every backend: SQLite in a temp dir, PostgreSQL in a fresh schema.

The PostgreSQL tests use the real server at ``$PAUSEWATCH_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``); each store gets its own schema, dropped on close.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from verifier.store.base import Store

POSTGRES_DSN = os.environ.get(
    "PAUSEWATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


def make_store(kind: str, tmp_path: Path) -> Store:
    if kind == "sqlite":
        from verifier.store.sqlite import SqliteStore

        return SqliteStore.open(tmp_path / f"store-{uuid.uuid4().hex[:8]}.db")
    if kind == "postgres":
        from verifier.store.postgres import PostgresStore

        return PostgresStore.open(
            POSTGRES_DSN, schema=f"pw_test_{uuid.uuid4().hex[:12]}", drop_on_close=True
        )
    raise ValueError(kind)
