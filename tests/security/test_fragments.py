"""A ``#fragment`` in a request-target never reaches a key or the backend (issue 18, item 7).

RFC 9112 §3.2: the origin-form has no fragment, and the backend's HTTP parser drops one. The proxy
strips it too (it does not answer 400: without the proxy the backend would have answered), so
``?limit=4#`` is ``?limit=4`` and ``/achievements/types#`` is ``/achievements/types``: neither can
plant an entry that ``?limit=4%23`` or the achievement id ``types#`` (``types%23``) would be served.
Raw sockets (an HTTP client never sends a fragment), keep-alive so the fast path frames them too; every
request carries a valid token; the rules are this module's own. Both request paths, both stores.
"""
from __future__ import annotations

import pytest

from tests.functional.conftest import API, mint, new_user
from tests.security.helpers import board_rules
from tests.security.keepalive import one_exchange

BOARD = f"{API}/achievements/leaderboard"
RULES = board_rules("sec18f", """\
  - name: types
    match: GET /api/v1/achievements/types
    key: "achievements:global:types"
  - name: achievement
    match: GET /api/v1/achievements/{achievement_id}
    key: "achievements:{user_id}:achievement:{achievement_id}"
""")
PATHS = pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "aiohttp-path"])


async def make_cache(make_proxy, tmp_path, fast_path: bool):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return await make_proxy(rules_path=path, fast_path=fast_path)


async def raw_get(cache, target: str, user: str):
    host, port = cache.client.server.host, cache.client.server.port
    head = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {mint(user)}\r\n\r\n"
    return await one_exchange(host, port, head.encode())


@PATHS
async def test_a_fragment_after_the_query_is_not_part_of_a_query_value(make_proxy, backend, tmp_path, fast_path):
    cache = await make_cache(make_proxy, tmp_path, fast_path)
    user = new_user()
    fragment = await raw_get(cache, f"{BOARD}?limit=4#", user)
    assert fragment.status == 200 and fragment.headers["x-cache"] == "MISS", fragment
    encoded = await cache.get(f"{BOARD}?limit=4%23", user)  # "4#": not a number, the backend says 422
    assert encoded.x_cache != "HIT" and encoded.status == 422, encoded
    plain = await cache.get(f"{BOARD}?limit=4", user)
    assert plain.x_cache == "HIT" and plain.body == fragment.body  # the fragment's fill is ?limit=4's entry


@PATHS
async def test_a_fragment_never_becomes_part_of_a_path_value(make_proxy, backend, tmp_path, fast_path):
    cache = await make_cache(make_proxy, tmp_path, fast_path)
    user = new_user()
    fragment = await raw_get(cache, f"{API}/achievements/types#", user)
    assert fragment.status == 200 and b"badge" in fragment.body.lower(), fragment
    odd_id = await cache.get(f"{API}/achievements/types%23", user)  # the achievement whose id is "types#"
    assert odd_id.x_cache != "HIT" and odd_id.code == 404, odd_id
    types = await cache.get(f"{API}/achievements/types", user)
    assert types.x_cache == "HIT" and types.body == fragment.body
    assert await backend.route_count("GET", f"{API}/achievements/types") == 1
