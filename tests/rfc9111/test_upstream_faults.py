"""What a client gets when the origin misbehaves below HTTP, against a raw local origin that does so on cue
(tests/rfc9111/rawserver.py), on both stores:

* RFC 5861 §4 / RFC 9111 §4.2.4: stale-if-error when a revalidation meets a closed connection, a reset or
  a timeout (HTTP cache and rule mode);
* framing errors: a body longer or shorter than its Content-Length is never stored, the client gets the
  bytes up to Content-Length at most, and the error's message and metric kind say what happened;
* RFC 9112 §9.3.1 (retrying requests): a request none of whose bytes reached the origin is sent again on
  a new connection whatever its method; a partly sent one only when it is idempotent.
"""
from __future__ import annotations

import asyncio

import pytest

from tests.rfc9111.conftest import Clock
from tests.rfc9111.rawserver import Answer, RawOrigin

P = "/r/raw"
TYPES = "/api/v1/achievements/types"  # a rule: auth none, ttl 86400, stale_if_error 600 (shipped rules.yaml)
ENVELOPE = b'{"header": {"responseCode": 200}}'


@pytest.fixture
async def raw():
    origin = await RawOrigin().start()
    origin.clock = Clock()
    yield origin
    await origin.close()


# ------------------------------------------------------------------- RFC 5861 §4 on dropped connections

FAULTS = {"closed": Answer(action="drop"), "reset": Answer(action="reset"),
          "cut-mid-body": Answer(body=b"par", length=100), "timeout": Answer(action="hang")}


@pytest.mark.parametrize("fault", FAULTS)
async def test_5861_4_http_cache_stale_if_error_when_the_revalidation_fails_below_http(make_cache, raw, fault):
    raw.script(P, Answer(headers=[("Cache-Control", "max-age=10, stale-if-error=600"), ("ETag", '"v1"')],
                         body=b"good"), FAULTS[fault])
    cache = await make_cache(origin=raw, upstream={"read_timeout": 0.3})
    assert (await cache.get(P)).body == b"good"
    cache.clock.advance(30)
    reply = await cache.get(P)
    assert (reply.status, reply.body, reply.x_cache) == (200, b"good", "STALE"), reply
    assert "stale-if-error" in reply.cache_status
    assert raw.requests[-1].headers.get("if-none-match") == '"v1"'  # it was a revalidation


@pytest.mark.parametrize("fault", FAULTS)
async def test_5861_4_rule_stale_if_error_when_the_refill_fails_below_http(make_cache, raw, fault):
    raw.script(TYPES, Answer(headers=[("Content-Type", "application/json")], body=ENVELOPE), FAULTS[fault])
    cache = await make_cache(origin=raw, upstream={"read_timeout": 0.3})
    assert (await cache.get(TYPES)).x_cache == "MISS"
    cache.clock.advance(86400 + 120)  # past ttl and stale_while_revalidate, within stale_if_error
    reply = await cache.get(TYPES)
    assert (reply.status, reply.body, reply.x_cache) == (200, ENVELOPE, "STALE"), reply
    assert "stale-if-error" in reply.cache_status


@pytest.mark.parametrize("fault", ["closed", "reset"])
@pytest.mark.parametrize("method", ["HEAD", "GET-if-none-match"])
async def test_5861_4_stale_if_error_also_answers_head_and_conditional_requests(make_cache, raw, fault, method):
    raw.script(P, Answer(headers=[("Cache-Control", "max-age=10, stale-if-error=600"), ("ETag", '"v1"')],
                         body=b"good"), FAULTS[fault])
    cache = await make_cache(origin=raw)
    await cache.get(P)
    cache.clock.advance(30)
    if method == "HEAD":
        reply = await cache.get(P, method="HEAD")
        assert (reply.status, reply.x_cache) == (200, "STALE"), reply
    else:
        reply = await cache.get(P, {"If-None-Match": '"v1"'})
        assert (reply.status, reply.x_cache) == (304, "STALE"), reply
    assert "stale-if-error" in reply.cache_status


@pytest.mark.parametrize("fault", ["closed", "reset"])
async def test_5861_4_rule_stale_if_error_answers_head(make_cache, raw, fault):
    raw.script(TYPES, Answer(headers=[("Content-Type", "application/json")], body=ENVELOPE), FAULTS[fault])
    cache = await make_cache(origin=raw)
    await cache.get(TYPES)
    cache.clock.advance(86400 + 120)
    reply = await cache.get(TYPES, method="HEAD")
    assert (reply.status, reply.x_cache) == (200, "STALE"), reply
