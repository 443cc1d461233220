"""The PostgreSQL store's shared queue on a real cluster: two gateways never hold the same row,
a lease that is not renewed runs out and the row is taken again, a result is written at most
once, a batch is finished exactly once, and a runner's stop() releases its rows at once."""

from __future__ import annotations

import asyncio
import time

import orjson
import psycopg
import pytest

from tests.server.batch.batch_support import chat_line, jsonl
from tests.server.batch.test_runner import FakeBackend
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.config.settings import BatchSettings, GatewaySettings
from vlm_gateway.server.batch.line_caller import expired_line
from vlm_gateway.server.batch.open_store import StoreUnavailableError, build_store
from vlm_gateway.server.batch.protocol import Batch, BatchRequestCounts
from vlm_gateway.server.batch.runner import BatchRunner
from vlm_gateway.server.batch.store_base import InputRow, ResultRow, SharedQueue
from vlm_gateway.server.batch.store_postgres import PostgresStore

ROWS = 20


async def _store(url: str, tmp_path) -> PostgresStore:
    store = PostgresStore(url, tmp_path / "spool")
    await store.open()
    return store


def _queue(store: PostgresStore) -> SharedQueue:
    queue = store.queue()
    assert queue is not None
    return queue


async def _batch_with_rows(store: PostgresStore, batch_id: str = "batch_q") -> None:
    lines = [chat_line(f"r{i}", "m") for i in range(ROWS)]
    upload = store.upload_path()
    upload.write_bytes(jsonl(lines))
    file = await store.add_file(upload, "in.jsonl", "batch", "anonymous")
    now = int(time.time())
    batch = Batch(
        id=batch_id,
        completion_window="24h",
        created_at=now,
        expires_at=now + 3600,
        endpoint="/v1/chat/completions",
        input_file_id=file.id,
        status="validating",
        request_counts=BatchRequestCounts(total=ROWS),
    )
    await store.add_batch(batch, "anonymous")
    rows = [InputRow(f"r{i}", i + 1, "m", jsonl([line])) for i, line in enumerate(lines)]
    assert await _queue(store).add_rows(batch_id, rows, status="in_progress")
    assert not await _queue(store).add_rows(batch_id, rows, status="in_progress")  # once


def _result(custom_id: str, batch_id: str = "batch_q") -> ResultRow:
    return ResultRow(batch_id, custom_id, True, "m", b'{"custom_id": "%s"}' % custom_id.encode())


def test_leases_are_exclusive_expire_and_results_are_written_once(postgres_url, tmp_path):
    async def scenario() -> None:
        a, b = await _store(postgres_url, tmp_path), await _store(postgres_url, tmp_path)
        await _batch_with_rows(a)
        qa, qb = _queue(a), _queue(b)
        # Both ask at once: SKIP LOCKED hands each its own rows.
        got_a, got_b = await asyncio.gather(qa.lease("A", 8, 60), qb.lease("B", 8, 60))
        keys_a = {r.custom_id for r in got_a}
        keys_b = {r.custom_id for r in got_b}
        assert len(keys_a) == len(keys_b) == 8 and not keys_a & keys_b
        # The rest is B's; nothing is left for A while the leases hold.
        rest = {r.custom_id for r in await qb.lease("B", 100, 60)}
        assert len(rest) == ROWS - 16 and not rest & (keys_a | keys_b)
        keys_b |= rest
        assert await qa.lease("A", 100, 60) == []
        # A's results: the first write wins, B's late copy of the same custom_id is ignored.
        for custom_id in keys_a:
            await qa.record(_result(custom_id))
        await qb.record(_result(sorted(keys_a)[0]))
        assert await b.done_custom_ids("batch_q") == keys_a
        # B "dies": its leases run out (a short lease, not renewed) and A takes its rows.
        await qb.renew("B", [("batch_q", c) for c in keys_b], 0.2)
        retaken: set[str] = set()
        while len(retaken) < ROWS - 8:  # polls until the leases have run out
            retaken |= {r.custom_id for r in await qa.lease("A", 100, 60)}
            await asyncio.sleep(0.05)
        assert retaken == {f"r{i}" for i in range(ROWS)} - keys_a
        last = [await qa.record(_result(c)) for c in sorted(retaken)]
        assert last[-1] and not any(last[:-1])  # True only when no row is left
        await a.close()
        await b.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))  # a deadline against a hang


