"""The in-process L1 ([7/7]): hits without a store round trip, invalidated across instances by the bump's
published message, flushed and unused whenever the invalidation channel may have missed one."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from .conftest import API, RULES_PATH, new_user

PROFILE = f"{API}/users/profile"
pytestmark = pytest.mark.parametrize("store_kind", ["redis"], indirect=True)


def l1_rules(tmp_path: Path) -> str:
    text = Path(RULES_PATH).read_text()
    old = 'key: "user:{user_id}:profile"\n'
    assert old in text
    path = tmp_path / "rules.yaml"
    path.write_text(text.replace(old, old + "    l1_ttl: 60\n", 1))
    return str(path)


async def until(predicate, what: str, attempts: int = 1000) -> None:
    for _ in range(attempts):
        if await predicate():
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"never happened: {what}")


async def subscribed(*proxies) -> None:
    async def ready() -> bool:
        return all(p.proxy.l1 is not None and p.proxy.l1.healthy for p in proxies)

    await until(ready, "L1 invalidation channel subscribed")


async def test_l1_hits_skip_the_store(make_proxy, redis_server, tmp_path):
    proxy = await make_proxy(rules_path=l1_rules(tmp_path))
    await subscribed(proxy)
    user = new_user()
    assert (await proxy.get(PROFILE, user)).x_cache == "MISS"
    assert (await proxy.get(PROFILE, user)).x_cache == "HIT"  # from Redis, now also in L1
    before = redis_server.command_count("mget")
    replies = [await proxy.get(PROFILE, user) for _ in range(5)]
    assert {r.x_cache for r in replies} == {"HIT"} and all("detail=l1" in r.cache_status for r in replies)
    assert redis_server.command_count("mget") == before  # no store round trip at all


async def test_a_purge_on_another_instance_reaches_this_l1(make_proxy, tmp_path):
    rules = l1_rules(tmp_path)
    first, second = await make_proxy(rules_path=rules), await make_proxy(rules_path=rules)
    await subscribed(first, second)
    user = new_user()
    for _ in range(3):
        await first.get(PROFILE, user)
    assert "detail=l1" in (await first.get(PROFILE, user)).cache_status
    write = await second.request("PUT", PROFILE, user, json={"display_name": "Elsewhere", "bio": ""})
    assert write.status == 200

    async def evicted() -> bool:
        return first.proxy.l1.invalidated >= 1

    await until(evicted, "the bump's message evicted the entry from the other instance's L1")
    reply = await first.get(PROFILE, user)  # well inside l1_ttl (60 s): only the message explains it
    assert reply.x_cache == "MISS" and reply.json["body"]["display_name"] == "Elsewhere"


async def test_own_purge_evicts_before_the_answer(make_proxy, tmp_path):
    proxy = await make_proxy(rules_path=l1_rules(tmp_path))
    await subscribed(proxy)
    user = new_user()
    for _ in range(3):
        await proxy.get(PROFILE, user)
    assert (await proxy.request("PUT", PROFILE, user, json={"display_name": "Mine", "bio": ""})).status == 200
    reply = await proxy.get(PROFILE, user)  # no waiting: this instance forgot before answering the write
    assert reply.x_cache == "MISS" and reply.json["body"]["display_name"] == "Mine"


async def test_a_lost_channel_flushes_l1_until_resubscribed(make_proxy, redis_server, tmp_path):
    proxy = await make_proxy(rules_path=l1_rules(tmp_path))
    await subscribed(proxy)
    user = new_user()
    for _ in range(3):
        await proxy.get(PROFILE, user)
    assert len(proxy.proxy.l1) == 1
    redis_server.admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")

    async def flushed() -> bool:
        return len(proxy.proxy.l1) == 0

    await until(flushed, "L1 flushed after the invalidation channel dropped")
    await subscribed(proxy)  # it comes back by itself
    before = redis_server.command_count("mget")
    reply = await proxy.get(PROFILE, user)
    assert reply.x_cache == "HIT" and "detail=l1" not in reply.cache_status
    assert redis_server.command_count("mget") == before + 1  # asked the store: L1 started empty


async def test_l1_metrics_count_lookups_budget_evictions_and_invalidations(make_proxy, tmp_path):
    """An operator sizes L1_MAX_BYTES from ``katiba_cache_l1_*``: what L1 holds, how often it answers,
    and why entries left it."""
    rules = l1_rules(tmp_path)
    proxy, other = await make_proxy(rules_path=rules), await make_proxy(rules_path=rules)
    await subscribed(proxy, other)
    l1 = proxy.proxy.l1
    users = [new_user() for _ in range(10)]
    for user in users[:1]:
        assert (await proxy.get(PROFILE, user)).x_cache == "MISS"
        assert (await proxy.get(PROFILE, user)).x_cache == "HIT"  # from Redis, now in L1
    one = l1.bytes
    l1.max_bytes = 8 * one + one // 2  # room for 8 such entries (an entry over 1/8 of it is never kept)
    for user in users[1:]:
        await proxy.get(PROFILE, user)
        await proxy.get(PROFILE, user)
    assert await proxy.metric("katiba_cache_l1_entries") == 8
    assert await proxy.metric("katiba_cache_l1_bytes") == l1.bytes <= l1.max_bytes
    assert await proxy.metric("katiba_cache_l1_evictions_total", reason="budget") == 2  # the two oldest
    # each user's MISS, then its HIT from Redis
    assert await proxy.metric("katiba_cache_l1_lookups_total", result="miss") == 20
    assert await proxy.metric("katiba_cache_l1_lookups_total", result="hit") == 0

    assert "detail=l1" in (await proxy.get(PROFILE, users[-1])).cache_status
    evicted = await proxy.get(PROFILE, users[0])
    assert evicted.x_cache == "HIT" and "detail=l1" not in evicted.cache_status  # back from Redis
    assert await proxy.metric("katiba_cache_l1_lookups_total", result="hit") == 1
    assert await proxy.metric("katiba_cache_l1_lookups_total", result="miss") == 21
    assert await proxy.metric("katiba_cache_l1_evictions_total", reason="budget") == 3

    write = await other.request("PUT", PROFILE, users[-1], json={"display_name": "Elsewhere", "bio": ""})
    assert write.status == 200

    async def evicted_by_message() -> bool:
        return await proxy.metric("katiba_cache_l1_evictions_total", reason="invalidated") == 1

    await until(evicted_by_message, "the other instance's purge counted as an invalidation")
    assert await proxy.metric("katiba_cache_l1_entries") == 7
