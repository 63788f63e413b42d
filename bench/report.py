"""Results: the final line, the targets, the PNG plots and BENCHMARKS.md, all from the run's JSON.

Nothing here measures; every number it writes is read from the scenario results of the same run
(``bench/results/*.json``), so BENCHMARKS.md can always be regenerated from them:
``python -m bench --report-only``.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .procs import log


def _get(d: dict | None, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


# How the hot-hit targets are named in tables and plots ("L1" is the in-process cache in front of Redis;
# "redis-cluster" the cluster store against a 6-node Redis Cluster).
TARGET_ORDER = ("nginx", "memory", "redis", "redis+l1", "redis-cluster")
TARGET_LABELS = {"memory": "memory store"}


def target_label(name: str) -> str:
    return TARGET_LABELS.get(name, name)


def hit_row(hits: dict | None, target: str, key: str = "per_user") -> dict | None:
    for row in (hits or {}).get("rows", []):
        if row["target"] == target and row["key"] == key:
            return row
    return None


def headline(results: dict) -> dict:
    hits, miss, kat = results.get("hits"), results.get("misses"), results.get("katiba")
    return {"hit_rps_ratio_vs_nginx": _get(hit_row(hits, "redis"), "ratio_vs_nginx"),
            "l1_hit_rps_ratio_vs_nginx": _get(hit_row(hits, "redis+l1"), "ratio_vs_nginx"),
            "miss_overhead_ms": _get(miss, "miss_overhead_ms", "redis"),
            "katiba_hit_rate": _get(kat, "comparison", "hit_rate"),
            "katiba_ceiling": _get(kat, "purge_ceiling", "overall"),
            "keyspace_hit_rps_ratio_vs_nginx": _get(keyspace_row(results.get("keyspace"), 100_000, "redis"),
                                                    "ratio_vs_nginx")}


def keyspace_row(keyspace: dict | None, keys: int, target: str) -> dict | None:
    """Scenario (f)'s row for ``target`` at the level of ``keys`` keys (asked for), or None."""
    for level in (keyspace or {}).get("levels", []):
        if level.get("asked_keys", level["keys"]) == keys:
            return next((r for r in level["rows"] if r["target"] == target), None)
    return None


def keyspace_p99_step(keyspace: dict | None) -> dict | None:
    """p99 at the largest level over p99 at the smallest, for the Redis store and for redis-benchmark's
    GET over the same number of keys (what Redis itself shows as its keyspace grows)."""
    levels = (keyspace or {}).get("levels", [])
    if len(levels) < 2:
        return None
    first, last = levels[0], levels[-1]

    def p99(level: dict, target: str) -> float | None:
        row = next((r for r in level["rows"] if r["target"] == target), None)
        return _get(row, "latency_ms", "99")

    out = {"smallest": first["keys"], "largest": last["keys"]}
    for target in ("redis", "redis+l1", "nginx"):
        a, b = p99(first, target), p99(last, target)
        out[target] = round(b / a, 3) if a and b else None
    a, b = first["redis_benchmark"]["p99_ms"], last["redis_benchmark"]["p99_ms"]
    out["redis_benchmark"] = round(b / a, 3) if a and b else None
    return out


def final_line(h: dict) -> str:
    def f(x):
        return "n/a" if x is None else f"{x:.2f}"
    return (f"hit_rps_ratio_vs_nginx={f(h['hit_rps_ratio_vs_nginx'])} "
            f"l1_hit_rps_ratio_vs_nginx={f(h['l1_hit_rps_ratio_vs_nginx'])} "
            f"miss_overhead_ms={f(h['miss_overhead_ms'])} katiba_hit_rate={f(h['katiba_hit_rate'])} "
            f"katiba_ceiling={f(h.get('katiba_ceiling'))} "
            f"keyspace_hit_rps_ratio_vs_nginx={f(h.get('keyspace_hit_rps_ratio_vs_nginx'))}")