def test_a_batch_is_finished_exactly_once(postgres_url, tmp_path):
    async def scenario() -> list[Batch | None]:
        stores = [await _store(postgres_url, tmp_path) for _ in range(4)]
        await _batch_with_rows(stores[0])
        queue = _queue(stores[0])
        for row in await queue.lease("A", ROWS, 60):
            await queue.record(_result(row.custom_id))
        finished = await asyncio.gather(
            *(_queue(s).finish("batch_q", "completed", expired_line) for s in stores)
        )
        again = await _queue(stores[1]).finish("batch_q", "completed", expired_line)
        late = await _queue(stores[2]).record(_result("r0"))  # after the end: nothing written
        assert again is None and late is False
        for store in stores:
            await store.close()
        return finished

    finished = asyncio.run(scenario())
    assert [b.status for b in finished if b is not None] == ["completed"]


def test_stop_releases_rows_in_flight_for_another_gateway(postgres_url, tmp_path):
    """stop(): no new rows; the rows in flight go back at once (no waiting out the lease),
    and a second gateway finishes the batch with every custom_id once."""
    slow, fast = FakeBackend("m", delay=30), FakeBackend("m")
    settings = BatchSettings(concurrency_per_model=3, lease_seconds=600)

    async def scenario() -> tuple[int, Batch]:
        store = await _store(postgres_url, tmp_path)
        await _batch_with_rows(store)
        first = BatchRunner(store, BackendRegistry([slow]), settings)
        await first.start()
        while slow.in_flight < 3:  # three rows leased and upstream
            await asyncio.sleep(0.01)
        await first.stop()
        with psycopg.connect(postgres_url) as db:
            count = db.execute("SELECT count(*) FROM vlmgw_rows WHERE lease_owner IS NOT NULL")
            held = count.fetchone()[0]
        second = BatchRunner(store, BackendRegistry([fast]), settings)
        await second.start()
        while (batch := await store.get_batch("batch_q")).status != "completed":
            await asyncio.sleep(0.02)
        await second.stop()
        await store.close()
        return held, batch

    held, batch = asyncio.run(asyncio.wait_for(scenario(), 60))  # a deadline against a hang
    assert held == 0
    assert (slow.calls, fast.calls) == (3, ROWS)  # nothing done twice, nothing lost
    assert batch.request_counts.completed == ROWS


def test_a_postgresql_url_without_the_driver_names_the_extra(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name)
    )
    settings = GatewaySettings(
        data_dir=str(tmp_path), batch=BatchSettings(store="postgresql://db.example/x")
    )
    with pytest.raises(StoreUnavailableError, match=r"'postgres' extra"):
        build_store(settings)


def test_the_store_is_chosen_by_setting_and_the_environment_wins(tmp_path):
    from vlm_gateway.backends.kinds import settings_model
    from vlm_gateway.config.loading import ConfigError, load_settings
    from vlm_gateway.server.batch.store import Store

    config = tmp_path / "gateway.yaml"
    config.write_text(f"data_dir: {tmp_path}\nbatch:\n  concurrency_per_model: 3\n")
    default = load_settings(settings_model(), config, environ={})
    assert default.batch.store == "sqlite" and isinstance(build_store(default), Store)
    url = "postgresql://gw@db.internal:5432/batches"
    chosen = load_settings(settings_model(), config, environ={"VLMGW_BATCH_STORE": url})
    assert chosen.batch.store == url and chosen.batch.concurrency_per_model == 3
    assert isinstance(build_store(chosen), PostgresStore)  # built, not connected yet
    with pytest.raises(ConfigError, match="postgresql://"):
        load_settings(settings_model(), config, environ={"VLMGW_BATCH_STORE": "mysql://x"})


