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
* audit: a sampled fresh hit (``audit.sample``) is fetched again in the background and compared with the
  entry served; a stale entry is replaced and attributed to the writes ``_write`` noted (proxy/serve/auditor.py).

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
import itertools
import logging
import math
import time
import uuid
from dataclasses import replace
from functools import partial
from random import random
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from . import fastpath, httpserve, streaming, tracing
from ..core import interim, locations, policy
from ..core.arms import rollout_arm
from .auditor import Auditor
from ..core.demand import RecentReads
from .config import Config
from ..core.entry import Entry, decode_entry
from ..core.errors import StoreUnavailable, UpstreamError
from ..core.identity import Identity, Verifier, identify
from ..store.l1 import L1Cache, follow_invalidations
from .answers import request_id as request_id_var
from .answers import (
    CONDITIONAL_HEADERS, FILL_DROPPED, Fetched, Filled, Origin, content_etag, miss_headers, not_modified_headers,
    request_target,
)
from ..core.metrics import Metrics
from .overload import Gate
from ..core.policy import Bypass, Lookup, Reason, RequestView, Write
from ..core.rules import Rules
from ..core.rulesfile import load_rules
from ..store import open_store
from ..store.guard import CircuitBreaker, GuardedStore
from ..upstream.client import (
    Upstream, body_failure, framed_length, overran, overrun_failure, read_limited, response_headers,
    strip_hop_by_hop, watch_upstream,
)
from .endpoints import EndpointsMixin
from .purger import PurgingMixin
from .wire import BodyTooLarge, CacheStatus, RateLimiter, error_response, etag_matches, is_valid_request_id, read_body

log = logging.getLogger("proxy")
_UNSEEN = object()  # no poll has looked at the entry yet
# A write's answer is read up to this size before its purge, to see a refusal in its envelope
# (purge_when); a larger one is relayed unread and its outcome counts as unknown (it purges).
WRITE_ANSWER_PEEK = 64 << 10

PROXY_KEY = web.AppKey("proxy", "Proxy")
# Refetches after a purge in flight at once per instance (``refresh_after_purge``); more wait their turn.
REFRESH_AFTER_PURGE_CONCURRENCY = 8
CLIENT_CLOSED = 499  # nginx's status for a request whose client closed the connection first (metrics and logs)
INTERNAL_HEADERS = frozenset({"x-cache", "cache-status", "age", "x-request-id", "content-length", "set-cookie"})


