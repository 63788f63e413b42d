"""An in-process model of scenario (f): the proxy's own CPU per hit as the keyspace grows, without sockets.

``python -m bench.keyspace_model [--levels 1000,1000000] [--requests 300000]``

Per level, in a fresh process (the memos are process-wide): the proxy as ``cache-proxy serve`` builds it,
with the memory store holding every key of the level; the same users, paths, ``?v=`` variants and Zipf
law as bench/scenario_keyspace.py, each variant's entry the same bytes as its base key's (as
``copy_variants`` writes them); then ``requests`` hits answered through the fast path's read path
(``ReadPath.answer``: framing, lookup, store read, judging, rendering) to warm the memos, and as many again
timed by the process' CPU clock. No wrk, no Redis, no other process shares the figure: what it shows is the
proxy's own per-key cost, in seconds rather than a ten-minute run. It is a model: the memory store hands
back the stored bytes object itself, where a Redis client reads new bytes each time.

Prints one JSON object per level and the step between the first and the last level. Per level:
``us_per_request`` (CPU), the memos' sizes, and the timed requests split by whether the process had framed and
looked up their head before: ``first_sights`` and the wall time of each kind (``us_first_sight``, ``us_repeat``),
for the step is mostly the share of heads a large keyspace's tail brings for the first time
(BENCHMARKS.md). ``--numbered``: each request carries its own ``X-Request-ID``, as from a client or a load
balancer that numbers requests (wrk's requests in (f) carry none).
"""
from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from multidict import CIMultiDict

from proxy.core import memo
from proxy.core.entry import Entry
from proxy.core.identity import IdentityConfig
from proxy.serve.app import PROXY_KEY, build_app
from proxy.serve.config import Config
from proxy.serve.fastread import ReadPath
from proxy.serve.framing import frame
from proxy.store.memory import MemoryStore
from proxy.upstream.client import UpstreamConfig

from .context import Settings
from .procs import rules_with
from .scenario_keyspace import PATHS, RULES, VARIANT_PARAM, shape
from .workload import mint, zipf_cdf

SECRET = "keyspace-model-secret-0123456789abcdef"
MAX_USERS = Settings.for_mode("full").keyspace_max_users  # the full run's (f) levels
ZIPF_S = 1.1
TTL = 86_400
PEER = ("127.0.0.1", "http")


def _query(variant: int | None) -> str:
    return f"{VARIANT_PARAM}={variant}" if variant is not None else ""


def _head(path: str, variant: int | None, token: str, number: int | None = None) -> bytes:
    target = f"{path}?{_query(variant)}" if variant is not None else path
    numbered = f"X-Request-ID: model-{number:012d}\r\n" if number is not None else ""
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer {token}\r\n{numbered}\r\n".encode()


