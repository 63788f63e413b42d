"""Fault soak (not CI): the stale-read checker's workload for ``--seconds`` against several proxy processes
on one Redis and one stand-in, while a seeded schedule breaks Redis and the backend.

    python -m bench.soak --seconds 60 --seed 1 [--proxies 2] [--no-markdown]

Set-up: a private ``redis-server`` (tests/conftest.py's ``RedisServer``) reached through the TCP fault
proxy of tests/resilience/faultproxy.py (a process of its own, steered over stdin), the stand-in and ``--proxies``
``python -m proxy serve`` processes (tests/consistency/checker.py's ``Cluster``, ``STORE_TIMEOUT`` 100
ms). The load is the checker's workload (reads, writes, read-write-read, races over a few hot users),
run until the time is up; every request is recorded and checked afterwards (``checker.check``).

Faults, in an order and with durations drawn from ``--seed``, each followed by a quiet recovery window:
``redis-kill`` (killed, restarted empty), ``redis-snapshot-restart`` (SAVE, writes go on, then killed
and restarted from the older snapshot: purges lost, so the epoch must be bumped), ``redis-pause``
(SIGSTOP), ``redis-delay`` (every packet +300 ms, above the store timeout), ``redis-blackhole`` (bytes
swallowed), ``backend-errors`` (the stand-in answers 500 on hot GET routes) and ``backend-slow``
(+300 ms per backend request).

Per window: requests started in it, failed ones (transport errors, non-200 answers, envelope errors)
split into the backend's own failures (its injected 500s, passed through) and the rest, stale reads
(checker violations; goal 0), p99 latency. Results: bench/results/soak.json, and the table replaces
the "## Fault soak" section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import RedisServer  # noqa: E402
from tests.consistency import checker  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "soak.json"
MARKDOWN = ROOT / "BENCHMARKS.md"
HEADING = "## Fault soak"
FAULTS = ("redis-kill", "redis-snapshot-restart", "redis-pause", "redis-delay", "redis-blackhole",
          "backend-errors", "backend-slow")
FAIL_PATHS = ("/api/v1/users/profile", "/api/v1/users/preferences", "/api/v1/achievements/summary",
              "/api/v1/achievements/leaderboard", "/api/v1/users/profile/full")
BACKEND_DELAY_MS = 2.0


@dataclass
class Window:
    name: str
    start: float  # seconds since the workload's t0
    end: float = 0.0
    notes: list[str] = field(default_factory=list)


class FaultProcess:
    """tests/resilience/faultproxy.py in a process of its own (forwarding must not slow the load generator)."""

    def __init__(self, port: int):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.resilience.faultproxy", f"127.0.0.1:{port}"],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening "):
            raise RuntimeError(f"fault proxy did not start: {line!r}")
        self.url = f"redis://127.0.0.1:{line.split()[1]}/0"

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "ok":
            raise RuntimeError(f"fault proxy refused {command!r}")

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def schedule(seed: int, seconds: float) -> list[tuple[str, float, float]]:
    """(fault, starts at, lasts) in workload seconds: a quiet start, then faults with recovery gaps."""
    rng = random.Random(seed)
    order = list(FAULTS)
    rng.shuffle(order)
    plan, t = [], min(5.0, seconds * 0.1)
    while t < seconds - 4:
        fault = order[len(plan) % len(order)]
        lasts = round(rng.uniform(2.5, 4.5), 2)
        if t + lasts > seconds - 2:
            break
        plan.append((fault, round(t, 2), lasts))
        t += lasts + round(rng.uniform(2.5, 4.0), 2)
    return plan


async def control(session: aiohttp.ClientSession, method: str, url: str, body: dict | None = None) -> None:
    async with session.request(method, url, json=body) as resp:
        await resp.read()


async def apply_fault(name: str, lasts: float, redis: RedisServer, fault: FaultProcess, backend: str,
                      session: aiohttp.ClientSession, window: Window) -> None:
    loop = asyncio.get_running_loop()
    blocking = lambda fn, *a: loop.run_in_executor(None, fn, *a)  # noqa: E731 - never block the load
    if name == "redis-kill":
        await blocking(redis.stop)
        await asyncio.sleep(lasts)
        await blocking(_start_empty, redis)
    elif name == "redis-snapshot-restart":
        await blocking(redis.admin.save)
        await asyncio.sleep(lasts)  # writes keep purging after the snapshot
        await blocking(redis.stop)
        await blocking(redis.start)  # reloads the snapshot: those purges are gone
        window.notes.append("restarted from a snapshot taken at the start of the window")
        await blocking(_drop_snapshot, redis)
    elif name == "redis-pause":
        redis.pause()
        await asyncio.sleep(lasts)
        redis.resume()
    elif name == "redis-delay":
        await blocking(fault.send, "delay 0.3")
        await asyncio.sleep(lasts)
        await blocking(fault.send, "heal")
    elif name == "redis-blackhole":
        await blocking(fault.send, "blackhole")
        await asyncio.sleep(lasts)
        await blocking(fault.send, "heal")
    elif name == "backend-errors":
        for path in FAIL_PATHS:
            await control(session, "POST", backend + "/_standin/fail",
                          {"method": "GET", "path": path, "status": 500, "count": 40})
        await asyncio.sleep(lasts)
        await control(session, "DELETE", backend + "/_standin/fail")
    elif name == "backend-slow":
        await control(session, "POST", backend + "/_standin/delay", {"delay_ms": 300})
        await asyncio.sleep(lasts)
        await control(session, "POST", backend + "/_standin/delay", {"delay_ms": BACKEND_DELAY_MS})


def _drop_snapshot(redis: RedisServer) -> None:
    (redis.workdir / "dump.rdb").unlink(missing_ok=True)


def _start_empty(redis: RedisServer) -> None:
    _drop_snapshot(redis)
    redis.start()


async def soak(seconds: float, seed: int, urls: list[str], backend: str, redis: RedisServer,
               fault: FaultProcess) -> tuple[list[checker.Op], list[Window], float]:
    wl = checker.Workload(seed=seed, operations=10**9, clients=32, users=12, hot_users=4, timeout=30.0)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=wl.timeout)) as s:
        warm_up = checker.Workload(seed=seed + 10_000, operations=600, clients=32, users=12, hot_users=4)
        warming = checker._Run(urls, warm_up, s, backend=None)  # not recorded: connections, first fills
        await asyncio.gather(*(warming.client(c) for c in range(warm_up.clients)))
        run = checker._Run(urls, wl, s, backend=None)  # the checker's workload, stopped by emptying its budget
        clients = asyncio.gather(*(run.client(c) for c in range(wl.clients)))
        windows = [Window("baseline", 0.0)]

        async def at(t: float) -> None:
            await asyncio.sleep(max(0.0, t - (time.monotonic() - run.t0)))

        for name, start, lasts in schedule(seed, seconds):
            await at(start)
            now = time.monotonic() - run.t0
            windows[-1].end = now
            windows.append(Window(name, now))
            print(f"[soak +{now:5.1f}s] {name} for {lasts}s", file=sys.stderr, flush=True)
            await apply_fault(name, lasts, redis, fault, backend, s, windows[-1])
            now = time.monotonic() - run.t0
            windows[-1].end = now
            windows.append(Window(f"after {name}", now))
        await at(seconds)
        run.budget = 0
        await clients
        windows[-1].end = time.monotonic() - run.t0
    return run.ops, windows, time.monotonic() - run.t0


def scrape(urls: list[str]) -> dict[str, float]:
    """Sum a few counters over the proxies' /metrics."""
    wanted = ("katiba_cache_epoch_bumps_total", "katiba_cache_purge_failures_total",
              "katiba_cache_pending_purges", "katiba_cache_upstream_requests_total")
    totals = dict.fromkeys(wanted, 0.0)
    for url in urls:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                name = line.split("{")[0].split(" ")[0]
                if name in totals:
                    totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def summarise(ops: list[checker.Op], windows: list[Window], elapsed: float) -> dict:
    report = checker.check(ops, elapsed)
    stale_starts = [v.read.start for v in report.violations]
    rows = []
    for w in windows:
        mine = [op for op in ops if w.start <= op.start < w.end]
        failed = [op for op in mine if op.error]
        backend_own = [op for op in failed if op.status == 500]
        rows.append({"window": w.name, "from_s": round(w.start, 1), "to_s": round(w.end, 1),
                     "requests": len(mine), "failed": len(failed), "backend_failures": len(backend_own),
                     "other_failures": len(failed) - len(backend_own),
                     "other_failure_kinds": sorted({op.error.split(":")[0] for op in failed if op.status != 500}),
                     "stale_reads": sum(w.start <= t < w.end for t in stale_starts),
                     "hits": sum(op.x_cache == "HIT" for op in mine),
                     "p99_ms": None if not mine else round(1000 * p99([op.end - op.start for op in mine]), 1),
                     "notes": w.notes})
    total_failed = sum(r["failed"] for r in rows)
    return {"requests": len(ops), "reads": report.reads, "writes": report.writes, "hits": report.hits,
            "failed": total_failed, "backend_failures": sum(r["backend_failures"] for r in rows),
            "other_failures": sum(r["other_failures"] for r in rows), "stale_reads": len(report.violations),
            "violations": [str(v) for v in report.violations[:20]], "elapsed_s": round(elapsed, 1),
            "p99_ms": round(1000 * (p99([op.end - op.start for op in ops]) or 0.0), 1), "windows": rows}


