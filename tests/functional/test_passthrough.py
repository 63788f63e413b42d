"""Pass-through and HTTP details: unruled routes relayed unchanged (BYPASS), forwarding headers,
hop-by-hop headers dropped both ways, 502/504 from the proxy, HEAD and If-None-Match answered from a
GET entry, and responses that must never be stored (Set-Cookie, no-store, private, app-level errors,
bodies over max_body_bytes). A scripted origin (a real loopback server) echoes what it received."""
from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections import Counter

import pytest
from aiohttp import web

from proxy.store.memory import MemoryStore
from proxy.upstream.client import UpstreamConfig

from .test_fastpath import fast_counts

PROFILE = "/api/v1/users/profile"
BIG = b"x" * 5000
HUGE = bytes(range(256)) * 8192  # 2 MiB: more than the relay's write buffer, so it must wait for the reader
VAST = bytes(64 << 20)  # more than the kernel's socket buffers too: the relay is still waiting when the client leaves
CUSTOM_RULES = """
version: 1
prefix: "functest"
rules:
  - {name: scripted_ok, match: GET /scripted/ok, key: "scripted:global:ok", auth: none}
  - {name: scripted_cookie, match: GET /scripted/cookie, key: "scripted:global:cookie", auth: none}
  - {name: scripted_nostore, match: GET /scripted/nostore, key: "scripted:global:nostore", auth: none}
  - {name: scripted_private, match: GET /scripted/private, key: "scripted:global:private", auth: none}
  - {name: scripted_big, match: GET /scripted/big, key: "scripted:global:big", auth: none, max_body_bytes: 1000}
  - {name: scripted_huge, match: GET /scripted/huge, key: "scripted:global:huge", auth: none, max_body_bytes: 1000}
  - {name: scripted_vast, match: GET /scripted/vast, key: "scripted:global:vast", auth: none, max_body_bytes: 1000}
  - {name: scripted_slow, match: GET /scripted/slow, key: "scripted:global:slow", auth: none}
"""


