"""When a write purges, and what a write no rule matches purges (rules.yaml ``purge_when``,
``unmatched_writes``).

* A write the backend refused changed nothing (upstream-api.md): an HTTP 4xx (422) or an HTTP 200
  whose envelope ``header.responseCode`` is 4xx purges nothing: the next read is still a HIT and the
  store's generations have not moved. A success, an envelope 5xx, an HTTP 5xx, or no answer at all
  (timeout: the write may have committed) purges.
* The fail-safe: an unsafe request no rule matches (``PUT /onboarding/progress``, which changes
  ``/auth/me``) purges the verified caller's ``user:`` and ``achievements:`` namespaces before its
  answer is released, counted as ``katiba_cache_purges_total{rule="unmatched"}``; nobody else's, and
  nothing per-user without a verified token. The proxy's own endpoints are not writes.
"""
from __future__ import annotations

from multidict import CIMultiDict

from proxy.core.policy import Lookup, RequestView, classify
from proxy.core.identity import Identity
from proxy.upstream.client import UpstreamConfig

from .conftest import API, ROOT, new_user

ME, PROFILE, ACHIEVEMENTS = f"{API}/auth/me", f"{API}/users/profile", f"{API}/achievements"
READS = (ME, PROFILE, ACHIEVEMENTS)


async def warm(proxy, user: str, paths=READS) -> dict[str, object]:
    out = {}
    for path in paths:
        first, second = await proxy.get(path, user), await proxy.get(path, user)
        assert (first.x_cache, second.x_cache) == ("MISS", "HIT"), (path, first, second)
        out[path] = second
    return out


async def generations(proxy, user: str, path: str) -> list:
    """The current generation tokens guarding ``user``'s entry of ``path`` (read from the store)."""
    d = classify(RequestView("GET", path, "", CIMultiDict()), proxy.proxy.rules, Identity(user, 2e9))
    assert isinstance(d, Lookup), d
    _, tokens = await proxy.proxy.store.lookup(d.key, d.gen_keys)
    return list(tokens)


async def still_hits(proxy, user: str, warm_replies: dict) -> None:
    for path, before in warm_replies.items():
        reply = await proxy.get(path, user)
        assert reply.x_cache == "HIT" and reply.body == before.body, (path, reply)


async def purges(proxy, rule: str) -> float:
    return await proxy.metric("katiba_cache_purges_total", rule=rule)


# ----------------------------------------------------------------------------- refused writes

async def test_a_422_purges_nothing(proxy, backend):
    user = new_user()
    warm_replies = await warm(proxy, user)
    tokens = await generations(proxy, user, ME)
    refused = await proxy.request("PUT", PROFILE, user, json={"display_name": 7})
    assert refused.status == 422, refused
    await still_hits(proxy, user, warm_replies)
    assert await generations(proxy, user, ME) == tokens
    assert await purges(proxy, "update_profile") == 0


async def test_an_envelope_400_purges_nothing(proxy, backend):
    user = new_user()
    await backend.call("POST", f"{API}/users/languages", user, {"language_code": "sw"})
    warm_replies = await warm(proxy, user, READS + (f"{API}/users/languages",))
    tokens = await generations(proxy, user, ME)
    duplicate = await proxy.request("POST", f"{API}/users/languages", user, json={"language_code": "sw"})
    assert duplicate.status == 200 and duplicate.code == 400, duplicate  # "Language already added"
    await still_hits(proxy, user, warm_replies)
    assert await generations(proxy, user, ME) == tokens
    assert await purges(proxy, "add_language") == 0


async def test_an_award_refused_in_its_envelope_leaves_the_global_entries(proxy, backend):
    """Any user could flush every leaderboard page with a body the backend rejects: not any more."""
    reader, writer = new_user(), new_user()
    board = f"{API}/achievements/leaderboard"
    warm_replies = await warm(proxy, reader, (board, f"{API}/achievements/types"))
    refused = await proxy.request("POST", f"{API}/achievements/award", writer,
                                  json={"user_id": reader, "badge_type": "wooden"})
    assert refused.status == 200 and refused.code == 400, refused
    await still_hits(proxy, reader, warm_replies)


