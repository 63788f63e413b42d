"""Running ``cache-proxy serve`` in one process: the event loop, the listeners, signals and the drain on
shutdown, and the rules watcher that reloads rules.yaml when it changes (``watch_rules``).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal

log = logging.getLogger("proxy")


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(config, rules, started: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``): not ready first, then drain in-flight requests."""
    from ..serve.app import build_app

    # Test-only switches that break a guarantee on purpose (the stale-read checker's mutants).
    unsafe = frozenset(s.strip() for s in os.environ.get("KATIBA_CACHE_UNSAFE_TEST_SWITCHES", "").split(",")
                       if s.strip())
    if unsafe:
        log.warning("unsafe test-only switches are on: this proxy breaks its consistency guarantee on purpose",
                    extra={"event": "unsafe_switches", "switches": sorted(unsafe)})
    from ..serve import tracing

    tracing.configure_from_env()  # OTEL_TRACES_EXPORTER; per process, so after a worker's fork
    try:
        await _serve_app(build_app(config, rules, unsafe=unsafe), config, rules, started, stop)
    finally:
        tracing.stop()  # flushes the spans still batched


async def _serve_app(app, config, rules, started: asyncio.Event | None, stop: asyncio.Event | None) -> None:
    import gc

    from aiohttp import web

    from ..serve.app import PROXY_KEY
    from ..serve.collector import thresholds
    from . import allocator

    proxy = app[PROXY_KEY]
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=config.shutdown_grace)
    await runner.setup()
    host, port = _split_listen(config.listen)
    admin_runner = None
    try:
        await web.TCPSite(runner, host, port, reuse_port=True, backlog=2048).start()
        if config.admin_listen:  # /metrics, /healthz, /readyz, /_cache/* on their own port (proxy/ops/admin.py)
            from .admin import build_admin_app

            admin_runner = web.AppRunner(build_admin_app(proxy), access_log=None, handle_signals=False,
                                         shutdown_timeout=1.0)
            await admin_runner.setup()
            admin_host, admin_port = _split_listen(config.admin_listen)
            await web.TCPSite(admin_runner, admin_host, admin_port, reuse_port=True).start()
    except BaseException:  # a port in use: close the store and the backend session before saying so
        if admin_runner is not None:
            await admin_runner.cleanup()
        await runner.cleanup()
        raise
    log.info("listening", extra={"event": "listening", "listen": config.listen, "admin_listen": config.admin_listen,
                                  "upstream": config.upstream.url,
                                  "store": proxy.store.name, "rules": len(rules.rules), "mode": config.cache_mode,
                                  **allocator.describe()})
    gc.collect()
    gc.freeze()  # the start-up objects never die: keep them out of every later collection
    gc.set_threshold(*thresholds(config.gc_pace_interval))  # collections paced by serve/collector.py
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, proxy.reload_rules)
    watcher = loop.create_task(watch_rules(proxy, config.rules_path, stop)) if config.watch_rules else None
    if started is not None:
        started.set()
    await stop.wait()
    proxy.ready = False  # /readyz says no before the listener closes, so balancers stop sending
    log.info("draining", extra={"event": "shutdown", "grace_s": config.shutdown_grace,
                                "delay_s": config.shutdown_delay})
    if config.shutdown_delay > 0:  # still accepting (and answering) while balancers notice the 503
        await asyncio.sleep(config.shutdown_delay)
    if watcher is not None:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    await runner.cleanup()
    if admin_runner is not None:  # last: probes and scrapes see the drain
        await admin_runner.cleanup()
    log.info("stopped", extra={"event": "stopped"})


def _digest(path: str) -> bytes | None:
    import hashlib

    try:
        with open(path, "rb") as fh:
            return hashlib.blake2b(fh.read(), digest_size=16).digest()
    except OSError:
        return None


async def watch_rules(proxy, path: str, stop: asyncio.Event | None = None, debounce_ms: int = 300) -> None:
    """Reload the rules whenever the content of ``path`` changes (SIGHUP keeps working besides).

    The file's directory is watched, not the file: editors and Kubernetes ConfigMaps replace a file
    (rename, symlink swap) rather than write into it. A change that leaves the content as it was, or a
    moment where the file is missing mid-replace, reloads nothing. An invalid file is refused by
    ``RequestPath.reload_rules`` (file:line errors in the log, ``katiba_cache_reloads_total{result="failure"}``)
    and the rules in force stay.
    """
    from watchfiles import awatch

    from ..core.rulewatch import RulesFileChanges

    changes_of_the_rules = RulesFileChanges(path)  # not the log file or anything else beside it
    last = _digest(path)
    try:
        async for _changes in awatch(changes_of_the_rules.directory, watch_filter=changes_of_the_rules,
                                     debounce=debounce_ms, step=50, stop_event=stop, recursive=False):
            current = _digest(path)
            if current is None or current == last:
                continue
            last = current
            log.info("rules file changed", extra={"event": "rules_changed", "rules_path": path})
            proxy.reload_rules()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - no watcher (inotify limits, odd filesystems): SIGHUP still works
        log.warning("cannot watch the rules file; reload it with SIGHUP",
                    extra={"event": "watch_failed", "rules_path": path, "error": str(exc) or type(exc).__name__})
