"""Reads after own write in the katiba workload (issue 21): what is re-read after each write, how the
re-reads are counted, and the rules copy the second run uses. Counts only, no timing."""
from __future__ import annotations

import random

from bench.loadgen import katiba_request, reread_after
from bench.procs import ROOT, rules_with_defaults
from bench.scenario_katiba import after_write_added, after_write_figures
from bench.workload import READS, REREAD_PREFIX, REREAD_THINK_MS, REREADS, WRITES, Workload, reread_label
from proxy.core.rulesfile import load_rules

SECRET = "bench-test-secret-of-thirty-two-bytes!"


def test_each_write_is_re_read_on_a_per_user_route_it_purges():
    """A re-read is a read after *own* write only if the write's purge empties that user's entry."""
    rules = {r.name: r for r in load_rules(str(ROOT / "rules.yaml")).rules}
    assert set(REREADS) == {w[0] for w in WRITES}
    for write, read in REREADS.items():
        key, wr = rules[read].key, rules[write]
        assert key.needs_identity, read
        assert any((t.shape == key.shape) if exact else t.covers(key)
                   for t, exact in zip(wr.purge, wr.purge_exact)), f"{write} does not purge {read}"


def test_the_re_read_is_the_writers_own_read_and_follows_only_successful_writes():
    wl = Workload(SECRET, users=20)
    rng = random.Random(5)
    drawn = [wl.draw(rng) for _ in range(400)]
    writes = [r for r in drawn if r.write]
    reads = [r for r in drawn if not r.write]
    assert writes and reads
    paths = {r[0]: r[2] for r in READS}
    for w in writes:
        req = katiba_request(w)
        follow = reread_after(wl, req, 200)
        assert follow is not None
        (name, method, path, headers, body), think = follow
        assert name == REREAD_PREFIX + REREADS[w.name]
        assert (method, path, body) == ("GET", paths[REREADS[w.name]], None)
        assert headers["Authorization"] == req[3]["Authorization"] == f"Bearer {w.token}"
        assert think == REREAD_THINK_MS / 1000
        assert reread_after(wl, req, 500) is None  # a failed write is not followed
        assert reread_after(wl, req, 409) is None
    for r in reads:
        assert reread_after(wl, katiba_request(r), 200) is None
        assert wl.reread(r) is None


def test_the_lua_data_names_the_same_re_reads():
    wl = Workload(SECRET, users=3)
    path = ROOT / "bench" / "lua" / "katiba.lua"
    assert "BENCH_REREAD" in path.read_text()
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".lua") as fh:
        wl.write_lua(fh.name)
        text = fh.read()
    assert f"reread_think_ms = {REREAD_THINK_MS}," in text
    for write, read in REREADS.items():
        assert f'{write} = {{name = "{REREAD_PREFIX}{read}", ' in text


def test_collapsed_is_added_only_when_cache_status_says_so():
    assert reread_label("MISS", "katiba-cache; fwd=miss; fwd-status=200; stored; collapsed") == "MISS-collapsed"
    assert reread_label("MISS", "katiba-cache; fwd=uri-miss; fwd-status=200; stored") == "MISS"
    assert reread_label("HIT", "katiba-cache; hit; ttl=3599") == "HIT"


def test_re_reads_are_counted_apart_from_the_mix():
    routes = {
        "user_profile": {"count": 10, "xcache": {"HIT": 8, "MISS": 2}},
        "auth_me": {"count": 5, "xcache": {"HIT": 5}},
        "update_profile": {"count": 4, "xcache": {"none": 4}},
        "reread:auth_me": {"count": 4, "xcache": {"HIT": 1, "MISS-collapsed": 2, "MISS": 1}},
        "reread:achievements": {"count": 6, "xcache": {"HIT": 3, "MISS": 2, "BYPASS": 1}},
    }
    fig = after_write_figures(routes, ["user_profile", "auth_me", "achievements"])
    assert (fig["count"], fig["hit"], fig["collapsed"], fig["miss"], fig["other"]) == (10, 4, 2, 3, 1)
    assert fig["hit_share"] == 0.4 and fig["collapsed_share"] == 0.2 and fig["hit_or_collapsed_share"] == 0.6
    assert fig["routes"]["auth_me"] == {"count": 4, "hit": 1, "collapsed": 2, "miss": 1, "other": 0,
                                        "hit_share": 0.25, "collapsed_share": 0.5, "hit_or_collapsed_share": 0.75}
    assert fig["routes"]["achievements"]["other"] == 1
    assert fig["mix_hit_rate"] == round(13 / 15, 4)  # the re-reads are not part of the mix
    assert fig["all_reads_hit_rate"] == round(17 / 25, 4)
    empty = after_write_figures({"user_profile": {"count": 2, "xcache": {"HIT": 2}}}, ["user_profile"])
    assert empty["count"] == 0 and empty["hit_share"] is None and empty["all_reads_hit_rate"] == 1.0