async def test_a_success_purges(proxy, backend):
    user = new_user()
    await warm(proxy, user)
    tokens = await generations(proxy, user, ME)
    written = await proxy.request("PUT", PROFILE, user, json={"display_name": "Akinyi"})
    assert written.status == 200 and written.code == 200, written
    after = await proxy.get(ME, user)
    assert after.x_cache == "MISS" and after.version >= written.version, after
    assert await generations(proxy, user, ME) != tokens


async def test_an_envelope_500_purges(proxy, backend):
    """Some handlers commit before they fail: an application 500 leaves the outcome unknown."""
    user = new_user()
    await warm(proxy, user)
    await backend.control("POST", "fail", {"method": "POST", "path": f"{API}/users/preferences",
                                           "response_code": 500})
    failed = await proxy.request("POST", f"{API}/users/preferences", user, json={"theme": "dark"})
    assert failed.status == 200 and failed.code == 500, failed
    assert (await proxy.get(ME, user)).x_cache == "MISS"
    assert (await proxy.get(PROFILE, user)).x_cache == "HIT"  # not named by update_preferences
    assert await purges(proxy, "update_preferences") == 1


async def test_an_http_503_purges(proxy, backend):
    user = new_user()
    await warm(proxy, user)
    await backend.control("POST", "fail", {"method": "PUT", "path": PROFILE, "status": 503})
    failed = await proxy.request("PUT", PROFILE, user, json={"display_name": "x"})
    assert failed.status == 503, failed
    assert (await proxy.get(ME, user)).x_cache == "MISS"


async def test_an_upstream_timeout_purges(make_proxy, backend):
    proxy = await make_proxy(upstream=UpstreamConfig(url=backend.url, read_timeout=0.3))
    user = new_user()
    await warm(proxy, user)
    await backend.control("POST", "fail", {"method": "PUT", "path": PROFILE, "status": 200,
                                           "response_code": 200, "delay_ms": 3000})
    timed_out = await proxy.request("PUT", PROFILE, user, json={"display_name": "x"})
    assert timed_out.status == 504, timed_out
    assert (await proxy.get(ME, user)).x_cache == "MISS"
    assert await purges(proxy, "update_profile") == 1


async def test_purge_when_always_purges_on_a_refusal(make_proxy, backend, tmp_path):
    rules = tmp_path / "rules.yaml"
    text = (ROOT / "rules.yaml").read_text()
    assert "  purge_when: success_or_unknown\n" in text
    rules.write_text(text.replace("  purge_when: success_or_unknown\n", "  purge_when: always\n"))
    proxy = await make_proxy(rules_path=rules)
    user = new_user()
    await warm(proxy, user)
    refused = await proxy.request("PUT", PROFILE, user, json={"display_name": 7})
    assert refused.status == 422, refused
    assert (await proxy.get(ME, user)).x_cache == "MISS"


# ------------------------------------------------------------------------------ unmatched writes

async def test_an_unruled_write_purges_the_callers_namespaces(proxy, backend):
    user, other = new_user(), new_user()
    before = await warm(proxy, user)
    other_warm = await warm(proxy, other)
    written = await proxy.request("PUT", f"{API}/onboarding/progress", user, json={"current_step": "languages"})
    assert written.status == 200 and written.code == 200 and written.x_cache == "BYPASS", written
    me = await proxy.get(ME, user)
    assert me.x_cache == "MISS" and me.version == written.version > before[ME].version, me
    assert me.json["body"]["onboarding"]["current_step"] == "languages"
    assert (await proxy.get(ACHIEVEMENTS, user)).x_cache == "MISS"  # achievements:{user_id}:* too
    await still_hits(proxy, other, other_warm)  # nobody else's
    assert await purges(proxy, "unmatched") == 1


async def test_an_unruled_write_refused_purges_nothing(proxy, backend):
    user = new_user()
    await backend.call("POST", f"{API}/onboarding/complete", user)
    warm_replies = await warm(proxy, user)
    again = await proxy.request("POST", f"{API}/onboarding/complete", user)
    assert again.status == 200 and again.code == 400, again  # completed already
    gone = await proxy.request("DELETE", f"{API}/no/such/route", user)
    assert gone.status == 404, gone
    await still_hits(proxy, user, warm_replies)
    assert await purges(proxy, "unmatched") == 0


