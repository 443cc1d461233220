"""A managed vLLM with `load: on_demand` (docs/on-demand.md): not launched with the gateway;
the on-demand manager (backends/ondemand/) loads it for the request that needs it and unloads
it to make room or when idle.

Loading is the managed start (its GPU's turn, launch, readiness by HTTP, `max_model_len:
auto`), awaited until the model serves or the start has failed; once loaded it is supervised
and restarted like any managed vLLM. Unloading stops the supervision and the whole process
group (SIGTERM, grace, SIGKILL: no EngineCore left behind), after which it loads again as new.
"""

from __future__ import annotations

import asyncio
from typing import Any

from vlm_gateway.backends.base import State
from vlm_gateway.backends.vllm.backend import ManagedVllmBackend
from vlm_gateway.core.errors import ServiceUnavailableError


class LoadableVllmBackend(ManagedVllmBackend):
    loadable = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loading = False
        self._settled: asyncio.Future[None] | None = None  # done at READY or FAILED
        super().__init__(*args, **kwargs)
        self.set_status(State.UNLOADED, "loads on its first request")

    def set_status(self, state: State, reason: str | None = None) -> None:
        if self._loading and state is State.STARTING:
            state = State.LOADING  # a start on demand: a request waits for it
        super().set_status(state, reason)
        settled = self._settled
        if state in (State.READY, State.FAILED) and settled is not None and not settled.done():
            settled.set_result(None)

    async def load(self) -> None:
        self._stopping = False
        self.restarts = 0  # each load starts as new
        self._settled = asyncio.get_running_loop().create_future()
        self._loading = True
        try:
            self.set_status(State.STARTING, "waiting for its turn to start")
            await self.start()  # the managed supervision: launch, readiness, restarts
            await self._settled
        except BaseException:  # cancelled (the gateway stops): nothing may be left running
            await self._halt()
            self.set_status(State.UNLOADED, "load stopped")
            raise
        finally:
            self._loading = False
        if self.status.state is not State.READY:
            reason = self.status.reason or "vLLM did not start"
            await self._halt()
            raise ServiceUnavailableError(reason, code="load_failed")

    async def unload(self) -> None:
        await self._halt()
        self.set_status(State.UNLOADED, "unloaded; loads on its next request")
