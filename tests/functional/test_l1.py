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


def lapse(proxy) -> list[float]:
    """Drive ``proxy``'s L1 clock by hand: ``now[0] += 61`` takes every copy past ``l1_ttl`` (60 s)."""
    l1 = proxy.proxy.l1
    now = [l1.clock()]
    l1.clock = lambda: now[0]
    return now


@pytest.fixture
def decodes(monkeypatch):
    """Stored entries decoded from bytes, counted. ``memo.set_budget(0)`` once the proxy is built (which sets
    the memo budget) turns the decoded-entry memo off, so that only L1 can spare a decoding."""
    from proxy.core import entry as entry_module, memo

    monkeypatch.setattr(memo, "_budget", [memo.budget()])  # restored after the test
    calls = [0]
    decode = entry_module._decode

    def counted(raw, version):
        calls[0] += 1
        return decode(raw, version)

    monkeypatch.setattr(entry_module, "_decode", counted)
    return calls


def entry_key(redis_server, user: str) -> str:
    """The Redis key of ``user``'s one stored entry (the others under their id are generations)."""
    [key] = [k for k in redis_server.admin.keys(f"*{user}*") if ":gen:" not in k]
    return key


async def in_l1(proxy, user: str) -> None:
    assert (await proxy.get(PROFILE, user)).x_cache == "MISS"
    assert (await proxy.get(PROFILE, user)).x_cache == "HIT"  # from Redis, now also in L1
    assert "detail=l1" in (await proxy.get(PROFILE, user)).cache_status


async def test_an_unchanged_copy_past_l1_ttl_is_renewed_without_decoding_it_again(make_proxy, redis_server,
                                                                                   tmp_path, decodes):
    """Past ``l1_ttl`` L1 asks the store again, as it must; when the store still holds the very bytes L1's copy
    came from, under the same generations, that copy is renewed: no decoding, no new head to render."""
    from proxy.core import memo

    proxy = await make_proxy(rules_path=l1_rules(tmp_path))
    memo.set_budget(0)
    await subscribed(proxy)
    now = lapse(proxy)
    user = new_user()
    await in_l1(proxy, user)
    key = entry_key(redis_server, user)
    held, mgets, decoded = proxy.proxy.l1.get(key)[0], redis_server.command_count("mget"), decodes[0]
    now[0] += 61
    reply = await proxy.get(PROFILE, user)
    assert reply.x_cache == "HIT" and "detail=l1" not in reply.cache_status
    assert redis_server.command_count("mget") == mgets + 1  # the store was asked
    assert decodes[0] == decoded  # and its answer was the copy L1 holds
    assert await proxy.metric("katiba_cache_l1_renewals_total") == 1
    assert await proxy.metric("katiba_cache_l1_evictions_total", reason="expired") == 0
    again = await proxy.get(PROFILE, user)
    assert "detail=l1" in again.cache_status and again.body == reply.body
    assert redis_server.command_count("mget") == mgets + 1
    assert proxy.proxy.l1.get(key)[0] is held


async def test_a_copy_past_l1_ttl_whose_purge_message_was_lost_is_not_renewed(make_proxy, redis_server, backend,
                                                                              tmp_path):
    """A purge whose message never reached this instance (the bump alone, nothing published) is seen at the
    latest ``l1_ttl`` later: renewal checks the generations, and the answer comes from the backend."""
    proxy = await make_proxy(rules_path=l1_rules(tmp_path))
    await subscribed(proxy)
    now = lapse(proxy)
    user = new_user()
    await in_l1(proxy, user)
    assert (await backend.call("PUT", PROFILE, user, {"display_name": "Changed", "bio": ""})).status == 200
    generations = [k for k in redis_server.admin.keys(f"*{user}*") if ":gen:" in k]
    assert len(generations) == 2  # the user's namespace and the profile's
    for generation in generations:
        redis_server.admin.set(generation, "bumped-without-a-message", keepttl=True)
    assert "detail=l1" in (await proxy.get(PROFILE, user)).cache_status  # inside l1_ttl: the bound allows it
    now[0] += 61
    reply = await proxy.get(PROFILE, user)
    assert reply.x_cache == "MISS" and reply.json["body"]["display_name"] == "Changed"
    assert await proxy.metric("katiba_cache_l1_renewals_total") == 0


async def test_a_copy_past_l1_ttl_whose_stored_entry_was_replaced_is_not_renewed(make_proxy, redis_server,
                                                                                 tmp_path):
    """The store's entry replaced under the same generations (as another instance's staleness auditor does):
    past ``l1_ttl`` the store's new copy is served, not L1's old one."""
    from dataclasses import replace

    import redis

    from proxy.core.entry import decode_entry

    proxy = await make_proxy(rules_path=l1_rules(tmp_path))
    await subscribed(proxy)
    now = lapse(proxy)
    user = new_user()
    await in_l1(proxy, user)
    key = entry_key(redis_server, user)
    raw_client = redis.Redis(port=redis_server.port)  # the admin client decodes replies as text
    entry = decode_entry(raw_client.get(key))
    body = entry.body.replace(b'"version"', b'"versioN"')
    assert body != entry.body
    raw_client.set(key, replace(entry, body=body).encode(), keepttl=True)
    raw_client.close()
    now[0] += 61
    reply = await proxy.get(PROFILE, user)
    assert reply.x_cache == "HIT" and reply.body == body
    assert await proxy.metric("katiba_cache_l1_renewals_total") == 0
