"""Shadow mode (``CACHE_MODE=shadow``): the backend answers every request; the cache is filled and
consulted only to count what it would have done (would-be hits and stale answers, and whether they
matched the backend's answer). The staleness auditor's report counts the would-be hits too.
"""
from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from ..core import policy
from ..core.entry import decode_entry
from ..core.errors import StoreUnavailable
from ..core.metrics import Metrics
from ..core.policy import Lookup
from ..store.guard import GuardedStore
from .answers import Origin
from .auditor import Auditor
from .fill import Filler
from .passthrough import PassThrough
from .ruleset import RulesInForce
from .wire import CacheStatus, error_response


class Shadow:
    def __init__(self, store: GuardedStore, metrics: Metrics, ruleset: RulesInForce, filler: Filler,
                 auditor: Auditor, passthrough: PassThrough, clock):
        self.store, self.metrics, self.ruleset, self.filler = store, metrics, ruleset, filler
        self.auditor, self.passthrough, self.clock = auditor, passthrough, clock

    async def answer(self, request: web.Request, d: Lookup, origin: Origin) -> web.StreamResponse:
        rule = d.rule
        status = CacheStatus.bypass("shadow")
        try:
            raw, tokens = await self.store.lookup(d.key, d.gen_keys)
            if None in tokens:
                tokens = await self.store.ensure_generations(d.gen_keys, self.ruleset.gen_ttl)
        except StoreUnavailable:
            self.metrics.shadow.labels(rule.name, "store-unavailable").inc()
            return await self.passthrough.relay(request, origin, status)
        entry = decode_entry(raw)
        verdict = policy.judge(entry, tokens, rule, self.clock())
        fetched = await self.filler.fetch(d, tokens, origin, store=verdict.usable != "fresh")
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
            return await self.passthrough.stream(request, upstream_response, headers, prefix)
        return web.Response(status=fetched.status, body=fetched.body, headers=headers)
