"""The aiohttp application: carry out policy decisions against the store and the backend.

Theory of operation, per request:

* read (GET/HEAD with a rule): one store round trip fetches the entry and the current generations of
  the namespaces that guard it; ``policy.judge`` says fresh, stale or unusable. On a miss, the tokens
  read *before* the origin fetch go with the fill, and ``store_if_current`` writes only if they are
  still current: a purge that lands during the fetch wins (the fill guard).
* write (POST/PUT/PATCH/DELETE): forwarded; once the backend has answered, the rule's namespaces are
  bumped and only then are the answer's headers released. A purge the store does not accept in time is
  kept as *pending*: until it lands, reads of those namespaces bypass the cache on this instance.
* everything else: passed through, streamed both ways, marked ``X-Cache: BYPASS``.

Concurrent misses for one (key, generations) share one fetch (``_fill``); a waiter never receives a
body fetched under other generations. If the store fails, requests go to the backend.

Store watch (``check_store``, ``watch_store``): the first call that cannot reach the store turns the cache
off for reads (no request waits on the store again); a background probe (``GuardedStore.verify``) turns
it back on once the store answers, after ``store_recovery_hold`` if it was down. The probe also notices a
Redis that came back as another server (restart from a snapshot, failover) and bumps the global epoch
before the cache is read again. Purges pending at exit leave ``pending_file`` behind; the next process
bumps the epoch (``recover_pending_file``).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from . import httpserve, policy, streaming
from .arms import rollout_arm
from .config import Config
from .entry import Entry, decode_entry
from .errors import IdentityError, StoreUnavailable, UpstreamError
from .identity import Identity, Verifier, bearer_token
from .keys import assemble, escape_value
from .l1 import L1Cache, follow_invalidations
from .logs import request_id as request_id_var
from .metrics import Metrics
from .overload import Gate
from .policy import Bypass, Lookup, Reason, RequestView, Write
from .rules import Rules, load_rules
from .store import open_store
from .store.guard import CircuitBreaker, GuardedStore
from .upstream import Upstream, response_headers, strip_hop_by_hop, watch_upstream
from .wire import (CacheStatus, error_response, etag_matches, is_valid_request_id, mask_gen_key,
                   RateLimiter)

log = logging.getLogger("proxy")

PROXY_KEY = web.AppKey("proxy", "Proxy")
CONDITIONAL_HEADERS = ("If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range", "Range")
# Never sent with a fill (a bodyless GET whose answer every client with the key gets): body framing (a
# Content-Length without its body would desynchronise the pooled upstream connection), cookies, and the
# host/prefix forwarding headers a client could choose (X-Forwarded-Host would carry its Host header).
FILL_DROPPED = ("Content-Length", "Content-Type", "Expect", "Cookie", "Forwarded", "X-Forwarded-Host",
                "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Server", "X-Host", "X-Original-Host")
NOT_SHAREABLE = frozenset({"set-cookie", "private", "vary", "content-encoding", "too-large"})
INTERNAL_HEADERS = frozenset({"x-cache", "cache-status", "age", "x-request-id", "content-length", "set-cookie"})
USER_INVALIDATE = "/api/v1/users/cache/invalidate"
ACHIEVEMENTS_INVALIDATE = "/api/v1/achievements/cache/invalidate"
GLOBAL_INVALIDATE = "/api/v1/achievements/cache/invalidate/global"
MAX_PENDING = 10_000  # pending purges kept one by one; beyond that, one global epoch bump covers them


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

    @property
    def shareable(self) -> bool:
        return self.error is not None or (self.stream is None and self.outcome not in NOT_SHAREABLE)


@dataclass(frozen=True)
class Origin:
    """Everything needed to send a request upstream, detached from the client's request object."""

    path_qs: str
    headers: CIMultiDict
    client_ip: str | None
    scheme: str
    request_id: str


