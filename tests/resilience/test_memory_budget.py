"""Bounded memory. The memory store keeps a byte budget with LRU eviction and counts evictions (the
``katiba_cache_evictions`` the operators' eviction rate is computed from); an entry larger than the
budget, or than its rule's ``max_body_bytes``, is not stored. With Redis, its memory use and evictions
are exported, and a Redis under ``maxmemory`` + ``allkeys-lru`` keeps the proxy correct."""
from __future__ import annotations

from pathlib import Path

from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore

from .conftest import PROFILE, new_user, sample

RULES = Path(__file__).resolve().parents[2] / "rules.yaml"


async def test_lru_eviction_under_a_small_budget(make_proxy, backend):
    store = MemoryStore(max_bytes=1 << 20)
    cache = await make_proxy(store=store)
    users = [new_user() for _ in range(4)]
    await cache.get(PROFILE, users[0])
    shared = store.bytes
    await cache.get(PROFILE, users[1])
    size = store.bytes - shared  # one user's entry and namespace generations (the budget counts both)
    store.max_bytes = shared + 2 * size + size // 10  # room for three users
    await cache.get(PROFILE, users[2])
    assert (await cache.get(PROFILE, users[0])).x_cache == "HIT"  # now the most recently used
    await cache.get(PROFILE, users[3])  # a fourth entry: the least recently used one (users[1]) goes

    assert store.evictions == 1 and store.bytes <= store.max_bytes
    assert [(await cache.get(PROFILE, u)).x_cache for u in (users[0], users[2], users[3])] == ["HIT"] * 3
    assert (await cache.get(PROFILE, users[1])).x_cache == "MISS"
    assert sample(await cache.metrics(), "katiba_cache_evictions") >= 1


async def test_entry_larger_than_the_budget_is_not_stored(make_proxy, backend):
    store = MemoryStore(max_bytes=200)  # smaller than one profile answer
    cache = await make_proxy(store=store)
    user = new_user()
    replies = [await cache.get(PROFILE, user), await cache.get(PROFILE, user)]
    assert [r.x_cache for r in replies] == ["MISS", "MISS"], replies
    assert all(r.status == 200 and r.code == 200 for r in replies)
    assert await backend.route_count("GET", PROFILE) == 2
    assert store.bytes == 0 and store.evictions == 0  # nothing stored, nothing pushed out for it


async def test_entry_above_the_rules_size_limit_is_not_stored(make_proxy, backend, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.read_text().replace("defaults:\n", "defaults:\n  max_body_bytes: 64\n", 1))
    store = MemoryStore()
    cache = await make_proxy(rules_path=rules, store=store)
    user = new_user()
    replies = [await cache.get(PROFILE, user), await cache.get(PROFILE, user)]
    assert all(r.status == 200 and r.x_cache == "MISS" and "too-large" in r.cache_status for r in replies), replies
    assert replies[1].json["body"]["user_id"] == user  # the client still gets the whole body
    assert await backend.route_count("GET", PROFILE) == 2 and (await store.stats())["entries"] == 0


async def test_redis_memory_use_is_exported(make_proxy, backend, redis_url):
    cache = await make_proxy(store=RedisStore.from_url(redis_url))
    await cache.get(PROFILE, new_user())
    text = await cache.metrics()
    assert sample(text, "katiba_cache_store_bytes") > 0  # Redis used_memory
    assert sample(text, "katiba_cache_store_entries") >= 1


async def test_redis_under_maxmemory_with_allkeys_lru(make_proxy, backend, start_redis):
    server = start_redis("--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru")
    cache = await make_proxy(store=RedisStore.from_url(server.url, timeout=1.0))  # as make_store: CI is slow
    user = new_user()
    first = await cache.get(PROFILE, user)
    filler = server.client()
    try:
        filler.set("filler", b"x" * 10_000)
        value = filler.dump("filler")
        # 6 MB of other keys into a 4 MB Redis. Their idle time is set to an hour: Redis's LRU clock
        # counts in seconds, so keys written in the same second as the proxy's would otherwise tie with
        # them, and which of the tied keys Redis evicts next is up to its sampling.
        for i in range(600):
            filler.restore(f"filler:{i}", 0, value, idletime=3600)
    finally:
        filler.close()
    text = await cache.metrics()
    assert sample(text, "katiba_cache_evictions") > 0  # Redis evicted_keys
    assert 0 < sample(text, "katiba_cache_store_bytes") <= 5 << 20

    written = await cache.request("PUT", PROFILE, user, json={"display_name": "After Evictions"})
    assert written.status == 200 and written.version > first.version
    replies = [await cache.get(PROFILE, user) for _ in range(2)]
    assert all(r.status == 200 and r.version == written.version for r in replies), replies
    assert replies[-1].x_cache == "HIT", (replies, server.admin.info("stats")["evicted_keys"])
