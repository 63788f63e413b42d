"""The optional in-process L1 in front of a shared store (per rule ``l1_ttl``).

A hit in Redis costs a round trip; a hit in L1 costs a dict lookup. What makes an L1 safe is knowing
when to forget: every bump of a generation in the shared store publishes the bumped keys on an
invalidation channel (inside the same Lua script, so no bump goes unannounced), and every instance
evicts the L1 entries those generations guard. Messages sent while an instance is not subscribed are
lost, so L1 is used only while the subscription is up, and is flushed whenever it (re)starts.

Staleness bound on *other* instances: an entry purged elsewhere may still be served from this L1
until the invalidation message arrives (normally well under a millisecond on one network) and never
longer than the rule's ``l1_ttl``. This instance's own purges evict its L1 before the write's answer is
released, so read-your-writes holds through the instance that took the write.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Callable, Sequence

from ..core.entry import Entry, header_footprint

log = logging.getLogger("proxy.l1")

CHANNEL = "katiba-cache:invalidations"

# What one entry keeps alive in L1, by tracemalloc (tests/unit/test_l1.py checks it): the decoded Entry
# with its strings and rendered head, and L1's own bookkeeping (its slot, item and by-generation index).
# Each header costs two tuples' worth of objects and its bytes twice (the pair's strings, the rendered
# head). ``L1_MAX_BYTES`` is a budget of real memory: counting key and body alone (as this did) let a
# 64 MiB L1 of small API bodies hold about three times that.
ENTRY_OVERHEAD = 1250


def footprint(key: str, entry: Entry) -> int:
    """Bytes ``entry`` keeps alive in L1 under ``key`` (an estimate within a few percent)."""
    return len(key) + len(entry.body) + ENTRY_OVERHEAD + header_footprint(entry)


class L1Cache:
    def __init__(self, max_bytes: int = 64 << 20, clock: Callable[[], float] = time.monotonic):
        self.max_bytes, self.clock = max_bytes, clock
        self.healthy = False  # True only while the invalidation subscription is up
        # key -> (entry, generation tokens, generation keys, expires, footprint)
        self._items: OrderedDict[str, tuple[Entry, tuple[str, ...], tuple[str, ...], float, int]] = OrderedDict()
        self._by_gen: dict[str, set[str]] = {}
        self.bytes = 0
        self.invalidated = 0
        # plain counts, read by the metrics endpoint at each scrape (``counts``): nothing on the hit path
        # but an integer add
        self.hits = self.misses = 0
        self.evicted = {"budget": 0, "expired": 0, "flushed": 0}

    def get(self, key: str) -> tuple[Entry, tuple[str, ...]] | None:
        if not self.healthy:
            return None
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        entry, tokens, _, expires, _ = item
        if expires <= self.clock():
            self._drop(key)
            self.evicted["expired"] += 1
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return entry, tokens

    def put(self, key: str, entry: Entry, tokens: Sequence[str], gen_keys: Sequence[str], ttl: float) -> None:
        if not self.healthy or ttl <= 0:
            return
        size = footprint(key, entry)
        if size > self.max_bytes // 8:
            return
        if key in self._items:
            self._drop(key)
        while self.bytes + size > self.max_bytes and self._items:
            self._drop(next(iter(self._items)))
            self.evicted["budget"] += 1
        self._items[key] = (entry, tuple(tokens), tuple(gen_keys), self.clock() + ttl, size)
        self.bytes += size
        for g in gen_keys:
            self._by_gen.setdefault(g, set()).add(key)

    def _drop(self, key: str) -> None:
        _, _, gen_keys, _, size = self._items.pop(key)
        self.bytes -= size
        for g in gen_keys:
            keys = self._by_gen.get(g)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_gen[g]

    def discard(self, key: str) -> None:
        """Forget ``key``'s copy (the staleness auditor replaced the entry in the store)."""
        if key in self._items:
            self._drop(key)

    def invalidate(self, gen_keys: Sequence[str]) -> int:
        """Evict every entry guarded by any of ``gen_keys`` (an epoch key evicts everything)."""
        dropped = 0
        for g in gen_keys:
            if g.endswith(":epoch"):
                dropped += len(self._items)
                self._forget_all()
                break
            for key in list(self._by_gen.get(g, ())):
                if key in self._items:
                    self._drop(key)
                    dropped += 1
        self.invalidated += dropped
        return dropped

    def clear(self) -> None:
        """Forget everything: invalidation messages may have been lost."""
        self.evicted["flushed"] += len(self._items)
        self._forget_all()

    def _forget_all(self) -> None:
        self._items.clear()
        self._by_gen.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def counts(self) -> dict:
        """What ``katiba_cache_l1_*`` report: entries and bytes held (bytes as the budget counts them),
        lookups answered and not, entries dropped by reason (``invalidated``: a purge's message)."""
        return {"entries": len(self._items), "bytes": self.bytes, "hits": self.hits, "misses": self.misses,
                "evicted": {**self.evicted, "invalidated": self.invalidated}}


async def follow_invalidations(subscribe, l1: L1Cache, retry_after: float = 0.5) -> None:
    """Keep ``l1`` in step with the store's invalidation channel, for as long as the task runs.

    ``subscribe()`` is an async iterator of lists of generation keys; its first item is ``[]``, sent
    once the subscription is confirmed. L1 serves only between that confirmation and the next error.
    """
    while True:
        try:
            async for keys in subscribe():
                if not l1.healthy:
                    l1.clear()  # whatever was published while we were away is unknown
                    l1.healthy = True
                    log.info("L1 invalidations subscribed", extra={"event": "l1_subscribed"})
                if keys:
                    l1.invalidate(keys)
        except asyncio.CancelledError:
            l1.healthy = False
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means messages may be lost
            if l1.healthy:
                log.warning("L1 invalidations lost; L1 flushed and off until resubscribed",
                            extra={"event": "l1_unsubscribed", "error": str(exc) or type(exc).__name__})
        l1.healthy = False
        l1.clear()
        await asyncio.sleep(retry_after)