class HoldingBackend(FakeBackend):
    """Answers at once, except messages "hold", which it holds until cancelled."""

    async def chat(self, request):
        if request.messages[-1].content == "hold":
            await asyncio.Event().wait()
        return await super().chat(request)


@pytest.mark.parametrize("end", ["cancelled", "expired"])
def test_cancel_and_expiry_keep_what_is_done(postgres_url, tmp_path, end):
    """Half the rows done, half held upstream: a cancel (or the completion window running
    out) finishes the batch with the done half in the output file; an expired batch lists the
    unrun half in its error file as batch_expired."""
    backend = HoldingBackend("m")

    async def scenario() -> tuple[Batch, list[bytes], list[bytes]]:
        store = await _store(postgres_url, tmp_path)
        lines = [chat_line(f"r{i}", "m", "hold" if i % 2 else "go") for i in range(ROWS)]
        upload = store.upload_path()
        upload.write_bytes(jsonl(lines))
        file = await store.add_file(upload, "in.jsonl", "batch", "anonymous")
        now = int(time.time())
        window = 3 if end == "expired" else 3600
        batch = Batch(
            id="batch_h",
            completion_window="24h",
            created_at=now,
            expires_at=now + window,
            endpoint="/v1/chat/completions",
            input_file_id=file.id,
            status="validating",
        )
        runner = BatchRunner(store, BackendRegistry([backend]), BatchSettings())
        await runner.start()
        await store.add_batch(batch, "anonymous")
        runner.submit(batch.id)
        while len(await store.done_custom_ids(batch.id)) < ROWS // 2:
            await asyncio.sleep(0.02)
        if end == "cancelled":
            await runner.cancel(batch.id)
        while (done := await store.get_batch(batch.id)).status != end:
            await asyncio.sleep(0.02)
        output = b"".join([c async for c in store.file_chunks(done.output_file_id or "")])
        errors = b"".join([c async for c in store.file_chunks(done.error_file_id or "")])
        await runner.stop()
        await store.close()
        return done, output.splitlines(), errors.splitlines()

    done, output, errors = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert sorted(orjson.loads(x)["custom_id"] for x in output) == sorted(
        f"r{i}" for i in range(0, ROWS, 2)
    )
    expired = sorted(orjson.loads(x)["custom_id"] for x in errors)
    assert expired == ([] if end == "cancelled" else sorted(f"r{i}" for i in range(1, ROWS, 2)))
    assert done.request_counts.completed == ROWS // 2


def test_an_output_file_larger_than_a_chunk_comes_back_whole(postgres_url, tmp_path):
    async def scenario() -> tuple[bytes, int]:
        store = await _store(postgres_url, tmp_path)
        await _batch_with_rows(store)
        queue = _queue(store)
        pad = "x" * 600_000  # 20 rows of 600 KB: the output file spans several 1 MiB chunks
        for row in await queue.lease("A", ROWS, 60):
            line = orjson.dumps({"custom_id": row.custom_id, "pad": pad})
            await queue.record(ResultRow("batch_q", row.custom_id, True, "m", line))
        done = await queue.finish("batch_q", "completed", expired_line)
        assert done is not None and done.output_file_id is not None
        content = b"".join([c async for c in store.file_chunks(done.output_file_id)])
        size = (await store.get_file(done.output_file_id)).bytes
        await store.close()
        return content, size

    content, size = asyncio.run(scenario())
    lines = [orjson.loads(x) for x in content.splitlines()]
    assert sorted(x["custom_id"] for x in lines) == sorted(f"r{i}" for i in range(ROWS))
    assert size == len(content) > 10 * 1024 * 1024 and all(len(x["pad"]) == 600_000 for x in lines)
