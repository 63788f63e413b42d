"""The fast path on and off, in one run: ``python -m bench.ab_fastpath [--rounds 3] [--rate 4000] [--misses]``.

Two proxies on one Redis (``FAST_PATH=1`` and ``FAST_PATH=0``), both on core 0 with redis-server; wrk
and the stand-in backend on core 1. Rounds alternate between them, so noise from elsewhere hits both:
per round, an unpaced run (50 connections: throughput) and a paced one at ``--rate`` requests/s (the
latency a client sees below saturation), on the per-user profile key, a fresh hit every time.
``--misses``: instead, scenario (b)'s paced misses (a new leaderboard page each time, 20 ms at the
backend) through each proxy and straight to the backend, in turn; each round's overhead is its p50
minus the direct p50 of the same round, and the last lines give the medians.
Prints one line per run; BENCHMARKS.md quotes a run of it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import tempfile
import urllib.request
from pathlib import Path

import standin

from .context import CLIENT_CORES, SERVER_CORES
from .procs import ensure_tools, start_proxy, start_redis, start_standin
from .workload import mint
from .wrk import run_wrk

PATH = "/api/v1/users/profile"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=4000.0, help="paced requests/s")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--misses", action="store_true", help="paced misses against the backend directly")
    parser.add_argument("--miss-rate", type=float, default=200.0, help="paced misses/s (with --misses)")
    parser.add_argument("--variant", metavar="VAR=VALUE",
                        help="instead of the fast path on and off: both on, the second proxy with VAR=VALUE")
    args = parser.parse_args()
    ensure_tools(("wrk",))
    tmp = Path(tempfile.mkdtemp(prefix="katiba-ab-"))
    secret = standin.DEFAULT_SECRET
    services = [start_standin(tmp, secret, cores=CLIENT_CORES), start_redis(tmp, cores=SERVER_CORES)]
    backend, redis = services
    proxies = {}
    try:
        arms = (("fast path", {"FAST_PATH": "1"}), ("full path", {"FAST_PATH": "0"}))
        if args.variant:
            var, _, value = args.variant.partition("=")
            arms = (("baseline", {"FAST_PATH": "1"}), ("variant", {"FAST_PATH": "1", var: value}))
        for name, env in arms:
            os.environ.update(env)
            proxies[name] = start_proxy(tmp, name.replace(" ", "-"), backend.url, secret, "ab-admin-" + "x" * 32,
                                        redis_url=redis.url, cores=SERVER_CORES)
            services.append(proxies[name])
            for var in env:
                os.environ.pop(var, None)
        if args.misses:
            misses(args, backend, redis, proxies, secret)
            return
        headers = {"Authorization": f"Bearer {mint('bench-ab-user', secret)}"}
        for svc in proxies.values():
            for _ in range(3):  # the first fills, the rest hit
                urllib.request.urlopen(urllib.request.Request(svc.url + PATH, headers=headers)).read()
        for rnd in range(1, args.rounds + 1):
            for name, svc in proxies.items():
                for rate in (0.0, args.rate):
                    run = run_wrk(svc.url + PATH, script="static.lua", connections=50, duration=args.duration,
                                  headers=headers, rate=rate, max_per_thread=10 ** 7, cores=CLIENT_CORES,
                                  server_pids=(svc.pid, redis.pid), label=name)
                    kind = "unpaced" if not rate else f"paced {rate:.0f}/s"
                    print(f"round {rnd} {name:9s} {kind:13s} {run.rps:8.0f} req/s  p50 {run.p(50):6.2f} ms  "
                          f"p99 {run.p(99):6.2f} ms  p99.9 {run.p(99.9):6.2f} ms  server cpu {run.server_cpu or 0:.2f}",
                          flush=True)
    finally:
        for svc in reversed(services):
            svc.stop()


def misses(args: argparse.Namespace, backend, redis, proxies: dict, secret: str) -> None:
    from .scenario_miss import MISS_USER, PREFIX

    headers = {"Authorization": f"Bearer {mint(MISS_USER, secret)}"}
    base = int(time.time()) % 100_000 * 1_000_000_000  # pages never asked for before
    targets = {"direct": (backend, (backend.pid,))}
    targets.update({name: (svc, (svc.pid, redis.pid)) for name, svc in proxies.items()})
    overhead: dict[str, list[float]] = {name: [] for name in proxies}
    for rnd in range(1, args.rounds + 1):
        p50 = {}
        for name, (svc, pids) in targets.items():
            base += 100_000_000
            run = run_wrk(svc.url + PREFIX + "0", script="miss.lua", connections=10, threads=2,
                          duration=args.duration, headers=headers, rate=args.miss_rate,
                          env={"BENCH_MISS_PREFIX": PREFIX, "BENCH_MISS_BASE": str(base)},
                          max_per_thread=10 ** 7, cores=CLIENT_CORES, server_pids=pids, label=name)
            p50[name] = run.p(50)
            print(f"round {rnd} {name:9s} misses paced {args.miss_rate:.0f}/s  p50 {run.p(50):6.2f} ms  "
                  f"p99 {run.p(99):6.2f} ms  server cpu {run.server_cpu or 0:.3f}", flush=True)
        for name in proxies:
            overhead[name].append(p50[name] - p50["direct"])
    for name, values in overhead.items():
        print(f"miss overhead {name}: median {statistics.median(values):.2f} ms over {len(values)} rounds "
              f"({', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
