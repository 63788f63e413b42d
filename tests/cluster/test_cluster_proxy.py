"""The proxy on a real six-node Redis Cluster: hits and purges for users whose keys live on different
primaries, global entries, one hit = one ``MGET`` on one node, where keys are stored (one slot per user,
one for the global namespace), and a ``purge --all`` done through another instance reaching this one
(the cached epoch, refreshed every second); ``cache-proxy purge`` / ``stats`` with a cluster URL."""
from __future__ import annotations

import asyncio
import json
import re

import pytest

from proxy.core.errors import LookupRedirected
from proxy.store.cluster import RedisClusterStore, parse_cluster_url
from tests.cluster.conftest import PREFIX, profile_key, users_on_distinct_primaries

API = "/api/v1"
LEADERBOARD = f"{API}/achievements/leaderboard?limit=10&offset=0"
# the harness' own topology reads and INFO calls are not the proxy's
# The harness' own commands, and REPLCONF: a replica acknowledges its offset to its primary every second.
NOT_THE_PROXYS = ("info", "cluster|nodes", "config|resetstat", "replconf")


def data_commands(cluster) -> dict[int, dict[str, int]]:
    """Per primary port: commands run since the last reset, the harness' own left out."""
    primaries = set(cluster.primaries())
    out = {}
    for node in cluster.running():
        if node.port in primaries:
            counts = {k: v for k, v in node.command_counts().items() if k not in NOT_THE_PROXYS}
            if counts:
                out[node.port] = counts
    return out


async def test_hits_and_purges_on_three_primaries(proxy, backend, redis_cluster):
    users = users_on_distinct_primaries(redis_cluster, 3)
    for user in users:
        await backend.seed(user)
        first = await proxy.get(f"{API}/users/profile", user)
        again = await proxy.get(f"{API}/users/profile", user)
        assert (first.x_cache, again.x_cache) == ("MISS", "HIT"), (first, again)
        assert again.json == first.json
    board = await proxy.get(LEADERBOARD, users[0])
    assert board.x_cache == "MISS" and (await proxy.get(LEADERBOARD, users[1])).x_cache == "HIT"

    # a profile write by the first user purges only that user's entries, on that user's primary
    written = await proxy.request("PUT", f"{API}/users/profile", users[0], json={"display_name": "New Name"})
    assert written.status == 200, written
    fresh = await proxy.get(f"{API}/users/profile", users[0])
    assert fresh.x_cache == "MISS" and fresh.version >= written.version
    assert fresh.json["body"]["display_name"] == "New Name"
    for user in users[1:]:
        assert (await proxy.get(f"{API}/users/profile", user)).x_cache == "HIT"
    assert (await proxy.get(LEADERBOARD, users[2])).x_cache == "HIT"

    # an achievement write purges the writer's namespaces and the global one: three slots in one bump
    created = await proxy.request("POST", f"{API}/achievements", users[1], json={"badge_type": "gold"})
    assert created.status == 200, created
    board = await proxy.get(LEADERBOARD, users[2])
    assert board.x_cache == "MISS" and board.version >= created.version
    assert (await proxy.get(f"{API}/users/profile", users[2])).x_cache == "HIT"

    # the manual global invalidation (admin) shows the human pattern and purges the braced namespace
    reply = await proxy.request("POST", f"{API}/achievements/cache/invalidate/global",
                                headers={"Authorization": f"Bearer {proxy.admin_token}"}, json={})
    assert reply.status == 200 and reply.json["body"]["invalidated"] == ["achievements:global:*"], reply
    assert (await proxy.get(LEADERBOARD, users[0])).x_cache == "MISS"


async def test_each_user_and_the_global_namespace_live_in_one_slot(proxy, backend, redis_cluster):
    users = users_on_distinct_primaries(redis_cluster, 2)
    for user in users:
        for path in ("/users/profile", "/users/stats", "/achievements", "/achievements/summary"):
            assert (await proxy.get(API + path, user)).status == 200
    assert (await proxy.get(LEADERBOARD, users[0])).status == 200
    assert (await proxy.get(f"{API}/achievements/types", users[0])).status == 200

    stored: dict[int, list[str]] = {}
    for node in redis_cluster.running():
        if node.port in redis_cluster.primaries():
            stored[node.port] = node.admin.keys(f"{PREFIX}:*")
    for user in users:
        holders = {port for port, keys in stored.items() for k in keys if "{" + user + "}" in k}
        keys = [k for ks in stored.values() for k in ks if "{" + user + "}" in k]
        assert len(holders) == 1, holders
        assert {redis_cluster.primary_of(k) for k in keys} == holders
        # entries of user: and achievements:, their generations and leases: one hash tag
        assert {re.search(r"\{([^}]*)\}", k).group(1) for k in keys} == {user}
        assert any(":gen:user:{" in k for k in keys) and any(":gen:achievements:{" in k for k in keys)
    global_keys = [k for ks in stored.values() for k in ks if "achievements:global" in k]
    assert global_keys and all("{achievements:global}" in k for k in global_keys), global_keys
    assert len({redis_cluster.primary_of(k) for k in global_keys}) == 1


