"""Behaviour of the stand-in backend (standin/): the katiba360 contract it imitates and its test hooks.

Run: python -m pytest tests/standin -q -p no:cacheprovider -o asyncio_mode=auto
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jwt
import pytest
import pytest_asyncio

from standin import DEFAULT_SECRET, STATE, build_app

pytestmark = pytest.mark.asyncio
ROOT = Path(__file__).resolve().parents[2]
API = "/api/v1"


def token(sub: str, secret: str = DEFAULT_SECRET, ttl: int = 600, **extra) -> str:
    claims = {"sub": sub, "exp": int(time.time()) + ttl, **extra}
    return jwt.encode(claims, secret, algorithm="HS256")


def auth(sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub)}"}


def new_user() -> str:
    return str(uuid.uuid4())


@pytest_asyncio.fixture
async def client(aiohttp_client):
    return await aiohttp_client(build_app(delay_ms=0))


async def get(client, path: str, sub: str | None = None, **kw) -> tuple[int, dict, object]:
    headers = {**(auth(sub) if sub else {}), **kw.pop("headers", {})}
    resp = await client.get(API + path, headers=headers, **kw)
    return resp.status, resp.headers, await resp.json()


async def send(client, method: str, path: str, sub: str | None, payload=None, **kw):
    headers = {**(auth(sub) if sub else {}), **kw.pop("headers", {})}
    resp = await client.request(method, API + path, json=payload, headers=headers, **kw)
    return resp.status, await resp.json()


async def body_ok(client, path: str, sub: str) -> dict:
    status, _, data = await get(client, path, sub)
    assert status == 200 and data["header"]["responseCode"] == 200, data
    return data["body"]


async def write_ok(client, method: str, path: str, sub: str, payload=None) -> dict:
    status, data = await send(client, method, path, sub, payload)
    assert status == 200 and data["header"]["responseCode"] == 200, data
    return data["body"]


async def standin_stats(client) -> dict:
    return await (await client.get("/_standin/stats")).json()


# -- envelope and headers ---------------------------------------------------------------------
async def test_envelope_shape_and_headers(client):
    uid = new_user()
    status, headers, data = await get(client, "/users/profile", uid)
    assert status == 200
    assert set(data) == {"header", "body"}
    h = data["header"]
    assert set(h) == {"requestRefId", "responseCode", "responseMessage", "customerMessage", "timestamp"}
    assert h["responseCode"] == 200 and h["responseMessage"] and h["customerMessage"]
    uuid.UUID(h["requestRefId"])
    assert h["timestamp"].endswith("+00:00")
    assert data["body"]["user_id"] == uid and isinstance(data["body"]["version"], int)
    for name in ("Cache-Control", "ETag", "Last-Modified", "Vary", "Access-Control-Allow-Origin"):
        assert name not in headers
    assert headers["X-RateLimit-Limit"] == "1000000"
    assert int(headers["X-RateLimit-Remaining"]) == 999_999
    assert int(headers["X-RateLimit-Reset"]) > time.time() - 1
    # requestRefId and timestamp differ on every response
    _, _, again = await get(client, "/users/profile", uid)
    assert again["header"]["requestRefId"] != h["requestRefId"]
    assert again["body"] == data["body"]


async def test_cors_echo_and_vary_origin(client):
    uid = new_user()
    _, headers, _ = await get(client, "/users/profile", uid, headers={"Origin": "https://app.katiba.test"})
    assert headers["Access-Control-Allow-Origin"] == "https://app.katiba.test"
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Vary"] == "Origin"
    # on errors too
    _, headers, _ = await get(client, "/users/profile", headers={"Origin": "https://o.test"})
    assert headers["Vary"] == "Origin"
    resp = await client.options(API + "/users/profile", headers={
        "Origin": "https://o.test", "Access-Control-Request-Method": "GET"})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "https://o.test"


# -- identity ---------------------------------------------------------------------------------
@pytest.mark.parametrize("header", [
    None,
    "Bearer",
    "Basic dXNlcjpwYXNz",
    "Bearer not-a-jwt",
    "Bearer " + token("u1", ttl=-10),                                   # expired
    "Bearer " + token("u1", secret="another-secret-of-at-least-32-bytes!!"),  # forged
    "Bearer " + jwt.encode({"sub": "u1"}, DEFAULT_SECRET, algorithm="HS256"),  # no exp
    "Bearer " + jwt.encode({"exp": int(time.time()) + 60}, DEFAULT_SECRET, algorithm="HS256"),  # no sub
    "Bearer " + jwt.encode({"sub": "", "exp": int(time.time()) + 60}, DEFAULT_SECRET, algorithm="HS256"),
    "Bearer " + jwt.encode({"sub": "u1", "exp": int(time.time()) + 60}, None, algorithm="none"),  # unsigned
])
async def test_bad_tokens_get_401_detail(client, header):
    headers = {"Authorization": header} if header else {}
    for path in ("/users/profile", "/achievements/leaderboard", "/auth/me"):
        resp = await client.get(API + path, headers=headers)
        assert resp.status == 401
        data = await resp.json()
        assert set(data) == {"detail"} and isinstance(data["detail"], str)
    assert (await standin_stats(client))["queries"] == 0  # refused before any DB work


async def test_global_reads_need_a_token_and_login_issues_working_token(client):
    for path in ("/achievements/types", "/achievements/leaderboard", "/achievements/recent",
                 "/onboarding/steps"):
        status, _, data = await get(client, path)
        assert status == 401 and set(data) == {"detail"}, path
    assert (await standin_stats(client))["queries"] == 0
    status, _, data = await get(client, "/achievements/types", new_user())
    assert status == 200 and {t["badge_type"] for t in data["body"]["badge_types"]} >= {"gold", "bronze"}
    status, data = await send(client, "POST", "/auth/google", None, {"user_id": "google-user"})
    assert status == 200 and data["body"]["user_id"] == "google-user"
    status, data = await send(client, "POST", "/auth/login", None, {"user_id": "login-user"})
    assert status == 200
    tok = data["body"]["access_token"]
    status, data = await send(client, "POST", "/auth/refresh-token", None, {"refresh_token": tok})
    assert status == 200 and jwt.decode(data["body"]["access_token"], DEFAULT_SECRET,
                                        algorithms=["HS256"])["sub"] == "login-user"
    status, data = await send(client, "POST", "/auth/refresh-token", None, {"refresh_token": "forged"})
    assert status == 401
    assert jwt.decode(tok, DEFAULT_SECRET, algorithms=["HS256"])["sub"] == "login-user"
    resp = await client.get(API + "/auth/me", headers={"Authorization": f"Bearer {tok}"})
    assert (await resp.json())["body"]["user_id"] == "login-user"
    resp = await client.post(API + "/auth/refresh", headers={"Authorization": f"Bearer {tok}"})
    new = (await resp.json())["body"]["access_token"]
    assert new != tok and jwt.decode(new, DEFAULT_SECRET, algorithms=["HS256"])["sub"] == "login-user"
    status, _ = await send(client, "POST", "/auth/refresh", None)
    assert status == 401


@pytest.mark.parametrize("scheme", ["bearer {}", "BEARER {}", "Bearer  {}", "Bearer\t{}", "Token {}", "{}"])
async def test_authorization_scheme_is_matched_exactly(client, scheme):
    """``Authorization: Bearer <token>`` with one space, as the backend's HTTPBearer; else 401."""
    uid = new_user()
    for path in ("/users/profile", "/achievements/types"):
        resp = await client.get(API + path, headers={"Authorization": scheme.format(token(uid))})
        assert resp.status == 401, (scheme, path)
    assert (await standin_stats(client))["queries"] == 0


