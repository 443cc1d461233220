from vlm_gateway.images.cache import ByteLRU


def test_the_cache_is_bounded_by_bytes_and_evicts_the_least_recently_used():
    cache = ByteLRU(max_bytes=100, ttl=60, clock=lambda: 0.0)
    cache.put("a", "A", 40)
    cache.put("b", "B", 40)
    assert cache.get("a") == "A"  # "a" is now the most recently used
    cache.put("c", "C", 40)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("A", None, "C")
    assert cache.size == 80
    cache.put("huge", "H", 101)  # larger than the whole cache: not kept, nothing evicted
    assert cache.get("huge") is None and len(cache) == 2


def test_entries_expire_after_the_ttl():
    now = [0.0]
    cache = ByteLRU(max_bytes=100, ttl=5, clock=lambda: now[0])
    cache.put("a", "A", 10)
    now[0] = 4.9
    assert cache.get("a") == "A"
    now[0] = 5.0
    assert cache.get("a") is None and cache.size == 0
