"""Routing among replicas: fewest in flight among the ready ones; 404 and 503 at once."""

import pytest

from vlm_gateway.backends.base import Backend, State
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.core.errors import ModelNotFoundError, ServiceUnavailableError


class StubBackend(Backend):
    kind = "stub"

    async def chat(self, request):
        return {}

    async def chat_stream(self, request):
        return iter(())


def replica(name, state=State.READY, in_flight=0):
    backend = StubBackend(name)
    backend.set_status(state, None if state is State.READY else "warming up")
    backend.in_flight = in_flight
    return backend


def test_picks_the_ready_replica_with_fewest_in_flight():
    busy, idle, down = (
        replica("m", in_flight=3),
        replica("m", in_flight=1),
        replica("m", State.UNAVAILABLE),
    )
    registry = BackendRegistry([busy, down, idle])
    assert registry.pick("m") is idle
    idle.in_flight = 5
    assert registry.pick("m") is busy


def test_unknown_model_lists_the_ones_that_exist():
    registry = BackendRegistry([replica("a"), replica("b")])
    with pytest.raises(ModelNotFoundError) as info:
        registry.pick("nope")
    assert "a, b" in info.value.message


def test_no_ready_replica_is_503_with_the_reason():
    registry = BackendRegistry([replica("m", State.STARTING)])
    with pytest.raises(ServiceUnavailableError) as info:
        registry.pick("m")
    assert "starting: warming up" in info.value.message


def test_readiness_report():
    registry = BackendRegistry([replica("a"), replica("b", State.FAILED)])
    all_ready, report = registry.readiness()
    assert not all_ready
    assert report["a"]["ready"] and not report["b"]["ready"]
    assert report["b"]["replicas"][0]["state"] == "failed"


@pytest.mark.parametrize(
    "policy, states, ready",
    [
        ("all", [State.READY, State.READY], True),
        ("all", [State.READY, State.STARTING], False),
        ("any", [State.READY, State.FAILED], True),
        ("any", [State.STARTING, State.FAILED], False),
    ],
)
def test_bare_readiness_follows_the_policy(policy, states, ready):
    registry = BackendRegistry(
        [replica(name, state) for name, state in zip("ab", states, strict=True)]
    )
    verdict, report = registry.readiness(policy)
    assert verdict is ready
    assert [entry["ready"] for entry in report.values()] == [s is State.READY for s in states]


def test_one_model_reports_its_most_hopeful_replica_state():
    registry = BackendRegistry(
        [replica("m", State.FAILED), replica("m", State.STARTING), replica("n", State.STOPPED)]
    )
    report = registry.model_readiness("m")
    assert (report["ready"], report["state"]) == (False, "starting")
    assert [r["state"] for r in report["replicas"]] == ["failed", "starting"]
    assert registry.model_readiness("n")["state"] == "stopped"
    registry.replicas("m")[0].set_status(State.READY)
    assert registry.model_readiness("m") | {"replicas": None} == {
        "ready": True,
        "state": "ready",
        "replicas": None,
    }


def test_readiness_of_an_unknown_model_is_model_not_found():
    with pytest.raises(ModelNotFoundError) as info:
        BackendRegistry([replica("a")]).model_readiness("nope")
    assert info.value.status_code == 404 and "Available models: a" in info.value.message