def markdown(result: dict) -> str:
    s = result
    lines = [HEADING, "",
             f"`python -m bench.soak --seconds {s['seconds']:g} --seed {s['seed']}` (not part of CI): "
             f"{s['proxies']} proxy processes sharing one Redis (reached through a TCP fault proxy, "
             f"`STORE_TIMEOUT`=100 ms) in front of the stand-in, loaded by the stale-read checker's workload "
             f"(32 clients, 12 users of whom 4 hot; reads, writes, read-write-read and read/write races; after an "
             f"unrecorded warm-up of 600 requests) while a "
             f"seeded schedule breaks Redis and the backend. Each fault is followed by a quiet window. "
             f"*Failed* counts transport errors, non-200 answers and envelope errors; *backend's own* are the "
             f"stand-in's injected 500s passed through (its failures, not the proxy's); *stale reads* are reads "
             f"the checker proves older than a write acknowledged before they began (goal 0). "
             f"Figures from `bench/results/soak.json`.", "",
             "| window | seconds | requests | failed | backend's own | other | stale reads | hit % | p99 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in s["windows"]:
        hit = f"{100 * r['hits'] / r['requests']:.0f}" if r["requests"] else "-"
        other = str(r["other_failures"]) + (f" ({', '.join(r['other_failure_kinds'])})" if r["other_failures"] else "")
        lines.append(f"| {r['window']} | {r['from_s']:.1f}–{r['to_s']:.1f} | {r['requests']:,} | {r['failed']:,} | "
                     f"{r['backend_failures']:,} | {other} | {r['stale_reads']} | {hit} | "
                     f"{'-' if r['p99_ms'] is None else r['p99_ms']} |")
    lines.append(f"| **total** | {s['elapsed_s']:.1f} | **{s['requests']:,}** | **{s['failed']:,}** | "
                 f"**{s['backend_failures']:,}** | **{s['other_failures']:,}** | **{s['stale_reads']}** | "
                 f"{100 * s['hits'] / max(1, s['reads']):.0f} | {s['p99_ms']} |")
    m = s["metrics"]
    lines += ["", f"Proxies' own counters at the end: epoch bumps {m['katiba_cache_epoch_bumps_total']:.0f} "
              f"(the snapshot restart must cause one), purges that failed and were retried "
              f"{m['katiba_cache_purge_failures_total']:.0f}, still pending {m['katiba_cache_pending_purges']:.0f}.",
              "",
              "How to read it. *Other* failures would be requests the proxy itself failed (a 502/504 of its own, "
              "a transport error): none. While Redis is out (delay, pause, kill, black hole) reads go to the "
              "backend: hit % is 0, and with this workload's low hit rate (writes to a few hot users purge "
              "constantly, on purpose: it is the checker's) and every Redis round trip crossing the Python "
              "fault proxy, such windows even run faster than the cached ones. After Redis returns the cache "
              "stays off for the 1 s recovery hold, then refills. The p99 of *after redis-pause* can jump (above "
              "1 s in some runs, not in others): `SET NX` lease commands sent while Redis was stopped run "
              "when it resumes, for owners that gave up, so waiters on those keys poll until the 3 s lease "
              "expires (bounded by `coalesce_wait`, never stuck). *backend-slow* is the stand-in's +300 ms per request with "
              "requests queueing behind it. Latencies are from a loaded shared machine; compare windows, not "
              "absolute values.", ""]
    return "\n".join(lines)


def write_markdown(section: str) -> None:
    text = MARKDOWN.read_text() if MARKDOWN.exists() else "# Benchmarks\n"
    start = text.find(HEADING + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + len(HEADING))
        text = text[:start] + section + ("" if nxt < 0 else text[nxt + 1:])
    MARKDOWN.write_text(text.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--proxies", type=int, default=2)
    ap.add_argument("--no-markdown", action="store_true", help="write soak.json only")
    ap.add_argument("--report-only", action="store_true", help="rewrite the BENCHMARKS.md section from soak.json")
    args = ap.parse_args(argv)
    if args.report_only:
        write_markdown(markdown(json.loads(RESULTS.read_text())))
        return 0

    with tempfile.TemporaryDirectory(prefix="katiba-soak-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        fault = FaultProcess(redis.port)
        env = {"STORE_TIMEOUT": "0.1", "PENDING_PURGES_FILE": "off", "LOG_FORMAT": "json"}
        try:
            with checker.Cluster(fault.url, proxies=args.proxies, delay_ms=BACKEND_DELAY_MS,
                                 workdir=Path(tmp) / "logs", env=env) as cluster:
                ops, windows, elapsed = asyncio.run(soak(args.seconds, args.seed, cluster.urls,
                                                         cluster.backend_url, redis, fault))
                metrics = scrape(cluster.urls)
        finally:
            fault.close()
            redis.stop()

    result = {"seconds": args.seconds, "seed": args.seed, "proxies": args.proxies,
              "schedule": schedule(args.seed, args.seconds), **summarise(ops, windows, elapsed), "metrics": metrics}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_markdown:
        write_markdown(markdown(result))
    print(f"fault soak: requests={result['requests']} failed={result['failed']} "
          f"backend_failures={result['backend_failures']} other_failures={result['other_failures']} "
          f"stale_reads={result['stale_reads']} p99_ms={result['p99_ms']} "
          f"epoch_bumps={metrics['katiba_cache_epoch_bumps_total']:.0f}")
    for v in result["violations"][:5]:
        print("  " + v)
    return 1 if result["stale_reads"] else 0


if __name__ == "__main__":
    sys.exit(main())