async def test_trailing_space_after_the_token_is_refused():
    """A trailing space never survives an HTTP parser (field values lose their OWS), so the check is
    pinned on the verifier itself."""
    from standin.control import State
    from standin.db import Store
    from standin.wire import HTTPFail, token_subject_of

    st = State(Store(), DEFAULT_SECRET, 0, 10)
    assert token_subject_of(st, f"Bearer {token('u1')}") == "u1"
    with pytest.raises(HTTPFail):
        token_subject_of(st, f"Bearer {token('u1')} ")


async def test_trailing_slash_gets_307_to_absolute_url_from_host(client):
    resp = await client.get(API + "/users/profile/?x=1", headers={"Host": "api.katiba.test:8443"},
                            allow_redirects=False)
    assert resp.status == 307
    assert resp.headers["Location"] == "http://api.katiba.test:8443/api/v1/users/profile?x=1"
    resp = await client.put(API + "/onboarding/progress/", allow_redirects=False)  # any method, before auth
    assert resp.status == 307 and resp.headers["Location"].endswith("/api/v1/onboarding/progress")
    assert (await client.get(API + "/no/such/route/", allow_redirects=False)).status == 404
    assert (await standin_stats(client))["queries"] == 0


async def test_deactivated_user_gets_401_until_activated(client):
    uid = new_user()
    await body_ok(client, "/users/profile", uid)
    assert (await client.post(f"/_standin/users/{uid}/deactivate")).status == 200
    for path in ("/users/profile", "/achievements", "/achievements/leaderboard"):
        status, _, data = await get(client, path, uid)
        assert status == 401 and "detail" in data
    status, _ = await send(client, "PUT", "/users/profile", uid, {"display_name": "x"})
    assert status == 401
    status, _ = await send(client, "POST", "/auth/login", None, {"user_id": uid})
    assert status == 401
    await body_ok(client, "/users/profile", new_user())  # others unaffected
    await client.post(f"/_standin/users/{uid}/activate")
    await body_ok(client, "/users/profile", uid)


