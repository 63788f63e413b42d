"""The endpoints the proxy answers itself: /metrics, /healthz, /readyz and the manual invalidation routes
(``/_cache/*`` live in ``explain.py``). A mixin of ``server.Proxy``.
"""
from __future__ import annotations

import hmac
import logging
import time
import uuid

import orjson
from aiohttp import web

from .core import policy
from .core.errors import StoreUnavailable
from .core.identity import bearer_token
from .core.keys import assemble, escape_value
from .wire import BodyTooLarge, mask_gen_key, read_body

log = logging.getLogger("proxy")

USER_INVALIDATE = "/api/v1/users/cache/invalidate"
ACHIEVEMENTS_INVALIDATE = "/api/v1/achievements/cache/invalidate"
GLOBAL_INVALIDATE = "/api/v1/achievements/cache/invalidate/global"


class EndpointsMixin:

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
        if raw_path.startswith("/_cache/"):  # explain, stats, purge, audit (admin only): see proxy/explain.py
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
