"""RFC 9110 §15.2: 1xx interim answers from the origin (103 Early Hints) reach the client before the final
answer, on the fast path and on aiohttp's path (fills, streamed misses, and answers relayed through
Upstream.send: writes, bypasses), are never stored, and are not sent to an HTTP/1.0 client.
Against the raw origin (an aiohttp origin cannot send them), both stores."""
from __future__ import annotations

import asyncio

import pytest

from tests.rfc9111.conftest import RULE_READER, RULE_ROUTE, Clock
from tests.rfc9111.rawserver import Answer, RawOrigin, talk

P = "/r/hints"
TYPES = RULE_ROUTE  # a rule (global, needs a token): its misses are filled on the fast path
ENVELOPE = b'{"header": {"responseCode": 200}}'
HINT = [(103, [("Link", "</style.css>; rel=preload; as=style")])]


@pytest.fixture
async def raw():
    origin = await RawOrigin().start()
    origin.clock = Clock()
    yield origin
    await origin.close()


async def exchange(port: int, path: str, extra: str = "", version: str = "1.1") -> bytes:
    """One request on its own connection; everything the proxy sends back until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    token = "".join(f"{k}: {v}\r\n" for k, v in RULE_READER.items()) if path.startswith(RULE_ROUTE) else ""
    writer.write(f"GET {path} HTTP/{version}\r\nHost: test\r\nConnection: close\r\n{token}{extra}\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


@pytest.mark.parametrize("path, headers, extra", [
    (P, [("Cache-Control", "max-age=600")], ""),  # the HTTP cache: aiohttp's path
    (TYPES, [("Content-Type", "application/json")], ""),  # a rule's miss: the fast path
    (TYPES, [("Content-Type", "application/json")], "If-None-Match: \"other\"\r\n"),  # a rule's miss: aiohttp's path
], ids=["http-cache", "rule-fast-path", "rule-aiohttp-path"])
async def test_15_2_interim_answers_are_relayed_before_the_final_one_and_never_stored(make_cache, raw, path,
                                                                                    headers, extra):
    raw.script(path, Answer(headers=headers, body=ENVELOPE, interim=HINT))
    cache = await make_cache(origin=raw)
    data = await exchange(cache.proxy.client.port, path, extra)
    assert data.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n"), data
    assert b"\r\n\r\nHTTP/1.1 200 OK\r\n" in data and data.endswith(ENVELOPE), data
    again = await exchange(cache.proxy.client.port, path, extra)
    assert again.startswith(b"HTTP/1.1 200 OK\r\n") and b"X-Cache: HIT" in again, again  # stored without it
    assert raw.count(path) == 1


async def test_15_2_no_interim_answer_for_an_http_1_0_client(make_cache, raw):
    raw.script(P, Answer(headers=[("Cache-Control", "max-age=600")], interim=HINT))
    cache = await make_cache(origin=raw)
    data = await exchange(cache.proxy.client.port, P, version="1.0")
    assert data.startswith(b"HTTP/1.0 200 OK\r\n") or data.startswith(b"HTTP/1.1 200 OK\r\n"), data
    assert b" 103 " not in data


EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n"


@pytest.mark.parametrize("method, path, extra", [
    ("PUT", "/r/write", ""),  # a write: Upstream.send on aiohttp's path
    ("GET", P, "If-Match: \"v1\"\r\n"),  # a GET the HTTP cache bypasses (If-Match): passed on
], ids=["write", "bypassed-get"])
async def test_15_2_interim_answers_to_relayed_requests_reach_the_client_first(make_cache, raw, method, path, extra):
    raw.script(path, Answer(body=b"done", interim=HINT))
    cache = await make_cache(origin=raw)
    body = b"x" if method == "PUT" else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
    data = await talk(cache.proxy.client.port, head.encode(), body)
    assert data.startswith(EARLY_HINTS + b"HTTP/1.1 200 "), data
    assert data.endswith(b"\r\n\r\ndone") and data.count(b" 103 ") == 1, data
    assert raw.count(path, method) == 1


async def test_15_2_interim_answers_before_a_streamed_miss_on_the_fast_path(make_cache, raw):
    """A rule's miss whose answer is relayed as it comes (an event stream, never stored) on the fast path."""
    raw.script(TYPES, Answer(headers=[("Content-Type", "text/event-stream")], body=b"data: x\n\n", interim=HINT))
    cache = await make_cache(origin=raw)
    for n in (1, 2):
        data = await exchange(cache.proxy.client.port, TYPES)
        assert data.startswith(EARLY_HINTS + b"HTTP/1.1 200 "), data
        assert data.endswith(b"data: x\n\n") and data.count(b" 103 ") == 1, data
        assert raw.count(TYPES) == n  # never stored


async def test_15_2_interim_answers_before_a_websocket_upgrade_reach_the_client_first(make_cache, raw):
    """A 103 the backend sends before accepting a WebSocket upgrade (its 101) reaches the client before the
    proxy's own 101; the WebSocket then carries the backend's messages."""
    path = "/r/socket"
    raw.script(path, Answer(action="websocket", body=b"hello", interim=HINT))
    cache = await make_cache(origin=raw)
    reader, writer = await asyncio.open_connection("127.0.0.1", cache.proxy.client.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    await writer.drain()
    try:
        data = b""
        while not data.endswith(b"\x81\x05hello"):
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            assert chunk, data
            data += chunk
    finally:
        writer.close()
    assert data.startswith(EARLY_HINTS + b"HTTP/1.1 101 Switching Protocols\r\n"), data
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in data, data  # RFC 6455's own example
    assert data.count(b" 103 ") == 1 and raw.count(path) == 1


async def test_15_2_interim_answers_before_a_refused_websocket_upgrade_reach_the_client_first(make_cache, raw):
    path = "/r/socket"
    raw.script(path, Answer(status=403, body=b"no", interim=HINT))
    cache = await make_cache(origin=raw)
    head = (f"GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", cache.proxy.client.port)
    writer.write(head.encode())
    try:
        data = await asyncio.wait_for(reader.readuntil(b"}"), 10)  # the refusal's {"detail": ...}
    finally:
        writer.close()
    assert data.startswith(EARLY_HINTS + b"HTTP/1.1 403 "), data
    assert b"refused the WebSocket upgrade" in data and data.count(b" 103 ") == 1 and raw.count(path) == 1
