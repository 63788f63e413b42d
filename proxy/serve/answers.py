"""What both request paths (aiohttp's handler and the fast path) answer with, and the request id they log.

Owns the small values a request carries through the request path (``Origin``: a request detached from
the client's request object; ``Fetched``: what a fill got; ``Filled``: how a miss is answered), the
headers of a miss and of a 304, the ETag the proxy makes for a body that has none, and ``request_id``,
the context variable every log line of a request carries (proxy/ops/logs.py prints it). Kept below the
request path, the HTTP cache and the fast path so that all three take them from here, not from each other.
"""
from __future__ import annotations

import contextvars
import hashlib
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict

from ..core import httpcache
from ..core.errors import UpstreamError

# The id of the request being handled, for every log line written meanwhile (nothing threads it through).
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


CONDITIONAL_HEADERS = ("If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range", "Range")


# Never sent with a fill (a bodyless GET whose answer every client with the key gets): body framing (a
# Content-Length without its body would desynchronise the pooled upstream connection), cookies, and the
# host/prefix forwarding headers a client could choose (X-Forwarded-Host would carry its Host header).
FILL_DROPPED = ("Content-Length", "Content-Type", "Expect", "Cookie", "Forwarded", "X-Forwarded-Host",
                "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Server", "X-Host", "X-Original-Host")


@dataclass
class Fetched:
    """What a fill got from the backend (or why it got nothing)."""

    status: int = 0
    headers: CIMultiDict = field(default_factory=CIMultiDict)  # as the backend sent them, minus hop-by-hop
    body: bytes = b""
    etag: str | None = None
    outcome: str = ""  # "stored", "generation-changed", or the reason it was not stored
    error: UpstreamError | None = None
    stream: Any = None  # (prefix, upstream response) when the body exceeded the rule's limit
    collapsed: bool = False
    interim: tuple = ()  # 1xx answers that came before it, relayed to the client, never stored
    storable: bool = False  # the rule would store this answer (whether or not it was stored)

    @property
    def shareable(self) -> bool:
        """May requests that waited for this fill be given it? Only an answer the rule would store (the
        same for every request with the key), or no answer at all (the backend failed, for everyone).
        Anything else (a 401 for a deactivated user, a 429 for one caller, an envelope error) may be the
        leader's own: waiters fetch with their own credentials."""
        return self.error is not None or (self.stream is None and self.storable)


@dataclass(slots=True)
class Filled:
    """How a miss is answered (``RequestPath.fill``): ``fetched``, or the stale entry when it is None."""

    cache_status: str
    fetched: Fetched | None = None


@dataclass(frozen=True)
class Origin:
    """Everything needed to send a request upstream, detached from the client's request object."""

    path_qs: str
    headers: CIMultiDict
    client_ip: str | None
    scheme: str
    request_id: str


def request_target(raw: str) -> str:
    """The request-target without a ``#fragment``: RFC 9112 §3.2's origin-form has none, and the backend's
    parser drops it, so it is neither keyed nor forwarded (stripped rather than refused: without the
    proxy the backend would have answered)."""
    return raw.partition("#")[0] if "#" in raw else raw


def content_etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def miss_headers(upstream: CIMultiDict, etag: str | None, cache_status: str) -> CIMultiDict:
    """The headers of an answer fetched for this request (a miss): the backend's, with our ETag when it
    sent none, and our X-Cache, Cache-Status and request id. Content-Length is the server's to set."""
    headers = CIMultiDict(upstream)
    headers.popall("Content-Length", None)
    if etag and "ETag" not in headers:
        headers["ETag"] = etag
    headers["X-Cache"] = "MISS"
    headers["Cache-Status"] = cache_status
    headers["X-Request-ID"] = request_id.get() or ""
    return headers


def not_modified_headers(headers: CIMultiDict) -> CIMultiDict:
    return CIMultiDict(httpcache.not_modified_fields(headers.items(), ("age", "x-cache", "cache-status", "x-request-id")))
