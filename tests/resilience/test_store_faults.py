"""Redis slow or down: down at start, killed mid-load, restarted empty, hung (SIGSTOP), paused with
``CLIENT PAUSE``, slowed or black-holed through a TCP fault proxy, a cut connection. In every case
requests are answered (200, from the backend while the store is out), ``/readyz`` stays ready, the
breaker opens so requests stop asking the store (counted lookups stop growing) and closes again, and
the cache serves again once the store is back. Also the breaker itself, with a hand-moved clock."""
from __future__ import annotations

import asyncio
import logging

from proxy.store.guard import CLOSED, HALF_OPEN, OPEN, CircuitBreaker

from .conftest import PROFILE, new_user, sample, warm
from .faultproxy import FaultProxy


async def until_hit(proxy, user: str, poll, path: str = PROFILE, version: int | None = None) -> None:
    """Poll until the cache serves a HIT again; every answer on the way is a 200 (with ``version``)."""
    async def hit() -> bool:
        reply = await proxy.get(path, user)
        assert reply.status == 200 and reply.code == 200, reply
        if version is not None:
            assert reply.version == version, reply
        return reply.x_cache == "HIT"
    await poll(hit, "the cache serves hits again", attempts=400, interval=0.025)


async def circuit(proxy) -> str:
    reply = await proxy.get("/readyz")
    assert reply.status == 200 and reply.json["ready"] is True, reply  # a store outage is not an outage
    return reply.json["circuit"]


async def until_circuit(proxy, state: str, poll) -> None:
    async def reached() -> bool:
        return await circuit(proxy) == state
    await poll(reached, f"the store circuit is {state}", attempts=400, interval=0.025)


async def test_redis_down_at_start_serves_from_the_backend(make_proxy, backend, start_redis, redis_store, poll):
    server = start_redis()
    server.stop()
    store = redis_store(server.url)
    proxy = await make_proxy(store=store)
    user = new_user()

    ready = await proxy.get("/readyz")
    assert ready.status == 200 and ready.json["store_usable"] is False, ready
    replies = [await proxy.get(PROFILE, user) for _ in range(3)]
    assert all(r.status == 200 and r.x_cache == "BYPASS" and "store-unavailable" in r.cache_status
               for r in replies), replies
    assert await backend.route_count("GET", PROFILE) == 3
    assert store.lookups == 0  # known down from the start: no request waited on it
    assert sample(await proxy.metrics(), "katiba_cache_store_usable") == 0

    server.start()
    await until_hit(proxy, user, poll)
    assert (await proxy.get("/readyz")).json["store_usable"] is True
    assert sample(await proxy.metrics(), "katiba_cache_store_usable") == 1


async def test_redis_killed_mid_load_every_request_answered(make_proxy, backend, start_redis, redis_store, poll):
    server = start_redis()
    proxy = await make_proxy(store=redis_store(server.url))
    users = [new_user() for _ in range(8)]
    for user in users:
        await warm(proxy, user)
    finished = 0

    async def one(i: int):
        nonlocal finished
        reply = await proxy.get(PROFILE, users[i % len(users)])
        finished += 1
        return reply

    first = [asyncio.create_task(one(i)) for i in range(200)]

    async def some_done() -> bool:
        return finished >= 40
    await poll(some_done, "40 requests answered before the kill")
    server.stop()
    second = [asyncio.create_task(one(i)) for i in range(100)]
    replies = await asyncio.gather(*first, *second)

    assert {r.status for r in replies} == {200}, [r for r in replies if r.status != 200][:3]
    assert {r.code for r in replies} == {200}
    kinds = {r.x_cache for r in replies}
    assert "HIT" in kinds and "BYPASS" in kinds, kinds  # served from cache before, by the backend after
    assert (await proxy.get("/readyz")).status == 200


async def test_redis_restarted_empty_reads_are_fresh(make_proxy, backend, start_redis, redis_store, poll):
    server = start_redis()
    proxy = await make_proxy(store=redis_store(server.url))
    user = new_user()
    warmed = await warm(proxy, user)

    server.stop()
    written = await proxy.request("PUT", PROFILE, user, json={"display_name": "While Redis Was Down"})
    assert written.status == 200 and written.code == 200 and written.version > warmed.version, written
    assert (await proxy.get("/readyz")).json["pending_purges"] >= 1

    server.start()  # same port, empty dataset
    await until_hit(proxy, user, poll, version=written.version)
    text = await proxy.metrics()
    assert sample(text, "katiba_cache_pending_purges") == 0
    assert sample(text, "katiba_cache_epoch_bumps_total") == 0  # nothing survived: nothing to invalidate


