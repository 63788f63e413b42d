"""Stores: where entries and namespace generations live, behind one small interface (``base.Store``).

Owns the embedded memory store, the Redis and Redis Cluster stores (``open_store`` picks one from the
URL), what both Redis stores make of replies and failures (replies.py), their connection settings
(redisconf.py: TLS, credentials, Sentinel), the guard every call goes through (guard.py: timeouts,
circuit breaker, write-behind) and the in-process L1. It may import ``proxy.core`` only.
"""
from .base import Store, new_token
from .memory import MemoryStore

__all__ = ["Store", "MemoryStore", "new_token", "open_store"]


def open_store(url: str | None, **options) -> Store:
    """``None`` → the embedded MemoryStore; ``redis://``, ``rediss://`` → RedisStore;
    ``redis+cluster://host:port[,host:port]``, ``rediss+cluster://`` → RedisClusterStore."""
    if not url:
        return MemoryStore(max_bytes=options.get("memory_max_bytes", 256 << 20))
    if url.startswith(("redis+cluster://", "rediss+cluster://")):
        from .cluster import RedisClusterStore

        return RedisClusterStore.from_url(url, **options)
    from .redis import RedisStore  # imported lazily: the memory default needs no redis client

    return RedisStore.from_url(url, **options)
