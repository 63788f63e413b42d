"""RFC 9213 (targeted cache control, CDN-Cache-Control): a valid targeted field replaces Cache-Control and
Expires for this cache's freshness and storage decisions and is passed on to the client; an invalid one is
ignored; ``http_cache.targeted_fields`` is the target list (most specific first). Rule mode: only with
``honor_cdn_cache_control: true`` on the rule. Through the proxy in front of the scripted origin, both
stores."""
from __future__ import annotations

import pytest

from tests.rfc9111.conftest import Resp

P = "/r/cdn"
TYPES = "/api/v1/achievements/types"  # rule achievement_types: global, token required, ttl 86400
ENVELOPE = b'{"header": {"responseCode": 200}}'


async def stored(cache, path: str = P) -> bool:
    """One more GET: True if the origin did not see it."""
    before = cache.origin.count(path)
    await cache.get(path)
    return cache.origin.count(path) == before


async def test_9213_2_targeted_field_replaces_cache_control_and_is_passed_on(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "no-store", "CDN-Cache-Control": "max-age=600"}))
    first = await cache.get(P)
    assert (first.headers["CDN-Cache-Control"], first.headers["Cache-Control"]) == ("max-age=600", "no-store")
    hit = await cache.get(P)
    assert (hit.x_cache, hit.headers["CDN-Cache-Control"], hit.headers["Cache-Control"]) == \
        ("HIT", "max-age=600", "no-store")
    assert cache.origin.count(P) == 1


@pytest.mark.parametrize("cdn", ["no-store", "private", "no-cache"])
async def test_9213_2_targeted_field_forbids_storing(cache, cdn):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=600", "CDN-Cache-Control": cdn}))
    await cache.get(P)
    assert not await stored(cache)


async def test_9213_2_targeted_max_age_sets_the_lifetime_and_expires_is_ignored(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=600", "Expires": "0",
                                         "CDN-Cache-Control": "max-age=30"}))
    await cache.get(P)
    cache.clock.advance(20)
    assert await stored(cache)
    cache.clock.advance(11)
    assert not await stored(cache)


@pytest.mark.parametrize("cdn", ["max-age=60 junk", "Max-Age=60", "max-age=60,,", "",
                                 'max-age="60"', "max-age=60.0", "max-age", "s-maxage=(60)",
                                 'stale-if-error="60"', 'no-store, max-age="60"'])
async def test_9213_2_invalid_targeted_field_is_ignored(cache, cdn):
    """A field that does not parse, or whose directive has an argument of the wrong type (an Integer
    directive given a String, a Decimal, no value or a list: cache-tests' cdn-cc-invalid-sh-type-wrong)."""
    cache.origin.script(P, Resp(headers={"Cache-Control": "no-store", "CDN-Cache-Control": cdn}))
    await cache.get(P)
    assert not await stored(cache)  # Cache-Control applies


@pytest.mark.parametrize("cdn", ['max-age="60"', "max-age=60.0", "max-age", "s-maxage=(60)", 'no-store, max-age="60"',
                                 "no-store, stale-if-error=?1"])
async def test_9213_2_targeted_field_with_a_wrongly_typed_argument_leaves_cache_control_in_charge(cache, cdn):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=600", "CDN-Cache-Control": cdn}))
    await cache.get(P)
    assert await stored(cache)  # ignored whole: neither its no-store nor its unusable max-age applies


async def test_9213_2_targeted_stale_if_error_and_must_revalidate(cache):
    cache.origin.script(P, Resp(headers={"Cache-Control": "max-age=10, must-revalidate",
                                         "CDN-Cache-Control": "max-age=10, stale-if-error=60"}, body=b"good"),
                        Resp(503, {}, b"down"))
    await cache.get(P)
    cache.clock.advance(30)
    reply = await cache.get(P)
    assert (reply.status, reply.body, reply.x_cache) == (200, b"good", "STALE")


async def test_9213_2_configured_target_list_most_specific_first(make_cache):
    cache = await make_cache(targeted_fields=["KatibaCache-Cache-Control", "CDN-Cache-Control"])
    cache.origin.script(P, Resp(headers={"Cache-Control": "no-store", "CDN-Cache-Control": "no-store",
                                         "KatibaCache-Cache-Control": "max-age=600"}))
    await cache.get(P)
    assert await stored(cache)
    cache.origin.script("/r/other", Resp(headers={"Cache-Control": "no-store", "CDN-Cache-Control": "max-age=600",
                                                  "KatibaCache-Cache-Control": "bogus value"}))
    await cache.get("/r/other")
    assert await stored(cache, "/r/other")  # an invalid first field: the next one on the list


async def test_9213_targeted_fields_empty_list_turns_it_off(make_cache):
    cache = await make_cache(targeted_fields=[])
    cache.origin.script(P, Resp(headers={"Cache-Control": "no-store", "CDN-Cache-Control": "max-age=600"}))
    await cache.get(P)
    assert not await stored(cache)


# --------------------------------------------------------------------------------------- rule mode

def honoured(text: str) -> str:
    anchor = "    key: \"achievements:global:types\"\n"
    assert anchor in text
    return text.replace(anchor, anchor + "    honor_cdn_cache_control: true\n")


async def test_9213_rule_ignores_targeted_field_unless_it_opts_in(cache):
    cache.origin.script(TYPES, Resp(headers={"CDN-Cache-Control": "no-store"}, body=ENVELOPE))
    await cache.get(TYPES)
    assert await stored(cache, TYPES)


@pytest.mark.parametrize("cdn", ["no-store", "private", "no-cache"])
async def test_9213_rule_that_opts_in_is_not_stored_when_the_field_forbids(make_cache, cdn):
    cache = await make_cache(edit=honoured)
    cache.origin.script(TYPES, Resp(headers={"CDN-Cache-Control": cdn}, body=ENVELOPE))
    await cache.get(TYPES)
    assert not await stored(cache, TYPES)


@pytest.mark.parametrize("cdn", ['no-store, max-age="60"', "max-age=1.5", "Max-Age=60, no-store"])
async def test_9213_rule_that_opts_in_keeps_its_own_ttl_when_the_field_is_invalid(make_cache, cdn):
    """An invalid field is ignored whole (§2.2), as on the HTTP cache: the rule's ttl applies, not a
    no-store or a lifetime read out of a field that does not parse as RFC 9213 says."""
    cache = await make_cache(edit=honoured)
    cache.origin.script(TYPES, Resp(headers={"CDN-Cache-Control": cdn}, body=ENVELOPE))
    await cache.get(TYPES)
    cache.clock.advance(3600)
    assert await stored(cache, TYPES)


async def test_9213_rule_that_opts_in_gets_a_shorter_ttl_never_a_longer_one(make_cache):
    cache = await make_cache(edit=honoured)
    cache.origin.script(TYPES, Resp(headers={"CDN-Cache-Control": "max-age=60, must-revalidate"}, body=ENVELOPE))
    await cache.get(TYPES)
    cache.clock.advance(50)
    assert await stored(cache, TYPES)
    cache.clock.advance(20)  # past the field's 60 s; must-revalidate: no stale answer either
    assert not await stored(cache, TYPES)
    cache.origin.script("/api/v1/achievements/types", Resp(headers={"CDN-Cache-Control": "max-age=999999"},
                                                           body=ENVELOPE))
    cache.clock.advance(86400 + 1)
    await cache.get(TYPES)
    cache.clock.advance(86400 + 3600)  # past the rule's ttl and stale windows: the rule's bound holds
    assert not await stored(cache, TYPES)