# -- writes are reflected by reads, with versions ---------------------------------------------------
async def test_profile_update_visible_everywhere_with_version(client):
    uid = new_user()
    before = await body_ok(client, "/users/profile", uid)
    w = await write_ok(client, "PUT", "/users/profile", uid, {"display_name": "Wanjiku", "bio": "Reader"})
    assert w["version"] > before["version"] and w["display_name"] == "Wanjiku"
    prof = await body_ok(client, "/users/profile", uid)
    assert (prof["display_name"], prof["bio"], prof["version"]) == ("Wanjiku", "Reader", w["version"])
    me = await body_ok(client, "/auth/me", uid)
    assert me["display_name"] == "Wanjiku" and me["version"] >= w["version"]
    full = await body_ok(client, "/users/profile/full", uid)
    assert full["profile"]["display_name"] == "Wanjiku" and full["version"] >= w["version"]
    assert set(full) >= {"preferences", "languages", "interests", "accessibility", "stats"}
    # partial update keeps the other field; another user's profile is untouched
    w2 = await write_ok(client, "PUT", "/users/profile", uid, {"bio": "Teacher"})
    assert w2["version"] > w["version"] and w2["display_name"] == "Wanjiku" and w2["bio"] == "Teacher"
    other = await body_ok(client, "/users/profile", new_user())
    assert other["display_name"] != "Wanjiku" and other["version"] == 0


async def test_settings_writes_reflected_in_reads_and_full_profile(client):
    uid = new_user()
    p = await write_ok(client, "POST", "/users/preferences", uid,
                       {"theme": "dark", "language": "sw", "notifications_enabled": False})
    got = await body_ok(client, "/users/preferences", uid)
    assert (got["theme"], got["language"], got["notifications_enabled"]) == ("dark", "sw", False)
    assert got["version"] == p["version"]
    a = await write_ok(client, "POST", "/users/accessibility", uid, {"font_size": "large", "high_contrast": True})
    got = await body_ok(client, "/users/accessibility", uid)
    assert got["font_size"] == "large" and got["high_contrast"] is True and got["version"] == a["version"]
    lang = await write_ok(client, "POST", "/users/languages", uid, {"language_code": "sw"})
    langs = await body_ok(client, "/users/languages", uid)
    assert [x["language_code"] for x in langs["languages"]] == ["sw"] and langs["version"] == lang["version"]
    i = await write_ok(client, "POST", "/users/interests", uid, {"interest": "Bill of Rights"})
    ints = await body_ok(client, "/users/interests", uid)
    assert [x["interest"] for x in ints["interests"]] == ["Bill of Rights"]
    full = await body_ok(client, "/users/profile/full", uid)
    assert full["preferences"]["theme"] == "dark" and full["accessibility"]["font_size"] == "large"
    assert full["languages"]["languages"][0]["language_code"] == "sw"
    assert full["version"] == i["version"] > lang["version"] > a["version"] > p["version"]
    # delete, then the list is empty and the version grew
    d = await write_ok(client, "DELETE", f"/users/languages/{lang['item']['id']}", uid)
    langs = await body_ok(client, "/users/languages", uid)
    assert langs["languages"] == [] and langs["version"] == d["version"] > i["version"]
    d2 = await write_ok(client, "DELETE", f"/users/interests/{i['item']['id']}", uid)
    assert (await body_ok(client, "/users/profile/full", uid))["version"] == d2["version"]
    # the preference write did not touch the profile version
    assert (await body_ok(client, "/users/profile", uid))["version"] == 0


