"""The stale-read checker (``tests/consistency/checker.py``) on the Redis Cluster store: three proxy
processes started as a user would (``--redis redis+cluster://...``) share the six-node cluster; 24
clients run the seeded workload of reads and writes across them. No stale read, no error, a real share
of hits, also when each of the three runs two workers (``WORKERS=2``: six processes); and the checker
still catches the ``release-before-purge`` mutant in cluster mode.

``STALE_CHECK_OPS`` / ``STALE_CHECK_SEED`` change the size and the seed, as in the single-Redis test.
"""
from __future__ import annotations

import os

import pytest

from tests.consistency.checker import Cluster, Workload, run_check

OPERATIONS = int(os.environ.get("STALE_CHECK_OPS", "3000"))
SEED = int(os.environ.get("STALE_CHECK_SEED", "2027"))
PROXIES = 3


@pytest.mark.parametrize("unsafe, workers", [("", 1), ("", 2), ("release-before-purge", 1)],
                         ids=["product", "product-2-workers-each", "mutant-release-before-purge"])
def test_no_stale_reads_across_three_proxies_on_a_cluster(unsafe, workers, cluster_url, tmp_path):
    assert cluster_url.startswith("redis+cluster://")
    workload = Workload(seed=SEED, operations=OPERATIONS)
    with Cluster(cluster_url, proxies=PROXIES, unsafe=(unsafe,) if unsafe else (), workdir=tmp_path,
                 env={"WORKERS": str(workers)}) as procs:
        report = run_check(procs.urls, workload, procs.backend_url)
        logs, tail = procs.proxy_logs(), procs.log_tail()
    line = report.line(f"cluster {unsafe or 'product'} x{workers} workers")
    print(f"\n{line}")
    shown = "\n".join(f"  {v}" for v in report.violations[:10])
    assert report.operations >= OPERATIONS and report.writes > 0.1 * report.operations, line
    # every worker of every proxy runs on the cluster store
    assert logs.count('"store":"redis-cluster"') == PROXIES * workers, tail
    if not unsafe:
        assert report.errors == 0, f"{line}\n{tail}"
        assert not report.violations, f"{line}: stale reads\n{shown}\n{tail}"
        assert report.hits > 0.2 * report.reads, f"{line}: too few cache hits for the check to mean anything"
    else:
        assert report.violations, f"{line}: the checker missed the {unsafe} bug on the cluster"
