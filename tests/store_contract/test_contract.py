"""The store contract (``proxy.store.base.Store``), run against every backend.

Each test runs once per backend: ``memory`` (with a fake clock), ``redis`` (a private redis-server
from ``tests/conftest.py``, flushed per test) and ``cluster`` (a local six-node Redis Cluster,
``tests/cluster/harness.py``). Costs are asserted as command counts, never durations.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from proxy.core.entry import Entry, decode_entry
from proxy.core.errors import StoreUnavailable
from proxy.store import MemoryStore, open_store
from proxy.store.cluster import RedisClusterStore
from proxy.store.redis import RedisStore

PREFIX = "katiba360:proxy:test"
GEN_TTL = 86_400
ENTRY_TTL = 3_600


class FakeClock:
    def __init__(self, now: float = 1_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def gen(ns: str) -> str:
    return f"{PREFIX}:gen:{ns}"


def entry_key(ns: str, name: str) -> str:
    return f"{PREFIX}:{ns}:{name}"


def encode(body: bytes, tokens) -> bytes:
    return Entry(status=200, headers=(("content-type", "application/json"),), body=body,
                 stored_at=1_700_000_000.0, generations=tuple(tokens), fingerprint="fp", etag="").encode()


def recorded(raw: bytes | None) -> tuple[str, ...]:
    entry = decode_entry(raw)
    assert entry is not None
    return entry.generations


@pytest.fixture(params=["memory", "redis", "cluster"])
async def store(request):
    if request.param == "memory":
        s = MemoryStore(clock=FakeClock())
    elif request.param == "cluster":
        # untagged keys (gen("global")) are global keys there; no background refresh between counts.
        # A generous timeout: dozens of connections opened at once on a loaded 2-core CI box (six cluster
        # nodes on it) must not read as a store failure; the failure tests set their own.
        s = RedisClusterStore.from_url(request.getfixturevalue("cluster_url"), global_refresh=3600, timeout=2.0)
    else:
        s = RedisStore.from_url(request.getfixturevalue("redis_url"), timeout=2.0)
    try:
        yield s
    finally:
        await s.close()


NOT_STORE_COMMANDS = frozenset({"info", "cluster|nodes", "cluster|slots", "cluster|shards", "ping", "hello",
                                "client|setinfo", "client|setname", "readonly", "command|docs", "select",
                                "replconf"})  # replicas acknowledge replication once a second


@pytest.fixture
def commands(store, request):
    """``commands()`` → a Counter of store commands executed so far (subtract two to get a cost)."""
    if store.name == "memory":
        return lambda: Counter({"commands": store.commands})
    server = request.getfixturevalue("redis_cluster" if store.name == "redis-cluster" else "redis_server")

    def snapshot() -> Counter:
        # our own INFO calls (made by the snapshot itself), the harness' and the cluster client's topology
        # reads (redis-py refreshes its slot map when it likes) and connection set-up are not store commands
        return Counter({k: v for k, v in server.command_counts().items() if k not in NOT_STORE_COMMANDS})

    return snapshot


@pytest.fixture
def admin(store, request):
    """A sync client of the store's Redis (str responses), for TTL checks."""
    if store.name == "redis-cluster":
        client = request.getfixturevalue("redis_cluster").admin()
        yield client
        client.close()
    else:
        yield request.getfixturevalue("redis_server").admin if store.name == "redis" else None


def delta(before: Counter, after: Counter) -> dict:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


async def fill(store, ns_gens: list[str], keys: list[str], body: bytes = b"{}") -> list[str]:
    """Store one entry per key under ``ns_gens`` the way the proxy does; returns the tokens used."""
    tokens = await store.ensure_generations(ns_gens, GEN_TTL)
    value = encode(body, tokens)
    for start in range(0, len(keys), 32):  # fewer at once than the pool's 64 connections
        results = await asyncio.gather(*(
            store.store_if_current(k, value, ENTRY_TTL, ns_gens, tokens, GEN_TTL)
            for k in keys[start:start + 32]))
        assert all(results)
    return tokens


# -- lookup, ensure, store ---------------------------------------------------------------------------

