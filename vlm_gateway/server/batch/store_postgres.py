"""The shared store: files, batches, rows and results in PostgreSQL, so any number of gateway
processes, on any hosts, serve one Batch API and work through its batches together (the rows
and their leases: vlm_gateway/server/batch/pg_queue.py). Same contract as the SQLite store
(vlm_gateway/server/batch/store.py), owners included; docs/batch.md, "PostgreSQL".

Uploads are received into a local spool file first (the multipart reader writes to a path),
then copied into the database in one transaction: a file is visible to every gateway, whole,
or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from vlm_gateway.server.batch.pg_base import (
    CHUNK_BYTES,
    PgConnection,
    batch_doc,
    save_batch,
    with_counts,
)
from vlm_gateway.server.batch.pg_queue import PgQueue
from vlm_gateway.server.batch.protocol import ACTIVE_STATUSES, Batch, FileObject
from vlm_gateway.server.batch.store_base import FINAL_STATUSES, ResultRow, SharedQueue, new_id

_OWNED = "(%(owner)s::text IS NULL OR owner = %(owner)s)"


class PostgresStore:
    def __init__(self, url: str, spool_dir: str | Path) -> None:
        self.spool_dir = Path(spool_dir)
        self._db = PgConnection(url)
        self._queue = PgQueue(self._db)

    async def open(self) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.spool_dir.glob("*.part"):  # uploads cut short by a crash
            leftover.unlink(missing_ok=True)
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    def queue(self) -> SharedQueue | None:
        return self._queue

    # -- files ---------------------------------------------------------------------------------

    def upload_path(self) -> Path:
        return self.spool_dir / f"{uuid.uuid4().hex}.part"

    def local_file(self, file_id: str) -> Path | None:
        return None  # in the database: read with file_chunks

    async def add_file(self, upload: Path, filename: str, purpose: str, owner: str) -> FileObject:
        file = FileObject(
            id=new_id("file-"),
            bytes=upload.stat().st_size,
            created_at=int(time.time()),
            filename=filename,
            purpose=purpose,
        )
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO vlmgw_files (id, owner, purpose, doc) VALUES (%s, %s, %s, %s)",
                (file.id, owner, purpose, file.model_dump_json()),
            )
            with open(upload, "rb") as handle:
                n = 0
                while data := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                    await conn.execute(
                        "INSERT INTO vlmgw_file_chunks (file_id, n, data) VALUES (%s, %s, %s)",
                        (file.id, n, data),
                    )
                    n += 1
        upload.unlink(missing_ok=True)
        return file

    async def file_chunks(self, file_id: str) -> AsyncIterator[bytes]:
        # One chunk per query, so a download never holds the connection while the client reads.
        n = 0
        while True:
            async with self._db.use() as conn:
                cur = await conn.execute(
                    "SELECT data FROM vlmgw_file_chunks WHERE file_id = %s AND n = %s",
                    (file_id, n),
                )
                row = await cur.fetchone()
            if row is None:
                return
            yield bytes(row[0])
            n += 1

    @contextlib.asynccontextmanager
    async def input_copy(self, file_id: str) -> AsyncIterator[Path]:
        path = self.spool_dir / f"{uuid.uuid4().hex}.part"
        try:
            with open(path, "wb") as out:
                async for chunk in self.file_chunks(file_id):
                    await asyncio.to_thread(out.write, chunk)
            yield path
        finally:
            path.unlink(missing_ok=True)

    async def get_file(self, file_id: str, owner: str | None = None) -> FileObject | None:
        async with self._db.use() as conn:
            cur = await conn.execute(
                f"SELECT doc FROM vlmgw_files WHERE id = %(id)s AND {_OWNED}",
                {"id": file_id, "owner": owner},
            )
            row = await cur.fetchone()
        return FileObject.model_validate_json(row[0]) if row else None

    async def list_files(
        self, after: str | None, limit: int, ascending: bool, purpose: str | None, owner: str | None
    ) -> tuple[list[FileObject], bool]:
        docs, more = await self._page("vlmgw_files", after, limit, ascending, owner, purpose)
        return [FileObject.model_validate_json(doc) for doc in docs], more

    async def delete_file(self, file_id: str) -> bool:
        async with self._db.use() as conn:  # its chunks go with it (ON DELETE CASCADE)
            cur = await conn.execute("DELETE FROM vlmgw_files WHERE id = %s", (file_id,))
        return cur.rowcount > 0

    async def file_in_use(self, file_id: str) -> bool:
        async with self._db.use() as conn:
            cur = await conn.execute(
                "SELECT doc FROM vlmgw_batches WHERE status = ANY(%s)", (list(ACTIVE_STATUSES),)
            )
            rows = await cur.fetchall()
        return any(Batch.model_validate_json(doc).input_file_id == file_id for (doc,) in rows)

    # -- batches -------------------------------------------------------------------------------

    async def add_batch(self, batch: Batch, owner: str) -> None:
        async with self._db.use() as conn:
            await conn.execute(
                "INSERT INTO vlmgw_batches (id, owner, status, created_at, expires_at, doc) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    batch.id,
                    owner,
                    batch.status,
                    batch.created_at,
                    batch.expires_at,
                    batch.model_dump_json(),
                ),
            )

    async def get_batch(self, batch_id: str, owner: str | None = None) -> Batch | None:
        async with self._db.use() as conn:
            return await batch_doc(conn, batch_id, owner)

    async def batch_owner(self, batch_id: str) -> str | None:
        async with self._db.use() as conn:
            cur = await conn.execute("SELECT owner FROM vlmgw_batches WHERE id = %s", (batch_id,))
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def list_batches(
        self, after: str | None, limit: int, owner: str | None
    ) -> tuple[list[Batch], bool]:
        docs, more = await self._page("vlmgw_batches", after, limit, False, owner)
        async with self._db.use() as conn:
            batches = [await with_counts(conn, Batch.model_validate_json(doc)) for doc in docs]
        return batches, more

    async def active_batch_ids(self) -> list[str]:
        async with self._db.use() as conn:
            cur = await conn.execute(
                "SELECT id FROM vlmgw_batches WHERE status = ANY(%s) ORDER BY seq",
                (list(ACTIVE_STATUSES),),
            )
            return [batch_id for (batch_id,) in await cur.fetchall()]

    async def batch_status_counts(self) -> dict[str, int]:
        async with self._db.use() as conn:
            cur = await conn.execute("SELECT status, count(*) FROM vlmgw_batches GROUP BY status")
            return {status: count for status, count in await cur.fetchall()}

    async def update_batch(self, /, batch_id: str, **changes: Any) -> Batch:
        """Set fields on a batch under its row lock. A batch in a final status stays as it
        is (another gateway finished it meanwhile): it is returned unchanged."""
        async with self._db.transaction() as conn:
            batch = await batch_doc(conn, batch_id, lock="FOR UPDATE")
            if batch is None:
                raise KeyError(batch_id)
            if batch.status in FINAL_STATUSES:
                return batch
            batch = batch.model_copy(update=changes)
            await save_batch(conn, batch)
            return batch

    # -- results -------------------------------------------------------------------------------

    async def add_result(self, row: ResultRow) -> None:
        await self._queue.record(row)

    async def done_custom_ids(self, batch_id: str) -> set[str]:
        async with self._db.use() as conn:
            cur = await conn.execute(
                "SELECT custom_id FROM vlmgw_results WHERE batch_id = %s", (batch_id,)
            )
            return {custom_id for (custom_id,) in await cur.fetchall()}

    async def finish_batch(
        self, /, batch_id: str, extra_errors: list[bytes], **changes: Any
    ) -> Batch:
        batch = await self._queue.finish_with(batch_id, extra_errors, **changes)
        if batch is None:  # another gateway finished it, or is at it
            batch = await self.get_batch(batch_id)
        if batch is None:
            raise KeyError(batch_id)
        return batch

    async def _page(
        self,
        table: str,
        after: str | None,
        limit: int,
        ascending: bool,
        owner: str | None,
        purpose: str | None = None,
    ) -> tuple[list[str], bool]:
        """One page of docs, filtered before it is cut; the cursor must be visible too."""
        order, cmp = ("ASC", ">") if ascending else ("DESC", "<")
        where = [_OWNED]
        if purpose is not None:
            where.append("purpose = %(purpose)s")
        if after:
            where.append(f"seq {cmp} (SELECT seq FROM {table} WHERE id = %(after)s AND {_OWNED})")
        async with self._db.use() as conn:
            cur = await conn.execute(
                f"SELECT doc FROM {table} WHERE {' AND '.join(where)} "
                f"ORDER BY seq {order} LIMIT %(n)s",
                {"owner": owner, "purpose": purpose, "after": after, "n": limit + 1},
            )
            rows = await cur.fetchall()
        return [doc for (doc,) in rows[:limit]], len(rows) > limit
