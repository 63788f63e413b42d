"""The RFC 9111 shared cache for requests no rule matches (rules.yaml ``http_cache: {enabled: true}``).

I/O around ``httpcache`` (the pure decisions), on the same store contract as the rules:

* keys (httpentries.py): one per target URI, or per Vary variant; every HTTP entry is guarded by the
  URI's generation and the global epoch: a §4.4 invalidation of a URI is one generation bump covering all
  its variants, a purge ``--all`` covers HTTP entries too. One hash tag per URI, so a Redis Cluster keeps
  an entry, its variants and its generation in one slot.
* a read: lookup (one round trip; two for a varied URI), ``httpcache.evaluate`` says fresh / stale /
  serve-and-revalidate / validate; a miss or a validation is one GET upstream (httpfill.py: conditional
  when the stored response has validators), stored with ``store_if_current`` under the tokens read before the
  fetch (the fill guard: an invalidation during the fetch wins).
* concurrent misses of one key share one fetch in this process: waiters wait for it, then look up again
  (a waiter is never handed a response its own request could not reuse: Vary, Authorization, no-store).
* unsafe requests: the write path (``RequestPath.write``) and ``handle`` for unknown methods bump the
  generations of the §4.4 targets before the answer is released, whether or not a rule matched.

HEAD is answered from GET entries when they may be reused without contacting the origin; otherwise it
is passed through (HEAD answers are not stored, §4.3.5 freshening from HEAD is not implemented). Range
requests, requests with a body, If-Match / If-Unmodified-Since and method-override headers are passed
through (BYPASS).
"""
from __future__ import annotations

import asyncio

from aiohttp import web
from multidict import CIMultiDict

from ..core import httpcache as hc
from ..core import interim
from ..core.entry import Entry
from ..core.errors import StoreUnavailable, UpstreamError
from ..core.policy import OVERRIDE_HEADERS, Bypass, Reason, split_path
from ..upstream.client import released_on_failure, strip_hop_by_hop
from .answers import request_id as request_id_var
from .answers import miss_headers, not_modified_headers, request_target
from .httpentries import INVALIDATION, LABEL, Found, cache_view, invalidation_keys, lookup, target_of
from .httpfill import Got, fetch, revalidate_behind
from .wire import CACHE_NAME, CacheStatus, error_response, etag_matches

PASSED_CONDITIONALS = ("if-match", "if-unmodified-since")


# ------------------------------------------------------------------------------- routing


async def handle(proxy, request: web.Request, decision: Bypass, origin) -> tuple[web.StreamResponse, str, str] | None:
    """For a request the rules bypass: answer it as the HTTP cache would, or None (not ours)."""
    method = request.method
    if method in ("GET", "HEAD"):
        if proxy.mode != "on" or not _unruled(decision, request, proxy.rules):
            return None
        response, result = await serve(proxy, request, origin)
        return response, result, LABEL
    if decision.reason is Reason.METHOD and method.upper() not in hc.SAFE_METHODS:
        return await _unsafe(proxy, request, origin), "bypass", "none"
    return None


def _unruled(decision: Bypass, request: web.Request, rules) -> bool:
    if decision.reason is Reason.NO_RULE:
        return True
    if decision.reason is Reason.NON_CANONICAL:  # /static/ or //x: ours unless it normalises onto a rule
        _, normalised = split_path(request_target(request.raw_path).partition("?")[0])
        return rules.match("GET", normalised) is None
    return False


async def _unsafe(proxy, request: web.Request, origin) -> web.StreamResponse:
    """An unsafe method no rule knows (§4.4 "including methods whose safety is unknown")."""
    status = CacheStatus.bypass("method")
    headers = proxy.upstream.forward_headers(request.headers, origin.client_ip, origin.scheme, origin.request_id)
    body = request.content if request.body_exists else None
    proxy.metrics.upstream_requests.labels("none").inc()
    try:
        response = await proxy.upstream.send(request.method, origin.path_qs, headers, body)
    except UpstreamError as exc:
        proxy.upstream.failures(exc, "none", request.method)
        return error_response(exc.status, exc.detail, "BYPASS", status)
    with released_on_failure(response):
        await proxy.purger.purge(invalidation_keys(proxy, request, response.status, response.headers), INVALIDATION)
    return await proxy.passthrough.stream(request, response, proxy.passthrough.headers(response, status))


# ---------------------------------------------------------------------------------- reads


def _bypass_reason(request: web.Request) -> str | None:
    headers = request.headers
    if "Range" in headers:
        return "range"  # passed through: the origin answers ranges itself
    if any(h in headers for h in OVERRIDE_HEADERS):
        return "override-header"
    if request.body_exists:
        return "body"
    if any(h in headers for h in PASSED_CONDITIONALS):
        return "conditional"
    if "Upgrade" in headers:
        return "upgrade"
    if "Connection" in headers and connection_names_a_field(headers):
        return Reason.CONNECTION_KEYED.value  # a Vary-selected field the fill would drop (hop-by-hop)
    return None


