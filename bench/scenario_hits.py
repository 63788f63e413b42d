"""Scenario (a): hot hits on one key, ~2 KB body, nginx's proxy_cache as the reference.

Two keys: the per-user profile (``GET /api/v1/users/profile`` with one user's token; our proxy verifies
the JWT on each request, nginx keys on the Authorization header) and the global
``GET /api/v1/achievements/types`` (sent with the same token: the backend wants one on every route; one
token, so nginx's Authorization-keyed entry is one key too). Targets: nginx (1 worker), our proxy with the memory store, with
the Redis store, and with the Redis store plus the in-process L1 (``redis+l1``: a copy of rules.yaml
where ``user_profile`` and ``achievement_types`` have ``l1_ttl: 60``, so their fresh entries are
answered from process memory, ``Cache-Status: ...; detail=l1``), and with the cluster store
(``redis-cluster``: ``--redis redis+cluster://...`` against a 6-node Redis Cluster, 3 primaries and 3
replicas, its CPU counted over all six redis-server processes), every server process on core 0 and
wrk on core 1; plus, when ``cache-proxy serve --workers`` exists, the Redis store and the cluster store
with 2 workers against nginx with 2 workers (all cores shared, no pinning). Rounds are interleaved
(nginx, memory, Redis, Redis + L1, cluster, nginx, ...) so that load from elsewhere on the machine hits every target alike; a target's
figure is its best round.
Then: throughput and latency against the number of connections (per-user key), and the latency at
half of each proxy's own best throughput (paced sends, wrk's ``delay()``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .context import CLIENT_CORES, SERVER_CORES, Bench, metric_delta
from .procs import Service, log, start_nginx, start_proxy
from .workload import mint
from .wrk import Run, run_wrk

PROFILE = "/api/v1/users/profile"
TYPES = "/api/v1/achievements/types"
NUMBERED = "numbered"
HOT_USER = "bench-hot-user-0001"
TARGET_BODY = 2048
L1_RULES = ("user_profile", "achievement_types")  # the rules given l1_ttl in the redis+l1 target's rules
L1_TTL = 60


@dataclass
class Target:
    name: str  # "nginx", "memory", "redis", "redis+l1", "redis-cluster", "redis-2w", "redis-cluster-2w", "nginx-2w"
    svc: Service
    pids: tuple[int, ...]
    cores: str | None
    client_cores: str | None


def targets(bench: Bench) -> list[Target]:
    redis_pid = bench["redis"].pid
    return [Target("nginx", bench["nginx"], (bench["nginx"].pid,), SERVER_CORES, CLIENT_CORES),
            Target("memory", bench["proxy-memory"], (bench["proxy-memory"].pid,), SERVER_CORES, CLIENT_CORES),
            Target("redis", bench["proxy-redis"], (bench["proxy-redis"].pid, redis_pid), SERVER_CORES, CLIENT_CORES),
            Target("redis+l1", bench["proxy-redis-l1"], (bench["proxy-redis-l1"].pid, redis_pid), SERVER_CORES,
                   CLIENT_CORES),
            Target("redis-cluster", bench["proxy-redis-cluster"],
                   (bench["proxy-redis-cluster"].pid, *bench["redis-cluster"].pids), SERVER_CORES, CLIENT_CORES)]


def size_profile(bench: Bench, token: str) -> int:
    """Give the hot user a display name and bio that make the profile body ~2 KB; return its size."""
    auth = {"Authorization": f"Bearer {token}"}
    backend = bench["standin"].url
    name = ("Mwananchi Msomaji wa Katiba ya Kenya " * 3)[:100]
    bio = ("Ninasoma Katiba ya Kenya kila siku ili kuelewa haki zangu na wajibu wangu kama raia. " * 6)[:500]
    bench.http("PUT", backend + PROFILE, auth, {"display_name": name, "bio": bio})
    size = len(bench.http("GET", backend + PROFILE, auth)[2])
    # Each "📜" (4 bytes in UTF-8) in place of an ASCII letter adds 3 bytes: the stand-in counts characters.
    extra = max(0, min(len(bio), (TARGET_BODY - size + 2) // 3))
    bio = "📜" * extra + bio[extra:]
    bench.http("PUT", backend + PROFILE, auth, {"display_name": name, "bio": bio})
    return len(bench.http("GET", backend + PROFILE, auth)[2])


def prime(bench: Bench, url: str, headers: dict[str, str], attempts: int = 10, l1: bool = False) -> dict:
    """GET until a hit (the first fills; with several workers a few more may land on another worker
    before the fill is stored): no hit within ``attempts`` GETs stops the run. With ``l1``, GET until
    the hit comes from the in-process L1 (``detail=l1`` in Cache-Status: a Redis hit fills L1, once the
    proxy's invalidation subscription is up), within about 5 s."""
    seen = []
    for i in range(attempts if not l1 else 100):
        status, hdrs, body = bench.http("GET", url, headers)
        cache_status = hdrs.get("Cache-Status", "")
        seen.append(f"{status} {hdrs.get('X-Cache')} ({cache_status})")
        if status == 200 and hdrs.get("X-Cache") == "HIT" and (not l1 or "detail=l1" in cache_status):
            out = {"body_bytes": len(body), "header_x_cache": "HIT", "gets_to_hit": len(seen)}
            if l1:
                out["cache_status"] = cache_status
            return out
        if l1 and i >= 2:
            time.sleep(0.05)
    raise RuntimeError(f"{url}: no {'L1 ' if l1 else ''}hit in {len(seen)} GETs ({', '.join(seen[-5:])}): "
                       "the benchmark would be meaningless")


def l1_check(bench: Bench, url: str, headers: dict[str, str]) -> str:
    """Cache-Status of a GET after the rounds: the redis+l1 target must still answer from L1. A second GET
    if the first was not from L1 (the L1 copy lives ``l1_ttl`` s; the GET after that refills it)."""
    status = ""
    for _ in range(2):
        status = bench.http("GET", url, headers)[1].get("Cache-Status", "")
        if "detail=l1" in status:
            break
    return status


def run_hit(bench: Bench, t: Target, path: str, headers: dict[str, str], connections: int, duration: float,
            rate: float = 0.0, label: str = "", numbered: bool = False) -> Run:
    proxy = t.name != "nginx" and not t.name.startswith("nginx")
    before_backend = bench.standin_stats()["requests"]
    before = bench.metrics(t.svc) if proxy else {}
    run = run_wrk(t.svc.url + path, script="static.lua", connections=connections, duration=duration,
                  headers=headers, max_per_thread=int(duration * 200_000), rate=rate, cores=t.client_cores,
                  server_pids=t.pids, label=label or t.name, env={"BENCH_NUMBERED": "1"} if numbered else None)
    run.extra["target"] = t.name
    run.extra["connections"] = connections
    run.extra["backend_requests"] = bench.standin_stats()["requests"] - before_backend
    if proxy:
        delta = metric_delta(before, bench.metrics(t.svc))
        total = sum(delta.values())
        run.extra["hit_share"] = round(sum(v for (_, res), v in delta.items() if res == "hit") / total, 4) if total else None
    if rate:
        run.extra["target_rps"] = round(rate, 1)
    if run.errors["status"] or run.errors["timeout"] or run.errors["connect"]:
        log(f"  {label or t.name}: errors {run.errors}")
    return run


def scenario(bench: Bench) -> dict:
    s = bench.settings
    token = mint(HOT_USER, bench.secret, ttl=6 * 3600)
    auth = {"Authorization": f"Bearer {token}"}
    # The global read with a token too: the backend wants one on every route (the backend's contract). nginx keys
    # it on the Authorization header as well: with the one token used here that is one key either way.
    # "numbered": the per-user key again, each request with its own X-Request-ID (bench/lua/static.lua), as
    # clients and load balancers that number requests send them.
    keys = {"per_user": (PROFILE, auth), "global": (TYPES, auth), NUMBERED: (PROFILE, auth)}
    body = size_profile(bench, token)
    log(f"(a) hot hits: profile body {body} bytes; priming nginx, memory store, Redis store, Redis + L1, "
        "Redis Cluster")
    all_targets = targets(bench)
    primed = {f"{t.name}/{k}": prime(bench, t.svc.url + path, hdrs, l1=t.name == "redis+l1")
              for t in all_targets for k, (path, hdrs) in keys.items()}

    runs: dict[str, list[Run]] = {}
    for rnd in range(s.hit_rounds):
        for key, (path, hdrs) in keys.items():
            for t in all_targets:
                run = run_hit(bench, t, path, hdrs, s.hit_connections, s.hit_duration, label=f"{t.name}/{key}",
                              numbered=key == NUMBERED)
                run.extra["round"] = rnd + 1
                runs.setdefault(f"{t.name}/{key}", []).append(run)
                log(f"  (a) round {rnd + 1} {t.name:13s} {key:8s} {run.rps:9.0f} req/s  p50 {run.p(50):6.2f} ms  "
                    f"p99 {run.p(99):7.2f} ms  server cpu {run.server_cpu or 0:.2f}")
    best = {name: max(rs, key=lambda r: r.rps) for name, rs in runs.items()}

    rows = []
    by_name = {t.name: t for t in all_targets}
    for name, run in best.items():
        tname, key = name.split("/")
        ref = best[f"nginx/{key}"]
        row = run.summary()
        row.update(target=tname, key=key, all_rounds_rps=[round(r.rps, 1) for r in runs[name]],
                   ratio_vs_nginx=round(run.rps / ref.rps, 3) if ref.rps else None,
                   body_bytes=primed[name]["body_bytes"])
        if run.server_cpu and ref.server_cpu:
            row["cpu_normalised_ratio_vs_nginx"] = round((run.rps / run.server_cpu) / (ref.rps / ref.server_cpu), 3)
        if tname == "redis+l1":
            row["l1_ttl"] = L1_TTL
            row["primed_cache_status"] = primed[name].get("cache_status")
            path, hdrs = keys[key]
            row["cache_status_after"] = l1_check(bench, by_name[tname].svc.url + path, hdrs)
            row["served_from_l1"] = "detail=l1" in row["cache_status_after"]
        rows.append(row)

    # Throughput and latency against concurrency (per-user key), every target interleaved.
    sweep = []
    path, hdrs = keys["per_user"]
    for level in s.sweep_levels:
        for t in all_targets:
            if level == s.hit_connections:
                run = best[f"{t.name}/per_user"]
            else:
                run = run_hit(bench, t, path, hdrs, level, s.sweep_duration, label=f"{t.name}/c{level}")
            sweep.append({"target": t.name, "connections": level, "rps": round(run.rps, 1),
                          "p50_ms": round(run.p(50), 3), "p99_ms": round(run.p(99), 3),
                          "server_cpu": run.server_cpu and round(run.server_cpu, 3)})
        log(f"  (a) concurrency {level}: " + ", ".join(f"{r['target']} {r['rps']:.0f}/s"
                                                     for r in sweep[-len(all_targets):]))

    # Latency at half of each proxy's own best throughput (and nginx's, for reference).
    half = []
    for t in all_targets:
        for key, (path, hdrs) in keys.items():
            if (key == "global" and t.name == "nginx") or key not in s.half_keys:
                continue
            rate = best[f"{t.name}/{key}"].rps / 2
            run = run_hit(bench, t, path, hdrs, s.hit_connections, s.half_duration, rate=rate,
                          label=f"{t.name}/{key}/half")
            row = run.summary()
            row.update(target=t.name, key=key, target_rps=round(rate, 1))
            half.append(row)
            log(f"  (a) half load {t.name:13s} {key:8s} {run.rps:7.0f}/s (asked {rate:.0f})  p50 {run.p(50):.2f} ms  "
                f"p99 {run.p(99):.2f} ms  p99.9 {run.p(99.9):.2f} ms")

    cdf = {name: best[name].percentiles_ms for name in best}
    workers = workers_rows(bench, keys["per_user"]) if bench.workers_flag else None
    return {"scenario": "a", "title": "hot hits on one key", "body_bytes_profile": body,
            "connections": s.hit_connections, "duration_s": s.hit_duration, "rounds": s.hit_rounds,
            "rows": rows, "sweep": sweep, "half_load": half, "latency_cdf_ms": cdf, "workers_2": workers,
            "workers_flag": bench.workers_flag}


def workers_rows(bench: Bench, per_user: tuple[str, dict]) -> list[dict]:
    """Redis store and cluster store with 2 workers against nginx with 2 workers; no process pinned
    here (wrk shares the cores; redis-server and the cluster nodes keep the pinning they started with)."""
    s = bench.settings
    log("(a) 2 workers: starting nginx and the proxy (Redis store, cluster store) with 2 workers each, unpinned")
    nginx2 = start_nginx(bench.tmp, bench["standin"].url, workers=2)
    bench.services["nginx-2w"] = nginx2
    proxy2 = start_proxy(bench.tmp, "redis-2w", bench["standin"].url, bench.secret, bench.admin_token,
                         redis_url=bench["redis"].url, workers=2)
    bench.services["proxy-redis-2w"] = proxy2
    cluster = bench["redis-cluster"]
    proxy2c = start_proxy(bench.tmp, "redis-cluster-2w", bench["standin"].url, bench.secret, bench.admin_token,
                          redis_url=cluster.url, workers=2)
    bench.services["proxy-redis-cluster-2w"] = proxy2c
    two = [Target("nginx-2w", nginx2, (nginx2.pid,), None, None),
           Target("redis-2w", proxy2, (proxy2.pid, bench["redis"].pid), None, None),
           Target("redis-cluster-2w", proxy2c, (proxy2c.pid, *cluster.pids), None, None)]
    path, hdrs = per_user
    for t in two:
        prime(bench, t.svc.url + path, hdrs)
    best: dict[str, Run] = {}
    for rnd in range(s.workers_rounds):
        for t in two:
            run = run_hit(bench, t, path, hdrs, s.hit_connections, s.hit_duration, label=f"{t.name}/per_user")
            if t.name not in best or run.rps > best[t.name].rps:
                best[t.name] = run
    rows = []
    for name, run in best.items():
        row = run.summary()
        row.update(target=name, key="per_user",
                   ratio_vs_nginx=round(run.rps / best["nginx-2w"].rps, 3) if best["nginx-2w"].rps else None)
        rows.append(row)
    return rows
