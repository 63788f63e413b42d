"""``python -m bench.memory [--users N] [--out DIR] [--rules FILE]``: bytes a cached entry costs.

Memory is a count, not a timing, so this runs anywhere: the machine's load does not move its figures.
It starts a stand-in backend, a redis-server and the proxy (Redis store, the given rules), gives N users
katiba-like data through the proxy's write routes, then reads every per-user route once per user so each
read fills one entry. It reports, per route:

* ``body``: the mean body the backend sent (what a client receives);
* ``redis_usage``: the mean ``MEMORY USAGE`` of the entry's key (key, value and Redis' own overhead);
* ``redis_delta_per_entry``: ``INFO memory`` ``used_memory`` growth over all reads divided by the entries
  they stored (so it includes the generation keys those reads created, and allocator rounding);
* ``memory_store``: what the same stored values cost in the in-process memory store (``tracemalloc``
  growth per entry, so Python's object and dict overhead is counted, not just ``len(value)``);

and the overhead of each over the body. It writes ``<out>/memory.json`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import aiohttp
import redis

from .procs import ROOT, log, start_proxy, start_redis, start_standin
from .workload import API, INTERESTS, LANGUAGES, mint

SECRET = "bench-memory-secret-0123456789abcdef-xyz"
ADMIN = "bench-memory-admin-token"
ROUTES = {  # rule name -> path; every per-user read the shipped rules cache
    "user_profile": "/users/profile", "user_full_profile": "/users/profile/full", "auth_me": "/auth/me",
    "user_preferences": "/users/preferences", "user_languages": "/users/languages",
    "user_interests": "/users/interests", "user_accessibility": "/users/accessibility",
    "user_stats": "/users/stats", "achievements": "/achievements", "achievements_summary": "/achievements/summary",
    "achievements_stats": "/achievements/stats",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--rules", type=Path, default=ROOT / "rules.yaml")
    p.add_argument("--label", default="default", help="name of this run in memory.json")
    return p.parse_args(argv)


def _writes(user: int) -> list[tuple[str, str, dict]]:
    """Realistic data for one user: a profile with a bio, preferences, two languages, three interests,
    accessibility settings and a few achievements (so the aggregate reads are of a realistic size)."""
    bio = ("Reads the constitution chapter by chapter and shares notes with a study group. " * 3).strip()
    out = [("PUT", "/users/profile", {"display_name": f"Reader {user}", "bio": bio}),
           ("POST", "/users/preferences", {"theme": "dark", "language": "sw", "notifications_enabled": True}),
           ("POST", "/users/accessibility", {"font_size": "large", "high_contrast": True})]
    out += [("POST", "/users/languages", {"language_code": LANGUAGES[(user + i) % len(LANGUAGES)]}) for i in range(2)]
    out += [("POST", "/users/interests", {"interest": INTERESTS[(user + i) % len(INTERESTS)]}) for i in range(3)]
    out += [("POST", "/achievements/award", {"badge_type": badge, "achievement_data": {"chapter": user % 18 + 1}})
            for badge in ("bronze", "silver", "gold")[: 1 + user % 3]]
    return out


async def _drive(proxy_url: str, users: int, phase: str) -> dict[str, list[int]]:
    bodies: dict[str, list[int]] = {name: [] for name in ROUTES}
    sem = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as session:
        async def one(user: int) -> None:
            headers = {"Authorization": f"Bearer {mint(f'mem-user-{user}', SECRET)}"}
            async with sem:
                if phase == "write":
                    for method, path, body in _writes(user):
                        async with session.request(method, proxy_url + API + path, json=body, headers=headers) as r:
                            await r.read()
                    return
                for name, path in ROUTES.items():
                    async with session.get(proxy_url + API + path, headers=headers) as r:
                        body = await r.read()
                        if r.status == 200 and r.headers.get("X-Cache") == "MISS":
                            bodies[name].append(len(body))
        await asyncio.gather(*(one(u) for u in range(users)))
    return bodies


def _entry_keys(client: redis.Redis, prefix: str) -> dict[str, list[bytes]]:
    """Stored entry keys by rule, from their key pattern (SCAN is fine here: a benchmark, not a purge)."""
    suffixes = {"user_profile": b":profile", "user_full_profile": b":full_profile", "auth_me": b":me",
                "user_preferences": b":preferences", "user_languages": b":languages",
                "user_interests": b":interests", "user_accessibility": b":accessibility", "user_stats": b":stats",
                "achievements": b":achievements", "achievements_summary": b":summary",
                "achievements_stats": b":stats"}
    out: dict[str, list[bytes]] = {name: [] for name in ROUTES}
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        if b"gen:" in key or key.endswith(b"|lease") or b"epoch" in key:
            continue
        ns = b"achievements" if key.split(b":")[2] == b"achievements" else b"user"
        for name, suffix in suffixes.items():
            wants_ns = b"achievements" if name.startswith("achievements") else b"user"
            if key.endswith(suffix) and ns == wants_ns:
                out[name].append(key)
                break
    return out


def _memory_store_bytes(values: list[bytes]) -> float:
    """Bytes per entry in the in-process memory store for these stored values (tracemalloc growth)."""
    from proxy.store.memory import MemoryStore

    store = MemoryStore(max_bytes=1 << 40)
    copies = [bytes(bytearray(v)) for v in values]  # values owned by the store, as after a fill
    keys = [f"katiba360:proxy:user:{{mem-user-{i}}}:entry" for i in range(len(values))]
    gen_keys = ("katiba360:proxy:gen:bench",)

    async def fill() -> None:
        tokens = await store.ensure_generations(gen_keys, 3600)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for key, value in zip(keys, copies):
            await store.store_if_current(key, value, 3600, gen_keys, tokens, 3600, None)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        fill.result = (after - before) / max(1, len(values))  # type: ignore[attr-defined]

    copies_bytes = sum(len(v) for v in copies) / max(1, len(copies))
    asyncio.run(fill())
    # The value bytes were allocated before tracing began (they are the fill's body): add them back.
    return fill.result + copies_bytes  # type: ignore[attr-defined]


def measure(users: int, rules: Path) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    services = []
    try:
        backend = start_standin(tmp, SECRET, delay_ms=0)
        services.append(backend)
        store = start_redis(tmp)
        services.append(store)
        proxy = start_proxy(tmp, "memory", backend.url, SECRET, ADMIN, redis_url=store.url, rules=rules)
        services.append(proxy)
        client = redis.Redis(port=store.extra["port"])
        log(f"giving {users} users their data")
        asyncio.run(_drive(proxy.url, users, "write"))
        before = int(client.info("memory")["used_memory"])
        keys_before = client.dbsize()
        log("reading every per-user route once per user")
        bodies = asyncio.run(_drive(proxy.url, users, "read"))
        time.sleep(1.0)  # write-behind: let the last stores land
        after = int(client.info("memory")["used_memory"])
        new_keys = client.dbsize() - keys_before
        keys = _entry_keys(client, "katiba360:proxy")
        stored = sum(len(k) for k in keys.values())
        rows = {}
        for name in ROUTES:
            sample = keys[name][:200]
            if not sample or not bodies[name]:
                continue
            usage = [client.memory_usage(k, samples=0) or 0 for k in sample]
            values = [client.get(k) for k in sample]
            body = statistics.mean(bodies[name])
            rows[name] = {
                "entries": len(keys[name]), "body": round(body, 1),
                "stored_value": round(statistics.mean(len(v) for v in values), 1),
                "redis_usage": round(statistics.mean(usage), 1),
                "memory_store": round(_memory_store_bytes(values), 1),
            }
        return {"users": users, "entries": stored, "other_keys": new_keys - stored,
                "redis_delta_per_entry": round((after - before) / max(1, stored), 1),
                "rules": str(rules), "routes": rows}
    finally:
        for svc in reversed(services):
            svc.stop()


def table(result: dict) -> str:
    lines = ["| route | body B | stored value B | Redis MEMORY USAGE B | overhead | memory store B | overhead |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in result["routes"].items():
        lines.append(f"| {name} | {r['body']:.0f} | {r['stored_value']:.0f} | {r['redis_usage']:.0f} | "
                     f"{r['redis_usage'] / r['body'] - 1:+.0%} | {r['memory_store']:.0f} | "
                     f"{r['memory_store'] / r['body'] - 1:+.0%} |")
    lines.append(f"\n`INFO memory` growth over the read phase per entry: {result['redis_delta_per_entry']:.0f} B "
                 f"({result['entries']} entries; the {result['other_keys']} generation keys the reads created "
                 "are counted in this figure).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args.users, args.rules)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "memory.json"
    runs = json.loads(path.read_text()) if path.exists() else {}
    runs[args.label] = result
    path.write_text(json.dumps(runs, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
