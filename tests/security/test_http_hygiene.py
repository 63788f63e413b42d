"""HTTP hygiene on a raw socket to the proxy: conflicting Content-Length/Transfer-Encoding, duplicate or
bad lengths, oversized header/request line, too many headers, invalid or unknown methods, garbage request
lines, bad versions and line endings, control characters, absolute-form targets, HTTP/2 prefaces, bad
chunk sizes. Each is answered with a 4xx (or passed through, marked BYPASS), never a 500, never a
traceback in the body, and stores nothing (the next clean GET is a MISS). Also: a GET carrying a body
does not desynchronise the pooled upstream connection; a write body over the limit on a rule that reads
it is a 413 and is not forwarded; slow and stalled clients hold up nobody else."""
from __future__ import annotations

import asyncio

import pytest

from tests.functional.conftest import mint, new_user
from tests.security.helpers import RawReply, raw_exchange

TYPES = "/api/v1/achievements/types"  # shared and cached: a bad request must not fill it
AWARD = "/api/v1/achievements/award"
# With a valid token: the shared types entry is served and filled only for one (the backend wants it).
H = f"Host: proxy.test\r\nConnection: close\r\nAuthorization: Bearer {mint('hygiene-reader', ttl=86400)}\r\n"

CASES = {
    "content-length-and-chunked": f"GET {TYPES} HTTP/1.1\r\n{H}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  "0\r\n\r\n",
    "chunked-and-content-length": f"POST {AWARD} HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
                                  "0\r\n\r\n",
    "two-content-lengths": f"GET {TYPES} HTTP/1.1\r\n{H}Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "content-length-list": f"GET {TYPES} HTTP/1.1\r\n{H}Content-Length: 2, 2\r\n\r\nab",
    "content-length-not-a-number": f"GET {TYPES} HTTP/1.1\r\n{H}Content-Length: abc\r\n\r\n",
    "negative-content-length": f"GET {TYPES} HTTP/1.1\r\n{H}Content-Length: -1\r\n\r\n",
    "unknown-transfer-encoding": f"POST {AWARD} HTTP/1.1\r\n{H}Transfer-Encoding: xchunked\r\n\r\n",
    "chunked-not-last": f"POST {AWARD} HTTP/1.1\r\n{H}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "bad-chunk-size": f"GET {TYPES} HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "header-over-16kib": f"GET {TYPES} HTTP/1.1\r\n{H}X-Big: {'a' * 20000}\r\n\r\n",
    "too-many-headers": f"GET {TYPES} HTTP/1.1\r\n{H}" + "".join(f"X-H{i}: v\r\n" for i in range(300)) + "\r\n",
    "request-line-over-8kib": f"GET {TYPES}?{'a' * 10000} HTTP/1.1\r\n{H}\r\n",
    "invalid-method-token": f"G@T {TYPES} HTTP/1.1\r\n{H}\r\n",
    "unknown-method": f"FOO {TYPES} HTTP/1.1\r\n{H}\r\n",
    "trace": f"TRACE {TYPES} HTTP/1.1\r\n{H}\r\n",
    "connect": f"CONNECT evil.example:443 HTTP/1.1\r\n{H}\r\n",
    "garbage-request-line": "hello world\r\n\r\n",
    "binary-garbage": "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "http-version-9-9": f"GET {TYPES} HTTP/9.9\r\n{H}\r\n",
    "lf-only": f"GET {TYPES} HTTP/1.1\nHost: proxy.test\nConnection: close\n\n",
    "obs-fold": f"GET {TYPES} HTTP/1.1\r\n{H}X-A: b\r\n c\r\n\r\n",
    "space-before-colon": f"GET {TYPES} HTTP/1.1\r\n{H}X-A : b\r\n\r\n",
    "nul-in-header": f"GET {TYPES} HTTP/1.1\r\n{H}X-A: a\x00b\r\n\r\n",
    "control-char-in-path": f"GET {TYPES}\x01 HTTP/1.1\r\n{H}\r\n",
    "raw-utf8-in-path": f"GET {TYPES}é HTTP/1.1\r\n{H}\r\n",
    "absolute-form": f"GET http://evil.example{TYPES} HTTP/1.1\r\n{H}\r\n",
    "absolute-form-admin": f"POST http://evil.example/api/v1/achievements/cache/invalidate/global HTTP/1.1\r\n{H}"
                           "Content-Length: 0\r\n\r\n",
    "no-leading-slash": f"GET api/v1/achievements/types HTTP/1.1\r\n{H}\r\n",
    "asterisk-form": f"OPTIONS * HTTP/1.1\r\n{H}\r\n",
    "http2-preface": "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


def assert_hygienic(reply: RawReply, name: str) -> None:
    assert reply.status, (name, reply)  # an answer, not a dropped connection
    assert reply.status != 500 and (400 <= reply.status < 500 or reply.headers.get("x-cache") == "BYPASS"), \
        (name, reply)
    for marker in (b"Traceback", b'File "', b"Server got itself in trouble", b"site-packages"):
        assert marker not in reply.data, (name, reply)


def host_port(proxy) -> tuple[str, int]:
    return proxy.client.server.host, proxy.client.server.port


@pytest.mark.parametrize("name", sorted(CASES))
async def test_malformed_requests_get_a_4xx_and_store_nothing(name, proxy, backend):
    reply = await raw_exchange(*host_port(proxy), [CASES[name].encode("utf-8", "surrogateescape")])
    assert_hygienic(reply, name)
    before = await backend.route_count("GET", TYPES)
    clean = await proxy.get(TYPES, new_user())
    assert clean.status == 200 and clean.x_cache == "MISS", (name, clean)  # nothing was stored
    assert (await proxy.get(TYPES, new_user())).x_cache == "HIT"
    assert await backend.route_count("GET", TYPES) - before == 1
    glob = await proxy.get("/api/v1/achievements/leaderboard", new_user())
    assert glob.status == 200, glob  # and the proxy still works


async def test_a_get_with_a_body_does_not_desynchronise_the_upstream_connection(proxy, backend):
    user = new_user()
    body = b'{"poison": "' + b"p" * 100 + b'"}'
    fat = await raw_exchange(*host_port(proxy), [
        f"GET {TYPES} HTTP/1.1\r\n{H}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body])
    assert fat.status == 200 and fat.headers["x-cache"] == "MISS", fat
    for _ in range(5):  # the next requests reuse the pooled upstream connection: each must be whole
        login = await proxy.request("POST", "/api/v1/auth/login", json={"user_id": user})
        assert login.status == 200 and login.json["body"]["user_id"] == user, login
        mine = await proxy.get("/api/v1/users/profile", user)
        assert mine.status == 200 and mine.code == 200, mine
    assert (await proxy.get(TYPES, user)).x_cache == "HIT"


async def test_a_write_body_over_the_limit_is_413_and_never_forwarded(make_proxy, backend):
    proxy = await make_proxy(max_write_body=1024)
    user = new_user()
    await backend.seed(user)
    for _ in range(2):
        assert (await proxy.get("/api/v1/achievements", user)).status == 200
    entry = await proxy.get("/api/v1/achievements", user)
    assert entry.x_cache == "HIT", entry
    before = await backend.route_count("POST", AWARD)
    big = {"badge_type": "gold", "achievement_data": {"pad": "x" * 4096}}
    refused = await proxy.request("POST", AWARD, user, json=big)
    assert refused.status == 413 and "detail" in refused.json and refused.x_cache == "BYPASS", refused

    async def chunks():
        yield b'{"badge_type": "gold", "achievement_data": {"pad": "'
        for _ in range(8):
            yield b"x" * 512
        yield b'"}}'
    streamed = await proxy.request("POST", AWARD, user, data=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status == 413, streamed
    assert await backend.route_count("POST", AWARD) == before  # neither reached the backend
    kept = await proxy.get("/api/v1/achievements", user)
    assert kept.x_cache == "HIT" and kept.body == entry.body, kept  # nothing happened, nothing purged

    small = await proxy.request("POST", AWARD, user, json={"badge_type": "gold"})
    assert small.status == 200 and small.code == 200, small  # the control: under the limit it works
    assert (await proxy.get("/api/v1/achievements", user)).x_cache == "MISS"

    huge = await proxy.request("POST", "/api/v1/users/cache/invalidate", user, data=b"{" + b" " * (70 << 10) + b"}")
    assert 400 <= huge.status < 500, huge


async def test_slow_and_stalled_clients_hold_up_nobody(proxy, backend):
    host, port = host_port(proxy)
    _, stalled = await asyncio.open_connection(host, port)
    stalled.write(f"GET {TYPES} HTTP/1.1\r\nHost: proxy.test\r\nX-Half: ".encode())  # never finished
    await stalled.drain()
    slow_reader, slow = await asyncio.open_connection(host, port)
    request = f"GET {TYPES} HTTP/1.1\r\n{H}\r\n".encode()
    half = len(request) // 2
    try:
        for b in request[:half]:  # a slow client, one byte at a time
            slow.write(bytes([b]))
            await slow.drain()
            await asyncio.sleep(0.001)
        others = [await proxy.get(TYPES, new_user()) for _ in range(3)]  # served while both are mid-request
        assert [r.status for r in others] == [200] * 3 and others[0].x_cache == "MISS", others
        for b in request[half:]:
            slow.write(bytes([b]))
            await slow.drain()
            await asyncio.sleep(0.001)
        reply = RawReply(await asyncio.wait_for(slow_reader.read(-1), 10))
        assert reply.status == 200 and reply.headers["x-cache"] == "HIT", reply
        assert reply.body == others[0].body
    finally:
        stalled.close()
        slow.close()
    assert await backend.route_count("GET", TYPES) == 1  # the stalled request reached nothing
