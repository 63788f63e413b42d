"""Scenario (b): misses, i.e. what the proxy adds to a request it has to send to the backend.

Every request is a new cache key: a leaderboard page ``?limit=10&offset=<never asked before>`` (the
leaderboard rule keys on limit and offset, and needs a valid token), so each is a miss through the
proxy (store lookup, backend fetch, guarded store) and one query at the backend (20 ms simulated DB
time). Direct and proxied runs are paced at the same rate (``miss_rate`` requests/s over
``miss_connections`` connections, far below capacity) and interleaved in rounds; the overhead of a round
is p50(proxy) - p50(direct) of that round, and ``miss_overhead_ms`` is the median over rounds. An
unpaced run per target gives the throughput on misses against the backend alone.
"""
from __future__ import annotations

import statistics
import time

from .context import CLIENT_CORES, Bench, metric_delta
from .procs import Service, log
from .workload import mint
from .wrk import Run, run_wrk

PREFIX = "/api/v1/achievements/leaderboard?limit=10&offset="
MISS_USER = "bench-miss-user-0001"


def _run(bench: Bench, name: str, svc: Service, pids: tuple[int, ...], token: str, connections: int,
         duration: float, rate: float, base: int, label: str) -> Run:
    proxy = name != "direct"
    before_backend = bench.standin_stats()
    before = bench.metrics(svc) if proxy else {}
    run = run_wrk(svc.url + PREFIX + "0", script="miss.lua", connections=connections, threads=min(connections, 4),
                  duration=duration, headers={"Authorization": f"Bearer {token}"}, rate=rate,
                  env={"BENCH_MISS_PREFIX": PREFIX, "BENCH_MISS_BASE": str(base)},
                  max_per_thread=int(duration * 100_000), cores=CLIENT_CORES, server_pids=pids, label=label)
    after_backend = bench.standin_stats()
    run.extra.update(target=name, connections=connections, backend_requests=after_backend["requests"] - before_backend["requests"],
                     backend_queries=after_backend["queries"] - before_backend["queries"])
    if rate:
        run.extra["target_rps"] = rate
    if proxy:
        delta = metric_delta(before, bench.metrics(svc))
        run.extra["results"] = {res: int(v) for (rule, res), v in delta.items() if rule == "leaderboard"}
    return run


def scenario(bench: Bench) -> dict:
    s = bench.settings
    token = mint(MISS_USER, bench.secret, ttl=6 * 3600)
    targets = [("direct", bench["standin"], (bench["standin"].pid,)),
               ("redis", bench["proxy-redis"], (bench["proxy-redis"].pid, bench["redis"].pid, bench["standin"].pid)),
               ("memory", bench["proxy-memory"], (bench["proxy-memory"].pid, bench["standin"].pid))]
    base = int(time.time()) % 100_000 * 1_000_000_000  # offsets never used by an earlier run
    log(f"(b) misses: paced {s.miss_rate:g} req/s over {s.miss_connections} connections, {s.miss_rounds} rounds")
    rounds: list[dict[str, Run]] = []
    for rnd in range(s.miss_rounds):
        this: dict[str, Run] = {}
        for name, svc, pids in targets:
            base += 100_000_000
            this[name] = _run(bench, name, svc, pids, token, s.miss_connections, s.miss_duration, s.miss_rate, base,
                              f"{name}/paced")
        rounds.append(this)
        log("  (b) round %d: p50 direct %.2f ms, redis %.2f ms (+%.2f), memory %.2f ms (+%.2f)" % (
            rnd + 1, this["direct"].p(50), this["redis"].p(50), this["redis"].p(50) - this["direct"].p(50),
            this["memory"].p(50), this["memory"].p(50) - this["direct"].p(50)))

    overhead = {name: round(statistics.median(r[name].p(50) - r["direct"].p(50) for r in rounds), 3)
                for name in ("redis", "memory")}
    overhead_p99 = {name: round(statistics.median(r[name].p(99) - r["direct"].p(99) for r in rounds), 3)
                    for name in ("redis", "memory")}
    paced = []
    for name, _, _ in targets:
        runs = [r[name] for r in rounds]
        mid = sorted(runs, key=lambda r: r.p(50))[len(runs) // 2]
        row = mid.summary()
        row.update(target=name, per_round_p50_ms=[round(r.p(50), 3) for r in runs])
        paced.append(row)

    unpaced = []
    direct_rps = None
    for name, svc, pids in targets:
        base += 100_000_000
        run = _run(bench, name, svc, pids, token, 50, s.miss_max_duration, 0.0, base, f"{name}/max")
        direct_rps = run.rps if name == "direct" else direct_rps
        row = run.summary()
        row.update(target=name, ratio_vs_direct=round(run.rps / direct_rps, 3) if direct_rps else None)
        unpaced.append(row)
        log(f"  (b) unpaced 50 connections {name:7s} {run.rps:7.0f} req/s  p50 {run.p(50):.2f} ms  p99 {run.p(99):.2f} ms")
    return {"scenario": "b", "title": "misses (a new key per request)", "route": PREFIX + "<unique>",
            "rate": s.miss_rate, "connections": s.miss_connections, "duration_s": s.miss_duration,
            "rounds": s.miss_rounds, "miss_overhead_ms": overhead, "miss_overhead_p99_ms": overhead_p99,
            "paced": paced, "unpaced": unpaced}