class Origin:
    """A scripted upstream: counts requests per path, echoes them, can hang until teardown."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.release = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] += 1
        name = request.path.rsplit("/", 1)[-1]
        if name == "slow":
            await self.release.wait()  # longer than any read timeout in these tests
        headers = {"X-Custom": "abc", "Content-Type": "application/vnd.test+json"}
        if request.path.startswith("/echo"):  # plus hop-by-hop headers the proxy must not relay
            headers.update({"Keep-Alive": "timeout=5", "Proxy-Authenticate": "Basic realm=x",
                            "Connection": "X-Hop-Resp", "X-Hop-Resp": "1"})
            seen = {"method": request.method, "path_qs": request.path_qs,
                    "headers": [[k, v] for k, v in request.headers.items()], "body": (await request.read()).decode()}
            return web.Response(body=json.dumps(seen).encode(), status=201, headers=headers)
        extra = {"cookie": {"Set-Cookie": "session=abc; Path=/"}, "nostore": {"Cache-Control": "no-store"},
                 "private": {"Cache-Control": "private, max-age=60"}}.get(name, {})
        body = {"big": BIG, "huge": HUGE, "vast": VAST}.get(name, b'{"ok": true}')
        return web.Response(body=body, headers={**headers, **extra})


@pytest.fixture
async def origin(aiohttp_server):
    o = Origin()
    server = await aiohttp_server(o.app)
    o.url = f"http://127.0.0.1:{server.port}"
    yield o
    o.release.set()


@pytest.fixture
async def scripted(make_proxy, origin, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(CUSTOM_RULES)
    return await make_proxy(upstream=UpstreamConfig(url=origin.url, read_timeout=0.2), rules_path=rules)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------- pass-through

async def test_unruled_standin_routes_pass_through_unchanged(proxy, backend):
    for path in ("/_standin/health", "/api/v1/no/such/route"):
        direct, via = await backend.call("GET", path), await proxy.get(path)
        assert via.status == direct.status and via.body == direct.body, (path, via)
        assert via.headers["Content-Type"] == direct.headers["Content-Type"]
        assert via.x_cache == "BYPASS" and "detail=no-rule" in via.cache_status, via
    assert (await proxy.get("/api/v1/no/such/route")).status == 404

    user = str(uuid.uuid4())
    before = await backend.requests()
    login = await proxy.request("POST", "/api/v1/auth/login", json={"user_id": user})
    assert login.status == 200 and login.x_cache == "BYPASS", login
    assert login.json["body"]["user_id"] == user and login.json["body"]["access_token"]  # body forwarded
    assert "X-RateLimit-Limit" in login.headers  # the backend's own headers reach the client
    again = await proxy.request("POST", "/api/v1/auth/login", json={"user_id": user})
    assert again.x_cache == "BYPASS" and again.body != login.body  # never cached
    assert await backend.requests() - before == 2


async def test_request_and_response_relayed_with_forwarding_headers(scripted, origin):
    reply = await scripted.request(
        "POST", "/echo/path?b=2&a=1", data=b"payload-bytes",
        headers={"X-Forwarded-For": "203.0.113.9", "X-Client-Header": "kept", "X-Request-ID": "req-123",
                 "Connection": "keep-alive, X-Hop-Req", "X-Hop-Req": "1", "Keep-Alive": "timeout=5",
                 "TE": "trailers", "Proxy-Authorization": "Basic Zm9vOmJhcg=="})
    assert reply.status == 201 and reply.x_cache == "BYPASS", reply
    assert reply.headers["X-Custom"] == "abc" and reply.headers["Content-Type"] == "application/vnd.test+json"
    for hop in ("Keep-Alive", "Proxy-Authenticate", "X-Hop-Resp"):
        assert hop not in reply.headers, hop
    assert reply.headers["X-Request-ID"] == "req-123"

    seen = reply.json
    got = {k.lower(): v for k, v in seen["headers"]}
    assert seen["method"] == "POST" and seen["path_qs"] == "/echo/path?b=2&a=1" and seen["body"] == "payload-bytes"
    assert got["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert got["x-forwarded-proto"] == "http"
    assert got["x-forwarded-host"] == f"127.0.0.1:{scripted.client.server.port}"
    assert got["host"] == origin.url.removeprefix("http://")
    assert got["x-client-header"] == "kept" and got["x-request-id"] == "req-123"
    for hop in ("x-hop-req", "keep-alive", "te", "proxy-authorization"):
        assert hop not in got, hop
    assert "x-hop-req" not in got.get("connection", "").lower()
    assert origin.hits["/echo/path"] == 1


async def test_upstream_unreachable_is_502(make_proxy):
    proxy = await make_proxy(upstream_url=f"http://127.0.0.1:{closed_port()}")
    user = str(uuid.uuid4())
    for method, path, who in (("GET", "/_standin/health", None), ("GET", PROFILE, user),
                              ("PUT", PROFILE, user)):
        reply = await proxy.request(method, path, who, json={"bio": "x"} if method == "PUT" else None)
        assert reply.status == 502, (path, reply)
        assert list(reply.json) == ["detail"] and "unreachable" in reply.json["detail"], reply
    assert (await proxy.get(PROFILE, user)).status == 502  # the failure was not stored


async def test_upstream_timeout_is_504(scripted, origin):
    for path in ("/unruled/slow", "/scripted/slow"):  # pass-through and a cache fill
        reply = await scripted.get(path)
        assert reply.status == 504 and list(reply.json) == ["detail"], (path, reply)
    assert origin.hits == Counter({"/unruled/slow": 1, "/scripted/slow": 1})


# ------------------------------------------------------------------------------ answers from cache

async def test_head_is_served_from_the_get_entry(proxy, backend):
    user, route = str(uuid.uuid4()), PROFILE
    get = await proxy.get(route, user)
    head = await proxy.request("HEAD", route, user)
    assert head.status == 200 and head.x_cache == "HIT" and head.body == b"", head
    assert head.headers["ETag"] == get.headers["ETag"]
    assert await backend.route_count("GET", route) == 1

    other = str(uuid.uuid4())  # a cold HEAD fills with the full GET body
    cold = await proxy.request("HEAD", route, other)
    assert cold.status == 200 and cold.x_cache == "MISS" and cold.body == b"", cold
    full = await proxy.get(route, other)
    assert full.x_cache == "HIT" and full.json["body"]["user_id"] == other, full
    assert await backend.route_count("GET", route) == 2


async def test_if_none_match_with_the_etag_is_304_from_cache(proxy, backend):
    user = str(uuid.uuid4())
    first = await proxy.get(PROFILE, user)
    etag = first.headers["ETag"]
    for value in (etag, f"W/{etag}", f'"other", {etag}'):
        reply = await proxy.get(PROFILE, user, headers={"If-None-Match": value})
        assert reply.status == 304 and reply.x_cache == "HIT" and reply.body == b"", (value, reply)
        assert reply.headers["ETag"] == etag
    changed = await proxy.get(PROFILE, user, headers={"If-None-Match": '"not-it"'})
    assert changed.status == 200 and changed.x_cache == "HIT" and changed.body == first.body
    assert await backend.route_count("GET", PROFILE) == 1


# ------------------------------------------------------------------------------ never stored

@pytest.mark.parametrize("name,reason", [("cookie", "set-cookie"), ("nostore", "no-store"),
                                         ("private", "private"), ("big", "too-large")])
async def test_unshareable_responses_are_never_stored(scripted, origin, name, reason):
    path = f"/scripted/{name}"
    replies = [await scripted.get(path), await scripted.get(path)]
    for reply in replies:
        assert reply.status == 200 and reply.x_cache == "MISS", reply
        assert f"detail={reason}" in reply.cache_status, reply
        assert reply.body == (BIG if name == "big" else b'{"ok": true}')  # the client still gets it all
    if name == "cookie":
        assert all(r.headers["Set-Cookie"] == "session=abc; Path=/" for r in replies)
    assert origin.hits[path] == 2


async def test_control_route_of_the_scripted_origin_is_stored(scripted, origin):
    """The same set-up with a shareable answer: a HIT, so the test above can fail."""
    replies = [await scripted.get("/scripted/ok"), await scripted.get("/scripted/ok")]
    assert [r.x_cache for r in replies] == ["MISS", "HIT"]
    assert replies[1].headers["X-Custom"] == "abc"
    assert origin.hits["/scripted/ok"] == 1


async def test_application_errors_are_not_stored(proxy, backend):
    user = str(uuid.uuid4())
    await backend.control("POST", "fail", {"method": "GET", "path": PROFILE, "status": 200, "response_code": 500})
    await backend.control("POST", "fail", {"method": "GET", "path": PROFILE, "status": 503})
    app_error = await proxy.get(PROFILE, user)
    assert app_error.status == 200 and app_error.code == 500 and app_error.x_cache == "MISS", app_error
    assert "detail=envelope" in app_error.cache_status
    http_error = await proxy.get(PROFILE, user)
    assert http_error.status == 503 and http_error.x_cache == "MISS", http_error
    good = await proxy.get(PROFILE, user)
    assert good.status == 200 and good.code == 200 and good.x_cache == "MISS", good  # nothing was stored
    assert (await proxy.get(PROFILE, user)).x_cache == "HIT"
    assert await backend.route_count("GET", PROFILE) == 3


@pytest.mark.parametrize("path", ["/scripted/ok", "/scripted/big", "/scripted/slow", "unreachable"],
                         ids=["stored", "streamed-too-large", "timeout-504", "unreachable-502"])
async def test_a_miss_is_answered_alike_by_the_fast_path_and_aiohttps_path(make_proxy, origin, tmp_path, path):
    """proxy/serve/fastpath.py answers misses too: status, headers and body as aiohttp's own path sends them."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(CUSTOM_RULES)
    url = f"http://127.0.0.1:{closed_port()}" if path == "unreachable" else origin.url
    replies = []
    for fast_path in (True, False):
        proxy = await make_proxy(upstream=UpstreamConfig(url=url, read_timeout=0.2), rules_path=rules,
                                 store=MemoryStore(), fast_path=fast_path)
        replies.append(await proxy.get("/scripted/ok" if path == "unreachable" else path))
        answered = fast_counts(await proxy.metrics()).get("answered", 0)
        assert answered == (1 if fast_path else 0)
    fast, full = replies
    assert fast.x_cache == full.x_cache == "MISS"
    assert (fast.status, fast.body) == (full.status, full.body)
    assert fast.status == {"/scripted/slow": 504, "unreachable": 502}.get(path, 200)
    assert sorted(k.lower() for k in fast.headers) == sorted(k.lower() for k in full.headers)
    for name in fast.headers:
        if name.lower() not in {"date", "x-request-id", "age"}:
            assert fast.headers.getall(name) == full.headers.getall(name), name


