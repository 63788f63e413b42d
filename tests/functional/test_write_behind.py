"""A miss is answered before its store write lands (write-behind, ``GuardedStore.write_behind``).

The store here is a real MemoryStore whose guarded writes wait for the test to let them through, so the
window between the answer and the write is as long as the test wants. While a write is in flight, the
instance that sent it serves the entry (judged against the generations its lookup reads, like any
entry); another instance on the same store does not see it until it lands; a purge in the window makes
the store refuse the write and the entry is never served again."""
from __future__ import annotations

import asyncio

import pytest

from proxy.core.metrics import Metrics
from proxy.store.guard import GuardedStore
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore

from .conftest import API, mint, new_user

PROFILE = f"{API}/users/profile"


@pytest.fixture
def store_kind() -> str:
    """Each test brings its own store: run each once."""
    return "held-writes"


class HeldWrites(MemoryStore):
    """A MemoryStore whose ``store_if_current`` waits until ``let_through`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.let_through = asyncio.Event()
        self.waiting = 0

    async def store_if_current(self, *args, **kwargs):
        self.waiting += 1
        await self.let_through.wait()
        return await super().store_if_current(*args, **kwargs)


async def stored(proxy, outcome: str) -> float:
    return await proxy.metric("katiba_cache_stores_total", rule="user_profile", outcome=outcome)


async def test_the_answer_leaves_before_the_write_and_this_instance_hits_meanwhile(make_proxy, backend):
    store = HeldWrites()
    proxy, other = await make_proxy(store=store), await make_proxy(store=store)
    user = new_user()

    first = await proxy.get(PROFILE, user)
    assert first.status == 200 and first.x_cache == "MISS" and "stored" in first.cache_status, first
    assert store.waiting == 1 and await stored(proxy, "stored") == 0  # answered; the write still held

    meanwhile = await proxy.get(PROFILE, user)
    assert meanwhile.x_cache == "HIT" and meanwhile.body == first.body, meanwhile
    assert (await other.get(PROFILE, user)).x_cache == "MISS"  # not in the store yet: the other instance fetches

    store.let_through.set()
    await proxy.writes_landed()
    await other.writes_landed()
    assert await stored(proxy, "stored") == 1
    later = await other.get(PROFILE, user)
    assert later.x_cache == "HIT" and later.json["body"] == first.json["body"], later  # from the store
    assert await backend.route_count("GET", PROFILE) == 2  # the first fill and the other instance's


async def test_a_purge_while_the_write_is_in_flight_is_never_undone(make_proxy, backend):
    store = HeldWrites()
    proxy = await make_proxy(store=store)
    user = new_user()
    first = await proxy.get(PROFILE, user)
    assert first.x_cache == "MISS" and store.waiting == 1

    written = await proxy.request("PUT", PROFILE, user, json={"display_name": "Written in the window"})
    assert written.status == 200 and written.version > first.version
    after = await proxy.get(PROFILE, user)  # the held entry's generation is no longer the current one
    assert after.x_cache == "MISS" and after.json["body"]["display_name"] == "Written in the window", after

    store.let_through.set()
    await proxy.writes_landed()
    assert await stored(proxy, "generation-changed") == 1  # the first write, refused by the fill guard
    assert await stored(proxy, "stored") == 1  # the refetch's
    again = await proxy.get(PROFILE, user)
    assert again.x_cache == "HIT" and again.version >= written.version, again


class SlowLookups(HeldWrites):
    """Writes held as above, and lookups that read at once but answer only when ``answer`` is set: a
    lookup sent before a write lands whose answer is read after it (as when they ride different
    connections)."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = asyncio.Event()
        self.read = 0

    async def lookup(self, key, gen_keys):
        found = await super().lookup(key, gen_keys)
        self.read += 1
        await self.answer.wait()
        return found


async def test_a_lookup_answered_after_the_write_landed_still_sees_the_entry():
    inner = SlowLookups()
    store = GuardedStore(inner, Metrics())
    key, gens = "katiba360:proxy:user:{u1}:profile", ["katiba360:proxy:gen:user:{u1}"]
    tokens = await store.ensure_generations(gens, 3600)
    written = store.write_behind(key, b"the entry", 60, gens, tokens, 3600)
    lookup = asyncio.ensure_future(store.lookup(key, gens))
    while inner.waiting == 0 or inner.read == 0:
        await asyncio.sleep(0)  # until the write is held and the lookup has read the store (nothing yet)
    inner.let_through.set()
    await written  # the write lands, then leaves the in-process table
    await asyncio.sleep(0)  # (its done callbacks run)
    assert store.writing == {}
    inner.answer.set()
    assert await lookup == (b"the entry", tokens)


class HeldRedisWrites(RedisStore):
    """The real RedisStore, its guarded writes held until ``let_through`` is set."""

    let_through: asyncio.Event

    async def store_if_current(self, *args, **kwargs):
        await self.let_through.wait()
        return await super().store_if_current(*args, **kwargs)


async def test_a_lease_taken_for_an_entry_being_written_here_is_given_back(make_proxy, redis_server, poll):
    store = HeldRedisWrites.from_url(redis_server.url)
    store.let_through = asyncio.Event()
    proxy = await make_proxy(store=store)
    user = new_user()
    try:
        assert (await proxy.get(PROFILE, user)).x_cache == "MISS"  # its write (and its lease's release) held
        lease_key = f"{proxy.proxy.rules.prefix}:user:{{{user}}}:profile|lease"
        redis_server.admin.delete(lease_key)  # as if that fill's lease had expired
        redis_server.reset_stats()
        # bytes never seen: the lookup takes the lease (the entry is absent from Redis) and then finds
        # the entry being written here: a HIT, and the lease it took is given back, not left to expire
        hit = await proxy.get(PROFILE, token=mint(user, ttl=7200))
        assert hit.x_cache == "HIT", hit

        async def given_back() -> bool:
            return redis_server.command_counts().get("del", 0) == 1 and not redis_server.admin.exists(lease_key)
        await poll(given_back, "the lease released by the request that took it")
    finally:
        store.let_through.set()
        await proxy.writes_landed()
