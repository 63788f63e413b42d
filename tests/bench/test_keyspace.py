"""Scenario (f)'s parts that do not measure: the shape of a level, the rules copy its proxies run, the
variant copies of its Redis prefill (they must sit under the keys the proxy looks up), and the final
line's keys (their order is a convention: new keys only at the end)."""
from __future__ import annotations

import json
from pathlib import Path

import redis

from bench.markdown import _keyspace_section, l1_share_cell
from bench.procs import rules_with
from bench.report import final_line, headline
from bench.scenario_keyspace import PATHS, RULES, VARIANT_PARAM, copy_variants, shape
from proxy.core.identity import Identity
from proxy.core.policy import Lookup, RequestView, classify
from proxy.core.rulesfile import load_rules

KEPT_RUN = Path(__file__).parents[2] / "bench/results/partial/keyspace-2026-12-07T0334.json"


def kept_run() -> dict:
    """(f)'s full run of 2026-12-07 03:34, as kept in bench/results/partial."""
    return json.loads(KEPT_RUN.read_text())


def report_lines(run: dict) -> list[str]:
    """The lines BENCHMARKS.md's (f) section gives for ``run``."""
    lines: list[str] = []
    _keyspace_section(lines.append, run, None)
    return lines


def test_a_level_is_users_times_paths_then_variants_per_user():
    assert shape(1_000, 50_000) == (500, 1)
    assert shape(100_000, 50_000) == (50_000, 1)
    assert shape(1_000_000, 50_000) == (50_000, 10)
    users, variants = shape(150_000, 50_000)  # rounded up to whole variants: never fewer keys than asked
    assert (users, variants) == (50_000, 2) and users * len(PATHS) * variants >= 150_000


def test_the_rules_copy_keys_both_reads_on_the_variant_and_gives_them_an_l1(tmp_path):
    path = rules_with(tmp_path, "rules-keyspace-l1.yaml",
                      {r: [f"vary_query: [{VARIANT_PARAM}]", "l1_ttl: 60"] for r in RULES})
    rules = {r.name: r for r in load_rules(str(path)).rules}
    for name in RULES:
        assert rules[name].vary_query == (VARIANT_PARAM,)
        assert rules[name].l1_ttl == 60
    assert rules["user_preferences"].vary_query == ()  # the other rules are untouched


def test_variant_copies_sit_under_the_keys_the_proxy_looks_up(tmp_path, redis_url):
    rules_path = rules_with(tmp_path, "rules-keyspace.yaml", {r: [f"vary_query: [{VARIANT_PARAM}]"] for r in RULES})
    rules = load_rules(str(rules_path))
    users = ["user-a", "user-b", "user-c"]
    client = redis.Redis.from_url(redis_url)

    def lookup(uid: str, path: str, query: str) -> Lookup:
        decision = classify(RequestView("GET", path, query, {}), rules, Identity(uid, 2e9))
        assert isinstance(decision, Lookup), decision
        return decision

    for uid in users[:2]:  # user-c has no base entry: nothing to copy for it
        for path in PATHS:
            client.set(lookup(uid, path, "").key, f"entry of {uid} {path}".encode(), ex=600)
    done = copy_variants(client, rules_path, users, 3)
    assert done["base_keys"] == 6 and done["base_entries_found"] == 4 and done["copies"] == 12
    for uid in users:
        for path in PATHS:
            for v in range(3):
                key = lookup(uid, path, f"{VARIANT_PARAM}={v}").key
                expected = f"entry of {uid} {path}".encode() if uid != "user-c" else None
                assert client.get(key) == expected, key
                if expected:
                    assert 0 < client.ttl(key) <= 600
    client.close()