async def test_complete_profile_aggregates_every_per_user_write(client):
    """/auth/me and /users/profile/full are the complete profile: each per-user write shows in both,
    with a version at least the write's; another user's are untouched."""
    uid, other = new_user(), new_user()
    writes = [
        ("PUT", "/users/profile", {"display_name": "Achieng"}, lambda b: b["display_name"] == "Achieng"),
        ("POST", "/users/preferences", {"theme": "dark"}, lambda b: b["preferences"]["theme"] == "dark"),
        ("POST", "/users/languages", {"language_code": "sw"},
         lambda b: [x["language_code"] for x in b["languages"]] == ["sw"]),
        ("POST", "/users/interests", {"interest": "Devolution"},
         lambda b: [x["interest"] for x in b["interests"]] == ["Devolution"]),
        ("POST", "/users/accessibility", {"font_size": "x-large"},
         lambda b: b["accessibility"]["font_size"] == "x-large"),
        ("POST", "/achievements", {"badge_type": "gold"}, lambda b: b["achievement_points"] == 50),
        ("PUT", "/onboarding/progress", {"current_step": "interests"},
         lambda b: b["onboarding"]["current_step"] == "interests"),
        ("POST", "/onboarding/complete", None, lambda b: b["onboarding"]["completed"] is True),
        ("POST", "/onboarding/reset", None, lambda b: b["onboarding"]["current_step"] == "welcome"),
    ]
    for method, path, payload, shows in writes:
        w = await write_ok(client, method, path, uid, payload)
        me = await body_ok(client, "/auth/me", uid)
        full = await body_ok(client, "/users/profile/full", uid)
        assert shows(me) and me["version"] == w["version"], (path, me)
        assert full["version"] == w["version"] and full["onboarding"] == me["onboarding"], (path, full)
        assert full["achievement_points"] == me["achievement_points"]
    award = await write_ok(client, "POST", "/achievements/award", other, {"user_id": uid, "badge_type": "bronze"})
    me = await body_ok(client, "/auth/me", uid)
    assert me["achievement_points"] == 60 and me["version"] == award["version"]
    assert (await body_ok(client, "/auth/me", other))["version"] == 0
    # reading progress is not part of the complete profile
    r = await write_ok(client, "PUT", "/reading/progress", uid, {"section": "Chapter 4", "percent": 40})
    assert (await body_ok(client, "/reading/progress", uid))["version"] == r["version"]
    assert (await body_ok(client, "/auth/me", uid))["version"] == award["version"] < r["version"]


async def test_onboarding_and_reading_groups(client):
    uid = new_user()
    steps = await body_ok(client, "/onboarding/steps", uid)
    assert [s["step"] for s in steps["steps"]][:2] == ["welcome", "profile"] and steps["version"] == 0
    got = await body_ok(client, "/onboarding/progress", uid)
    assert (got["current_step"], got["completed"], got["version"]) == ("welcome", False, 0)
    w = await write_ok(client, "PUT", "/onboarding/progress", uid, {"current_step": "languages"})
    got = await body_ok(client, "/onboarding/progress", uid)
    assert got["completed_steps"] == ["welcome", "profile"] and got["version"] == w["version"]
    await write_ok(client, "POST", "/onboarding/complete", uid)
    assert (await body_ok(client, "/onboarding/progress", uid))["completed"] is True
    r = await write_ok(client, "POST", "/onboarding/reset", uid)
    got = await body_ok(client, "/onboarding/progress", uid)
    assert (got["current_step"], got["completed"], got["version"]) == ("welcome", False, r["version"])
    await write_ok(client, "PUT", "/reading/progress", uid, {"section": "Article 10", "percent": 5})
    assert (await body_ok(client, "/reading/progress", uid))["section"] == "Article 10"


