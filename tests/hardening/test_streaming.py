"""Streaming: Server-Sent Events and chunked responses reach the client unbuffered (the client has the
first event before the backend sends the second: ordered by asyncio events, not by time), never
cached, also on a ruled route; WebSocket upgrades are proxied both ways (subprotocol, close code),
a refused upgrade passes the backend's status on, and an upgrade is never answered from the cache."""
from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

RULES = """\
version: 1
prefix: "streaming-test"
rules:
  - name: events
    match: GET /events
    key: "events:all"
    auth: none
  - name: live
    match: GET /live
    key: "live:all"
    auth: none
"""
BOUND = 10  # seconds: a buffered stream would leave the client waiting for ever; fail instead


class Scripted:
    """A backend whose streams advance only when the test says so."""

    def __init__(self):
        self.next = [asyncio.Event() for _ in range(3)]
        self.requests: list[str] = []

    async def handler(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.websocket(request)
        if request.path in ("/events", "/sse"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await response.prepare(request)
            for n in range(3):
                await response.write(f"id: {n}\ndata: event {n}\n\n".encode())
                if n < 2:
                    await self.next[n].wait()
            await response.write_eof()
            return response
        if request.path == "/chunked":
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for n in range(3):
                await response.write(f"chunk-{n};".encode())
                if n < 2:
                    await self.next[n].wait()
            await response.write_eof()
            return response
        if request.path == "/refuse":
            return web.json_response({"detail": "no sockets here"}, status=403)
        return web.json_response({"path": request.path})

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        if request.path == "/refuse":
            return web.json_response({"detail": "no sockets here"}, status=403)
        ws = web.WebSocketResponse(protocols=("katiba.v1",))
        await ws.prepare(request)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                if message.data == "bye":
                    await ws.close(code=4001, message=b"done")
                    break
                await ws.send_str(f"echo {message.data} via {request.headers.get('X-Forwarded-For')}")
            elif message.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        return ws


async def streaming_proxy(make_proxy, origin, tmp_path, extra: str = ""):
    scripted = Scripted()
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES + extra)
    proxy = await make_proxy(upstream_url=await origin(scripted.handler), rules_path=rules)
    return scripted, proxy


async def read_event(content: aiohttp.StreamReader) -> bytes:
    return await asyncio.wait_for(content.readuntil(b"\n\n"), BOUND)


async def test_sse_events_arrive_one_by_one_and_are_never_cached(make_proxy, origin, tmp_path):
    scripted, proxy = await streaming_proxy(make_proxy, origin, tmp_path)
    for path in ("/sse", "/events", "/events"):  # unruled, then a ruled route (twice: never stored)
        scripted.next = [asyncio.Event() for _ in range(3)]
        async with proxy.client.get(path) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
            assert resp.headers["X-Cache"] in ("BYPASS", "MISS")
            assert await read_event(resp.content) == b"id: 0\ndata: event 0\n\n"  # before event 1 exists
            scripted.next[0].set()
            assert await read_event(resp.content) == b"id: 1\ndata: event 1\n\n"
            scripted.next[1].set()
            assert await read_event(resp.content) == b"id: 2\ndata: event 2\n\n"
    assert scripted.requests == ["GET /sse", "GET /events", "GET /events"]  # every one reached the backend


async def test_sse_is_not_buffered_by_the_rfc9111_cache_either(make_proxy, origin, tmp_path):
    scripted, proxy = await streaming_proxy(make_proxy, origin, tmp_path, "http_cache:\n  enabled: true\n")
    for _ in range(2):
        scripted.next = [asyncio.Event() for _ in range(3)]
        async with proxy.client.get("/sse") as resp:
            assert resp.status == 200
            assert await read_event(resp.content) == b"id: 0\ndata: event 0\n\n"
            scripted.next[0].set()
            assert await read_event(resp.content) == b"id: 1\ndata: event 1\n\n"
            scripted.next[1].set()
            assert await read_event(resp.content) == b"id: 2\ndata: event 2\n\n"
    assert scripted.requests == ["GET /sse", "GET /sse"]


async def test_chunked_responses_are_relayed_chunk_by_chunk(make_proxy, origin, tmp_path):
    scripted, proxy = await streaming_proxy(make_proxy, origin, tmp_path)
    async with proxy.client.get("/chunked") as resp:
        assert resp.status == 200 and resp.headers.get("Transfer-Encoding") == "chunked"
        received = b""
        for n in range(3):
            while not received.endswith(f"chunk-{n};".encode()):
                received += await asyncio.wait_for(resp.content.readany(), BOUND)
            if n < 2:
                assert received == b"".join(f"chunk-{i};".encode() for i in range(n + 1))
                scripted.next[n].set()  # the backend writes the next chunk only now
        assert await resp.content.read() == b""


async def test_websockets_are_proxied_both_ways(make_proxy, origin, tmp_path):
    scripted, proxy = await streaming_proxy(make_proxy, origin, tmp_path)
    async with proxy.client.ws_connect("/socket?room=1", protocols=("katiba.v1", "other")) as ws:
        assert ws.protocol == "katiba.v1"  # the backend's choice
        await ws.send_str("hello")
        message = await asyncio.wait_for(ws.receive(), BOUND)
        assert message.type == aiohttp.WSMsgType.TEXT and message.data == "echo hello via 127.0.0.1"
        await ws.send_bytes(b"\x00\x01\x02")
        message = await asyncio.wait_for(ws.receive(), BOUND)
        assert message.data == b"\x02\x01\x00"
        await ws.send_str("bye")
        message = await asyncio.wait_for(ws.receive(), BOUND)
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 4001  # the backend's close code
    assert scripted.requests == ["GET /socket"]
    text = await proxy.metrics()
    assert 'katiba_cache_requests_total{result="bypass",rule="none"} 1.0' in text


async def test_a_client_close_reaches_the_backend(make_proxy, origin, tmp_path):
    closed = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        closed.set()
        return ws

    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    proxy = await make_proxy(upstream_url=await origin(handler), rules_path=rules)
    ws = await proxy.client.ws_connect("/socket")
    await ws.close(code=4002)
    await asyncio.wait_for(closed.wait(), BOUND)


async def test_a_refused_upgrade_passes_the_status_on(make_proxy, origin, tmp_path):
    _, proxy = await streaming_proxy(make_proxy, origin, tmp_path)
    try:
        await proxy.client.ws_connect("/refuse")
        raise AssertionError("the upgrade should have been refused")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 403


async def test_an_upgrade_is_never_answered_from_the_cache(make_proxy, origin, tmp_path):
    scripted, proxy = await streaming_proxy(make_proxy, origin, tmp_path)
    first, second = await proxy.get("/live"), await proxy.get("/live")
    assert (first.x_cache, second.x_cache) == ("MISS", "HIT")
    async with proxy.client.ws_connect("/live") as ws:
        await ws.send_str("still there?")
        message = await asyncio.wait_for(ws.receive(), BOUND)
        assert message.data.startswith("echo still there?")
    assert scripted.requests == ["GET /live", "GET /live"]  # the fill, then the upgrade
