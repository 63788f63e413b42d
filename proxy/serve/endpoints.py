"""The endpoints the proxy answers itself: /metrics, /healthz, /readyz, the manual invalidation routes
and the operator endpoints under ``/_cache/``. ``Endpoints`` answers them for the request path.

The ``/_cache/*`` endpoints (``ENDPOINTS``, looked up by ``Endpoints.admin_handler``) all need the admin credential
``Authorization: Bearer <CACHE_ADMIN_TOKEN>`` (401 without a credential, 403 with any other):

* ``GET /_cache/explain?method=GET&url=/api/v1/users/profile[&user_id=ID]`` (or the caller's token in
  ``X-Explain-Token``): ``explain`` plus one ``store.lookup`` of the entry; the user id is masked in the
  key and the identity, as offline.
* ``GET /_cache/stats``: requests per rule and result with the hit rate, shadow mode's would-be answers,
  purges, reloads (the whole instance's counters: every worker's with ``--workers N``) and the store's own
  figures (entries, bytes, evictions).
* ``GET /_cache/audit``: the staleness auditor's report (this process's audits): per read rule the audits
  and their results, and the purges the write rules seem to miss (``audit.AuditBook.report``).
* ``POST /_cache/purge`` ``{"pattern": "user:{ID}:*"}`` or ``{"all": true}``: validated like
  ``cache-proxy purge`` (an exact key or a declared namespace followed by ``:*``), else 400 listing the
  declared namespaces, and the braced form to type for ``user:123:*`` (``suggest_pattern``).
"""
from __future__ import annotations

import functools
import hmac
import logging
import math
import time
import uuid
from typing import Any, Mapping

import orjson
from aiohttp import web

from ..core import memo, policy
from ..core.entry import decode_entry
from ..core.errors import StoreUnavailable
from ..core.explain import EntryState, declared_patterns, decide, explain, refusal, render_pattern
from ..core.identity import Identity, bearer_token, identify
from ..core.keys import assemble, escape_value
from ..core.policy import Lookup
from ..core.rules import Rules
from .wire import BodyTooLarge, mask_gen_key, read_body

log = logging.getLogger("proxy")

USER_INVALIDATE = "/api/v1/users/cache/invalidate"
ACHIEVEMENTS_INVALIDATE = "/api/v1/achievements/cache/invalidate"
GLOBAL_INVALIDATE = "/api/v1/achievements/cache/invalidate/global"


