"""The store contract every backend (memory, Redis, Redis Cluster) passes in ``tests/store_contract``.

Two kinds of keys live in a store: *entries* (an encoded ``Entry`` under its rendered key) and
*generations* (a random token per namespace, under ``gen_key``). The invariants the proxy relies on:

* ``lookup`` returns the entry and the current tokens of its guarding generations **in one round trip**.
* A missing generation is never equal to any token an entry recorded: ``ensure_generations`` creates
  missing ones with fresh random tokens, so data loss or eviction can only turn hits into misses.
* ``store_if_current`` writes the entry only if every guarding generation still holds the token read
  before the origin fetch (atomically: a Lua script in Redis, one synchronous step in memory). This is
  the fill guard: a GET whose fetch started before a purge can never be stored after it.
* ``bump`` replaces tokens: one write per namespace, whatever the number of entries it covers.
* Generations outlive the entries they guard: every write sets their TTL to ``generation_ttl``.
"""
from __future__ import annotations

import secrets
from typing import Protocol, Sequence


def new_token() -> str:
    return secrets.token_hex(8)


class Store(Protocol):
    name: str

    async def lookup(self, key: str, gen_keys: Sequence[str]) -> tuple[bytes | None, list[str | None]]:
        """The entry under ``key`` (or None) and the token of each generation (None where missing)."""

    async def ensure_generations(self, gen_keys: Sequence[str], ttl: int) -> list[str]:
        """Current tokens, creating missing generations with fresh random tokens."""

    async def store_if_current(self, key: str, value: bytes, ttl: int, gen_keys: Sequence[str],
                               expected: Sequence[str], gen_ttl: int,
                               lease: tuple[str, str] | None = None) -> bool:
        """Write ``value`` with ``ttl`` seconds only if every generation still holds ``expected``.

        ``lease`` ``(lease key, owner)``: also drop that fill lease if ``owner`` still holds it, whatever
        the outcome, in the same round trip (the key is in the entry's slot: ``<key>|lease``). Released
        whenever this returns; if it raises, the caller may ``release_lease`` (or let it expire)."""

    async def bump(self, gen_keys: Sequence[str], ttl: int) -> None:
        """Give every generation a new random token (the purge)."""

    async def acquire_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take a short fill lease if nobody holds it (cross-instance coalescing)."""

    async def release_lease(self, key: str, owner: str) -> None:
        """Drop the lease if ``owner`` still holds it."""

    async def stats(self) -> dict:
        """Entries, bytes and evictions where the backend knows them."""

    async def ping(self) -> None:
        """Raise if the store cannot answer."""

    async def close(self) -> None:
        ...
