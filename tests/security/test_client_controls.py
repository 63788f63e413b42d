"""Clients cannot wipe or bypass the cache for others.

* Cache-Control: no-cache / max-age=0 / no-store, Pragma: no-cache, Clear-Site-Data from a client are a
  per-rule policy: with the shipped default (``client_cache_control: ignore``) the entry still answers
  (HIT, no backend request); with ``revalidate`` the request goes to the backend and the entry is
  refreshed, never wiped (not even when the backend fails), and other users' entries are untouched.
* The manual invalidation endpoints refuse every bad credential (401/403, nothing purged, the backend
  never sees them); the ``/_cache/*`` admin endpoints need the admin credential; both are rate-limited
  per client address (429 + Retry-After), the admin credential excepted.
Own-namespace and admin invalidation that work: tests/functional/test_purges.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from proxy.serve.config import Config
from proxy.core.rulesfile import load_rules
from proxy.upstream.client import UpstreamConfig
from tests.functional.conftest import ADMIN_TOKEN, RULES_PATH, mint, new_user
from tests.security.helpers import bad_tokens

PROFILE, ACHIEVEMENTS, LEADERBOARD = "/api/v1/users/profile", "/api/v1/achievements", \
    "/api/v1/achievements/leaderboard?limit=10&offset=0"
USERS_EP, ACH_EP = "/api/v1/users/cache/invalidate", "/api/v1/achievements/cache/invalidate"
GLOBAL_EP = "/api/v1/achievements/cache/invalidate/global"
DIRECTIVES = [
    {"Cache-Control": "no-cache"},
    {"Cache-Control": "max-age=0"},
    {"Cache-Control": "no-store"},
    {"Cache-Control": "no-cache, no-store, must-revalidate, max-age=0"},
    {"Pragma": "no-cache"},
    {"Clear-Site-Data": '"cache"'},
    {"Clear-Site-Data": '"*"'},
    {"Cache-Control": "max-age=0", "Pragma": "no-cache", "Clear-Site-Data": '"cache", "storage"'},
]
REVALIDATE_TRIGGERS = [{"Cache-Control": "no-cache"}, {"Cache-Control": "max-age=0"}, {"Pragma": "no-cache"},
                       {"Cache-Control": "public, MAX-AGE=000"}]


def test_the_shipped_default_is_ignore():
    rules = load_rules(RULES_PATH, environ={})
    assert {r.client_cache_control for r in rules.rules if r.key is not None} == {"ignore"}


async def warm(proxy, user: str, url: str):
    first = await proxy.get(url, user)
    assert first.status == 200 and first.code == 200, first
    second = await proxy.get(url, user)
    assert second.x_cache == "HIT", second
    return second


async def test_client_directives_are_ignored_by_default(proxy, backend):
    a, b = new_user(), new_user()
    await backend.seed(a)
    mine, board = await warm(proxy, a, PROFILE), await warm(proxy, b, LEADERBOARD)
    before = await backend.requests()
    for headers in DIRECTIVES:
        own = await proxy.get(PROFILE, a, headers=headers)
        assert own.x_cache == "HIT" and own.body == mine.body, (headers, own)
        shared = await proxy.get(LEADERBOARD, a, headers=headers)
        assert shared.x_cache == "HIT" and shared.body == board.body, (headers, shared)
    assert await backend.requests() == before
    assert (await proxy.get(LEADERBOARD, b)).body == board.body


@pytest.fixture
async def revalidating(make_proxy, tmp_path):
    text = Path(RULES_PATH).read_text()
    assert text.count("\ndefaults:\n") == 1
    path = tmp_path / "rules.yaml"
    path.write_text(text.replace("\ndefaults:\n", "\ndefaults:\n  client_cache_control: revalidate\n"))
    return await make_proxy(rules_path=path)


async def test_revalidate_refreshes_the_entry_and_nothing_else(revalidating, backend):
    proxy = revalidating
    a, b = new_user(), new_user()
    await backend.seed(a)
    await backend.seed(b)
    old = await warm(proxy, a, PROFILE)
    theirs = await warm(proxy, b, PROFILE)
    changed = await backend.call("PUT", PROFILE, a, {"display_name": "Changed Behind The Proxy"})
    assert changed.code == 200 and (await proxy.get(PROFILE, a)).body == old.body  # the proxy cannot know

    route_before = await backend.route_count("GET", PROFILE)
    fresh = await proxy.get(PROFILE, a, headers={"Cache-Control": "no-cache"})
    assert fresh.x_cache == "MISS" and "fwd=request" in fresh.cache_status and "stored" in fresh.cache_status, fresh
    assert fresh.version > old.version and b"Changed Behind The Proxy" in fresh.body, fresh
    after = await proxy.get(PROFILE, a)
    assert after.x_cache == "HIT" and after.body == fresh.body, after  # refreshed, not wiped
    for headers in REVALIDATE_TRIGGERS:
        again = await proxy.get(PROFILE, a, headers=headers)
        assert again.x_cache == "MISS" and "fwd=request" in again.cache_status, (headers, again)
    for headers in ({"Clear-Site-Data": '"*"'}, {"Cache-Control": "no-store"}, {"Cache-Control": "max-age=60"}):
        assert (await proxy.get(PROFILE, a, headers=headers)).x_cache == "HIT", headers
    assert await backend.route_count("GET", PROFILE) - route_before == 1 + len(REVALIDATE_TRIGGERS)

    other = await proxy.get(PROFILE, b)  # b's entry was neither refreshed nor dropped by a's requests
    assert other.x_cache == "HIT" and other.body == theirs.body, other


async def test_revalidating_a_shared_entry_refreshes_it_for_everyone(revalidating, backend):
    proxy = revalidating
    a, b = new_user(), new_user()
    await backend.award(a)
    board = await warm(proxy, a, LEADERBOARD)
    refreshed = await proxy.get(LEADERBOARD, b, headers={"Pragma": "no-cache"})
    assert refreshed.x_cache == "MISS" and "stored" in refreshed.cache_status, refreshed
    seen_by_a = await proxy.get(LEADERBOARD, a)
    assert seen_by_a.x_cache == "HIT" and seen_by_a.body == refreshed.body != board.body, seen_by_a


async def test_revalidating_while_the_backend_fails_keeps_the_entry(revalidating, backend):
    proxy = revalidating
    a = new_user()
    await backend.seed(a)
    entry = await warm(proxy, a, PROFILE)
    await backend.control("POST", "fail", {"method": "GET", "path": PROFILE, "status": 503, "count": 1})
    failed = await proxy.get(PROFILE, a, headers={"Cache-Control": "no-cache"})
    assert failed.status in (200, 503) and failed.status != 500, failed  # the entry, or the backend's 503
    kept = await proxy.get(PROFILE, a)
    assert kept.x_cache == "HIT" and kept.body == entry.body, kept


# ----------------------------------------------------------------------- invalidation and admin endpoints

def bad_credentials(victim: str) -> dict[str, dict[str, str]]:
    out = {"none": {}, "basic": {"Authorization": "Basic YWRtaW46YWRtaW4="},
           "empty-bearer": {"Authorization": "Bearer "},
           "admin-token-plus-one": {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
           "admin-token-minus-one": {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
           "admin-token-upper": {"Authorization": f"Bearer {ADMIN_TOKEN.upper()}"},
           "admin-token-no-scheme": {"Authorization": ADMIN_TOKEN},
           "admin-token-as-basic": {"Authorization": f"Basic {ADMIN_TOKEN}"},
           "admin-token-in-cookie": {"Cookie": f"admin_token={ADMIN_TOKEN}; access_token={ADMIN_TOKEN}"},
           "admin-token-in-other-header": {"X-Admin-Token": ADMIN_TOKEN, "X-Api-Key": ADMIN_TOKEN}}
    out.update({kind: {"Authorization": f"Bearer {tok}"} for kind, tok in bad_tokens(victim, mint(new_user())).items()})
    return out


async def test_invalidation_endpoints_refuse_bad_credentials_and_purge_nothing(make_proxy, backend):
    proxy = await make_proxy(admin_rate=1e6)  # this test is about credentials, not the rate limit
    victim = new_user()
    await backend.seed(victim)
    warm_entries = {url: await warm(proxy, victim, url) for url in (PROFILE, ACHIEVEMENTS, LEADERBOARD)}
    before = await backend.requests()
    for kind, headers in bad_credentials(victim).items():
        for endpoint in (USERS_EP, ACH_EP, GLOBAL_EP):
            for target in (endpoint, endpoint + f"?token={ADMIN_TOKEN}&access_token={mint(victim)}"):
                reply = await proxy.request("POST", target, json={"user_id": victim}, headers=headers)
                assert reply.status == 401 and "detail" in reply.json, (kind, target, reply)
    user_on_global = await proxy.request("POST", GLOBAL_EP, victim)
    assert user_on_global.status == 403, user_on_global
    other_on_victim = await proxy.request("POST", USERS_EP, new_user(), json={"user_id": victim})
    assert other_on_victim.status == 403, other_on_victim
    wrong_method = await proxy.request("GET", USERS_EP, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert wrong_method.status == 405, wrong_method
    assert await backend.requests() == before  # answered by the proxy, never forwarded
    for url, entry in warm_entries.items():
        reply = await proxy.get(url, victim)
        assert reply.x_cache == "HIT" and reply.body == entry.body, (url, reply)


ADMIN_PATHS = [("GET", "/_cache/explain?method=GET&url=/api/v1/users/profile"), ("GET", "/_cache/stats"),
               ("POST", "/_cache/purge")]


async def test_admin_paths_need_the_admin_credential(make_proxy, backend):
    proxy = await make_proxy(admin_rate=1e6)
    victim = new_user()
    await backend.seed(victim)
    entry = await warm(proxy, victim, PROFILE)
    before = await backend.requests()
    for method, path in ADMIN_PATHS:
        body = {"pattern": f"user:{{{victim}}}:*"} if method == "POST" else None
        anonymous = await proxy.request(method, path, json=body)
        assert anonymous.status == 401 and "detail" in anonymous.json, (path, anonymous)
        for kind, headers in bad_credentials(victim).items():
            reply = await proxy.request(method, path, json=body, headers=headers)
            assert reply.status in (401, 403) and "detail" in reply.json, (kind, path, reply)
        user = await proxy.request(method, path, victim, json=body)
        assert user.status == 403, (path, user)
    assert (await proxy.get(PROFILE, victim)).x_cache == "HIT"  # no refused purge was applied
    for method, path in ADMIN_PATHS:
        body = {"pattern": f"user:{{{victim}}}:*"} if method == "POST" else None
        admin = await proxy.request(method, path, json=body, token=ADMIN_TOKEN)
        assert admin.status == 200, (path, admin)
    assert await backend.requests() == before
    purged = await proxy.get(PROFILE, victim)
    assert purged.x_cache == "MISS" and purged.version == entry.version, purged


async def test_without_an_admin_token_configured_nothing_is_admin(make_configured_proxy, backend):
    proxy = await make_configured_proxy(admin_token=None, admin_rate=1e6)
    victim = new_user()
    await backend.seed(victim)
    await warm(proxy, victim, LEADERBOARD)
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"},
                    {"Authorization": f"Bearer {ADMIN_TOKEN}"}):
        for method, path in ADMIN_PATHS:
            assert (await proxy.request(method, path, headers=headers)).status in (401, 403), (headers, path)
        glob = await proxy.request("POST", GLOBAL_EP, headers=headers, json={})
        assert glob.status in (401, 403), (headers, glob)
    assert (await proxy.get(LEADERBOARD, victim)).x_cache == "HIT"
    own = await proxy.request("POST", USERS_EP, victim)  # a user's own invalidation still works
    assert own.status == 200 and own.code == 200, own


async def test_invalidation_and_admin_paths_are_rate_limited_per_client(make_proxy, backend):
    proxy = await make_proxy(admin_rate=0.01)  # a burst of one, then one more every 100 s
    victim = new_user()
    await backend.seed(victim)
    entry = await warm(proxy, victim, PROFILE)
    before = await backend.requests()
    burst = [await proxy.request("POST", USERS_EP, json={"user_id": victim}) for _ in range(6)]
    assert [r.status for r in burst] == [401] + [429] * 5, burst
    for reply in burst[1:]:
        assert int(reply.headers["Retry-After"]) >= 1 and "detail" in reply.json, reply
    own = await proxy.request("POST", USERS_EP, victim)  # a valid user from the same address waits too
    assert own.status == 429, own
    assert (await proxy.get(PROFILE, victim)).body == entry.body  # so nothing was purged
    stats = await proxy.request("GET", "/_cache/stats", headers={"Authorization": "Bearer wrong"})
    assert stats.status == 429 and int(stats.headers["Retry-After"]) >= 1, stats

    admin = await proxy.request("POST", USERS_EP, json={"user_id": victim}, token=ADMIN_TOKEN)
    assert admin.status == 200 and admin.code == 200, admin  # the operator is never locked out
    assert (await proxy.request("GET", "/_cache/stats", token=ADMIN_TOKEN)).status == 200
    assert await backend.requests() == before
    assert (await proxy.get(PROFILE, victim)).x_cache == "MISS"


def test_rate_limiting_is_on_by_default():
    config = Config(upstream=UpstreamConfig(url="http://127.0.0.1:1"))
    assert 0 < config.admin_rate <= 10