@pytest.mark.parametrize("method,path,payload,status,code", [
    ("PUT", "/onboarding/progress", {"current_step": "nowhere"}, 200, 400),
    ("PUT", "/onboarding/progress", {"current_step": 3}, 422, None),
    ("POST", "/onboarding/complete", None, 200, 400),  # completed already (set up below)
    ("PUT", "/users/profile", {"display_name": ""}, 200, 400),
    ("PUT", "/users/profile", {"display_name": 7}, 422, None),
    ("POST", "/users/languages", {"language_code": "sw"}, 200, 400),  # a duplicate (set up below)
    ("POST", "/achievements/award", {"badge_type": "wooden"}, 200, 400),
    ("PUT", "/reading/progress", {"section": "x", "percent": 101}, 200, 400),
    ("DELETE", "/users/interests/999999", None, 200, 404),
])
async def test_refused_writes_change_nothing(client, method, path, payload, status, code):
    """A write refused with an HTTP 4xx or an envelope 4xx changes nothing: no version moves."""
    uid = new_user()
    await write_ok(client, "POST", "/onboarding/complete", uid)
    await write_ok(client, "POST", "/users/languages", uid, {"language_code": "sw"})
    before = (await standin_stats(client))["counter"]
    me = await body_ok(client, "/auth/me", uid)
    got_status, data = await send(client, method, path, uid, payload)
    assert got_status == status and (code is None or data["header"]["responseCode"] == code), data
    assert (await standin_stats(client))["counter"] == before
    assert await body_ok(client, "/auth/me", uid) == me


async def test_award_visible_in_achievements_summary_leaderboard_recent(client):
    caller, target = new_user(), new_user()
    await write_ok(client, "PUT", "/users/profile", target, {"display_name": "Target Person"})
    board0 = await body_ok(client, "/achievements/leaderboard", caller)
    a1 = await write_ok(client, "POST", "/achievements/award", caller,
                        {"user_id": target, "badge_type": "gold", "achievement_data": {"quiz": "ch4"}})
    assert a1["user_id"] == target and a1["version"] > board0["version"]
    ach = await body_ok(client, "/achievements", target)
    assert [x["badge_type"] for x in ach["achievements"]] == ["gold"] and ach["version"] == a1["version"]
    assert ach["achievements"][0]["achievement_data"] == {"quiz": "ch4"}
    assert (await body_ok(client, "/achievements", caller))["achievements"] == []  # caller got nothing
    summ = await body_ok(client, "/achievements/summary", target)
    assert summ["summary"]["total_points"] == 50 and summ["version"] == a1["version"]
    assert (await body_ok(client, "/users/stats", target))["stats"]["achievement_points"] == 50
    assert (await body_ok(client, "/achievements/stats", target))["stats"]["total_achievements"] == 1
    one = await body_ok(client, f"/achievements/{a1['achievement']['id']}", target)
    assert one["achievement"]["badge_type"] == "gold"
    board = await body_ok(client, "/achievements/leaderboard", caller)
    assert board["version"] >= a1["version"] > board0["version"]
    row = next(r for r in board["leaderboard"] if r["user_id"] == target)
    assert row["display_name"] == "Target Person" and row["total_points"] == 50 and row["rank"] >= 1
    recent = await body_ok(client, "/achievements/recent?limit=5", caller)
    assert recent["recent_achievements"][0]["display_name"] == "Target Person"
    assert recent["version"] >= a1["version"]
    # POST /achievements awards the caller; a second award bumps every global read again
    a2 = await write_ok(client, "POST", "/achievements", caller, {"badge_type": "platinum"})
    assert a2["user_id"] == caller and a2["version"] > a1["version"]
    board = await body_ok(client, "/achievements/leaderboard?limit=10&offset=0", target)
    assert [r["user_id"] for r in board["leaderboard"][:2]] == [caller, target]
    assert [r["rank"] for r in board["leaderboard"][:2]] == [1, 2] and board["version"] >= a2["version"]
    assert (await body_ok(client, "/achievements/type/platinum", caller))["total_badges"] == 1
    assert (await body_ok(client, "/achievements/type/platinum", target))["total_badges"] == 0
    # a profile update of a user shown on the leaderboard raises that page's version
    w = await write_ok(client, "PUT", "/users/profile", target, {"display_name": "Renamed"})
    board = await body_ok(client, "/achievements/leaderboard", caller)
    assert board["version"] >= w["version"]
    assert next(r for r in board["leaderboard"] if r["user_id"] == target)["display_name"] == "Renamed"
    assert (await body_ok(client, "/users/profile/full", target))["version"] >= w["version"]


