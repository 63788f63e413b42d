"""Scenario (d): what a purge costs with 1k, 100k and 1M entries stored under the purged namespace.

Set-up, through the proxy (Redis store): one user is awarded a badge and reads it twice (a MISS that
stores the entry, then a HIT). That entry's stored bytes are copied, server-side in Lua chunks, under
N keys of the same rule and namespace (``achievements:{user}:achievement:{bN}``), with their exact-key
generations, so the copies are live entries: a GET of one of them through the proxy is a HIT, checked
before each level's purges. Levels grow the same set (1k, then 99k more, ...); before each level the
namespace gets back the token the copies recorded, which the previous level's purges had replaced. Then
``purge_endpoint_calls`` purges through the manual invalidation endpoint (admin credential, timed by
the client, HTTP included; the first one is checked: the same GET is now a MISS) and ``purge_bumps``
calls of ``RedisStore.bump`` on the namespace's generation key (the store operation alone). A purge
is a generation bump, one key written whatever N is, so the per-purge time should not depend on N;
``ratio_1m_vs_1k`` says whether it does. The entries stay in Redis (dead) until their TTL.
"""
from __future__ import annotations

import asyncio
import json
import os
import statistics
import time

import redis

from proxy.core.keys import escape_value
from proxy.core.policy import namespace_gen_key
from proxy.core.rulesfile import load_rules
from proxy.store.redis import RedisStore

from .context import Bench
from .procs import ROOT, log
from .workload import mint

PURGE_USER = "bench-purge-user-0001"
CHUNK = 10_000
# An entry and, when the rule has one, its exact-key generation (copied token), for ids b<lo>..b<hi>.
FILL = """
local base, value, ttl, gen_base, token, gen_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[6], ARGV[7], ARGV[8]
for i = tonumber(ARGV[4]), tonumber(ARGV[5]) do
  redis.call('set', base .. '{b' .. i .. '}', value, 'ex', ttl)
  if gen_base ~= '' then
    redis.call('set', gen_base .. '{b' .. i .. '}', token, 'ex', gen_ttl)
  end
end
return tonumber(ARGV[5]) - tonumber(ARGV[4]) + 1
"""


def _stats_ms(samples: list[float]) -> dict:
    ordered = sorted(samples)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]
    return {"n": len(ordered), "p50_ms": round(q(50) * 1000, 4), "p99_ms": round(q(99) * 1000, 4),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 4), "max_ms": round(ordered[-1] * 1000, 4)}


async def _bumps(url: str, gen_key: str, ttl: int, count: int) -> list[float]:
    store = RedisStore.from_url(url, timeout=2.0)
    try:
        await store.bump([gen_key], ttl)  # connection set-up and script load, not timed
        out = []
        for _ in range(count):
            t0 = time.perf_counter()
            await store.bump([gen_key], ttl)
            out.append(time.perf_counter() - t0)
        return out
    finally:
        await store.close()


