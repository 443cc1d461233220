"""Consistent hashing with bounded loads (backends/affinity.py), and the registry's pick for a
model with `routing: affinity`: the same key keeps its replica, keys spread, a replica that
leaves moves only its own keys, and no replica goes above 1.25x the mean in flight."""

from collections import Counter

from tests.backends.test_registry import replica
from vlm_gateway.backends.affinity import HashRing, bounded_capacity, ring_key
from vlm_gateway.backends.base import State
from vlm_gateway.backends.registry import BackendRegistry

KEYS = [ring_key(f"image-{i}".encode()) for i in range(4000)]


def idle(_member):
    return 0


def everyone(_member):
    return True


def test_keys_spread_evenly_over_the_members():
    ring = HashRing(list(range(4)))
    shares = Counter(ring.choose(key, idle, everyone) for key in KEYS)
    assert set(shares) == {0, 1, 2, 3}
    # 160 virtual nodes each: every member within 20% of a quarter of the keys.
    assert all(0.8 * 1000 <= n <= 1.2 * 1000 for n in shares.values()), shares


def test_the_same_key_always_lands_on_the_same_member():
    ring, again = HashRing(["a", "b", "c"]), HashRing(["a", "b", "c"])
    first = [ring.choose(key, idle, everyone) for key in KEYS[:200]]
    assert first == [ring.choose(key, idle, everyone) for key in KEYS[:200]]
    assert first == [again.choose(key, idle, everyone) for key in KEYS[:200]]  # no hidden state


def test_a_member_that_leaves_moves_only_its_own_keys():
    ring = HashRing(list(range(3)))
    before = {key: ring.choose(key, idle, everyone) for key in KEYS}
    after = {key: ring.choose(key, idle, lambda m: m != 1) for key in KEYS}
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved == {key for key in KEYS if before[key] == 1}
    assert {after[key] for key in moved} == {0, 2}  # its keys spread over both others
    # The same as a ring built without it: skipping is consistent hashing proper.
    without = HashRing([0, 2])
    assert all(after[key] == without.choose(key, idle, everyone) for key in KEYS)


def test_no_member_goes_above_the_bound_and_the_next_on_the_ring_takes_over():
    ring = HashRing(list(range(4)))
    key = KEYS[0]
    home = ring.owner(key)
    order = list(ring.walk(key))
    assert order[0] == home and sorted(order) == [0, 1, 2, 3]
    loads = {m: 2 for m in range(4)}  # 8 in flight: the bound is ceil(1.25 * 9 / 4) = 3
    assert bounded_capacity(8, 4) == 3
    assert ring.choose(key, loads.__getitem__, everyone) == home  # 2 + 1 <= 3
    loads[home] = 3  # 9 in flight: still ceil(1.25 * 10 / 4) = 4, so 3 + 1 fits
    assert ring.choose(key, loads.__getitem__, everyone) == home
    loads[home] = 5  # 11 in flight: ceil(1.25 * 12 / 4) = 4 < 5 + 1
    assert ring.choose(key, loads.__getitem__, everyone) == order[1]


def test_every_key_at_once_never_overloads_a_member():
    """Place 400 requests that all want the same member: loads stay within 1.25x the mean."""
    ring = HashRing(list(range(4)))
    loads = Counter[int]()
    for _ in range(400):
        chosen = ring.choose(KEYS[0], loads.__getitem__, everyone)
        assert chosen is not None
        assert loads[chosen] + 1 <= bounded_capacity(sum(loads.values()), 4)
        loads[chosen] += 1
    assert max(loads.values()) <= 1.25 * 100 and min(loads.values()) > 0


def test_nobody_eligible_is_none():
    assert HashRing([0, 1]).choose(KEYS[0], idle, lambda _m: False) is None
    assert HashRing([]).choose(KEYS[0], idle, everyone) is None


def affinity_registry(*backends):
    return BackendRegistry(list(backends), routing=lambda _name: "affinity")


def test_an_affinity_model_sends_a_key_to_the_same_replica_whatever_the_load_order():
    a, b = replica("m"), replica("m")
    registry = affinity_registry(a, b)
    homes = {key: registry.pick("m", key=key) for key in KEYS[:100]}
    assert {id(h) for h in homes.values()} == {id(a), id(b)}  # both get keys
    for key, home in homes.items():
        assert registry.pick("m", key=key) is home
    # Least busy would now always choose `b`: affinity keeps the keys where they were as long
    # as the bound allows (one in flight on `a`: 1 + 1 <= ceil(1.25 * 2 / 2) = 2).
    a.in_flight = 1
    assert all(registry.pick("m", key=key) is home for key, home in homes.items())


def test_affinity_skips_a_replica_not_ready_or_tried_and_falls_back_without_a_key():
    a, b = replica("m"), replica("m")
    registry = affinity_registry(a, b)
    key_of_a = next(k for k in KEYS if registry.pick("m", key=k) is a)
    a.set_status(State.UNAVAILABLE, "gone")
    assert registry.pick("m", key=key_of_a) is b
    a.set_status(State.READY)
    assert registry.pick("m", key=key_of_a) is a
    assert registry.pick("m", avoid=[a], key=key_of_a) is b  # failover's second attempt
    # No key (a text-only request): least busy, as for any model.
    b.in_flight = 2
    assert registry.pick("m") is a


def test_least_busy_models_ignore_the_key():
    a, b = replica("m"), replica("m")
    registry = BackendRegistry([a, b])
    picks = {id(registry.pick("m", key=KEYS[0])) for _ in range(4)}
    assert picks == {id(a), id(b)}  # ties rotate


def test_with_three_replicas_one_down_only_its_keys_move():
    replicas = [replica("m"), replica("m"), replica("m")]
    registry = affinity_registry(*replicas)
    homes = {key: registry.pick("m", key=key) for key in KEYS[:300]}
    replicas[1].set_status(State.STARTING, "restarting")
    moved = {key: registry.pick("m", key=key) for key in KEYS[:300]}
    for key, home in homes.items():
        if home is replicas[1]:
            assert moved[key] is not replicas[1]
        else:
            assert moved[key] is home
