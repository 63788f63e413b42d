"""Cache poisoning: a request header the key does not cover must not make a stored response differ from
what any other client with the same key gets. Through the real proxy in front of a scripted origin that
reflects what it receives (tests/security/helpers.py, Reflector), with global keys:

* forwarding headers a client chooses (Host, X-Forwarded-Host/-Proto/-Port/-Prefix/-Server, Forwarded,
  X-Host, X-Original-Host) never reach a fill; cookies never do, credentials not on public rules;
* method/URL override headers (X-HTTP-Method-Override, X-Original-URL, ...) BYPASS and store nothing;
* every Accept-Encoding gets one identity-encoded body; a backend that compresses anyway is not stored;
* a Vary the key does not cover (Cookie, *, User-Agent, ...) is not stored; Vary: Origin is keyed;
* Set-Cookie is never stored; a GET body, HEAD, Range and conditional headers cannot shape an entry.
Set-Cookie/no-store/private on the stand-in's routes: tests/functional/test_passthrough.py."""
from __future__ import annotations

import gzip
import json

import pytest

from proxy.upstream.client import UpstreamConfig
from tests.functional.conftest import mint, new_user
from tests.security.helpers import OVERRIDES, base_url, send

RULES = """\
version: 1
prefix: "sec"
rules:
  - {name: reflect, match: GET /reflect/page, key: "reflect:global:page", auth: none}
  - {name: reflect_other, match: GET /reflect/other, key: "reflect:global:other", auth: none}
  - {name: members, match: GET /reflect/members, key: "reflect:global:members", auth: required}
  - {name: override, match: GET /override, key: "override:global", auth: none}
  - {name: negotiate, match: GET /negotiate, key: "negotiate:global", auth: none}
  - {name: always_gzip, match: GET /always-gzip, key: "gzip:global", auth: none}
  - {name: vary, match: "GET /vary/{what}", key: "vary:global:{what}", auth: none}
  - {name: cookie, match: GET /cookie, key: "cookie:global", auth: none}
  - {name: body, match: GET /body, key: "body:global", auth: none}
"""
VIA = {"X-Test-Via": "proxy"}  # the origin counts the requests that came through the proxy


