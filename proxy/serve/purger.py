"""Purges that outlive a failure.

Owns applying a write's purge (``purge``: this instance's L1 first, then one generation bump), keeping
purges the store did not accept as *pending* (reads of their namespaces bypass: ``pending_for``; retried
in the background; journalled to ``pending_file`` so a crash is followed by an epoch bump), and the
last try at shutdown (``finish``).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

import orjson

from ..core import policy
from ..core.errors import StoreUnavailable
from ..core.metrics import Metrics
from ..store.guard import GuardedStore
from ..store.l1 import L1Cache
from .background import Background
from .config import Config
from .ruleset import RulesInForce
from .wire import mask_gen_key

log = logging.getLogger("proxy")

MAX_PENDING = 10_000  # pending purges kept one by one; beyond that, one global epoch bump covers them


class Purger:
    def __init__(self, store: GuardedStore, metrics: Metrics, config: Config, ruleset: RulesInForce,
                 l1: L1Cache | None, background: Background):
        self.store, self.metrics, self.config, self.ruleset = store, metrics, config, ruleset
        self.l1, self.background = l1, background
        self.pending: dict[str, str] = {}  # gen key -> rule name, purges the store has not accepted yet
        self._journaled = False  # the pending-purges marker file exists
        self._retry: asyncio.Task | None = None  # retries the pending purges while there are any

    def pending_for(self, gen_keys) -> bool:
        """A purge of one of ``gen_keys`` has not reached the store yet: bypass, never store."""
        return bool(self.pending) and any(g in self.pending for g in gen_keys)

    async def finish(self) -> None:
        """At shutdown, once background fills are done: try pending purges once more."""
        if self._retry is not None:
            self._retry.cancel()
        if self.pending:
            keys = list(self.pending)
            try:
                await self.store.bump(keys, self.ruleset.gen_ttl)
            except StoreUnavailable:
                log.error("purges still pending at exit" + ("; the next start bumps the global epoch"
                                                            if self.config.pending_file else ""),
                          extra={"event": "pending_at_exit", "count": len(keys),
                                 "pending_file": self.config.pending_file})
            else:
                self._applied(keys)

    async def purge(self, gen_keys: tuple[str, ...], rule_name: str, caller: str | None = None) -> bool:
        """Bump ``gen_keys``; on failure keep them pending (reads bypass them) and retry in the background."""
        if not gen_keys:
            return True
        if self.l1 is not None:  # this instance forgets at once; others hear it from the bump's message
            self.l1.invalidate(gen_keys)
        start = time.perf_counter()
        masked = [mask_gen_key(g, self.ruleset.prefix) for g in gen_keys]
        try:
            await self.store.bump(list(gen_keys), self.ruleset.gen_ttl)
        except StoreUnavailable as exc:
            for g in gen_keys:
                self.pending[g] = rule_name
            if len(self.pending) > MAX_PENDING:  # bounded: one epoch bump covers them all
                self.pending.clear()
                self.pending[policy.epoch_key(self.ruleset.prefix)] = "overflow"
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
        if self._retry is None or self._retry.done():
            self._retry = self.background.spawn(self._retry_pending())

    async def _retry_pending(self, interval: float = 0.2) -> None:
        while self.pending:
            await asyncio.sleep(interval)
            keys = list(self.pending)
            try:
                await self.store.bump(keys, self.ruleset.gen_ttl)
            except StoreUnavailable:
                continue
            self._applied(keys)

    def _applied(self, keys: list[str]) -> None:
        """Pending purges the store accepted: stop bypassing them; an epoch among them is counted."""
        epoch = policy.epoch_key(self.ruleset.prefix)
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
                    fh.write(orjson.dumps({"pid": os.getpid(), "since": time.time(), "prefix": self.ruleset.prefix}))
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
        self.pending[policy.epoch_key(self.ruleset.prefix)] = "previous-process"
        self.metrics.pending_purges.set(len(self.pending))
        log.warning("the previous process left purges unapplied; the global epoch will be bumped",
                    extra={"event": "pending_recovered", "path": path})
        self._ensure_retry_task()
        return True

    async def repurge(self, gen_keys: tuple[str, ...], rule_name: str, after: int) -> None:
        await asyncio.sleep(after)
        await self.purge(gen_keys, rule_name)
