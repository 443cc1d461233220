"""The rate-limit table several worker processes share: two `SharedUsageTable` views of one
file stand for two workers (each maps the file exactly as a worker process does)."""

from __future__ import annotations

import pytest

from vlm_gateway.server.door.keys import Caller
from vlm_gateway.server.door.limits import _gateway_limit, _own_limit
from vlm_gateway.server.door.shared_limits import SharedUsageTable


@pytest.fixture
def workers(tmp_path):
    path = tmp_path / "table"
    SharedUsageTable.create(path, workers=2, slots=64)
    views = [SharedUsageTable(path, 0), SharedUsageTable(path, 1)]
    yield views
    for view in views:
        view.close()


def test_requests_per_minute_are_one_bucket_for_all_workers(workers):
    first, second = workers
    limits = [_gateway_limit(requests_per_minute=4, max_in_flight=None)]
    admitted = [
        (first if n % 2 else second).admit("addr:1", "this client", limits, now=100.0) is None
        for n in range(8)
    ]
    assert admitted == [True] * 4 + [False] * 4
    refusal = first.admit("addr:1", "this client", limits, now=100.0)
    assert refusal.status_code == 429 and refusal.headers["retry-after"] == "15"
    assert second.admit("addr:1", "this client", limits, now=115.0) is None  # one back
    assert second.admit("addr:2", "another", limits, now=115.0) is None  # its own bucket


def test_in_flight_counts_every_workers_requests_and_release_gives_back(workers):
    first, second = workers
    limits = [_gateway_limit(requests_per_minute=None, max_in_flight=2)]
    assert first.admit("key:a", "API key 'a'", limits, now=1.0) is None
    assert second.admit("key:a", "API key 'a'", limits, now=1.0) is None
    refusal = first.admit("key:a", "API key 'a'", limits, now=1.0)
    assert refusal is not None and "in flight" in refusal.message
    second.release("key:a")
    assert first.admit("key:a", "API key 'a'", limits, now=1.0) is None


def test_a_replaced_worker_forgets_only_the_requests_its_predecessor_had(workers, tmp_path):
    first, second = workers
    limits = [_gateway_limit(requests_per_minute=None, max_in_flight=2)]
    assert first.admit("key:a", "a", limits, now=1.0) is None
    assert second.admit("key:a", "a", limits, now=1.0) is None
    replacement = SharedUsageTable(tmp_path / "table", 1)  # worker 1 was killed mid-request
    replacement.forget_own_requests()
    assert replacement.admit("key:a", "a", limits, now=1.0) is None  # worker 0's still counts
    assert first.admit("key:a", "a", limits, now=1.0) is not None
    replacement.close()


def test_the_key_own_limit_and_the_gateway_limit_both_apply(workers):
    first, second = workers
    caller = Caller("a", requests_per_minute=2)
    limits = [_gateway_limit(requests_per_minute=6, max_in_flight=None), _own_limit(caller)]
    assert first.admit("key:a", "API key 'a'", limits, now=5.0) is None
    assert second.admit("key:a", "API key 'a'", limits, now=5.0) is None
    refusal = first.admit("key:a", "API key 'a'", limits, now=5.0)
    assert "the key's own limit is 2 requests per minute" in refusal.message
    assert refusal.headers["retry-after"] == "30"


def test_a_full_table_reuses_idle_slots(workers):
    first, _ = workers
    limits = [_gateway_limit(requests_per_minute=1, max_in_flight=None)]
    for n in range(64):  # every slot taken, each bucket emptied
        assert first.admit(f"addr:{n}", "c", limits, now=1.0) is None
        first.release(f"addr:{n}")
    assert first.admit("addr:new", "c", limits, now=2.0) is None  # nothing idle: not counted
    # A minute later every bucket has refilled: new callers take over idle slots, and a
    # caller that is still counted keeps its slot and its empty bucket.
    assert first.admit("addr:new", "c", limits, now=62.0) is None
    assert first.admit("addr:new", "c", limits, now=62.0) is not None


def test_a_slot_another_worker_gave_away_is_not_taken_for_the_old_caller(tmp_path):
    """Worker 0 remembers where caller a was; worker 1 then gives that idle slot to b. Worker 0
    must notice: a's release must not give back b's request."""
    path = tmp_path / "one-slot"
    SharedUsageTable.create(path, workers=2, slots=1)
    first, second = SharedUsageTable(path, 0), SharedUsageTable(path, 1)
    limits = [_gateway_limit(requests_per_minute=10, max_in_flight=1)]
    assert first.admit("addr:a", "a", limits, now=1.0) is None
    first.release("addr:a")
    assert second.admit("addr:b", "b", limits, now=70.0) is None  # a's slot, idle: now b's
    assert first.admit("addr:a", "a", limits, now=70.0) is None  # no room: let through
    first.release("addr:a")
    refusal = second.admit("addr:b", "b", limits, now=70.0)
    assert refusal is not None and "in flight" in refusal.message  # b's request still counts
    first.close()
    second.close()
