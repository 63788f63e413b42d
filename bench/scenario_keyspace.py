"""Scenario (f): many keys and many users. Per-user reads of ``/api/v1/users/profile`` and
``/api/v1/auth/me``, the user drawn from a Zipf law (s = 1.1) and the path 50/50 on every request, each
request with that user's own pre-minted token (bench/lua/keyspace.lua), at N = 1k, 100k and 1M keys.

Keys = users x 2 paths x variants. Up to ``keyspace_max_users`` users (50k) a level is users x 2 paths
(1k keys: 500 users; 100k keys: 50k users); beyond, the same users get ``variants`` keys per (user,
path) through a query parameter ``?v=0..variants-1`` (1M keys: 50k users x 2 paths x 10), drawn
uniformly: fewer distinct tokens than keys, so that the figure at 1M is about the keyspace, not about
minting and verifying 500k tokens (the proxy's verified-token cache holds 100k). Our proxies run a copy
of rules.yaml where ``user_profile`` and ``auth_me`` have ``vary_query: [v]`` (and, for ``redis+l1``,
``l1_ttl``); nginx keys on ``$request_uri`` and ``Authorization``, so it stores the same keys.

Targets, every server on core 0 and wrk on core 1, one wrk thread, ``keyspace_connections``:
nginx (``NGINX_KEYSPACE_CONF``: ``proxy_cache`` keyed on method, URI and Authorization as in the other
scenarios, with a fill tier behind it, see there), ``redis`` (our proxy,
Redis store, every hit a Redis round trip) and ``redis+l1`` (the same Redis with the in-process L1 in
front, ``L1_MAX_BYTES`` = ``keyspace_l1_max_bytes``). Per level: a prefill of every key in rank order
(hottest users first) with the stand-in's DB delay at 0 (restored afterwards), bounded in time by
``keyspace_prefill_s`` per walk (nginx, then Redis, then ``redis+l1`` through itself, its keys being Redis
hits, so that its verified tokens, memos and L1 start warm; at a level with variants it is not walked and
fills its L1 from the load); at a level with variants, the base keys are walked first and the variants come
from them (nginx: its fill tier; Redis: ``copy_variants``); an unmeasured warm-up run per target; then ``keyspace_rounds`` interleaved
rounds (nginx, redis, redis+l1, nginx, ...), each target's best round kept. Hit share comes from the
proxies' ``katiba_cache_requests_total`` deltas (L1 hits are hits); the share answered from L1 is
estimated from Redis' ``total_commands_processed`` per request against the ``redis`` target's; nginx's
is 1 - backend requests / requests (no cache lock: each of its misses is one backend request). After the
rounds, each target once more at half of its own best round's throughput (paced sends): the p99 apart from
capacity, since at saturation p99 follows throughput. Beside each level: ``redis-benchmark -t get -r N
-c 50 -P 1`` against a separate redis-server (core 0, client on core 1) holding N keys of the hottest
user's stored entry's size: the p99 Redis itself shows at that keyspace.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import redis

from .context import CLIENT_CORES, SERVER_CORES, Bench, gauge, metric_delta
from .procs import NGINX_HEAD, Service, log, pinned, rules_with, start_nginx, start_proxy, start_redis
from .workload import mint
from .wrk import Run, run_wrk

PATHS = ("/api/v1/users/profile", "/api/v1/auth/me")
RULES = ("user_profile", "auth_me")
VARIANT_PARAM = "v"
L1_TTL = 60
TARGETS = ("nginx", "redis", "redis+l1")
# Values of redis-benchmark's keyspace, written server-side in chunks: "key:%012d", the names
# redis-benchmark's -r gives its keys.
FILL = """
local value = ARGV[3]
for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do
  redis.call('set', string.format('key:%012d', i), value)
end
return 1
"""
CHUNK = 20_000
# The variant levels' Redis prefill: each base entry (user, path; no query) copied under its variant keys
# (the same user's own entry: the backend ignores the parameter), with the base entry's remaining TTL.
# ARGV: number of suffixes S, the S key suffixes, then the base keys.
COPY = """
local s = tonumber(ARGV[1])
local copied = 0
for i = s + 2, #ARGV do
  local src = ARGV[i]
  local value = redis.call('get', src)
  if value then
    local ttl = redis.call('pttl', src)
    for j = 2, s + 1 do
      if ttl > 0 then redis.call('set', src .. ARGV[j], value, 'px', ttl) else redis.call('set', src .. ARGV[j], value) end
    end
    copied = copied + 1
  end
