"""Redis down or hung: requests fall back to the backend (BYPASS, detail=store-unavailable), /readyz
stays ready, writes still succeed, and once Redis is back no read returns pre-write data. Metrics:
requests by rule and result, store errors, purges; no user id in any label."""
from __future__ import annotations

import uuid

import pytest

from proxy.store.redis import RedisStore

from .conftest import sample

PROFILE = "/api/v1/users/profile"


@pytest.fixture
def store_kind() -> str:
    """Every test here brings its own RedisStore on a private server: run each once."""
    return "private-redis"


async def warm(proxy, user: str):
    first, second = await proxy.get(PROFILE, user), await proxy.get(PROFILE, user)
    assert (first.x_cache, second.x_cache) == ("MISS", "HIT"), (first, second)
    return second


async def recover_without_stale_reads(proxy, user: str, version: int, poll) -> None:
    """Until the cache serves again (a HIT), every answer shows the write's data."""
    async def serving() -> bool:
        reply = await proxy.get(PROFILE, user)
        assert reply.status == 200 and reply.version == version, reply  # never the pre-write profile
        return reply.x_cache == "HIT"
    await poll(serving, "the cache serves hits again after Redis came back", attempts=200, interval=0.05)


async def test_redis_down_passes_through_and_recovers(make_proxy, backend, start_redis, poll):
    server = start_redis()
    proxy = await make_proxy(store=RedisStore.from_url(server.url))
    user = str(uuid.uuid4())
    warmed = await warm(proxy, user)
    before = await backend.route_count("GET", PROFILE)

    server.stop()
    down = await proxy.get(PROFILE, user)
    assert down.status == 200 and down.code == 200, down
    assert down.x_cache == "BYPASS" and "detail=store-unavailable" in down.cache_status, down
    assert down.version == warmed.version
    assert await backend.route_count("GET", PROFILE) - before == 1  # answered by the backend
    ready = await proxy.get("/readyz")
    assert ready.status == 200 and ready.json["ready"] is True, ready

    written = await proxy.request("PUT", PROFILE, user, json={"display_name": "Written While Down"})
    assert written.status == 200 and written.code == 200, written
    still_down = await proxy.get(PROFILE, user)
    assert still_down.x_cache == "BYPASS" and still_down.version == written.version, still_down
    assert (await proxy.get("/readyz")).status == 200

    server.start()  # same port, empty
    await recover_without_stale_reads(proxy, user, written.version, poll)
    assert sample(await proxy.metrics(), "katiba_cache_store_errors_total", op="lookup") >= 1


async def test_hung_redis_keeps_the_purge_pending_until_it_lands(make_proxy, backend, start_redis, poll):
    """A paused Redis keeps the old entry; the purge that could not land must still hide it."""
    server = start_redis()
    proxy = await make_proxy(store=RedisStore.from_url(server.url), store_timeout=0.1)
    user = str(uuid.uuid4())
    warmed = await warm(proxy, user)

    server.pause()
    try:
        written = await proxy.request("PUT", PROFILE, user, json={"display_name": "Written While Hung"})
        assert written.status == 200 and written.code == 200, written  # the write still succeeds
        assert written.version > warmed.version
        hung = await proxy.get(PROFILE, user)
        assert hung.status == 200 and hung.x_cache == "BYPASS" and hung.version == written.version, hung
        readyz = await proxy.get("/readyz")
        assert readyz.status == 200 and readyz.json["pending_purges"] >= 1, readyz
    finally:
        server.resume()
    await recover_without_stale_reads(proxy, user, written.version, poll)
    assert (await proxy.get("/readyz")).json["pending_purges"] == 0
    # the entry written before the pause is still in Redis: only the generation bump hides it
    assert server.admin.dbsize() > 0


async def test_metrics_count_requests_errors_and_purges_without_user_ids(make_proxy, backend, start_redis):
    server = start_redis()
    proxy = await make_proxy(store=RedisStore.from_url(server.url))
    user = str(uuid.uuid4())
    await warm(proxy, user)
    written = await proxy.request("PUT", PROFILE, user, json={"bio": "metrics"})
    assert written.status == 200
    assert (await proxy.get(PROFILE, user)).x_cache == "MISS"
    await proxy.get("/_standin/health")

    text = await proxy.metrics()
    assert sample(text, "katiba_cache_requests_total", rule="user_profile", result="miss") == 2
    assert sample(text, "katiba_cache_requests_total", rule="user_profile", result="hit") == 1
    assert sample(text, "katiba_cache_requests_total", rule="update_profile", result="bypass") == 1
    assert sample(text, "katiba_cache_requests_total", rule="none", result="bypass") == 1
    assert sample(text, "katiba_cache_purges_total", rule="update_profile") == 1
    assert sample(text, "katiba_cache_store_errors_total", op="lookup") == 0

    server.stop()
    down = await proxy.get(PROFILE, user)
    assert down.status == 200 and down.x_cache == "BYPASS", down
    text = await proxy.metrics()
    assert sample(text, "katiba_cache_store_errors_total", op="lookup") >= 1
    assert sample(text, "katiba_cache_requests_total", rule="user_profile", result="bypass") == 1
    assert user not in text and user[-12:] not in text  # labels are rule names and small enums only