@pytest.fixture
async def cache(make_proxy, reflector, tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return await make_proxy(upstream=UpstreamConfig(url=reflector.url, read_timeout=5.0), rules_path=path)


async def get(cache, target: str, headers: dict | None = None, method: str = "GET", data=None):
    """``target`` exactly as written, through the proxy, bodies as sent (no decompression)."""
    return await send(base_url(cache.client), method, target, {**VIA, **(headers or {})}, data=data)


HOSTILE_FORWARDING = {
    "Host": "evil-host.example",
    "X-Forwarded-Host": "evil-xfh.example",
    "X-Forwarded-Proto": "evil-proto",
    "X-Forwarded-Port": "6666",
    "X-Forwarded-Prefix": "/evil-prefix",
    "X-Forwarded-Server": "evil-server.example",
    "Forwarded": "for=6.6.6.6;host=evil-fwd.example;proto=https",
    "X-Host": "evil-xhost.example",
    "X-Original-Host": "evil-orig.example",
}


@pytest.mark.parametrize("header", sorted(HOSTILE_FORWARDING) + ["all"])
async def test_client_chosen_forwarding_headers_never_reach_a_stored_body(header, cache, reflector):
    hostile = HOSTILE_FORWARDING if header == "all" else {header: HOSTILE_FORWARDING[header]}
    first = await get(cache, "/reflect/page", hostile)
    assert first.status == 200, first
    seen = first.json["headers"]
    for name, value in hostile.items():  # neither passed on nor turned into another header
        assert value not in json.dumps(seen), (name, seen)
    assert seen.get("x-forwarded-proto") == "http" and seen["host"] == reflector.url.removeprefix("http://")
    clean = await get(cache, "/reflect/page")
    assert clean.x_cache == "HIT" and clean.body == first.body, clean
    assert b"evil" not in clean.body and b"6666" not in clean.body, clean.body
    assert reflector.via_proxy["/reflect/page"] == 1


async def test_cookies_and_credentials_of_the_filler_stay_out_of_shared_entries(cache, reflector):
    secret = {"Cookie": "session=secret-session-cookie", "Authorization": f"Bearer {mint(new_user())}"}
    public = await get(cache, "/reflect/page", secret)
    assert public.x_cache == "MISS" and "stored" in public.cache_status, public
    assert "cookie" not in public.json["headers"] and "authorization" not in public.json["headers"], public
    assert b"secret" not in (await get(cache, "/reflect/page")).body

    members = await get(cache, "/reflect/members", secret)  # auth required: the backend needs the token
    assert members.x_cache == "MISS" and "stored" in members.cache_status, members
    assert "authorization" in members.json["headers"] and "cookie" not in members.json["headers"], members
    other = await get(cache, "/reflect/members", {"Authorization": f"Bearer {mint(new_user())}"})
    assert other.x_cache == "HIT" and b"secret" not in other.body, other


@pytest.mark.parametrize("header", OVERRIDES + ("x-method-override", "X-HTTP-Method"))
async def test_override_headers_bypass_and_store_nothing(header, cache, reflector):
    value = "/admin" if "url" in header.lower() else "DELETE"
    for _ in range(2):
        overridden = await get(cache, "/override", {header: value})
        assert overridden.x_cache == "BYPASS" and "detail=override-header" in overridden.cache_status, overridden
        assert overridden.json.get("page") == "ADMIN"  # the origin did honour it: that answer is not stored
    clean = await get(cache, "/override")
    assert clean.x_cache == "MISS" and "page" not in clean.json, clean
    again = await get(cache, "/override")
    assert again.x_cache == "HIT" and again.body == clean.body, again
    assert reflector.via_proxy["/override"] == 3


ENCODINGS = ["gzip", "gzip, deflate, br", "br", "deflate", "identity", "*", "gzip;q=1.0, identity;q=0", "zstd",
             "x-evil"]


async def test_every_accept_encoding_gets_one_identity_body(cache, reflector):
    replies = [await get(cache, "/negotiate", {"Accept-Encoding": enc}) for enc in ENCODINGS]
    first = replies[0]
    assert first.x_cache == "MISS" and "stored" in first.cache_status, first
    assert first.json["headers"]["accept-encoding"] == "identity"  # the fill asked for identity
    for enc, reply in zip(ENCODINGS, replies):
        assert reply.status == 200 and "Content-Encoding" not in reply.headers, (enc, reply)
        assert reply.body == first.body, enc
    assert [r.x_cache for r in replies[1:]] == ["HIT"] * (len(ENCODINGS) - 1)
    assert reflector.via_proxy["/negotiate"] == 1


async def test_a_backend_that_compresses_anyway_is_never_stored(cache, reflector):
    for n in (1, 2, 3):
        reply = await get(cache, "/always-gzip", {"Accept-Encoding": "gzip"})
        assert reply.x_cache == "MISS" and "detail=content-encoding" in reply.cache_status, reply
        assert reply.headers["Content-Encoding"] == "gzip"
        assert json.loads(gzip.decompress(reply.body))["n"] == n  # relayed intact, each its own answer
    assert reflector.via_proxy["/always-gzip"] == 3


@pytest.mark.parametrize("vary", ["Cookie", "*", "User-Agent", "Accept-Language", "Authorization",
                                  "Cookie, Origin", "accept-encoding, cookie", "Origin, *"])
async def test_vary_the_key_does_not_cover_is_never_stored(vary, cache, reflector):
    target = "/vary/" + vary.replace(",", "%2C").replace(" ", "%20").replace("*", "%2A")
    a = await get(cache, target, {"Cookie": "who=alice", "User-Agent": "alice-agent", "Accept-Language": "sw"})
    b = await get(cache, target, {"Cookie": "who=bob", "User-Agent": "bob-agent", "Accept-Language": "en"})
    for reply in (a, b):
        assert reply.x_cache == "MISS" and "detail=vary" in reply.cache_status, reply
        assert reply.headers["Vary"] == vary
    assert a.json["n"] == 1 and b.json["n"] == 2  # bob got his own answer, not alice's
    assert reflector.via_proxy[target] == 2


async def test_vary_origin_is_keyed_and_vary_accept_encoding_is_shared(cache, reflector):
    target = "/vary/Origin"
    a1 = await get(cache, target, {"Origin": "https://a.example"})
    b1 = await get(cache, target, {"Origin": "https://b.example"})
    a2 = await get(cache, target, {"Origin": "https://a.example"})
    upper = await get(cache, target, {"Origin": "HTTPS://A.example"})  # exact bytes: browsers compare so
    assert (a1.x_cache, b1.x_cache, a2.x_cache, upper.x_cache) == ("MISS", "MISS", "HIT", "MISS"), (a1, b1, a2)
    assert a2.body == a1.body != b1.body and upper.body not in (a1.body, b1.body)
    none = await get(cache, target)
    assert none.x_cache == "MISS" and none.body not in (a1.body, b1.body), none
    shared = [await get(cache, "/vary/Accept-Encoding", {"Accept-Encoding": e}) for e in ("gzip", "br", "identity")]
    assert [r.x_cache for r in shared] == ["MISS", "HIT", "HIT"] and len({r.body for r in shared}) == 1


async def test_set_cookie_is_never_stored_or_replayed(cache, reflector):
    cookies = set()
    for n in (1, 2, 3):
        reply = await get(cache, "/cookie")
        assert reply.x_cache == "MISS" and "detail=set-cookie" in reply.cache_status, reply
        assert reply.json["n"] == n
        cookies.add(reply.headers["Set-Cookie"])
    assert len(cookies) == 3  # each client its own cookie, never another's
    assert reflector.via_proxy["/cookie"] == 3


async def test_a_get_body_is_not_part_of_a_fill(cache, reflector):
    fat = await get(cache, "/body", {"Content-Type": "application/json"}, data=b'{"poison": "' + b"p" * 100 + b'"}')
    assert fat.status == 200 and fat.x_cache == "MISS", fat
    assert fat.json["body_length"] == 0 and "content-length" not in fat.json["headers"], fat
    clean = await get(cache, "/body")
    assert clean.x_cache == "HIT" and b"poison" not in clean.body, clean
    after = await get(cache, "/reflect/page")  # the upstream connection is still in step
    assert after.status == 200 and after.json["path"] == "/reflect/page", after


async def test_head_range_and_conditionals_cannot_shape_an_entry(cache, reflector):
    head = await get(cache, "/reflect/page", method="HEAD")
    assert head.status == 200 and head.body == b"", head
    full = await get(cache, "/reflect/page")
    assert full.x_cache == "HIT" and full.json["method"] == "GET" and full.json["n"] == 1, full

    ranged = await get(cache, "/reflect/other", {"Range": "bytes=0-3"})
    assert ranged.x_cache == "BYPASS" and "detail=range" in ranged.cache_status, ranged
    conditional = await get(cache, "/reflect/other", {"If-None-Match": '"abc"', "If-Modified-Since":
                                                      "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert conditional.status == 200 and conditional.x_cache == "MISS", conditional
    assert "if-none-match" not in conditional.json["headers"] and "range" not in conditional.json["headers"]
    other = await get(cache, "/reflect/other")
    assert other.x_cache == "HIT" and other.body == conditional.body, other
    assert reflector.via_proxy["/reflect/other"] == 2
