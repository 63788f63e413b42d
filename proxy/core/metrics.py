"""Prometheus metrics, all under ``katiba_cache_``, held in a registry the caller hands in.

Labels are rule names and small enums only, never paths, keys or user ids. With ``--workers N`` the
CLI sets ``PROMETHEUS_MULTIPROC_DIR`` so one scrape sees every worker (prometheus-client's multiprocess
mode); ``render`` then aggregates from that directory.

The per-request figures (requests, responses, request and store-lookup durations, fast-path answers)
go through a ``Tally``: plain Python counts on the request path, added to their Prometheus children in
bulk by ``flush``. A labelled ``inc`` or ``observe`` costs about a microsecond behind its lock, a tenth
of a whole cache hit. ``render`` flushes first, so a scrape of this process is exact; the server also
flushes every second, so with ``--workers N`` a scrape lags the other workers by at most that.
"""
from __future__ import annotations

import os
from bisect import bisect_left
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class Tally:
    """Increments and observations of Prometheus children, held until ``flush`` (module doc)."""

    def __init__(self) -> None:
        self.counts: dict[Any, int] = {}  # counter child -> increments
        self.observed: dict[Any, list] = {}  # histogram child -> [per-bucket counts..., sum]

    def inc(self, child) -> None:
        counts = self.counts
        counts[child] = counts.get(child, 0) + 1

    def observe(self, child, amount: float) -> None:
        pending = self.observed.get(child)
        if pending is None:
            pending = self.observed[child] = [0] * (len(child._upper_bounds) + 1)
        pending[bisect_left(child._upper_bounds, amount)] += 1  # the first bound >= amount, as observe()
        pending[-1] += amount

    def flush(self) -> None:
        counts, self.counts = self.counts, {}
        for child, n in counts.items():
            child.inc(n)
        observed, self.observed = self.observed, {}
        for child, pending in observed.items():
            # prometheus_client's Histogram.observe, in bulk: its _sum and _buckets values
            # (tests/unit/test_metrics_tally.py compares the two, so a change there fails loudly).
            child._sum.inc(pending[-1])
            for bucket, n in zip(child._buckets, pending):
                if n:
                    bucket.inc(n)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple, tuple] = {}
        self.tally = Tally()
        r = self.registry
        self.requests = Counter("katiba_cache_requests_total", "Requests by rule and cache result",
                                ["rule", "result"], registry=r)
        self.bypasses = Counter("katiba_cache_bypass_total", "Bypassed requests by rule and reason",
                                ["rule", "reason"], registry=r)
        self.responses = Counter("katiba_cache_responses_total", "Responses by status class",
                                 ["status_class"], registry=r)
        self.request_duration = Histogram("katiba_cache_request_duration_seconds",
                                          "Time to answer a request, by cache result", ["result"],
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_requests = Counter("katiba_cache_upstream_requests_total", "Requests sent to the backend",
                                         ["rule"], registry=r)
        self.upstream_errors = Counter("katiba_cache_upstream_errors_total", "Backend failures by kind",
                                       ["kind"], registry=r)
        self.upstream_duration = Histogram("katiba_cache_upstream_duration_seconds",
                                           "Backend time to response headers", buckets=LATENCY_BUCKETS, registry=r)
        self.store_duration = Histogram("katiba_cache_store_duration_seconds", "Store operation latency",
                                        ["op"], buckets=STORE_BUCKETS, registry=r)
        self.store_errors = Counter("katiba_cache_store_errors_total", "Store failures and timeouts",
                                    ["op"], registry=r)
        self.stores = Counter("katiba_cache_stores_total", "Fill outcomes: stored, or why not",
                              ["rule", "outcome"], registry=r)
        self.purges = Counter("katiba_cache_purges_total", "Purges applied, by rule", ["rule"], registry=r)
        self.purge_failures = Counter("katiba_cache_purge_failures_total",
                                      "Purges the store did not accept in time (kept and retried)", registry=r)
        self.pending_purges = Gauge("katiba_cache_pending_purges", "Namespaces waiting for a purge to land",
                                    registry=r, multiprocess_mode="livesum")
        self.coalesced = Counter("katiba_cache_coalesced_waiters_total",
                                 "Requests that waited for another request's fill", ["rule"], registry=r)
        self.circuit_state = Gauge("katiba_cache_circuit_state",
                                   "Store circuit breaker: 0 closed, 1 half-open, 2 open", registry=r,
                                   multiprocess_mode="max")
        self.store_usable = Gauge("katiba_cache_store_usable",
                                  "1 while reads use the store; 0 while it is unreachable or being re-verified "
                                  "(requests go to the backend)", registry=r, multiprocess_mode="min")
        self.evictions = Gauge("katiba_cache_evictions", "Entries evicted by the memory store's byte budget",
                               registry=r, multiprocess_mode="livesum")
        self.store_entries = Gauge("katiba_cache_store_entries", "Entries in the store", registry=r,
                                   multiprocess_mode="max")
        self.store_bytes = Gauge("katiba_cache_store_bytes", "Bytes used by the store (Redis used_memory)",
                                 registry=r, multiprocess_mode="max")
        self.memo_bytes = Gauge("katiba_cache_memo_bytes",
                                "Estimated bytes held by the memos of per-request work, by memo (heads, decisions, "
                                "routes, entries); together at most MEMO_MAX_BYTES", ["memo"], registry=r,
                                multiprocess_mode="livesum")
        # The in-process L1 (proxy/store/l1.py), reported from its own counts by ``report_l1``.
        self.l1_entries = Gauge("katiba_cache_l1_entries", "Entries held by the in-process L1 (rules with l1_ttl)",
                                registry=r, multiprocess_mode="livesum")
        self.l1_bytes = Gauge("katiba_cache_l1_bytes", "Bytes held by the in-process L1, as its budget L1_MAX_BYTES "
                              "counts them", registry=r, multiprocess_mode="livesum")
        self.l1_lookups = Counter("katiba_cache_l1_lookups_total", "In-process L1 lookups by result (hit; miss: "
                                  "absent or past its l1_ttl, then asked of the store)", ["result"], registry=r)
        self.l1_evictions = Counter("katiba_cache_l1_evictions_total", "Entries dropped from the in-process L1 by "
                                    "reason: budget (L1_MAX_BYTES), expired (l1_ttl), invalidated (a purge's "
                                    "message), flushed (invalidations may have been lost)", ["reason"], registry=r)
        self.l1_renewals = Counter("katiba_cache_l1_renewals_total", "In-process L1 copies past their l1_ttl "
                                   "renewed because the store still held the same entry under the same "
                                   "generations (a store round trip, no decoding)", registry=r)
        self._l1_reported: dict[tuple[str, str], int] = {}
        self.gc_pause = Histogram("katiba_cache_gc_pause_seconds",
                                  "Pauses of Python's garbage collector in this process, by generation (1: paced "
                                  "every GC_PACE_INTERVAL; 2: full, every GC_FULL_INTERVAL)", ["generation"],
                                  buckets=GC_BUCKETS, registry=r)
        self.epoch_bumps = Counter("katiba_cache_epoch_bumps_total",
                                   "Global epoch bumps (purge --all, or purges that may have been lost)", registry=r)
        self.reloads = Counter("katiba_cache_reloads_total", "Rules reloads by result", ["result"], registry=r)
        self.shadow = Counter("katiba_cache_shadow_total", "Shadow mode outcomes by rule",
                              ["rule", "outcome"], registry=r)
        self.audits = Counter("katiba_cache_audit_total",
                              "Staleness audits of cache hits (and shadow mode's would-be hits) by read rule and "
                              "result: match, mismatch (the entry was stale: replaced), skipped (a purge raced "
                              "the fetch, or the backend's answer was not storable)", ["rule", "result"], registry=r)
        self.refreshes = Counter("katiba_cache_background_refreshes_total",
                                 "Background refreshes (stale-while-revalidate, warming, after a purge)", ["rule", "kind"],
                                 registry=r)
        self.fast_path = Counter("katiba_cache_fast_path_total",
                                 "Requests on fast-path connections (proxy/serve/fastpath.py): answered there (reads of "
                                 "cached routes, hit or miss), or handed to the full path; released counts connections handed "
                                 "over for good (a request it does not frame itself)", ["outcome"], registry=r)
        # Production hardening: overload refusals, and per-arm figures of rules with a partial rollout.
        self.overload = Counter("katiba_cache_overload_total",
                                "Requests refused with 503 because a limit was reached (inflight: MAX_INFLIGHT; "
                                "upstream: MAX_UPSTREAM)", ["limit"], registry=r)
        self.rollout_requests = Counter("katiba_cache_rollout_requests_total",
                                        "Requests of rules with rollout < 100, by arm (cached: inside the "
                                        "rollout; uncached: outside) and status class", ["rule", "arm", "status_class"],
                                        registry=r)
        self.rollout_duration = Histogram("katiba_cache_rollout_request_duration_seconds",
                                          "Time to answer requests of rules with rollout < 100, by arm",
                                          ["rule", "arm"], buckets=LATENCY_BUCKETS, registry=r)

    def count_arm(self, rule: str, arm: str, status: int, seconds: float) -> None:
        self.rollout_requests.labels(rule, arm, f"{status // 100}xx").inc()
        self.rollout_duration.labels(rule, arm).observe(seconds)

    def count_request(self, rule: str, result: str, status: int, seconds: float) -> None:
        """The three per-request metrics, through cached label children (``labels()`` is not free)."""
        children = self._children.get((rule, result, status))
        if children is None:
            children = self._children[(rule, result, status)] = (
                self.requests.labels(rule, result), self.responses.labels(f"{status // 100}xx"),
                self.request_duration.labels(result))
        tally = self.tally
        tally.inc(children[0])
        tally.inc(children[1])
        tally.observe(children[2], seconds)

    def report_l1(self, counts: dict) -> None:
        """Bring the ``katiba_cache_l1_*`` metrics up to ``L1Cache.counts()``; its counts only grow, so the
        counters get what grew since the last report."""
        self.l1_entries.set(counts["entries"])
        self.l1_bytes.set(counts["bytes"])
        totals = {("lookups", "hit"): counts["hits"], ("lookups", "miss"): counts["misses"],
                  ("renewals", ""): counts["renewed"],
                  **{("evictions", reason): n for reason, n in counts["evicted"].items()}}
        counters = {"lookups": self.l1_lookups, "renewals": self.l1_renewals, "evictions": self.l1_evictions}
        for (family, label), total in totals.items():
            grown = total - self._l1_reported.get((family, label), 0)
            if grown > 0:
                counter = counters[family]
                (counter.labels(label) if label else counter).inc(grown)
                self._l1_reported[(family, label)] = total

    def families(self) -> dict[str, Any]:
        """Every metric family by name (``katiba_cache_requests``, ...), as a scrape of ``/metrics`` sees
        it: with ``--workers N``, summed over all the workers (multiprocess mode), not this one's alone."""
        self.tally.flush()
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)
            return {family.name: family for family in registry.collect()}
        return {family.name: family for family in self.registry.collect()}

    def render(self) -> bytes:
        self.tally.flush()
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)
            return generate_latest(registry)
        return generate_latest(self.registry)
