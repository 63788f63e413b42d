"""Every GET rule of rules.yaml through the proxy, on both stores: MISS then HIT (one backend request),
per-user isolation on identity-scoped rules, shared entries on global ones, and BYPASS (never stored,
never served from cache) without a valid token."""
from __future__ import annotations

import uuid
from pathlib import Path

import jwt
import pytest

from proxy.core.rulesfile import load_rules
from standin import DEFAULT_SECRET

RULES = load_rules(Path(__file__).resolve().parents[2] / "rules.yaml")
GET_RULES = {r.name: r for r in RULES.rules if r.method == "GET"}

# A concrete URL for each GET rule; {achievement_id} is an achievement of the seeded user (user A).
READ_URLS = {
    "user_profile": "/api/v1/users/profile",
    "user_full_profile": "/api/v1/users/profile/full",
    "user_preferences": "/api/v1/users/preferences",
    "user_languages": "/api/v1/users/languages",
    "user_accessibility": "/api/v1/users/accessibility",
    "user_interests": "/api/v1/users/interests",
    "user_stats": "/api/v1/users/stats",
    "auth_me": "/api/v1/auth/me",
    "achievements": "/api/v1/achievements",
    "achievements_summary": "/api/v1/achievements/summary",
    "achievements_stats": "/api/v1/achievements/stats",
    "achievement": "/api/v1/achievements/{achievement_id}",
    "achievements_by_type": "/api/v1/achievements/type/gold",
    "achievement_types": "/api/v1/achievements/types",
    "leaderboard": "/api/v1/achievements/leaderboard?limit=10&offset=0",
    "recent_achievements": "/api/v1/achievements/recent?limit=20",
}

ALL = sorted(GET_RULES)
IDENTITY_SCOPED = sorted(n for n, r in GET_RULES.items() if r.identity_scoped)
GLOBAL = sorted(n for n, r in GET_RULES.items() if not r.identity_scoped)
AUTH_REQUIRED = sorted(n for n, r in GET_RULES.items() if r.auth == "required")


def new_user() -> str:
    return str(uuid.uuid4())


def url_for(name: str, ids: dict) -> str:
    assert name in READ_URLS, f"GET rule {name!r} of rules.yaml has no URL in READ_URLS: add one so it is tested"
    return READ_URLS[name].format(**ids)


def test_every_get_rule_has_a_url():
    assert set(GET_RULES) - set(READ_URLS) == set(), "GET rules without a URL in READ_URLS"
    assert set(READ_URLS) - set(GET_RULES) == set(), "READ_URLS names rules that rules.yaml no longer has"
    assert IDENTITY_SCOPED and GLOBAL and AUTH_REQUIRED


def test_the_table_hits_the_rule_it_names():
    """Each URL is classified under the rule it is listed for (not a neighbour such as /achievements/{id})."""
    from urllib.parse import urlsplit
    for name, template in READ_URLS.items():
        path = urlsplit(template.format(achievement_id="a1")).path
        found = RULES.match("GET", tuple(path.split("/")[1:]))
        assert found is not None and found[0].name == name, (name, found)


@pytest.mark.parametrize("name", ALL)
async def test_miss_then_hit_with_one_backend_request(name, proxy, backend):
    user = new_user()
    ids = await backend.seed(user)
    url, route = url_for(name, ids), GET_RULES[name].route
    before = await backend.route_count("GET", route)

    first = await proxy.get(url, user)
    assert first.status == 200 and first.code == 200, first
    assert first.x_cache == "MISS", first
    assert "stored" in first.cache_status, first
    assert "Age" not in first.headers
    second = await proxy.get(url, user)
    assert second.status == 200 and second.x_cache == "HIT", second
    assert second.body == first.body
    assert int(second.headers["Age"]) >= 0
    assert second.headers["ETag"] == first.headers["ETag"]
    assert second.headers["Content-Type"].startswith("application/json")
    assert await backend.route_count("GET", route) - before == 1


@pytest.mark.parametrize("name", IDENTITY_SCOPED)
async def test_two_users_never_see_each_others_entries(name, proxy, backend):
    a, b = new_user(), new_user()
    ids = await backend.seed(a)  # A's data has versions > 0; B is new to the backend: versions 0
    url, route = url_for(name, ids), GET_RULES[name].route
    before = await backend.route_count("GET", route)

    a1 = await proxy.get(url, a)
    assert a1.x_cache == "MISS" and a1.code == 200 and a1.version > 0, a1
    assert (await proxy.get(url, a)).x_cache == "HIT"

    b1 = await proxy.get(url, b)
    assert b1.x_cache == "MISS", b1
    assert b1.status == 200 and b1.version == 0, b1  # B's own data (A's would show A's version)
    assert b1.body != a1.body and a.encode() not in b1.body
    if name == "achievement":  # A's achievement id, asked by B: the backend says it is not B's
        assert b1.code == 404
    else:
        assert b1.code == 200
    b2 = await proxy.get(url, b)
    assert b2.version == 0 and a.encode() not in b2.body, b2
    b_stored = name != "achievement"  # B's 404 envelope is not stored: asked again
    assert b2.x_cache == ("HIT" if b_stored else "MISS"), b2

    a2 = await proxy.get(url, a)
    assert a2.x_cache == "HIT" and a2.body == a1.body, a2  # B's fill did not replace A's entry
    assert await backend.route_count("GET", route) - before == (2 if b_stored else 3)


