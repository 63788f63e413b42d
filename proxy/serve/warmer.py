"""Refreshes the request path asks for, done in the background: stale-while-revalidate, ``warm`` rules
(the most requested entries, refreshed before they expire) and ``refresh_after_purge`` (a writer's own
recent reads, and shared entries anyone read, that its write emptied, refetched with its credentials).
Every refresh is a fill under the fill guard (coalesce.py), so a later purge still wins.
"""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

from multidict import CIMultiDict

from ..core import policy
from ..core.demand import RecentReads
from ..core.entry import decode_entry
from ..core.errors import StoreUnavailable
from ..core.metrics import Metrics
from ..core.policy import Lookup
from ..store.guard import GuardedStore
from . import tracing
from .answers import Origin
from .background import Background
from .coalesce import Coalescer
from .config import Config
from .ruleset import RulesInForce
from .storewatch import StoreWatch

# Refetches after a purge in flight at once per instance (``refresh_after_purge``); more wait their turn.
REFRESH_AFTER_PURGE_CONCURRENCY = 8
MAX_DEMAND = 10_000  # distinct keys counted for warming between two rounds


class Warmer:
    def __init__(self, store: GuardedStore, config: Config, metrics: Metrics, ruleset: RulesInForce,
                 coalescer: Coalescer, background: Background, store_watch: StoreWatch, clock):
        self.store, self.config, self.metrics, self.ruleset = store, config, metrics, ruleset
        self.coalescer, self.background, self.store_watch, self.clock = coalescer, background, store_watch, clock
        self.refreshing: set[str] = set()
        self.demand: dict[str, tuple[int, Lookup, str]] = {}  # warm rules: key -> (requests, lookup, path)
        self.recent_reads = RecentReads()  # refresh_after_purge rules: each user's own recent reads
        self.refresh_slots = asyncio.Semaphore(REFRESH_AFTER_PURGE_CONCURRENCY)

    def note_read(self, d: Lookup, path_qs: str) -> None:
        """A read of ``d``'s entry: demand for warm rules, the owner's recent reads for refresh_after_purge."""
        rule = d.rule
        if rule.warm:
            self._note_demand(d, path_qs)
        if rule.refresh_after_purge and (d.owner is not None or not rule.identity_scoped):
            self.recent_reads.note(d.owner, d.key, d.gen_keys[:-1], rule.demand_window, (d, path_qs))

    def refresh_in_background(self, d: Lookup, tokens: list[str], origin: Origin) -> None:
        if d.key in self.refreshing:
            return
        self.refreshing.add(d.key)
        detached = replace(origin, headers=CIMultiDict(origin.headers))
        self.metrics.refreshes.labels(d.rule.name, "stale-while-revalidate").inc()

        async def refresh() -> None:
            try:
                fetched = await self.coalescer.fill(d, tokens, detached)
                if fetched.stream is not None:
                    fetched.stream[1].release()
            finally:
                self.refreshing.discard(d.key)

        self.background.spawn(refresh(), fill=True)  # shutdown lets fills finish

    def refresh_after_purge(self, user_id: str, purged: tuple[str, ...], write: Origin) -> None:
        """``refresh_after_purge``: refetch, in the background, the writer's own recent reads and the shared
        entries anyone read recently (core/demand.py) that this purge emptied, with the writer's
        credentials, under the fill guard (``_fill``), a bounded number at a time. Each refetch sends the
        Origin its entry is keyed on (as warming does), not the write's."""
        for read in self.recent_reads.emptied_by(user_id, purged):
            d, path_qs = read.request
            rule = self.ruleset.rules.by_name(d.rule.name)
            if rule is None or not rule.refresh_after_purge or rule.fingerprint != d.rule.fingerprint:
                continue
            headers = CIMultiDict(write.headers)
            headers.popall("Origin", None)
            if d.origin_field is not None:
                headers["Origin"] = d.origin_field
            origin = replace(write, path_qs=path_qs, headers=headers)
            self.background.spawn(self._refetch(replace(d, rule=rule), origin), fill=True)

    async def _refetch(self, d: Lookup, origin: Origin) -> None:
        async with self.refresh_slots:
            try:  # the generations as they are after the purge: a later purge still wins (fill guard)
                tokens = await self.store.ensure_generations(d.gen_keys, self.ruleset.gen_ttl)
            except StoreUnavailable:
                return
            self.metrics.refreshes.labels(d.rule.name, "after-purge").inc()
            fetched = await self.coalescer.fill(d, tokens, origin)
            if fetched.stream is not None:
                fetched.stream[1].release()

    def _note_demand(self, d: Lookup, path_qs: str) -> None:
        count = self.demand.get(d.key, (0, d, path_qs))[0]
        if count == 0 and len(self.demand) >= MAX_DEMAND:
            return  # bounded: a flood of distinct keys cannot grow this table
        self.demand[d.key] = (count + 1, d, path_qs)

    async def warm_once(self, budget: int = 16, horizon: float = 30.0) -> int:
        """Refresh the most requested entries of ``warm`` rules that expire within ``horizon`` seconds.

        Bounded work: at most ``budget`` refreshes per call. Only rules whose key needs no identity can
        be warmed (the proxy keeps no users' tokens); the request carries ``WARM_AUTHORIZATION`` if set.
        A rule with ``auth: required`` is not warmed without it: the backend would refuse the refresh.
        """
        if not self.store_watch.cache_usable:
            return 0
        ranked = sorted(self.demand.values(), key=lambda item: item[0], reverse=True)[:budget]
        self.demand.clear()
        refreshed = 0
        for _, d, path_qs in ranked:
            rule = self.ruleset.rules.by_name(d.rule.name)
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
            fetched = await self.coalescer.fill(d, tokens, origin)
            if fetched.stream is not None:
                fetched.stream[1].release()
            self.metrics.refreshes.labels(rule.name, "warm").inc()
            refreshed += 1
        return refreshed
