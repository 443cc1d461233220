"""The on-demand manager (docs/on-demand.md): a request for a model that is not loaded starts
its load and waits for it; everything else about loading is decided here.

- One load per model at a time: concurrent first requests wait on the same load.
- At most `load_queue` requests wait per model (more: 503 `model_loading`), each at most
  `load_timeout` (then 503 `load_timeout`; the load goes on for the requests after it).
- Room is made by the eviction rule (room.py); a load that finds none waits for it, within
  the model's `load_timeout`.
- A failed load answers its waiters with the reason (503 `load_failed`) and is tried again only
  on a request after a backoff that doubles per failure in a row, never in a loop.
- A loaded model idle for its `idle_unload` is unloaded.

Requests take their replica from `pick`: the registry's pick once the model is loaded (models
loaded at startup pass at the cost of a dictionary lookup).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from vlm_gateway.backends.base import Backend, State
from vlm_gateway.backends.ondemand import errors
from vlm_gateway.backends.ondemand.room import blockers, victims
from vlm_gateway.backends.ondemand.slot import LoadPolicy, ModelSlot, Phase, reason_of
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.config.load_budget import LoadBudget
from vlm_gateway.config.settings import GatewaySettings
from vlm_gateway.core.errors import ConflictError
from vlm_gateway.core.metrics import Metrics

log = logging.getLogger(__name__)

_IDLE_TICK_MAX_S = 1.0  # how often idle models are looked at (more often for a short idle_unload)


class _NoRoom(Exception):
    pass


class OnDemandLoader:
    def __init__(
        self,
        registry: BackendRegistry,
        slots: Iterable[ModelSlot] = (),
        budget: LoadBudget | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._registry = registry
        self._slots = {slot.name: slot for slot in slots}
        self._budget = budget or LoadBudget(max_models=None)
        self._metrics = metrics
        # Every model's last use (unix time) for /v1/models; only configured names are kept.
        self._used: dict[str, float | None] = dict.fromkeys(registry.names())
        self._watcher: asyncio.Task[None] | None = None
        self._shut = False
        # Set whenever room may have freed (a replica's last request ended, a model's last
        # waiter left, an unload or a failed load ended): loads waiting for room look again at
        # once, so a swap starts as the blocking request ends.
        self._room = asyncio.Event()
        for slot in self._slots.values():
            for backend in slot.replicas:
                backend.on_idle = self._room.set

    @classmethod
    def from_settings(
        cls, settings: GatewaySettings, registry: BackendRegistry, metrics: Metrics | None
    ) -> OnDemandLoader:
        budget = LoadBudget.of(settings)
        slots, held = [], []
        for name in settings.on_demand_models():
            replicas = registry.replicas(name)
            if replicas and all(backend.loadable for backend in replicas):
                policy = LoadPolicy.of(settings.entries_for(name)[0])
                slots.append(ModelSlot(name, replicas, policy))
                continue
            log.warning(
                "model %s: load: on_demand, but its backend kind cannot load and unload yet: "
                "it is loaded at startup and kept",
                name,
            )
            held.append(name)
        budget = dataclasses.replace(budget, resident=(*budget.resident, *held))
        return cls(registry, slots, budget, metrics)

    def must_load(self, name: str) -> bool:
        """Whether a request for `name` would wait for a load now."""
        slot = self._slots.get(name)
        return slot is not None and not slot.serves()

    def manages(self, name: str) -> bool:
        """Whether `name` loads on demand (its replicas are not started with the app)."""
        return name in self._slots

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        for slot in self._slots.values():
            for backend in slot.replicas:
                backend.set_status(State.UNLOADED, "loads on its first request")
        if self._slots:
            self._watcher = asyncio.create_task(self._watch_idle(), name="on-demand-idle")

    def shut(self) -> None:
        """Draining: no load starts any more, those under way are stopped (their waiters get
        503 `shutting_down`); loaded models go on serving what is in flight."""
        self._shut = True
        for slot in self._slots.values():
            if slot.loading is not None:
                slot.loading.cancel()

    async def stop(self) -> None:
        self.shut()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        tasks = [t for s in self._slots.values() for t in (s.loading, s.unloading) if t]
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the request path -----------------------------------------------------------------------

    async def pick(
        self, name: str, avoid: Sequence[Backend] = (), key: int | None = None
    ) -> Backend:
        """The registry's pick of a replica (backends/registry.py) once the model is loaded:
        nothing is awaited between the two, so the model cannot be unloaded before the caller
        counts its request in the replica's `in_flight`."""
        await self.ensure_loaded(name)
        return self._registry.pick(name, avoid, key)

    def pick_now(self, name: str, key: int | None = None) -> Backend:
        """`pick` for a model that needs no load (`must_load` said so), without awaiting."""
        self._note_use(name)
        return self._registry.pick(name, (), key)

    async def ensure_loaded(self, name: str) -> None:
        """Return once model `name` is loaded (at once for a startup model), or raise the 503
        that says why it is not."""
        slot = self._note_use(name)
        if slot is not None and not slot.serves():
            await self._wait_for_load(slot)
            slot.used_at = asyncio.get_running_loop().time()

    def _note_use(self, name: str) -> ModelSlot | None:
        if name in self._used:
            self._used[name] = time.time()
        slot = self._slots.get(name)
        if slot is not None:
            slot.used_at = asyncio.get_running_loop().time()
        return slot

    async def _wait_for_load(self, slot: ModelSlot) -> None:
        loop = asyncio.get_running_loop()
        if self._shut:
            raise errors.shutting_down(slot.name)
        if slot.loading is None and loop.time() < slot.retry_at:
            assert slot.last_error is not None
            raise errors.load_failed(slot.name, slot.last_error, slot.retry_at - loop.time())
        task = slot.loading or self._begin_load(slot)  # also with no room to wait (load_queue 0)
        if slot.waiting >= slot.policy.load_queue:
            self._refused(slot.name, "queue_full")
            raise errors.queue_full(slot.name, slot.waiting, slot.load_guess())
        slot.waiting += 1
        started = loop.time()
        try:
            await self._waited(slot, task)
        finally:
            slot.waiting -= 1
            if not slot.waiting:
                self._room.set()
            if self._metrics is not None:
                self._metrics.load_queue_wait(slot.name, loop.time() - started)

    async def _waited(self, slot: ModelSlot, task: asyncio.Task[None]) -> None:
        """The load's outcome as this request's answer (a fresh error for each waiter)."""
        timeout = slot.policy.load_timeout
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                await asyncio.shield(task)
            return
        except asyncio.CancelledError:
            if task.cancelled() and self._shut and not _cancelling():
                raise errors.shutting_down(slot.name) from None
            raise
        except _NoRoom as exc:
            why = str(exc)
        except Exception:
            if not scope.expired():
                now = asyncio.get_running_loop().time()
                reason = slot.last_error or "unknown"
                raise errors.load_failed(slot.name, reason, slot.retry_at - now) from None
            why = "it is still loading"
            if slot.phase is not Phase.LOADING:
                why = f"still waiting for room (in use: {blockers(slot, self._slots.values())})"
        self._refused(slot.name, "load_timeout")
        raise errors.load_timed_out(slot.name, timeout, why, slot.load_guess())

    def _refused(self, name: str, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.load_queue_refusal(name, reason)

    # -- loading --------------------------------------------------------------------------------

    def _begin_load(self, slot: ModelSlot) -> asyncio.Task[None]:
        task = asyncio.create_task(self._load(slot), name=f"load-{slot.name}")
        slot.loading = task
        task.add_done_callback(_retrieved)  # its waiters may all have gone
        return task

    async def _load(self, slot: ModelSlot) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            if slot.unloading is not None:
                await asyncio.shield(slot.unloading)
            await self._make_room(slot, started + slot.policy.load_timeout)
            log.info("model %s: loading on demand", slot.name)
            await slot.load_replicas()
        except _NoRoom:
            slot.phase = Phase.UNLOADED
            raise
        except asyncio.CancelledError:
            slot.phase = Phase.UNLOADED
            log.info("model %s: load stopped (the gateway is shutting down)", slot.name)
            raise
        except Exception as exc:
            slot.phase = Phase.UNLOADED
            slot.failed(reason_of(exc), loop.time())
            self._observe_load(slot.name, "failed", loop.time() - started)
            log.error("model %s: load failed: %s", slot.name, slot.last_error)
            raise
        else:
            seconds = loop.time() - started
            slot.loaded(seconds)
            self._observe_load(slot.name, "loaded", seconds)
            log.info("model %s: loaded on demand in %.2f s", slot.name, seconds)
        finally:
            slot.loading = None
            if slot.phase is Phase.UNLOADED:
                self._room.set()  # a load that did not happen gives its room back

    async def _make_room(self, slot: ModelSlot, deadline: float) -> None:
        """Unload what the eviction rule names (room.py), or wait until it names something;
        the slot counts as loading (taking its room) from the moment room is found."""
        loop = asyncio.get_running_loop()
        while True:
            self._room.clear()  # before looking: a change from here on wakes the wait below
            chosen = victims(self._budget, slot, self._slots.values())
            if chosen is not None:
                slot.phase = Phase.LOADING
                unloads = [self._begin_unload(victim, "evicted") for victim in chosen]
                await asyncio.gather(*(asyncio.shield(task) for task in unloads))
                return
            if loop.time() >= deadline:
                raise _NoRoom(self._no_room(slot))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._room.wait()

    def _no_room(self, slot: ModelSlot) -> str:
        occupying = [other.name for other in self._slots.values() if other.occupies()]
        limit = self._budget.why_not([*occupying, slot.name]) or "the budget"
        in_use = blockers(slot, self._slots.values())
        return f"no room for it ({limit}) while these models are in use: {in_use}"

    def _observe_load(self, name: str, outcome: str, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.model_load(name, outcome, seconds)

    # -- unloading ------------------------------------------------------------------------------

    def _begin_unload(self, slot: ModelSlot, reason: str) -> asyncio.Task[None]:
        slot.phase = Phase.UNLOADING
        task = asyncio.create_task(self._unload(slot, reason), name=f"unload-{slot.name}")
        slot.unloading = task
        return task

    async def _unload(self, slot: ModelSlot, reason: str) -> None:
        log.info("model %s: unloading (%s)", slot.name, reason)
        try:
            await slot.unload_replicas()
        finally:
            slot.phase = Phase.UNLOADED
            slot.unloading = None
            self._room.set()
            if self._metrics is not None:
                self._metrics.model_unload(slot.name, reason)

    async def _watch_idle(self) -> None:
        idles = [s.policy.idle_unload for s in self._slots.values() if s.policy.idle_unload]
        tick = min([_IDLE_TICK_MAX_S, *(idle / 4 for idle in idles)])
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for slot in self._slots.values():
                if slot.phase is not Phase.LOADED:
                    continue
                if slot.busy():  # idle time counts from the end of its last request
                    slot.used_at = now
                elif (
                    slot.policy.idle_unload is not None
                    and now - slot.used_at >= slot.policy.idle_unload
                ):
                    self._begin_unload(slot, "idle")

    # -- controls and visibility ----------------------------------------------------------------

    async def load(self, name: str) -> None:
        """`POST /v1/models/{name}/load`: load it now (as a request would), wait for it."""
        await self.ensure_loaded(self._slot(name).name)

    async def unload(self, name: str) -> None:
        """`POST /v1/models/{name}/unload`: unload it now unless it is in use or loading."""
        slot = self._slot(name)
        if slot.phase is Phase.LOADING or slot.loading is not None:
            raise ConflictError(f"The model '{name}' is loading; unload it once it is loaded.")
        if slot.busy():
            in_flight = sum(backend.in_flight for backend in slot.replicas)
            raise ConflictError(
                f"The model '{name}' has {in_flight} requests in flight and {slot.waiting} "
                "waiting; it is unloaded only when idle."
            )
        if slot.phase is Phase.LOADED:
            self._begin_unload(slot, "admin")
        if slot.unloading is not None:
            await asyncio.shield(slot.unloading)

    def _slot(self, name: str) -> ModelSlot:
        slot = self._slots.get(name)
        if slot is None:
            raise ConflictError(
                f"The model '{name}' is loaded at startup and stays loaded; only `load: "
                "on_demand` models are loaded and unloaded."
            )
        return slot

    def describe(self, name: str) -> dict[str, Any]:
        """The model's loading, for /v1/models."""
        slot = self._slots.get(name)
        card: dict[str, Any] = {"load": "on_demand" if slot else "startup"}
        card["last_used"] = _whole(self._used.get(name))
        if slot is None:
            ready = any(b.status.ready for b in self._registry.replicas(name))
            return card | {"state": "loaded" if ready else "not loaded"}
        return card | {
            "state": slot.state_word(),
            "idle_unload_s": slot.policy.idle_unload,
            "load_timeout_s": slot.policy.load_timeout,
            "waiting": slot.waiting,
            "last_load_s": None if slot.last_load_s is None else round(slot.last_load_s, 3),
            "last_error": slot.last_error,
        }


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


def _whole(value: float | None) -> int | None:
    return None if value is None else int(value)
