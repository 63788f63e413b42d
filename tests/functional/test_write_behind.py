"""A miss is answered before its store write lands (write-behind, ``GuardedStore.write_behind``).

The store here is a real MemoryStore whose guarded writes wait for the test to let them through, so the
window between the answer and the write is as long as the test wants. While a write is in flight, the
instance that sent it serves the entry (judged against the generations its lookup reads, like any
entry); another instance on the same store does not see it until it lands; a purge in the window makes
the store refuse the write and the entry is never served again."""
from __future__ import annotations

import asyncio

import pytest

from proxy.store.memory import MemoryStore

from .conftest import API, new_user

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