async def test_a_hit_is_one_mget_on_one_node(make_proxy, backend, redis_cluster, cluster_url, cluster_store):
    # no background epoch refresh and no store probe while commands are counted
    proxy = await make_proxy(store=cluster_store(cluster_url, global_refresh=3600), store_check_interval=3600)
    user = users_on_distinct_primaries(redis_cluster, 1)[0]
    assert (await proxy.get(f"{API}/users/profile", user)).x_cache == "MISS"
    assert (await proxy.get(f"{API}/users/profile", user)).x_cache == "HIT"  # every connection is open
    await proxy.writes_landed()

    redis_cluster.reset_stats()
    hit = await proxy.get(f"{API}/users/profile", user)
    assert hit.x_cache == "HIT"
    assert data_commands(redis_cluster) == {redis_cluster.primary_of(profile_key(user)): {"mget": 1}}

    redis_cluster.reset_stats()
    assert (await proxy.get(LEADERBOARD, user)).x_cache == "MISS"
    assert (await proxy.get(LEADERBOARD, user)).x_cache == "HIT"
    await proxy.writes_landed()
    # the miss: lookup, lease, store (scripts run their own GET/SET/EXPIRE), all on the global tag's node
    counts = data_commands(redis_cluster)
    assert list(counts) == [redis_cluster.primary_of(f"{PREFIX}:{{achievements:global}}:leaderboard")], counts
    assert counts[next(iter(counts))]["mget"] == 2


async def test_a_hit_is_answered_from_the_pipelined_mget_without_an_awaited_lookup(make_proxy, backend,
                                                                                 redis_cluster, cluster_url,
                                                                                 cluster_store):
    """The fast path chains its answer on the node pipeline's MGET future (``lookup_future``), as with
    one Redis: the awaited ``lookup`` is for the first contact with a node and for redirections."""
    proxy = await make_proxy(store=cluster_store(cluster_url, global_refresh=3600), store_check_interval=3600)
    user = users_on_distinct_primaries(redis_cluster, 1)[0]
    assert (await proxy.get(f"{API}/users/profile", user)).x_cache == "MISS"
    guarded = proxy.proxy.store
    awaited, futures = [], []
    lookup, lookup_future = guarded.lookup, guarded.lookup_future

    def counted_lookup(key, gen_keys):
        awaited.append(key)
        return lookup(key, gen_keys)

    def counted_future(key, gen_keys, *lease):
        begun = lookup_future(key, gen_keys, *lease)
        if begun is not None:
            futures.append(key)
        return begun

    guarded.lookup, guarded.lookup_future = counted_lookup, counted_future
    replies = [await proxy.get(f"{API}/users/profile", user) for _ in range(5)]
    assert [r.x_cache for r in replies] == ["HIT"] * 5
    assert len({r.body for r in replies}) == 1
    assert len(futures) == 5 and awaited == []


async def test_global_tokens_aged_while_the_mget_was_in_flight_send_the_lookup_to_be_read_again(
        redis_cluster, cluster_url, cluster_store):
    """The pipelined lookup places the cached global tokens when its MGET is answered, not when it is
    sent; if they aged out of their cache meanwhile (the background refresh failing), the hit path is
    told to look up again (``LookupRedirected``), and the awaited lookup reads them from Redis."""
    store = cluster_store(cluster_url, global_refresh=3600)
    try:
        key, gen_keys = f"{PREFIX}:user:{{aged}}:profile", (f"{PREFIX}:user:{{aged}}", f"{PREFIX}:epoch")
        tokens = await store.ensure_generations(gen_keys, 600)
        assert await store.store_if_current(key, b"the entry", 600, gen_keys, tokens, 600)
        assert await store.lookup(key, gen_keys) == (b"the entry", tokens)  # routes, checks, caches

        looked = store.lookup_future(key, gen_keys)
        assert looked is not None
        await asyncio.wait([looked])
        assert store.lookup_outcome(looked, key, gen_keys) == (b"the entry", tokens)

        looked = store.lookup_future(key, gen_keys)
        await asyncio.wait([looked])
        store.globals.refresh = 0  # every cached token is now older than three refresh periods
        with pytest.raises(LookupRedirected):
            store.lookup_outcome(looked, key, gen_keys)
        assert await store.lookup(key, gen_keys) == (b"the entry", tokens)  # read from Redis
    finally:
        await store.close()