def connection_names_a_field(headers) -> bool:
    """``Connection`` lists a field name, not only ``keep-alive``/``close``: any field may be one a
    stored response's Vary selects on, and forwarding drops it, so the fill would not match the key."""
    return any(name.strip().lower() not in ("", "keep-alive", "close")
               for value in headers.getall("Connection", ()) for name in value.split(","))


async def serve(proxy, request: web.Request, origin, collapsed: bool = False) -> tuple[web.StreamResponse, str]:
    reason = _bypass_reason(request)
    target = target_of(proxy, request)
    if reason is None and proxy.purger.pending_for(target.gen_keys):
        reason = Reason.PENDING_PURGE.value
    if reason is None and not proxy.store_watch.cache_usable:
        reason = Reason.STORE_DOWN.value
    found = None
    if reason is None:
        try:
            found = await lookup(proxy, target, request.headers)
        except StoreUnavailable:
            reason = Reason.STORE_DOWN.value
    if found is None:
        proxy.metrics.bypasses.labels(LABEL, reason).inc()
        return await proxy.pass_through(request, origin, CacheStatus.bypass(reason)), "bypass"

    config = proxy.rules.http_cache
    req = hc.request_directives(request.headers)
    entry, reuse = found.entry, None
    if entry is not None:
        reuse = hc.evaluate(entry.status, cache_view(proxy, entry.headers), entry.stored_at, proxy.clock(), req,
                            config.heuristic)
        if reuse.action == "fresh":
            return _from_entry(request, entry, "HIT" if not collapsed else "MISS",
                               _collapsed(CacheStatus.hit(reuse.ttl), collapsed), reuse.age), "hit"
        if reuse.action == "stale":  # the client's max-stale accepts it (§5.2.1.2)
            return _from_entry(request, entry, "STALE", CacheStatus.hit(reuse.ttl, "max-stale"), reuse.age), "stale"
        if reuse.action == "swr":  # RFC 5861 §3
            revalidate_behind(proxy, target, found, origin)
            return _from_entry(request, entry, "STALE", CacheStatus.hit(reuse.ttl, "stale-while-revalidate"),
                               reuse.age), "stale"
    if req.only_if_cached:  # §5.2.1.7
        return error_response(504, "not in cache (only-if-cached)", "MISS",
                              f"{CACHE_NAME}; detail=only-if-cached"), "miss"
    if request.method == "HEAD":  # HEAD answers are not stored: pass it on
        fallback = entry if reuse is not None and reuse.stale_if_error else None
        return await _relay(proxy, request, origin, _fwd(found, reuse), fallback, reuse)

    tokens = found.tokens
    if None in tokens:
        try:
            tokens = await proxy.store.ensure_generations(target.gen_keys, proxy.ruleset.gen_ttl)
        except StoreUnavailable:
            proxy.metrics.bypasses.labels(LABEL, Reason.STORE_DOWN.value).inc()
            return await proxy.pass_through(request, origin, CacheStatus.bypass(Reason.STORE_DOWN.value)), "bypass"

    # Waiters look up again once the leader is done, so sharing a fetch never hands anyone a response
    # their own request could not reuse; a client's no-cache gains nothing from waiting.
    forced = req.no_cache or req.max_age == 0
    flight = ("http", found.key, tuple(tokens))
    if not collapsed and not forced:
        leader = proxy.coalescer.inflight.get(flight)
        if leader is not None:
            proxy.metrics.coalesced.labels(LABEL).inc()
            try:
                await asyncio.wait_for(asyncio.shield(leader), proxy.config.coalesce_wait)
            except asyncio.TimeoutError:
                pass
            return await serve(proxy, request, origin, collapsed=True)
    future = None
    if flight not in proxy.coalescer.inflight:
        future = asyncio.get_running_loop().create_future()
        proxy.coalescer.inflight[flight] = future
    try:
        got = await fetch(proxy, target, origin, found, tokens, entry if reuse is not None else None,
                           fallback=reuse is not None and reuse.stale_if_error, client_conditionals=entry is None)
    finally:
        if future is not None:
            del proxy.coalescer.inflight[flight]
            future.set_result(None)

    fwd = _fwd(found, reuse)
    if got.revalidated is not None:  # §4.3.4: the 304 freshened the stored response; answered from it
        fresh = got.revalidated
        age = max(0.0, proxy.clock() - fresh.stored_at)
        status = CacheStatus.miss(fwd, 304, got.outcome, collapsed)
        return _from_entry(request, fresh, "HIT", status, age), "hit"
    failed = got.error is not None or got.status in hc.ERROR_STATUSES
    if failed and entry is not None and reuse is not None and reuse.stale_if_error:  # RFC 5861 §4
        fwd_status = got.error.status if got.error else got.status
        if got.stream is not None:
            got.stream[1].release()
        return _stale_on_error(proxy, request, entry, reuse, fwd_status), "stale"
    if got.error is not None and reuse is not None and reuse.no_stale and reuse.reason == "stale":
        # §5.2.2.2: a stale must-revalidate response the origin cannot confirm -> 504
        return error_response(504, got.error.detail, "MISS", CacheStatus.miss(fwd, 0, "upstream-error", False)), "miss"
    return await _from_got(proxy, request, got, CacheStatus.miss(fwd, got.status, got.outcome, collapsed)), "miss"


