"""The PostgreSQL store's schema, its connection and the queries both halves of it share
(vlm_gateway/server/batch/store_postgres.py: files and batches; pg_queue.py: rows, leases,
results). Imported only when `batch.store` is a postgresql:// URL (psycopg is the `postgres`
extra).

Files live in the database, cut into 1 MiB `bytea` chunks: every gateway on any host reads
what another wrote, with nothing to share but the database (docs/batch.md, "PostgreSQL").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg

from vlm_gateway.server.batch.protocol import Batch, BatchRequestCounts

CHUNK_BYTES = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vlmgw_files (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    purpose TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vlmgw_file_chunks (
    file_id TEXT NOT NULL REFERENCES vlmgw_files (id) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (file_id, n)
);
CREATE TABLE IF NOT EXISTS vlmgw_batches (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vlmgw_rows (
    batch_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    line_no INTEGER NOT NULL,
    model TEXT NOT NULL,
    body BYTEA NOT NULL,
    done BOOLEAN NOT NULL DEFAULT false,
    lease_owner TEXT,
    lease_until TIMESTAMPTZ,
    PRIMARY KEY (batch_id, custom_id)
);
CREATE TABLE IF NOT EXISTS vlmgw_results (
    batch_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    ok BOOLEAN NOT NULL,
    model TEXT NOT NULL,
    line BYTEA NOT NULL,
    PRIMARY KEY (batch_id, custom_id)
);
CREATE INDEX IF NOT EXISTS vlmgw_files_by_owner ON vlmgw_files (owner, seq);
CREATE INDEX IF NOT EXISTS vlmgw_batches_by_owner ON vlmgw_batches (owner, seq);
CREATE INDEX IF NOT EXISTS vlmgw_batches_by_status ON vlmgw_batches (status);
CREATE INDEX IF NOT EXISTS vlmgw_rows_todo ON vlmgw_rows (batch_id, line_no) WHERE NOT done;
"""
# Gateways starting together would race on CREATE TABLE IF NOT EXISTS: one creates, the
# others wait on this lock (any constant, the same in every gateway).
_SCHEMA_LOCK = 0x766C6D67


class PgConnection:
    """One autocommit connection, used by one coroutine at a time, reopened when it broke
    (a database restart costs the operations in flight then, not the gateway)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = asyncio.Lock()
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def open(self) -> None:
        async with self.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            await conn.execute(_SCHEMA)

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            yield self._conn

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self.use() as conn, conn.transaction():
            yield conn


async def batch_doc(
    conn: psycopg.AsyncConnection[Any], batch_id: str, owner: str | None = None, lock: str = ""
) -> Batch | None:
    """The batch with its request counts, if `owner` (None: any) may see it. `lock`: a
    locking clause for the batch's row, e.g. "FOR UPDATE"."""
    cur = await conn.execute(
        "SELECT doc FROM vlmgw_batches WHERE id = %(id)s "
        f"AND (%(owner)s::text IS NULL OR owner = %(owner)s) {lock}",
        {"id": batch_id, "owner": owner},
    )
    row = await cur.fetchone()
    return await with_counts(conn, Batch.model_validate_json(row[0])) if row else None


async def with_counts(conn: psycopg.AsyncConnection[Any], batch: Batch) -> Batch:
    cur = await conn.execute(
        "SELECT ok, count(*) FROM vlmgw_results WHERE batch_id = %s GROUP BY ok", (batch.id,)
    )
    by_ok = {ok: count for ok, count in await cur.fetchall()}
    batch.request_counts = BatchRequestCounts(
        total=batch.request_counts.total,
        completed=by_ok.get(True, 0),
        failed=by_ok.get(False, 0),
    )
    return batch


async def save_batch(conn: psycopg.AsyncConnection[Any], batch: Batch) -> None:
    await conn.execute(
        "UPDATE vlmgw_batches SET status = %s, doc = %s WHERE id = %s",
        (batch.status, batch.model_dump_json(), batch.id),
    )


async def write_chunks(
    conn: psycopg.AsyncConnection[Any], file_id: str, pieces: AsyncIterator[bytes]
) -> int:
    """Store `pieces` as the file's chunks (about CHUNK_BYTES each); the bytes written. One
    chunk is held in memory at a time."""
    buffer = bytearray()
    n = total = 0
    async for piece in pieces:
        buffer += piece
        if len(buffer) >= CHUNK_BYTES:
            await _put_chunk(conn, file_id, n, bytes(buffer))
            n, total, buffer = n + 1, total + len(buffer), bytearray()
    if buffer:
        await _put_chunk(conn, file_id, n, bytes(buffer))
        total += len(buffer)
    return total


async def _put_chunk(conn: psycopg.AsyncConnection[Any], file_id: str, n: int, data: bytes) -> None:
    await conn.execute(
        "INSERT INTO vlmgw_file_chunks (file_id, n, data) VALUES (%s, %s, %s)", (file_id, n, data)
    )
