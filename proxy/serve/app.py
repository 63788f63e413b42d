"""The proxy as an aiohttp application: the store, the backend client and the request path put together,
their lifecycle (start-up checks, background watchers, a bounded drain at shutdown), and the fast path
installed in front when it is on.
"""
from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from ..core.metrics import Metrics
from ..core.rules import Rules
from ..core.rulesfile import load_rules
from ..store import open_store
from ..store.guard import CircuitBreaker, GuardedStore
from ..store.l1 import L1Cache, follow_invalidations
from ..upstream.client import Upstream, watch_upstream
from . import collector, fastpath, framing, tracing
from .config import Config
from .requestpath import RequestPath

log = logging.getLogger("proxy")

PROXY_KEY = web.AppKey("proxy", RequestPath)


def build_app(config: Config, rules: Rules | None = None, store=None, metrics: Metrics | None = None,
              unsafe: frozenset[str] = frozenset()) -> web.Application:
    """The proxy as an aiohttp application; the store and upstream session open in ``cleanup_ctx``."""
    rules = rules or load_rules(config.rules_path)
    metrics = metrics or Metrics()
    app = web.Application(client_max_size=config.max_write_body, handler_args=dict(framing.AIOHTTP_LIMITS))
    guarded = GuardedStore(store or open_store(config.redis_url, memory_max_bytes=config.memory_max_bytes,
                                            timeout=config.store_timeout,
                                            max_connections=config.redis_max_connections),
                           metrics, timeout=config.store_timeout,
                           breaker=CircuitBreaker(config.breaker_failures, config.breaker_reset))
    proxy = RequestPath(config, rules, guarded, Upstream(config.upstream), metrics, unsafe=unsafe)
    app[PROXY_KEY] = proxy

    async def lifecycle(app: web.Application):
        await proxy.upstream.start()
        tasks = proxy.background
        tasks.spawn(watch_upstream(proxy.upstream))  # unreachable at start: a warning (and not ready if required)
        proxy.purger.recover_pending_file()
        await proxy.store_watch.start()
        loop = asyncio.get_running_loop()
        sweeper, watcher = loop.create_task(_sweep(proxy)), loop.create_task(proxy.store_watch.watch())
        tasks.spawn(_flush_metrics(metrics, proxy.l1))
        tasks.spawn(collector.pace_collections(metrics, config.gc_pace_interval, config.gc_full_interval))
        if proxy.l1 is not None:
            tasks.spawn(follow_invalidations(guarded.inner.invalidations, proxy.l1))
        proxy.ready = True
        yield
        proxy.ready = False
        watcher.cancel()
        await proxy.shutdown(grace=min(config.shutdown_grace, 5.0))
        sweeper.cancel()
        await tasks.cancel_all(sweeper, watcher)
        await proxy.upstream.close()
        await guarded.close()

    async def point_at_client(request: web.Request, response: web.StreamResponse) -> None:
        proxy.point_at_client(response.headers, request.headers, request.scheme)

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(point_at_client)  # every answer of aiohttp's path (fastpath.py: its own)
    # Tracing (proxy/serve/tracing.py) is decided here, once: off, nothing on the request path changes.
    app.router.add_route("*", "/{tail:.*}", tracing.instrument(proxy) if tracing.ENABLED else proxy.handle)
    fastpath.install(app, proxy, fast=config.fast_path and not tracing.ENABLED)  # traced: aiohttp's path
    return app


async def _flush_metrics(metrics: Metrics, l1: L1Cache | None, interval: float = 1.0) -> None:
    """Per-request figures are tallied in memory (proxy/core/metrics.py), and the L1 keeps its own counts;
    other workers' scrapes see them within ``interval``. A scrape of this process flushes first, and so
    does shutdown."""
    def flush() -> None:
        metrics.tally.flush()
        if l1 is not None:
            metrics.report_l1(l1.counts())

    try:
        while True:
            await asyncio.sleep(interval)
            flush()
    finally:
        flush()


async def _sweep(proxy: RequestPath, interval: float = 5.0) -> None:
    """Housekeeping off the request path: warm hot entries, drop expired memory-store items."""
    inner = proxy.store.inner
    rounds = 0
    while True:
        await asyncio.sleep(interval)
        rounds += 1
        if any(r.warm for r in proxy.rules.rules):
            try:
                await proxy.warmer.warm_once(horizon=interval * 3)
            except Exception:  # noqa: BLE001 - warming is best effort and must never stop
                log.exception("warming failed", extra={"event": "warm_error"})
        if rounds % 6 == 0 and hasattr(inner, "sweep"):
            inner.sweep()