def _fwd(found: Found, reuse: hc.Reuse | None) -> str:
    """RFC 9211 fwd: why the request went to the origin."""
    if reuse is None:
        return found.miss or "uri-miss"
    return "request" if reuse.reason == "request" else "stale"


def _collapsed(value: str, collapsed: bool) -> str:
    return value + "; collapsed" if collapsed else value


# ---------------------------------------------------------------------------------- fills


# ------------------------------------------------------------------------------- answers


def _not_modified(request_headers, headers: CIMultiDict) -> bool:
    """RFC 9110 §13.2.2: If-None-Match (weak comparison), else If-Modified-Since against Last-Modified."""
    if_none_match = request_headers.get("If-None-Match")
    if if_none_match is not None:
        return etag_matches(if_none_match, headers.get("ETag"))
    since = hc.parse_http_date(request_headers.get("If-Modified-Since"))
    modified = hc.parse_http_date(headers.get("Last-Modified"))
    return since is not None and modified is not None and modified <= since


def _from_entry(request: web.Request, entry: Entry, label: str, status: str, age: float) -> web.Response:
    headers = CIMultiDict(entry.headers)
    if "ETag" not in headers:
        headers["ETag"] = entry.etag
    headers["Age"] = hc.age_header(age)
    headers["X-Cache"] = label
    headers["Cache-Status"] = status
    headers["X-Request-ID"] = request_id_var.get() or ""
    if 200 <= entry.status < 300 and _not_modified(request.headers, headers):
        return web.Response(status=304, headers=not_modified_headers(headers))
    return web.Response(status=entry.status, body=entry.body, headers=headers)


def _chain(upstream: CIMultiDict, ours: str) -> str:
    """RFC 9211 §2: keep the upstream caches' members, ours last."""
    theirs = ", ".join(upstream.getall("Cache-Status", ()))
    return f"{theirs}, {ours}" if theirs else ours


async def _from_got(proxy, request: web.Request, got: Got, status: str) -> web.StreamResponse:
    if got.error is not None:
        return error_response(got.error.status, got.error.detail, "MISS", status)
    interim.send_before(request, got.interim)
    headers = miss_headers(got.headers, got.etag, _chain(got.headers, status))
    if got.stream is not None:
        prefix, upstream_response = got.stream
        return await proxy.passthrough.stream(request, upstream_response, headers, prefix)
    if 200 <= got.status < 300 and got.outcome == "stored" and _not_modified(request.headers, headers):
        return web.Response(status=304, headers=not_modified_headers(headers))
    return web.Response(status=got.status, body=got.body, headers=headers)


async def _relay(proxy, request: web.Request, origin, fwd: str, fallback: Entry | None = None,
                 reuse: hc.Reuse | None = None) -> tuple[web.StreamResponse, str]:
    """Pass a request on unchanged (a HEAD the cache cannot answer), marked as a miss; if the origin
    fails and ``fallback`` (a stored GET response stale-if-error allows) exists, it answers (RFC 5861 §4)."""
    headers = proxy.upstream.forward_headers(request.headers, origin.client_ip, origin.scheme, origin.request_id)
    proxy.metrics.upstream_requests.labels(LABEL).inc()
    try:
        response = await proxy.upstream.send(request.method, origin.path_qs, headers, rule=LABEL)
    except UpstreamError as exc:
        proxy.upstream.failures(exc, LABEL, request.method)
        if fallback is not None and reuse is not None:
            return _stale_on_error(proxy, request, fallback, reuse, exc.status), "stale"
        return error_response(exc.status, exc.detail, "MISS", CacheStatus.miss(fwd, 0, "upstream-error", False)), "miss"
    if fallback is not None and reuse is not None and response.status in hc.ERROR_STATUSES:
        response.release()
        return _stale_on_error(proxy, request, fallback, reuse, response.status), "stale"
    out = proxy.passthrough.headers(response, "")
    out["X-Cache"] = "MISS"
    out["Cache-Status"] = _chain(strip_hop_by_hop(response.headers), CacheStatus.miss(fwd, response.status, "head", False))
    return await proxy.passthrough.stream(request, response, out), "miss"


def _stale_on_error(proxy, request: web.Request, entry: Entry, reuse: hc.Reuse, fwd_status: int) -> web.Response:
    status = CacheStatus.hit(reuse.ttl, "stale-if-error", fwd_status=fwd_status)
    return _from_entry(request, entry, "STALE", status, max(0.0, proxy.clock() - entry.stored_at))