end
return copied
"""
COPY_CHUNK = 2_000

# nginx for this scenario: the measured tier is NGINX_CONF's (proxy_cache keyed on method, URI with its
# query, Authorization; 1 worker), with a keys zone sized for 1M keys. Its misses go to a fill tier in the
# same nginx, cached per (user, path) whatever the query, so the variant keys of the 1M level fill at
# nginx's speed from the base entries instead of one backend request each. Measured runs only hit the
# measured tier.
NGINX_KEYSPACE_CONF = NGINX_HEAD + """\
    proxy_cache_path {prefix}/cache levels=1:2 keys_zone=katiba:256m max_size=10g inactive=2h use_temp_path=off;
    proxy_cache_path {prefix}/base levels=1:2 keys_zone=base:64m max_size=2g inactive=2h use_temp_path=off;
    upstream backend {{ server {backend}; keepalive 64; }}
    upstream fill {{ server 127.0.0.1:{base_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location /api/v1/ {{
            proxy_pass http://fill;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache katiba;
            proxy_cache_key "$request_method$request_uri$http_authorization";
            proxy_cache_valid 200 1h;
            proxy_ignore_headers Cache-Control Expires Set-Cookie;
            proxy_cache_methods GET HEAD;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
    server {{
        listen 127.0.0.1:{base_port};
        location /api/v1/ {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache base;
            proxy_cache_key "$request_method$uri$http_authorization";
            proxy_cache_valid 200 1h;
            proxy_ignore_headers Cache-Control Expires Set-Cookie;
        }}
    }}
}}
"""


def shape(keys: int, max_users: int) -> tuple[int, int]:
    """(users, variants per (user, path)) for a level of ``keys`` keys: users x 2 paths up to
    ``max_users`` users, then variants (keys rounded up to a whole number of variants)."""
    users = max(1, keys // len(PATHS))
    if users <= max_users:
        return users, 1
    return max_users, -(-keys // (len(PATHS) * max_users))


def base_keys(rules_path: Path, user_ids: list[str]) -> dict[str, list[str]]:
    """Per rule of RULES, the store key of each user's entry without query, rendered as the proxy
    renders it (the rule's key template under the rules' prefix)."""
    from proxy.core.rulesfile import load_rules

    rules = load_rules(str(rules_path))
    by_name = {r.name: r for r in rules.rules}
    out = {}
    for name in RULES:
        template = by_name[name].key
        out[name] = [f"{rules.prefix}:{template.render(lambda src, uid=uid: uid if src.kind == 'identity' else None)}"
                     for uid in user_ids]
    return out


def copy_variants(client: redis.Redis, rules_path: Path, user_ids: list[str], variants: int) -> dict:
    """Copy every stored base entry (user, path) under its ``variants`` keys ``...|q:v=<k>``, server-side.
    Keys are rendered as the proxy renders them (the rule's key template, ``render_query_suffix``);
    a variant key shares its base key's guards (they are rendered without the query), so a copy is a
    live entry. Returns the counts and the time taken."""
    from proxy.core.keys import render_query_suffix

    suffixes = [render_query_suffix((VARIANT_PARAM,), {VARIANT_PARAM: str(k)}) for k in range(variants)]
    script = client.register_script(COPY)
    t0 = time.monotonic()
    bases = copied = 0
    for keys in base_keys(rules_path, user_ids).values():
        for lo in range(0, len(keys), COPY_CHUNK):
            chunk = keys[lo:lo + COPY_CHUNK]
            copied += int(script(args=[len(suffixes), *suffixes, *chunk]))
            bases += len(chunk)
    return {"base_keys": bases, "base_entries_found": copied, "copies": copied * variants,
            "seconds": round(time.monotonic() - t0, 1)}


def write_data(tmp: Path, tokens_file: Path, users: int, variants: int, zipf_s: float) -> Path:
    path = tmp / f"keyspace-{users}x{variants}.lua"
    path.write_text("-- generated by bench/scenario_keyspace.py\nreturn {\n"
                    f"users = {users}, zipf_s = {zipf_s!r}, variants = {variants},\n"
                    "paths = {" + ", ".join(json.dumps(p) for p in PATHS) + "},\n"
                    f"tokens_file = {json.dumps(str(tokens_file))},\n}}\n")
    return path


def write_tokens(tmp: Path, secret: str, users: int) -> tuple[Path, list[str], list[str]]:
    """One token per line, by rank (line 1: the hottest user); the users are new to the backend."""
    user_ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"katiba-bench-keyspace-{i}")) for i in range(users)]
    tokens = [mint(uid, secret, ttl=6 * 3600) for uid in user_ids]
    path = tmp / "keyspace-tokens.txt"
    path.write_text("\n".join(tokens) + "\n")
    return path, tokens, user_ids


def _delay(bench: Bench, ms: float | None = None) -> float:
    url = bench["standin"].url + "/_standin/delay"
    _, _, body = bench.http("POST", url, body={"delay_ms": ms}) if ms is not None else bench.http("GET", url)
    return json.loads(body)["delay_ms"]


def _commands_by_name(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in client.info("commandstats").items()}


def _l1_state(bench: Bench, svc: Service) -> tuple[dict[str, float], dict[str, float | None]]:
    """The proxy's ``katiba_cache_l1_*``, from one scrape: the counters (lookups by result, evictions by
    reason, renewals) and the gauges (entries, bytes)."""
    text = bench.scrape(svc)
    counters = {f"lookups_{res}": v
                for (_, res), v in bench.metrics(svc, "katiba_cache_l1_lookups", "result", text).items()}
    counters.update({f"evicted_{reason}": v
                     for (_, reason), v in bench.metrics(svc, "katiba_cache_l1_evictions", "reason", text).items()})
    counters["renewed"] = gauge(text, "katiba_cache_l1_renewals_total") or 0.0
    return counters, {"entries": gauge(text, "katiba_cache_l1_entries"), "bytes": gauge(text, "katiba_cache_l1_bytes")}


def _results(delta: dict) -> dict[str, int]:
    """katiba_cache_requests_total deltas of the two rules, by result (hit, miss, stale, ...)."""
    out: dict[str, int] = {}
    for (rule, res), v in delta.items():
        if rule in RULES:
            out[res] = out.get(res, 0) + int(v)
    return out


def prefill(bench: Bench, svc: Service, data: Path, keys: int, limit_s: float, pids: tuple[int, ...]) -> dict:
    """Every key once, hottest users first, 4 wrk threads x 16 connections, bounded by ``limit_s``."""
    t0 = time.monotonic()
    run = run_wrk(svc.url + PATHS[0], script="keyspace.lua", connections=64, threads=4, duration=limit_s,
                  env={"BENCH_DATA": str(data), "BENCH_PREFILL": "1"}, max_per_thread=keys,
                  cores=CLIENT_CORES, server_pids=pids, label="prefill", timeout_s=10)
    counts = run.extra.get("prefill", {})
    return {"keys": keys, "requests": run.requests, "ok": counts.get("ok"), "other_status": counts.get("other"),
            "x_cache_hit": counts.get("hit"), "x_cache_miss": counts.get("miss"),
            "covered": round(min(1.0, counts.get("ok", 0) / keys), 4) if keys else None,
            "seconds": round(time.monotonic() - t0, 1), "rps": round(run.rps, 1)}


def measure(bench: Bench, name: str, svc: Service, data: Path, duration: float, connections: int,
            pids: tuple[int, ...], client: redis.Redis | None, seed: int, label: str, rate: float = 0.0) -> Run:
    proxy = name != "nginx"
    before = bench.metrics(svc) if proxy else {}
    backend0 = bench.standin_stats()["requests"]
    by_name0 = _commands_by_name(client) if client is not None else {}
    l1_0 = _l1_state(bench, svc)[0] if name == "redis+l1" else {}
    run = run_wrk(svc.url + PATHS[0], script="keyspace.lua", connections=connections, duration=duration,
                  env={"BENCH_DATA": str(data), "BENCH_SEED": str(seed)}, cores=CLIENT_CORES,
                  server_pids=pids, label=label, rate=rate)
    run.extra["target"] = name
    run.extra["backend_requests"] = backend = bench.standin_stats()["requests"] - backend0
    if run.requests and len(pids) == 2:  # a proxy and its redis-server, sharing core 0: who spent it
        run.extra["cpu_us_per_request"] = {role: round(run.server_cpu_s_by_pid[pid] / run.requests * 1e6, 2)
                                           for role, pid in zip(("proxy", "redis"), pids)}
    if client is not None:
        grown = metric_delta(by_name0, _commands_by_name(client))
        run.extra["redis_commands_by_name"] = {k: int(v) for k, v in sorted(grown.items(), key=lambda kv: -kv[1])}
        run.extra["redis_commands_per_request"] = round(sum(grown.values()) / run.requests, 4) \
            if run.requests else None
    if name == "redis+l1":
        counters, gauges = _l1_state(bench, svc)
        l1 = run.extra["l1"] = {k: int(v) for k, v in metric_delta(l1_0, counters).items()}
        looked = l1.get("lookups_hit", 0) + l1.get("lookups_miss", 0)
        run.extra["l1_share"] = round(l1.get("lookups_hit", 0) / looked, 4) if looked else None
        l1.update(gauges)
    if proxy:
        results = _results(metric_delta(before, bench.metrics(svc)))
        total = sum(results.values())
        run.extra["hit_share"] = round(results.get("hit", 0) / total, 4) if total else None
        run.extra["results"] = results
    elif run.requests:  # nginx (no cache lock): each miss is one backend request
        run.extra["hit_share"] = round(max(0.0, 1 - backend / run.requests), 4)
    if run.errors["status"] or run.errors["timeout"] or run.errors["connect"]:
        log(f"  (f) {label}: errors {run.errors}")
    return run


def redis_benchmark(keys: int, value_bytes: int, requests: int, tmp: Path) -> dict:
    """redis-benchmark's GET over ``keys`` existing keys (its own redis-server, core 0; client core 1)."""
    exe = shutil.which("redis-benchmark")
    if not exe:
        raise RuntimeError("redis-benchmark not found on PATH (Debian: redis-tools)")
    svc = start_redis(tmp, cores=SERVER_CORES)
    try:
        client = redis.Redis(port=svc.extra["port"], socket_timeout=60)
        fill = client.register_script(FILL)
        value = "x" * value_bytes
        for lo in range(0, keys, CHUNK):
            fill(args=[lo, min(keys, lo + CHUNK) - 1, value])
        dbsize, used = client.dbsize(), client.info("memory")["used_memory_human"]
        client.close()
        cmd = [*pinned(CLIENT_CORES), exe, "-h", "127.0.0.1", "-p", str(svc.extra["port"]), "-t", "get",
               "-r", str(keys), "-n", str(requests), "-c", "50", "-P", "1", "--csv"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    finally:
        svc.stop()
    rows = list(csv.DictReader(io.StringIO(out)))
    row = next(r for r in rows if r.get("test", "").upper().startswith("GET"))
    return {"keys": keys, "db_size": dbsize, "used_memory_human": used, "value_bytes": value_bytes,
            "requests": requests, "clients": 50, "pipeline": 1, "command": " ".join(cmd[len(pinned(CLIENT_CORES)):]),
            "rps": float(row["rps"]), "p50_ms": float(row["p50_latency_ms"]), "p99_ms": float(row["p99_latency_ms"]),
            "avg_ms": float(row["avg_latency_ms"]), "max_ms": float(row["max_latency_ms"])}


def _entry_bytes(client: redis.Redis, rules_path: Path, user_id: str) -> int:
    """The larger of the two entries the hottest user has in Redis (bytes stored: metadata and body)."""
    return max(int(client.strlen(keys[0])) for keys in base_keys(rules_path, [user_id]).values())


def scenario(bench: Bench) -> dict:
    s = bench.settings
    shapes = {n: shape(n, s.keyspace_max_users) for n in s.keyspace_levels}
    users_needed = max(u for u, _ in shapes.values())
    log(f"(f) keyspace: levels {', '.join(f'{n:,}' for n in s.keyspace_levels)} keys; minting {users_needed:,} tokens")
    tokens_file, tokens, user_ids = write_tokens(bench.tmp, bench.secret, users_needed)
    variants_used = any(v > 1 for _, v in shapes.values())
    vary = [f"vary_query: [{VARIANT_PARAM}]"] if variants_used else []
    rules_plain = rules_with(bench.tmp, "rules-keyspace.yaml", {r: list(vary) for r in RULES})
    rules_l1 = rules_with(bench.tmp, "rules-keyspace-l1.yaml", {r: [*vary, f"l1_ttl: {L1_TTL}"] for r in RULES})
    rds = bench["redis"]
    standin = bench["standin"].url
    # Each in bench.services as soon as it runs: if the next one fails to start, bench.close() stops it.
    proxies = {}
    proxies["redis"] = bench.services["proxy-keyspace-redis"] = start_proxy(
        bench.tmp, "keyspace-redis", standin, bench.secret, bench.admin_token, redis_url=rds.url,
        cores=SERVER_CORES, rules=rules_plain)
    proxies["redis+l1"] = bench.services["proxy-keyspace-redis-l1"] = start_proxy(
        bench.tmp, "keyspace-redis-l1", standin, bench.secret, bench.admin_token, redis_url=rds.url,
        cores=SERVER_CORES, rules=rules_l1, settings={"L1_MAX_BYTES": str(s.keyspace_l1_max_bytes)})
    nginx = bench.services["nginx-keyspace"] = start_nginx(bench.tmp, standin, workers=1, cores=SERVER_CORES,
                                                           template=NGINX_KEYSPACE_CONF)
    svcs = {"nginx": nginx, **proxies}
    pids = {"nginx": (nginx.pid,), "redis": (proxies["redis"].pid, rds.pid),
            "redis+l1": (proxies["redis+l1"].pid, rds.pid)}
    client = redis.Redis(port=rds.extra["port"], socket_timeout=30)
    entry_bytes = 0
    levels = []
    try:
        for n in s.keyspace_levels:
            users, variants = shapes[n]
            keys = users * len(PATHS) * variants
            data = write_data(bench.tmp, tokens_file, users, variants, s.katiba_zipf)
            log(f"(f) {keys:,} keys: {users:,} users x {len(PATHS)} paths x {variants} variant(s); prefill")
            old_delay = _delay(bench)
            _delay(bench, 0)
            try:
                if variants == 1:
                    filled = {"nginx": prefill(bench, nginx, data, keys, s.keyspace_prefill_s, pids["nginx"])}
                else:  # the base keys first (nginx's fill tier), then every variant key from them
                    base = write_data(bench.tmp, tokens_file, users, 1, s.katiba_zipf)
                    walk = prefill(bench, nginx, base, users * len(PATHS), s.keyspace_prefill_s, pids["nginx"])
                    filled = {"nginx": prefill(bench, nginx, data, keys, s.keyspace_prefill_s, pids["nginx"])}
                    filled["nginx"]["base_walk"] = walk
                if variants == 1:
                    filled["redis"] = prefill(bench, svcs["redis"], data, keys, s.keyspace_prefill_s, pids["redis"])
                else:  # the base keys through the proxy (already there after a 100k level), then copies
                    filled["redis"] = prefill(bench, svcs["redis"], base, users * len(PATHS), s.keyspace_prefill_s,
                                              pids["redis"])
                    copies = copy_variants(client, rules_plain, user_ids[:users], variants)
                    filled["redis"].update(keys=keys, base_walk_keys=users * len(PATHS), copies=copies,
                                           covered=round(copies["copies"] / keys, 4))
                if variants == 1:  # its own walk: its verified tokens, memos and L1 start as warm as the
                    # Redis target's (its keys are Redis hits); at a variant level its L1 holds a share at most
                    filled["redis+l1"] = prefill(bench, svcs["redis+l1"], data, keys, s.keyspace_prefill_s,
                                                 pids["redis+l1"])
            finally:
                _delay(bench, old_delay)
            for name, f in filled.items():
                log(f"  (f) prefill {name}: {f['ok']:,} keys read in {f['seconds']:.0f} s ({f['rps']:.0f} req/s; "
                    f"X-Cache HIT {f['x_cache_hit']}, other statuses {f['other_status']}); covered {f['covered']}"
                    + (f"; {f['copies']['copies']:,} variant copies in {f['copies']['seconds']} s" if "copies" in f else ""))
            if variants > 1:  # a copy must read as a hit through the proxy, or the level measures misses
                auth = {"Authorization": f"Bearer {tokens[users - 1]}"}
                url = f"{proxies['redis'].url}{PATHS[1]}?{VARIANT_PARAM}={variants - 1}"
                filled["redis"]["copy_check"] = bench.http("GET", url, auth)[1].get("X-Cache")
                log(f"  (f) a variant copy through the proxy: X-Cache {filled['redis']['copy_check']}")
            info = client.info("memory")
            entry_bytes = entry_bytes or _entry_bytes(client, rules_plain, user_ids[0])
            for name in TARGETS:  # unmeasured: warms nginx's page cache, the proxies' token cache, the L1
                measure(bench, name, svcs[name], data, s.keyspace_warmup_s, s.keyspace_connections, pids[name],
                        None, 99, f"{name}/warm-up")
            runs: dict[str, list[Run]] = {}
            for rnd in range(s.keyspace_rounds):
                for name in TARGETS:
                    run = measure(bench, name, svcs[name], data, s.keyspace_duration, s.keyspace_connections,
                                  pids[name], client if name != "nginx" else None, rnd + 1, f"{name}/{keys}")
                    run.extra["round"] = rnd + 1
                    runs.setdefault(name, []).append(run)
                    log(f"  (f) {keys:>9,} keys round {rnd + 1} {name:9s} {run.rps:8.0f} req/s  p50 {run.p(50):6.2f} ms"
                        f"  p99 {run.p(99):7.2f} ms  hit share {run.extra.get('hit_share')}")
            best = {name: max(rs, key=lambda r: r.rps) for name, rs in runs.items()}
            ref = best["nginx"].rps
            rows = []
            for name in TARGETS:
                run = best[name]
                row = run.summary()
                row.update(target=name, all_rounds_rps=[round(r.rps, 1) for r in runs[name]],
                           ratio_vs_nginx=round(run.rps / ref, 3) if ref else None)
                rows.append(row)
            for name in TARGETS:  # latency apart from capacity: each at half of its own best throughput
                rate = best[name].rps / 2
                half = measure(bench, name, svcs[name], data, s.keyspace_duration, s.keyspace_connections,
                               pids[name], None, 50, f"{name}/{keys}/half", rate=rate)
                row = next(r for r in rows if r["target"] == name)
                row["half_load"] = {"target_rps": round(rate, 1), "rps": round(half.rps, 1),
                                    "p50_ms": round(half.p(50), 3), "p99_ms": round(half.p(99), 3)}
                log(f"  (f) {keys:>9,} keys half load {name:9s} {half.rps:8.0f} req/s (asked {rate:.0f})  "
                    f"p50 {half.p(50):6.2f} ms  p99 {half.p(99):7.2f} ms")
            by = {r["target"]: r for r in rows}
            per_req = (by["redis"].get("redis_commands_per_request"), by["redis+l1"].get("redis_commands_per_request"))
            if per_req[0] and per_req[1] is not None:
                by["redis+l1"]["l1_share_estimate"] = round(max(0.0, 1 - per_req[1] / per_req[0]), 4)
            rb = redis_benchmark(keys, entry_bytes, s.keyspace_redis_benchmark_requests, bench.tmp)
            log(f"  (f) redis-benchmark GET over {keys:,} keys: {rb['rps']:.0f} req/s, p50 {rb['p50_ms']} ms, "
                f"p99 {rb['p99_ms']} ms")
            levels.append({"keys": keys, "asked_keys": n, "users": users, "variants": variants,
                           "prefill": filled, "redis_db_size": client.dbsize(),
                           "redis_used_memory_human": info["used_memory_human"], "rows": rows,
                           "redis_benchmark": rb})
    finally:
        client.close()
        for name in ("proxy-keyspace-redis", "proxy-keyspace-redis-l1", "nginx-keyspace"):
            bench.services.pop(name).stop()
    return {"scenario": "f", "title": "many keys, many users", "paths": list(PATHS), "rules": list(RULES),
            "zipf_s": s.katiba_zipf, "connections": s.keyspace_connections, "duration_s": s.keyspace_duration,
            "rounds": s.keyspace_rounds, "warmup_s": s.keyspace_warmup_s, "prefill_limit_s": s.keyspace_prefill_s,
            "max_users": s.keyspace_max_users, "variant_param": VARIANT_PARAM if variants_used else None,
            "l1_max_bytes": s.keyspace_l1_max_bytes, "l1_ttl": L1_TTL, "entry_bytes": entry_bytes,
            "levels": levels}
