"""Which files and batches a caller sees: its own, or every one for an admin. Another owner's
object is answered exactly like an id that does not exist (same status, message and param), so
a caller learns nothing about what others have stored. Every files and batches route finds its
object through `own_file` / `own_batch`."""

from __future__ import annotations

from vlm_gateway.core.errors import NotFoundError
from vlm_gateway.server.batch.protocol import Batch, FileObject
from vlm_gateway.server.batch.store_base import BatchStore
from vlm_gateway.server.door.keys import Caller


def visible_owner(caller: Caller) -> str | None:
    """The owner whose objects `caller` sees; None: every owner's (admins)."""
    return None if caller.admin else caller.name


async def own_file(
    store: BatchStore, caller: Caller, file_id: str, *, param: str = "file_id"
) -> FileObject:
    file = await store.get_file(file_id, visible_owner(caller))
    if file is None:
        raise NotFoundError(f"No such File object: {file_id}", param=param, code="not_found")
    return file


async def own_batch(store: BatchStore, caller: Caller, batch_id: str) -> Batch:
    batch = await store.get_batch(batch_id, visible_owner(caller))
    if batch is None:
        raise NotFoundError(
            f"No batch found with id '{batch_id}'.", param="batch_id", code="not_found"
        )
    return batch
