"""The shared queue of the PostgreSQL store: each batch's requests as rows, leased to whichever
gateway asks (`SELECT ... FOR UPDATE SKIP LOCKED`: two gateways never take the same row at
once). A lease runs out unless its gateway renews it, so the rows of a gateway that died are
taken again after `batch.lease_seconds`. A result is written at most once per custom_id
(primary key, ON CONFLICT DO NOTHING), and a batch is finished exactly once: under its row
lock, in the same transaction as its output and error files.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import psycopg

from vlm_gateway.server.batch.pg_base import PgConnection, batch_doc, save_batch, write_chunks
from vlm_gateway.server.batch.protocol import Batch, FileObject
from vlm_gateway.server.batch.store_base import InputRow, LeasedRow, ResultRow

_LEASE = """
WITH pick AS (
    SELECT r.batch_id, r.custom_id FROM vlmgw_rows r JOIN vlmgw_batches b ON b.id = r.batch_id
    WHERE b.status = 'in_progress' AND NOT r.done
      AND (r.lease_until IS NULL OR r.lease_until < now())
    ORDER BY b.seq, r.line_no
    LIMIT %(n)s
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE vlmgw_rows r SET lease_owner = %(me)s, lease_until = now() + %(lease)s * interval '1s'
FROM pick WHERE r.batch_id = pick.batch_id AND r.custom_id = pick.custom_id
RETURNING r.batch_id, r.custom_id, r.line_no, r.body
"""
_DUE = """
SELECT id, CASE
    WHEN status = 'cancelling' THEN 'cancelled'
    WHEN status = 'validating' THEN 'validate'
    WHEN expires_at < %(now)s THEN 'expired'
    ELSE 'completed' END
FROM vlmgw_batches b
WHERE status = 'cancelling'
   OR (status = 'validating' AND created_at < %(stale)s)
   OR (status IN ('in_progress', 'finalizing') AND (expires_at < %(now)s
       OR NOT EXISTS (SELECT 1 FROM vlmgw_rows r WHERE r.batch_id = b.id AND NOT r.done)))
ORDER BY seq
"""


class PgQueue:
    def __init__(self, db: PgConnection) -> None:
        self._db = db

    async def add_rows(self, batch_id: str, rows: Iterable[InputRow], **changes: Any) -> bool:
        async with self._db.transaction() as conn:
            batch = await batch_doc(conn, batch_id, lock="FOR UPDATE")
            if batch is None or batch.status != "validating":
                return False  # validated by another gateway meanwhile (or gone)
            async with conn.cursor().copy(
                "COPY vlmgw_rows (batch_id, custom_id, line_no, model, body) FROM STDIN"
            ) as copy:
                for row in rows:
                    await copy.write_row(
                        (batch_id, row.custom_id, row.line_no, row.model, row.body)
                    )
            await save_batch(conn, batch.model_copy(update=changes))
        return True

    async def lease(self, worker: str, limit: int, lease_s: float) -> list[LeasedRow]:
        async with self._db.use() as conn:
            cur = await conn.execute(_LEASE, {"n": limit, "me": worker, "lease": lease_s})
            rows = await cur.fetchall()
        return [LeasedRow(b, c, n, bytes(body)) for b, c, n, body in rows]

    async def renew(self, worker: str, rows: list[tuple[str, str]], lease_s: float) -> None:
        if not rows:
            return
        async with self._db.use() as conn:
            await conn.execute(
                "UPDATE vlmgw_rows SET lease_until = now() + %s * interval '1s' "
                "WHERE lease_owner = %s AND NOT done "
                "AND (batch_id, custom_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
                (lease_s, worker, [b for b, _ in rows], [c for _, c in rows]),
            )

    async def release(self, worker: str) -> None:
        async with self._db.use() as conn:
            await conn.execute(
                "UPDATE vlmgw_rows SET lease_owner = NULL, lease_until = NULL "
                "WHERE lease_owner = %s AND NOT done",
                (worker,),
            )

    async def record(self, row: ResultRow) -> bool:
        async with self._db.transaction() as conn:
            # Shares the batch's row lock: a finish (FOR UPDATE) waits for this commit, or
            # this waits for the finish and then sees a final status and writes nothing.
            cur = await conn.execute(
                "SELECT status FROM vlmgw_batches WHERE id = %s FOR SHARE", (row.batch_id,)
            )
            status = await cur.fetchone()
            if status is None or status[0] not in ("in_progress", "cancelling"):
                return False
            await conn.execute(
                "INSERT INTO vlmgw_results (batch_id, custom_id, ok, model, line) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (row.batch_id, row.custom_id, row.ok, row.model, row.line),
            )
            await conn.execute(
                "UPDATE vlmgw_rows SET done = true, lease_owner = NULL, lease_until = NULL "
                "WHERE batch_id = %s AND custom_id = %s",
                (row.batch_id, row.custom_id),
            )
            cur = await conn.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM vlmgw_rows WHERE batch_id = %s AND NOT done)",
                (row.batch_id,),
            )
            left = await cur.fetchone()
        return bool(left and left[0])

    async def due(self, stale_validation_s: float) -> list[tuple[str, str]]:
        now = int(time.time())
        async with self._db.use() as conn:
            cur = await conn.execute(_DUE, {"now": now, "stale": now - int(stale_validation_s)})
            return [(batch_id, what) for batch_id, what in await cur.fetchall()]

    async def finish(
        self, batch_id: str, final: str, expired_line: Callable[[str], bytes], **changes: Any
    ) -> Batch | None:
        return await self._finish(batch_id, final, expired_line, [], changes)

    async def finish_with(
        self, batch_id: str, extra_errors: list[bytes], **changes: Any
    ) -> Batch | None:
        """`finish` with the given extra error lines (the store's finish_batch)."""
        final = str(changes.pop("status"))
        return await self._finish(batch_id, final, None, extra_errors, changes)

    async def _finish(
        self,
        batch_id: str,
        final: str,
        expired_line: Callable[[str], bytes] | None,
        extra: list[bytes],
        changes: dict[str, Any],
    ) -> Batch | None:
        async with self._db.transaction() as conn:
            batch = await batch_doc(conn, batch_id, lock="FOR UPDATE SKIP LOCKED")
            if batch is None or batch.status not in ("in_progress", "finalizing", "cancelling"):
                return None  # another gateway holds it, or it is over
            cur = await conn.execute(
                "SELECT custom_id FROM vlmgw_rows "
                "WHERE batch_id = %s AND NOT done ORDER BY line_no",
                (batch_id,),
            )
            left = [custom_id for (custom_id,) in await cur.fetchall()]
            if final == "completed" and left:
                return None
            if final == "expired" and expired_line is not None:
                extra = extra + [expired_line(custom_id) for custom_id in left]
            files = {}
            for ok, kind in ((True, "output"), (False, "error")):
                file = await _result_file(conn, batch, ok, kind, [] if ok else extra)
                if file is not None:
                    files[f"{kind}_file_id"] = file.id
            await conn.execute("DELETE FROM vlmgw_rows WHERE batch_id = %s", (batch_id,))
            changes = {"status": final, f"{final}_at": int(time.time()), **files, **changes}
            batch = batch.model_copy(update=changes)
            await save_batch(conn, batch)
            return batch


async def _result_file(
    conn: psycopg.AsyncConnection[Any], batch: Batch, ok: bool, kind: str, extra: list[bytes]
) -> FileObject | None:
    """The batch's output or error file from its stored results; None when there are none."""
    file_id = f"file-{batch.id.removeprefix('batch_')}-{kind}"
    owner = await conn.execute("SELECT owner FROM vlmgw_batches WHERE id = %s", (batch.id,))
    (owner_name,) = await owner.fetchone() or ("",)
    await conn.execute(
        "INSERT INTO vlmgw_files (id, owner, purpose, doc) VALUES (%s, %s, 'batch_output', '{}')",
        (file_id, owner_name),
    )
    size = await write_chunks(conn, file_id, _lines(conn, batch.id, ok, extra))
    if size == 0:
        await conn.execute("DELETE FROM vlmgw_files WHERE id = %s", (file_id,))
        return None
    file = FileObject(
        id=file_id,
        bytes=size,
        created_at=int(time.time()),
        filename=f"{batch.id}_{kind}.jsonl",
        purpose="batch_output",
    )
    await conn.execute(
        "UPDATE vlmgw_files SET doc = %s WHERE id = %s", (file.model_dump_json(), file_id)
    )
    return file


async def _lines(
    conn: psycopg.AsyncConnection[Any], batch_id: str, ok: bool, extra: list[bytes]
) -> AsyncIterator[bytes]:
    """The file's lines: the stored results (read through a server-side cursor, a few at a
    time, between the chunk inserts on the same connection), then `extra`."""
    async with conn.cursor(name=f"results_{int(ok)}") as cur:
        await cur.execute(
            "SELECT line FROM vlmgw_results WHERE batch_id = %s AND ok = %s ORDER BY custom_id",
            (batch_id, ok),
        )
        async for (line,) in cur:
            yield bytes(line) + b"\n"
    for line in extra:
        yield line + b"\n"
