"""``cache-proxy purge`` against Redis (``--redis``) and a running proxy (``--url`` → ``POST /_cache/purge``),
``cache-proxy stats`` (``--url`` → ``GET /_cache/stats``, ``--redis``), and the patterns both refuse."""
from __future__ import annotations

import asyncio
import json

import pytest

from proxy.ops.cli import main
from proxy.store.redis import RedisStore

from .conftest import ADMIN, PROFILE, RULES_PATH

LEADERBOARD = "/api/v1/achievements/leaderboard?limit=10"
INVALID = ["user:*", "*", "user:{someone}", "nope:{x}:*", "user:{a}:profile:*", "user:{}:*"]


async def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``cache-proxy ARGV`` in a thread (it runs its own event loop); (exit code, stdout, stderr)."""
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_purge_via_redis(make_proxy, backend, redis_url, redis_server, capsys):
    ops = await make_proxy(store=RedisStore.from_url(redis_url))
    alice, bob = "purge-redis-alice", "purge-redis-bob"
    for user in (alice, bob):
        assert await ops.x_cache(PROFILE, user) == "MISS"
        assert await ops.x_cache(PROFILE, user) == "HIT"
    redis_server.reset_stats()
    code, out, err = await cli(capsys, "purge", f"user:{{{alice}}}:*", "--redis", redis_url, "--rules", RULES_PATH)
    assert (code, out.strip()) == (0, f"purged user:{{{alice}}}:*"), err
    counts = redis_server.command_counts()
    assert counts.get("scan", 0) == 0 and counts.get("keys", 0) == 0 and counts.get("del", 0) == 0
    assert await ops.x_cache(PROFILE, alice) == "MISS"
    assert await ops.x_cache(PROFILE, bob) == "HIT"  # only the named namespace went
    assert await backend.count(PROFILE) == 3

    code, out, _ = await cli(capsys, "purge", "--all", "--redis", redis_url, "--rules", RULES_PATH)
    assert code == 0
    assert await ops.x_cache(PROFILE, bob) == "MISS"


@pytest.mark.parametrize("pattern", INVALID)
async def test_invalid_patterns_are_refused_via_redis(redis_url, capsys, pattern):
    code, out, err = await cli(capsys, "purge", pattern, "--redis", redis_url, "--rules", RULES_PATH)
    assert code == 1 and out == ""
    assert "user:{user_id}:*" in err  # the declared namespaces are listed


async def test_purge_via_url(make_proxy, backend, capsys):
    ops = await make_proxy()
    alice, bob = "purge-url-alice", "purge-url-bob"
    for user in (alice, bob):
        assert await ops.x_cache(PROFILE, user) == "MISS"
    assert await ops.x_cache(LEADERBOARD, alice) == "MISS"
    code, out, err = await cli(capsys, "purge", f"user:{{{alice}}}:*", "--url", ops.base, "--admin-token", ADMIN)
    assert (code, out.strip()) == (0, f"purged user:{{{alice}}}:*"), err
    assert await ops.x_cache(PROFILE, alice) == "MISS"
    assert await ops.x_cache(PROFILE, bob) == "HIT"
    assert await ops.metric("katiba_cache_purges_total", rule="manual") == 1

    code, out, err = await cli(capsys, "purge", "achievements:global:leaderboard", "--url", ops.base,
                               "--admin-token", ADMIN)
    assert code == 0, err  # an exact key
    assert await ops.x_cache(LEADERBOARD, bob) == "MISS"

    code, _, err = await cli(capsys, "purge", "--all", "--url", ops.base, "--admin-token", ADMIN)
    assert code == 0, err
    assert await ops.x_cache(PROFILE, bob) == "MISS"
    assert await ops.metric("katiba_cache_epoch_bumps_total") == 1


@pytest.mark.parametrize("pattern", INVALID)
async def test_invalid_patterns_are_refused_via_url(make_proxy, capsys, pattern):
    ops = await make_proxy()
    code, out, err = await cli(capsys, "purge", pattern, "--url", ops.base, "--admin-token", ADMIN)
    assert code == 1 and out == ""
    assert "declared namespaces:" in err and "achievements:global:*" in err
    status, _, body = await ops.request("POST", "/_cache/purge", headers=ops.admin(), json={"pattern": pattern})
    assert status == 400 and "user:{user_id}:*" in body["namespaces"]
    assert await ops.metric("katiba_cache_purges_total", rule="manual") == 0


async def test_purge_endpoint_needs_admin(make_proxy, capsys):
    ops = await make_proxy()
    status, _, _ = await ops.request("POST", "/_cache/purge", json={"pattern": "achievements:global:*"})
    assert status == 401
    code, _, err = await cli(capsys, "purge", "achievements:global:*", "--url", ops.base, "--admin-token", "nope")
    assert code == 1 and "admin credential refused" in err
    status, _, _ = await ops.get("/_cache/purge", headers=ops.admin())
    assert status == 405
    assert await ops.metric("katiba_cache_purges_total", rule="manual") == 0


async def test_stats_via_url(make_proxy, capsys):
    ops = await make_proxy()
    for _ in range(3):
        await ops.get(PROFILE, "stats-user")  # MISS, HIT, HIT
    await ops.get(PROFILE)  # no token: BYPASS
    status, _, _ = await ops.get("/_cache/stats")
    assert status == 401
    code, out, err = await cli(capsys, "stats", "--url", ops.base, "--admin-token", ADMIN, "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["rules"]["user_profile"] == {"hit": 2, "stale": 0, "miss": 1, "bypass": 1, "requests": 4,
                                              "hit_rate": 0.5}
    assert stats["rules"]["leaderboard"]["requests"] == 0 and "internal" not in stats["rules"]
    assert stats["store"]["name"] == "memory" and stats["store"]["entries"] == 1 and stats["store"]["bytes"] > 0
    code, out, _ = await cli(capsys, "stats", "--url", ops.base, "--admin-token", ADMIN)
    row = next(line for line in out.splitlines() if line.startswith("user_profile"))
    assert row.split() == ["user_profile", "4", "2", "0", "1", "1", "50.0%"]
    assert "entries 1" in out


async def test_stats_via_redis(make_proxy, redis_url, capsys):
    ops = await make_proxy(store=RedisStore.from_url(redis_url))
    await ops.get(PROFILE, "stats-redis-user")
    code, out, err = await cli(capsys, "stats", "--redis", redis_url, "--json")
    assert code == 0, err
    store = json.loads(out)["store"]
    assert store["name"] == "redis" and store["entries"] >= 1 and store["bytes"] > 0
    code, out, _ = await cli(capsys, "stats", "--redis", redis_url)
    assert "store: redis" in out and "hit rate per rule: ask a running proxy" in out
