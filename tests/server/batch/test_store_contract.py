"""The batch store's contract, run against both implementations: the embedded SQLite store and
the PostgreSQL one (a real throwaway cluster, tests/server/batch/conftest.py). Files, owners,
paging, batches, results written at most once, finishing into output and error files, and the
runner driving a batch through each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import pytest

from tests.server.batch.batch_support import FINAL, chat_line, jsonl
from tests.server.batch.test_runner import FakeBackend
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.config.settings import BatchSettings, GatewaySettings
from vlm_gateway.server.batch.open_store import build_store
from vlm_gateway.server.batch.protocol import Batch, BatchRequestCounts
from vlm_gateway.server.batch.runner import BatchRunner
from vlm_gateway.server.batch.store_base import BatchStore, ResultRow

StoreFactory = Callable[[], BatchStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request, tmp_path) -> StoreFactory:
    """Builds stores the way the gateway does (build_store): each call another handle on the
    same data (as another process would open it)."""
    url = "sqlite" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    settings = GatewaySettings(data_dir=str(tmp_path), batch=BatchSettings(store=url))
    return lambda: build_store(settings)


async def _opened(make_store: StoreFactory) -> BatchStore:
    store = make_store()
    await store.open()
    return store


async def _upload(store: BatchStore, data: bytes, owner: str, name: str = "in.jsonl"):
    upload = store.upload_path()
    upload.write_bytes(data)
    return await store.add_file(upload, name, "batch", owner)


async def _content(store: BatchStore, file_id: str) -> bytes:
    path = store.local_file(file_id)
    if path is not None:
        return path.read_bytes()
    return b"".join([chunk async for chunk in store.file_chunks(file_id)])


def _batch(batch_id: str, file_id: str, total: int = 3, expires_in: int = 3600) -> Batch:
    now = int(time.time())
    return Batch(
        id=batch_id,
        completion_window="24h",
        created_at=now,
        expires_at=now + expires_in,
        endpoint="/v1/chat/completions",
        input_file_id=file_id,
        status="in_progress",
        request_counts=BatchRequestCounts(total=total),
    )


def test_files_round_trip_with_owners_and_pages(make_store):
    big = b"x" * (3 * 1024 * 1024 + 17)  # more than one chunk of the database store

    async def scenario() -> None:
        store = await _opened(make_store)
        first = await _upload(store, b"alpha\n", "alice", "a.jsonl")
        second = await _upload(store, big, "alice", "b.jsonl")
        bobs = await _upload(store, b"bob\n", "bob")
        assert (first.bytes, second.bytes) == (6, len(big))
        assert await store.get_file(first.id, "alice") == first
        assert await store.get_file(first.id, "bob") is None  # like a file that does not exist
        assert await store.get_file(first.id) == first  # admins see every owner's
        assert await _content(store, second.id) == big
        async with store.input_copy(second.id) as path:
            assert path.read_bytes() == big
        page, more = await store.list_files(None, 1, True, None, "alice")
        assert [f.id for f in page] == [first.id] and more
        page, more = await store.list_files(first.id, 10, True, None, "alice")
        assert [f.id for f in page] == [second.id] and not more
        assert (await store.list_files(bobs.id, 10, True, None, "alice"))[0] == []
        assert (await store.list_files(None, 10, False, "batch", None))[0][0].id == bobs.id
        assert await store.delete_file(first.id) and not await store.delete_file(first.id)
        assert await store.get_file(first.id) is None
        await store.close()

    asyncio.run(scenario())


def test_batches_results_and_finish(make_store):
    async def scenario() -> None:
        store = await _opened(make_store)
        other = await _opened(make_store)  # a second process on the same data
        file = await _upload(store, jsonl([chat_line("a", "m")]), "alice")
        await store.add_batch(_batch("batch_one", file.id), "alice")
        assert await store.file_in_use(file.id)
        assert await other.get_batch("batch_one", "bob") is None
        assert await other.batch_owner("batch_one") == "alice"
        assert await other.active_batch_ids() == ["batch_one"]
        for custom_id, ok in (("a", True), ("b", False), ("a", False)):  # "a" twice: kept once
            line = orjson.dumps({"custom_id": custom_id, "ok": ok})
            await (store if ok else other).add_result(
                ResultRow("batch_one", custom_id, ok, "m", line)
            )
        assert await other.done_custom_ids("batch_one") == {"a", "b"}
        counts = (await store.get_batch("batch_one", "alice")).request_counts
        assert (counts.total, counts.completed, counts.failed) == (3, 1, 1)
        extra = [orjson.dumps({"custom_id": "c", "error": "expired"})]
        done = await other.finish_batch(
            "batch_one", extra, status="expired", expired_at=int(time.time())
        )
        assert done.status == "expired" and done.expired_at
        output = await store.get_file(done.output_file_id, "alice")
        errors = await store.get_file(done.error_file_id, "alice")
        assert output.purpose == errors.purpose == "batch_output"
        out_lines = (await _content(store, output.id)).splitlines()
        err_lines = (await _content(store, errors.id)).splitlines()
        assert [orjson.loads(x)["custom_id"] for x in out_lines] == ["a"]
        assert sorted(orjson.loads(x)["custom_id"] for x in err_lines) == ["b", "c"]
        assert output.bytes == len(b"".join(x + b"\n" for x in out_lines))
        assert not await store.file_in_use(file.id)
        assert await store.batch_status_counts() == {"expired": 1}
        assert (await store.list_batches(None, 10, "alice"))[0][0].id == "batch_one"
        assert (await store.list_batches(None, 10, "bob"))[0] == []
        await other.close()
        await store.close()

    asyncio.run(scenario())


def test_the_runner_completes_a_batch_on_either_store(make_store):
    """Validation, every line run once, the output file: the same through both stores (with
    PostgreSQL, through the shared queue's rows and leases)."""
    backend = FakeBackend("m", delay=0.01)

    async def scenario() -> Batch:
        store = await _opened(make_store)
        lines = [chat_line(f"r{i}", "m") for i in range(30)]
        file = await _upload(store, jsonl(lines), "anonymous")
        batch = _batch("batch_run", file.id, total=0).model_copy(update={"status": "validating"})
        runner = BatchRunner(
            store, BackendRegistry([backend]), BatchSettings(concurrency_per_model=4)
        )
        await runner.start()
        await store.add_batch(batch, "anonymous")  # as POST /v1/batches does
        runner.submit(batch.id)
        done = await _wait_final(store, batch.id)
        assert done.output_file_id is not None
        output = (await _content(store, done.output_file_id)).splitlines()
        assert sorted(orjson.loads(x)["custom_id"] for x in output) == sorted(
            f"r{i}" for i in range(30)
        )
        await runner.stop()
        await store.close()
        return done

    done = asyncio.run(scenario())
    assert done.status == "completed" and done.request_counts.completed == 30
    assert backend.calls == 30 and backend.most_at_once <= 4


async def _wait_final(store: BatchStore, batch_id: str) -> Batch:
    async def final() -> Batch:
        while (batch := await store.get_batch(batch_id)) is None or batch.status not in FINAL:
            await asyncio.sleep(0.02)
        return batch

    return await asyncio.wait_for(final(), 60)  # a deadline only against a hang
