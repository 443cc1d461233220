"""The store upgrades in place: a store the previous version wrote (no owners) opens, and its
rows become the anonymous owner's (docs/security.md, "Tenancy: files and batches")."""

from __future__ import annotations

import asyncio
import sqlite3

from tests.server.batch.batch_support import OLD_BATCH_ID, OLD_FILE_ID, write_old_store
from vlm_gateway.server.batch.store import Store
from vlm_gateway.server.door.keys import ANONYMOUS


def _owners(data_dir, table: str) -> list[tuple[str, str]]:
    db = sqlite3.connect(data_dir / "vlm-gateway.sqlite3")
    try:
        return db.execute(f"SELECT id, owner FROM {table} ORDER BY seq").fetchall()
    finally:
        db.close()


def test_a_store_from_before_owners_upgrades_in_place(tmp_path):
    content = write_old_store(tmp_path)

    async def scenario() -> None:
        store = Store(tmp_path)
        await store.open()
        assert (await store.get_file(OLD_FILE_ID, ANONYMOUS.name)).filename == "old.jsonl"
        assert await store.get_file(OLD_FILE_ID, "alice") is None
        assert (await store.get_batch(OLD_BATCH_ID, ANONYMOUS.name)).status == "completed"
        assert await store.get_batch(OLD_BATCH_ID, "alice") is None
        assert store.file_path(OLD_FILE_ID).read_bytes() == content
        upload = store.upload_path()
        upload.write_bytes(content)
        new = await store.add_file(upload, "new.jsonl", "batch", "alice")
        await store.close()

        again = Store(tmp_path)  # a second open finds the columns and changes nothing
        await again.open()
        files, more = await again.list_files(None, 10, True, None, ANONYMOUS.name)
        assert [f.id for f in files] == [OLD_FILE_ID] and not more
        files, _ = await again.list_files(None, 10, True, None, "alice")
        assert [f.id for f in files] == [new.id]
        await again.close()
        assert _owners(tmp_path, "files") == [(OLD_FILE_ID, "anonymous"), (new.id, "alice")]
        assert _owners(tmp_path, "batches") == [(OLD_BATCH_ID, "anonymous")]

    asyncio.run(scenario())
