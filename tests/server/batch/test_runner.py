"""The runner's scheduling and bookkeeping on plain fakes: live traffic first, a model that is
still starting is waited for."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from pydantic import ValidationError

from tests.server.batch.batch_support import FINAL, chat_line, jsonl
from tests.support.polling import until
from vlm_gateway.backends.base import Backend, State
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.config.settings import BatchSettings
from vlm_gateway.server.batch.protocol import (
    Batch,
    BatchCreateRequest,
    BatchRequestCounts,
    window_seconds,
)
from vlm_gateway.server.batch.runner import BatchRunner, ModelSlots
from vlm_gateway.server.batch.store import Store
from vlm_gateway.server.door.keys import ANONYMOUS, Caller


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
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": self.name,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "hi"},
                }
            ],
        }

    async def chat_stream(self, request):
        raise NotImplementedError


def counting_checks(slots: ModelSlots) -> list[int]:
    """Counts each time `slots` looks for a free slot; [count]."""
    checks = [0]
    free = slots._free

    def counted(model: str) -> bool:
        checks[0] += 1
        return free(model)

    slots._free = counted
    return checks


async def still_waiting(waiter: asyncio.Task, checks: list[int]) -> bool:
    """Whether `waiter`, the next time it looks for a free slot, still finds none."""
    before = checks[0]
    await until(lambda: checks[0] > before or waiter.done(), "the waiter looking again")
    return not waiter.done()


def test_batch_only_takes_what_live_traffic_leaves():
    async def scenario():
        backend = FakeBackend("m")
        slots = ModelSlots(BackendRegistry([backend]), limit=4)
        checks = counting_checks(slots)
        backend.in_flight = 4  # four live requests: the model is full
        waiter = asyncio.create_task(slots.acquire("m"))
        assert await still_waiting(waiter, checks), (
            "a batch request started while live traffic filled the model"
        )
        backend.in_flight = 1  # live traffic ebbs
        await asyncio.wait_for(waiter, 5)
        for _ in range(2):
            await asyncio.wait_for(slots.acquire("m"), 5)
        third = asyncio.create_task(slots.acquire("m"))  # 1 live + 3 batch = the limit
        assert await still_waiting(third, checks), "a batch request went over the limit"
        slots.release("m")
        await asyncio.wait_for(third, 5)

    asyncio.run(scenario())


async def _run_batch(
    tmp_path,
    backend: FakeBackend,
    count: int,
    limit: int,
    expires_in: int = 60,
    errors: list | None = None,
    owner: Caller = ANONYMOUS,
    status: str = "validating",
) -> Batch:
    """Runs a batch of `count` chats to `backend`, owned by `owner` (who may call what it
    says), from `status` until it is final; the error file's lines are appended to `errors`
    if given."""
    store = Store(tmp_path)
    await store.open()
    upload = store.upload_path()
    upload.write_bytes(jsonl([chat_line(f"r{i}", backend.name) for i in range(count)]))
    file = await store.add_file(upload, "in.jsonl", "batch", owner.name)
    now = int(time.time())
    batch = Batch(
        id="batch_t",
        completion_window="24h",
        created_at=now,
        expires_at=now + expires_in,
        endpoint="/v1/chat/completions",
        input_file_id=file.id,
        status=status,
        request_counts=BatchRequestCounts(total=count),
    )
    await store.add_batch(batch, owner.name)
    runner = BatchRunner(
        store,
        BackendRegistry([backend]),
        BatchSettings(concurrency_per_model=limit),
        callers={owner.name: owner}.__getitem__,
    )
    runner.submit(batch.id)

    async def final() -> Batch:
        while (done := await store.get_batch(batch.id)).status not in FINAL:
            await asyncio.sleep(0.025)
        return done

    batch = await asyncio.wait_for(final(), 60)  # a deadline only against a hang
    if errors is not None and batch.error_file_id:
        text = store.file_path(batch.error_file_id).read_bytes()
        errors.extend(orjson.loads(line) for line in text.splitlines() if line.strip())
    await runner.stop()
    await store.close()
    return batch


def test_concurrency_per_model_is_a_bound_and_is_reached(tmp_path):
    backend = FakeBackend("m", delay=0.02)
    batch = asyncio.run(_run_batch(tmp_path, backend, count=40, limit=5))
    assert batch.status == "completed" and batch.request_counts.completed == 40
    assert backend.most_at_once == 5 and backend.calls == 40


class StartingBackend(FakeBackend):
    """Starting until told otherwise; counts how often it was asked while starting."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.set_status(State.STARTING)
        self.asked_while_starting = 0

    @property
    def status(self):
        status = super().status
        self.asked_while_starting += status.state is State.STARTING
        return status