@pytest.mark.parametrize("name", GLOBAL)
async def test_global_entries_are_shared_between_users(name, proxy, backend):
    a, b = new_user(), new_user()
    await backend.award(a)  # the leaderboard and recent list are not empty
    url, route = url_for(name, {}), GET_RULES[name].route
    before = await backend.route_count("GET", route)
    a1 = await proxy.get(url, a)
    assert a1.x_cache == "MISS" and a1.code == 200, a1
    b1 = await proxy.get(url, b)
    assert b1.x_cache == "HIT" and b1.body == a1.body, b1
    assert await backend.route_count("GET", route) - before == 1


async def test_achievement_types_is_shared_but_served_only_to_a_valid_token(proxy, backend):
    """The backend wants a token on every route (upstream-api.md): the fill carries the requester's
    Authorization, the entry is shared by every valid token, and a request without one gets the
    backend's 401, never the cached body."""
    url, route = url_for("achievement_types", {}), GET_RULES["achievement_types"].route
    first = await proxy.get(url, new_user())
    assert first.status == 200 and first.code == 200 and first.x_cache == "MISS", first
    second = await proxy.get(url, new_user())
    assert second.x_cache == "HIT" and second.body == first.body, second
    anonymous = await proxy.get(url)
    assert anonymous.status == 401 and anonymous.x_cache == "BYPASS", anonymous
    assert "detail" in anonymous.json and b"badge_types" not in anonymous.body  # the backend's own 401
    assert await backend.route_count("GET", route) == 2
    assert (await proxy.get(url, new_user())).x_cache == "HIT"  # the 401 stored nothing over the entry


@pytest.mark.parametrize("name", AUTH_REQUIRED)
async def test_no_token_is_bypassed_and_never_stored(name, proxy, backend):
    user = new_user()
    ids = await backend.seed(user)
    url, route = url_for(name, ids), GET_RULES[name].route
    before = await backend.route_count("GET", route)

    anonymous = await proxy.get(url)
    assert anonymous.status == 401, anonymous
    assert "detail" in anonymous.json and "header" not in anonymous.json  # the backend's own 401
    assert anonymous.headers.get("WWW-Authenticate") == "Bearer"
    assert anonymous.x_cache == "BYPASS" and "detail=no-token" in anonymous.cache_status, anonymous
    assert await backend.route_count("GET", route) - before == 1

    valid = await proxy.get(url, user)  # nothing was stored by the 401: still a miss
    assert valid.status == 200 and valid.x_cache == "MISS", valid
    assert (await proxy.get(url, user)).x_cache == "HIT"

    again = await proxy.get(url)  # a warm entry is never served without a token (global keys too)
    assert again.status == 401 and again.x_cache == "BYPASS", again
    assert await backend.route_count("GET", route) - before == 3


@pytest.mark.parametrize("name", AUTH_REQUIRED)
async def test_invalid_tokens_are_bypassed(name, proxy, backend, mint_token):
    user = new_user()
    ids = await backend.seed(user)
    url, route = url_for(name, ids), GET_RULES[name].route
    warm = await proxy.get(url, user)
    assert (warm.x_cache, (await proxy.get(url, user)).x_cache) == ("MISS", "HIT")
    before = await backend.route_count("GET", route)

    bad = {
        "forged": mint_token(user, secret="another-secret-of-at-least-32-bytes!!"),
        "expired": mint_token(user, ttl=-60),
        "no-exp": jwt.encode({"sub": user}, DEFAULT_SECRET, algorithm="HS256"),
        "garbage": "not-a-jwt",
    }
    for kind, token in bad.items():
        reply = await proxy.get(url, token=token)
        assert reply.status == 401, (kind, reply)  # never the user's cached entry
        assert reply.x_cache == "BYPASS" and "detail=invalid-token" in reply.cache_status, (kind, reply)
    basic = await proxy.get(url, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status == 401 and basic.x_cache == "BYPASS", basic
    assert await backend.route_count("GET", route) - before == len(bad) + 1
    assert (await proxy.get(url, user)).x_cache == "HIT"  # the failures stored nothing over the entry
