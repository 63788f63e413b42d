"""Fixtures of the cluster suite: the functional suite's proxy fixtures, on a Redis Cluster store.

The cluster processes come from ``harness.py`` (``redis_cluster``, ``cluster_url``, ``start_cluster``,
made available by ``tests/conftest.py``). ``make_proxy`` / ``proxy`` / ``backend`` / ``poll`` are those of
``tests/functional/conftest.py``; here ``make_store`` returns a ``RedisClusterStore`` on the shared
cluster (flushed per test), and ``cluster_store(url, **options)`` one on any cluster.

Helpers: ``users_on_distinct_primaries(cluster, n)`` picks user ids whose keys live on different primaries.
"""
from __future__ import annotations

import uuid
from typing import Any, Callable

import pytest

from proxy.store.cluster import RedisClusterStore
from tests.functional.conftest import (Backend, ProxyClient, backend, make_proxy, mint_token,  # noqa: F401
                                       new_user, poll, proxy)

PREFIX = "katiba360:proxy"


def profile_key(user: str) -> str:
    return f"{PREFIX}:user:{{{user}}}:profile"


def users_on_distinct_primaries(cluster, n: int = 3) -> list[str]:
    """``n`` fresh user ids whose entries and generations live on ``n`` different primaries."""
    chosen: dict[int, str] = {}
    for _ in range(10_000):
        user = str(uuid.uuid4())
        chosen.setdefault(cluster.primary_of(profile_key(user)), user)
        if len(chosen) == n:
            return list(chosen.values())
    raise AssertionError(f"could not place {n} users on distinct primaries")


@pytest.fixture
def store_kind() -> str:
    return "cluster"


@pytest.fixture
def cluster_store() -> Callable[..., RedisClusterStore]:
    def make(url: str, **options: Any) -> RedisClusterStore:
        options.setdefault("timeout", 1.0)
        return RedisClusterStore.from_url(url, **options)

    return make


@pytest.fixture
def make_store(cluster_url, cluster_store) -> Callable[[], RedisClusterStore]:
    return lambda: cluster_store(cluster_url)
