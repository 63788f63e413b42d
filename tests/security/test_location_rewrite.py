"""Backend redirects never show the backend's address (issue 18, "backend redirects leak its address").

With ``PRESERVE_HOST`` off the backend sees its own host and builds absolute redirects from it. Like
nginx's ``proxy_redirect default``, a ``Location`` or ``Content-Location`` on the upstream base URL is
rewritten to the address the client used: its ``Host``, and the scheme from ``X-Forwarded-Proto`` or
the connection. On every path: pass-through (the stand-in's 307 for a trailing slash), writes, fills
(fast path and aiohttp's), stored entries (rewritten per answer: one client's Host never reaches
another's answer) and the RFC 9111 cache of unruled routes. A Location elsewhere is left alone.
Every request carries a valid token. Both request paths, both stores.
"""
from __future__ import annotations

import pytest
from aiohttp import web

from proxy.upstream.client import UpstreamConfig
from tests.functional.conftest import API, Reply, auth, new_user, sample

PATHS = pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "aiohttp-path"])
RULES = """\
version: 1
prefix: "sec18l"
rules:
  - {name: described, match: GET /described, key: "described:global:page", auth: none, cache_when: {status: [200]}}
  - {name: moved, match: GET /moved, key: "moved:global:page", auth: none, cache_when: {status: [301]}}
  - {name: away, match: GET /away, key: "away:global:page", auth: none, cache_when: {status: [301]}}
http_cache: {enabled: true}
"""


def front(cache) -> str:
    return f"{cache.client.server.host}:{cache.client.server.port}"


async def fetch(client, path: str, user: str | None = None, headers: dict | None = None, method: str = "GET",
                json=None) -> Reply:
    """One request, redirects not followed (the answer itself is under test)."""
    sent = {**(auth(user) if user else {}), **(headers or {})}
    async with client.request(method, path, headers=sent, json=json, allow_redirects=False) as resp:
        return Reply(resp.status, resp.headers, await resp.read())


@PATHS
async def test_the_standins_trailing_slash_redirect_points_at_the_proxy(make_proxy, backend, fast_path):
    cache = await make_proxy(fast_path=fast_path)
    user = new_user()
    direct = await fetch(backend.client, f"{API}/users/profile/?x=1", user)
    assert direct.status == 307 and direct.headers["Location"].startswith(backend.url)  # the stand-in leaks
    moved = await fetch(cache.client, f"{API}/users/profile/?x=1", user)
    assert moved.status == 307 and moved.headers["Location"] == f"http://{front(cache)}{API}/users/profile?x=1", moved
    tls = await fetch(cache.client, f"{API}/users/profile/", user,
                      {"X-Forwarded-Proto": "https", "Host": "api.example.org"})
    assert tls.headers["Location"] == f"https://api.example.org{API}/users/profile", tls
    write = await fetch(cache.client, f"{API}/users/preferences/", user, method="POST", json={"theme": "dark"})
    assert write.status == 307 and write.headers["Location"] == f"http://{front(cache)}{API}/users/preferences"


class Scripted:
    """An origin whose answers point at themselves, built from the Host it was sent (as backends do)."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_get("/described", self.described)
        self.app.router.add_get("/moved", self.moved)
        self.app.router.add_get("/away", self.away)
        self.app.router.add_get("/unruled", self.unruled)
        self.url = ""

    async def described(self, request: web.Request) -> web.Response:
        return web.json_response({"page": 1}, headers={"Content-Location": f"http://{request.host}/described?v=1"})

    async def moved(self, request: web.Request) -> web.Response:
        return web.Response(status=301, headers={"Location": f"http://{request.host}/described"})

    async def away(self, request: web.Request) -> web.Response:
        return web.Response(status=301, headers={"Location": "http://elsewhere.example/described"})

    async def unruled(self, request: web.Request) -> web.Response:
        return web.json_response({"page": 2}, headers={"Content-Location": f"http://{request.host}/unruled",
                                                       "Cache-Control": "public, max-age=60"})


@pytest.fixture
async def scripted(aiohttp_server) -> Scripted:
    origin = Scripted()
    server = await aiohttp_server(origin.app)
    origin.url = f"http://127.0.0.1:{server.port}"
    return origin


async def scripted_cache(make_proxy, scripted, tmp_path, fast_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return await make_proxy(upstream=UpstreamConfig(url=scripted.url), rules_path=rules, fast_path=fast_path)


@PATHS
@pytest.mark.parametrize("path,header,rest", [("/described", "Content-Location", "/described?v=1"),
                                              ("/moved", "Location", "/described")], ids=["ruled-200", "ruled-301"])
async def test_filled_and_stored_answers_point_at_each_clients_address(make_proxy, scripted, tmp_path, fast_path,
                                                                       path, header, rest, caplog):
    cache = await scripted_cache(make_proxy, scripted, tmp_path, fast_path)
    user = new_user()
    first = await fetch(cache.client, path, user, {"Host": "one.example"})
    assert first.x_cache == "MISS" and first.headers[header] == f"http://one.example{rest}", first
    second = await fetch(cache.client, path, user, {"Host": "two.example:8443", "X-Forwarded-Proto": "https"})
    assert second.x_cache == "HIT" and second.headers[header] == f"https://two.example:8443{rest}", second
    third = await fetch(cache.client, path, user)
    assert third.x_cache == "HIT" and third.headers[header] == f"http://{front(cache)}{rest}", third
    answered = sample(await cache.metrics(), "katiba_cache_fast_path_total", outcome="answered")
    assert answered == (3 if fast_path else 0)  # the fast path's own miss and hits, not aiohttp's
    assert not [r for r in caplog.records if getattr(r, "event", "") == "fast_path_error"]


@PATHS
async def test_the_http_caches_answers_point_at_the_clients_address(make_proxy, scripted, tmp_path, fast_path):
    cache = await scripted_cache(make_proxy, scripted, tmp_path, fast_path)
    user = new_user()
    first = await fetch(cache.client, "/unruled", user)
    assert first.x_cache == "MISS" and first.headers["Content-Location"] == f"http://{front(cache)}/unruled", first
    second = await fetch(cache.client, "/unruled", user, {"X-Forwarded-Proto": "https"})  # the same URI
    assert second.x_cache == "HIT" and second.headers["Content-Location"] == f"https://{front(cache)}/unruled"


@PATHS
async def test_a_location_elsewhere_is_left_alone(make_proxy, scripted, tmp_path, fast_path):
    cache = await scripted_cache(make_proxy, scripted, tmp_path, fast_path)
    for expected in ("MISS", "HIT"):
        reply = await fetch(cache.client, "/away", new_user())
        assert reply.x_cache == expected and reply.headers["Location"] == "http://elsewhere.example/described"
