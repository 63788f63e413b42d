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

Past ``l1_ttl`` a copy is not served until the store has been asked again. When the store still holds the
very bytes the copy was decoded from, under the same generations, the copy is renewed in place: a round
trip, but no decoding, no new head to render, no new objects. Without that, every hot key's copy expired
into a decode and a render each ``l1_ttl``, and copies filled together (a warm-up, a flush) expired
together (BENCHMARKS.md, keyspace).
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
        # key -> (entry, generation tokens, generation keys, expires, footprint, hash of the stored bytes)
        self._items: OrderedDict[str, tuple[Entry, tuple[str, ...], tuple[str, ...], float, int, int | None]] \
            = OrderedDict()
        self._by_gen: dict[str, set[str]] = {}
        self.bytes = 0
        self.invalidated = 0
        # plain counts, read by the metrics endpoint at each scrape (``counts``): nothing on the hit path
        # but an integer add
        self.hits = self.misses = self.renewed = 0
        self.evicted = {"budget": 0, "expired": 0, "flushed": 0}

    def get(self, key: str) -> tuple[Entry, tuple[str, ...]] | None:
        """A copy within its ``l1_ttl``. A copy past it stays, unanswered, until the store's answer shows
        whether it can be renewed (``decoded``, ``put``) or must go (``put``, ``discard``)."""
        if not self.healthy:
            return None
        item = self._items.get(key)
        if item is None or item[3] <= self.clock():
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item[0], item[1]

    def decoded(self, key: str, stored: bytes | None) -> Entry | None:
        """The entry L1 holds for ``key`` if it was decoded from ``stored``, the bytes the store holds now:
        a copy past its ``l1_ttl`` is then renewed (``put``) rather than decoded and rendered again.

        Bytes are told apart by their hash. Two different entries of one key with one hash could only
        stand in for each other where the caller's judgement (same generations, within the rule's ttl)
        lets either be served anyway."""
        item = self._items.get(key) if self.healthy else None
        if item is None or stored is None or item[5] != hash(stored):
            return None
        return item[0]

    def put(self, key: str, entry: Entry, tokens: Sequence[str], gen_keys: Sequence[str], ttl: float,
            stored: bytes | None = None) -> None:
        """Keep ``entry`` (decoded from ``stored``) for ``ttl`` seconds; the copy L1 holds already (see
        ``decoded``) is renewed in place."""
        if not self.healthy or ttl <= 0:
            return
        gen_keys = tuple(gen_keys)
        item = self._items.get(key)
        if item is not None:
            if item[0] is entry and item[2] == gen_keys:
                self._items[key] = (entry, tuple(tokens), gen_keys, self.clock() + ttl, item[4], item[5])
                self._items.move_to_end(key)
                self.renewed += 1
                return
            self._drop_counting_expiry(key, item)
        size = footprint(key, entry)
        if size > self.max_bytes // 8:
            return
        while self.bytes + size > self.max_bytes and self._items:
            self._drop(next(iter(self._items)))
            self.evicted["budget"] += 1
        self._items[key] = (entry, tuple(tokens), gen_keys, self.clock() + ttl, size,
                            hash(stored) if stored is not None else None)
        self.bytes += size
        for g in gen_keys:
            self._by_gen.setdefault(g, set()).add(key)

    def _drop_counting_expiry(self, key: str, item: tuple) -> None:
        self._drop(key)
        if item[3] <= self.clock():
            self.evicted["expired"] += 1

    def _drop(self, key: str) -> None:
        _, _, gen_keys, _, size, _ = self._items.pop(key)
        self.bytes -= size
        for g in gen_keys:
            keys = self._by_gen.get(g)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_gen[g]

    def discard(self, key: str) -> None:
        """Forget ``key``'s copy: the store had nothing fresh for it, or the staleness auditor replaced it."""
        item = self._items.get(key)
        if item is not None:
            self._drop_counting_expiry(key, item)

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
        lookups answered and not, copies renewed past their ``l1_ttl``, entries dropped by reason
        (``invalidated``: a purge's message)."""
        return {"entries": len(self._items), "bytes": self.bytes, "hits": self.hits, "misses": self.misses,
                "renewed": self.renewed, "evicted": {**self.evicted, "invalidated": self.invalidated}}


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
