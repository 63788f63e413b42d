"""The backend behind one seam: build the forwarded request, send it, map failures to 502/504.

Pitfalls handled here (conventions.md, "Forwarding"): the client session never decompresses, so bodies
and ``Content-Encoding``/``Content-Length`` stay consistent; upstream URLs are built with
``encoded=True`` so yarl rewrites neither ``/../`` nor ``%ZZ`` (keys are computed from exactly what is
sent); hop-by-hop headers (RFC 9110 §7.6.1) are dropped both ways; the connector's pool is raised.
"""
from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any, Mapping

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .errors import UpstreamError

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "transfer-encoding", "upgrade", "proxy-connection"})


@dataclass(frozen=True)
class UpstreamConfig:
    url: str
    connect_timeout: float = 2.0
    read_timeout: float = 30.0
    pool_size: int = 512
    preserve_host: bool = False
    ca_file: str | None = None


def strip_hop_by_hop(headers: Mapping[str, str]) -> CIMultiDict:
    named = {h.strip().lower() for v in headers.getall("connection", ()) for h in v.split(",")} \
        if hasattr(headers, "getall") else set()
    out = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower not in HOP_BY_HOP and lower not in named:
            out.add(name, value)
    return out


class Upstream:
    def __init__(self, config: UpstreamConfig):
        self.config = config
        base = URL(config.url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"upstream URL must be http(s)://host[:port], got {config.url!r}")
        self.base = str(base).rstrip("/")
        self.host_header = base.raw_authority
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        ssl_context: Any = None
        if self.config.ca_file:
            ssl_context = ssl.create_default_context(cafile=self.config.ca_file)
        connector = aiohttp.TCPConnector(limit=self.config.pool_size, limit_per_host=0, ssl=ssl_context,
                                         ttl_dns_cache=300, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(total=None, connect=self.config.connect_timeout,
                                        sock_read=self.config.read_timeout)
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                             skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
                                             cookie_jar=aiohttp.DummyCookieJar())

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def forward_headers(self, headers: Mapping[str, str], client_ip: str | None, scheme: str,
                        request_id: str) -> CIMultiDict:
        out = strip_hop_by_hop(headers)
        host = headers.get("Host", "")
        prior = ", ".join(out.getall("X-Forwarded-For", ()))
        out.popall("X-Forwarded-For", None)
        if client_ip:
            out["X-Forwarded-For"] = f"{prior}, {client_ip}" if prior else client_ip
        elif prior:
            out["X-Forwarded-For"] = prior
        out["X-Forwarded-Proto"] = scheme
        if host:
            out["X-Forwarded-Host"] = host
        else:
            out.popall("X-Forwarded-Host", None)
        if not self.config.preserve_host:
            out["Host"] = self.host_header
        out["X-Request-ID"] = request_id
        return out

    async def send(self, method: str, path_qs: str, headers: CIMultiDict, body: Any = None) -> aiohttp.ClientResponse:
        """Send and return the response with its body unread; the caller releases it."""
        assert self.session is not None, "Upstream.start() was not awaited"
        url = URL(self.base + path_qs, encoded=True)
        try:
            return await self.session.request(method, url, headers=headers, data=body, allow_redirects=False,
                                              compress=None, chunked=None)
        except asyncio.TimeoutError:
            raise UpstreamError(504, "upstream timed out") from None
        except aiohttp.ServerTimeoutError:
            raise UpstreamError(504, "upstream timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(502, f"upstream unreachable: {type(exc).__name__}") from None


def response_headers(upstream_headers: Mapping[str, str]) -> CIMultiDict:
    """The backend's response headers minus hop-by-hop and framing (aiohttp re-frames the body)."""
    out = strip_hop_by_hop(upstream_headers)
    out.popall("Content-Length", None)
    return out
