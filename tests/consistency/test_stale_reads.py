"""No stale reads across proxy processes, and the checker that says so is known to bite.

Three proxy processes share one real redis-server in front of one stand-in backend process; 24
clients run a seeded random workload of reads and writes (``checker.py``). Three runs of the same
workload: the product must show no stale read and a real share of cache hits; two mutants, each a
proxy with one test-only switch (``KATIBA_CACHE_UNSAFE_TEST_SWITCHES``), must be caught:
``release-before-purge`` (a write's answer released before its purge) and ``no-fill-guard`` (a fill
stored whatever purge landed during its fetch).

The last test pins the checker's rule itself on hand-made histories.

Short by default (3,000 operations a run). ``STALE_CHECK_OPS`` and ``STALE_CHECK_SEED`` change the
size and the seed, e.g. for a longer soak. Run with ``-s`` to see one summary line per run.
"""
from __future__ import annotations

import os

import pytest

from tests.consistency.checker import Cluster, Op, Workload, check, run_check

OPERATIONS = int(os.environ.get("STALE_CHECK_OPS", "3000"))
SEED = int(os.environ.get("STALE_CHECK_SEED", "2026"))
PROXIES = 3


def _details(report, cluster_logs_tail: str, store_errors: int) -> str:
    shown = "\n".join(f"  {v}" for v in report.violations[:10])
    return f"store errors logged by the proxies: {store_errors}\n{shown}\n{cluster_logs_tail}"


@pytest.mark.parametrize("unsafe", ["", "release-before-purge", "no-fill-guard"],
                         ids=["product", "mutant-release-before-purge", "mutant-no-fill-guard"])
def test_stale_reads(unsafe, redis_url, tmp_path):
    workload = Workload(seed=SEED, operations=OPERATIONS)
    with Cluster(redis_url, proxies=PROXIES, unsafe=(unsafe,) if unsafe else (), workdir=tmp_path) as cluster:
        report = run_check(cluster.urls, workload, cluster.backend_url)
        logs, store_errors, tail = cluster.proxy_logs(), cluster.store_errors(), cluster.log_tail()
    line = report.line(unsafe or "product")
    print(f"\n{line}")
    details = _details(report, tail, store_errors)

    assert report.operations >= OPERATIONS and report.writes > 0.1 * report.operations, line
    switched_on = logs.count('"event":"unsafe_switches"')
    if not unsafe:
        assert switched_on == 0, f"{line}\na product proxy started with test-only switches"
        assert report.errors == 0, f"{line}\n{details}"
        assert not report.violations, f"{line}: stale reads\n{details}"
        # a proxy that never caches would pass the checks above vacuously
        assert report.hits > 0.2 * report.reads, f"{line}: too few cache hits for the check to mean anything"
    else:
        assert switched_on == PROXIES, f"{line}\nthe switch {unsafe!r} did not reach every proxy process"
        assert report.violations, f"{line}: the checker missed the {unsafe} bug\n{details}"


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