def test_the_final_line_adds_the_ceiling_then_the_keyspace_ratio_at_the_end():
    results = {"katiba": {"comparison": {"hit_rate": 0.7412}, "purge_ceiling": {"overall": 0.7629}},
               "keyspace": {"levels": [
                   {"keys": 1_000, "asked_keys": 1_000, "rows": [{"target": "redis", "ratio_vs_nginx": 0.9}]},
                   {"keys": 100_000, "asked_keys": 100_000, "rows": [{"target": "redis", "ratio_vs_nginx": 0.613}]}]}}
    line = final_line(headline(results))
    assert line.split(" ") == ["hit_rps_ratio_vs_nginx=n/a", "l1_hit_rps_ratio_vs_nginx=n/a", "miss_overhead_ms=n/a",
                               "katiba_hit_rate=0.74", "katiba_ceiling=0.76", "keyspace_hit_rps_ratio_vs_nginx=0.61"]
    assert final_line(headline({})).endswith("katiba_ceiling=n/a keyspace_hit_rps_ratio_vs_nginx=n/a")


def test_the_report_gives_the_l1_share_the_proxy_counted_and_why_it_missed():
    """(f)'s table shows the L1 share from katiba_cache_l1_lookups_total when the run has it (the 03:34
    run of 2026-12-07, kept in bench/results/partial), the old estimate only for older runs, marked."""
    text = "\n".join(report_lines(kept_run()))
    row = next(line for line in text.splitlines() if line.startswith("| 100,000 | 50,000 x 2 x 1 | redis+l1 |"))
    assert "| 90.0% |" in row and "est." not in row
    assert "100,000 keys: 100,000 entries, 253 MiB counted, evicted in the kept round: expired 9,312" in text
    assert l1_share_cell({"l1_share_estimate": 0.897}) == "89.7% (est.)"


def test_the_report_splits_each_proxy_targets_cpu_between_the_proxy_and_its_redis_server():
    """The proxy and its redis-server share core 0: the (f) report says which spent the time per request,
    for runs that measured it (older runs have no such line)."""
    run = kept_run()
    assert not any("CPU per request" in line for line in report_lines(run))

    for level, split in zip(run["levels"], ({"proxy": 19.84, "redis": 3.1}, {"proxy": 31.0, "redis": 9.25})):
        next(r for r in level["rows"] if r["target"] == "redis")["cpu_us_per_request"] = split
    line = next(line for line in report_lines(run) if "CPU per request" in line)
    levels = [f"{lv['keys']:,}" for lv in run["levels"]]
    assert f"{levels[0]} keys: redis 19.8 + 3.1" in line
    assert f"{levels[1]} keys: redis 31.0 + 9.2" in line


def test_the_report_gives_each_levels_p99_at_half_load_and_its_step():
    """At saturation p99 follows throughput; the half-load runs give it apart from capacity, with the step
    from the smallest level to the largest."""
    run = kept_run()
    for level, p99 in zip(run["levels"], (1.2, 1.5, 3.0)):
        for row in level["rows"]:
            row["half_load"] = {"target_rps": 10000.0, "rps": 9990.0, "p50_ms": 0.5, "p99_ms": p99}
    line = next(line for line in report_lines(run) if line.startswith("p99 at half of each target's"))
    assert line.startswith("p99 at half of each target's own best throughput at that level (8 s,")
    assert "1,000 keys: nginx 1.20 ms at 9,990/s" in line
    assert line.rstrip().endswith("From 1,000 to 1,000,000 keys: nginx 2.50x, redis 2.50x, redis+l1 2.50x.")

    largest = run["levels"][-1]["rows"]
    largest.reverse()  # each target's step is its own, whatever the order of the rows
    for target, p99 in (("nginx", 1.8), ("redis", 2.4)):
        next(r for r in largest if r["target"] == target)["half_load"]["p99_ms"] = p99
    line = next(line for line in report_lines(run) if line.startswith("p99 at half of each target's"))
    assert line.rstrip().endswith("From 1,000 to 1,000,000 keys: nginx 1.50x, redis 2.00x, redis+l1 2.50x.")
