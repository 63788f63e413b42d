"""The HTTP cache's fills: one GET to the origin (conditional when the stored response has validators),
and the store write of what RFC 9111 lets it keep, under the tokens read before the fetch (the fill
guard: an invalidation during the fetch wins). A stale-while-revalidate refresh is one such fill in the
background.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from multidict import CIMultiDict

from ..core import httpcache as hc
from ..core import interim
from ..core.entry import Entry
from ..core.errors import StoreUnavailable, UpstreamError
from ..upstream.client import read_limited, strip_hop_by_hop
from .answers import CONDITIONAL_HEADERS, content_etag
from .httpentries import FINGERPRINT, LABEL, VARY_SPEC, Found, Target, cache_view
from .streaming import is_event_stream


# Never sent with a fill: body framing (the fill has no body) and forwarding headers a client could
# choose; the rest of the client's request goes upstream (the response says how it may be shared).
FILL_DROPPED = ("Content-Length", "Content-Type", "Expect", "Forwarded", "X-Forwarded-Port",
                "X-Forwarded-Prefix", "X-Forwarded-Server", "X-Host", "X-Original-Host")


@dataclass
class Got:
    """What an origin fetch brought back."""

    status: int = 0
    headers: CIMultiDict = field(default_factory=CIMultiDict)
    body: bytes = b""
    etag: str | None = None
    outcome: str = ""  # stored, or why not
    error: UpstreamError | None = None
    stream: Any = None  # (prefix, upstream response): too large to store
    revalidated: Entry | None = None  # the stored entry, updated by a 304
    interim: tuple = ()  # 1xx answers before it: relayed, never stored (proxy/core/interim.py)


async def fetch(proxy, target: Target, origin, found: Found, tokens: list[str], validate: Entry | None,
                 fallback: bool = False, client_conditionals: bool = False) -> Got:
    """GET the target (conditionally when ``validate`` has validators), store what may be stored.

    With nothing stored (``client_conditionals``), the client's own If-None-Match / If-Modified-Since go
    upstream (§4.3.2): a 304 is relayed and not stored, a 200 is stored as any full response."""
    config = proxy.rules.http_cache
    headers = proxy.upstream.forward_headers(origin.headers, origin.client_ip, origin.scheme, origin.request_id)
    passed = ("If-None-Match", "If-Modified-Since") if client_conditionals and validate is None else ()
    for name in CONDITIONAL_HEADERS + FILL_DROPPED:  # a validation needs the full representation
        if name not in passed:
            headers.popall(name, None)
    stored = CIMultiDict(validate.headers) if validate is not None else None
    conditionals = hc.conditional_headers(stored) if stored is not None else {}
    headers.update(conditionals)
    proxy.metrics.upstream_requests.labels(LABEL).inc()
    request_time = proxy.clock()
    start = time.perf_counter()
    try:
        response = await proxy.upstream.fetch(origin.path_qs, headers, LABEL)  # the lean client (upstream/http1.py)
    except UpstreamError as exc:
        proxy.upstream.failures(exc, LABEL, "GET")
        return Got(error=exc, outcome="upstream-error")
    response_time = proxy.clock()
    proxy.metrics.upstream_duration.observe(time.perf_counter() - start)
    upstream_headers = strip_hop_by_hop(response.headers)
    if response.status == 304 and validate is not None and conditionals:
        response.release()
        if not hc.selects(stored, upstream_headers):  # §4.3.4: not ours to update: fetch it whole
            return await fetch(proxy, target, origin, found, tokens, None, fallback)
        new_headers = hc.updated_headers(validate.headers, upstream_headers, response_time)
        birth = response_time - hc.corrected_initial_age(upstream_headers, request_time, response_time)
        fresh = replace(validate, headers=new_headers, stored_at=birth, generations=tuple(tokens))
        refusal = hc.refuse_to_store("GET", fresh.status, origin.headers, cache_view(proxy, new_headers), config.heuristic)
        outcome = refusal or await store_fill(proxy, target, found, tokens, fresh, origin.headers)
        proxy.metrics.stores.labels(LABEL, outcome).inc()
        return Got(304, upstream_headers, outcome=outcome, revalidated=fresh)
    if is_event_stream(upstream_headers):  # SSE: relayed as it comes, never stored (proxy/serve/streaming.py)
        return Got(response.status, upstream_headers, outcome="event-stream", stream=(b"", response))
    try:
        body, complete = await read_limited(response, config.max_body_bytes)
    except UpstreamError as exc:
        proxy.upstream.failures(exc, LABEL, "GET")
        return Got(error=exc, outcome="upstream-error")
    if not complete:
        return Got(response.status, upstream_headers, outcome="too-large", stream=(body, response))
    policy_headers = cache_view(proxy, upstream_headers)  # RFC 9213: a targeted field decides, if valid
    refusal = hc.refuse_to_store("GET", response.status, origin.headers, policy_headers, config.heuristic)
    if refusal is None and fallback and response.status in hc.ERROR_STATUSES:
        refusal = "upstream-error"  # the stale entry answers instead (RFC 5861 §4); keep it
    etag = (upstream_headers.getall("ETag", ()) or [None])[0]
    outcome = refusal or ""
    if refusal is None:
        age = hc.corrected_initial_age(upstream_headers, request_time, response_time)
        kept = hc.stored_headers(upstream_headers, response_time, policy_headers)
        ttl = hc.store_seconds(cache_view(proxy, kept), response.status, age, config.heuristic, config.max_ttl)
        if ttl <= 0:
            outcome = "not-reusable"  # stale on arrival (or no lifetime) and nothing to revalidate it with
        else:
            etag = etag or content_etag(body)
            entry = Entry(response.status, kept, body, response_time - age, tuple(tokens), FINGERPRINT, etag)
            outcome = await store_fill(proxy, target, found, tokens, entry, origin.headers, ttl)
    proxy.metrics.stores.labels(LABEL, outcome).inc()
    return Got(response.status, upstream_headers, body, etag, outcome, interim=interim.of(response))


async def store_fill(proxy, target: Target, found: Found, tokens: list[str], entry: Entry, request_headers,
                 ttl: int | None = None) -> str:
    """Write ``entry`` (and the Vary spec when it varies) if the URI's generations are still ``tokens``."""
    if proxy.purger.pending_for(target.gen_keys):
        return "pending-purge"
    config = proxy.rules.http_cache
    headers = CIMultiDict(entry.headers)
    if ttl is None:
        ttl = hc.store_seconds(cache_view(proxy, entry.headers), entry.status, max(0.0, proxy.clock() - entry.stored_at),
                               config.heuristic, config.max_ttl)
        if ttl <= 0:
            return "not-reusable"
    fields = hc.vary_fields(headers)
    if fields is None:
        return "vary-star"
    key = target.key
    try:
        if fields:
            key = hc.variant_key(target.key, hc.vary_digest(fields, request_headers))
            if found.fields != fields:
                spec = Entry(0, (("Vary", ",".join(fields)),), b"", entry.stored_at, tuple(tokens), VARY_SPEC, "")
                if not await proxy.store.store_if_current(target.key, spec.encode(), config.max_ttl,
                                                          target.gen_keys, tokens, proxy.ruleset.gen_ttl):
                    return "generation-changed"
        ok = await proxy.store.store_if_current(key, entry.encode(), ttl, target.gen_keys, tokens, proxy.ruleset.gen_ttl)
    except StoreUnavailable:
        return "store-error"
    return "stored" if ok else "generation-changed"


def revalidate_behind(proxy, target: Target, found: Found, origin) -> None:
    """stale-while-revalidate: one background validation per key."""
    if found.key in proxy.warmer.refreshing or None in found.tokens:
        return
    proxy.warmer.refreshing.add(found.key)
    detached = replace(origin, headers=CIMultiDict(origin.headers))
    proxy.metrics.refreshes.labels(LABEL, "stale-while-revalidate").inc()

    async def refresh() -> None:
        try:
            got = await fetch(proxy, target, detached, found, list(found.tokens), found.entry)
            if got.stream is not None:
                got.stream[1].release()
        finally:
            proxy.warmer.refreshing.discard(found.key)

    proxy.background.spawn(refresh(), fill=True)  # shutdown lets fills finish
