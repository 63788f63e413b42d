"""A small Python load generator (aiohttp), for the smoke mode where wrk and nginx are not needed.

``run_katiba`` sends the katiba workload (``bench.workload``) over ``connections`` keep-alive connections
and ``run_fixed`` sends requests built by a function; both are bounded in count and in time, and return
a ``bench.wrk.Run`` with the same fields the wrk runs produce (per-route X-Cache counts, statuses and
latencies for the katiba workload), so the rest of the harness treats both alike. It is much slower
than wrk: its figures are for checking the harness, not for BENCHMARKS.md.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from typing import Callable

import aiohttp

from .workload import REREAD_PREFIX, REREAD_THINK_MS, Request, Workload, reread_label
from .wrk import Run

PERCENTILES = (0.1, 1, 5, 10, 20, 30, 40, 50, 60, 70, 75, 80, 90, 95, 97.5, 99, 99.5, 99.9, 99.95, 99.99, 100)


def percentiles_ms(latencies_us: list[float]) -> dict[str, float]:
    if not latencies_us:
        return {f"{p:g}": 0.0 for p in PERCENTILES}
    ordered = sorted(latencies_us)
    out = {}
    for p in PERCENTILES:
        idx = min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))
        out[f"{p:g}"] = ordered[idx] / 1000
    return out


Made = tuple[str, str, str, dict, bytes | None]  # name, method, path, headers, body


async def _drive(base_url: str, connections: int, duration: float, max_requests: int,
                 make: Callable[[random.Random], Made], seed: int, label: str,
                 follow: Callable[[Made, int], tuple[Made, float] | None] | None = None) -> Run:
    """``follow(request, status)``: the request this connection sends next, after how many seconds (the
    katiba workload's read after own write), or None to draw the next one with ``make``."""
    routes: dict[str, dict] = defaultdict(lambda: {"count": 0, "xcache": defaultdict(int),
                                                  "status": defaultdict(int), "lat_us": []})
    all_lat: list[float] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    nbytes = 0
    sent = 0
    start = time.perf_counter()
    deadline = start + duration
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections), timeout=timeout,
                                     auto_decompress=False) as session:
        async def worker(n: int) -> None:
            nonlocal sent, nbytes
            rng = random.Random(seed * 1000 + n)
            due: Made | None = None
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                req, due = due or make(rng), None
                name, method, path, headers, body = req
                t0 = time.perf_counter()
                try:
                    async with session.request(method, base_url + path, headers=headers, data=body) as resp:
                        payload = await resp.read()
                        status, xcache = resp.status, resp.headers.get("X-Cache", "none")
                        if name.startswith(REREAD_PREFIX):
                            xcache = reread_label(xcache, resp.headers.get("Cache-Status", ""))
                except asyncio.TimeoutError:
                    errors["timeout"] += 1
                    continue
                except aiohttp.ClientError:
                    errors["read"] += 1
                    continue
                elapsed_us = (time.perf_counter() - t0) * 1e6
                nbytes += len(payload)
                if status > 399:
                    errors["status"] += 1
                st = routes[name]
                st["count"] += 1
                st["xcache"][xcache] += 1
                st["status"][str(status)] += 1
                st["lat_us"].append(elapsed_us)
                all_lat.append(elapsed_us)
                after = follow(req, status) if follow else None
                if after is not None:
                    due = after[0]
                    await asyncio.sleep(after[1])

        await asyncio.gather(*(worker(i) for i in range(connections)))
    elapsed = time.perf_counter() - start
    done = len(all_lat)
    return Run(label=label, requests=done, duration_s=elapsed, rps=done / elapsed if elapsed else 0.0,
               percentiles_ms=percentiles_ms(all_lat), errors=errors,
               bytes_per_response=nbytes / done if done else 0.0,
               routes={k: {"count": v["count"], "xcache": dict(v["xcache"]), "status": dict(v["status"]),
                           "lat_us": v["lat_us"]} for k, v in routes.items()})


def katiba_request(r: Request) -> Made:
    headers = {"Authorization": f"Bearer {r.token}"}
    if r.body is not None:
        headers["Content-Type"] = "application/json"
    return r.name, r.method, r.path, headers, r.body


def reread_after(workload: Workload, req: Made, status: int) -> tuple[Made, float] | None:
    """The read after own write that follows ``req`` when it was a write of the mix answered 2xx (same
    user, same token), with the think time before it in seconds; else None."""
    name, method, path, headers, body = req
    if body is None or not 200 <= status < 300:
        return None
    token = headers["Authorization"].removeprefix("Bearer ")
    nxt = workload.reread(Request(name, method, path, token, body, True))
    return (katiba_request(nxt), REREAD_THINK_MS / 1000) if nxt is not None else None


def run_katiba(base_url: str, workload: Workload, *, connections: int, duration: float, max_requests: int,
               seed: int = 1, label: str = "", reread: bool = False) -> Run:
    """``reread``: each write answered 2xx is followed by its read after own write (workload.py)."""
    def make(rng: random.Random) -> Made:
        return katiba_request(workload.draw(rng))

    def follow(req: Made, status: int) -> tuple[Made, float] | None:
        return reread_after(workload, req, status)

    return asyncio.run(_drive(base_url, connections, duration, max_requests, make, seed, label,
                              follow if reread else None))


def run_fixed(base_url: str, make: Callable[[random.Random], tuple[str, str, str, dict, bytes | None]], *,
              connections: int, duration: float, max_requests: int, seed: int = 1, label: str = "") -> Run:
    return asyncio.run(_drive(base_url, connections, duration, max_requests, make, seed, label))
