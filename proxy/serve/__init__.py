"""Serving: the aiohttp application, the fast path, and the one request-path object both of them call.

Owns ``build_app`` (app.py), the request path (requestpath.py: gate, classify, then read, fill, write or
pass through) and the collaborators it is composed of (coalescing and leases, fills, the purger, the
store watch, the warmer, shadow mode, pass-through, background tasks), the RFC 9111 cache for unruled
routes (httpserve.py), the fast path for fresh hits (fastpath.py, fastread.py, framing.py), the proxy's
own endpoints, the staleness auditor at run time, tracing and the run-time ``Config``. It may import
``proxy.store``, ``proxy.upstream`` and ``proxy.core``, never ``proxy.ops``.
"""