def _store_usable(bench: Bench, proxy, timeout: float = 15.0) -> None:
    """Wait (bounded) until the proxy uses its store again (/readyz: circuit closed, store usable)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, body = bench.http("GET", proxy.url + "/readyz")
        try:
            ready = json.loads(body)
            if ready.get("circuit") == "closed" and ready.get("store_usable", True):
                return
        except ValueError:
            pass
        time.sleep(0.1)
    log("  (d) the proxy's store circuit did not close in time; the check below may read BYPASS")


def scenario(bench: Bench) -> dict:
    s = bench.settings
    proxy, rds = bench["proxy-redis"], bench["redis"]
    client = redis.Redis(port=rds.extra["port"], socket_timeout=30)
    token = mint(PURGE_USER, bench.secret, ttl=6 * 3600)
    auth = {"Authorization": f"Bearer {token}"}
    admin = {"Authorization": f"Bearer {bench.admin_token}"}
    status, _, body = bench.http("POST", proxy.url + "/api/v1/achievements/award", auth, {"badge_type": "gold"})
    aid = json.loads(body)["body"]["achievement"]["id"]
    rules = load_rules(str(ROOT / "rules.yaml"))
    rule = next(r for r in rules.rules if r.name == "achievement")
    gen_key = namespace_gen_key(rules.prefix, f"achievements:{{{escape_value(PURGE_USER)}}}")
    gen_ttl = 24 * 3600
    fill = client.register_script(FILL)
    log(f"(d) purge cost: levels {', '.join(f'{n:,}' for n in s.purge_levels)} entries under one namespace")

    found: list[bytes] = []

    def live_entry() -> tuple[str, bytes, str, bytes]:
        """Read the real achievement through the proxy until it is stored; return its key and bytes."""
        for _ in range(3):
            bench.http("GET", f"{proxy.url}/api/v1/achievements/{aid}", auth)
            if bench.http("GET", f"{proxy.url}/api/v1/achievements/{aid}", auth)[1].get("X-Cache") == "HIT":
                break
        if not found:  # before any copy exists, so the scan is short
            found.extend(k for k in client.scan_iter(match=f"{rules.prefix}:achievements:*:achievement:*",
                                                     count=1000) if escape_value(aid).encode() in k)
            if len(found) != 1:
                raise RuntimeError(f"expected one stored entry for the achievement, found {found}")
        value = client.get(found[0])
        if value is None:
            raise RuntimeError("the achievement's entry is not stored: nothing to copy")
        key = found[0].decode()
        # the entry's own exact-key generation, if the rules guard it with one
        gen = f"{rules.prefix}:gen:{key[len(rules.prefix) + 1:]}"
        token = client.get(gen)
        return key, value, (gen if token is not None else ""), token or b""

    key, value, gen, token = live_entry()
    base = key[:key.rindex("{")]
    gen_base = gen[:gen.rindex("{")] if gen else ""
    ns_token = client.get(gen_key)
    if ns_token is None:
        raise RuntimeError(f"generation key {gen_key!r} not found: the benchmark would purge nothing")
    levels, stored = [], 0
    for n in s.purge_levels:
        # Copies recorded the namespace token of the original entry: give the namespace that token back
        # (the previous level's purges replaced it), so every copy, old or new, is live again.
        client.set(gen_key, ns_token, ex=gen_ttl)
        t0 = time.monotonic()
        for lo in range(stored, n, CHUNK):
            fill(args=[base, value, rule.ttl, lo, min(n, lo + CHUNK) - 1, gen_base, token, gen_ttl])
        stored = max(stored, n)
        fill_s = time.monotonic() - t0
        _store_usable(bench, proxy)  # a long fill may have made the proxy's store checks time out
        sample = f"{proxy.url}/api/v1/achievements/b{n // 2}"
        hit_before = bench.http("GET", sample, auth)[1].get("X-Cache")
        info = client.info("memory")
        dbsize = client.dbsize()
        log(f"  (d) {n:>9,} entries stored in {fill_s:.1f} s (db size {dbsize:,}, {info['used_memory_human']}); "
            f"a copy reads as {hit_before}")

        endpoint, refused = [], 0
        miss_after = None
        for i in range(s.purge_endpoint_calls):
            t0 = time.perf_counter()
            st, hdrs, _ = bench.http("POST", proxy.url + "/api/v1/achievements/cache/invalidate", admin,
                                     {"user_id": PURGE_USER})
            elapsed = time.perf_counter() - t0
            if st == 429:
                refused += 1
                time.sleep(float(hdrs.get("Retry-After", "1")))
                continue
            if st != 200:
                raise RuntimeError(f"manual invalidation answered {st}")
            endpoint.append(elapsed)
            if miss_after is None:
                _store_usable(bench, proxy)
                miss_after = bench.http("GET", sample, auth)[1].get("X-Cache")
        affinity = os.sched_getaffinity(0)
        try:
            if len(affinity) > 1 and 1 in affinity:
                os.sched_setaffinity(0, {1})  # the client on core 1, Redis on core 0
            bumps = asyncio.run(_bumps(rds.url, gen_key, gen_ttl, s.purge_bumps))
        finally:
            os.sched_setaffinity(0, affinity)
        level = {"entries": n, "exact_key_generations": bool(gen), "db_size": dbsize, "used_memory": info["used_memory"],
                 "used_memory_human": info["used_memory_human"], "fill_s": round(fill_s, 2),
                 "copy_before_purge": hit_before, "copy_after_first_purge": miss_after,
                 "endpoint": _stats_ms(endpoint) if endpoint else None, "endpoint_refused_429": refused,
                 "bump": _stats_ms(bumps)}
        levels.append(level)
        log(f"  (d) {n:>9,}: endpoint p50 {level['endpoint'] and level['endpoint']['p50_ms']} ms, "
            f"bump p50 {level['bump']['p50_ms']} ms p99 {level['bump']['p99_ms']} ms; after purge: {miss_after}")
    client.close()  # the entries stay: this Redis is discarded with the run

    def ratio(kind: str) -> float | None:
        first, last = levels[0].get(kind), levels[-1].get(kind)
        if not first or not last or not first["p50_ms"]:
            return None
        return round(last["p50_ms"] / first["p50_ms"], 3)

    return {"scenario": "d", "title": "purge cost against entries stored", "namespace": "achievements:{user}",
            "levels": levels, "ratio_largest_vs_smallest": {"bump_p50": ratio("bump"), "endpoint_p50": ratio("endpoint")},
            "smallest": levels[0]["entries"] if levels else None, "largest": levels[-1]["entries"] if levels else None}