async def test_route_order_and_versions_only_grow(client):
    uid = new_user()
    seen = []
    for path in ("/achievements/summary", "/achievements/stats", "/achievements/types",
                 "/achievements/leaderboard", "/achievements/recent", "/achievements/type/gold"):
        status, _, data = await get(client, path, uid)
        assert status == 200 and data["header"]["responseCode"] == 200, path
    for _ in range(3):
        seen.append((await write_ok(client, "POST", "/achievements", uid, {"badge_type": "bronze"}))["version"])
    assert seen == sorted(set(seen))
    stats = await standin_stats(client)
    assert stats["counter"] == seen[-1]
    assert stats["by_route"]["GET /api/v1/achievements/summary"] == 1
    assert "GET /api/v1/achievements/{achievement_id}" not in stats["by_route"]


# -- application errors (HTTP 200) and HTTP errors ----------------------------------------------------
@pytest.mark.parametrize("method,path,payload,code", [
    ("GET", "/achievements/00000000-0000-0000-0000-000000000000", None, 404),
    ("GET", "/achievements/type/wooden", None, 400),
    ("POST", "/users/preferences", {"theme": "purple"}, 400),
    ("POST", "/users/preferences", {"language": "fr"}, 400),
    ("POST", "/users/accessibility", {"font_size": "huge"}, 400),
    ("POST", "/achievements/award", {"badge_type": "diamond"}, 400),
    ("POST", "/achievements", {"badge_type": "diamond"}, 400),
    ("PUT", "/users/profile", {"display_name": "   "}, 400),
    ("DELETE", "/users/languages/999999", None, 404),
    ("DELETE", "/users/interests/999999", None, 404),
])
async def test_application_errors_are_http_200(client, method, path, payload, code):
    uid = new_user()
    status, data = await send(client, method, path, uid, payload)
    assert status == 200
    assert data["header"]["responseCode"] == code and data["header"]["responseMessage"]
    assert (await standin_stats(client))["counter"] == 0  # nothing was written


async def test_duplicate_language_is_app_error(client):
    uid = new_user()
    await write_ok(client, "POST", "/users/languages", uid, {"language_code": "en"})
    status, data = await send(client, "POST", "/users/languages", uid, {"language_code": "en"})
    assert status == 200 and data["header"]["responseCode"] == 400


@pytest.mark.parametrize("method,path,raw", [
    ("PUT", "/users/profile", b'{"display_name": '),
    ("PUT", "/users/profile", b'{"display_name": 5}'),
    ("PUT", "/users/profile", b'["not", "an", "object"]'),
    ("POST", "/users/preferences", b'{"notifications_enabled": "yes"}'),
    ("POST", "/users/accessibility", b'{"high_contrast": 1}'),
    ("POST", "/users/languages", b'{}'),
    ("POST", "/users/languages", b''),
    ("POST", "/achievements/award", b'{"badge_type": "gold", "achievement_data": [1]}'),
    ("POST", "/achievements/award", b'{"badge_type": "gold", "user_id": 7}'),
    ("POST", "/auth/login", b'{"user": "x"}'),
    ("GET", "/achievements/leaderboard?limit=ten", b''),
    ("GET", "/achievements/leaderboard?limit=0", b''),
    ("GET", "/achievements/leaderboard?offset=-1", b''),
    ("GET", "/achievements/recent?limit=51", b''),
    ("DELETE", "/users/languages/abc", b''),
])
async def test_validation_errors_are_422(client, method, path, raw):
    resp = await client.request(method, API + path, data=raw, headers=auth(new_user()))
    assert resp.status == 422
    data = await resp.json()
    assert isinstance(data["detail"], list) and data["detail"][0]["loc"][0] in ("body", "query", "path")


async def test_unknown_route_404_and_wrong_method(client):
    for path in ("/api/v1/nope", "/api/v1/users/profile/extra", "/api/v2/users/profile"):
        resp = await client.get(path, headers=auth("u"))
        assert resp.status == 404 and await resp.json() == {"detail": "Not Found"}
    resp = await client.patch(API + "/users/profile", headers=auth("u"))
    assert resp.status == 405 and "detail" in await resp.json()


async def test_rate_limit_per_caller(aiohttp_client):
    client = await aiohttp_client(build_app(delay_ms=0, rate_limit=2))
    a, b = new_user(), new_user()
    for expected in (1, 0):
        _, headers, _ = await get(client, "/users/profile", a)
        assert headers["X-RateLimit-Remaining"] == str(expected) and headers["X-RateLimit-Limit"] == "2"
    status, headers, data = await get(client, "/users/profile", a)
    assert status == 429 and data == {"detail": "Rate limit exceeded"}
    assert (await get(client, "/users/profile", b))[0] == 200  # per user, not global


