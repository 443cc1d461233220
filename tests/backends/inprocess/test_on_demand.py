"""The in-process engine's on-demand load and unload (issue 26), on a kind of its own whose
"model" is a dict and whose generation waits at a gate the test opens: nothing to load but the
engine's own lifecycle, so each step can be held and looked at."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from tests.support.polling import until
from vlm_gateway.backends.base import State
from vlm_gateway.backends.inprocess.backend import InProcessBackend
from vlm_gateway.backends.inprocess.batcher import Prepared, RowResult
from vlm_gateway.backends.inprocess.loading import ModelFacts
from vlm_gateway.core.errors import ServiceUnavailableError
from vlm_gateway.core.protocol import ChatCompletionRequest

REQUEST = ChatCompletionRequest.model_validate(
    {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
)


class GatedKind(InProcessBackend[dict, str]):
    """Loads count themselves (the first `failing_loads` fail); a batch answers once `gate`
    opens, and says which load it ran on."""

    kind = "gated"

    def __init__(self, *, loadable: bool = True, failing_loads: int = 0) -> None:
        super().__init__(
            "m",
            "weights/m",
            max_batch_size=4,
            batch_wait_ms=0,
            device="cpu",
            dtype="float32",
            loadable=loadable,
        )
        self.loads = 0
        self.failing_loads = failing_loads
        self.gate = threading.Event()
        self.gate.set()
        self.generating = threading.Event()
        self.release_load = threading.Event()
        self.release_load.set()

    def _load_blocking(self) -> tuple[dict, Any]:
        self.release_load.wait()
        self.loads += 1
        if self.loads <= self.failing_loads:
            raise OSError("no weights at weights/m")
        return {"load": self.loads}, self._generate_rows

    def _generate_rows(self, model: dict, specs: list[str], stop: threading.Event) -> list:
        self.generating.set()
        self.gate.wait()
        return [RowResult(f"{spec} from load {model['load']}", "stop", 1) for spec in specs]

    def _model_facts(self, model: dict) -> ModelFacts:
        return ModelFacts("Gated", "cpu", "float32", parameters=1)

    async def _prepare(self, request: ChatCompletionRequest, model: dict) -> Prepared[str]:
        return Prepared(1, 1, lambda index, hooks: "answer")


async def answer(backend: GatedKind) -> str:
    return (await backend.chat(REQUEST))["choices"][0]["message"]["content"]


def test_an_on_demand_replica_loads_nothing_at_start_and_answers_after_load():
    async def scenario() -> None:
        backend = GatedKind()
        await backend.start()
        assert backend.status.state is State.UNLOADED
        with pytest.raises(ServiceUnavailableError):
            await answer(backend)
        await backend.load()
        assert backend.status.state is State.READY
        assert await answer(backend) == "answer from load 1"
        await backend.stop()
        assert backend.loads == 1

    asyncio.run(scenario())


def test_unload_then_load_serves_again_from_a_fresh_load():
    async def scenario() -> None:
        backend = GatedKind()
        await backend.start()
        await backend.load()
        await backend.unload()
        assert backend.status.state is State.UNLOADED
        with pytest.raises(ServiceUnavailableError):
            await answer(backend)
        await backend.load()
        assert await answer(backend) == "answer from load 2"
        await backend.stop()

    asyncio.run(scenario())


def test_concurrent_loads_load_once():
    async def scenario() -> None:
        backend = GatedKind()
        backend.release_load.clear()
        await backend.start()
        loads = [asyncio.create_task(backend.load()) for _ in range(5)]
        await until(lambda: backend.status.state is State.LOADING, "the load to begin")
        backend.release_load.set()
        await asyncio.gather(*loads)
        assert backend.loads == 1 and backend.status.state is State.READY
        await backend.stop()

    asyncio.run(scenario())


def test_unload_waits_for_the_batch_in_flight_and_refuses_new_requests_meanwhile():
    async def scenario() -> None:
        backend = GatedKind()
        await backend.start()
        await backend.load()
        backend.gate.clear()
        in_flight = asyncio.create_task(answer(backend))
        await until(backend.generating.is_set, "the batch to reach the model thread")
        unloading = asyncio.create_task(backend.unload())
        await until(lambda: backend.status.state is State.UNAVAILABLE, "the unload to begin")
        with pytest.raises(ServiceUnavailableError):
            await answer(backend)  # refused at once, not queued behind the unload
        assert not unloading.done()
        backend.gate.set()
        assert await in_flight == "answer from load 1"  # the request in flight loses nothing
        await unloading
        assert backend.status.state is State.UNLOADED
        await backend.stop()

    asyncio.run(scenario())


def test_a_failed_load_says_why_and_a_later_load_can_succeed():
    async def scenario() -> None:
        backend = GatedKind(failing_loads=1)
        await backend.start()
        with pytest.raises(ServiceUnavailableError) as refused:
            await backend.load()
        assert refused.value.code == "load_failed"
        assert "no weights at weights/m" in refused.value.message
        assert backend.status.state is State.UNLOADED
        assert "no weights at weights/m" in (backend.status.reason or "")
        await backend.load()
        assert await answer(backend) == "answer from load 2"
        await backend.stop()

    asyncio.run(scenario())


def test_load_while_the_start_load_runs_waits_for_it():
    async def scenario() -> None:
        backend = GatedKind(loadable=False)
        backend.release_load.clear()
        await backend.start()
        assert backend.status.state is State.STARTING
        loading = asyncio.create_task(backend.load())
        await asyncio.sleep(0)  # one turn: the load reaches its wait for the start load
        backend.release_load.set()
        await loading
        assert backend.loads == 1
        assert await answer(backend) == "answer from load 1"
        await backend.unload()
        await backend.load()
        assert await answer(backend) == "answer from load 2"
        await backend.stop()

    asyncio.run(scenario())


def test_the_model_thread_ends_with_the_unload():
    async def scenario() -> None:
        backend = GatedKind()
        await backend.start()
        await backend.load()
        assert any(thread.name == "gated-m" for thread in threading.enumerate())
        await backend.unload()
        assert not any(thread.name == "gated-m" for thread in threading.enumerate())
        await backend.stop()

    asyncio.run(scenario())