async def test_miss_then_store_then_hit(store):
    key, gens = entry_key("user:{42}", "profile"), [gen("user:{42}"), gen("global")]

    raw, tokens = await store.lookup(key, gens)
    assert raw is None and tokens == [None, None]

    current = await store.ensure_generations(gens, GEN_TTL)
    assert len(current) == 2 and all(isinstance(t, str) and t for t in current)
    assert current[0] != current[1]

    value = encode(b'{"name": "Amina"}', current)
    assert await store.store_if_current(key, value, ENTRY_TTL, gens, current, GEN_TTL) is True

    raw, tokens = await store.lookup(key, gens)
    assert raw == value and isinstance(raw, bytes)
    assert tokens == current and all(isinstance(t, str) for t in tokens)
    assert list(recorded(raw)) == tokens


async def test_lookup_without_generations(store):
    key = entry_key("exact", "one")
    assert await store.lookup(key, []) == (None, [])


async def test_ensure_generations_creates_once(store):
    gens = [gen("user:{1}"), gen("achievements:{1}")]
    first = await store.ensure_generations(gens, GEN_TTL)
    again = await store.ensure_generations(gens, GEN_TTL)
    assert again == first
    assert (await store.lookup(entry_key("user:{1}", "x"), gens))[1] == first

    # a new namespace next to existing ones keeps the existing tokens
    more = await store.ensure_generations([gens[0], gen("user:{2}")], GEN_TTL)
    assert more[0] == first[0] and more[1] not in first


async def test_store_refused_when_generation_bumped_after_read(store):
    """The fill guard: a fetch that started before a purge must not be stored after it."""
    key, gens = entry_key("user:{7}", "profile"), [gen("user:{7}")]
    before_fetch = await store.ensure_generations(gens, GEN_TTL)

    await store.bump(gens, GEN_TTL)  # a write lands while the origin fetch is in flight

    stale = encode(b'{"version": 1}', before_fetch)
    assert await store.store_if_current(key, stale, ENTRY_TTL, gens, before_fetch, GEN_TTL) is False
    raw, tokens = await store.lookup(key, gens)
    assert raw is None
    assert tokens[0] is not None and tokens[0] != before_fetch[0]


async def test_store_refused_when_only_one_of_several_generations_moved(store):
    key = entry_key("user:{7}", "achievements")
    gens = [gen("user:{7}"), gen("achievements:{7}")]
    before_fetch = await store.ensure_generations(gens, GEN_TTL)
    await store.bump([gens[1]], GEN_TTL)
    value = encode(b"[]", before_fetch)
    assert await store.store_if_current(key, value, ENTRY_TTL, gens, before_fetch, GEN_TTL) is False
    assert (await store.lookup(key, gens))[0] is None


async def test_store_refused_when_generation_missing(store):
    key, gens = entry_key("user:{8}", "profile"), [gen("user:{8}")]
    invented = ["0123456789abcdef"]
    assert await store.store_if_current(key, encode(b"{}", invented), ENTRY_TTL, gens, invented,
                                        GEN_TTL) is False
    raw, tokens = await store.lookup(key, gens)
    assert raw is None and tokens == [None]


async def test_bump_makes_recorded_tokens_differ(store):
    key, gens = entry_key("user:{9}", "profile"), [gen("user:{9}"), gen("global")]
    tokens = await fill(store, gens, [key])

    await store.bump([gens[0]], GEN_TTL)

    raw, now = await store.lookup(key, gens)
    assert raw is not None  # a purge deletes nothing: the entry becomes unreachable, then expires
    assert now[0] != recorded(raw)[0] and now[0] is not None
    assert now[1] == recorded(raw)[1] == tokens[1]  # the other namespace is untouched

    # the purged namespace's new token is what the next fill reads and records
    assert (await store.ensure_generations(gens, GEN_TTL)) == now


async def test_bump_of_missing_namespace(store):
    """A namespace without a generation holds no entry that could match (an entry records the token it
    was stored under, so that generation existed then; gone now, no new random token equals it). So the
    memory store creates nothing for such a purge: a flood of writes naming unknown users must not fill
    its budget. Redis sets it (bounded by maxmemory); either way what the next fill reads is current."""
    gens = [gen("user:{10}")]
    await store.bump(gens, GEN_TTL)
    (token,) = (await store.lookup(entry_key("user:{10}", "x"), gens))[1]
    if store.name == "memory":
        assert token is None and (await store.stats())["generations"] == 0
        token = (await store.ensure_generations(gens, GEN_TTL))[0]
    assert token is not None
    assert await store.ensure_generations(gens, GEN_TTL) == [token]


