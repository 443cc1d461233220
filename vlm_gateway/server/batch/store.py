"""The embedded store: metadata in SQLite (WAL, synchronous=FULL: a commit survives kill -9
and power loss), file bytes on disk under `data_dir/files/`. No server to run.

Every public method is a coroutine that runs its SQLite work in a worker thread, serialised by
one lock (one connection; SQLite allows a single writer anyway). Per-request results go
through `add_result`, which commits whatever has queued up meanwhile in one transaction
(group commit), so thousands of results a second cost a handful of fsyncs.

Every file and batch has an `owner`: the name of the key that created it (docs/security.md,
"Tenancy"). Reads take `owner`: only that owner's objects, or None for every owner's (admins);
the filter is part of each query, so a page is cut after filtering and a cursor (`after`) that
names someone else's object finds nothing, exactly like an id that does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import orjson

from vlm_gateway.server.batch.protocol import ACTIVE_STATUSES, Batch, BatchRequestCounts, FileObject
from vlm_gateway.server.batch.schema import OWNED_BY, Transaction, open_database
from vlm_gateway.server.batch.store_base import ResultRow, SharedQueue, new_id

_CHUNK = 1 << 20


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _threaded(
    method: Callable[Concatenate[Store, _P], _T],
) -> Callable[Concatenate[Store, _P], Coroutine[Any, Any, _T]]:
    """Run a sync method in a worker thread, under the store's lock: the decorated
    `def f(self, ...) -> T` becomes a coroutine function returning T."""

    @functools.wraps(method)
    async def wrapper(self: Store, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        def locked() -> _T:
            with self._lock:
                return method(self, *args, **kwargs)

        return await asyncio.to_thread(locked)

    return wrapper


class Store:
    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.files_dir = self.data_dir / "files"
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[ResultRow, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    @property
    def _conn(self) -> sqlite3.Connection:
        """The open connection; using the store before `open` (or after `close`) is a bug."""
        if self._db is None:
            raise RuntimeError("the batch store is not open")
        return self._db

    # -- lifecycle -----------------------------------------------------------------------------

    @_threaded
    def open(self) -> None:
        self.files_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.files_dir.glob("*.part"):  # uploads cut short by a crash
            leftover.unlink(missing_ok=True)
        self._db = open_database(self.data_dir / "vlm-gateway.sqlite3")

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._close_db()

    @_threaded
    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- files ---------------------------------------------------------------------------------

    def upload_path(self) -> Path:
        """Where an upload is written before `add_file` adopts it."""
        return self.files_dir / f"{uuid.uuid4().hex}.part"

    def file_path(self, file_id: str) -> Path:
        return self.files_dir / file_id

    def local_file(self, file_id: str) -> Path | None:
        return self.file_path(file_id)

    async def file_chunks(self, file_id: str) -> AsyncIterator[bytes]:
        with open(self.file_path(file_id), "rb") as handle:
            while chunk := await asyncio.to_thread(handle.read, _CHUNK):
                yield chunk

    @contextlib.asynccontextmanager
    async def input_copy(self, file_id: str) -> AsyncIterator[Path]:
        yield self.file_path(file_id)  # on disk already: no copy

    def queue(self) -> SharedQueue | None:
        return None  # one process runs its batches, straight from the input files

    @_threaded
    def add_file(self, upload: Path, filename: str, purpose: str, owner: str) -> FileObject:
        file = FileObject(
            id=new_id("file-"),
            bytes=upload.stat().st_size,
            created_at=int(time.time()),
            filename=filename,
            purpose=purpose,
        )
        _fsync(upload)
        os.replace(upload, self.file_path(file.id))
        self._conn.execute(
            "INSERT INTO files (id, owner, doc) VALUES (?, ?, ?)",
            (file.id, owner, file.model_dump_json()),
        )
        return file

    @_threaded
    def get_file(self, file_id: str, owner: str | None = None) -> FileObject | None:
        row = self._conn.execute(
            f"SELECT doc FROM files WHERE id = :id AND {OWNED_BY}",
            {"id": file_id, "owner": owner},
        ).fetchone()
        return FileObject.model_validate_json(row[0]) if row else None

    @_threaded
    def list_files(
        self,
        after: str | None,
        limit: int,
        ascending: bool,
        purpose: str | None,
        owner: str | None,
    ) -> tuple[list[FileObject], bool]:
        docs, more = self._page("files", after, limit, ascending, owner, purpose)
        return [FileObject.model_validate_json(doc) for doc in docs], more

    @_threaded
    def delete_file(self, file_id: str) -> bool:
        deleted = self._conn.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount
        self.file_path(file_id).unlink(missing_ok=True)
        return bool(deleted)

    @_threaded
    def file_in_use(self, file_id: str) -> bool:
        """True while an unfinished batch reads this file as its input."""
        marks = ",".join("?" * len(ACTIVE_STATUSES))
        rows = self._conn.execute(
            f"SELECT doc FROM batches WHERE status IN ({marks})", ACTIVE_STATUSES
        ).fetchall()
        return any(orjson.loads(doc)["input_file_id"] == file_id for (doc,) in rows)

    # -- batches -------------------------------------------------------------------------------

    @_threaded
    def add_batch(self, batch: Batch, owner: str) -> None:
        self._conn.execute(
            "INSERT INTO batches (id, owner, status, doc) VALUES (?, ?, ?, ?)",
            (batch.id, owner, batch.status, batch.model_dump_json()),
        )

    @_threaded
    def get_batch(self, batch_id: str, owner: str | None = None) -> Batch | None:
        return self._get_batch(batch_id, owner)

    @_threaded
    def batch_owner(self, batch_id: str) -> str | None:
        row = self._conn.execute("SELECT owner FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return str(row[0]) if row else None

    @_threaded
    def list_batches(
        self, after: str | None, limit: int, owner: str | None
    ) -> tuple[list[Batch], bool]:
        docs, more = self._page("batches", after, limit, False, owner)
        return [self._with_counts(Batch.model_validate_json(doc)) for doc in docs], more

    @_threaded
    def active_batch_ids(self) -> list[str]:
        marks = ",".join("?" * len(ACTIVE_STATUSES))
        rows = self._conn.execute(
            f"SELECT id FROM batches WHERE status IN ({marks}) ORDER BY seq", ACTIVE_STATUSES
        ).fetchall()
        return [batch_id for (batch_id,) in rows]

    @_threaded
    def batch_status_counts(self) -> dict[str, int]:
        """Batches per status, for /metrics (statuses with none are absent)."""
        rows = self._conn.execute("SELECT status, COUNT(*) FROM batches GROUP BY status")
        return {status: count for status, count in rows.fetchall()}

    # `self, /` in the methods taking **changes: _threaded passes self positionally, and a
    # keyword-only `self` could otherwise collide with a key of `changes`.
    @_threaded
    def update_batch(self, /, batch_id: str, **changes: Any) -> Batch:
        """Set fields on a batch (e.g. status and its timestamp) in one commit."""
        return self._update(batch_id, **changes)

    # -- results -------------------------------------------------------------------------------

    async def add_result(self, row: ResultRow) -> None:
        """Return once `row` is committed. A custom_id already stored is kept, never doubled."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_results())
        await future

    async def _flush_results(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._insert_results([row for row, _ in batch])
            except Exception as exc:  # disk full, ...: every waiter learns it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    @_threaded
    def _insert_results(self, rows: list[ResultRow]) -> None:
        with self._transaction():
            self._conn.executemany(
                "INSERT OR IGNORE INTO results (batch_id, custom_id, ok, model, line) "
                "VALUES (?, ?, ?, ?, ?)",
                [(r.batch_id, r.custom_id, int(r.ok), r.model, r.line) for r in rows],
            )

    @_threaded
    def done_custom_ids(self, batch_id: str) -> set[str]:
        rows = self._conn.execute("SELECT custom_id FROM results WHERE batch_id = ?", (batch_id,))
        return {custom_id for (custom_id,) in rows}

    @_threaded
    def finish_batch(self, /, batch_id: str, extra_errors: list[bytes], **changes: Any) -> Batch:
        """Write the output and error files from the stored results, then set the final
        status (and `changes`) in the same commit. Safe to repeat after a crash: file ids
        are derived from the batch id, so a second run replaces the first's files. The files
        belong to the batch's owner."""
        batch = self._get_batch(batch_id)
        if batch is None:
            raise KeyError(batch_id)
        file_ids: dict[str, FileObject] = {}
        for ok, kind in ((1, "output"), (0, "error")):
            rows = self._conn.execute(
                "SELECT line FROM results WHERE batch_id = ? AND ok = ?", (batch_id, ok)
            )
            lines = itertools.chain((line for (line,) in rows), [] if ok else extra_errors)
            file = self._write_result_file(batch, kind, lines)
            if file is not None:
                file_ids[f"{kind}_file_id"] = file
        with self._transaction():
            for file in file_ids.values():
                self._conn.execute(
                    "INSERT OR REPLACE INTO files (id, owner, doc) "
                    "VALUES (?, (SELECT owner FROM batches WHERE id = ?), ?)",
                    (file.id, batch_id, file.model_dump_json()),
                )
            return self._update(batch_id, **{k: f.id for k, f in file_ids.items()}, **changes)

    def _write_result_file(
        self, batch: Batch, kind: str, lines: Iterable[bytes]
    ) -> FileObject | None:
        """Stream `lines` into the batch's output or error file; None when there are none."""
        file_id = f"file-{batch.id.removeprefix('batch_')}-{kind}"
        part = self.files_dir / f"{file_id}.part"
        with open(part, "wb") as out:
            for line in lines:
                out.write(line + b"\n")
            out.flush()
            os.fsync(out.fileno())
            empty = out.tell() == 0
        if empty:
            part.unlink()
            return None
        os.replace(part, self.file_path(file_id))
        return FileObject(
            id=file_id,
            bytes=self.file_path(file_id).stat().st_size,
            created_at=int(time.time()),
            filename=f"{batch.id}_{kind}.jsonl",
            purpose="batch_output",
        )

    # -- helpers (called with the lock held) ----------------------------------------------------

    def _get_batch(self, batch_id: str, owner: str | None = None) -> Batch | None:
        row = self._conn.execute(
            f"SELECT doc FROM batches WHERE id = :id AND {OWNED_BY}",
            {"id": batch_id, "owner": owner},
        ).fetchone()
        return self._with_counts(Batch.model_validate_json(row[0])) if row else None

    def _with_counts(self, batch: Batch) -> Batch:
        rows = self._conn.execute(
            "SELECT ok, count(*) FROM results WHERE batch_id = ? GROUP BY ok", (batch.id,)
        )
        by_ok = dict(rows.fetchall())
        batch.request_counts = BatchRequestCounts(
            total=batch.request_counts.total, completed=by_ok.get(1, 0), failed=by_ok.get(0, 0)
        )
        return batch

    def _update(self, batch_id: str, **changes: Any) -> Batch:
        batch = self._get_batch(batch_id)
        if batch is None:
            raise KeyError(batch_id)
        batch = batch.model_copy(update=changes)
        self._conn.execute(
            "UPDATE batches SET status = ?, doc = ? WHERE id = ?",
            (batch.status, batch.model_dump_json(), batch_id),
        )
        return batch

    def _page(
        self,
        table: str,
        after: str | None,
        limit: int,
        ascending: bool,
        owner: str | None,
        purpose: str | None = None,
    ) -> tuple[list[str], bool]:
        """One page of docs, filtered before it is cut (so `has_more` counts only what the
        caller may see). The cursor must be visible too, or the page is empty."""
        order, cmp = ("ASC", ">") if ascending else ("DESC", "<")
        # A plain `owner = :owner` (not OWNED_BY's OR) where it applies, so the index is used.
        owned = "owner = :owner" if owner is not None else "1"
        where = [owned]
        if purpose is not None:
            where.append("json_extract(doc, '$.purpose') = :purpose")
        if after:
            where.append(f"seq {cmp} (SELECT seq FROM {table} WHERE id = :after AND {owned})")
        rows = self._conn.execute(
            f"SELECT doc FROM {table} WHERE {' AND '.join(where)} ORDER BY seq {order} LIMIT :n",
            {"owner": owner, "purpose": purpose, "after": after, "n": limit + 1},
        ).fetchall()
        return [doc for (doc,) in rows[:limit]], len(rows) > limit

    def _transaction(self) -> Transaction:
        return Transaction(self._conn)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
