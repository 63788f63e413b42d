"""Purges that could not be applied, or may have been lost, never let old data be served:

* a purge that fails (Redis unreachable during the write) is kept and retried; after recovery the
  read is fresh;
* too many pending purges collapse into one global epoch bump;
* Redis restarted from a snapshot older than a purge, or a lagging replica promoted behind the same
  address: the proxy bumps the global epoch once (across instances) before serving from cache again;
* a process that left purges pending (its pending-purges file) makes the next one bump the epoch;
* a clean proxy restart bumps nothing and keeps the cache.
"""
from __future__ import annotations

import pytest

import proxy.serve.purger

from .conftest import PROFILE, new_user, sample, warm
from .faultproxy import FaultProxy


async def fresh_until_hit(proxy, user: str, version: int, poll) -> None:
    """Every answer shows ``version`` (never older) until the cache serves a HIT again."""
    async def hit() -> bool:
        reply = await proxy.get(PROFILE, user)
        assert reply.status == 200 and reply.version == version, reply
        return reply.x_cache == "HIT"
    await poll(hit, "the cache serves the fresh entry", attempts=400, interval=0.025)


async def epoch_bumps(proxy) -> float:
    return sample(await proxy.metrics(), "katiba_cache_epoch_bumps_total")


async def test_failed_purge_is_kept_and_retried(make_proxy, backend, start_redis, redis_store, poll):
    server = start_redis()
    fault = await FaultProxy.start("127.0.0.1", server.port)
    try:
        proxy = await make_proxy(store=redis_store(fault.url))
        user = new_user()
        warmed = await warm(proxy, user)

        fault.blackhole = True  # the write's purge times out
        written = await proxy.request("PUT", PROFILE, user, json={"display_name": "Purge Timed Out"})
        assert written.status == 200 and written.code == 200 and written.version > warmed.version, written
        text = await proxy.metrics()
        assert sample(text, "katiba_cache_purge_failures_total") == 1
        assert sample(text, "katiba_cache_pending_purges") >= 1

        fault.heal()
        await fresh_until_hit(proxy, user, written.version, poll)
        text = await proxy.metrics()
        assert sample(text, "katiba_cache_pending_purges") == 0
        assert sample(text, "katiba_cache_purges_total", rule="update_profile") == 1  # applied by the retry
        assert server.admin.dbsize() > 0  # the old entry is still stored: only the bump hides it
    finally:
        await fault.close()


async def test_too_many_pending_purges_become_one_epoch_bump(make_proxy, backend, start_redis, redis_store,
                                                             poll, monkeypatch):
    monkeypatch.setattr(proxy.serve.purger, "MAX_PENDING", 2)
    server = start_redis()
    fault = await FaultProxy.start("127.0.0.1", server.port)
    try:
        cache = await make_proxy(store=redis_store(fault.url))
        users = [new_user() for _ in range(3)]
        for user in users:
            await warm(cache, user)

        fault.blackhole = True
        written = {}
        for user in users:  # three users' namespaces: more than MAX_PENDING
            reply = await cache.request("PUT", PROFILE, user, json={"display_name": "Overflow"})
            assert reply.status == 200, reply
            written[user] = reply.version
        assert (await cache.get("/readyz")).json["pending_purges"] == 1  # just the epoch

        fault.heal()
        for user in users:
            await fresh_until_hit(cache, user, written[user], poll)
        assert await epoch_bumps(cache) == 1
    finally:
        await fault.close()


