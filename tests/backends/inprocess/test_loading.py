"""What the engine tells operators while an in-process model loads: a line when it starts, a
line and `/ready`'s reason every so often while it runs (a large model takes minutes), and what
it loaded. A stand-in kind whose load waits for the test (test_operations.py checks the lines
of real loads through a gateway)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from vlm_gateway.backends.base import State
from vlm_gateway.backends.inprocess.backend import InProcessBackend
from vlm_gateway.backends.inprocess.loading import ModelFacts

DEADLINE_S = 30  # only so that a broken engine fails instead of hanging


class HeldLoad(InProcessBackend[str, str]):
    """A kind whose load returns once the test sets `loaded`."""

    kind = "held"
    load_progress_every_s = 0.05

    def __init__(self) -> None:
        super().__init__(
            "slow", "/models/slow", max_batch_size=2, batch_wait_ms=0, device="auto", dtype="auto"
        )
        self.loaded = threading.Event()

    def _load_blocking(self):
        self.loaded.wait(DEADLINE_S)
        return "model", lambda model, specs, stop: []

    def _model_facts(self, model: str) -> ModelFacts:
        return ModelFacts("HeldForTests", "cpu", "float32", 1_234_567)

    async def _prepare(self, request, model):
        raise NotImplementedError


async def _until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), DEADLINE_S)


def test_a_long_load_says_it_is_still_loading_then_what_it_loaded(caplog):
    caplog.set_level(logging.INFO, logger=__name__)

    async def scenario() -> tuple[dict, dict]:
        backend = HeldLoad()
        await backend.start()
        await _until(lambda: "s so far" in (backend.status.reason or ""))
        loading = backend.describe()
        backend.loaded.set()
        await _until(lambda: backend.status.ready)
        loaded = backend.describe()
        await backend.stop()
        return loading, loaded

    loading, loaded = asyncio.run(scenario())
    assert loading["state"] == State.STARTING.value
    assert (loading["device"], loading["dtype"], loading["parameters"]) == ("auto", "auto", None)
    assert (loaded["device"], loaded["dtype"], loaded["parameters"]) == (
        "cpu",
        "float32",
        1_234_567,
    )
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0] == "model slow: loading weights from /models/slow (device auto, dtype auto)"
    assert any(
        line.startswith("model slow: still loading weights from /models/slow (") for line in lines
    )
    assert any(
        line.startswith("model slow: HeldForTests loaded from /models/slow in ")
        and line.endswith(" s: 1,234,567 parameters on cpu (float32), batches of up to 2")
        for line in lines
    ), lines