class Endpoints:
    """Answers the proxy's own routes for ``path``, the request path (proxy/serve/requestpath.py): its
    store, metrics, rules, purger and store watch are the ones these endpoints report on and act with."""

    def __init__(self, path):
        self.path = path

    def internal(self, method: str, raw_path: str):
        if raw_path in (USER_INVALIDATE, ACHIEVEMENTS_INVALIDATE, GLOBAL_INVALIDATE):
            return self._invalidate
        if self.path.config.admin_listen is None:  # else they live on the admin port; here they are backend paths
            return self.admin_handler(raw_path)
        return None

    def admin_handler(self, raw_path: str):
        """/metrics, /healthz, /readyz and /_cache/* (the admin listener serves these: proxy/ops/admin.py)."""
        if raw_path in ("/metrics", "/healthz", "/readyz"):
            return {"/metrics": self._metrics, "/healthz": self._healthz, "/readyz": self._readyz}[raw_path]
        if raw_path.startswith("/_cache/"):  # explain, stats, purge, audit (admin only): see proxy/core/explain.py
            handler = ENDPOINTS.get(raw_path)
            if handler is not None:
                return lambda request: handler(self.path, request)
        return None

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            stats = await self.path.store.stats()
        except StoreUnavailable:
            stats = {}
        if "entries" in stats:
            self.path.metrics.store_entries.set(stats["entries"])
        if "bytes" in stats:
            self.path.metrics.store_bytes.set(stats["bytes"])
        if "evictions" in stats:
            self.path.metrics.evictions.set(stats["evictions"])
        for name, held in memo.usage().items():
            self.path.metrics.memo_bytes.labels(name).set(held)
        if self.path.l1 is not None:
            self.path.metrics.report_l1(self.path.l1.counts())
        return web.Response(body=self.path.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        from ..store.guard import STATE_NAMES
        path = self.path
        ready = path.ready and path.upstream.answered  # REQUIRE_UPSTREAM_AT_START: not before it answered
        body = {"ready": ready, "store": path.store.name, "circuit": STATE_NAMES[path.store.breaker.state],
                "store_usable": path.store_watch.cache_usable, "pending_purges": len(path.purger.pending),
                "mode": path.mode, "upstream_answered": path.upstream.answered}
        return web.json_response(body, status=200 if ready else 503)

    async def _invalidate(self, request: web.Request) -> web.Response:
        path = request.raw_path.partition("?")[0]
        if request.method != "POST":
            return web.json_response({"detail": "Method Not Allowed"}, status=405, headers={"Allow": "POST"})
        authorization = request.headers.get("Authorization", "")
        token = bearer_token(authorization)
        is_admin = bool(self.path.config.admin_token and token and hmac.compare_digest(
            token.encode(), self.path.config.admin_token.encode()))
        # Limited per client address, the admin credential excepted (as on /_cache/*): behind a load
        # balancer every client shares one address, and a flood must not lock the operator out.
        retry_after = 0 if is_admin else self.path.admin_limiter.take(request.remote or "unknown")
        if retry_after:
            return web.json_response({"detail": "Too many invalidation requests"}, status=429,
                                     headers={"Retry-After": str(retry_after)})
        identity = None
        if not is_admin:
            identity, error = identify(self.path.verifier, authorization)
            if identity is None:
                return web.json_response({"detail": "Not authenticated"}, status=401,
                                         headers={"WWW-Authenticate": "Bearer"})
        try:
            raw = await read_body(request, 64 << 10)
            document = orjson.loads(raw) if raw.strip() else {}
        except (BodyTooLarge, orjson.JSONDecodeError):
            return web.json_response({"detail": "body must be a JSON object"}, status=422)
        if not isinstance(document, dict):
            return web.json_response({"detail": "body must be a JSON object"}, status=422)
        if path == GLOBAL_INVALIDATE:
            if not is_admin:
                return web.json_response({"detail": "admin credential required: a user's token cannot purge the "
                                                    "global achievements"}, status=403)
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
        gen_keys = tuple(policy.namespace_gen_key(self.path.rules.prefix, ns) for ns in stored)
        caller = "admin" if is_admin else f"user:…{identity.user_id[-4:]}"
        ok = await self.path.purger.purge(gen_keys, "manual", caller=caller)
        log.info("manual invalidation", extra={"event": "audit_invalidate", "caller": caller,
                                                "namespaces": [mask_gen_key(g, self.path.rules.prefix)
                                                               for g in gen_keys],
                                                "applied": ok})
        body = {"header": {"requestRefId": str(uuid.uuid4()), "responseCode": 200,
                           "responseMessage": "Cache invalidated" if ok else "Invalidation pending",
                           "customerMessage": "Cache invalidated",
                           "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                "body": {"invalidated": [f"{ns}:*" for ns in namespaces], "applied": ok}}
        return web.json_response(body)


EXPLAIN_PATH, STATS_PATH, PURGE_PATH = "/_cache/explain", "/_cache/stats", "/_cache/purge"
AUDIT_PATH = "/_cache/audit"
RESULTS = ("hit", "stale", "miss", "bypass")


def rule_counts(metrics, rules: Rules | None = None, families: Mapping[str, Any] | None = None
                ) -> dict[str, dict[str, Any]]:
    """Requests per rule and result from ``katiba_cache_requests_total``, with the hit rate.

    hit_rate = (hit + stale) / every request of the rule, bypasses included. Every read rule of
    ``rules`` is listed, with zeros if it saw no request; the proxy's own endpoints are left out.
    ``families``: ``Metrics.families()`` (every worker's figures), read once by the caller.
    """
    families = metrics.families() if families is None else families
    counts: dict[str, dict[str, float]] = {}
    if rules is not None:
        for rule in rules.rules:
            if rule.key is not None:
                counts[rule.name] = {}
    for labels, value in _samples(families, "katiba_cache_requests"):
        if labels.get("rule") == "internal":
            continue
        row = counts.setdefault(labels["rule"], {})
        row[labels["result"]] = row.get(labels["result"], 0) + value
    out = {}
    for name, row in counts.items():
        values = {r: int(row.get(r, 0)) for r in RESULTS}
        total = sum(values.values())
        out[name] = {**values, "requests": total,
                     "hit_rate": round((values["hit"] + values["stale"]) / total, 4) if total else None}
    return out


def shadow_counts(families: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Shadow mode's outcomes per rule (``katiba_cache_shadow_total``): would-hit-match, would-miss, ..."""
    out: dict[str, dict[str, int]] = {}
    for labels, value in _samples(families, "katiba_cache_shadow"):
        if value:
            row = out.setdefault(labels["rule"], {})
            row[labels["outcome"]] = row.get(labels["outcome"], 0) + int(value)
    return out


def _samples(families: Mapping[str, Any], name: str):
    family = families.get(name)
    for sample in family.samples if family is not None else ():
        if sample.name.endswith("_total"):
            yield sample.labels, sample.value


def _gauge(families: Mapping[str, Any], name: str, default: int) -> int:
    family = families.get(name)
    return int(sum(s.value for s in family.samples)) if family is not None and family.samples else default


def _labelled(families: Mapping[str, Any], name: str, label: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for labels, value in _samples(families, name):
        key = labels.get(label, "") if label else ""
        out[key] = out.get(key, 0) + int(value)
    return out


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None):
    from aiohttp import web

    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def _refuse(proxy, request):
    """None for the admin credential, else the 401/403/429 answer (constant-time compare, before any JWT)."""
    token = bearer_token(request.headers.get("Authorization"))
    admin = proxy.config.admin_token
    if admin and token and hmac.compare_digest(token.encode(), admin.encode()):
        return None
    retry_after = proxy.admin_limiter.take(request.remote or "unknown")
    if retry_after:
        return _json({"detail": "Too many requests"}, 429, {"Retry-After": str(retry_after)})
    if not admin:
        return _json({"detail": "admin endpoints are off: set CACHE_ADMIN_TOKEN"}, 403)
    if token is None:
        return _json({"detail": "Not authenticated"}, 401, {"WWW-Authenticate": "Bearer"})
    return _json({"detail": "admin credential refused: the bearer token sent is not the admin token "
                            "(CACHE_ADMIN_TOKEN)"}, 403)


def _method(request, *allowed: str):
    if request.method in allowed:
        return None
    return _json({"detail": "Method Not Allowed"}, 405, {"Allow": ", ".join(allowed)})


def admin_only(*methods: str):
    """An operator endpoint: 405 for other methods, then the admin credential (``_refuse``) before it runs."""
    def wrap(handler):
        @functools.wraps(handler)
        async def guarded(proxy, request):
            refused = _method(request, *methods) or _refuse(proxy, request)
            return refused if refused is not None else await handler(proxy, request)
        return guarded
    return wrap


@admin_only("GET")
async def explain_endpoint(proxy, request):
    query = request.query
    url = query.get("url", "")
    method = query.get("method", "GET").upper()
    if not url or not (url.startswith("/") or "://" in url):
        return _json({"detail": "give url=/path?query (and method=, default GET)"}, 422)
    if query.get("user_id"):
        identity_or_error: Identity | str | None = Identity(query["user_id"], math.inf)
    else:
        token = request.headers.get("X-Explain-Token") or query.get("token")
        identity, error = identify(proxy.verifier, f"Bearer {token}" if token else None)
        identity_or_error = identity if identity is not None else error
    identity = identity_or_error if isinstance(identity_or_error, Identity) else None
    rules = proxy.rules
    decision = decide(rules, method, url, identity, identity_or_error if isinstance(identity_or_error, str) else None)
    state = None
    if isinstance(decision, Lookup):
        pending = proxy.purger.pending_for(decision.gen_keys)
        if not proxy.store_watch.cache_usable:  # the store watch has reads bypass the store
            state = EntryState(store_error="unreachable, or not verified again yet", pending_purge=pending)
        else:
            try:
                raw, tokens = await proxy.store.lookup(decision.key, decision.gen_keys)
                state = EntryState(decode_entry(raw), tuple(tokens), pending)
            except StoreUnavailable as exc:
                state = EntryState(store_error=str(exc), pending_purge=pending)
    # masked as offline: an explain answer gets pasted into tickets and chats
    result = explain(rules, method, url, identity_or_error, state, is_admin=False, now=proxy.clock(),
                     mode=proxy.mode)
    return _json(result)


@admin_only("GET")
async def stats_endpoint(proxy, request):
    try:
        store = {"name": proxy.store.name, **(await proxy.store.stats())}
    except StoreUnavailable as exc:
        store = {"name": proxy.store.name, "error": str(exc)}
    families = proxy.metrics.families()  # with --workers N: all of them, as /metrics shows
    body = {
        "mode": proxy.mode,
        "rules_file": proxy.config.rules_path,
        "rules": rule_counts(proxy.metrics, proxy.rules, families),
        "shadow": shadow_counts(families),
        "purges": _labelled(families, "katiba_cache_purges", "rule"),
        "purge_failures": _labelled(families, "katiba_cache_purge_failures", "").get("", 0),
        "pending_purges": _gauge(families, "katiba_cache_pending_purges", len(proxy.purger.pending)),
        "store_errors": _labelled(families, "katiba_cache_store_errors", "op"),
        "reloads": {"success": 0, "failure": 0, **_labelled(families, "katiba_cache_reloads", "result")},
        "store": store,
    }
    return _json(body)


@admin_only("POST")
async def purge_endpoint(proxy, request):
    try:
        raw = await request.content.read(64 << 10)
        document = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        document = None
    if not isinstance(document, dict):
        return _json({"detail": 'body must be a JSON object: {"pattern": "..."} or {"all": true}'}, 422)
    rules = proxy.rules
    if document.get("all") is True:
        gen_keys, shown = (policy.epoch_key(rules.prefix),), "*"
    else:
        pattern = document.get("pattern")
        rendered = render_pattern(pattern, rules) if isinstance(pattern, str) else None
        if rendered is None:
            return _json({"detail": refusal(pattern, rules), "namespaces": declared_patterns(rules)}, 400)
        gen_keys, shown = (policy.namespace_gen_key(rules.prefix, rendered),), pattern
    applied = await proxy.purger.purge(gen_keys, "manual", caller="admin")
    if shown == "*" and applied:
        proxy.metrics.epoch_bumps.inc()
    log.info("manual purge", extra={"event": "audit_purge", "caller": "admin", "all": shown == "*",
                                    "applied": applied})
    return _json({"purged": shown, "applied": applied})


@admin_only("GET")
async def audit_endpoint(proxy, request):
    return _json(proxy.auditor.report())
ENDPOINTS = {EXPLAIN_PATH: explain_endpoint, STATS_PATH: stats_endpoint, PURGE_PATH: purge_endpoint,
             AUDIT_PATH: audit_endpoint}
