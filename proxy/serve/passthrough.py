"""Requests the cache does not answer: relayed to the backend and its answer streamed back as it comes.

Used for bypasses (no rule, a pending purge, the store down), for writes' answers once their purge is
applied, and for streamed fills (a body too large to store, Server-Sent Events).
"""
from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from ..core import interim
from ..core.errors import UpstreamError
from ..core.metrics import Metrics
from ..upstream.client import Upstream, body_failure, framed_length, response_headers
from ..upstream.http1 import Response as UpstreamResponse
from .answers import Origin
from .answers import request_id as request_id_var
from .wire import error_response


class PassThrough:
    def __init__(self, upstream: Upstream, metrics: Metrics):
        self.upstream, self.metrics = upstream, metrics

    def headers(self, response: UpstreamResponse, cache_status: str) -> CIMultiDict:
        """The backend's answer headers as the client gets them, marked as not from the cache."""
        headers = response_headers(response.headers)
        headers["X-Cache"] = "BYPASS"
        headers["Cache-Status"] = cache_status
        headers["X-Request-ID"] = request_id_var.get() or ""
        return headers

    async def relay(self, request: web.Request, origin: Origin, cache_status: str) -> web.StreamResponse:
        headers = self.upstream.forward_headers(request.headers, origin.client_ip, origin.scheme, origin.request_id)
        body = request.content if request.body_exists else None
        self.metrics.upstream_requests.labels("none").inc()
        start = time.perf_counter()
        try:
            response = await self.upstream.send(request.method, origin.path_qs, headers, body)
        except UpstreamError as exc:
            self.upstream.failures(exc, "none", request.method)
            return error_response(exc.status, exc.detail, "BYPASS", cache_status)
        self.metrics.upstream_duration.observe(time.perf_counter() - start)
        return await self.stream(request, response, self.headers(response, cache_status))

    async def stream(self, request: web.Request, response: UpstreamResponse, headers: CIMultiDict,
                     prefix: bytes = b"") -> web.StreamResponse:
        """Relay ``response``'s body as it arrives; a reset mid-body aborts the client connection."""
        length = framed_length(response.headers)
        out = web.StreamResponse(status=response.status, reason=response.reason, headers=headers)
        if length is not None:
            out.content_length = length
        try:
            interim.send_before(request, interim.of(response))  # 1xx first (proxy/core/interim.py)
            await out.prepare(request)
            if prefix:
                await out.write(prefix)
            async for chunk in response.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
            if request.transport is None or request.transport.is_closing():  # the client left: not the backend
                raise ConnectionResetError("the client left while its answer was relayed") from exc
            self.upstream.failures(body_failure(exc), "none", request.method)  # counted, logged (rate-limited)
            request.transport.close()
        finally:
            response.release()
        return out
