"""Overload: MAX_INFLIGHT and MAX_UPSTREAM answer 503 with Retry-After instead of queueing without bound,
under a bounded local load (200 concurrent requests against limits of 20); the per-client rate limit
of the manual invalidation endpoints and /_cache/* answers 429 with Retry-After."""
from __future__ import annotations

import asyncio
import uuid

import aiohttp
from aiohttp import web

from proxy.upstream.client import UpstreamConfig

from .conftest import ADMIN_TOKEN, metric

LOAD = 200
LIMIT = 20


class HeldOrigin:
    """A backend that holds every request until ``release`` is set; counts concurrent requests."""

    def __init__(self):
        self.release = asyncio.Event()
        self.current = 0
        self.peak = 0
        self.arrived = 0

    async def handler(self, request: web.Request) -> web.Response:
        self.current += 1
        self.arrived += 1
        self.peak = max(self.peak, self.current)
        try:
            await self.release.wait()
        finally:
            self.current -= 1
        return web.json_response({"path": request.path})


async def fire(port: int, n: int, path=lambda i: f"/passthrough/{i}") -> tuple[list[asyncio.Task], aiohttp.ClientSession]:
    """``n`` concurrent requests on their own connections (no client-side pool limit)."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def one(i: int):
        async with session.get(f"http://127.0.0.1:{port}{path(i)}") as resp:
            return resp.status, resp.headers.get("Retry-After"), await resp.read()

    return [asyncio.ensure_future(one(i)) for i in range(n)], session


async def test_max_upstream_bounds_concurrent_backend_requests(make_proxy, origin, poll):
    held = HeldOrigin()
    url = await origin(held.handler)
    proxy = await make_proxy(upstream=UpstreamConfig(url=url, max_concurrent=LIMIT, queue_timeout=0.0))
    tasks, session = await fire(proxy.client.server.port, LOAD)
    try:
        async def settled() -> bool:  # every request either holds a backend slot or has been refused
            return held.current == LIMIT and sum(t.done() for t in tasks) == LOAD - LIMIT
        await poll(settled, f"{LIMIT} requests at the backend and the other {LOAD - LIMIT} answered")
        refused = [t.result() for t in tasks if t.done()]
        assert {status for status, _, _ in refused} == {503}
        assert all(retry == "1" for _, retry, _ in refused)
        assert all(b'"detail"' in body for _, _, body in refused)
        held.release.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 30)  # none hangs
    finally:
        held.release.set()
        await session.close()
    assert [s for s, _, _ in results].count(200) == LIMIT
    assert held.peak == LIMIT and held.arrived == LIMIT  # the backend never saw more than the limit
    text = await proxy.metrics()
    assert metric(text, "katiba_cache_overload_total", limit="upstream") == LOAD - LIMIT


async def test_a_bounded_wait_for_a_backend_slot_then_service(make_proxy, origin, poll):
    held = HeldOrigin()
    url = await origin(held.handler)
    proxy = await make_proxy(upstream=UpstreamConfig(url=url, max_concurrent=2, queue_timeout=30.0))
    tasks, session = await fire(proxy.client.server.port, 6)
    try:
        async def queued() -> bool:
            return held.current == 2 and len(proxy.proxy.upstream.slots.waiters) == 4
        await poll(queued, "two at the backend, four waiting for a slot")
        held.release.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        held.release.set()
        await session.close()
    assert [s for s, _, _ in results] == [200] * 6 and held.peak == 2  # waited, in turn, never more than 2


async def test_max_inflight_refuses_above_the_limit_but_never_the_probes(make_proxy, origin, poll):
    held = HeldOrigin()
    url = await origin(held.handler)
    proxy = await make_proxy(upstream_url=url, max_inflight=LIMIT)
    tasks, session = await fire(proxy.client.server.port, LOAD)
    try:
        async def settled() -> bool:
            return held.current == LIMIT and sum(t.done() for t in tasks) == LOAD - LIMIT
        await poll(settled, f"{LIMIT} requests in flight and the other {LOAD - LIMIT} refused")
        refused = [t.result() for t in tasks if t.done()]
        assert {status for status, _, _ in refused} == {503} and all(r == "1" for _, r, _ in refused)
        # saturated, the instance still answers its probes and scrapes
        assert (await proxy.get("/healthz")).status == 200
        assert (await proxy.get("/readyz")).status == 200
        text = await proxy.metrics()
        assert metric(text, "katiba_cache_overload_total", limit="inflight") == LOAD - LIMIT
        held.release.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        held.release.set()
        await session.close()
    assert [s for s, _, _ in results].count(200) == LIMIT and held.peak == LIMIT
    assert proxy.proxy.gate.inflight == 0  # every admitted request left
    assert (await proxy.get("/passthrough/after")).status == 200  # and the gate admits again


async def test_hits_keep_flowing_while_every_backend_slot_is_taken(make_proxy, backend, origin, poll):
    proxy = await make_proxy(upstream=UpstreamConfig(url=backend.url, max_concurrent=1, queue_timeout=0.0))
    user = str(uuid.uuid4())
    assert (await proxy.get("/api/v1/users/profile", user)).x_cache == "MISS"
    await backend.control("POST", "gate", {"method": "GET", "path": "/api/v1/users/preferences"})
    blocked = asyncio.ensure_future(proxy.get("/api/v1/users/preferences", user))
    try:
        await poll(lambda: _waiting(backend), "the backend holds one request (the only slot)")
        busy = await proxy.get("/api/v1/users/preferences", str(uuid.uuid4()))
        assert busy.status == 503 and busy.headers["Retry-After"] == "1"
        hit = await proxy.get("/api/v1/users/profile", user)
        assert hit.status == 200 and hit.x_cache == "HIT"  # a hit needs no backend slot
    finally:
        await backend.control("POST", "gate/release")
    assert (await asyncio.wait_for(blocked, 30)).status == 200


async def _waiting(backend) -> bool:
    return (await backend.control("GET", "gate"))["waiting"] >= 1


async def test_rate_limit_on_manual_invalidation_and_cache_endpoints(make_proxy):
    proxy = await make_proxy(admin_rate=1.0)  # burst 2 per client address
    user = str(uuid.uuid4())
    invalidations = [await proxy.request("POST", "/api/v1/users/cache/invalidate", user, json={}) for _ in range(4)]
    assert [r.status for r in invalidations[:2]] == [200, 200]
    assert [r.status for r in invalidations[2:]] == [429, 429]
    assert all(int(r.headers["Retry-After"]) >= 1 for r in invalidations[2:])
    stats = await proxy.get("/_cache/stats", headers={"Authorization": "Bearer wrong"})
    assert stats.status == 429 and int(stats.headers["Retry-After"]) >= 1  # same client, same bucket
    admin = await proxy.get("/_cache/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert admin.status == 200  # the admin credential is never locked out by a flood
