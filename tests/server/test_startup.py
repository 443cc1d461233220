"""The startup summary: listen address, the bare /ready policy, each model's backend, replicas
and where each replica is in loading, and a managed process's log file."""

from __future__ import annotations

from tests.backends.test_registry import StubBackend
from vlm_gateway.backends.base import State
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.config.settings import GatewaySettings
from vlm_gateway.server.startup import startup_summary


class ManagedStub(StubBackend):
    kind = "vllm"

    def describe(self):
        return super().describe() | {"log_file": f"/logs/vllm-{self.name}-0.log", "phase": None}


def test_summary_names_the_address_policy_and_each_model():
    managed = ManagedStub("big")
    managed.set_status(State.STARTING, "waiting for its turn to start")
    serving, down = StubBackend("small"), StubBackend("small")
    serving.set_status(State.READY)
    down.set_status(State.UNAVAILABLE, "upstream not answering")
    registry = BackendRegistry([managed, serving, down])
    settings = GatewaySettings(host="::", port=9000, ready_policy="any")

    lines = startup_summary(settings, registry).splitlines()

    assert lines == [
        "vlm-gateway listening on http://[::]:9000 with 2 model(s); GET /ready: ready_policy "
        "any, GET /ready?model=NAME for one model",
        "  model big: backend vllm, 1 replica: starting (waiting for its turn to start); "
        "log /logs/vllm-big-0.log",
        "  model small: backend stub, 2 replicas: ready; unavailable (upstream not answering)",
    ]
