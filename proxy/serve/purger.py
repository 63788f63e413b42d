"""Purges that outlive a failure, and the store watch that decides when the cache may be read again.

Owns: applying a write's purge (``purge``: this instance's L1 first, then one generation bump), keeping
purges the store did not accept as *pending* (reads of their namespaces bypass; retried in the
background; journalled to ``pending_file`` so a crash is followed by an epoch bump), and watching the
store (``check_store``): a Redis that came back as another server may lack purges, so the global epoch
is bumped before the cache is read again. A mixin of ``server.Proxy``; it uses the proxy's store,
metrics, rules and config.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

import orjson

from ..core import policy
from ..core.errors import StoreUnavailable
from .wire import mask_gen_key

log = logging.getLogger("proxy")

MAX_PENDING = 10_000  # pending purges kept one by one; beyond that, one global epoch bump covers them


class PurgingMixin:
    async def purge(self, gen_keys: tuple[str, ...], rule_name: str, caller: str | None = None) -> bool:
        """Bump ``gen_keys``; on failure keep them pending (reads bypass them) and retry in the background."""
        if not gen_keys:
            return True
        if self.l1 is not None:  # this instance forgets at once; others hear it from the bump's message
            self.l1.invalidate(gen_keys)
        start = time.perf_counter()
        masked = [mask_gen_key(g, self.rules.prefix) for g in gen_keys]
        try:
            await self.store.bump(list(gen_keys), self.gen_ttl)
        except StoreUnavailable as exc:
            for g in gen_keys:
                self.pending[g] = rule_name
            if len(self.pending) > MAX_PENDING:  # bounded: one epoch bump covers them all
                self.pending.clear()
                self.pending[policy.epoch_key(self.rules.prefix)] = "overflow"
                log.error("too many pending purges; every read bypasses until the global epoch is bumped",
                          extra={"event": "pending_overflow", "limit": MAX_PENDING})
            self.metrics.purge_failures.inc()
            self.metrics.pending_purges.set(len(self.pending))
            self._journal_pending()
            log.error("purge failed; namespaces bypass the cache until it lands",
                      extra={"event": "purge_failed", "rule": rule_name, "patterns": masked, "error": str(exc)})
            self._ensure_retry_task()
            return False
        self.metrics.purges.labels(rule_name).inc()
        extra = {"event": "purge", "rule": rule_name, "patterns": masked,
                 "duration_ms": round((time.perf_counter() - start) * 1000, 3)}
        if caller:
            extra["caller"] = caller
        log.info("purge", extra=extra)
        return True

    def _ensure_retry_task(self) -> None:
        if not any(getattr(t, "retry_purges", False) for t in self.background):
            task = self._spawn(self._retry_pending())
            task.retry_purges = True  # type: ignore[attr-defined]

    async def _retry_pending(self, interval: float = 0.2) -> None:
        while self.pending:
            await asyncio.sleep(interval)
            keys = list(self.pending)
            try:
                await self.store.bump(keys, self.gen_ttl)
            except StoreUnavailable:
                continue
            self._applied(keys)

    def _applied(self, keys: list[str]) -> None:
        """Pending purges the store accepted: stop bypassing them; an epoch among them is counted."""
        epoch = policy.epoch_key(self.rules.prefix)
        for g in keys:
            rule = self.pending.pop(g, "pending")
            if g == epoch:
                self.metrics.epoch_bumps.inc()
                log.warning("global epoch bumped: purges may have been lost", extra={"event": "epoch_bump",
                                                                                    "reason": rule})
            else:
                self.metrics.purges.labels(rule).inc()
        self.metrics.pending_purges.set(len(self.pending))
        self._journal_pending()
        log.info("pending purges applied", extra={"event": "purge_recovered", "count": len(keys)})

    def _journal_pending(self) -> None:
        """Keep ``config.pending_file`` in step with ``pending``: it exists while purges are pending.

        Written only when the first purge fails and removed when the last one lands (never on the hit
        path). A process that finds it at start-up knows its predecessor left purges unapplied (it
        crashed, or exited while the store was unreachable) and bumps the global epoch.
        """
        path = self.config.pending_file
        if not path:
            return
        try:
            if self.pending and not self._journaled:
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "wb") as fh:
                    fh.write(orjson.dumps({"pid": os.getpid(), "since": time.time(), "prefix": self.rules.prefix}))
                os.replace(tmp, path)
                self._journaled = True
            elif not self.pending and self._journaled:
                os.unlink(path)
                self._journaled = False
        except FileNotFoundError:
            self._journaled = False
        except OSError as exc:
            log.error("cannot update the pending-purges file", extra={"event": "pending_file_error",
                                                                      "path": path, "error": str(exc)})

    def recover_pending_file(self) -> bool:
        """At start-up: a pending-purges file left by the previous process -> bump the global epoch (as a
        pending purge: every read bypasses until it lands). True if one was found."""
        path = self.config.pending_file
        if not path or not os.path.exists(path):
            return False
        self._journaled = True  # removed once the epoch bump lands
        self.pending[policy.epoch_key(self.rules.prefix)] = "previous-process"
        self.metrics.pending_purges.set(len(self.pending))
        log.warning("the previous process left purges unapplied; the global epoch will be bumped",
                    extra={"event": "pending_recovered", "path": path})
        self._ensure_retry_task()
        return True

    # ---------------------------------------------------------------------------- store watch

    def _store_unreachable(self) -> None:
        """A store call failed to reach the store: stop reading from it until ``check_store`` says yes."""
        if self.cache_usable:
            self.cache_usable = False
            self.metrics.store_usable.set(0)
            log.warning("store unreachable; reads go to the backend until it is verified again",
                        extra={"event": "store_down"})
        self._usable_at = None
        self._store_wake.set()

    async def check_store(self) -> bool:
        """Probe the store (``GuardedStore.verify``): which server answers, and did it lose data?

        A Redis that restarted from a snapshot or a promoted replica may lack recent purges (and other
        instances' pending ones): the store bumps the global epoch once, counted here. While the cache is
        off after an outage, a successful probe starts the recovery hold (``store_recovery_hold``), during
        which other instances' retried purges land; then reads use the store again.
        """
        try:
            bumped = await self.store.verify(self.server_marker, policy.epoch_key(self.rules.prefix), self.gen_ttl)
        except StoreUnavailable as exc:
            if not self.cache_usable:
                self._store_outage = True
                self._usable_at = None
            else:
                log.warning("store probe failed", extra={"event": "store_probe_failed", "error": str(exc)})
            return False
        if bumped:
            if self.l1 is not None:
                self.l1.clear()
            self.metrics.epoch_bumps.inc()
            log.warning("the store's server changed and may have lost purges; global epoch bumped",
                        extra={"event": "epoch_bump", "reason": "store-replaced"})
        if not self.cache_usable:
            now = time.monotonic()
            if self._usable_at is None:
                self._usable_at = now + (self.config.store_recovery_hold if self._store_outage else 0.0)
                if self._store_outage:
                    log.info("store answers again; cache back after the recovery hold",
                             extra={"event": "store_recovering", "hold_s": self.config.store_recovery_hold})
            if now >= self._usable_at:
                self.cache_usable, self._store_outage, self._usable_at = True, False, None
                self.metrics.store_usable.set(1)
                log.info("store verified; reads use the cache again", extra={"event": "store_up"})
        return True

    @property
    def server_marker(self) -> str:
        return f"{self.rules.prefix}:server"

    async def watch_store(self) -> None:
        """Background: probe every ``store_check_interval`` s while healthy, every 0.1 s while the cache is off."""
        while True:
            wait = 0.1 if not self.cache_usable else self.config.store_check_interval
            try:  # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives
                async with asyncio.timeout(wait):  # as the wake-up does, and then this loop never ends
                    await self._store_wake.wait()
            except TimeoutError:
                pass
            self._store_wake.clear()
            try:
                await self.check_store()
            except Exception:  # noqa: BLE001 - the watcher must never stop
                log.exception("store check failed", extra={"event": "store_check_error"})

    async def shutdown(self, grace: float) -> None:
        """After the listener closed and in-flight requests ended: let background fills finish (bounded),
        try pending purges once more, then stop every background task."""
        fills = [t for t in self.background if getattr(t, "fill", False)]
        if fills:
            await asyncio.wait(fills, timeout=max(0.0, grace))
        for task in list(self.background):
            if getattr(task, "retry_purges", False):
                task.cancel()
        if self.pending:
            keys = list(self.pending)
            try:
                await self.store.bump(keys, self.gen_ttl)
            except StoreUnavailable:
                log.error("purges still pending at exit" + ("; the next start bumps the global epoch"
                                                            if self.config.pending_file else ""),
                          extra={"event": "pending_at_exit", "count": len(keys),
                                 "pending_file": self.config.pending_file})
            else:
                self._applied(keys)

    async def _repurge(self, gen_keys: tuple[str, ...], rule_name: str, after: int) -> None:
        await asyncio.sleep(after)
        await self.purge(gen_keys, rule_name)
