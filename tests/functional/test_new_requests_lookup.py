"""How the fast path looks up a request new to this instance on a shared store (Redis).

Such a lookup may also take the fill's lease when the entry is absent (one script call instead of an
MGET, then a lease on the miss). That saves a round trip on a miss and costs the store more on a hit. So it
is done only while the lookups of new requests mostly find nothing (a cold cache); in a warm keyspace,
where most new requests are hits on entries filled long ago (another instance's, or before the memo of
heads forgot them), they are plain MGETs, and the lease goes back with the lookups once misses return.
Counted in Redis' own command statistics: the session's redis-server, flushed per test.
"""
from __future__ import annotations

import pytest

from proxy.store.redis import RedisStore

from .conftest import API, mint, new_user

PROFILE = f"{API}/users/profile"


@pytest.fixture
def store_kind() -> str:
    return "redis"  # leases are taken only where other instances share the store


async def test_new_requests_in_a_warm_keyspace_are_plain_lookups_and_leases_return_with_misses(
        make_proxy, redis_server, redis_url, backend):
    filler = await make_proxy()
    users = [new_user() for _ in range(60)]
    redis_server.reset_stats()
    for user in users:  # a cold cache: each new request is a miss, and its lookup takes the lease
        assert (await filler.get(PROFILE, user)).x_cache == "MISS"
    await filler.writes_landed()
    # Commands run by scripts are counted too (mget, set). The first request may reach aiohttp's path
    # (the instance just started) and lease in its fill; a store script Redis did not have yet is one
    # more EVAL. Either way, without the lease in the lookups there would be at most those two.
    counts = redis_server.command_counts()
    assert counts.get("eval", 0) >= len(users) - 1, counts

    # Another instance: every request is new to it (tokens it never saw), every entry is in Redis.
    reader = await make_proxy(store=RedisStore.from_url(redis_url, timeout=1.0))
    redis_server.reset_stats()
    for user in users:
        assert (await reader.get(PROFILE, token=mint(user, ttl=7200))).x_cache == "HIT"
    warming = redis_server.command_counts()  # the first ones lease: this instance has seen no hit yet
    assert 0 < warming.get("eval", 0) <= len(users) - 10, warming

    redis_server.reset_stats()
    for user in users:
        assert (await reader.get(PROFILE, token=mint(user, ttl=5400))).x_cache == "HIT"
    warm = redis_server.command_counts()
    assert warm.get("eval", 0) == 0 and warm.get("mget", 0) == len(users), warm

    # Misses come back (new users): after a few dozen (plain lookups, the lease taken by the fill), their
    # lookups take the lease again; every one of them is fetched once either way.
    before = await backend.requests()
    newcomers = [new_user() for _ in range(60)]
    redis_server.reset_stats()
    for user in newcomers:
        assert (await reader.get(PROFILE, user)).x_cache == "MISS"
    await reader.writes_landed()
    cold = redis_server.command_counts()
    assert 0 < cold.get("eval", 0) <= len(newcomers) - 10, cold
    assert await backend.requests() - before == len(newcomers)
