"""RFC 9111 §4.4: unsafe requests invalidate the target URI and same-origin Location / Content-Location
URIs on a non-error answer, whether or not a rule matched the request; through the proxy in front of
the scripted origin, on both stores."""
from __future__ import annotations

import pytest

from tests.rfc9111.conftest import Resp

FRESH = Resp(headers={"Cache-Control": "max-age=600"})


async def warm(cache, *paths: str) -> None:
    for path in paths:
        cache.origin.script(path, FRESH)
        await cache.get(path)
        assert (await cache.get(path)).x_cache == "HIT"


async def cached(cache, path: str) -> bool:
    return (await cache.get(path)).x_cache == "HIT"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "M-SEARCH", "PURGE"])
async def test_4_4_unsafe_method_invalidates_the_target_uri(cache, method):
    await warm(cache, "/r/item")
    cache.origin.script("/r/item", FRESH)
    assert (await cache.get("/r/item", method=method)).status == 200
    assert not await cached(cache, "/r/item")


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE"])
async def test_4_4_safe_methods_do_not_invalidate(cache, method):
    await warm(cache, "/r/item")
    await cache.get("/r/item", method=method)
    assert await cached(cache, "/r/item")


@pytest.mark.parametrize("status, invalidated", [(200, True), (204, True), (303, True), (400, False),
                                                 (404, False), (500, False)])
async def test_4_4_only_non_error_answers_invalidate(cache, status, invalidated):
    await warm(cache, "/r/item")
    cache.origin.script("/r/item", lambda request: Resp(status, {}, b"") if request.method == "POST" else FRESH)
    await cache.get("/r/item", method="POST")
    assert (not await cached(cache, "/r/item")) is invalidated


async def test_4_4_unsafe_invalidates_location_same_origin_only(cache):
    await warm(cache, "/r/a", "/r/b", "/r/c", "/r/d")
    own = cache.proxy.client.make_url("/r/b")
    cache.origin.script("/r/new", Resp(201, [("Location", "a"),  # relative to /r/new
                                             ("Content-Location", str(own)),
                                             ("Location", "http://elsewhere.example/r/c")], b""))
    await cache.get("/r/new", method="POST")
    assert [await cached(cache, p) for p in ("/r/a", "/r/b", "/r/c", "/r/d")] == [False, False, True, True]


async def test_4_4_location_on_the_upstreams_own_authority_is_same_origin(cache):
    """The origin sees the upstream's Host and may answer with absolute URIs on it."""
    await warm(cache, "/r/a")
    cache.origin.script("/r/new", Resp(201, {"Location": cache.origin.url + "/r/a"}, b""))
    await cache.get("/r/new", method="POST")
    assert not await cached(cache, "/r/a")


async def test_4_4_invalidation_covers_every_variant(cache):
    cache.origin.script("/r/v", Resp(headers={"Cache-Control": "max-age=600", "Vary": "Accept-Language"}))
    for lang in ("en", "fr"):
        await cache.get("/r/v", {"Accept-Language": lang})
    await cache.get("/r/v", method="DELETE")
    for lang in ("en", "fr"):
        assert (await cache.get("/r/v", {"Accept-Language": lang})).x_cache == "MISS"


async def test_4_4_ruled_write_invalidates_http_entries_too(cache):
    """DELETE /api/v1/users/languages/{id} has a rule (it purges the user's namespaces); the GET of that
    URI has none, so the HTTP cache stores it, and the write must invalidate it all the same."""
    path = "/api/v1/users/languages/7"
    await warm(cache, path, "/r/listed")
    cache.origin.script(path, lambda request: Resp(200, {"Content-Location": "/r/listed"}, b"")
                        if request.method == "DELETE" else FRESH)
    await cache.get(path, method="DELETE")
    assert (await cached(cache, path), await cached(cache, "/r/listed")) == (False, False)


async def test_4_4_invalidation_uses_the_normalised_uri(cache):
    await warm(cache, "/r/%7Eitem")
    cache.origin.script("/r/~item", FRESH)
    await cache.get("/r/~item", method="POST")
    assert not await cached(cache, "/r/%7Eitem")


async def test_4_4_other_query_strings_are_other_uris(cache):
    await warm(cache, "/r/q?page=1", "/r/q?page=2")
    cache.origin.script("/r/q", FRESH)
    await cache.get("/r/q?page=1", method="POST")
    assert (await cached(cache, "/r/q?page=1"), await cached(cache, "/r/q?page=2")) == (False, True)
