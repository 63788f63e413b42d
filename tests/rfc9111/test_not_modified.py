"""RFC 9110 §15.4.5 with RFC 9111 §4.3.2 / §4.3.4: a 304 the cache answers from a stored entry carries the
fields a 200 would have sent among Content-Location, Date, ETag, Vary, Cache-Control and Expires, whatever
their case on the wire, and no body; for the HTTP cache and for a rule's entries. Both stores."""
from __future__ import annotations

from tests.rfc9111.conftest import Resp

P = "/r/nm"
ENVELOPE = b'{"header": {"responseCode": 200}}'


def fields(cache, etag_name: str = "Etag", vary: bool = True) -> list[tuple[str, str]]:
    # Go's net/http writes "Etag": header names are case-insensitive (RFC 9110 §5.1)
    return [("cache-control", "max-age=600"), (etag_name, '"v1"'), ("content-location", "/r/nm/en"),
            ("expires", cache.origin.date(600)), ("X-Other", "not in a 304")] + \
        ([("vary", "Accept-Language")] if vary else [])


def assert_304_fields(reply, expires: str, vary: str | None = "Accept-Language") -> None:
    assert (reply.status, reply.body) == (304, b""), reply
    got = {k.lower(): v for k, v in reply.headers.items()}
    assert got.get("etag") == '"v1"' and got.get("cache-control") == "max-age=600", reply.headers
    assert (got.get("content-location"), got.get("vary"), got.get("expires")) == ("/r/nm/en", vary, expires)
    assert "date" in got and "x-other" not in got and got.get("content-length", "0") == "0"


async def test_4_3_2_http_cache_304_carries_the_200s_fields(cache):
    cache.origin.script(P, Resp(headers=fields(cache)))
    assert (await cache.get(P)).status == 200
    reply = await cache.get(P, {"If-None-Match": '"v1"'})
    assert_304_fields(reply, cache.origin.date(600))
    assert cache.origin.count(P) == 1


async def test_4_3_2_rule_entry_304_carries_the_200s_fields(cache):
    types = "/api/v1/achievements/types"  # a rule (global, token required); a rule stores no response with Vary
    cache.origin.script(types, Resp(headers=fields(cache, "etag", vary=False), body=ENVELOPE))
    assert (await cache.get(types)).x_cache == "MISS"
    reply = await cache.get(types, {"If-None-Match": '"v1"'})
    assert reply.x_cache == "HIT"
    assert_304_fields(reply, cache.origin.date(600), vary=None)
    assert cache.origin.count(types) == 1
