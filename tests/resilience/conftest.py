"""Fixtures of the resilience suite: the functional suite's (``backend``, ``make_proxy``, ``store_kind``,
``poll``, ...) plus a Redis store that counts its lookups and a ``/metrics`` sample reader.

Every test brings its own ``redis-server`` (``start_redis``) when it breaks Redis, so a killed or
paused server never leaks into another test.
"""
from __future__ import annotations

import asyncio

import pytest

from proxy.store.redis import RedisStore
from tests.functional.conftest import (API, backend, make_proxy, make_store, mint_token, new_user,  # noqa: F401
                                       poll, proxy, sample)

PROFILE = f"{API}/users/profile"


class CountingRedisStore(RedisStore):
    """The real RedisStore; ``lookups`` counts the lookups the proxy asked it for (reached Redis or not)."""

    lookups = 0

    async def lookup(self, key, gen_keys):
        self.lookups += 1
        return await super().lookup(key, gen_keys)


async def warm(proxy, user: str, path: str = PROFILE, attempts: int = 20):
    """Read until a HIT (a loaded machine may time out one store call); returns the HIT."""
    for _ in range(attempts):
        reply = await proxy.get(path, user)
        assert reply.status == 200 and reply.code == 200, reply
        if reply.x_cache == "HIT":
            return reply
        await asyncio.sleep(0.02)
    pytest.fail(f"{path} never became a HIT")


@pytest.fixture
def store_kind() -> str:
    """Tests here bring their own store (a private Redis they may break): run each once."""
    return "private"


@pytest.fixture
def redis_store():
    """``redis_store(url, timeout=0.25)``: a CountingRedisStore with a short store timeout."""
    def make(url: str, timeout: float = 0.25) -> CountingRedisStore:
        return CountingRedisStore.from_url(url, timeout=timeout)
    return make