# -- test hooks ---------------------------------------------------------------------------------
async def test_counters_count_backend_requests(client):
    uid = new_user()
    await get(client, "/users/profile", uid)
    assert (await client.post("/_standin/reset-stats")).status == 200
    assert await standin_stats(client) == {"requests": 0, "queries": 0, "by_route": {}, "counter": 0,
                                           "delay_ms": 0}
    for _ in range(3):
        await get(client, "/users/profile", uid)
    await get(client, "/achievements/abc", uid)
    await get(client, "/achievements/def", uid)
    await get(client, "/users/profile")                # 401: a request, not a query
    await client.get(API + "/nope")                    # 404: a request, no route
    await write_ok(client, "PUT", "/users/profile", uid, {"bio": "x"})
    s = await standin_stats(client)
    assert s["requests"] == 8 and s["queries"] == 6
    assert s["by_route"] == {"GET /api/v1/users/profile": 4, "GET /api/v1/achievements/{achievement_id}": 2,
                             "PUT /api/v1/users/profile": 1}
    assert (await client.get("/_standin/health")).status == 200
    resp = await client.post("/_standin/delay", json={"delay_ms": 5})
    assert (await resp.json())["delay_ms"] == 5 and (await standin_stats(client))["delay_ms"] == 5


async def test_gate_holds_a_read_after_it_read_its_data(client):
    uid = new_user()
    await write_ok(client, "PUT", "/users/profile", uid, {"display_name": "Old"})
    resp = await client.post("/_standin/gate", json={"method": "GET", "path": API + "/users/profile"})
    assert (await resp.json())["armed"] is True
    held = asyncio.create_task(get(client, "/users/profile", uid))
    for _ in range(200):
        g = await (await client.get("/_standin/gate")).json()
        if g["waiting"] == 1:
            break
        await asyncio.sleep(0.01)
    assert g == {"armed": False, "waiting": 1, "held_total": 1, "method": None, "path": None}
    assert client.server.app[STATE].gate.held.is_set()
    # the write lands while the read is held; other requests are not gated
    w = await write_ok(client, "PUT", "/users/profile", uid, {"display_name": "New"})
    assert (await body_ok(client, "/users/profile", uid))["display_name"] == "New"
    assert not held.done()
    rel = await (await client.post("/_standin/gate/release")).json()
    assert rel["released"] == 1
    status, _, data = await asyncio.wait_for(held, 5)
    assert status == 200 and data["body"]["display_name"] == "Old"   # pre-write data, older version
    assert data["body"]["version"] < w["version"]
    assert (await (await client.get("/_standin/gate")).json())["waiting"] == 0


async def test_gate_matches_route_template(client):
    uid = new_user()
    await client.post("/_standin/gate", json={"method": "*", "path": API + "/achievements/{achievement_id}"})
    held = asyncio.create_task(get(client, "/achievements/xyz", uid))
    await asyncio.wait_for(client.server.app[STATE].gate.held.wait(), 5)
    await client.post("/_standin/gate/release")
    status, _, data = await asyncio.wait_for(held, 5)
    assert status == 200 and data["header"]["responseCode"] == 404


async def test_fail_injection(client):
    uid = new_user()
    resp = await client.post("/_standin/fail", json={"method": "GET", "path": API + "/users/profile",
                                                     "status": 503, "count": 2})
    assert resp.status == 200
    for _ in range(2):
        status, _, data = await get(client, "/users/profile", uid)
        assert status == 503 and data == {"detail": "Injected failure"}
    assert (await get(client, "/users/profile", uid))[0] == 200
    await client.post("/_standin/fail", json={"method": "GET", "path": API + "/users/preferences",
                                              "response_code": 500})
    status, _, data = await get(client, "/users/preferences", uid)
    assert status == 200 and data["header"]["responseCode"] == 500
    s = await standin_stats(client)
    assert s["requests"] == 4 and s["queries"] == 1
    resp = await client.post("/_standin/fail", json={"method": "GET"})
    assert resp.status == 422


# -- the process ----------------------------------------------------------------------------------
async def test_cli_prints_one_line_and_serves():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "standin", "--listen", "127.0.0.1:0", "--delay-ms", "0"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        assert line.startswith("standin listening on http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        assert port > 0
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /api/v1/users/profile HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token('cli')}"
                     "\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 200") and b'"user_id":"cli"' in raw
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert out == "" and proc.returncode == 0, (out, err)
