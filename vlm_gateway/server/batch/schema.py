"""The batch store's SQLite schema, and the in-place upgrade of stores written by earlier
versions (vlm_gateway/server/batch/store.py uses it)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from vlm_gateway.server.door.keys import ANONYMOUS

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    batch_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    ok INTEGER NOT NULL,
    model TEXT NOT NULL,
    line BLOB NOT NULL,
    PRIMARY KEY (batch_id, custom_id)
) WITHOUT ROWID;
"""
# Created after _upgrade: an older store has no owner column to index before it.
_INDEXES = """
CREATE INDEX IF NOT EXISTS files_by_owner ON files (owner, seq);
CREATE INDEX IF NOT EXISTS batches_by_owner ON batches (owner, seq);
"""
_OWNED_TABLES = ("files", "batches")

# The condition for "owned by :owner", where an :owner of None means every owner's rows (an
# admin's view).
OWNED_BY = "(:owner IS NULL OR owner = :owner)"


def open_database(path: Path) -> sqlite3.Connection:
    """The store's one connection (autocommit; WAL, synchronous=FULL: a commit survives
    kill -9 and power loss), its tables created or upgraded."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_SCHEMA)
    _upgrade(db)
    db.executescript(_INDEXES)
    return db


def _upgrade(db: sqlite3.Connection) -> None:
    """Stores from before owners existed get the column, in one transaction. Their rows carry
    no record of who created them, so they become the anonymous owner's: with no keys
    configured that is everyone, as before; with keys, only admins see them."""
    with Transaction(db):
        for table in _OWNED_TABLES:
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if "owner" not in columns:
                # SQLite adds a NOT NULL column only with a default; every row is set next.
                db.execute(f"ALTER TABLE {table} ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
                db.execute(f"UPDATE {table} SET owner = ?", (ANONYMOUS.name,))


class Transaction:
    """`with Transaction(db):` one write transaction (BEGIN IMMEDIATE), rolled back on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