async def test_an_unruled_write_without_a_verified_token_purges_nothing_per_user(proxy, backend, mint_token):
    user = new_user()
    warm_replies = await warm(proxy, user)
    for headers in ({}, {"Authorization": f"Bearer {mint_token(user, ttl=-60)}"},
                    {"Authorization": f"Bearer {mint_token(user, secret='another-secret-of-at-least-32-bytes!!')}"}):
        refused = await proxy.request("PUT", f"{API}/onboarding/progress", headers=headers,
                                      json={"current_step": "finish"})
        assert refused.status == 401, refused
    await still_hits(proxy, user, warm_replies)
    assert await purges(proxy, "unmatched") == 0


async def test_the_proxys_own_endpoints_are_not_unmatched_writes(proxy, backend):
    user = new_user()
    warm_replies = await warm(proxy, user, (ACHIEVEMENTS,))
    reply = await proxy.request("POST", f"{API}/users/cache/invalidate", user)
    assert reply.status == 200, reply
    await still_hits(proxy, user, warm_replies)  # it purged user:{id}:* only, as documented
    assert await purges(proxy, "unmatched") == 0


async def test_purge_list_empty_turns_the_fail_safe_off(make_proxy, backend, tmp_path):
    rules = tmp_path / "rules.yaml"
    text = (ROOT / "rules.yaml").read_text()
    shipped = '  purge: ["user:{user_id}:*", "achievements:{user_id}:*"]\n'
    assert shipped in text
    rules.write_text(text.replace(shipped, "  purge: []\n"))
    proxy = await make_proxy(rules_path=rules)
    user = new_user()
    warm_replies = await warm(proxy, user)
    written = await proxy.request("PUT", f"{API}/onboarding/progress", user, json={"current_step": "profile"})
    assert written.status == 200 and written.code == 200, written
    await still_hits(proxy, user, warm_replies)  # /auth/me is stale: what the fail-safe exists to prevent
    assert await purges(proxy, "unmatched") == 0


# ------------------------------------------------------------------- answers too large to judge

async def test_an_answer_too_large_to_read_counts_as_unknown_and_is_relayed_whole(make_proxy, aiohttp_client):
    """The envelope of a write's answer is read up to 64 KiB; past that the outcome is unknown (it
    purges), and the client still gets the answer byte for byte, streamed."""
    from aiohttp import web
    import orjson

    pad = "x" * (200 << 10)
    refused_big = orjson.dumps({"header": {"responseCode": 400}, "body": {"pad": pad}})
    refused_small = orjson.dumps({"header": {"responseCode": 400}, "body": {}})
    reads = []

    async def profile(request: web.Request) -> web.Response:
        reads.append(1)
        return web.json_response({"header": {"responseCode": 200}, "body": {"version": len(reads)}})

    async def put_profile(request: web.Request) -> web.StreamResponse:
        big = request.query.get("size") == "big"
        out = web.StreamResponse(headers={"Content-Type": "application/json"})
        out.enable_chunked_encoding()
        await out.prepare(request)
        body = refused_big if big else refused_small
        for i in range(0, len(body), 16 << 10):
            await out.write(body[i:i + (16 << 10)])
        await out.write_eof()
        return out

    app = web.Application()
    app.router.add_get(PROFILE, profile)
    app.router.add_put(PROFILE, put_profile)
    scripted = await aiohttp_client(app)
    proxy = await make_proxy(upstream_url=f"http://127.0.0.1:{scripted.server.port}")
    user = new_user()
    await warm(proxy, user, (PROFILE,))

    small = await proxy.request("PUT", PROFILE + "?size=small", user, json={})
    assert small.status == 200 and small.body == refused_small, small
    assert (await proxy.get(PROFILE, user)).x_cache == "HIT"  # read whole: refused, nothing purged

    big = await proxy.request("PUT", PROFILE + "?size=big", user, json={})
    assert big.status == 200 and big.body == refused_big  # the unread rest followed the part read
    assert (await proxy.get(PROFILE, user)).x_cache == "MISS"  # unknown outcome: purged
    assert await purges(proxy, "update_profile") == 1
