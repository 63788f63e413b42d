"""RFC 9110 §15.2: 1xx interim answers from the origin (103 Early Hints) reach the client before the final
answer, on the fast path and on aiohttp's path, are never stored, and are not sent to an HTTP/1.0 client.
Against the raw origin (an aiohttp origin cannot send them), both stores."""
from __future__ import annotations

import asyncio

import pytest

from tests.rfc9111.conftest import RULE_READER, RULE_ROUTE, Clock
from tests.rfc9111.rawserver import Answer, RawOrigin

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