async def run_level(keys: int, requests: int, seed: int = 1, numbered: bool = False) -> dict:
    """One level, in this process: the proxy, its store filled, ``requests`` warm-up hits, ``requests`` timed."""
    users, variants = shape(keys, MAX_USERS)
    with tempfile.TemporaryDirectory() as tmp:
        rules = rules_with(Path(tmp), "rules-model.yaml", {r: [f"vary_query: [{VARIANT_PARAM}]"] for r in RULES})
        config = Config(upstream=UpstreamConfig(url="http://127.0.0.1:9"), rules_path=str(rules),
                        identity=IdentityConfig(secrets=(SECRET,)))
        store = MemoryStore(max_bytes=1 << 40)
        proxy = build_app(config, store=store)[PROXY_KEY]
    proxy.ready = True
    reads = ReadPath(proxy)
    tokens = [mint(f"{u:08d}-0000-4000-8000-000000000000", SECRET) for u in range(users)]
    choices = variant_choices(variants)
    for u, token in enumerate(tokens):
        for path in PATHS:
            raw = None
            for variant in choices:
                lookup, _ = proxy.fast_lookup(path, _query(variant), CIMultiDict(Authorization=f"Bearer {token}"))
                generations = await store.ensure_generations(lookup.gen_keys, TTL)
                if raw is None:
                    body = orjson.dumps({"id": u, "path": path, "name": f"User {u}", "bio": "x" * 300})
                    raw = Entry(200, (("Content-Type", "application/json"), ("Vary", "Authorization")), body,
                                time.time(), tuple(generations), lookup.rule.fingerprint, f'"{u}"').encode()
                await store.store_if_current(lookup.key, raw, TTL, lookup.gen_keys, generations, TTL)
    hits = commands = 0
    counted, clocked = [0, 0], [0.0, 0.0]  # by kind, [repeats, first sightings]: requests, perf_counter seconds
    for i, (u, p, variant) in enumerate(draws(users, variants, 2 * requests, seed)):
        if i == requests:
            commands, started = store.commands, time.process_time()
        buf = bytearray(_head(PATHS[p], variant, tokens[u], i if numbered else None))
        began = time.perf_counter()
        head = frame(buf)
        first = head.lookup is None  # never framed and looked up in this process, or forgotten by the memos
        outcome = reads.answer(head, PEER)
        answer = outcome if isinstance(outcome, bytes) else await outcome
        if i >= requests:
            counted[first] += 1
            clocked[first] += time.perf_counter() - began
            hits += isinstance(answer, bytes) and b"\r\nX-Cache: HIT\r\n" in answer
    spent = time.process_time() - started
    return {"keys": keys, "users": users, "variants": variants, "numbered": numbered, "requests": requests,
            "hits": hits, "store_lookups": store.commands - commands,
            "us_per_request": round(spent / requests * 1e6, 2),
            "first_sights": counted[1],
            "us_first_sight": round(clocked[1] / counted[1] * 1e6, 2) if counted[1] else None,
            "us_repeat": round(clocked[0] / counted[0] * 1e6, 2) if counted[0] else None,
            "memo_bytes": memo.usage()}


def variant_choices(variants: int) -> list[int | None]:
    """The ``?v=`` values of a level: None alone (no query) when each (user, path) has one key."""
    return [None] if variants == 1 else list(range(variants))


def draws(users: int, variants: int, n: int, seed: int = 1) -> list[tuple[int, int, int | None]]:
    """``n`` requests as (user, path index, variant or None): users by the Zipf law of (f), path and variant
    uniformly, as bench/lua/keyspace.lua draws them."""
    choices = variant_choices(variants)
    cdf, rng = zipf_cdf(users, ZIPF_S), random.Random(seed)  # cdf ends at 1.0: bisect gives a user index
    return [(bisect.bisect_left(cdf, rng.random()), rng.randrange(len(PATHS)), rng.choice(choices))
            for _ in range(n)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.keyspace_model", description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1000,1000000", help="keys per level, comma-separated")
    parser.add_argument("--requests", type=int, default=300_000, help="warm-up hits, and as many timed, per level")
    parser.add_argument("--numbered", action="store_true", help="each request with its own X-Request-ID")
    parser.add_argument("--one-level", type=int, help=argparse.SUPPRESS)  # each level runs in its own process
    args = parser.parse_args(argv)
    if args.one_level:
        print(json.dumps(asyncio.run(run_level(args.one_level, args.requests, numbered=args.numbered))))
        return
    results = []
    for keys in (int(n) for n in args.levels.split(",")):
        out = subprocess.run([sys.executable, "-m", "bench.keyspace_model", "--one-level", str(keys),
                              "--requests", str(args.requests)] + ["--numbered"] * args.numbered,
                             check=True, capture_output=True, text=True)
        results.append(json.loads(out.stdout))
        print(out.stdout.strip(), flush=True)
    if len(results) > 1:
        step = results[-1]["us_per_request"] / results[0]["us_per_request"]
        print(f"us_per_request {results[0]['keys']:,} keys -> {results[-1]['keys']:,} keys: x{step:.2f}")


if __name__ == "__main__":
    main()
