"""RFC 9111 §4.3 (validation, §4.3.4 freshening with a 304), the request directives of §5.2.1, the
must-revalidate family of §5.2.2, and RFC 5861 (stale-while-revalidate, stale-if-error), through the
proxy in front of the scripted origin, on both stores."""
from __future__ import annotations

import pytest

from tests.rfc9111.conftest import DROP, Resp, validating

P = "/r/valid"
ETAG = '"v1"'


async def test_4_3_1_stale_entry_is_revalidated_with_if_none_match(cache):
    cache.origin.script(P, validating(ETAG, cache.origin.date(-86400), headers={"Cache-Control": "max-age=10"}))
    await cache.get(P)
    cache.clock.advance(11)
    reply = await cache.get(P)
    sent = cache.origin.seen(P)[-1].headers
    assert (sent.get("If-None-Match"), reply.status, reply.body, reply.x_cache) == (ETAG, 200, b"representation", "HIT")
    assert "fwd=stale; fwd-status=304" in reply.cache_status and "hit" not in reply.cache_status.split("; ")


async def test_4_3_1_if_modified_since_when_there_is_no_etag(cache):
    modified = cache.origin.date(-86400)
    cache.origin.script(P, validating(None, modified, headers={"Cache-Control": "max-age=10"}))
    await cache.get(P)
    cache.clock.advance(11)
    reply = await cache.get(P)
    sent = cache.origin.seen(P)[-1].headers
    assert (sent.get("If-Modified-Since"), "If-None-Match" in sent, reply.x_cache) == (modified, False, "HIT")


async def test_4_3_1_no_validator_means_a_full_fetch(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=10"}, body=b"a"),
                        Resp(headers={"Cache-Control": "max-age=10"}, body=b"b"))
    await cache.get(P)
    cache.clock.advance(11)
    reply = await cache.get(P)
    assert (reply.body, reply.x_cache) == (b"b", "MISS")
    assert not {"If-None-Match", "If-Modified-Since"} & set(cache.origin.seen(P)[-1].headers)


async def test_4_3_4_304_updates_stored_headers(cache):
    cache.origin.script(P, validating(ETAG, headers={"Cache-Control": "max-age=10", "X-Version": "1"},
                                      not_modified_headers={"Cache-Control": "max-age=100", "X-Version": "2"}))
    await cache.get(P)
    cache.clock.advance(11)
    await cache.get(P)  # revalidated: 304
    cache.clock.advance(50)  # fresh for 100 s since the 304
    hit = await cache.get(P)
    assert (hit.x_cache, hit.headers["X-Version"], hit.headers["Cache-Control"], hit.headers["Age"]) == \
        ("HIT", "2", "max-age=100", "50")
    assert cache.origin.count(P) == 2


async def test_4_3_4_304_for_another_strong_etag_is_not_applied(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=10", "ETag": ETAG}, body=b"old"),
                        Resp(304, {"ETag": '"v2"'}, b""),
                        Resp(headers={"Cache-Control": "max-age=10", "ETag": '"v2"'}, body=b"new"))
    await cache.get(P)
    cache.clock.advance(11)
    reply = await cache.get(P)
    assert (reply.status, reply.body) == (200, b"new")
    assert cache.origin.count(P) == 3  # the 304 selected nothing: fetched without a validator


async def test_5_2_2_4_no_cache_response_is_revalidated_every_time(cache):
    cache.origin.script(P, validating(ETAG, headers={"Cache-Control": "no-cache"}))
    await cache.get(P)
    for _ in range(2):
        reply = await cache.get(P)
        assert (reply.x_cache, reply.body) == ("HIT", b"representation")
    assert cache.origin.count(P) == 3
    assert all(r.headers.get("If-None-Match") == ETAG for r in cache.origin.seen(P)[1:])


@pytest.mark.parametrize("headers", [{"Cache-Control": "no-cache"}, {"Cache-Control": "max-age=0"},
                                     {"Pragma": "no-cache"}],
                         ids=["5_2_1_4-no-cache", "5_2_1_1-max-age-0", "5_4-pragma"])
async def test_5_2_1_client_asks_for_validation(cache, headers):
    cache.origin.script(P, validating(ETAG, headers={"Cache-Control": "max-age=600"}))
    await cache.get(P)
    reply = await cache.get(P, headers)
    assert cache.origin.count(P) == 2 and cache.origin.seen(P)[-1].headers.get("If-None-Match") == ETAG
    assert "fwd=request" in reply.cache_status


