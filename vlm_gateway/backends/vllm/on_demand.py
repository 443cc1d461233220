"""A managed vLLM with `load: on_demand` (docs/on-demand.md): not launched with the gateway;
the on-demand manager (backends/ondemand/) loads it for the request that needs it and unloads
it to make room or when idle.

Loading is the managed start (its GPU's turn, launch, readiness by HTTP, `max_model_len:
auto`), awaited until the model serves or the start has failed; once loaded it is supervised
and restarted like any managed vLLM. Unloading stops the supervision and the whole process
group (SIGTERM, grace, SIGKILL: no EngineCore left behind), after which it loads again as new.

With `swap: sleep` an unload puts the process to sleep instead (launch/vllm_sleep.py: weights
to host memory, KV cache dropped, the GPU memory free) and the next load wakes it. While it
sleeps its liveness probe is off (a sleeping vLLM answers no chat) and it never reports ready;
a process that dies asleep is not restarted: the model is simply unloaded, and its next load
starts it as new. A sleep or wake that fails falls back to stopping the process group (and a
cold start).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from vlm_gateway.backends.base import State
from vlm_gateway.backends.vllm.backend import ManagedVllmBackend
from vlm_gateway.core.errors import GatewayError, ServiceUnavailableError
from vlm_gateway.launch.vllm_sleep import SleepClient

log = logging.getLogger(__name__)


class LoadableVllmBackend(ManagedVllmBackend):
    loadable = True

    def __init__(self, *args: Any, swap: Literal["stop", "sleep"] = "stop", **kwargs: Any) -> None:
        self._loading = False
        self._settled: asyncio.Future[None] | None = None  # done at READY or FAILED
        self._swap = swap
        self._asleep = False
        self._lost_asleep: asyncio.Task[None] | None = None
        super().__init__(*args, **kwargs)
        self.set_status(State.UNLOADED, "loads on its first request")

    def set_status(self, state: State, reason: str | None = None) -> None:
        if self._asleep:
            if state in (State.READY, State.UNAVAILABLE):
                return  # the supervision's verdicts must not wake it in the router's eyes
            self._asleep = state is State.SLEEPING  # stopped or unloaded: no longer asleep
        if self._loading and state is State.STARTING:
            state = State.LOADING  # a start on demand: a request waits for it
        super().set_status(state, reason)
        settled = self._settled
        if state in (State.READY, State.FAILED) and settled is not None and not settled.done():
            settled.set_result(None)

    async def load(self) -> None:
        if self._asleep and await self._woke():
            return
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
        if self._swap == "sleep" and await self._slept():
            return
        await self._halt()
        self.set_status(State.UNLOADED, "unloaded; loads on its next request")

    # -- swap: sleep ----------------------------------------------------------------------------

    async def _slept(self) -> bool:
        """Put a serving process to sleep; False (nothing changed) when it cannot."""
        process = self._process
        if process is None or process.exited.done() or not self.status.ready:
            return False
        try:
            await self._sleep_client().sleep()
        except GatewayError as exc:
            log.warning("model %s: could not sleep (%s); stopping it instead", self.name, exc)
            return False
        self.set_status(State.SLEEPING, "asleep: weights in host memory; wakes on its next request")
        self._asleep = True
        return True

    async def _woke(self) -> bool:
        """Wake the sleeping process; False after stopping it when it cannot (a cold load
        follows)."""
        self._asleep = False
        self.set_status(State.LOADING, "waking up")
        try:
            await self._sleep_client().wake_up()
        except GatewayError as exc:
            log.warning("model %s: could not wake (%s); starting it as new", self.name, exc)
            await self._halt()
            return False
        self.set_status(State.READY)
        return True

    def _sleep_client(self) -> SleepClient:
        root = self.base_url.removesuffix("/v1")
        return SleepClient(self._client, root, self.name, self._policy.startup_timeout)

    async def _liveness_problem(self) -> str | None:
        if self._asleep:
            return None  # a sleeping vLLM answers no chat; its process is still watched
        return await super()._liveness_problem()

    def _on_exit(self, exited: asyncio.Future[int]) -> None:
        if not self._asleep or self._stopping:  # a stop we asked for is no death
            super()._on_exit(exited)
            return
        # Died asleep: not restarted behind the manager's back (it would take GPU memory the
        # manager has given to another model); unloaded, its next load starts it as new.
        self._asleep = False
        if self._supervisor is not None:
            self._supervisor.cancel()  # before it wakes to the exit and launches a new vLLM
        self.set_status(State.UNLOADED, "vLLM exited while asleep; loads on its next request")
        self._lost_asleep = asyncio.ensure_future(self._halt())
