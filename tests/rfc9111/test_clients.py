"""What clients of HTTP-cached entries get (issue [8/8], "For clients"): a strong ETag that is the same on
every instance and after restarts when the origin gave none, If-None-Match / If-Modified-Since answered
with 304 from the cache (RFC 9110 §13), HEAD from GET entries, Range passed through; RFC 9211
Cache-Status; coalesced misses; the opt-in itself and the memory budget. Both stores."""
from __future__ import annotations

import asyncio

from proxy.serve.httpentries import LABEL
from proxy.store.memory import MemoryStore
from tests.functional.conftest import auth, new_user
from tests.rfc9111.conftest import Resp

P = "/r/client"
FRESH = {"Cache-Control": "max-age=600"}


async def test_http_cache_is_opt_in(make_proxy, make_cache):
    cache = await make_cache()
    cache.origin.script(P, Resp(headers=FRESH))
    shipped = await make_proxy(upstream_url=cache.origin.url)  # the shipped rules.yaml: enabled: false
    for _ in range(2):
        reply = await shipped.get(P)
        assert (reply.x_cache, reply.cache_status) == ("BYPASS", "katiba-cache; fwd=bypass; detail=no-rule")
    assert cache.origin.count(P) == 2


async def test_strong_content_hash_etag_same_on_every_instance_and_after_restarts(make_cache):
    first = await make_cache()
    first.origin.script(P, Resp(headers=FRESH, body=b"same bytes"))
    other = await make_cache(origin=first.origin)  # another instance with its own store
    tag = (await first.get(P)).headers["ETag"]
    assert tag.startswith('"') and (await first.get(P)).x_cache == "HIT"
    assert (await other.get(P)).headers["ETag"] == tag
    restarted = await make_cache(origin=first.origin)  # a new process: nothing in memory
    assert (await restarted.get(P)).headers["ETag"] == tag
    first.origin.script(P, Resp(headers=FRESH, body=b"other bytes"))
    assert (await (await make_cache(origin=first.origin)).get(P)).headers["ETag"] != tag


async def test_origin_etag_is_kept(cache):
    cache.origin.script(P, Resp(headers={**FRESH, "ETag": 'W/"origin"'}))
    assert {(await cache.get(P)).headers["ETag"] for _ in range(2)} == {'W/"origin"'}


async def test_if_none_match_is_answered_with_304_from_the_cache(cache):
    cache.origin.script(P, Resp(headers=FRESH))
    etag = (await cache.get(P)).headers["ETag"]
    for value in (etag, f'"nope", {etag}', "*", "W/" + etag):
        reply = await cache.get(P, {"If-None-Match": value})
        assert (reply.status, reply.body, reply.headers["ETag"], reply.x_cache) == (304, b"", etag, "HIT")
    assert (await cache.get(P, {"If-None-Match": '"nope"'})).status == 200
    assert cache.origin.count(P) == 1


async def test_if_modified_since_is_answered_with_304_from_the_cache(cache):
    modified = cache.origin.date(-3600)
    cache.origin.script(P, Resp(headers={**FRESH, "Last-Modified": modified}))
    await cache.get(P)
    assert (await cache.get(P, {"If-Modified-Since": modified})).status == 304
    assert (await cache.get(P, {"If-Modified-Since": cache.origin.date(-7200)})).status == 200
    assert cache.origin.count(P) == 1


async def test_a_miss_forwards_the_clients_validators(cache):
    cache.origin.script(P, Resp(headers={"ETag": '"e"'}), Resp(304, {"ETag": '"e"'}, b""))
    await cache.get(P)  # not stored: no freshness information
    reply = await cache.get(P, {"If-None-Match": '"e"'})
    assert reply.status == 304 and cache.origin.seen(P)[-1].headers["If-None-Match"] == '"e"'