async def test_a_purge_after_the_generation_went_never_validates_an_old_entry(store, admin):
    """The generation of a filled namespace is gone (expired here; evicted alike), then a write purges
    it: the old entry never matches again, neither before nor after the next fill creates it anew."""
    key, gens = entry_key("user:{10b}", "profile"), [gen("user:{10b}")]
    tokens = await store.ensure_generations(gens, GEN_TTL)
    assert await store.store_if_current(key, encode(b"{}", tokens), ENTRY_TTL, gens, tokens, 10)
    if store.name == "memory":
        store.clock.advance(11)  # the generation expires, the entry (ENTRY_TTL) does not
    else:
        admin.delete(gens[0])
    await store.bump(gens, GEN_TTL)
    raw, now = await store.lookup(key, gens)
    assert raw is not None and recorded(raw) == tuple(tokens)
    assert now != tokens
    assert await store.ensure_generations(gens, GEN_TTL) != tokens


# -- TTLs ------------------------------------------------------------------------------------------

async def test_generations_live_for_their_ttl(store, admin):
    gens = [gen("user:{11}")]
    key = entry_key("user:{11}", "profile")
    if store.name == "memory":
        tokens = await store.ensure_generations(gens, 100)
        store.clock.advance(99)
        assert (await store.lookup(key, gens))[1] == tokens
        await fill(store, gens, [key])  # store_if_current refreshes the generation's TTL to gen_ttl
        store.clock.advance(99)
        assert (await store.lookup(key, gens))[1] == tokens
        store.clock.advance(GEN_TTL)
        assert (await store.lookup(key, gens))[1] == [None]
    else:
        tokens = await store.ensure_generations(gens, 100)
        assert 90 <= admin.ttl(gens[0]) <= 100
        await fill(store, gens, [key])
        assert GEN_TTL - 10 <= admin.ttl(gens[0]) <= GEN_TTL
        await store.bump(gens, 200)
        assert 190 <= admin.ttl(gens[0]) <= 200
        assert (await store.lookup(key, gens))[1] != tokens


async def test_entries_expire_by_ttl(store, admin):
    gens = [gen("user:{12}")]
    key = entry_key("user:{12}", "profile")
    tokens = await store.ensure_generations(gens, GEN_TTL)
    value = encode(b"{}", tokens)
    if store.name == "memory":
        assert await store.store_if_current(key, value, 10, gens, tokens, GEN_TTL)
        store.clock.advance(9.5)
        assert (await store.lookup(key, gens))[0] == value
        store.clock.advance(1)
        raw, now = await store.lookup(key, gens)
        assert raw is None and now == tokens  # the generation outlives the entry
    else:
        assert await store.store_if_current(key, value, 1, gens, tokens, GEN_TTL)
        assert 0 < admin.pttl(key) <= 1000
        assert admin.ttl(gens[0]) > 1000
        deadline = time.monotonic() + 10  # a bounded poll, not a duration assertion
        while (await store.lookup(key, gens))[0] is not None:
            assert time.monotonic() < deadline, "entry with ttl=1 still present after 10 s"
            await asyncio.sleep(0.05)
        assert (await store.lookup(key, gens))[1] == tokens


# -- leases ----------------------------------------------------------------------------------------

async def test_leases(store, admin):
    lease = f"{PREFIX}:lease:user:{{13}}:profile"
    assert await store.acquire_lease(lease, "owner-a", 5_000) is True
    assert await store.acquire_lease(lease, "owner-b", 5_000) is False

    await store.release_lease(lease, "owner-b")  # not the owner: nothing happens
    assert await store.acquire_lease(lease, "owner-b", 5_000) is False

    await store.release_lease(lease, "owner-a")
    assert await store.acquire_lease(lease, "owner-b", 5_000) is True
    await store.release_lease(lease, "owner-a")  # released by someone who no longer holds it
    assert await store.acquire_lease(lease, "owner-c", 5_000) is False

    if admin is not None:
        assert 0 < admin.pttl(lease) <= 5_000


