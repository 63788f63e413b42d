"""Key and purge injection through the real proxy: hostile path params, query values and user ids
(``*``, ``:``, ``{}``, ``?``/``[]``/``\\`` encoded, percent-encoding and its case, unicode and its
normal forms, NUL, invalid UTF-8, 2,000-character values). A request is only ever answered with the body
its own target gets from the origin (no two distinct requests share a key), equivalent spellings share
one fill, and a purge of one user never touches another whose id is a prefix, a superset, or contains
``*``, ``:`` or braces. Property-based tests of the key builder and rule parser:
tests/unit/test_keys.py and tests/unit/test_policy.py; of path/query normalisation: test_normalisation.py."""
from __future__ import annotations

import pytest

from proxy.upstream.client import UpstreamConfig
from tests.functional.conftest import ADMIN_TOKEN, mint
from tests.security.helpers import base_url, send

RULES = """\
version: 1
prefix: "inj"
rules:
  - {name: item, match: "GET /items/{item}", key: "items:{user_id}:item:{item}"}
  - {name: search, match: GET /search, key: "search:global", auth: none, vary_query: [q, page]}
"""
LONG = "a" * 2000
PATH_VALUES = [
    "*", "%2A", "%2a", ":", "%3A", "%3a", "a:b", "a%3Ab", "{}", "%7B%7D", "%7Buser_id%7D", "%7Bitem%7D",
    "%3F", "%5Bab%5D", "%5C", "%25", "%252A", "%25%32%41", "%00", "a%00b", "%FF", "%C3%A9", "%c3%a9", "e%CC%81",
    "%F0%9F%98%80", "+", "%20", "%2B", "~", "%7E", "global", "%H0123", "...", "a|q:x=1", "a%7Cq%3Ax%3D1",
    LONG, LONG[:-1] + "b", "%41" * 700, "A" * 700, "%2F", "a%2Fb", "%2e%2e", "%2E",
]
QUERIES = [
    "q=*", "q=%2A", "q=%2a", "q=a:b", "q=a%3Ab", "q=%7B%7D", "q=%3D", "q==", "q=a%26page%3D2", "q=+", "q=%20",
    "q=%2B", "q=%C3%A9", "q=e%CC%81", "q=%00", "q=%FF", f"q={LONG}", f"q={LONG[:-1]}b", "q=x&page=1",
    "page=1&q=x", "q=x&page=1&page=2", "q=x&Q=y", "q=x&page", "q", "q=", "page=%31&q=%78", "q=x;page=2",
]
USERS = ["a", "a:item:b", "a}:item:{b", "a*", "*", "{a}", "%61", "A", "a%3Ab", "global"]
ITEMS = ["b", "b:item:c", "c", "*", "%7Bb%7D"]


