"""Outlier ejection (backends/ejection.py) and tie-breaking among replicas, on plain stubs
with a hand-driven clock: the timings of docs/reliability.md, exactly."""

from tests.backends.test_registry import replica
from vlm_gateway.backends.base import State
from vlm_gateway.backends.ejection import OutlierEjector
from vlm_gateway.backends.registry import BackendRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def registry_of(*backends, eject_after=5):
    clock = Clock()
    ejections = []
    ejector = OutlierEjector(lambda _name: eject_after, clock, lambda *args: ejections.append(args))
    return BackendRegistry(backends, ejector), clock, ejections


def fail(registry, backend, times):
    for _ in range(times):
        registry.failed(backend)


def test_ties_rotate_so_a_sequential_client_reaches_every_replica():
    first, second, third = replica("m"), replica("m"), replica("m")
    registry = BackendRegistry([first, second, third])
    picked = [registry.pick("m") for _ in range(6)]
    assert picked == [first, second, third, first, second, third]


def test_fewest_in_flight_still_wins_over_the_turn():
    first, second = replica("m"), replica("m", in_flight=2)
    registry = BackendRegistry([first, second])
    assert [registry.pick("m") for _ in range(3)] == [first, first, first]


def test_five_failures_in_a_row_eject_for_5_s_then_probation():
    bad, good = replica("m"), replica("m")
    registry, clock, ejections = registry_of(bad, good)
    fail(registry, bad, 4)
    assert not registry.ejector.ejected(bad)
    registry.succeeded(bad)  # a success between breaks the run
    fail(registry, bad, 4)
    assert not registry.ejector.ejected(bad)
    fail(registry, bad, 1)
    assert registry.ejector.ejected(bad) and ejections == [("m", 0, 5.0)]
    assert {registry.pick("m") for _ in range(4)} == {good}
    card = registry.describe(bad)
    assert card["state"] == "ejected" and card["ejected_for_s"] == 5.0
    clock.now += 5.0
    assert not registry.ejector.ejected(bad)
    assert bad in {registry.pick("m") for _ in range(2)}  # probed back in by traffic


def test_cooldown_doubles_per_ejection_up_to_5_minutes_and_a_success_resets_it():
    bad, good = replica("m"), replica("m")
    registry, clock, ejections = registry_of(bad, good)
    fail(registry, bad, 5)
    for _ in range(8):
        clock.now += ejections[-1][2]
        fail(registry, bad, 1)  # the probe fails: out again at once, for twice as long
    assert [e[2] for e in ejections] == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    clock.now += 300
    registry.succeeded(bad)
    assert registry.describe(bad)["state"] == "ready"
    fail(registry, bad, 5)
    assert ejections[-1][2] == 5.0


def test_the_last_ready_replica_is_never_ejected():
    bad, down = replica("m"), replica("m", State.UNAVAILABLE)
    registry, _clock, ejections = registry_of(bad, down)
    fail(registry, bad, 50)
    assert not registry.ejector.ejected(bad) and ejections == []
    assert registry.pick("m") is bad  # clients get its honest errors, not "no backend"


def test_two_bad_replicas_eject_only_one():
    first, second = replica("m"), replica("m")
    registry, _clock, ejections = registry_of(first, second)
    fail(registry, first, 5)
    fail(registry, second, 5)
    assert registry.ejector.ejected(first) and not registry.ejector.ejected(second)
    assert len(ejections) == 1


def test_a_4xx_counts_as_an_answer_and_a_5xx_as_a_failure():
    from vlm_gateway.core.errors import InvalidRequestError, UpstreamError

    bad, good = replica("m"), replica("m")
    registry, _clock, _ejections = registry_of(bad, good, eject_after=2)
    registry.record(bad, UpstreamError("boom"))
    registry.record(bad, InvalidRequestError("bad"))
    registry.record(bad, UpstreamError("boom"))
    assert not registry.ejector.ejected(bad)
    registry.record(bad, UpstreamError("boom"))
    assert registry.ejector.ejected(bad)
