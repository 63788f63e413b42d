"""Fixtures of the RFC 9111 / 5861 suite: the proxy with ``http_cache`` enabled in front of a scripted origin.

The functional suite's fixtures are re-exported (``make_proxy``, ``store_kind``: every test runs on the
memory store and on Redis, ``poll``). Added here:

``Clock``        the proxy's clock (``app[PROXY_KEY].clock``), moved by hand: no test sleeps for time to pass.
``Origin``       a real aiohttp origin on loopback whose answers each test scripts per path:
                 ``origin.script(path, Resp(...), Resp(...))`` (consumed in order, the last one repeats; a
                 callable gets the request and returns a ``Resp``; ``Resp(DROP)`` closes the connection). It records every request it receives
                 (``origin.count(path)``, ``origin.seen(path)``), adds ``Date`` from the clock unless the
                 script gives one, and ``origin.hold(path)`` holds answers until ``origin.release(path)``.
``make_cache``   ``await make_cache(**http_cache)``: the shipped rules.yaml with ``http_cache: {enabled: true,
                 **http_cache}``; returns a ``Cache`` (``.get(path, headers, method)``, ``.proxy``,
                 ``.origin``, ``.clock``). ``origin=`` puts another proxy in front of an existing origin (anything
                 with ``url`` and ``clock``, e.g. ``rawserver.RawOrigin``), ``store=`` gives it that store
                 instead of a fresh one of ``store_kind``, ``upstream={...}`` sets UpstreamConfig fields,
                 ``edit=`` rewrites the shipped rules.yaml text first.
``cache``        ``make_cache()``.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.core.httpcache import format_http_date
from proxy.upstream.client import UpstreamConfig
from tests.functional.conftest import *  # noqa: F401,F403  (make_proxy, store_kind, poll, ...)
from tests.functional.conftest import RULES_PATH, ProxyClient, Reply, auth

SHIPPED_HTTP_CACHE = "http_cache: {enabled: false}"


DROP = 0  # Resp(DROP): close the connection instead of answering


class Clock:
    """Whole seconds, so Date headers (second precision) and the proxy agree exactly."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Resp:
    status: int = 200
    headers: dict | list = field(default_factory=dict)
    body: bytes = b"representation"


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: CIMultiDictProxy


class Origin:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.scripts: dict[str, list] = {}
        self.requests: list[Seen] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.url = ""
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    def script(self, path: str, *responses: Resp | Callable[[web.Request], Resp]) -> None:
        self.scripts[path] = list(responses)

    def date(self, offset: float = 0) -> str:
        return format_http_date(self.clock() + offset)

    def hold(self, path: str) -> None:
        self.gates[path] = asyncio.Event()

    def release(self, path: str) -> None:
        self.gates.pop(path).set()

    def seen(self, path: str, method: str | None = "GET") -> list[Seen]:
        return [r for r in self.requests if r.path_qs == path and (method is None or r.method == method)]

    def count(self, path: str, method: str | None = "GET") -> int:
        return len(self.seen(path, method))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Seen(request.method, request.raw_path, request.headers.copy()))
        gate = self.gates.get(request.raw_path.partition("?")[0])
        if gate is not None:
            await gate.wait()
        script = self.scripts.get(request.raw_path) or self.scripts.get(request.raw_path.partition("?")[0])
        if not script:
            return web.Response(status=404, body=b"not scripted")
        item = script.pop(0) if len(script) > 1 else script[0]
        if callable(item):
            item = item(request)
        if item.status == DROP:  # the origin fails without an answer: connection closed
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError("scripted drop")
        headers = CIMultiDict(item.headers.items() if isinstance(item.headers, dict) else item.headers)
        if "Date" not in headers:
            headers["Date"] = self.date()
        return web.Response(status=item.status, headers=headers, body=item.body)


def validating(etag: str | None = None, last_modified: str | None = None, body: bytes = b"representation",
               headers: dict | None = None, not_modified_headers: dict | None = None):
    """A handler that answers 304 when the request's validator matches, else 200 with ``body``."""
    def answer(request: web.Request) -> Resp:
        base = dict(headers or {})
        if etag:
            base["ETag"] = etag
        if last_modified:
            base["Last-Modified"] = last_modified
        if (etag and request.headers.get("If-None-Match") == etag) or (
                not etag and last_modified and request.headers.get("If-Modified-Since") == last_modified):
            return Resp(304, {**base, **(not_modified_headers or {})}, b"")
        return Resp(200, base, body)
    return answer


class Cache:
    def __init__(self, proxy: ProxyClient, origin: Origin, clock: Clock) -> None:
        self.proxy, self.origin, self.clock = proxy, origin, clock

    async def get(self, path: str, headers: dict | None = None, method: str = "GET", **kw: Any) -> Reply:
        """Through the proxy, ``path`` sent exactly as written; redirects are answers, never followed. The
        rule-mode route these tests use (``/api/v1/achievements/types``, a global entry) gets a valid token
        unless ``headers`` name one: the rule serves only a valid token (the contract). Other paths get
        none, so the HTTP cache's §3.5 rules for ``Authorization`` do not come into play."""
        url = URL(f"http://127.0.0.1:{self.proxy.client.port}{path}", encoded=True)
        headers = dict(headers or {})
        if path.startswith(RULE_ROUTE) and not any(k.lower() == "authorization" for k in headers):
            headers.update(RULE_READER)
        async with self.proxy.client.session.request(method, url, headers=headers, allow_redirects=False,
                                                     **kw) as resp:
            return Reply(resp.status, resp.headers, await resp.read())


_files = itertools.count()
RULE_ROUTE = "/api/v1/achievements/types"
RULE_READER = auth("rfc9111-rule-reader", ttl=6 * 3600)


@pytest.fixture
def make_cache(make_proxy, aiohttp_server, tmp_path):
    async def make(origin: Origin | None = None, store: Any = None, upstream: dict | None = None,
                   edit: Callable[[str], str] | None = None, **http_cache: Any) -> Cache:
        text = Path(RULES_PATH).read_text()
        if edit is not None:
            text = edit(text)
        assert SHIPPED_HTTP_CACHE in text, "the shipped rules.yaml changed its http_cache line"
        path = tmp_path / f"rules-{next(_files)}.yaml"
        path.write_text(text.replace(SHIPPED_HTTP_CACHE, "http_cache: " + json.dumps({"enabled": True, **http_cache})))
        if origin is None:
            origin = Origin(Clock())
            server = await aiohttp_server(origin.app)
            origin.url = f"http://127.0.0.1:{server.port}"
        config = UpstreamConfig(url=origin.url, **upstream) if upstream else None
        proxy = await make_proxy(upstream_url=origin.url, upstream=config, rules_path=path, store=store)
        proxy.proxy.clock = origin.clock
        return Cache(proxy, origin, origin.clock)

    return make


@pytest.fixture
async def cache(make_cache) -> Cache:
    return await make_cache()