def test_a_starting_model_is_waited_for(tmp_path):
    backend = StartingBackend("m")

    async def scenario():
        async def become_ready():
            await until(lambda: backend.asked_while_starting, "the runner finding it starting")
            backend.set_status(State.READY)

        ready = asyncio.create_task(become_ready())
        result = await _run_batch(tmp_path, backend, count=3, limit=2)
        await ready
        return result

    batch = asyncio.run(scenario())
    assert batch.status == "completed" and batch.request_counts.completed == 3


@pytest.mark.parametrize(
    ("window", "seconds"),
    [
        ("24h", 86400),
        ("90s", 90),
        ("30m", 1800),
        ("1h", 3600),
        ("600s", 600),
        # refused: a window is a whole number of s, m or h, nothing else
        ("", None),
        ("24", None),
        ("h", None),
        ("1d", None),
        ("1.5h", None),
        ("-1h", None),
        ("24 h", None),
        (" 24h", None),
        ("24H", None),
        ("24hours", None),
        ("24h\n", None),
        ("PT24H", None),
    ],
)
def test_completion_windows(window, seconds):
    def create() -> BatchCreateRequest:
        return BatchCreateRequest(
            input_file_id="f", endpoint="/v1/chat/completions", completion_window=window
        )

    if seconds is None:
        with pytest.raises(ValidationError) as caught:
            create()
        assert [error["loc"] for error in caught.value.errors()] == [("completion_window",)]
        with pytest.raises(ValueError):
            window_seconds(window)
    else:
        assert create().completion_window == window
        assert window_seconds(window) == seconds


def test_the_default_completion_window_is_24h():
    body = BatchCreateRequest(input_file_id="f", endpoint="/v1/chat/completions")
    assert window_seconds(body.completion_window) == 24 * 3600


def test_a_batch_past_its_window_expires_without_running(tmp_path):
    backend = FakeBackend("m")
    errors: list[dict] = []
    batch = asyncio.run(
        _run_batch(tmp_path, backend, count=3, limit=2, expires_in=-1, errors=errors)
    )
    assert batch.status == "expired" and batch.expired_at and batch.completed_at is None
    assert backend.calls == 0
    assert sorted((e["custom_id"], e["error"]["code"]) for e in errors) == [
        (f"r{i}", "batch_expired") for i in range(3)
    ]


def test_a_batch_only_runs_models_its_owner_may_call(tmp_path):
    """Checked when the batch is validated: each line is refused as an unknown model would
    be, and the batch fails before any work."""
    backend = FakeBackend("m")
    owner = Caller("alice", models=frozenset({"other"}))
    batch = asyncio.run(_run_batch(tmp_path, backend, count=2, limit=2, owner=owner))
    assert batch.status == "failed" and backend.calls == 0
    assert [(e.line, e.code, e.param) for e in batch.errors.data] == [
        (1, "model_not_found", "body.model"),
        (2, "model_not_found", "body.model"),
    ]
    assert "'m' does not exist" in batch.errors.data[0].message


def test_the_runner_checks_the_owner_again_for_each_line(tmp_path):
    """A batch already past validation (as after a restart with the owner's models narrowed):
    every line fails 404 model_not_found without reaching the backend."""
    backend = FakeBackend("m")
    owner = Caller("alice", models=frozenset({"other"}))
    errors: list[dict] = []
    batch = asyncio.run(
        _run_batch(
            tmp_path, backend, count=3, limit=2, errors=errors, owner=owner, status="in_progress"
        )
    )
    assert batch.status == "completed" and backend.calls == 0
    assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 3)
    assert sorted(
        (e["custom_id"], e["response"]["status_code"], e["error"]["code"]) for e in errors
    ) == [(f"r{i}", 404, "model_not_found") for i in range(3)]


def test_check_config_plan_names_the_data_dir():
    from vlm_gateway.config.plan import describe_plan
    from vlm_gateway.config.settings import GatewaySettings

    settings = GatewaySettings(data_dir="/srv/vlm", batch={"concurrency_per_model": 12})
    assert (
        "batches: data in /srv/vlm, up to 12 requests in flight per model (live first)"
        in describe_plan(settings)
    )
