"""No stale reads across proxy processes, and the checker that says so is known to bite.

Three proxy processes share one real redis-server in front of one stand-in backend process; 24
clients run a seeded random workload of reads and writes (``checker.py``). Three runs of the same
workload: the product must show no stale read and a real share of cache hits; three mutants must be
caught: two proxies with one test-only switch each (``KATIBA_CACHE_UNSAFE_TEST_SWITCHES``),
``release-before-purge`` (a write's answer released before its purge) and ``no-fill-guard`` (a fill
stored whatever purge landed during its fetch), and the shipped rules with ``unmatched_writes``
purging nothing (``no-unmatched-purge``: onboarding writes, which no rule names, leave ``/auth/me``
stale; the violations it finds are those writes' and no others).

The last test pins the checker's rule itself on hand-made histories.

Short by default (3,000 operations a run). ``STALE_CHECK_OPS`` and ``STALE_CHECK_SEED`` change the
size and the seed, e.g. for a longer soak. Run with ``-s`` to see one summary line per run.
"""
from __future__ import annotations

import os

import pytest

from pathlib import Path

from tests.consistency.checker import Cluster, Op, Workload, check, run_check

REPO = Path(__file__).resolve().parents[2]

OPERATIONS = int(os.environ.get("STALE_CHECK_OPS", "3000"))
SEED = int(os.environ.get("STALE_CHECK_SEED", "2026"))
PROXIES = 3


def _details(report, cluster_logs_tail: str, store_errors: int) -> str:
    shown = "\n".join(f"  {v}" for v in report.violations[:10])
    return f"store errors logged by the proxies: {store_errors}\n{shown}\n{cluster_logs_tail}"


SHIPPED_FAIL_SAFE = '  purge: ["user:{user_id}:*", "achievements:{user_id}:*"]\n'


def rules_without_unmatched_purge(tmp_path) -> Path:
    text = (REPO / "rules.yaml").read_text()
    assert text.count(SHIPPED_FAIL_SAFE) == 1, "the shipped unmatched_writes purge moved: update this mutant"
    path = tmp_path / "rules-no-unmatched-purge.yaml"
    path.write_text(text.replace(SHIPPED_FAIL_SAFE, "  purge: []\n"))
    return path


@pytest.mark.parametrize("mutant", ["", "release-before-purge", "no-fill-guard", "no-unmatched-purge"],
                         ids=["product", "mutant-release-before-purge", "mutant-no-fill-guard",
                              "mutant-no-unmatched-purge"])
def test_stale_reads(mutant, redis_url, tmp_path):
    workload = Workload(seed=SEED, operations=OPERATIONS)
    unsafe = mutant if mutant in ("release-before-purge", "no-fill-guard") else ""
    rules = rules_without_unmatched_purge(tmp_path) if mutant == "no-unmatched-purge" else None
    with Cluster(redis_url, proxies=PROXIES, unsafe=(unsafe,) if unsafe else (), workdir=tmp_path,
                 rules=rules) as cluster:
        report = run_check(cluster.urls, workload, cluster.backend_url)
        logs, store_errors, tail = cluster.proxy_logs(), cluster.store_errors(), cluster.log_tail()
    line = report.line(mutant or "product")
    print(f"\n{line}")
    details = _details(report, tail, store_errors)

    assert report.operations >= OPERATIONS and report.writes > 0.1 * report.operations, line
    switched_on = logs.count('"event":"unsafe_switches"')
    assert report.unruled_writes > 0.005 * report.operations, f"{line}: too few writes no rule matches"
    if not mutant:
        assert switched_on == 0, f"{line}\na product proxy started with test-only switches"
        assert report.errors == 0, f"{line}\n{details}"
        assert not report.violations, f"{line}: stale reads\n{details}"
        # a proxy that never caches would pass the checks above vacuously
        assert report.hits > 0.2 * report.reads, f"{line}: too few cache hits for the check to mean anything"
    elif unsafe:
        assert switched_on == PROXIES, f"{line}\nthe switch {unsafe!r} did not reach every proxy process"
        assert report.violations, f"{line}: the checker missed the {unsafe} bug\n{details}"
    else:  # the rules mutant: caught, and only on the writes whose purge it removed
        assert switched_on == 0 and report.errors == 0, f"{line}\n{details}"
        assert report.violations, f"{line}: the checker missed the missing unmatched_writes purge\n{details}"
        assert {v.write.name for v in report.violations} <= {"onboarding_progress", "onboarding_reset"}, details


def test_check_judges_reads_against_writes_answered_before_they_started():
    """The checker's rule on hand-made histories: only a read that starts after the write's answer,
    of a view that write affects, and older than it, is a violation."""
    write = Op(0, "write", "update_preferences", "u1", 0, start=1.0, end=2.0, version=7,
               affects=(("preferences", "u1"), ("full_profile", "u1")))

    def read(view, start, version, owner="u1"):
        return Op(1, "read", view, owner, 1, start=start, end=start + 0.5, version=version, view=(view, owner),
                  x_cache="HIT")

    overlapping = read("preferences", 1.9, 6)  # started before the answer: either version is allowed
    after_old = read("full_profile", 2.1, 6)
    after_new = read("preferences", 2.1, 7)
    unaffected = read("profile", 3.0, 0)  # rules.yaml does not purge the profile on preferences
    other_user = read("preferences", 3.0, 0, owner="u2")
    report = check([write, overlapping, after_old, after_new, unaffected, other_user])
    assert [v.read for v in report.violations] == [after_old]
    assert report.violations[0].required == 7 and report.hits == 5 and report.writes == 1
