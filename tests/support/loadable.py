"""A loadable backend kind that exists only in tests (`backend: gated`), for the on-demand
manager's rules without a real model: each replica's load waits at a gate the test opens
(or fails, when told to), streams can be held open at a gate, and every load and unload is
written to a shared journal, in order.

Gates are thread-safe: a test may open them from the thread that drives the SDK while the
gateway runs in another (the backend polls them: a load waits on its gate, never a timer).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal

from vlm_gateway.backends.base import Backend, BackendKind, BuildContext, State
from vlm_gateway.backends.kinds import KINDS
from vlm_gateway.config.settings import GatewaySettings, ModelEntry
from vlm_gateway.core.errors import ServiceUnavailableError
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.core.sse import DONE, frame


class Gate:
    """Closed until `open()`; `wait()` polls it from an event loop."""

    def __init__(self, opened: bool = False) -> None:
        self._event = threading.Event()
        if opened:
            self._event.set()

    def open(self) -> None:
        self._event.set()

    def close(self) -> None:
        self._event.clear()

    @property
    def is_open(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        while not self._event.is_set():
            await asyncio.sleep(0.005)


class Journal:
    """What every gated backend did, in order ("load a", "loaded a", "unload a")."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def add(self, line: str) -> None:
        with self._lock:
            self.lines.append(line)

    def count(self, line: str) -> int:
        with self._lock:
            return self.lines.count(line)


class GatedBackend(Backend):
    kind = "gated"
    loadable = True

    def __init__(self, name: str, journal: Journal, load_gate: Gate | None = None) -> None:
        super().__init__(name)
        self.journal = journal
        self.load_gate = load_gate or Gate(opened=True)
        self.stream_gate = Gate(opened=True)  # held shut: a stream stays open after its first event
        self.fail_loads: str | None = None  # a reason: loads fail with it
        self.set_status(State.UNLOADED)

    @property
    def loaded(self) -> bool:
        return self.status.ready

    async def start(self) -> None:  # loaded at startup
        self.set_status(State.READY)

    async def load(self) -> None:
        self.journal.add(f"load {self.name}")
        self.set_status(State.LOADING, "loading behind its gate")
        try:
            await self.load_gate.wait()
        except asyncio.CancelledError:
            self.journal.add(f"load stopped {self.name}")
            self.set_status(State.UNLOADED)
            raise
        if self.fail_loads:
            self.set_status(State.FAILED, self.fail_loads)
            raise ServiceUnavailableError(self.fail_loads, code="load_failed")
        self.journal.add(f"loaded {self.name}")
        self.set_status(State.READY)

    async def unload(self) -> None:
        assert self.in_flight == 0, f"{self.name} unloaded with {self.in_flight} in flight"
        self.journal.add(f"unload {self.name}")
        self.set_status(State.UNLOADED)

    async def chat(self, request: ChatCompletionRequest) -> dict[str, Any]:
        assert self.loaded, f"{self.name} asked to answer while {self.status.state.value}"
        message = {"role": "assistant", "content": f"{self.name} answers"}
        return {
            "id": "gated-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        }

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[bytes]:
        assert self.loaded, f"{self.name} asked to stream while {self.status.state.value}"
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        for text in ("first", "last"):
            chunk = {
                "id": "gated-1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": self.name,
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
            }
            yield frame(chunk)
            await self.stream_gate.wait()
        yield DONE


class GatedSettings(ModelEntry):
    backend: Literal["gated"]
    kind_max_images: ClassVar[int | None] = 1


class GatedKind:
    """The kind, with the backends it built kept for the test to reach (gates, journal)."""

    def __init__(self) -> None:
        self.journal = Journal()
        self.backends: dict[str, GatedBackend] = {}
        self.kind = BackendKind(settings=GatedSettings, builder=self._build)
        self.kinds = (*KINDS, self.kind)

    def _build(self, entry: GatedSettings, context: BuildContext) -> list[Backend]:
        backend = GatedBackend(entry.name, self.journal, Gate(opened=True))
        self.backends[entry.name] = backend
        return [backend]

    def build(self, settings: GatewaySettings, client: Any) -> list[Backend]:
        from vlm_gateway.backends.kinds import build_backends

        return build_backends(settings, client, self.kinds)