def targets(results: dict) -> list[dict]:
    """Each target of the issue with the measured figure and whether it is met (None: not measured)."""
    hits, miss, kat, purge, co = (results.get(k) for k in ("hits", "misses", "katiba", "purge", "coalesce"))
    out = []

    def add(name, value, goal, met):
        out.append({"target": name, "measured": value, "goal": goal, "met": None if value is None else met})

    redis_ratio = _get(hit_row(hits, "redis"), "ratio_vs_nginx")
    add("hit path, Redis store, 1 worker, per-user key: req/s vs nginx", redis_ratio, ">= 0.5x (project target 0.4x, stretch 0.5x)",
        redis_ratio is not None and redis_ratio >= 0.5)
    g = _get(hit_row(hits, "redis", "global"), "ratio_vs_nginx")
    add("hit path, Redis store, 1 worker, global key: req/s vs nginx", g, ">= 0.5x", g is not None and g >= 0.5)
    two = next((r for r in (hits or {}).get("workers_2", []) if r.get("target") == "redis-2w"
                and r.get("key") == "per_user"), None)
    w2 = _get(two, "ratio_vs_nginx")
    add("hit path, Redis store, 2 workers, per-user key: req/s vs nginx with 2 workers", w2, ">= 0.65x",
        w2 is not None and w2 >= 0.65)
    l1 = _get(hit_row(hits, "redis+l1"), "ratio_vs_nginx")
    add("hit path, in-process L1 in front of Redis, per-user key: req/s vs nginx", l1, ">= 0.6x (project target)",
        l1 is not None and l1 >= 0.6)
    cluster = _get(hit_row(hits, "redis-cluster"), "ratio_vs_nginx")
    add("hit path, Redis Cluster store, 1 worker, per-user key: req/s vs nginx", cluster, ">= 0.55x",
        cluster is not None and cluster >= 0.55)
    half = next((r for r in (hits or {}).get("half_load", []) if r["target"] == "redis" and r["key"] == "per_user"), None)
    p99 = _get(half, "latency_ms", "99")
    add("hit p99 at half of max throughput, Redis store, per-user key (ms)", p99, "<= 5 ms", p99 is not None and p99 <= 5)
    ov = _get(miss, "miss_overhead_ms", "redis")
    add("miss overhead, p50, Redis store (ms)", ov, "<= 1 ms", ov is not None and ov <= 1)
    hr = _get(kat, "comparison", "hit_rate")
    add("katiba workload hit rate (cached reads)", hr, ">= 0.90", hr is not None and hr >= 0.9)
    cut = _get(kat, "comparison", "backend_queries_cut")
    add("katiba: backend queries cut (all requests, writes included)", cut, ">= 0.90", cut is not None and cut >= 0.9)
    rcut = _get(kat, "comparison", "backend_read_queries_cut")
    add("katiba: backend queries cut (reads only)", rcut, ">= 0.90 (same goal, reads alone)", rcut is not None and rcut >= 0.9)
    routes = _get(kat, "comparison", "routes") or {}
    read_cuts = {n: r.get("p50_cut") for n, r in routes.items() if "hit_rate" in r}
    if read_cuts and all(v is not None for v in read_cuts.values()):
        worst = min(read_cuts, key=lambda n: read_cuts[n])
        add(f"katiba: p50 cut per cached route (worst: {worst})", read_cuts[worst], ">= 0.95 on every route",
            read_cuts[worst] >= 0.95)
    else:
        add("katiba: p50 cut per cached route", None, ">= 0.95 on every route", False)
    vs = _get(kat, "hit_rate_vs_ceiling")
    add("katiba: hit rate vs the mix's own ceiling (purge_ceiling)", vs, ">= 0.97x", vs is not None and vs >= 0.97)
    heavy = _get(kat, "read_heavy") or {}
    hh = heavy.get("hit_rate")
    add("katiba read-heavy mix (2% writes): hit rate", hh, ">= 0.90", hh is not None and hh >= 0.9)
    hw = heavy.get("worst_p50_cut")
    add("katiba read-heavy mix: p50 cut, worst route whose ceiling is >= 0.9", hw, ">= 0.95",
        hw is not None and hw >= 0.95)
    ratio = _get(purge, "ratio_largest_vs_smallest", "bump_p50")
    add("purge time, largest vs smallest key count (RedisStore.bump p50)", ratio, "<= 2x", ratio is not None and ratio <= 2)
    ratio_e = _get(purge, "ratio_largest_vs_smallest", "endpoint_p50")
    add("purge time, largest vs smallest key count (manual endpoint p50)", ratio_e, "<= 2x", ratio_e is not None and ratio_e <= 2)
    ks = results.get("keyspace")
    if ks:
        for target, goal, floor in (("redis", ">= 0.5x", 0.5), ("redis+l1", ">= 0.8x (L1 with a byte budget)", 0.8)):
            r = _get(keyspace_row(ks, 100_000, target), "ratio_vs_nginx")
            add(f"keyspace (f), 100k keys, Zipf users, {target}: req/s vs nginx", r, goal, r is not None and r >= floor)
        step = keyspace_p99_step(ks)
        if step:
            mine, theirs = step.get("redis"), step.get("redis_benchmark")
            add(f"keyspace (f): p99 at {step['largest']:,} / at {step['smallest']:,} keys, Redis store", mine,
                f"no step beyond Redis' own (redis-benchmark GET: {theirs}x; met within 1.2x of it, or <= 1.2x)",
                mine is not None and mine <= 1.2 * max(1.0, theirs or 1.0))
    cases = {c["case"]: c for c in (co or {}).get("cases", [])}
    n = (co or {}).get("requests", 100)
    for case, what in (("redis-1", "1 instance, Redis store"), ("memory-1", "1 instance, memory store")):
        c = cases.get(case)
        add(f"upstream requests for {n} concurrent identical misses, {what}", _get(c, "backend_requests"), "1",
            c is not None and c["met"])
    many = next((c for c in cases.values() if c["instances"] > 1), None)
    k = many["instances"] if many else (co or {}).get("instances", 3)
    add(f"upstream requests for {n} concurrent identical misses across {k} instances sharing Redis",
        _get(many, "backend_requests"), f"1, and <= {k} (the number of instances)", many is not None and many["met"])
    return out


