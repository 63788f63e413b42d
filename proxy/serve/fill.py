"""A fill: the backend's answer for a rule's key, fetched with the request's credentials and written to
the store under the fill guard.

``fetch`` sends the request as a fill sends it (no conditionals, identity encoding, no credentials for a
public entry), reads a bounded body, and says why an answer is not stored (``policy.refuse_to_store``,
too large, a body cut short). ``store`` writes the entry behind the answer (``GuardedStore.write_behind``)
only if the generations read before the fetch are still current: a purge that lands during the fetch
wins. Coalescing and leases are coalesce.py's; this module fetches once each time it is asked.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Callable

from multidict import CIMultiDict

from ..core import interim, policy
from ..core.entry import Entry
from ..core.errors import StoreUnavailable, UpstreamError
from ..core.metrics import Metrics
from ..core.policy import Lookup
from ..store.guard import GuardedStore
from ..upstream.client import Upstream, read_limited, strip_hop_by_hop
from .answers import CONDITIONAL_HEADERS, FILL_DROPPED, Fetched, Origin, content_etag
from . import streaming
from .background import Background
from .ruleset import RulesInForce

log = logging.getLogger("proxy")

INTERNAL_HEADERS = frozenset({"x-cache", "cache-status", "age", "x-request-id", "content-length", "set-cookie"})


def replayable(headers: CIMultiDict, rule) -> CIMultiDict:
    """Headers any client with the same key may be given: per-caller ones dropped."""
    return CIMultiDict((k, v) for k, v in headers.items()
                       if k.lower() not in INTERNAL_HEADERS and k.lower() not in rule.drop_headers)


class Filler:
    def __init__(self, store: GuardedStore, upstream: Upstream, metrics: Metrics, ruleset: RulesInForce,
                 background: Background, purge_pending: Callable[[Lookup], bool], clock,
                 unsafe: frozenset[str] = frozenset()):
        self.store, self.upstream, self.metrics, self.ruleset = store, upstream, metrics, ruleset
        self.background, self.purge_pending, self.clock, self.unsafe = background, purge_pending, clock, unsafe

    async def fetch(self, d: Lookup, tokens: list[str], origin: Origin, store: bool,
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
            response = await self.upstream.fetch(origin.path_qs, headers, rule.name)
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
        etag = response.headers.get("ETag") or (content_etag(body) if refusal is None else None)
        fetched = Fetched(response.status, upstream_headers, body, etag, refusal or "", interim=hints,
                          storable=refusal is None)
        if refusal is None and store:
            fetched.outcome = await self.store_fill(d, tokens, fetched, lease)  # counted by _store
            return fetched
        if refusal is None:
            fetched.outcome = "not-stored"
        self.metrics.stores.labels(rule.name, fetched.outcome).inc()
        return fetched

    async def store_fill(self, d: Lookup, tokens: list[str], fetched: Fetched, lease: tuple[str, str] | None = None) -> str:
        """Guarded write of a fill; with ``lease`` (the fill's), the same store call drops the lease.

        Sent behind the answer (``GuardedStore.write_behind``): a miss's client does not wait for the
        store's round trip. ``stored`` in its Cache-Status means the write was sent under the fill guard;
        the guard refuses it only if a purge landed since the fetch began, which a client cannot tell
        from the entry being stored and purged just after. ``stores_total{outcome}`` counts what the
        store answered (``stored``, ``generation-changed``, ``store-error``)."""
        rule_name = d.rule.name
        if self.purge_pending(d):
            self.metrics.stores.labels(rule_name, "pending-purge").inc()
            return "pending-purge"
        stored_headers = tuple((k, v) for k, v in replayable(fetched.headers, d.rule).items())
        entry = Entry(fetched.status, stored_headers, fetched.body, self.clock(), tuple(tokens), d.rule.fingerprint,
                      fetched.etag or content_etag(fetched.body))
        if "no-fill-guard" in self.unsafe:  # test-only: store under whatever generations are current now
            expected = await self.store.ensure_generations(d.gen_keys, self.ruleset.gen_ttl)
            ok = await self.store.store_if_current(d.key, replace(entry, generations=tuple(expected)).encode(
                                                       compress_from=d.rule.compress_from),
                                                   policy.store_ttl(d.rule), d.gen_keys, expected, self.ruleset.gen_ttl, lease)
            self.metrics.stores.labels(rule_name, "stored" if ok else "generation-changed").inc()
            return "stored" if ok else "generation-changed"
        write = self.store.write_behind(d.key, entry.encode(compress_from=d.rule.compress_from),
                                        policy.store_ttl(d.rule), d.gen_keys, tokens, self.ruleset.gen_ttl, lease)
        self.background.track(write, fill=True)  # shutdown lets it finish

        def written(task: asyncio.Task) -> None:
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