class Proxy(PurgingMixin, EndpointsMixin):
    def __init__(self, config: Config, rules: Rules, store: GuardedStore, upstream: Upstream, metrics: Metrics,
                 clock=time.time, unsafe: frozenset[str] = frozenset()):
        self.config, self.store, self.upstream, self.metrics, self.clock = config, store, upstream, metrics, clock
        self.verifier = Verifier(config.identity) if (config.identity.secrets or config.identity.public_keys) else None
        self.auditor = Auditor(metrics, clock, lookup=store.lookup, fetch=partial(self._fetch, store=False),
                               replace=self._replace_stale, spawn=self._spawn, identify=partial(identify, self.verifier),
                               share=config.audit_share)
        self.set_rules(rules)
        self.upstream_address = locations.UpstreamAddress.from_url(config.upstream.url)
        self.mode = config.cache_mode
        self.inflight: dict[tuple, asyncio.Future] = {}
        self.instance_id = uuid.uuid4().hex
        self._request_ids = itertools.count(1)
        self._rid_prefix = self.instance_id[:12] + "-"
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
        self.recent_reads = RecentReads()  # refresh_after_purge rules: each user's own recent reads
        self.refresh_slots = asyncio.Semaphore(REFRESH_AFTER_PURGE_CONCURRENCY)
        self.ready = False
        self.admin_limiter = RateLimiter(config.admin_rate, burst=max(1.0, config.admin_rate * 2))
        self.gate = Gate(config.max_inflight, metrics, admin_paths_public=config.admin_listen is None)
        upstream.slots.on_busy = metrics.overload.labels("upstream").inc
        upstream.failures.counter = metrics.upstream_errors  # counted and logged (proxy/upstream/failures.py)
        # Test-only switches that break a guarantee on purpose, so the stale-read checker is known to bite.
        self.unsafe = unsafe

    def set_rules(self, rules: Rules) -> None:
        self.rules = rules
        self.auditor.configure(rules)
        self.rollout_rules = frozenset(r.name for r in rules.rules if r.key is not None and r.rollout < 100)
        longest = max((policy.store_ttl(r) for r in rules.rules if r.key is not None), default=3600)
        if rules.http_cache.enabled:
            longest = max(longest, rules.http_cache.max_ttl)
            if hasattr(getattr(self, "store", None), "inner") and hasattr(self.store.inner, "limit"):
                self.store.inner.limit(f"{rules.prefix}:http:", rules.http_cache.max_bytes)  # memory store
        self.gen_ttl = longest + 3600  # generations outlive every entry they guard

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
                    and self._internal(request.method, request.raw_path.partition("?")[0]) is None:
                response, result, rule_name = await streaming.proxy_websocket(self, request, rid)
            else:
                response, result, rule_name = await self._dispatch(request, rid)
            status, cache_status = response.status, response.headers.get("Cache-Status", "")
            return response
        except asyncio.CancelledError:
            status = CLIENT_CLOSED  # the client left before its answer was complete: no 5xx of ours
            raise
        finally:
            self.gate.leave()
            self.record(request.method, rule_name, result, status, cache_status, start)
            request_id_var.reset(token)

    def request_id(self, headers) -> str:
        """The client's X-Request-ID when it is well-formed, else a new one."""
        rid = headers.get("X-Request-ID", "")
        return rid if rid and is_valid_request_id(rid) else f"{self._rid_prefix}{next(self._request_ids):x}"

    def record(self, method: str, rule_name: str, result: str, status: int, cache_status: str, start: float,
               rid: str | None = None) -> None:
        """Per-request metrics (rollout arms included) and the access log line, for both request paths."""
        elapsed = time.perf_counter() - start
        self.metrics.count_request(rule_name, result, status, elapsed)
        if rule_name in self.rollout_rules:
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
        internal = self._internal(request.method, raw_path)
        if internal is not None:
            return await internal(request), "internal", "internal"
        identity, token_error = identify(self.verifier, request.headers.get("Authorization"))
        view = RequestView(request.method, raw_path, query, request.headers)
        decision = policy.classify(view, self.rules, identity, token_error)
        origin = Origin(target, request.headers, request.remote, request.scheme, rid)
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

    # ------------------------------------------------------------------------------- reads

    def fast_lookup(self, raw_path: str, query: str, headers: CIMultiDict) -> tuple[Lookup | None, float]:
        """For proxy/serve/fastpath.py: the Lookup of a plain GET when a fresh entry could answer it, and until
        when (the verifier's clock) the same request keeps that Lookup: its token's expiry. Pending
        purges are the caller's to check, each time."""
        if self._internal("GET", raw_path) is not None:
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

    def _purge_pending(self, d: Lookup) -> bool:
        """A purge of one of ``d``'s namespaces has not reached the store yet: bypass, never store."""
        return bool(self.pending) and any(g in self.pending for g in d.gen_keys)

    def refresh_stale(self, d: Lookup, tokens: list, path_qs: str, headers: CIMultiDict, client_ip: str | None,
                      scheme: str, rid: str) -> None:
        """For proxy/serve/fastpath.py, which answers stale-while-revalidate hits too."""
        self._refresh_in_background(d, tokens, Origin(path_qs, headers, client_ip, scheme, rid))

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
        entry = decode_entry(raw)
        verdict = policy.judge(entry, tokens, rule, self.clock())
        if self.l1 is not None and rule.l1_ttl and not d.revalidate and verdict.usable == "fresh":
            self.l1.put(d.key, entry, tokens, d.gen_keys, min(rule.l1_ttl, rule.ttl - verdict.age))
        if rule.warm:
            self._note_demand(d, path_qs)
        if rule.refresh_after_purge and d.owner is not None:
            self.recent_reads.note(d.owner, d.key, d.gen_keys[:-1], rule.demand_window, (d, path_qs))
        return entry, verdict

    async def _read(self, request: web.Request, d: Lookup, origin: Origin) -> tuple[web.StreamResponse, str]:
        rule = d.rule
        if self._purge_pending(d):
            return await self._bypass(request, origin, rule, Reason.PENDING_PURGE), "bypass"
        if not self.cache_usable:  # unreachable, or back but not yet verified: don't wait on it each time
            return await self._bypass(request, origin, rule, Reason.STORE_DOWN), "bypass"
        if (hit := self.l1_fresh(d)) is not None:
            if random() < self.auditor.sample:
                self.auditor.offer(d, hit[0], origin)
            return self._from_entry(request, hit[0], "HIT", hit[1], hit[2]), "hit"
        prefetched = getattr(request.protocol, "prefetched", None)  # the fast path's lookup (proxy/serve/fastpath.py)
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
                self._refresh_in_background(d, tokens, origin)
                status = CacheStatus.hit(rule.ttl - verdict.age, "stale-while-revalidate")
                return self._from_entry(request, entry, "STALE", status, verdict.age), "stale"
        filled = await self.fill_miss(d, origin, entry, verdict, tokens)
        if filled is None:
            return await self._bypass(request, origin, rule, Reason.STORE_DOWN), "bypass"
        if filled.fetched is None:
            return self._from_entry(request, entry, "STALE", filled.cache_status, verdict.age), "stale"
        return await self._from_fetched(request, filled.fetched, filled.cache_status), "miss"

    async def fill_miss(self, d: Lookup, origin: Origin, entry: Entry | None, verdict: policy.Verdict,
                        tokens: list, lease: tuple[str, str] | None = None) -> Filled | None:
        """A read the cache could not answer fresh: the fill, or ``entry`` if the backend fails and
        stale-if-error allows it (``Filled.fetched`` None). None: the store is down, nothing was fetched.
        For both request paths (aiohttp's, and proxy/serve/fastpath.py's). ``lease``: the fill's lease, taken
        by the lookup already (``lease_for``); this fill uses it or drops it."""
        rule = d.rule
        if None in tokens:
            try:
                tokens = await self.store.ensure_generations(d.gen_keys, self.gen_ttl)
            except StoreUnavailable:
                return None  # a lease taken expires by itself (lease_ms): the store is failing
        fetched = await self._fill(d, tokens, origin, lease)
        if verdict.usable in ("stale", "on-error") and _is_failure(fetched, rule) \
                and verdict.age < rule.ttl + rule.stale_if_error:
            if fetched.stream is not None:  # a failure with a streamed body: not relayed, so give it back
                fetched.stream[1].release()
            fwd = fetched.error.status if fetched.error else fetched.status
            return Filled(CacheStatus.hit(rule.ttl - verdict.age, "stale-if-error", fwd_status=fwd))
        fwd = "request" if d.revalidate else {"absent": "uri-miss", "expired": "stale"}.get(verdict.reason, "miss")
        return Filled(CacheStatus.miss(fwd, fetched.status, fetched.outcome, fetched.collapsed), fetched)

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
            if verdict.usable == "fresh":  # the staleness auditor's report counts would-be hits too
                self.auditor.shadow_compared(d, entry, tokens, fetched, same, origin)
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

    async def _replace_stale(self, d: Lookup, tokens: list[str], fetched: Fetched) -> str:
        """The staleness auditor found ``d``'s entry stale: store the fresh answer under the fill guard
        (``tokens``: those the stale entry carried) and drop this process's L1 copy; other instances'
        copies end within the rule's ``l1_ttl``."""
        if self.l1 is not None:
            self.l1.discard(d.key)
        return await self._store(d, tokens, fetched)

    async def _fill(self, d: Lookup, tokens: list[str], origin: Origin, lease: tuple[str, str] | None = None
                    ) -> Fetched:
        flight = (d.key, tuple(tokens))
        leader = self.inflight.get(flight)
        if leader is not None and lease is not None:
            # The lease was free when our lookup took it, so this instance's fill of the key holds none:
            # it is waiting for one. Fill under ours; it finds our entry (dropping the lease instead
            # would let another instance fetch as well).
            return await self._fetch_under_lease(d, tokens, origin, lease)
        if leader is not None:
            self.metrics.coalesced.labels(d.rule.name).inc()
            try:
                fetched = await asyncio.wait_for(asyncio.shield(leader), self.config.coalesce_wait)
            except asyncio.TimeoutError:
                fetched = None
            if fetched is None:  # the leader took too long (or failed): fetch, without waiting again
                return await self._fetch(d, tokens, origin, store=False)
            if fetched.shareable:
                return replace(fetched, headers=self._replayable(fetched.headers, d.rule), collapsed=True)
            # The leader's answer was its own: fetch with this request's credentials, as a fill of its
            # own (one per key across instances sharing the store: the leader's lease is free again).
            return await self._fetch_under_lease(d, tokens, origin)
        future = asyncio.get_running_loop().create_future()
        self.inflight[flight] = future
        try:
            fetched = await self._fetch_under_lease(d, tokens, origin, lease)
        except BaseException:
            future.set_result(None)
            raise
        finally:
            del self.inflight[flight]
        if not future.done():
            future.set_result(fetched)
        return fetched

    def lease_for(self, d: Lookup) -> tuple[str, str] | None:
        """A fill lease for ``d`` (lease key, owner token), where other instances share the store. The
        owner token is this fill's own: a release (in the store script or ``drop_lease``) can never drop
        a lease another fill took after ours expired."""
        return (d.key + "|lease", uuid.uuid4().hex) if self.shared_store else None

    def drop_lease(self, lease: tuple[str, str] | None) -> None:
        """Give back a lease this request holds but will not fill under (sent, not awaited)."""
        if lease is not None:
            self._spawn(self._release_lease(lease))

    async def _release_lease(self, lease: tuple[str, str]) -> None:
        try:
            await self.store.release_lease(*lease)
        except StoreUnavailable:
            pass  # it expires by itself

    async def _fetch_under_lease(self, d: Lookup, tokens: list[str], origin: Origin,
                                 lease: tuple[str, str] | None = None) -> Fetched:
        """Across instances sharing a store: one fetch per key under a short lease, the others poll.

        A waiter takes the entry the lease holder stored, or the lease once it is free; a lost or
        expired lease costs at most one extra fetch, never a stuck request (``coalesce_wait`` bounds it).
        ``lease``: taken already, by the lookup.
        """
        if not self.shared_store:
            return await self._fetch(d, tokens, origin, store=True)
        if lease is None:
            lease = self.lease_for(d)
            try:
                leased = await self.store.acquire_lease(*lease, self.config.lease_ms)
            except StoreUnavailable:
                return await self._fetch(d, tokens, origin, store=True)
            if not leased:
                waited = await self._wait_for_lease_holder(d, tokens)
                if isinstance(waited, Fetched):
                    return waited
                if waited is None:  # the wait is over, or the store failed: fetch, unguarded by a lease
                    return await self._fetch(d, tokens, origin, store=True)
                lease = waited
        fetched = None
        try:
            fetched = await self._fetch(d, tokens, origin, store=True, lease=lease)
            return fetched
        finally:
            # "stored" / "generation-changed": store_if_current ran, and dropped the lease with it
            if fetched is None or fetched.outcome not in ("stored", "generation-changed"):
                await self._release_lease(lease)

    async def _wait_for_lease_holder(self, d: Lookup, tokens: list[str]) -> Fetched | tuple[str, str] | None:
        """Another instance holds the fill's lease: poll the store for its entry (a collapsed Fetched),
        or for the lease (returned) once it is free; None after ``coalesce_wait`` or a store failure.

        Where the store can (``leases_with_lookups``), each poll after the first takes the lease only
        if the entry is still the one the previous poll found unusable, atomically: a holder that
        stores and releases between a poll's lookup and its lease never causes a second fetch."""
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + self.config.coalesce_wait, 0.002
        atomic, seen = self.store.leases_with_lookups, _UNSEEN
        while loop.time() < deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
            lease = self.lease_for(d)
            try:
                if atomic and seen is not _UNSEEN:
                    raw, current, leased = await self.store.lookup_or_lease(d.key, d.gen_keys, lease,
                                                                            self.config.lease_ms, seen)
                else:
                    (raw, current), leased = await self.store.lookup(d.key, d.gen_keys), False
                entry = decode_entry(raw)
                if current == list(tokens) and policy.judge(entry, current, d.rule, self.clock()).usable == "fresh":
                    if leased:
                        self.drop_lease(lease)
                    self.metrics.coalesced.labels(d.rule.name).inc()
                    return Fetched(entry.status, CIMultiDict(entry.headers), entry.body, entry.etag, "collapsed",
                                   collapsed=True, storable=True)
                if not atomic and not leased:
                    leased = await self.store.acquire_lease(*lease, self.config.lease_ms)
            except StoreUnavailable:
                return None
            if leased:
                return lease
            seen = raw
        return None

    async def _fetch(self, d: Lookup, tokens: list[str], origin: Origin, store: bool,
                     lease: tuple[str, str] | None = None) -> Fetched:
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
            response = await self.upstream.fetch(origin.path_qs, headers)
        except UpstreamError as exc:
            self.upstream.failures(exc, rule.name, "GET")
            return Fetched(error=exc, outcome="upstream-error")
        self.metrics.upstream_duration.observe(time.perf_counter() - start)
        if streaming.is_event_stream(response.headers):  # SSE: relayed as it comes, never stored
            return Fetched(response.status, strip_hop_by_hop(response.headers), outcome="event-stream",
                           stream=(b"", response))
        try:
            body, complete = await read_limited(response, rule.max_body_bytes)
        except UpstreamError as exc:
            self.upstream.failures(exc, rule.name, "GET")
            return Fetched(error=exc, outcome="upstream-error")
        upstream_headers = strip_hop_by_hop(response.headers)
        if not complete:
            return Fetched(response.status, upstream_headers, outcome="too-large", stream=(body, response))
        refusal = policy.refuse_to_store(rule, response.status, response.headers, body)
        hints = interim.of(response)
        if overran(response):  # bytes beyond Content-Length: relayed up to it, never stored
            self.upstream.failures(overrun_failure(), rule.name, "GET")
            refusal = "framing"
        etag = response.headers.get("ETag") or (content_etag(body) if refusal is None else None)
        fetched = Fetched(response.status, upstream_headers, body, etag, refusal or "", interim=hints,
                          storable=refusal is None)
        if refusal is None and store:
            fetched.outcome = await self._store(d, tokens, fetched, lease)  # counted by _store
            return fetched
        if refusal is None:
            fetched.outcome = "not-stored"
        self.metrics.stores.labels(rule.name, fetched.outcome).inc()
        return fetched

    async def _store(self, d: Lookup, tokens: list[str], fetched: Fetched, lease: tuple[str, str] | None = None) -> str:
        """Guarded write of a fill; with ``lease`` (the fill's), the same store call drops the lease.

        Sent behind the answer (``GuardedStore.write_behind``): a miss's client does not wait for the
        store's round trip. ``stored`` in its Cache-Status means the write was sent under the fill guard;
        the guard refuses it only if a purge landed since the fetch began, which a client cannot tell
        from the entry being stored and purged just after. ``stores_total{outcome}`` counts what the
        store answered (``stored``, ``generation-changed``, ``store-error``)."""
        rule_name = d.rule.name
        if self._purge_pending(d):
            self.metrics.stores.labels(rule_name, "pending-purge").inc()
            return "pending-purge"
        stored_headers = tuple((k, v) for k, v in self._replayable(fetched.headers, d.rule).items())
        entry = Entry(fetched.status, stored_headers, fetched.body, self.clock(), tuple(tokens), d.rule.fingerprint,
                      fetched.etag or content_etag(fetched.body))
        if "no-fill-guard" in self.unsafe:  # test-only: store under whatever generations are current now
            expected = await self.store.ensure_generations(d.gen_keys, self.gen_ttl)
            ok = await self.store.store_if_current(d.key, replace(entry, generations=tuple(expected)).encode(
                                                       compress_from=d.rule.compress_from),
                                                   policy.store_ttl(d.rule), d.gen_keys, expected, self.gen_ttl, lease)
            self.metrics.stores.labels(rule_name, "stored" if ok else "generation-changed").inc()
            return "stored" if ok else "generation-changed"
        write = self.store.write_behind(d.key, entry.encode(compress_from=d.rule.compress_from),
                                        policy.store_ttl(d.rule), d.gen_keys, tokens, self.gen_ttl, lease)
        self.background.add(write)
        write.fill = True  # type: ignore[attr-defined]  # shutdown lets it finish

        def written(task: asyncio.Task) -> None:
            self.background.discard(task)
            failure = None if task.cancelled() else task.exception()
            if task.cancelled() or failure is not None:
                outcome = "store-error"
                if failure is not None and not isinstance(failure, StoreUnavailable):  # GuardedStore logs those
                    log.error("store write failed", exc_info=failure, extra={"event": "store_write_failed"})
            else:
                outcome = "stored" if task.result() else "generation-changed"
            self.metrics.stores.labels(rule_name, outcome).inc()
        write.add_done_callback(written)
        return "stored"

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

    def _refresh_after_purge(self, user_id: str, purged: tuple[str, ...], write: Origin) -> None:
        """``refresh_after_purge``: refetch, in the background, the writer's own recent reads that this
        purge emptied, with the writer's credentials, under the fill guard (``_fill``), a bounded number
        at a time. Each refetch sends the Origin its entry is keyed on (as warming does), not the write's."""
        for read in self.recent_reads.emptied_by(user_id, purged):
            d, path_qs = read.request
            rule = self.rules.by_name(d.rule.name)
            if rule is None or not rule.refresh_after_purge or rule.fingerprint != d.rule.fingerprint:
                continue
            headers = CIMultiDict(write.headers)
            headers.popall("Origin", None)
            if d.origin_field is not None:
                headers["Origin"] = d.origin_field
            origin = replace(write, path_qs=path_qs, headers=headers)
            self._spawn(self._refetch(replace(d, rule=rule), origin)).fill = True  # type: ignore[attr-defined]

    async def _refetch(self, d: Lookup, origin: Origin) -> None:
        async with self.refresh_slots:
            try:  # the generations as they are after the purge: a later purge still wins (fill guard)
                tokens = await self.store.ensure_generations(d.gen_keys, self.gen_ttl)
            except StoreUnavailable:
                return
            self.metrics.refreshes.labels(d.rule.name, "after-purge").inc()
            fetched = await self._fill(d, tokens, origin)
            if fetched.stream is not None:
                fetched.stream[1].release()

    def _note_demand(self, d: Lookup, path_qs: str) -> None:
        count = self.demand.get(d.key, (0, d, path_qs))[0]
        if count == 0 and len(self.demand) >= 10_000:
            return  # bounded: a flood of distinct keys cannot grow this table
        self.demand[d.key] = (count + 1, d, path_qs)

    async def warm_once(self, budget: int = 16, horizon: float = 30.0) -> int:
        """Refresh the most requested entries of ``warm`` rules that expire within ``horizon`` seconds.

        Bounded work: at most ``budget`` refreshes per call. Only rules whose key needs no identity can
        be warmed (the proxy keeps no users' tokens); the request carries ``WARM_AUTHORIZATION`` if set.
        A rule with ``auth: required`` is not warmed without it: the backend would refuse the refresh.
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
            if rule.auth == "required" and not self.config.warm_authorization:
                continue
            try:
                raw, tokens = await self.store.lookup(d.key, d.gen_keys)
            except StoreUnavailable:
                return refreshed
            verdict = policy.judge(decode_entry(raw), tokens, rule, self.clock())
            if verdict.usable != "fresh" or verdict.age < rule.ttl - max(horizon, rule.ttl * 0.1):
                continue
            headers = CIMultiDict({"Accept": "application/json", "traceparent": tracing.new_traceparent()})
            if self.config.warm_authorization:
                headers["Authorization"] = self.config.warm_authorization
            if d.origin_field is not None:  # the key holds it: the refresh must get the answer it keys
                headers["Origin"] = d.origin_field
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
            return web.Response(status=304, headers=not_modified_headers(headers))
        return web.Response(status=entry.status, body=entry.body, headers=headers)

    async def _from_fetched(self, request: web.Request, fetched: Fetched, status: str) -> web.StreamResponse:
        if fetched.error is not None:
            return error_response(fetched.error.status, fetched.error.detail, "MISS", status)
        interim.send_before(request, fetched.interim)
        headers = miss_headers(fetched.headers, fetched.etag, status)
        if fetched.stream is not None:
            prefix, upstream_response = fetched.stream
            return await self._stream(request, upstream_response, headers, prefix)
        if fetched.status == 200 and fetched.etag and etag_matches(request.headers.get("If-None-Match"), headers["ETag"]):
            return web.Response(status=304, headers=not_modified_headers(headers))
        return web.Response(status=fetched.status, body=fetched.body, headers=headers)

    async def _bypass(self, request: web.Request, origin: Origin, rule, reason: Reason) -> web.StreamResponse:
        self.metrics.bypasses.labels(rule.name if rule else "none", reason.value).inc()
        return await self._pass_through(request, origin, CacheStatus.bypass(reason.value))

    # ------------------------------------------------------------------------------ writes

    async def _write(self, request: web.Request, d: Write, origin: Origin, identity: Identity | None) -> web.StreamResponse:
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
            response = await self.upstream.send(request.method, origin.path_qs, headers, body)
        except UpstreamError as exc:
            self.upstream.failures(exc, rule_name, request.method)
            await self.purge(*policy.purges_after(d, self.rules, None, None))  # it may have committed
            return error_response(exc.status, exc.detail, "BYPASS", status)
        self.auditor.note_write(identity, request.method, origin.path_qs, d.rule, response.status)
        prefix, answer = b"", None  # answer: the whole body, when it was read to judge the envelope
        if policy.reads_answer(d, self.rules, response.status) and not streaming.is_event_stream(response.headers):
            try:
                prefix, complete = await read_limited(response, WRITE_ANSWER_PEEK)
            except UpstreamError as exc:  # the connection was lost mid-answer: the outcome is unknown
                self.upstream.failures(exc, rule_name, request.method)
                await self.purge(*policy.purges_after(d, self.rules, None, None))
                return error_response(exc.status, exc.detail, "BYPASS", status)
            answer = prefix if complete else None  # larger: its envelope is unread, so the outcome unknown
        gen_keys, label = policy.purges_after(d, self.rules, response.status, answer)
        if self.rules.http_cache.enabled:  # §4.4 for the HTTP cache's entries, whether or not a rule matched
            gen_keys += httpserve.invalidation_keys(self, request, response.status, response.headers)
        if "release-before-purge" in self.unsafe:  # test-only: the ordering bug the checker must catch
            answer_out = await self._stream(request, response, self._pass_headers(response, status), prefix)
            await self.purge(gen_keys, label)
            return answer_out
        await self.purge(gen_keys, label)
        if identity is not None and gen_keys:
            self._refresh_after_purge(identity.user_id, gen_keys, origin)
        if d.rule is not None and d.rule.repurge_after and gen_keys:
            self._spawn(self._repurge(gen_keys, label, d.rule.repurge_after))
        return await self._stream(request, response, self._pass_headers(response, status), prefix)

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
            self.upstream.failures(exc, "none", request.method)
            return error_response(exc.status, exc.detail, "BYPASS", cache_status)
        self.metrics.upstream_duration.observe(time.perf_counter() - start)
        return await self._stream(request, response, self._pass_headers(response, cache_status))

    async def _stream(self, request: web.Request, response: aiohttp.ClientResponse, headers: CIMultiDict,
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
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.upstream.failures(body_failure(exc), "none", request.method)  # counted, logged (rate-limited)
            if request.transport is not None:
                request.transport.close()
        finally:
            response.release()
        return out

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


def build_app(config: Config, rules: Rules | None = None, store=None, metrics: Metrics | None = None,
              unsafe: frozenset[str] = frozenset()) -> web.Application:
    """The proxy as an aiohttp application; the store and upstream session open in ``cleanup_ctx``."""
    rules = rules or load_rules(config.rules_path)
    metrics = metrics or Metrics()
    app = web.Application(client_max_size=config.max_write_body, handler_args=dict(fastpath.AIOHTTP_LIMITS))
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
        proxy._spawn(_flush_metrics(metrics))
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

    async def point_at_client(request: web.Request, response: web.StreamResponse) -> None:
        proxy.point_at_client(response.headers, request.headers, request.scheme)

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(point_at_client)  # every answer of aiohttp's path (fastpath.py: its own)
    # Tracing (proxy/serve/tracing.py) is decided here, once: off, nothing on the request path changes.
    app.router.add_route("*", "/{tail:.*}", tracing.instrument(proxy) if tracing.ENABLED else proxy.handle)
    if config.fast_path and not tracing.ENABLED:  # traced, every request takes aiohttp's path
        fastpath.install(app, proxy)
    return app


async def _flush_metrics(metrics: Metrics, interval: float = 1.0) -> None:
    """Per-request figures are tallied in memory (proxy/core/metrics.py); other workers' scrapes see them
    within ``interval``. A scrape of this process flushes first, and so does shutdown."""
    try:
        while True:
            await asyncio.sleep(interval)
            metrics.tally.flush()
    finally:
        metrics.tally.flush()


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
