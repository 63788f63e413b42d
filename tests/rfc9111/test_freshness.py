"""RFC 9111 §4.2: freshness lifetime (§4.2.1), heuristic freshness (§4.2.2) and Age (§4.2.3), through the
proxy in front of the scripted origin, on both stores. Time moves only by ``cache.clock.advance``."""
from __future__ import annotations

import pytest

from tests.rfc9111.conftest import Resp

P = "/r/fresh"


async def served_from_cache(cache, path: str = P, headers: dict | None = None) -> bool:
    """One more GET; True if the origin did not see it."""
    before = cache.origin.count(path)
    reply = await cache.get(path, headers)
    assert reply.status == 200, reply
    return cache.origin.count(path) == before


async def test_4_2_1_max_age_fresh_until_it_passes(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=60"}))
    assert (await cache.get(P)).x_cache == "MISS"
    cache.clock.advance(59)
    assert await served_from_cache(cache)
    cache.clock.advance(2)
    assert not await served_from_cache(cache)


async def test_4_2_1_s_maxage_wins_over_max_age(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=10, s-maxage=120"}))
    await cache.get(P)
    cache.clock.advance(60)
    assert await served_from_cache(cache)
    cache.clock.advance(61)
    assert not await served_from_cache(cache)


async def test_4_2_1_max_age_wins_over_expires(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=60", "Expires": cache.origin.date(-3600)}))
    await cache.get(P)
    cache.clock.advance(30)
    assert await served_from_cache(cache)


async def test_4_2_1_expires_minus_date(cache):
    # The origin's clock is an hour ahead of ours: only Expires - Date (both its own) counts.
    cache.origin.script(P, lambda request: Resp(headers={"Date": cache.origin.date(3600),
                                                         "Expires": cache.origin.date(3600 + 60)}))
    await cache.get(P)
    cache.clock.advance(50)
    assert await served_from_cache(cache)
    cache.clock.advance(11)
    assert not await served_from_cache(cache)


async def test_4_2_1_expires_in_the_wrong_case_still_counts(cache):
    """RFC 9111 §4.2: a cache SHOULD match dates case-insensitively (cache-tests' optimal
    freshness-expires-wrong-case-*)."""
    cache.origin.script(P, lambda request: Resp(headers={"Expires": cache.origin.date(60).upper()}))
    await cache.get(P)
    cache.clock.advance(50)
    assert await served_from_cache(cache)


@pytest.mark.parametrize("headers", [
    {"Expires": "0"},                                      # §5.3: invalid dates are in the past
    {"Expires": "not a date"},
    {"Cache-Control": "max-age=ten"},                      # §4.2.1: invalid freshness -> stale
    {"Cache-Control": "max-age=-5"},
    {"Cache-Control": "s-maxage=soon, max-age=60"},
], ids=["expires-0", "expires-garbage", "max-age-word", "max-age-negative", "s-maxage-invalid"])
async def test_4_2_1_invalid_freshness_is_stale(cache, headers):
    cache.origin.script(P, Resp(headers=headers))
    await cache.get(P)
    assert not await served_from_cache(cache)


async def test_4_2_1_first_of_duplicated_directives_wins(cache):
    cache.origin.script(P, Resp(headers=[("Cache-Control", "max-age=60"), ("Cache-Control", "max-age=1")]))
    await cache.get(P)
    cache.clock.advance(30)
    assert await served_from_cache(cache)


@pytest.mark.parametrize("digits", [20, 5000], ids=["20-digits", "5000-digits"])
async def test_4_2_1_huge_max_age_is_capped_not_refused(cache, digits):
    """§1.2.2: capped at 2147483648, however many digits (5000 are past Python's int() limit)."""
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=" + "9" * digits}))
    await cache.get(P)
    cache.clock.advance(10 * 365 * 86400)
    assert await served_from_cache(cache)


async def test_5_2_1_huge_request_max_age_is_capped_not_a_server_error(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=600"}))
    await cache.get(P)
    reply = await cache.get(P, {"Cache-Control": "max-age=" + "9" * 5000})
    assert (reply.status, reply.x_cache, cache.origin.count(P)) == (200, "HIT", 1), reply


async def test_4_2_2_no_heuristic_freshness_by_default(cache):
    cache.origin.script(P, Resp(headers={"Last-Modified": cache.origin.date(-10 * 86400)}))
    first = await cache.get(P)
    assert "detail=no-freshness" in first.cache_status, first
    assert not await served_from_cache(cache)


async def test_4_2_2_heuristic_is_ten_percent_of_last_modified_age(make_cache):
    cache = await make_cache(heuristic=True)
    cache.origin.script(P, lambda request: Resp(headers={"Last-Modified": cache.origin.date(-1000)}))
    await cache.get(P)
    cache.clock.advance(99)
    assert await served_from_cache(cache)
    cache.clock.advance(2)
    assert not await served_from_cache(cache)


async def test_4_2_2_heuristic_only_for_heuristically_cacheable_statuses(make_cache):
    cache = await make_cache(heuristic=True)
    cache.origin.script(P, lambda request: Resp(302, {"Last-Modified": cache.origin.date(-10000),
                                                      "Location": "/elsewhere"}))
    assert (await cache.get(P)).status == 302
    await cache.get(P)
    assert cache.origin.count(P) == 2


async def test_4_2_2_public_allows_heuristic_for_other_statuses(make_cache):
    cache = await make_cache(heuristic=True)
    cache.origin.script(P, lambda request: Resp(302, {"Last-Modified": cache.origin.date(-10000),
                                                      "Cache-Control": "public", "Location": "/elsewhere"}))
    await cache.get(P)
    assert (await cache.get(P)).x_cache == "HIT"
    assert cache.origin.count(P) == 1


async def test_4_2_2_heuristic_never_overrides_explicit_freshness(make_cache):
    cache = await make_cache(heuristic=True)
    cache.origin.script(P, lambda request: Resp(headers={"Cache-Control": "max-age=10",
                                                         "Last-Modified": cache.origin.date(-100000)}))
    await cache.get(P)
    cache.clock.advance(11)
    assert not await served_from_cache(cache)


async def test_4_2_3_age_header_accounts_for_upstream_age(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=60", "Age": "50"}))
    await cache.get(P)
    cache.clock.advance(5)
    hit = await cache.get(P)
    assert (hit.x_cache, hit.headers["Age"]) == ("HIT", "55")
    cache.clock.advance(6)  # 61 s old: stale
    assert not await served_from_cache(cache)


async def test_4_2_3_apparent_age_from_an_old_date(cache):
    # Date 30 s before the response arrived (a slow path, or another cache in front of the origin).
    cache.origin.script(P, lambda request: Resp(headers={"Cache-Control": "max-age=40", "Date": cache.origin.date(-30)}))
    await cache.get(P)
    hit = await cache.get(P)
    assert (hit.x_cache, hit.headers["Age"]) == ("HIT", "30")
    cache.clock.advance(11)
    assert not await served_from_cache(cache)


async def test_4_2_3_age_grows_with_time_in_the_cache(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=600"}))
    await cache.get(P)
    ages = []
    for step in (0, 7, 100):
        cache.clock.advance(step)
        ages.append((await cache.get(P)).headers["Age"])
    assert ages == ["0", "7", "107"]
    assert cache.origin.count(P) == 1


async def test_4_2_3_future_date_does_not_make_age_negative(cache):
    cache.origin.script(P, lambda request: Resp(headers={"Cache-Control": "max-age=60", "Date": cache.origin.date(500)}))
    await cache.get(P)
    assert (await cache.get(P)).headers["Age"] == "0"
