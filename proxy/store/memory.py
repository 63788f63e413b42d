"""The embedded store: one process, a byte budget with LRU eviction, TTLs on everything.

The budget covers entries and generations alike, in one least-recently-used order: generations live
far longer than entries (``generation_ttl``), and namespaces are as many as users, so left outside the
budget they would grow without bound. Evicting a generation is safe: a missing generation never equals
the token an entry recorded, and ``ensure_generations`` recreates it with a fresh random token, so
its entries read as changed, never as current. For the same reason a purge of a namespace that has no
generation creates none: no entry stored under it can match again anyway.

Atomicity comes for free: every method runs to completion without awaiting, so the fill guard's
compare-and-set cannot interleave with a purge. Expired items are dropped when touched and by
``sweep()``, which the server calls in the background (never on the request path).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Sequence

from .base import new_token

# What a generation costs beyond the characters of its key and token: str headers, the tuple, the
# float, a slot in two dicts (tracemalloc on CPython 3.11: ~230 bytes each besides the key string).
GENERATION_OVERHEAD = 250


class MemoryStore:
    name = "memory"

    def __init__(self, max_bytes: int = 256 << 20, clock: Callable[[], float] = time.monotonic):
        self.max_bytes = max_bytes
        self.clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._gens: dict[str, tuple[str, float]] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()  # entries and generations, least recently used first
        self._leases: dict[str, tuple[str, float]] = {}
        self.bytes = 0  # entries and generations
        self.evictions = 0  # entries
        self.generation_evictions = 0
        self.commands = 0  # counted like Redis commands, so tests can assert store work per request
        # ``limit``: key prefix -> [budget, bytes, keys in LRU order] (the HTTP cache's own share)
        self._limits: dict[str, list] = {}

    def limit(self, key_prefix: str, max_bytes: int) -> None:
        """Entries whose key starts with ``key_prefix`` get their own byte budget, evicted least recently
        used among themselves first (within the store's total ``max_bytes``)."""
        if key_prefix in self._limits:
            self._limits[key_prefix][0] = max_bytes
            return
        keys = OrderedDict((k, None) for k in self._entries if k.startswith(key_prefix))
        used = sum(len(k) + len(self._entries[k][0]) for k in keys)
        self._limits[key_prefix] = [max_bytes, used, keys]

    def _part(self, key: str) -> list | None:
        for prefix, part in self._limits.items():
            if key.startswith(prefix):
                return part
        return None

    # -- entries ---------------------------------------------------------------------------------
    def _entry(self, key: str) -> bytes | None:
        item = self._entries.get(key)
        if item is None:
            return None
        if item[1] <= self.clock():
            self._drop(key)
            return None
        self._lru.move_to_end(key)
        if self._limits and (part := self._part(key)) is not None:
            part[2].move_to_end(key)
        return item[0]

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        del self._lru[key]
        self.bytes -= len(key) + len(value)
        if self._limits and (part := self._part(key)) is not None:
            part[1] -= len(key) + len(value)
            part[2].pop(key, None)

    def _put(self, key: str, value: bytes, ttl: int) -> None:
        size = len(key) + len(value)
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        part = self._part(key) if self._limits else None
        if part is not None:
            if size > part[0]:
                return
            while part[1] + size > part[0] and part[2]:
                self._drop(next(iter(part[2])))
                self.evictions += 1
        self._make_room(size)
        self._entries[key] = (value, self.clock() + ttl)
        self._lru[key] = None
        self.bytes += size
        if part is not None:
            part[1] += size
            part[2][key] = None

    def _make_room(self, size: int) -> None:
        """Evict the least recently used entries and generations until ``size`` more bytes fit."""
        while self.bytes + size > self.max_bytes and self._lru:
            oldest = next(iter(self._lru))
            if oldest in self._entries:
                self._drop(oldest)
                self.evictions += 1
            else:
                self._drop_generation(oldest)
                self.generation_evictions += 1

    # -- generations -------------------------------------------------------------------------------
    def _token(self, gen_key: str) -> str | None:
        item = self._gens.get(gen_key)
        if item is None:
            return None
        if item[1] <= self.clock():
            self._drop_generation(gen_key)
            return None
        self._lru.move_to_end(gen_key)
        return item[0]

    def _set_generation(self, gen_key: str, token: str, expires: float) -> None:
        if gen_key in self._gens:
            self._gens[gen_key] = (token, expires)  # tokens are all one length: the size is unchanged
            self._lru.move_to_end(gen_key)
            return
        size = len(gen_key) + len(token) + GENERATION_OVERHEAD
        if size > self.max_bytes:
            return  # kept nowhere: reads as missing, so nothing is ever stored under it
        self._make_room(size)
        self._gens[gen_key] = (token, expires)
        self._lru[gen_key] = None
        self.bytes += size

    def _drop_generation(self, gen_key: str) -> None:
        token, _ = self._gens.pop(gen_key)
        del self._lru[gen_key]
        self.bytes -= len(gen_key) + len(token) + GENERATION_OVERHEAD

    # -- the contract ------------------------------------------------------------------------------
    async def lookup(self, key: str, gen_keys: Sequence[str]) -> tuple[bytes | None, list[str | None]]:
        self.commands += 1
        return self._entry(key), [self._token(g) for g in gen_keys]

    async def ensure_generations(self, gen_keys: Sequence[str], ttl: int) -> list[str]:
        self.commands += 1
        tokens = []
        for g in gen_keys:
            token = self._token(g)
            if token is None:
                token = new_token()
                self._set_generation(g, token, self.clock() + ttl)
            tokens.append(token)
        return tokens

    async def store_if_current(self, key: str, value: bytes, ttl: int, gen_keys: Sequence[str],
                               expected: Sequence[str], gen_ttl: int,
                               lease: tuple[str, str] | None = None) -> bool:
        self.commands += 1
        if lease is not None:
            held = self._leases.get(lease[0])
            if held is not None and held[0] == lease[1]:
                del self._leases[lease[0]]
        if None in expected or [self._token(g) for g in gen_keys] != list(expected):
            return False
        expires = self.clock() + gen_ttl
        for g, token in zip(gen_keys, expected):
            self._set_generation(g, token, expires)  # all present: this makes no room, evicts nothing
        self._put(key, value, ttl)
        return True

    async def bump(self, gen_keys: Sequence[str], ttl: int) -> None:
        """A missing generation stays missing: an entry recorded the token of a generation that existed
        then, and whatever token it gets next is fresh and random (module doc)."""
        self.commands += 1
        expires = self.clock() + ttl
        for g in gen_keys:
            if self._token(g) is not None:
                self._set_generation(g, new_token(), expires)

    async def acquire_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        self.commands += 1
        held = self._leases.get(key)
        if held is not None and held[1] > self.clock():
            return False
        self._leases[key] = (owner, self.clock() + ttl_ms / 1000)
        return True

    async def release_lease(self, key: str, owner: str) -> None:
        self.commands += 1
        held = self._leases.get(key)
        if held is not None and held[0] == owner:
            del self._leases[key]

    async def stats(self) -> dict:
        return {"entries": len(self._entries), "bytes": self.bytes, "evictions": self.evictions,
                "generations": len(self._gens), "max_bytes": self.max_bytes}

    async def ping(self) -> None:
        return None

    def sweep(self) -> int:
        """Drop expired entries, generations and leases; returns how many went."""
        now = self.clock()
        dead = [k for k, (_, exp) in self._entries.items() if exp <= now]
        for k in dead:
            self._drop(k)
        dead_gens = [k for k, (_, exp) in self._gens.items() if exp <= now]
        for k in dead_gens:
            self._drop_generation(k)
        for k in [k for k, (_, exp) in self._leases.items() if exp <= now]:
            del self._leases[k]
        return len(dead) + len(dead_gens)

    async def close(self) -> None:
        self._entries.clear()
        self._gens.clear()
        self._lru.clear()
        self.bytes = 0
        for part in self._limits.values():
            part[1] = 0
            part[2].clear()
