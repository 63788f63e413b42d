"""The Redis Cluster store's cache of *global* keys' tokens (no hash tag: the epoch, which every entry
records, lives in no entry's slot).

Tokens are cached in this process and refreshed in the background every ``refresh`` seconds, and at
once after this process bumps or creates them. A cached token older than three refresh periods (the
background refresh failed) is read again before it is used; a missing key is read again each time
(another instance may create it at any moment). Each key carries a version that this process's bumps
raise, so a refresh read before a bump can never overwrite the newer token.
"""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, Iterable, Sequence

from . import replies


class GlobalTokens:
    def __init__(self, get: Callable[[str], Awaitable[bytes | str | None]], refresh: float,
                 failures: tuple[type[BaseException], ...]):
        self._get, self.refresh, self._failures = get, float(refresh), failures
        # global key -> [token or None, monotonic time read, version]
        self._tokens: dict[str, list] = {}
        self._refresher: asyncio.Task | None = None

    def version(self, key: str) -> int:
        state = self._tokens.get(key)
        return state[2] if state else 0

    def set(self, key: str, token: str | None, version: int | None = None, bump: bool = False) -> None:
        """Cache ``token``; a read that started before a newer write (``version`` is old) is dropped."""
        state = self._tokens.get(key)
        if state is None:
            self._tokens[key] = [token, time.monotonic(), 1 if bump else 0]
            return
        if version is not None and version != state[2]:
            return
        state[0], state[1] = token, time.monotonic()
        if bump:
            state[2] += 1

    def cached(self, keys: Iterable[str]) -> list[str] | None:
        """Cached tokens of ``keys`` if every one is cached, present and fresh enough, else None."""
        limit = time.monotonic() - 3 * self.refresh
        out = []
        for key in keys:
            state = self._tokens.get(key)
            if state is None or state[0] is None or state[1] < limit:
                return None
            out.append(state[0])
        return out

    async def read(self, keys: Sequence[str]) -> list[str | None]:
        versions = [self.version(k) for k in keys]
        values = await asyncio.gather(*(self._get(k) for k in keys))
        tokens = [replies.text(v) for v in values]
        for key, token, version in zip(keys, tokens, versions):
            self.set(key, token, version)
        return tokens

    async def tokens(self, keys: Sequence[str]) -> list[str | None]:
        self.start_refresher()
        cached = self.cached(keys)
        return cached if cached is not None else await self.read(keys)

    def start_refresher(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            if self._tokens:
                try:
                    await self.read(list(self._tokens))
                except self._failures:
                    pass  # the cache ages; past three periods, callers read the keys themselves

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            try:
                await self._refresher
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - a closed loop or a last failure
                pass
