"""The fast path on and off, in one run: ``python -m bench.ab_fastpath [--rounds 3] [--rate 4000]``.

Two proxies on one Redis (``FAST_PATH=1`` and ``FAST_PATH=0``), both on core 0 with redis-server; wrk
and the stand-in backend on core 1. Rounds alternate between them, so noise from elsewhere hits both:
per round, an unpaced run (50 connections: throughput) and a paced one at ``--rate`` requests/s (the
latency a client sees below saturation), on the per-user profile key, a fresh hit every time.
Prints one line per run; BENCHMARKS.md quotes a run of it.
"""
from __future__ import annotations

import argparse
import os
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
    args = parser.parse_args()
    ensure_tools(("wrk",))
    tmp = Path(tempfile.mkdtemp(prefix="katiba-ab-"))
    secret = standin.DEFAULT_SECRET
    services = [start_standin(tmp, secret, cores=CLIENT_CORES), start_redis(tmp, cores=SERVER_CORES)]
    backend, redis = services
    proxies = {}
    try:
        for name, flag in (("fast path", "1"), ("full path", "0")):
            os.environ["FAST_PATH"] = flag
            proxies[name] = start_proxy(tmp, name.replace(" ", "-"), backend.url, secret, "ab-admin-" + "x" * 32,
                                        redis_url=redis.url, cores=SERVER_CORES)
            services.append(proxies[name])
        os.environ.pop("FAST_PATH", None)
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


if __name__ == "__main__":
    main()