def test_what_refresh_after_purge_adds_is_the_difference_of_the_two_runs():
    shipped = {"backend_rps": 100.0, "backend_per_request": 0.25, "backend_per_write": 2.5,
               "reread_hit_share": 0.0, "mix_hit_rate": 0.7, "refreshes_per_second": 5.0}
    refresh = {"backend_rps": 112.5, "backend_per_request": 0.28, "backend_per_write": 2.8,
               "reread_hit_share": 0.85, "mix_hit_rate": 0.72, "refreshes_per_second": 20.0}
    assert after_write_added(shipped, refresh) == {
        "backend_requests_per_second": 12.5, "backend_requests_per_client_request": 0.03,
        "backend_requests_per_write": 0.3, "refreshes_per_second": 15.0, "reread_hit_share": 0.85,
        "mix_hit_rate": 0.02}


def test_the_refresh_rules_copy_turns_it_on_for_per_user_rules_only(tmp_path):
    path = rules_with_defaults(tmp_path, "rules-refresh.yaml", ["refresh_after_purge: true"])
    rules = {r.name: r for r in load_rules(str(path)).rules}
    shipped = {r.name: r for r in load_rules(str(ROOT / "rules.yaml")).rules}
    # Shipped: the shared pages every award empties; no per-user rule (the second run's difference).
    assert {n for n, r in shipped.items() if r.refresh_after_purge} == {"leaderboard", "recent_achievements"}
    assert rules["auth_me"].refresh_after_purge and rules["achievements"].refresh_after_purge
    assert not rules["achievement_types"].refresh_after_purge  # shared: from defaults, never
    assert set(rules) == set(shipped)


def test_benchmarks_md_shows_both_runs_side_by_side():
    from bench.markdown import _after_write_section

    def run(hit, collapsed, backend_rps, refreshes):
        routes = {"user_profile": {"count": 100, "xcache": {"HIT": 70, "MISS": 30}},
                  "reread:auth_me": {"count": 20, "xcache": {"HIT": hit, "MISS-collapsed": collapsed,
                                                              "MISS": 20 - hit - collapsed}}}
        fig = after_write_figures(routes, ["user_profile"])
        return {"figures": fig, "reread_p50_ms": 1.5, "reread_p99_ms": 9.0, "rps": 500.0, "backend_rps": backend_rps,
                "backend_per_write": 2.0, "refreshes_per_second": refreshes, "reread_hit_share": fig["hit_share"],
                "mix_hit_rate": fig["mix_hit_rate"]}

    ship, ref = run(0, 0, 100.0, 0.0), run(15, 4, 110.0, 10.0)
    aw = {"think_ms": 30, "rereads": {"update_profile": "auth_me"}, "duration_s": 30, "paced_rps": 500.0,
          "shipped": ship, "refresh_after_purge": ref, "added": after_write_added(ship, ref)}
    lines: list[str] = []
    _after_write_section(lines.append, aw)
    text = "\n".join(lines)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:4]]
            for line in text.splitlines() if line.startswith("| ")}
    assert rows["... hit"] == ["0.0%", "75.0%"]
    assert rows["... collapsed (waited for a fill in flight)"] == ["0.0%", "20.0%"]
    assert rows["backend req/s"] == ["100.0", "110.0"]
    assert "by 10.0 req/s" in text and "+75.0 points" in text