async def _raw_get(proxy, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.client.server.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: proxy\r\n\r\n".encode())
    await writer.drain()
    return reader, writer, await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)


async def test_a_miss_too_large_to_store_reaches_a_slow_reader_whole(scripted, origin):
    """The relay waits for a client that reads slowly (2 MiB, read 64 KiB at a time with pauses) and
    every byte arrives, in order."""
    reader, writer, head = await _raw_get(scripted, "/scripted/huge")
    assert head.startswith(b"HTTP/1.1 200 ") and b"X-Cache: MISS" in head
    assert f"Content-Length: {len(HUGE)}".encode() in head
    body = b""
    while len(body) < len(HUGE):
        body += await asyncio.wait_for(reader.read(65536), 10)
        await asyncio.sleep(0.001)
    assert body == HUGE
    writer.close()
    assert fast_counts(await scripted.metrics())["answered"] == 1


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "aiohttp-path"])
async def test_a_client_gone_during_a_relayed_miss_is_no_error(make_proxy, origin, tmp_path, caplog, fast_path):
    """A client that leaves half-way through a relayed body ends the relay quietly: no error logged, and
    no upstream body failure counted (the backend did nothing wrong)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(CUSTOM_RULES)
    scripted = await make_proxy(upstream=UpstreamConfig(url=origin.url), rules_path=rules,
                                fast_path=fast_path)
    reader, writer, head = await _raw_get(scripted, "/scripted/vast")
    assert b"X-Cache: MISS" in head
    await reader.read(65536)
    connections = scripted.client.server.runner.server._connections
    for _ in range(500):  # until the relay waits for this client to read (bounded)
        if any(protocol._paused for protocol in connections):
            break
        await asyncio.sleep(0.01)
    assert any(protocol._paused for protocol in connections)
    writer.transport.abort()  # unread data: the proxy sees a reset while it waits to write more
    # aiohttp's path learns it when aiohttp cancels the handler: recorded without its rule, as 499
    done = 'katiba_cache_requests_total{result="miss",rule="scripted_vast"} 1.0' if fast_path else \
        'katiba_cache_responses_total{status_class="4xx"} 1.0'
    for _ in range(500):  # the relay notices at its next write, then records the request (bounded wait)
        if done in await scripted.metrics():
            break
        await asyncio.sleep(0.01)
    metrics = await scripted.metrics()
    assert done in metrics
    assert 'katiba_cache_responses_total{status_class="5xx"}' not in metrics
    assert 'katiba_cache_upstream_errors_total{kind="body"}' not in metrics or \
        'katiba_cache_upstream_errors_total{kind="body"} 0.0' in metrics
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")], caplog.records