async def test_store_if_current_drops_the_fill_lease(store, commands):
    """With ``lease``, the guarded write also drops the fill's lease (its owner only), whatever the
    outcome, in the same round trip: a miss is MGET, SET NX PX, one script."""
    gens = [gen("user:{17}"), gen("global")]
    key = entry_key("user:{17}", "profile")
    lease = key + "|lease"  # what the proxy uses: the entry's slot
    tokens = await fill(store, gens, [entry_key("user:{17}", "warm-up")])  # scripts loaded, generations made
    await store.lookup(key, gens)  # the hit path's connection is up, as after the lookup of a miss
    assert await store.acquire_lease(lease, "fill-1", 5_000)  # the lease command's path is set up too
    await store.release_lease(lease, "fill-1")
    await store.store_if_current(entry_key("user:{17}", "w2"), encode(b"{}", tokens), ENTRY_TTL, gens, tokens,
                                 GEN_TTL, (lease, "nobody"))  # loads the lease-dropping script

    assert await store.acquire_lease(lease, "fill-1", 5_000)
    before = commands()
    assert await store.store_if_current(key, encode(b"{}", tokens), ENTRY_TTL, gens, tokens, GEN_TTL,
                                        (lease, "fill-1")) is True
    cost = delta(before, commands())
    assert await store.acquire_lease(lease, "fill-2", 5_000)  # it was dropped
    if store.name == "memory":
        assert cost == {"commands": 1}
    elif store.name == "redis":  # one round trip; inside the script: the lease's GET and DEL, then the guard
        assert cost == {"evalsha": 1, "get": 3, "del": 1, "set": 1, "expire": 2}
    else:  # the untagged global generation is compared in process (see test_fill_and_purge_costs)
        assert cost == {"evalsha": 1, "get": 2, "del": 1, "set": 1, "expire": 1}

    # refused by the guard (a purge moved a generation): the lease is dropped all the same
    await store.bump(gens[:1], GEN_TTL)
    assert await store.store_if_current(key, encode(b"{}", tokens), ENTRY_TTL, gens, tokens, GEN_TTL,
                                        (lease, "fill-2")) is False
    assert await store.acquire_lease(lease, "fill-3", 5_000)

    # a lease another fill holds (ours expired and was taken again) is left alone
    current = await store.ensure_generations(gens, GEN_TTL)
    assert await store.store_if_current(key, encode(b"{}", current), ENTRY_TTL, gens, current, GEN_TTL,
                                        (lease, "fill-2")) is True
    assert await store.acquire_lease(lease, "fill-4", 5_000) is False
    assert recorded((await store.lookup(key, gens))[0]) == tuple(current)


async def test_lease_expires(store):
    lease = f"{PREFIX}:lease:x"
    assert await store.acquire_lease(lease, "a", 50)
    if store.name == "memory":
        store.clock.advance(0.051)
    else:
        deadline = time.monotonic() + 10
        while not await store.acquire_lease(lease, "b", 50):
            assert time.monotonic() < deadline, "50 ms lease still held after 10 s"
            await asyncio.sleep(0.02)
        return
    assert await store.acquire_lease(lease, "b", 50)


# -- costs -----------------------------------------------------------------------------------------

