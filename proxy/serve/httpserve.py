"""The RFC 9111 shared cache for requests no rule matches (rules.yaml ``http_cache: {enabled: true}``).

I/O around ``httpcache`` (the pure decisions), on the same store contract as the rules:

* keys: ``prefix:http:{H}`` (H = hash of the canonical target URI: scheme, Host, path and query) holds
  the entry, or, for a response with ``Vary``, a *Vary spec* (the field names) whose variants live at
  ``prefix:http:{H}|v:<hash of the request's selecting values>``. Every HTTP entry is guarded by
  ``prefix:gen:http:{H}`` and the global epoch: a §4.4 invalidation of a URI is one generation bump
  covering all its variants, a purge ``--all`` covers HTTP entries too. One hash tag per URI, so a
  Redis Cluster keeps an entry, its variants and its generation in one slot.
* a read: lookup (one round trip; two for a varied URI), ``httpcache.evaluate`` says fresh / stale /
  serve-and-revalidate / validate; a miss or a validation is one GET upstream (conditional when the
  stored response has validators), stored with ``store_if_current`` under the tokens read before the
  fetch (the fill guard: an invalidation during the fetch wins).
* concurrent misses of one key share one fetch in this process: waiters wait for it, then look up again
  (a waiter is never handed a response its own request could not reuse: Vary, Authorization, no-store).
* unsafe requests: the write path (``Proxy.write``) and ``handle`` for unknown methods bump the
  generations of the §4.4 targets before the answer is released, whether or not a rule matched.

HEAD is answered from GET entries when they may be reused without contacting the origin; otherwise it
is passed through (HEAD answers are not stored, §4.3.5 freshening from HEAD is not implemented). Range
requests, requests with a body, If-Match / If-Unmodified-Since and method-override headers are passed
through (BYPASS).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from ..core import httpcache as hc
from ..core import interim
from ..core.entry import Entry, decode_entry
from ..core.errors import StoreUnavailable, UpstreamError
from .answers import request_id as request_id_var
from .answers import CONDITIONAL_HEADERS, content_etag, miss_headers, not_modified_headers, request_target
from ..core.policy import OVERRIDE_HEADERS, Bypass, Reason, epoch_key, split_path
from .streaming import is_event_stream
from ..upstream.client import overran, overrun_failure, read_limited, strip_hop_by_hop
from .wire import CACHE_NAME, CacheStatus, error_response, etag_matches

LABEL = "http_cache"  # the metrics' rule label for requests the HTTP cache handles
FINGERPRINT = "rfc9111"  # Entry.fingerprint of HTTP entries (never a rule's: those are hex digests)
VARY_SPEC = "rfc9111-vary"  # Entry.fingerprint of the record listing a URI's Vary fields
INVALIDATION = "rfc9111-4.4"  # the purge label of §4.4 invalidations
# Never sent with a fill: body framing (the fill has no body) and forwarding headers a client could
# choose; the rest of the client's request goes upstream (the response says how it may be shared).
FILL_DROPPED = ("Content-Length", "Content-Type", "Expect", "Forwarded", "X-Forwarded-Port",
                "X-Forwarded-Prefix", "X-Forwarded-Server", "X-Host", "X-Original-Host")
PASSED_CONDITIONALS = ("if-match", "if-unmodified-since")


@dataclass(frozen=True)
class Target:
    uri: str
    key: str  # primary key
    gen_keys: tuple[str, str]  # the URI's generation, the epoch


@dataclass
class Found:
    entry: Entry | None
    tokens: list[str | None]
    key: str  # where this request's entry lives (variant key for a varied URI)
    fields: tuple[str, ...] | None  # Vary fields of the spec under the primary key, if one is there
    miss: str = ""  # uri-miss | vary-miss


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


def target_of(proxy, request: web.Request) -> Target:
    authority = request.headers.get("Host") or proxy.upstream.host_header
    uri = hc.canonical_uri(request.scheme, authority, request.raw_path)
    prefix = proxy.rules.prefix
    return Target(uri, hc.entry_key(prefix, uri), (hc.generation_key(prefix, uri), epoch_key(prefix)))


def invalidation_keys(proxy, request: web.Request, status: int, headers) -> tuple[str, ...]:
    """§4.4: the generations to bump after ``status`` answered the unsafe ``request``."""
    authority = request.headers.get("Host") or proxy.upstream.host_header
    locations = [v for name in ("Location", "Content-Location") for v in headers.getall(name, ())]
    uris = hc.invalidation_uris(request.method, status, request.scheme, authority, request.raw_path, locations,
                                aliases=(proxy.upstream.host_header,))
    return tuple(hc.generation_key(proxy.rules.prefix, u) for u in uris)


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
            found = await _lookup(proxy, target, request.headers)
        except StoreUnavailable:
            reason = Reason.STORE_DOWN.value
    if found is None:
        proxy.metrics.bypasses.labels(LABEL, reason).inc()
        return await proxy.pass_through(request, origin, CacheStatus.bypass(reason)), "bypass"

    config = proxy.rules.http_cache
    req = hc.request_directives(request.headers)
    entry, reuse = found.entry, None
    if entry is not None:
        reuse = hc.evaluate(entry.status, _view(proxy, entry.headers), entry.stored_at, proxy.clock(), req,
                            config.heuristic)
        if reuse.action == "fresh":
            return _from_entry(request, entry, "HIT" if not collapsed else "MISS",
                               _collapsed(CacheStatus.hit(reuse.ttl), collapsed), reuse.age), "hit"
        if reuse.action == "stale":  # the client's max-stale accepts it (§5.2.1.2)
            return _from_entry(request, entry, "STALE", CacheStatus.hit(reuse.ttl, "max-stale"), reuse.age), "stale"
        if reuse.action == "swr":  # RFC 5861 §3
            _revalidate_behind(proxy, target, found, origin)
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
        got = await _fetch(proxy, target, origin, found, tokens, entry if reuse is not None else None,
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


def _view(proxy, headers) -> CIMultiDict:
    """The headers as this cache reads them for its decisions (RFC 9213 targeted fields, ``cache_view``)."""
    return CIMultiDict(hc.cache_view(CIMultiDict(headers), proxy.rules.http_cache.targeted_fields))


def _fwd(found: Found, reuse: hc.Reuse | None) -> str:
    """RFC 9211 fwd: why the request went to the origin."""
    if reuse is None:
        return found.miss or "uri-miss"
    return "request" if reuse.reason == "request" else "stale"


def _collapsed(value: str, collapsed: bool) -> str:
    return value + "; collapsed" if collapsed else value


def _current(entry: Entry, tokens: list[str | None]) -> bool:
    return None not in tokens and tuple(tokens) == entry.generations


async def _lookup(proxy, target: Target, headers) -> Found:
    raw, tokens = await proxy.store.lookup(target.key, target.gen_keys)
    entry = decode_entry(raw)
    if entry is None or not _current(entry, tokens) or entry.fingerprint not in (FINGERPRINT, VARY_SPEC):
        return Found(None, tokens, target.key, None, "uri-miss")
    if entry.fingerprint == FINGERPRINT:
        return Found(entry, tokens, target.key, None)
    fields = tuple(f for f in dict(entry.headers).get("Vary", "").split(",") if f)
    key = hc.variant_key(target.key, hc.vary_digest(fields, headers))  # §4.1
    raw, tokens = await proxy.store.lookup(key, target.gen_keys)
    variant = decode_entry(raw)
    if variant is None or variant.fingerprint != FINGERPRINT or not _current(variant, tokens):
        return Found(None, tokens, key, fields, "vary-miss")
    return Found(variant, tokens, key, fields)


# ---------------------------------------------------------------------------------- fills


async def _fetch(proxy, target: Target, origin, found: Found, tokens: list[str], validate: Entry | None,
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
        response = await proxy.upstream.fetch(origin.path_qs, headers)  # the lean client (proxy/upstream/http1.py)
    except UpstreamError as exc:
        proxy.upstream.failures(exc, LABEL, "GET")
        return Got(error=exc, outcome="upstream-error")
    response_time = proxy.clock()
    proxy.metrics.upstream_duration.observe(time.perf_counter() - start)
    upstream_headers = strip_hop_by_hop(response.headers)
    if response.status == 304 and validate is not None and conditionals:
        response.release()
        if not hc.selects(stored, upstream_headers):  # §4.3.4: not ours to update: fetch it whole
            return await _fetch(proxy, target, origin, found, tokens, None, fallback)
        new_headers = hc.updated_headers(validate.headers, upstream_headers, response_time)
        birth = response_time - hc.corrected_initial_age(upstream_headers, request_time, response_time)
        fresh = replace(validate, headers=new_headers, stored_at=birth, generations=tuple(tokens))
        refusal = hc.refuse_to_store("GET", fresh.status, origin.headers, _view(proxy, new_headers), config.heuristic)
        outcome = refusal or await _store(proxy, target, found, tokens, fresh, origin.headers)
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
    policy_headers = _view(proxy, upstream_headers)  # RFC 9213: a targeted field decides, if valid
    refusal = hc.refuse_to_store("GET", response.status, origin.headers, policy_headers, config.heuristic)
    if overran(response):  # bytes beyond Content-Length: relayed up to it, never stored
        proxy.upstream.failures(overrun_failure(), LABEL, "GET")
        refusal = "framing"
    if refusal is None and fallback and response.status in hc.ERROR_STATUSES:
        refusal = "upstream-error"  # the stale entry answers instead (RFC 5861 §4); keep it
    etag = (upstream_headers.getall("ETag", ()) or [None])[0]
    outcome = refusal or ""
    if refusal is None:
        age = hc.corrected_initial_age(upstream_headers, request_time, response_time)
        kept = hc.stored_headers(upstream_headers, response_time, policy_headers)
        ttl = hc.store_seconds(_view(proxy, kept), response.status, age, config.heuristic, config.max_ttl)
        if ttl <= 0:
            outcome = "not-reusable"  # stale on arrival (or no lifetime) and nothing to revalidate it with
        else:
            etag = etag or content_etag(body)
            entry = Entry(response.status, kept, body, response_time - age, tuple(tokens), FINGERPRINT, etag)
            outcome = await _store(proxy, target, found, tokens, entry, origin.headers, ttl)
    proxy.metrics.stores.labels(LABEL, outcome).inc()
    return Got(response.status, upstream_headers, body, etag, outcome, interim=interim.of(response))


async def _store(proxy, target: Target, found: Found, tokens: list[str], entry: Entry, request_headers,
                 ttl: int | None = None) -> str:
    """Write ``entry`` (and the Vary spec when it varies) if the URI's generations are still ``tokens``."""
    if proxy.purger.pending_for(target.gen_keys):
        return "pending-purge"
    config = proxy.rules.http_cache
    headers = CIMultiDict(entry.headers)
    if ttl is None:
        ttl = hc.store_seconds(_view(proxy, entry.headers), entry.status, max(0.0, proxy.clock() - entry.stored_at),
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


def _revalidate_behind(proxy, target: Target, found: Found, origin) -> None:
    """stale-while-revalidate: one background validation per key."""
    if found.key in proxy.warmer.refreshing or None in found.tokens:
        return
    proxy.warmer.refreshing.add(found.key)
    detached = replace(origin, headers=CIMultiDict(origin.headers))
    proxy.metrics.refreshes.labels(LABEL, "stale-while-revalidate").inc()

    async def refresh() -> None:
        try:
            got = await _fetch(proxy, target, detached, found, list(found.tokens), found.entry)
            if got.stream is not None:
                got.stream[1].release()
        finally:
            proxy.warmer.refreshing.discard(found.key)

    proxy.background.spawn(refresh(), fill=True)  # shutdown lets fills finish


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
        response = await proxy.upstream.send(request.method, origin.path_qs, headers)
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
