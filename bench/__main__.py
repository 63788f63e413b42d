"""``python -m bench [--quick | --smoke] [--out DIR] [--scenarios a,b,c,d,e,f] [--keyspace-levels N,N] [--report-only]``

Starts its own services on loopback (stand-in backend with 20 ms DB delay, redis-server, a 6-node Redis
Cluster, nginx with proxy_cache, our proxy with the memory store, the Redis store, the Redis store with
the in-process L1 for two rules, and the cluster store), runs the scenarios, writes
``<out>/<scenario>.json`` (hits, misses, katiba, purge, coalesce, keyspace) and ``summary.json``, the PNG plots, and
BENCHMARKS.md (not in smoke mode), shows progress on stderr, and prints as its last line:
``hit_rps_ratio_vs_nginx=... l1_hit_rps_ratio_vs_nginx=... miss_overhead_ms=... katiba_hit_rate=...
katiba_ceiling=... keyspace_hit_rps_ratio_vs_nginx=...``

Modes: default (full: 60 s katiba run, longer rounds), ``--quick`` (under 3 minutes), ``--smoke``
(CI: no nginx, no wrk; the Python load generator, the Redis store, about 10 s; results go to a temp
directory unless ``--out`` is given, and BENCHMARKS.md is left alone).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import standin

from . import report
from .context import CLIENT_CORES, SERVER_CORES, Bench, Settings
from .procs import (ROOT, log, machine, proxy_has_workers, rules_with_l1, start_nginx, start_proxy, start_redis,
                    start_redis_cluster, start_standin, ensure_tools, tool_versions)

RESULTS = ROOT / "bench" / "results"
FILES = {"a": "hits", "b": "misses", "c": "katiba", "d": "purge", "e": "coalesce", "f": "keyspace"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="katiba-cache benchmark harness")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="shorter runs: finishes in under 3 minutes")
    mode.add_argument("--smoke", action="store_true", help="CI smoke: no nginx/wrk, a few seconds")
    p.add_argument("--out", type=Path, help="results directory (default bench/results; smoke: a temp dir)")
    p.add_argument("--scenarios", default=",".join(FILES), help="subset to run, e.g. a,d (default all)")
    p.add_argument("--keyspace-levels", help="scenario (f)'s key counts instead of the mode's, e.g. 1000,20000")
    p.add_argument("--report-only", action="store_true", help="rebuild plots and BENCHMARKS.md from the JSON")
    p.add_argument("--no-markdown", action="store_true", help="do not rewrite BENCHMARKS.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    out = args.out or (Path(tempfile.mkdtemp(prefix="katiba-bench-smoke-")) if args.smoke else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        results = {name: json.loads((out / f"{name}.json").read_text())
                   for name in FILES.values() if (out / f"{name}.json").exists()}
        meta = json.loads((out / "summary.json").read_text())["run"]
        return finish(results, meta, out, markdown=not args.no_markdown)
    started = time.monotonic()
    settings = Settings.for_mode(mode)
    if args.keyspace_levels:
        settings = dataclasses.replace(settings, keyspace_levels=tuple(
            int(n) for n in args.keyspace_levels.replace("_", "").split(",") if n.strip()))
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="katiba-bench-"))
    bench = Bench(settings=settings, tmp=tmp, out=out, secret=standin.DEFAULT_SECRET,
                  admin_token="bench-admin-" + os.urandom(12).hex())
    meta = {"mode": mode, "command": "python -m bench" + {"quick": " --quick", "smoke": " --smoke"}.get(mode, ""),
            "scenarios": chosen, "machine": machine(), "settings": settings.__dict__,
            "server_cores": SERVER_CORES, "client_cores": CLIENT_CORES}
    results: dict[str, dict] = {}
    try:
        if mode == "smoke":
            results = run_smoke(bench)
        else:
            ensure_tools()
            meta["versions"] = tool_versions()
            bench.workers_flag = proxy_has_workers()
            meta["workers_flag"] = bench.workers_flag
            if not bench.workers_flag:
                log("cache-proxy serve has no --workers option: 1 worker only")
            start_all(bench)
            from . import (scenario_coalesce, scenario_hits, scenario_katiba, scenario_keyspace, scenario_miss,
                           scenario_purge)
            modules = {"a": scenario_hits, "b": scenario_miss, "c": scenario_katiba, "d": scenario_purge,
                       "e": scenario_coalesce, "f": scenario_keyspace}
            for key in chosen:
                t0 = time.monotonic()
                results[FILES[key]] = modules[key].scenario(bench)
                results[FILES[key]]["elapsed_s"] = round(time.monotonic() - t0, 1)
                report.write_json(out / f"{FILES[key]}.json", results[FILES[key]])
                log(f"scenario ({key}) done in {time.monotonic() - t0:.0f} s")
    finally:
        bench.close()
        shutil.rmtree(tmp, ignore_errors=True)
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    if mode == "smoke":
        for name, data in results.items():
            report.write_json(out / f"{name}.json", data)
    whole = set(chosen) >= set(FILES) or mode == "smoke"
    if not whole:
        log("a partial run: its scenario JSON is written; summary.json and BENCHMARKS.md are left alone")
    return finish(results, meta, out, markdown=whole and mode != "smoke" and not args.no_markdown,
                  write_summary=whole)


def finish(results: dict, meta: dict, out: Path, markdown: bool, write_summary: bool = True) -> int:
    head = report.headline(results)
    summary = {"run": meta, "headline": head, "targets": report.targets(results), "final_line": report.final_line(head)}
    if write_summary:
        report.write_json(out / "summary.json", summary)
    if markdown:
        from .markdown import write_benchmarks_md
        summary["plots"] = report.plots(results, out)
        write_benchmarks_md(ROOT / "BENCHMARKS.md", results, summary, out)
        log(f"wrote {ROOT / 'BENCHMARKS.md'} and {out}/*.json, *.png")
    else:
        log(f"results in {out}")
    log(f"total {meta.get('elapsed_s', 0):.0f} s")
    print(summary["final_line"], flush=True)
    return 0


def start_all(bench: Bench) -> None:
    log(f"starting services (servers on core {SERVER_CORES}; load generator and backend on core {CLIENT_CORES})")
    # The backend stands for a service on another machine: it runs beside the load generator, not on the
    # core being measured, so that core does the proxy's (and Redis') work only, in the direct runs as
    # in the proxied ones. Paced runs leave that core far from busy.
    bench.services["standin"] = start_standin(bench.tmp, bench.secret, delay_ms=20, cores=CLIENT_CORES)
    bench.services["redis"] = start_redis(bench.tmp, cores=SERVER_CORES)
    # A 6-node Redis Cluster (3 primaries + 3 replicas, every node on the server core) for the cluster store.
    bench.services["redis-cluster"] = start_redis_cluster(bench.tmp, cores=SERVER_CORES)
    bench.services["nginx"] = start_nginx(bench.tmp, bench["standin"].url, workers=1, cores=SERVER_CORES)
    bench.services["proxy-memory"] = start_proxy(bench.tmp, "memory", bench["standin"].url, bench.secret,
                                                 bench.admin_token, cores=SERVER_CORES)
    bench.services["proxy-redis"] = start_proxy(bench.tmp, "redis", bench["standin"].url, bench.secret,
                                                bench.admin_token, redis_url=bench["redis"].url, cores=SERVER_CORES)
    # The same Redis store with the in-process L1 in front of it for the two hot-hit rules of scenario (a).
    from .scenario_hits import L1_RULES, L1_TTL

    rules = rules_with_l1(bench.tmp, L1_RULES, L1_TTL)
    bench.services["proxy-redis-l1"] = start_proxy(bench.tmp, "redis-l1", bench["standin"].url, bench.secret,
                                                   bench.admin_token, redis_url=bench["redis"].url,
                                                   cores=SERVER_CORES, rules=rules)
    bench.services["proxy-redis-cluster"] = start_proxy(bench.tmp, "redis-cluster", bench["standin"].url, bench.secret,
                                                        bench.admin_token, redis_url=bench["redis-cluster"].url,
                                                        cores=SERVER_CORES)


def run_smoke(bench: Bench) -> dict:
    """Misses and the katiba workload with the Python load generator, then the coalescing counts (e):
    checks the harness, not speed."""
    from .loadgen import run_fixed
    from .scenario_katiba import run_smoke as katiba_smoke
    from .scenario_miss import MISS_USER, PREFIX
    from .workload import mint

    s = bench.settings
    log("smoke: stand-in, redis-server and the proxy (Redis store); Python load generator")
    bench.services["standin"] = start_standin(bench.tmp, bench.secret, delay_ms=20)
    bench.services["redis"] = start_redis(bench.tmp)
    bench.services["proxy-redis"] = start_proxy(bench.tmp, "redis", bench["standin"].url, bench.secret,
                                                bench.admin_token, redis_url=bench["redis"].url)
    token = mint(MISS_USER, bench.secret)
    counter = iter(range(random.randrange(10**9, 2 * 10**9), 10**12))

    def make(rng):
        return "leaderboard", "GET", PREFIX + str(next(counter)), {"Authorization": f"Bearer {token}"}, None

    runs = {}
    for name, svc in (("direct", bench["standin"]), ("redis", bench["proxy-redis"])):
        runs[name] = run_fixed(svc.url, make, connections=s.miss_connections, duration=s.miss_duration,
                               max_requests=2000, label=name)
    overhead = round(runs["redis"].p(50) - runs["direct"].p(50), 3)
    misses = {"scenario": "b", "title": "misses (smoke: Python load generator, Redis store)",
              "miss_overhead_ms": {"redis": overhead},
              "paced": [dict(r.summary(), target=n) for n, r in runs.items()]}
    log(f"smoke: miss p50 direct {runs['direct'].p(50):.2f} ms, proxy {runs['redis'].p(50):.2f} ms")
    katiba = katiba_smoke(bench)
    log(f"smoke: katiba {katiba['proxy']['requests']} requests, hit rate {katiba['comparison']['hit_rate']}")
    from .scenario_coalesce import scenario as coalesce  # a count, cheap: about 3 s with its extra proxies

    return {"misses": misses, "katiba": katiba, "coalesce": coalesce(bench)}


if __name__ == "__main__":
    sys.exit(main())
