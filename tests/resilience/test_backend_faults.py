"""Backend faults, from a scripted origin: connect errors (502), timeouts (504), 5xx (passed through),
resets mid-body (an error for the client, never a stored truncated body). Where the rule allows
(``stale_if_error``), an expired entry is served instead of the fault; past that window, the fault.
The upstream pool and timeouts come from the configuration."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from proxy.upstream.client import UpstreamConfig

from .conftest import PROFILE, new_user

TTL, STALE_IF_ERROR = 3600, 600  # rules.yaml defaults for user_profile


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Origin:
    """Answers every path with the backend's envelope; ``mode`` scripts the next answers."""

    def __init__(self) -> None:
        self.mode = "ok"  # ok | 503 | reset | hang
        self.hits = 0
        self.version = 0
        self.release = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self.server = None

    def body(self) -> bytes:
        self.version += 1
        doc = {"header": {"responseCode": 200, "responseMessage": "ok"},
               "body": {"version": self.version, "padding": "x" * 4000}}
        return json.dumps(doc).encode()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.mode == "hang":
            await self.release.wait()
        if self.mode == "503":
            return web.json_response({"detail": "Service Unavailable"}, status=503)
        body = self.body()
        if self.mode == "reset":  # headers promise the whole body; half of it comes, then the socket closes
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            request.transport.close()
            return response
        return web.Response(body=body, content_type="application/json")


@pytest.fixture
async def origin(aiohttp_server):
    o = Origin()
    o.server = await aiohttp_server(o.app)
    yield o
    o.release.set()


@pytest.fixture
async def cache(make_proxy, origin):
    url = f"http://127.0.0.1:{origin.server.port}"
    proxy = await make_proxy(upstream=UpstreamConfig(url=url, read_timeout=0.3, connect_timeout=0.5, pool_size=7))
    proxy.proxy.clock = Clock(1_000_000.0)
    return proxy


async def test_connect_error_is_502_or_stale_within_the_window(cache, origin):
    fresh_user, cached_user = new_user(), new_user()
    first = await cache.get(PROFILE, cached_user)
    assert first.status == 200 and first.x_cache == "MISS", first
    await origin.server.close()  # nothing listens any more: connection refused

    cold = await cache.get(PROFILE, fresh_user)
    assert cold.status == 502 and list(cold.json) == ["detail"], cold

    cache.proxy.clock.now += TTL + 120  # expired, inside stale-if-error
    stale = await cache.get(PROFILE, cached_user)
    assert stale.status == 200 and stale.x_cache == "STALE" and stale.body == first.body, stale
    assert "stale-if-error" in stale.cache_status

    cache.proxy.clock.now += STALE_IF_ERROR  # past the window: the fault itself
    late = await cache.get(PROFILE, cached_user)
    assert late.status == 502 and late.x_cache == "MISS", late


async def test_timeout_is_504_or_stale_within_the_window(cache, origin):
    cached_user = new_user()
    first = await cache.get(PROFILE, cached_user)
    origin.mode = "hang"  # longer than the 0.3 s read timeout

    cold = await cache.get(PROFILE, new_user())
    assert cold.status == 504 and list(cold.json) == ["detail"], cold
    cache.proxy.clock.now += TTL + 120
    stale = await cache.get(PROFILE, cached_user)
    assert stale.status == 200 and stale.x_cache == "STALE" and stale.body == first.body, stale
    assert origin.hits == 3


async def test_5xx_is_passed_through_and_not_stored(cache, origin):
    user = new_user()
    origin.mode = "503"
    failed = await cache.get(PROFILE, user)
    assert failed.status == 503 and failed.json == {"detail": "Service Unavailable"}, failed
    origin.mode = "ok"
    replies = [await cache.get(PROFILE, user), await cache.get(PROFILE, user)]
    assert [r.x_cache for r in replies] == ["MISS", "HIT"], replies
    assert origin.hits == 2


async def test_reset_mid_body_is_an_error_and_never_stored(cache, origin):
    user = new_user()
    origin.mode = "reset"
    broken = await cache.get(PROFILE, user)  # a fill reads the whole body before answering
    assert broken.status == 502 and "mid-body" in broken.json["detail"], broken
    assert origin.hits == 1

    origin.mode = "ok"
    after = await cache.get(PROFILE, user)
    assert after.status == 200 and after.x_cache == "MISS", after  # not a HIT of half a body
    json.loads(after.body)  # whole
    assert origin.hits == 2
    assert (await cache.get(PROFILE, user)).x_cache == "HIT"


async def test_reset_mid_body_on_a_passed_through_route_reaches_the_client(cache, origin):
    origin.mode = "reset"
    with pytest.raises(aiohttp.ClientPayloadError):
        await cache.get("/unruled/route")  # streamed: the client's connection is cut, not a short 200
    origin.mode = "ok"
    whole = await cache.get("/unruled/route")
    assert whole.status == 200 and json.loads(whole.body)["header"]["responseCode"] == 200


async def test_upstream_pool_and_timeouts_come_from_the_configuration(cache):
    session = cache.proxy.upstream.session
    assert session.connector.limit == 7
    assert session.timeout.sock_read == 0.3 and session.timeout.connect == 0.5