async def test_hung_redis_opens_the_breaker_and_requests_stop_asking(make_proxy, backend, start_redis,
                                                                     redis_store, poll, caplog):
    caplog.set_level(logging.INFO, logger="proxy")
    server = start_redis()
    store = redis_store(server.url)
    proxy = await make_proxy(store=store)
    user = new_user()
    await warm(proxy, user)

    server.pause()  # SIGSTOP: connections stay open, nothing answers
    try:
        first = await proxy.get(PROFILE, user)
        assert first.status == 200 and first.x_cache == "BYPASS", first
        asked = store.lookups
        await until_circuit(proxy, "open", poll)  # the store watcher's probes keep failing
        replies = [await proxy.get(PROFILE, user) for _ in range(20)]
        assert all(r.status == 200 and r.x_cache == "BYPASS" for r in replies), replies
        assert store.lookups == asked  # not asked once more: requests go straight to the backend
        assert sample(await proxy.metrics(), "katiba_cache_circuit_state") == OPEN
    finally:
        server.resume()
    await until_hit(proxy, user, poll)
    assert await circuit(proxy) == "closed"
    assert sample(await proxy.metrics(), "katiba_cache_circuit_state") == CLOSED
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("store_circuit_open") == 1 and events.count("store_circuit_closed") == 1, events
    assert "store_down" in events and "store_up" in events


async def test_client_pause_is_ridden_out(make_proxy, backend, start_redis, redis_store, poll):
    server = start_redis()
    proxy = await make_proxy(store=redis_store(server.url))
    user = new_user()
    await warm(proxy, user)

    server.admin.execute_command("CLIENT", "PAUSE", "2000", "ALL")  # every client's commands wait 2 s
    paused = await proxy.get(PROFILE, user)
    assert paused.status == 200 and paused.x_cache == "BYPASS", paused
    await until_hit(proxy, user, poll)  # the pause ends by itself; the cache comes back


async def test_network_delay_above_the_store_timeout(make_proxy, backend, start_redis, redis_store, poll):
    server = start_redis()
    fault = await FaultProxy.start("127.0.0.1", server.port)
    try:
        store = redis_store(fault.url, timeout=0.1)  # STORE_TIMEOUT=100 ms
        proxy = await make_proxy(store=store)
        user = new_user()
        await warm(proxy, user)

        fault.delay = 1.0  # every packet to and from Redis takes a second
        slow = await proxy.get(PROFILE, user)
        assert slow.status == 200 and slow.x_cache == "BYPASS", slow
        asked = store.lookups
        await until_circuit(proxy, "open", poll)
        replies = [await proxy.get(PROFILE, user) for _ in range(10)]
        assert all(r.status == 200 and r.x_cache == "BYPASS" for r in replies), replies
        assert store.lookups == asked

        fault.heal()
        await until_hit(proxy, user, poll)
        assert await circuit(proxy) == "closed"
    finally:
        await fault.close()


async def test_black_holed_network_then_healed(make_proxy, backend, start_redis, redis_store, poll):
    server = start_redis()
    fault = await FaultProxy.start("127.0.0.1", server.port)
    try:
        store = redis_store(fault.url)
        proxy = await make_proxy(store=store)
        user = new_user()
        warmed = await warm(proxy, user)

        fault.blackhole = True
        written = await proxy.request("PUT", PROFILE, user, json={"display_name": "Into The Black Hole"})
        assert written.status == 200 and written.version > warmed.version, written
        replies = [await proxy.get(PROFILE, user) for _ in range(5)]
        assert all(r.status == 200 and r.version == written.version for r in replies), replies
        await until_circuit(proxy, "open", poll)

        fault.heal()
        await until_hit(proxy, user, poll, version=written.version)
    finally:
        await fault.close()


async def test_cut_connection_to_the_same_server_bumps_nothing(make_proxy, backend, start_redis,
                                                              redis_store, poll):
    server = start_redis()
    fault = await FaultProxy.start("127.0.0.1", server.port)
    try:
        proxy = await make_proxy(store=redis_store(fault.url))
        user = new_user()
        await warm(proxy, user)
        connections = fault.connections
        fault.cut()  # a network break: every connection reset
        await until_hit(proxy, user, poll)  # reconnected and verified: the entry is still good
        assert fault.connections > connections
        assert sample(await proxy.metrics(), "katiba_cache_epoch_bumps_total") == 0
    finally:
        await fault.close()


def test_breaker_opens_half_opens_and_closes(caplog):
    caplog.set_level(logging.INFO, logger="proxy")
    now = [0.0]
    breaker = CircuitBreaker(failures_to_open=3, reset_after=2.0, clock=lambda: now[0])
    for _ in range(2):
        assert breaker.allow()
        breaker.failed()
    assert breaker.state == CLOSED
    breaker.failed()
    assert breaker.state == OPEN and not breaker.allow()  # open: nobody waits on the store
    now[0] += 2.0
    assert breaker.allow() and breaker.state == HALF_OPEN  # one probe
    assert not breaker.allow()  # only one
    breaker.failed()
    assert breaker.state == OPEN and not breaker.allow()  # the probe failed: open again
    now[0] += 2.0
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == CLOSED and breaker.allow()
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("store_circuit_open") == 1 and events.count("store_circuit_closed") == 1, events