# ------------------------------------------------------------------------------------- plots

def _pyplot():
    try:
        import matplotlib
    except ImportError:
        log("matplotlib missing: pip install matplotlib")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "matplotlib"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            import matplotlib
        except ImportError:
            return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _plain(axis) -> None:
    """Plain numbers (0.2, 1, 5) on a log axis instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))


def _count(n: int) -> str:
    """1000 -> "1k", 100000 -> "100k", 1000000 -> "1M"."""
    for div, unit in ((1_000_000, "M"), (1_000, "k")):
        if n >= div:
            return f"{n / div:g}{unit}"
    return str(n)


def plots(results: dict, out: Path) -> list[str]:
    plt = _pyplot()
    if plt is None:
        return []
    made = []
    hits = results.get("hits")
    if hits and hits.get("sweep"):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for target in sorted({r["target"] for r in hits["sweep"]},
                             key=lambda t: (TARGET_ORDER.index(t) if t in TARGET_ORDER else 9, t)):
            rows = sorted((r for r in hits["sweep"] if r["target"] == target), key=lambda r: r["connections"])
            xs = [r["connections"] for r in rows]
            ax1.plot(xs, [r["rps"] for r in rows], marker="o", label=target_label(target))
            ax2.plot(xs, [r["p99_ms"] for r in rows], marker="o", label=target_label(target))
        for ax, title, ylabel in ((ax1, "Hot hit, per-user key: throughput", "requests/s"),
                                  (ax2, "Hot hit, per-user key: p99 latency", "ms")):
            ax.set_xscale("log")
            ax.set_xlabel("connections")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            ax.legend()
        ax2.set_yscale("log")
        _plain(ax2.yaxis)
        fig.tight_layout()
        fig.savefig(out / "hits_throughput_vs_concurrency.png", dpi=110)
        plt.close(fig)
        made.append("hits_throughput_vs_concurrency.png")
    if hits and hits.get("latency_cdf_ms"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, pct in sorted(hits["latency_cdf_ms"].items()):
            pts = sorted((float(p), ms) for p, ms in pct.items())
            tname, _, key = name.partition("/")
            ax.plot([ms for _, ms in pts], [p for p, _ in pts], marker=".", label=f"{target_label(tname)}/{key}")
        ax.set_xscale("log")
        _plain(ax.xaxis)
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("percentile")
        ax.set_title(f"Hot hits, {hits['connections']} connections, unpaced: latency CDF")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "hits_latency_cdf.png", dpi=110)
        plt.close(fig)
        made.append("hits_latency_cdf.png")
    kat = results.get("katiba")
    if kat and kat.get("direct") and kat.get("proxy"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, row in (("direct to backend", kat["direct"]), ("through the proxy (Redis)", kat["proxy"])):
            pts = sorted((float(p), ms) for p, ms in row["latency_ms"].items())
            ax.plot([ms for _, ms in pts], [p for p, _ in pts], marker=".", label=name)
        ax.set_xscale("log")
        _plain(ax.xaxis)
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("percentile")
        ax.set_title(f"Katiba workload, paced at {kat['paced_rps']:.0f} req/s: latency CDF")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "katiba_latency_cdf.png", dpi=110)
        plt.close(fig)
        made.append("katiba_latency_cdf.png")
    purge = results.get("purge")
    if purge and purge.get("levels"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs = [lv["entries"] for lv in purge["levels"]]
        ax.plot(xs, [lv["bump"]["p50_ms"] for lv in purge["levels"]], marker="o", label="RedisStore.bump p50")
        ax.plot(xs, [lv["bump"]["p99_ms"] for lv in purge["levels"]], marker="x", ls="--", label="RedisStore.bump p99")
        if all(lv.get("endpoint") for lv in purge["levels"]):
            ax.plot(xs, [lv["endpoint"]["p50_ms"] for lv in purge["levels"]], marker="s",
                    label="manual endpoint p50 (HTTP)")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("entries stored under the purged namespace")
        ax.set_ylabel("time per purge (ms)")
        ax.set_title("Purge cost vs entries stored")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "purge_cost.png", dpi=110)
        plt.close(fig)
        made.append("purge_cost.png")
    ks = results.get("keyspace")
    if ks and ks.get("levels"):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        levels = ks["levels"]
        xs = [lv["keys"] for lv in levels]
        for target in [t for t in TARGET_ORDER if any(r["target"] == t for lv in levels for r in lv["rows"])]:
            rows = [next(r for r in lv["rows"] if r["target"] == target) for lv in levels]
            ax1.plot(xs, [r["rps"] for r in rows], marker="o", label=target_label(target))
            ax2.plot(xs, [r["latency_ms"]["99"] for r in rows], marker="o", label=target_label(target))
        ax2.plot(xs, [lv["redis_benchmark"]["p99_ms"] for lv in levels], marker="x", ls="--",
                 label="redis-benchmark GET (Redis alone)")
        for ax, title, ylabel in ((ax1, "Zipf users, per-user keys: throughput", "requests/s"),
                                  (ax2, "Zipf users, per-user keys: p99 latency", "ms")):
            ax.set_xscale("log")
            ax.set_xlabel("keys")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        from matplotlib.ticker import NullLocator

        for ax in (ax1, ax2):
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticks(xs, [_count(x) for x in xs])
        ax1.set_ylim(bottom=0)
        ax2.set_yscale("log")
        _plain(ax2.yaxis)
        fig.tight_layout()
        fig.savefig(out / "keyspace.png", dpi=110)
        plt.close(fig)
        made.append("keyspace.png")
    return made


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
