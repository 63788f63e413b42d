"""proxy.core.metrics.Tally: figures held on the request path and flushed in bulk read exactly as if each had
gone to Prometheus directly (it relies on prometheus_client's Histogram internals: this notices a change)."""
from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, generate_latest

from proxy.core.metrics import LATENCY_BUCKETS, Metrics


def test_flushed_figures_equal_direct_ones():
    tallied, direct = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    rng = random.Random(7)
    samples = [rng.choice(LATENCY_BUCKETS) for _ in range(200)] + [rng.uniform(0, 12) for _ in range(800)]
    for i, seconds in enumerate(samples):
        rule, result, status = ("user_profile", "hit", 200) if i % 3 else ("leaderboard", "miss", 503)
        tallied.count_request(rule, result, status, seconds)
        direct.requests.labels(rule, result).inc()
        direct.responses.labels(f"{status // 100}xx").inc()
        direct.request_duration.labels(result).observe(seconds)
        tallied.tally.observe(tallied.store_duration.labels("lookup"), seconds / 100)
        direct.store_duration.labels("lookup").observe(seconds / 100)
    assert _figures(tallied.render()) == _figures(generate_latest(direct.registry))


def _figures(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if "_created" not in line]  # creation times differ


def test_nothing_is_lost_across_flushes():
    metrics = Metrics(CollectorRegistry())
    for _ in range(3):
        for _ in range(5):
            metrics.count_request("user_profile", "hit", 200, 0.001)
        metrics.render()
    text = metrics.render().decode()
    assert 'katiba_cache_requests_total{result="hit",rule="user_profile"} 15.0' in text
    assert 'katiba_cache_request_duration_seconds_count{result="hit"} 15.0' in text
