"""The store watch: whether reads may use the store, decided off the request path.

The first call that cannot reach the store turns the cache off for reads (``unreachable``: no request
waits on the store again); a background probe (``GuardedStore.verify``, every ``store_check_interval``
s, every 0.1 s while off) turns it back on once the store answers, after ``store_recovery_hold`` if it
was down. The probe also notices a Redis that came back as another server (restart from a snapshot,
failover), which may lack recent purges, and bumps the global epoch before the cache is read again.
"""
from __future__ import annotations

import asyncio
import logging
import time

from ..core import policy
from ..core.errors import StoreUnavailable
from ..core.metrics import Metrics
from ..store.guard import GuardedStore
from ..store.l1 import L1Cache
from .config import Config
from .ruleset import RulesInForce

log = logging.getLogger("proxy")


class StoreWatch:
    def __init__(self, store: GuardedStore, metrics: Metrics, config: Config, ruleset: RulesInForce,
                 l1: L1Cache | None):
        self.store, self.metrics, self.config, self.ruleset, self.l1 = store, metrics, config, ruleset, l1
        self.cache_usable = True  # while False, reads go to the backend without asking the store
        self.outage = False  # a probe failed since the store was last usable: hold on recovery
        self._usable_at: float | None = None  # when the hold ends
        self._wake = asyncio.Event()
        store.on_unreachable = self.unreachable
        metrics.store_usable.set(1)

    def unreachable(self) -> None:
        """A store call failed to reach the store: stop reading from it until ``check`` says yes."""
        if self.cache_usable:
            self.cache_usable = False
            self.metrics.store_usable.set(0)
            log.warning("store unreachable; reads go to the backend until it is verified again",
                        extra={"event": "store_down"})
        self._usable_at = None
        self._wake.set()

    async def check(self) -> bool:
        """Probe the store (``GuardedStore.verify``): which server answers, and did it lose data?

        A Redis that restarted from a snapshot or a promoted replica may lack recent purges (and other
        instances' pending ones): the store bumps the global epoch once, counted here. While the cache is
        off after an outage, a successful probe starts the recovery hold (``store_recovery_hold``), during
        which other instances' retried purges land; then reads use the store again.
        """
        try:
            bumped = await self.store.verify(self.server_marker, policy.epoch_key(self.ruleset.prefix),
                                             self.ruleset.gen_ttl)
        except StoreUnavailable as exc:
            if not self.cache_usable:
                self.outage = True
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
                self._usable_at = now + (self.config.store_recovery_hold if self.outage else 0.0)
                if self.outage:
                    log.info("store answers again; cache back after the recovery hold",
                             extra={"event": "store_recovering", "hold_s": self.config.store_recovery_hold})
            if now >= self._usable_at:
                self.cache_usable, self.outage, self._usable_at = True, False, None
                self.metrics.store_usable.set(1)
                log.info("store verified; reads use the cache again", extra={"event": "store_up"})
        return True

    async def start(self) -> None:
        """At start-up: who answers, and did it lose data? (bounded by the store timeout)"""
        if not await self.check():
            self.unreachable()
            self.outage = True

    @property
    def server_marker(self) -> str:
        return f"{self.ruleset.prefix}:server"

    async def watch(self) -> None:
        """Background: probe every ``store_check_interval`` s while healthy, every 0.1 s while the cache is off."""
        while True:
            wait = 0.1 if not self.cache_usable else self.config.store_check_interval
            try:  # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives
                async with asyncio.timeout(wait):  # as the wake-up does, and then this loop never ends
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - the watcher must never stop
                log.exception("store check failed", extra={"event": "store_check_error"})
