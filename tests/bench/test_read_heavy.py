"""The katiba workload's read-heavy mix (issue 21 item 5): the same proportions with 2% writes, its own
purge ceiling, and the goals it is reported against. Counts and arithmetic only, no timing."""
from __future__ import annotations

import random

from bench.report import targets
from bench.scenario_katiba import purge_ceiling
from bench.workload import READ_HEAVY_WRITE_SHARE, WRITE_SHARE, Workload

SECRET = "bench-test-secret-of-thirty-two-bytes!"


def test_the_read_heavy_mix_draws_two_percent_writes_and_says_so_to_wrk(tmp_path):
    wl = Workload(SECRET, users=50, write_share=READ_HEAVY_WRITE_SHARE)
    rng = random.Random(7)
    drawn = [wl.draw(rng) for _ in range(20_000)]
    share = sum(r.write for r in drawn) / len(drawn)
    assert 0.015 < share < 0.025, share
    path = tmp_path / "mix.lua"
    wl.write_lua(str(path))
    assert f"write_share = {READ_HEAVY_WRITE_SHARE}," in path.read_text()
    Workload(SECRET, users=50).write_lua(str(path))
    assert f"write_share = {WRITE_SHARE}," in path.read_text()  # the main mix is unchanged


def test_fewer_writes_raise_every_routes_ceiling():
    main, heavy = purge_ceiling(), purge_ceiling(READ_HEAVY_WRITE_SHARE)
    assert heavy["overall"] > main["overall"]
    assert set(heavy["routes"]) == set(main["routes"])
    for name, ceiling in heavy["routes"].items():
        assert ceiling >= main["routes"][name], name
        assert ceiling == 1.0 or ceiling > main["routes"][name], name  # purged routes gain, others stay at 1


def test_the_read_heavy_goals_are_reported_met_or_not():
    def rows(kat):
        return {t["target"]: t for t in targets({"katiba": kat}) if "read-heavy" in t["target"] or "ceiling" in t["target"]}

    met = rows({"comparison": {"hit_rate": 0.73}, "hit_rate_vs_ceiling": 0.98,
                "read_heavy": {"hit_rate": 0.93, "worst_p50_cut": 0.96}})
    assert met and all(t["met"] for t in met.values()), met
    missed = rows({"comparison": {"hit_rate": 0.70}, "hit_rate_vs_ceiling": 0.94,
                   "read_heavy": {"hit_rate": 0.88, "worst_p50_cut": None}})
    assert missed and not any(t["met"] for t in missed.values()), missed