@pytest.fixture
async def cache(make_proxy, reflector, tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return await make_proxy(upstream=UpstreamConfig(url=reflector.url, read_timeout=5.0), rules_path=path)


async def round_trip(cache, reflector, targets: list[tuple[str, str]]) -> None:
    """Each (user, target) through the proxy twice, first in order then in reverse: every answer is the
    origin's own answer to that exact target, and equal answers were fetched once."""
    direct, first = {}, {}
    for user, target in targets:
        headers = {"Authorization": f"Bearer {mint(user)}"} if user else {}
        direct[user, target] = await send(reflector.url, "GET", target, headers)
        assert direct[user, target].status == 200, (target, direct[user, target])
        first[user, target] = await send(base_url(cache.client), "GET", target, {**headers, "X-Test-Via": "proxy"})
    for user, target in reversed(targets):
        headers = {"Authorization": f"Bearer {mint(user)}"} if user else {}
        again = await send(base_url(cache.client), "GET", target, {**headers, "X-Test-Via": "proxy"})
        assert first[user, target].body == direct[user, target].body, (user, target, first[user, target])
        assert again.body == direct[user, target].body, (user, target, again)
        bypassed = first[user, target].x_cache == "BYPASS"
        assert again.x_cache == ("BYPASS" if bypassed else "HIT"), (user, target, first[user, target], again)
    cached = {direct[t].body for t in targets if first[t].x_cache != "BYPASS"}
    bypassed = sum(2 for t in targets if first[t].x_cache == "BYPASS")
    assert sum(reflector.via_proxy.values()) == len(cached) + bypassed  # one fill per distinct answer


async def test_hostile_path_values_never_share_a_key(cache, reflector):
    await round_trip(cache, reflector, [("u1", f"/items/{v}") for v in PATH_VALUES])
    bypassed = {v for v in PATH_VALUES if reflector.via_proxy[f"/items/{v}"] == 2}
    assert bypassed == {"%2F", "a%2Fb", "%2e%2e", "%2E"}  # non-canonical: passed through, never keyed


async def test_hostile_query_values_never_share_a_key(cache, reflector):
    await round_trip(cache, reflector, [(None, f"/search?{q}") for q in QUERIES])
    bypassed = {q for q in QUERIES if reflector.via_proxy[f"/search?{q}"] == 2}
    # duplicates, names outside vary_query, a name without '=' and invalid UTF-8 are passed through
    assert bypassed == {"q=x&page=1&page=2", "q=x&Q=y", "q=%FF", "q", "q=x&page"}, bypassed


async def test_hostile_user_ids_never_share_a_key(cache, reflector):
    await round_trip(cache, reflector, [(u, f"/items/{i}") for u in USERS for i in ITEMS])


# ------------------------------------------------------------------------ purges on the stand-in

PURGE_USERS = ["a", "ab", "a*", "a:b", "a:*", "a}", "{a}", "*", "a%2A", "A", "a ", "global", "a\x00b",
               "a" * 200, "a" * 200 + "b", "é", "e\u0301"]
PROFILE, ACHIEVEMENTS = "/api/v1/users/profile", "/api/v1/achievements"


async def warm_all(proxy, users, url):
    bodies = {}
    for user in users:
        first = await proxy.get(url, token=mint(user))
        assert first.status == 200 and first.code == 200, (user, first)
        second = await proxy.get(url, token=mint(user))
        assert second.x_cache == "HIT" and second.body == first.body, (user, second)
        bodies[user] = second.body
    return bodies


async def test_a_purge_never_reaches_another_user(proxy, backend):
    profiles = await warm_all(proxy, PURGE_USERS, PROFILE)
    achievements = await warm_all(proxy, PURGE_USERS, ACHIEVEMENTS)
    assert len(set(profiles.values())) == len(PURGE_USERS)  # each user their own entry
    for user in PURGE_USERS:
        write = await proxy.request("PUT", PROFILE, token=mint(user), json={"display_name": "New Name"})
        assert write.status == 200 and write.code == 200, (user, write)
        for other in PURGE_USERS:
            reply = await proxy.get(PROFILE, token=mint(other))
            if other == user:
                assert reply.x_cache == "MISS" and b"New Name" in reply.body, (user, reply)
                profiles[user] = reply.body
            else:
                assert reply.x_cache == "HIT" and reply.body == profiles[other], (user, other, reply)
    for user in PURGE_USERS:
        assert (await proxy.get(ACHIEVEMENTS, token=mint(user))).body == achievements[user], user


async def test_manual_purges_of_hostile_ids_are_exact(proxy, backend):
    users = ["a", "a*", "*", "a:b", "a}", "{a}"]
    achievements = await warm_all(proxy, users, ACHIEVEMENTS)

    async def expect_purged(purged: set[str]) -> None:
        for user in users:
            reply = await proxy.get(ACHIEVEMENTS, token=mint(user))
            assert reply.x_cache == ("MISS" if user in purged else "HIT"), (user, purged, reply)
            assert reply.body == achievements[user] or user in purged, user
            achievements[user] = reply.body

    done = await proxy.request("POST", "/api/v1/achievements/cache/invalidate", token=ADMIN_TOKEN,
                               json={"user_id": "a*"})
    assert done.status == 200 and done.json["body"]["invalidated"] == ["achievements:{a%2A}:*"], done
    await expect_purged({"a*"})
    done = await proxy.request("POST", "/api/v1/achievements/cache/invalidate", token=ADMIN_TOKEN,
                               json={"user_id": "a:b"})
    assert done.status == 200, done
    await expect_purged({"a:b"})
    star = await proxy.request("POST", "/_cache/purge", token=ADMIN_TOKEN, json={"pattern": "achievements:{*}:*"})
    assert star.status == 200, star
    await expect_purged({"*"})
    brace = await proxy.request("POST", "/_cache/purge", token=ADMIN_TOKEN, json={"pattern": "achievements:{a}}:*"})
    assert brace.status == 200, brace
    await expect_purged({"a}"})
    for pattern in ("achievements:*", "*", "achievements:{a:b}:*", "achievements:{a}:*:*", "achievements:{}:*",
                    "achievements:{a*:*", "user:{a}:profile:*", "achievements:{a}:achievements:x"):
        refused = await proxy.request("POST", "/_cache/purge", token=ADMIN_TOKEN, json={"pattern": pattern})
        assert refused.status == 400, (pattern, refused)  # never a wider purge
    await expect_purged(set())
