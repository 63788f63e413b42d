"""The benchmark harness in its smoke mode: ``python -m bench --smoke`` end to end.

Smoke mode needs neither nginx nor wrk: it starts the stand-in backend, a private redis-server and the
proxy (Redis store), sends misses and a few seconds of the katiba workload with the Python load
generator, writes its JSON results into ``--out`` and prints the summary line last. The assertions
are on what the harness produced and on counts (requests, X-Cache values, backend requests), never on
speed.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NUMBER = r"-?\d+\.\d\d"
FINAL_LINE = re.compile(rf"^hit_rps_ratio_vs_nginx=(n/a|{NUMBER}) l1_hit_rps_ratio_vs_nginx=(n/a|{NUMBER}) "
                        rf"miss_overhead_ms=({NUMBER}) katiba_hit_rate=(\d\.\d\d) katiba_ceiling=(n/a|{NUMBER}) "
                        rf"keyspace_hit_rps_ratio_vs_nginx=(n/a|{NUMBER})$")


def test_smoke_run_writes_results_and_the_summary_line(tmp_path):
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines, f"nothing on stdout; stderr: {done.stderr[-2000:]}"
    match = FINAL_LINE.match(lines[-1])
    assert match, f"last line has the wrong format: {lines[-1]!r}"
    assert "smoke" in done.stderr  # progress is shown on stderr

    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_line"] == lines[-1]
    assert summary["run"]["mode"] == "smoke"

    katiba = json.loads((out / "katiba.json").read_text())
    routes = katiba["proxy"]["routes"]
    assert set(routes) >= {"user_profile", "leaderboard", "update_profile"}, sorted(routes)
    requests = sum(r["count"] for r in routes.values())
    assert requests == katiba["proxy"]["requests"] > 100
    reads = [r for name, r in routes.items() if not name.startswith(("update_", "add_", "award_"))]
    hits = sum(r["xcache"].get("HIT", 0) for r in reads)
    assert hits > 0, "the katiba workload never hit the cache"
    assert all(set(r["xcache"]) <= {"HIT", "MISS", "STALE", "BYPASS"} for r in routes.values())
    assert all(set(r["status"]) == {"200"} for r in routes.values()), {n: r["status"] for n, r in routes.items()}
    # every hit is a request the backend did not see
    assert katiba["proxy"]["backend"]["requests"] <= requests - hits
    assert katiba["comparison"]["hit_rate"] == round(hits / sum(r["count"] for r in reads), 4)
    assert match.group(4) == f"{katiba['comparison']['hit_rate']:.2f}"
    # the cache's own counters agree with what the clients saw
    metric_hits = sum(v.get("hit", 0) for v in katiba["metrics_by_rule"].values())
    assert metric_hits == hits

    # reads after own write (issue 21): one re-read per write answered, counted apart from the mix
    after = katiba["after_write"]
    # the shipped rules refetch only the shared pages every award empties (leaderboard, recent)
    assert set(after["shipped"]["refreshes_after_purge_by_rule"]) <= {"leaderboard", "recent_achievements"}
    for variant in ("shipped", "refresh_after_purge"):
        row = after[variant]
        fig = row["figures"]
        assert fig["count"] > 0 and fig["count"] == sum(r["count"] for r in fig["routes"].values())
        assert 0 <= row["writes"] - fig["count"] <= katiba["connections"]  # a write at the deadline goes unread
        assert fig["hit"] + fig["collapsed"] + fig["miss"] + fig["other"] == fig["count"]
        assert row["refreshes_after_purge"] <= row["backend_requests"]
    assert after["added"]["refreshes_per_second"] == round(
        after["refresh_after_purge"]["refreshes_per_second"] - after["shipped"]["refreshes_per_second"], 2)

    misses = json.loads((out / "misses.json").read_text())
    paced = {row["target"]: row for row in misses["paced"]}
    assert paced["direct"]["requests"] > 0 and paced["redis"]["requests"] > 0
    assert match.group(3) == f"{misses['miss_overhead_ms']['redis']:.2f}"


def test_the_katiba_figures_are_set_against_the_operators_hopes():
    """BENCHMARKS.md's (c) puts each figure next to what the operators hoped for: a route group is met
    only when each of its routes is."""
    from bench.markdown import _hopes_table

    routes = {name: {"p50_cut": 0.9} for name in ("user_profile", "user_full_profile", "achievements",
                                                   "achievements_summary", "recent_achievements", "leaderboard")}
    routes["user_full_profile"]["p50_cut"] = -0.02
    rows = {line.split("|")[1].strip(): line.split("|")[-2].strip()
            for line in _hopes_table({"routes": routes, "backend_queries_cut": 0.69, "hit_rate": 0.7}).splitlines()
            if line.startswith("| ") and "figure" not in line}
    assert rows == {"profile reads faster (p50 cut)": "**not met**", "achievement pages faster (p50 cut)": "met",
                    "leaderboards faster (p50 cut)": "met", "database load (backend queries cut, all requests)": "met",
                    "hit rate (cached reads)": "**not met**"}


def test_importing_the_benchmarks_leaves_the_proxys_settings_alone():
    """bench/soak.py imports tests/conftest.py: the suite's CACHE_AUDIT_SAMPLE=0 must not leak into a
    benchmark's proxies (the auditor is part of the shipped rules' cost, and of scenario (c)'s figure)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "CACHE_AUDIT_SAMPLE"}
    probe = "import os, bench.__main__, bench.soak; print(os.environ.get('CACHE_AUDIT_SAMPLE'))"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.stdout.strip() == "None", out
