"""Scenario (e): coalescing, i.e. how many backend requests 100 concurrent identical misses cost.

The stand-in's DB delay is raised to ``coalesce_delay_ms`` (200 ms: every request of the burst arrives
while the first fill is still at the backend), then restored. Each case reads one fresh key: the
profile of a user never seen before (``GET /api/v1/users/profile`` with that user's token), sent by
``coalesce_requests`` (100) concurrent GETs with aiohttp, on connections opened beforehand so that the
burst is not spread by connection set-up. The backend's counter for the route
(``GET /_standin/stats`` -> ``by_route``, zeroed with ``POST /_standin/reset-stats`` first) says how many
reached the backend. Cases:

* one proxy, Redis store (goal: 1 backend request; the others wait for the in-process fill);
* ``coalesce_instances`` (3) proxies on the same Redis, the GETs spread over them (34/33/33, sent round
  robin) (goal: 1, at most one per instance: the fill lease in Redis makes the other instances poll
  the store for the entry instead of fetching);
* one proxy, memory store (goal: 1).

It is a count, not a throughput: nothing is pinned, and the figures do not depend on the machine's load
as long as the burst fits in the delay (``spread_ms``, the time the client took to send it, says so).
The proxies of the run are reused when they exist; the others are started here and stopped at the end.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter

import aiohttp

from .context import Bench
from .procs import Service, log, start_proxy
from .workload import mint

PATH = "/api/v1/users/profile"
ROUTE = "GET /api/v1/users/profile"
RULE = "user_profile"


def _delay(bench: Bench, ms: float | None = None) -> float:
    url = bench["standin"].url + "/_standin/delay"
    _, _, body = bench.http("POST", url, body={"delay_ms": ms}) if ms is not None else bench.http("GET", url)
    return json.loads(body)["delay_ms"]


def _proxy(bench: Bench, name: str, store: str, started: list[str]) -> Service:
    """The run's proxy ``proxy-<name>`` if there is one, else a new one (default rules.yaml)."""
    key = f"proxy-{name}"
    if key not in bench.services:
        bench.services[key] = start_proxy(bench.tmp, name, bench["standin"].url, bench.secret, bench.admin_token,
                                          redis_url=bench["redis"].url if store == "redis" else None)
        started.append(key)
    return bench[key]