async def test_purge_cost_independent_of_entry_count(store, commands):
    ns = "achievements:global"
    gens = [gen(ns)]
    await store.bump([gen("warm-up")], GEN_TTL)  # loads the bump script, so both bumps below cost alike

    costs, purged = [], []
    for count, first in ((1_000, 0), (20_000, 1_000)):
        keys = [entry_key(ns, f"leaderboard:{i}") for i in range(first, first + count)]
        await fill(store, gens, keys)
        before = commands()
        await store.bump(gens, GEN_TTL)
        costs.append(delta(before, commands()))
        purged.append(keys)

    assert costs[0] == costs[1]
    # Redis counts the commands a script runs too: one round trip, one SET for the one namespace, and
    # one PUBLISH that tells every instance's L1 (same script, so no bump goes unannounced)
    assert costs[0] == ({"commands": 1} if store.name == "memory" else {"evalsha": 1, "set": 1, "publish": 1})

    for keys in purged:
        for key in (keys[0], keys[len(keys) // 2], keys[-1]):
            raw, tokens = await store.lookup(key, gens)
            assert raw is not None
            assert tuple(tokens) != recorded(raw)


async def test_lookup_is_one_round_trip(store, commands):
    gens = [gen("user:{14}"), gen("achievements:{14}"), gen("global")]
    key = entry_key("user:{14}", "profile")
    await fill(store, gens, [key])
    await store.ping()  # the connection is open and set up before counting

    before = commands()
    raw, tokens = await store.lookup(key, gens)
    cost = delta(before, commands())

    assert raw is not None and list(tokens) == list(recorded(raw))
    assert cost == ({"commands": 1} if store.name == "memory" else {"mget": 1})


async def test_fill_and_purge_costs(store, commands):
    gens = [gen("user:{15}"), gen("global")]
    key = entry_key("user:{15}", "profile")
    await fill(store, [gen("warm-up")], [entry_key("warm", "up")])  # loads the scripts
    await store.bump([gen("warm-up")], GEN_TTL)
    memory = store.name == "memory"

    # Cluster: gen("global") is untagged, a global key in its own slot (the epoch's role), cached in
    # process; it costs a script of its own when created or bumped, and nothing when read.
    cluster = store.name == "redis-cluster"

    def cost(scripts: int = 1, **inside_script: int) -> dict:
        """One round trip per script; on Redis, commandstats also counts the commands a script ran."""
        return {"commands": 1} if memory else {"evalsha": scripts, **inside_script} if scripts else {}

    before = commands()
    tokens = await store.ensure_generations(gens, GEN_TTL)
    assert delta(before, commands()) == cost(2 if cluster else 1, get=2, set=2)  # both created

    before = commands()
    assert await store.ensure_generations(gens, GEN_TTL) == tokens
    assert delta(before, commands()) == (cost(get=1) if cluster else cost(get=2))

    before = commands()
    assert await store.store_if_current(key, encode(b"{}", tokens), ENTRY_TTL, gens, tokens, GEN_TTL)
    assert delta(before, commands()) == (cost(get=1, set=1, expire=1) if cluster else cost(get=2, set=1, expire=2))

    before = commands()
    await store.bump(gens, GEN_TTL)  # two namespaces, still one round trip (one per slot on a cluster)
    assert delta(before, commands()) == cost(2 if cluster else 1, set=2, publish=2 if cluster else 1)

    before = commands()
    assert not await store.store_if_current(key, encode(b"{}", tokens), ENTRY_TTL, gens, tokens, GEN_TTL)
    # refused at the first moved generation (on a cluster: the cached global token, no round trip)
    assert delta(before, commands()) == (cost(0) if cluster else cost(get=1))


# -- stats, ping -----------------------------------------------------------------------------------

async def test_stats_and_ping(store):
    await fill(store, [gen("user:{16}")], [entry_key("user:{16}", f"e{i}") for i in range(5)])
    await store.ping()
    stats = await store.stats()
    assert stats["entries"] >= 5
    assert stats["bytes"] > 0
    assert stats["evictions"] == 0
    if store.name == "redis":
        assert stats["entries"] == 6  # five entries and one generation
        assert "maxmemory" in stats and isinstance(stats["maxmemory_policy"], str)


# -- Redis specifics -------------------------------------------------------------------------------

def test_open_store_urls(redis_url):
    assert isinstance(open_store(None), MemoryStore)
    assert isinstance(open_store(redis_url, timeout=0.5, memory_max_bytes=1 << 20), RedisStore)
    assert isinstance(RedisStore.from_url("rediss://127.0.0.1:1/0"), RedisStore)  # lazy: no connection
    for url in ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", "rediss+cluster://127.0.0.1:7000"):
        assert isinstance(open_store(url), RedisClusterStore)  # lazy: no connection
        with pytest.raises(ValueError, match="open_store"):
            RedisStore.from_url(url)
    with pytest.raises(ValueError):
        RedisStore.from_url("http://127.0.0.1:1")


async def test_pipelined_fill_commands_survive_a_script_flush(redis_server):
    """Lease and scripts ride the hit path's pipelined connection once it is up; a server that lost its
    script cache (restart, SCRIPT FLUSH) answers NOSCRIPT once, and the script is sent whole (EVAL)."""
    store = RedisStore.from_url(redis_server.url)
    try:
        gens, key = [gen("user:{18}")], entry_key("user:{18}", "profile")
        await store.lookup(key, gens)  # the pipelined connection is up
        redis_server.admin.script_flush()
        redis_server.reset_stats()
        tokens = await store.ensure_generations(gens, GEN_TTL)
        assert await store.acquire_lease(key + "|lease", "fill-1", 5_000)
        assert await store.store_if_current(key, encode(b"{}", tokens), ENTRY_TTL, gens, tokens, GEN_TTL,
                                            (key + "|lease", "fill-1"))
        counts = redis_server.command_counts()
        assert counts.get("evalsha") == 2 and counts.get("eval") == 2  # NOSCRIPT once per script, then EVAL
        assert "script|load" not in counts  # not redis-py's pool: it would have loaded them
        assert await store.acquire_lease(key + "|lease", "fill-2", 5_000)  # dropped by the store script
        assert recorded((await store.lookup(key, gens))[0]) == tuple(tokens)
    finally:
        await store.close()


async def test_dead_server_is_store_unavailable(start_redis):
    server = start_redis()
    store = RedisStore.from_url(server.url, timeout=0.25)
    try:
        await store.ping()  # a pooled connection exists, then the server dies under it
        server.stop()
        calls = [lambda: store.lookup(entry_key("user:{1}", "p"), [gen("user:{1}")]),
                 lambda: store.ensure_generations([gen("user:{1}")], GEN_TTL),
                 lambda: store.store_if_current("k", b"v", 1, [gen("a")], ["t"], GEN_TTL),
                 lambda: store.bump([gen("a")], GEN_TTL),
                 lambda: store.acquire_lease("l", "o", 100),
                 lambda: store.release_lease("l", "o"),
                 store.stats,
                 store.ping]
        for call in calls:
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(call(), timeout=10)  # a hang guard, not a duration assertion

        # the next store on the dead address fails the same way on connect
        fresh = RedisStore.from_url(server.url)
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(fresh.lookup("k", []), timeout=10)
        await fresh.close()
    finally:
        await store.close()


async def test_hung_server_is_store_unavailable(start_redis):
    server = start_redis()
    store = RedisStore.from_url(server.url, timeout=0.25)
    try:
        await store.ping()
        server.pause()  # SIGSTOP: the socket stays open but nothing answers
        try:
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.lookup("k", [gen("a")]), timeout=10)
        finally:
            server.resume()
        await store.ping()  # and it recovers once the server answers again
    finally:
        await store.close()


async def test_survives_a_restart(redis_server, redis_url):
    store = RedisStore.from_url(redis_url)
    try:
        gens = [gen("user:{17}")]
        key = entry_key("user:{17}", "profile")
        tokens = await fill(store, gens, [key])
        redis_server.stop()
        redis_server.start()  # same port, empty: data loss turns hits into misses, never into wrong hits
        assert await store.lookup(key, gens) == (None, [None])
        fresh = await store.ensure_generations(gens, GEN_TTL)  # scripts are reloaded transparently
        assert fresh != tokens
    finally:
        await store.close()


async def test_lookup_or_lease_leases_only_an_entry_still_as_the_caller_saw_it(redis_url):
    """The waiting fill's poll: the lease only if the entry is still absent (``unusable`` None) or still
    the bytes it found unusable; an entry stored meanwhile comes back instead, and no lease is taken.
    (The race it closes: a holder storing and releasing between a poll's lookup and its lease.)"""
    store = RedisStore.from_url(redis_url)
    gens = [gen("user:{31}")]
    key, lease = entry_key("user:{31}", "profile"), entry_key("user:{31}", "profile") + "|lease"
    try:
        tokens = await store.ensure_generations(gens, GEN_TTL)
        assert await store.lookup_or_lease(key, gens, lease, "a", 1000, None) == (None, tokens, True)
        assert await store.lookup_or_lease(key, gens, lease, "b", 1000, None) == (None, tokens, False)  # held
        await store.release_lease(lease, "a")

        old = b"an entry found unusable"
        assert await store.store_if_current(key, old, 60, gens, tokens, GEN_TTL)
        assert await store.lookup_or_lease(key, gens, lease, "c", 1000, None) == (old, tokens, False)  # stored
        assert await store.lookup_or_lease(key, gens, lease, "c", 1000, old) == (old, tokens, True)  # unchanged
        assert await store.store_if_current(key, b"stored by c", 60, gens, tokens, GEN_TTL, (lease, "c"))
        assert await store.lookup_or_lease(key, gens, lease, "d", 1000, old) == (b"stored by c", tokens, False)
        assert not await store.client.exists(lease)
    finally:
        await store.close()
