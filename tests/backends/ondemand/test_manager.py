"""The on-demand manager's rules, on gated fake backends whose loads wait at a gate the test
opens (tests/support/loadable.py): one load for concurrent first requests, the bounded wait
queue, load_timeout, the eviction rule (idle only, least recently used first, only what
helps), failed loads retried after a backoff, idle_unload, and the drain."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from tests.support.loadable import Gate, GatedBackend, Journal
from tests.support.polling import until
from vlm_gateway.backends.base import State
from vlm_gateway.backends.ondemand.manager import OnDemandLoader
from vlm_gateway.backends.ondemand.slot import LoadPolicy, ModelSlot
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.config.load_budget import LoadBudget
from vlm_gateway.core.errors import ConflictError, ServiceUnavailableError
from vlm_gateway.core.metrics import Metrics


class Models:
    """Gated backends named by `names`, each an on-demand model under `budget`."""

    def __init__(self, names: str, budget: LoadBudget, **policy: float) -> None:
        self.journal = Journal()
        self.backends = {name: GatedBackend(name, self.journal) for name in names}
        self.registry = BackendRegistry(self.backends.values())
        self.metrics = Metrics(self.backends)
        slots = [ModelSlot(n, [b], LoadPolicy(**policy)) for n, b in self.backends.items()]
        self.loader = OnDemandLoader(self.registry, slots, budget, self.metrics)

    def hold(self, name: str) -> Gate:
        gate = self.backends[name].load_gate = Gate()
        return gate

    async def use(self, name: str) -> None:
        """One request: the model loaded, its replica picked and answering, then done."""
        backend = await self.loader.pick(name)
        assert backend.status.ready
        backend.in_flight += 1
        await asyncio.sleep(0)
        backend.in_flight -= 1

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


def run(scenario: Callable[[Models], Awaitable[None]], models: Models) -> None:
    async def main() -> None:
        await models.loader.start()
        try:
            await scenario(models)
        finally:
            await models.loader.stop()

    asyncio.run(main())


def test_concurrent_first_requests_cause_one_load_and_all_are_served():
    models = Models("a", LoadBudget(max_models=1))

    async def scenario(m: Models) -> None:
        gate = m.hold("a")
        requests = [asyncio.ensure_future(m.use("a")) for _ in range(20)]
        await until(lambda: m.loader.describe("a")["waiting"] == 20, "20 requests waiting")
        assert m.loader.describe("a")["state"] == "loading"
        gate.open()
        await asyncio.gather(*requests)
        assert m.journal.lines == ["load a", "loaded a"]
        assert m.loader.describe("a")["state"] == "loaded"

    run(scenario, models)
    assert models.metric("vlmgw_model_loads_total", model="a", outcome="loaded") == 1
    assert models.metric("vlmgw_load_queue_wait_seconds_count", model="a") == 20


def test_past_the_queue_bound_requests_get_model_loading_with_retry_after():
    models = Models("a", LoadBudget(max_models=1), load_queue=3)

    async def scenario(m: Models) -> None:
        gate = m.hold("a")
        waiting = [asyncio.ensure_future(m.use("a")) for _ in range(3)]
        await until(lambda: m.loader.describe("a")["waiting"] == 3, "the queue full")
        with pytest.raises(ServiceUnavailableError) as refused:
            await m.use("a")
        assert refused.value.code == "model_loading"
        assert int(refused.value.headers["retry-after"]) >= 1
        gate.open()
        await asyncio.gather(*waiting)  # those in the queue are served

    run(scenario, models)
    assert models.metric("vlmgw_load_queue_refusals_total", model="a", reason="queue_full") == 1


def test_with_no_queue_a_request_starts_the_load_and_is_told_to_come_back():
    models = Models("a", LoadBudget(max_models=1), load_queue=0)

    async def scenario(m: Models) -> None:
        with pytest.raises(ServiceUnavailableError) as refused:
            await m.use("a")
        assert refused.value.code == "model_loading"
        await until(lambda: m.loader.describe("a")["state"] == "loaded", "loaded meanwhile")
        await m.use("a")
        assert m.journal.lines == ["load a", "loaded a"]

    run(scenario, models)


def test_past_load_timeout_the_request_gets_load_timeout_and_the_load_goes_on():
    models = Models("a", LoadBudget(max_models=1), load_timeout=0.2)

    async def scenario(m: Models) -> None:
        gate = m.hold("a")
        with pytest.raises(ServiceUnavailableError) as timed_out:
            await m.use("a")
        assert timed_out.value.code == "load_timeout"
        assert "load_timeout (0.2 s)" in timed_out.value.message
        assert "retry-after" in timed_out.value.headers
        assert m.loader.describe("a")["state"] == "loading"  # not abandoned
        gate.open()
        await until(lambda: m.loader.describe("a")["state"] == "loaded", "the load done")
        await m.use("a")
        assert m.journal.count("load a") == 1

    run(scenario, models)


def test_room_is_made_by_unloading_the_least_recently_used_idle_model():
    models = Models("abc", LoadBudget(max_models=2))

    async def scenario(m: Models) -> None:
        await m.use("a")
        await m.use("b")
        await m.use("a")  # b is now the least recently used
        await m.use("c")
        assert m.journal.lines[-3:] == ["unload b", "load c", "loaded c"]
        assert m.loader.describe("a")["state"] == "loaded"

    run(scenario, models)
    assert models.metric("vlmgw_model_unloads_total", model="b", reason="evicted") == 1


def test_a_model_with_a_request_in_flight_is_never_unloaded_the_load_waits_for_room():
    models = Models("ab", LoadBudget(max_models=1))

    async def scenario(m: Models) -> None:
        a = await m.loader.pick("a")
        a.in_flight += 1  # a request (a stream) is running on a
        b_request = asyncio.ensure_future(m.use("b"))
        await until(lambda: m.loader.describe("b")["waiting"] == 1, "b waiting")
        await asyncio.sleep(0.2)  # several looks for room meanwhile
        assert m.journal.lines == ["load a", "loaded a"]  # a kept, b not loading
        a.in_flight -= 1  # the request ends
        await b_request
        assert m.journal.lines[2:] == ["unload a", "load b", "loaded b"]

    run(scenario, models)


def test_a_load_that_finds_no_room_within_load_timeout_says_which_models_are_in_use():
    models = Models("ab", LoadBudget(max_models=1), load_timeout=0.3)

    async def scenario(m: Models) -> None:
        a = await m.loader.pick("a")
        a.in_flight += 1
        with pytest.raises(ServiceUnavailableError) as refused:
            await m.use("b")
        assert refused.value.code == "load_timeout"
        assert "a (1 in flight" in refused.value.message
        a.in_flight -= 1
        await m.use("b")  # room now: the next request loads it

    run(scenario, models)


def test_only_models_whose_unloading_makes_room_are_unloaded():
    """a and c share GPU 0 (each claims 0.9 of it), b is alone on GPU 1: loading c unloads a,
    even though b was used less recently."""
    uses = {"a": {0: 0.9}, "b": {1: 0.9}, "c": {0: 0.9}}
    models = Models("abc", LoadBudget(max_models=None, gpu_use=uses))

    async def scenario(m: Models) -> None:
        await m.use("b")
        await m.use("a")
        await m.use("c")
        assert "unload b" not in m.journal.lines
        assert m.journal.lines[-3:] == ["unload a", "load c", "loaded c"]

    run(scenario, models)


def test_a_failed_load_answers_with_its_reason_and_is_retried_after_a_backoff_not_in_a_loop():
    models = Models("a", LoadBudget(max_models=1), retry_backoff=0.3)

    async def scenario(m: Models) -> None:
        m.backends["a"].fail_loads = "weights are corrupt"
        with pytest.raises(ServiceUnavailableError) as failed:
            await m.use("a")
        assert failed.value.code == "load_failed"
        assert "weights are corrupt" in failed.value.message
        with pytest.raises(ServiceUnavailableError) as again:  # within the backoff: no load
            await m.use("a")
        assert again.value.code == "load_failed" and "retry-after" in again.value.headers
        assert m.journal.count("load a") == 1
        assert m.loader.describe("a")["last_error"] == "weights are corrupt"
        m.backends["a"].fail_loads = None  # fixed; a request after the backoff loads it
        await until(lambda: asyncio.get_running_loop().time() >= _retry_at(m), "backoff over")
        await m.use("a")
        assert m.journal.count("load a") == 2

    run(scenario, models)
    assert models.metric("vlmgw_model_loads_total", model="a", outcome="failed") == 1


def _retry_at(models: Models) -> float:
    return models.loader._slots["a"].retry_at


def test_idle_unload_unloads_and_the_next_request_loads_again():
    models = Models("a", LoadBudget(max_models=1), idle_unload=0.2)

    async def scenario(m: Models) -> None:
        await m.use("a")
        await until(lambda: m.loader.describe("a")["state"] == "unloaded", "unloaded when idle")
        assert m.backends["a"].status.state is State.UNLOADED
        await m.use("a")
        assert m.journal.lines == ["load a", "loaded a", "unload a", "load a", "loaded a"]

    run(scenario, models)
    assert models.metric("vlmgw_model_unloads_total", model="a", reason="idle") == 1


def test_a_busy_model_is_not_unloaded_when_idle_unload_passes_during_its_request():
    models = Models("a", LoadBudget(max_models=1), idle_unload=0.2)

    async def scenario(m: Models) -> None:
        a = await m.loader.pick("a")
        a.in_flight += 1
        await asyncio.sleep(0.5)  # longer than idle_unload, while busy
        assert m.loader.describe("a")["state"] == "loaded"
        a.in_flight -= 1
        await until(lambda: m.loader.describe("a")["state"] == "unloaded", "unloaded after")

    run(scenario, models)


def test_shutting_down_stops_a_load_under_way_and_its_waiters_get_shutting_down():
    models = Models("a", LoadBudget(max_models=1))

    async def scenario(m: Models) -> None:
        m.hold("a")
        request = asyncio.ensure_future(m.use("a"))
        await until(lambda: m.loader.describe("a")["waiting"] == 1, "waiting")
        m.loader.shut()
        with pytest.raises(ServiceUnavailableError) as stopped:
            await request
        assert stopped.value.code == "shutting_down"
        assert m.journal.lines == ["load a", "load stopped a"]
        with pytest.raises(ServiceUnavailableError):
            await m.use("a")  # no new load starts

    run(scenario, models)


def test_admin_controls_refuse_what_would_break_a_rule():
    models = Models("ab", LoadBudget(max_models=2))

    async def scenario(m: Models) -> None:
        await m.loader.load("a")
        assert m.loader.describe("a")["state"] == "loaded"
        m.backends["a"].in_flight += 1
        with pytest.raises(ConflictError, match="1 requests in flight"):
            await m.loader.unload("a")
        m.backends["a"].in_flight -= 1
        await m.loader.unload("a")
        assert m.journal.lines[-1] == "unload a"
        await m.loader.unload("b")  # not loaded: nothing to do

    run(scenario, models)
    assert models.metric("vlmgw_model_unloads_total", model="a", reason="admin") == 1


def test_models_loaded_at_startup_pass_and_cannot_be_unloaded():
    journal = Journal()
    resident = GatedBackend("r", journal)
    registry = BackendRegistry([resident])
    loader = OnDemandLoader(registry)

    async def scenario() -> None:
        await resident.start()
        assert await loader.pick("r") is resident
        with pytest.raises(ConflictError, match="loaded at startup"):
            await loader.unload("r")
        assert loader.describe("r")["load"] == "startup"
        assert loader.describe("r")["last_used"] is not None

    asyncio.run(scenario())
    assert journal.lines == []
