"""The runner's scheduling and bookkeeping on plain fakes: live traffic first, a model that is
still starting is waited for."""

from __future__ import annotations

import asyncio
import time

import pytest

from vlm_gateway.backends.base import Backend, State
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.server.batch.protocol import Batch
from vlm_gateway.server.batch.runner import BatchRunner, ModelSlots
from vlm_gateway.server.batch.store import Store
from vlm_gateway.config.settings import BatchSettings
from tests.server.batch.batch_support import chat_line, jsonl


class FakeBackend(Backend):
    kind = "fake"

    def __init__(self, name: str, delay: float = 0.0) -> None:
        super().__init__(name)
        self.set_status(State.READY)
        self.delay = delay
        self.calls = 0
        self.most_at_once = 0

    async def chat(self, request):
        self.calls += 1
        self.most_at_once = max(self.most_at_once, self.in_flight)
        await asyncio.sleep(self.delay)
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                "model": self.name, "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hi"}}]}

    async def chat_stream(self, request):
        raise NotImplementedError


def test_batch_only_takes_what_live_traffic_leaves():
    async def scenario():
        backend = FakeBackend("m")
        slots = ModelSlots(BackendRegistry([backend]), limit=4)
        backend.in_flight = 4  # four live requests: the model is full
        waiter = asyncio.create_task(slots.acquire("m"))
        await asyncio.sleep(0.2)
        assert not waiter.done(), "a batch request started while live traffic filled the model"
        backend.in_flight = 1  # live traffic ebbs
        await asyncio.wait_for(waiter, 1)
        for _ in range(2):
            await asyncio.wait_for(slots.acquire("m"), 1)
        third = asyncio.create_task(slots.acquire("m"))  # 1 live + 3 batch = the limit
        await asyncio.sleep(0.2)
        assert not third.done()
        slots.release("m")
        await asyncio.wait_for(third, 1)

    asyncio.run(scenario())


async def _run_batch(tmp_path, backend: FakeBackend, count: int, limit: int) -> Batch:
    store = Store(tmp_path)
    await store.open()
    upload = store.upload_path()
    upload.write_bytes(jsonl([chat_line(f"r{i}", backend.name) for i in range(count)]))
    file = await store.add_file(upload, "in.jsonl", "batch")
    now = int(time.time())
    batch = Batch(id="batch_t", completion_window="24h", created_at=now, expires_at=now + 60,
                  endpoint="/v1/chat/completions", input_file_id=file.id, status="validating")
    await store.add_batch(batch)
    runner = BatchRunner(store, BackendRegistry([backend]),
                         BatchSettings(concurrency_per_model=limit))
    runner.submit(batch.id)
    for _ in range(400):
        batch = await store.get_batch(batch.id)
        if batch.status == "completed":
            break
        await asyncio.sleep(0.025)
    await runner.stop()
    await store.close()
    return batch


def test_concurrency_per_model_is_a_bound_and_is_reached(tmp_path):
    backend = FakeBackend("m", delay=0.02)
    batch = asyncio.run(_run_batch(tmp_path, backend, count=40, limit=5))
    assert batch.status == "completed" and batch.request_counts.completed == 40
    assert backend.most_at_once == 5 and backend.calls == 40


def test_a_starting_model_is_waited_for(tmp_path):
    backend = FakeBackend("m")
    backend.set_status(State.STARTING)

    async def scenario():
        async def become_ready():
            await asyncio.sleep(1.5)
            backend.set_status(State.READY)

        ready = asyncio.create_task(become_ready())
        result = await _run_batch(tmp_path, backend, count=3, limit=2)
        await ready
        return result

    batch = asyncio.run(scenario())
    assert batch.status == "completed" and batch.request_counts.completed == 3


@pytest.mark.parametrize("window", ["24h", "90s", "30m"])
def test_completion_windows(window):
    from vlm_gateway.server.batch.protocol import BatchCreateRequest

    BatchCreateRequest(input_file_id="f", endpoint="/v1/chat/completions",
                       completion_window=window)


def test_check_config_plan_names_the_data_dir():
    from vlm_gateway.config.plan import describe_plan
    from vlm_gateway.config.settings import GatewaySettings

    settings = GatewaySettings(data_dir="/srv/vlm", batch={"concurrency_per_model": 12})
    assert ("batches: data in /srv/vlm, up to 12 requests in flight per model (live first)"
            in describe_plan(settings))