async def test_purge_all_through_another_instance_reaches_this_one(make_proxy, backend, redis_cluster, poll):
    here, there = await make_proxy(), await make_proxy()
    user = users_on_distinct_primaries(redis_cluster, 1)[0]
    await backend.seed(user)
    assert (await here.get(f"{API}/users/profile", user)).x_cache == "MISS"
    assert (await here.get(f"{API}/users/profile", user)).x_cache == "HIT"
    assert (await there.get(f"{API}/users/profile", user)).x_cache == "HIT"  # one shared store

    reply = await there.request("POST", "/_cache/purge", json={"all": True},
                                headers={"Authorization": f"Bearer {there.admin_token}"})
    assert reply.status == 200 and reply.json == {"purged": "*", "applied": True}, reply
    assert (await there.get(f"{API}/users/profile", user)).x_cache == "MISS"  # at once where it was done

    async def purged_here() -> bool:  # the other instance's cached epoch is refreshed every second
        return (await here.get(f"{API}/users/profile", user)).x_cache != "HIT"

    await poll(purged_here, "the epoch bump reached the other instance", attempts=300, interval=0.02)
    assert isinstance(here.store, RedisClusterStore) and here.store.global_refresh == 1.0


async def test_readyz_and_stats_name_the_cluster_store(proxy, backend, redis_cluster):
    ready = await proxy.get("/readyz")
    assert ready.status == 200 and ready.json["store"] == "redis-cluster", ready
    user = users_on_distinct_primaries(redis_cluster, 1)[0]
    assert (await proxy.get(f"{API}/users/profile", user)).status == 200
    stats = await proxy.get("/_cache/stats", headers={"Authorization": f"Bearer {proxy.admin_token}"})
    assert stats.status == 200, stats
    store = stats.json["store"]
    assert store["name"] == "redis-cluster" and store["primaries"] == 3 and store["entries"] >= 1, store


async def test_the_cli_purges_and_reports_on_a_cluster(proxy, backend, redis_cluster, cluster_url, capsys):
    from proxy.ops.cli import main

    user = users_on_distinct_primaries(redis_cluster, 1)[0]
    await proxy.get(f"{API}/users/profile", user)
    await proxy.get(LEADERBOARD, user)
    assert (await proxy.get(f"{API}/users/profile", user)).x_cache == "HIT"
    assert (await proxy.get(LEADERBOARD, user)).x_cache == "HIT"

    assert await asyncio.to_thread(main, ["purge", f"user:{{{user}}}:*", "--redis", cluster_url]) == 0
    assert (await proxy.get(f"{API}/users/profile", user)).x_cache == "MISS"
    assert (await proxy.get(LEADERBOARD, user)).x_cache == "HIT"
    assert await asyncio.to_thread(main, ["purge", "achievements:global:*", "--redis", cluster_url]) == 0
    assert (await proxy.get(LEADERBOARD, user)).x_cache == "MISS"  # the braced namespace was bumped

    assert capsys.readouterr().out.splitlines() == [f"purged user:{{{user}}}:*", "purged achievements:global:*"]
    assert await asyncio.to_thread(main, ["stats", "--redis", cluster_url, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)["store"]
    assert stats["name"] == "redis-cluster" and stats["entries"] >= 4 and stats["primaries"] == 3, stats


def test_cluster_urls():
    assert parse_cluster_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7001") == {
        "seeds": [("10.0.0.1", 7000), ("10.0.0.2", 7001)], "ssl": False, "username": None, "password": None,
        "params": {}}
    assert parse_cluster_url("rediss+cluster://app:p%40ss@redis-0:6380/0?ssl_ca_certs=/ca.pem") == {
        "seeds": [("redis-0", 6380)], "ssl": True, "username": "app", "password": "p@ss",
        "params": {"ssl_ca_certs": "/ca.pem"}}
    assert parse_cluster_url("rediss+cluster://h:1,g:2?ssl_cert_reqs=none")["seeds"] == [("h", 1), ("g", 2)]
    assert parse_cluster_url("redis+cluster://:secret@h")["password"] == "secret"
    assert parse_cluster_url("redis+cluster://h")["seeds"] == [("h", 6379)]
    with pytest.raises(ValueError, match="database 0"):
        parse_cluster_url("redis+cluster://h:7000/2")
    with pytest.raises(ValueError):
        parse_cluster_url("redis+cluster://:7000")
