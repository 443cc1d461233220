"""What the Batch API asks of a store, whichever holds it: `BatchStore` (files, batches,
results; routes, the runner and /metrics use it) and `SharedQueue`, the row leases that let
many gateway processes work through one batch (only the PostgreSQL store has one).

Implementations: vlm_gateway/server/batch/store.py (SQLite, embedded, one process) and
vlm_gateway/server/batch/store_postgres.py (PostgreSQL, any number of gateways); chosen by
`batch.store` (vlm_gateway/server/batch/open_store.py).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vlm_gateway.server.batch.protocol import Batch, FileObject

# The statuses a batch never leaves.
FINAL_STATUSES = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class ResultRow:
    """One finished request: `line` is its output-file line (JSON, no newline)."""

    batch_id: str
    custom_id: str
    ok: bool
    model: str
    line: bytes


@dataclass(frozen=True)
class LeasedRow:
    """One request of a batch, leased to this gateway: `body` is its input-file line."""

    batch_id: str
    custom_id: str
    line_no: int
    body: bytes


@dataclass(frozen=True)
class InputRow:
    """One validated request, split out of the input file at validation."""

    custom_id: str
    line_no: int
    model: str
    body: bytes


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


class BatchStore(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...

    # -- files
    def upload_path(self) -> Path:
        """A local path for an upload in progress; `add_file` adopts it."""
        ...

    async def add_file(
        self, upload: Path, filename: str, purpose: str, owner: str
    ) -> FileObject: ...

    async def get_file(self, file_id: str, owner: str | None = None) -> FileObject | None: ...
    async def list_files(
        self, after: str | None, limit: int, ascending: bool, purpose: str | None, owner: str | None
    ) -> tuple[list[FileObject], bool]: ...
    async def delete_file(self, file_id: str) -> bool: ...
    async def file_in_use(self, file_id: str) -> bool: ...
    def local_file(self, file_id: str) -> Path | None:
        """The file's bytes on this machine's disk, or None: read them with `file_chunks`."""
        ...

    def file_chunks(self, file_id: str) -> AsyncIterator[bytes]: ...
    def input_copy(self, file_id: str) -> AbstractAsyncContextManager[Path]:
        """`async with store.input_copy(id) as path:` the file readable at `path` meanwhile."""
        ...

    # -- batches
    async def add_batch(self, batch: Batch, owner: str) -> None: ...
    async def get_batch(self, batch_id: str, owner: str | None = None) -> Batch | None: ...
    async def batch_owner(self, batch_id: str) -> str | None: ...
    async def list_batches(
        self, after: str | None, limit: int, owner: str | None
    ) -> tuple[list[Batch], bool]: ...
    async def active_batch_ids(self) -> list[str]: ...
    async def batch_status_counts(self) -> dict[str, int]: ...
    async def update_batch(self, /, batch_id: str, **changes: Any) -> Batch: ...

    # -- results
    async def add_result(self, row: ResultRow) -> None: ...
    async def done_custom_ids(self, batch_id: str) -> set[str]: ...
    async def finish_batch(
        self, /, batch_id: str, extra_errors: list[bytes], **changes: Any
    ) -> Batch: ...

    def queue(self) -> SharedQueue | None:
        """The row leases of a store shared by many gateways; None: this process runs its
        batches alone, straight from the input files."""
        ...


class SharedQueue(Protocol):
    """Rows split out of each input file, leased to whichever gateway asks: a lease that
    runs out (its gateway died, or stopped renewing) makes the row free for another. A
    custom_id's result is written at most once, and a batch is finished exactly once."""

    async def add_rows(self, batch_id: str, rows: Iterable[InputRow], **changes: Any) -> bool:
        """Store the rows and set `changes` (status in_progress) in one commit; False when
        another gateway validated the batch first (nothing written)."""
        ...

    async def lease(self, worker: str, limit: int, lease_s: float) -> list[LeasedRow]: ...
    async def renew(self, worker: str, rows: list[tuple[str, str]], lease_s: float) -> None:
        """Extend the leases `worker` holds on `rows` (batch id, custom_id): those it runs."""
        ...

    async def release(self, worker: str) -> None:
        """Free every unfinished row `worker` holds, for another gateway to take now."""
        ...

    async def record(self, row: ResultRow) -> bool:
        """Commit a result (ignored if the custom_id has one, or the batch is over); True
        when no row of the batch is left to run."""
        ...

    async def due(self, stale_validation_s: float) -> list[tuple[str, str]]:
        """(batch id, what to do) for the batches someone must move on: "validate" (left
        validating longer than `stale_validation_s`), "completed", "expired", "cancelled"."""
        ...

    async def finish(
        self, batch_id: str, final: str, expired_line: Callable[[str], bytes], **changes: Any
    ) -> Batch | None:
        """Write the output and error files and set the final status in one commit; None when
        another gateway is at it or has done it, or (for "completed") rows remain."""
        ...
