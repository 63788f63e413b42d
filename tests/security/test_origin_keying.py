"""CORS answers are keyed on exactly the Origin the backend saw (issue 18, items 2 and 3).

The backend echoes ``Origin`` into ``Access-Control-Allow-Origin`` and adds ``Vary: Origin``; browsers
compare the echo byte for byte. So:

* an entry filled for ``https://APP.EXAMPLE.COM`` is never served to ``https://app.example.com``;
* a request whose ``Connection`` names ``Origin`` or ``Authorization`` (the fill would drop that field:
  hop-by-hop) bypasses, so it can neither store an answer without ACAO under an Origin-keyed key nor
  lead a tokenless fill;
* a repeated ``Origin`` field bypasses (which one the backend echoes is its business);
* warming refreshes an Origin-keyed entry with that Origin, so ACAO and Vary survive the refresh.

Every request carries a valid token; the rules are this module's own. Both request paths, both stores.
"""
from __future__ import annotations

import pytest
from aiohttp import web

from proxy.upstream.client import UpstreamConfig
from tests.functional.conftest import API, mint, new_user
from tests.security.helpers import board_rules
from tests.security.keepalive import one_exchange

BOARD = f"{API}/achievements/leaderboard"
RECENT = f"{API}/achievements/recent"
RULES = board_rules("sec18", """\
  - name: recent
    match: GET /api/v1/achievements/recent
    key: "achievements:global:recent"
    vary_query: [limit]
    ttl: 60
    warm: true
""")
PATHS = pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "aiohttp-path"])
APP = "https://app.example.com"


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def make_cache(make_proxy, tmp_path, fast_path: bool, **overrides):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return await make_proxy(rules_path=path, fast_path=fast_path, **overrides)


@PATHS
async def test_an_origin_spelled_in_capitals_gets_its_own_entry(make_proxy, backend, tmp_path, fast_path):
    cache = await make_cache(make_proxy, tmp_path, fast_path)
    user = new_user()
    upper = await cache.get(BOARD, user, headers={"Origin": "https://APP.EXAMPLE.COM"})
    assert upper.status == 200 and upper.headers["Access-Control-Allow-Origin"] == "https://APP.EXAMPLE.COM"
    lower = await cache.get(BOARD, user, headers={"Origin": APP})
    assert lower.headers.get("Access-Control-Allow-Origin") == APP, lower
    assert lower.x_cache == "MISS"
    again = await cache.get(BOARD, user, headers={"Origin": "https://APP.EXAMPLE.COM"})
    assert again.x_cache == "HIT" and again.headers["Access-Control-Allow-Origin"] == "https://APP.EXAMPLE.COM"
    assert await backend.route_count("GET", BOARD) == 2


@PATHS
@pytest.mark.parametrize("named", ["Origin", "keep-alive, origin", "Authorization"])
async def test_connection_naming_a_keyed_header_bypasses(make_proxy, backend, tmp_path, fast_path, named):
    cache = await make_cache(make_proxy, tmp_path, fast_path)
    hop = await cache.get(BOARD, new_user(), headers={"Origin": APP, "Connection": named})
    browser = await cache.get(BOARD, new_user(), headers={"Origin": APP})
    assert browser.headers.get("Access-Control-Allow-Origin") == APP and "Origin" in browser.headers["Vary"], browser
    assert hop.x_cache == "BYPASS" and "connection-names-keyed-field" in hop.cache_status, hop
    assert browser.x_cache == "MISS", browser
    assert (await cache.get(BOARD, new_user(), headers={"Origin": APP})).x_cache == "HIT"


@PATHS
async def test_a_repeated_origin_field_bypasses(make_proxy, backend, tmp_path, fast_path):
    cache = await make_cache(make_proxy, tmp_path, fast_path)
    host, port = cache.client.server.host, cache.client.server.port
    head = (f"GET {BOARD} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {mint(new_user())}\r\n"
            f"Origin: https://a.example\r\nOrigin: {APP}\r\n\r\n").encode()
    reply = await one_exchange(host, port, head)
    assert reply.status == 200 and reply.headers["x-cache"] == "BYPASS", reply
    assert "repeated-origin" in reply.headers["cache-status"]
    browser = await cache.get(BOARD, new_user(), headers={"Origin": APP})
    assert browser.x_cache == "MISS" and browser.headers["Access-Control-Allow-Origin"] == APP


@PATHS
async def test_warming_refreshes_an_origin_keyed_entry_with_its_origin(make_proxy, backend, tmp_path, fast_path):
    cache = await make_cache(make_proxy, tmp_path, fast_path,
                             warm_authorization=f"Bearer {mint('warming-service')}")
    clock = cache.proxy.clock = Clock(1_000_000.0)
    user = new_user()
    first = await cache.get(RECENT, user, headers={"Origin": APP})
    assert first.x_cache == "MISS" and first.headers["Access-Control-Allow-Origin"] == APP
    plain = await cache.get(RECENT, user)
    assert plain.x_cache == "MISS" and "Access-Control-Allow-Origin" not in plain.headers
    await cache.writes_landed()
    clock.now += 55  # within the warming horizon of the 60 s TTL
    assert await cache.proxy.warmer.warm_once(horizon=30) == 2
    assert await backend.route_count("GET", RECENT) == 4
    await cache.writes_landed()
    warmed = await cache.get(RECENT, user, headers={"Origin": APP})
    assert warmed.x_cache == "HIT" and warmed.headers["Age"] == "0", warmed  # the refreshed entry
    assert warmed.headers.get("Access-Control-Allow-Origin") == APP and "Origin" in warmed.headers.get("Vary", "")
    warmed_plain = await cache.get(RECENT, user)
    assert warmed_plain.x_cache == "HIT" and warmed_plain.headers["Age"] == "0"
    assert "Access-Control-Allow-Origin" not in warmed_plain.headers


HTTP_CACHE_RULES = """\
version: 1
prefix: "sec18h"
rules:
  - {name: unused, match: GET /ruled, key: "ruled:global:page", auth: none}
http_cache: {enabled: true}
"""


@PATHS
async def test_in_http_cache_mode_connection_naming_a_field_bypasses(make_proxy, aiohttp_server, tmp_path, fast_path):
    """Any field may be one a stored response's Vary selects on: a Connection that names one bypasses."""
    async def varied(request: web.Request) -> web.Response:
        return web.json_response({"lang": request.headers.get("X-Lang")},
                                 headers={"Vary": "X-Lang", "Cache-Control": "public, max-age=60"})

    app = web.Application()
    app.router.add_get("/varied", varied)
    origin = await aiohttp_server(app)
    rules = tmp_path / "rules.yaml"
    rules.write_text(HTTP_CACHE_RULES)
    cache = await make_proxy(upstream=UpstreamConfig(url=f"http://127.0.0.1:{origin.port}"), rules_path=rules,
                             fast_path=fast_path)
    token = {"Authorization": f"Bearer {mint(new_user())}"}
    hop = await cache.get("/varied", headers={**token, "X-Lang": "sw", "Connection": "X-Lang"})
    assert hop.x_cache == "BYPASS" and "connection-names-keyed-field" in hop.cache_status, hop
    swahili = await cache.get("/varied", headers={**token, "X-Lang": "sw"})
    assert swahili.json == {"lang": "sw"}, swahili
    assert (await cache.get("/varied", headers={**token, "X-Lang": "sw"})).x_cache == "HIT"
