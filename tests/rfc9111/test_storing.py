"""RFC 9111 §3 (storing responses), §3.5 (Authorization), §4.1 (Vary) and the response directives of
§5.2.2 that decide what is stored, through the proxy in front of the scripted origin, on both stores."""
from __future__ import annotations

import pytest

from tests.rfc9111.conftest import Resp

P = "/r/store"
FRESH = {"Cache-Control": "max-age=60"}


async def stored(cache, path: str = P, headers: dict | None = None, second: dict | None = None) -> bool:
    """GET twice (``headers``, then ``second`` or the same): True if the second was answered from cache."""
    await cache.get(path, headers)
    before = cache.origin.count(path)
    await cache.get(path, headers if second is None else second)
    return cache.origin.count(path) == before


async def test_3_explicitly_fresh_response_is_stored(cache):
    cache.origin.script(P, Resp(headers=FRESH))
    assert await stored(cache)


async def test_3_response_without_caching_headers_is_not_stored(cache):
    cache.origin.script(P, Resp(headers={"ETag": '"v1"', "Last-Modified": cache.origin.date(-86400)}))
    assert not await stored(cache)


@pytest.mark.parametrize("cc", ["no-store, max-age=60", "max-age=60, NO-STORE", 'max-age=60, no-store="x"'])
async def test_5_2_2_5_no_store_response_is_not_stored(cache, cc):
    cache.origin.script(P, Resp(headers={"Cache-Control": cc}))
    assert not await stored(cache)


async def test_5_2_1_5_no_store_request_is_not_stored(cache):
    cache.origin.script(P, Resp(headers=FRESH))
    assert not await stored(cache, headers={"Cache-Control": "no-store"}, second={})
    assert await stored(cache)  # without it the same response is stored


async def test_5_2_2_7_private_is_not_stored_by_a_shared_cache(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "private, max-age=60"}))
    assert not await stored(cache)


async def test_5_2_2_7_private_with_field_names_stores_the_rest(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": 'private="X-Secret", max-age=60', "X-Secret": "s3",
                                         "X-Public": "p"}))
    assert await stored(cache)
    hit = await cache.get(P)
    assert hit.x_cache == "HIT" and "X-Secret" not in hit.headers and hit.headers["X-Public"] == "p"


async def test_5_2_2_4_no_cache_with_field_names_stores_without_them(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": 'no-cache="Set-Thing, X-Token", max-age=60',
                                         "X-Token": "t", "Set-Thing": "x", "X-Other": "o"}))
    assert await stored(cache)
    hit = await cache.get(P)
    assert "X-Token" not in hit.headers and "Set-Thing" not in hit.headers and hit.headers["X-Other"] == "o"


@pytest.mark.parametrize("cc, allowed", [
    ("max-age=60", False),
    ("public, max-age=60", True),
    ("s-maxage=60", True),
    ("must-revalidate, max-age=60", True),
    ("private, public, max-age=60", False),  # the most restrictive wins
])
async def test_3_5_authorization_requires_public_s_maxage_or_must_revalidate(cache, cc, allowed):
    cache.origin.script(P, Resp(headers={"Cache-Control": cc}))
    assert await stored(cache, headers={"Authorization": "Basic dXNlcjpwdw=="}) is allowed


async def test_5_2_3_unknown_directives_are_ignored(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": 'max-age=60, x-ext, foo="bar, baz", community=UCI'}))
    assert await stored(cache)


async def test_5_2_2_3_must_understand_overrides_no_store_for_an_understood_status(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "must-understand, no-store, max-age=60"}))
    assert await stored(cache)


async def test_5_2_2_3_must_understand_with_an_unknown_status_is_not_stored(cache):
    cache.origin.script(P, Resp(299, {"Cache-Control": "must-understand, no-store, max-age=60"}))
    assert not await stored(cache)


async def test_3_explicit_freshness_makes_other_final_statuses_storable(cache):
    cache.origin.script(P, Resp(404, {"Cache-Control": "max-age=60"}, b"gone"))
    assert await stored(cache)
    assert (await cache.get(P)).status == 404


async def test_3_set_cookie_responses_are_not_stored(cache):
    """§3 would allow it; replaying one client's cookie to others never is wanted (README)."""
    cache.origin.script(P, Resp(headers={"Cache-Control": "public, max-age=60", "Set-Cookie": "sid=1"}))
    assert not await stored(cache)


async def test_3_head_answers_are_not_stored(cache):
    cache.origin.script(P, Resp(headers=FRESH))
    await cache.get(P, method="HEAD")
    assert cache.origin.count(P, "HEAD") == 1
    assert (await cache.get(P)).x_cache == "MISS"


async def test_3_too_large_bodies_are_streamed_not_stored(make_cache):
    cache = await make_cache(max_body_bytes=1000)
    cache.origin.script(P, Resp(headers=FRESH, body=b"x" * 5000))
    first = await cache.get(P)
    assert (first.status, len(first.body), "detail=too-large" in first.cache_status) == (200, 5000, True)
    assert not await stored(cache)


# ------------------------------------------------------------------------------------- Vary


V = "/r/vary"


async def test_4_1_vary_selects_the_matching_variant(cache):
    cache.origin.script(V, lambda request: Resp(headers={"Cache-Control": "max-age=60", "Vary": "Accept-Language"},
                                                body=request.headers.get("Accept-Language", "none").encode()))
    for lang in ("en", "fr", "en", "fr"):
        reply = await cache.get(V, {"Accept-Language": lang})
        assert reply.body == lang.encode()
    assert cache.origin.count(V) == 2
    miss = await cache.get(V, {"Accept-Language": "sw"})
    assert "fwd=vary-miss" in miss.cache_status


async def test_4_1_vary_normalises_whitespace_and_combines_lines(cache):
    cache.origin.script(V, Resp(headers={"Cache-Control": "max-age=60", "Vary": "Accept"}))
    await cache.get(V, {"Accept": "text/html,  application/json"})
    assert await stored(cache, path=V, headers={"Accept": "text/html , application/json"})


async def test_4_1_absent_field_differs_from_present_one(cache):
    cache.origin.script(V, Resp(headers={"Cache-Control": "max-age=60", "Vary": "X-Flavour"}))
    assert not await stored(cache, V, headers={}, second={"X-Flavour": "mint"})


async def test_4_1_vary_field_names_are_case_insensitive(cache):
    cache.origin.script(V, Resp(headers={"Cache-Control": "max-age=60", "Vary": "accept-language, ACCEPT"}))
    assert await stored(cache, V, headers={"Accept-Language": "en", "Accept": "a"})
    assert not await stored(cache, V, headers={"Accept-Language": "en", "Accept": "b"},
                            second={"Accept-Language": "de", "Accept": "b"})


async def test_4_1_vary_star_never_matches(cache):
    cache.origin.script(V, Resp(headers={"Cache-Control": "max-age=60", "Vary": "*"}))
    assert not await stored(cache, V)


async def test_4_1_a_new_vary_replaces_the_old_one(cache):
    cache.origin.script(V, Resp(headers={"Cache-Control": "max-age=10", "Vary": "X-A"}),
                        Resp(headers={"Cache-Control": "max-age=60"}, body=b"unvaried"))
    await cache.get(V, {"X-A": "1"})
    cache.clock.advance(11)
    assert (await cache.get(V, {"X-A": "1"})).body == b"unvaried"
    hit = await cache.get(V, {"X-A": "2"})
    assert (hit.x_cache, hit.body) == ("HIT", b"unvaried")
