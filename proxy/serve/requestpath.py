"""The request path: one object, called by aiohttp's handler and by the fast path, that carries out the
policy's decisions (proxy/core/policy.py) against the store and the backend.

Read top to bottom, per request (``handle``): the overload gate, the request id, then ``policy.classify``:

* read (GET/HEAD with a rule, ``read``): L1, then one store round trip for the entry and the current
  generations of the namespaces that guard it; ``policy.judge`` says fresh, stale or unusable. A miss is
  filled (``fill``): coalesced per key (coalesce.py), fetched and stored under the fill guard (fill.py):
  the tokens read *before* the fetch go with the write, which lands only if they are still current.
* write (POST/PUT/PATCH/DELETE, ``write``): forwarded; once the backend has answered, the rule's
  namespaces are purged (purger.py) and only then are the answer's headers released. A purge the store
  does not accept in time stays *pending*: until it lands, reads of those namespaces bypass the cache.
* unruled GET/HEAD with the HTTP cache on: RFC 9111 (httpserve.py).
* everything else: passed through, streamed both ways, marked ``X-Cache: BYPASS`` (passthrough.py).

Around it, each its own collaborator: the store watch (storewatch.py: reads bypass a store that is down),
background refreshes (warmer.py), shadow mode (shadow.py), the staleness auditor (auditor.py), the
proxy's own endpoints (endpoints.py) and the background task set (background.py).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
import uuid
from functools import partial
from random import random
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from ..core import interim, locations, memo, policy
from ..core.arms import rollout_arm
from ..core.entry import Entry, decode_entry
from ..core.errors import StoreUnavailable, UpstreamError
from ..core.identity import Identity, Verifier, identify
from ..core.metrics import Metrics
from ..core.policy import Bypass, Lookup, Reason, RequestView, Write
from ..core.rules import Rules
from ..core.rulesfile import load_rules
from ..store.guard import GuardedStore
from ..store.l1 import L1Cache
from ..upstream.client import Upstream, read_limited, released_on_failure
from ..upstream.http1 import Response as UpstreamResponse
from . import httpserve, streaming
from .answers import request_id as request_id_var
from .answers import Fetched, Filled, Origin, miss_headers, not_modified_headers, request_target
from .auditor import Auditor
from .background import Background
from .coalesce import Coalescer
from .config import Config
from .endpoints import Endpoints
from .fill import Filler
from .overload import Gate
from .passthrough import PassThrough
from .purger import Purger
from .ruleset import RulesInForce
from .shadow import Shadow
from .storewatch import StoreWatch
from .warmer import Warmer
from .wire import BodyTooLarge, CacheStatus, RateLimiter, error_response, etag_matches, is_valid_request_id, read_body

log = logging.getLogger("proxy")
# A write's answer is read up to this size before its purge, to see a refusal in its envelope
# (purge_when); a larger one is relayed unread and its outcome counts as unknown (it purges).
WRITE_ANSWER_PEEK = 64 << 10
CLIENT_CLOSED = 499  # nginx's status for a request whose client closed the connection first (metrics and logs)


class RequestPath:
    def __init__(self, config: Config, rules: Rules, store: GuardedStore, upstream: Upstream, metrics: Metrics,
                 clock=time.time, unsafe: frozenset[str] = frozenset()):
        self.config, self.store, self.upstream, self.metrics, self.clock = config, store, upstream, metrics, clock
        # Test-only switches that break a guarantee on purpose, so the stale-read checker is known to bite.
        self.unsafe = unsafe
        self.mode = config.cache_mode
        self.ready = False
        self.instance_id = uuid.uuid4().hex
        self._request_ids = itertools.count(1)
        self._rid_prefix = self.instance_id[:12] + "-"
        self.verifier = Verifier(config.identity) if (config.identity.secrets or config.identity.public_keys) else None
        self.upstream_address = locations.UpstreamAddress.from_url(config.upstream.url)
        self.admin_limiter = RateLimiter(config.admin_rate, burst=max(1.0, config.admin_rate * 2))
        self.gate = Gate(config.max_inflight, metrics, admin_paths_public=config.admin_listen is None)
        upstream.slots.on_busy = metrics.overload.labels("upstream").inc
        upstream.failures.counter = metrics.upstream_errors  # counted and logged (proxy/upstream/failures.py)
        # The in-process L1 exists where the store has an invalidation channel (Redis, Cluster).
        self.l1 = L1Cache(config.l1_max_bytes) if hasattr(store.inner, "invalidations") else None
        memo.set_budget(config.memo_max_bytes)  # process-wide: the memos are pure functions' (core/memo.py)

        # The collaborators, each owning one job; ``now`` rather than ``clock`` so that a replaced clock
        # (tests move it by hand) reaches them all.
        now = self.now
        self.ruleset = RulesInForce(rules)
        self.background = Background()
        self.passthrough = PassThrough(upstream, metrics)
        self.purger = Purger(store, metrics, config, self.ruleset, self.l1, self.background)
        self.store_watch = StoreWatch(store, metrics, config, self.ruleset, self.l1)
        self.filler = Filler(store, upstream, metrics, self.ruleset, self.background, self.purge_pending, now, unsafe)
        self.coalescer = Coalescer(store, config, metrics, self.filler, self.background, now)
        self.warmer = Warmer(store, config, metrics, self.ruleset, self.coalescer, self.background,
                             self.store_watch, now)
        self.auditor = Auditor(metrics, now, lookup=store.lookup, fetch=partial(self.filler.fetch, store=False),
                               replace=self._replace_stale, spawn=self.background.spawn,
                               identify=partial(identify, self.verifier), share=config.audit_share)
        self.shadow = Shadow(store, metrics, self.ruleset, self.filler, self.auditor, self.passthrough, now)
        self.endpoints = Endpoints(self)
        self.set_rules(rules)

    def now(self) -> float:
        return self.clock()

    @property
    def rules(self) -> Rules:
        return self.ruleset.rules

    def set_rules(self, rules: Rules) -> None:
        self.ruleset.set(rules)
        self.auditor.configure(rules)
        if rules.http_cache.enabled and hasattr(self.store.inner, "limit"):  # the memory store
            self.store.inner.limit(f"{rules.prefix}:http:", rules.http_cache.max_bytes)

    # ------------------------------------------------------------------------------ dispatch

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self.gate.admit(request.raw_path):  # MAX_INFLIGHT: 503 + Retry-After (proxy/serve/overload.py)
            return self.gate.reject()
        rid = self.request_id(request.headers)
        token = request_id_var.set(rid)
        start = time.perf_counter()
        result, rule_name, status, cache_status = "bypass", "none", 500, ""
        try:
            if "Upgrade" in request.headers and streaming.wants_websocket(request) \
                    and self.endpoints.internal(request.method, request.raw_path.partition("?")[0]) is None:
                response, result, rule_name = await streaming.proxy_websocket(self, request, rid)
            else:
                response, result, rule_name = await self._dispatch(request, rid)
            status, cache_status = response.status, response.headers.get("Cache-Status", "")
            return response
        except asyncio.CancelledError:
            status = CLIENT_CLOSED  # the client left before its answer was complete: no 5xx of ours
            raise
        except ConnectionError:  # writing the answer failed; handlers run on when their client leaves (runner.py)
            if request.transport is not None and not request.transport.is_closing():
                raise
            status = CLIENT_CLOSED
            return web.Response(status=CLIENT_CLOSED)  # never sent: aiohttp finds the connection gone, quietly
        finally:
            self.gate.leave()
            self.record(request.method, rule_name, result, status, cache_status, start)
            request_id_var.reset(token)

    def request_id(self, headers) -> str:
        """The client's X-Request-ID when it is well-formed, else a new one."""
        return self.request_id_given(headers.get("X-Request-ID", ""))

    def request_id_given(self, client_value: str) -> str:
        """``request_id`` for the value of the client's X-Request-ID field ("" when it sent none)."""
        if client_value and is_valid_request_id(client_value):
            return client_value
        return f"{self._rid_prefix}{next(self._request_ids):x}"

    def record(self, method: str, rule_name: str, result: str, status: int, cache_status: str, start: float,
               rid: str | None = None) -> None:
        """Per-request metrics (rollout arms included) and the access log line, for both request paths."""
        elapsed = time.perf_counter() - start
        self.metrics.count_request(rule_name, result, status, elapsed)
        if rule_name in self.ruleset.rollout_rules:
            arm = rollout_arm(result, cache_status)
            if arm is not None:
                self.metrics.count_arm(rule_name, arm, status, elapsed)
        if self.config.access_log:
            token = request_id_var.set(rid) if rid is not None else None
            log.info("request", extra={"event": "access", "method": method, "status": status, "rule": rule_name,
                                       "result": result, "duration_ms": round(elapsed * 1000, 2)})
            if token is not None:
                request_id_var.reset(token)

    async def _dispatch(self, request: web.Request, rid: str) -> tuple[web.StreamResponse, str, str]:
        target = request_target(request.raw_path)
        raw_path, _, query = target.partition("?")
        if not raw_path.startswith("/"):  # absolute-form (http://host/path): not a forward proxy
            return error_response(400, "request target must be a path (origin-form)", "BYPASS",
                                  CacheStatus.bypass("request-target")), "bypass", "none"
        internal = self.endpoints.internal(request.method, raw_path)
        if internal is not None:
            return await internal(request), "internal", "internal"
        identity, token_error = identify(self.verifier, request.headers.get("Authorization"))
        view = RequestView(request.method, raw_path, query, request.headers)
        decision = policy.classify(view, self.rules, identity, token_error)
        origin = Origin(target, request.headers, request.remote, request.scheme, rid)
        if isinstance(decision, Lookup):
            if self.mode == "on":
                response, result = await self.read(request, decision, origin)
                return response, result, decision.rule.name
            if self.mode == "shadow":
                return await self.shadow.answer(request, decision, origin), "bypass", decision.rule.name
            decision = Bypass(Reason.MODE_OFF, decision.rule)
        if isinstance(decision, Bypass) and self.rules.http_cache.enabled:  # RFC 9111 for unruled routes
            handled = await httpserve.handle(self, request, decision, origin)
            if handled is not None:
                return handled
        if isinstance(decision, Write):
            response = await self.write(request, decision, origin, identity)
            return response, "bypass", decision.rule.name if decision.rule else "none"
        rule_name = decision.rule.name if decision.rule else "none"
        self.metrics.bypasses.labels(rule_name, decision.reason.value).inc()
        response = await self.pass_through(request, origin, CacheStatus.bypass(decision.reason.value))
        return response, "bypass", rule_name

    # ------------------------------------------------------------------------------- reads

    def fast_lookup(self, raw_path: str, query: str, headers: CIMultiDict) -> tuple[Lookup | None, float]:
        """For the fast path (fastread.py): the Lookup of a plain GET when a fresh entry could answer it, and until
        when (the verifier's clock) the same request keeps that Lookup: its token's expiry. Pending
        purges are the caller's to check, each time."""
        if self.endpoints.internal("GET", raw_path) is not None:
            return None, 0.0
        identity, token_error = identify(self.verifier, headers.get("Authorization"))
        d = policy.classify(RequestView("GET", raw_path, query, headers), self.rules, identity, token_error)
        if type(d) is not Lookup or d.revalidate:
            return None, 0.0
        until = identity.expires_at + self.verifier.config.leeway if identity is not None else math.inf
        return d, until

    def point_at_client(self, headers: CIMultiDict, request_headers, scheme: str) -> None:
        """A Location/Content-Location on the backend's address, pointed at the client's instead
        (proxy/core/locations.py); for every answer of both request paths, stored ones included."""
        if "Location" in headers or "Content-Location" in headers:
            locations.rewrite(headers, self.upstream_address, request_headers, scheme)

    def purge_pending(self, d: Lookup) -> bool:
        """A purge of one of ``d``'s namespaces has not reached the store yet: bypass, never store."""
        return self.purger.pending_for(d.gen_keys)

    def refresh_stale(self, d: Lookup, tokens: list, path_qs: str, headers: CIMultiDict, client_ip: str | None,
                      scheme: str, rid: str) -> None:
        """For the fast path (fastread.py), which answers stale-while-revalidate hits too."""
        self.warmer.refresh_in_background(d, tokens, Origin(path_qs, headers, client_ip, scheme, rid))

    def l1_fresh(self, d: Lookup) -> tuple[Entry, str, int] | None:
        """(entry, Cache-Status, age) when the in-process L1 holds a fresh copy of ``d``'s entry."""
        if self.l1 is None or not d.rule.l1_ttl or d.revalidate or (cached := self.l1.get(d.key)) is None:
            return None
        verdict = policy.judge(cached[0], list(cached[1]), d.rule, self.clock())
        if verdict.usable != "fresh":
            return None
        return cached[0], CacheStatus.hit(d.rule.ttl - verdict.age, "l1"), verdict.age

    def looked_up(self, d: Lookup, raw: bytes | None, tokens: list, path_qs: str) -> tuple[Entry | None, policy.Verdict]:
        """Judge what the store gave for ``d``; a fresh entry also goes to L1; warm rules count demand."""
        rule = d.rule
        l1 = self.l1 if self.l1 is not None and rule.l1_ttl and not d.revalidate else None
        entry = (l1 is not None and l1.decoded(d.key, raw)) or decode_entry(raw)
        verdict = policy.judge(entry, tokens, rule, self.clock())
        if l1 is not None:
            if verdict.usable == "fresh":
                l1.put(d.key, entry, tokens, d.gen_keys, min(rule.l1_ttl, rule.ttl - verdict.age), raw)
            else:
                l1.discard(d.key)
        if rule.warm or rule.refresh_after_purge:
            self.warmer.note_read(d, path_qs)
        return entry, verdict

    async def read(self, request: web.Request, d: Lookup, origin: Origin) -> tuple[web.StreamResponse, str]:
        rule = d.rule
        if self.purge_pending(d):
            return await self._bypass(request, origin, rule, Reason.PENDING_PURGE), "bypass"
        if not self.store_watch.cache_usable:  # unreachable, or back but not yet verified: don't wait on it each time
            return await self._bypass(request, origin, rule, Reason.STORE_DOWN), "bypass"
        if (hit := self.l1_fresh(d)) is not None:
            if random() < self.auditor.sample:
                self.auditor.offer(d, hit[0], origin)
            return self._from_entry(request, hit[0], "HIT", hit[1], hit[2]), "hit"
        prefetched = getattr(request.protocol, "prefetched", None)  # the fast path's lookup (fastread.py)
        if prefetched is not None and prefetched.key == d.key:
            request.protocol.prefetched = None
            if prefetched.store_down:
                return await self._bypass(request, origin, rule, Reason.STORE_DOWN), "bypass"
            entry, verdict, tokens = prefetched.entry, prefetched.verdict, prefetched.tokens
        else:
            try:
                raw, tokens = await self.store.lookup(d.key, d.gen_keys)
            except StoreUnavailable:
                return await self._bypass(request, origin, rule, Reason.STORE_DOWN), "bypass"
            entry, verdict = self.looked_up(d, raw, tokens, origin.path_qs)
        if not d.revalidate:
            if verdict.usable == "fresh":
                if random() < self.auditor.sample:
                    self.auditor.offer(d, entry, origin)
                return self._from_entry(request, entry, "HIT", CacheStatus.hit(rule.ttl - verdict.age), verdict.age), "hit"
            if verdict.usable == "stale":
                self.warmer.refresh_in_background(d, tokens, origin)
                status = CacheStatus.hit(rule.ttl - verdict.age, "stale-while-revalidate")
                return self._from_entry(request, entry, "STALE", status, verdict.age), "stale"
        filled = await self.fill(d, origin, entry, verdict, tokens)
        if filled is None:
            return await self._bypass(request, origin, rule, Reason.STORE_DOWN), "bypass"
        if filled.fetched is None:
            return self._from_entry(request, entry, "STALE", filled.cache_status, verdict.age), "stale"
        return await self._from_fetched(request, filled.fetched, filled.cache_status), "miss"

    async def fill(self, d: Lookup, origin: Origin, entry: Entry | None, verdict: policy.Verdict,
                   tokens: list, lease: tuple[str, str] | None = None) -> Filled | None:
        """A read the cache could not answer fresh: the fill, or ``entry`` if the backend fails and
        stale-if-error allows it (``Filled.fetched`` None). None: the store is down, nothing was fetched.
        For both request paths (aiohttp's, and the fast path's). ``lease``: the fill's lease, taken
        by the lookup already (``Coalescer.lease_with_lookup``); this fill uses it or drops it."""
        rule = d.rule
        if None in tokens:
            try:
                tokens = await self.store.ensure_generations(d.gen_keys, self.ruleset.gen_ttl)
            except StoreUnavailable:
                return None  # a lease taken expires by itself (lease_ms): the store is failing
        fetched = await self.coalescer.fill(d, tokens, origin, lease)
        if verdict.usable in ("stale", "on-error") and _is_failure(fetched, rule) \
                and verdict.age < rule.ttl + rule.stale_if_error:
            if fetched.stream is not None:  # a failure with a streamed body: not relayed, so give it back
                fetched.stream[1].release()
            fwd = fetched.error.status if fetched.error else fetched.status
            return Filled(CacheStatus.hit(rule.ttl - verdict.age, "stale-if-error", fwd_status=fwd))
        fwd = "request" if d.revalidate else {"absent": "uri-miss", "expired": "stale"}.get(verdict.reason, "miss")
        return Filled(CacheStatus.miss(fwd, fetched.status, fetched.outcome, fetched.collapsed), fetched)

    async def _replace_stale(self, d: Lookup, tokens: list[str], fetched: Fetched) -> str:
        """The staleness auditor found ``d``'s entry stale: store the fresh answer under the fill guard
        (``tokens``: those the stale entry carried) and drop this process's L1 copy; other instances'
        copies end within the rule's ``l1_ttl``."""
        if self.l1 is not None:
            self.l1.discard(d.key)
        return await self.filler.store_fill(d, tokens, fetched)

    def _from_entry(self, request: web.Request, entry: Entry, label: str, status: str, age: int) -> web.Response:
        headers = CIMultiDict(entry.headers)
        headers["ETag"] = headers.get("ETag", entry.etag)
        headers["Age"] = str(age)
        headers["X-Cache"] = label
        headers["Cache-Status"] = status
        headers["X-Request-ID"] = request_id_var.get() or ""
        if entry.status == 200 and etag_matches(request.headers.get("If-None-Match"), headers["ETag"]):
            return web.Response(status=304, headers=not_modified_headers(headers))
        return web.Response(status=entry.status, body=entry.body, headers=headers)

    async def _from_fetched(self, request: web.Request, fetched: Fetched, status: str) -> web.StreamResponse:
        if fetched.error is not None:
            return error_response(fetched.error.status, fetched.error.detail, "MISS", status)
        interim.send_before(request, fetched.interim)
        headers = miss_headers(fetched.headers, fetched.etag, status)
        if fetched.stream is not None:
            prefix, upstream_response = fetched.stream
            return await self.passthrough.stream(request, upstream_response, headers, prefix)
        if fetched.status == 200 and fetched.etag and etag_matches(request.headers.get("If-None-Match"), headers["ETag"]):
            return web.Response(status=304, headers=not_modified_headers(headers))
        return web.Response(status=fetched.status, body=fetched.body, headers=headers)

    async def _bypass(self, request: web.Request, origin: Origin, rule, reason: Reason) -> web.StreamResponse:
        self.metrics.bypasses.labels(rule.name if rule else "none", reason.value).inc()
        return await self.pass_through(request, origin, CacheStatus.bypass(reason.value))

    # ------------------------------------------------------------------------------ writes

    async def write(self, request: web.Request, d: Write, origin: Origin, identity: Identity | None) -> web.StreamResponse:
        writer = identity.user_id if identity is not None else None
        self.auditor.write_begins(writer)  # until its purge is applied, audits of the writer's entries wait
        try:
            return await self._forward_write(request, d, origin, identity)
        finally:
            self.auditor.write_ends(writer)

    async def _forward_write(self, request: web.Request, d: Write, origin: Origin,
                             identity: Identity | None) -> web.StreamResponse:
        body: Any = request.content if request.body_exists else None
        if d.needs_body:
            try:
                body = await read_body(request, self.config.max_write_body)
            except BodyTooLarge:
                return error_response(413, "request body too large for this route", "BYPASS",
                                      CacheStatus.bypass("body-too-large"))
            try:
                document = orjson.loads(body) if body else None
            except orjson.JSONDecodeError:
                document = None
            d = policy.resolve_write(d, document)
        status = CacheStatus.bypass("write")
        rule_name = d.rule.name if d.rule else "none"
        headers = self.upstream.forward_headers(request.headers, origin.client_ip, origin.scheme, origin.request_id)
        self.metrics.upstream_requests.labels(rule_name).inc()
        try:
            response = await self.upstream.send(request.method, origin.path_qs, headers, body, rule_name)
        except UpstreamError as exc:
            self.upstream.failures(exc, rule_name, request.method)
            await self.purger.purge(*policy.purges_after(d, self.rules, None, None))  # it may have committed
            return error_response(exc.status, exc.detail, "BYPASS", status)
        with released_on_failure(response):
            return await self._purge_then_answer(request, d, origin, identity, response, status, rule_name)

    async def _purge_then_answer(self, request: web.Request, d: Write, origin: Origin, identity: Identity | None,
                                 response: UpstreamResponse, status: str, rule_name: str) -> web.StreamResponse:
        self.auditor.note_write(identity, request.method, origin.path_qs, d.rule, response.status)
        prefix, answer = b"", None  # answer: the whole body, when it was read to judge the envelope
        if policy.reads_answer(d, self.rules, response.status) and not streaming.is_event_stream(response.headers):
            try:
                prefix, complete = await read_limited(response, WRITE_ANSWER_PEEK)
            except UpstreamError as exc:  # the connection was lost mid-answer: the outcome is unknown
                self.upstream.failures(exc, rule_name, request.method)
                await self.purger.purge(*policy.purges_after(d, self.rules, None, None))
                return error_response(exc.status, exc.detail, "BYPASS", status)
            answer = prefix if complete else None  # larger: its envelope is unread, so the outcome unknown
        gen_keys, label = policy.purges_after(d, self.rules, response.status, answer)
        if self.rules.http_cache.enabled:  # §4.4 for the HTTP cache's entries, whether or not a rule matched
            gen_keys += httpserve.invalidation_keys(self, request, response.status, response.headers)
        if "release-before-purge" in self.unsafe:  # test-only: the ordering bug the checker must catch
            answer_out = await self.passthrough.stream(request, response, self.passthrough.headers(response, status),
                                                       prefix)
            await self.purger.purge(gen_keys, label)
            return answer_out
        await self.purger.purge(gen_keys, label)
        if identity is not None and gen_keys:
            self.warmer.refresh_after_purge(identity.user_id, gen_keys, origin)
        if d.rule is not None and d.rule.repurge_after and gen_keys:
            self.background.spawn(self.purger.repurge(gen_keys, label, d.rule.repurge_after))
        return await self.passthrough.stream(request, response, self.passthrough.headers(response, status), prefix)

    async def pass_through(self, request: web.Request, origin: Origin, cache_status: str) -> web.StreamResponse:
        return await self.passthrough.relay(request, origin, cache_status)

    async def shutdown(self, grace: float) -> None:
        """After the listener closed and in-flight requests ended: let background fills finish (bounded),
        then try pending purges once more."""
        fills = self.background.fills()
        if fills:
            await asyncio.wait(fills, timeout=max(0.0, grace))
        await self.purger.finish()

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
