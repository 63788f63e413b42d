"""Clients cannot make the proxy hold unbounded memory: not through one connection, not through the
memory store's generations.

A client that pipelines requests and never reads its answers must be stopped by back-pressure: the
proxy stops reading its socket once a bounded amount is buffered (its own framing buffer, aiohttp's
parser and request queue, the answers waiting to be written), so the client's sends block. The bound
is asserted in bytes the client managed to hand over, never in time: with the fast path on and off.

The memory store counts the generations of namespaces in its byte budget (``MEMORY_MAX_BYTES``) and
evicts them like entries, least recently used first; a purge of a namespace without a generation
creates none (a write naming a user nobody has read holds nothing to purge). An evicted generation
reads as "changed": the entries it guarded are never served again.
"""
from __future__ import annotations

import asyncio

import pytest

from proxy.store.memory import MemoryStore
from tests.functional.conftest import API, mint, new_user

PROFILE = f"{API}/users/profile"
AWARD = f"{API}/achievements/award"
SEND_AT_MOST = 200 << 20  # the attack: 200 MB of pipelined requests
STALLED_AFTER = 2.0  # a send blocked this long: the proxy has stopped reading (a loop bound, not an assert)
# Kernel socket buffers on loopback (a few MB each way), the fast path's 256 KiB buffer, aiohttp's queue
# of 32 parsed requests and the write buffer's high-water mark: far under this. Unbounded: 200 MB.
BOUND = 32 << 20


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "full-path"])
async def test_a_client_that_never_reads_cannot_make_the_proxy_buffer_without_bound(make_proxy, backend, poll,
                                                                                     fast_path):
    proxy = await make_proxy(fast_path=fast_path)
    user = new_user()
    request = (f"GET {PROFILE} HTTP/1.1\r\nHost: proxy.test\r\n"
               f"Authorization: Bearer {mint(user)}\r\n\r\n").encode()
    # The cold GET's fill is held at the backend: while it is in flight the fast path stops pumping.
    await backend.control("POST", "gate", json={"method": "GET", "path": PROFILE, "count": 1})
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(request)
        await poll(lambda: _waiting(backend), "the cold fill is held at the backend")
        chunk = request * ((64 << 10) // len(request))
        sent, released = len(request), False
        while sent < SEND_AT_MOST:
            writer.write(chunk)
            try:
                await asyncio.wait_for(writer.drain(), STALLED_AFTER)
            except asyncio.TimeoutError:
                if released:
                    break  # the proxy stopped reading: back-pressure holds
                # Stalled while the miss is in flight: now let it finish, which hands the backlog on.
                await backend.control("POST", "gate/release")
                released = True
                continue
            sent += len(chunk)
        assert released, "the proxy never stopped reading while the fill was held"
        assert sent < BOUND, f"the proxy read {sent >> 20} MB from a client that never reads"
    finally:
        writer.transport.abort()
        await backend.control("POST", "gate/release")


async def _waiting(backend) -> bool:
    return (await backend.control("GET", "gate"))["waiting"] >= 1


@pytest.mark.parametrize("store_kind", ["memory"])  # the memory store's own budget (Redis: maxmemory)
async def test_writes_naming_unknown_users_create_no_generations(make_proxy):
    store = MemoryStore()
    proxy = await make_proxy(store=store)
    caller = new_user()
    assert (await proxy.get(PROFILE, caller)).status == 200
    before = (await store.stats())["generations"]
    for _ in range(200):  # each purges three namespaces of a user nobody has read (the attack: 24,000)
        reply = await proxy.request("POST", AWARD, caller, json={"user_id": new_user(), "badge_type": "gold"})
        assert reply.status == 200, reply
    await proxy.writes_landed()
    assert (await store.stats())["generations"] == before


@pytest.mark.parametrize("store_kind", ["memory"])
async def test_generations_count_in_the_memory_budget_and_an_evicted_one_reads_as_changed(make_proxy, backend):
    store = MemoryStore(max_bytes=16 << 10)  # a dozen profile entries
    proxy = await make_proxy(store=store)
    victim = new_user()
    await backend.seed(victim)
    first = await proxy.get(PROFILE, victim)
    assert first.x_cache == "MISS" and (await proxy.get(PROFILE, victim)).x_cache == "HIT"
    for _ in range(400):  # 400 users' namespaces through a 16 KiB budget
        assert (await proxy.get(PROFILE, new_user())).status == 200
    stats = await store.stats()
    gen_key_bytes = len(f"{proxy.proxy.rules.prefix}:gen:user:{{{victim}}}")
    assert store.bytes <= store.max_bytes
    assert stats["generations"] * gen_key_bytes <= store.max_bytes, stats  # each costs at least its key
    # The victim's namespace went with the rest: their write purges nothing there, and their next read
    # is a miss with the new data, never the old entry.
    changed = await proxy.request("PUT", PROFILE, victim, json={"display_name": "Changed", "bio": "new"})
    assert changed.status == 200, changed
    await proxy.writes_landed()
    after = await proxy.get(PROFILE, victim)
    assert after.x_cache == "MISS" and after.json["body"]["display_name"] == "Changed", after
    assert after.version > first.version
