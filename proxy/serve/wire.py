"""Small pieces of HTTP the server puts on the wire: Cache-Status (RFC 9211), error bodies, ETags,
request ids, masked keys for logs, and the rate limiter of the admin endpoints."""
from __future__ import annotations

import re
import time

from aiohttp import web

CACHE_NAME = "katiba-cache"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_BRACED = re.compile(r"\{([^}]*)\}")


# Every RFC 9211 ``fwd`` value this proxy puts in Cache-Status, with what it means to an operator. The
# documented table (docs/OPERATIONS.md, "What fwd= means") is checked against this mapping, and
# ``CacheStatus`` emits no other value (tests/ops/test_cache_status_fwd.py).
FWD = {
    "uri-miss": "no entry is stored under this request's key: fetched from the backend (and stored if the "
                "answer qualifies)",
    "vary-miss": "RFC 9111 cache of unruled routes (http_cache): an entry exists for the URI, but not for "
                 "this request's values of the headers its Vary names",
    "miss": "an entry exists but may not be used: one of its namespaces was purged since it was stored (a "
            "write, `cache-proxy purge`, an invalidation endpoint, the global epoch), or a rules reload "
            "changed its key template or guards",
    "stale": "the entry is past its TTL: fetched again. With `hit` and `fwd-status`: the backend failed "
             "(that status) and stale-if-error served the entry",
    "request": "the client asked for an origin fetch (`Cache-Control: no-cache` or `max-age=0`, or "
               "`Pragma: no-cache`) on a rule with `client_cache_control: revalidate`, or on an RFC 9111 entry",
    "method": "the method is neither a read (GET, HEAD) nor a write (POST, PUT, PATCH, DELETE), e.g. "
              "OPTIONS: passed through",
    "bypass": "the cache took no part (`X-Cache: BYPASS`); `detail=` says why: no-rule, no-token, "
              "invalid-token, pending-purge, store-unavailable, shadow, write, cache-off, unkeyed-query, ...",
}


class CacheStatus:
    """RFC 9211 values; never the key or a user id. ``fwd`` is always one of ``FWD``."""

    @staticmethod
    def hit(ttl_left: int, detail: str | None = None, fwd_status: int | None = None) -> str:
        value = f"{CACHE_NAME}; hit; ttl={ttl_left}"
        if fwd_status is not None:
            value += f"; fwd=stale; fwd-status={fwd_status}"
        return value + (f"; detail={detail}" if detail else "")

    @staticmethod
    def miss(fwd: str, fwd_status: int, outcome: str, collapsed: bool) -> str:
        assert fwd in FWD, f"undocumented Cache-Status fwd={fwd}: add it to wire.FWD and the docs"
        value = f"{CACHE_NAME}; fwd={fwd}"
        if fwd_status:
            value += f"; fwd-status={fwd_status}"
        if outcome == "stored":
            value += "; stored"
        elif outcome:
            value += f"; detail={outcome}"
        return value + ("; collapsed" if collapsed else "")

    @staticmethod
    def bypass(reason: str) -> str:
        fwd = "method" if reason == "method" else "bypass"
        return f"{CACHE_NAME}; fwd={fwd}; detail={reason}"


def error_response(status: int, detail: str, x_cache: str, cache_status: str) -> web.Response:
    """A proxy-made error, shaped like the backend's own: ``{"detail": "..."}``. A 503 (overload: no free
    backend slot) says when to retry."""
    headers = {"X-Cache": x_cache, "Cache-Status": cache_status}
    if status == 503:
        headers["Retry-After"] = "1"
    return web.json_response({"detail": detail}, status=status, headers=headers)


def etag_matches(if_none_match: str | None, etag: str | None) -> bool:
    """Weak comparison (RFC 9110 §13.1.2) of an If-None-Match list against ``etag``."""
    if not if_none_match or not etag:
        return False
    if if_none_match.strip() == "*":
        return True
    mine = etag.strip().removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == mine for tag in if_none_match.split(","))


def is_valid_request_id(value: str) -> bool:
    return bool(value) and bool(_REQUEST_ID.match(value))


def mask_gen_key(gen_key: str, prefix: str) -> str:
    """``user:{…a1b2}:*`` from a generation key: enough to correlate, never a whole user id."""
    ns = gen_key.removeprefix(f"{prefix}:gen:")
    if gen_key == f"{prefix}:epoch":
        return "*"
    if ns.startswith("{") and ":" in ns[: ns.find("}")]:  # literal hash tag ({achievements:global}): no value
        ns = ns[1:].replace("}", "", 1)
    return _BRACED.sub(lambda m: "{…" + m.group(1)[-4:] + "}" if len(m.group(1)) > 4 else "{…}", ns) + ":*"


class RateLimiter:
    """Token bucket per client; ``take`` returns 0 when allowed, else seconds to wait."""

    def __init__(self, rate: float, burst: float, clock=time.monotonic, max_clients: int = 10_000):
        self.rate, self.burst, self.clock, self.max_clients = rate, burst, clock, max_clients
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str) -> int:
        now = self.clock()
        tokens, last = self.buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self.buckets[client] = (tokens, now)
            return max(1, int((1 - tokens) / self.rate + 0.999))
        if len(self.buckets) >= self.max_clients and client not in self.buckets:
            self.buckets.clear()
        self.buckets[client] = (tokens - 1, now)
        return 0


class BodyTooLarge(Exception):
    """A request body over the limit of the route that has to read it."""


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, or BodyTooLarge as soon as it passes ``limit`` bytes."""
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)