async def _burst(plan: list[int], urls: list[str], headers: dict[str, str]) -> tuple[list[dict], float]:
    """Send one GET per entry of ``plan`` (an index into ``urls``) at once; returns the answers and the
    time, in ms, the client took to start them all."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        async def warm(url: str) -> None:
            async with session.get(url + "/healthz") as r:
                await r.read()

        # one pooled connection per request of the burst (concurrent, so none is reused while warming)
        await asyncio.gather(*(warm(urls[i]) for i in plan), return_exceptions=True)
        go = asyncio.Event()
        starts: list[float] = []

        async def one(i: int) -> dict:
            await go.wait()
            t0 = time.perf_counter()
            starts.append(t0)
            try:
                async with session.get(urls[i] + PATH, headers=headers) as r:
                    body = await r.read()
                    return {"instance": i, "status": r.status, "x_cache": r.headers.get("X-Cache", ""),
                            "cache_status": r.headers.get("Cache-Status", ""), "bytes": len(body),
                            "start": t0, "end": time.perf_counter()}
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                return {"instance": i, "status": 0, "x_cache": "", "cache_status": "", "bytes": 0,
                        "error": f"{type(exc).__name__}: {exc}", "start": t0, "end": time.perf_counter()}

        tasks = [asyncio.ensure_future(one(i)) for i in plan]
        await asyncio.sleep(0)
        go.set()
        answers = await asyncio.gather(*tasks)
    spread = (max(starts) - min(starts)) * 1000 if starts else 0.0
    return answers, spread


def run_case(bench: Bench, case: str, label: str, store: str, proxies: list[Service], goal: int,
             most: int) -> dict:
    s = bench.settings
    n = s.coalesce_requests
    plan = [i % len(proxies) for i in range(n)]  # round robin: 100 over 3 is 34/33/33
    user = f"bench-coalesce-{case}-{os.urandom(4).hex()}"
    headers = {"Authorization": f"Bearer {mint(user, bench.secret, ttl=3600)}"}
    before = [bench.metrics(p, family="katiba_cache_coalesced_waiters", label="") for p in proxies]
    bench.standin_reset()
    answers, spread = asyncio.run(_burst(plan, [p.url for p in proxies], headers))
    stats = bench.standin_stats()
    after = [bench.metrics(p, family="katiba_cache_coalesced_waiters", label="") for p in proxies]
    backend = int(stats.get("by_route", {}).get(ROUTE, 0))
    t0 = min(a["start"] for a in answers)
    took = sorted((a["end"] - t0) * 1000 for a in answers)
    per_instance = []
    for i, p in enumerate(proxies):
        mine = [a for a in answers if a["instance"] == i]
        per_instance.append({"proxy": p.name, "requests": len(mine),
                             "x_cache": dict(Counter(a["x_cache"] for a in mine)),
                             "collapsed": sum("collapsed" in a["cache_status"] for a in mine),
                             "coalesced_waiters": int(after[i].get((RULE, ""), 0) - before[i].get((RULE, ""), 0))})
    statuses = Counter(str(a["status"]) for a in answers)
    errors = [a["error"] for a in answers if a.get("error")][:5]
    row = {"case": case, "label": label, "store": store, "instances": len(proxies),
           "split": [pi["requests"] for pi in per_instance], "requests": n, "user": user,
           "backend_requests": backend, "backend_requests_all_routes": stats.get("requests"),
           "goal": goal, "at_most": most, "met": backend <= most and statuses.get("200", 0) == n,
           "statuses": dict(statuses), "x_cache": dict(Counter(a["x_cache"] for a in answers)),
           "collapsed": sum(pi["collapsed"] for pi in per_instance),
           "coalesced_waiters": sum(pi["coalesced_waiters"] for pi in per_instance),
           "spread_ms": round(spread, 2), "first_answer_ms": round(took[0], 1), "last_answer_ms": round(took[-1], 1),
           "per_instance": per_instance}
    if errors:
        row["errors"] = errors
    log(f"  (e) {label}: {n} GETs ({'/'.join(map(str, row['split']))}), backend requests {backend} (goal {goal}"
        f"{f', at most {most}' if most != goal else ''}), statuses {dict(statuses)}, X-Cache {row['x_cache']}, "
        f"sent within {spread:.1f} ms, last answer {took[-1]:.0f} ms")
    return row


def scenario(bench: Bench) -> dict:
    s = bench.settings
    started: list[str] = []
    old = _delay(bench)
    log(f"(e) coalescing: {s.coalesce_requests} concurrent identical misses, stand-in delay "
        f"{s.coalesce_delay_ms:g} ms (was {old:g} ms)")
    cases = []
    try:
        redis1 = _proxy(bench, "redis", "redis", started)
        more = [_proxy(bench, f"redis-e{i + 2}", "redis", started) for i in range(s.coalesce_instances - 1)]
        memory = _proxy(bench, "memory", "memory", started)
        _delay(bench, s.coalesce_delay_ms)
        cases.append(run_case(bench, "redis-1", "Redis store, 1 instance", "redis", [redis1], 1, 1))
        cases.append(run_case(bench, f"redis-{s.coalesce_instances}",
                              f"Redis store, {s.coalesce_instances} instances sharing it", "redis",
                              [redis1, *more], 1, s.coalesce_instances))
        cases.append(run_case(bench, "memory-1", "memory store, 1 instance", "memory", [memory], 1, 1))
    finally:
        _delay(bench, old)
        for key in reversed(started):
            bench.services.pop(key).stop()
    return {"scenario": "e", "title": "coalescing: concurrent identical misses", "route": ROUTE,
            "requests": s.coalesce_requests, "backend_delay_ms": s.coalesce_delay_ms, "restored_delay_ms": old,
            "instances": s.coalesce_instances, "cases": cases}