class Proxy:
    def __init__(self, config: Config, rules: Rules, store: GuardedStore, upstream: Upstream, metrics: Metrics,
                 clock=time.time, unsafe: frozenset[str] = frozenset()):
        self.config, self.store, self.upstream, self.metrics, self.clock = config, store, upstream, metrics, clock
        self.set_rules(rules)
        self.verifier = Verifier(config.identity) if (config.identity.secrets or config.identity.public_keys) else None
        self.mode = config.cache_mode
        self.inflight: dict[tuple, asyncio.Future] = {}
        self.instance_id = uuid.uuid4().hex
        self._request_ids = itertools.count(1)
        self.shared_store = store.name != "memory"  # leases matter only where other instances share it
        # The in-process L1 exists where the store has an invalidation channel (Redis, Cluster).
        self.l1 = L1Cache(config.l1_max_bytes) if hasattr(store.inner, "invalidations") else None
        self.refreshing: set[str] = set()
        self.pending: dict[str, str] = {}  # gen key -> rule name, purges the store has not accepted yet
        # Store watch (see ``check_store``): while False, reads go to the backend without asking the store.
        self.cache_usable = True
        self._store_outage = False  # a probe failed since the store was last usable: hold on recovery
        self._usable_at: float | None = None  # when the hold ends
        self._store_wake = asyncio.Event()
        self._journaled = False  # the pending-purges marker file exists
        store.on_unreachable = self._store_unreachable
        metrics.store_usable.set(1)
        self.background: set[asyncio.Task] = set()
        self.demand: dict[str, tuple[int, Lookup, str]] = {}  # warm rules: key -> (requests, lookup, path)
        self.ready = False
        self.admin_limiter = RateLimiter(config.admin_rate, burst=max(1.0, config.admin_rate * 2))
        self.gate = Gate(config.max_inflight, metrics, admin_paths_public=config.admin_listen is None)
        upstream.slots.on_busy = metrics.overload.labels("upstream").inc
        # Test-only switches that break a guarantee on purpose, so the stale-read checker is known to bite.
        self.unsafe = unsafe

    def set_rules(self, rules: Rules) -> None:
        self.rules = rules
        self.rollout_rules = frozenset(r.name for r in rules.rules if r.key is not None and r.rollout < 100)
        longest = max((policy.store_ttl(r) for r in rules.rules if r.key is not None), default=3600)
        if rules.http_cache.enabled:
            longest = max(longest, rules.http_cache.max_ttl)
            if hasattr(getattr(self, "store", None), "inner") and hasattr(self.store.inner, "limit"):
                self.store.inner.limit(f"{rules.prefix}:http:", rules.http_cache.max_bytes)  # memory store
        self.gen_ttl = longest + 3600  # generations outlive every entry they guard

    # ------------------------------------------------------------------------------ dispatch

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self.gate.admit(request.raw_path):  # MAX_INFLIGHT: 503 + Retry-After (proxy/overload.py)
            return self.gate.reject()
        rid = request.headers.get("X-Request-ID", "")
        if not is_valid_request_id(rid):
            rid = f"{self.instance_id[:12]}-{next(self._request_ids):x}"
        token = request_id_var.set(rid)
        start = time.perf_counter()
        result, rule_name, status, arm = "bypass", "none", 500, None
        try:
            if "Upgrade" in request.headers and streaming.wants_websocket(request) \
                    and self._internal(request.method, request.raw_path.partition("?")[0]) is None:
                response, result, rule_name = await streaming.proxy_websocket(self, request, rid)
            else:
                response, result, rule_name = await self._dispatch(request, rid)
            status = response.status
            if rule_name in self.rollout_rules:
                arm = rollout_arm(result, response.headers.get("Cache-Status", ""))
            return response
        finally:
            self.gate.leave()
            elapsed = time.perf_counter() - start
            self.metrics.count_request(rule_name, result, status, elapsed)
            if arm is not None:
                self.metrics.count_arm(rule_name, arm, status, elapsed)
            if self.config.access_log:
                log.info("request", extra={"event": "access", "method": request.method, "status": status,
                                           "rule": rule_name, "result": result,
                                           "duration_ms": round((time.perf_counter() - start) * 1000, 2)})
            request_id_var.reset(token)

    async def _dispatch(self, request: web.Request, rid: str) -> tuple[web.StreamResponse, str, str]:
        raw_path, _, query = request.raw_path.partition("?")
        if not raw_path.startswith("/"):  # absolute-form (http://host/path): not a forward proxy
            return error_response(400, "request target must be a path (origin-form)", "BYPASS",
                                  CacheStatus.bypass("request-target")), "bypass", "none"
        internal = self._internal(request.method, raw_path)
        if internal is not None:
            return await internal(request), "internal", "internal"
        identity, token_error = self._identify(request.headers.get("Authorization"))
        view = RequestView(request.method, raw_path, query, request.headers)
        decision = policy.classify(view, self.rules, identity, token_error)
        origin = Origin(request.raw_path, request.headers, request.remote, request.scheme, rid)
        if isinstance(decision, Lookup):
            if self.mode == "on":
                response, result = await self._read(request, decision, origin)
                return response, result, decision.rule.name
            if self.mode == "shadow":
                return await self._shadow(request, decision, origin), "bypass", decision.rule.name
            decision = Bypass(Reason.MODE_OFF, decision.rule)
        if isinstance(decision, Bypass) and self.rules.http_cache.enabled:  # RFC 9111 for unruled routes
            handled = await httpserve.handle(self, request, decision, origin)
            if handled is not None:
                return handled
        if isinstance(decision, Write):
            response = await self._write(request, decision, origin, identity)
            return response, "bypass", decision.rule.name if decision.rule else "none"
        rule_name = decision.rule.name if decision.rule else "none"
        self.metrics.bypasses.labels(rule_name, decision.reason.value).inc()
        response = await self._pass_through(request, origin, CacheStatus.bypass(decision.reason.value))
        return response, "bypass", rule_name

    def _identify(self, authorization: str | None) -> tuple[Identity | None, str | None]:
        token = bearer_token(authorization)
        if token is None:
            return None, "malformed" if authorization else None
        if self.verifier is None:
            return None, "not-configured"
        try:
            return self.verifier.verify(token), None
        except IdentityError as exc:
            return None, exc.reason

    # ------------------------------------------------------------------------------- reads

    async def _read(self, request: web.Request, d: Lookup, origin: Origin) -> tuple[web.StreamResponse, str]:
        rule = d.rule
        if self.pending and any(g in self.pending for g in d.gen_keys):
            return await self._bypass(request, origin, rule, Reason.PENDING_PURGE), "bypass"
        if not self.cache_usable:  # unreachable, or back but not yet verified: don't wait on it each time
            return await self._bypass(request, origin, rule, Reason.STORE_DOWN), "bypass"
        l1 = self.l1 if rule.l1_ttl and not d.revalidate else None
        if l1 is not None and (cached := l1.get(d.key)) is not None:
            verdict = policy.judge(cached[0], list(cached[1]), rule, self.clock())
            if verdict.usable == "fresh":
                status = CacheStatus.hit(rule.ttl - verdict.age, "l1")
                return self._from_entry(request, cached[0], "HIT", status, verdict.age), "hit"
        try:
            raw, tokens = await self.store.lookup(d.key, d.gen_keys)
        except StoreUnavailable:
            return await self._bypass(request, origin, rule, Reason.STORE_DOWN), "bypass"
        entry = decode_entry(raw)
        verdict = policy.judge(entry, tokens, rule, self.clock())
        if l1 is not None and verdict.usable == "fresh":
            l1.put(d.key, entry, tokens, d.gen_keys, min(rule.l1_ttl, rule.ttl - verdict.age))
        if rule.warm:
            self._note_demand(d, origin)
        if not d.revalidate:
            if verdict.usable == "fresh":
                return self._from_entry(request, entry, "HIT", CacheStatus.hit(rule.ttl - verdict.age), verdict.age), "hit"
            if verdict.usable == "stale":
                self._refresh_in_background(d, tokens, origin)
                status = CacheStatus.hit(rule.ttl - verdict.age, "stale-while-revalidate")
                return self._from_entry(request, entry, "STALE", status, verdict.age), "stale"
        fallback = entry if verdict.usable in ("stale", "on-error") else None
        if None in tokens:
            try:
                tokens = await self.store.ensure_generations(d.gen_keys, self.gen_ttl)
            except StoreUnavailable:
                return await self._bypass(request, origin, rule, Reason.STORE_DOWN), "bypass"
        fetched = await self._fill(d, tokens, origin)
        failed = fallback is not None and _is_failure(fetched, rule)
        if failed and fallback is not None and verdict.age < rule.ttl + rule.stale_if_error:
            fwd = fetched.error.status if fetched.error else fetched.status
            status = CacheStatus.hit(rule.ttl - verdict.age, "stale-if-error", fwd_status=fwd)
            return self._from_entry(request, fallback, "STALE", status, verdict.age), "stale"
        fwd = "request" if d.revalidate else {"absent": "uri-miss", "expired": "stale"}.get(verdict.reason, "miss")
        status = CacheStatus.miss(fwd, fetched.status, fetched.outcome, fetched.collapsed)
        return await self._from_fetched(request, fetched, status), "miss"

    async def _shadow(self, request: web.Request, d: Lookup, origin: Origin) -> web.StreamResponse:
        """Shadow mode: the backend answers every request; the cache is filled and consulted only to
        count what it would have done (would-be hits and stale answers, and whether they matched)."""
        rule = d.rule
        status = CacheStatus.bypass("shadow")
        try:
            raw, tokens = await self.store.lookup(d.key, d.gen_keys)
            if None in tokens:
                tokens = await self.store.ensure_generations(d.gen_keys, self.gen_ttl)
        except StoreUnavailable:
            self.metrics.shadow.labels(rule.name, "store-unavailable").inc()
            return await self._pass_through(request, origin, status)
        entry = decode_entry(raw)
        verdict = policy.judge(entry, tokens, rule, self.clock())
        fetched = await self._fetch(d, tokens, origin, store=verdict.usable != "fresh")
        if verdict.usable in ("fresh", "stale") and fetched.error is None and fetched.stream is None:
            same = policy.same_content(entry.body, fetched.body, rule.volatile)
            outcome = f"would-{'hit' if verdict.usable == 'fresh' else 'stale'}-{'match' if same else 'mismatch'}"
        else:
            outcome = "would-miss"
        self.metrics.shadow.labels(rule.name, outcome).inc()
        if fetched.error is not None:
            return error_response(fetched.error.status, fetched.error.detail, "BYPASS", status)
        headers = CIMultiDict(fetched.headers)
        headers.popall("Content-Length", None)
        headers["X-Cache"] = "BYPASS"
        headers["Cache-Status"] = status
        headers["X-Request-ID"] = origin.request_id
        if fetched.stream is not None:
            prefix, upstream_response = fetched.stream
            return await self._stream(request, upstream_response, headers, prefix)
        return web.Response(status=fetched.status, body=fetched.body, headers=headers)

    async def _fill(self, d: Lookup, tokens: list[str], origin: Origin) -> Fetched:
        flight = (d.key, tuple(tokens))
        leader = self.inflight.get(flight)
        if leader is not None:
            self.metrics.coalesced.labels(d.rule.name).inc()
            try:
                fetched = await asyncio.wait_for(asyncio.shield(leader), self.config.coalesce_wait)
            except asyncio.TimeoutError:
                fetched = None
            if fetched is not None and fetched.shareable:
                return replace(fetched, headers=self._replayable(fetched.headers, d.rule), collapsed=True)
            return await self._fetch(d, tokens, origin, store=False)
        future = asyncio.get_running_loop().create_future()
        self.inflight[flight] = future
        try:
            fetched = await self._fetch_under_lease(d, tokens, origin)
        except BaseException:
            future.set_result(None)
            raise
        finally:
            del self.inflight[flight]
        if not future.done():
            future.set_result(fetched)
        return fetched

    async def _fetch_under_lease(self, d: Lookup, tokens: list[str], origin: Origin) -> Fetched:
        """Across instances sharing a store: one fetch per key under a short lease, the others poll.

        A waiter takes the entry the lease holder stored, or the lease once it is free; a lost or
        expired lease costs at most one extra fetch, never a stuck request (``coalesce_wait`` bounds it).
        """
        if not self.shared_store:
            return await self._fetch(d, tokens, origin, store=True)
        lease_key, loop = d.key + "|lease", asyncio.get_running_loop()
        deadline, pause = loop.time() + self.config.coalesce_wait, 0.002
        while True:
            try:
                leased = await self.store.acquire_lease(lease_key, self.instance_id, self.config.lease_ms)
            except StoreUnavailable:
                leased = False
                deadline = 0.0
            if leased:
                try:
                    return await self._fetch(d, tokens, origin, store=True)
                finally:
                    try:
                        await self.store.release_lease(lease_key, self.instance_id)
                    except StoreUnavailable:
                        pass  # it expires by itself
            if loop.time() >= deadline:
                return await self._fetch(d, tokens, origin, store=True)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
            try:
                raw, current = await self.store.lookup(d.key, d.gen_keys)
            except StoreUnavailable:
                return await self._fetch(d, tokens, origin, store=True)
            entry = decode_entry(raw)
            if current == list(tokens) and policy.judge(entry, current, d.rule, self.clock()).usable == "fresh":
                self.metrics.coalesced.labels(d.rule.name).inc()
                return Fetched(entry.status, CIMultiDict(entry.headers), entry.body, entry.etag, "collapsed",
                               collapsed=True)

    async def _fetch(self, d: Lookup, tokens: list[str], origin: Origin, store: bool) -> Fetched:
        rule = d.rule
        headers = self.upstream.forward_headers(origin.headers, origin.client_ip, origin.scheme, origin.request_id)
        for name in CONDITIONAL_HEADERS:  # a fill needs the full representation
            headers.popall(name, None)
        for name in FILL_DROPPED:
            headers.popall(name, None)
        if rule.auth == "none":  # a public entry must not depend on whose credentials filled it
            headers.popall("Authorization", None)
        headers["Accept-Encoding"] = "identity"  # one representation that suits every client
        self.metrics.upstream_requests.labels(rule.name).inc()
        start = time.perf_counter()
        try:
            response = await self.upstream.send("GET", origin.path_qs, headers)
        except UpstreamError as exc:
            self.metrics.upstream_errors.labels("timeout" if exc.status == 504 else "connect").inc()
            return Fetched(error=exc, outcome="upstream-error")
        self.metrics.upstream_duration.observe(time.perf_counter() - start)
        if streaming.is_event_stream(response.headers):  # SSE: relayed as it comes, never stored
            return Fetched(response.status, strip_hop_by_hop(response.headers), outcome="event-stream",
                           stream=(b"", response))
        try:
            body, complete = await _read_limited(response, rule.max_body_bytes)
        except UpstreamError as exc:
            self.metrics.upstream_errors.labels("body").inc()
            return Fetched(error=exc, outcome="upstream-error")
        upstream_headers = strip_hop_by_hop(response.headers)
        if not complete:
            return Fetched(response.status, upstream_headers, outcome="too-large", stream=(body, response))
        refusal = policy.refuse_to_store(rule, response.status, response.headers, body)
        etag = response.headers.get("ETag") or (_content_etag(body) if refusal is None else None)
        fetched = Fetched(response.status, upstream_headers, body, etag, refusal or "")
        if refusal is None and store:
            fetched.outcome = await self._store(d, tokens, fetched)
        elif refusal is None:
            fetched.outcome = "not-stored"
        self.metrics.stores.labels(rule.name, fetched.outcome).inc()
        return fetched

    async def _store(self, d: Lookup, tokens: list[str], fetched: Fetched) -> str:
        if self.pending and any(g in self.pending for g in d.gen_keys):
            return "pending-purge"
        stored_headers = tuple((k, v) for k, v in self._replayable(fetched.headers, d.rule).items())
        entry = Entry(fetched.status, stored_headers, fetched.body, self.clock(), tuple(tokens), d.rule.fingerprint,
                      fetched.etag or _content_etag(fetched.body))
        expected = tokens
        if "no-fill-guard" in self.unsafe:  # test-only: store under whatever generations are current now
            expected = await self.store.ensure_generations(d.gen_keys, self.gen_ttl)
            entry = replace(entry, generations=tuple(expected))
        try:
            ok = await self.store.store_if_current(d.key, entry.encode(), policy.store_ttl(d.rule), d.gen_keys,
                                                   expected, self.gen_ttl)
        except StoreUnavailable:
            return "store-error"
        return "stored" if ok else "generation-changed"

    def _replayable(self, headers: CIMultiDict, rule) -> CIMultiDict:
        """Headers any client with the same key may be given: per-caller ones dropped."""
        return CIMultiDict((k, v) for k, v in headers.items()
                           if k.lower() not in INTERNAL_HEADERS and k.lower() not in rule.drop_headers)

    def _refresh_in_background(self, d: Lookup, tokens: list[str], origin: Origin) -> None:
        if d.key in self.refreshing:
            return
        self.refreshing.add(d.key)
        detached = replace(origin, headers=CIMultiDict(origin.headers))
        self.metrics.refreshes.labels(d.rule.name, "stale-while-revalidate").inc()

        async def refresh() -> None:
            try:
                fetched = await self._fill(d, tokens, detached)
                if fetched.stream is not None:
                    fetched.stream[1].release()
            finally:
                self.refreshing.discard(d.key)

        self._spawn(refresh()).fill = True  # type: ignore[attr-defined]  # shutdown lets fills finish

    def _note_demand(self, d: Lookup, origin: Origin) -> None:
        count = self.demand.get(d.key, (0, d, origin.path_qs))[0]
        if count == 0 and len(self.demand) >= 10_000:
            return  # bounded: a flood of distinct keys cannot grow this table
        self.demand[d.key] = (count + 1, d, origin.path_qs)

    async def warm_once(self, budget: int = 16, horizon: float = 30.0) -> int:
        """Refresh the most requested entries of ``warm`` rules that expire within ``horizon`` seconds.

        Bounded work: at most ``budget`` refreshes per call. Only rules whose key needs no identity can
        be warmed (the proxy keeps no users' tokens); the request carries ``WARM_AUTHORIZATION`` if set.
        """
        if not self.cache_usable:
            return 0
        ranked = sorted(self.demand.values(), key=lambda item: item[0], reverse=True)[:budget]
        self.demand.clear()
        refreshed = 0
        for _, d, path_qs in ranked:
            rule = self.rules.by_name(d.rule.name)
            if rule is None or not rule.warm or rule.fingerprint != d.rule.fingerprint:
                continue
            try:
                raw, tokens = await self.store.lookup(d.key, d.gen_keys)
            except StoreUnavailable:
                return refreshed
            verdict = policy.judge(decode_entry(raw), tokens, rule, self.clock())
            if verdict.usable != "fresh" or verdict.age < rule.ttl - max(horizon, rule.ttl * 0.1):
                continue
            headers = CIMultiDict({"Accept": "application/json"})
            if self.config.warm_authorization:
                headers["Authorization"] = self.config.warm_authorization
            origin = Origin(path_qs, headers, None, "http", uuid.uuid4().hex)
            fetched = await self._fill(d, tokens, origin)
            if fetched.stream is not None:
                fetched.stream[1].release()
            self.metrics.refreshes.labels(rule.name, "warm").inc()
            refreshed += 1
        return refreshed

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    def _from_entry(self, request: web.Request, entry: Entry, label: str, status: str, age: int) -> web.Response:
        headers = CIMultiDict(entry.headers)
        headers["ETag"] = headers.get("ETag", entry.etag)
        headers["Age"] = str(age)
        headers["X-Cache"] = label
        headers["Cache-Status"] = status
        headers["X-Request-ID"] = request_id_var.get() or ""
        if entry.status == 200 and etag_matches(request.headers.get("If-None-Match"), headers["ETag"]):
            return web.Response(status=304, headers=_not_modified_headers(headers))
        return web.Response(status=entry.status, body=entry.body, headers=headers)

    async def _from_fetched(self, request: web.Request, fetched: Fetched, status: str) -> web.StreamResponse:
        if fetched.error is not None:
            return error_response(fetched.error.status, fetched.error.detail, "MISS", status)
        headers = CIMultiDict(fetched.headers)
        headers.popall("Content-Length", None)
        if fetched.etag and "ETag" not in headers:
            headers["ETag"] = fetched.etag
        headers["X-Cache"] = "MISS"
        headers["Cache-Status"] = status
        headers["X-Request-ID"] = request_id_var.get() or ""
        if fetched.stream is not None:
            prefix, upstream_response = fetched.stream
            return await self._stream(request, upstream_response, headers, prefix)
        if fetched.status == 200 and fetched.etag and etag_matches(request.headers.get("If-None-Match"), headers["ETag"]):
            return web.Response(status=304, headers=_not_modified_headers(headers))
        return web.Response(status=fetched.status, body=fetched.body, headers=headers)

    async def _bypass(self, request: web.Request, origin: Origin, rule, reason: Reason) -> web.StreamResponse:
        self.metrics.bypasses.labels(rule.name if rule else "none", reason.value).inc()
        return await self._pass_through(request, origin, CacheStatus.bypass(reason.value))

    # ------------------------------------------------------------------------------ writes

    async def _write(self, request: web.Request, d: Write, origin: Origin, identity: Identity | None) -> web.StreamResponse:
        body: Any = request.content if request.body_exists else None
        if d.needs_body:
            try:
                body = await _read_body(request, self.config.max_write_body)
            except _TooLarge:
                return error_response(413, "request body too large for this route", "BYPASS",
                                      CacheStatus.bypass("body-too-large"))
            try:
                document = orjson.loads(body) if body else None
            except orjson.JSONDecodeError:
                document = None
            d = policy.resolve_write(d, document)
        rule_name = d.rule.name if d.rule else "rfc9111-4.4"
        status = CacheStatus.bypass("write")
        headers = self.upstream.forward_headers(request.headers, origin.client_ip, origin.scheme, origin.request_id)
        self.metrics.upstream_requests.labels(d.rule.name if d.rule else "none").inc()
        try:
            response = await self.upstream.send(request.method, origin.path_qs, headers, body)
        except UpstreamError as exc:
            self.metrics.upstream_errors.labels("timeout" if exc.status == 504 else "connect").inc()
            if d.rule is not None:  # it may have committed: purge anyway
                await self.purge(d.gen_keys, rule_name)
            return error_response(exc.status, exc.detail, "BYPASS", status)
        if d.rule is None and response.status >= 400:
            d = replace(d, gen_keys=())  # §4.4 invalidates on non-error answers only
        if self.rules.http_cache.enabled:  # §4.4 for the HTTP cache's entries, whether or not a rule matched
            d = replace(d, gen_keys=d.gen_keys + httpserve.invalidation_keys(self, request, response.status,
                                                                           response.headers))
        if "release-before-purge" in self.unsafe:  # test-only: the ordering bug the checker must catch
            answer = await self._stream(request, response, self._pass_headers(response, status))
            await self.purge(d.gen_keys, rule_name)
            return answer
        await self.purge(d.gen_keys, rule_name)
        if d.rule is not None and d.rule.repurge_after and d.gen_keys:
            self._spawn(self._repurge(d.gen_keys, rule_name, d.rule.repurge_after))
        return await self._stream(request, response, self._pass_headers(response, status))

    async def purge(self, gen_keys: tuple[str, ...], rule_name: str, caller: str | None = None) -> bool:
        """Bump ``gen_keys``; on failure keep them pending (reads bypass them) and retry in the background."""
        if not gen_keys:
            return True
        if self.l1 is not None:  # this instance forgets at once; others hear it from the bump's message
            self.l1.invalidate(gen_keys)
        start = time.perf_counter()
        masked = [mask_gen_key(g, self.rules.prefix) for g in gen_keys]
        try:
            await self.store.bump(list(gen_keys), self.gen_ttl)
        except StoreUnavailable as exc:
            for g in gen_keys:
                self.pending[g] = rule_name
            if len(self.pending) > MAX_PENDING:  # bounded: one epoch bump covers them all
                self.pending.clear()
                self.pending[policy.epoch_key(self.rules.prefix)] = "overflow"
                log.error("too many pending purges; every read bypasses until the global epoch is bumped",
                          extra={"event": "pending_overflow", "limit": MAX_PENDING})
            self.metrics.purge_failures.inc()
            self.metrics.pending_purges.set(len(self.pending))
            self._journal_pending()
            log.error("purge failed; namespaces bypass the cache until it lands",
                      extra={"event": "purge_failed", "rule": rule_name, "patterns": masked, "error": str(exc)})
            self._ensure_retry_task()
            return False
        self.metrics.purges.labels(rule_name).inc()
        extra = {"event": "purge", "rule": rule_name, "patterns": masked,
                 "duration_ms": round((time.perf_counter() - start) * 1000, 3)}
        if caller:
            extra["caller"] = caller
        log.info("purge", extra=extra)
        return True

    def _ensure_retry_task(self) -> None:
        if not any(getattr(t, "retry_purges", False) for t in self.background):
            task = self._spawn(self._retry_pending())
            task.retry_purges = True  # type: ignore[attr-defined]

    async def _retry_pending(self, interval: float = 0.2) -> None:
        while self.pending:
            await asyncio.sleep(interval)
            keys = list(self.pending)
            try:
                await self.store.bump(keys, self.gen_ttl)
            except StoreUnavailable:
                continue
            self._applied(keys)

    def _applied(self, keys: list[str]) -> None:
        """Pending purges the store accepted: stop bypassing them; an epoch among them is counted."""
        epoch = policy.epoch_key(self.rules.prefix)
        for g in keys:
            rule = self.pending.pop(g, "pending")
            if g == epoch:
                self.metrics.epoch_bumps.inc()
                log.warning("global epoch bumped: purges may have been lost", extra={"event": "epoch_bump",
                                                                                    "reason": rule})
            else:
                self.metrics.purges.labels(rule).inc()
        self.metrics.pending_purges.set(len(self.pending))
        self._journal_pending()
        log.info("pending purges applied", extra={"event": "purge_recovered", "count": len(keys)})

    def _journal_pending(self) -> None:
        """Keep ``config.pending_file`` in step with ``pending``: it exists while purges are pending.

        Written only when the first purge fails and removed when the last one lands (never on the hit
        path). A process that finds it at start-up knows its predecessor left purges unapplied (it
        crashed, or exited while the store was unreachable) and bumps the global epoch.
        """
        path = self.config.pending_file
        if not path:
            return
        try:
            if self.pending and not self._journaled:
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "wb") as fh:
                    fh.write(orjson.dumps({"pid": os.getpid(), "since": time.time(), "prefix": self.rules.prefix}))
                os.replace(tmp, path)
                self._journaled = True
            elif not self.pending and self._journaled:
                os.unlink(path)
                self._journaled = False
        except FileNotFoundError:
            self._journaled = False
        except OSError as exc:
            log.error("cannot update the pending-purges file", extra={"event": "pending_file_error",
                                                                      "path": path, "error": str(exc)})

    def recover_pending_file(self) -> bool:
        """At start-up: a pending-purges file left by the previous process -> bump the global epoch (as a
        pending purge: every read bypasses until it lands). True if one was found."""
        path = self.config.pending_file
        if not path or not os.path.exists(path):
            return False
        self._journaled = True  # removed once the epoch bump lands
        self.pending[policy.epoch_key(self.rules.prefix)] = "previous-process"
        self.metrics.pending_purges.set(len(self.pending))
        log.warning("the previous process left purges unapplied; the global epoch will be bumped",
                    extra={"event": "pending_recovered", "path": path})
        self._ensure_retry_task()
        return True

    # ---------------------------------------------------------------------------- store watch

    def _store_unreachable(self) -> None:
        """A store call failed to reach the store: stop reading from it until ``check_store`` says yes."""
        if self.cache_usable:
            self.cache_usable = False
            self.metrics.store_usable.set(0)
            log.warning("store unreachable; reads go to the backend until it is verified again",
                        extra={"event": "store_down"})
        self._usable_at = None
        self._store_wake.set()

    async def check_store(self) -> bool:
        """Probe the store (``GuardedStore.verify``): which server answers, and did it lose data?

        A Redis that restarted from a snapshot or a promoted replica may lack recent purges (and other
        instances' pending ones): the store bumps the global epoch once, counted here. While the cache is
        off after an outage, a successful probe starts the recovery hold (``store_recovery_hold``), during
        which other instances' retried purges land; then reads use the store again.
        """
        try:
            bumped = await self.store.verify(self.server_marker, policy.epoch_key(self.rules.prefix), self.gen_ttl)
        except StoreUnavailable as exc:
            if not self.cache_usable:
                self._store_outage = True
                self._usable_at = None
            else:
                log.warning("store probe failed", extra={"event": "store_probe_failed", "error": str(exc)})
            return False
        if bumped:
            if self.l1 is not None:
                self.l1.clear()
            self.metrics.epoch_bumps.inc()
            log.warning("the store's server changed and may have lost purges; global epoch bumped",
                        extra={"event": "epoch_bump", "reason": "store-replaced"})
        if not self.cache_usable:
            now = time.monotonic()
            if self._usable_at is None:
                self._usable_at = now + (self.config.store_recovery_hold if self._store_outage else 0.0)
                if self._store_outage:
                    log.info("store answers again; cache back after the recovery hold",
                             extra={"event": "store_recovering", "hold_s": self.config.store_recovery_hold})
            if now >= self._usable_at:
                self.cache_usable, self._store_outage, self._usable_at = True, False, None
                self.metrics.store_usable.set(1)
                log.info("store verified; reads use the cache again", extra={"event": "store_up"})
        return True

    @property
    def server_marker(self) -> str:
        return f"{self.rules.prefix}:server"

    async def watch_store(self) -> None:
        """Background: probe every ``store_check_interval`` s while healthy, every 0.1 s while the cache is off."""
        while True:
            wait = 0.1 if not self.cache_usable else self.config.store_check_interval
            try:  # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives
                async with asyncio.timeout(wait):  # as the wake-up does, and then this loop never ends
                    await self._store_wake.wait()
            except TimeoutError:
                pass
            self._store_wake.clear()
            try:
                await self.check_store()
            except Exception:  # noqa: BLE001 - the watcher must never stop
                log.exception("store check failed", extra={"event": "store_check_error"})

    async def shutdown(self, grace: float) -> None:
        """After the listener closed and in-flight requests ended: let background fills finish (bounded),
        try pending purges once more, then stop every background task."""
        fills = [t for t in self.background if getattr(t, "fill", False)]
        if fills:
            await asyncio.wait(fills, timeout=max(0.0, grace))
        for task in list(self.background):
            if getattr(task, "retry_purges", False):
                task.cancel()
        if self.pending:
            keys = list(self.pending)
            try:
                await self.store.bump(keys, self.gen_ttl)
            except StoreUnavailable:
                log.error("purges still pending at exit" + ("; the next start bumps the global epoch"
                                                            if self.config.pending_file else ""),
                          extra={"event": "pending_at_exit", "count": len(keys),
                                 "pending_file": self.config.pending_file})
            else:
                self._applied(keys)

    async def _repurge(self, gen_keys: tuple[str, ...], rule_name: str, after: int) -> None:
        await asyncio.sleep(after)
        await self.purge(gen_keys, rule_name)

    # ------------------------------------------------------------------------- pass-through

    def _pass_headers(self, response: aiohttp.ClientResponse, cache_status: str) -> CIMultiDict:
        headers = response_headers(response.headers)
        headers["X-Cache"] = "BYPASS"
        headers["Cache-Status"] = cache_status
        headers["X-Request-ID"] = request_id_var.get() or ""
        return headers

    async def _pass_through(self, request: web.Request, origin: Origin, cache_status: str) -> web.StreamResponse:
        headers = self.upstream.forward_headers(request.headers, origin.client_ip, origin.scheme, origin.request_id)
        body = request.content if request.body_exists else None
        self.metrics.upstream_requests.labels("none").inc()
        start = time.perf_counter()
        try:
            response = await self.upstream.send(request.method, origin.path_qs, headers, body)
        except UpstreamError as exc:
            self.metrics.upstream_errors.labels("timeout" if exc.status == 504 else "connect").inc()
            return error_response(exc.status, exc.detail, "BYPASS", cache_status)
        self.metrics.upstream_duration.observe(time.perf_counter() - start)
        return await self._stream(request, response, self._pass_headers(response, cache_status))

    async def _stream(self, request: web.Request, response: aiohttp.ClientResponse, headers: CIMultiDict,
                      prefix: bytes = b"") -> web.StreamResponse:
        """Relay ``response``'s body as it arrives; a reset mid-body aborts the client connection."""
        length = response.headers.get("Content-Length")
        out = web.StreamResponse(status=response.status, reason=response.reason, headers=headers)
        if length is not None and length.isdigit() and not response.headers.get("Transfer-Encoding"):
            out.content_length = int(length)
        try:
            await out.prepare(request)
            if prefix:
                await out.write(prefix)
            async for chunk in response.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.metrics.upstream_errors.labels("body").inc()
            log.warning("upstream body failed mid-stream", extra={"event": "upstream_reset", "error": type(exc).__name__})
            if request.transport is not None:
                request.transport.close()
        finally:
            response.release()
        return out

    # ---------------------------------------------------------------------------- internal

    def _internal(self, method: str, raw_path: str):
        if raw_path in (USER_INVALIDATE, ACHIEVEMENTS_INVALIDATE, GLOBAL_INVALIDATE):
            return self._invalidate
        if self.config.admin_listen is None:  # else they live on the admin port; here they are backend paths
            return self.admin_handler(raw_path)
        return None

    def admin_handler(self, raw_path: str):
        """/metrics, /healthz, /readyz and /_cache/* (the admin listener serves these: proxy/admin.py)."""
        if raw_path in ("/metrics", "/healthz", "/readyz"):
            return {"/metrics": self._metrics, "/healthz": self._healthz, "/readyz": self._readyz}[raw_path]
        if raw_path.startswith("/_cache/"):  # explain, stats, purge (admin only): see proxy/explain.py
            from .explain import ENDPOINTS
            handler = ENDPOINTS.get(raw_path)
            if handler is not None:
                return lambda request: handler(self, request)
        return None

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            stats = await self.store.stats()
        except StoreUnavailable:
            stats = {}
        if "entries" in stats:
            self.metrics.store_entries.set(stats["entries"])
        if "bytes" in stats:
            self.metrics.store_bytes.set(stats["bytes"])
        if "evictions" in stats:
            self.metrics.evictions.set(stats["evictions"])
        return web.Response(body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        from .store.guard import STATE_NAMES
        ready = self.ready and self.upstream.answered  # REQUIRE_UPSTREAM_AT_START: not before it answered
        body = {"ready": ready, "store": self.store.name, "circuit": STATE_NAMES[self.store.breaker.state],
                "store_usable": self.cache_usable, "pending_purges": len(self.pending), "mode": self.mode,
                "upstream_answered": self.upstream.answered}
        return web.json_response(body, status=200 if ready else 503)

    async def _invalidate(self, request: web.Request) -> web.Response:
        path = request.raw_path.partition("?")[0]
        if request.method != "POST":
            return web.json_response({"detail": "Method Not Allowed"}, status=405, headers={"Allow": "POST"})
        authorization = request.headers.get("Authorization", "")
        token = bearer_token(authorization)
        is_admin = bool(self.config.admin_token and token and hmac.compare_digest(
            token.encode(), self.config.admin_token.encode()))
        # Limited per client address, the admin credential excepted (as on /_cache/*): behind a load
        # balancer every client shares one address, and a flood must not lock the operator out.
        retry_after = 0 if is_admin else self.admin_limiter.take(request.remote or "unknown")
        if retry_after:
            return web.json_response({"detail": "Too many invalidation requests"}, status=429,
                                     headers={"Retry-After": str(retry_after)})
        identity = None
        if not is_admin:
            identity, error = self._identify(authorization)
            if identity is None:
                return web.json_response({"detail": "Not authenticated"}, status=401,
                                         headers={"WWW-Authenticate": "Bearer"})
        try:
            raw = await _read_body(request, 64 << 10)
            document = orjson.loads(raw) if raw.strip() else {}
        except (_TooLarge, orjson.JSONDecodeError):
            return web.json_response({"detail": "body must be a JSON object"}, status=422)
        if not isinstance(document, dict):
            return web.json_response({"detail": "body must be a JSON object"}, status=422)
        if path == GLOBAL_INVALIDATE:
            if not is_admin:
                return web.json_response({"detail": "admin credential required"}, status=403)
            namespaces = ["achievements:global"]
            stored = [assemble(["achievements", "global"], ("achievements", "global"))]  # {achievements:global}
        else:
            target = document.get("user_id")
            if is_admin and not target:
                return web.json_response({"detail": "user_id required with the admin credential"}, status=422)
            if not is_admin:
                if target not in (None, identity.user_id):
                    return web.json_response({"detail": "may only invalidate your own cache"}, status=403)
                target = identity.user_id
            if not isinstance(target, str):
                return web.json_response({"detail": "user_id must be a string"}, status=422)
            kind = "user" if path == USER_INVALIDATE else "achievements"
            namespaces = [f"{kind}:{{{escape_value(target)}}}"]
            stored = namespaces
        gen_keys = tuple(policy.namespace_gen_key(self.rules.prefix, ns) for ns in stored)
        caller = "admin" if is_admin else f"user:…{identity.user_id[-4:]}"
        ok = await self.purge(gen_keys, "manual", caller=caller)
        log.info("manual invalidation", extra={"event": "audit_invalidate", "caller": caller,
                                                "namespaces": [mask_gen_key(g, self.rules.prefix) for g in gen_keys],
                                                "applied": ok})
        body = {"header": {"requestRefId": str(uuid.uuid4()), "responseCode": 200,
                           "responseMessage": "Cache invalidated" if ok else "Invalidation pending",
                           "customerMessage": "Cache invalidated",
                           "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                "body": {"invalidated": [f"{ns}:*" for ns in namespaces], "applied": ok}}
        return web.json_response(body)

    # ----------------------------------------------------------------------------- reloads

    def reload_rules(self) -> bool:
        try:
            rules = load_rules(self.config.rules_path)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old rules in force
            self.metrics.reloads.labels("failure").inc()
            log.error("rules reload refused; previous rules stay in force",
                      extra={"event": "reload_failed", "errors": str(exc).splitlines()})
            return False
        self.set_rules(rules)
        self.metrics.reloads.labels("success").inc()
        log.info("rules reloaded", extra={"event": "reload", "rules": len(rules.rules)})
        return True


class _TooLarge(Exception):
    pass


async def _read_body(request: web.Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """(body, True) when the whole body fits in ``limit``; else (what was read, False), rest unread."""
    chunks, size = [], 0
    try:
        while True:
            chunk = await response.content.readany()
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(chunks), False
    except (aiohttp.ClientError, asyncio.TimeoutError):
        response.release()
        raise UpstreamError(502, "upstream failed mid-body") from None


def _is_failure(fetched: Fetched, rule) -> bool:
    """A backend failure for stale-if-error: no answer, a 5xx, or what the rule's error_when names."""
    if fetched.error is not None or fetched.status >= 500:
        return True
    when = rule.error_when
    if when is None or fetched.stream is not None:
        return False
    if fetched.status in when.statuses and when.json is None:
        return True
    if when.json is not None:
        try:
            return when.json.holds(orjson.loads(fetched.body))
        except orjson.JSONDecodeError:
            return False
    return False


def _content_etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def _not_modified_headers(headers: CIMultiDict) -> CIMultiDict:
    keep = ("ETag", "Cache-Control", "Content-Location", "Date", "Expires", "Vary", "Age", "X-Cache",
            "Cache-Status", "X-Request-ID")
    return CIMultiDict((k, v) for k, v in headers.items() if k in keep)


def build_app(config: Config, rules: Rules | None = None, store=None, metrics: Metrics | None = None,
              unsafe: frozenset[str] = frozenset()) -> web.Application:
    """The proxy as an aiohttp application; the store and upstream session open in ``cleanup_ctx``."""
    rules = rules or load_rules(config.rules_path)
    metrics = metrics or Metrics()
    app = web.Application(client_max_size=config.max_write_body, handler_args={"max_field_size": 16384})
    guarded = GuardedStore(store or open_store(config.redis_url, memory_max_bytes=config.memory_max_bytes,
                                            timeout=config.store_timeout,
                                            max_connections=config.redis_max_connections),
                           metrics, timeout=config.store_timeout,
                           breaker=CircuitBreaker(config.breaker_failures, config.breaker_reset))
    proxy = Proxy(config, rules, guarded, Upstream(config.upstream), metrics, unsafe=unsafe)
    app[PROXY_KEY] = proxy

    async def lifecycle(app: web.Application):
        await proxy.upstream.start()
        proxy._spawn(watch_upstream(proxy.upstream))  # unreachable at start: a warning (and not ready if required)
        proxy.recover_pending_file()
        if not await proxy.check_store():  # who answers, and did it lose data? (bounded by the store timeout)
            proxy._store_unreachable()
            proxy._store_outage = True
        loop = asyncio.get_running_loop()
        sweeper, watcher = loop.create_task(_sweep(proxy)), loop.create_task(proxy.watch_store())
        if proxy.l1 is not None:
            proxy._spawn(follow_invalidations(guarded.inner.invalidations, proxy.l1))
        proxy.ready = True
        yield
        proxy.ready = False
        watcher.cancel()
        await proxy.shutdown(grace=min(config.shutdown_grace, 5.0))
        sweeper.cancel()
        for task in list(proxy.background):
            task.cancel()
        await asyncio.gather(*proxy.background, sweeper, watcher, return_exceptions=True)
        await proxy.upstream.close()
        await guarded.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app


async def _sweep(proxy: Proxy, interval: float = 5.0) -> None:
    """Housekeeping off the request path: warm hot entries, drop expired memory-store items."""
    inner = proxy.store.inner
    rounds = 0
    while True:
        await asyncio.sleep(interval)
        rounds += 1
        if any(r.warm for r in proxy.rules.rules):
            try:
                await proxy.warm_once(horizon=interval * 3)
            except Exception:  # noqa: BLE001 - warming is best effort and must never stop
                log.exception("warming failed", extra={"event": "warm_error"})
        if rounds % 6 == 0 and hasattr(inner, "sweep"):
            inner.sweep()
