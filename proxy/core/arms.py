"""Rollout arms: which side of a rule's ``rollout`` a request fell on, for per-arm metrics.

For a rule with ``rollout`` < 100, ``katiba_cache_rollout_requests_total{rule,arm,status_class}`` and
``katiba_cache_rollout_request_duration_seconds{rule,arm}`` let operators compare the latency and error
rate of the cached arm (requests inside the rollout: hits, misses, stale answers, and those the store
could not serve) with the uncached arm (requests the rollout sent straight to the backend). Requests that
belong to neither (no token, an unkeyed query parameter, shadow mode) are not counted there.
"""
from __future__ import annotations

_CACHED_RESULTS = frozenset({"hit", "miss", "stale"})
_CACHED_BYPASS = ("detail=store-unavailable", "detail=pending-purge")


def rollout_arm(result: str, cache_status: str) -> str | None:
    if result in _CACHED_RESULTS:
        return "cached"
    if cache_status.endswith("detail=rollout"):
        return "uncached"
    if cache_status.endswith(_CACHED_BYPASS):
        return "cached"
    return None