async def test_5_4_pragma_is_ignored_when_cache_control_is_present(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=600"}))
    await cache.get(P)
    assert (await cache.get(P, {"Pragma": "no-cache", "Cache-Control": "max-stale=5"})).x_cache == "HIT"


async def test_5_2_1_1_client_max_age_limits_the_age(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=600"}))
    await cache.get(P)
    cache.clock.advance(30)
    assert (await cache.get(P, {"Cache-Control": "max-age=40"})).x_cache == "HIT"
    await cache.get(P, {"Cache-Control": "max-age=20"})
    assert cache.origin.count(P) == 2


async def test_5_2_1_3_min_fresh(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=60"}))
    await cache.get(P)
    cache.clock.advance(30)
    assert (await cache.get(P, {"Cache-Control": "min-fresh=20"})).x_cache == "HIT"
    await cache.get(P, {"Cache-Control": "min-fresh=40"})
    assert cache.origin.count(P) == 2


async def test_5_2_1_2_max_stale_accepts_a_stale_response(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=10"}))
    await cache.get(P)
    cache.clock.advance(25)
    reply = await cache.get(P, {"Cache-Control": "max-stale=20"})
    assert (reply.x_cache, reply.headers["Age"]) == ("STALE", "25")
    assert (await cache.get(P, {"Cache-Control": "max-stale"})).x_cache == "STALE"
    await cache.get(P, {"Cache-Control": "max-stale=5"})
    assert cache.origin.count(P) == 2


@pytest.mark.parametrize("cc", ["max-age=10, must-revalidate", "max-age=10, proxy-revalidate", "s-maxage=10",
                                "no-cache"],
                         ids=["5_2_2_2-must-revalidate", "5_2_2_8-proxy-revalidate", "5_2_2_10-s-maxage",
                              "5_2_2_4-no-cache"])
async def test_5_2_2_no_stale_answers_when_the_response_forbids_them(cache, cc):
    cache.origin.script(P, Resp(headers={"Cache-Control": cc + ", stale-while-revalidate=600"}))
    await cache.get(P)
    cache.clock.advance(11)
    await cache.get(P, {"Cache-Control": "max-stale=600"})
    assert cache.origin.count(P) == 2


async def test_5_2_1_7_only_if_cached(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=10"}))
    assert (await cache.get(P, {"Cache-Control": "only-if-cached"})).status == 504
    await cache.get(P)
    assert (await cache.get(P, {"Cache-Control": "only-if-cached"})).x_cache == "HIT"
    cache.clock.advance(11)
    assert (await cache.get(P, {"Cache-Control": "only-if-cached"})).status == 504
    assert cache.origin.count(P) == 1


# ------------------------------------------------------------------------------- RFC 5861


async def test_5861_3_stale_while_revalidate(cache, poll):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=10, stale-while-revalidate=30", "ETag": ETAG}, body=b"old"),
                        Resp(headers={"Cache-Control": "max-age=10, stale-while-revalidate=30", "ETag": '"v2"'}, body=b"new"))
    await cache.get(P)
    cache.clock.advance(20)
    stale = await cache.get(P)
    assert (stale.x_cache, stale.body, stale.headers["Age"]) == ("STALE", b"old", "20")
    assert "stale-while-revalidate" in stale.cache_status

    async def refreshed() -> bool:
        return (await cache.get(P, {"Cache-Control": "max-stale=0"})).body == b"new"

    await poll(refreshed, "the background revalidation stored the new response")
    assert cache.origin.seen(P)[1].headers.get("If-None-Match") == ETAG
    assert (await cache.get(P)).x_cache == "HIT"


async def test_5861_3_past_the_window_the_client_waits(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=10, stale-while-revalidate=30"}, body=b"old"),
                        Resp(headers={"Cache-Control": "max-age=10"}, body=b"new"))
    await cache.get(P)
    cache.clock.advance(41)
    reply = await cache.get(P)
    assert (reply.x_cache, reply.body) == ("MISS", b"new")


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5861_4_stale_if_error(cache, status):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=10, stale-if-error=60"}, body=b"good"),
                        Resp(status, {"Cache-Control": "max-age=10"}, b"broken"))
    await cache.get(P)
    cache.clock.advance(30)
    reply = await cache.get(P)
    assert (reply.status, reply.body, reply.x_cache) == (200, b"good", "STALE")
    assert f"fwd-status={status}" in reply.cache_status and "stale-if-error" in reply.cache_status
    cache.clock.advance(41)  # 71 s old: past max-age + stale-if-error
    assert (await cache.get(P)).status == status


async def test_5861_4_stale_if_error_is_not_for_other_statuses(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=10, stale-if-error=60"}, body=b"good"),
                        Resp(501, {}, b"nope"))
    await cache.get(P)
    cache.clock.advance(30)
    assert (await cache.get(P)).status == 501


async def test_5861_4_stale_if_error_from_the_request(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=10"}, body=b"good"), Resp(503, {}, b"down"))
    await cache.get(P)
    cache.clock.advance(30)
    reply = await cache.get(P, {"Cache-Control": "stale-if-error=60"})
    assert (reply.status, reply.body) == (200, b"good")


async def test_5_2_2_2_must_revalidate_forbids_stale_if_error(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=10, must-revalidate, stale-if-error=60"}),
                        Resp(503, {}, b"down"))
    await cache.get(P)
    cache.clock.advance(30)
    assert (await cache.get(P)).status == 503


async def test_5861_4_stale_if_error_when_the_origin_cannot_be_reached(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=10, stale-if-error=60"}, body=b"good"), Resp(DROP))
    await cache.get(P)
    cache.clock.advance(30)
    reply = await cache.get(P)
    assert (reply.status, reply.body, reply.x_cache) == (200, b"good", "STALE")
    assert "fwd-status=502" in reply.cache_status


async def test_5_2_2_2_must_revalidate_entry_with_an_unreachable_origin_gives_504(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=10, must-revalidate"}), Resp(DROP))
    await cache.get(P)
    cache.clock.advance(30)
    assert (await cache.get(P)).status == 504
