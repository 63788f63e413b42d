"""Responses that are never cached and never buffered: Server-Sent Events, chunked bodies, WebSockets.

* Unruled routes are relayed chunk by chunk as the backend sends them (``PassThrough.stream``), so an SSE
  event or a chunk reaches the client before the backend writes the next one. A ruled GET whose answer
  is ``text/event-stream`` is relayed the same way and not stored (``is_event_stream``). Keep the
  backend's silences shorter than ``UPSTREAM_TIMEOUT`` (SSE comments as keep-alives).
* WebSocket upgrades (``Upgrade: websocket``) are proxied: the proxy opens a WebSocket to the backend
  first (same path and query, the forwarded headers, the client's subprotocols), and only if the
  backend accepts does it accept the client's upgrade with the subprotocol the backend chose (after
  the 1xx interim answers the backend sent before its 101, upstream/wsinterim.py); then
  messages are relayed both ways until either side closes (the close code is passed on). A refusal by the
  backend is passed on as its status with ``{"detail": ...}``; an unreachable backend is a 502. A
  WebSocket holds one ``MAX_UPSTREAM`` slot and one ``MAX_INFLIGHT`` place while it is open. Other
  ``Upgrade`` values (h2c) are ignored: the request is answered as plain HTTP/1.1.
"""
from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from ..core.errors import UpstreamError
from ..core.interim import send_before
from ..upstream.failures import classify
from ..upstream.wsinterim import keeping_interim
from .wire import CacheStatus, error_response

log = logging.getLogger("proxy")
_WS_HEADERS = ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
               "Sec-WebSocket-Protocol", "Sec-WebSocket-Accept", "Content-Length")


def wants_websocket(request: web.Request) -> bool:
    headers = request.headers
    return (headers.get("Upgrade", "").strip().lower() == "websocket"
            and "upgrade" in headers.get("Connection", "").lower())


def is_event_stream(headers) -> bool:
    return headers.get("Content-Type", "").partition(";")[0].strip().lower() == "text/event-stream"


async def proxy_websocket(proxy, request: web.Request, rid: str) -> tuple[web.StreamResponse, str, str]:
    status = CacheStatus.bypass("websocket")
    if request.method != "GET":
        return error_response(400, "a WebSocket upgrade must be a GET", "BYPASS", status), "bypass", "none"
    upstream = proxy.upstream
    headers = upstream.forward_headers(request.headers, request.remote, request.scheme, rid)
    for name in _WS_HEADERS:
        headers.popall(name, None)
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    try:
        slot = await upstream.slots.take()
    except UpstreamError as exc:
        return error_response(exc.status, exc.detail, "BYPASS", status), "bypass", "none"
    try:
        proxy.metrics.upstream_requests.labels("none").inc()
        try:
            with keeping_interim() as interim:
                backend = await upstream.session.ws_connect(URL(upstream.base + request.raw_path, encoded=True),
                                                            headers=headers, protocols=protocols,
                                                            autoclose=True, autoping=True, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            send_before(request, interim)
            code = exc.status if 400 <= exc.status < 600 else 502
            return error_response(code, f"the backend refused the WebSocket upgrade (HTTP {exc.status})",
                                  "BYPASS", status), "bypass", "none"
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            failure = classify(exc)
            upstream.failures(failure, "none", "GET")
            return error_response(failure.status, failure.detail, "BYPASS", status), "bypass", "none"
        client = None
        try:
            client = web.WebSocketResponse(protocols=(backend.protocol,) if backend.protocol else (),
                                           autoping=True, max_msg_size=0)
            client.headers.update({"X-Cache": "BYPASS", "Cache-Status": status, "X-Request-ID": rid})
            send_before(request, interim)
            await client.prepare(request)
            await _relay(client, backend)
        finally:
            await backend.close()
            if client is not None and client.prepared and not client.closed:
                await client.close(code=backend.close_code or aiohttp.WSCloseCode.OK)
        return client, "bypass", "none"
    finally:
        slot.release()


async def _relay(client: web.WebSocketResponse, backend: aiohttp.ClientWebSocketResponse) -> None:
    async def pump(source, sink) -> None:
        async for message in source:
            if message.type == WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            elif message.type == WSMsgType.ERROR:
                return

    to_backend = asyncio.ensure_future(pump(client, backend))
    to_client = asyncio.ensure_future(pump(backend, client))
    try:
        done, _ = await asyncio.wait({to_backend, to_client}, return_when=asyncio.FIRST_COMPLETED)
        if to_client in done and not client.closed:  # the backend closed: pass its code on
            await client.close(code=backend.close_code or aiohttp.WSCloseCode.OK)
        if to_backend in done and not backend.closed:  # the client closed
            await backend.close(code=client.close_code or aiohttp.WSCloseCode.OK)
    finally:
        for task in (to_backend, to_client):
            task.cancel()
        await asyncio.gather(to_backend, to_client, return_exceptions=True)
