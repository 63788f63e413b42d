"""Overload protection: refuse early and cheaply instead of queueing without bound.

Two limits, both answered ``503`` with ``Retry-After`` and ``{"detail": ...}`` like every proxy-made error:

* ``MAX_INFLIGHT`` (``Gate``): requests this process handles at once, hits included. Above it a request is
  refused before anything else is done for it. The health, readiness, metrics and ``/_cache/*`` paths
  are never refused (a balancer must be able to see an overloaded instance; on the admin listener they
  are not counted at all).
* ``MAX_UPSTREAM`` (``proxy.upstream._Slots``): requests sent to the backend at once, streams included.
  A request waits at most ``UPSTREAM_QUEUE_TIMEOUT`` seconds for a free slot, then gets the 503. Hits
  need no slot, so the cache keeps answering while the backend is saturated; concurrent misses of one key
  share one fetch (one slot).

The manual invalidation endpoints and ``/_cache/*`` also have a per-client rate limit
(``ADMIN_RATE_LIMIT``, ``wire.RateLimiter``): 429 with ``Retry-After``.
"""
from __future__ import annotations

from aiohttp import web

from .wire import CacheStatus

RETRY_AFTER = "1"
ADMIN_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


def wants_admin_exemption(raw_path: str) -> bool:
    path = raw_path.partition("?")[0]
    return path in ADMIN_PATHS or path.startswith("/_cache/")


class Gate:
    """Counts requests in flight; ``admit`` refuses above ``limit`` (0: no limit)."""

    def __init__(self, limit: int, metrics, admin_paths_public: bool = True):
        self.limit = limit
        self.metrics = metrics
        self.admin_paths_public = admin_paths_public  # False with an admin listener: no exemption here
        self.inflight = 0
        self.peak = 0

    @property
    def full(self) -> bool:
        """As many requests in flight as ``limit`` allows (never, without a limit)."""
        return bool(self.limit) and self.inflight >= self.limit

    def admit(self, raw_path: str) -> bool:
        if self.full and not (self.admin_paths_public and wants_admin_exemption(raw_path)):
            self.metrics.overload.labels("inflight").inc()
            self.metrics.count_request("none", "rejected", 503, 0.0)
            return False
        self.enter()
        return True

    def enter(self) -> None:
        """Count a request in flight; the fast path calls it directly, having checked ``full`` itself."""
        self.inflight += 1
        if self.inflight > self.peak:
            self.peak = self.inflight

    def leave(self) -> None:
        self.inflight -= 1

    @staticmethod
    def reject() -> web.Response:
        return web.json_response({"detail": "overloaded: too many requests in flight; retry shortly"},
                                 status=503, headers={"Retry-After": RETRY_AFTER, "X-Cache": "BYPASS",
                                                      "Cache-Status": CacheStatus.bypass("overload")})
