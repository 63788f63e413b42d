"""The admin listener (``--admin-listen HOST:PORT`` / ``ADMIN_LISTEN``).

When set, ``/metrics``, ``/healthz``, ``/readyz`` and ``/_cache/*`` (explain, stats, purge, audit) are served on
their own port by this application, and on the public port those paths go to the backend like any other
path (``Endpoints.internal``). Point probes and Prometheus at the admin port and expose only the public one.
Without it (the default) they are answered on the public port: then keep them private at the load
balancer or ingress (docs/OPERATIONS.md, "Keep the admin paths private").

The manual invalidation endpoints (``/api/v1/.../cache/invalidate``) stay on the public port: users call
them with their own tokens. Requests on the admin port are not subject to ``MAX_INFLIGHT``.
"""
from __future__ import annotations

from aiohttp import web


def build_admin_app(proxy) -> web.Application:
    """An application serving ``proxy``'s admin paths; anything else is 404 (never forwarded)."""
    app = web.Application()

    async def handle(request: web.Request) -> web.StreamResponse:
        handler = proxy.endpoints.admin_handler(request.raw_path.partition("?")[0])
        if handler is None:
            return web.json_response({"detail": "Not Found: the admin port serves /metrics, /healthz, /readyz "
                                                "and /_cache/*"}, status=404)
        return await handler(request)

    app.router.add_route("*", "/{tail:.*}", handle)
    return app