async def test_restart_from_an_older_snapshot_bumps_the_epoch_once(make_proxy, backend, start_redis,
                                                                   redis_store, poll):
    server = start_redis()
    first = await make_proxy(store=redis_store(server.url))
    second = await make_proxy(store=redis_store(server.url))  # another instance on the same Redis
    user = new_user()
    warmed = await warm(first, user)
    server.admin.save()  # the snapshot holds the entry and the generations it was stored under

    written = await first.request("PUT", PROFILE, user, json={"display_name": "After The Snapshot"})
    assert written.status == 200 and written.version > warmed.version, written
    await fresh_until_hit(first, user, written.version, poll)

    server.stop()
    server.start()  # reloads the snapshot: the purge is lost, the old entry matches its generations
    assert server.admin.dbsize() > 0
    await fresh_until_hit(first, user, written.version, poll)
    await fresh_until_hit(second, user, written.version, poll)
    assert await epoch_bumps(first) + await epoch_bumps(second) == 1  # once, whoever saw it first


async def test_promoted_replica_behind_the_same_address_bumps_the_epoch(make_proxy, backend, start_redis,
                                                                        redis_store, poll):
    primary, replica = start_redis(), start_redis()
    fault = await FaultProxy.start("127.0.0.1", primary.port)
    try:
        cache = await make_proxy(store=redis_store(fault.url))
        user = new_user()
        warmed = await warm(cache, user)

        replica.admin.replicaof("127.0.0.1", primary.port)

        async def in_sync() -> bool:
            return replica.admin.dbsize() == primary.admin.dbsize() and \
                replica.admin.info("replication").get("master_link_status") == "up"
        await poll(in_sync, "the replica caught up", attempts=500, interval=0.02)
        replica.admin.replicaof("no", "one")  # promoted now: it will never see the purge below

        written = await cache.request("PUT", PROFILE, user, json={"display_name": "Only On The Primary"})
        assert written.status == 200 and written.version > warmed.version, written

        fault.target = ("127.0.0.1", replica.port)  # failover behind the same address
        fault.cut()
        await fresh_until_hit(cache, user, written.version, poll)
        assert await epoch_bumps(cache) == 1
    finally:
        await fault.close()


async def test_pending_purges_left_by_the_previous_process_bump_the_epoch(make_proxy, backend, start_redis,
                                                                          redis_store, poll, tmp_path):
    server = start_redis()
    marker = tmp_path / "pending"
    old = await make_proxy(store=redis_store(server.url), pending_file=str(marker))
    user = new_user()
    warmed = await warm(old, user)

    server.pause()  # the purge cannot land, and still cannot when the process exits
    try:
        written = await old.request("PUT", PROFILE, user, json={"display_name": "Never Purged"})
        assert written.status == 200 and written.version > warmed.version, written
        assert marker.exists()
        await old.client.close()  # exits with the purge pending: the marker file stays
        assert marker.exists()
    finally:
        server.resume()

    new = await make_proxy(store=redis_store(server.url), pending_file=str(marker))
    await fresh_until_hit(new, user, written.version, poll)  # the old entry is in Redis, unpurged
    assert await epoch_bumps(new) == 1
    assert not marker.exists()


async def test_clean_restart_bumps_nothing_and_keeps_the_cache(make_proxy, backend, start_redis, redis_store,
                                                               tmp_path):
    server = start_redis()
    marker = tmp_path / "pending"
    old = await make_proxy(store=redis_store(server.url), pending_file=str(marker))
    user = new_user()
    await warm(old, user)
    await old.client.close()
    assert not marker.exists()

    new = await make_proxy(store=redis_store(server.url), pending_file=str(marker))
    reply = await new.get(PROFILE, user)
    assert reply.status == 200 and reply.x_cache == "HIT", reply  # the entry survived the restart
    assert await epoch_bumps(new) == 0


@pytest.mark.parametrize("listen, expected", [("0.0.0.0:8080", "katiba-cache-8080.pending"),
                                              ("127.0.0.1:0", None)])
def test_default_pending_file_is_named_after_the_port(listen, expected):
    from proxy.serve.config import pending_file_from
    path = pending_file_from({}, listen)
    assert (path and path.rsplit("/", 1)[-1]) == expected
    assert pending_file_from({"PENDING_PURGES_FILE": "off"}, listen) is None