async def test_head_is_answered_from_the_get_entry(cache):
    cache.origin.script(P, Resp(headers=FRESH, body=b"twelve bytes"))
    await cache.get(P)
    head = await cache.get(P, method="HEAD")
    assert (head.status, head.body, head.x_cache, head.headers["Content-Length"]) == (200, b"", "HIT", "12")
    assert cache.origin.count(P, method=None) == 1


async def test_range_requests_are_passed_through(cache):
    cache.origin.script(P, lambda request: Resp(206, {**FRESH, "Content-Range": "bytes 0-1/12"}, b"tw")
                        if "Range" in request.headers else Resp(headers=FRESH, body=b"twelve bytes"))
    await cache.get(P)
    reply = await cache.get(P, {"Range": "bytes=0-1"})
    assert (reply.status, reply.body, reply.x_cache) == (206, b"tw", "BYPASS")
    assert "detail=range" in reply.cache_status
    assert cache.origin.seen(P)[-1].headers["Range"] == "bytes=0-1"
    assert (await cache.get(P)).body == b"twelve bytes"


async def test_9211_cache_status_keeps_the_upstream_caches_members(cache):
    cache.origin.script(P, Resp(headers={**FRESH, "Cache-Status": "upstream-cdn; hit"}))
    reply = await cache.get(P)
    assert reply.cache_status == "upstream-cdn; hit, katiba-cache; fwd=uri-miss; fwd-status=200; stored"
    assert (await cache.get(P)).cache_status == "katiba-cache; hit; ttl=600"


def waiters(cache) -> float:
    return cache.proxy.proxy.metrics.coalesced.labels(LABEL)._value.get()


async def test_concurrent_misses_share_one_fetch(cache, poll):
    cache.origin.script(P, Resp(headers=FRESH))
    cache.origin.hold(P)
    requests = [asyncio.ensure_future(cache.get(P)) for _ in range(5)]

    async def waiting() -> bool:
        return cache.origin.count(P) == 1 and waiters(cache) == 4

    await poll(waiting, "one fetch at the origin, four requests waiting for it")
    cache.origin.release(P)
    replies = await asyncio.gather(*requests)
    assert cache.origin.count(P) == 1
    assert sorted(r.x_cache for r in replies) == ["MISS"] * 5
    assert sum("collapsed" in r.cache_status for r in replies) == 4


async def test_waiters_never_get_a_response_their_request_cannot_reuse(cache, poll):
    cache.origin.script(P, lambda request: Resp(headers={**FRESH, "Vary": "X-Who"},
                                                body=request.headers.get("X-Who", "").encode()))
    cache.origin.hold(P)
    first = asyncio.ensure_future(cache.get(P, {"X-Who": "a"}))
    second = asyncio.ensure_future(cache.get(P, {"X-Who": "b"}))

    async def waiting() -> bool:
        return cache.origin.count(P) == 1 and waiters(cache) == 1

    await poll(waiting, "the second request waits for the first one's fetch")
    cache.origin.release(P)
    assert [(await first).body, (await second).body] == [b"a", b"b"]


async def test_memory_budget_bounds_http_entries_only(make_cache):
    """http_cache.max_bytes is the memory store's budget for HTTP entries (Redis: its maxmemory, README)."""
    store = MemoryStore()
    cache = await make_cache(max_bytes=20_000, store=store)
    board, token = "/api/v1/achievements/leaderboard", auth(new_user())
    cache.origin.script(board, Resp(body=b'{"header": {"responseCode": 200}}'))
    assert (await cache.get(board, token)).x_cache == "MISS"  # a rule's entry: not in the HTTP budget
    for i in range(10):
        cache.origin.script(f"/r/big{i}", Resp(headers=FRESH, body=bytes(5000)))
        await cache.get(f"/r/big{i}")
    http_bytes = sum(len(k) + len(v) for k, (v, _) in store._entries.items() if ":http:" in k)
    assert 15_000 < http_bytes <= 20_000 and store.evictions >= 6
    assert (await cache.get("/r/big9")).x_cache == "HIT" and (await cache.get("/r/big0")).x_cache == "MISS"
    assert (await cache.get(board, token)).x_cache == "HIT"
